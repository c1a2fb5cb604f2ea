//! The executor's handler: one outbound `frame://` connection per
//! scheduler (reconnecting with backoff), `hello` on each connect, jobs
//! run on the blocking pool, `extend` while they run, and `done` / `fail`
//! when they end, on the session that got them only (`link.rs` decides).
//!
//! Requests carry `ref` `extend:J`, `done:J` or `fail:J`, so that an
//! `error` answer names the job it is about: `not_leased` marks the lease
//! lost (no result is sent for it), `too_large` for a result turns it into
//! a `fail` without retry.
//!
//! The server's own listener is not part of the protocol: each connection
//! to it gets one line of JSON about the executor's state and is closed.

use crate::kinds::{self, Outcome};
use crate::link::{Admit, Link, Lost};
use foreman::{ConnError, ConnId, ConnectOptions, Ctx, Handler, JobId, JobResult, Message};
use foreman::{Reconnect, TimerId};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first wait before connecting again; it doubles up to
/// [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(100);

/// The longest wait between connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the command line set.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The schedulers, as `frame://host:port`.
    pub schedulers: Vec<String>,
    /// The `hello` name.
    pub name: String,
    /// The `hello` token, when the schedulers want one.
    pub token: Option<String>,
    /// The queues to take jobs from (no repeats).
    pub queues: Vec<String>,
    /// Jobs at once, per scheduler.
    pub capacity: usize,
    /// Programs `exec` jobs may run.
    pub allow_exec: Arc<Vec<String>>,
}

/// A run of a job: the link it came from and its number there.
type RunKey = (ConnId, u64);

/// The handler (one worker).
pub struct Executor {
    settings: Settings,
    /// Each scheduler's connection and what it pushed.
    links: HashMap<ConnId, Link>,
    /// Failed connection attempts of each link since it was last up.
    failures: HashMap<ConnId, u32>,
    /// Jobs on the blocking pool, and when each started.
    pool: HashMap<JobId, (RunKey, Instant)>,
    /// The `extend` timer of each run that has one.
    extend_timers: HashMap<TimerId, RunKey>,
}

impl Executor {
    /// An executor that will connect to the schedulers of `settings`.
    pub fn new(settings: Settings) -> Executor {
        Executor {
            settings,
            links: HashMap::new(),
            failures: HashMap::new(),
            pool: HashMap::new(),
            extend_timers: HashMap::new(),
        }
    }

    fn hello(&self) -> String {
        let s = &self.settings;
        let mut hello = json!({
            "type": "hello", "role": "executor", "name": s.name,
            "queues": s.queues, "capacity": s.capacity,
        });
        if let Some(token) = &s.token {
            hello["token"] = json!(token);
        }
        hello.to_string()
    }

    /// One line about this executor, for its own listener.
    fn status(&self) -> String {
        let mut links: Vec<&Link> = self.links.values().collect();
        links.sort_by(|a, b| a.url.cmp(&b.url));
        let schedulers: Vec<Value> = links
            .iter()
            .map(|l| json!({"url": l.url, "up": l.is_up(), "running": l.running(), "waiting": l.waiting()}))
            .collect();
        json!({"name": self.settings.name, "capacity": self.settings.capacity,
               "queues": self.settings.queues, "schedulers": schedulers})
        .to_string()
    }

    /// A `job` push.
    fn job(&mut self, ctx: &mut Ctx, conn: ConnId, push: &Value) {
        let Some(job) = push["job"].as_str() else {
            log::warn!("a job push without a job id: {push}");
            return;
        };
        let attempt = push["attempt"].as_u64().unwrap_or(1);
        let lease_ms = push["lease_ms"].as_u64().unwrap_or(30_000);
        let payload = push.get("payload").cloned().unwrap_or(Value::Null);
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let (no, admit) = link.push(job.to_string(), attempt, lease_ms, payload.clone());
        match admit {
            Admit::Refuse => {
                log::warn!(
                    "job {job}: refused, pushed while {} jobs run and {} wait (capacity {})",
                    link.running(),
                    link.waiting(),
                    self.settings.capacity
                );
                let error = json!("executor over capacity");
                ctx.send(conn, fail_frame(job, &error, true));
                return;
            }
            Admit::Wait { running } => log::info!(
                "job {job}: waiting for a free slot ({running} of {} running: jobs of a lost connection or an expired lease)",
                self.settings.capacity
            ),
            Admit::Start => {}
        }
        let half = Duration::from_millis((lease_ms / 2).max(1));
        self.extend_timers
            .insert(ctx.add_timer(half, true), (conn, no));
        if admit == Admit::Start {
            self.start(ctx, (conn, no), attempt, payload);
        }
    }

    /// Hands a run to the pool.
    fn start(&mut self, ctx: &mut Ctx, key: RunKey, attempt: u64, payload: Value) {
        let Some(job) = self
            .links
            .get(&key.0)
            .and_then(|l| l.run(key.1))
            .map(|r| r.job.clone())
        else {
            return;
        };
        let kind = payload["kind"].as_str().unwrap_or("?").to_string();
        let allowed = self.settings.allow_exec.clone();
        match ctx.spawn_blocking(move || kinds::run(&payload, attempt, &allowed)) {
            Ok(id) => {
                log::info!("job {job}: started (kind {kind}, attempt {attempt})");
                self.pool.insert(id, (key, Instant::now()));
            }
            Err(busy) => {
                let error = json!(format!("executor busy: {busy}"));
                self.end(
                    ctx,
                    key,
                    Outcome::Fail { error, retry: true },
                    Instant::now(),
                );
            }
        }
    }

    /// A run ended here: report it if its lease is still ours, then start
    /// what waited for its slot.
    fn end(&mut self, ctx: &mut Ctx, (conn, no): RunKey, outcome: Outcome, started: Instant) {
        self.extend_timers.retain(|_, k| *k != (conn, no));
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let Some((run, lost)) = link.finished(no) else {
            return;
        };
        let job = &run.job;
        let ms = started.elapsed().as_millis();
        match &outcome {
            Outcome::Done(_) => log::info!("job {job}: succeeded in {ms} ms"),
            Outcome::Fail { error, retry } => {
                log::info!("job {job}: failed in {ms} ms (retry {retry}): {error}")
            }
        }
        match lost {
            Some(Lost::Connection) => log::info!(
                "job {job}: lease lost with the connection; the scheduler runs it again (at-least-once)"
            ),
            Some(Lost::Lease) => log::info!(
                "job {job}: lease lost (the scheduler took it back); its result is not sent"
            ),
            None => {
                let frame = match &outcome {
                    Outcome::Done(result) => {
                        json!({"type": "done", "job": job, "result": result, "ref": format!("done:{job}")})
                            .to_string()
                    }
                    Outcome::Fail { error, retry } => fail_frame(job, error, *retry),
                };
                ctx.send(conn, frame);
            }
        }
        while let Some((no, attempt, payload)) =
            self.links.get_mut(&conn).and_then(Link::next_to_start)
        {
            self.start(ctx, (conn, no), attempt, payload);
        }
    }

    /// An `error` frame from a scheduler.
    fn error(&mut self, ctx: &mut Ctx, conn: ConnId, frame: &Value) {
        let code = frame["code"].as_str().unwrap_or("?");
        let message = frame["message"].as_str().unwrap_or("");
        let reference = frame["ref"].as_str();
        let url = self.links.get(&conn).map_or("?", |l| l.url.as_str());
        log::warn!(
            "scheduler {url}: error {code}: {message}{}",
            reference.map(|r| format!(" (ref {r})")).unwrap_or_default()
        );
        let Some((what, job)) = reference.and_then(|r| r.split_once(':')) else {
            if code == "auth_failed" {
                log::error!("scheduler {url}: the token was refused (check --token and --name)");
            }
            return;
        };
        match (code, what) {
            ("not_leased", _) => {
                let Some(link) = self.links.get_mut(&conn) else {
                    return;
                };
                let marked = link.lease_gone(job);
                if !marked.is_empty() {
                    log::info!("job {job}: the scheduler says it is not leased here any more; its result will not be sent");
                }
                self.extend_timers
                    .retain(|_, k| !(k.0 == conn && marked.contains(&k.1)));
            }
            ("too_large", "done") => {
                let error =
                    json!({"too_large": "the result is over the scheduler's max_payload_bytes"});
                ctx.send(conn, fail_frame(job, &error, false));
            }
            _ => {}
        }
    }
}

/// `fail {job, error, retry}` with its `ref`.
fn fail_frame(job: &str, error: &Value, retry: bool) -> String {
    json!({"type": "fail", "job": job, "error": error, "retry": retry, "ref": format!("fail:{job}")})
        .to_string()
}

impl Handler for Executor {
    fn on_worker_start(&mut self, ctx: &mut Ctx) {
        for url in self.settings.schedulers.clone() {
            let opts = ConnectOptions::new()
                .timeout(CONNECT_TIMEOUT)
                .reconnect(Reconnect::new(RECONNECT_FIRST, RECONNECT_MAX));
            match ctx.connect(&url, opts) {
                Ok(conn) => {
                    log::info!("scheduler {url}: connecting");
                    self.links
                        .insert(conn, Link::new(url, self.settings.capacity));
                }
                Err(e) => log::error!("scheduler {url}: {e}"),
            }
        }
    }

    fn on_worker_stop(&mut self, _ctx: &mut Ctx) {
        let running: usize = self.links.values().map(Link::running).sum();
        if running > 0 {
            log::info!("stopping with {running} jobs running: their leases end with the connections and the schedulers run them again (at-least-once)");
        }
    }

    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let Some(link) = self.links.get_mut(&conn) else {
            // A connection to our own listener.
            let status = self.status();
            ctx.send(conn, status);
            ctx.close(conn);
            return;
        };
        link.connected();
        let failed = self.failures.remove(&conn).unwrap_or(0);
        log::info!(
            "scheduler {}: connected{}; hello as {} for queues {} with capacity {}",
            link.url,
            if failed > 0 {
                format!(" after {failed} failed attempts")
            } else {
                String::new()
            },
            self.settings.name,
            self.settings.queues.join(","),
            self.settings.capacity
        );
        let hello = self.hello();
        ctx.send(conn, hello);
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let frame: Value = match serde_json::from_slice(msg.as_bytes()) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("scheduler {}: a frame that is not JSON: {e}", link.url);
                return;
            }
        };
        match frame["type"].as_str().unwrap_or_default() {
            "welcome" => log::info!(
                "scheduler {}: welcome (node {}): ready",
                link.url,
                frame["node"].as_str().unwrap_or("?")
            ),
            "job" => self.job(ctx, conn, &frame),
            "extended" => {
                if let (Some(job), Some(ms)) = (frame["job"].as_str(), frame["lease_ms"].as_u64()) {
                    if let Some(l) = self.links.get_mut(&conn) {
                        l.extended(job, ms);
                    }
                }
            }
            "error" => self.error(ctx, conn, &frame),
            "recorded" | "pong" => log::debug!("scheduler {}: {frame}", link.url),
            _ => log::debug!("scheduler {}: ignored {frame}", link.url),
        }
    }

    fn on_job_done(&mut self, ctx: &mut Ctx, job: JobId, result: JobResult) {
        let Some((key, started)) = self.pool.remove(&job) else {
            return;
        };
        let outcome = result
            .downcast::<Outcome>()
            .unwrap_or_else(|r| Outcome::Fail {
                error: json!({"panic": r.panic_message().unwrap_or("?")}),
                retry: true,
            });
        self.end(ctx, key, outcome, started);
    }

    fn on_timer(&mut self, ctx: &mut Ctx, timer: TimerId) {
        let Some(&(conn, no)) = self.extend_timers.get(&timer) else {
            return;
        };
        let link = self.links.get(&conn);
        match link.and_then(|l| l.lost(no)) {
            Some(None) => {
                let job = link.and_then(|l| l.run(no)).map(|r| r.job.clone());
                if let Some(job) = job {
                    let ext = json!({"type": "extend", "job": job, "ref": format!("extend:{job}")});
                    ctx.send(conn, ext.to_string());
                }
            }
            // Ended, or its lease is gone: nothing to extend any more.
            _ => {
                ctx.del_timer(timer);
                self.extend_timers.remove(&timer);
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, _close: Option<&foreman::CloseFrame>) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let dropped = link.closed();
        log::warn!(
            "scheduler {}: connection lost with {} jobs running (their results will not be sent); reconnecting",
            link.url,
            link.running()
        );
        for (_, run) in &dropped {
            log::info!(
                "job {}: lease lost with the connection before it started; the scheduler runs it again (at-least-once)",
                run.job
            );
        }
        // Every run of the lost session is lost: none is extended again.
        let timers: Vec<TimerId> = self
            .extend_timers
            .iter()
            .filter(|(_, k)| k.0 == conn)
            .map(|(t, _)| *t)
            .collect();
        for t in timers {
            ctx.del_timer(t);
            self.extend_timers.remove(&t);
        }
    }

    fn on_error(&mut self, ctx: &mut Ctx, conn: ConnId, error: &ConnError) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let up = ctx.conn_info(conn).is_some_and(|i| i.open);
        if up {
            log::warn!("scheduler {}: {error}", link.url);
            return;
        }
        let failed = self.failures.entry(conn).or_insert(0);
        *failed += 1;
        if *failed == 1 {
            log::warn!(
                "scheduler {}: cannot connect: {error}; trying again (backoff up to {} s)",
                link.url,
                RECONNECT_MAX.as_secs()
            );
        } else {
            log::debug!("scheduler {}: attempt {failed}: {error}", link.url);
        }
    }
}
