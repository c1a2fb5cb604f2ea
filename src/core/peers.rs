//! What other workers say over the bus, applied to this core, and the
//! snapshot of this worker's part of the registry that a fresh link gets.

use super::{Core, Deferred};
use crate::cluster::bus::Inbox;
use crate::cluster::wire::Record;
use crate::id::ConnId;

impl Core {
    /// Applies what a peer worker said.
    pub(crate) fn apply(&mut self, item: Inbox) {
        match item {
            Inbox::SlotGone(slot) | Inbox::SlotReset(slot) => {
                self.registry.clear_unit(self.node, slot)
            }
            Inbox::Record(slot, rec) => self.apply_record(slot, rec),
            // The loop calls the handler's `on_gap`; nothing to apply.
            Inbox::Gap(..) => {}
        }
    }

    fn apply_record(&mut self, slot: u16, rec: Record) {
        let node = self.node;
        let theirs = |id: &ConnId| id.worker == slot && id.node == node;
        match rec {
            Record::Open(id) if theirs(&id) => self.registry.open(id),
            Record::Close(id) if theirs(&id) => self.registry.close(id),
            Record::Bind(id, uid) if theirs(&id) => {
                self.registry.bind(id, &uid);
            }
            Record::Unbind(id) if theirs(&id) => {
                self.registry.unbind(id);
            }
            Record::Join(id, g) if theirs(&id) => {
                self.registry.join(id, &g);
            }
            Record::Leave(id, g) if theirs(&id) => {
                self.registry.leave(id, &g);
            }
            Record::Session(id, data) if theirs(&id) => {
                self.registry.set_session(id, data);
            }
            Record::Ungroup(g) => self.ungroup_local(&g),
            Record::Request(inner) => self.requested(*inner),
            Record::Deliver { target, payload } => self.deliver_local(&target, payload),
            Record::WorkerMsg(data) => self
                .deferred
                .push_back(Deferred::WorkerMessage(slot as usize, data)),
            Record::CloseConn { id, code, reason } => {
                if let Some(key) = self.local_key(id) {
                    self.begin_close(key, code, &reason, None);
                }
            }
            other => log::warn!(
                "bus: worker {slot} sent a record about another worker's connection: {other:?}"
            ),
        }
    }

    /// A registry change another worker (or node) asked of this one's
    /// connection.
    pub(crate) fn requested(&mut self, rec: Record) {
        match rec {
            Record::Bind(id, uid) if self.owns(id) => self.bind_uid(id, &uid),
            Record::Unbind(id) if self.owns(id) => self.unbind_uid(id),
            Record::Join(id, g) if self.owns(id) => self.join_group(id, &g),
            Record::Leave(id, g) if self.owns(id) => self.leave_group(id, &g),
            Record::Session(id, data) if self.owns(id) => {
                self.set_session(id, data);
            }
            // The connection closed meanwhile: nothing to change.
            _ => {}
        }
    }

    /// This worker's connections that are in the registry.
    pub(crate) fn listed_ids(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.marks.listed)
            .map(|(k, c)| self.id_of(k, c))
            .collect()
    }

    /// Queues this worker's part of the registry for a fresh link to `slot`.
    fn send_snapshot(&mut self, slot: u16) {
        let mine = self.listed_ids();
        for id in mine {
            self.bus.send(slot, &Record::Open(id));
            let (uid, groups, session) = self.registry.describe(id);
            let mut recs = Vec::new();
            if let Some(uid) = uid {
                recs.push(Record::Bind(id, uid.to_string()));
            }
            for g in groups {
                recs.push(Record::Join(id, g.to_string()));
            }
            if let Some(s) = session {
                recs.push(Record::Session(id, Some(s.clone())));
            }
            for r in &recs {
                self.bus.send(slot, r);
            }
        }
        self.bus.snapshot_queued(slot);
    }

    /// What [`crate::Handler::on_gap`] does by default: closes every open
    /// connection this worker accepted (those registry deliveries reach)
    /// with `code` and `reason`; outbound connections are left alone.
    pub(crate) fn close_clients(&mut self, code: u16, reason: &str) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.outbound() && c.life.is_open())
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.begin_close(key, code, reason, None);
        }
    }

    /// Makes every due outbound link and sends each its snapshot.
    pub(crate) fn link_peers(&mut self) {
        for slot in self.bus.due_links(self.now) {
            if self.bus.link(slot, &self.mio, self.now) {
                self.send_snapshot(slot);
            }
        }
    }
}
