//! Unit tests of the Redis store, each against a `redis-server` of its own
//! (`tests/common/redis.rs`: a free port, AOF with fsync always, killed on
//! drop): the scenarios every store passes, and what only a cluster has:
//! the feed, concurrent writers on two connections, Redis going away.

use super::*;
use crate::store::tests::{
    get, one, patch, put, scenario_big_integers, scenario_list, scenario_one_key_in_one_batch,
    scenario_op_expiry, scenario_outcomes, scenario_replay_boundaries, settings, write, KEEP,
};
use crate::store::{now_ms, Job, Writer};
use common::{poll_until, wait_until, RedisServer};
use foreman::ClusterSection;
use std::path::Path;
use std::time::Instant;

#[allow(dead_code, unused_imports)]
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

#[test]
fn every_outcome_of_a_write() {
    scenario_outcomes(&mut store(&RedisServer::start()));
}

#[test]
fn writes_of_one_key_in_one_batch_see_each_other() {
    scenario_one_key_in_one_batch(&mut store(&RedisServer::start()));
}

#[test]
fn pruning_and_replay_boundaries() {
    scenario_replay_boundaries(&mut store(&RedisServer::start()));
}

#[test]
fn list_present_keys_in_byte_order() {
    scenario_list(&mut store(&RedisServer::start()));
}

#[test]
fn op_memory_expires_on_the_given_clock() {
    scenario_op_expiry(&mut store(&RedisServer::start()));
}

#[test]
fn big_integers_survive_a_patch() {
    scenario_big_integers(&mut store(&RedisServer::start()));
}

#[test]
fn the_epoch_is_set_once_per_prefix() {
    let redis = RedisServer::start();
    let epoch = store(&redis).epoch().unwrap();
    assert!((1..=64).contains(&epoch.len()), "{epoch}");
    assert_eq!(store(&redis).epoch().unwrap(), epoch, "another store");
    let mut other = RedisStore::new(&cluster(&redis, "b", "u"), &settings()).unwrap();
    assert_ne!(other.epoch().unwrap(), epoch, "another prefix");
}

/// Two connections write one key, each on the version it last saw, both
/// at once, round after round: exactly one ack per version, the other a
/// conflict at that version.
#[test]
fn concurrent_writes_on_one_base_ack_once_per_version() {
    let redis = RedisServer::start();
    let rounds = 50;
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = ["c1", "c2"]
        .into_iter()
        .map(|client| {
            let (mut s, barrier) = (store(&redis), barrier.clone());
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for base in 0..rounds {
                    barrier.wait();
                    let w = write(
                        WriteKind::Put(base.to_string()),
                        "k",
                        base,
                        client,
                        &format!("o{base}"),
                    );
                    match one(&mut s, w, now_ms()) {
                        Outcome::Decided {
                            decided: Decided::Ack { version, .. },
                            ..
                        } => {
                            assert_eq!(version, base + 1);
                            acks.push(version);
                        }
                        Outcome::Decided {
                            decided: Decided::Conflict { version, .. },
                            ..
                        } => {
                            assert_eq!(version, base + 1, "the other's ack")
                        }
                        other => panic!("{other:?}"),
                    }
                }
                acks
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (1..=rounds).collect::<Vec<_>>());
}

/// A writer on the cluster and what wakes it.
fn writer(redis: &RedisServer) -> (Writer, crossbeam_channel::Receiver<()>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer = Writer::spawn(&config(redis), 0, move || {
        let _ = tx.send(());
    })
    .unwrap();
    (writer, rx)
}

/// Events until `until` holds of all received so far.
fn events_until(
    writer: &Writer,
    woken: &crossbeam_channel::Receiver<()>,
    what: &str,
    mut until: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !until(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            woken.recv_timeout(left).is_ok(),
            "waiting for {what}: {got:?}"
        );
        got.extend(writer.ready());
    }
    got
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
    let (writer, woken) = writer(&redis);
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
fn a_killed_redis_fails_jobs_promptly_and_the_feed_reports_the_gap() {
    let mut redis = RedisServer::start();
    let (writer, woken) = writer(&redis);
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
    let start = Instant::now();
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
    assert!(start.elapsed() < TIMEOUT * 2, "{:?}", start.elapsed());
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
    let (writer, woken) = writer(&redis);
    assert!(writer.submit(Job {
        id: 1,
        work: Work::Write(put("k", 0, "1", "o"))
    }));
    let events = events_until(&writer, &woken, "an answer", |e| !e.is_empty());
    assert!(
        matches!(
            &events[..],
            [Event::Done {
                id: 1,
                result: Err(_)
            }]
        ),
        "{events:?}"
    );
    redis.restart();
    let events = events_until(&writer, &woken, "opened", opened);
    let epoch = store(&redis).epoch().unwrap();
    assert!(events.contains(&Event::Opened { epoch }), "{events:?}");
}
