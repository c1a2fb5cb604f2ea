//! [`Deployment`]: the chat as one server with two workers, or as two nodes
//! (two masters on two ports, two workers each) of a cluster through one
//! Redis of the test's own. Scenarios place clients on numbered slots, so
//! the same scenario runs on both: slot `i` is worker `i % 2` of the one
//! server, or on the cluster node `i % 2` (`a`, `b`, `a`, `b`, ...), worker
//! `(i / 2) % 2`. Slots 0 and 1 are thus two workers of one server, or two
//! nodes; slots 0 to 3 cover every worker of both nodes.

use super::{ChatServer, Client};
use crate::common::{cluster_toml, RedisServer, NODE_NAMES, PRESENCE_TTL};

/// Workers per server.
pub const WORKERS: usize = 2;

/// A chat of one server or of two nodes.
pub struct Deployment {
    /// The servers: one, or nodes `a` and `b` (dropped before Redis).
    pub servers: Vec<ChatServer>,
    /// The cluster's Redis; `None` for one server.
    pub redis: Option<RedisServer>,
}

impl Deployment {
    /// One server of [`WORKERS`] workers with `extra` TOML (see
    /// [`ChatServer::start`]).
    #[track_caller]
    pub fn one(name: &str, extra: &str) -> Deployment {
        Deployment {
            servers: vec![ChatServer::start(name, WORKERS, extra)],
            redis: None,
        }
    }

    /// Two nodes of [`WORKERS`] workers each, with `extra` TOML and a
    /// `[cluster]` table naming a fresh Redis, node `a` or `b` and
    /// [`PRESENCE_TTL`].
    #[track_caller]
    pub fn two(name: &str, extra: &str) -> Deployment {
        let redis = RedisServer::start();
        let servers = NODE_NAMES
            .iter()
            .map(|node| {
                let toml = format!("{extra}{}", cluster_toml(&redis.url(), node, PRESENCE_TTL));
                ChatServer::start(&format!("{name}-{node}"), WORKERS, &toml)
            })
            .collect();
        Deployment {
            servers,
            redis: Some(redis),
        }
    }

    /// Whether this is a cluster of two nodes.
    pub fn is_cluster(&self) -> bool {
        self.redis.is_some()
    }

    /// The cluster's Redis; panics on one server.
    #[track_caller]
    pub fn redis(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("a cluster has a Redis")
    }

    /// Where slot `slot` lives: (server index, worker).
    pub fn place(&self, slot: usize) -> (usize, usize) {
        let n = self.servers.len();
        (slot % n, (slot / n) % WORKERS)
    }

    /// The server of slot `slot`.
    pub fn server(&self, slot: usize) -> &ChatServer {
        &self.servers[self.place(slot).0]
    }

    /// Logs in as `name` on slot `slot`'s server and worker.
    #[track_caller]
    pub fn login_on(&self, name: &str, slot: usize) -> Client {
        let (s, worker) = self.place(slot);
        Client::login_on(&self.servers[s], name, worker)
    }

    /// Connects (without login) to slot `slot`'s server, any worker.
    #[track_caller]
    pub fn connect(&self, slot: usize) -> Client {
        Client::connect(self.server(slot))
    }
}
