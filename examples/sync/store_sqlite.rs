//! The embedded store: documents, versions and op memory in one SQLite
//! file shared by every worker (WAL, `synchronous=FULL`, `BEGIN IMMEDIATE`,
//! a busy timeout), behind [`crate::store::Backend`]. See `store.rs` for
//! the steps of a write; here is how the tables hold them.
//!
//! # Tables
//!
//! `meta` (the epoch, made with the schema in one transaction); `docs` (a
//! key's current version and value, the value NULL after a delete: the row
//! stays, so versions go on from there); `versions` (one row per version,
//! the last `keep_versions` of each key); `ops` (op memory: the decision
//! and fingerprint by `(client, op)`, with its expiry, purged a bounded
//! chunk per batch by the `ops_by_expiry` index).
//!
//! Every worker opens the file twice (its write and read threads). Reads run
//! in a deferred transaction of their own: in WAL a reader is never blocked
//! by a writer and sees every commit made before it began.

use crate::store::{
    change_of, new_value, prefix_end, random_epoch, replayable, Answer, Backend, Change, Decided,
    Doc, Failure, NewValue, Outcome, Settings, Snapshot, Work, Write,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS docs(
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    value TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS docs_present ON docs(key) WHERE value IS NOT NULL;
CREATE TABLE IF NOT EXISTS versions(
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    value TEXT,
    op TEXT NOT NULL,
    client TEXT NOT NULL,
    PRIMARY KEY (key, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops(
    client TEXT NOT NULL,
    op TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    acked INTEGER NOT NULL,
    version INTEGER NOT NULL,
    created INTEGER NOT NULL,
    value TEXT,
    expires INTEGER NOT NULL,
    PRIMARY KEY (client, op)
);
CREATE INDEX IF NOT EXISTS ops_by_expiry ON ops(expires);
";

/// The changes not yet confirmed by RabbitMQ (`sync.changes`), in commit
/// order: `seq` is given under the write lock, so once a row is readable
/// every row before it is too. Made at open (with `[amqp]`), also in a
/// database made before it existed; rows go once the broker confirms them.
const OUTBOX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox_changes(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    value TEXT,
    op TEXT NOT NULL,
    client TEXT NOT NULL
);
";

/// Opens a connection for the publisher of `sync.changes`, making the
/// outbox table if it is not there yet.
pub fn open_outbox(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.busy_timeout(busy_timeout)?;
    db.execute_batch(OUTBOX_SCHEMA)?;
    Ok(db)
}

/// Up to `limit` outbox rows after `after`, in commit order, as
/// `(seq, change)`.
pub fn outbox_after(
    db: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, Change)>> {
    let mut statement = db.prepare_cached(
        "SELECT seq, key, version, value, op, client FROM outbox_changes
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = statement.query_map(params![after, limit as i64], |r| {
        let change = Change {
            key: r.get(1)?,
            version: version_of(r.get(2)?),
            value: r.get(3)?,
            op: r.get(4)?,
            client: r.get(5)?,
        };
        Ok((r.get(0)?, change))
    })?;
    rows.collect()
}

/// Drops the outbox rows up to `seq`: the broker confirmed them.
pub fn outbox_confirmed(db: &Connection, seq: i64) -> rusqlite::Result<()> {
    db.prepare_cached("DELETE FROM outbox_changes WHERE seq <= ?1")?
        .execute([seq])?;
    Ok(())
}

/// Expired op rows purged per batch beyond the batch's own writes, so the
/// purge outpaces what batches add without ever deleting without bound.
pub(crate) const PURGE_EXTRA: usize = 64;

/// One SQLite connection to the history database.
pub struct Store {
    /// The connection; used by one thread only.
    db: Connection,
    /// The limits.
    settings: Settings,
    /// Read back at open.
    epoch: String,
}

/// Whether SQLite gave up waiting for another connection's lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn failure(e: rusqlite::Error) -> Failure {
    Failure {
        retry: !is_busy(&e),
        message: match is_busy(&e) {
            true => format!("the database stayed locked for the busy timeout: {e}"),
            false => e.to_string(),
        },
    }
}

/// A stored text that is not what the schema promises.
fn corrupt(message: String) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, message, rusqlite::types::Type::Text)
}

fn version_of(v: i64) -> u64 {
    v.max(0) as u64
}

impl Store {
    /// Opens (creating if needed) the database: WAL, full sync, the busy
    /// timeout; the schema and the epoch, made together in one transaction
    /// when the file has none.
    pub fn open(
        path: &Path,
        busy_timeout: Duration,
        settings: Settings,
    ) -> rusqlite::Result<Store> {
        let mut db = Connection::open(path)?;
        db.busy_timeout(busy_timeout)?;
        let mode: String = db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(corrupt(format!(
                "journal_mode: cannot use WAL (got {mode})"
            )));
        }
        db.pragma_update(None, "synchronous", "FULL")?;
        if settings.outbox {
            db.execute_batch(OUTBOX_SCHEMA)?;
        }
        let epoch = match read_epoch(&db) {
            Ok(Some(epoch)) => epoch,
            // No schema yet (or no epoch): made now, by whichever worker
            // takes the lock first; the others find it made.
            _ => {
                let fresh = random_epoch().map_err(|e| corrupt(format!("/dev/urandom: {e}")))?;
                let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(SCHEMA)?;
                tx.execute(
                    "INSERT OR IGNORE INTO meta(name, value) VALUES ('epoch', ?1)",
                    [&fresh],
                )?;
                tx.commit()?;
                read_epoch(&db)?.ok_or_else(|| corrupt("meta has no epoch".into()))?
            }
        };
        Ok(Store {
            db,
            settings,
            epoch,
        })
    }

    fn write_batch(&mut self, writes: &[Write], now: u64) -> rusqlite::Result<Vec<Outcome>> {
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "DELETE FROM ops WHERE rowid IN
               (SELECT rowid FROM ops WHERE expires <= ?1 ORDER BY expires LIMIT ?2)",
        )?
        .execute(params![now as i64, (writes.len() + PURGE_EXTRA) as i64])?;
        let outcomes = writes
            .iter()
            .map(|w| apply(&tx, w, &self.settings, now))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(outcomes)
    }

    fn read_in(&mut self, work: &Work) -> rusqlite::Result<Answer> {
        // One read transaction: every key of the answer from one snapshot.
        let tx = self.db.transaction()?;
        let keep = self.settings.keep_versions;
        let answer = match work {
            Work::Write(_) => return Err(corrupt("a write sent to the reader".into())),
            Work::Get(key) => Answer::Doc(doc(&tx, key)?),
            Work::Subscribe { keys, since } => {
                let mut snapshots = Vec::with_capacity(keys.len());
                for key in keys {
                    let d = doc(&tx, key)?;
                    let s = since.iter().find(|(k, _)| k == key).map(|(_, s)| *s);
                    snapshots.push(match s {
                        Some(s) if replayable(s, d.version, keep) => {
                            let changes = versions_after(&tx, key, s)?;
                            if changes.len() as u64 == d.version - s {
                                Snapshot::Changes {
                                    key: key.clone(),
                                    since: s,
                                    version: d.version,
                                    changes,
                                }
                            } else {
                                // Kept fewer than keep_versions (it was
                                // raised): what is missing is gone.
                                Snapshot::Doc(d)
                            }
                        }
                        _ => Snapshot::Doc(d),
                    });
                }
                Answer::Subscribed(snapshots)
            }
            Work::List {
                prefix,
                after,
                limit,
            } => Answer::Keys(list(&tx, prefix, after.as_deref(), *limit)?),
            Work::Since { key, after } => Answer::Since {
                key: key.clone(),
                version: doc(&tx, key)?.version,
                changes: versions_after(&tx, key, *after)?,
            },
            Work::Heads(keys) => Answer::Heads(
                keys.iter()
                    .map(|k| Ok((k.clone(), doc(&tx, k)?.version)))
                    .collect::<rusqlite::Result<_>>()?,
            ),
        };
        tx.commit()?;
        Ok(answer)
    }
}

impl Backend for Store {
    fn epoch(&mut self) -> Result<String, Failure> {
        Ok(self.epoch.clone())
    }

    fn write(&mut self, writes: &[Write], now_ms: u64) -> Result<Vec<Outcome>, Failure> {
        self.write_batch(writes, now_ms).map_err(failure)
    }

    fn read(&mut self, work: &Work) -> Result<Answer, Failure> {
        self.read_in(work).map_err(failure)
    }
}

fn read_epoch(db: &Connection) -> rusqlite::Result<Option<String>> {
    db.query_row("SELECT value FROM meta WHERE name = 'epoch'", [], |r| {
        r.get(0)
    })
    .optional()
}

/// A key's current state.
fn doc(db: &Connection, key: &str) -> rusqlite::Result<Doc> {
    let found: Option<(i64, Option<String>)> = db
        .prepare_cached("SELECT version, value FROM docs WHERE key = ?1")?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (version, value) = found.map_or((0, None), |(v, value)| (version_of(v), value));
    Ok(Doc {
        key: key.to_string(),
        version,
        value,
    })
}

/// The kept versions of `key` after `after`, in order.
fn versions_after(db: &Connection, key: &str, after: u64) -> rusqlite::Result<Vec<Change>> {
    let after = after.min(i64::MAX as u64) as i64;
    db.prepare_cached(
        "SELECT version, value, op, client FROM versions
         WHERE key = ?1 AND version > ?2 ORDER BY version",
    )?
    .query_map(params![key, after], |r| {
        Ok(Change {
            key: key.to_string(),
            version: version_of(r.get(0)?),
            value: r.get(1)?,
            op: r.get(2)?,
            client: r.get(3)?,
        })
    })?
    .collect()
}

/// Present keys under `prefix` after `after`, in byte order, at most
/// `limit`.
fn list(
    db: &Connection,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<(String, u64)>> {
    let low = after.unwrap_or("");
    let row = |r: &rusqlite::Row| Ok((r.get::<_, String>(0)?, version_of(r.get(1)?)));
    match prefix_end(prefix) {
        Some(end) => db
            .prepare_cached(
                "SELECT key, version FROM docs WHERE value IS NOT NULL
                 AND key >= ?1 AND key < ?2 AND key > ?3 ORDER BY key LIMIT ?4",
            )?
            .query_map(params![prefix, end, low, limit as i64], row)?
            .collect(),
        None => db
            .prepare_cached(
                "SELECT key, version FROM docs WHERE value IS NOT NULL
                 AND key > ?1 ORDER BY key LIMIT ?2",
            )?
            .query_map(params![low, limit as i64], row)?
            .collect(),
    }
}

/// One write, inside the batch's transaction (the module docs' steps).
fn apply(db: &Connection, w: &Write, s: &Settings, now: u64) -> rusqlite::Result<Outcome> {
    type Row = (String, bool, i64, bool, Option<String>);
    let remembered: Option<Row> = db
        .prepare_cached(
            "SELECT fingerprint, acked, version, created, value FROM ops
             WHERE client = ?1 AND op = ?2 AND expires > ?3",
        )?
        .query_row(params![w.client, w.op, now as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    if let Some((fingerprint, acked, version, created, value)) = remembered {
        if fingerprint != w.fingerprint {
            return Ok(Outcome::OpReused);
        }
        let version = version_of(version);
        return Ok(Outcome::Repeat(match acked {
            true => Decided::Ack { version, created },
            false => Decided::Conflict { version, value },
        }));
    }
    let current = doc(db, &w.key)?;
    let absent = current.value.is_none();
    if !(w.base == current.version || (w.base == 0 && absent)) {
        let decided = Decided::Conflict {
            version: current.version,
            value: current.value,
        };
        remember(db, w, &decided, now + s.op_ttl_ms)?;
        return Ok(Outcome::Decided {
            decided,
            change: None,
        });
    }
    let value = match new_value(&w.kind, current.value.as_deref(), s.max_value_bytes) {
        Ok(value) => value,
        Err(NewValue::NotFound) => return Ok(Outcome::NotFound),
        Err(NewValue::TooLarge) => return Ok(Outcome::TooLarge),
        Err(NewValue::Corrupt(e)) => return Err(corrupt(format!("{}: {e}", w.key))),
    };
    let version = current.version + 1;
    db.prepare_cached(
        "INSERT INTO docs(key, version, value) VALUES (?1, ?2, ?3)
         ON CONFLICT(key) DO UPDATE SET version = excluded.version, value = excluded.value",
    )?
    .execute(params![w.key, version as i64, value])?;
    db.prepare_cached(
        "INSERT INTO versions(key, version, value, op, client) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![w.key, version as i64, value, w.op, w.client])?;
    if version > s.keep_versions {
        db.prepare_cached("DELETE FROM versions WHERE key = ?1 AND version <= ?2")?
            .execute(params![w.key, (version - s.keep_versions) as i64])?;
    }
    if s.outbox {
        db.prepare_cached(
            "INSERT INTO outbox_changes(key, version, value, op, client)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![w.key, version as i64, value, w.op, w.client])?;
    }
    let decided = Decided::Ack {
        version,
        created: absent && value.is_some(),
    };
    remember(db, w, &decided, now + s.op_ttl_ms)?;
    Ok(Outcome::Decided {
        decided,
        change: Some(change_of(w, version, value)),
    })
}

/// Op memory: the decision, by (client, op), until `expires`.
fn remember(db: &Connection, w: &Write, decided: &Decided, expires: u64) -> rusqlite::Result<()> {
    let (acked, version, created, value) = match decided {
        Decided::Ack { version, created } => (true, *version, *created, None),
        Decided::Conflict { version, value } => (false, *version, false, value.as_deref()),
    };
    db.prepare_cached(
        "INSERT OR REPLACE INTO ops(client, op, fingerprint, acked, version, created, value, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        w.client,
        w.op,
        w.fingerprint,
        acked,
        version as i64,
        created,
        value,
        expires as i64
    ])?;
    Ok(())
}
