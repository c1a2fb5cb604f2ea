//! An executor for the task scheduler (`examples/tasks`,
//! `shared/tasks-protocol.md`): it connects to one or more schedulers over
//! `frame://`, says `hello` as an executor of some queues, runs the jobs
//! they push on foreman's blocking pool, keeps their leases with `extend`,
//! and answers `done` or `fail`.
//!
//! ```text
//! task_worker --scheduler ADDR [--scheduler ADDR ...] [--queues q1,q2]
//!             [--capacity N] [--name NAME] [--token JWT]
//!             [--allow-exec PROGRAM ...] [--log-file F] [--listen URL]
//!
//! cargo run --release --example task_worker -- --scheduler 127.0.0.1:8100 --queues default,mail --capacity 8
//! ```
//!
//! `ADDR` is `host:port` or `frame://host:port` (an IP address or
//! `localhost`). Each scheduler gets up to `--capacity` jobs at a time; a
//! lost connection is made again with backoff (100 ms doubling to 5 s),
//! and jobs it had pushed that still run here finish without reporting:
//! their leases went with the connection, so the scheduler runs them again
//! (at-least-once). The job kinds are in `kinds.rs`.
//!
//! It is a foreman server of one worker. Its own listener (`--listen`,
//! default `text://127.0.0.1:0`: a free port, printed at start-up as
//! `listening on URL`) is not part of the protocol: each connection gets
//! one JSON line of state (schedulers up, jobs running and waiting) and is
//! closed. SIGTERM or SIGINT stop it. Logs go to stderr (`RUST_LOG`,
//! default `info`), or to `--log-file`: a line per connection change and
//! per job start and end.
//!
//! Files: `kinds` (what each job kind does), `link` (one scheduler's
//! sessions and slots, as plain data), `executor` (the handler).

mod executor;
mod kinds;
mod link;

use clap::Parser;
use executor::{Executor, Settings};
use foreman::{Config, Server};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

/// The largest frame a scheduler may send (a job push): far above the
/// scheduler's own default `max_frame_bytes` of 2 MiB.
const MAX_FRAME_BYTES: usize = 64 << 20;

/// The most queues one `hello` may name.
const MAX_QUEUES: usize = 100;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "task_worker",
    version,
    about = "An executor for the task scheduler: runs the jobs it pushes"
)]
struct Cli {
    /// A scheduler: host:port or frame://host:port (repeat for several)
    #[arg(long = "scheduler", value_name = "ADDR", required = true, value_parser = scheduler_url)]
    schedulers: Vec<String>,
    /// The queues to take jobs from, comma-separated
    #[arg(long, value_name = "Q1,Q2", value_delimiter = ',', default_value = "default", value_parser = name_arg)]
    queues: Vec<String>,
    /// Jobs at once, per scheduler (1-1000)
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1000))]
    capacity: u16,
    /// The name in hello (default worker-PID)
    #[arg(long, value_name = "NAME", value_parser = name_arg)]
    name: Option<String>,
    /// The hello token, when the scheduler's auth is on (a JWT whose sub is the name)
    #[arg(long, value_name = "JWT")]
    token: Option<String>,
    /// Programs exec jobs may run, by the exact path a job names (repeatable)
    #[arg(long = "allow-exec", value_name = "PROGRAM", num_args = 1..)]
    allow_exec: Vec<String>,
    /// Write the log here instead of stderr
    #[arg(long, value_name = "FILE")]
    log_file: Option<String>,
    /// This executor's own listener, for its state line (not the protocol)
    #[arg(long, value_name = "URL", default_value = "text://127.0.0.1:0")]
    listen: String,
}

/// `host:port` or `frame://host:port` as `frame://host:port`.
fn scheduler_url(s: &str) -> Result<String, String> {
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("frame") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme}:// is not the scheduler's protocol: give host:port or frame://host:port"
            ))
        }
        None => s,
    };
    let ok = match rest.rsplit_once(':') {
        Some(("localhost", port)) => port.parse::<u16>().is_ok(),
        _ => rest.parse::<SocketAddr>().is_ok(),
    };
    if !ok {
        return Err(format!(
            "{s:?}: expected host:port with an IP address or localhost, as 127.0.0.1:8100"
        ));
    }
    Ok(format!("frame://{rest}"))
}

/// A name or queue name of the protocol: 1-64 ASCII letters, digits, `_`,
/// `-`, `.`, `:`.
fn name_arg(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: 1-64 ASCII letters, digits, '_', '-', '.' or ':'"
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("task_worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> foreman::Result<()> {
    let mut queues: Vec<String> = Vec::new();
    for q in cli.queues {
        if !queues.contains(&q) {
            queues.push(q);
        }
    }
    if queues.len() > MAX_QUEUES {
        return Err(foreman::Error::Usage(format!(
            "--queues: at most {MAX_QUEUES} queues"
        )));
    }
    let capacity = usize::from(cli.capacity);
    let settings = Settings {
        name: cli
            .name
            .unwrap_or_else(|| format!("worker-{}", std::process::id())),
        token: cli.token,
        queues,
        capacity,
        allow_exec: Arc::new(cli.allow_exec),
        schedulers: cli.schedulers,
    };
    let slots = capacity * settings.schedulers.len();
    let mut cfg = Config {
        name: "task_worker".into(),
        count: 1,
        log_file: cli.log_file,
        max_frame_bytes: MAX_FRAME_BYTES,
        max_message_bytes: MAX_FRAME_BYTES,
        // A thread per slot (the pool's most), so a job never waits on the
        // pool for another scheduler's; past 256 they queue there.
        blocking_threads: slots.clamp(1, 256),
        blocking_queue: slots + 16,
        ..Config::default()
    };
    cfg.set_listen(&cli.listen)?;
    Server::new(cfg).run(move |_| Executor::new(settings.clone()))
}
