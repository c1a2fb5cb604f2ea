//! Message history and room membership in SQLite, off the event loop.
//!
//! Each worker owns one [`Writer`]: a thread with its own SQLite connection,
//! fed [`Job`]s over a crossbeam channel. The thread takes every job waiting
//! (up to `max_batch`), runs them all in one `BEGIN IMMEDIATE` transaction
//! (group commit: one fsync for the batch), and only after `COMMIT` returns
//! hands the [`Done`]s back and wakes the loop. So a message is on disk before
//! anyone receives it or its `ack`, and its id comes from the database.
//!
//! The writer runs its batches on a [`Backend`]: this file's SQLite
//! [`Store`], or on a cluster the Redis store (`store_redis.rs`), under the
//! same contract. The Redis store also has work of its own (its heartbeat
//! and the reaping of dead workers), which the writer runs between batches
//! when due ([`Backend::housekeep`]), waking up for it if no job comes.
//!
//! # Back-pressure
//!
//! The queue is bounded by the worker, not by the channel (the loop must never
//! block on a full channel): [`Writer::pending`] counts jobs submitted and not
//! yet finished, and while it is at `history.max_queue` the worker refuses new
//! `join`, `leave`, `say` and `history` requests with `busy` instead of
//! queueing them. [`Job::Closed`] and [`Job::Reap`] are never refused (at most
//! one per connection or worker start). So a slow or locked database costs at
//! most `max_queue` jobs of memory per worker, and clients are told to try
//! again.
//!
//! # A locked database
//!
//! Another worker may hold the write lock and not let go: stuck in a long
//! handler, or stopped (SIGSTOP) in the middle of its transaction, until the
//! master replaces it after `handler_timeout_ms`. SQLite retries the lock for
//! `history.busy_timeout_ms`; a batch still locked out then is not retried
//! again: each of its requests is answered `busy` ([`Done::Busy`]; the client
//! may send it again) and the connection stays open. The next batch (what
//! came meanwhile) tries again, so requests are answered within about one
//! busy timeout of entering the batch, and acked as soon as the lock is free.
//! [`Job::Closed`] and [`Job::Reap`], which nobody can send again, are kept
//! and retried with the next batch, or after [`RETRY_PAUSE`] if none comes.
//! Any other failure is retried [`ATTEMPTS`] times, then answered
//! `unavailable` ([`Done::Failed`]).
//!
//! Several workers write one file: WAL journal, a busy timeout, and
//! `BEGIN IMMEDIATE` (the write lock is taken up front, so two writers never
//! deadlock upgrading read locks). Ids are `AUTOINCREMENT`, so they grow in
//! commit order across all workers.
//!
//! # Presence
//!
//! The `members` table (room, user, connection, worker) is the one place that
//! decides presence: a join is a user's *first* in a room when, inside the
//! write transaction that inserts its row, it is the user's only row there; a
//! leave or close is the *last* when no row of the user is left. Write
//! transactions are serialised across workers, so two connections of one user
//! joining (or leaving) on different workers at the same moment yield exactly
//! one `presence` event. Rows of connections that died with their worker, or
//! that a stopping worker closed (its loop ends before the writer could report
//! the leaves), are removed by the worker that next starts in that slot
//! ([`Job::Reap`]), which announces the leaves.

use crate::request::Target;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use foreman::ConnId;
use rusqlite::{params, Connection, TransactionBehavior};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT,
    from_user TEXT NOT NULL,
    to_user TEXT,
    dm TEXT,
    text TEXT NOT NULL,
    time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages(room, id) WHERE room IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_dm ON messages(dm, id) WHERE dm IS NOT NULL;
CREATE TABLE IF NOT EXISTS members(
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    conn TEXT NOT NULL,
    worker INTEGER NOT NULL,
    PRIMARY KEY (room, conn)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members(room, user);
CREATE INDEX IF NOT EXISTS members_by_conn ON members(conn);
CREATE INDEX IF NOT EXISTS members_by_worker ON members(worker);
CREATE TABLE IF NOT EXISTS outbox(
    name TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Attempts at a batch (that failed otherwise than on the lock) before its
/// requests fail.
const ATTEMPTS: u32 = 3;

/// How long the writer waits for new work before it retries the jobs it
/// keeps after a locked-out batch.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A stored message, as `message` events and `history` replies show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Positive, unique, increasing in store order.
    pub id: i64,
    /// The sender.
    pub from: String,
    /// The room, or the recipient of a direct message.
    pub target: Target,
    /// The text.
    pub text: String,
    /// Milliseconds since the Unix epoch, when it was stored.
    pub time: i64,
}

/// Work for the writer thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Store a message.
    Say {
        /// The sending connection (gets the `ack`).
        conn: ConnId,
        /// The request's `ref`.
        reference: Option<String>,
        /// The sender.
        from: String,
        /// Room or recipient.
        target: Target,
        /// The text.
        text: String,
    },
    /// Read a page of history.
    History {
        /// Who asked.
        conn: ConnId,
        /// The request's `ref`.
        reference: Option<String>,
        /// The user asking (one side of a direct conversation).
        user: String,
        /// Room or the other user.
        target: Target,
        /// Only ids below this.
        before: Option<i64>,
        /// Most messages.
        limit: u32,
    },
    /// A connection entered a room.
    Join {
        /// The connection.
        conn: ConnId,
        /// The request's `ref`.
        reference: Option<String>,
        /// Its user.
        user: String,
        /// The room.
        room: String,
        /// How many recent messages to send with `joined`.
        history: usize,
    },
    /// A connection left a room.
    Leave {
        /// The connection.
        conn: ConnId,
        /// The request's `ref`.
        reference: Option<String>,
        /// Its user.
        user: String,
        /// The room.
        room: String,
    },
    /// On a cluster, after this worker's rows were reaped while it lived
    /// ([`Done::Revived`]): a connection that is still in a room is put
    /// back, with no reply (only a `presence` if it is the user's first).
    Rejoin {
        /// The connection.
        conn: ConnId,
        /// Its user.
        user: String,
        /// The room.
        room: String,
    },
    /// A connection that had joined rooms closed.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Its user.
        user: String,
    },
    /// A worker (re)started in slot `worker` of `count`: forget members of
    /// connections that belonged to that slot before, or to slots that no
    /// longer exist.
    Reap {
        /// This worker's slot.
        worker: usize,
        /// The number of slots.
        count: usize,
    },
}

impl Job {
    fn writes(&self) -> bool {
        !matches!(self, Job::History { .. })
    }

    /// Whether the job must be done whatever it takes: nobody would send
    /// it again (the connection is gone, or it is the worker's own).
    pub fn kept(&self) -> bool {
        matches!(
            self,
            Job::Closed { .. } | Job::Reap { .. } | Job::Rejoin { .. }
        )
    }

    /// Appends this job's results, from what the store `found` doing it
    /// (which must be of this job's kind: anything else is a bug, logged).
    pub fn finish(&self, found: Found, done: &mut Vec<Done>) {
        match (self, found) {
            (
                Job::Say {
                    conn,
                    reference,
                    from,
                    target,
                    text,
                },
                Found::Said { id, time },
            ) => done.push(Done::Said {
                conn: *conn,
                reference: reference.clone(),
                message: StoredMessage {
                    id,
                    from: from.clone(),
                    target: target.clone(),
                    text: text.clone(),
                    time,
                },
            }),
            (
                Job::History {
                    conn,
                    reference,
                    target,
                    ..
                },
                Found::Page(messages),
            ) => done.push(Done::History {
                conn: *conn,
                reference: reference.clone(),
                target: target.clone(),
                messages,
            }),
            (
                Job::Join {
                    conn,
                    reference,
                    user,
                    room,
                    ..
                },
                Found::Joined { first, history },
            ) => done.push(Done::Joined {
                conn: *conn,
                reference: reference.clone(),
                user: user.clone(),
                room: room.clone(),
                first,
                history,
            }),
            (
                Job::Leave {
                    conn,
                    reference,
                    user,
                    room,
                },
                Found::Left { last },
            ) => done.push(Done::Left {
                conn: *conn,
                reference: reference.clone(),
                user: user.clone(),
                room: room.clone(),
                last,
            }),
            (Job::Rejoin { user, room, .. }, Found::Joined { first, .. }) => {
                done.push(Done::Rejoined {
                    user: user.clone(),
                    room: room.clone(),
                    first,
                })
            }
            (Job::Closed { .. } | Job::Reap { .. }, Found::Gone(gone)) => done.extend(
                gone.into_iter()
                    .map(|(room, user)| Done::Gone { user, room }),
            ),
            (job, found) => log::error!("chat store: {found:?} does not answer {job:?}"),
        }
    }
}

/// What a store found doing a job, for [`Job::finish`] to turn into the
/// job's results (the same for every store).
#[derive(Debug)]
pub enum Found {
    /// A `say` is stored with this id, at this time.
    Said {
        /// The new id.
        id: i64,
        /// Milliseconds since the Unix epoch.
        time: i64,
    },
    /// A page of history, oldest first.
    Page(Vec<StoredMessage>),
    /// A join is recorded.
    Joined {
        /// The user's first connection in the room.
        first: bool,
        /// The room's last messages, oldest first.
        history: Vec<StoredMessage>,
    },
    /// A leave is recorded.
    Left {
        /// The user's last connection in the room left.
        last: bool,
    },
    /// Rooms a user is gone from: `(room, user)`.
    Gone(Vec<(String, String)>),
}

/// A finished job, for the event loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// A message is stored: deliver it and `ack` it.
    Said {
        /// The sender's connection.
        conn: ConnId,
        /// The `say`'s `ref`.
        reference: Option<String>,
        /// The message with its id and time.
        message: StoredMessage,
    },
    /// A page of history.
    History {
        /// Who asked.
        conn: ConnId,
        /// The request's `ref`.
        reference: Option<String>,
        /// Room or other user, as asked.
        target: Target,
        /// Oldest first.
        messages: Vec<StoredMessage>,
    },
    /// A join is recorded.
    Joined {
        /// The connection.
        conn: ConnId,
        /// The request's `ref`.
        reference: Option<String>,
        /// Its user.
        user: String,
        /// The room.
        room: String,
        /// The user's first connection in the room: announce it.
        first: bool,
        /// The room's last messages, oldest first.
        history: Vec<StoredMessage>,
    },
    /// A leave is recorded.
    Left {
        /// The connection.
        conn: ConnId,
        /// The request's `ref`.
        reference: Option<String>,
        /// Its user.
        user: String,
        /// The room.
        room: String,
        /// The user's last connection left the room: announce it.
        last: bool,
    },
    /// A [`Job::Rejoin`] is recorded.
    Rejoined {
        /// Its user.
        user: String,
        /// The room.
        room: String,
        /// The user's first connection in the room: announce it.
        first: bool,
    },
    /// On a cluster: this worker's presence had expired in Redis (it was
    /// cut off longer than `presence_ttl`), so another worker may have
    /// reaped its rows and announced its users' leaves. The worker puts its
    /// connections back ([`Job::Rejoin`]).
    Revived,
    /// A user's last connection in a room is gone (closed, or its worker died).
    Gone {
        /// The user.
        user: String,
        /// The room.
        room: String,
    },
    /// The database stayed locked by another writer for the whole busy
    /// timeout: nothing was done; the request may be sent again.
    Busy(Job),
    /// The database failed the job after retries; nothing was done.
    Failed {
        /// The job.
        job: Job,
        /// What SQLite said.
        error: String,
    },
}

/// What a [`Writer`] runs its batches on: the SQLite [`Store`], or the Redis
/// store of a cluster ([`crate::store_redis::RedisStore`]). Both keep the
/// same contract: results only once the batch is durable in the store, in
/// job order; nothing done for a job answered [`Done::Busy`] or
/// [`Done::Failed`]; a [`Job::kept`] job that could not be done comes back
/// as [`Done::Busy`], and the writer tries it again.
pub trait Backend {
    /// Runs one batch (see [`Store::run`]).
    fn run(&mut self, jobs: &[Job]) -> Vec<Done>;

    /// When [`Backend::housekeep`] is due next; `None`: never.
    fn housekeeping_due(&self) -> Option<Instant> {
        None
    }

    /// Work of its own, between batches (the Redis store's heartbeat and
    /// its reaping of dead workers): what it finds is reported like a
    /// batch's results.
    fn housekeep(&mut self) -> Vec<Done> {
        Vec::new()
    }
}

impl Backend for Store {
    fn run(&mut self, jobs: &[Job]) -> Vec<Done> {
        Store::run(self, jobs)
    }
}

/// Whether SQLite gave up waiting for another connection's lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The key of a direct conversation: both names, sorted, joined by a newline
/// (which no name contains).
fn dm_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}\n{b}")
    } else {
        format!("{b}\n{a}")
    }
}

/// How often a writer locked out by another worker's transaction tries
/// again. SQLite's own busy timeout sleeps 1, 2, 5, 10, 15, 20, 25 ms ...
/// between tries: a writer that met the lock held by another worker's
/// commit (a few ms: one fsync) slept on for up to twice that after the
/// lock was free, and the two workers' writers took turns with idle gaps.
const LOCK_POLL: Duration = Duration::from_micros(200);

thread_local! {
    /// The busy timeout of the store this thread opened.
    static BUSY_TIMEOUT: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// When the lock wait in progress on this thread began.
    static LOCKED_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Time this thread's transactions waited to begin (for the write
    /// lock), for the writer's tally.
    static LOCK_WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// SQLite's busy handler: called with how many times it was already called
/// for the same lock; tries again every [`LOCK_POLL`] until the busy
/// timeout has passed since the first call.
fn wait_for_lock(count: i32) -> bool {
    let now = Instant::now();
    let since = LOCKED_SINCE.with(|s| match s.get() {
        Some(t) if count > 0 => t,
        _ => {
            s.set(Some(now));
            now
        }
    });
    if now.duration_since(since) >= BUSY_TIMEOUT.with(Cell::get) {
        return false;
    }
    std::thread::sleep(LOCK_POLL);
    true
}

/// One SQLite connection to the chat database.
pub struct Store {
    /// The connection; used by one thread at a time.
    db: Connection,
    /// Its busy timeout, for [`Store::on_this_thread`].
    busy_timeout: Duration,
}

impl Store {
    /// Gives this thread the store's busy timeout: the lock wait reads it
    /// per thread, so a store moved to another thread (the publisher's,
    /// from job to job on the blocking pool) calls this first, or a
    /// locked database fails at once.
    pub fn on_this_thread(&self) {
        BUSY_TIMEOUT.with(|t| t.set(self.busy_timeout));
    }

    /// Opens (creating if needed) the database: WAL, full sync, the busy
    /// timeout, the schema.
    pub fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Store> {
        let db = Connection::open(path)?;
        BUSY_TIMEOUT.with(|t| t.set(busy_timeout));
        db.busy_handler(Some(wait_for_lock))?;
        let mode: String = db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode: cannot use WAL (got {mode})"
            )));
        }
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(SCHEMA)?;
        Ok(Store { db, busy_timeout })
    }

    /// Runs a batch: jobs that write share one immediate transaction, retried
    /// as a whole on failure; results come back in job order, only after the
    /// commit. A batch of reads only takes no write lock. Locked out for the
    /// busy timeout, every job comes back as [`Done::Busy`] at once (see the
    /// module docs).
    pub fn run(&mut self, jobs: &[Job]) -> Vec<Done> {
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            match self.try_run(jobs) {
                Ok(done) => return done,
                Err(e) if is_busy(&e) => {
                    log::warn!(
                        "chat store: the database stayed locked for the busy timeout; \
                         {} requests answered `busy`: {e}",
                        jobs.len()
                    );
                    return jobs.iter().cloned().map(Done::Busy).collect();
                }
                Err(e) => {
                    log::warn!("chat store: batch of {} failed: {e}", jobs.len());
                    last_error = e.to_string();
                }
            }
        }
        jobs.iter()
            .map(|j| Done::Failed {
                job: j.clone(),
                error: last_error.clone(),
            })
            .collect()
    }

    fn try_run(&mut self, jobs: &[Job]) -> rusqlite::Result<Vec<Done>> {
        let mut done = Vec::with_capacity(jobs.len());
        if jobs.iter().any(Job::writes) {
            let t0 = Instant::now();
            let tx = self
                .db
                .transaction_with_behavior(TransactionBehavior::Immediate);
            LOCK_WAITED.with(|w| w.set(w.get() + t0.elapsed()));
            let tx = tx?;
            for job in jobs {
                apply(&tx, job, &mut done)?;
            }
            tx.commit()?;
        } else {
            for job in jobs {
                apply(&self.db, job, &mut done)?;
            }
        }
        Ok(done)
    }
}

fn apply(db: &Connection, job: &Job, done: &mut Vec<Done>) -> rusqlite::Result<()> {
    let found = match job {
        Job::Say {
            from, target, text, ..
        } => {
            let time = now_ms();
            let (room, to, dm) = match target {
                Target::Room(r) => (Some(r.as_str()), None, None),
                Target::User(u) => (None, Some(u.as_str()), Some(dm_key(from, u))),
            };
            db.prepare_cached(
                "INSERT INTO messages(room, from_user, to_user, dm, text, time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![room, from, to, dm, text, time])?;
            Found::Said {
                id: db.last_insert_rowid(),
                time,
            }
        }
        Job::History {
            user,
            target,
            before,
            limit,
            ..
        } => Found::Page(page(db, user, target, *before, *limit as usize)?),
        Job::Rejoin { conn, user, room } => Found::Joined {
            first: enter(db, *conn, user, room)?,
            history: Vec::new(),
        },
        Job::Join {
            conn,
            user,
            room,
            history,
            ..
        } => {
            let first = enter(db, *conn, user, room)?;
            let history = if *history > 0 {
                page(db, user, &Target::Room(room.clone()), None, *history)?
            } else {
                Vec::new()
            };
            Found::Joined { first, history }
        }
        Job::Leave {
            conn, user, room, ..
        } => {
            let deleted = db
                .prepare_cached("DELETE FROM members WHERE room = ?1 AND conn = ?2")?
                .execute(params![room, conn.to_string()])?;
            Found::Left {
                last: deleted == 1 && rows_of(db, room, user)? == 0,
            }
        }
        Job::Closed { conn, user } => {
            let conn = conn.to_string();
            let rooms: Vec<String> = db
                .prepare_cached("DELETE FROM members WHERE conn = ?1 RETURNING room")?
                .query_map([&conn], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut gone = Vec::new();
            for room in rooms {
                if rows_of(db, &room, user)? == 0 {
                    gone.push((room, user.clone()));
                }
            }
            Found::Gone(gone)
        }
        Job::Reap { worker, count } => {
            let mut pairs: Vec<(String, String)> = db
                .prepare_cached(
                    "DELETE FROM members WHERE worker = ?1 OR worker >= ?2 RETURNING room, user",
                )?
                .query_map(params![*worker as i64, *count as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            pairs.sort();
            pairs.dedup();
            let mut gone = Vec::new();
            for (room, user) in pairs {
                if rows_of(db, &room, &user)? == 0 {
                    gone.push((room, user));
                }
            }
            Found::Gone(gone)
        }
    };
    job.finish(found, done);
    Ok(())
}

/// Puts a connection in a room: whether it is its user's first there.
fn enter(db: &Connection, conn: ConnId, user: &str, room: &str) -> rusqlite::Result<bool> {
    let inserted = db
        .prepare_cached("INSERT OR IGNORE INTO members VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![room, user, conn.to_string(), conn.worker() as i64])?;
    Ok(inserted == 1 && rows_of(db, room, user)? == 1)
}

fn rows_of(db: &Connection, room: &str, user: &str) -> rusqlite::Result<i64> {
    db.prepare_cached("SELECT count(*) FROM members WHERE room = ?1 AND user = ?2")?
        .query_row(params![room, user], |r| r.get(0))
}

/// The newest `limit` messages below `before` of a room or of the direct
/// conversation between `user` and the target user, oldest first.
fn page(
    db: &Connection,
    user: &str,
    target: &Target,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<StoredMessage>> {
    let (sql, key) = match target {
        Target::Room(r) => (
            "SELECT id, from_user, room, to_user, text, time FROM messages
             WHERE room = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            r.clone(),
        ),
        Target::User(u) => (
            "SELECT id, from_user, room, to_user, text, time FROM messages
             WHERE dm = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            dm_key(user, u),
        ),
    };
    let mut statement = db.prepare_cached(sql)?;
    let rows = statement.query_map(
        params![key, before.unwrap_or(i64::MAX), limit as i64],
        stored_message,
    )?;
    let mut messages = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    messages.reverse();
    Ok(messages)
}

/// A row of `SELECT id, from_user, room, to_user, text, time`.
fn stored_message(r: &rusqlite::Row) -> rusqlite::Result<StoredMessage> {
    let room: Option<String> = r.get(2)?;
    let to: Option<String> = r.get(3)?;
    Ok(StoredMessage {
        id: r.get(0)?,
        from: r.get(1)?,
        target: match room {
            Some(room) => Target::Room(room),
            None => Target::User(to.unwrap_or_default()),
        },
        text: r.get(4)?,
        time: r.get(5)?,
    })
}

impl Store {
    /// The outbox cursor `name`: every message up to it was published and
    /// confirmed (0 when never saved). See `events.rs`.
    pub fn outbox_cursor(&self, name: &str) -> rusqlite::Result<i64> {
        self.db
            .query_row(
                "SELECT last_id FROM outbox WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                e => Err(e),
            })
    }

    /// Saves the outbox cursor `name` (never moving it back).
    pub fn save_outbox_cursor(&self, name: &str, id: i64) -> rusqlite::Result<()> {
        self.db.execute(
            "INSERT INTO outbox(name, last_id) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
            params![name, id],
        )?;
        Ok(())
    }

    /// Up to `limit` messages (rooms and direct) with ids above `after`,
    /// in id order.
    pub fn messages_after(&self, after: i64, limit: usize) -> rusqlite::Result<Vec<StoredMessage>> {
        let mut statement = self.db.prepare_cached(
            "SELECT id, from_user, room, to_user, text, time FROM messages
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after, limit as i64], stored_message)?;
        rows.collect()
    }
}

/// The highest message id so far (0 when empty).
#[cfg(test)]
pub fn max_id(store: &Store) -> rusqlite::Result<i64> {
    store
        .db
        .query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| {
            r.get(0)
        })
}

/// What a writer thread did, logged when it ends: how many requests shared
/// a batch (the group commit) and how much of its life the store took.
struct Tally {
    started: Instant,
    batches: u64,
    jobs: u64,
    largest: usize,
    busy: Duration,
    slowest: Duration,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            started: Instant::now(),
            batches: 0,
            jobs: 0,
            largest: 0,
            busy: Duration::ZERO,
            slowest: Duration::ZERO,
        }
    }

    /// A batch of `jobs` ran in `took`.
    fn batch(&mut self, jobs: usize, took: Duration) {
        self.batches += 1;
        self.jobs += jobs as u64;
        self.largest = self.largest.max(jobs);
        self.busy += took;
        self.slowest = self.slowest.max(took);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if self.batches == 0 {
            return;
        }
        let life = self.started.elapsed().as_secs_f64().max(1e-9);
        let waited = LOCK_WAITED.with(Cell::get).as_secs_f64();
        log::info!(
            "chat writer: {} batches of {} requests (mean {:.1}, largest {}); \
             the store took {:.0} ms ({:.0}% of {:.1} s), of which {:.0} ms waiting \
             for the write lock; slowest batch {:.1} ms",
            self.batches,
            self.jobs,
            self.jobs as f64 / self.batches as f64,
            self.largest,
            self.busy.as_secs_f64() * 1e3,
            self.busy.as_secs_f64() / life * 100.0,
            life,
            waited * 1e3,
            self.slowest.as_secs_f64() * 1e3,
        );
    }
}

/// A worker's writer thread and the channels to and from it.
pub struct Writer {
    /// Jobs in; `None` once stopping.
    jobs: Option<Sender<Job>>,
    /// Results out.
    done: Receiver<Done>,
    /// Jobs submitted whose batch has not finished yet (see [`Writer::pending`]).
    pending: Arc<AtomicUsize>,
    /// The thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread, which first opens its store with `open` (so even
    /// opening never runs on the event loop; a failure is logged and ends the
    /// worker process, which the master replaces). `notify` runs after each
    /// batch's results are queued (the worker passes its waker).
    pub fn spawn<B: Backend, E: std::fmt::Display>(
        open: impl FnOnce() -> Result<B, E> + Send + 'static,
        max_batch: usize,
        name: String,
        notify: impl Fn() + Send + 'static,
    ) -> std::io::Result<Writer> {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let pending = Arc::new(AtomicUsize::new(0));
        let finished = pending.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut tally = Tally::new();
            let mut store = match open() {
                Ok(store) => store,
                Err(e) => {
                    log::error!("chat: cannot open the database: {e}");
                    std::process::exit(1);
                }
            };
            // Starts each round with the kept jobs of a batch that could
            // not be done.
            let mut batch = Vec::with_capacity(max_batch);
            loop {
                let retry = (!batch.is_empty()).then(|| Instant::now() + RETRY_PAUSE);
                let first = match retry.into_iter().chain(store.housekeeping_due()).min() {
                    None => job_rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(at) => job_rx.recv_deadline(at),
                };
                match first {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    // Stopping: the kept jobs get this last try.
                    Err(RecvTimeoutError::Disconnected) if batch.is_empty() => return,
                    Err(RecvTimeoutError::Disconnected) => {
                        store.run(&batch);
                        return;
                    }
                }
                while batch.len() < max_batch {
                    match job_rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let mut results = Vec::new();
                let ran = batch.len();
                if ran > 0 {
                    let t0 = Instant::now();
                    results = store.run(&batch);
                    tally.batch(ran, t0.elapsed());
                    batch.clear();
                }
                if store
                    .housekeeping_due()
                    .is_some_and(|at| at <= Instant::now())
                {
                    results.extend(store.housekeep());
                }
                for done in results {
                    match done {
                        Done::Busy(job) if job.kept() => batch.push(job),
                        done => {
                            if done_tx.send(done).is_err() {
                                return;
                            }
                        }
                    }
                }
                finished.fetch_sub(ran - batch.len(), Ordering::AcqRel);
                notify();
            }
        })?;
        Ok(Writer {
            jobs: Some(job_tx),
            done: done_rx,
            pending,
            thread: Some(thread),
        })
    }

    /// Queues a job; false if the thread is gone. Never blocks; callers
    /// bound the queue with [`Writer::pending`].
    pub fn submit(&self, job: Job) -> bool {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let sent = self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Jobs submitted and not yet finished: queued, or in the batch being
    /// written. Their results may still wait in [`Writer::ready`].
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Results ready now, without waiting.
    pub fn ready(&self) -> impl Iterator<Item = Done> + '_ {
        self.done.try_iter()
    }
}

impl Drop for Writer {
    /// Lets the thread finish the queued jobs, then joins it.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
pub(crate) mod tests;
