//! Handler callbacks through the `testbed` example: a panicking handler path
//! closes one connection only, and timers repeat until deleted.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn start_testbed(count: usize) -> Server {
    Server::start_ws("testbed", count, &[], None)
}

#[test]
fn panic_in_on_message_closes_that_connection_only() {
    let server = start_testbed(2);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    let (mut victim, mut neighbour, mut stranger) = neighbour_and_stranger(&server);

    victim.send_cmd(json!({"op": "panic"}));
    assert_eq!(
        victim.ws.expect_close(REPLY_TIMEOUT),
        Some(1011),
        "the panicking connection"
    );

    // The same worker process serves the others as before.
    for p in [&mut neighbour, &mut stranger] {
        let me = p.call(json!({"op": "whoami"}));
        assert_eq!(
            me["pid"].as_i64(),
            Some(i64::from(p.pid)),
            "{} was not moved",
            p.conn
        );
        let echo = p.call(json!({"op": "send_to", "to": p.conn, "data": "still here"}));
        assert_eq!(echo["ok"], json!(true));
        assert_eq!(p.expect_push(), "still here");
    }
    assert_eq!(server.workers(), workers, "no worker restarted");

    // on_error saw the panic, for that connection.
    let errors = neighbour.call(json!({"op": "errors"}));
    let errors: Vec<&str> = errors["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{}:", victim.conn)) && e.contains("panic")),
        "on_error should report the panic of {}: {errors:?}",
        victim.conn
    );
    assert!(
        !errors
            .iter()
            .any(|e| e.starts_with(&format!("{}:", neighbour.conn))),
        "nothing reported for the neighbour: {errors:?}"
    );

    // The registry forgets the closed connection everywhere.
    wait_until(
        Duration::from_secs(2),
        "the panicked connection leaves the registry",
        || {
            let s = stranger.stats();
            !strings(&s["connections"]).contains(&victim.conn)
        },
    );
}

#[test]
fn panic_in_on_websocket_connect_fails_that_handshake_only() {
    let server = start_testbed(1);
    let mut before = Peer::connect(server.addr);
    let result = Ws::try_connect(server.addr, "/?panic", REPLY_TIMEOUT);
    assert!(
        result.is_err(),
        "a panicking on_websocket_connect must not complete the upgrade"
    );
    let me = before.call(json!({"op": "whoami"}));
    assert_eq!(me["pid"].as_i64(), Some(i64::from(before.pid)));
    let after = Peer::connect(server.addr);
    assert_eq!(after.pid, before.pid, "the same worker serves new clients");

    // A rejection is an HTTP answer, not a panic.
    let rejected = Ws::try_connect(server.addr, "/?reject", REPLY_TIMEOUT)
        .err()
        .unwrap_or_default();
    assert!(rejected.contains("403"), "rejected upgrade: {rejected:?}");
}

/// Reads pushes until the tick `n` of `timer` arrives; returns when it did.
/// Panics on ticks of other timers unless `allowed` lists them.
#[track_caller]
fn wait_tick(peer: &mut Peer, timer: u64, n: u64, allowed: &[u64]) -> Instant {
    loop {
        let push = peer.expect_push();
        let v: Value = serde_json::from_str(&push).unwrap_or_else(|_| panic!("not a tick: {push}"));
        let (t, k) = (
            v["tick"].as_u64().expect("tick"),
            v["n"].as_u64().expect("n"),
        );
        if t == timer {
            assert!(
                k <= n,
                "tick {k} of timer {t} came while waiting for tick {n}"
            );
            if k == n {
                return Instant::now();
            }
        } else {
            assert!(
                allowed.contains(&t),
                "unexpected tick of timer {t} ({k}): {push}"
            );
        }
    }
}

#[test]
fn repeating_timer_fires_until_deleted() {
    let server = start_testbed(2);
    let mut peer = Peer::connect(server.addr);
    let interval = 20;
    let t = peer.call(json!({"op": "timer", "ms": interval, "repeat": true}))["timer"]
        .as_u64()
        .expect("timer id");
    let first = wait_tick(&mut peer, t, 1, &[]);
    let fifth = wait_tick(&mut peer, t, 5, &[]);
    assert!(
        fifth - first >= Duration::from_millis(4 * interval - 10),
        "5 ticks of a {interval} ms timer came within {:?}",
        fifth - first
    );
    assert_eq!(
        peer.call(json!({"op": "del_timer", "timer": t}))["deleted"],
        json!(true)
    );
    // Ticks sent before the delete came before its reply; after the reply,
    // none may come. A one-shot timer of 10 intervals is the witness: any
    // later tick of `t` would come before it.
    let seen_before_delete: Vec<String> =
        std::iter::from_fn(|| peer.push(Duration::ZERO)).collect();
    assert_eq!(
        peer.call(json!({"op": "del_timer", "timer": t}))["deleted"],
        json!(false),
        "a deleted timer cannot be deleted twice"
    );
    let witness = peer.call(json!({"op": "timer", "ms": 10 * interval, "repeat": false}))["timer"]
        .as_u64()
        .expect("timer id");
    let push = peer.expect_push();
    let v: Value = serde_json::from_str(&push).expect("tick");
    assert_eq!(
        (v["tick"].as_u64(), v["n"].as_u64()),
        (Some(witness), Some(1)),
        "after the delete, only the witness may tick (earlier: {seen_before_delete:?})"
    );
}

#[test]
fn one_shot_timer_fires_once() {
    let server = start_testbed(1);
    let mut peer = Peer::connect(server.addr);
    let once = peer.call(json!({"op": "timer", "ms": 10, "repeat": false}))["timer"]
        .as_u64()
        .expect("timer id");
    wait_tick(&mut peer, once, 1, &[]);
    // A later one-shot witnesses that the first did not fire again.
    let witness = peer.call(json!({"op": "timer", "ms": 100, "repeat": false}))["timer"]
        .as_u64()
        .expect("timer id");
    wait_tick(&mut peer, witness, 1, &[]);
    assert_eq!(
        peer.call(json!({"op": "del_timer", "timer": once}))["deleted"],
        json!(false),
        "a fired one-shot timer is gone"
    );
}

#[test]
fn timers_of_many_connections_fire_independently() {
    let server = start_testbed(2);
    let mut peers = connect_peers(server.addr, 20);
    let timers: Vec<u64> = peers
        .iter_mut()
        .enumerate()
        .map(|(i, p)| {
            let ms = 5 + (i as u64 % 4) * 10;
            p.call(json!({"op": "timer", "ms": ms, "repeat": true}))["timer"]
                .as_u64()
                .expect("id")
        })
        .collect();
    for (p, &t) in peers.iter_mut().zip(&timers) {
        wait_tick(p, t, 3, &[]);
        assert_eq!(
            p.call(json!({"op": "del_timer", "timer": t}))["deleted"],
            json!(true)
        );
    }
}
