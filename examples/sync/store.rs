//! Documents, their versions and op memory, off the event loop.
//!
//! Each worker owns one [`Writer`]: two threads, each with its own
//! connection to the store ([`Backend`]), fed [`Job`]s over channels. The
//! write thread group-commits: it takes every write waiting (up to
//! `max_batch`) and runs them in one transaction (one fsync), and hands back
//! [`Event::Done`] for them only after the commit. The read thread answers
//! `get`, `subscribe`, `list` and the feed's catch-up reads on a connection
//! of its own, so a read never waits behind a write that waits for another
//! worker's lock; it sees every commit made before the read starts.
//!
//! The embedded store is this file's SQLite [`Store`] (WAL,
//! `synchronous=FULL`, `BEGIN IMMEDIATE`, a busy timeout) at
//! `sync.db_path`, shared by all workers. On a cluster it is Redis
//! (`store_redis.rs`), and changes written by any worker of any node come
//! back as [`Event::Change`] from the store's feed, in commit order.
//!
//! # A write
//!
//! In the protocol's order, inside the transaction: op memory (a
//! remembered `(client, op)` not yet expired: the same fingerprint is
//! [`Outcome::Repeat`], another [`Outcome::OpReused`]); the base version
//! (else a [`Decided::Conflict`], remembered); a delete of an absent key
//! ([`Outcome::NotFound`]); the merged size ([`Outcome::TooLarge`]); then
//! version V+1 is written with its version row, versions older than the
//! last `keep_versions` are pruned, and the ack is remembered until now +
//! `op_ttl`. Writes of one batch run in order, so a later one sees an
//! earlier one's version. A key's row stays after a delete (value NULL), so
//! versions never go down or repeat.
//!
//! # Failures
//!
//! A batch that fails is retried up to [`crate::store_writer::ATTEMPTS`]
//! times, then each of its jobs is answered `Err` (the worker replies
//! `unavailable`; the client resends with the same op, which op memory
//! makes safe). A batch locked out by another worker for the whole busy
//! timeout, or one that Redis failed (down, or past its timeout), is
//! answered `Err` at once, not retried: each try would wait as long again. Expired op rows are
//! purged a bounded number at a time with each batch (a few more than the
//! batch can add), never in one unbounded `DELETE`.

pub use crate::store_sqlite::Store;
pub use crate::store_writer::Sink;
// The worker knows it as `store::Writer`.
#[allow(unused_imports)]
pub use crate::store_writer::Writer;
use serde_json::Value;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// One version of a key, as `change` events and `changes` replays show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: String,
    /// Its version, from 1.
    pub version: u64,
    /// The value as compact JSON text; `None` for a delete.
    pub value: Option<String>,
    /// The op of the write.
    pub op: String,
    /// The client of the write (`http` for HTTP writes).
    pub client: String,
}

/// A key's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    /// The key.
    pub key: String,
    /// 0 until the first write.
    pub version: u64,
    /// Compact JSON text; `None` when absent (version 0, or deleted).
    pub value: Option<String>,
}

impl Doc {
    /// Whether the current version is a delete.
    pub fn deleted(&self) -> bool {
        self.version > 0 && self.value.is_none()
    }
}

/// What a write does to the current value.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteKind {
    /// Replace it with this value (compact JSON text, never `null`, at most
    /// `max_value_bytes`: checked by the worker).
    Put(String),
    /// Patch it (`{}` if absent) by RFC 7396 ([`crate::merge::merge_patch`])
    /// with this object; the result's compact size is checked here.
    Patch(Value),
    /// Delete it.
    Delete,
}

/// One write attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// Put, patch or delete.
    pub kind: WriteKind,
    /// The key (valid: checked by the worker).
    pub key: String,
    /// The version the writer saw; 0 while absent (create-only).
    pub base: u64,
    /// The writing device (`http` for HTTP).
    pub client: String,
    /// Names the attempt; with `client`, the op memory's key.
    pub op: String,
    /// The request as op memory compares it: type, key, base and value or
    /// merge, in one canonical JSON text (made by the worker). A remembered
    /// op with another fingerprint is `op_reused`.
    pub fingerprint: String,
}

/// How a write was decided; what op memory keeps (with the fingerprint) for
/// `op_ttl_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Applied: the new version; `created` if the key was absent before (for
    /// HTTP 201; false for deletes).
    Ack {
        /// The new version.
        version: u64,
        /// The key was absent before a put or patch.
        created: bool,
    },
    /// `base` was not the key's version: nothing changed; the version and
    /// value found (`None` if absent).
    Conflict {
        /// The current version.
        version: u64,
        /// The current value, compact JSON text.
        value: Option<String>,
    },
}

/// The store's answer to a write, in the protocol's check order after the
/// frame and the rate limit: op memory, `base_version`, `not_found`, the
/// merged size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Decided now, and remembered with the op. `change` is the new version
    /// for an ack (`None` for a conflict).
    Decided {
        /// The decision.
        decided: Decided,
        /// What subscribers get, for an ack.
        change: Option<Change>,
    },
    /// The same write (same fingerprint) was decided before: its decision
    /// again; nothing changed, nobody is told.
    Repeat(Decided),
    /// The op is remembered for another write (`op_reused`).
    OpReused,
    /// A delete of an absent key (`not_found`); not remembered.
    NotFound,
    /// The merged value is over `max_value_bytes` (`too_large`); not
    /// remembered.
    TooLarge,
}

/// What `subscribe` answers for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Snapshot {
    /// The current version (no `since`, or one too old or ahead).
    Doc(Doc),
    /// Every version after `since`, in order (`since` was within
    /// `keep_versions` of the current `version`); empty if `since` is
    /// `version`.
    Changes {
        /// The key.
        key: String,
        /// The client's version.
        since: u64,
        /// The current version.
        version: u64,
        /// Versions `since + 1 ..= version`.
        changes: Vec<Change>,
    },
}

/// Work for the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// A put, patch or delete.
    Write(Write),
    /// A key's current state.
    Get(String),
    /// Per key, in order: a [`Snapshot`]. `since` holds the client's
    /// versions of some keys (others ignored).
    Subscribe {
        /// The keys.
        keys: Vec<String>,
        /// The client's versions.
        since: Vec<(String, u64)>,
    },
    /// The first `limit` present keys (not deleted, version > 0) starting
    /// with `prefix`, after `after`, in code point (byte) order.
    List {
        /// May be empty.
        prefix: String,
        /// Only keys greater than this.
        after: Option<String>,
        /// 1 to 1000.
        limit: usize,
    },
    /// Every version of `key` after `after` that the store still has, in
    /// order, and the key's current version (a subscriber's feed catching
    /// up after a gap).
    Since {
        /// The key.
        key: String,
        /// The last version the feed has.
        after: u64,
    },
    /// The current version of each key (the feed's periodic check that no
    /// change was missed).
    Heads(Vec<String>),
}

/// What the store found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// For [`Work::Write`].
    Write(Outcome),
    /// For [`Work::Get`].
    Doc(Doc),
    /// For [`Work::Subscribe`], one per key, in the order asked.
    Subscribed(Vec<Snapshot>),
    /// For [`Work::List`]: `(key, version)`.
    Keys(Vec<(String, u64)>),
    /// For [`Work::Since`]: the versions it still has after `after` (the
    /// first is `after + 1` unless older ones were pruned), and the current
    /// version.
    Since {
        /// The key.
        key: String,
        /// The current version.
        version: u64,
        /// In order.
        changes: Vec<Change>,
    },
    /// For [`Work::Heads`]: `(key, version)`, every key asked.
    Heads(Vec<(String, u64)>),
}

/// A job: the worker's id for it (handed back with the answer) and the work.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Chosen by the worker.
    pub id: u64,
    /// What to do.
    pub work: Work,
}

/// What the store hands back to the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The store is open: its epoch (1-64 characters, made when the history
    /// was created, the same on every worker and restart).
    Opened {
        /// The epoch.
        epoch: String,
    },
    /// A job finished. `Err` is a store failure (`unavailable`): the write
    /// may or may not have been applied.
    Done {
        /// The job's id.
        id: u64,
        /// The answer.
        result: Result<Answer, String>,
    },
    /// On a cluster: a change committed by any worker of any node, from the
    /// store's feed, in commit order.
    Change(Change),
    /// On a cluster: the feed was interrupted (changes may have been
    /// missed); the worker checks its subscribed keys ([`Work::Heads`]).
    FeedGap,
}

/// Settings of the store, from `sync.toml`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest merged value, compact JSON bytes.
    pub max_value_bytes: usize,
    /// Versions kept per key.
    pub keep_versions: u64,
    /// Op memory lifetime, ms.
    pub op_ttl_ms: u64,
    /// Most writes per transaction.
    pub max_batch: usize,
    /// Whether each change also goes to the outbox table, in the write's
    /// transaction, for the publisher of `sync.changes` (SQLite only).
    pub outbox: bool,
}

impl Settings {
    /// The store's part of the config.
    pub fn from_config(config: &crate::config::SyncConfig) -> Settings {
        Settings {
            max_value_bytes: config.max_value_bytes,
            keep_versions: config.keep_versions,
            op_ttl_ms: config.op_ttl.as_millis() as u64,
            max_batch: config.max_batch,
            outbox: config.server.amqp.is_some() && config.server.cluster.is_none(),
        }
    }
}

/// A store operation that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, for the log and the `Err` answer.
    pub message: String,
    /// Whether trying the same batch again may help (not after a busy
    /// timeout: the next try would wait as long again).
    pub retry: bool,
}

impl Failure {
    /// A failure worth another try.
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retry: true,
        }
    }
}

/// What the [`Writer`]'s threads run on: the SQLite [`Store`], or the Redis
/// store of a cluster (`crate::store_redis::RedisStore`). Both keep one
/// contract (the module docs), checked by the same scenarios in the tests.
pub trait Backend {
    /// The history's epoch; a store that connects lazily connects here.
    fn epoch(&mut self) -> Result<String, Failure>;

    /// Runs `writes` in order as one atomic, durable unit (or each write as
    /// one, on Redis) at time `now_ms` (ms since the Unix epoch: op memory's
    /// clock); one outcome each. On `Err` the batch may or may not have been
    /// applied.
    fn write(&mut self, writes: &[Write], now_ms: u64) -> Result<Vec<Outcome>, Failure>;

    /// Answers any work but a write, in one consistent view.
    fn read(&mut self, work: &Work) -> Result<Answer, Failure>;

    /// Whether a call since the last [`Backend::epoch`] found the history
    /// gone (Redis emptied under a running server: every call is refused
    /// until the epoch is read again, and then it is a new one). SQLite
    /// never loses its history under an open connection.
    fn lost(&self) -> bool {
        false
    }

    /// Takes `epoch` as the one its calls are checked against, as another
    /// store of this worker read it (the read thread's, from the write
    /// thread's `Opened`), without asking. Redis: a history emptied before
    /// this store's first call is then found lost, not silently adopted
    /// under a new epoch. SQLite has nothing to check.
    fn adopt_epoch(&mut self, _epoch: &str) {}
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 32 hex characters from the system's random source: a new epoch.
pub fn random_epoch() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The smallest string greater than every key that starts with `prefix`
/// (`None` for the empty prefix: no bound). Keys are ASCII below DEL, so
/// raising the last byte stays ASCII.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    let last = bytes.pop()?;
    bytes.push(last + 1);
    String::from_utf8(bytes).ok()
}

/// Whether a client at version `since` of a key now at `version` is
/// answered the versions it missed: within `keep` behind, not ahead.
pub fn replayable(since: u64, version: u64, keep: u64) -> bool {
    since <= version && version - since <= keep
}

/// The value a write leaves, or the outcome that stops it there: step (3)
/// and (4) of a write, once its base has passed. `current` is the value
/// found (`None` if absent).
pub fn new_value(
    kind: &WriteKind,
    current: Option<&str>,
    max_value_bytes: usize,
) -> Result<Option<String>, NewValue> {
    match kind {
        WriteKind::Put(value) => Ok(Some(value.clone())),
        WriteKind::Delete if current.is_none() => Err(NewValue::NotFound),
        WriteKind::Delete => Ok(None),
        WriteKind::Patch(merge) => {
            let mut target = match current {
                None => Value::Object(serde_json::Map::new()),
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| NewValue::Corrupt(format!("stored value: {e}")))?,
            };
            crate::merge::merge_patch(&mut target, merge);
            let text =
                serde_json::to_string(&target).map_err(|e| NewValue::Corrupt(e.to_string()))?;
            if text.len() > max_value_bytes {
                return Err(NewValue::TooLarge);
            }
            Ok(Some(text))
        }
    }
}

/// Why [`new_value`] made none.
#[derive(Debug)]
pub enum NewValue {
    /// A delete of an absent key: [`Outcome::NotFound`].
    NotFound,
    /// The merged value is too large: [`Outcome::TooLarge`].
    TooLarge,
    /// The stored value is not JSON: a store failure.
    Corrupt(String),
}

/// The change an ack makes.
pub fn change_of(write: &Write, version: u64, value: Option<String>) -> Change {
    Change {
        key: write.key.clone(),
        version,
        value,
        op: write.op.clone(),
        client: write.client.clone(),
    }
}

/// Opens (creating if needed) the SQLite history at `config.db_path`, so a
/// bad path stops start-up with a message; returns its epoch. On a cluster:
/// nothing (Redis may be down at start), `None`.
pub fn check(config: &crate::config::SyncConfig) -> Result<Option<String>, String> {
    if config.server.cluster.is_some() {
        return Ok(None);
    }
    let path = &config.db_path;
    let mut store =
        Store::open(path, config.busy_timeout, Settings::from_config(config)).map_err(|e| {
            format!(
                "sync.db_path {}: cannot open the database: {e}",
                path.display()
            )
        })?;
    store.epoch().map(Some).map_err(|f| f.message)
}

#[cfg(test)]
#[path = "store_tests.rs"]
pub(crate) mod tests;
