//! The online-user registry and the inter-worker bus with four workers and
//! 200 clients, through the `testbed` example: every send reaches its target
//! on whichever worker it lives, and counts and lists equal the truth.

mod common;
mod registry_util;

use common::*;
use registry_util::Fleet;
use serde_json::json;
use std::time::Duration;

const CLIENTS: usize = 200;
const WORKERS: usize = 4;
/// Replication is eventually consistent (about a millisecond); tests wait on
/// the registry with this deadline.
const CONVERGE: Duration = Duration::from_secs(2);

fn cluster() -> (Server, Fleet) {
    let server = start_testbed(WORKERS, None);
    let peers = connect_peers(server.addr, CLIENTS);
    (server, Fleet::new(peers, WORKERS, CONVERGE))
}

#[test]
fn send_to_all_reaches_all_200_exactly_once() {
    let (_server, fleet) = cluster();
    registry_util::send_to_all_reaches_all_exactly_once(fleet);
}

#[test]
fn direct_sends_and_send_to_uid_cross_workers() {
    let (_server, fleet) = cluster();
    registry_util::direct_sends_and_send_to_uid_cross_units(fleet);
}

#[test]
fn send_to_group_reaches_exactly_the_members() {
    let (_server, fleet) = cluster();
    registry_util::send_to_group_reaches_exactly_the_members(fleet);
}

#[test]
fn counts_and_lists_equal_the_truth_after_joins_leaves_and_closes() {
    let (_server, fleet) = cluster();
    registry_util::counts_and_lists_equal_the_truth_after_joins_leaves_and_closes(fleet);
}

#[test]
fn session_data_and_close_reach_across_workers() {
    let (_server, Fleet { mut peers, by, .. }) = cluster();
    let (a, b, c) = (by[0][0], by[1][0], by[2][0]);

    // A connection's own session, read from another worker.
    let b_conn = peers[b].conn.clone();
    assert_eq!(
        peers[b].call(json!({"op": "set_session", "data": "b's data"}))["ok"],
        json!(true)
    );
    wait_until(CONVERGE, "b's session visible on worker 2", || {
        peers[c].call(json!({"op": "conn", "conn": b_conn}))["session"] == json!("b's data")
    });
    assert_eq!(
        peers[a].call(json!({"op": "conn", "conn": b_conn}))["session"],
        json!("b's data")
    );
    // Replaced, not appended.
    peers[b].call(json!({"op": "set_session", "data": "v2"}));
    wait_until(CONVERGE, "b's new session on worker 0", || {
        peers[a].call(json!({"op": "conn", "conn": b_conn}))["session"] == json!("v2")
    });

    // Closing a connection that lives on another worker, with code and reason.
    peers[a].call(json!({"op": "close", "conn": b_conn, "code": 4001, "reason": "bye"}));
    assert_eq!(peers[b].ws.expect_close(REPLY_TIMEOUT), Some(4001));
    wait_until(CONVERGE, "b offline as seen from worker 2", || {
        peers[c].call(json!({"op": "conn", "conn": b_conn}))["online"] == json!(false)
    });
    let gone = peers[c].call(json!({"op": "conn", "conn": b_conn}));
    assert_eq!(
        gone["session"],
        json!(null),
        "a closed connection's session is gone: {gone}"
    );
}

/// GatewayWorker's reach: bind, unbind, join, leave and session calls name
/// any connection, wherever it lives.
#[test]
fn registry_calls_on_connections_of_other_workers() {
    let (_server, fleet) = cluster();
    let reps = fleet.reps();
    let Fleet { mut peers, by, .. } = fleet;
    let mut truth = Truth::of(&peers);
    // Worker w's representative acts on a connection of worker w + 1.
    let targets: Vec<usize> = by.iter().map(|on_w| *on_w.last().expect("peer")).collect();
    for w in 0..WORKERS {
        let (actor, target) = (reps[w], targets[(w + 1) % WORKERS]);
        let conn = peers[target].conn.clone();
        peers[actor].call(json!({"op": "bind", "uid": format!("remote{w}"), "conn": conn}));
        peers[actor].call(json!({"op": "join", "group": "remote", "conn": conn}));
        peers[actor].call(json!({"op": "join", "group": format!("only{w}"), "conn": conn}));
        let ok =
            peers[actor].call(json!({"op": "set_session", "conn": conn, "data": format!("s{w}")}));
        assert_eq!(
            ok["ok"],
            json!(true),
            "set_session on {conn} from worker {w}"
        );
        truth.bind(&conn, &format!("remote{w}"));
        truth.join(&conn, "remote");
        truth.join(&conn, &format!("only{w}"));
    }
    converge(&mut peers, &reps, &truth, CONVERGE);
    for w in 0..WORKERS {
        let conn = peers[targets[(w + 1) % WORKERS]].conn.clone();
        let q = peers[reps[(w + 2) % WORKERS]].call(json!({"op": "conn", "conn": conn}));
        assert_eq!(q["session"], json!(format!("s{w}")), "session of {conn}");
    }

    // Undo half of it, again from other workers.
    for w in 0..WORKERS {
        let (actor, target) = (reps[(w + 2) % WORKERS], targets[(w + 1) % WORKERS]);
        let conn = peers[target].conn.clone();
        peers[actor].call(json!({"op": "leave", "group": format!("only{w}"), "conn": conn}));
        truth.leave(&conn, &format!("only{w}"));
        if w % 2 == 0 {
            peers[actor].call(json!({"op": "unbind", "conn": conn}));
            truth.uid_of.remove(&conn);
        }
    }
    converge(&mut peers, &reps, &truth, CONVERGE);

    // And the routes follow: a group send from worker 0 reaches the targets.
    peers[reps[0]].call(json!({"op": "send_to_group", "group": "remote", "data": "r-1"}));
    peers[reps[0]].call(json!({"op": "send_to_all", "data": "mark"}));
    expect_pushes_until(&mut peers, 0..CLIENTS, "mark", |i| {
        if targets.contains(&i) {
            vec!["r-1".to_string()]
        } else {
            vec![]
        }
    });
}
