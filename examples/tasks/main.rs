//! The task scheduler: jobs handed in by submitters, ordered by priority
//! and state, leased to executors on any machine, retried with backoff,
//! kept in SQLite; on foreman. It speaks `shared/tasks-protocol.md`
//! (version 1) over `frame://`, and serves a page at `/` on its second
//! listener (`http_listen`): queues with counts by state and the newest
//! jobs, live.
//!
//! ```text
//! cargo run --release --example tasks                  # reads ./tasks.toml
//! cargo run --release --example tasks -- -c my.toml --count 4
//! cargo run --release --example tasks -- token NAME    # a hello token, when auth is on
//! ```
//!
//! Executors: `examples/task_worker.rs`; a submitter: `examples/task_submit.rs`.
//!
//! Files: `config` (tasks.toml), `types` (what the parts share),
//! `request` (the checks in the protocol's order), `reply` (frames out),
//! `jobs` (the job table: states, queues, leases, balancing), `store`
//! (SQLite, written by its own thread), `brain` (worker 0: the job table
//! and the store), `front` (every worker: connections, hello, auth,
//! requests to the brain and replies back), `link` (what front and brain
//! say over the bus), `live` and `page.html` (the page).
#![allow(dead_code)]

#[path = "../common/app.rs"]
mod app;
#[path = "../common/auth.rs"]
mod auth;
mod config;
mod jobs;
#[path = "../common/jwt.rs"]
mod jwt;
mod live;
mod reply;
mod request;
mod store;
mod types;

use clap::{Parser, Subcommand};
use config::TasksConfig;
use foreman::cli::{Command, Flags};
use foreman::Error;
use std::path::PathBuf;
use std::process::ExitCode;

/// The scheduler's command line: foreman's commands and flags, and
/// `token NAME`.
#[derive(Parser)]
#[command(
    name = "tasks",
    version,
    about = "The task scheduler: priorities, delays, leases, retries, on executors anywhere"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<TasksCommand>,
    #[command(flatten)]
    flags: Flags,
}

/// Foreman's commands, and the scheduler's own.
#[derive(Subcommand)]
enum TasksCommand {
    #[command(flatten)]
    Server(Command),
    /// Print a hello token for NAME, valid for a day (needs [auth] secret)
    Token {
        /// The `hello` name the token is for
        name: String,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasks: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let Cli { command, flags } = Cli::parse();
    let path = flags
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("tasks.toml"));
    let config = TasksConfig::load(&path)?;
    let _ = (command, config);
    Err(Error::Usage("not yet".into()))
}
