//! Broadcast server: every text message a client sends reaches every
//! connection on the server once, whichever worker holds it; and each worker
//! sends the time to its own connections every `--tick-ms` (0 = off).
//!
//! With `--rooms`, a connection's first text message `join NAME` puts it in
//! the group `NAME` instead (answered `joined NAME`), and its later text
//! messages reach that group's members only, itself included: the shape of a
//! chat room without its store, for the bench suite's `chat` scenario.
//!
//! This is the workload of the bench suite's `fanout` scenario.
//!
//! ```text
//! cargo run --release --example broadcast -- --listen websocket://127.0.0.1:8000 --count 2 --tick-ms 1000
//! ```

use clap::Parser;
use foreman::cli::Args;
use foreman::{ConnId, Ctx, Handler, Message, TimerId};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The command line: the library's commands and flags, and `--tick-ms`.
#[derive(Parser)]
#[command(
    name = "broadcast",
    version,
    about = "Broadcast server: every message reaches every connection"
)]
struct Cli {
    #[command(flatten)]
    server: Args,
    /// Milliseconds between each worker's time ticks to its connections (0 = off)
    #[arg(long, global = true, value_name = "MS", default_value_t = 0)]
    tick_ms: u64,
    /// Rooms: `join NAME` first, then messages to that room only
    #[arg(long, global = true)]
    rooms: bool,
}

/// One per worker.
struct Broadcast {
    tick: Duration,
    /// With `--rooms`: each connection's room, once it has joined one.
    rooms: Option<HashMap<ConnId, String>>,
}

impl Handler for Broadcast {
    fn on_worker_start(&mut self, ctx: &mut Ctx) {
        if !self.tick.is_zero() {
            ctx.add_timer(self.tick, true);
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx, _timer: TimerId) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // Only this worker's connections: each worker ticks its own.
        ctx.send_to_local(format!("{{\"time\":{ms}}}"));
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        let Some(rooms) = self.rooms.as_mut() else {
            if msg.is_text() {
                ctx.send_to_all(msg, &[]);
            }
            return;
        };
        let Some(text) = msg.as_text() else {
            return;
        };
        match rooms.get(&conn) {
            Some(room) => {
                ctx.send_to_group(room, msg, &[]);
            }
            None => {
                if let Some(room) = text.strip_prefix("join ").filter(|r| !r.is_empty()) {
                    ctx.join_group(conn, room);
                    ctx.send(conn, format!("joined {room}"));
                    rooms.insert(conn, room.to_string());
                }
            }
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx, conn: ConnId, _close: Option<&foreman::CloseFrame>) {
        if let Some(rooms) = self.rooms.as_mut() {
            rooms.remove(&conn);
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("broadcast: {e}");
        std::process::exit(2);
    }
}

fn run() -> foreman::Result<()> {
    let cli = Cli::parse();
    let (tick, rooms) = (Duration::from_millis(cli.tick_ms), cli.rooms);
    foreman::Server::with_args(&cli.server)?.run(move |_| Broadcast {
        tick,
        rooms: rooms.then(HashMap::new),
    })
}
