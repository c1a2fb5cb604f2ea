//! The chat server: rooms, direct messages, presence and history over
//! WebSocket, on foreman. It speaks `shared/chat-protocol.md` (version 1.1)
//! and serves its own page at `/`. With a `[cluster]` table, several chat
//! servers share one Redis and serve the same rooms.
//!
//! ```text
//! cargo run --release --example chat                 # reads ./chat.toml
//! cargo run --release --example chat -- -c my.toml --listen 0.0.0.0:9000 --count 4
//! cargo run --release --example chat -- token alice   # a login token, when auth is on
//! ```
//!
//! Then open <http://127.0.0.1:8000/>.
//!
//! Files: `config` (chat.toml), `request` (one type per command, error
//! precedence), `reply` (frames out), `store` (the writer thread, SQLite),
//! `store_redis` (the store on a cluster, with `store_redis.lua`), `auth`
//! (login tokens, over the shared JWT verifier `../common/jwt.rs`), `rate`
//! (token bucket), `worker` (the handler), `page.html`.

#[path = "../common/app.rs"]
mod app;
#[path = "../common/auth.rs"]
mod auth;
mod config;
mod events;
#[path = "../common/jwt.rs"]
mod jwt;
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
mod worker;

use clap::{Parser, Subcommand};
use config::ChatConfig;
use foreman::cli::{Command, Flags};
use foreman::{Error, Server};
use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

/// The chat's command line: foreman's commands and flags, and `token NAME`.
#[derive(Parser)]
#[command(
    name = "chat",
    version,
    about = "The chat server: rooms, direct messages, presence and history over WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<ChatCommand>,
    #[command(flatten)]
    flags: Flags,
}

/// Foreman's commands, and the chat's own.
#[derive(Subcommand)]
enum ChatCommand {
    #[command(flatten)]
    Server(Command),
    /// Print a login token for NAME, valid for a day (needs [auth] secret)
    Token {
        /// The user name the token is for
        name: String,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let Cli { command, flags } = Cli::parse();
    let (command, token_for) = match command {
        None => (Command::default(), None),
        Some(ChatCommand::Server(command)) => (command, None),
        Some(ChatCommand::Token { name }) => (Command::default(), Some(name)),
    };
    let path = flags
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("chat.toml"));
    let mut config = ChatConfig::load(&path)?;
    if let Some(name) = token_for {
        return print_token(&config, &name);
    }
    flags.apply(&mut config.server)?;
    if command.starts() {
        check_database(&config)?;
    }
    // `reload` reads chat.toml again: the master swaps in the new settings,
    // and the workers it then forks start with them.
    let current = Rc::new(RefCell::new(Arc::new(config)));
    let reloaded = current.clone();
    let server = Server::new(current.borrow().server.clone())
        .command(command)
        .reload_config(move || {
            // Everything the master or a new worker would refuse is checked
            // before the new settings are handed on.
            let mut config = ChatConfig::load(&path)?;
            flags.apply(&mut config.server)?;
            config.server.validate()?;
            config.server.check_files()?;
            check_database(&config)?;
            let server = config.server.clone();
            *reloaded.borrow_mut() = Arc::new(config);
            Ok(server)
        });
    server.run(move |_worker| worker::ChatWorker::new(current.borrow().clone()))
}

/// Creates the database and its schema now, so a bad path stops start-up
/// (or a reload) here with a message; the connection is closed again before
/// any fork (workers open their own). On a cluster the store is Redis,
/// which may be down at start (requests are answered `unavailable` until it
/// is up): nothing to check.
fn check_database(config: &ChatConfig) -> Result<(), Error> {
    if config.server.cluster.is_some() {
        return Ok(());
    }
    store::Store::open(&config.database, config.busy_timeout)
        .map(drop)
        .map_err(|e| {
            Error::Config(format!(
                "history.database = {:?}: {e}",
                config.database.display()
            ))
        })
}

/// `chat token NAME`: prints a login token for NAME, valid for a day, signed
/// with the configured `[auth] secret` (for trying auth out; real deployments
/// issue tokens from their own backend).
fn print_token(config: &ChatConfig, name: &str) -> Result<(), Error> {
    let Some(secret) = &config.auth_secret else {
        return Err(Error::Usage(
            "token: set [auth] secret in the config first".into(),
        ));
    };
    if !request::valid_name(name) {
        return Err(Error::Usage(format!(
            "token: {name:?} is not a valid user name"
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!("{}", auth::sign(secret, name, now + 86_400));
    Ok(())
}
