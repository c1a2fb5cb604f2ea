//! Unit tests of the store: ids, paging, presence decisions, several writers.
//! The helpers that build jobs and read results, and the scenarios both
//! stores must pass (`scenario_*`, over any [`Backend`]), serve the Redis
//! store's tests too.

use super::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh database path in a directory of its own.
fn temp_db() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chat-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("chat.db")
}

fn open(path: &Path) -> Store {
    Store::open(path, Duration::from_secs(5)).unwrap()
}

pub(crate) fn conn(text: &str) -> ConnId {
    text.parse().unwrap()
}

pub(crate) fn say(c: &str, from: &str, target: Target, text: &str) -> Job {
    Job::Say {
        conn: conn(c),
        reference: None,
        from: from.into(),
        target,
        text: text.into(),
    }
}

pub(crate) fn room(r: &str) -> Target {
    Target::Room(r.into())
}

pub(crate) fn ids(done: &[Done]) -> Vec<i64> {
    done.iter()
        .filter_map(|d| match d {
            Done::Said { message, .. } => Some(message.id),
            Done::History { messages, .. } => Some(messages.iter().map(|m| m.id).sum()),
            _ => None,
        })
        .collect()
}

pub(crate) fn history(
    store: &mut impl Backend,
    user: &str,
    target: Target,
    before: Option<i64>,
    limit: u32,
) -> Vec<StoredMessage> {
    let done = store.run(&[Job::History {
        conn: conn("0.0.1"),
        reference: None,
        user: user.into(),
        target,
        before,
        limit,
    }]);
    match done.as_slice() {
        [Done::History { messages, .. }] => messages.clone(),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn join(c: &str, user: &str, r: &str) -> Job {
    Job::Join {
        conn: conn(c),
        reference: None,
        user: user.into(),
        room: r.into(),
        history: 5,
    }
}

pub(crate) fn leave(c: &str, user: &str, r: &str) -> Job {
    Job::Leave {
        conn: conn(c),
        reference: None,
        user: user.into(),
        room: r.into(),
    }
}

pub(crate) fn first(done: &[Done]) -> Vec<bool> {
    done.iter()
        .filter_map(|d| match d {
            Done::Joined { first, .. } => Some(*first),
            Done::Left { last, .. } => Some(*last),
            _ => None,
        })
        .collect()
}

#[test]
fn a_restarted_worker_reaps_its_dead_connections() {
    let mut s = open(&temp_db());
    s.run(&[
        join("1.1.1", "al", "r"),
        join("0.1.2", "al", "r"),
        join("1.2.3", "bo", "r"),
        join("3.2.3", "cy", "r"),
    ]);
    // Slot 1 restarts in a server of 2 slots: bo and cy are gone, al stays
    // through its connection on slot 0.
    let done = s.run(&[Job::Reap {
        worker: 1,
        count: 2,
    }]);
    let mut gone: Vec<_> = done
        .iter()
        .map(|d| match d {
            Done::Gone { user, .. } => user.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    gone.sort();
    assert_eq!(gone, ["bo", "cy"]);
    assert_eq!(first(&s.run(&[join("1.5.9", "bo", "r")])), [true]);
}

#[test]
fn several_writers_share_one_file() {
    let path = temp_db();
    open(&path);
    let threads: Vec<_> = (0..3)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = open(&path);
                let mut ids = Vec::new();
                for batch in 0..20 {
                    let jobs: Vec<Job> = (0..5)
                        .map(|i| {
                            say(
                                &format!("{w}.1.1"),
                                "al",
                                room("r"),
                                &format!("{w}/{batch}/{i}"),
                            )
                        })
                        .collect();
                    ids.extend(super::tests::ids(&s.run(&jobs)));
                }
                ids
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (1..=300).collect::<Vec<_>>());
}

#[test]
fn the_writer_thread_reports_after_commit() {
    let path = temp_db();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opened = path.clone();
    let writer = Writer::spawn(
        move || Store::open(&opened, Duration::from_secs(5)),
        64,
        "test-writer".into(),
        move || {
            let _ = tx.send(());
        },
    )
    .unwrap();
    for i in 0..100 {
        assert!(writer.submit(say("0.1.1", "al", room("r"), &i.to_string())));
    }
    let mut got = Vec::new();
    while got.len() < 100 {
        rx.recv_timeout(Duration::from_secs(10)).expect("woken");
        for done in writer.ready() {
            // Committed: another connection sees it already.
            if let Done::Said { message, .. } = &done {
                assert!(max_id(&open(&path)).unwrap() >= message.id);
            }
            got.push(done);
        }
    }
    assert_eq!(ids(&got), (1..=100).collect::<Vec<_>>());
}

#[test]
fn pending_counts_jobs_until_their_batch_is_done() {
    let path = temp_db();
    drop(open(&path));
    let lock = Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opened = path.clone();
    let writer = Writer::spawn(
        move || Store::open(&opened, Duration::from_secs(10)),
        2,
        "test-writer".into(),
        move || {
            let _ = tx.send(());
        },
    )
    .unwrap();
    for i in 0..5 {
        assert!(writer.submit(say("0.1.1", "al", room("r"), &i.to_string())));
    }
    // The database is locked: nothing can finish.
    assert_eq!(writer.pending(), 5);
    lock.execute_batch("ROLLBACK").unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        rx.recv_timeout(Duration::from_secs(10)).expect("woken");
        got.extend(writer.ready());
    }
    assert_eq!(ids(&got), (1..=5).collect::<Vec<_>>());
    assert_eq!(writer.pending(), 0);
}

#[test]
fn a_locked_out_batch_answers_busy_and_keeps_what_nobody_can_send_again() {
    let path = temp_db();
    let mut s = open(&path);
    s.run(&[Job::Join {
        conn: conn("0.1.2"),
        reference: None,
        user: "bo".into(),
        room: "r".into(),
        history: 0,
    }]);
    let lock = Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opened = path.clone();
    let writer = Writer::spawn(
        move || Store::open(&opened, Duration::from_millis(100)),
        16,
        "test-writer".into(),
        move || {
            let _ = tx.send(());
        },
    )
    .unwrap();
    let hello = say("0.1.1", "al", room("r"), "hello");
    assert!(writer.submit(hello.clone()));
    let closed = Job::Closed {
        conn: conn("0.1.2"),
        user: "bo".into(),
    };
    assert!(writer.submit(closed));
    rx.recv_timeout(Duration::from_secs(10)).expect("woken");
    let first: Vec<Done> = writer.ready().collect();
    assert_eq!(
        first,
        [Done::Busy(hello)],
        "the say is answered, not retried"
    );
    assert_eq!(writer.pending(), 1, "the close is kept for the next try");
    lock.execute_batch("ROLLBACK").unwrap();
    let mut got = Vec::new();
    while writer.pending() > 0 || got.is_empty() {
        rx.recv_timeout(Duration::from_secs(10)).expect("woken");
        got.extend(writer.ready());
    }
    assert_eq!(
        got,
        [Done::Gone {
            user: "bo".into(),
            room: "r".into()
        }]
    );
}

/// `user@room` of every [`Done::Gone`], sorted; anything else fails.
pub(crate) fn gone(done: &[Done]) -> Vec<String> {
    let mut gone: Vec<String> = done
        .iter()
        .map(|d| match d {
            Done::Gone { user, room } => format!("{user}@{room}"),
            other => panic!("{other:?}"),
        })
        .collect();
    gone.sort();
    gone
}

pub(crate) fn message_ids(messages: &[StoredMessage]) -> Vec<i64> {
    messages.iter().map(|m| m.id).collect()
}

/// Ids grow across two writers (`a` and `b`: two workers, or two nodes)
/// and history pages backwards, newest `limit` first, oldest first.
pub(crate) fn scenario_ids_and_paging(a: &mut impl Backend, b: &mut impl Backend) {
    let jobs: Vec<Job> = (0..10)
        .map(|i| say("0.1.1", "al", room("r"), &format!("m{i}")))
        .collect();
    assert_eq!(ids(&a.run(&jobs)), (1..=10).collect::<Vec<_>>());
    // The other writer takes the next id.
    assert_eq!(ids(&b.run(&[say("0.1.1", "al", room("other"), "x")])), [11]);
    let newest = history(a, "al", room("r"), None, 4);
    assert_eq!(message_ids(&newest), [7, 8, 9, 10]);
    assert_eq!(newest[0].text, "m6");
    assert_eq!(newest[0].from, "al");
    assert_eq!(newest[0].target, room("r"));
    assert!(newest[0].time > 0);
    assert_eq!(
        message_ids(&history(a, "al", room("r"), Some(7), 4)),
        [3, 4, 5, 6]
    );
    assert_eq!(
        message_ids(&history(a, "al", room("r"), Some(3), 4)),
        [1, 2]
    );
    assert!(history(a, "al", room("r"), Some(1), 4).is_empty());
    assert_eq!(message_ids(&history(b, "x", room("other"), None, 50)), [11]);
}

/// Both sides of a direct conversation see the same messages, text kept
/// exactly.
pub(crate) fn scenario_direct_conversations(s: &mut impl Backend) {
    let text = "hi bo: \"quoted\", \u{e9}, and a\nnewline";
    s.run(&[
        say("0.1.1", "al", Target::User("bo".into()), text),
        say("0.2.2", "bo", Target::User("al".into()), "hi al"),
        say("0.3.3", "cy", Target::User("al".into()), "hi from cy"),
    ]);
    let al_bo = history(s, "al", Target::User("bo".into()), None, 50);
    let bo_al = history(s, "bo", Target::User("al".into()), None, 50);
    assert_eq!(al_bo, bo_al);
    assert_eq!(al_bo.len(), 2);
    assert_eq!(al_bo[0].target, Target::User("bo".into()));
    assert_eq!(al_bo[0].text, text);
    assert_eq!(al_bo[1].from, "bo");
    let al_cy = history(s, "al", Target::User("cy".into()), None, 50);
    assert_eq!(message_ids(&al_cy), [3]);
}

/// Presence is per user, not per connection: al has a connection on `a`
/// (`0.1.1`) and one on `b` (`al_on_b`), bo one on `a`.
pub(crate) fn scenario_presence_per_user(
    a: &mut impl Backend,
    b: &mut impl Backend,
    al_on_b: &str,
) {
    assert_eq!(first(&a.run(&[join("0.1.1", "al", "r")])), [true]);
    assert_eq!(first(&b.run(&[join(al_on_b, "al", "r")])), [false]);
    assert_eq!(first(&a.run(&[join("0.2.3", "bo", "r")])), [true]);
    // Joining twice is not a new first.
    assert_eq!(first(&a.run(&[join("0.1.1", "al", "r")])), [false]);
    assert_eq!(first(&a.run(&[leave("0.1.1", "al", "r")])), [false]);
    // Leaving a room one is not in is not a last.
    assert_eq!(first(&a.run(&[leave("0.1.1", "al", "r")])), [false]);
    assert_eq!(first(&b.run(&[leave(al_on_b, "al", "r")])), [true]);
    // Closing counts as leaving every room.
    a.run(&[join("0.2.3", "bo", "q")]);
    let done = a.run(&[Job::Closed {
        conn: conn("0.2.3"),
        user: "bo".into(),
    }]);
    assert_eq!(gone(&done), ["bo@q", "bo@r"]);
}

/// `joined` carries the room's last `history` messages (5 here).
pub(crate) fn scenario_joined_carries_last_messages(s: &mut impl Backend) {
    let jobs: Vec<Job> = (0..8)
        .map(|i| say("0.1.1", "al", room("r"), &i.to_string()))
        .collect();
    s.run(&jobs);
    match s.run(&[join("0.1.1", "al", "r")]).as_slice() {
        [Done::Joined { history, first, .. }] => {
            assert!(first);
            assert_eq!(message_ids(history), [4, 5, 6, 7, 8]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ids_grow_and_history_pages_backwards() {
    let path = temp_db();
    let (mut a, mut b) = (open(&path), open(&path));
    scenario_ids_and_paging(&mut a, &mut b);
    assert_eq!(max_id(&a).unwrap(), 11);
}

#[test]
fn direct_conversations_are_shared_by_both_sides() {
    scenario_direct_conversations(&mut open(&temp_db()));
}

#[test]
fn presence_is_decided_per_user_not_per_connection() {
    let path = temp_db();
    let (mut a, mut b) = (open(&path), open(&path));
    scenario_presence_per_user(&mut a, &mut b, "1.1.2");
}

#[test]
fn joined_carries_the_rooms_last_messages() {
    scenario_joined_carries_last_messages(&mut open(&temp_db()));
}

#[test]
fn the_outbox_reads_every_message_in_id_order_after_its_cursor() {
    let path = temp_db();
    let mut s = open(&path);
    let jobs = vec![
        say("0.1.1", "al", room("r"), "one"),
        say("0.1.1", "al", Target::User("bo".into()), "two"),
        say("0.1.1", "al", room("s"), "three"),
    ];
    s.run(&jobs);
    assert_eq!(s.outbox_cursor("amqp").unwrap(), 0, "never saved");
    let all = s.messages_after(0, 10).unwrap();
    let texts: Vec<&str> = all.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    assert_eq!(all[1].target, Target::User("bo".into()));
    s.save_outbox_cursor("amqp", all[1].id).unwrap();
    s.save_outbox_cursor("amqp", all[0].id).unwrap();
    let other = open(&path);
    let cursor = other.outbox_cursor("amqp").unwrap();
    assert_eq!(cursor, all[1].id, "kept, and never moved back");
    let rest = other.messages_after(cursor, 10).unwrap();
    assert_eq!(rest, all[2..].to_vec());
    assert_eq!(other.messages_after(0, 1).unwrap(), all[..1].to_vec());
}
