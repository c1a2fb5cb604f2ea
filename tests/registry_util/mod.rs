//! The registry scenarios, for any layout of `testbed` processes: four
//! workers of one server (`tests/registry.rs`) or two workers on each of two
//! nodes (`tests/cluster_registry.rs`). Each scenario works on units (a
//! worker of a node, [`Peer::unit`]) and checks that every send reaches its
//! targets exactly once, wherever they live, and that every unit's counts
//! and lists equal the truth the test keeps.
//!
//! A test that uses these declares `mod common;` next to `mod registry_util;`.
#![allow(dead_code)]

use crate::common::*;
use serde_json::json;
use std::time::Duration;

/// Peers spread over every unit of a layout.
pub struct Fleet {
    /// The clients.
    pub peers: Vec<Peer>,
    /// Peer indexes by unit, units in (node, worker) order: the workers of
    /// one node come next to each other.
    pub by: Vec<Vec<usize>>,
    /// The units, in that order.
    pub units: Vec<(u32, usize)>,
    /// How long the registry may take to match the truth everywhere.
    pub converge: Duration,
}

impl Fleet {
    /// Groups `peers` by unit; asserts they reach all `units`.
    #[track_caller]
    pub fn new(peers: Vec<Peer>, units: usize, converge: Duration) -> Fleet {
        let spread = spread_units(&peers, units);
        Fleet {
            units: spread.keys().copied().collect(),
            by: spread.into_values().collect(),
            peers,
            converge,
        }
    }

    /// The peers, them by unit, one peer per unit, and the deadline.
    pub fn into_parts(self) -> (Vec<Peer>, Vec<Vec<usize>>, Vec<usize>, Duration) {
        let reps = self.reps();
        (self.peers, self.by, reps, self.converge)
    }

    /// One peer per unit, for registry queries.
    pub fn reps(&self) -> Vec<usize> {
        self.by.iter().map(|w| w[0]).collect()
    }

    /// The index (in [`Fleet::units`]) of peer `i`'s unit.
    pub fn unit_of(&self, i: usize) -> usize {
        let u = self.peers[i].unit();
        self.units.iter().position(|&x| x == u).expect("a unit")
    }

    /// The next unit on the same node as unit `u` (another worker of it).
    pub fn neighbour_unit(&self, u: usize) -> usize {
        let (node, _) = self.units[u];
        let same: Vec<usize> = (0..self.units.len())
            .filter(|&v| self.units[v].0 == node)
            .collect();
        let at = same.iter().position(|&v| v == u).expect("own unit");
        same[(at + 1) % same.len()]
    }
}

/// `send_to_all` from each unit, with and without exclusions, reaches every
/// client exactly once and in order.
pub fn send_to_all_reaches_all_exactly_once(f: Fleet) {
    let (mut peers, by, _, _) = f.into_parts();
    let n = peers.len();
    for (w, on_w) in by.iter().enumerate() {
        let sender = on_w[0];
        // Excluded: the sender itself and one client on each other unit.
        let mut excluded: Vec<usize> = by.iter().filter(|o| o.len() > 1).map(|o| o[1]).collect();
        excluded.retain(|i| !on_w.contains(i));
        excluded.push(sender);
        let exclude: Vec<String> = excluded.iter().map(|&i| peers[i].conn.clone()).collect();

        peers[sender].call(json!({"op": "send_to_all", "data": format!("all-{w}-1")}));
        peers[sender]
            .call(json!({"op": "send_to_all", "data": format!("all-{w}-2"), "exclude": exclude}));
        peers[sender].call(json!({"op": "send_to_all", "data": format!("all-{w}-3")}));
        // Per sender, order is kept: each client's next pushes are exactly these.
        expect_pushes_until(&mut peers, 0..n, &format!("all-{w}-3"), |i| {
            if excluded.contains(&i) {
                vec![format!("all-{w}-1")]
            } else {
                vec![format!("all-{w}-1"), format!("all-{w}-2")]
            }
        });
    }
}

/// `send` between every ordered pair of units (and within one), from one
/// client to every client, and `send_to_uid(s)` to uids with connections on
/// several units: each reaches exactly its targets, once.
pub fn direct_sends_and_send_to_uid_cross_units(f: Fleet) {
    let (mut peers, by, reps, within) = f.into_parts();
    let n = peers.len();
    let truth = Truth::of(&peers);
    converge(&mut peers, &reps, &truth, within);

    // Every ordered pair of units, and one pair on the same unit.
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

    // One sender reaches each client directly.
    let sender = reps[1];
    let ids: Vec<u64> = (0..n)
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

    // uids: "multi" is one connection on each unit but the first; every
    // other connection is u<i>.
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
    converge(&mut peers, &reps, &truth, within);

    // send_to_uid reaches every connection of the uid, nobody else.
    let s0 = reps[0];
    peers[s0].call(json!({"op": "send_to_uid", "uid": "multi", "data": "m-1"}));
    peers[s0].call(json!({"op": "send_to_all", "data": "mark-1"}));
    expect_pushes_until(&mut peers, 0..n, "mark-1", |i| {
        if multi.contains(&i) {
            vec!["m-1".to_string()]
        } else {
            vec![]
        }
    });

    // send_to_uids, from the second unit, to uids on the third and fourth.
    let s1 = reps[1];
    let (t2, t3) = (*by[2].last().expect("peer"), *by[3].last().expect("peer"));
    let uids = [format!("u{t2}"), format!("u{t3}"), "nobody".to_string()];
    peers[s1].call(json!({"op": "send_to_uid", "uids": uids, "data": "m-2"}));
    peers[s1].call(json!({"op": "send_to_all", "data": "mark-2"}));
    expect_pushes_until(&mut peers, 0..n, "mark-2", |i| {
        if i == t2 || i == t3 {
            vec!["m-2".to_string()]
        } else {
            vec![]
        }
    });
}

/// `send_to_group` (with exclusions, after leaves, after `ungroup`) reaches
/// exactly the members, once each.
pub fn send_to_group_reaches_exactly_the_members(f: Fleet) {
    let (mut peers, by, reps, within) = f.into_parts();
    let n = peers.len();
    let mut truth = Truth::of(&peers);

    // Every third client joins.
    call_all(&mut peers, |i, _| {
        if i % 3 == 0 {
            json!({"op": "join", "group": "g1"})
        } else {
            json!({"op": "whoami"})
        }
    });
    for i in (0..n).step_by(3) {
        truth.join(&peers[i].conn, "g1");
    }
    converge(&mut peers, &reps, &truth, within);

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
    expect_pushes_until(&mut peers, 0..n, "mark-1", |i| {
        if members.contains(&conns[i]) && !excluded.contains(&i) {
            vec!["g-1".to_string()]
        } else {
            vec![]
        }
    });

    // Half of the members leave.
    let leavers: Vec<usize> = (0..n).filter(|i| i % 6 == 0).collect();
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
    converge(&mut peers, &reps, &truth, within);

    peers[sender].call(json!({"op": "send_to_group", "group": "g1", "data": "g-2"}));
    peers[sender].call(json!({"op": "send_to_all", "data": "mark-2"}));
    let members = truth.members["g1"].clone();
    expect_pushes_until(&mut peers, 0..n, "mark-2", |i| {
        if members.contains(&conns[i]) {
            vec!["g-2".to_string()]
        } else {
            vec![]
        }
    });

    // ungroup dissolves the group everywhere; a send to it reaches nobody.
    peers[reps[0]].call(json!({"op": "ungroup", "group": "g1"}));
    truth.members.clear();
    converge(&mut peers, &reps, &truth, within);
    peers[sender].call(json!({"op": "send_to_group", "group": "g1", "data": "g-3"}));
    peers[sender].call(json!({"op": "send_to_all", "data": "mark-3"}));
    expect_pushes_until(&mut peers, 0..n, "mark-3", |_| vec![]);
}

/// Binds, joins, leaves, unbinds, closes by the client and closes by the
/// server (issued on another worker of the connection's node): every unit's
/// counts and lists equal the truth.
pub fn counts_and_lists_equal_the_truth_after_joins_leaves_and_closes(f: Fleet) {
    let unit_of: Vec<usize> = (0..f.peers.len()).map(|i| f.unit_of(i)).collect();
    let reps = f.reps();
    let closer_of: Vec<usize> = unit_of.iter().map(|&u| reps[f.neighbour_unit(u)]).collect();
    let units = f.units.len();
    let (mut peers, _, reps, within) = f.into_parts();
    let n = peers.len();
    let mut truth = Truth::of(&peers);

    // 60 uids with two connections each (often on two units), the rest alone.
    // Groups: "even", "tens", and one per unit.
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
    let groups_for = |i: usize| {
        let mut g = vec![format!("w{}", unit_of[i])];
        if i % 2 == 0 {
            g.push("even".to_string());
        }
        if i % 10 == 0 {
            g.push("tens".to_string());
        }
        g
    };
    for round in 0..3 {
        call_all(&mut peers, |i, _| match groups_for(i).get(round) {
            Some(g) => json!({"op": "join", "group": g}),
            None => json!({"op": "whoami"}),
        });
    }
    for (i, p) in peers.iter().enumerate() {
        for g in groups_for(i) {
            truth.join(&p.conn, &g);
        }
    }
    converge(&mut peers, &reps, &truth, within);

    // Leaves, unbinds, closes by the client, closes by the server.
    let protected: Vec<usize> = reps.clone();
    let mut closed = vec![false; n];
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
    for i in (0..n).filter(|i| i % 7 == 3 && !protected.contains(i)) {
        let conn = peers[i].conn.clone();
        peers[closer_of[i]].call(json!({"op": "close", "conn": conn}));
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
    let reps: Vec<usize> = by_unit(&peers).values().map(|v| v[0]).collect();
    assert_eq!(reps.len(), units);
    let took = converge(&mut peers, &reps, &truth, within);
    eprintln!(
        "{} connections, {} uids, {} groups: converged in {took:?}",
        truth.conns.len(),
        truth.uids().len(),
        truth.members.len()
    );
}
