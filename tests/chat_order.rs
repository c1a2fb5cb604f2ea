//! Protocol 1.1's ordering, against the real chat with two workers, with
//! its SQLite store and on a cluster (the Redis store): a connection
//! receives `joined` before any `message` or `presence` of the room, and
//! misses no message stored after its join, while another worker floods the
//! room and a third connection keeps joining and leaving it.

mod chat_util;
mod common;

use chat_util::{ChatServer, Client, Redis};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Joins of the watched connection.
const ROUNDS: usize = 300;
/// Room messages the flooder keeps unacknowledged at once.
const IN_FLIGHT: usize = 16;
/// Room messages the flooder says as each join is sent, and again once its
/// `joined` is in: some race the join, some are surely stored after it. A
/// bounded flood: an endless one keeps the other worker's SQLite writer
/// from the lock (the joins starve) and grows the database by hundreds of
/// MB a minute.
const PER_HALF_ROUND: usize = 25;

/// Whether `v` is an event of `room` (not a reply).
fn room_event(v: &Value, room: &str) -> bool {
    (v["type"] == "message" || v["type"] == "presence") && v["room"] == room
}

/// Says into `room` as many messages as it is told through `go`, keeping
/// [`IN_FLIGHT`] unacknowledged; when `go` closes, waits for the last acks.
/// Returns every acknowledged id.
fn flood(mut c: Client, room: &'static str, go: Receiver<usize>) -> JoinHandle<Vec<i64>> {
    std::thread::spawn(move || {
        let (mut sent, mut acked, mut allowed) = (0usize, Vec::new(), 0usize);
        let mut open = true;
        loop {
            if sent == acked.len() && sent == allowed {
                // Nothing in flight: wait to be told more (or to stop).
                match go.recv() {
                    Ok(n) => allowed += n,
                    Err(_) => return acked,
                }
            }
            while open {
                match go.try_recv() {
                    Ok(n) => allowed += n,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            while sent - acked.len() < IN_FLIGHT && sent < allowed {
                c.send(json!({"type": "say", "room": room, "text": format!("m{sent}")}));
                sent += 1;
            }
            if sent == acked.len() {
                if !open && sent == allowed {
                    return acked;
                }
                continue;
            }
            let v = c.recv();
            match v["type"].as_str() {
                Some("ack") => acked.push(v["id"].as_i64().expect("ack id")),
                Some("message" | "presence") => {}
                _ => panic!("flooder: {v}"),
            }
        }
    })
}

/// Joins and leaves `room` until `stop`, so that presence events keep
/// coming; each `joined` must come before the room's events too.
fn churn(mut c: Client, room: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            c.join(room);
            c.send(json!({"type": "leave", "room": room}));
            c.wait_for("left", |v| v["type"] == "left");
            rounds += 1;
        }
        rounds
    })
}

/// One join of the watched connection: the highest id in `joined.history`,
/// and how often each room message arrived between `joined` and `left`.
struct Round {
    highest: i64,
    seen: BTreeMap<i64, usize>,
}

/// The flood can outrun a join that waits for the store (the other
/// worker's writer holds SQLite's lock, more so on a loaded machine), and
/// everything held meanwhile counts against `max_output_bytes`: past the
/// default 4 MiB the watched connection would be closed (1008), which is
/// the right thing for a server and not what this test is about.
const ROOMY: &str = "[server]\nmax_output_bytes = 268435456\n";

#[test]
fn joined_comes_first_and_nothing_after_it_is_missed_on_one_node() {
    joined_comes_first(&ChatServer::start("order", 2, ROOMY));
}

#[test]
fn joined_comes_first_and_nothing_after_it_is_missed_on_a_cluster() {
    let redis = Redis::start();
    let toml = format!(
        "{ROOMY}[cluster]\nredis_url = \"{}\"\nnode = \"a\"\n",
        redis.url()
    );
    joined_comes_first(&ChatServer::start("order-cluster", 2, &toml));
}

/// Over [`ROUNDS`] joins of a watched connection on worker 1, while a
/// flooder on worker 0 says into the room and a churner there joins and
/// leaves it: each `joined` comes before any event of the room, and every
/// message stored after the join arrives once.
fn joined_comes_first(server: &ChatServer) {
    let mut flooder = Client::login_on(server, "flood", 0);
    flooder.join("r");
    let churner = Client::login_on(server, "churn", 0);
    let mut watch = Client::login_on(server, "watch", 1);
    let stop = Arc::new(AtomicBool::new(false));
    let (go, told) = std::sync::mpsc::channel();
    let flooding = flood(flooder, "r", told);
    let churning = churn(churner, "r", stop.clone());

    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let r = format!("j{round}");
        go.send(PER_HALF_ROUND).expect("flooder");
        watch.send(json!({"type": "join", "room": "r", "ref": r}));
        // Nothing else is in flight on this connection: the next frame
        // must be the reply, not an event of the room.
        let joined = watch.recv();
        assert!(
            !room_event(&joined, "r"),
            "round {round}: {joined} before joined"
        );
        assert_eq!(joined["type"], "joined", "round {round}: {joined}");
        assert_eq!(joined["ref"], r.as_str());
        go.send(PER_HALF_ROUND).expect("flooder");
        let users = joined["users"].as_array().expect("users");
        assert!(users.contains(&json!("watch")) && users.contains(&json!("flood")));
        let highest = joined["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|m| m["id"].as_i64().expect("id"))
            .max()
            .unwrap_or(0);
        let mut seen = BTreeMap::new();
        let mut note = |v: &Value| {
            if v["type"] == "message" {
                *seen.entry(v["id"].as_i64().expect("id")).or_insert(0) += 1;
            }
        };
        // At least one message stored after the join, then leave.
        let first = watch.wait_for("a message stored after the join", |v| {
            v["type"] == "message" && v["id"].as_i64() > Some(highest)
        });
        note(&first);
        watch.send(json!({"type": "leave", "room": "r", "ref": r}));
        loop {
            let v = watch.recv();
            if v["type"] == "left" {
                break;
            }
            note(&v);
        }
        rounds.push(Round { highest, seen });
    }
    stop.store(true, Ordering::Relaxed);
    drop(go);
    let acked = flooding.join().expect("flooder");
    let churned = churning.join().expect("churner");
    assert!(churned > 0, "the churner made presence events");

    // Every message stored after a join (acked, with an id above the join's
    // history) up to the last one the round saw arrived, and exactly once.
    for (i, round) in rounds.iter().enumerate() {
        let last = *round.seen.keys().last().expect("a message");
        let expected: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|id| (round.highest + 1..=last).contains(id))
            .collect();
        let after: Vec<(i64, usize)> = round
            .seen
            .range(round.highest + 1..)
            .map(|(id, n)| (*id, *n))
            .collect();
        assert_eq!(
            after,
            expected.iter().map(|id| (*id, 1)).collect::<Vec<_>>(),
            "round {i}: after id {} (ids seen once each, as acked)",
            round.highest
        );
    }
}
