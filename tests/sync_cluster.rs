//! Two sync nodes as one through a Redis of the test's own
//! (`tests/common/redis.rs`): each node a master with two workers, both
//! with a `[cluster]` table naming the Redis and node `a` or `b`. Writes on
//! either node reach subscribers on both in order, and concurrent writes
//! from one base on both nodes give one ack per version.

mod common;
mod sync_util;

use common::{cluster_toml, RedisServer, NODE_NAMES, PRESENCE_TTL};
use serde_json::json;
use sync_util::{
    clients_on_both_workers, expect_every_change, get_doc, put, put_ok, race, Client, Setup,
    SyncServer,
};

/// A Redis and nodes `a` and `b` on it (fields drop in order: the nodes
/// first).
struct Cluster {
    nodes: Vec<SyncServer>,
    redis: RedisServer,
}

impl Cluster {
    #[track_caller]
    fn start(name: &str) -> Cluster {
        let redis = RedisServer::start();
        let nodes = NODE_NAMES
            .iter()
            .map(|node| {
                let setup = Setup::default().extra(&cluster_toml(&redis.url(), node, PRESENCE_TTL));
                SyncServer::start_with(&format!("{name}-{node}"), setup)
            })
            .collect();
        Cluster { nodes, redis }
    }

    /// `n` clients on node `node`, alternating between its workers.
    #[track_caller]
    fn clients(&mut self, node: usize, name: &str, n: usize) -> Vec<Client> {
        clients_on_both_workers(
            &mut self.nodes[node],
            &format!("{name}-{}", NODE_NAMES[node]),
            n,
        )
    }
}

#[test]
fn writes_on_either_node_reach_subscribers_on_both_in_order() {
    let mut cluster = Cluster::start("cl-order");
    let mut subscribers = cluster.clients(1, "sub", 2);
    subscribers.extend(cluster.clients(0, "sub", 2));
    // Writers on both workers of both nodes.
    let mut writers = cluster.clients(0, "pen", 2);
    writers.extend(cluster.clients(1, "pen", 2));
    // One epoch for the cluster.
    let epochs: Vec<&str> = subscribers
        .iter()
        .chain(&writers)
        .map(|c| c.epoch.as_str())
        .collect();
    assert!(epochs.iter().all(|e| *e == epochs[0]), "{epochs:?}");
    for s in &mut subscribers {
        assert_eq!(s.subscribe(&["shared"], None)[0]["version"], 0);
    }
    let mut acked = sync_util::Acks::new();
    let mut base = 0;
    for _ in 0..10 {
        let (got, _) = race(&mut writers, "shared", base);
        base = *got.keys().last().expect("acks");
        acked.extend(got);
    }
    assert_eq!(
        acked.keys().copied().collect::<Vec<u64>>(),
        (1..=base).collect::<Vec<u64>>()
    );
    for s in &mut subscribers {
        expect_every_change(s, "shared", &acked);
    }
    // A get or HTTP GET on the other node after an ack sees it.
    let a = writers[0].request(put("shared", base, &json!("a"), "shared-a"));
    assert_eq!(a["version"], base + 1);
    let d = subscribers[0].request(json!({"type": "get", "key": "shared"}));
    assert!(d["version"].as_u64() >= Some(base + 1), "{d}");
    let r = sync_util::Http::new(cluster.nodes[1].addr()).get("shared");
    assert!(r.json["version"].as_u64() >= Some(base + 1), "{:?}", r.raw);
}

#[test]
fn fifty_concurrent_writes_on_two_nodes_give_one_ack_per_version() {
    let mut cluster = Cluster::start("cl-race");
    let mut writers = cluster.clients(0, "w", 25);
    writers.extend(cluster.clients(1, "w", 25));
    let first = writers[0].request(put("race", 0, &json!("start"), "race-start"));
    assert_eq!(first["version"], 1, "{first}");
    let (acked, rounds) = race(&mut writers, "race", 1);
    assert_eq!(rounds[0], 49, "round one: exactly one ack: {rounds:?}");
    assert_eq!(
        acked.keys().copied().collect::<Vec<u64>>(),
        (2..=51).collect::<Vec<u64>>()
    );
    // A repeated op, sent to node b, is not applied twice.
    let (_, (value, op, client)) = acked.iter().next().expect("an ack");
    let mut again = Client::hello_to(cluster.nodes[1].addr(), client, None);
    let r = again.request(put("race", 1, value, op));
    assert_eq!(
        (&r["type"], &r["version"]),
        (&json!("ack"), &json!(2)),
        "{r}"
    );
    let d = again.request(json!({"type": "get", "key": "race"}));
    assert_eq!(d["version"], 51);
}

/// A writer that follows its key gets each write's `ack` before the write's
/// own `change`, though on a cluster the change also comes back to its
/// worker through Redis's feed, which may beat the store's answer there;
/// writers on the other node keep the key busy meanwhile.
#[test]
fn a_subscribed_writer_gets_its_ack_before_its_own_change() {
    let mut cluster = Cluster::start("cl-ackfirst");
    let mut writer = cluster.clients(0, "own", 1).remove(0);
    let mut others = cluster.clients(1, "busy", 2);
    writer.subscribe(&["own"], None);
    let mut version = 0;
    for i in 0..150 {
        let op = format!("own-{i}");
        let r = writer.send_request(put("own", version, &json!(i), &op));
        // The others write too (from a stale base: conflicts, which the
        // store answers in the same batches).
        for (j, o) in others.iter_mut().enumerate() {
            o.send_request(put("own", 1_000_000, &json!(j), &format!("busy-{i}-{j}")));
        }
        // Frames in arrival order until both the ack and the change are in.
        let (mut ack_at, mut change_at) = (None, None);
        let mut n = 0;
        while ack_at.is_none() || change_at.is_none() {
            let f = writer.recv();
            if f["ref"] == r.as_str() {
                assert_eq!(f["type"], "ack", "{f}");
                version = f["version"].as_u64().expect("a version");
                ack_at = Some(n);
            } else if f["type"] == "change" && f["op"] == op.as_str() {
                change_at = Some(n);
            }
            n += 1;
        }
        assert!(
            ack_at < change_at,
            "write {i}: its change came before its ack"
        );
    }
}

/// Redis emptied under running nodes (FLUSHALL here; a restart without its
/// data is the same): no write is acked under the old epoch, every client
/// is closed with 1012, and comes back to a new epoch with versions from 1.
#[test]
fn a_history_lost_in_redis_closes_clients_into_a_new_epoch() {
    let mut cluster = Cluster::start("cl-lost");
    let mut a = cluster.clients(0, "lost", 1).remove(0);
    let mut b = cluster.clients(1, "lost", 1).remove(0);
    let old = a.epoch.clone();
    assert_eq!(b.epoch, old);
    b.subscribe(&["gone"], None);
    assert_eq!(put_ok(&mut a, "gone", 0, json!(1), "lost-1"), 1);
    cluster.redis.cmd(&["FLUSHALL"]);
    // The next write finds the history gone: not acked (resend, same op),
    // and both nodes' clients are closed.
    a.expect_error(put("gone", 1, &json!(2), "lost-2"), "unavailable");
    assert_eq!(a.expect_close(), Some(1012));
    assert_eq!(b.expect_close(), Some(1012));
    for node in 0..2 {
        let mut c = cluster.clients(node, "back", 1).remove(0);
        assert_ne!(c.epoch, old, "node {node}");
        assert_eq!(get_doc(&mut c, "gone")["version"], 0);
    }
    let mut c = cluster.clients(0, "again", 1).remove(0);
    assert_eq!(put_ok(&mut c, "gone", 0, json!(3), "lost-3"), 1);
}
