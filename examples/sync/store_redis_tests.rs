//! Unit tests of the Redis store, each against a `redis-server` of its own
//! (`tests/common/redis.rs`: a free port, AOF with fsync always, killed on
//! drop): the scenarios every store passes, and what only a cluster has:
//! the feed, concurrent writers on two connections, Redis going away.

use super::*;
use crate::store::tests::{events_until, get, one, patch, put, settings, writer_of, KEEP};
use crate::store::{now_ms, Job};
use common::{poll_until, wait_until, RedisServer};
use foreman::ClusterSection;
use std::path::Path;
use std::time::Instant;

#[path = "../../tests/common/mod.rs"]
mod common;

/// How long any wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// The cluster config of node `node` on `redis`, keys under `prefix`.
fn cluster(redis: &RedisServer, node: &str, prefix: &str) -> ClusterConfig {
    let section = ClusterSection {
        redis_url: Some(redis.url()),
        node: Some(node.into()),
        presence_ttl_ms: None,
        prefix: Some(prefix.into()),
    };
    ClusterConfig::from_section(&section).unwrap().unwrap()
}

fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::new(&cluster(redis, "a", "t"), &settings()).unwrap()
}

/// A sync config on a cluster on `redis`.
fn config(redis: &RedisServer) -> crate::config::SyncConfig {
    let text = format!(
        "[sync]\nkeep_versions = {KEEP}\n[cluster]\nredis_url = {:?}\nnode = \"a\"\nprefix = \"t\"\n",
        redis.url()
    );
    crate::config::SyncConfig::from_toml_str(&text, Path::new("/nonexistent")).unwrap()
}

crate::store::tests::scenarios!(store(&RedisServer::start()));

#[test]
fn the_epoch_is_set_once_per_prefix() {
    let redis = RedisServer::start();
    let epoch = store(&redis).epoch().unwrap();
    assert!((1..=64).contains(&epoch.len()), "{epoch}");
    assert_eq!(store(&redis).epoch().unwrap(), epoch, "another store");
    let mut other = RedisStore::new(&cluster(&redis, "b", "u"), &settings()).unwrap();
    assert_ne!(other.epoch().unwrap(), epoch, "another prefix");
}

#[test]
fn two_connections_ack_once_per_version() {
    let redis = RedisServer::start();
    crate::store::tests::scenario_two_writers_on_one_key(store(&redis), store(&redis));
}

/// The events are job `id`'s `Err` answer, nothing else.
#[track_caller]
fn only_failed(events: &[Event], id: u64) {
    match events {
        [Event::Done {
            id: i,
            result: Err(_),
        }] if *i == id => {}
        other => panic!("{other:?}"),
    }
}

/// `events` holds the failure of job `id`, and nothing else of it.
#[track_caller]
fn failed(events: &[Event], id: u64) {
    let answers: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Done { id: i, result } if *i == id => Some(result.is_err()),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [true], "{events:?}");
}

fn opened(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Opened { .. }))
}

/// Whether the feed is subscribed (Redis counts its subscriber).
fn subscribed(redis: &RedisServer) -> bool {
    let reply = redis.cmd(&["PUBSUB", "NUMSUB", "t:sync:changes"]);
    reply.items().get(1).and_then(|n| n.int()) == Some(1)
}

/// Every change, written on two other connections to several keys, comes
/// through the feed once, per key in version order.
#[test]
fn the_feed_delivers_every_change_in_commit_order() {
    let redis = RedisServer::start();
    let (writer, woken) = writer_of(&config(&redis));
    let epoch = match events_until(&writer, &woken, "opened", opened).as_slice() {
        [Event::Opened { epoch }] => epoch.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(store(&redis).epoch().unwrap(), epoch);
    wait_until(WAIT, "the feed subscribed", || subscribed(&redis));
    let (keys, per_key) = (["x", "y", "z"], 30u64);
    let threads: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|t| {
            let mut s = store(&redis);
            std::thread::spawn(move || {
                // Each thread writes every key, reading its version first.
                let mut acked = 0;
                while acked < per_key / 2 * keys.len() as u64 {
                    let key = keys[acked as usize % keys.len()];
                    let base = get(&mut s, key).version;
                    let w = patch(
                        key,
                        base,
                        serde_json::json!({ "t": t }),
                        &format!("{t}-{key}-{base}"),
                    );
                    if let Outcome::Decided {
                        decided: Decided::Ack { .. },
                        ..
                    } = one(&mut s, w, now_ms())
                    {
                        acked += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = per_key as usize * keys.len();
    let changes = |events: &[Event]| -> Vec<Change> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Change(c) if c.key != "probe" => Some(c.clone()),
                _ => None,
            })
            .collect()
    };
    let events = events_until(&writer, &woken, "every change", |e| {
        changes(e).len() >= total
    });
    let changes = changes(&events);
    assert_eq!(changes.len(), total, "each once");
    let mut reader = store(&redis);
    for key in keys {
        let seen: Vec<u64> = changes
            .iter()
            .filter(|c| c.key == key)
            .map(|c| c.version)
            .collect();
        assert_eq!(seen, (1..=per_key).collect::<Vec<_>>(), "{key}");
        // As stored.
        let last = changes.iter().rfind(|c| c.key == key).unwrap();
        assert_eq!(get(&mut reader, key).value, last.value);
    }
    assert!(
        !events.iter().any(|e| matches!(e, Event::FeedGap)),
        "{events:?}"
    );
}

#[test]
fn a_killed_redis_fails_jobs_and_the_feed_reports_the_gap() {
    let mut redis = RedisServer::start();
    let (writer, woken) = writer_of(&config(&redis));
    events_until(&writer, &woken, "opened", opened);
    let job = |id, base| Job {
        id,
        work: Work::Write(put("k", base, "1", &format!("o{base}"))),
    };
    assert!(writer.submit(job(1, 0)));
    events_until(&writer, &woken, "the first write", |e| {
        e.iter().any(|e| matches!(e, Event::Done { id: 1, .. }))
    });
    redis.kill();
    assert!(writer.submit(job(2, 1)));
    assert!(writer.submit(Job {
        id: 3,
        work: Work::Get("k".into())
    }));
    let events = events_until(&writer, &woken, "errors", |e| {
        e.iter()
            .filter(|e| matches!(e, Event::Done { result: Err(_), .. }))
            .count()
            == 2
    });
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Done { result: Ok(_), .. })),
        "{events:?}"
    );
    assert_eq!(writer.pending(), 0);
    redis.restart();
    // Resubscribed: the gap is reported, then writes and changes flow.
    events_until(&writer, &woken, "the feed gap", |e| {
        e.iter().any(|e| matches!(e, Event::FeedGap))
    });
    assert!(subscribed(&redis), "the gap comes once subscribed");
    let events = poll_until(WAIT, "a write after the restart", || {
        assert!(writer.submit(job(4, 1)));
        let e = events_until(&writer, &woken, "an answer", |e| {
            e.iter().any(|e| matches!(e, Event::Done { id: 4, .. }))
        });
        e.iter()
            .any(|e| {
                matches!(
                    e,
                    Event::Done {
                        id: 4,
                        result: Ok(_)
                    }
                )
            })
            .then_some(e)
    });
    let mut events = events;
    if !events
        .iter()
        .any(|e| matches!(e, Event::Change(c) if c.version == 2))
    {
        events.extend(events_until(&writer, &woken, "its change", |e| {
            e.iter()
                .any(|e| matches!(e, Event::Change(c) if c.version == 2))
        }));
    }
    wait_until(WAIT, "the version", || {
        get(&mut store(&redis), "k").version == 2
    });
}

/// Many patches of one key in one batch, each on the version the one
/// before makes: one is decided a round, and all pass.
#[test]
fn a_batch_of_many_patches_of_one_key_passes() {
    let redis = RedisServer::start();
    let n = 3 * ROUNDS as u64;
    let writes: Vec<Write> = (0..n)
        .map(|v| patch("k", v, serde_json::json!({ "n": v }), &format!("o{v}")))
        .collect();
    let outcomes = store(&redis).write(&writes, now_ms()).unwrap();
    let versions: Vec<u64> = outcomes.iter().map(crate::store::tests::acked).collect();
    assert_eq!(versions, (1..=n).collect::<Vec<_>>());
}

/// Redis down when the worker starts: writes are answered `Err` at once,
/// and the store opens once Redis is up.
#[test]
fn a_store_whose_redis_is_down_at_start_opens_once_it_is_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let (writer, woken) = writer_of(&config(&redis));
    assert!(writer.submit(Job {
        id: 1,
        work: Work::Write(put("k", 0, "1", "o"))
    }));
    let events = events_until(&writer, &woken, "an answer", |e| !e.is_empty());
    only_failed(&events, 1);
    redis.restart();
    let events = events_until(&writer, &woken, "opened", opened);
    let epoch = store(&redis).epoch().unwrap();
    assert!(events.contains(&Event::Opened { epoch }), "{events:?}");
}

/// A hung Redis (SIGSTOP): a write is answered `Err` within the timeouts;
/// sent again with the same op once Redis is back, it is applied once
/// (whether or not the first try reached Redis).
#[test]
fn a_hung_redis_times_out_and_a_resent_write_applies_once() {
    let mut redis = RedisServer::start();
    let (writer, woken) = writer_of(&config(&redis));
    events_until(&writer, &woken, "opened", opened);
    redis.stop();
    let start = Instant::now();
    let job = |id| Job {
        id,
        work: Work::Write(put("k", 0, "1", "o")),
    };
    assert!(writer.submit(job(1)));
    let events = events_until(&writer, &woken, "an answer", |e| !e.is_empty());
    only_failed(&events, 1);
    // Ended by the read timeout (the answer came at all: never hung).
    assert!(start.elapsed() >= TIMEOUT, "{:?}", start.elapsed());
    redis.cont();
    assert!(writer.submit(job(2)));
    let events = events_until(&writer, &woken, "the resend", |e| {
        e.iter().any(|e| matches!(e, Event::Done { id: 2, .. }))
    });
    let outcome = events.iter().find_map(|e| match e {
        Event::Done {
            id: 2,
            result: Ok(Answer::Write(o)),
        } => Some(o.clone()),
        _ => None,
    });
    match outcome {
        Some(Outcome::Repeat(Decided::Ack { version: 1, .. })) => {}
        Some(o) => assert_eq!(crate::store::tests::acked(&o), 1),
        None => panic!("{events:?}"),
    }
    assert_eq!(get(&mut store(&redis), "k").version, 1);
}

/// The epoch of the first `Opened` in `events`.
fn epoch_of(events: &[Event]) -> Option<String> {
    events.iter().find_map(|e| match e {
        Event::Opened { epoch } => Some(epoch.clone()),
        _ => None,
    })
}

/// Redis emptied under a running store (FLUSHALL, or a restart without its
/// data): nothing is written or read under the old epoch; the store says a
/// new one, and versions start again under it.
#[test]
fn a_history_lost_in_redis_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let (writer, woken) = writer_of(&config(&redis));
    let first = epoch_of(&events_until(&writer, &woken, "opened", opened)).unwrap();
    let submit = |id, work| assert!(writer.submit(Job { id, work }));
    submit(1, Work::Write(put("k", 0, "1", "o1")));
    let done = |id| {
        move |e: &[Event]| {
            e.iter()
                .any(|e| matches!(e, Event::Done { id: i, .. } if *i == id))
        }
    };
    events_until(&writer, &woken, "the first write", done(1));
    redis.cmd(&["FLUSHALL"]);

    // A read alone finds it: the new epoch is said first, then the read is
    // answered under it.
    submit(2, Work::Get("k".into()));
    let events = events_until(&writer, &woken, "the read", done(2));
    let second = epoch_of(&events).unwrap();
    assert_ne!(second, first);
    let read = events
        .iter()
        .position(|e| matches!(e, Event::Done { id: 2, .. }));
    let said = events
        .iter()
        .position(|e| matches!(e, Event::Opened { .. }));
    assert!(said < read, "{events:?}");
    assert!(
        matches!(&events[read.unwrap()], Event::Done { result: Ok(Answer::Doc(d)), .. } if d.version == 0),
        "{events:?}"
    );

    // A write finds it too, after another flush; then writes go on under
    // the newest epoch, from version 1.
    redis.cmd(&["FLUSHALL"]);
    submit(3, Work::Write(put("k", 0, "2", "o2")));
    let events = events_until(&writer, &woken, "a new epoch after a write", opened);
    failed(&events, 3);
    let third = epoch_of(&events).unwrap();
    assert!(third != second && third != first);
    submit(4, Work::Write(put("k", 0, "3", "o3")));
    let events = events_until(&writer, &woken, "the write after", done(4));
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Done {
                id: 4,
                result: Ok(Answer::Write(Outcome::Decided {
                    decided: Decided::Ack { version: 1, .. },
                    ..
                }))
            }
        )),
        "{events:?}"
    );
    assert_eq!(store(&redis).epoch().unwrap(), third);
}
