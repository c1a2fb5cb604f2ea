//! A test-only WebSocket server that opens outbound connections and runs
//! blocking jobs when its clients ask, so the integration tests can drive
//! `Ctx::connect` and `Ctx::spawn_blocking` from the outside.
//!
//! A client sends one JSON object per text message, `{"op": ..., ...}`; the
//! reply is one JSON object (with `error` when the command failed).
//! Outbound connections belong to the worker that made them: a test keeps
//! talking to them over the same control connection.
//!
//! | op | fields | reply |
//! |---|---|---|
//! | `connect` | `url`; optional `timeout_ms`, `tls`, `ca_file`, `protocols`, `reconnect` (`[initial_ms, max_ms]`), `hold` (bytes), `prefix` (of the text messages `state` checks, default `m`) | `conn` |
//! | `send` | `conn`, `n`, `prefix`, optional `from` (first counter, default 0), `size` (pad to bytes) | `accepted`: how many of `n` sends of `PREFIXfrom`, `PREFIXfrom+1`, ... returned true; `dropped_sends`: `Ctx::dropped_sends` after them |
//! | `binary` | `conn`, `n` | `accepted`: `n` binary sends of 4-byte big-endian counters |
//! | `state` | `conn` | `events` (`connect`, `close`, `error: ...` in order), `event_ms` (when each came: milliseconds since the `connect` op), `received`, `in_order` (every message was the next counter of its kind), `last`, `info` (from `Ctx::conn_info`, null when gone), `server_connections`, `dropped_sends` |
//! | `close` | `conn`, optional `code`, `reason` | |
//! | `jobs` | `n`, `ms` | `ids`: `n` jobs that each sleep `ms` ms and return their index times two; `busy` = how many were refused |
//! | `results` | | `done`: results so far as `[index, value]`, `panics` |
//! | `panic_job` | | a job that panics |
//! | `ping` | | `pong` (answered on the loop, whatever the pool is doing) |
//! | `cpu` | | `cpu_ms`: this worker's CPU time so far (user + system) |
//!
//! Binary messages from the control client are echoed.
//!
//! Plain HTTP: `GET /later?ms=N` is answered after a blocking job of `N` ms
//! (`Response::later`, then `Ctx::respond` from `on_job_done`) with
//! `slept N ms`; every other request gets the default 404.

use foreman::cli::Args;
use foreman::{
    ConnError, ConnId, ConnectOptions, Ctx, Handler, JobId, JobResult, Message, Reconnect, Request,
    Response,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What one outbound connection has seen.
struct Seen {
    /// When the `connect` op made it: the origin of `event_ms`.
    started: Instant,
    events: Vec<String>,
    /// Milliseconds from `started` to each of `events`.
    event_ms: Vec<u64>,
    received: u64,
    in_order: bool,
    next_text: u64,
    next_binary: u32,
    prefix: String,
    last: Option<String>,
}

impl Seen {
    fn new(prefix: &str) -> Seen {
        Seen {
            started: Instant::now(),
            events: Vec::new(),
            event_ms: Vec::new(),
            received: 0,
            in_order: true,
            next_text: 0,
            next_binary: 0,
            prefix: prefix.to_string(),
            last: None,
        }
    }

    /// Records a callback, with when it came.
    fn event(&mut self, what: String) {
        self.events.push(what);
        self.event_ms
            .push(self.started.elapsed().as_millis() as u64);
    }
}

/// One per worker.
#[derive(Default)]
struct Dialer {
    seen: HashMap<ConnId, Seen>,
    jobs: HashMap<JobId, u64>,
    /// HTTP requests waiting for their job.
    answers: HashMap<JobId, ConnId>,
    done: Vec<(u64, u64)>,
    panics: Vec<String>,
}

impl Handler for Dialer {
    fn on_connect(&mut self, _ctx: &mut Ctx, conn: ConnId) {
        if let Some(s) = self.seen.get_mut(&conn) {
            s.event("connect".into());
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        if let Some(s) = self.seen.get_mut(&conn) {
            s.received += 1;
            // Text sends come back as binary over `frame://` and `tcp://`:
            // a message that starts with the prefix is one of them.
            if msg.as_bytes().starts_with(s.prefix.as_bytes()) {
                let text = String::from_utf8_lossy(msg.as_bytes()).into_owned();
                let want = format!("{}{}", s.prefix, s.next_text);
                s.in_order &= text.starts_with(&want)
                    && !text[want.len()..].starts_with(|c: char| c.is_ascii_digit());
                s.next_text += 1;
                s.last = Some(text.chars().take(64).collect());
            } else {
                let b = msg.as_bytes();
                s.in_order &=
                    b.len() == 4 && u32::from_be_bytes([b[0], b[1], b[2], b[3]]) == s.next_binary;
                s.next_binary += 1;
            }
            return;
        }
        if !msg.is_text() {
            ctx.send(conn, msg);
            return;
        }
        let reply = match serde_json::from_slice::<Value>(msg.as_bytes()) {
            Ok(cmd) => self.command(ctx, &cmd),
            Err(e) => json!({"error": format!("bad JSON: {e}")}),
        };
        ctx.send(conn, reply.to_string());
    }

    fn on_error(&mut self, _ctx: &mut Ctx, conn: ConnId, error: &ConnError) {
        if let Some(s) = self.seen.get_mut(&conn) {
            s.event(format!("error: {error}"));
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx, conn: ConnId, _close: Option<&foreman::CloseFrame>) {
        if let Some(s) = self.seen.get_mut(&conn) {
            s.event("close".into());
        }
    }

    fn on_http_request(&mut self, ctx: &mut Ctx, request: &Request) -> Response {
        if request.path != "/later" {
            return Response::not_found();
        }
        let ms: u64 = request
            .query_param("ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match ctx.spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        }) {
            Ok(job) => {
                self.answers.insert(job, request.conn);
                Response::later()
            }
            Err(busy) => Response::new(503, busy.to_string()),
        }
    }

    fn on_job_done(&mut self, ctx: &mut Ctx, job: JobId, result: JobResult) {
        eprintln!("dialer: job {} done", job.get());
        if let Some(conn) = self.answers.remove(&job) {
            let ms = result.downcast::<u64>().unwrap_or(0);
            ctx.respond(conn, Response::text(format!("slept {ms} ms")));
            return;
        }
        let index = self.jobs.remove(&job).unwrap_or(u64::MAX);
        match result.downcast::<u64>() {
            Ok(v) => self.done.push((index, v)),
            Err(r) => self
                .panics
                .push(r.panic_message().unwrap_or("?").to_string()),
        }
    }
}

impl Dialer {
    fn command(&mut self, ctx: &mut Ctx, cmd: &Value) -> Value {
        let conn = || {
            cmd["conn"]
                .as_str()
                .and_then(|c| c.parse::<ConnId>().ok())
                .ok_or("conn: a connection id is required")
        };
        let n = cmd["n"].as_u64().unwrap_or(1);
        match cmd["op"].as_str().unwrap_or("") {
            "connect" => {
                let Some(url) = cmd["url"].as_str() else {
                    return json!({"error": "url is required"});
                };
                let mut opts = ConnectOptions::new().tls(cmd["tls"].as_bool().unwrap_or(false));
                if let Some(ms) = cmd["timeout_ms"].as_u64() {
                    opts = opts.timeout(Duration::from_millis(ms));
                }
                if let Some(ca) = cmd["ca_file"].as_str() {
                    opts = opts.ca_file(ca);
                }
                for p in cmd["protocols"].as_array().into_iter().flatten() {
                    opts = opts.protocol(p.as_str().unwrap_or_default());
                }
                if let Some([a, b]) = cmd["reconnect"].as_array().map(Vec::as_slice) {
                    let ms = |v: &Value| Duration::from_millis(v.as_u64().unwrap_or(100));
                    opts = opts.reconnect(Reconnect::new(ms(a), ms(b)));
                }
                if let Some(bytes) = cmd["hold"].as_u64() {
                    opts = opts.hold(bytes as usize);
                }
                match ctx.connect(url, opts) {
                    Ok(id) => {
                        let prefix = cmd["prefix"].as_str().unwrap_or("m");
                        self.seen.insert(id, Seen::new(prefix));
                        json!({"conn": id.to_string()})
                    }
                    Err(e) => json!({"error": e.to_string()}),
                }
            }
            "send" => match conn() {
                Ok(id) => {
                    let prefix = cmd["prefix"].as_str().unwrap_or("m");
                    let size = cmd["size"].as_u64().unwrap_or(0) as usize;
                    let from = cmd["from"].as_u64().unwrap_or(0);
                    let accepted = (from..from + n)
                        .filter(|i| {
                            let mut text = format!("{prefix}{i}");
                            if text.len() < size {
                                text.push(' ');
                                text.extend(std::iter::repeat_n('x', size - text.len()));
                            }
                            ctx.send(id, text)
                        })
                        .count();
                    json!({"accepted": accepted, "dropped_sends": ctx.dropped_sends()})
                }
                Err(e) => json!({"error": e}),
            },
            "binary" => match conn() {
                Ok(id) => {
                    let accepted = (0..n as u32)
                        .filter(|i| ctx.send(id, Message::from(&i.to_be_bytes()[..])))
                        .count();
                    json!({"accepted": accepted})
                }
                Err(e) => json!({"error": e}),
            },
            "state" => match conn() {
                Ok(id) => {
                    let info = ctx.conn_info(id).map(|i| {
                        json!({"open": i.open, "outbound": i.outbound, "tls": i.tls,
                               "queued": i.queued_bytes, "peer": i.peer.to_string(),
                               "subprotocol": i.subprotocol})
                    });
                    let online = ctx.connection_count();
                    match self.seen.get(&id) {
                        Some(s) => json!({"events": s.events, "event_ms": s.event_ms,
                                          "received": s.received, "in_order": s.in_order,
                                          "last": s.last, "info": info,
                                          "server_connections": online,
                                          "dropped_sends": ctx.dropped_sends()}),
                        None => json!({"error": "not an outbound connection of this worker"}),
                    }
                }
                Err(e) => json!({"error": e}),
            },
            "close" => match conn() {
                Ok(id) => {
                    let code = cmd["code"].as_u64().unwrap_or(1000) as u16;
                    ctx.close_with(id, code, cmd["reason"].as_str().unwrap_or(""));
                    json!({})
                }
                Err(e) => json!({"error": e}),
            },
            "jobs" => {
                let ms = cmd["ms"].as_u64().unwrap_or(1);
                let mut ids = Vec::new();
                let mut busy = 0;
                for i in 0..n {
                    match ctx.spawn_blocking(move || {
                        std::thread::sleep(Duration::from_millis(ms));
                        i * 2
                    }) {
                        Ok(id) => {
                            self.jobs.insert(id, i);
                            ids.push(id.get());
                        }
                        Err(_) => busy += 1,
                    }
                }
                json!({"ids": ids, "busy": busy})
            }
            "panic_job" => {
                match ctx.spawn_blocking(|| -> u64 { panic!("job panicked on purpose") }) {
                    Ok(id) => {
                        self.jobs.insert(id, u64::MAX);
                        json!({"id": id.get()})
                    }
                    Err(e) => json!({"error": e.to_string()}),
                }
            }
            "results" => {
                json!({"done": self.done, "panics": self.panics, "pending": ctx.pending_jobs()})
            }
            "ping" => json!({"pong": true}),
            "cpu" => json!({"cpu_ms": cpu_ms()}),
            other => json!({"error": format!("unknown op {other:?}")}),
        }
    }
}

/// This process's CPU time (user + system) in milliseconds.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (field(11) + field(12)) * 1000 / hz
}

fn main() {
    if let Err(e) = run() {
        eprintln!("dialer: {e}");
        std::process::exit(2);
    }
}

fn run() -> foreman::Result<()> {
    foreman::Server::with_args(&Args::from_env())?.run(|_| Dialer::default())
}
