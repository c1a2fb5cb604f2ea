//! Echo server: every message comes back to its sender.
//!
//! ```text
//! cargo run --example echo -- --listen websocket://127.0.0.1:8000 --count 2
//! cargo run --example echo -- --text          # text:// on 127.0.0.1:8001
//! ```
//!
//! Flags: `-c FILE`, `--listen URL`, `--count N`, `--reuse-port`, and
//! `--text` (a `text://` listener unless `--listen` names another).

use foreman::cli::Args;
use foreman::{ConnId, Ctx, Handler, Message};

/// Sends each message back.
struct Echo;

impl Handler for Echo {
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
    if let Some(unknown) = args.rest.first() {
        return Err(foreman::Error::Usage(format!(
            "unknown argument {unknown:?}"
        )));
    }
    if text && args.listen.is_none() {
        args.listen = Some("text://127.0.0.1:8001".into());
    }
    foreman::Server::with_args(&args)?.run(|_| Echo)
}
