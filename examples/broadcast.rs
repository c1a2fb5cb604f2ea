//! Broadcast server: every text message a client sends reaches every
//! connection on the server once, whichever worker holds it; and each worker
//! sends the time to its own connections every `--tick-ms` (0 = off).
//!
//! This is the workload of the bench suite's `fanout` scenario.
//!
//! ```text
//! cargo run --release --example broadcast -- --listen websocket://127.0.0.1:8000 --count 2 --tick-ms 1000
//! ```

use foreman::cli::Args;
use foreman::{ConnId, Ctx, Handler, Message, TimerId};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One per worker.
struct Broadcast {
    tick: Duration,
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

    fn on_message(&mut self, ctx: &mut Ctx, _conn: ConnId, msg: Message) {
        if msg.is_text() {
            ctx.send_to_all(msg, &[]);
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
    let args = Args::from_env()?;
    let mut tick_ms = 0u64;
    let mut rest = args.rest.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--tick-ms" => {
                let v = rest
                    .next()
                    .ok_or_else(|| usage("--tick-ms needs a value"))?;
                tick_ms = v.parse().map_err(|_| usage("--tick-ms: not a number"))?;
            }
            other => return Err(usage(&format!("unknown argument {other:?}"))),
        }
    }
    let tick = Duration::from_millis(tick_ms);
    foreman::Server::with_args(&args)?.run(move |_| Broadcast { tick })
}

fn usage(m: &str) -> foreman::Error {
    foreman::Error::Usage(m.to_string())
}
