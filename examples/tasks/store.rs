//! The store: SQLite (bundled, WAL, `synchronous=FULL`) at `[tasks]
//! database`, written by one thread of the brain with group commit, so
//! that no state change is written on the loop.
//!
//! STUB: the interface the brain is written against; the store is being
//! written on its own branch.

use crate::config::Database;
use crate::types::{Recovered, Write};
use foreman::Waker;

/// The writer thread's handle.
pub struct Store {}

impl Store {
    /// Opens (creating it and its schema if new) the database at `path`,
    /// reads every kept job, and starts the writer thread, which wakes
    /// `waker` after each commit.
    pub fn open(path: &Database, waker: Waker) -> Result<(Store, Recovered), String> {
        let _ = (path, waker);
        Ok((Store {}, Recovered::default()))
    }

    /// Queues `writes` as one batch after every batch before it; returns
    /// its number (1, 2, ...). Never blocks.
    pub fn write(&mut self, writes: Vec<Write>) -> u64 {
        let _ = writes;
        0
    }

    /// The number of the last batch committed (0 before any).
    pub fn committed(&self) -> u64 {
        0
    }

    /// The error that stopped the writer, if it has stopped. The brain then
    /// exits its process; the master forks a new one, which reads the
    /// store again.
    pub fn failed(&self) -> Option<String> {
        None
    }
}

/// Creates the database and its schema if needed, so that a bad path stops
/// start-up in the master (before any fork) with a message.
pub fn check(path: &Database) -> Result<(), String> {
    let _ = path;
    Ok(())
}
