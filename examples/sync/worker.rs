//! [`SyncWorker`]: the sync server's [`Handler`], one per worker process.
//!
//! Frames are checked by `request.rs`; what needs the store goes to the
//! worker's [`Writer`] as a [`Job`] with an id, and is answered from
//! [`Handler::on_wake`] when the store hands its [`Event::Done`] back (a
//! write only after its commit). HTTP `/doc/` requests take the same path
//! and are answered later ([`Response::later`], [`Ctx::respond`]).
//!
//! # Changes
//!
//! An acked write's `change` is encoded once on the worker that wrote it:
//! sent to its own subscribers through its [`Feeds`] (after the `ack`), and
//! to every other worker over the bus (the frame's text behind the key and
//! version, so they need not parse it). On a cluster the store's Redis feed
//! brings every node's changes to every worker instead of the bus. Each
//! receiving worker prepares the frame once for all its subscribers. The
//! feed puts each key's versions in order and fills gaps from the store
//! (`feed.rs`); a periodic check of the store's heads catches a change that
//! never came (a worker killed between its commit and its send).

use crate::auth;
use crate::config::SyncConfig;
use crate::feed::{Action, Feeds};
use crate::http::{self, DocCall};
use crate::rate::{Bucket, Verdict};
use crate::reply;
use crate::request::{self, ErrorCode, Frame, Gate, Refusal, Request};
use crate::store::{Answer, Change, Event, Job, Outcome, Snapshot, Work, Write, WriteKind, Writer};
use bytes::{BufMut, Bytes, BytesMut};
use foreman::{
    AmqpMessage, ConnError, ConnId, Ctx, Handler, JobId, JobResult, Message, Prepared,
    Request as HttpRequest, Response, TimerId, Utf8Bytes,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The page, compiled in.
const PAGE: &str = include_str!("page.html");

/// How often the worker looks at open gaps, catch-ups to retry, and (every
/// [`CHECK_EVERY`] ticks) the store's heads.
const TICK: Duration = Duration::from_millis(50);
/// How long a gap in a key's versions may stay open before the store is
/// read: the bus delivers in well under this, so a read means a lost change.
const GRACE: Duration = Duration::from_millis(100);
/// Ticks between checks of the store's heads for subscribed keys.
const CHECK_EVERY: u32 = 20;
/// Keys per `Heads` read.
const HEADS_CHUNK: usize = 500;
/// Versions each feed keeps for subscribers catching up.
const RECENT: usize = 128;

/// What this worker knows about one of its connections.
struct Session {
    /// The device, once `hello` passed.
    client: Option<String>,
    /// Keys subscribed.
    keys: HashSet<String>,
    /// The rate limit (after `hello`).
    bucket: Bucket,
}

/// A `hello` waiting for the store's epoch.
struct Welcome {
    conn: ConnId,
    client: String,
    reference: Option<String>,
    since: Instant,
}

/// How long a `hello` waits for the store to open before it is answered
/// `unavailable`.
const WELCOME_WAIT: Duration = Duration::from_secs(2);

/// Who waits for a job.
enum Pending {
    /// A WebSocket request.
    Ws {
        conn: ConnId,
        reference: Option<String>,
        what: WsWhat,
    },
    /// An HTTP request, answered with [`Ctx::respond`].
    Http { conn: ConnId, what: HttpWhat },
    /// A write from the updates queue, answered on its `reply_to` and
    /// acked once answered.
    Amqp {
        msg: Box<AmqpMessage>,
        key: String,
        op: String,
    },
    /// The feed of a key fills a gap.
    FeedSince { key: String },
    /// A subscriber catches up.
    ConnSince { conn: ConnId, key: String },
    /// The periodic check.
    Heads,
}

enum WsWhat {
    /// `held`: the connection follows the key and is sent nothing of it
    /// until this write is answered ([`Feeds::hold`]).
    Write {
        key: String,
        op: String,
        held: bool,
    },
    Get,
    /// With each key's subscription token ([`Feeds::subscribe`]).
    Subscribe {
        keys: Vec<(String, u64)>,
    },
    List {
        prefix: String,
    },
}

enum HttpWhat {
    Get,
    Write { key: String, op: String },
}

/// The client of writes from the updates queue: op memory is by (client,
/// op), so backends writing through RabbitMQ share one op space.
pub const AMQP_CLIENT: &str = "amqp";

/// The sync server's handler.
pub struct SyncWorker {
    config: Arc<SyncConfig>,
    sessions: HashMap<ConnId, Session>,
    store: Option<Writer>,
    /// The history's epoch, once the store is open.
    epoch: Option<String>,
    /// `hello`s answered once the epoch is known.
    welcomes: Vec<Welcome>,
    pending: HashMap<u64, Pending>,
    next_job: u64,
    feeds: Feeds<Prepared>,
    /// Subscribers whose catch-up read failed, tried again next tick.
    retry: Vec<(ConnId, String)>,
    page: Bytes,
    tick: Option<TimerId>,
    ticks: u32,
    /// `Heads` reads in flight.
    checking: usize,
    /// Ops made for HTTP writes without `Idempotency-Key`.
    http_ops: u64,
    /// This worker's slot and process, for those ops.
    instance: String,
    /// Worker 0 with `[amqp]` (and SQLite): changes to RabbitMQ.
    changes: Option<crate::changes::Publisher>,
    /// Queued writes to try again at the next tick ([`Self::amqp_later`]).
    amqp_retry: Vec<AmqpMessage>,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The store's write of a `put`, `patch` or `delete` by `client`; `None`
/// for another request.
fn write_of(request: Request, client: String) -> Option<Write> {
    let (kind, key, base, op, fingerprint) = match request {
        Request::Put(p) => {
            let fingerprint = request::fingerprint("put", &p.key, p.base, Some(&p.value));
            (
                WriteKind::Put(p.value.to_string()),
                p.key,
                p.base,
                p.op,
                fingerprint,
            )
        }
        Request::Patch(p) => {
            let fingerprint = request::fingerprint("patch", &p.key, p.base, Some(&p.merge));
            (WriteKind::Patch(p.merge), p.key, p.base, p.op, fingerprint)
        }
        Request::Delete(d) => {
            let fingerprint = request::fingerprint("delete", &d.key, d.base, None);
            (WriteKind::Delete, d.key, d.base, d.op, fingerprint)
        }
        _ => return None,
    };
    Some(Write {
        kind,
        key,
        base,
        client,
        op,
        fingerprint,
    })
}

/// A change as it crosses the bus: version, key length, key, the frame.
fn bus_record(change: &Change, frame: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + change.key.len() + frame.len());
    out.put_u64(change.version);
    out.put_u16(change.key.len() as u16);
    out.put_slice(change.key.as_bytes());
    out.put_slice(frame.as_bytes());
    out.freeze()
}

/// The key, version and frame of a bus record.
fn parse_bus_record(data: &Bytes) -> Option<(String, u64, Bytes)> {
    let version = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    let len = u16::from_be_bytes(data.get(8..10)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(data.get(10..10 + len)?)
        .ok()?
        .to_string();
    Some((key, version, data.slice(10 + len..)))
}

impl SyncWorker {
    /// A handler for one worker; nothing is opened until the worker starts.
    pub fn new(config: Arc<SyncConfig>) -> Self {
        SyncWorker {
            page: crate::app::page(
                PAGE,
                config.server.websocket_path.as_deref().unwrap_or("/sync"),
            ),
            config,
            sessions: HashMap::new(),
            store: None,
            epoch: None,
            welcomes: Vec::new(),
            pending: HashMap::new(),
            next_job: 0,
            feeds: Feeds::new(RECENT),
            retry: Vec::new(),
            tick: None,
            ticks: 0,
            checking: 0,
            http_ops: 0,
            instance: String::new(),
            changes: None,
            amqp_retry: Vec::new(),
        }
    }

    /// Whether the store takes no more requests now.
    fn store_full(&self) -> bool {
        self.store
            .as_ref()
            .is_none_or(|s| s.pending() >= self.config.max_queue)
    }

    /// Hands work to the store; false if its thread is gone.
    fn submit(&mut self, work: Work, pending: Pending) -> bool {
        self.try_submit(work, pending).is_ok()
    }

    /// Hands work to the store; if its thread is gone, gives back who
    /// waited for it.
    fn try_submit(&mut self, work: Work, pending: Pending) -> Result<(), Pending> {
        let Some(store) = &self.store else {
            return Err(pending);
        };
        self.next_job += 1;
        let id = self.next_job;
        if !store.submit(Job { id, work }) {
            log::error!("sync: the store thread is gone");
            return Err(pending);
        }
        self.pending.insert(id, pending);
        Ok(())
    }

    fn refuse(ctx: &mut Ctx, conn: ConnId, refusal: &Refusal) {
        ctx.send(conn, reply::error(refusal));
    }

    fn unavailable(ctx: &mut Ctx, conn: ConnId, reference: Option<String>) {
        let refusal = Refusal {
            code: ErrorCode::Unavailable,
            message: "the store is not available; resend (the same op for a write)".into(),
            reference,
        };
        Self::refuse(ctx, conn, &refusal);
    }

    fn handle(&mut self, ctx: &mut Ctx, conn: ConnId, frame: Frame) {
        let reference = frame.reference;
        let client = self
            .sessions
            .get(&conn)
            .and_then(|s| s.client.clone())
            .unwrap_or_default();
        let (work, what) = match frame.request {
            Request::Hello(hello) => return self.hello(ctx, conn, hello, reference),
            Request::Unsubscribe(u) => {
                self.drop_keys(conn, &u.keys);
                let text = reply::keys_reply("unsubscribed", &u.keys, reference.as_deref());
                ctx.send(conn, text);
                return;
            }
            Request::Get(g) => (Work::Get(g.key), WsWhat::Get),
            Request::List(l) => {
                let what = WsWhat::List {
                    prefix: l.prefix.clone(),
                };
                let work = Work::List {
                    prefix: l.prefix,
                    after: l.after,
                    limit: l.limit,
                };
                (work, what)
            }
            Request::Subscribe(s) => {
                if self.store_full() {
                    return Self::unavailable(ctx, conn, reference);
                }
                let Some(session) = self.sessions.get_mut(&conn) else {
                    return;
                };
                let mut keys = Vec::with_capacity(s.keys.len());
                for key in &s.keys {
                    session.keys.insert(key.clone());
                    keys.push((key.clone(), self.feeds.subscribe(key, conn)));
                }
                let what = WsWhat::Subscribe { keys };
                let work = Work::Subscribe {
                    keys: s.keys,
                    since: s.since,
                };
                (work, what)
            }
            write @ (Request::Put(_) | Request::Patch(_) | Request::Delete(_)) => {
                let Some(write) = write_of(write, client) else {
                    return;
                };
                Self::write_work(write)
            }
        };
        let subscribe = matches!(what, WsWhat::Subscribe { .. });
        if !subscribe && self.store_full() {
            return Self::unavailable(ctx, conn, reference);
        }
        let what = match what {
            WsWhat::Write { key, op, .. } => {
                let held = self.feeds.hold(&key, conn);
                WsWhat::Write { key, op, held }
            }
            other => other,
        };
        let pending = Pending::Ws {
            conn,
            reference: reference.clone(),
            what,
        };
        // The store is gone: what the request did ahead of it is undone.
        if let Err(Pending::Ws { what, .. }) = self.try_submit(work, pending) {
            let actions = self.undo(conn, &what);
            self.act(ctx, actions);
            Self::unavailable(ctx, conn, reference);
        }
    }

    /// A request the store did not do: its subscriptions are dropped
    /// (unless the connection subscribed again since), its hold released.
    /// What the hold kept back is sent by the caller's [`Self::act`] on the
    /// returned actions.
    fn undo(&mut self, conn: ConnId, what: &WsWhat) -> Vec<Action<Prepared>> {
        match what {
            WsWhat::Subscribe { keys } => {
                for (key, token) in keys {
                    if self.feeds.abandon(key, conn, *token) {
                        if let Some(session) = self.sessions.get_mut(&conn) {
                            session.keys.remove(key);
                        }
                    }
                }
                Vec::new()
            }
            WsWhat::Write {
                key, held: true, ..
            } => self.feeds.release(key, conn),
            _ => Vec::new(),
        }
    }

    /// `conn` no longer holds `keys` (a subscription that failed).
    fn drop_keys(&mut self, conn: ConnId, keys: &[String]) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            for key in keys {
                session.keys.remove(key);
                self.feeds.unsubscribe(key, conn);
            }
        }
    }

    fn write_work(write: Write) -> (Work, WsWhat) {
        let what = WsWhat::Write {
            key: write.key.clone(),
            op: write.op.clone(),
            held: false,
        };
        (Work::Write(write), what)
    }

    fn hello(
        &mut self,
        ctx: &mut Ctx,
        conn: ConnId,
        hello: request::Hello,
        reference: Option<String>,
    ) {
        if let Some(secret) = &self.config.auth_secret {
            if let Err(e) = auth::verify_now(secret, hello.token.as_deref(), &hello.client) {
                let refusal = Refusal {
                    code: ErrorCode::AuthFailed,
                    message: e.to_string(),
                    reference,
                };
                Self::refuse(ctx, conn, &refusal);
                ctx.close_with(conn, 1008, "auth_failed");
                return;
            }
        }
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.client = Some(hello.client.clone());
        match &self.epoch {
            Some(epoch) => {
                ctx.send(
                    conn,
                    reply::welcome(epoch, &hello.client, reference.as_deref()),
                );
            }
            // The store has not said its epoch yet (it is opening, or on a
            // cluster Redis is not reachable): `welcome` waits for it, and
            // requests sent meanwhile queue behind it in the store.
            None => self.welcomes.push(Welcome {
                conn,
                client: hello.client,
                reference,
                since: Instant::now(),
            }),
        }
    }

    /// The store said its epoch: the `welcome`s waiting for it. A new one
    /// while running means the history was lost (Redis emptied): every
    /// client is closed (1012) so that it says `hello` again, learns the new
    /// epoch and drops its versions, and the feeds start over.
    fn opened(&mut self, ctx: &mut Ctx, epoch: String) {
        if self.epoch.as_ref().is_some_and(|old| *old != epoch) {
            log::error!("sync: the history was lost; new epoch {epoch}: closing every client");
            for conn in ctx.local_connections() {
                ctx.close_with(conn, 1012, "history lost");
            }
            self.feeds = Feeds::new(RECENT);
        }
        for w in std::mem::take(&mut self.welcomes) {
            if self.sessions.contains_key(&w.conn) {
                let text = reply::welcome(&epoch, &w.client, w.reference.as_deref());
                ctx.send(w.conn, text);
            }
        }
        self.epoch = Some(epoch);
    }

    /// `welcome`s that waited longer than [`WELCOME_WAIT`]: `unavailable`,
    /// and the connection may send `hello` again.
    fn expire_welcomes(&mut self, ctx: &mut Ctx, now: Instant) {
        let (late, waiting): (Vec<Welcome>, Vec<Welcome>) = std::mem::take(&mut self.welcomes)
            .into_iter()
            .partition(|w| now.saturating_duration_since(w.since) >= WELCOME_WAIT);
        self.welcomes = waiting;
        for w in late {
            if let Some(session) = self.sessions.get_mut(&w.conn) {
                session.client = None;
            }
            Self::unavailable(ctx, w.conn, w.reference);
        }
    }

    /// Runs what the feed asks for.
    fn act(&mut self, ctx: &mut Ctx, actions: Vec<Action<Prepared>>) {
        for action in actions {
            match action {
                Action::Send(conn, frame) => {
                    ctx.send_prepared(conn, &frame);
                }
                Action::Close(conn) => {
                    log::warn!("sync: {conn} missed versions the store no longer has; closing it");
                    ctx.close_with(conn, 1008, "fell behind");
                }
                Action::FeedSince { key, after } => {
                    let work = Work::Since {
                        key: key.clone(),
                        after,
                    };
                    if !self.submit(work, Pending::FeedSince { key: key.clone() }) {
                        self.feeds.fill_failed(&key, Instant::now());
                    }
                }
                Action::ConnSince { conn, key, after } => {
                    let work = Work::Since {
                        key: key.clone(),
                        after,
                    };
                    if !self.submit(
                        work,
                        Pending::ConnSince {
                            conn,
                            key: key.clone(),
                        },
                    ) {
                        self.retry.push((conn, key));
                    }
                }
            }
        }
    }

    /// A change arrived for this worker's subscribers: `frame` is its
    /// `change` frame, encoded once by whoever wrote it.
    fn arrive(&mut self, ctx: &mut Ctx, key: &str, version: u64, frame: Message) {
        if !self.feeds.is_known(key) {
            return;
        }
        let prepared = ctx.prepare(frame);
        let actions = self.feeds.arrive(key, version, prepared, Instant::now());
        self.act(ctx, actions);
    }

    /// A write of this worker was acked: its change to this worker's
    /// subscribers and, on a single server, to the other workers.
    fn publish(&mut self, ctx: &mut Ctx, change: &Change) {
        let frame = reply::change(change);
        if self.config.server.cluster.is_none() && ctx.worker_count() > 1 {
            ctx.send_to_workers(bus_record(change, &frame));
        }
        self.arrive(ctx, &change.key, change.version, Message::from(frame));
    }

    fn prepared_changes(ctx: &Ctx, changes: &[Change]) -> Vec<(u64, Prepared)> {
        changes
            .iter()
            .map(|c| (c.version, ctx.prepare(Message::from(reply::change(c)))))
            .collect()
    }

    fn finish(&mut self, ctx: &mut Ctx, id: u64, result: Result<Answer, String>) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match pending {
            Pending::Ws {
                conn,
                reference,
                what,
            } => self.finish_ws(ctx, conn, reference, what, result),
            Pending::Http { conn, what } => {
                let response = match (what, result) {
                    (_, Err(e)) => {
                        log::error!("sync: store failed: {e}");
                        http::unavailable("the store failed; resend with the same Idempotency-Key")
                    }
                    (HttpWhat::Get, Ok(Answer::Doc(doc))) => http::get_response(&doc),
                    (HttpWhat::Write { key, op }, Ok(Answer::Write(outcome))) => {
                        let response = http::write_response(&key, &op, &outcome);
                        if let Outcome::Decided {
                            change: Some(change),
                            ..
                        } = &outcome
                        {
                            ctx.respond(conn, response);
                            self.publish(ctx, change);
                            return;
                        }
                        response
                    }
                    (_, Ok(other)) => {
                        log::error!("sync: the store answered an HTTP request with {other:?}");
                        http::unavailable("internal error")
                    }
                };
                ctx.respond(conn, response);
            }
            Pending::Amqp { msg, key, op } => self.finish_amqp(ctx, &msg, &key, &op, result),
            Pending::FeedSince { key } => match result {
                Ok(Answer::Since { changes, .. }) => {
                    let items = Self::prepared_changes(ctx, &changes);
                    let actions = self.feeds.filled(&key, items, Instant::now());
                    self.act(ctx, actions);
                }
                _ => self.feeds.fill_failed(&key, Instant::now()),
            },
            Pending::ConnSince { conn, key } => match result {
                Ok(Answer::Since { changes, .. }) => {
                    let items = Self::prepared_changes(ctx, &changes);
                    let actions = self.feeds.caught_up(&key, conn, items);
                    self.act(ctx, actions);
                }
                _ => self.retry.push((conn, key)),
            },
            Pending::Heads => {
                self.checking = self.checking.saturating_sub(1);
                if let Ok(Answer::Heads(heads)) = result {
                    let actions: Vec<_> = heads
                        .iter()
                        .filter_map(|(key, version)| self.feeds.head_seen(key, *version))
                        .collect();
                    self.act(ctx, actions);
                }
            }
        }
    }

    fn finish_ws(
        &mut self,
        ctx: &mut Ctx,
        conn: ConnId,
        reference: Option<String>,
        what: WsWhat,
        result: Result<Answer, String>,
    ) {
        let r = reference.as_deref();
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => {
                // The client is told the request failed: a subscription is
                // not held (it may subscribe again), a write may resend.
                log::error!("sync: store failed: {e}");
                Self::unavailable(ctx, conn, reference);
                let actions = self.undo(conn, &what);
                return self.act(ctx, actions);
            }
        };
        match (what, answer) {
            (WsWhat::Write { key, op, held }, Answer::Write(outcome)) => {
                let text = reply::write_outcome(&key, &op, &outcome, r);
                // The reply first; then what the hold kept from this
                // connection (versions before its own); then its own change.
                ctx.send(conn, text);
                if held {
                    let actions = self.feeds.release(&key, conn);
                    self.act(ctx, actions);
                }
                if let Outcome::Decided {
                    change: Some(change),
                    ..
                } = &outcome
                {
                    self.publish(ctx, change);
                }
            }
            (WsWhat::Get, Answer::Doc(doc)) => {
                ctx.send(conn, reply::doc(&doc, r));
            }
            (WsWhat::List { prefix }, Answer::Keys(items)) => {
                ctx.send(conn, reply::listed(&prefix, &items, r));
            }
            (WsWhat::Subscribe { keys }, Answer::Subscribed(snapshots)) => {
                let now = Instant::now();
                for (snapshot, (_, token)) in snapshots.iter().zip(&keys) {
                    let (key, version, text) = match snapshot {
                        Snapshot::Doc(doc) => (&doc.key, doc.version, reply::doc(doc, r)),
                        Snapshot::Changes {
                            key,
                            since,
                            version,
                            changes,
                        } => (
                            key,
                            *version,
                            reply::changes(key, *since, *version, changes, r),
                        ),
                    };
                    ctx.send(conn, text);
                    let actions = self.feeds.snapshot(key, conn, *token, version, now);
                    self.act(ctx, actions);
                }
                let keys: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
                ctx.send(conn, reply::keys_reply("subscribed", &keys, r));
            }
            (what, other) => {
                log::error!("sync: the store answered with {other:?}");
                Self::unavailable(ctx, conn, reference);
                let actions = self.undo(conn, &what);
                self.act(ctx, actions);
            }
        }
    }

    /// A write from the updates queue: parsed and checked as a frame's
    /// `put` (or `patch`, `delete`), handed to the store, answered and acked
    /// once committed. A malformed one is answered `error` and rejected
    /// (never requeued); one the store cannot take now goes back to the
    /// queue.
    fn amqp_write(&mut self, ctx: &mut Ctx, msg: &AmqpMessage) {
        let max = self.config.server.max_frame_bytes;
        let parsed = if msg.body.len() > max {
            let text = format!("the body is over max_frame_bytes ({max})");
            Err(Refusal::new(ErrorCode::TooLarge, text))
        } else {
            std::str::from_utf8(&msg.body)
                .map_err(|_| Refusal::new(ErrorCode::BadJson, "the body is not UTF-8"))
                .and_then(|text| request::parse_write(text, self.config.max_value_bytes))
        };
        let write = match parsed {
            Ok(request) => write_of(request, AMQP_CLIENT.into()).expect("parse_write gives writes"),
            Err(refusal) => {
                log::warn!(
                    "sync: a malformed write from {}: {}; rejected",
                    msg.queue,
                    refusal.message
                );
                if msg.reply_to.is_some() {
                    let _ = ctx.amqp_reply(msg, reply::error(&refusal));
                }
                ctx.amqp_reject(msg.id);
                return;
            }
        };
        if self.store_full() {
            return self.amqp_later(msg, "the store is busy");
        }
        let pending = Pending::Amqp {
            msg: Box::new(msg.clone()),
            key: write.key.clone(),
            op: write.op.clone(),
        };
        if !self.submit(Work::Write(write), pending) {
            self.amqp_later(msg, "the store is not available");
        }
    }

    /// A queued write that cannot be done (or answered) now is tried again
    /// at the next tick, not handed back to the broker, which would give it
    /// straight back: held here, unacked, at most `prefetch` of them. Taken
    /// again after a commit, it is answered from op memory.
    fn amqp_later(&mut self, msg: &AmqpMessage, why: &str) {
        if self.amqp_retry.is_empty() {
            log::warn!("sync: {why}: queued writes wait, tried again every {TICK:?}");
        }
        self.amqp_retry.push(msg.clone());
    }

    /// The store decided a queued write: the answer to its `reply_to`,
    /// then the ack (once the answer is handed to the bridge, not on the
    /// broker's confirm of it). An answer that cannot be published now
    /// holds the message for the next tick instead: taken again, it is
    /// answered from op memory, not written twice.
    fn finish_amqp(
        &mut self,
        ctx: &mut Ctx,
        msg: &AmqpMessage,
        key: &str,
        op: &str,
        result: Result<Answer, String>,
    ) {
        let outcome = match result {
            Ok(Answer::Write(outcome)) => outcome,
            Ok(other) => {
                log::error!("sync: the store answered a queued write with {other:?}");
                ctx.amqp_reject(msg.id);
                return;
            }
            Err(e) => return self.amqp_later(msg, &format!("the store failed ({e})")),
        };
        let answered = msg.reply_to.is_none()
            || ctx
                .amqp_reply(msg, reply::write_outcome(key, op, &outcome, None))
                .is_ok();
        if answered {
            ctx.amqp_ack(msg.id);
        } else {
            self.amqp_later(msg, "its answer cannot be published now");
        }
        if let Outcome::Decided {
            change: Some(change),
            ..
        } = &outcome
        {
            self.publish(ctx, change);
        }
    }

    /// Changes may have been lost (a bus gap, the Redis feed
    /// interrupted): the store's heads are checked now, not at the next
    /// periodic check.
    fn check_now(&mut self, ctx: &mut Ctx) {
        self.ticks = CHECK_EVERY - 1;
        self.checking = 0;
        self.on_tick(ctx);
    }

    fn on_tick(&mut self, ctx: &mut Ctx) {
        for msg in std::mem::take(&mut self.amqp_retry) {
            self.amqp_write(ctx, &msg);
        }
        let now = Instant::now();
        if !self.welcomes.is_empty() {
            self.expire_welcomes(ctx, now);
        }
        if self.feeds.has_gaps() {
            let actions = self.feeds.due(now, GRACE);
            self.act(ctx, actions);
        }
        for (conn, key) in std::mem::take(&mut self.retry) {
            if let Some(action) = self.feeds.retry_conn(&key, conn) {
                self.act(ctx, vec![action]);
            }
        }
        self.ticks += 1;
        if self.ticks % CHECK_EVERY == 0 && self.checking == 0 {
            let keys = self.feeds.known_keys();
            for chunk in keys.chunks(HEADS_CHUNK) {
                if self.submit(Work::Heads(chunk.to_vec()), Pending::Heads) {
                    self.checking += 1;
                }
            }
        }
    }

    fn doc_request(&mut self, request: &HttpRequest, rest: &str) -> Response {
        self.http_ops += 1;
        let op = format!("http-{}-{}-{}", self.instance, now_ms(), self.http_ops);
        let call = match http::doc_call(
            request,
            rest,
            self.config.api_key.as_deref(),
            self.config.max_value_bytes,
            || op,
        ) {
            Ok(call) => call,
            Err(response) => return response,
        };
        if self.store_full() {
            return http::unavailable("the store is busy; try again");
        }
        let conn = request.conn;
        let (work, what) = match call {
            DocCall::Get(key) => (Work::Get(key), HttpWhat::Get),
            DocCall::Write(write) => {
                let what = HttpWhat::Write {
                    key: write.key.clone(),
                    op: write.op.clone(),
                };
                (Work::Write(write), what)
            }
        };
        if self.submit(work, Pending::Http { conn, what }) {
            Response::later()
        } else {
            http::unavailable("the store is not available")
        }
    }
}

impl Handler for SyncWorker {
    fn on_worker_start(&mut self, ctx: &mut Ctx) {
        self.instance = format!("{}-{}", ctx.worker_id(), std::process::id());
        let waker = ctx.waker();
        match Writer::spawn(&self.config, ctx.worker_id(), move || waker.wake()) {
            Ok(store) => self.store = Some(store),
            Err(e) => {
                log::error!("sync: cannot start the store thread: {e}");
                std::process::exit(1);
            }
        }
        self.tick = Some(ctx.add_timer(TICK, true));
        let c = &self.config;
        if ctx.worker_id() == 0 && c.server.amqp.is_some() {
            if c.server.cluster.is_some() {
                log::warn!(
                    "sync: [amqp] with [cluster]: changes are not published to {} \
                     (the outbox is in SQLite); writes from {} work",
                    c.changes_exchange,
                    c.updates_queue
                );
            } else {
                let (db, busy) = (c.db_path.clone(), c.busy_timeout);
                self.changes = Some(crate::changes::start(ctx, db, busy, &c.changes_exchange));
            }
        }
    }

    fn on_worker_stop(&mut self, ctx: &mut Ctx) {
        if let Some(tick) = self.tick.take() {
            ctx.del_timer(tick);
        }
    }

    fn on_connect(&mut self, _ctx: &mut Ctx, conn: ConnId) {
        let session = Session {
            client: None,
            keys: HashSet::new(),
            bucket: Bucket::new(self.config.rate_limit, Instant::now()),
        };
        self.sessions.insert(conn, session);
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let said_hello = session.client.is_some();
        let verdict = if said_hello {
            session.bucket.take(Instant::now())
        } else {
            Verdict::Pass
        };
        if verdict == Verdict::Abuse {
            let refusal = Refusal::new(ErrorCode::RateLimited, "too many requests; closing");
            Self::refuse(ctx, conn, &refusal);
            ctx.close_with(conn, 1008, "rate limit");
            return;
        }
        let limited = verdict == Verdict::Limited;
        let Some(text) = msg.as_text() else {
            let refusal = if !said_hello {
                Refusal::new(ErrorCode::NotHello, "send hello first")
            } else if limited {
                Refusal::new(ErrorCode::RateLimited, "slow down")
            } else {
                Refusal::new(ErrorCode::Unsupported, "binary frames are not supported")
            };
            return Self::refuse(ctx, conn, &refusal);
        };
        let keys = &session.keys;
        let subscribed = |k: &str| keys.contains(k);
        let gate = Gate {
            said_hello,
            max_value_bytes: self.config.max_value_bytes,
            max_subscriptions: self.config.max_subscriptions,
            subscribed: &subscribed,
            subscription_count: keys.len(),
            rate_limited: limited,
        };
        // Its `welcome` waits for the store's epoch: until it is sent, other
        // requests are answered `unavailable` (nothing may come before it).
        let welcoming = said_hello && self.epoch.is_none();
        match request::parse(text, &gate) {
            Ok(frame) if welcoming => Self::unavailable(ctx, conn, frame.reference),
            Ok(frame) => self.handle(ctx, conn, frame),
            Err(refusal) => Self::refuse(ctx, conn, &refusal),
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx, conn: ConnId, _close: Option<&foreman::CloseFrame>) {
        if let Some(session) = self.sessions.remove(&conn) {
            for key in &session.keys {
                self.feeds.unsubscribe(key, conn);
            }
        }
    }

    fn on_error(&mut self, _ctx: &mut Ctx, conn: ConnId, error: &ConnError) {
        log::debug!("sync: connection {conn}: {error}");
    }

    fn on_http_request(&mut self, _ctx: &mut Ctx, request: &HttpRequest) -> Response {
        let path = request.path.as_str();
        if let Some(rest) = path.strip_prefix("/doc/") {
            return self.doc_request(request, rest);
        }
        match (request.method.as_str(), path) {
            ("GET" | "HEAD", "/" | "/index.html") => {
                Response::html(self.page.clone()).header("Cache-Control", "no-cache")
            }
            ("GET" | "HEAD", "/healthz") => Response::text("ok"),
            (_, "/" | "/index.html" | "/healthz") => Response::status(405).header("Allow", "GET"),
            _ => http::error(404, ErrorCode::NotFound, "no such path"),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx, timer: TimerId) {
        if Some(timer) == self.tick {
            self.on_tick(ctx);
        } else if let Some(changes) = self.changes.as_mut().filter(|c| c.owns_timer(timer)) {
            changes.poll(ctx);
        }
    }

    fn on_job_done(&mut self, ctx: &mut Ctx, job: JobId, result: JobResult) {
        if let Some(changes) = self.changes.as_mut() {
            changes.job_done(ctx, job, result);
        }
    }

    fn on_amqp_confirm(&mut self, _ctx: &mut Ctx, seq: u64, ok: bool) {
        if let Some(changes) = self.changes.as_mut() {
            changes.confirmed(seq, ok);
        }
    }

    fn on_amqp_message(&mut self, ctx: &mut Ctx, msg: &AmqpMessage) {
        if msg.queue == self.config.updates_queue {
            self.amqp_write(ctx, msg);
        } else {
            log::warn!(
                "sync: a message from {}, which it does not read; rejected",
                msg.queue
            );
            ctx.amqp_reject(msg.id);
        }
    }

    fn on_worker_message(&mut self, ctx: &mut Ctx, _from: usize, data: Bytes) {
        match parse_bus_record(&data) {
            Some((key, version, frame)) => match Utf8Bytes::try_from(frame) {
                Ok(text) => self.arrive(ctx, &key, version, Message::from(text)),
                Err(_) => log::error!("sync: a change from another worker is not UTF-8"),
            },
            None => log::error!("sync: a malformed change from another worker"),
        }
    }

    fn on_gap(&mut self, ctx: &mut Ctx, from_worker: usize) {
        // Records from that worker were lost: changes among them are read
        // from the store by the next check of heads, made now.
        log::warn!(
            "sync: changes from worker {from_worker} may have been lost; checking the store"
        );
        self.check_now(ctx);
    }

    fn on_wake(&mut self, ctx: &mut Ctx) {
        let Some(store) = &self.store else {
            return;
        };
        for event in store.ready() {
            match event {
                Event::Opened { epoch } => self.opened(ctx, epoch),
                Event::Done { id, result } => self.finish(ctx, id, result),
                Event::Change(change) => {
                    let frame = Message::from(reply::change(&change));
                    self.arrive(ctx, &change.key, change.version, frame);
                }
                Event::FeedGap => self.check_now(ctx),
            }
        }
    }
}
