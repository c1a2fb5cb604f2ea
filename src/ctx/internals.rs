//! What the worker loop uses: queueing output under the cap, closing,
//! announcing connections, and applying what other workers say.

use super::*;

impl Ctx {
    pub(super) fn owns(&self, conn: ConnId) -> bool {
        self.local_key(conn).is_some()
    }

    pub(crate) fn id_of(&self, key: usize, c: &Conn) -> ConnId {
        ConnId::new(self.slot, key as u32, c.serial)
    }

    /// The slab key of an open local connection.
    pub(crate) fn local_key(&self, conn: ConnId) -> Option<usize> {
        if conn.worker != self.slot {
            return None;
        }
        let key = conn.key as usize;
        match self.conns.get(key) {
            Some(c) if c.serial == conn.serial && c.open => Some(key),
            _ => None,
        }
    }

    pub(crate) fn mark_dirty(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Queues an encoded frame for a local connection, under the output cap.
    pub(crate) fn queue(&mut self, key: usize, frame: Bytes) -> bool {
        let cap = self.cfg.max_output_bytes;
        let c = &mut self.conns[key];
        if c.out.len() >= cap {
            let queued = c.out.len();
            match self.cfg.output_overflow {
                OverflowPolicy::Drop => self.stats.dropped_sends += 1,
                OverflowPolicy::Close => self.begin_close(
                    key,
                    1008,
                    "output buffer overflow",
                    Some(ConnError::Overflow { queued, limit: cap }),
                ),
            }
            return false;
        }
        c.out.push(frame);
        if !c.full && c.out.len() >= cap {
            c.full = true;
            let id = self.id_of(key, &self.conns[key]);
            self.deferred.push_back(Deferred::BufferFull(id));
        }
        self.mark_dirty(key);
        true
    }

    /// Ends a connection's life as the handler sees it (registry, `on_close`)
    /// and starts closing the socket: a WebSocket close frame is queued and the
    /// socket is dropped when the peer answers or [`CLOSE_GRACE`] passes.
    pub(crate) fn begin_close(
        &mut self,
        key: usize,
        code: u16,
        reason: &str,
        error: Option<ConnError>,
    ) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
        c.deadline = Some(self.now + CLOSE_GRACE);
        if let State::Ws(ws) = &mut c.state {
            let mut io = WsIo {
                input: &[],
                out: &mut c.out,
            };
            let _ = ws.close(&mut io, Some(close_frame(code, reason)));
        } else if !matches!(c.state, State::Head(_)) {
            c.state = State::Done;
        }
        self.forget(key, error);
        self.mark_dirty(key);
    }

    /// Takes an open connection out of the registry and owes `on_close`.
    pub(crate) fn forget(&mut self, key: usize, error: Option<ConnError>) {
        let c = &mut self.conns[key];
        if !c.open {
            return;
        }
        c.open = false;
        let id = ConnId::new(self.slot, key as u32, c.serial);
        self.registry.close(id);
        self.bus.broadcast(&Record::Close(id));
        self.deferred.push_back(Deferred::Closed(id, error));
    }

    /// Makes a new connection visible: registry and peers.
    pub(crate) fn announce(&mut self, key: usize) -> ConnId {
        let c = &mut self.conns[key];
        c.open = true;
        let id = ConnId::new(self.slot, key as u32, c.serial);
        self.registry.open(id);
        self.bus.broadcast(&Record::Open(id));
        id
    }

    /// Applies what a peer worker said.
    pub(crate) fn apply(&mut self, item: Inbox) {
        match item {
            Inbox::SlotGone(slot) | Inbox::SlotReset(slot) => self.registry.clear_worker(slot),
            Inbox::Record(slot, rec) => self.apply_record(slot, rec),
        }
    }

    pub(super) fn apply_record(&mut self, slot: u16, rec: Record) {
        let theirs = |id: &ConnId| id.worker == slot;
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
            Record::Request(inner) => match *inner {
                Record::Bind(id, uid) if self.owns(id) => self.bind_uid(id, &uid),
                Record::Unbind(id) if self.owns(id) => self.unbind_uid(id),
                Record::Join(id, g) if self.owns(id) => self.join_group(id, &g),
                Record::Leave(id, g) if self.owns(id) => self.leave_group(id, &g),
                Record::Session(id, data)
                    if self.owns(id) && self.registry.set_session(id, data.clone()) =>
                {
                    self.bus.broadcast(&Record::Session(id, data));
                }
                // The connection closed meanwhile: nothing to change.
                _ => {}
            },
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

    /// Queues this worker's part of the registry for a fresh link to `slot`.
    pub(crate) fn send_snapshot(&mut self, slot: u16) {
        let mine: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open)
            .map(|(k, c)| self.id_of(k, c))
            .collect();
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

/// An exclude list, as a set when it is long enough for that to pay.
pub(super) struct Excluded<'a> {
    list: &'a [ConnId],
    set: Option<HashSet<ConnId>>,
}

impl<'a> Excluded<'a> {
    pub(super) fn new(list: &'a [ConnId]) -> Self {
        let set = (list.len() > 8).then(|| list.iter().copied().collect());
        Excluded { list, set }
    }

    pub(super) fn has(&self, id: ConnId) -> bool {
        match &self.set {
            Some(s) => s.contains(&id),
            None => self.list.contains(&id),
        }
    }
}
