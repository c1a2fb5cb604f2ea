//! [`Ctx`]: what a handler can do, on this worker and across the server.
//!
//! This file has the struct, this worker's facts, timers and sending;
//! `registry.rs` the online-user registry calls; `internals.rs` what the
//! worker loop uses (queueing, closing, applying what other workers say).

mod internals;
mod registry;

use internals::Excluded;

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
    /// Messages handed to `on_message`.
    pub(crate) messages_in: u64,
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
}
