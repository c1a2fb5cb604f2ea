//! Unit tests of the store: every outcome of a write, batches, pruning and
//! replay boundaries, listing, op expiry on a clock of the test's own,
//! several connections on one history, and the writer threads. The helpers
//! and the scenarios (`scenario_*`, over any [`Backend`]) serve the Redis
//! store's tests too.

use super::*;
use crate::store_sqlite::{Store, PURGE_EXTRA};
use crossbeam_channel::Receiver;
use rusqlite::{Connection, TransactionBehavior};
use serde_json::json;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Versions kept in the tests: small, so pruning is reached quickly.
pub(crate) const KEEP: u64 = 3;
/// Op memory's lifetime in the tests (long enough that a Redis key's own
/// expiry, on the real clock, never comes first).
pub(crate) const TTL: u64 = 600_000;
/// Largest merged value in the tests.
pub(crate) const MAX: usize = 40;

pub(crate) fn settings() -> Settings {
    Settings {
        max_value_bytes: MAX,
        keep_versions: KEEP,
        op_ttl_ms: TTL,
        max_batch: 64,
        outbox: false,
    }
}

/// A fresh database path in a directory of its own.
pub(crate) fn temp_db() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sync-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("sync.db")
}

fn open(path: &Path) -> Store {
    Store::open(path, Duration::from_secs(5), settings()).unwrap()
}

/// A write of `client`'s `op`, its fingerprint made the way the worker's
/// is meant to be: everything but the op and client.
pub(crate) fn write(kind: WriteKind, key: &str, base: u64, client: &str, op: &str) -> Write {
    let what = match &kind {
        WriteKind::Put(v) => format!("put {v}"),
        WriteKind::Patch(m) => format!("patch {m}"),
        WriteKind::Delete => "delete".into(),
    };
    Write {
        fingerprint: format!("{what} {key} {base}"),
        kind,
        key: key.into(),
        base,
        client: client.into(),
        op: op.into(),
    }
}

pub(crate) fn put(key: &str, base: u64, value: &str, op: &str) -> Write {
    write(WriteKind::Put(value.into()), key, base, "c1", op)
}

pub(crate) fn patch(key: &str, base: u64, merge: Value, op: &str) -> Write {
    write(WriteKind::Patch(merge), key, base, "c1", op)
}

pub(crate) fn delete(key: &str, base: u64, op: &str) -> Write {
    write(WriteKind::Delete, key, base, "c1", op)
}

/// One write at time `now`.
#[track_caller]
pub(crate) fn one(b: &mut impl Backend, w: Write, now: u64) -> Outcome {
    let mut outcomes = b.write(&[w], now).unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

pub(crate) fn ack(version: u64, created: bool) -> Decided {
    Decided::Ack { version, created }
}

/// The version an outcome acked.
#[track_caller]
pub(crate) fn acked(o: &Outcome) -> u64 {
    match o {
        Outcome::Decided {
            decided: Decided::Ack { version, .. },
            change: Some(c),
        } if c.version == *version => *version,
        other => panic!("not an ack: {other:?}"),
    }
}

/// A decided write's version: `Ok` for an ack, `Err` for a conflict.
#[track_caller]
pub(crate) fn verdict(o: &Outcome) -> Result<u64, u64> {
    match o {
        Outcome::Decided {
            decided: Decided::Ack { version, .. },
            ..
        } => Ok(*version),
        Outcome::Decided {
            decided: Decided::Conflict { version, .. },
            ..
        } => Err(*version),
        other => panic!("not decided: {other:?}"),
    }
}

#[track_caller]
pub(crate) fn get(b: &mut impl Backend, key: &str) -> Doc {
    match b.read(&Work::Get(key.into())).unwrap() {
        Answer::Doc(d) => d,
        other => panic!("{other:?}"),
    }
}

#[track_caller]
fn subscribe(b: &mut impl Backend, keys: &[&str], since: &[(&str, u64)]) -> Vec<Snapshot> {
    let work = Work::Subscribe {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        since: since.iter().map(|(k, s)| (k.to_string(), *s)).collect(),
    };
    match b.read(&work).unwrap() {
        Answer::Subscribed(s) => s,
        other => panic!("{other:?}"),
    }
}

#[track_caller]
fn list(b: &mut impl Backend, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
    let work = Work::List {
        prefix: prefix.into(),
        after: after.map(str::to_string),
        limit,
    };
    match b.read(&work).unwrap() {
        Answer::Keys(keys) => keys.into_iter().map(|(k, _)| k).collect(),
        other => panic!("{other:?}"),
    }
}

fn versions(changes: &[Change]) -> Vec<u64> {
    changes.iter().map(|c| c.version).collect()
}

/// Every outcome of a write, in the protocol's check order.
pub(crate) fn scenario_outcomes(b: &mut impl Backend) {
    let t = now_ms();
    // Create-only on an absent key; then an update.
    let o = one(b, put("k", 0, r#"{"a":1}"#, "o1"), t);
    assert_eq!(
        o,
        Outcome::Decided {
            decided: ack(1, true),
            change: Some(Change {
                key: "k".into(),
                version: 1,
                value: Some(r#"{"a":1}"#.into()),
                op: "o1".into(),
                client: "c1".into(),
            }),
        }
    );
    let o = one(b, patch("k", 1, json!({"b": 2}), "o2"), t);
    assert_eq!(acked(&o), 2);
    assert!(matches!(
        o,
        Outcome::Decided {
            decided: Decided::Ack { created: false, .. },
            ..
        }
    ));
    assert_eq!(get(b, "k").value.as_deref(), Some(r#"{"a":1,"b":2}"#));
    // A stale base: a conflict with what is there, remembered with the op.
    let stale = put("k", 1, "7", "o3");
    let conflict = Decided::Conflict {
        version: 2,
        value: Some(r#"{"a":1,"b":2}"#.into()),
    };
    assert_eq!(
        one(b, stale.clone(), t),
        Outcome::Decided {
            decided: conflict.clone(),
            change: None
        }
    );
    // Create-only on a present key is a conflict too.
    assert!(matches!(
        one(b, put("k", 0, "8", "o4"), t),
        Outcome::Decided {
            decided: Decided::Conflict { version: 2, .. },
            change: None
        }
    ));
    // The same write again, even after the key moved on: the same answer;
    // an ack is repeated as it was.
    assert_eq!(acked(&one(b, put("k", 2, "9", "o5"), t)), 3);
    assert_eq!(one(b, stale, t), Outcome::Repeat(conflict));
    assert_eq!(
        one(b, put("k", 0, r#"{"a":1}"#, "o1"), t),
        Outcome::Repeat(ack(1, true))
    );
    // The op for another write: op_reused, nothing changes.
    assert_eq!(one(b, put("k", 3, "10", "o1"), t), Outcome::OpReused);
    assert_eq!(get(b, "k").version, 3);
    // Another client's same op is another write.
    let other = write(WriteKind::Put("11".into()), "k", 3, "c2", "o1");
    assert_eq!(acked(&one(b, other, t)), 4);
    // Too large after merging: not remembered (the op then serves a write
    // that fits); a put is never checked here (the worker checks it).
    let big = json!({"x": "a".repeat(MAX)});
    assert_eq!(one(b, patch("p", 0, big, "o6"), t), Outcome::TooLarge);
    assert_eq!(get(b, "p").version, 0);
    assert_eq!(acked(&one(b, patch("p", 0, json!({"x": 1}), "o6"), t)), 1);
    // A delete of an absent key: not_found, not remembered; base checked first.
    assert_eq!(one(b, delete("gone", 0, "o7"), t), Outcome::NotFound);
    assert!(matches!(
        one(b, delete("gone", 2, "o8"), t),
        Outcome::Decided {
            decided: Decided::Conflict {
                version: 0,
                value: None
            },
            ..
        }
    ));
    assert_eq!(acked(&one(b, put("gone", 0, "1", "o7"), t)), 1);
    // A delete: absent after it, its version kept; create-only passes on
    // an absent key, and versions go on.
    let o = one(b, delete("gone", 1, "o9"), t);
    assert_eq!(acked(&o), 2);
    assert!(matches!(
        &o,
        Outcome::Decided {
            decided: Decided::Ack { created: false, .. },
            change: Some(Change { value: None, .. })
        }
    ));
    let d = get(b, "gone");
    assert!(d.deleted() && d.version == 2, "{d:?}");
    assert_eq!(one(b, delete("gone", 2, "o10"), t), Outcome::NotFound);
    assert_eq!(one(b, delete("gone", 0, "o10"), t), Outcome::NotFound);
    assert_eq!(
        one(b, put("gone", 0, "2", "o11"), t),
        Outcome::Decided {
            decided: ack(3, true),
            change: Some(Change {
                key: "gone".into(),
                version: 3,
                value: Some("2".into()),
                op: "o11".into(),
                client: "c1".into()
            }),
        }
    );
    // A patch of a deleted key starts from {}.
    assert_eq!(acked(&one(b, delete("gone", 3, "o12"), t)), 4);
    assert_eq!(
        acked(&one(
            b,
            patch("gone", 4, json!({"n": 1, "m": null}), "o13"),
            t
        )),
        5
    );
    assert_eq!(get(b, "gone").value.as_deref(), Some(r#"{"n":1}"#));
    // Never written: version 0, no value, not deleted.
    let d = get(b, "never");
    assert!(d.version == 0 && d.value.is_none() && !d.deleted());
}

/// Writes of one key in one batch see each other, in order.
pub(crate) fn scenario_one_key_in_one_batch(b: &mut impl Backend) {
    let t = now_ms();
    let outcomes = b
        .write(
            &[
                put("k", 0, r#"{"a":1}"#, "b1"),
                patch("k", 1, json!({"b": 1}), "b2"),
                patch("k", 1, json!({"c": 1}), "b3"),
                patch("k", 2, json!({"c": 1}), "b4"),
                delete("k", 3, "b5"),
                put("k", 0, "true", "b6"),
                put("k", 0, "false", "b7"),
            ],
            t,
        )
        .unwrap();
    let shape: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Decided {
                decided: Decided::Ack { version, created },
                ..
            } => {
                format!("ack {version} {created}")
            }
            Outcome::Decided {
                decided: Decided::Conflict { version, .. },
                ..
            } => {
                format!("conflict {version}")
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "ack 1 true",
            "ack 2 false",
            "conflict 2",
            "ack 3 false",
            "ack 4 false",
            "ack 5 true",
            "conflict 5"
        ]
    );
    let since = match b
        .read(&Work::Since {
            key: "k".into(),
            after: 0,
        })
        .unwrap()
    {
        Answer::Since {
            version, changes, ..
        } => {
            assert_eq!(version, 5);
            changes
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(versions(&since), [3, 4, 5], "the last {KEEP}");
    assert_eq!(since[0].value.as_deref(), Some(r#"{"a":1,"b":1,"c":1}"#));
    assert_eq!(since[1].value, None);
    assert_eq!(since[2].value.as_deref(), Some("true"));
}

/// Pruning keeps exactly the last KEEP versions; `subscribe` replays from S
/// when V - KEEP <= S <= V, else sends the doc.
pub(crate) fn scenario_replay_boundaries(b: &mut impl Backend) {
    let t = now_ms();
    let n = 10;
    for v in 0..n {
        assert_eq!(
            acked(&one(b, put("k", v, &v.to_string(), &format!("w{v}")), t)),
            v + 1
        );
    }
    let doc = || {
        Snapshot::Doc(Doc {
            key: "k".into(),
            version: n,
            value: Some((n - 1).to_string()),
        })
    };
    let changes = |s: &Snapshot| match s {
        Snapshot::Changes {
            key,
            since,
            version,
            changes,
        } => {
            assert_eq!((key.as_str(), *version), ("k", n));
            for (c, v) in changes.iter().zip(since + 1..) {
                assert_eq!(c.version, v);
                assert_eq!(c.value, Some((v - 1).to_string()));
                assert_eq!(
                    (c.op.as_str(), c.client.as_str()),
                    (format!("w{}", v - 1).as_str(), "c1")
                );
            }
            Some(versions(changes))
        }
        Snapshot::Doc(_) => None,
    };
    let at = |b: &mut _, s: u64| subscribe(b, &["k"], &[("k", s)]).remove(0);
    assert_eq!(
        changes(&at(b, n - KEEP)),
        Some((n - KEEP + 1..=n).collect())
    );
    assert_eq!(at(b, n - KEEP - 1), doc(), "one too old");
    assert_eq!(changes(&at(b, n)), Some(vec![]), "up to date");
    assert_eq!(at(b, n + 1), doc(), "ahead");
    assert_eq!(subscribe(b, &["k"], &[]), [doc()], "no since");
    // Per key, in order; other keys' since ignored; a key never written
    // replays from 0 (V - KEEP <= 0 <= V).
    let s = subscribe(b, &["new", "k"], &[("other", 1), ("k", n - 1), ("new", 0)]);
    assert_eq!(s.len(), 2);
    assert_eq!(
        s[0],
        Snapshot::Changes {
            key: "new".into(),
            since: 0,
            version: 0,
            changes: vec![]
        }
    );
    assert_eq!(changes(&s[1]), Some(vec![n]));
    assert_eq!(
        subscribe(b, &["new"], &[("new", 1)]),
        [Snapshot::Doc(Doc {
            key: "new".into(),
            version: 0,
            value: None
        })]
    );
    // The feed's catch-up: what is kept after `after`, and the version.
    let since = |b: &mut _, after| match Backend::read(
        b,
        &Work::Since {
            key: "k".into(),
            after,
        },
    )
    .unwrap()
    {
        Answer::Since {
            key,
            version,
            changes,
        } => {
            assert_eq!((key.as_str(), version), ("k", n));
            versions(&changes)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(since(b, 0), (n - KEEP + 1..=n).collect::<Vec<_>>());
    assert_eq!(since(b, n - 1), [n]);
    assert_eq!(since(b, n), Vec::<u64>::new());
    assert_eq!(
        b.read(&Work::Heads(vec!["k".into(), "never".into()]))
            .unwrap(),
        Answer::Heads(vec![("k".into(), n), ("never".into(), 0)])
    );
}

/// `list`: present keys, by prefix, after a key, in byte order, at most
/// `limit`.
pub(crate) fn scenario_list(b: &mut impl Backend) {
    let t = now_ms();
    let keys = [
        "b", "a/2", "a.z", "a/1", "a", "a/10", "ab", "a/3", "A/1", "a0",
    ];
    let writes: Vec<Write> = keys
        .iter()
        .map(|k| put(k, 0, "1", &format!("l{k}")))
        .collect();
    b.write(&writes, t).unwrap();
    assert_eq!(acked(&one(b, delete("a/3", 1, "d"), t)), 2);
    let mut sorted: Vec<&str> = keys.iter().copied().filter(|k| *k != "a/3").collect();
    sorted.sort();
    assert_eq!(list(b, "", None, 1000), sorted);
    assert_eq!(list(b, "a/", None, 1000), ["a/1", "a/10", "a/2"]);
    assert_eq!(list(b, "a/", Some("a/1"), 1000), ["a/10", "a/2"]);
    assert_eq!(list(b, "a/", Some("a/2"), 1000), Vec::<String>::new());
    assert_eq!(list(b, "a/", Some("A"), 2), ["a/1", "a/10"]);
    assert_eq!(list(b, "", Some("a/2"), 3), ["a0", "ab", "b"]);
    assert_eq!(list(b, "a", None, 2), ["a", "a.z"]);
    assert_eq!(list(b, "c", None, 10), Vec::<String>::new());
    // With the versions.
    let work = Work::List {
        prefix: "a/".into(),
        after: Some("a/10".into()),
        limit: 5,
    };
    assert_eq!(
        b.read(&work).unwrap(),
        Answer::Keys(vec![("a/2".into(), 1)])
    );
    // Back after a delete: listed again.
    assert_eq!(acked(&one(b, put("a/3", 0, "2", "again"), t)), 3);
    assert_eq!(list(b, "a/", Some("a/2"), 5), ["a/3"]);
}

/// Op memory lasts `op_ttl` on the clock given to `write`.
pub(crate) fn scenario_op_expiry(b: &mut impl Backend) {
    let t = now_ms();
    let first = put("k", 0, "1", "o");
    assert_eq!(acked(&one(b, first.clone(), t)), 1);
    assert_eq!(
        one(b, first.clone(), t + TTL - 1),
        Outcome::Repeat(ack(1, true))
    );
    assert_eq!(
        one(b, put("k", 1, "2", "o"), t + TTL - 1),
        Outcome::OpReused
    );
    // Forgotten: decided afresh (the key is at 1 now, so a conflict), and
    // remembered from then on.
    let again = one(b, first.clone(), t + TTL);
    let conflict = Decided::Conflict {
        version: 1,
        value: Some("1".into()),
    };
    assert_eq!(
        again,
        Outcome::Decided {
            decided: conflict.clone(),
            change: None
        }
    );
    assert_eq!(one(b, first, t + TTL + 1), Outcome::Repeat(conflict));
    // Another write under the forgotten op is no op_reused.
    assert_eq!(acked(&one(b, put("k", 1, "3", "o"), t + 2 * TTL + 1)), 2);
}

/// The scenarios every store passes, each a test on a store made by
/// `$store` (an expression, evaluated afresh for each test).
macro_rules! scenarios {
    ($store:expr) => {
        #[test]
        fn every_outcome_of_a_write() {
            $crate::store::tests::scenario_outcomes(&mut $store);
        }

        #[test]
        fn writes_of_one_key_in_one_batch_see_each_other() {
            $crate::store::tests::scenario_one_key_in_one_batch(&mut $store);
        }

        #[test]
        fn pruning_and_replay_boundaries() {
            $crate::store::tests::scenario_replay_boundaries(&mut $store);
        }

        #[test]
        fn list_present_keys_in_byte_order() {
            $crate::store::tests::scenario_list(&mut $store);
        }

        #[test]
        fn op_memory_expires_on_the_given_clock() {
            $crate::store::tests::scenario_op_expiry(&mut $store);
        }

        #[test]
        fn odd_ops_round_trip() {
            $crate::store::tests::scenario_odd_ops_round_trip(&mut $store);
        }

        #[test]
        fn big_integers_survive_a_patch() {
            $crate::store::tests::scenario_big_integers(&mut $store);
        }
    };
}
pub(crate) use scenarios;

scenarios!(open(&temp_db()));

/// Rows in `ops`.
fn op_rows(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM ops", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn expired_ops_are_purged_a_bounded_chunk_per_batch() {
    let path = temp_db();
    let mut s = open(&path);
    let t = now_ms();
    let n = 3 * PURGE_EXTRA as u64;
    let writes: Vec<Write> = (0..n)
        .map(|i| put(&format!("k{i}"), 0, "1", &format!("o{i}")))
        .collect();
    s.write(&writes, t).unwrap();
    let late = put("late", 0, "1", "late");
    one(&mut s, late.clone(), t + 1);
    let mut rows = n as i64 + 1;
    assert_eq!(op_rows(&path), rows);
    // Not yet expired: nothing purged.
    one(&mut s, put("x", 0, "1", "x1"), t + TTL - 1);
    rows += 1;
    assert_eq!(op_rows(&path), rows);
    // Expired: one batch of one write purges 1 + PURGE_EXTRA, adds 1.
    one(&mut s, put("y", 0, "1", "y1"), t + TTL);
    rows += -(1 + PURGE_EXTRA as i64) + 1;
    assert_eq!(op_rows(&path), rows);
    // Expired, but not reached by the purge yet (the oldest go first):
    // forgotten all the same, decided afresh.
    assert!(matches!(
        one(&mut s, late, t + 1 + TTL),
        Outcome::Decided {
            decided: Decided::Conflict { version: 1, .. },
            ..
        }
    ));
    rows -= 1 + PURGE_EXTRA as i64;
    assert_eq!(op_rows(&path), rows, "the late row replaced");
    // Until all are gone (the three of later times stay).
    while op_rows(&path) > 4 {
        one(&mut s, put("z", 0, "1", "z1"), t + TTL);
    }
    assert_eq!(
        op_rows(&path),
        4,
        "late, x1, y1 (not expired at t + TTL), z1"
    );
}

#[test]
fn with_amqp_every_change_goes_to_the_outbox_in_commit_order_until_confirmed() {
    use crate::store_sqlite::{open_outbox, outbox_after, outbox_confirmed};
    let path = temp_db();
    let mut plain = open(&path);
    one(&mut plain, put("a", 0, "1", "p1"), now_ms());
    let outbox = Settings {
        outbox: true,
        ..settings()
    };
    let mut s = Store::open(&path, Duration::from_secs(5), outbox).unwrap();
    let t = now_ms();
    s.write(&[put("a", 1, "2", "o1"), put("b", 0, "3", "o2")], t)
        .unwrap();
    one(&mut s, put("a", 1, "9", "o3"), t); // a conflict: no change
    one(&mut s, delete("a", 2, "o4"), t);
    let db = open_outbox(&path, Duration::from_secs(5)).unwrap();
    let rows = outbox_after(&db, 0, 10).unwrap();
    let got: Vec<(&str, u64, Option<&str>)> = rows
        .iter()
        .map(|(_, c)| (c.key.as_str(), c.version, c.value.as_deref()))
        .collect();
    assert_eq!(
        got,
        [("a", 2, Some("2")), ("b", 1, Some("3")), ("a", 3, None)],
        "the write made before [amqp] is not there; the rest in commit order"
    );
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(outbox_after(&db, seqs[0], 10).unwrap().len(), 2);
    assert_eq!(outbox_after(&db, 0, 1).unwrap().len(), 1, "the limit");
    outbox_confirmed(&db, seqs[1]).unwrap();
    let left = outbox_after(&db, 0, 10).unwrap();
    assert_eq!(left.len(), 1, "confirmed rows are dropped");
    assert_eq!(left[0].0, seqs[2]);
}

#[test]
fn the_epoch_is_made_once_per_history() {
    let path = temp_db();
    let mut a = open(&path);
    let epoch = a.epoch().unwrap();
    assert!(
        (1..=64).contains(&epoch.len()) && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "{epoch}"
    );
    drop(a);
    assert_eq!(open(&path).epoch().unwrap(), epoch, "reopened");
    let mut other = open(&temp_db());
    assert_ne!(other.epoch().unwrap(), epoch, "a new file");
    // Lost history: a new epoch in its place.
    std::fs::remove_file(&path).unwrap();
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
    assert_ne!(open(&path).epoch().unwrap(), epoch, "recreated");
}

/// Two connections (two workers, or two nodes) write one key at once,
/// round after round, both on the version of the round: exactly one ack per
/// version, the other a conflict at that version; versions stay dense.
pub(crate) fn scenario_two_writers_on_one_key<B: Backend + Send + 'static>(a: B, b: B) {
    let rounds = 50;
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = [(a, "c1"), (b, "c2")]
        .into_iter()
        .map(|(mut s, client)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for base in 0..rounds {
                    barrier.wait();
                    let put = WriteKind::Put(base.to_string());
                    let w = write(put, "k", base, client, &format!("o{base}"));
                    match verdict(&one(&mut s, w, now_ms())) {
                        Ok(version) => {
                            assert_eq!(version, base + 1);
                            acks.push(version);
                        }
                        Err(version) => assert_eq!(version, base + 1, "the other's ack"),
                    }
                }
                (acks, s)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut stores = Vec::new();
    for t in threads {
        let (acks, s) = t.join().unwrap();
        all.extend(acks);
        stores.push(s);
    }
    all.sort();
    assert_eq!(all, (1..=rounds).collect::<Vec<_>>());
    assert_eq!(get(&mut stores[0], "k").version, rounds);
}

#[test]
fn two_connections_on_one_file_ack_once_per_version() {
    let path = temp_db();
    scenario_two_writers_on_one_key(open(&path), open(&path));
}

/// A config whose database is at `path`.
fn config_at(path: &Path) -> crate::config::SyncConfig {
    let text = format!(
        "[sync]\ndb_path = {:?}\nkeep_versions = {KEEP}\n",
        path.display().to_string()
    );
    crate::config::SyncConfig::from_toml_str(&text, Path::new("/")).unwrap()
}

#[test]
fn check_opens_the_history_and_names_a_bad_path() {
    let path = temp_db();
    let epoch = check(&config_at(&path)).unwrap().expect("an epoch");
    assert_eq!(open(&path).epoch().unwrap(), epoch);
    let bad = path.with_file_name("no-such-dir").join("sync.db");
    let e = check(&config_at(&bad)).unwrap_err();
    assert!(
        e.contains("sync.db_path") && e.contains("no-such-dir"),
        "{e}"
    );
    let mut cluster = config_at(&bad);
    let section = foreman::ClusterSection {
        redis_url: Some("redis://127.0.0.1:1".into()),
        ..Default::default()
    };
    cluster.server.set_cluster(&section).unwrap();
    assert_eq!(check(&cluster), Ok(None), "Redis is not touched");
}

/// A writer on `config` and what it wakes.
pub(crate) fn writer_of(config: &crate::config::SyncConfig) -> (Writer, Receiver<()>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer = Writer::spawn(config, 0, move || {
        let _ = tx.send(());
    })
    .unwrap();
    (writer, rx)
}

fn writer_at(path: &Path) -> (Writer, Receiver<()>) {
    writer_of(&config_at(path))
}

/// Events, as woken, until `until` holds of all received so far; panics
/// after a while naming `what`.
#[track_caller]
pub(crate) fn events_until(
    writer: &Writer,
    woken: &Receiver<()>,
    what: &str,
    mut until: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !until(&got) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            woken.recv_timeout(left).is_ok(),
            "waiting for {what}: {got:?}"
        );
        got.extend(writer.ready());
    }
    got
}

/// Events until `done` answers have come (and whatever came with them).
#[track_caller]
fn answered(writer: &Writer, woken: &Receiver<()>, done: usize) -> Vec<Event> {
    events_until(writer, woken, &format!("{done} answers"), |got| {
        got.iter()
            .filter(|e| matches!(e, Event::Done { .. }))
            .count()
            >= done
    })
}

fn job(id: u64, work: Work) -> Job {
    Job { id, work }
}

#[test]
fn the_writer_opens_first_and_answers_after_commit() {
    let path = temp_db();
    let epoch = check(&config_at(&path)).unwrap().unwrap();
    let (writer, woken) = writer_at(&path);
    let n = 100;
    for i in 0..n {
        assert!(writer.submit(job(
            i,
            Work::Write(put("k", i, &i.to_string(), &format!("o{i}")))
        )));
    }
    let got = answered(&writer, &woken, n as usize);
    assert_eq!(got[0], Event::Opened { epoch });
    let mut check_db = open(&path);
    let mut ids = Vec::new();
    for e in &got[1..] {
        match e {
            Event::Done {
                id,
                result: Ok(Answer::Write(o)),
            } => {
                // Committed: another connection sees it already.
                assert!(get(&mut check_db, "k").version >= acked(o));
                assert_eq!(acked(o), id + 1);
                ids.push(*id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids, (0..n).collect::<Vec<_>>());
    assert_eq!(writer.pending(), 0);
    // Reads go to the other thread and see the commits.
    assert!(writer.submit(job(500, Work::Get("k".into()))));
    let got = answered(&writer, &woken, 1);
    assert!(
        matches!(&got[..], [Event::Done { id: 500, result: Ok(Answer::Doc(Doc { version, .. })) }] if *version == n),
        "{got:?}"
    );
}

#[test]
fn reads_are_not_held_up_by_a_locked_writer() {
    let path = temp_db();
    check(&config_at(&path)).unwrap();
    let (writer, woken) = writer_at(&path);
    events_until(&writer, &woken, "opened", |e| !e.is_empty());
    // Another connection holds the write lock (for less than the busy
    // timeout: the write waits, it does not fail).
    let mut holder = Connection::open(&path).unwrap();
    let tx = holder
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    assert!(writer.submit(job(1, Work::Write(put("k", 0, "1", "o")))));
    assert!(writer.submit(job(2, Work::Get("k".into()))));
    let got = answered(&writer, &woken, 1);
    assert!(
        matches!(
            &got[..],
            [Event::Done {
                id: 2,
                result: Ok(_)
            }]
        ),
        "{got:?}"
    );
    assert_eq!(writer.pending(), 1, "the write waits for the lock");
    drop(tx);
    let got = answered(&writer, &woken, 1);
    assert!(
        matches!(
            &got[..],
            [Event::Done {
                id: 1,
                result: Ok(Answer::Write(_))
            }]
        ),
        "{got:?}"
    );
}

#[test]
fn a_write_locked_out_for_the_busy_timeout_is_an_error() {
    let path = temp_db();
    let mut config = config_at(&path);
    config.busy_timeout = Duration::from_millis(100);
    check(&config).unwrap();
    let (tx, woken) = crossbeam_channel::unbounded();
    let writer = Writer::spawn(&config, 0, move || {
        let _ = tx.send(());
    })
    .unwrap();
    let mut holder = Connection::open(&path).unwrap();
    let lock = holder
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    assert!(writer.submit(job(1, Work::Write(put("k", 0, "1", "o")))));
    let got = answered(&writer, &woken, 1);
    let err = got.iter().find_map(|e| match e {
        Event::Done {
            id: 1,
            result: Err(e),
        } => Some(e.clone()),
        _ => None,
    });
    assert!(
        err.as_deref().is_some_and(|e| e.contains("locked")),
        "{got:?}"
    );
    assert_eq!(writer.pending(), 0);
    // Sent again (same op) once the lock is free: applied once.
    drop(lock);
    for id in [2, 3] {
        assert!(writer.submit(job(id, Work::Write(put("k", 0, "1", "o")))));
    }
    let got = answered(&writer, &woken, 2);
    let outcomes: Vec<&Outcome> = got
        .iter()
        .filter_map(|e| match e {
            Event::Done {
                result: Ok(Answer::Write(o)),
                ..
            } => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(acked(outcomes[0]), 1);
    assert_eq!(outcomes[1], &Outcome::Repeat(ack(1, true)));
}

#[test]
fn pending_counts_submitted_jobs_until_answered() {
    let path = temp_db();
    check(&config_at(&path)).unwrap();
    let (writer, woken) = writer_at(&path);
    let mut holder = Connection::open(&path).unwrap();
    let lock = holder
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    for i in 0..5 {
        assert!(writer.submit(job(i, Work::Write(put(&format!("k{i}"), 0, "1", "o")))));
    }
    assert_eq!(writer.pending(), 5);
    drop(lock);
    answered(&writer, &woken, 5);
    assert_eq!(writer.pending(), 0);
}

/// Ops and clients with the characters the stores' encodings use, and
/// values holding them, come back as written.
pub(crate) fn scenario_odd_ops_round_trip(b: &mut impl Backend) {
    let t = now_ms();
    let (op, client, value) = ("3,a:b,\nc\n1,", "dev:1.x_-", r#"{"s":"1,2\n,é"}"#);
    let w = write(WriteKind::Put(value.into()), "k", 0, client, op);
    assert_eq!(acked(&one(b, w.clone(), t)), 1);
    assert_eq!(acked(&one(b, delete("k", 1, ","), t)), 2);
    let want = vec![
        Change {
            key: "k".into(),
            version: 1,
            value: Some(value.into()),
            op: op.into(),
            client: client.into(),
        },
        Change {
            key: "k".into(),
            version: 2,
            value: None,
            op: ",".into(),
            client: "c1".into(),
        },
    ];
    let since = b
        .read(&Work::Since {
            key: "k".into(),
            after: 0,
        })
        .unwrap();
    assert_eq!(
        since,
        Answer::Since {
            key: "k".into(),
            version: 2,
            changes: want
        }
    );
    assert_eq!(one(b, w, t), Outcome::Repeat(ack(1, true)));
}

/// Integers beyond 2^53 (which a double, like Lua's, cannot hold) keep
/// their digits through a patch.
pub(crate) fn scenario_big_integers(b: &mut impl Backend) {
    let t = now_ms();
    let big = r#"{"n":9007199254740993}"#;
    assert_eq!(acked(&one(b, put("k", 0, big, "o1"), t)), 1);
    assert_eq!(acked(&one(b, patch("k", 1, json!({"m": 1}), "o2"), t)), 2);
    assert_eq!(
        get(b, "k").value.as_deref(),
        Some(r#"{"m":1,"n":9007199254740993}"#)
    );
}
