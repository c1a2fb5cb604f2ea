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

#[path = "../common/app.rs"]
mod app;
#[path = "../common/auth.rs"]
mod auth;
mod brain;
mod config;
mod front;
mod jobs;
#[path = "../common/jwt.rs"]
mod jwt;
mod link;
mod live;
mod reply;
mod request;
mod store;
mod types;
mod worker;

use clap::{Parser, Subcommand};
use config::TasksConfig;
use foreman::cli::{Command, Flags};
use foreman::{Error, Server};
use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

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
    let (command, token_for) = match command {
        None => (Command::default(), None),
        Some(TasksCommand::Server(command)) => (command, None),
        Some(TasksCommand::Token { name }) => (Command::default(), Some(name)),
    };
    let path = flags
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("tasks.toml"));
    let mut config = TasksConfig::load(&path)?;
    if let Some(name) = token_for {
        return print_token(&config, &name);
    }
    flags.apply(&mut config.server)?;
    if command.starts() {
        check_database(&config)?;
    }
    // `reload` reads tasks.toml again: the master swaps in the new
    // settings, and the workers it then forks start with them.
    let current = Rc::new(RefCell::new(Arc::new(config)));
    let reloaded = current.clone();
    let server = Server::new(current.borrow().server.clone())
        .command(command)
        .reload_config(move || {
            let mut config = TasksConfig::load(&path)?;
            flags.apply(&mut config.server)?;
            config.server.validate()?;
            check_database(&config)?;
            let server = config.server.clone();
            *reloaded.borrow_mut() = Arc::new(config);
            Ok(server)
        });
    server.run(move |_worker| worker::TasksWorker::new(current.borrow().clone()))
}

/// Creates the database and its schema now, so a bad path stops start-up
/// (or a reload) here with a message; closed again before any fork (the
/// brain opens its own).
fn check_database(config: &TasksConfig) -> Result<(), Error> {
    store::check(&config.database).map_err(|e| Error::Config(format!("tasks.database: {e}")))
}

/// `tasks token NAME`: prints a hello token for NAME, valid for a day,
/// signed with the configured `[auth] secret`.
fn print_token(config: &TasksConfig, name: &str) -> Result<(), Error> {
    let Some(secret) = &config.auth_secret else {
        return Err(Error::Usage(
            "token: set [auth] secret in the config first".into(),
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!("{}", auth::sign(secret, name, now + 86_400));
    Ok(())
}
