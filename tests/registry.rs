//! The online-user registry and the inter-worker bus with four workers and
//! 200 clients, through the `testbed` example: every send reaches its target
//! on whichever worker it lives, and counts and lists equal the truth.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const CLIENTS: usize = 200;
const WORKERS: usize = 4;
/// Replication is eventually consistent (about a millisecond); tests wait on
/// the registry with this deadline.
const CONVERGE: Duration = Duration::from_secs(2);

fn cluster() -> (Server, Vec<Peer>, Vec<Vec<usize>>) {
    let server = start_testbed(WORKERS, None);
    let peers = connect_peers(server.addr, CLIENTS);
    let by = spread(&peers, WORKERS).into_values().collect();
    (server, peers, by)
}

/// One peer per worker, for registry queries.
fn reps(by: &[Vec<usize>]) -> Vec<usize> {
    by.iter().map(|w| w[0]).collect()
}

#[test]
fn send_to_all_reaches_all_200_exactly_once() {
    let (_server, mut peers, by) = cluster();
    for (w, on_w) in by.iter().enumerate() {
        let sender = on_w[0];
        // Excluded: the sender itself and one client on each other worker.
        let mut excluded: Vec<usize> = by.iter().filter(|o| o.len() > 1).map(|o| o[1]).collect();
        excluded.retain(|i| peers[*i].worker != w);
        excluded.push(sender);
        let exclude: Vec<String> = excluded.iter().map(|&i| peers[i].conn.clone()).collect();

        peers[sender].call(json!({"op": "send_to_all", "data": format!("all-{w}-1")}));
        peers[sender]
            .call(json!({"op": "send_to_all", "data": format!("all-{w}-2"), "exclude": exclude}));
        peers[sender].call(json!({"op": "send_to_all", "data": format!("all-{w}-3")}));
        // Per sender, order is kept: each client's next pushes are exactly these.
        expect_pushes_until(&mut peers, 0..CLIENTS, &format!("all-{w}-3"), |i| {
            if excluded.contains(&i) {
                vec![format!("all-{w}-1")]
            } else {
                vec![format!("all-{w}-1"), format!("all-{w}-2")]
            }
        });
    }
}

#[test]
fn direct_sends_and_send_to_uid_cross_workers() {
    let (_server, mut peers, by) = cluster();
    let reps = reps(&by);
    let truth = Truth::of(&peers);
    converge(&mut peers, &reps, &truth, CONVERGE);

    // Every ordered pair of workers, and one pair on the same worker.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for &a in &reps {
        for &b in &reps {
            if a != b {
                pairs.push((a, b));
            }
        }
    }
    pairs.push((by[0][0], *by[0].last().expect("peer")));
    for (a, b) in pairs {
        let to = peers[b].conn.clone();
        let r = peers[a].call(json!({"op": "send_to", "to": to, "data": format!("d-{a}-{b}")}));
        assert_eq!(
            r["ok"],
            json!(true),
            "send_to from {} to {to}",
            peers[a].conn
        );
        assert_eq!(
            peers[b].expect_push(),
            format!("d-{a}-{b}"),
            "{to} from {}",
            peers[a].conn
        );
    }

    // One sender reaches each of the 200 directly.
    let sender = reps[1];
    let ids: Vec<u64> = (0..CLIENTS)
        .map(|i| {
            let to = peers[i].conn.clone();
            peers[sender]
                .send_cmd(json!({"op": "send_to", "to": to, "data": format!("direct-{i}")}))
        })
        .collect();
    for id in ids {
        assert_eq!(
            peers[sender].reply(id)["ok"],
            json!(true),
            "send_to, command {id}"
        );
    }
    for (i, p) in peers.iter_mut().enumerate() {
        assert_eq!(
            p.expect_push(),
            format!("direct-{i}"),
            "peer {i} ({})",
            p.conn
        );
    }

    // uids: "multi" is three connections on three workers; every other
    // connection is u<i>.
    let multi: Vec<usize> = reps[1..].to_vec();
    let mut truth = Truth::of(&peers);
    call_all(&mut peers, |i, _| {
        if multi.contains(&i) {
            json!({"op": "bind", "uid": "multi"})
        } else {
            json!({"op": "bind", "uid": format!("u{i}")})
        }
    });
    for (i, p) in peers.iter().enumerate() {
        let uid = if multi.contains(&i) {
            "multi".to_string()
        } else {
            format!("u{i}")
        };
        truth.bind(&p.conn, &uid);
    }
    converge(&mut peers, &reps, &truth, CONVERGE);

    // send_to_uid reaches every connection of the uid, nobody else.
    let s0 = reps[0];
    peers[s0].call(json!({"op": "send_to_uid", "uid": "multi", "data": "m-1"}));
    peers[s0].call(json!({"op": "send_to_all", "data": "mark-1"}));
    expect_pushes_until(&mut peers, 0..CLIENTS, "mark-1", |i| {
        if multi.contains(&i) {
            vec!["m-1".to_string()]
        } else {
            vec![]
        }
    });

    // send_to_uids, from another worker, to uids on two other workers.
    let s1 = reps[1];
    let (t2, t3) = (*by[2].last().expect("peer"), *by[3].last().expect("peer"));
    let uids = [format!("u{t2}"), format!("u{t3}"), "nobody".to_string()];
    peers[s1].call(json!({"op": "send_to_uid", "uids": uids, "data": "m-2"}));
    peers[s1].call(json!({"op": "send_to_all", "data": "mark-2"}));
    expect_pushes_until(&mut peers, 0..CLIENTS, "mark-2", |i| {
        if i == t2 || i == t3 {
            vec!["m-2".to_string()]
        } else {
            vec![]
        }
    });
}

#[test]
fn send_to_group_reaches_exactly_the_members() {
    let (_server, mut peers, by) = cluster();
    let reps = reps(&by);
    let mut truth = Truth::of(&peers);

    // Every third client joins.
    call_all(&mut peers, |i, _| {
        if i % 3 == 0 {
            json!({"op": "join", "group": "g1"})
        } else {
            json!({"op": "whoami"})
        }
    });
    for i in (0..CLIENTS).step_by(3) {
        truth.join(&peers[i].conn, "g1");
    }
    converge(&mut peers, &reps, &truth, CONVERGE);

    let is_member =
        |truth: &Truth, peers: &[Peer], i: usize| truth.members["g1"].contains(&peers[i].conn);
    let sender = *by[3]
        .iter()
        .find(|&&i| !is_member(&truth, &peers, i))
        .expect("a non-member sender");
    let excluded: Vec<usize> = by[..2]
        .iter()
        .map(|o| {
            *o.iter()
                .find(|&&i| is_member(&truth, &peers, i))
                .expect("a member")
        })
        .collect();
    let exclude: Vec<String> = excluded.iter().map(|&i| peers[i].conn.clone()).collect();
    peers[sender]
        .call(json!({"op": "send_to_group", "group": "g1", "data": "g-1", "exclude": exclude}));
    peers[sender].call(json!({"op": "send_to_all", "data": "mark-1"}));
    let members = truth.members["g1"].clone();
    let conns: Vec<String> = peers.iter().map(|p| p.conn.clone()).collect();
    expect_pushes_until(&mut peers, 0..CLIENTS, "mark-1", |i| {
        if members.contains(&conns[i]) && !excluded.contains(&i) {
            vec!["g-1".to_string()]
        } else {
            vec![]
        }
    });

    // Half of the members leave.
    let leavers: Vec<usize> = (0..CLIENTS).filter(|i| i % 6 == 0).collect();
    call_all(&mut peers, |i, _| {
        if leavers.contains(&i) {
            json!({"op": "leave", "group": "g1"})
        } else {
            json!({"op": "whoami"})
        }
    });
    for &i in &leavers {
        truth.leave(&peers[i].conn, "g1");
    }
    converge(&mut peers, &reps, &truth, CONVERGE);

    peers[sender].call(json!({"op": "send_to_group", "group": "g1", "data": "g-2"}));
    peers[sender].call(json!({"op": "send_to_all", "data": "mark-2"}));
    let members = truth.members["g1"].clone();
    expect_pushes_until(&mut peers, 0..CLIENTS, "mark-2", |i| {
        if members.contains(&conns[i]) {
            vec!["g-2".to_string()]
        } else {
            vec![]
        }
    });

    // ungroup dissolves the group everywhere; a send to it reaches nobody.
    peers[reps[0]].call(json!({"op": "ungroup", "group": "g1"}));
    truth.members.clear();
    converge(&mut peers, &reps, &truth, CONVERGE);
    peers[sender].call(json!({"op": "send_to_group", "group": "g1", "data": "g-3"}));
    peers[sender].call(json!({"op": "send_to_all", "data": "mark-3"}));
    expect_pushes_until(&mut peers, 0..CLIENTS, "mark-3", |_| vec![]);
}

#[test]
fn counts_and_lists_equal_the_truth_after_joins_leaves_and_closes() {
    let (_server, mut peers, by) = cluster();
    let reps = reps(&by);
    let mut truth = Truth::of(&peers);

    // 60 uids with two connections each (often on two workers), 80 alone.
    // Groups: "even", "tens", and one per worker.
    let uid_for = |i: usize| {
        if i < 120 {
            format!("pair{}", i / 2)
        } else {
            format!("solo{i}")
        }
    };
    call_all(&mut peers, |i, _| json!({"op": "bind", "uid": uid_for(i)}));
    for (i, p) in peers.iter().enumerate() {
        truth.bind(&p.conn, &uid_for(i));
    }
    let groups_for = |i: usize, w: usize| {
        let mut g = vec![format!("w{w}")];
        if i % 2 == 0 {
            g.push("even".to_string());
        }
        if i % 10 == 0 {
            g.push("tens".to_string());
        }
        g
    };
    for round in 0..3 {
        call_all(&mut peers, |i, p| {
            match groups_for(i, p.worker).get(round) {
                Some(g) => json!({"op": "join", "group": g}),
                None => json!({"op": "whoami"}),
            }
        });
    }
    for (i, p) in peers.iter().enumerate() {
        for g in groups_for(i, p.worker) {
            truth.join(&p.conn, &g);
        }
    }
    converge(&mut peers, &reps, &truth, CONVERGE);

    // Leaves, unbinds, closes by the client, closes by the server (issued
    // on another worker than the connection's).
    let protected: Vec<usize> = reps.clone();
    let mut closed = [false; CLIENTS];
    call_all(&mut peers, |i, _| {
        if i % 4 == 0 {
            json!({"op": "leave", "group": "even"})
        } else if (100..110).contains(&i) {
            json!({"op": "unbind"})
        } else {
            json!({"op": "whoami"})
        }
    });
    for (i, p) in peers.iter().enumerate() {
        if i % 4 == 0 {
            truth.leave(&p.conn, "even");
        } else if (100..110).contains(&i) {
            truth.uid_of.remove(&p.conn);
        }
    }
    for i in (0..CLIENTS).filter(|i| i % 7 == 3 && !protected.contains(i)) {
        let conn = peers[i].conn.clone();
        let closer = reps[(peers[i].worker + 1) % WORKERS];
        peers[closer].call(json!({"op": "close", "conn": conn}));
        match peers[i].ws.recv(REPLY_TIMEOUT) {
            Recv::Close(_) | Recv::Gone(_) => {}
            other => panic!("peer {i} closed by the server: got {other:?}"),
        }
        truth.close(&conn);
        closed[i] = true;
    }
    let mut kept = Vec::new();
    for (i, p) in peers.into_iter().enumerate() {
        if closed[i] {
            continue;
        }
        if i % 5 == 1 && !protected.contains(&i) {
            truth.close(&p.conn);
            p.close();
        } else {
            kept.push(p);
        }
    }
    let mut peers = kept;
    let reps: Vec<usize> = by_worker(&peers).values().map(|v| v[0]).collect();
    assert_eq!(reps.len(), WORKERS);
    let took = converge(&mut peers, &reps, &truth, CONVERGE);
    eprintln!(
        "{} connections, {} uids, {} groups: converged in {took:?}",
        truth.conns.len(),
        truth.uids().len(),
        truth.members.len()
    );
}

#[test]
fn session_data_and_close_reach_across_workers() {
    let (_server, mut peers, by) = cluster();
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
    let (_server, mut peers, by) = cluster();
    let reps = reps(&by);
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
