//! Echo server: every message comes back to its sender.
//!
//! ```text
//! cargo run --example echo -- --listen websocket://127.0.0.1:8000 --count 2
//! cargo run --example echo -- --text          # text:// on 127.0.0.1:8001
//! ```
//!
//! Flags: `-c FILE`, `--listen URL`, `--count N`, `--reuse-port`,
//! `--text` (a `text://` listener unless `--listen` names another), and
//! `--turn-away TEXT` (send TEXT to every new connection and close it, as a
//! full server would).

use foreman::cli::Args;
use foreman::{ConnId, Ctx, Handler, Message};

/// Sends each message back.
struct Echo {
    /// `--turn-away TEXT`.
    turn_away: Option<String>,
}

impl Handler for Echo {
    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
        if let Some(text) = &self.turn_away {
            ctx.send(conn, text.as_str());
            ctx.close(conn);
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        ctx.send(conn, msg);
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("echo: {e}");
        std::process::exit(2);
    }
}

fn run() -> foreman::Result<()> {
    let mut args = Args::from_env()?;
    let text = args.rest.iter().any(|a| a == "--text");
    args.rest.retain(|a| a != "--text");
    let mut turn_away = None;
    if let Some(i) = args.rest.iter().position(|a| a == "--turn-away") {
        let text = args
            .rest
            .get(i + 1)
            .cloned()
            .ok_or_else(|| foreman::Error::Usage("--turn-away needs a text".into()))?;
        args.rest.drain(i..i + 2);
        turn_away = Some(text);
    }
    if let Some(unknown) = args.rest.first() {
        return Err(foreman::Error::Usage(format!(
            "unknown argument {unknown:?}"
        )));
    }
    if text && args.listen.is_none() {
        args.listen = Some("text://127.0.0.1:8001".into());
    }
    foreman::Server::with_args(&args)?.run(move |_| Echo {
        turn_away: turn_away.clone(),
    })
}
