//! A test-only WebSocket server that exposes foreman's API through a small JSON
//! command protocol, so the integration tests can drive every `Ctx` call from
//! the outside, as a client would.
//!
//! A client sends one JSON object per text message, `{"op": ..., "id": N, ...}`;
//! the reply is one JSON object with the same `id` (and `error` if the
//! command failed). Whatever else a client receives is a push: the `data` of
//! some send aimed at it, or a timer tick `{"tick": T, "n": K}`. Binary
//! messages are echoed.
//!
//! | op | fields | reply |
//! |---|---|---|
//! | `whoami` | | `conn`, `worker`, `count`, `pid` |
//! | `panic` | | none: the handler panics |
//! | `timer` | `ms`, `repeat` | `timer` (ticks follow as pushes) |
//! | `del_timer` | `timer` | `deleted` |
//! | `send_to` | `to`, `data` | `ok` (what `Ctx::send` returned) |
//! | `send_to_all` | `data`, `exclude` | |
//! | `huge` | `size` | `ok`: what `Ctx::send_to_all` of a binary message of `size` zero bytes (to all but the sender) returned |
//! | `flood` | `n`, `size`, `tag` | `sent`: `n` broadcasts of `size` bytes to all but the sender |
//! | `flood_to` | `to`, `n`, `size`, `tag` | `sent`, `refused`: `n` sends of `size` bytes to one connection, and how many `Ctx::send` accepted or refused |
//! | `bind` / `unbind` | `uid`, `conn` | |
//! | `send_to_uid` | `uid` or `uids`, `data` | |
//! | `join` / `leave` | `group`, `conn` | |
//! | `ungroup` | `group` | |
//! | `send_to_group` | `group`, `data`, `exclude` | |
//! | `close` | `conn`, `code`, `reason` | |
//! | `stats` | | counts and lists for the whole server, `dropped_sends`, `errors`, `buffer_full`, `buffer_drain` |
//! | `group` | `group` | `conns`, `uids`, `count` |
//! | `uid` | `uid` | `online`, `conns` |
//! | `conn` | `conn` | `online`, `uid`, `groups`, `session` |
//! | `set_session` | `conn`, `data` | `ok` |
//! | `errors` | | this worker's `on_error` reports |
//! | `buffer_events` | | `events`: this worker's `on_buffer_full` / `on_buffer_drain` calls in order, as `"CONN full"` / `"CONN drain"` |
//! | `pause` / `resume` | `conn` | `ok` (what `Ctx::pause_reading` / `resume_reading` returned) |
//! | `tell_worker` | `worker`, `tag`, `n` | `accepted`: `n` calls of `Ctx::send_to_worker` with data `tag:0` .. `tag:n-1`, and how many returned true |
//! | `tell_workers` | `tag`, `n` | `Ctx::send_to_workers` with `tag:0` .. `tag:n-1` |
//! | `worker_messages` | | `messages`: this worker's `on_worker_message` calls in order, each `{from, data, groups}` where `groups` maps every group to its member conns as this worker saw them then |
//! | `send_prepared` | `to` (a list of conns), `data` | `ok`: per recipient, what `Ctx::send_prepared` of one `Ctx::prepare`d message returned |
//! | `local` | | `conns`: `Ctx::local_connections` |
//! | `send_to_local` | `data` | |
//! | `batch` | `cmds` (a list of commands) | `replies`: each command's reply, all run in one callback |
//! | `closes` | | `closes`: this worker's `on_close` calls in order, as `"CONN CODE REASON"` for a peer's close frame, `"CONN -"` without one |
//! | `amqp_publish` | `exchange`, `key`, `data`, optional `n` | `ok`: how many of `n` (default 1) `Ctx::publish` calls succeeded, `seqs` their numbers (body `data`, or `dataI` for the I-th of several), `refused`: the first refusal's text |
//! | `block` | `ms` | none until `ms` passed: the handler blocks its loop (a stuck worker; set `handler_timeout_ms = 0` to keep the master from replacing it) |
//! | `amqp_stats` | | this worker's `Ctx::amqp_stats` (`null` without `[amqp]`) |
//! | `amqp_messages` | | `messages`: this worker's `on_amqp_message` calls, each `{queue, body, reply_to, correlation_id, redelivered}` |
//! | `amqp_confirms` | | `confirms`: this worker's `on_amqp_confirm` calls, each `[seq, ok]` |
//!
//! Messages of an `[amqp] consume` queue: one whose body starts with `hold`
//! is kept unacked; any other is answered `re:BODY` (with
//! `Ctx::amqp_reply`, when it has a `reply_to`) and then acked.
//!
//! `conn` fields default to the sender's own connection. A WebSocket request
//! with `?panic` makes `on_websocket_connect` panic; `?reject` answers 403;
//! `?protocol=P` chooses subprotocol `P` (offered or not); `?header=N:V`
//! (percent-decoded) adds header `N: V` to the 101.
//!
//! Plain HTTP: `POST /echo` answers 200 with the request body as its body
//! (and `X-Method`, `X-Body-Length` headers, and `?header=N:V` as for
//! upgrades); every other request gets the default 404.
//!
//! Flags besides the library's (`start -d`, `-c`, `--listen`, ...):
//!
//! | flag | effect |
//! |---|---|
//! | `--spawn-thread-before-run` | start a parked thread before `Server::run`, which must then refuse to fork |
//! | `--panic-on-start-worker N` | the handler factory panics in worker slot `N`, every time it starts |
//! | `--panic-on-start-if PATH` | the handler factory panics in every worker that starts while `PATH` exists (a broken release, for reload tests) |
//! | `--busy-on-stop MS` | a stopping worker starts an `MS` ms timer in `on_worker_stop`; `busy()` is true until it fires, which prints `testbed: worker N busy work done` on stderr |
//!
//! Run: `cargo run --example testbed -- --listen websocket://127.0.0.1:0 --count 4`

use bytes::Bytes;
use clap::Parser;
use foreman::{
    cli::Args, Accept, CloseFrame, ConnError, ConnId, Ctx, Handler, Message, Request, Response,
    Server, TimerId,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// How many `on_error` reports (and other event lists) a worker keeps.
const ERROR_LOG_CAP: usize = 1000;

/// One worker's state.
#[derive(Default)]
struct Testbed {
    /// Live timers: who asked, whether it repeats, how often it fired.
    timers: HashMap<TimerId, TimerEntry>,
    /// Every timer this worker made, live or not, so a test can delete one
    /// twice and see what `Ctx::del_timer` says.
    timer_ids: HashMap<u64, TimerId>,
    /// The latest `on_error` reports, oldest first.
    errors: Vec<String>,
    /// How many `on_error` calls there were in all.
    error_count: u64,
    /// The latest `on_buffer_full` / `on_buffer_drain` calls, oldest first.
    buffer_events: Vec<String>,
    /// How many `on_buffer_full` calls there were in all.
    buffer_full: u64,
    /// How many `on_buffer_drain` calls there were in all.
    buffer_drain: u64,
    /// The latest `on_close` calls, oldest first, for `closes`.
    closes: Vec<String>,
    /// The latest `on_worker_message` calls, oldest first, for `worker_messages`.
    worker_messages: Vec<Value>,
    /// `--busy-on-stop`: how long the pretend background work of a stopping
    /// worker takes.
    busy_on_stop: Option<Duration>,
    /// The timer that ends that work; `busy()` is true while it is pending.
    busy_timer: Option<TimerId>,
    /// The latest `on_amqp_message` calls, oldest first.
    amqp_messages: Vec<Value>,
    /// The latest `on_amqp_confirm` calls, oldest first: `[seq, ok]`.
    amqp_confirms: Vec<(u64, bool)>,
}

struct TimerEntry {
    conn: ConnId,
    repeat: bool,
    fired: u64,
}

type CmdResult = Result<Value, String>;

fn field<'a>(cmd: &'a Value, key: &str) -> Result<&'a Value, String> {
    cmd.get(key).ok_or_else(|| format!("missing field {key:?}"))
}

fn text<'a>(cmd: &'a Value, key: &str) -> Result<&'a str, String> {
    field(cmd, key)?
        .as_str()
        .ok_or_else(|| format!("field {key:?} must be a string"))
}

fn number(cmd: &Value, key: &str) -> Result<u64, String> {
    field(cmd, key)?
        .as_u64()
        .ok_or_else(|| format!("field {key:?} must be a non-negative integer"))
}

fn parse_conn(s: &str) -> Result<ConnId, String> {
    s.parse::<ConnId>().map_err(|e| e.to_string())
}

/// The `conn` field, or the sender's own connection.
fn target(cmd: &Value, me: ConnId) -> Result<ConnId, String> {
    match cmd.get("conn") {
        None | Some(Value::Null) => Ok(me),
        Some(_) => parse_conn(text(cmd, "conn")?),
    }
}

/// The `exclude` field: a list of connection ids, empty if absent.
fn exclude(cmd: &Value) -> Result<Vec<ConnId>, String> {
    match cmd.get("exclude") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| parse_conn(v.as_str().ok_or("exclude: strings only")?))
            .collect(),
        Some(_) => Err("exclude must be an array".into()),
    }
}

fn conn_strings(conns: Vec<ConnId>) -> Vec<String> {
    conns.iter().map(ToString::to_string).collect()
}

impl Testbed {
    fn run(&mut self, ctx: &mut Ctx, me: ConnId, cmd: &Value) -> CmdResult {
        let ok = Ok(json!({}));
        match text(cmd, "op")? {
            "whoami" => Ok(json!({
                "conn": me.to_string(),
                "worker": ctx.worker_id(),
                "count": ctx.worker_count(),
                "pid": std::process::id(),
            })),
            "panic" => panic!("testbed: panic requested by {me}"),
            "timer" => {
                let ms = number(cmd, "ms")?;
                let repeat = field(cmd, "repeat")?
                    .as_bool()
                    .ok_or("repeat must be a bool")?;
                let id = ctx.add_timer(Duration::from_millis(ms), repeat);
                self.timers.insert(
                    id,
                    TimerEntry {
                        conn: me,
                        repeat,
                        fired: 0,
                    },
                );
                self.timer_ids.insert(id.get(), id);
                Ok(json!({"timer": id.get()}))
            }
            "del_timer" => {
                let wanted = number(cmd, "timer")?;
                let id = *self
                    .timer_ids
                    .get(&wanted)
                    .ok_or("no such timer was ever made")?;
                self.timers.remove(&id);
                Ok(json!({"deleted": ctx.del_timer(id)}))
            }
            "send_to" => {
                let to = parse_conn(text(cmd, "to")?)?;
                Ok(json!({"ok": ctx.send(to, text(cmd, "data")?)}))
            }
            "send_to_all" => {
                ctx.send_to_all(text(cmd, "data")?, &exclude(cmd)?);
                ok
            }
            "huge" => {
                // Zeroed pages are mapped lazily: a refused send costs no memory.
                let data = vec![0u8; number(cmd, "size")? as usize];
                Ok(json!({"ok": ctx.send_to_all(data, &[me])}))
            }
            "flood" => {
                let n = number(cmd, "n")?;
                let size = number(cmd, "size")? as usize;
                let tag = text(cmd, "tag")?;
                for i in 0..n {
                    let mut payload = format!("{tag}:{i}:");
                    let pad = size.saturating_sub(payload.len());
                    payload.push_str(&"x".repeat(pad));
                    ctx.send_to_all(payload, &[me]);
                }
                Ok(json!({"sent": n}))
            }
            "flood_to" => {
                let to = parse_conn(text(cmd, "to")?)?;
                let n = number(cmd, "n")?;
                let size = number(cmd, "size")? as usize;
                let tag = text(cmd, "tag")?;
                let mut sent = 0;
                for i in 0..n {
                    let mut payload = format!("{tag}:{i}:");
                    let pad = size.saturating_sub(payload.len());
                    payload.push_str(&"x".repeat(pad));
                    if ctx.send(to, payload) {
                        sent += 1;
                    }
                }
                Ok(json!({"sent": sent, "refused": n - sent}))
            }
            "bind" => {
                ctx.bind_uid(target(cmd, me)?, text(cmd, "uid")?);
                ok
            }
            "unbind" => {
                ctx.unbind_uid(target(cmd, me)?);
                ok
            }
            "send_to_uid" => {
                let data = text(cmd, "data")?;
                match cmd.get("uids") {
                    Some(Value::Array(list)) => {
                        let uids: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
                        ctx.send_to_uids(&uids, data);
                    }
                    _ => {
                        ctx.send_to_uid(text(cmd, "uid")?, data);
                    }
                }
                ok
            }
            "join" => {
                ctx.join_group(target(cmd, me)?, text(cmd, "group")?);
                ok
            }
            "leave" => {
                ctx.leave_group(target(cmd, me)?, text(cmd, "group")?);
                ok
            }
            "ungroup" => {
                ctx.ungroup(text(cmd, "group")?);
                ok
            }
            "send_to_group" => {
                ctx.send_to_group(text(cmd, "group")?, text(cmd, "data")?, &exclude(cmd)?);
                ok
            }
            "close" => {
                let conn = target(cmd, me)?;
                match cmd.get("code").and_then(Value::as_u64) {
                    Some(code) => {
                        let reason = cmd.get("reason").and_then(Value::as_str).unwrap_or("");
                        ctx.close_with(conn, code as u16, reason);
                    }
                    None => ctx.close(conn),
                }
                ok
            }
            "stats" => Ok(json!({
                "connection_count": ctx.connection_count(),
                "connections": conn_strings(ctx.connections()),
                "uid_count": ctx.uid_count(),
                "uids": ctx.uids(),
                "groups": ctx.groups(),
                "dropped_sends": ctx.dropped_sends(),
                "errors": self.error_count,
                "buffer_full": self.buffer_full,
                "buffer_drain": self.buffer_drain,
            })),
            "group" => {
                let group = text(cmd, "group")?;
                Ok(json!({
                    "conns": conn_strings(ctx.group_conns(group)),
                    "uids": ctx.group_uids(group),
                    "count": ctx.group_conn_count(group),
                }))
            }
            "uid" => {
                let uid = text(cmd, "uid")?;
                Ok(json!({
                    "online": ctx.is_uid_online(uid),
                    "conns": conn_strings(ctx.conns_of_uid(uid)),
                }))
            }
            "conn" => {
                let conn = target(cmd, me)?;
                let session = ctx
                    .session(conn)
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                Ok(json!({
                    "online": ctx.is_online(conn),
                    "uid": ctx.uid_of_conn(conn),
                    "groups": ctx.groups_of_conn(conn),
                    "session": session,
                }))
            }
            "set_session" => {
                let conn = target(cmd, me)?;
                let data = text(cmd, "data")?.as_bytes().to_vec();
                Ok(json!({"ok": ctx.set_session(conn, data)}))
            }
            "errors" => Ok(json!({"errors": self.errors, "count": self.error_count})),
            "buffer_events" => Ok(json!({"events": self.buffer_events})),
            "pause" => Ok(json!({"ok": ctx.pause_reading(target(cmd, me)?)})),
            "resume" => Ok(json!({"ok": ctx.resume_reading(target(cmd, me)?)})),
            "tell_worker" => {
                let worker = number(cmd, "worker")? as usize;
                let tag = text(cmd, "tag")?;
                let accepted = (0..number(cmd, "n")?)
                    .filter(|i| ctx.send_to_worker(worker, format!("{tag}:{i}")))
                    .count();
                Ok(json!({ "accepted": accepted }))
            }
            "tell_workers" => {
                let tag = text(cmd, "tag")?;
                for i in 0..number(cmd, "n")? {
                    ctx.send_to_workers(format!("{tag}:{i}"));
                }
                ok
            }
            "worker_messages" => Ok(json!({"messages": self.worker_messages})),
            "send_prepared" => {
                let to = field(cmd, "to")?
                    .as_array()
                    .ok_or("to must be an array")?
                    .iter()
                    .map(|v| parse_conn(v.as_str().ok_or("to: strings only")?))
                    .collect::<Result<Vec<ConnId>, String>>()?;
                let msg = ctx.prepare(text(cmd, "data")?);
                let sent: Vec<bool> = to.iter().map(|&c| ctx.send_prepared(c, &msg)).collect();
                Ok(json!({ "ok": sent }))
            }
            "local" => Ok(json!({"conns": conn_strings(ctx.local_connections())})),
            "closes" => Ok(json!({"closes": self.closes})),
            "amqp_publish" => {
                let n = cmd.get("n").and_then(Value::as_u64).unwrap_or(1);
                let (exchange, key) = (text(cmd, "exchange")?, text(cmd, "key")?);
                let data = text(cmd, "data")?;
                let (mut ok, mut error, mut seqs) = (0, None, Vec::new());
                for i in 0..n {
                    let body = if n == 1 {
                        data.to_string()
                    } else {
                        format!("{data}{i}")
                    };
                    match ctx.publish(exchange, key, body) {
                        Ok(seq) => {
                            ok += 1;
                            seqs.push(seq);
                        }
                        Err(e) => {
                            error.get_or_insert(e.to_string());
                        }
                    }
                }
                Ok(json!({"ok": ok, "refused": error, "seqs": seqs}))
            }
            "block" => {
                std::thread::sleep(Duration::from_millis(number(cmd, "ms")?));
                ok
            }
            "amqp_stats" => Ok(match ctx.amqp_stats() {
                None => Value::Null,
                Some(s) => json!({
                    "connected": s.connected,
                    "consumed": s.consumed,
                    "acked": s.acked,
                    "rejected": s.rejected,
                    "confirmed": s.confirmed,
                    "failed": s.failed,
                    "pending": s.pending,
                    "disconnects": s.disconnects,
                }),
            }),
            "amqp_messages" => Ok(json!({"messages": self.amqp_messages})),
            "amqp_confirms" => Ok(json!({"confirms": self.amqp_confirms})),
            "send_to_local" => {
                ctx.send_to_local(text(cmd, "data")?);
                ok
            }
            "batch" => {
                let cmds = field(cmd, "cmds")?
                    .as_array()
                    .ok_or("cmds must be an array")?;
                let replies: Vec<Value> = cmds
                    .iter()
                    .map(|c| {
                        self.run(ctx, me, c)
                            .unwrap_or_else(|e| json!({ "error": e }))
                    })
                    .collect();
                Ok(json!({ "replies": replies }))
            }
            other => Err(format!("unknown op {other:?}")),
        }
    }
}

impl Handler for Testbed {
    fn on_amqp_confirm(&mut self, _ctx: &mut Ctx, seq: u64, ok: bool) {
        if self.amqp_confirms.len() >= ERROR_LOG_CAP {
            self.amqp_confirms.remove(0);
        }
        self.amqp_confirms.push((seq, ok));
    }

    fn on_amqp_message(&mut self, ctx: &mut Ctx, msg: &foreman::AmqpMessage) {
        let body = String::from_utf8_lossy(&msg.body).into_owned();
        if self.amqp_messages.len() >= ERROR_LOG_CAP {
            self.amqp_messages.remove(0);
        }
        self.amqp_messages.push(json!({
            "queue": msg.queue,
            "body": body,
            "reply_to": msg.reply_to,
            "correlation_id": msg.correlation_id,
            "redelivered": msg.redelivered,
        }));
        if body.starts_with("hold") {
            return;
        }
        if msg.reply_to.is_some() {
            if let Err(e) = ctx.amqp_reply(msg, format!("re:{body}")) {
                eprintln!("testbed: cannot answer {}: {e}", msg.id);
            }
        }
        ctx.amqp_ack(msg.id);
    }

    fn on_websocket_connect(
        &mut self,
        _ctx: &mut Ctx,
        conn: ConnId,
        request: &Request,
    ) -> Result<Accept, Response> {
        if request.query_param("panic").is_some() {
            panic!("testbed: panic in on_websocket_connect of {conn}");
        }
        if request.query_param("reject").is_some() {
            return Err(Response::status(403));
        }
        let mut accept = Accept::new();
        if let Some(p) = request.query_param("protocol") {
            accept = accept.protocol(p);
        }
        if let Some((name, value)) = header_param(request) {
            accept = accept.header(name, value);
        }
        Ok(accept)
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        let Some(body) = msg.as_text() else {
            ctx.send(conn, msg);
            return;
        };
        let (id, result) = match serde_json::from_str::<Value>(body) {
            Ok(cmd) => (cmd.get("id").cloned(), self.run(ctx, conn, &cmd)),
            Err(e) => (None, Err(format!("not JSON: {e}"))),
        };
        let mut reply = result.unwrap_or_else(|e| json!({ "error": e }));
        reply["id"] = id.unwrap_or(Value::Null);
        ctx.send(conn, reply.to_string());
    }

    fn on_timer(&mut self, ctx: &mut Ctx, timer: TimerId) {
        if self.busy_timer == Some(timer) {
            self.busy_timer = None;
            eprintln!("testbed: worker {} busy work done", ctx.worker_id());
            return;
        }
        let Some(entry) = self.timers.get_mut(&timer) else {
            return;
        };
        entry.fired += 1;
        let (conn, n, repeat) = (entry.conn, entry.fired, entry.repeat);
        if !repeat {
            self.timers.remove(&timer);
        }
        ctx.send(conn, json!({"tick": timer.get(), "n": n}).to_string());
    }

    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, close: Option<&CloseFrame>) {
        let seen = match close {
            Some(f) => format!("{conn} {} {}", f.code, f.reason),
            None => format!("{conn} -"),
        };
        push_capped(&mut self.closes, seen);
        let mine: Vec<TimerId> = self
            .timers
            .iter()
            .filter(|(_, e)| e.conn == conn)
            .map(|(&id, _)| id)
            .collect();
        for id in mine {
            self.timers.remove(&id);
            ctx.del_timer(id);
        }
    }

    fn on_error(&mut self, _ctx: &mut Ctx, conn: ConnId, error: &ConnError) {
        self.error_count += 1;
        push_capped(&mut self.errors, format!("{conn}: {error}"));
    }

    fn on_buffer_full(&mut self, _ctx: &mut Ctx, conn: ConnId) {
        self.buffer_full += 1;
        push_capped(&mut self.buffer_events, format!("{conn} full"));
    }

    fn on_buffer_drain(&mut self, _ctx: &mut Ctx, conn: ConnId) {
        self.buffer_drain += 1;
        push_capped(&mut self.buffer_events, format!("{conn} drain"));
    }

    fn on_worker_message(&mut self, ctx: &mut Ctx, from_worker: usize, data: Bytes) {
        let groups: serde_json::Map<String, Value> = ctx
            .groups()
            .into_iter()
            .map(|g| {
                let members = conn_strings(ctx.group_conns(&g));
                (g, json!(members))
            })
            .collect();
        let entry = json!({
            "from": from_worker,
            "data": String::from_utf8_lossy(&data),
            "groups": groups,
        });
        push_capped(&mut self.worker_messages, entry);
    }

    fn on_worker_stop(&mut self, ctx: &mut Ctx) {
        if let Some(work) = self.busy_on_stop {
            self.busy_timer = Some(ctx.add_timer(work, false));
        }
    }

    fn busy(&mut self, _ctx: &mut Ctx) -> bool {
        self.busy_timer.is_some()
    }

    fn on_http_request(&mut self, _ctx: &mut Ctx, request: &Request) -> Response {
        if request.method == "POST" && request.path == "/echo" {
            let mut response = Response::new(200, request.body.clone())
                .header("X-Method", request.method.as_str())
                .header("X-Body-Length", request.body.len().to_string());
            if let Some((name, value)) = header_param(request) {
                response = response.header(name, value);
            }
            return response;
        }
        Response::not_found()
    }
}

/// The `header=NAME:VALUE` query parameter, percent-decoded (`%0D%0A` is a
/// CR LF: how a test asks for a header that must not be sent).
fn header_param(request: &Request) -> Option<(String, String)> {
    let raw = request.query_param("header")?.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&out);
    let (name, value) = text.split_once(':')?;
    Some((name.to_string(), value.to_string()))
}

/// Appends to a report list, dropping the oldest past [`ERROR_LOG_CAP`].
fn push_capped<T>(list: &mut Vec<T>, item: T) {
    if list.len() == ERROR_LOG_CAP {
        list.remove(0);
    }
    list.push(item);
}

/// The command line: the library's commands and flags, and the testbed's
/// (see the module docs).
#[derive(Parser)]
#[command(
    name = "testbed",
    version,
    about = "A test-only server driving foreman's API over JSON"
)]
struct Cli {
    #[command(flatten)]
    server: Args,
    /// Start a parked thread before Server::run, which must then refuse to fork
    #[arg(long, global = true)]
    spawn_thread_before_run: bool,
    /// The handler factory panics in worker slot N, every time it starts
    #[arg(long, global = true, value_name = "N")]
    panic_on_start_worker: Option<usize>,
    /// The handler factory panics in every worker that starts while PATH exists
    #[arg(long, global = true, value_name = "PATH")]
    panic_on_start_if: Option<std::path::PathBuf>,
    /// A stopping worker stays busy for MS milliseconds
    #[arg(long, global = true, value_name = "MS")]
    busy_on_stop: Option<u64>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("testbed: {e}");
        std::process::exit(2);
    }
}

fn run() -> foreman::Result<()> {
    let Cli {
        server: args,
        spawn_thread_before_run: spawn_thread,
        panic_on_start_worker: panic_slot,
        panic_on_start_if: panic_if,
        busy_on_stop,
    } = Cli::parse();
    let busy_on_stop = busy_on_stop.map(Duration::from_millis);
    let server = Server::with_args(&args)?;
    if spawn_thread {
        // Lives (parked) until the process exits.
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    server.run(move |worker_id: usize| {
        let broken = panic_if.as_ref().is_some_and(|p| p.exists());
        if panic_slot == Some(worker_id) || broken {
            // No backtrace, and one write, so the message does not split the
            // master's log lines on the shared stderr: this worker dies at
            // once, every time.
            std::panic::set_hook(Box::new(|info| {
                use std::io::Write;
                let _ = std::io::stderr().write_all(format!("{info}\n").as_bytes());
            }));
            panic!("testbed: panic on start in worker {worker_id}");
        }
        Testbed {
            busy_on_stop,
            ..Testbed::default()
        }
    })
}
