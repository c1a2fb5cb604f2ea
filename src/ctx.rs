//! [`Ctx`]: what a handler can do, on this worker and across the server.

use crate::bus::{Bus, Inbox};
use crate::bus_wire::{Record, Target};
use crate::codec::{self, Prepared};
use crate::config::{Config, OverflowPolicy, Protocol};
use crate::conn::{Conn, State, WsIo};
use crate::registry::Registry;
use crate::timer::Timers;
use crate::{ConnError, ConnId, Message, TimerId};
use bytes::Bytes;
use slab::Slab;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

/// Largest session value accepted by [`Ctx::set_session`].
pub const MAX_SESSION_BYTES: usize = 4096;
/// How long a closing connection may take to flush and finish its close
/// handshake before the socket is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

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

/// Local facts about a connection of this worker.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's protocol.
    pub protocol: Protocol,
    /// Bytes queued for it, not yet written to the socket.
    pub queued_bytes: usize,
}

/// A callback owed to the handler, run after the current one returns.
pub(crate) enum Deferred {
    Closed(ConnId, Option<ConnError>),
    WorkerMessage(usize, Bytes),
    BufferFull(ConnId),
    BufferDrain(ConnId),
}

/// Counters a worker keeps.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub(crate) dropped_sends: u64,
}

/// The worker's state as handlers see it: sending, closing, the registry,
/// timers. One per worker; every callback gets it.
///
/// # Where a connection lives
///
/// Every method that takes a [`ConnId`], uid or group works for connections on
/// any worker. Sends to a connection of this worker are queued at once; sends
/// to others cross the bus once per worker (not once per recipient) and are
/// queued there. Per sender and receiver, order is kept.
///
/// # Queries are local
///
/// Counts, lists and lookups read this worker's replica of the registry. A
/// change made on another worker appears here within a bus round trip
/// (well under a millisecond on one machine), after every change that worker
/// made before it.
///
/// # Writes happen after the callback
///
/// Sends are queued; all queued output is written once per loop turn, one
/// `writev` per connection. A send to a connection whose output reached
/// `max_output_bytes` follows [`OverflowPolicy`].
pub struct Ctx {
    pub(crate) cfg: Arc<Config>,
    pub(crate) slot: u16,
    pub(crate) count: u16,
    pub(crate) conns: Slab<Conn>,
    pub(crate) serial: u64,
    /// Keys of connections with output to write this turn.
    pub(crate) dirty: Vec<usize>,
    pub(crate) deferred: VecDeque<Deferred>,
    /// Scratch list of local recipients, reused by every delivery.
    pub(crate) keys: Vec<usize>,
    /// Connections whose reading was resumed: the loop reads them, since no
    /// new readiness edge may come for data that arrived while paused.
    pub(crate) resumed: Vec<usize>,
    pub(crate) registry: Registry,
    pub(crate) bus: Bus,
    pub(crate) timers: Timers,
    pub(crate) waker: Waker,
    pub(crate) now: Instant,
    pub(crate) stats: Stats,
    pub(crate) mio: mio::Registry,
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].to_string().into(),
    }
}

impl Ctx {
    // ----- this worker -----

    /// This worker's slot, 0 to `worker_count() - 1`.
    pub fn worker_id(&self) -> usize {
        self.slot as usize
    }

    /// How many workers the server runs.
    pub fn worker_count(&self) -> usize {
        self.count as usize
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Local facts about a connection of this worker; `None` for connections of
    /// other workers and closed ones.
    pub fn conn_info(&self, conn: ConnId) -> Option<ConnInfo> {
        let key = self.local_key(conn)?;
        let c = &self.conns[key];
        Some(ConnInfo {
            peer: c.peer,
            protocol: self.cfg.protocol,
            queued_bytes: c.out.len(),
        })
    }

    /// Sends this worker dropped under [`OverflowPolicy::Drop`].
    pub fn dropped_sends(&self) -> u64 {
        self.stats.dropped_sends
    }

    /// A handle that wakes this worker from another thread.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Calls [`crate::Handler::on_timer`] with the returned id after `interval`,
    /// and every `interval` after that if `repeat`. A repeating timer's interval
    /// is at least 1 ms. A timer that fell behind (a long callback) fires once,
    /// not in a burst.
    pub fn add_timer(&mut self, interval: Duration, repeat: bool) -> TimerId {
        self.timers.add(Instant::now(), interval, repeat)
    }

    /// Cancels a timer; false if it had already fired (one-shot) or was cancelled.
    pub fn del_timer(&mut self, timer: TimerId) -> bool {
        self.timers.cancel(timer)
    }

    // ----- sending and closing -----

    /// Sends a message to one connection on any worker. Returns false when the
    /// connection is not online (as far as this worker knows), in which case
    /// nothing is sent.
    pub fn send(&mut self, conn: ConnId, msg: impl Into<Message>) -> bool {
        let frame = codec::encode(self.cfg.protocol, &msg.into());
        self.send_frame(conn, frame)
    }

    /// Encodes a message once for this server's protocol, for
    /// [`Ctx::send_prepared`] to many connections.
    pub fn prepare(&self, msg: impl Into<Message>) -> Prepared {
        Prepared::new(self.cfg.protocol, &msg.into())
    }

    /// Sends a prepared message to one connection on any worker; the bytes are
    /// shared, not copied, among the local recipients. Returns false when the
    /// connection is not online.
    pub fn send_prepared(&mut self, conn: ConnId, msg: &Prepared) -> bool {
        self.send_frame(conn, msg.0.clone())
    }

    pub(crate) fn send_frame(&mut self, conn: ConnId, frame: Bytes) -> bool {
        if conn.worker == self.slot {
            match self.local_key(conn) {
                Some(key) => self.queue(key, frame),
                None => false,
            }
        } else if self.registry.contains(conn) {
            self.bus.send(
                conn.worker,
                &Record::Deliver {
                    target: Target::Conn(conn),
                    payload: frame,
                },
            );
            true
        } else {
            false
        }
    }

    /// Closes a connection on any worker (WebSocket code 1000).
    pub fn close(&mut self, conn: ConnId) {
        self.close_with(conn, 1000, "");
    }

    /// Closes a connection on any worker with a WebSocket close code and reason
    /// (the reason is cut to 123 bytes). Plain protocols just close the socket
    /// after writing what is queued. `on_close` follows on the owning worker.
    pub fn close_with(&mut self, conn: ConnId, code: u16, reason: &str) {
        if conn.worker == self.slot {
            if let Some(key) = self.local_key(conn) {
                self.begin_close(key, code, reason, None);
            }
        } else if self.registry.contains(conn) {
            self.bus.send(
                conn.worker,
                &Record::CloseConn {
                    id: conn,
                    code,
                    reason: reason.to_string(),
                },
            );
        }
    }

    /// Sends to every connection on the server except those in `exclude`. The
    /// message is encoded once and crosses the bus once per worker.
    pub fn send_to_all(&mut self, msg: impl Into<Message>, exclude: &[ConnId]) {
        let frame = codec::encode(self.cfg.protocol, &msg.into());
        self.bus.broadcast(&Record::Deliver {
            target: Target::All {
                exclude: exclude.to_vec(),
            },
            payload: frame.clone(),
        });
        self.deliver_local(
            &Target::All {
                exclude: exclude.to_vec(),
            },
            frame,
        );
    }

    /// Sends to every open connection of this worker only, encoding the
    /// message once: the building block of per-worker periodic broadcasts.
    pub fn send_to_local(&mut self, msg: impl Into<Message>) {
        let frame = codec::encode(self.cfg.protocol, &msg.into());
        self.deliver_local(
            &Target::All {
                exclude: Vec::new(),
            },
            frame,
        );
    }

    /// Sends to every connection of a uid, wherever they are.
    pub fn send_to_uid(&mut self, uid: &str, msg: impl Into<Message>) {
        self.send_to_uids(&[uid], msg);
    }

    /// Sends to every connection of each of these uids, once per connection.
    pub fn send_to_uids(&mut self, uids: &[&str], msg: impl Into<Message>) {
        let frame = codec::encode(self.cfg.protocol, &msg.into());
        let target = Target::Uids(uids.iter().map(|u| u.to_string()).collect());
        self.route(target, frame);
    }

    /// Sends to every member of a group except those in `exclude`.
    pub fn send_to_group(&mut self, group: &str, msg: impl Into<Message>, exclude: &[ConnId]) {
        let frame = codec::encode(self.cfg.protocol, &msg.into());
        let target = Target::Group {
            group: group.to_string(),
            exclude: exclude.to_vec(),
        };
        self.route(target, frame);
    }

    /// Delivers `frame` to `target` on every worker: each resolves the target
    /// against its own connections, which it knows exactly. Asking every
    /// worker (one record each, however many recipients) rather than only
    /// those this replica thinks are concerned means a registry change this
    /// worker asked for just before (say a `bind_uid` on another worker's
    /// connection) is always seen by the send that follows it.
    fn route(&mut self, target: Target, frame: Bytes) {
        let rec = Record::Deliver {
            target,
            payload: frame,
        };
        self.bus.broadcast(&rec);
        if let Record::Deliver { target, payload } = rec {
            self.deliver_local(&target, payload);
        }
    }

    /// Queues `frame` for the local connections `target` names.
    pub(crate) fn deliver_local(&mut self, target: &Target, frame: Bytes) {
        // Reuse one key buffer: a broadcast to thousands of local connections
        // allocates nothing per message.
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        match target {
            Target::Conn(id) => keys.extend(self.local_key(*id)),
            Target::All { exclude } if exclude.is_empty() => {
                keys.extend(self.conns.iter().filter(|(_, c)| c.open).map(|(k, _)| k))
            }
            Target::All { exclude } => {
                let skip = Excluded::new(exclude);
                keys.extend(
                    self.conns
                        .iter()
                        .filter(|(k, c)| c.open && !skip.has(self.id_of(*k, c)))
                        .map(|(k, _)| k),
                )
            }
            Target::Uids(uids) => {
                let mut seen = HashSet::new();
                keys.extend(
                    uids.iter()
                        .flat_map(|u| self.registry.conns_of_uid(u))
                        .filter(|c| c.worker == self.slot && seen.insert(**c))
                        .filter_map(|c| self.local_key(*c)),
                )
            }
            Target::Group { group, exclude } => {
                let skip = Excluded::new(exclude);
                keys.extend(
                    self.registry
                        .group_members(group)
                        .filter(|c| c.worker == self.slot && !skip.has(*c))
                        .filter_map(|c| self.local_key(c)),
                )
            }
        }
        for &key in &keys {
            self.queue(key, frame.clone());
        }
        self.keys = keys;
    }

    /// Sends `data` to the handler of another worker
    /// ([`crate::Handler::on_worker_message`]). Returns false for an unknown
    /// worker or this one. While that worker is being replaced, the data waits
    /// for its successor (up to `bus_peer_buffer_bytes`).
    pub fn send_to_worker(&mut self, worker: usize, data: impl Into<Bytes>) -> bool {
        if worker >= self.count as usize || worker == self.slot as usize {
            return false;
        }
        self.bus
            .send(worker as u16, &Record::WorkerMsg(data.into()));
        true
    }

    /// Sends `data` to the handlers of every other worker.
    pub fn send_to_workers(&mut self, data: impl Into<Bytes>) {
        self.bus.broadcast(&Record::WorkerMsg(data.into()));
    }

    /// Stops reading from a connection of this worker (Workerman's
    /// `pauseRecv`): what the client sends waits in the kernel, and TCP flow
    /// control slows the client down. Messages already read are still
    /// delivered. Returns false if the connection is not this worker's.
    pub fn pause_reading(&mut self, conn: ConnId) -> bool {
        match self.local_key(conn) {
            Some(key) => {
                self.conns[key].paused = true;
                true
            }
            None => false,
        }
    }

    /// Resumes reading from a connection paused with [`Ctx::pause_reading`].
    pub fn resume_reading(&mut self, conn: ConnId) -> bool {
        match self.local_key(conn) {
            Some(key) => {
                if self.conns[key].paused {
                    self.conns[key].paused = false;
                    self.resumed.push(key);
                }
                true
            }
            None => false,
        }
    }

    // ----- the registry -----

    /// Binds a connection (on any worker) to a uid, a user id of the
    /// application, replacing an earlier binding of that connection. A uid may
    /// have many connections.
    pub fn bind_uid(&mut self, conn: ConnId, uid: &str) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Bind(conn, uid.to_string()));
        }
        if self.registry.bind(conn, uid) {
            self.bus.broadcast(&Record::Bind(conn, uid.to_string()));
        }
    }

    /// Removes a connection's uid binding (on any worker).
    pub fn unbind_uid(&mut self, conn: ConnId) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Unbind(conn));
        }
        if self.registry.unbind(conn).is_some() {
            self.bus.broadcast(&Record::Unbind(conn));
        }
    }

    /// Adds a connection (on any worker) to a group.
    pub fn join_group(&mut self, conn: ConnId, group: &str) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Join(conn, group.to_string()));
        }
        if self.registry.join(conn, group) {
            self.bus.broadcast(&Record::Join(conn, group.to_string()));
        }
    }

    /// Removes a connection (on any worker) from a group.
    pub fn leave_group(&mut self, conn: ConnId, group: &str) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Leave(conn, group.to_string()));
        }
        if self.registry.leave(conn, group) {
            self.bus.broadcast(&Record::Leave(conn, group.to_string()));
        }
    }

    /// Registry changes to another worker's connection are made by that
    /// worker, which then tells everyone (this worker included), so every
    /// replica sees one order of changes per connection. Until then this
    /// worker's queries still show the old state; sends issued after the
    /// request are resolved by the owner after it.
    fn ask_owner(&mut self, rec: Record) {
        let conn = match &rec {
            Record::Bind(c, _)
            | Record::Unbind(c)
            | Record::Join(c, _)
            | Record::Leave(c, _)
            | Record::Session(c, _) => *c,
            _ => unreachable!("only registry changes are requested"),
        };
        if conn.worker != self.slot && self.registry.contains(conn) {
            self.bus.send(conn.worker, &Record::Request(Box::new(rec)));
        }
    }

    /// Removes every member from a group, on every worker.
    pub fn ungroup(&mut self, group: &str) {
        self.bus.broadcast(&Record::Ungroup(group.to_string()));
        self.ungroup_local(group);
    }

    pub(crate) fn ungroup_local(&mut self, group: &str) {
        let mine: Vec<ConnId> = self
            .registry
            .group_members(group)
            .filter(|c| c.worker == self.slot)
            .collect();
        for c in mine {
            self.leave_group(c, group);
        }
    }

    /// Stores small session data (at most [`MAX_SESSION_BYTES`]) for a
    /// connection on any worker, readable with [`Ctx::session`] on every
    /// worker. Returns false if the data is too big or the connection is not
    /// online. For another worker's connection the change is made by its
    /// owner, so it shows in this worker's [`Ctx::session`] a bus round trip
    /// later.
    pub fn set_session(&mut self, conn: ConnId, data: impl Into<Bytes>) -> bool {
        let data = data.into();
        if data.len() > MAX_SESSION_BYTES || !self.registry.contains(conn) {
            return false;
        }
        if !self.owns(conn) {
            self.ask_owner(Record::Session(conn, Some(data)));
            return true;
        }
        if self.registry.set_session(conn, Some(data.clone())) {
            self.bus.broadcast(&Record::Session(conn, Some(data)));
            return true;
        }
        false
    }

    /// A connection's session data, on any worker.
    pub fn session(&self, conn: ConnId) -> Option<Bytes> {
        self.registry.session(conn).cloned()
    }

    /// Whether a connection is online anywhere on the server.
    pub fn is_online(&self, conn: ConnId) -> bool {
        self.registry.contains(conn)
    }

    /// Whether a uid has at least one connection.
    pub fn is_uid_online(&self, uid: &str) -> bool {
        !self.registry.conns_of_uid(uid).is_empty()
    }

    /// The connections bound to a uid.
    pub fn conns_of_uid(&self, uid: &str) -> Vec<ConnId> {
        self.registry.conns_of_uid(uid).to_vec()
    }

    /// The uid a connection is bound to.
    pub fn uid_of_conn(&self, conn: ConnId) -> Option<String> {
        self.registry.uid_of(conn).map(str::to_string)
    }

    /// Connections on the whole server.
    pub fn connection_count(&self) -> usize {
        self.registry.conn_count()
    }

    /// Every connection on the whole server, in no particular order.
    pub fn connections(&self) -> Vec<ConnId> {
        self.registry.conn_ids().collect()
    }

    /// The open connections of this worker only (Workerman's
    /// `$worker->connections`).
    pub fn local_connections(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.open)
            .map(|(k, c)| self.id_of(k, c))
            .collect()
    }

    /// Distinct uids with at least one connection.
    pub fn uid_count(&self) -> usize {
        self.registry.uid_count()
    }

    /// Every uid with at least one connection, sorted.
    pub fn uids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.registry.uids().map(str::to_string).collect();
        v.sort_unstable();
        v
    }

    /// Every group with at least one member, sorted.
    pub fn groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self.registry.groups().map(str::to_string).collect();
        v.sort_unstable();
        v
    }

    /// The groups a connection is in, in the order it joined them.
    pub fn groups_of_conn(&self, conn: ConnId) -> Vec<String> {
        self.registry
            .groups_of(conn)
            .iter()
            .map(|g| g.to_string())
            .collect()
    }

    /// The member connections of a group.
    pub fn group_conns(&self, group: &str) -> Vec<ConnId> {
        self.registry.group_members(group).collect()
    }

    /// The distinct uids of a group's members, sorted (members without a uid
    /// are not counted).
    pub fn group_uids(&self, group: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .registry
            .group_members(group)
            .filter_map(|c| self.registry.uid_of(c).map(str::to_string))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How many connections are in a group.
    pub fn group_conn_count(&self, group: &str) -> usize {
        self.registry.group_len(group)
    }

    // ----- internals -----

    fn owns(&self, conn: ConnId) -> bool {
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

    fn apply_record(&mut self, slot: u16, rec: Record) {
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
