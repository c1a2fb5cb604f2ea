#![allow(dead_code)] // the skeleton: removed once every module is wired in
//! The sync server: live keyed JSON documents with optimistic locking, over
//! WebSocket for devices and HTTP for backends, on foreman. It speaks
//! `shared/sync-protocol.md` (version 1) and serves its own page at `/`: a
//! shared list that several tabs edit live. With a `[cluster]` table,
//! several sync servers share one Redis and serve the same documents.
//!
//! ```text
//! cargo run --release --example sync                 # reads ./sync.toml
//! cargo run --release --example sync -- -c my.toml --listen 0.0.0.0:9001 --count 4
//! cargo run --release --example sync -- token phone-1   # a device token, when auth is on
//! ```
//!
//! Then open <http://127.0.0.1:8001/>.
//!
//! Files: `config` (sync.toml), `request` (one type per request, the
//! checks in the protocol's order), `reply` (frames out), `merge` (RFC
//! 7396), `store` (the store thread, SQLite), `store_redis` (the store on a
//! cluster), `feed` (each key's stream of versions, in order and without
//! gaps, to this worker's subscribers), `http` (`/doc/KEY`), `worker` (the
//! handler), `page.html`.

mod config;
#[path = "../common/jwt.rs"]
mod jwt;
mod merge;
#[path = "../common/rate.rs"]
mod rate;
#[path = "../common/redis_reply.rs"]
mod redis_reply;
mod store;
mod store_redis;
mod store_sqlite;
mod store_writer;

use clap::{Parser, Subcommand};
use config::SyncConfig;
use foreman::cli::{Command, Flags};
use foreman::Error;
use std::path::PathBuf;
use std::process::ExitCode;

/// The sync server's command line: foreman's commands and flags, and
/// `token CLIENT`.
#[derive(Parser)]
#[command(
    name = "sync",
    version,
    about = "The sync server: live keyed JSON documents with optimistic locking"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<SyncCommand>,
    #[command(flatten)]
    flags: Flags,
}

/// Foreman's commands, and the sync server's own.
#[derive(Subcommand)]
enum SyncCommand {
    #[command(flatten)]
    Server(Command),
    /// Print a device token for CLIENT, valid for a day (needs [auth] secret)
    Token {
        /// The `client` the token is for
        client: String,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let Cli { command, flags } = Cli::parse();
    let (_command, _token_for) = match command {
        None => (Command::default(), None),
        Some(SyncCommand::Server(command)) => (command, None),
        Some(SyncCommand::Token { client }) => (Command::default(), Some(client)),
    };
    let path = flags
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("sync.toml"));
    let mut config = SyncConfig::load(&path)?;
    flags.apply(&mut config.server)?;
    let _ = store::check;
    let _ = merge::merge_patch;
    Err(Error::Usage("not written yet".into()))
}
