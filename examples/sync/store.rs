//! Documents, their versions and op memory, off the event loop.
//!
//! INTERFACE SKELETON (filled in by the store work): the types below are the
//! contract between the worker (`worker.rs`) and the store; the bodies
//! marked `todo!` are to be written.
//!
//! Each worker owns one [`Writer`]: a thread with its own connection to the
//! store, fed [`Job`]s over a channel. Writes are group-committed (every
//! write waiting, up to `max_batch`, in one transaction: one fsync), and a
//! [`Event::Done`] for a write is handed back only after its commit. Reads
//! see every commit made before they start.
//!
//! The embedded store is SQLite (WAL, `synchronous=FULL`, `BEGIN
//! IMMEDIATE`, a busy timeout) at `sync.db_path`, shared by all workers. On
//! a cluster it is Redis (`store_redis.rs`), and changes written by any
//! worker of any node come back as [`Event::Change`] from the store's feed,
//! in commit order.

use serde_json::Value;

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
}

/// A worker's handle on its store thread.
pub struct Writer {
    _todo: (),
}

impl Writer {
    /// Starts the store thread for worker slot `worker`, from the config;
    /// `notify` runs whenever events are queued (the worker passes its
    /// waker). A failure to open is logged and ends the worker process.
    pub fn spawn(
        _config: &crate::config::SyncConfig,
        _worker: usize,
        _notify: impl Fn() + Send + 'static,
    ) -> std::io::Result<Writer> {
        todo!()
    }

    /// Queues a job; false if the thread is gone.
    pub fn submit(&self, _job: Job) -> bool {
        todo!()
    }

    /// Jobs submitted and not yet answered.
    pub fn pending(&self) -> usize {
        todo!()
    }

    /// Events queued since the last call.
    pub fn ready(&self) -> Vec<Event> {
        todo!()
    }
}

/// Opens (creating if needed) the SQLite history at `config.db_path`, so a
/// bad path stops start-up with a message; returns its epoch. On a cluster:
/// nothing (Redis may be down at start), `None`.
pub fn check(_config: &crate::config::SyncConfig) -> Result<Option<String>, String> {
    todo!()
}
