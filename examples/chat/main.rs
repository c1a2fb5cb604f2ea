//! The chat server: rooms, direct messages, presence and history over
//! WebSocket, on foreman. It speaks `shared/chat-protocol.md` (version 1) and
//! serves its own page at `/`.
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
//! precedence), `reply` (frames out), `store` (SQLite writer thread), `auth`
//! (login tokens, over the shared JWT verifier `../common/jwt.rs`), `rate`
//! (token bucket), `worker` (the handler), `page.html`.

mod auth;
mod config;
#[path = "../common/jwt.rs"]
mod jwt;
mod rate;
mod reply;
mod request;
mod store;
mod worker;

use config::ChatConfig;
use foreman::cli::{Args, Command};
use foreman::{Error, Server};
use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

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
    let args = Args::from_env()?;
    let token_for = match args.rest.as_slice() {
        [] => None,
        [word, name] if word == "token" => Some(name.clone()),
        [arg, ..] => {
            return Err(Error::Usage(format!(
                "unexpected argument {arg:?}; usage: chat [start|stop|restart|reload|status|connections] \
                 [-c chat.toml] [--listen ADDR] [--count N] [--reuse-port], or chat token NAME"
            )))
        }
    };
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("chat.toml"));
    let mut config = ChatConfig::load(&path)?;
    if let Some(name) = token_for {
        return print_token(&config, &name);
    }
    args.apply(&mut config.server)?;
    if matches!(args.command, Command::Start | Command::Restart) {
        check_database(&config)?;
    }
    // `reload` reads chat.toml again: the master swaps in the new settings,
    // and the workers it then forks start with them.
    let current = Rc::new(RefCell::new(Arc::new(config)));
    let reloaded = current.clone();
    let server = Server::new(current.borrow().server.clone())
        .command(args.command)
        .daemon(args.daemon)
        .reload_config(move || {
            // Everything the master or a new worker would refuse is checked
            // before the new settings are handed on.
            let mut config = ChatConfig::load(&path)?;
            args.apply(&mut config.server)?;
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
/// any fork (workers open their own).
fn check_database(config: &ChatConfig) -> Result<(), Error> {
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
