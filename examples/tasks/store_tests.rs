//! Unit tests of the store: every column round trips (through a reopen),
//! updates and deletes, `next_id` across deletes and reopens, batches
//! committed in order with `committed()` following, the queue written
//! out on drop, `:memory:`, bad paths, and a failed write stopping the
//! writer. `throughput` (ignored) measures group commit on disk.

use super::*;
use crossbeam_channel::Receiver;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[path = "../../tests/common/mod.rs"]
mod common;

/// A database file in a directory of its own, removed on drop.
struct TempDb {
    dir: PathBuf,
    db: Database,
}

impl TempDb {
    fn new() -> TempDb {
        let dir = common::temp_dir("tasks", "store");
        let db = Database::File(dir.join("tasks.db"));
        TempDb { dir, db }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A store whose wake-ups arrive on the receiver.
#[track_caller]
fn open(db: &Database) -> (Store, Recovered, Receiver<()>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (store, recovered) = Store::open_with(db, move || {
        let _ = tx.send(());
    })
    .unwrap();
    (store, recovered, rx)
}

/// What a fresh open of `db` recovers (the store is dropped at once).
#[track_caller]
fn reopen(db: &Database) -> Recovered {
    open(db).1
}

/// Waits, on the store's wake-ups, until batch `n` is committed.
#[track_caller]
fn wait_committed(store: &Store, woken: &Receiver<()>, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.committed() < n {
        assert!(store.failed().is_none(), "{:?}", store.failed());
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            woken.recv_timeout(left).is_ok(),
            "batch {n} not committed in time (at {})",
            store.committed()
        );
    }
}

/// A job whose every field says which job it is.
fn job(id: JobNo) -> JobRow {
    JobRow {
        id,
        queue: format!("q-{}", id % 3),
        state: State::ALL[id as usize % State::ALL.len()],
        priority: (id % 10) as u8,
        payload: format!(r#"{{"n":{id}}}"#),
        attempts: (id % 4) as u32,
        max_attempts: 3 + (id % 5) as u32,
        timeout_ms: 100 + id,
        unique: (id % 2 == 0).then(|| format!("u{id}")),
        created_ms: 1_700_000_000_000 + id,
        updated_ms: 1_700_000_000_500 + id,
        due_ms: 1_700_000_001_000 + id,
        ready_seq: 10 * id,
        result: None,
        error: None,
        lease_conn: None,
    }
}

/// Writes `batches` and waits for the last.
#[track_caller]
fn write_all(db: &Database, batches: Vec<Vec<Write>>) {
    let (mut store, _, woken) = open(db);
    let last = batches.into_iter().map(|b| store.write(b)).last();
    wait_committed(&store, &woken, last.unwrap());
}

#[test]
fn every_field_round_trips_through_a_reopen() {
    let t = TempDb::new();
    let fresh = reopen(&t.db);
    assert!(fresh.jobs.is_empty());
    assert_eq!(fresh.next_id, 1);

    let mut full = job(1);
    full.payload = r#"{"ключ":"値 🎉","q":"\"quoted\"\n","n":[1,2.5,null,true]}"#.into();
    full.unique = Some("ü-κλειδί-🔑".into());
    full.result = Some(r#"{"ok":"✓"}"#.into());
    full.error = Some(r#""executor_lost""#.into());
    full.lease_conn = Some("3:17".into());
    full.priority = 9;
    full.attempts = 100;
    full.max_attempts = 100;
    full.timeout_ms = 86_400_000;
    full.created_ms = i64::MAX as u64;
    full.ready_seq = i64::MAX as u64 - 1;
    let mut empty = job(2);
    empty.unique = None;
    empty.priority = 0;
    empty.due_ms = 0;
    empty.payload = "null".into();
    // Every state, each in a row of its own.
    let states: Vec<JobRow> = State::ALL
        .iter()
        .enumerate()
        .map(|(i, &state)| JobRow {
            state,
            ..job(10 + i as u64)
        })
        .collect();
    let mut rows = vec![full, empty];
    rows.extend(states);
    write_all(
        &t.db,
        vec![rows.iter().cloned().map(Write::Insert).collect()],
    );

    let back = reopen(&t.db);
    assert_eq!(back.jobs, rows);
    assert_eq!(back.next_id, 10 + State::ALL.len() as u64);
}

#[test]
fn updates_change_their_row_and_deletes_remove_it() {
    let t = TempDb::new();
    let mut a = job(1);
    a.result = Some("1".into());
    let b = job(2);
    let c = job(3);
    write_all(
        &t.db,
        vec![vec![
            Write::Insert(a.clone()),
            Write::Insert(b.clone()),
            Write::Insert(c.clone()),
        ]],
    );

    // Some -> None, None -> Some, every changeable field new.
    let to_a = JobUpdate {
        id: 1,
        state: State::Leased,
        attempts: a.attempts + 1,
        updated_ms: a.updated_ms + 7,
        due_ms: a.due_ms + 30_000,
        ready_seq: a.ready_seq + 99,
        result: None,
        error: Some(r#"{"why":"ß"}"#.into()),
        lease_conn: Some("0:5".into()),
    };
    let to_c = JobUpdate {
        id: 3,
        state: State::Succeeded,
        attempts: 2,
        updated_ms: 5,
        due_ms: 6,
        ready_seq: 7,
        result: Some(r#"[{"a":1}]"#.into()),
        error: None,
        lease_conn: None,
    };
    write_all(
        &t.db,
        vec![
            vec![Write::Update(to_a.clone())],
            vec![Write::Delete(2), Write::Update(to_c.clone())],
        ],
    );

    let back = reopen(&t.db);
    let expect_a = JobRow {
        state: to_a.state,
        attempts: to_a.attempts,
        updated_ms: to_a.updated_ms,
        due_ms: to_a.due_ms,
        ready_seq: to_a.ready_seq,
        result: to_a.result,
        error: to_a.error,
        lease_conn: to_a.lease_conn,
        ..a
    };
    let expect_c = JobRow {
        state: to_c.state,
        attempts: to_c.attempts,
        updated_ms: to_c.updated_ms,
        due_ms: to_c.due_ms,
        ready_seq: to_c.ready_seq,
        result: to_c.result,
        error: to_c.error,
        lease_conn: to_c.lease_conn,
        ..c
    };
    assert_eq!(back.jobs, vec![expect_a, expect_c]);
    assert_eq!(back.next_id, 4, "a deleted id stays used");
}

#[test]
fn next_id_stays_above_every_id_inserted_across_deletes_and_reopens() {
    let t = TempDb::new();
    write_all(
        &t.db,
        vec![(1..=5).map(|i| Write::Insert(job(i))).collect()],
    );
    write_all(&t.db, vec![(1..=5).map(Write::Delete).collect()]);
    let back = reopen(&t.db);
    assert!(back.jobs.is_empty());
    assert_eq!(back.next_id, 6);

    // A gap, a lower id after a higher one, and its delete in the same
    // transaction: the highest still counts.
    write_all(
        &t.db,
        vec![
            vec![Write::Insert(job(40))],
            vec![Write::Insert(job(7)), Write::Delete(40)],
        ],
    );
    let back = reopen(&t.db);
    assert_eq!(back.jobs, vec![job(7)]);
    assert_eq!(back.next_id, 41);
    assert_eq!(reopen(&t.db).next_id, 41);
}

#[test]
fn batches_commit_in_order_and_committed_follows() {
    let t = TempDb::new();
    let (mut store, _, woken) = open(&t.db);
    assert_eq!(store.committed(), 0);
    assert_eq!(store.write(vec![Write::Insert(job(1))]), 1);
    // Each batch sets attempts to its number: only the order written
    // leaves the last one's. Large batches make groups pass MAX_WRITES.
    let mut numbers = Vec::new();
    for n in 2..=300u64 {
        let writes = if n % 100 == 0 { 3000 } else { 1 };
        let batch = (0..writes)
            .map(|_| {
                Write::Update(JobUpdate {
                    id: 1,
                    state: State::Queued,
                    attempts: n as u32,
                    updated_ms: n,
                    due_ms: 0,
                    ready_seq: n,
                    result: None,
                    error: None,
                    lease_conn: None,
                })
            })
            .collect();
        numbers.push(store.write(batch));
    }
    assert_eq!(numbers, (2..=300).collect::<Vec<u64>>());
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < 300 {
        let left = deadline.saturating_duration_since(Instant::now());
        woken.recv_timeout(left).expect("every batch commits");
        let now = store.committed();
        assert!(now >= seen, "committed went back from {seen} to {now}");
        assert!(now <= 300);
        seen = now;
    }
    assert!(store.failed().is_none());
    drop(store);
    let back = reopen(&t.db);
    assert_eq!((back.jobs[0].attempts, back.jobs[0].ready_seq), (300, 300));
}

#[test]
fn a_dropped_store_writes_what_was_queued_first() {
    let t = TempDb::new();
    let (mut store, _, _) = open(&t.db);
    for i in 1..=500 {
        store.write(vec![Write::Insert(job(i))]);
    }
    drop(store);
    let back = reopen(&t.db);
    assert_eq!(back.jobs, (1..=500).map(job).collect::<Vec<_>>());
    assert_eq!(back.next_id, 501);
}

#[test]
fn a_file_database_is_in_wal_mode() {
    let t = TempDb::new();
    check(&t.db).unwrap();
    let Database::File(path) = &t.db else {
        unreachable!()
    };
    let other = Connection::open(path).unwrap();
    let mode: String = other
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // check made the schema: the table is there, empty.
    let n: i64 = other
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn memory_works_and_keeps_nothing() {
    check(&Database::Memory).unwrap();
    let (mut store, fresh, woken) = open(&Database::Memory);
    assert_eq!((fresh.jobs.len(), fresh.next_id), (0, 1));
    store.write(vec![Write::Insert(job(1)), Write::Insert(job(2))]);
    let n = store.write(vec![Write::Delete(1)]);
    wait_committed(&store, &woken, n);
    assert!(store.failed().is_none());
    drop(store);
    let again = reopen(&Database::Memory);
    assert_eq!((again.jobs.len(), again.next_id), (0, 1));
}

#[test]
fn a_bad_path_fails_with_a_message_naming_it() {
    let t = TempDb::new();
    let missing = t.dir.join("no-such-dir").join("tasks.db");
    // A directory where the file should be.
    let dir = t.dir.clone();
    for path in [missing, dir] {
        let db = Database::File(path.clone());
        let shown = path.display().to_string();
        let e = check(&db).unwrap_err();
        assert!(e.contains(&shown), "{e}");
        let e = Store::open_with(&db, || {}).err().expect("open fails");
        assert!(e.contains(&shown), "{e}");
    }
    assert!(!t.dir.join("no-such-dir").exists());
}

#[test]
fn a_failed_write_stops_the_writer_and_commits_nothing_after() {
    let t = TempDb::new();
    let (mut store, _, woken) = open(&t.db);
    let first = store.write(vec![Write::Insert(job(1))]);
    wait_committed(&store, &woken, first);
    // The same id again: the primary key refuses it.
    let bad = store.write(vec![Write::Insert(job(2)), Write::Insert(job(1))]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.failed().is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        woken
            .recv_timeout(left)
            .expect("the failure wakes the loop");
    }
    let e = store.failed().unwrap();
    let Database::File(path) = &t.db else {
        unreachable!()
    };
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("UNIQUE"), "{e}");
    assert_eq!(store.committed(), first);
    let after = store.write(vec![Write::Insert(job(3))]);
    assert_eq!(after, bad + 1);
    drop(store);
    // Neither the failed batch (job 2 rolled back with it) nor the one
    // after it is stored.
    let back = reopen(&t.db);
    assert_eq!(back.jobs, vec![job(1)]);
    assert_eq!(back.next_id, 2);
}

#[test]
fn a_bad_state_in_the_file_fails_open_naming_it() {
    let t = TempDb::new();
    write_all(&t.db, vec![vec![Write::Insert(job(1))]]);
    let Database::File(path) = &t.db else {
        unreachable!()
    };
    Connection::open(path)
        .unwrap()
        .execute("UPDATE jobs SET state = 'running'", [])
        .unwrap();
    let e = Store::open_with(&t.db, || {}).err().expect("open fails");
    assert!(
        e.contains("running") && e.contains(&path.display().to_string()),
        "{e}"
    );
}

/// Inserts and updates per second on disk (WAL, `synchronous=FULL`), one
/// write per batch as the brain makes them, with at most `in_flight`
/// batches not yet committed. `cargo test --release --example tasks
/// throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    for (in_flight, jobs) in [
        (1u64, 1000u64),
        (64, 50_000),
        (1024, 50_000),
        (u64::MAX, 50_000),
    ] {
        let t = TempDb::new();
        let (mut store, _, woken) = open(&t.db);
        let start = Instant::now();
        let mut last = 0;
        for id in 1..=jobs {
            let lease = Write::Update(JobUpdate {
                id,
                state: State::Leased,
                attempts: 1,
                updated_ms: 1,
                due_ms: 2,
                ready_seq: 3,
                result: None,
                error: None,
                lease_conn: Some("1:2".into()),
            });
            for w in [Write::Insert(job(id)), lease] {
                last = store.write(vec![w]);
                if last.saturating_sub(store.committed()) >= in_flight {
                    wait_committed(&store, &woken, last - in_flight + 1);
                }
            }
        }
        wait_committed(&store, &woken, last);
        let secs = start.elapsed().as_secs_f64();
        let writes = 2 * jobs;
        let bound = match in_flight {
            u64::MAX => "unbounded".to_string(),
            n => n.to_string(),
        };
        eprintln!(
            "in flight {bound:>9}: {writes} writes in {secs:.2} s = {:.0} writes/s",
            writes as f64 / secs
        );
        drop(store);
        assert_eq!(reopen(&t.db).jobs.len() as u64, jobs);
    }
}
