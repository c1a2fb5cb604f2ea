//! The chat's store on a cluster: history, message ids and room membership
//! in Redis, so every node serves the same rooms. Same [`Job`] / [`Done`]
//! contract as the SQLite [`crate::store::Store`], run by the same
//! [`crate::store::Writer`] thread (one per worker, off the event loop).
//!
//! # One script a batch
//!
//! A batch is one call of a Lua script (`store_redis.lua`, sent once and
//! then called by its SHA): Redis runs a script alone, so the whole batch is
//! atomic, and only its answer (after Redis has it; with `appendonly yes`
//! and `appendfsync always`, on disk) lets the worker ack and deliver. Ids
//! are `INCR` of one counter: positive, unique and increasing across the
//! cluster, in the order messages were stored.
//!
//! # Redis unreachable
//!
//! Connecting, reading and writing time out after [`TIMEOUT`], so a stopped
//! or unreachable Redis answers in bounded time. Any error or timeout fails
//! the batch: its requests are answered `unavailable` ([`Done::Failed`]),
//! the kept jobs ([`Job::kept`]) come back as [`Done::Busy`] and are tried
//! again, and the next batch connects anew. A batch whose script reaches
//! Redis only after [`DEADLINE`] (say Redis was stopped with the request in
//! its socket, and woke after the client gave up) does nothing: the script
//! checks Redis's clock against a deadline in that clock (the offset of the
//! two is measured at each connect), so "unavailable" means nothing stored.
//!
//! # Keys
//!
//! Under `PREFIX:chat:` (`PREFIX` is `[cluster] prefix`): `id` (the
//! counter); `room:ROOM` and `dm:A:B` (sorted sets scored by id; a member is
//! `ID:JSON` of the message without its id; names contain no `:`);
//! `conn:CONN` (set of the rooms of a connection, by its [`ConnId`] text);
//! `count:ROOM` (hash user -> connections in the room: presence is decided
//! there, atomically); `unit:NODE:SLOT` (hash conn -> user of one worker's
//! connections in rooms); `alive:NODE:SLOT` (set with `PX` =
//! `presence_ttl` by every batch and at least every third of it) and
//! `units` (set of units).
//!
//! # Dead workers
//!
//! A worker that starts reaps its own slot's old rows ([`Job::Reap`]). Every
//! writer, each third of `presence_ttl`, refreshes its unit and reaps the
//! rows of every unit whose `alive` key expired (a node that was killed, or
//! cut off from Redis that long): the script runs alone, so each leave is
//! found, and announced ([`Done::Gone`]), by exactly one worker in the
//! cluster. A restarted node's workers register again with their first
//! batch. A worker that was only cut off (from Redis, longer than the TTL)
//! finds its `alive` key gone when it is back: it reports
//! [`Done::Revived`], and its worker puts its connections back in their
//! rooms ([`Job::Rejoin`]), announcing those users again where the others
//! had been told they left.
//!
//! [`ConnId`]: foreman::ConnId

use crate::redis_reply::{array, string};
use crate::request::Target;
use crate::store::{now_ms, Backend, Done, Found, Job, StoredMessage};
use foreman::ClusterConfig;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long connecting to Redis, or one read or write, may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// How long after it was sent a batch may still start running in Redis:
/// well inside [`TIMEOUT`], so that one that ran is answered before the
/// client gives up on it.
pub const DEADLINE: Duration = Duration::from_secs(1);

/// The batch script.
const SCRIPT: &str = include_str!("store_redis.lua");

/// A worker's link to the chat's keys in Redis; used by its writer thread.
pub struct RedisStore {
    /// Where Redis is.
    client: redis::Client,
    /// The connection, when up: dropped after any error, made again by
    /// the next batch.
    link: Option<Link>,
    /// `PREFIX:chat:`.
    prefix: String,
    /// This worker's unit: `NODE:SLOT`.
    unit: String,
    /// The node's name.
    node: String,
    /// `presence_ttl`.
    ttl: Duration,
    /// When the unit's presence is refreshed (and dead units reaped) next.
    next_beat: Instant,
    /// The script.
    script: redis::Script,
    /// A call has succeeded: from then on the unit is expected alive.
    registered: bool,
    /// A call found the unit expired: [`Done::Revived`] is owed.
    revived: bool,
    /// The last call failed.
    failing: bool,
}

/// A connection and how far Redis's clock is ahead of ours.
struct Link {
    con: redis::Connection,
    /// Redis's milliseconds minus ours, measured at connect.
    offset_ms: i64,
}

/// What went wrong with a batch.
type Failure = String;

impl RedisStore {
    /// A store for worker `slot` of this node. Connects lazily: Redis may be
    /// down now and up by the first batch.
    pub fn new(cluster: &ClusterConfig, slot: usize) -> Result<RedisStore, String> {
        let url = &cluster.redis;
        let mut settings = RedisConnectionInfo::default().set_db(i64::from(url.db));
        if let Some(user) = &url.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &url.password {
            settings = settings.set_password(password);
        }
        let info = ConnectionAddr::Tcp(url.host.clone(), url.port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(settings);
        Ok(RedisStore {
            client: redis::Client::open(info).map_err(|e| e.to_string())?,
            link: None,
            prefix: format!("{}:chat:", cluster.prefix),
            unit: format!("{}:{slot}", cluster.node),
            node: cluster.node.clone(),
            ttl: cluster.presence_ttl,
            next_beat: Instant::now(),
            script: redis::Script::new(SCRIPT),
            registered: false,
            revived: false,
            failing: false,
        })
    }

    /// Connects, unless the link is up.
    fn connect(&mut self) -> Result<(), Failure> {
        if self.link.is_some() {
            return Ok(());
        }
        let mut con = self
            .client
            .get_connection_with_timeout(TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        con.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| con.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let before = now_ms();
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query(&mut con)
            .map_err(|e| format!("TIME: {e}"))?;
        let ours = (before + now_ms()) / 2;
        let offset_ms = secs * 1000 + micros / 1000 - ours;
        self.link = Some(Link { con, offset_ms });
        Ok(())
    }

    /// Runs `count` operations, encoded in `ops`, in one script call: one
    /// answer each.
    fn call(&mut self, ops: &[String], count: usize) -> Result<Vec<Value>, Failure> {
        self.connect()?;
        let link = self.link.as_mut().expect("connected");
        let deadline = now_ms() + link.offset_ms + DEADLINE.as_millis() as i64;
        let mut call = self.script.prepare_invoke();
        call.arg(&self.prefix)
            .arg(deadline)
            .arg(&self.unit)
            .arg(self.ttl.as_millis() as u64);
        for op in ops {
            call.arg(op);
        }
        let (was_alive, answers) = match call.invoke::<Value>(&mut link.con) {
            Ok(Value::Array(answer)) => match <[Value; 2]>::try_from(answer) {
                Ok([Value::Int(was), Value::Array(answers)]) if answers.len() == count => {
                    (was == 1, answers)
                }
                Ok([Value::Int(was), Value::Nil]) if count == 0 => (was == 1, Vec::new()),
                other => return Err(format!("unexpected answer {other:?}")),
            },
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        // Alive before, unless this is the first call: else the unit
        // expired in between, and may have been reaped.
        self.revived |= self.registered && !was_alive;
        self.registered = true;
        self.next_beat = Instant::now() + self.ttl / 3;
        Ok(answers)
    }

    /// A call failed: the link goes (the next call connects anew), the
    /// heartbeat waits a while (so a batch that just failed is not followed
    /// at once by a heartbeat that fails too), and the first failure of a
    /// spell is logged as a warning (the others, every retry, at debug).
    fn failed(&mut self, what: &str, error: &str) {
        self.link = None;
        self.next_beat = Instant::now() + (self.ttl / 3).min(TIMEOUT);
        if std::mem::replace(&mut self.failing, true) {
            log::debug!("chat store: Redis: {what}: {error}");
        } else {
            log::warn!(
                "chat store: Redis: {what}: {error}; answering `unavailable` until it is back"
            );
        }
    }

    /// A call succeeded: the end of a spell of failures is logged.
    fn recovered(&mut self) {
        if std::mem::take(&mut self.failing) {
            log::info!("chat store: Redis is back");
        }
    }

    /// [`Done::Revived`], once, if a call found the unit expired.
    fn revived(&mut self) -> Option<Done> {
        std::mem::take(&mut self.revived).then_some(Done::Revived)
    }

    fn try_run(&mut self, jobs: &[Job]) -> Result<Vec<Done>, Failure> {
        let mut ops = Vec::new();
        let mut times = Vec::with_capacity(jobs.len());
        for job in jobs {
            times.push(self.encode(job, &mut ops));
        }
        let answers = self.call(&ops, jobs.len())?;
        let mut done = Vec::with_capacity(jobs.len());
        for ((job, answer), time) in jobs.iter().zip(answers).zip(times) {
            job.finish(decode(job, answer, time)?, &mut done);
        }
        done.extend(self.revived());
        Ok(done)
    }

    /// Appends a job's operation to `ops`; a `say`'s time.
    fn encode(&self, job: &Job, ops: &mut Vec<String>) -> i64 {
        let time = now_ms();
        match job {
            Job::Say {
                from, target, text, ..
            } => {
                let body = match target {
                    Target::Room(r) => json!({"from": from, "room": r, "text": text, "time": time}),
                    Target::User(u) => json!({"from": from, "to": u, "text": text, "time": time}),
                };
                ops.extend(["say".into(), history_key(from, target), body.to_string()]);
            }
            Job::History {
                user,
                target,
                before,
                limit,
                ..
            } => {
                let before = before.map_or("+inf".into(), |b| format!("({b}"));
                let key = history_key(user, target);
                ops.extend(["history".into(), key, before, limit.to_string()]);
            }
            Job::Join {
                conn,
                user,
                room,
                history,
                ..
            } => ops.extend([
                "join".into(),
                room.clone(),
                user.clone(),
                conn.to_string(),
                history.to_string(),
            ]),
            Job::Leave {
                conn, user, room, ..
            } => ops.extend(["leave".into(), room.clone(), user.clone(), conn.to_string()]),
            Job::Rejoin { conn, user, room } => ops.extend([
                "rejoin".into(),
                room.clone(),
                user.clone(),
                conn.to_string(),
            ]),
            Job::Closed { conn, user } => {
                ops.extend(["closed".into(), conn.to_string(), user.clone()])
            }
            Job::Reap { worker, count } => ops.extend([
                "reap".into(),
                self.node.clone(),
                worker.to_string(),
                count.to_string(),
            ]),
        }
        time
    }
}

impl Backend for RedisStore {
    /// Runs the batch in one script call; on any failure the link is
    /// dropped and nothing was done (see the module docs).
    fn run(&mut self, jobs: &[Job]) -> Vec<Done> {
        match self.try_run(jobs) {
            Ok(done) => {
                self.recovered();
                done
            }
            Err(error) => {
                self.failed(&format!("a batch of {} failed", jobs.len()), &error);
                jobs.iter()
                    .map(|job| match job.kept() {
                        true => Done::Busy(job.clone()),
                        false => Done::Failed {
                            job: job.clone(),
                            error: error.clone(),
                        },
                    })
                    .collect()
            }
        }
    }

    fn housekeeping_due(&self) -> Option<Instant> {
        Some(self.next_beat)
    }

    /// Refreshes this worker's presence and reaps dead units.
    fn housekeep(&mut self) -> Vec<Done> {
        let answer = self.call(&["dead".into()], 1);
        match answer.and_then(|a| gone_pairs(a.into_iter().next())) {
            Ok(gone) => {
                self.recovered();
                gone.into_iter()
                    .map(|(room, user)| Done::Gone { user, room })
                    .chain(self.revived())
                    .collect()
            }
            Err(error) => {
                self.failed("the heartbeat failed", &error);
                Vec::new()
            }
        }
    }
}

/// The sorted set of a room's history or of a direct conversation (the two
/// names sorted).
fn history_key(user: &str, target: &Target) -> String {
    match target {
        Target::Room(r) => format!("room:{r}"),
        Target::User(u) if user <= u.as_str() => format!("dm:{user}:{u}"),
        Target::User(u) => format!("dm:{u}:{user}"),
    }
}

/// What the script found doing `job`, from its answer.
fn decode(job: &Job, answer: Value, time: i64) -> Result<Found, Failure> {
    Ok(match job {
        Job::Say { .. } => Found::Said {
            id: int(&answer)?,
            time,
        },
        Job::History { .. } => Found::Page(messages(array(answer)?)?),
        Job::Join { .. } => {
            let mut items = array(answer)?.into_iter();
            let first = items.next().map_or(Ok(0), |v| int(&v))? == 1;
            Found::Joined {
                first,
                history: messages(items.collect())?,
            }
        }
        Job::Rejoin { .. } => Found::Joined {
            first: array(answer)?.first().map_or(Ok(0), int)? == 1,
            history: Vec::new(),
        },
        Job::Leave { .. } => Found::Left {
            last: int(&answer)? == 1,
        },
        Job::Closed { user, .. } => Found::Gone(
            array(answer)?
                .into_iter()
                .map(|room| Ok((string(room)?, user.clone())))
                .collect::<Result<_, Failure>>()?,
        ),
        Job::Reap { .. } => Found::Gone(gone_pairs(Some(answer))?),
    })
}

/// `{room, user, ...}` as pairs.
fn gone_pairs(answer: Option<Value>) -> Result<Vec<(String, String)>, Failure> {
    let items = array(answer.unwrap_or(Value::Nil))?;
    let mut gone = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(room), Some(user)) = (items.next(), items.next()) {
        gone.push((string(room)?, string(user)?));
    }
    Ok(gone)
}

fn int(v: &Value) -> Result<i64, Failure> {
    match v {
        Value::Int(n) => Ok(*n),
        other => Err(format!("expected an integer, got {other:?}")),
    }
}

/// History members (`ID:JSON`, newest first) as messages, oldest first.
fn messages(items: Vec<Value>) -> Result<Vec<StoredMessage>, Failure> {
    let mut out = items
        .into_iter()
        .map(|v| message(&string(v)?))
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

/// One history member.
fn message(member: &str) -> Result<StoredMessage, Failure> {
    let bad = || format!("bad history member {member:?}");
    let (id, body) = member.split_once(':').ok_or_else(bad)?;
    let body: serde_json::Value = serde_json::from_str(body).map_err(|_| bad())?;
    let text = |k: &str| body[k].as_str().map(str::to_string);
    let target = match (text("room"), text("to")) {
        (Some(room), _) => Target::Room(room),
        (None, Some(to)) => Target::User(to),
        (None, None) => return Err(bad()),
    };
    Ok(StoredMessage {
        id: id.parse().map_err(|_| bad())?,
        from: text("from").ok_or_else(bad)?,
        target,
        text: text("text").ok_or_else(bad)?,
        time: body["time"].as_i64().ok_or_else(bad)?,
    })
}

#[cfg(test)]
#[path = "store_redis_tests.rs"]
mod tests;
