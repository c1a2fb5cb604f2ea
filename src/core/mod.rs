//! The worker core: everything one worker knows, owned by its loop and lent
//! to the handler as a [`crate::Ctx`] for the length of a callback.
//!
//! - `conn.rs`: one connection and its [`conn::Lifecycle`];
//! - `lifecycle.rs`: the side effects of each step of a life (registry,
//!   bus, callbacks owed);
//! - `route.rs`: sends, encoded once and queued under the output cap, to
//!   local connections or across the bus;
//! - `peers.rs`: what other workers say, applied to this core;
//! - `nodes.rs`: the same for other nodes of a cluster, through Redis;
//! - `dial.rs`: outbound connections' options and state;
//! - `hold.rs`: output held back from a connection ([`crate::Ctx::hold_output`]);
//! - `timer.rs`, `pool.rs`: timers and the blocking-work pool.

pub(crate) mod conn;
pub(crate) mod dial;
mod hold;
mod lifecycle;
pub(crate) mod membership;
mod nodes;
mod outbound;
mod peers;
pub(crate) mod pool;
mod route;
pub(crate) mod timer;

use crate::cluster::bus::Bus;
use crate::cluster::node::Cluster;
use crate::cluster::registry::Registry;
use crate::config::Config;
use crate::error::ConnError;
use crate::id::ConnId;
use crate::proto::codec::Wire;
use crate::proto::ws::CloseFrame;
use crate::shm::Scoreboard;
use bytes::Bytes;
use conn::Conn;
use pool::{JobId, JobResult, Pool};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use timer::Timers;

/// Wakes a worker's loop from any thread; the worker then calls
/// [`crate::Handler::on_wake`]. Cheap to clone; wakes are coalesced.
#[derive(Clone)]
pub struct Waker(pub(crate) Arc<mio::Waker>);

impl Waker {
    /// Makes the worker call `on_wake` soon. Never blocks.
    pub fn wake(&self) {
        if let Err(e) = self.0.wake() {
            log::error!("waker: {e}");
        }
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// A callback owed to the handler, run after the current one returns.
pub(crate) enum Deferred {
    /// `on_error` (with an error) then `on_close` (with the peer's close
    /// frame, if it sent one).
    Closed(ConnId, Option<ConnError>, Option<CloseFrame>),
    /// `on_error` alone: an outbound attempt failed before `on_connect`.
    Failed(ConnId, ConnError),
    WorkerMessage(usize, Bytes),
    BufferFull(ConnId),
    BufferDrain(ConnId),
    JobDone(JobId, JobResult),
}

/// Counters a worker keeps.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub(crate) dropped_sends: u64,
    /// Messages handed to `on_message`.
    pub(crate) messages_in: u64,
}

/// Everything a worker knows; see the module docs.
pub(crate) struct Core {
    pub(crate) cfg: Arc<Config>,
    pub(crate) slot: u16,
    /// This node's number in [`ConnId`]s: 0 without a cluster.
    pub(crate) node: u32,
    pub(crate) count: u16,
    /// How messages look on the listener's connections.
    pub(crate) wire: Wire,
    pub(crate) conns: Slab<Conn>,
    /// Keys of connections with output to write this turn.
    pub(crate) dirty: Vec<usize>,
    pub(crate) deferred: VecDeque<Deferred>,
    /// Scratch list of local recipients, reused by every delivery.
    keys: Vec<usize>,
    /// Connections whose reading was resumed: the loop reads them, since no
    /// new readiness edge may come for data that arrived while paused.
    pub(crate) resumed: Vec<usize>,
    /// Outbound attempts to start: when, the key and its serial.
    redials: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    pub(crate) registry: Registry,
    pub(crate) bus: Bus,
    /// The links to other nodes, with `[cluster]`.
    pub(crate) cluster: Option<Box<Cluster>>,
    pub(crate) timers: Timers,
    pub(crate) pool: Pool,
    pub(crate) waker: Waker,
    /// The loop's clock, read once per poll.
    pub(crate) now: Instant,
    pub(crate) stats: Stats,
    pub(crate) mio: mio::Registry,
    /// The worker is stopping: nothing new is opened.
    pub(crate) stopping: bool,
    /// Heartbeats and per-address counts, shared by all processes.
    pub(crate) board: Scoreboard,
    /// The RabbitMQ bridge, with `[amqp]`, once the loop started it.
    pub(crate) amqp: Option<crate::amqp::Bridge>,
}

/// What the loop hands [`Core::new`].
pub(crate) struct CoreParts {
    pub(crate) cfg: Arc<Config>,
    pub(crate) slot: u16,
    pub(crate) bus: Bus,
    pub(crate) waker: Arc<mio::Waker>,
    pub(crate) mio: mio::Registry,
    pub(crate) board: Scoreboard,
}

impl Core {
    pub(crate) fn new(p: CoreParts) -> Self {
        let cfg = p.cfg;
        let pool = Pool::new(cfg.blocking_threads, cfg.blocking_queue, p.waker.clone());
        Core {
            slot: p.slot,
            node: cfg.cluster.as_ref().map_or(0, |c| c.node_number()),
            count: cfg.count as u16,
            wire: Wire::server(cfg.protocol),
            conns: Slab::new(),
            dirty: Vec::new(),
            deferred: VecDeque::new(),
            keys: Vec::new(),
            resumed: Vec::new(),
            redials: BinaryHeap::new(),
            registry: Registry::default(),
            bus: p.bus,
            cluster: cfg.cluster.as_ref().map(|c| {
                Box::new(Cluster::new(
                    c,
                    p.slot,
                    cfg.bus_peer_buffer_bytes,
                    Instant::now(),
                ))
            }),
            timers: Timers::default(),
            pool,
            waker: Waker(p.waker),
            now: Instant::now(),
            stats: Stats::default(),
            mio: p.mio,
            stopping: false,
            board: p.board,
            amqp: None,
            cfg,
        }
    }

    /// A serial no connection of this slot ever had.
    pub(crate) fn next_serial(&self) -> u64 {
        self.board.next_serial(self.slot as usize)
    }

    pub(crate) fn id_of(&self, key: usize, c: &Conn) -> ConnId {
        self.make_id(key, c.serial)
    }

    /// The id of this worker's connection with slab key `key`.
    pub(crate) fn make_id(&self, key: usize, serial: u64) -> ConnId {
        ConnId::on_node(self.node, self.slot, key as u32, serial)
    }

    /// Whether a connection is this worker's (whatever its state).
    pub(crate) fn is_mine(&self, conn: ConnId) -> bool {
        conn.worker == self.slot && conn.node == self.node
    }

    /// Whether a connection is on this node (any worker of this server).
    pub(crate) fn on_this_node(&self, conn: ConnId) -> bool {
        conn.node == self.node
    }

    /// The slab key of a local connection with this id, whatever its phase.
    pub(crate) fn key_of(&self, conn: ConnId) -> Option<usize> {
        if !self.is_mine(conn) {
            return None;
        }
        let key = conn.key as usize;
        match self.conns.get(key) {
            Some(c) if c.serial == conn.serial => Some(key),
            _ => None,
        }
    }

    /// The slab key of an open local connection.
    pub(crate) fn local_key(&self, conn: ConnId) -> Option<usize> {
        self.key_of(conn).filter(|&k| self.conns[k].life.is_open())
    }

    pub(crate) fn owns(&self, conn: ConnId) -> bool {
        self.local_key(conn).is_some()
    }

    pub(crate) fn mark_dirty(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.marks.dirty {
                c.marks.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Starts the RabbitMQ bridge's thread, with `[amqp]`, once this
    /// worker has heard from every other one (so that a push is routed
    /// with the whole registry, not an empty replica) or `by` passed. In
    /// the worker, after fork: the master has no threads.
    pub(crate) fn start_amqp(&mut self, by: Instant) {
        if self.amqp.is_some() || !(self.bus.heard_from_all() || self.now >= by) {
            return;
        }
        if let Some(cfg) = &self.cfg.amqp {
            self.amqp = Some(crate::amqp::Bridge::start(
                cfg,
                self.slot,
                self.waker.0.clone(),
            ));
        }
    }

    /// Takes the results of finished blocking jobs and owes their callbacks.
    pub(crate) fn collect_jobs(&mut self) {
        let mut done = Vec::new();
        self.pool.take_done(&mut done);
        self.deferred
            .extend(done.into_iter().map(|(id, r)| Deferred::JobDone(id, r)));
    }
}
