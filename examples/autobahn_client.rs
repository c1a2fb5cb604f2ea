//! A WebSocket client for Autobahn's fuzzingserver mode (run by
//! `tests/autobahn.rs` against PyPI's `kosoku -m fuzzingserver`): the worker
//! drives the suite through `Ctx::connect`, one connection at a time, as
//! Autobahn's client protocol asks:
//!
//! 1. `/getCaseCount`: the server sends the number of cases as text;
//! 2. `/runCase?case=N&agent=AGENT` for N = 1..=count: every text and binary
//!    message is echoed back until the server (or the case) ends it;
//! 3. `/updateReports?agent=AGENT`: the run is over.
//!
//! ```text
//! autobahn_client --listen websocket://127.0.0.1:0 --count 1 \
//!     --fuzzingserver 127.0.0.1:9001 [--agent foreman]
//! ```
//!
//! The listener serves nothing; it is there because every foreman server
//! has one. Progress goes to stdout: `autobahn: case N of COUNT` and, at the
//! end, `autobahn: done, COUNT cases`.

use clap::Parser;
use foreman::cli::Args;
use foreman::{ConnError, ConnId, ConnectOptions, Ctx, Handler, Message};
use std::time::Duration;

/// The command line: the library's commands and flags, and the suite's.
#[derive(Parser)]
#[command(
    name = "autobahn_client",
    version,
    about = "A WebSocket client for Autobahn's fuzzingserver"
)]
struct Cli {
    #[command(flatten)]
    server: Args,
    /// The fuzzingserver: HOST:PORT (required)
    #[arg(long, global = true, value_name = "HOST:PORT")]
    fuzzingserver: Option<String>,
    /// The agent name the reports are filed under
    #[arg(long, global = true, default_value = "foreman")]
    agent: String,
}

/// What the connection in flight is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Count,
    Case(u32),
    Report,
}

struct Client {
    server: String,
    agent: String,
    count: Option<u32>,
    /// The connection in flight, what it is for and whether it opened.
    current: Option<(ConnId, Step, bool)>,
}

impl Client {
    fn start(&mut self, ctx: &mut Ctx, step: Step) {
        let path = match step {
            Step::Count => "/getCaseCount".to_string(),
            Step::Case(n) => format!("/runCase?case={n}&agent={}", self.agent),
            Step::Report => format!("/updateReports?agent={}", self.agent),
        };
        let url = format!("ws://{}{path}", self.server);
        let opts = ConnectOptions::new().timeout(Duration::from_secs(60));
        match ctx.connect(&url, opts) {
            Ok(id) => self.current = Some((id, step, false)),
            Err(e) => {
                eprintln!("autobahn: connect {url}: {e}");
                std::process::exit(1);
            }
        }
    }

    /// The connection for `step` is over: go on to the next.
    fn next(&mut self, ctx: &mut Ctx, step: Step) {
        self.current = None;
        match step {
            Step::Count => match self.count {
                Some(0) | None => {
                    eprintln!("autobahn: no case count from the server");
                    std::process::exit(1);
                }
                Some(_) => self.start(ctx, Step::Case(1)),
            },
            Step::Case(n) if Some(n) < self.count => self.start(ctx, Step::Case(n + 1)),
            Step::Case(_) => self.start(ctx, Step::Report),
            Step::Report => {
                println!("autobahn: done, {} cases", self.count.unwrap_or(0));
            }
        }
    }

    fn step_of(&self, conn: ConnId) -> Option<(Step, bool)> {
        self.current
            .filter(|(id, _, _)| *id == conn)
            .map(|(_, step, open)| (step, open))
    }
}

impl Handler for Client {
    fn on_worker_start(&mut self, ctx: &mut Ctx) {
        self.start(ctx, Step::Count);
    }

    fn on_connect(&mut self, _ctx: &mut Ctx, conn: ConnId) {
        if let Some((id, step, open)) = self.current.as_mut() {
            if *id == conn {
                *open = true;
                if let Step::Case(n) = step {
                    println!("autobahn: case {n} of {}", self.count.unwrap_or(0));
                }
            }
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        match self.step_of(conn) {
            Some((Step::Count, _)) => {
                let text = String::from_utf8_lossy(msg.as_bytes());
                self.count = text.trim().parse().ok();
            }
            Some((Step::Case(_), _)) => {
                ctx.send(conn, msg);
            }
            _ => {}
        }
    }

    fn on_error(&mut self, ctx: &mut Ctx, conn: ConnId, error: &ConnError) {
        // An attempt that never opened gets `on_error` alone; an open
        // connection gets `on_close` after this.
        if let Some((step, open)) = self.step_of(conn) {
            if !open {
                eprintln!("autobahn: {step:?} failed: {error}");
                self.next(ctx, step);
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, _close: Option<&foreman::CloseFrame>) {
        if let Some((step, _)) = self.step_of(conn) {
            self.next(ctx, step);
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("autobahn_client: {e}");
        std::process::exit(2);
    }
}

fn run() -> foreman::Result<()> {
    let cli = Cli::parse();
    // Required, but checked here: clap cannot require a global flag.
    let server = cli
        .fuzzingserver
        .ok_or_else(|| foreman::Error::Usage("--fuzzingserver HOST:PORT is required".into()))?;
    let agent = cli.agent;
    foreman::Server::with_args(&cli.server)?.run(move |_| Client {
        server: server.clone(),
        agent: agent.clone(),
        count: None,
        current: None,
    })
}
