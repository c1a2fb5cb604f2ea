//! The store: SQLite (bundled, WAL, `synchronous=FULL`) at `[tasks]
//! database`, written by one thread of the brain with group commit, so
//! that no state change is written on the loop.
//!
//! # Tables
//!
//! `jobs`: one row per kept job, every [`JobRow`] field a column (`id`
//! the primary key, `state` as [`State::as_str`] spells it, `unique_key`
//! for `unique`). `meta`: `next_id`, above every id ever inserted; it is
//! raised in the transaction of each insert and never lowered, so an id
//! stays used after its row is deleted.
//!
//! # Group commit
//!
//! [`Store::write`] numbers a batch and queues it for the writer thread.
//! The thread takes every batch queued, up to [`MAX_WRITES`] writes (a
//! batch is never split), applies them in order in one transaction, and
//! commits; then it publishes the number of the last batch in it
//! ([`Store::committed`]) and wakes the loop. A batch is thus durable once
//! `committed()` reaches its number, and never before.
//!
//! # Failure
//!
//! An error inside a transaction rolls it back (none of its batches
//! counts as committed), stops the thread, and is kept for
//! [`Store::failed`]; the loop is woken to see it. The brain then exits,
//! and its successor reads the store again: what was confirmed is there.

use crate::config::Database;
use crate::types::{JobNo, JobRow, JobUpdate, Recovered, State, Write};
use crossbeam_channel::{Receiver, Sender};
use foreman::Waker;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, Row, Transaction, TransactionBehavior};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

/// Most writes in one transaction (more batches wait for the next).
pub const MAX_WRITES: usize = 4096;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_ms INTEGER NOT NULL,
    unique_key TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    ready_seq INTEGER NOT NULL,
    result TEXT,
    error TEXT,
    lease_conn TEXT
);
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta(key, value) VALUES ('next_id', 1);
";

/// The columns of `jobs` in the order [`job_row`] reads them.
const COLUMNS: &str = "id, queue, state, priority, payload, attempts, max_attempts, timeout_ms,
    unique_key, created_ms, updated_ms, due_ms, ready_seq, result, error, lease_conn";

/// What the writer thread tells the loop.
struct Shared {
    /// The number of the last batch committed.
    committed: AtomicU64,
    /// Why the thread stopped, once it has.
    failed: OnceLock<String>,
    /// Wakes the loop after a commit or a failure.
    notify: Box<dyn Fn() + Send + Sync>,
}

/// One call of [`Store::write`]: its number and its writes.
type Batch = (u64, Vec<Write>);

/// The writer thread's handle.
pub struct Store {
    /// Batches to the thread; `None` once dropping.
    batches: Option<Sender<Batch>>,
    /// The number of the last batch queued.
    queued: u64,
    /// What the thread publishes.
    shared: Arc<Shared>,
    /// The writer thread, joined on drop once it has written what was
    /// queued.
    thread: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens (creating it and its schema if new) the database, reads every
    /// kept job, and starts the writer thread, which wakes `waker` after
    /// each commit. [`Database::Memory`] is a connection of its own: it
    /// works, and nothing survives it.
    pub fn open(db: &Database, waker: Waker) -> Result<(Store, Recovered), String> {
        Store::open_with(db, move || waker.wake())
    }

    /// [`Store::open`] with any `notify` in place of a loop's waker.
    pub fn open_with(
        db: &Database,
        notify: impl Fn() + Send + Sync + 'static,
    ) -> Result<(Store, Recovered), String> {
        let conn = connect(db)?;
        let recovered = recover(&conn).map_err(|e| named(db, e))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            committed: AtomicU64::new(0),
            failed: OnceLock::new(),
            notify: Box::new(notify),
        });
        let thread = {
            let shared = shared.clone();
            let name = db_name(db);
            std::thread::Builder::new()
                .name("tasks-store".into())
                .spawn(move || write_loop(conn, rx, &shared, &name))
                .map_err(|e| format!("{}: cannot start the writer thread: {e}", db_name(db)))?
        };
        let store = Store {
            batches: Some(tx),
            queued: 0,
            shared,
            thread: Some(thread),
        };
        Ok((store, recovered))
    }

    /// Queues `writes` as one batch after every batch before it; returns
    /// its number (1, 2, ...). Never blocks.
    pub fn write(&mut self, writes: Vec<Write>) -> u64 {
        self.queued += 1;
        if let Some(tx) = &self.batches {
            // Only fails once the thread has stopped: `failed` says why.
            let _ = tx.send((self.queued, writes));
        }
        self.queued
    }

    /// The number of the last batch committed (0 before any).
    pub fn committed(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    /// The error that stopped the writer, if it has stopped. The brain then
    /// exits its process; the master forks a new one, which reads the
    /// store again.
    pub fn failed(&self) -> Option<String> {
        self.shared.failed.get().cloned()
    }
}

impl Drop for Store {
    /// Lets the thread commit what is queued, then joins it.
    fn drop(&mut self) {
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Creates the database and its schema if needed, so that a bad path stops
/// start-up in the master (before any fork) with a message.
pub fn check(db: &Database) -> Result<(), String> {
    match db {
        Database::Memory => Ok(()),
        Database::File(_) => connect(db).map(drop),
    }
}

/// How errors name the database.
fn db_name(db: &Database) -> String {
    match db {
        Database::File(path) => path.display().to_string(),
        Database::Memory => ":memory:".into(),
    }
}

fn named(db: &Database, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", db_name(db))
}

/// A connection with its pragmas and the schema.
fn connect(db: &Database) -> Result<Connection, String> {
    let conn = match db {
        // Created if missing (never its directory).
        Database::File(path) => Connection::open(path),
        Database::Memory => Connection::open_in_memory(),
    }
    .map_err(|e| named(db, e))?;
    if let Database::File(_) = db {
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| named(db, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(named(db, format!("cannot use WAL (journal_mode {mode})")));
        }
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| named(db, e))?;
    conn.execute_batch(SCHEMA).map_err(|e| named(db, e))?;
    Ok(conn)
}

/// Every kept job and the next id.
fn recover(conn: &Connection) -> rusqlite::Result<Recovered> {
    let jobs = conn
        .prepare(&format!("SELECT {COLUMNS} FROM jobs ORDER BY id"))?
        .query_map([], job_row)?
        .collect::<rusqlite::Result<Vec<JobRow>>>()?;
    let stored: JobNo =
        conn.query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
            r.get(0)
        })?;
    // The meta row is raised with every insert; the rows are asked as well
    // so that a table written by hand cannot hand out a kept id.
    let above_rows = jobs.last().map_or(1, |j| j.id.saturating_add(1));
    Ok(Recovered {
        next_id: stored.max(above_rows).max(1),
        jobs,
    })
}

/// A `jobs` row read in the order of [`COLUMNS`].
fn job_row(r: &Row) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        queue: r.get(1)?,
        state: r.get::<_, StateCol>(2)?.0,
        priority: r.get(3)?,
        payload: r.get(4)?,
        attempts: r.get(5)?,
        max_attempts: r.get(6)?,
        timeout_ms: r.get(7)?,
        unique: r.get(8)?,
        created_ms: r.get(9)?,
        updated_ms: r.get(10)?,
        due_ms: r.get(11)?,
        ready_seq: r.get(12)?,
        result: r.get(13)?,
        error: r.get(14)?,
        lease_conn: r.get(15)?,
    })
}

/// A [`State`] as its column holds it.
struct StateCol(State);

impl FromSql for StateCol {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        State::parse(text)
            .map(StateCol)
            .ok_or_else(|| FromSqlError::Other(format!("unknown job state {text:?}").into()))
    }
}

impl ToSql for StateCol {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.as_str()))
    }
}

/// The writer thread: batches in, group commits, until the [`Store`] is
/// dropped (after it has written what was queued) or a commit fails.
fn write_loop(mut conn: Connection, batches: Receiver<Batch>, shared: &Shared, name: &str) {
    let mut group: Vec<Batch> = Vec::new();
    while let Ok(first) = batches.recv() {
        let mut writes = first.1.len();
        group.push(first);
        while writes < MAX_WRITES {
            match batches.try_recv() {
                Ok(batch) => {
                    writes += batch.1.len();
                    group.push(batch);
                }
                Err(_) => break,
            }
        }
        let last = group.last().map_or(0, |b| b.0);
        match commit(&mut conn, &group) {
            Ok(()) => shared.committed.store(last, Ordering::Release),
            Err(e) => {
                let message = format!("{name}: a write failed, the store stopped: {e}");
                log::error!("tasks store: {message}");
                let _ = shared.failed.set(message);
                (shared.notify)();
                return;
            }
        }
        (shared.notify)();
        group.clear();
    }
}

/// One transaction over every write of `group`, in order.
fn commit(conn: &mut Connection, group: &[Batch]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for write in group.iter().flat_map(|b| &b.1) {
        apply(&tx, write)?;
    }
    tx.commit()
}

/// One write inside the transaction.
fn apply(tx: &Transaction, write: &Write) -> rusqlite::Result<()> {
    match write {
        Write::Insert(j) => {
            tx.prepare_cached(&format!(
                "INSERT INTO jobs({COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ))?
            .execute(params![
                j.id,
                j.queue,
                StateCol(j.state),
                j.priority,
                j.payload,
                j.attempts,
                j.max_attempts,
                j.timeout_ms,
                j.unique,
                j.created_ms,
                j.updated_ms,
                j.due_ms,
                j.ready_seq,
                j.result,
                j.error,
                j.lease_conn,
            ])?;
            tx.prepare_cached("UPDATE meta SET value = max(value, ?1) WHERE key = 'next_id'")?
                .execute([j.id.saturating_add(1)])?;
        }
        Write::Update(u) => update(tx, u)?,
        Write::Delete(id) => {
            tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                .execute([id])?;
        }
    }
    Ok(())
}

/// A change of state. A row that is not there is the table's mistake, not
/// the store's: it is logged and the rest goes on.
fn update(tx: &Transaction, u: &JobUpdate) -> rusqlite::Result<()> {
    let changed = tx
        .prepare_cached(
            "UPDATE jobs SET state = ?2, attempts = ?3, updated_ms = ?4, due_ms = ?5,
             ready_seq = ?6, result = ?7, error = ?8, lease_conn = ?9 WHERE id = ?1",
        )?
        .execute(params![
            u.id,
            StateCol(u.state),
            u.attempts,
            u.updated_ms,
            u.due_ms,
            u.ready_seq,
            u.result,
            u.error,
            u.lease_conn,
        ])?;
    if changed == 0 {
        log::warn!("tasks store: an update of job {} that is not stored", u.id);
    }
    Ok(())
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
