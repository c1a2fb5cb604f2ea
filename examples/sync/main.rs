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
//! gaps, to this worker's subscribers), `http` (`/doc/KEY`), `changes`
//! (every change to RabbitMQ, with `[amqp]`), `worker` (the handler, and
//! writes from RabbitMQ), `page.html`; `../common/outbox.rs` (an outbox
//! published with confirms, shared with the chat).

#[path = "../common/app.rs"]
mod app;
#[path = "../common/auth.rs"]
mod auth;
mod changes;
mod config;
mod feed;
mod http;
#[path = "../common/jwt.rs"]
mod jwt;
mod merge;
#[path = "../common/outbox.rs"]
mod outbox;
#[path = "../common/rate.rs"]
mod rate;
#[path = "../common/redis_reply.rs"]
mod redis_reply;
mod reply;
mod request;
mod store;
mod store_redis;
mod store_sqlite;
mod store_writer;
mod worker;

use clap::{Parser, Subcommand};
use config::SyncConfig;
use foreman::cli::{Command, Flags};
use foreman::{Error, Server};
use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

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
    let (command, token_for) = match command {
        None => (Command::default(), None),
        Some(SyncCommand::Server(command)) => (command, None),
        Some(SyncCommand::Token { client }) => (Command::default(), Some(client)),
    };
    let path = flags
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("sync.toml"));
    let mut config = SyncConfig::load(&path)?;
    if let Some(client) = token_for {
        return print_token(&config, &client);
    }
    flags.apply(&mut config.server)?;
    if command.starts() {
        check_database(&config)?;
    }
    // `reload` reads sync.toml again: the master swaps in the new settings,
    // and the workers it then forks start with them.
    let current = Rc::new(RefCell::new(Arc::new(config)));
    let reloaded = current.clone();
    let server = Server::new(current.borrow().server.clone())
        .command(command)
        .reload_config(move || {
            let mut config = SyncConfig::load(&path)?;
            flags.apply(&mut config.server)?;
            config.server.validate()?;
            config.server.check_files()?;
            check_database(&config)?;
            let server = config.server.clone();
            *reloaded.borrow_mut() = Arc::new(config);
            Ok(server)
        });
    server.run(move |_worker| worker::SyncWorker::new(current.borrow().clone()))
}

/// Creates the database, its schema and its epoch now, so a bad path stops
/// start-up (or a reload) here with a message; closed again before any fork
/// (workers open their own). On a cluster the store is Redis, which may be
/// down at start: nothing to check.
fn check_database(config: &SyncConfig) -> Result<(), Error> {
    store::check(config).map(drop).map_err(|e| {
        Error::Config(format!(
            "sync.db_path = {:?}: {e}",
            config.db_path.display()
        ))
    })
}

/// `sync token CLIENT`: prints a device token for CLIENT, valid for a day,
/// signed with the configured `[auth] secret` (for trying auth out; real
/// deployments issue tokens from their own backend).
fn print_token(config: &SyncConfig, client: &str) -> Result<(), Error> {
    let Some(secret) = &config.auth_secret else {
        return Err(Error::Usage(
            "token: set [auth] secret in the config first".into(),
        ));
    };
    if !request::valid_client(client) {
        return Err(Error::Usage(format!(
            "token: {client:?} is not a valid client name"
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!("{}", auth::sign(secret, client, now + 86_400));
    Ok(())
}
