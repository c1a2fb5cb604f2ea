//! A cluster's Redis goes away (issue 11): two nodes (`count = 2` each) and
//! one Redis of the test's own, which is
//! - SIGKILLed and restarted on the same port (AOF on, fsync always): both
//!   nodes reconnect and resubscribe without a restart of their own; a chat
//!   `say` during the outage gets `unavailable`; every message acked before
//!   the kill is in history afterwards; after the restart messages flow both
//!   ways again, and registry changes made during the outage reach the other
//!   node;
//! - SIGSTOPped for 5 s (a hung broker, not a dead one): no worker loop
//!   blocks (local requests and registry queries keep answering within a
//!   deadline far below 5 s), and the cluster recovers after SIGCONT.

mod chat_util;
mod common;

use chat_util::scenarios::{settle, users_until};
use chat_util::{Client, Deployment, Event, WAIT};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long Redis stays SIGSTOPped.
const HUNG: Duration = Duration::from_secs(5);

/// How long a request that needs no Redis may take while Redis hangs: far
/// below [`HUNG`], so a loop blocked on Redis cannot pass.
const LOOP_DEADLINE: Duration = Duration::from_millis(1000);

/// How long the nodes may take to find Redis again after it is back.
const RECOVER: Duration = Duration::from_secs(10);

/// The helper itself: a fresh Redis answers; SIGKILL silences it; a restart
/// on the same port replays the AOF (a key written before the kill is back);
/// SIGSTOP hangs it (connections open, no answer) and SIGCONT revives it;
/// drop kills it.
#[test]
fn the_redis_helper_kills_restarts_stops_and_continues() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert!(
        redis.url().ends_with(&format!(":{port}")),
        "{}",
        redis.url()
    );
    assert_eq!(
        redis.cmd(&["SET", "k", "before the kill"]),
        Resp::Simple("OK".into())
    );
    let aof = redis.cmd(&["CONFIG", "GET", "appendfsync"]);
    assert_eq!(
        aof.items().get(1).and_then(Resp::text).as_deref(),
        Some("always")
    );

    redis.kill();
    assert!(
        !redis.ping(Duration::from_millis(200)),
        "killed, yet it answers"
    );
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(
        redis.cmd(&["GET", "k"]).text().as_deref(),
        Some("before the kill"),
        "the AOF replays on restart"
    );

    // A connection made before the stop stays open but gets no answer.
    let mut held = RedisClient::connect(redis.addr(), Duration::from_millis(300)).expect("connect");
    redis.stop();
    assert!(held.cmd(&["PING"]).is_err(), "a stopped Redis answered");
    assert!(!redis.ping(Duration::from_millis(200)));
    redis.cont();
    wait_until(REDIS_START, "PONG after SIGCONT", || {
        redis.ping(Duration::from_millis(200))
    });

    let pid = redis.pid().expect("running");
    drop(redis);
    assert!(!is_alive(pid), "redis-server {pid} outlived its helper");
}

/// Peer `from` sends probes to `to` (on the other node) until one arrives,
/// then a last message: everything `to` got up to it is probes (late ones
/// allowed, since an outage may have dropped or delayed them) and the last
/// message, once.
#[track_caller]
fn wait_sends_flow(from: &mut Peer, to: &mut Peer, tag: &str) {
    let deadline = Instant::now() + RECOVER;
    let mut k = 0;
    'flowing: loop {
        assert!(
            Instant::now() < deadline,
            "no send from {} reached {} within {RECOVER:?}",
            from.conn,
            to.conn
        );
        from.call(json!({"op": "send_to", "to": to.conn, "data": format!("{tag}-probe-{k}")}));
        k += 1;
        let wait = Instant::now() + Duration::from_millis(100);
        if let Some(p) = to.push(wait.saturating_duration_since(Instant::now())) {
            assert!(
                p.starts_with(&format!("{tag}-probe-")),
                "{}: got {p:?}",
                to.conn
            );
            break 'flowing;
        }
    }
    let last = format!("{tag}-last");
    from.call(json!({"op": "send_to", "to": to.conn, "data": last}));
    loop {
        let p = to.expect_push();
        if p == last {
            break;
        }
        assert!(
            p.starts_with(&format!("{tag}-probe-")),
            "{}: got {p:?}",
            to.conn
        );
    }
}

/// One peer on each worker of each node, and the truth with each bound to a
/// uid and in a group of its node, converged on every worker.
fn peers_and_truth(nodes: &Nodes) -> (Vec<Peer>, Vec<usize>, Truth) {
    let mut peers: Vec<Peer> = (0..2)
        .flat_map(|node| (0..2).map(move |w| (node, w)))
        .map(|(node, w)| nodes.peer_on(node, w))
        .collect();
    let mut truth = Truth::of(&peers);
    for (i, p) in peers.iter_mut().enumerate() {
        let group = format!("node{}", i / 2);
        p.call(json!({"op": "bind", "uid": format!("u{i}")}));
        p.call(json!({"op": "join", "group": group}));
        truth.bind(&p.conn, &format!("u{i}"));
        truth.join(&p.conn, &group);
    }
    let reps: Vec<usize> = (0..peers.len()).collect();
    converge(&mut peers, &reps, &truth, CLUSTER_CONVERGE);
    (peers, reps, truth)
}

/// Every node's worker pids (none may be replaced by an outage).
fn worker_pids(nodes: &Nodes) -> Vec<Vec<i32>> {
    (0..2).map(|i| nodes.node(i).workers()).collect()
}

/// Redis SIGKILLed, then restarted on its port: the nodes' workers stay; the
/// registry changes made meanwhile reach the other node; sends flow both
/// ways again.
#[test]
fn testbed_nodes_reconnect_after_redis_is_killed_and_restarted() {
    let mut nodes = Nodes::testbed(2);
    let (mut peers, reps, mut truth) = peers_and_truth(&nodes);
    let pids = worker_pids(&nodes);

    nodes.redis.kill();
    // During the outage: local requests answer; node b's peer 3 binds a new
    // uid and joins a group; node a's peer 1 leaves its group.
    for p in &mut peers {
        p.call(json!({"op": "whoami"}));
    }
    peers[3].call(json!({"op": "bind", "uid": "during"}));
    peers[3].call(json!({"op": "join", "group": "late"}));
    peers[1].call(json!({"op": "leave", "group": "node0"}));
    truth.bind(&peers[3].conn, "during");
    truth.join(&peers[3].conn, "late");
    truth.leave(&peers[1].conn, "node0");

    nodes.redis.restart();
    let back = Instant::now();
    let (a, b) = peers.split_at_mut(2);
    wait_sends_flow(&mut a[0], &mut b[1], "ab");
    wait_sends_flow(&mut b[0], &mut a[1], "ba");
    let took = converge(&mut peers, &reps, &truth, RECOVER);
    eprintln!(
        "after the restart: sends flowed and the registry matched in {:?}",
        back.elapsed().max(took)
    );
    assert_eq!(worker_pids(&nodes), pids, "no worker was replaced");
}

/// Redis SIGSTOPped for 5 s: every worker of both nodes keeps answering
/// `whoami` (local), `stats` (the registry) and a send to another worker of
/// its node, each within [`LOOP_DEADLINE`]; after SIGCONT, the registry
/// matches again (with a change made during the hang) and sends cross.
#[test]
fn testbed_loops_do_not_block_while_redis_hangs() {
    let mut nodes = Nodes::testbed(2);
    let (mut peers, reps, mut truth) = peers_and_truth(&nodes);
    let pids = worker_pids(&nodes);

    nodes.redis.stop();
    let hung = Instant::now();
    assert!(
        !nodes.redis.ping(Duration::from_millis(100)),
        "Redis answers while stopped"
    );
    let mut slowest: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut rounds = 0;
    while hung.elapsed() < HUNG {
        for i in 0..peers.len() {
            let neighbour = i ^ 1; // the other worker of the same node
            let to = peers[neighbour].conn.clone();
            for (what, cmd) in [
                ("whoami", json!({"op": "whoami"})),
                ("stats", json!({"op": "stats"})),
                (
                    "send_to",
                    json!({"op": "send_to", "to": to, "data": format!("r{rounds}")}),
                ),
            ] {
                let t = Instant::now();
                let id = peers[i].send_cmd(cmd);
                peers[i].reply_within(id, LOOP_DEADLINE);
                let e = slowest.entry(what).or_default();
                *e = (*e).max(t.elapsed());
            }
            let t = Instant::now();
            let got = peers[neighbour].push(LOOP_DEADLINE);
            assert_eq!(got, Some(format!("r{rounds}")), "{}", peers[neighbour].conn);
            let e = slowest.entry("push").or_default();
            *e = (*e).max(t.elapsed());
        }
        // Nothing else comes (and the next round waits a moment).
        assert_eq!(peers[0].push(Duration::from_millis(10)), None);
        rounds += 1;
    }
    // A change during the hang, for the other node to learn afterwards.
    peers[2].call(json!({"op": "bind", "uid": "hung"}));
    truth.bind(&peers[2].conn, "hung");
    eprintln!("while Redis hung for {HUNG:?}: {rounds} rounds, slowest answers {slowest:?}");
    assert!(rounds > 1, "the loops answered {rounds} rounds in {HUNG:?}");

    nodes.redis.cont();
    let back = Instant::now();
    let (a, b) = peers.split_at_mut(2);
    wait_sends_flow(&mut a[1], &mut b[0], "ab");
    wait_sends_flow(&mut b[1], &mut a[0], "ba");
    converge(&mut peers, &reps, &truth, RECOVER);
    eprintln!("recovered {:?} after SIGCONT", back.elapsed());
    assert_eq!(worker_pids(&nodes), pids, "no worker was replaced");
}

/// The reply to the `say` with this `ref`: an `ack` or an `error`; the
/// messages that arrive first are returned beside it.
#[track_caller]
fn say_reply(c: &mut Client, r: &str) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let v = c.recv();
        if v["ref"] == r {
            return (v, before);
        }
        before.push(v);
    }
}

/// `from` says probes in room `r` until one is acked and reaches `to`;
/// unavailable answers (Redis still away) are retried.
#[track_caller]
fn wait_messages_flow(from: &mut Client, to: &mut Client, tag: &str) {
    let deadline = Instant::now() + RECOVER;
    for k in 0.. {
        assert!(
            Instant::now() < deadline,
            "no message from {} reached {} within {RECOVER:?}",
            from.user,
            to.user
        );
        let r = format!("{tag}-{k}");
        from.send(json!({"type": "say", "room": "r", "text": r, "ref": r}));
        let (reply, _) = say_reply(from, &r);
        match reply["type"].as_str() {
            Some("ack") => {}
            Some("error") if reply["code"] == "unavailable" => continue,
            _ => panic!("{}: {reply}", from.user),
        }
        // Acked: stored. It may still miss `to` if its node's link is not
        // back yet; then the next probe tries again.
        let wait = Instant::now() + Duration::from_millis(300);
        while let Event::Frame(v) = to.next_event(wait.saturating_duration_since(Instant::now())) {
            if v["type"] == "message" && v["text"] == r.as_str() {
                return;
            }
        }
    }
}

/// Room r with al on node a and bo on node b, each seeing the other.
fn al_and_bo(d: &Deployment) -> (Client, Client) {
    let mut al = d.login_on("al", 0);
    let mut bo = d.login_on("bo", 1);
    al.join("r");
    // (al's presence must not reach bo after its joined: see `settle`.)
    assert_eq!(settle(&mut al, &mut bo), (vec![], vec![]));
    bo.join("r");
    assert_eq!(al.expect("presence")["user"], "bo");
    (al, bo)
}

/// The chat's history of room r as seen by `c`: (id, text) oldest first.
fn room_history(c: &mut Client) -> Vec<(i64, String)> {
    c.send(json!({"type": "history", "room": "r", "limit": 100, "ref": "h"}));
    let h = c.wait_for("history", |v| v["type"] == "history" && v["ref"] == "h");
    h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["id"].as_i64().expect("id"),
                m["text"].as_str().expect("text").into(),
            )
        })
        .collect()
}

/// The chat on two nodes, Redis SIGKILLed and restarted on its port.
#[test]
fn chat_survives_redis_killed_and_restarted() {
    let mut d = Deployment::two("redis-kill", "");
    let (mut al, mut bo) = al_and_bo(&d);
    let pids = worker_pids_of(&mut d);

    // Acked before the kill: ten messages, five from each node.
    let mut acked = Vec::new();
    for i in 0..10 {
        let (c, other) = if i % 2 == 0 {
            (&mut al, &mut bo)
        } else {
            (&mut bo, &mut al)
        };
        let r = format!("before-{i}");
        c.send(json!({"type": "say", "room": "r", "text": r, "ref": r}));
        let (ack, _) = say_reply(c, &r);
        assert_eq!(ack["type"], "ack", "{ack}");
        acked.push((ack["id"].as_i64().expect("id"), r.clone()));
        other.wait_for("the message", |v| v["text"] == r.as_str());
    }

    d.redis().kill();
    for (c, r) in [(&mut al, "during-a"), (&mut bo, "during-b")] {
        c.send(json!({"type": "say", "room": "r", "text": r, "ref": r}));
        let (reply, messages) = say_reply(c, r);
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("unavailable")),
            "{}: a say while Redis is down: {reply}",
            c.user
        );
        assert!(
            messages.iter().all(|m| m["type"] != "message"),
            "{messages:?}"
        );
    }

    d.redis().restart();
    let back = Instant::now();
    wait_messages_flow(&mut al, &mut bo, "ab");
    wait_messages_flow(&mut bo, &mut al, "ba");
    eprintln!(
        "messages flowed both ways {:?} after the restart",
        back.elapsed()
    );

    let history = room_history(&mut bo);
    let before: Vec<(i64, String)> = history
        .iter()
        .filter(|(_, t)| t.starts_with("before-"))
        .cloned()
        .collect();
    assert_eq!(
        before, acked,
        "every message acked before the kill is in history"
    );
    assert!(
        history.iter().all(|(_, t)| !t.starts_with("during-")),
        "a say answered unavailable was stored: {history:?}"
    );
    assert!(
        history.windows(2).all(|w| w[0].0 < w[1].0),
        "ids increase: {history:?}"
    );
    assert_eq!(worker_pids_of(&mut d), pids, "no node restarted a worker");
}

/// Each chat node's worker pids, sorted.
fn worker_pids_of(d: &mut Deployment) -> Vec<Vec<i32>> {
    d.servers
        .iter_mut()
        .map(|s| {
            let mut p = s.worker_pids();
            p.sort_unstable();
            p
        })
        .collect()
}

/// The chat on two nodes, Redis SIGSTOPped for 5 s: `users` keeps being
/// answered on both nodes within [`LOOP_DEADLINE`] (listing at least the
/// node's own user); after SIGCONT both nodes list both users again and
/// messages flow both ways.
#[test]
fn chat_answers_while_redis_hangs_and_recovers() {
    let mut d = Deployment::two("redis-stop", "");
    let (mut al, mut bo) = al_and_bo(&d);
    users_until(&mut al, json!({"type": "users", "ref": "u"}), |v| {
        v["count"] == 2
    });

    d.redis().stop();
    let hung = Instant::now();
    let (mut slowest, mut seen_both) = (Duration::ZERO, Duration::ZERO);
    let mut k = 0;
    while hung.elapsed() < HUNG {
        for c in [&mut al, &mut bo] {
            let r = format!("u{k}");
            k += 1;
            let t = Instant::now();
            c.send(json!({"type": "users", "ref": r}));
            let v = match c.next_event(LOOP_DEADLINE) {
                Event::Frame(v) => v,
                Event::Timeout => panic!("{}: no users reply within {LOOP_DEADLINE:?}", c.user),
                Event::Closed(code) => panic!("{}: closed {code:?}", c.user),
            };
            assert_eq!(
                (v["type"].as_str(), v["ref"].as_str()),
                (Some("users"), Some(r.as_str())),
                "{v}"
            );
            // Its own user at least; the other node's drops out once it
            // has not been heard from for presence_ttl_ms (1.5 s < 5 s).
            let users = v["users"].as_array().expect("users");
            assert!(users.contains(&json!(c.user)), "{}: {v}", c.user);
            if users.len() == 2 {
                seen_both = seen_both.max(hung.elapsed());
            }
            slowest = slowest.max(t.elapsed());
            // Nothing else comes (and the next question waits a moment).
            match c.next_event(Duration::from_millis(10)) {
                Event::Timeout => {}
                Event::Frame(v) => panic!("{}: unexpected {v}", c.user),
                Event::Closed(code) => panic!("{}: closed {code:?}", c.user),
            }
        }
    }
    eprintln!(
        "while Redis hung for {HUNG:?}: {k} users answers, the slowest in {slowest:?}; \
         both users listed until {seen_both:?}"
    );

    d.redis().cont();
    let back = Instant::now();
    for c in [&mut al, &mut bo] {
        users_until(c, json!({"type": "users", "ref": "again"}), |v| {
            v["users"] == json!(["al", "bo"])
        });
    }
    wait_messages_flow(&mut al, &mut bo, "ab");
    wait_messages_flow(&mut bo, &mut al, "ba");
    eprintln!(
        "messages flowed both ways {:?} after SIGCONT",
        back.elapsed()
    );
}

/// A `say` while Redis hangs is answered while it hangs (within [`WAIT`]);
/// if the answer is `unavailable`, the protocol promises that nothing was
/// stored or delivered, also once Redis runs again and reads what was sent
/// to it before.
#[test]
fn a_say_answered_unavailable_while_redis_hangs_is_not_stored() {
    let mut d = Deployment::two("redis-stop-say", "");
    let (mut al, mut bo) = al_and_bo(&d);
    d.redis().stop();
    let hung = Instant::now();
    al.send(json!({"type": "say", "room": "r", "text": "hung", "ref": "hung"}));
    let (reply, _) = say_reply(&mut al, "hung");
    eprintln!(
        "a say while Redis hung was answered {reply} after {:?} (at most {WAIT:?})",
        hung.elapsed()
    );
    d.redis().cont();
    wait_messages_flow(&mut al, &mut bo, "ab");
    let stored = room_history(&mut bo).iter().any(|(_, t)| t == "hung");
    match (reply["type"].as_str(), reply["code"].as_str()) {
        (Some("ack"), _) => assert!(stored, "acked but not in history"),
        (Some("error"), Some("unavailable")) => {
            assert!(
                !stored,
                "answered unavailable, yet stored once Redis ran again"
            )
        }
        _ => panic!("{reply}"),
    }
}
