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

use clap::Parser;
use foreman::cli::Args;
use foreman::{ConnId, Ctx, Handler, Message};

/// The command line: the library's commands and flags, and echo's own.
#[derive(Parser)]
#[command(
    name = "echo",
    version,
    about = "Echo server: every message comes back to its sender"
)]
struct Cli {
    #[command(flatten)]
    server: Args,
    /// Listen on text:// (127.0.0.1:8001 unless --listen names another)
    #[arg(long, global = true)]
    text: bool,
    /// Send TEXT to every new connection and close it, as a full server would
    #[arg(long, global = true, value_name = "TEXT")]
    turn_away: Option<String>,
}

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
    let Cli {
        mut server,
        text,
        turn_away,
    } = Cli::parse();
    if text && server.flags.listen.is_none() {
        server.flags.listen = Some("text://127.0.0.1:8001".into());
    }
    foreman::Server::with_args(&server)?.run(move |_| Echo {
        turn_away: turn_away.clone(),
    })
}
