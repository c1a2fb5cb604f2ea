//! Two nodes of a cluster: two masters of an example, each with its own
//! port and workers, joined through one [`RedisServer`] of the test's own by
//! a `[cluster]` table (nodes `a` and `b`, a short presence TTL). Peers are
//! placed on a chosen node and worker.

use super::{connect_peers_across, peer_on_worker, Peer, RedisServer, Server, REPLY_TIMEOUT};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The nodes' names, in the order [`Nodes`] keeps them.
pub const NODE_NAMES: [&str; 2] = ["a", "b"];

/// The presence TTL the tests give their nodes: short, so a dead node is
/// forgotten quickly, and still ten times the loop's usual latency.
pub const PRESENCE_TTL: Duration = Duration::from_millis(1500);

/// How long cross-node replication (through Redis) may take before a test
/// gives up waiting for the registry to match.
pub const CLUSTER_CONVERGE: Duration = Duration::from_secs(5);

/// The `[cluster]` table of node `node` on the Redis at `redis_url`.
pub fn cluster_toml(redis_url: &str, node: &str, ttl: Duration) -> String {
    format!(
        "[cluster]\nredis_url = \"{redis_url}\"\nnode = \"{node}\"\npresence_ttl_ms = {}\n",
        ttl.as_millis()
    )
}

/// Two `testbed` nodes and their Redis. Dropping it kills the nodes, then
/// Redis.
pub struct Nodes {
    /// Node `a`, then node `b` (fields drop in order: nodes before Redis).
    servers: Vec<Server>,
    /// The node number (`ConnId::node`) of each, as its connections show it.
    numbers: Vec<u32>,
    /// The Redis both use.
    pub redis: RedisServer,
    /// Their presence TTL.
    pub ttl: Duration,
}

impl Nodes {
    /// Starts a Redis and two `testbed` nodes of `count` workers each (one
    /// SO_REUSEPORT socket per worker, so clients reach every worker) with
    /// [`PRESENCE_TTL`].
    #[track_caller]
    pub fn testbed(count: usize) -> Nodes {
        Nodes::testbed_with(count, PRESENCE_TTL)
    }

    /// As [`Nodes::testbed`], with presence TTL `ttl`.
    #[track_caller]
    pub fn testbed_with(count: usize, ttl: Duration) -> Nodes {
        Nodes::testbed_with_toml(count, ttl, "")
    }

    /// As [`Nodes::testbed_with`], with `extra` appended to each node's
    /// config (another table, say `[api]`).
    #[track_caller]
    pub fn testbed_with_toml(count: usize, ttl: Duration, extra: &str) -> Nodes {
        let redis = RedisServer::start();
        let servers: Vec<Server> = NODE_NAMES
            .iter()
            .map(|name| {
                let toml = cluster_toml(&redis.url(), name, ttl) + extra;
                let server = Server::start_ws("testbed", count, &["--reuse-port"], Some(&toml));
                server.wait_workers(count, REPLY_TIMEOUT);
                server
            })
            .collect();
        let numbers: Vec<u32> = servers.iter().map(|s| Peer::connect(s.addr).node).collect();
        assert!(
            numbers.iter().all(|&n| n != 0) && numbers[0] != numbers[1],
            "two nodes of a cluster have distinct node numbers, never 0: {numbers:?}"
        );
        Nodes {
            servers,
            numbers,
            redis,
            ttl,
        }
    }

    /// Node `i` (0 is `a`, 1 is `b`).
    pub fn node(&self, i: usize) -> &Server {
        &self.servers[i]
    }

    /// Node `i`, to signal or kill it.
    pub fn node_mut(&mut self, i: usize) -> &mut Server {
        &mut self.servers[i]
    }

    /// Both nodes' addresses, `a` first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    /// The node number of node `i` (`ConnId::node` of its connections).
    pub fn number(&self, i: usize) -> u32 {
        self.numbers[i]
    }

    /// Which node (0 or 1) a peer is on.
    #[track_caller]
    pub fn index_of(&self, peer: &Peer) -> usize {
        self.numbers
            .iter()
            .position(|&n| n == peer.node)
            .unwrap_or_else(|| panic!("{} is on no node of this cluster", peer.conn))
    }

    /// `n` peers, taking the nodes in turn (peer `i` on node `i % 2`).
    #[track_caller]
    pub fn peers(&self, n: usize) -> Vec<Peer> {
        connect_peers_across(&self.addrs(), n)
    }

    /// A peer on node `node`, worker `worker`: connects until the kernel
    /// hands a connection to that worker.
    #[track_caller]
    pub fn peer_on(&self, node: usize, worker: usize) -> Peer {
        peer_on_worker(self.servers[node].addr, worker)
    }

    /// SIGKILLs node `i`'s master and workers at once; returns when that
    /// happened.
    pub fn kill_node(&mut self, i: usize) -> Instant {
        let at = Instant::now();
        self.servers[i].kill_all();
        at
    }
}
