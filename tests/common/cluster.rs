//! A `testbed` cluster: start it, group peers by the worker they landed on,
//! and compare what every worker's registry says with the truth a test keeps.

use super::{strings, Peer, Server, REPLY_TIMEOUT};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Starts `testbed` with `count` workers and waits for them. Uses one
/// SO_REUSEPORT socket per worker: the kernel spreads connections over the
/// workers by hash, so a few hundred clients reach every worker, also one
/// that started late (a shared socket spreads them by the workers' loads,
/// tested in `core_listeners.rs`).
#[track_caller]
pub fn start_testbed(count: usize, toml: Option<&str>) -> Server {
    let server = Server::start_ws("testbed", count, &["--reuse-port"], toml);
    server.wait_workers(count, REPLY_TIMEOUT);
    server
}

/// Connects a first peer, then more until one lands on the first's worker (its
/// neighbour) and one on another worker (a stranger): (first, neighbour,
/// stranger). Works with one shared listening socket too, where the kernel
/// does not spread connections evenly (and a worker that is still starting
/// takes none), so it keeps trying until [`REPLY_TIMEOUT`].
#[track_caller]
pub fn neighbour_and_stranger(server: &Server) -> (Peer, Peer, Peer) {
    let first = Peer::connect(server.addr);
    let (mut neighbour, mut stranger) = (None, None);
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while neighbour.is_none() || stranger.is_none() {
        assert!(
            Instant::now() < deadline,
            "within {REPLY_TIMEOUT:?}, no client landed {}",
            if neighbour.is_none() {
                "on the first one's worker"
            } else {
                "on another worker"
            }
        );
        let p = Peer::connect(server.addr);
        if p.worker == first.worker {
            neighbour.get_or_insert(p);
        } else {
            stranger.get_or_insert(p);
        }
    }
    (
        first,
        neighbour.expect("neighbour"),
        stranger.expect("stranger"),
    )
}

/// Peer indexes by worker slot.
pub fn by_worker(peers: &[Peer]) -> BTreeMap<usize, Vec<usize>> {
    group_peers(peers, |p| p.worker)
}

/// Peer indexes by unit (node, worker): on a cluster, the workers of one
/// node come next to each other.
pub fn by_unit(peers: &[Peer]) -> BTreeMap<(u32, usize), Vec<usize>> {
    group_peers(peers, Peer::unit)
}

fn group_peers<K: Ord>(peers: &[Peer], key: impl Fn(&Peer) -> K) -> BTreeMap<K, Vec<usize>> {
    let mut out: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (i, p) in peers.iter().enumerate() {
        out.entry(key(p)).or_default().push(i);
    }
    out
}

/// Asserts that the peers landed on all `count` workers; returns them by worker.
#[track_caller]
pub fn spread(peers: &[Peer], count: usize) -> BTreeMap<usize, Vec<usize>> {
    assert_spread(by_worker(peers), count, "workers")
}

/// Asserts that the peers landed on all `count` units (every worker of every
/// node); returns them by unit.
#[track_caller]
pub fn spread_units(peers: &[Peer], count: usize) -> BTreeMap<(u32, usize), Vec<usize>> {
    assert_spread(by_unit(peers), count, "units (node, worker)")
}

#[track_caller]
fn assert_spread<K: Ord + std::fmt::Debug + Clone>(
    w: BTreeMap<K, Vec<usize>>,
    count: usize,
    what: &str,
) -> BTreeMap<K, Vec<usize>> {
    let sizes: Vec<(K, usize)> = w.iter().map(|(k, v)| (k.clone(), v.len())).collect();
    let n: usize = w.values().map(Vec::len).sum();
    assert_eq!(
        w.len(),
        count,
        "{n} clients should land on all {count} {what}: {sizes:?}"
    );
    w
}

/// Where a peer lives, for messages: `worker W`, or `node N worker W`.
pub fn place_of(peer: &Peer) -> String {
    match peer.node {
        0 => format!("worker {}", peer.worker),
        n => format!("node {n} worker {}", peer.worker),
    }
}

/// What the registry should say, kept by the test.
#[derive(Default, Clone, Debug)]
pub struct Truth {
    /// Open connections.
    pub conns: BTreeSet<String>,
    /// conn -> its uid.
    pub uid_of: BTreeMap<String, String>,
    /// group -> its member conns.
    pub members: BTreeMap<String, BTreeSet<String>>,
}

impl Truth {
    /// Every peer open, no uid, no group.
    pub fn of(peers: &[Peer]) -> Truth {
        Truth {
            conns: peers.iter().map(|p| p.conn.clone()).collect(),
            ..Truth::default()
        }
    }

    pub fn bind(&mut self, conn: &str, uid: &str) {
        self.uid_of.insert(conn.into(), uid.into());
    }

    pub fn join(&mut self, conn: &str, group: &str) {
        self.members
            .entry(group.into())
            .or_default()
            .insert(conn.into());
    }

    pub fn leave(&mut self, conn: &str, group: &str) {
        if let Some(m) = self.members.get_mut(group) {
            m.remove(conn);
        }
        self.members.retain(|_, m| !m.is_empty());
    }

    /// A connection closed: it leaves every uid and group.
    pub fn close(&mut self, conn: &str) {
        self.conns.remove(conn);
        self.uid_of.remove(conn);
        for m in self.members.values_mut() {
            m.remove(conn);
        }
        self.members.retain(|_, m| !m.is_empty());
    }

    pub fn uids(&self) -> BTreeSet<String> {
        self.uid_of.values().cloned().collect()
    }

    pub fn conns_of_uid(&self, uid: &str) -> BTreeSet<String> {
        self.uid_of
            .iter()
            .filter(|(_, u)| *u == uid)
            .map(|(c, _)| c.clone())
            .collect()
    }

    pub fn group_uids(&self, group: &str) -> BTreeSet<String> {
        self.members
            .get(group)
            .map(|m| {
                m.iter()
                    .filter_map(|c| self.uid_of.get(c).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where `peer`'s worker disagrees with the truth; empty if nowhere.
    /// Checks counts and lists, every group, and a sample of uids and conns.
    pub fn diff(&self, peer: &mut Peer) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: String, got: String, want: String| {
            if got != want {
                out.push(format!("{what}: got {got}, want {want}"));
            }
        };
        let s = peer.stats();
        let set = |v: &serde_json::Value| strings(v).into_iter().collect::<BTreeSet<String>>();
        check(
            "connection_count".into(),
            s["connection_count"].to_string(),
            self.conns.len().to_string(),
        );
        check(
            "connections".into(),
            short(&set(&s["connections"])),
            short(&self.conns),
        );
        check(
            "uid_count".into(),
            s["uid_count"].to_string(),
            self.uids().len().to_string(),
        );
        check("uids".into(), short(&set(&s["uids"])), short(&self.uids()));
        let groups: BTreeSet<String> = self.members.keys().cloned().collect();
        check("groups".into(), short(&set(&s["groups"])), short(&groups));
        for (g, m) in &self.members {
            let q = peer.call(json!({"op": "group", "group": g}));
            check(
                format!("group {g} count"),
                q["count"].to_string(),
                m.len().to_string(),
            );
            check(
                format!("group {g} conns"),
                short(&set(&q["conns"])),
                short(m),
            );
            check(
                format!("group {g} uids"),
                short(&set(&q["uids"])),
                short(&self.group_uids(g)),
            );
        }
        for uid in self.uids().iter().take(4) {
            let q = peer.call(json!({"op": "uid", "uid": uid}));
            check(
                format!("uid {uid} conns"),
                short(&set(&q["conns"])),
                short(&self.conns_of_uid(uid)),
            );
            check(
                format!("uid {uid} online"),
                q["online"].to_string(),
                "true".into(),
            );
        }
        for conn in self.conns.iter().step_by(23) {
            let q = peer.call(json!({"op": "conn", "conn": conn}));
            check(
                format!("conn {conn} online"),
                q["online"].to_string(),
                "true".into(),
            );
            let want_uid = self
                .uid_of
                .get(conn)
                .map_or("null".into(), |u| format!("{u:?}"));
            check(format!("conn {conn} uid"), q["uid"].to_string(), want_uid);
            let want: BTreeSet<String> = self
                .members
                .iter()
                .filter(|(_, m)| m.contains(conn))
                .map(|(g, _)| g.clone())
                .collect();
            check(
                format!("conn {conn} groups"),
                short(&set(&q["groups"])),
                short(&want),
            );
        }
        out
    }
}

/// A set as text, abbreviated past a few items (with its size).
fn short(set: &BTreeSet<String>) -> String {
    let items: Vec<&str> = set.iter().take(6).map(String::as_str).collect();
    let more = if set.len() > 6 { ", ..." } else { "" };
    format!("{}[{}{more}]", set.len(), items.join(", "))
}

/// Polls every peer in `reps` (one per worker) until each worker's registry
/// matches `truth`; returns how long that took. Panics with the remaining
/// differences after `timeout`.
#[track_caller]
pub fn converge(peers: &mut [Peer], reps: &[usize], truth: &Truth, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut diffs = Vec::new();
        for &r in reps {
            let w = place_of(&peers[r]);
            diffs.extend(
                truth
                    .diff(&mut peers[r])
                    .into_iter()
                    .map(|d| format!("{w}: {d}")),
            );
        }
        if diffs.is_empty() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!(
                "the registry did not match the truth within {timeout:?}:\n  {}",
                diffs.join("\n  ")
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads each listed peer's pushes up to and including `marker`, and checks
/// they are exactly `expected(i)` followed by the marker.
#[track_caller]
pub fn expect_pushes_until(
    peers: &mut [Peer],
    which: impl IntoIterator<Item = usize>,
    marker: &str,
    expected: impl Fn(usize) -> Vec<String>,
) {
    for i in which {
        let mut got = Vec::new();
        loop {
            let p = peers[i].expect_push();
            if p == marker {
                break;
            }
            got.push(p);
            assert!(
                got.len() <= 1000,
                "peer {i} ({}): no marker {marker:?}",
                peers[i].conn
            );
        }
        assert_eq!(
            got,
            expected(i),
            "peer {i} ({}, {}) before {marker:?}",
            peers[i].conn,
            place_of(&peers[i])
        );
    }
}
