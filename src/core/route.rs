//! Sends: a message is encoded once, then queued under the output cap for
//! each local recipient and carried across the bus once per other worker,
//! which resolves the target against its own connections.

use super::{Core, Deferred};
use crate::cluster::wire::{Record, Target};
use crate::config::OverflowPolicy;
use crate::error::ConnError;
use crate::id::ConnId;
use crate::proto::codec::{self, Wire};
use bytes::Bytes;
use std::collections::HashSet;

impl Core {
    /// Sends `frame`, encoded for `wire`, to one connection on any worker.
    /// False when it is not online (as far as this worker knows), is an
    /// outbound connection that is down and does not hold sends, or is
    /// another worker's and the frame is too large for a bus record.
    pub(crate) fn send_frame(&mut self, conn: ConnId, frame: Bytes, wire: Wire) -> bool {
        if !self.is_mine(conn) {
            if !self.registry.contains(conn) {
                return false;
            }
            let Some(payload) = codec::reframe(wire, frame, self.wire) else {
                return false;
            };
            let rec = Record::Deliver {
                target: Target::Conn(conn),
                payload,
            };
            if self.on_this_node(conn) {
                return self.bus.send(conn.worker, &rec);
            }
            return self.send_owner_node(conn, &rec);
        }
        let Some(key) = self.key_of(conn) else {
            return false;
        };
        let c = &mut self.conns[key];
        if c.life.is_open() {
            return self.queue_from(key, frame, wire);
        }
        let to = c.wire;
        match c.dial.as_mut() {
            Some(dial) if !c.life.is_closing() => {
                let Some(frame) = codec::reframe(wire, frame, to) else {
                    return false;
                };
                let kept = dial.hold(frame);
                if !kept && dial.holds() {
                    self.stats.dropped_sends += 1;
                }
                kept
            }
            _ => false,
        }
    }

    /// Queues `frame`, encoded for `wire`, re-encoded if the connection's
    /// own wire differs (an outbound connection of another protocol).
    fn queue_from(&mut self, key: usize, frame: Bytes, wire: Wire) -> bool {
        match codec::reframe(wire, frame, self.conns[key].wire) {
            Some(frame) => self.queue(key, frame),
            None => false,
        }
    }

    /// Queues an encoded frame for a local connection, under the output cap
    /// (which counts what is held back too); while its output is held, the
    /// frame waits with the held ones.
    pub(crate) fn queue(&mut self, key: usize, frame: Bytes) -> bool {
        let c = &mut self.conns[key];
        if c.queued() >= self.cfg.max_output_bytes {
            self.overflow(key, 1);
            return false;
        }
        if let Some(held) = c.held.as_mut() {
            held.out.push(frame);
            return true;
        }
        c.out.push(frame);
        self.note_full(key);
        self.mark_dirty(key);
        true
    }

    /// `dropped` frames did not fit under a connection's output cap (sends,
    /// or the WebSocket's own pongs): the overflow policy applies. Drop
    /// counts them; close closes the connection with 1008 and reports
    /// [`ConnError::Overflow`].
    pub(crate) fn overflow(&mut self, key: usize, dropped: u64) {
        let cap = self.cfg.max_output_bytes;
        let queued = self.conns[key].out.len();
        match self.cfg.output_overflow {
            OverflowPolicy::Drop => self.stats.dropped_sends += dropped,
            OverflowPolicy::Close => self.begin_close(
                key,
                1008,
                "output buffer overflow",
                Some(ConnError::Overflow { queued, limit: cap }),
            ),
        }
    }

    /// Owes `on_buffer_full` when a connection's queue just reached its cap.
    pub(crate) fn note_full(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.marks.full && c.out.len() >= self.cfg.max_output_bytes {
            c.marks.full = true;
            let id = self.id_of(key, &self.conns[key]);
            self.deferred.push_back(Deferred::BufferFull(id));
        }
    }

    /// Closes a connection on any worker.
    pub(crate) fn close_conn(&mut self, conn: ConnId, code: u16, reason: &str) {
        if !self.is_mine(conn) {
            if self.registry.contains(conn) {
                let rec = Record::CloseConn {
                    id: conn,
                    code,
                    reason: reason.to_string(),
                };
                if self.on_this_node(conn) {
                    self.bus.send(conn.worker, &rec);
                } else {
                    self.send_owner_node(conn, &rec);
                }
            }
            return;
        }
        let Some(key) = self.key_of(conn) else {
            return;
        };
        // An accepted connection is the handler's from `on_connect` on; an
        // outbound one from `connect`, whatever its phase.
        if self.conns[key].outbound() {
            self.give_up(key);
            self.begin_close(key, code, reason, None);
        } else if self.conns[key].life.is_open() {
            self.begin_close(key, code, reason, None);
        }
    }

    /// Delivers `frame` to `target` on every worker: each resolves the target
    /// against its own connections, which it knows exactly. Asking every
    /// worker (one record each, however many recipients) rather than only
    /// those this replica thinks are concerned means a registry change this
    /// worker asked for just before (say a `bind_uid` on another worker's
    /// connection) is always seen by the send that follows it.
    ///
    /// On a cluster the same record goes to every other node known (see
    /// [`crate::cluster::node`]).
    ///
    /// False, and nothing is sent anywhere, when the record would be larger
    /// than a peer accepts; false too when the cluster is configured and its
    /// part could not go (Redis unreachable or behind): the local part is
    /// delivered all the same.
    pub(crate) fn route(&mut self, target: Target, frame: Bytes) -> bool {
        let rec = Record::Deliver {
            target,
            payload: frame,
        };
        if !self.bus.broadcast(&rec) {
            return false;
        }
        let crossed = self.send_other_nodes(&rec);
        if let Record::Deliver { target, payload } = rec {
            self.deliver_local(&target, payload);
        }
        crossed
    }

    /// Queues `frame` (encoded for the listener) for the local connections
    /// `target` names.
    pub(crate) fn deliver_local(&mut self, target: &Target, frame: Bytes) {
        // Reuse one key buffer: a broadcast to thousands of local connections
        // allocates nothing per message.
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        match target {
            Target::Conn(id) => keys.extend(self.local_key(*id)),
            Target::All { exclude } if exclude.is_empty() => keys.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| c.marks.listed)
                    .map(|(k, _)| k),
            ),
            Target::All { exclude } => {
                let skip = Excluded::new(exclude);
                keys.extend(
                    self.conns
                        .iter()
                        .filter(|(k, c)| c.marks.listed && !skip.has(self.id_of(*k, c)))
                        .map(|(k, _)| k),
                )
            }
            Target::Uids(uids) => {
                let mut seen = HashSet::new();
                keys.extend(
                    uids.iter()
                        .flat_map(|u| self.registry.conns_of_uid(u))
                        .filter(|c| self.is_mine(**c) && seen.insert(**c))
                        .filter_map(|c| self.local_key(*c)),
                )
            }
            Target::GroupButUids { group, uids } => {
                let registry = &self.registry;
                keys.extend(
                    registry
                        .group_members(group)
                        .filter(|c| self.is_mine(*c))
                        .filter(|c| {
                            !registry
                                .uid_of(*c)
                                .is_some_and(|u| uids.iter().any(|x| x == u))
                        })
                        .filter_map(|c| self.local_key(c)),
                )
            }
            Target::Group { group, exclude } => {
                let skip = Excluded::new(exclude);
                keys.extend(
                    self.registry
                        .group_members(group)
                        .filter(|c| self.is_mine(*c) && !skip.has(*c))
                        .filter_map(|c| self.local_key(c)),
                )
            }
        }
        let wire = self.wire;
        for &key in &keys {
            if self.conns[key].wire == wire {
                self.queue(key, frame.clone());
            } else {
                self.queue_from(key, frame.clone(), wire);
            }
        }
        self.keys = keys;
    }
}

/// An exclude list, as a set when it is long enough for that to pay.
struct Excluded<'a> {
    list: &'a [ConnId],
    set: Option<HashSet<ConnId>>,
}

impl<'a> Excluded<'a> {
    fn new(list: &'a [ConnId]) -> Self {
        let set = (list.len() > 8).then(|| list.iter().copied().collect());
        Excluded { list, set }
    }

    fn has(&self, id: ConnId) -> bool {
        match &self.set {
            Some(s) => s.contains(&id),
            None => self.list.contains(&id),
        }
    }
}
