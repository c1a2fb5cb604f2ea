//! The push bench (issue 14): messages from RabbitMQ to WebSocket users,
//! from users to RabbitMQ, and through the HTTP push API, in one run
//! against the chat server (`examples/chat`, count 2) and the machine's
//! RabbitMQ (`amqp://guest:guest@127.0.0.1:5672/%2f`).
//!
//! ```text
//! cargo bench --bench push                          # 1,000 users, 20,000 messages per row
//! cargo bench --bench push -- --messages 5000 --runs 3
//! ```
//!
//! Each run writes a `chat.toml` into a fresh temp dir (a free port,
//! `count = 2`, the database there, an `[api] key`, `[amqp]` with a push
//! queue named for the run, the tick off, and the rate limit raised to
//! 100,000 frames/s per connection: each user keeps `--say-window` says
//! unacked, far past the shipped 20/s), declares the push queue and a queue
//! of its own bound to `chat.messages` with `#`, starts the chat, waits
//! until both workers consume the push queue, and logs in `--users` users
//! (uid = login name `u0000`, ...; each joins a room of its own name) from
//! tasks on `--threads` client threads, until `/api/online` counts them
//! all; `GET /api/uid/U` of each says how they split over the two workers
//! (printed: a push to a user on the other worker crosses the bus). Then,
//! one after the other:
//!
//! 1. **RabbitMQ -> WebSocket.** The bench publishes `--messages`
//!    `/api/publish` bodies (`{"to": {"uid": U}, "data": {"type": "bench",
//!    "row": 1, "n": N, "t": T}}`, user `N % users`), persistent, to the push
//!    queue through the default exchange with publisher confirms, keeping
//!    `--window` unconfirmed. msgs/s: distinct deliveries at the users over
//!    the time from the first publish to the last delivery; latency: from a
//!    body's publish to its delivery.
//! 2. **Users -> RabbitMQ.** Each user says its share of `--messages`
//!    numbered texts in its room (`"N T"`, ref `N`), at most `--say-window`
//!    unacked; the chat's worker 0 publishes each stored message to
//!    `chat.messages` with confirms, and the bench consumes its bound queue.
//!    msgs/s: distinct events at the consumer over the time from the first
//!    `say` to the last event; latency: from a `say` to its event; also the
//!    acks/s, say-to-ack latency, and the lag from the last ack to the last
//!    event.
//! 3. **HTTP API.** `--messages` `POST /api/publish` (Bearer key, the same
//!    bodies with `"row": 3`) over `--http-conns` keep-alive HTTP/1.1
//!    connections, each pipelining up to `--http-window` requests. msgs/s:
//!    requests answered 200 `{"delivered": 1}` over the time from the first
//!    request to the last answer; latency: request to answer; also the
//!    deliveries/s at the users and the request-to-delivery latency.
//!
//! Every message carries its number, so each row counts lost (never
//! arrived) and duplicates (arrived again); the rows wait for the last
//! arrival with a deadline (no progress for 15 s). A lost message, a
//! message at the wrong user, a nack, or a protocol error (an `error`
//! frame, a close, an answer other than 200) makes the bench exit non-zero,
//! after the table when the run finished. The bench deletes its queues at
//! the end of each run, failed or not.
//!
//! It prints a Markdown table (medians over the runs; lost and dups summed)
//! and writes every run's figures to `target/bench/push-latest.json`; the
//! chat's log goes to `target/bench/logs/`. Options:
//!
//! - `--messages N`: messages per row (default 20000).
//! - `--users N`: WebSocket users (default 1000).
//! - `--runs N`: runs, each with a fresh server (default 1).
//! - `--window N`: unconfirmed publishes to RabbitMQ (default 1000).
//! - `--say-window N`: unacked says per user (default 4).
//! - `--http-conns N`, `--http-window N`: API connections (default 4) and
//!   requests in flight on each (default 64).
//! - `--threads N`: client threads, the users' and the publishers' (default 3).
//! - `--no-build`: use `target/release/examples/chat` as it is (otherwise
//!   it is built in release mode first).
//! - `--help`: this list.

#[path = "../common/cargo.rs"]
mod cargo;
#[path = "../common/proc.rs"]
mod proc;
#[path = "../common/run.rs"]
mod run;

mod broker;
mod http;
mod users;

use broker::Broker;
use cargo::Paths;
use proc::Proc;
use run::{loadavg, median, quantile_ms, TempDir};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use users::{now_us, uid, Board, Cmd, Tally, Users};

/// The machine's broker.
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The API key of the bench's chat.
const API_KEY: &str = "foreman-bench-push-0123456789";

/// The chat's exchange of stored messages.
const EXCHANGE: &str = "chat.messages";

/// A wait fails after this long without progress.
const STALL: Duration = Duration::from_secs(15);

/// How long the chat's workers may take to consume the push queue.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

const HELP: &str = "\
cargo bench --bench push -- [--messages N] [--users N] [--runs N] [--window N]
                            [--say-window N] [--http-conns N] [--http-window N]
                            [--threads N] [--no-build]

  --messages N     messages per row (default 20000)
  --users N        WebSocket users (default 1000)
  --runs N         runs, each with a fresh server (default 1)
  --window N       unconfirmed publishes to RabbitMQ (default 1000)
  --say-window N   unacked says per user (default 4)
  --http-conns N   keep-alive API connections (default 4)
  --http-window N  pipelined requests per API connection (default 64)
  --threads N      client threads (default 3)
  --no-build       use target/release/examples/chat as it is
  --help           this text

The chat (count 2) with the machine's RabbitMQ: RabbitMQ -> WebSocket
(msgs/s), users -> RabbitMQ (confirmed events/s), POST /api/publish
(publishes/s); lost and duplicates per row. JSON: target/bench/push-latest.json.";

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    messages: usize,
    users: usize,
    runs: usize,
    window: usize,
    say_window: usize,
    http_conns: usize,
    http_window: usize,
    threads: usize,
    build: bool,
}

/// Parses the options; `Ok(None)` for `--help`.
fn parse_options(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        messages: 20_000,
        users: 1000,
        runs: 1,
        window: 1000,
        say_window: 4,
        http_conns: 4,
        http_window: 64,
        threads: 3,
        build: true,
    };
    let numbers = &mut [
        ("--messages", &mut o.messages),
        ("--users", &mut o.users),
        ("--runs", &mut o.runs),
        ("--window", &mut o.window),
        ("--say-window", &mut o.say_window),
        ("--http-conns", &mut o.http_conns),
        ("--http-window", &mut o.http_window),
        ("--threads", &mut o.threads),
    ];
    Ok(run::parse_args(args, numbers, &mut o.build)?.then_some(o))
}

/// The chat's config for a run in `dir`, pushing from `queue`.
fn config(dir: &Path, queue: &str) -> String {
    // Paths and names go in as TOML basic strings (JSON's escapes are
    // TOML's for any we make).
    let s = |v: &str| Value::from(v).to_string();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncount = 2\nwebsocket_path = \"/ws\"\n\
         ping_interval_ms = 0\nidle_timeout_ms = 0\nmax_requests_per_connection = 1000000\n\n\
         [chat]\ntick_interval_ms = 0\nhistory_on_join = 0\n\n\
         [rate_limit]\nper_second = 100000\nburst = 100000\n\n\
         [history]\ndatabase = {}\n\n\
         [api]\nkey = {}\n\n\
         [amqp]\nurl = {}\nqueue = {}\n",
        s(&dir.join("chat.db").display().to_string()),
        s(API_KEY),
        s(AMQP_URL),
        s(queue),
    )
}

/// A name no other run (or bench) uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// One row's figures in one run.
#[derive(Clone, Debug, Default)]
struct Fig {
    count: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: usize,
    dups: usize,
    /// Further named figures (confirms/s, lag, ...).
    more: Vec<(&'static str, f64)>,
}

impl Fig {
    /// From a tally of `count` messages whose clock started at `t0_us`,
    /// over the time to its last arrival.
    fn of(t: &Tally, t0_us: u64) -> Fig {
        let lat = t.latencies();
        Fig {
            count: t.expected(),
            rate: t.unique() as f64 / secs(t0_us, t.last_us()),
            p50_ms: quantile_ms(&lat, 0.50),
            p99_ms: quantile_ms(&lat, 0.99),
            lost: t.expected() - t.unique(),
            dups: t.dups(),
            more: Vec::new(),
        }
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "count": self.count, "msgs_per_s": self.rate, "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms, "lost": self.lost, "dups": self.dups,
        });
        for (k, x) in &self.more {
            v[*k] = json!(x);
        }
        v
    }
}

/// Seconds between two [`now_us`] stamps (at least a microsecond).
fn secs(from_us: u64, to_us: u64) -> f64 {
    (to_us.saturating_sub(from_us).max(1)) as f64 / 1e6
}

/// Waits until `have()` reaches `want`, failing after [`STALL`] without
/// progress or at the first protocol error. Returns whether it got there.
async fn wait_for(board: &Board, want: usize, have: impl Fn() -> usize) -> bool {
    let mut last = have();
    let mut moved = Instant::now();
    loop {
        let now = have();
        if now >= want {
            return true;
        }
        if board.error_count() > 0 {
            return false;
        }
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() > STALL {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls `f` until it returns `Ok(true)` or `timeout` passed; the last
/// answer in the error.
async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{what} not within {timeout:?} {last}"))
}

/// The three rows of one run.
struct RunFigs {
    rows: [Fig; 3],
    /// The users' connections on each worker.
    per_worker: Vec<usize>,
    /// What failed in a run that finished (lost, strays, nacks).
    failures: Vec<String>,
}

/// The row names, in order.
const ROWS: [&str; 3] = [
    "RabbitMQ -> WebSocket (msgs/s)",
    "users -> RabbitMQ (confirmed events/s)",
    "HTTP API (publishes/s answered 200)",
];

/// A `data` body of push `n` of `row` for `users` users.
fn push_body(row: u64, n: u64, users: usize) -> String {
    json!({
        "to": {"uid": uid(n as usize % users)},
        "data": {"type": "bench", "row": row, "n": n, "t": now_us()},
    })
    .to_string()
}

/// One run: a fresh chat and users, the three rows; its queues deleted
/// whatever happened.
async fn one_run(run: usize, o: &Options, paths: &Paths) -> Result<RunFigs, String> {
    let dir = TempDir::new("push", &format!("run{}", run + 1))?;
    let push_q = unique("foreman.bench.push");
    let events_q = unique("foreman.bench.events");
    let broker = Broker::connect(AMQP_URL).await?;
    let declared = async {
        broker.declare_durable(&push_q).await?;
        broker.bind_all(&events_q, EXCHANGE).await
    }
    .await;
    let result = match declared {
        Ok(()) => measure(run, o, paths, &dir.0, &broker, &push_q, &events_q).await,
        Err(e) => Err(e),
    };
    for q in [&push_q, &events_q] {
        if let Err(e) = broker.delete(q).await {
            eprintln!("bench: cannot delete queue {e}");
        }
    }
    broker.close().await;
    result
}

/// The chat started, its users logged in, the rows measured.
async fn measure(
    run: usize,
    o: &Options,
    paths: &Paths,
    dir: &Path,
    broker: &Broker,
    push_q: &str,
    events_q: &str,
) -> Result<RunFigs, String> {
    let toml = dir.join("chat.toml");
    std::fs::write(&toml, config(dir, push_q)).map_err(|e| format!("write config: {e}"))?;
    let bin = paths.examples.join("chat");
    if !bin.exists() {
        return Err(format!("{} not built", bin.display()));
    }
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "warn").arg("-c").arg(&toml);
    let log = paths.out.join(format!("logs/push-chat-run{}.log", run + 1));
    let mut chat = Proc::start(cmd, log)?;
    let addr = chat.addr;
    let board = Arc::new(Board::new(o.users, o.messages, o.messages, o.messages));
    let users = Users::start(addr, &board, 64);
    let b: &Board = &board;
    let measured = async {
        poll_until(
            "both workers consuming the push queue",
            READY_TIMEOUT,
            || async move { Ok(broker.declare_durable(push_q).await? >= 2) },
        )
        .await?;
        let want = o.users;
        poll_until(
            "every user logged in",
            Duration::from_secs(60),
            || async move {
                if b.error_count() > 0 {
                    return Err(b.errors());
                }
                Ok(b.ready.load(Relaxed) >= want)
            },
        )
        .await
        .map_err(|e| format!("{e} ({} ready)", b.ready.load(Relaxed)))?;
        poll_until(
            "/api/online counting every user",
            READY_TIMEOUT,
            || async move {
                let (status, body) = http::once(addr, "GET", "/api/online", API_KEY, "").await?;
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                Ok(status == 200 && v["uids"].as_u64() == Some(want as u64))
            },
        )
        .await?;
        let per_worker = users_per_worker(addr, want).await?;
        eprintln!("bench:   users per worker: {per_worker:?}");
        let consumer = {
            let (b1, b2) = (board.clone(), board.clone());
            broker
                .consume(
                    events_q,
                    move |body| {
                        if let Err(e) = users::record_event(&b1, body) {
                            b1.error(e);
                        }
                    },
                    move |e| b2.error(e),
                )
                .await?
        };
        let rows = rows(o, addr, broker, push_q, &board, &users).await;
        consumer.abort();
        rows.map(|mut r| {
            r.per_worker = per_worker;
            r
        })
    }
    .await;
    users.close().await;
    let stopped = chat.stop();
    let mut figs = measured?;
    if board.error_count() > 0 {
        return Err(board.errors());
    }
    if !stopped {
        figs.failures.push(format!(
            "the chat did not stop on SIGTERM; see {}",
            chat.log.display()
        ));
    }
    Ok(figs)
}

/// How many of the `users` have their connection on each worker, from
/// `GET /api/uid/U` (a connection id is `WORKER.SLOT.GENERATION`).
async fn users_per_worker(addr: SocketAddr, users: usize) -> Result<Vec<usize>, String> {
    let mut per = Vec::new();
    for i in 0..users {
        let path = format!("/api/uid/{}", uid(i));
        let (status, body) = http::once(addr, "GET", &path, API_KEY, "").await?;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let worker = v["connections"][0]
            .as_str()
            .and_then(|c| c.split('.').next())
            .and_then(|w| w.parse::<usize>().ok());
        let Some(w) = worker.filter(|_| status == 200) else {
            return Err(format!("GET {path} answered {status} {body}"));
        };
        if per.len() <= w {
            per.resize(w + 1, 0);
        }
        per[w] += 1;
    }
    Ok(per)
}

/// The three rows, one after the other.
async fn rows(
    o: &Options,
    addr: SocketAddr,
    broker: &Broker,
    push_q: &str,
    board: &Arc<Board>,
    users: &Users,
) -> Result<RunFigs, String> {
    let n = o.messages;
    let u = o.users;
    let mut failures = Vec::new();

    // 1. RabbitMQ -> WebSocket.
    eprintln!(
        "bench:   RabbitMQ -> WebSocket: {n} publishes, {} unconfirmed at most",
        o.window
    );
    let t0 = now_us();
    let published = broker
        .publish_window(push_q, n, |k| push_body(1, k as u64, u), o.window)
        .await?;
    if published.nacked > 0 {
        failures.push(format!("row 1: {} publishes nacked", published.nacked));
    }
    wait_for(board, n, || board.amqp.unique()).await;
    let mut amqp = Fig::of(&board.amqp, t0);
    amqp.more.push((
        "confirms_per_s",
        published.acked as f64 / secs(t0, published.last_confirm_us),
    ));
    report(&amqp);

    // 2. Users -> RabbitMQ.
    eprintln!(
        "bench:   users -> RabbitMQ: {n} says, {} unacked per user at most",
        o.say_window
    );
    let t0 = now_us();
    for i in 0..u {
        let ns: Vec<u64> = (i..n).step_by(u).map(|k| k as u64).collect();
        users.tell(
            i,
            Cmd::Say {
                ns,
                window: o.say_window,
            },
        );
    }
    wait_for(board, n, || board.acks.unique()).await;
    wait_for(board, n, || board.events.unique()).await;
    let mut events = Fig::of(&board.events, t0);
    let acks = Fig::of(&board.acks, t0);
    events.more.extend([
        ("acks_per_s", acks.rate),
        ("ack_p50_ms", acks.p50_ms),
        ("ack_p99_ms", acks.p99_ms),
        ("acks_lost", acks.lost as f64),
        (
            "lag_ms",
            board.events.last_us().saturating_sub(board.acks.last_us()) as f64 / 1000.0,
        ),
    ]);
    if acks.lost > 0 {
        failures.push(format!("row 2: {} says never acked", acks.lost));
    }
    report(&events);

    // 3. HTTP API.
    eprintln!(
        "bench:   HTTP API: {n} POST /api/publish over {} connections, {} in flight on each",
        o.http_conns, o.http_window
    );
    let t0 = now_us();
    let answered = http::publish_pipelined(
        addr,
        API_KEY,
        n,
        o.http_conns,
        o.http_window,
        Arc::new(move |k| push_body(3, k, u)),
    )
    .await?;
    wait_for(board, n, || board.http.unique()).await;
    let delivered = Fig::of(&board.http, t0);
    let api = Fig {
        count: n,
        rate: answered.ok as f64 / secs(t0, answered.last_us),
        p50_ms: quantile_ms(&answered.latencies_us, 0.50),
        p99_ms: quantile_ms(&answered.latencies_us, 0.99),
        lost: delivered.lost,
        dups: delivered.dups,
        more: vec![
            ("deliveries_per_s", delivered.rate),
            ("delivery_p50_ms", delivered.p50_ms),
            ("delivery_p99_ms", delivered.p99_ms),
        ],
    };
    report(&api);

    let rows = [amqp, events, api];
    for (k, r) in rows.iter().enumerate() {
        if r.lost > 0 {
            failures.push(format!("row {}: {} of {} lost", k + 1, r.lost, r.count));
        }
        // At least once allows repeats after a fault; this run has none.
        if r.dups > 0 {
            failures.push(format!("row {}: {} delivered twice", k + 1, r.dups));
        }
    }
    for (k, t) in [&board.amqp, &board.events, &board.http].iter().enumerate() {
        if t.stray() > 0 {
            failures.push(format!(
                "{}: {} messages at the wrong user or out of range",
                ROWS[k],
                t.stray()
            ));
        }
    }
    Ok(RunFigs {
        rows,
        failures,
        per_worker: Vec::new(),
    })
}

/// A row's figures on stderr as they come.
fn report(f: &Fig) {
    let more: Vec<String> = f.more.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    eprintln!(
        "bench:     {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, lost {}, dups {}; {}",
        f.rate,
        f.p50_ms,
        f.p99_ms,
        f.lost,
        f.dups,
        more.join(", ")
    );
}

/// Medians over runs (lost and dups summed).
fn medians(runs: &[&Fig]) -> Fig {
    let m = |f: &dyn Fn(&Fig) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let first = runs.first().map(|f| f.more.clone()).unwrap_or_default();
    Fig {
        count: runs.first().map_or(0, |f| f.count),
        rate: m(&|f| f.rate),
        p50_ms: m(&|f| f.p50_ms),
        p99_ms: m(&|f| f.p99_ms),
        lost: runs.iter().map(|f| f.lost).sum(),
        dups: runs.iter().map(|f| f.dups).sum(),
        more: first
            .iter()
            .enumerate()
            .map(|(k, (name, _))| (*name, m(&|f| f.more.get(k).map_or(0.0, |x| x.1))))
            .collect(),
    }
}

/// The notes column of a row.
fn notes(row: usize, f: &Fig) -> String {
    let get = |k: &str| f.more.iter().find(|m| m.0 == k).map_or(0.0, |m| m.1);
    match row {
        0 => format!(
            "publish to delivery; {:.0} confirms/s",
            get("confirms_per_s")
        ),
        1 => format!(
            "say to event; {:.0} acks/s, say to ack p50 {:.2} / p99 {:.2} ms; lag last ack to last event {:.1} ms",
            get("acks_per_s"),
            get("ack_p50_ms"),
            get("ack_p99_ms"),
            get("lag_ms")
        ),
        _ => format!(
            "request to answer; {:.0} deliveries/s, request to delivery p50 {:.2} / p99 {:.2} ms",
            get("deliveries_per_s"),
            get("delivery_p50_ms"),
            get("delivery_p99_ms")
        ),
    }
}

fn main() -> ExitCode {
    let (o, paths) = match run::begin(HELP, parse_options, |o| o.build, &["chat"]) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let broker_addr = SocketAddr::from(([127, 0, 0, 1], 5672));
    if TcpStream::connect_timeout(&broker_addr, Duration::from_secs(2)).is_err() {
        eprintln!("bench: no RabbitMQ on {broker_addr}: run scripts/setup-rabbitmq.sh");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = now_us();
    let mut runs: Vec<RunFigs> = Vec::new();
    let mut loads = vec![loadavg()];
    let t0 = Instant::now();
    for run in 0..o.runs {
        eprintln!(
            "bench: run {}/{}: {} users, {} messages per row ...",
            run + 1,
            o.runs,
            o.users,
            o.messages
        );
        match rt.block_on(one_run(run, &o, &paths)) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("bench: run {} FAILED: {e}", run + 1);
                return ExitCode::FAILURE;
            }
        }
        loads.push(loadavg());
    }
    let med: Vec<Fig> = (0..3)
        .map(|k| medians(&runs.iter().map(|r| &r.rows[k]).collect::<Vec<_>>()))
        .collect();
    println!(
        "\n## Push bench ({} users on the chat, count 2; {} messages per row x {} run(s); took {:.0} s)\n",
        o.users,
        o.messages,
        o.runs,
        t0.elapsed().as_secs_f64()
    );
    println!("| row | count | msgs/s | p50 ms | p99 ms | lost | dups | latency, and more |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (k, f) in med.iter().enumerate() {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
            ROWS[k],
            f.count,
            f.rate,
            f.p50_ms,
            f.p99_ms,
            f.lost,
            f.dups,
            notes(k, f)
        );
    }
    let split: Vec<String> = runs.iter().map(|r| format!("{:?}", r.per_worker)).collect();
    println!("\nusers per worker in each run: {}", split.join(", "));
    println!(
        "load average (1 min) at start and after each run: {}",
        loads.join(", ")
    );
    let failures: Vec<String> = runs.iter().flat_map(|r| r.failures.clone()).collect();
    let doc = json!({
        "unix": run::unix_secs(),
        "command": format!(
            "cargo bench --bench push -- --messages {} --users {} --runs {} --window {} --say-window {} \
             --http-conns {} --http-window {} --threads {}",
            o.messages, o.users, o.runs, o.window, o.say_window, o.http_conns, o.http_window, o.threads),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "chat_count": 2,
        "loadavg_1min": loads,
        "users_per_worker": runs.iter().map(|r| r.per_worker.clone()).collect::<Vec<_>>(),
        "rows": ROWS.iter().enumerate().map(|(k, name)| json!({
            "row": name,
            "median": med[k].json(),
            "runs": runs.iter().map(|r| r.rows[k].json()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "failures": failures,
    });
    if !run::write_json(&paths.out, "push-latest.json", &doc) {
        return ExitCode::FAILURE;
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("bench: FAILED: {f}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
