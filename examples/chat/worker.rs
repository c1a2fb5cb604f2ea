//! [`ChatWorker`]: the chat's [`Handler`], one per worker process.
//!
//! Requests that need the store (`join`, `leave`, `say`, `history`) go to
//! the worker's [`Writer`] and are answered from [`Handler::on_wake`] when
//! their batch has committed, in the order they were sent; or with `busy`
//! (the database stayed locked, see [`crate::store`]) or `unavailable` (it
//! failed, or on a cluster Redis is unreachable: [`crate::store_redis`]),
//! and the connection stays open. The store is SQLite, or Redis when the
//! config has a `[cluster]`. `login` and `users`
//! are answered at once from the registry. Room membership is a foreman group
//! per room (`room:NAME`), joined and left as the request arrives, so a
//! connection never misses a message stored after its `join` (it may see one
//! both live and in the `joined` history; ids tell them apart).
//!
//! # `joined` comes first (protocol 1.1)
//!
//! Between the group join and the store's answer, the room's messages and
//! presence events already reach the connection. So a `join` also holds the
//! connection's output ([`Ctx::hold_output`]), and the store's answer
//! releases it with `joined` (or the `join`'s error) put first
//! ([`Ctx::release_output`]): the client sees `joined` before anything of
//! the room. Holds count, one per `join` waiting for the store: with several
//! joins of one connection in flight (any rooms), its output flows again
//! when the last is answered; each `joined` goes before everything held up
//! to its own answer, so before all of its room's events. (A `join` the store
//! could not do leaves the group, but what the room sent while it waited,
//! rare since the store was failing, still follows the error.)

use crate::auth;
use crate::config::ChatConfig;
use crate::events::Publisher;
use crate::rate::{Bucket, Verdict};
use crate::reply;
use crate::request::{self, ErrorCode, Frame, Gate, Refusal, Request, Target};
use crate::store::{self, Done, Job, Store, Writer};
use crate::store_redis::RedisStore;
use bytes::Bytes;
use foreman::{
    ConnError, ConnId, Ctx, Handler, Message, Request as HttpRequest, Response, TimerId,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// The page, compiled in.
const PAGE: &str = include_str!("page.html");

/// The foreman group of a room: its name, so that a backend reaches the
/// room's members through the HTTP push API (`{"to": {"group": ROOM}}`),
/// as it reaches a user by their login name (the uid).
fn group(room: &str) -> &str {
    room
}

/// What this worker knows about one of its connections.
struct Session {
    /// The user, once logged in.
    user: Option<String>,
    /// Rooms joined (and not left) by this connection.
    rooms: BTreeSet<String>,
    /// The rate limit.
    bucket: Bucket,
}

/// The chat's handler.
pub struct ChatWorker {
    /// Shared configuration.
    config: Arc<ChatConfig>,
    /// This worker's connections.
    sessions: HashMap<ConnId, Session>,
    /// The database thread; started in `on_worker_start`.
    writer: Option<Writer>,
    /// The tick timer, when ticks are on.
    tick: Option<TimerId>,
    /// The page with the WebSocket path filled in.
    page: Bytes,
    /// Set by `on_worker_stop`: from then on closing connections leave their
    /// `members` rows to the next worker in this slot (see `on_close`).
    stopping: bool,
    /// Worker 0 with `[amqp]` (and SQLite): stored messages to RabbitMQ.
    events: Option<Publisher>,
}

impl ChatWorker {
    /// A handler for one worker; nothing is opened until the worker starts.
    pub fn new(config: Arc<ChatConfig>) -> Self {
        ChatWorker {
            sessions: HashMap::new(),
            writer: None,
            tick: None,
            page: crate::app::page(PAGE, config.server.websocket_path.as_deref().unwrap_or("/")),
            config,
            stopping: false,
            events: None,
        }
    }

    fn submit(&mut self, ctx: &mut Ctx, conn: ConnId, job: Job) {
        if !self.writer.as_ref().is_some_and(|w| w.submit(job)) {
            log::error!("chat: the database writer is gone");
            ctx.close_with(conn, 1011, "storage unavailable");
        }
    }

    fn refuse(ctx: &mut Ctx, conn: ConnId, refusal: &Refusal) {
        ctx.send(conn, reply::error(refusal));
    }

    fn handle(&mut self, ctx: &mut Ctx, conn: ConnId, frame: Frame) {
        let reference = frame.reference;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let user = session.user.clone().unwrap_or_default();
        match frame.request {
            Request::Login(login) => {
                if let Some(secret) = &self.config.auth_secret {
                    if let Err(e) = auth::verify_now(secret, login.token.as_deref(), &login.name) {
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
                session.user = Some(login.name.clone());
                ctx.bind_uid(conn, &login.name);
                let text = reply::welcome(&login.name, &conn.to_string(), reference.as_deref());
                ctx.send(conn, text);
            }
            Request::Join(join) => {
                // In the group at once, so nothing stored from now on is
                // missed; but held back until `joined` is ready, so nothing
                // of the room comes before it (see the module docs).
                session.rooms.insert(join.room.clone());
                ctx.join_group(conn, group(&join.room));
                ctx.hold_output(conn);
                let history = self.config.history_on_join;
                let job = Job::Join {
                    conn,
                    reference,
                    user,
                    room: join.room,
                    history,
                };
                self.submit(ctx, conn, job);
            }
            Request::Leave(leave) => {
                session.rooms.remove(&leave.room);
                ctx.leave_group(conn, group(&leave.room));
                let job = Job::Leave {
                    conn,
                    reference,
                    user,
                    room: leave.room,
                };
                self.submit(ctx, conn, job);
            }
            Request::Say(say) => {
                let job = Job::Say {
                    conn,
                    reference,
                    from: user,
                    target: say.target,
                    text: say.text,
                };
                self.submit(ctx, conn, job);
            }
            Request::History(h) => {
                let job = Job::History {
                    conn,
                    reference,
                    user,
                    target: h.target,
                    before: h.before,
                    limit: h.limit,
                };
                self.submit(ctx, conn, job);
            }
            Request::Users(u) => {
                let mut users = match &u.room {
                    Some(room) => ctx.group_uids(group(room)),
                    None => ctx.uids(),
                };
                users.sort();
                users.dedup();
                let text = reply::users(u.room.as_deref(), &users, reference.as_deref());
                ctx.send(conn, text);
            }
        }
    }

    fn finish(&mut self, ctx: &mut Ctx, done: Done) {
        match done {
            Done::Said {
                conn,
                reference,
                message,
            } => {
                let frame = Message::from(reply::message(&message));
                match &message.target {
                    Target::Room(room) => ctx.send_to_group(group(room), frame, &[]),
                    Target::User(to) if *to == message.from => ctx.send_to_uid(to, frame),
                    Target::User(to) => {
                        ctx.send_to_uids(&[to.as_str(), message.from.as_str()], frame)
                    }
                };
                ctx.send(conn, reply::ack(message.id, reference.as_deref()));
            }
            Done::History {
                conn,
                reference,
                target,
                messages,
            } => {
                ctx.send(
                    conn,
                    reply::history(&target, &messages, reference.as_deref()),
                );
            }
            Done::Joined {
                conn,
                reference,
                user,
                room,
                first,
                history,
            } => {
                let g = group(&room);
                let mut users = ctx.group_uids(g);
                users.sort();
                users.dedup();
                let joined = reply::joined(&room, &users, &history, reference.as_deref());
                ctx.release_output(conn, Some(Message::from(joined)));
                if first {
                    // Not to the user's own connections: it knows it joined
                    // (another of its connections may already be a member
                    // while its own join is still on the way). Left out by
                    // uid, so each member's worker decides: a connection the
                    // user opened on another node a moment ago is left out
                    // too, though this worker may not know it yet.
                    let presence = reply::presence(&room, &user, true);
                    ctx.send_to_group_except_uids(g, presence, &[&user]);
                }
            }
            Done::Left {
                conn,
                reference,
                user,
                room,
                last,
            } => {
                ctx.send(conn, reply::left(&room, reference.as_deref()));
                if last {
                    ctx.send_to_group(group(&room), reply::presence(&room, &user, false), &[conn]);
                }
            }
            Done::Rejoined { user, room, first } => {
                if first {
                    let presence = reply::presence(&room, &user, true);
                    ctx.send_to_group_except_uids(group(&room), presence, &[&user]);
                }
            }
            Done::Revived => {
                log::warn!(
                    "chat: this worker's presence had expired in Redis; putting its connections back in their rooms"
                );
                let mut jobs = Vec::new();
                for (&conn, session) in &self.sessions {
                    if let Some(user) = &session.user {
                        jobs.extend(session.rooms.iter().map(|room| {
                            let (user, room) = (user.clone(), room.clone());
                            (conn, Job::Rejoin { conn, user, room })
                        }));
                    }
                }
                for (conn, job) in jobs {
                    self.submit(ctx, conn, job);
                }
            }
            Done::Gone { user, room } => {
                ctx.send_to_group(group(&room), reply::presence(&room, &user, false), &[]);
            }
            Done::Busy(job) => {
                let message = "the database is locked by another worker; try again";
                self.not_stored(ctx, job, ErrorCode::Busy, message);
            }
            Done::Failed { job, error } => {
                log::error!("chat: storage failed: {error}");
                let message = "storage failed; nothing was stored";
                self.not_stored(ctx, job, ErrorCode::Unavailable, message);
            }
        }
    }

    /// A request the store could not do: undoes what the loop did ahead of
    /// the store (the group of a `join`, and of a `leave`), so the
    /// connection is where it was, and answers `code` (a `join`'s answer
    /// releases its hold on the output, going first). The connection stays
    /// open: a locked or failing database is never the client's fault.
    fn not_stored(&mut self, ctx: &mut Ctx, job: Job, code: ErrorCode, message: &str) {
        let refusal = |reference| Refusal {
            code,
            message: message.into(),
            reference,
        };
        let (conn, reference) = match job {
            Job::Say {
                conn, reference, ..
            }
            | Job::History {
                conn, reference, ..
            } => (conn, reference),
            Job::Join {
                conn,
                reference,
                room,
                ..
            } => {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.rooms.remove(&room);
                    ctx.leave_group(conn, group(&room));
                    let error = reply::error(&refusal(reference));
                    ctx.release_output(conn, Some(Message::from(error)));
                }
                return;
            }
            Job::Leave {
                conn,
                reference,
                room,
                ..
            } => {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.rooms.insert(room.clone());
                    ctx.join_group(conn, group(&room));
                }
                (conn, reference)
            }
            Job::Closed { .. } | Job::Reap { .. } | Job::Rejoin { .. } => return,
        };
        Self::refuse(ctx, conn, &refusal(reference));
    }
}

impl Handler for ChatWorker {
    fn on_worker_start(&mut self, ctx: &mut Ctx) {
        let c = &self.config;
        let waker = ctx.waker();
        let wake = move || waker.wake();
        let name = format!("chat-writer-{}", ctx.worker_id());
        let writer = match &c.server.cluster {
            Some(cluster) => {
                let (cluster, slot) = (cluster.clone(), ctx.worker_id());
                let open = move || RedisStore::new(&cluster, slot);
                Writer::spawn(open, c.max_batch, name, wake)
            }
            None => {
                let (path, busy) = (c.database.clone(), c.busy_timeout);
                let open = move || Store::open(&path, busy);
                Writer::spawn(open, c.max_batch, name, wake)
            }
        };
        let writer = match writer {
            Ok(writer) => writer,
            Err(e) => {
                log::error!("chat: cannot start the writer thread: {e}");
                std::process::exit(1);
            }
        };
        writer.submit(Job::Reap {
            worker: ctx.worker_id(),
            count: ctx.worker_count(),
        });
        self.writer = Some(writer);
        if let Some(interval) = c.tick_interval {
            self.tick = Some(ctx.add_timer(interval, true));
        }
        if ctx.worker_id() == 0 && c.server.amqp.is_some() {
            if c.server.cluster.is_some() {
                log::warn!(
                    "chat: [amqp] with [cluster]: stored messages are not published \
                     (the outbox reads the SQLite history); pushes from the queue work"
                );
            } else {
                let (path, busy) = (c.database.clone(), c.busy_timeout);
                self.events = Some(crate::events::start(ctx, path, busy));
            }
        }
    }

    fn on_worker_stop(&mut self, ctx: &mut Ctx) {
        self.stopping = true;
        if let Some(tick) = self.tick.take() {
            ctx.del_timer(tick);
        }
    }

    fn on_connect(&mut self, _ctx: &mut Ctx, conn: ConnId) {
        let session = Session {
            user: None,
            rooms: BTreeSet::new(),
            bucket: Bucket::new(self.config.rate_limit, Instant::now()),
        };
        self.sessions.insert(conn, session);
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let verdict = session.bucket.take(Instant::now());
        if verdict == Verdict::Abuse {
            let refusal = Refusal::new(ErrorCode::RateLimited, "too many messages; closing");
            Self::refuse(ctx, conn, &refusal);
            ctx.close_with(conn, 1008, "rate limit");
            return;
        }
        let limited = verdict == Verdict::Limited;
        let Some(text) = msg.as_text() else {
            let refusal = if limited {
                Refusal::new(ErrorCode::RateLimited, "slow down")
            } else {
                Refusal::new(ErrorCode::Unsupported, "binary frames are not supported")
            };
            Self::refuse(ctx, conn, &refusal);
            return;
        };
        let frame = match request::parse(text) {
            Ok(frame) => frame,
            Err(refusal) => return Self::refuse(ctx, conn, &refusal),
        };
        let busy = self
            .writer
            .as_ref()
            .is_some_and(|w| w.pending() >= self.config.max_queue);
        let gate = Gate {
            logged_in: session.user.is_some(),
            rooms: &session.rooms,
            max_text_chars: self.config.max_text_chars,
            rate_limited: limited,
            busy,
        };
        if let Err(refusal) = frame.admit(&gate, |u| ctx.is_uid_online(u)) {
            return Self::refuse(ctx, conn, &refusal);
        }
        self.handle(ctx, conn, frame);
    }

    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, _close: Option<&foreman::CloseFrame>) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        // A stopping worker's loop ends as soon as its last client is gone,
        // before the writer could report who left: the `presence` events
        // would be lost with the rows already deleted. So the rows stay, and
        // the worker that next starts in this slot removes them and announces
        // the leaves (`Job::Reap`), exactly as after a crash.
        if self.stopping {
            return;
        }
        if let (Some(user), false) = (session.user, session.rooms.is_empty()) {
            self.submit(ctx, conn, Job::Closed { conn, user });
        }
    }

    fn on_error(&mut self, _ctx: &mut Ctx, conn: ConnId, error: &ConnError) {
        log::debug!("chat: connection {conn}: {error}");
    }

    fn on_http_request(&mut self, _ctx: &mut Ctx, request: &HttpRequest) -> Response {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET" | "HEAD", "/" | "/index.html") => {
                Response::html(self.page.clone()).header("Cache-Control", "no-cache")
            }
            ("GET" | "HEAD", "/healthz") => Response::text("ok"),
            (_, "/" | "/index.html" | "/healthz") => Response::status(405).header("Allow", "GET"),
            _ => Response::not_found(),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx, timer: TimerId) {
        if let Some(events) = self.events.as_mut().filter(|e| e.owns_timer(timer)) {
            return events.poll(ctx);
        }
        if Some(timer) != self.tick {
            return;
        }
        let frame = Message::from(reply::tick(store::now_ms(), ctx.uid_count()));
        for (conn, session) in &self.sessions {
            if session.user.is_some() {
                ctx.send(*conn, frame.clone());
            }
        }
    }

    fn on_job_done(&mut self, ctx: &mut Ctx, job: foreman::JobId, result: foreman::JobResult) {
        if let Some(events) = self.events.as_mut() {
            events.job_done(ctx, job, result);
        }
    }

    fn on_amqp_confirm(&mut self, _ctx: &mut Ctx, seq: u64, ok: bool) {
        if let Some(events) = self.events.as_mut() {
            events.confirmed(seq, ok);
        }
    }

    fn on_wake(&mut self, ctx: &mut Ctx) {
        let Some(writer) = &self.writer else {
            return;
        };
        let ready: Vec<Done> = writer.ready().collect();
        for done in ready {
            self.finish(ctx, done);
        }
    }
}
