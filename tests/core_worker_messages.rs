//! Handler-to-handler messages through the `testbed` example:
//! `Ctx::send_to_worker` and `Ctx::send_to_workers` reach the other workers'
//! `Handler::on_worker_message`, in order per sender, and in order with the
//! sender's registry changes.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Messages per sender.
const N: usize = 200;

/// What a worker's `on_worker_message` got so far: (from, data, groups then).
#[track_caller]
fn worker_messages(peer: &mut Peer) -> Vec<(usize, String, Value)> {
    let r = peer.call(json!({"op": "worker_messages"}));
    r["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["from"].as_u64().expect("from") as usize,
                m["data"].as_str().expect("data").to_string(),
                m["groups"].clone(),
            )
        })
        .collect()
}

/// Polls a worker (through `peer`) until its handler got every one of `ends`
/// (from, data); returns its messages by sender.
#[track_caller]
fn messages_until(peer: &mut Peer, ends: &[(usize, &str)]) -> BTreeMap<usize, Vec<String>> {
    let what = format!("worker {} to get {ends:?}", peer.worker);
    let got = poll_until(REPLY_TIMEOUT, &what, || {
        let m = worker_messages(peer);
        ends.iter()
            .all(|&(from, end)| m.iter().any(|(f, d, _)| *f == from && d == end))
            .then_some(m)
    });
    let mut by_sender: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (from, data, _) in got {
        by_sender.entry(from).or_default().push(data);
    }
    by_sender
}

fn tagged(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}:{i}")).collect()
}

#[test]
fn worker_messages_reach_the_other_handlers_in_order_per_sender() {
    let server = start_testbed(3, None);
    let mut peers = connect_peers(server.addr, 30);
    let w = spread(&peers, 3);
    let (p0, p1, p2) = (w[&0][0], w[&1][0], w[&2][0]);

    // Worker 0 to worker 1 only; to itself or a worker that does not exist
    // is refused.
    let r = peers[p0].call(json!({"op": "tell_worker", "worker": 1, "tag": "a", "n": N}));
    assert_eq!(r["accepted"], json!(N));
    for worker in [0, 3] {
        let r = peers[p0].call(json!({"op": "tell_worker", "worker": worker, "tag": "x", "n": 1}));
        assert_eq!(
            r["accepted"],
            json!(0),
            "send_to_worker({worker}) from worker 0"
        );
    }
    // Worker 2 to every other worker, at the same time.
    peers[p2].send_cmd(json!({"op": "tell_workers", "tag": "c", "n": N}));
    // Then from both, an end marker to everyone: by per-sender order, each
    // worker has all it will get from that sender once the marker is in.
    peers[p0].call(json!({"op": "tell_workers", "tag": "end-a", "n": 1}));
    peers[p2].call(json!({"op": "tell_workers", "tag": "end-c", "n": 1}));

    let with_end = |mut v: Vec<String>, end: &str| {
        v.push(end.to_string());
        v
    };
    let got = messages_until(&mut peers[p0], &[(2, "end-c:0")]);
    let want = BTreeMap::from([(2, with_end(tagged("c", N), "end-c:0"))]);
    assert_eq!(got, want, "worker 0 (it never hears itself)");

    let got = messages_until(&mut peers[p1], &[(0, "end-a:0"), (2, "end-c:0")]);
    let want = BTreeMap::from([
        (0, with_end(tagged("a", N), "end-a:0")),
        (2, with_end(tagged("c", N), "end-c:0")),
    ]);
    assert_eq!(got, want, "worker 1");

    let got = messages_until(&mut peers[p2], &[(0, "end-a:0")]);
    let want = BTreeMap::from([(0, vec!["end-a:0".to_string()])]);
    assert_eq!(
        got, want,
        "worker 2 (what worker 0 sent worker 1 is not for it)"
    );
}

#[test]
fn a_worker_message_sees_the_registry_changes_made_before_it() {
    let server = start_testbed(2, None);
    let mut peers = connect_peers(server.addr, 20);
    let w = spread(&peers, 2);
    let (sender, receiver) = (w[&0][0], w[&1][0]);
    let me = peers[sender].conn.clone();

    // In one callback: join, tell, leave, tell, join another group, tell.
    let tell = |tag: &str| json!({"op": "tell_worker", "worker": 1, "tag": tag, "n": 1});
    peers[sender].call(json!({"op": "batch", "cmds": [
        {"op": "join", "group": "g"}, tell("joined-g"),
        {"op": "leave", "group": "g"}, tell("left-g"),
        {"op": "join", "group": "h"}, tell("joined-h"),
    ]}));

    messages_until(&mut peers[receiver], &[(0, "joined-h:0")]);
    let seen: Vec<(String, Value)> = worker_messages(&mut peers[receiver])
        .into_iter()
        .map(|(_, data, groups)| (data, groups))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("joined-g:0".to_string(), json!({"g": [me]})),
            ("left-g:0".to_string(), json!({})),
            ("joined-h:0".to_string(), json!({"h": [me]})),
        ],
        "the groups worker 1 saw as each message arrived"
    );
}
