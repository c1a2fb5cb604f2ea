//! The HTTP push API (`[api] key`), against `testbed` with two workers:
//! WebSocket clients bind uids and join groups; a backend (this test)
//! publishes, queries and closes through `/api/` on the same port, as
//! `curl` would.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

const KEY: &str = "test-key-0123456789";

/// `testbed` on two workers with the API on.
fn server() -> Server {
    let toml = format!("[server]\nmax_requests_per_connection = 100000\n[api]\nkey = \"{KEY}\"\n");
    Server::start_ws("testbed", 2, &["--reuse-port"], Some(&toml))
}

/// Peers on both workers; peer `i` is bound to uid `u{i % uids}`.
#[track_caller]
fn peers_with_uids(addr: SocketAddr, n: usize, uids: usize) -> Vec<Peer> {
    let mut peers: Vec<Peer> = (0..n).map(|i| peer_on_worker(addr, i % 2)).collect();
    call_all(
        &mut peers,
        |i, _| json!({"op": "bind", "uid": format!("u{}", i % uids)}),
    );
    peers
}

/// Waits until the API's worker sees `n` connections for `uid` (a binding
/// made on the other worker takes a bus round trip to show).
#[track_caller]
fn wait_uid(api: &mut Backend, uid: &str, n: usize) -> Value {
    let path = format!("/api/uid/{uid}");
    poll_until(
        REPLY_TIMEOUT,
        &format!("{uid} with {n} connections"),
        || {
            let v = api.ok("GET", &path, None);
            (v["connections"].as_array().map(Vec::len) == Some(n)).then_some(v)
        },
    )
}

/// The next push of `p`, which must come.
#[track_caller]
fn push(p: &mut Peer) -> String {
    p.push(REPLY_TIMEOUT)
        .unwrap_or_else(|| panic!("{}: no push within {REPLY_TIMEOUT:?}", p.conn))
}

/// Publishes a marker to `all` and reads every peer's pushes up to it:
/// what each got before the marker, in order.
#[track_caller]
fn drain_to_marker(api: &mut Backend, peers: &mut [Peer], marker: &str) -> Vec<Vec<String>> {
    api.publish(json!({"all": true}), json!(marker));
    peers
        .iter_mut()
        .map(|p| {
            let mut got = Vec::new();
            loop {
                let m = push(p);
                if m == marker {
                    return got;
                }
                got.push(m);
            }
        })
        .collect()
}

#[test]
fn every_endpoint_answers_for_the_whole_server() {
    let server = server();
    let mut peers = peers_with_uids(server.addr, 6, 3);
    let mut api = Backend::new(server.addr, KEY);
    for u in 0..3 {
        wait_uid(&mut api, &format!("u{u}"), 2);
    }

    // One uid: both of its connections, wherever they are.
    assert_eq!(api.publish(json!({"uid": "u0"}), json!("to u0")), 2);
    // Several uids, a JSON value as data: sent as its JSON text.
    assert_eq!(
        api.publish(json!({"uids": ["u1", "u2", "nobody"]}), json!({"n": 1})),
        4
    );
    // One connection, by id.
    let conn5 = peers[5].conn.clone();
    assert_eq!(api.publish(json!({"conn": conn5}), json!("just 5")), 1);
    assert_eq!(api.publish(json!({"uid": "nobody"}), json!("x")), 0);
    let got = drain_to_marker(&mut api, &mut peers, "end-1");
    for (i, g) in got.iter().enumerate() {
        let mut want: Vec<&str> = match i % 3 {
            0 => vec!["to u0"],
            _ => vec![r#"{"n":1}"#],
        };
        if i == 5 {
            want.push("just 5");
        }
        assert_eq!(g, &want, "peer {i}");
    }

    // Groups: joined through the API, by uid, on whichever worker.
    let v = api.ok(
        "POST",
        "/api/group/room%201/join",
        Some(json!({"uid": "u1"})),
    );
    assert_eq!(v["joined"], 2);
    // The joins are made by the connections' own workers: the second call
    // sees them once they are back in this worker's registry.
    poll_until(REPLY_TIMEOUT, "u1's two connections in room 1", || {
        (api.ok("GET", "/api/group/room%201", None)["count"] == 2).then_some(())
    });
    let v = api.ok(
        "POST",
        "/api/group/room%201/join",
        Some(json!({"uid": "u1"})),
    );
    assert_eq!(v["joined"], 0, "already members");
    api.ok(
        "POST",
        "/api/group/room%201/join",
        Some(json!({"uid": "u2"})),
    );
    let g = poll_until(REPLY_TIMEOUT, "room 1 with 4 members", || {
        let g = api.ok("GET", "/api/group/room%201", None);
        (g["count"] == 4).then_some(g)
    });
    assert_eq!(
        g,
        json!({"group": "room 1", "uids": ["u1", "u2"], "count": 4})
    );
    let u = wait_uid(&mut api, "u1", 2);
    assert_eq!(
        (u["online"].clone(), u["groups"].clone()),
        (json!(true), json!(["room 1"]))
    );
    let mut ids: Vec<String> = serde_json::from_value(u["connections"].clone()).unwrap();
    ids.sort();
    let mut want = vec![peers[1].conn.clone(), peers[4].conn.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(api.publish(json!({"group": "room 1"}), json!("to room")), 4);
    let v = api.ok(
        "POST",
        "/api/group/room%201/leave",
        Some(json!({"uid": "u2"})),
    );
    assert_eq!(v["left"], 2);
    poll_until(REPLY_TIMEOUT, "room 1 down to 2", || {
        (api.ok("GET", "/api/group/room%201", None)["count"] == 2).then_some(())
    });
    assert_eq!(api.publish(json!({"group": "room 1"}), json!("u1 only")), 2);
    let got = drain_to_marker(&mut api, &mut peers, "end-2");
    for (i, g) in got.iter().enumerate() {
        let want: Vec<&str> = match i % 3 {
            1 => vec!["to room", "u1 only"],
            2 => vec!["to room"],
            _ => vec![],
        };
        assert_eq!(g, &want, "peer {i}");
    }

    let online = api.ok("GET", "/api/online", None);
    assert_eq!(online, json!({"connections": 6, "uids": 3, "groups": 1}));
    let nobody = api.ok("GET", "/api/uid/nobody", None);
    assert_eq!(
        nobody,
        json!({"uid": "nobody", "online": false, "connections": [], "groups": []})
    );

    // Close by uid, with a code the clients see.
    let v = api.ok(
        "POST",
        "/api/close",
        Some(json!({"uid": "u0", "code": 4001, "reason": "bye"})),
    );
    assert_eq!(v["closed"], 2);
    for i in [0, 3] {
        assert_eq!(
            peers[i].ws.expect_close(REPLY_TIMEOUT),
            Some(4001),
            "peer {i}"
        );
    }
    let v = api.ok("POST", "/api/close", Some(json!({"conn": conn5})));
    assert_eq!(v["closed"], 1);
    assert_eq!(peers[5].ws.expect_close(REPLY_TIMEOUT), Some(1000));
    poll_until(REPLY_TIMEOUT, "3 connections left", || {
        (api.ok("GET", "/api/online", None)["connections"] == 3).then_some(())
    });
}

/// method, path, body, extra header lines, status, what the error says.
type Refused<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);

#[test]
fn bad_requests_are_refused_naming_the_problem_and_send_nothing() {
    let server = server();
    let mut peers = peers_with_uids(server.addr, 2, 1);
    let mut api = Backend::new(server.addr, KEY);
    wait_uid(&mut api, "u0", 2);
    let publish = json!({"to": {"uid": "u0"}, "data": "must not arrive"}).to_string();

    // No key, a wrong key, another scheme: 401, and nothing is sent.
    for key in [
        None,
        Some("test-key-0123456788"),
        Some("test-key-01234567890"),
    ] {
        let mut b = Backend::with_key(server.addr, key);
        let r = b.call_with("POST", "/api/publish", Some(&publish), "");
        assert_eq!(r.status, 401, "{key:?}: {}", r.body_text());
        assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    }
    let r = api.call_with(
        "POST",
        "/api/publish",
        Some(&publish),
        &format!("Authorization: Basic {KEY}\r\n"),
    );
    assert_eq!(r.status, 401);

    let cases: [Refused; 11] = [
        ("POST", "/api/publish", Some("{nope"), "", 400, "not JSON"),
        (
            "POST",
            "/api/publish",
            Some(r#"{"to":{"uid":"u0"}}"#),
            "",
            400,
            "data",
        ),
        (
            "POST",
            "/api/publish",
            Some(r#"{"to":{"room":"x"},"data":"x"}"#),
            "",
            400,
            "to.room",
        ),
        (
            "POST",
            "/api/publish",
            Some(r#"{"to":{"uids":[1]},"data":"x"}"#),
            "",
            400,
            "to.uids",
        ),
        (
            "POST",
            "/api/close",
            Some(r#"{"uid":"u0","code":1006}"#),
            "",
            400,
            "code",
        ),
        (
            "POST",
            "/api/close",
            Some(r#"{"uid":"u0","conn":"0.1.1"}"#),
            "",
            400,
            "exactly one",
        ),
        (
            "POST",
            "/api/group/g/join",
            Some(r#"{"uid":7}"#),
            "",
            400,
            "uid",
        ),
        ("GET", "/api/nothing", None, "", 404, "no such endpoint"),
        ("GET", "/api/publish", None, "", 405, "use POST"),
        ("DELETE", "/api/uid/u0", None, "", 405, "use GET"),
        (
            "POST",
            "/api/publish",
            Some(&publish),
            "Content-Type: text/plain\r\n",
            415,
            "application/json",
        ),
    ];
    for (method, path, body, extra, status, says) in cases {
        let r = api.call_with(method, path, body, extra);
        let v: Value = serde_json::from_slice(&r.body).expect("a JSON error");
        let msg = v["error"].as_str().unwrap_or_default();
        assert_eq!(r.status, status, "{method} {path} {body:?}: {msg}");
        assert!(
            msg.contains(says),
            "{method} {path}: {msg:?} should say {says:?}"
        );
    }
    let r = api.call_with("GET", "/api/publish", None, "");
    assert_eq!(r.header("Allow"), Some("POST"));
    let r = api.call_with("POST", "/api/online", None, "");
    assert_eq!(r.header("Allow"), Some("GET"));

    // Past max_http_body_bytes (64 KiB): 413 from the HTTP layer.
    let big = json!({"to": {"uid": "u0"}, "data": "x".repeat(70_000)}).to_string();
    let mut b = Backend::new(server.addr, KEY);
    let r = b.call_with("POST", "/api/publish", Some(&big), "");
    assert_eq!(r.status, 413);

    // Only the marker arrives: none of the refused publishes sent anything.
    let got = drain_to_marker(&mut api, &mut peers, "marker");
    assert_eq!(got, vec![Vec::<String>::new(), Vec::new()]);
}

#[test]
fn without_a_key_the_api_is_off_and_the_path_is_the_handlers() {
    let server = Server::start_ws("testbed", 1, &[], None);
    let mut peers = peers_with_uids_one_worker(server.addr);
    let mut api = Backend::new(server.addr, KEY);
    let body = json!({"to": {"uid": "u0"}, "data": "x"}).to_string();
    let r = api.call_with("POST", "/api/publish", Some(&body), "");
    assert_eq!(r.status, 404, "testbed's own answer: {}", r.body_text());
    // One worker: had the publish sent anything, it would come first.
    peers[0].call(json!({"op": "send_to_uid", "uid": "u0", "data": "direct"}));
    assert_eq!(push(&mut peers[0]), "direct");
}

fn peers_with_uids_one_worker(addr: SocketAddr) -> Vec<Peer> {
    let mut peers = connect_peers(addr, 1);
    call_all(&mut peers, |_, _| json!({"op": "bind", "uid": "u0"}));
    peers
}

#[test]
fn ten_thousand_publishes_to_two_hundred_clients_arrive_once_each() {
    const CLIENTS: usize = 200;
    const PUBLISHES: usize = 10_000;
    const PIPELINE: usize = 200;
    let server = server();
    let mut peers = peers_with_uids(server.addr, CLIENTS, CLIENTS);
    let mut api = Backend::new(server.addr, KEY);
    poll_until(REPLY_TIMEOUT, "every uid online", || {
        (api.ok("GET", "/api/online", None)["uids"] == CLIENTS).then_some(())
    });
    // Two backends, so both workers answer publishes (one connection stays
    // on one worker); requests pipelined in batches.
    let mut backends = [
        Backend::new(server.addr, KEY),
        Backend::new(server.addr, KEY),
    ];
    let started = Instant::now();
    let mut delivered = 0;
    for batch in 0..PUBLISHES / PIPELINE {
        let b = &mut backends[batch % 2];
        let mut bytes = Vec::new();
        for k in batch * PIPELINE..(batch + 1) * PIPELINE {
            let body = json!({"to": {"uid": format!("u{}", k % CLIENTS)}, "data": format!("m{k}")});
            bytes.extend(b.request("POST", "/api/publish", Some(&body.to_string()), ""));
        }
        b.stream.write_all(&bytes).expect("write batch");
        for _ in 0..PIPELINE {
            let r = read_one_reply(&mut b.stream, &mut b.pending, false);
            assert_eq!(r.status, 200, "{}", r.body_text());
            let v: Value = serde_json::from_slice(&r.body).expect("JSON");
            delivered += v["delivered"].as_u64().expect("delivered");
        }
    }
    assert_eq!(delivered, PUBLISHES as u64, "each uid has one connection");
    let got = drain_to_marker(&mut api, &mut peers, "done");
    for (i, g) in got.iter().enumerate() {
        let want: BTreeSet<String> = (0..PUBLISHES)
            .filter(|k| k % CLIENTS == i)
            .map(|k| format!("m{k}"))
            .collect();
        let mut seen = BTreeMap::new();
        for m in g {
            *seen.entry(m.clone()).or_insert(0) += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "peer {i} got some twice: {twice:?}");
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "peer {i}"
        );
    }
    eprintln!(
        "{PUBLISHES} publishes to {CLIENTS} clients in {:?} (not a benchmark)",
        started.elapsed()
    );
}
