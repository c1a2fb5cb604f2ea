//! The registry across two nodes (issue 11): two `testbed` masters on two
//! ports, `count = 2` each, one Redis of the test's own, 200 clients taking
//! the nodes in turn. The scenarios of `tests/registry.rs` (send to all, to
//! a connection, to a uid, to a group: exactly once; counts and lists equal
//! the truth on every worker of both nodes), and a node that dies: SIGKILL
//! of node B's master and workers, after which node A stops listing B's
//! connections and users within the presence TTL plus one heartbeat.

mod common;
mod registry_util;

use common::*;
use registry_util::Fleet;
use serde_json::json;
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;
const WORKERS: usize = 2;

fn cluster() -> (Nodes, Fleet) {
    let nodes = Nodes::testbed(WORKERS);
    let peers = nodes.peers(CLIENTS);
    let fleet = Fleet::new(peers, 2 * WORKERS, CLUSTER_CONVERGE);
    // The units in order: node a's (or b's) two workers, then the other's.
    assert_eq!(fleet.units[0].0, fleet.units[1].0, "{:?}", fleet.units);
    assert_ne!(fleet.units[1].0, fleet.units[2].0, "{:?}", fleet.units);
    (nodes, fleet)
}

#[test]
fn send_to_all_reaches_all_200_on_both_nodes_exactly_once() {
    let (_nodes, fleet) = cluster();
    registry_util::send_to_all_reaches_all_exactly_once(fleet);
}

#[test]
fn direct_sends_and_send_to_uid_cross_nodes() {
    let (_nodes, fleet) = cluster();
    registry_util::direct_sends_and_send_to_uid_cross_units(fleet);
}

#[test]
fn send_to_group_reaches_exactly_the_members_on_both_nodes() {
    let (_nodes, fleet) = cluster();
    registry_util::send_to_group_reaches_exactly_the_members(fleet);
}

#[test]
fn counts_and_lists_equal_the_truth_on_both_nodes() {
    let (_nodes, fleet) = cluster();
    registry_util::counts_and_lists_equal_the_truth_after_joins_leaves_and_closes(fleet);
}

/// SIGKILL of node B (master and workers at once: nothing of B says
/// goodbye). Node A's answers stop listing B's connections, uids and group
/// members within `presence_ttl_ms` plus one heartbeat (a third of the TTL)
/// plus a scheduling allowance, and A's own stay as they were.
#[test]
fn a_killed_node_is_forgotten_within_the_presence_ttl() {
    let (mut nodes, fleet) = cluster();
    let reps = fleet.reps();
    let Fleet { mut peers, .. } = fleet;
    let mut truth = Truth::of(&peers);
    for (i, p) in peers.iter().enumerate() {
        truth.bind(&p.conn, &format!("u{}", i / 3));
        truth.join(&p.conn, if i % 2 == 0 { "even" } else { "odd" });
        truth.join(&p.conn, "all");
    }
    let cmds: Vec<serde_json::Value> = (0..peers.len())
        .map(|i| {
            json!({"op": "batch", "cmds": [
                {"op": "bind", "uid": format!("u{}", i / 3)},
                {"op": "join", "group": if i % 2 == 0 { "even" } else { "odd" }},
                {"op": "join", "group": "all"},
            ]})
        })
        .collect();
    call_all(&mut peers, |i, _| cmds[i].clone());
    converge(&mut peers, &reps, &truth, CLUSTER_CONVERGE);

    // Node b's peers go with it; a's representatives ask.
    let b = 1;
    let (on_b, on_a): (Vec<Peer>, Vec<Peer>) =
        peers.into_iter().partition(|p| nodes.index_of(p) == b);
    for p in &on_b {
        truth.close(&p.conn);
    }
    assert!(
        !on_b.is_empty() && !truth.conns.is_empty(),
        "both nodes had clients"
    );
    let mut peers = on_a;
    let reps: Vec<usize> = by_unit(&peers).values().map(|v| v[0]).collect();
    assert_eq!(reps.len(), WORKERS, "a representative on each worker of a");

    let killed = nodes.kill_node(b);
    drop(on_b);
    let bound = nodes.ttl + nodes.ttl / 3 + Duration::from_secs(1);
    converge(&mut peers, &reps, &truth, bound + Duration::from_secs(2));
    let took = killed.elapsed();
    eprintln!(
        "node a stopped listing node b's {} users {took:?} after the SIGKILL \
         (presence_ttl {:?}, bound {bound:?})",
        CLIENTS / 2,
        nodes.ttl
    );
    assert!(
        took <= bound,
        "node b was forgotten after {took:?}, more than ttl + ttl/3 + 1 s = {bound:?}"
    );
    // And it stays forgotten: a's own registry is still whole a heartbeat later.
    let again = Instant::now() + nodes.ttl / 3;
    while Instant::now() < again {
        let diff = truth.diff(&mut peers[reps[0]]);
        assert!(diff.is_empty(), "after b was forgotten: {diff:?}");
    }
}

/// The HTTP push API of node a reaches users on node b: `delivered`
/// counts them (node a's replica of b's registry), and each gets it once.
#[test]
fn the_push_api_of_one_node_reaches_users_on_the_other() {
    const KEY: &str = "cluster-test-key-0123";
    let nodes =
        Nodes::testbed_with_toml(WORKERS, PRESENCE_TTL, &format!("[api]\nkey = \"{KEY}\"\n"));
    let mut peers = nodes.peers(8);
    call_all(
        &mut peers,
        |i, _| json!({"op": "bind", "uid": format!("u{}", i % 4)}),
    );
    call_all(
        &mut peers,
        |i, _| json!({"op": "join", "group": if i % 2 == 0 { "even" } else { "odd" }}),
    );
    let mut api = Backend::new(nodes.node(0).addr, KEY);
    poll_until(
        CLUSTER_CONVERGE,
        "node a lists every binding and member",
        || {
            let online = api.ok("GET", "/api/online", None);
            let even = api.ok("GET", "/api/group/even", None);
            let odd = api.ok("GET", "/api/group/odd", None);
            (online == json!({"connections": 8, "uids": 4, "groups": 2})
                && even["count"] == 4
                && odd["count"] == 4)
                .then_some(())
        },
    );
    // u1 has peers 1 and 5: one on each node (peers take the nodes in turn).
    assert_ne!(nodes.index_of(&peers[1]), nodes.index_of(&peers[0]));
    assert_eq!(api.publish(json!({"uid": "u1"}), json!("to u1")), 2);
    assert_eq!(api.publish(json!({"group": "even"}), json!("to even")), 4);
    assert_eq!(api.publish(json!({"all": true}), json!("end")), 8);
    for (i, p) in peers.iter_mut().enumerate() {
        let mut got = Vec::new();
        loop {
            let m = p
                .push(REPLY_TIMEOUT)
                .unwrap_or_else(|| panic!("peer {i}: no push"));
            if m == "end" {
                break;
            }
            got.push(m);
        }
        let mut want = Vec::new();
        if i % 4 == 1 {
            want.push("to u1");
        }
        if i % 2 == 0 {
            want.push("to even");
        }
        assert_eq!(got, want, "peer {i} on node {}", nodes.index_of(p));
    }
}
