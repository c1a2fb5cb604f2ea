//! The chat on a cluster, over real sockets: two chat servers (nodes) with
//! one Redis serve the same rooms, history and ids; a killed node's users
//! leave; while Redis is down requests that need it are answered
//! `unavailable` and nothing acked is lost.

mod chat_util;
mod common;

use chat_util::{ChatServer, Client, Redis, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A `[cluster]` table for node `node` on `redis`.
fn cluster(redis: &Redis, node: &str, ttl_ms: u64) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\nnode = \"{node}\"\npresence_ttl_ms = {ttl_ms}\nprefix = \"t\"\n",
        redis.url()
    )
}

fn texts(messages: &Value) -> Vec<&str> {
    messages
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect()
}

/// Says `text` into `room` and returns the ack's id (the message's own
/// delivery, which comes just before, and other events are skipped).
#[track_caller]
fn say(c: &mut Client, room: &str, text: &str) -> i64 {
    c.send(json!({"type": "say", "room": room, "text": text, "ref": text}));
    let ack = c.wait_for("the ack", |v| v["ref"] == text);
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["id"].as_i64().expect("id")
}

#[test]
fn two_nodes_serve_the_same_rooms_and_a_killed_nodes_users_leave() {
    let redis = Redis::start();
    let a = ChatServer::start("node-a", 2, &cluster(&redis, "a", 1500));
    let mut b = ChatServer::start("node-b", 2, &cluster(&redis, "b", 1500));
    let mut al = Client::login(&a, "al");
    let mut bo = Client::login(&b, "bo");
    al.join("r");
    let joined = bo.join("r");
    assert!(joined["history"].as_array().expect("history").is_empty());
    let p = al.expect("presence");
    assert_eq!(
        (p["user"].as_str(), p["event"].as_str()),
        (Some("bo"), Some("join"))
    );

    // A message from either node reaches the other; ids grow across nodes.
    let first = say(&mut bo, "r", "from b");
    let m = al.expect("message");
    assert_eq!(
        (m["id"].as_i64(), m["from"].as_str()),
        (Some(first), Some("bo"))
    );
    let second = say(&mut al, "r", "from a");
    assert!(first > 0 && second > first, "{first} {second}");
    let m = bo.wait_for("al's message", |v| v["type"] == "message");
    assert_eq!(m["id"].as_i64(), Some(second));
    // Both nodes read the same history.
    for c in [&mut al, &mut bo] {
        c.send(json!({"type": "history", "room": "r"}));
        assert_eq!(
            texts(&c.expect("history")["messages"]),
            ["from b", "from a"]
        );
    }
    // A direct message to a user on the other node (once a knows bo is
    // online: the registry crosses through Redis).
    let deadline = Instant::now() + WAIT;
    let ack = loop {
        al.send(json!({"type": "say", "to": "bo", "text": "psst", "ref": "dm"}));
        let v = al.wait_for("the dm's answer", |v| v["ref"] == "dm");
        if v["type"] == "ack" {
            break v;
        }
        assert_eq!(v["code"], "unknown_user", "{v}");
        assert!(Instant::now() < deadline, "a never saw bo online");
    };
    let dm = bo.wait_for("the dm", |v| v["type"] == "message" && v["to"] == "bo");
    assert_eq!(dm["id"], ack["id"]);
    assert!(dm["id"].as_i64() > Some(second));

    // Node b dies at once (its workers first, so none of them says
    // goodbye): after its presence TTL, a's workers reap its rows and al
    // hears that bo left, once.
    let killed = Instant::now();
    for pid in b.worker_pids() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    b.kill_master();
    let left = al.wait_for("bo's leave", |v| v["type"] == "presence");
    assert_eq!(
        (left["user"].as_str(), left["event"].as_str()),
        (Some("bo"), Some("leave"))
    );
    // The unit's key was refreshed at most a third of the TTL (500 ms)
    // before the kill, give or take a late writer thread: so not before
    // ttl - ttl/3 - 200 ms.
    assert!(
        killed.elapsed() >= Duration::from_millis(800),
        "not before the TTL"
    );
    let others = al.sync();
    assert!(others.is_empty(), "announced once: {others:?}");
}

#[test]
fn while_redis_is_down_requests_are_unavailable_and_nothing_acked_is_lost() {
    let mut redis = Redis::start();
    let server = ChatServer::start("down", 2, &cluster(&redis, "a", 15_000));
    let mut al = Client::login(&server, "al");
    al.join("r");
    let kept = say(&mut al, "r", "kept");

    redis.kill();
    for (request, what) in [
        (
            json!({"type": "say", "room": "r", "text": "lost", "ref": "say"}),
            "say",
        ),
        (json!({"type": "join", "room": "q", "ref": "join"}), "join"),
        (
            json!({"type": "history", "room": "r", "ref": "history"}),
            "history",
        ),
    ] {
        al.send(request);
        let e = al.expect_error("unavailable");
        assert_eq!(e["ref"], what, "{e}");
    }
    // Still open; the lost message went nowhere; q was not joined.
    assert!(al.sync().is_empty());
    al.send(json!({"type": "say", "room": "q", "text": "x", "ref": "q"}));
    al.expect_error("not_in_room");

    // Redis comes back with its append-only file: the next request works,
    // and what was acked before is there.
    redis.restart();
    let after = say(&mut al, "r", "after");
    assert!(after > kept, "{kept} {after}");
    al.send(json!({"type": "history", "room": "r"}));
    assert_eq!(texts(&al.expect("history")["messages"]), ["kept", "after"]);
}
