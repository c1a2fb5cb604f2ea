//! The RabbitMQ bridge (`[amqp]`) against `testbed` with two workers:
//! WebSocket users bound to uids; this test, as a backend, publishes
//! `/api/publish` bodies with confirms to the push queue and checks that
//! they reach their users; handlers publish out and answer requests of
//! their own queue. The machine's broker (scripts/setup-rabbitmq.sh) with
//! uniquely named queues, deleted at the end, or a private broker for the
//! test that kills one.

mod common;

use common::rabbit::{self, Client, RabbitServer};
use common::*;
use lapin::BasicProperties;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Long enough for thousands of messages through a busy machine.
const FLOW: Duration = Duration::from_secs(120);

fn config(url: &str, queue: &str, extra: &str) -> String {
    format!("[amqp]\nurl = \"{url}\"\nqueue = \"{queue}\"\n{extra}")
}

/// `n` peers on both workers (more are connected until both have some;
/// extras on the fuller one are dropped), peer `i` bound to uid `u{i}`,
/// once every worker's registry knows them all and every bridge is
/// connected.
#[track_caller]
fn users(server: &Server, n: usize) -> Vec<Peer> {
    server.wait_workers(2, REPLY_TIMEOUT);
    let mut peers = connect_peers(server.addr, n);
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    while one_per_worker(&peers).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no client landed on the second worker"
        );
        peers.extend(connect_peers(server.addr, 4));
    }
    while peers.len() > n {
        let fuller = by_worker(&peers)
            .into_values()
            .max_by_key(Vec::len)
            .expect("peers");
        peers.remove(fuller[0]);
    }
    call_all(
        &mut peers,
        |i, _| json!({"op": "bind", "uid": format!("u{i}")}),
    );
    for w in one_per_worker(&peers) {
        poll_until(REPLY_TIMEOUT, "every worker sees every uid", || {
            (peers[w].stats()["uid_count"] == n).then_some(())
        });
    }
    wait_connected(&mut peers);
    peers
}

/// `testbed` on two workers, each with its own listening socket (the
/// kernel spreads clients over them), with this config.
#[track_caller]
fn testbed(toml: &str) -> Server {
    Server::start_ws("testbed", 2, &["--reuse-port"], Some(toml))
}

/// The index of one peer on each worker, by worker.
fn one_per_worker(peers: &[Peer]) -> Vec<usize> {
    let mut seen = BTreeMap::new();
    for (i, p) in peers.iter().enumerate() {
        seen.entry(p.worker).or_insert(i);
    }
    seen.into_values().collect()
}

/// Each worker's `amqp_stats`, through one of its peers.
fn stats(peers: &mut [Peer]) -> Vec<Value> {
    one_per_worker(peers)
        .into_iter()
        .map(|i| peers[i].call(json!({"op": "amqp_stats"})))
        .collect()
}

fn sum(stats: &[Value], key: &str) -> u64 {
    stats.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum()
}

#[track_caller]
fn wait_connected(peers: &mut [Peer]) {
    poll_until(FLOW, "every worker's bridge connected", || {
        stats(peers)
            .iter()
            .all(|s| s["connected"] == true)
            .then_some(())
    });
}

/// Push bodies for `keys`, message `k` to uid `u{k % users}`.
fn bodies(keys: std::ops::Range<usize>, users: usize) -> Vec<String> {
    keys.map(|k| {
        json!({"to": {"uid": format!("u{}", k % users)}, "data": format!("m{k}")}).to_string()
    })
    .collect()
}

/// What peer `i` of `users` must get from messages `keys`.
fn wanted(keys: std::ops::Range<usize>, users: usize, i: usize) -> BTreeSet<String> {
    keys.filter(|k| k % users == i)
        .map(|k| format!("m{k}"))
        .collect()
}

/// Reads each peer's pushes until it has every message it wants: how many
/// times each came.
#[track_caller]
fn collect(peers: &mut [Peer], want: &[BTreeSet<String>]) -> Vec<BTreeMap<String, usize>> {
    peers
        .iter_mut()
        .zip(want)
        .map(|(p, want)| {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let deadline = std::time::Instant::now() + FLOW;
            while !want.iter().all(|m| seen.contains_key(m)) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let missing = want.iter().filter(|m| !seen.contains_key(*m)).count();
                let m = p.push(left).unwrap_or_else(|| {
                    panic!(
                        "{}: {missing} messages still missing after {FLOW:?}",
                        p.conn
                    )
                });
                *seen.entry(m).or_default() += 1;
            }
            seen
        })
        .collect()
}

/// Checks that user `i` got nothing but the messages it wanted (each of
/// them [`collect`] waited for).
#[track_caller]
fn assert_got_only_wanted(seen: &[BTreeMap<String, usize>], want: &[BTreeSet<String>]) {
    for (i, (seen, want)) in seen.iter().zip(want).enumerate() {
        let got: BTreeSet<_> = seen.keys().cloned().collect();
        assert_eq!(&got, want, "user u{i}");
    }
}

/// Sends a marker from one peer of each worker to everyone and reads every
/// peer up to all markers, adding what came before them to `seen`. A
/// worker's marker follows, on every link, whatever it delivered before.
#[track_caller]
fn drain_to_markers(peers: &mut [Peer], seen: &mut [BTreeMap<String, usize>]) {
    let senders = one_per_worker(peers);
    for &s in &senders {
        let data = format!("marker-{}", peers[s].worker);
        peers[s].call(json!({"op": "send_to_all", "data": data}));
    }
    for (p, seen) in peers.iter_mut().zip(seen) {
        let mut markers = 0;
        while markers < senders.len() {
            let m = p.expect_push();
            if m.starts_with("marker-") {
                markers += 1;
            } else {
                *seen.entry(m).or_default() += 1;
            }
        }
    }
}

#[test]
fn ten_thousand_confirmed_messages_reach_their_users_exactly_once() {
    const USERS: usize = 50;
    const MESSAGES: usize = 10_000;
    let url = rabbit::machine_url();
    let queue = rabbit::unique("foreman.test.push");
    let client = Client::connect(&url, REPLY_TIMEOUT);
    client.declare(&queue);
    let server = testbed(&config(&url, &queue, ""));
    let mut peers = users(&server, USERS);

    // A poison message first: rejected, not requeued, counted; the rest flow.
    let bad = [
        "not json".to_string(),
        json!({"to": {"nobody": 1}, "data": "x"}).to_string(),
    ];
    assert_eq!(
        client.publish_confirmed(&queue, bad, BasicProperties::default(), 2),
        Ok(2)
    );
    let sent = client.publish_confirmed(
        &queue,
        bodies(0..MESSAGES, USERS),
        BasicProperties::default(),
        500,
    );
    assert_eq!(sent, Ok(MESSAGES));
    let want: Vec<_> = (0..USERS).map(|i| wanted(0..MESSAGES, USERS, i)).collect();
    let mut seen = collect(&mut peers, &want);
    poll_until(FLOW, "every message acked or rejected", || {
        let s = stats(&mut peers);
        (sum(&s, "acked") == MESSAGES as u64 && sum(&s, "rejected") == 2).then_some(())
    });
    drain_to_markers(&mut peers, &mut seen);
    for (i, seen) in seen.iter().enumerate() {
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "user u{i} got some twice: {twice:?}");
    }
    assert_got_only_wanted(&seen, &want);
    let s = stats(&mut peers);
    assert_eq!(sum(&s, "consumed"), MESSAGES as u64 + 2, "{s:?}");
    assert_eq!(sum(&s, "disconnects"), 0, "{s:?}");
    assert_eq!(
        client.ready(&queue),
        0,
        "the poison messages are not requeued"
    );
    drop(server);
    client.delete(&queue);
}

/// `queue_type = "quorum"`: the bridge declares the push queue as one (a
/// plain declare of a quorum queue is refused by the broker, so without the
/// key nothing would be consumed) and pushes from it reach their users.
#[test]
fn a_quorum_push_queue_is_consumed() {
    const USERS: usize = 4;
    const MESSAGES: usize = 200;
    let url = rabbit::machine_url();
    let queue = rabbit::unique("foreman.test.push.quorum");
    let client = Client::connect(&url, REPLY_TIMEOUT);
    client.declare_quorum(&queue);
    let server = testbed(&config(&url, &queue, "queue_type = \"quorum\""));
    let mut peers = users(&server, USERS);
    let sent = client.publish_confirmed(
        &queue,
        bodies(0..MESSAGES, USERS),
        BasicProperties::default(),
        100,
    );
    assert_eq!(sent, Ok(MESSAGES));
    let want: Vec<_> = (0..USERS).map(|i| wanted(0..MESSAGES, USERS, i)).collect();
    let seen = collect(&mut peers, &want);
    assert_got_only_wanted(&seen, &want);
    drop(server);
    client.delete(&queue);
}

#[test]
fn handlers_publish_with_confirms_and_answer_their_queue() {
    let url = rabbit::machine_url();
    let (push, out, app, replies) = (
        rabbit::unique("foreman.test.push"),
        rabbit::unique("foreman.test.out"),
        rabbit::unique("foreman.test.app"),
        rabbit::unique("foreman.test.replies"),
    );
    let client = Client::connect(&url, REPLY_TIMEOUT);
    client.declare(&out);
    client.declare(&replies);
    let extra = format!("max_pending = 50\nconsume = [\"{app}\"]\n");
    let mut server = testbed(&config(&url, &push, &extra));
    let mut peers = users(&server, 4);

    // Out: 100 publishes in one callback; the 50 past max_pending are
    // refused (no confirm can come back during a callback).
    let r = peers[0]
        .call(json!({"op": "amqp_publish", "exchange": "", "key": out, "data": "out-", "n": 100}));
    assert_eq!(r["ok"], 50, "{r}");
    assert!(
        r["refused"].as_str().unwrap_or("").contains("max_pending"),
        "{r}"
    );
    poll_until(REPLY_TIMEOUT, "50 confirms", || {
        let s = peers[0].call(json!({"op": "amqp_stats"}));
        (s["confirmed"] == 50 && s["pending"] == 0).then_some(())
    });
    // Each accepted publish's number came back once to on_amqp_confirm.
    let seqs: Vec<u64> = serde_json::from_value(r["seqs"].clone()).expect("seqs");
    let confirms: Vec<(u64, bool)> =
        serde_json::from_value(peers[0].call(json!({"op": "amqp_confirms"}))["confirms"].clone())
            .expect("confirms");
    let mut confirmed: Vec<u64> = confirms.iter().filter(|c| c.1).map(|c| c.0).collect();
    confirmed.sort_unstable();
    assert_eq!(
        confirmed, seqs,
        "every publish answered once, confirmed: {confirms:?}"
    );
    assert_eq!(seqs.len(), 50);
    let got = client.consume(&out, 50, REPLY_TIMEOUT);
    let got: BTreeSet<String> = got.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, (0..50).map(|i| format!("out-{i}")).collect());

    // App queue: a request answered to its reply_to with its correlation
    // id, then acked; one held unacked comes back when the worker dies.
    let ask = BasicProperties::default()
        .with_reply_to(replies.as_str().into())
        .with_correlation_id("c-1".into());
    let sent = client.publish_confirmed(&app, ["ping".to_string()], ask, 1);
    assert_eq!(sent, Ok(1));
    let answer = client.consume(&replies, 1, FLOW);
    assert_eq!(answer, [("re:ping".to_string(), Some("c-1".to_string()))]);
    let sent =
        client.publish_confirmed(&app, ["hold-1".to_string()], BasicProperties::default(), 1);
    assert_eq!(sent, Ok(1));
    let holder = poll_until(REPLY_TIMEOUT, "the held message handed over", || {
        one_per_worker(&peers).into_iter().find(|&i| {
            let m = peers[i].call(json!({"op": "amqp_messages"}));
            m["messages"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|m| m["body"] == "hold-1" && m["queue"] == *app)
            })
        })
    });
    assert_eq!(client.ready(&app), 0, "held by the worker, not ready");
    let stats: Vec<Value> = stats(&mut peers);
    assert_eq!(sum(&stats, "consumed"), 2, "{stats:?}");
    assert_eq!(sum(&stats, "acked"), 1, "{stats:?}");
    // SIGKILL the holder: the broker gives the message back.
    kill(Pid::from_raw(peers[holder].pid), Signal::SIGKILL).expect("kill");
    server.kill_all();
    poll_until(FLOW, "the held message back in its queue", || {
        (client.ready(&app) == 1).then_some(())
    });

    // Without [amqp]: publish says so.
    let plain = Server::start_ws("testbed", 1, &[], None);
    let mut p = Peer::connect(plain.addr);
    let r = p.call(json!({"op": "amqp_publish", "exchange": "", "key": "q", "data": "x"}));
    assert_eq!(r["ok"], 0);
    assert!(
        r["refused"].as_str().unwrap_or("").contains("[amqp]"),
        "{r}"
    );
    for q in [&push, &out, &app, &replies] {
        client.delete(q);
    }
}

#[test]
fn a_worker_killed_mid_stream_has_its_unacked_messages_redelivered() {
    const MESSAGES: usize = 2_000;
    let url = rabbit::machine_url();
    let queue = rabbit::unique("foreman.test.push");
    let client = Client::connect(&url, REPLY_TIMEOUT);
    client.declare(&queue);
    // handler_timeout off: the master must not replace the stuck worker.
    let toml = format!(
        "[server]\nhandler_timeout_ms = 0\n{}",
        config(&url, &queue, "prefetch = 64\n")
    );
    let server = testbed(&toml);
    let mut all = users(&server, 8);
    // The users live on worker 0; worker 1's loop is stuck in a handler
    // (its bridge thread still takes deliveries), then the worker is
    // killed with the messages the broker handed it.
    let stuck = all
        .iter()
        .position(|p| p.worker == 1)
        .expect("a peer on worker 1");
    let victim = all[stuck].pid;
    all[stuck].send_cmd(json!({"op": "block", "ms": 600_000}));
    let uids: Vec<String> = (0..all.len())
        .filter(|&i| all[i].worker == 0)
        .map(|i| format!("u{i}"))
        .collect();
    let mut peers: Vec<Peer> = all.drain(..).filter(|p| p.worker == 0).collect();
    let n = peers.len();
    let bodies: Vec<String> = (0..MESSAGES)
        .map(|k| json!({"to": {"uid": uids[k % n]}, "data": format!("m{k}")}).to_string())
        .collect();
    assert_eq!(
        client.publish_confirmed(&queue, bodies, BasicProperties::default(), 500),
        Ok(MESSAGES)
    );
    // Everything is dispatched: what worker 0 did not get, the stuck
    // worker holds unacked.
    poll_until(FLOW, "the queue dispatched", || {
        (client.ready(&queue) == 0).then_some(())
    });
    let held = poll_until(FLOW, "worker 0 done with its share", || {
        let s = peers[0].call(json!({"op": "amqp_stats"}));
        let (c, a) = (s["consumed"].as_u64()?, s["acked"].as_u64()?);
        (c == a && client.ready(&queue) == 0).then_some(MESSAGES as u64 - c)
    });
    assert!(
        held > 0,
        "the stuck worker was handed none: nothing to redeliver"
    );
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("SIGKILL");
    let want: Vec<BTreeSet<String>> = (0..n)
        .map(|i| {
            (0..MESSAGES)
                .filter(|k| k % n == i)
                .map(|k| format!("m{k}"))
                .collect()
        })
        .collect();
    let seen = collect(&mut peers, &want);
    assert_got_only_wanted(&seen, &want);
    eprintln!("{held} messages held by the killed worker, all redelivered");
    drop(server);
    client.delete(&queue);
}

/// The broker is stopped cleanly once after the queue is declared, as a
/// deployment's queue has outlived restarts before a crash: RabbitMQ 3.10
/// SIGKILLed about a second after the declare sometimes comes back without
/// the queue ("Recovering 0 queues" at the restart, 1 of 8 runs under
/// load; with it every message it confirmed), which is no test of the
/// bridge. Why is the broker's own matter: in a probe without foreman,
/// waiting 5 s before the kill avoided it as well (10 of 10 rounds, against
/// 1 lost queue in 10 without).
#[test]
fn a_broker_restarted_mid_stream_loses_no_confirmed_message() {
    const USERS: usize = 20;
    const MESSAGES: usize = 3_000;
    const WINDOW: usize = 100;
    let mut broker = RabbitServer::start();
    let url = broker.url();
    let queue = rabbit::unique("foreman.test.push");
    Client::connect(&url, REPLY_TIMEOUT).declare(&queue);
    broker.stop();
    broker.start_again();
    let mut client = Client::connect(&url, FLOW);
    let pid_file = temp_dir("amqp", "restart").join("testbed.pid");
    let config_file = TempFile::new(
        "toml",
        &format!(
            "[server]\nhandler_timeout_ms = 0\npid_file = {:?}\n{}",
            pid_file.display().to_string(),
            config(&url, &queue, "")
        ),
    );
    let path = config_file.path.to_str().expect("utf-8 temp path");
    let server = Server::start(
        "testbed",
        &[
            "--listen",
            "websocket://127.0.0.1:0",
            "--count",
            "2",
            "-c",
            path,
        ],
    );
    let mut peers = users(&server, USERS);
    let all = bodies(0..MESSAGES, USERS);
    // A third of the stream, confirmed while both workers are stopped, so
    // that the broker is killed with all of it in the queue or handed out
    // unacked; the rest is published after the restart.
    let workers = server.workers();
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGSTOP).expect("SIGSTOP");
    }
    let first = MESSAGES / 3;
    assert_eq!(
        client.publish_confirmed(
            &queue,
            all[..first].to_vec(),
            BasicProperties::default(),
            WINDOW
        ),
        Ok(first)
    );
    assert!(client.ready(&queue) > 0, "the stream is under way");
    broker.kill();
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGCONT).expect("SIGCONT");
    }
    // While the broker is down, a handler's publish fails at once.
    for i in one_per_worker(&peers) {
        poll_until(FLOW, "publish refused while the broker is down", || {
            let r = peers[i]
                .call(json!({"op": "amqp_publish", "exchange": "", "key": "q", "data": "x"}));
            (r["ok"] == 0 && r["refused"].as_str()?.contains("not connected")).then_some(())
        });
    }
    broker.start_again();
    drop(client);
    client = Client::connect(&url, FLOW);
    wait_connected(&mut peers);
    assert_eq!(
        client.publish_confirmed(
            &queue,
            all[first..].to_vec(),
            BasicProperties::default(),
            WINDOW
        ),
        Ok(MESSAGES - first)
    );
    let want: Vec<_> = (0..USERS).map(|i| wanted(0..MESSAGES, USERS, i)).collect();
    let seen = collect(&mut peers, &want);
    assert_got_only_wanted(&seen, &want);
    let s = stats(&mut peers);
    assert!(
        sum(&s, "disconnects") >= 2,
        "both bridges saw the broker go: {s:?}"
    );
    // `status` says so too.
    let status = run_to_exit(
        std::process::Command::new(example("testbed")).args(["status", "-c", path]),
        REPLY_TIMEOUT,
    );
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with("amqp: "))
        .unwrap_or_else(|| panic!("no amqp line in status:\n{}", status.stdout));
    let shown = url.replace("guest:guest", "guest:***");
    assert!(
        line.starts_with(&format!("amqp: {shown} connected;")),
        "{line}"
    );
    let lost = sum(&s, "disconnects");
    assert!(line.contains(&format!("connections lost {lost}")), "{line}");
}
