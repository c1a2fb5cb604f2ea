//! Other nodes of a cluster, as this core sees them: what they say applied
//! (their registry changes, deliveries for this node), this worker's own
//! registry changes handed to the cluster, and the link's turn.

use super::Core;
use crate::cluster::node::{ClusterStats, Incoming};
use crate::cluster::wire::Record;
use crate::id::ConnId;

impl Core {
    /// Tells the other workers, and the other nodes, of a registry change of
    /// one of this worker's connections.
    pub(crate) fn announce(&mut self, rec: Record) {
        if let Some(cl) = &mut self.cluster {
            cl.note(&rec);
        }
        self.bus.broadcast(&rec);
    }

    /// Applies what the cluster said.
    pub(crate) fn apply_cluster(&mut self, items: Vec<Incoming>) {
        for item in items {
            match item {
                Incoming::ClearUnit(node, slot) => self.registry.clear_unit(node, slot),
                Incoming::Apply(node, slot, rec) => self.apply_remote(node, slot, rec),
                Incoming::Node(rec) => self.apply_for_node(rec),
                Incoming::Assert => {
                    let own = self.listed_ids();
                    if let Some(cl) = &mut self.cluster {
                        cl.assert_state(&self.registry, &own, self.now);
                    }
                }
            }
        }
    }

    /// A registry change another node's unit made to its own connection.
    fn apply_remote(&mut self, node: u32, slot: u16, rec: Record) {
        let theirs = |id: &ConnId| id.node == node && id.worker == slot;
        let r = &mut self.registry;
        match rec {
            Record::Open(id) if theirs(&id) => r.open(id),
            Record::Close(id) if theirs(&id) => r.close(id),
            Record::Bind(id, uid) if theirs(&id) => {
                r.bind(id, &uid);
            }
            Record::Unbind(id) if theirs(&id) => {
                r.unbind(id);
            }
            Record::Join(id, g) if theirs(&id) => {
                r.join(id, &g);
            }
            Record::Leave(id, g) if theirs(&id) => {
                r.leave(id, &g);
            }
            Record::Session(id, data) if theirs(&id) => {
                r.set_session(id, data);
            }
            other => log::warn!("cluster: a unit announced a change it does not own: {other:?}"),
        }
    }

    /// What another node sent this node: each worker takes its part.
    fn apply_for_node(&mut self, rec: Record) {
        match rec {
            Record::Deliver { target, payload } => self.deliver_local(&target, payload),
            Record::CloseConn { id, code, reason } => {
                if let Some(key) = self.local_key(id) {
                    self.begin_close(key, code, &reason, None);
                }
            }
            Record::Ungroup(g) => self.ungroup_local(&g),
            Record::Request(inner) => self.requested(*inner),
            other => log::warn!("cluster: an unexpected record for this node: {other:?}"),
        }
    }

    /// Sends `rec` to the node that owns `conn`. False if it cannot go.
    pub(crate) fn send_owner_node(&mut self, conn: ConnId, rec: &Record) -> bool {
        let now = self.now;
        match &mut self.cluster {
            Some(cl) => cl.send_node(conn.node, rec, now),
            None => false,
        }
    }

    /// Sends `rec` to every other node. True without a cluster.
    pub(crate) fn send_other_nodes(&mut self, rec: &Record) -> bool {
        let now = self.now;
        match &mut self.cluster {
            Some(cl) => cl.send_all_nodes(rec, now),
            None => true,
        }
    }

    /// The cluster's part of a loop turn: connect, heartbeats, expiry.
    pub(crate) fn cluster_tick(&mut self) {
        let Some(cl) = &mut self.cluster else { return };
        let mut items = Vec::new();
        cl.read_unread(&self.mio, self.now, &mut items);
        if self.now >= cl.next_due() {
            cl.tick(&self.mio, self.now, &mut items);
        }
        self.apply_cluster(items);
    }

    /// The cluster's figures, with the remote connections counted, and its
    /// config.
    pub(crate) fn cluster_stats(&self) -> Option<(ClusterStats, &crate::config::ClusterConfig)> {
        let cl = self.cluster.as_ref()?;
        let mut s = cl.stats.clone();
        s.remote_connections = self.registry.remote_count(self.node);
        Some((s, self.cfg.cluster.as_ref()?))
    }

    /// Says goodbye to the cluster (the worker stops).
    pub(crate) fn cluster_leave(&mut self) {
        if let Some(cl) = &mut self.cluster {
            cl.leave(self.now);
        }
    }

    /// Writes this turn's cluster output.
    pub(crate) fn cluster_flush(&mut self) {
        if let Some(cl) = &mut self.cluster {
            cl.flush(&self.registry, &self.mio, self.now);
        }
    }

    /// A readiness event of a cluster link.
    pub(crate) fn cluster_event(&mut self, token: mio::Token, ev: &mio::event::Event) {
        let Some(cl) = &mut self.cluster else { return };
        let mut items = Vec::new();
        cl.event(token, ev, &self.mio, self.now, &mut items);
        self.apply_cluster(items);
    }
}
