//! [`Ctx`]: what a handler can do, on this worker and across the server. It
//! is a view: the worker's loop owns the core and lends it to the handler as
//! a `Ctx` for the length of one callback.
//!
//! This file has this worker's facts, timers, sending, outbound connections
//! and blocking work; `registry.rs` the online-user registry calls.

mod amqp;
mod registry;

use crate::cluster::wire::{self, Record, Target};
use crate::config::Config;
use crate::core::dial::{self, ConnectOptions, Dial};
use crate::core::pool::{JobId, PoolBusy};
use crate::core::{Core, Waker};
use crate::error::ConnectError;
use crate::id::ConnId;
use crate::id::TimerId;
use crate::message::Message;
use crate::proto::codec::{self, Prepared};
use crate::proto::http::Response;
use crate::proto::Protocol;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Local facts about a connection of this worker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The peer's address: the client of an accepted connection, the server
    /// of an outbound one.
    pub peer: SocketAddr,
    /// Its protocol: the listener's, or the scheme an outbound connection
    /// was opened with.
    pub protocol: Protocol,
    /// Bytes queued for it, not yet written to the socket (with those held
    /// back by [`Ctx::hold_output`]).
    pub queued_bytes: usize,
    /// The worker opened it with [`Ctx::connect`].
    pub outbound: bool,
    /// Under TLS.
    pub tls: bool,
    /// Open for messages (`on_connect` ran, `on_close` not yet). An
    /// outbound connection that is connecting or waiting to reconnect is
    /// not.
    pub open: bool,
    /// The WebSocket subprotocol the server chose (outbound connections).
    pub subprotocol: Option<String>,
    /// The listener it was accepted on: 0 for `listen`, 1 for the first of
    /// [`Config::also_listen`], and so on (0 for outbound connections).
    pub listener: usize,
}

/// The worker's state as handlers see it: sending, closing, the registry,
/// timers, outbound connections, blocking work. Every callback gets one.
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
/// `sendmsg` per connection. A send to a connection whose output reached
/// `max_output_bytes` follows [`crate::OverflowPolicy`].
pub struct Ctx<'a> {
    core: &'a mut Core,
}

impl<'a> Ctx<'a> {
    /// Lends `core` to a callback.
    pub(crate) fn new(core: &'a mut Core) -> Self {
        Ctx { core }
    }

    // ----- this worker -----

    /// This worker's slot, 0 to `worker_count() - 1`.
    pub fn worker_id(&self) -> usize {
        self.core.slot as usize
    }

    /// How many workers the server runs.
    pub fn worker_count(&self) -> usize {
        self.core.count as usize
    }

    /// This node's name on a cluster (`[cluster] node`); `None` on a single
    /// server. Its number is [`ConnId::node`] of this node's connections.
    pub fn node(&self) -> Option<&str> {
        self.core.cfg.cluster.as_ref().map(|c| c.node.as_str())
    }

    /// This worker's view of the cluster (`None` without `[cluster]`):
    /// whether it is connected to Redis, since when, the cross-node sends
    /// it dropped, the other nodes it knows. Sends return false while the
    /// cross-node part cannot go; this says why.
    pub fn cluster(&self) -> Option<crate::ClusterStats> {
        self.core.cluster_stats().map(|(s, _)| s)
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.core.cfg
    }

    /// Local facts about a connection of this worker: an open accepted one,
    /// or an outbound one in any phase. `None` for connections of other
    /// workers and closed ones.
    pub fn conn_info(&self, conn: ConnId) -> Option<ConnInfo> {
        let key = self.core.key_of(conn)?;
        let c = &self.core.conns[key];
        if !c.life.is_open() && !c.outbound() {
            return None;
        }
        Some(ConnInfo {
            peer: c.peer,
            protocol: c.wire.protocol,
            queued_bytes: c.queued() + c.dial.as_ref().map_or(0, |d| d.held.len()),
            outbound: c.outbound(),
            tls: matches!(c.io, Some(crate::net::Transport::Tls(_)))
                || c.dial.as_ref().is_some_and(|d| d.tls.is_some()),
            open: c.life.is_open(),
            subprotocol: c.dial.as_ref().and_then(|d| d.protocol.clone()),
            listener: c.marks.listener.into(),
        })
    }

    /// Sends (and WebSocket pongs) this worker dropped under
    /// [`crate::OverflowPolicy::Drop`], or past the bound of
    /// [`crate::WhileDown::Hold`].
    pub fn dropped_sends(&self) -> u64 {
        self.core.stats.dropped_sends
    }

    /// A handle that wakes this worker from another thread.
    pub fn waker(&self) -> Waker {
        self.core.waker.clone()
    }

    /// Calls [`crate::Handler::on_timer`] with the returned id after `interval`,
    /// and every `interval` after that if `repeat`. A repeating timer's interval
    /// is at least 1 ms. A timer that fell behind (a long callback) fires once,
    /// not in a burst.
    pub fn add_timer(&mut self, interval: Duration, repeat: bool) -> TimerId {
        self.core.timers.add(Instant::now(), interval, repeat)
    }

    /// Cancels a timer; false if it had already fired (one-shot) or was cancelled.
    pub fn del_timer(&mut self, timer: TimerId) -> bool {
        self.core.timers.cancel(timer)
    }

    // ----- sending and closing -----

    /// Sends a message to one connection on any worker. Returns false when the
    /// connection is not online (as far as this worker knows), or is another
    /// worker's and the message is too large for the bus (see
    /// [`Ctx::send_to_all`]), in which case nothing is sent, or is another
    /// node's and the cluster cannot take it now (see [`Ctx::send_to_all`]).
    /// For an outbound connection that is down, see [`crate::WhileDown`].
    pub fn send(&mut self, conn: ConnId, msg: impl Into<Message>) -> bool {
        let msg = msg.into();
        if !self.core.is_mine(conn) && !fits_bus(&Target::Conn(conn), &msg) {
            return false;
        }
        let wire = self.wire_of(conn);
        let frame = codec::encode(wire, &msg);
        self.core.send_frame(conn, frame, wire)
    }

    /// The wire a send to `conn` is best encoded for: its own when it is
    /// this worker's, the listener's otherwise.
    fn wire_of(&self, conn: ConnId) -> codec::Wire {
        self.core
            .key_of(conn)
            .map_or(self.core.wire, |k| self.core.conns[k].wire)
    }

    /// Encodes a message once for this server's protocol, for
    /// [`Ctx::send_prepared`] to many connections.
    pub fn prepare(&self, msg: impl Into<Message>) -> Prepared {
        Prepared::new(self.core.cfg.protocol, &msg.into())
    }

    /// Sends a prepared message to one connection on any worker; the bytes are
    /// shared, not copied, among the local recipients of the same wire.
    /// Returns false when the connection is not online.
    pub fn send_prepared(&mut self, conn: ConnId, msg: &Prepared) -> bool {
        self.core.send_frame(conn, msg.bytes.clone(), msg.wire)
    }

    /// Holds back output to a connection of this worker: what is sent to it
    /// from now on (by this worker or across the bus, to it, its uid, its
    /// groups or everyone) is kept in order and not written until
    /// [`Ctx::release_output`]. What was queued before keeps being written.
    /// Held frames count against `max_output_bytes` with the same
    /// [`crate::OverflowPolicy`] as queued ones. A connection that closes
    /// while held drops what was held.
    ///
    /// Holds count: each one is released by one `release_output`, and the
    /// output flows again when the last one is. The use it is made for: a
    /// connection joins a group at once (so it misses nothing sent to the
    /// group), holds its output, and releases it with its answer first once
    /// the slow part of the join (a database) is done; so the client sees
    /// the answer before anything sent to the group.
    ///
    /// Returns false (and holds nothing) when the connection is not an open
    /// connection this worker accepted.
    pub fn hold_output(&mut self, conn: ConnId) -> bool {
        match self.core.local_key(conn) {
            Some(key) => self.core.hold_output(key),
            None => false,
        }
    }

    /// Releases one hold of [`Ctx::hold_output`]: `first` (if any) is put
    /// before everything held so far, and once no hold is left, all of it is
    /// queued, in order, behind what was queued before the first hold, and
    /// written. `first` counts against `max_output_bytes` like any send.
    /// Returns false when the connection's output was not held (or it is
    /// not this worker's, or closed), or when `first` did not fit under
    /// `max_output_bytes` (then the overflow policy applied to it).
    pub fn release_output(&mut self, conn: ConnId, first: Option<Message>) -> bool {
        let Some(key) = self.core.local_key(conn) else {
            return false;
        };
        let wire = self.core.conns[key].wire;
        let first = first.map(|m| codec::encode(wire, &m));
        self.core.release_output(key, first)
    }

    /// Closes a connection on any worker (WebSocket code 1000).
    pub fn close(&mut self, conn: ConnId) {
        self.close_with(conn, 1000, "");
    }

    /// Closes a connection on any worker with a WebSocket close code and reason
    /// (the reason is cut to 123 bytes). Plain protocols just close the socket
    /// after writing what is queued. `on_close` follows on the owning worker.
    /// An outbound connection is not reconnected after this.
    pub fn close_with(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.core.close_conn(conn, code, reason);
    }

    /// Sends to every connection on the server except those in `exclude`. The
    /// message is encoded once and crosses the bus once per worker.
    /// Outbound connections are included only once bound to a uid or group.
    ///
    /// Returns false, and sends nothing to anyone (not even this worker's
    /// connections), when the message would make a bus record larger than
    /// a worker accepts (1 GiB, less the framing and the target's size);
    /// the refusal is logged. The other sends that cross the bus
    /// (`send_to_uid(s)`, `send_to_group`, `send` to another worker's
    /// connection, `send_to_worker(s)`) refuse the same way. Otherwise true.
    ///
    /// On a cluster (`[cluster]` in the config) the message also goes to
    /// every other node, one Redis `PUBLISH` per node per loop turn,
    /// whatever the number of recipients there. When that part cannot go
    /// (Redis unreachable or too far behind, or the message over a quarter
    /// of `bus_peer_buffer_bytes`), this node's connections still get it,
    /// the call returns false, and the loss is counted ([`Ctx::cluster`],
    /// `status`) and logged at most once a second. True means handed to
    /// Redis: its pub/sub delivers at most once, so a node that loses its
    /// link before reading misses what was in flight; a `PUBLISH` that no
    /// worker of the node received is counted as dropped. The same holds for
    /// `send_to_uid(s)`, `send_to_group` and `send` to another node's
    /// connection.
    pub fn send_to_all(&mut self, msg: impl Into<Message>, exclude: &[ConnId]) -> bool {
        let msg = msg.into();
        let target = Target::All {
            exclude: exclude.to_vec(),
        };
        self.route(target, &msg)
    }

    /// Encodes `msg` for the listener and delivers it to `target` on every
    /// worker, unless it is too large for the bus.
    fn route(&mut self, target: Target, msg: &Message) -> bool {
        if !fits_bus(&target, msg) {
            return false;
        }
        let frame = codec::encode(self.core.wire, msg);
        self.core.route(target, frame)
    }

    /// Sends to every open connection of this worker only, encoding the
    /// message once: the building block of per-worker periodic broadcasts.
    pub fn send_to_local(&mut self, msg: impl Into<Message>) {
        let frame = codec::encode(self.core.wire, &msg.into());
        let everyone = Target::All {
            exclude: Vec::new(),
        };
        self.core.deliver_local(&everyone, frame);
    }

    /// Sends to every connection of a uid, wherever they are. False if too
    /// large for the bus (see [`Ctx::send_to_all`]).
    pub fn send_to_uid(&mut self, uid: &str, msg: impl Into<Message>) -> bool {
        self.send_to_uids(&[uid], msg)
    }

    /// Sends to every connection of each of these uids, once per connection.
    /// False if too large for the bus (see [`Ctx::send_to_all`]).
    pub fn send_to_uids(&mut self, uids: &[&str], msg: impl Into<Message>) -> bool {
        let target = Target::Uids(uids.iter().map(|u| u.to_string()).collect());
        self.route(target, &msg.into())
    }

    /// Sends to every member of a group except those in `exclude`. False if
    /// too large for the bus (see [`Ctx::send_to_all`]).
    pub fn send_to_group(
        &mut self,
        group: &str,
        msg: impl Into<Message>,
        exclude: &[ConnId],
    ) -> bool {
        let target = Target::Group {
            group: group.to_string(),
            exclude: exclude.to_vec(),
        };
        self.route(target, &msg.into())
    }

    /// Sends to every member of a group except the connections bound to any
    /// of `uids`. Unlike an exclude list of [`ConnId`]s, which names the
    /// connections this worker knows of when it sends, each member's own
    /// worker decides, so a connection of one of these uids that another
    /// node has just bound is left out too. False as for
    /// [`Ctx::send_to_group`].
    pub fn send_to_group_except_uids(
        &mut self,
        group: &str,
        msg: impl Into<Message>,
        uids: &[&str],
    ) -> bool {
        let target = Target::GroupButUids {
            group: group.to_string(),
            uids: uids.iter().map(|u| u.to_string()).collect(),
        };
        self.route(target, &msg.into())
    }

    /// Sends `data` to the handler of another worker
    /// ([`crate::Handler::on_worker_message`]). Returns false for an unknown
    /// worker or this one, or data too large for the bus (1 GiB). While that
    /// worker is being replaced, the data waits for its successor (up to
    /// `bus_peer_buffer_bytes`).
    pub fn send_to_worker(&mut self, worker: usize, data: impl Into<Bytes>) -> bool {
        if worker >= self.core.count as usize || worker == self.core.slot as usize {
            return false;
        }
        self.core
            .bus
            .send(worker as u16, &Record::WorkerMsg(data.into()))
    }

    /// Sends `data` to the handlers of every other worker. False if it is
    /// too large for the bus (1 GiB), and then nobody gets it.
    pub fn send_to_workers(&mut self, data: impl Into<Bytes>) -> bool {
        self.core.bus.broadcast(&Record::WorkerMsg(data.into()))
    }

    /// Closes every open connection this worker accepted with `code` and
    /// `reason`: what [`crate::Handler::on_gap`] does by default.
    pub(crate) fn close_clients(&mut self, code: u16, reason: &str) {
        self.core.close_clients(code, reason);
    }

    /// Stops reading from a connection of this worker (Workerman's
    /// `pauseRecv`): what the peer sends waits in the kernel, and TCP flow
    /// control slows the peer down. Messages already read are still
    /// delivered. Returns false if the connection is not this worker's.
    pub fn pause_reading(&mut self, conn: ConnId) -> bool {
        match self.core.local_key(conn) {
            Some(key) => {
                self.core.conns[key].marks.paused = true;
                true
            }
            None => false,
        }
    }

    /// Resumes reading from a connection paused with [`Ctx::pause_reading`].
    pub fn resume_reading(&mut self, conn: ConnId) -> bool {
        match self.core.local_key(conn) {
            Some(key) => {
                let c = &mut self.core.conns[key];
                if c.marks.paused {
                    c.marks.paused = false;
                    self.core.resumed.push(key);
                }
                true
            }
            None => false,
        }
    }

    // ----- outbound connections -----

    /// Opens a connection from this worker to `url` (Workerman's
    /// `AsyncTcpConnection`): `ws://` and `wss://` (a WebSocket client),
    /// `text://`, `frame://` and `tcp://` (TLS with
    /// [`ConnectOptions::tls`]). Returns at once with the connection's id;
    /// the connect, the TLS handshake and the upgrade run on the loop.
    ///
    /// # What the handler sees
    ///
    /// The same callbacks as for accepted connections: `on_connect` once the
    /// handshakes are done, then `on_message`, `on_buffer_full` /
    /// `on_buffer_drain`, and `on_close` (after `on_error` if it failed).
    /// An attempt that fails before `on_connect` (refused, timed out, the
    /// upgrade refused) is reported by `on_error` alone
    /// ([`crate::ConnError::Connect`], [`crate::ConnError::Timeout`],
    /// [`crate::ConnError::Handshake`]). [`Ctx::conn_info`] says it is
    /// outbound.
    ///
    /// # Reconnecting
    ///
    /// With [`ConnectOptions::reconnect`], every end (a failed attempt, a
    /// lost connection, the peer's close) is followed by a wait and a new
    /// attempt with the same [`ConnId`], so the handler's state keyed by it
    /// carries over; `on_connect` runs again on each success, after an
    /// `on_close` for the connection that was lost. Only [`Ctx::close`]
    /// (or the worker stopping) ends it for good.
    ///
    /// # Not an online user
    ///
    /// An outbound connection is not in the registry's counts and lists,
    /// nor reached by `send_to_all`, unless the handler binds it to a uid or
    /// a group (from `on_connect`; the binding ends with each connection).
    /// Sends to it use the same queue and output cap as every connection.
    ///
    /// # Names
    ///
    /// The host must be an IP address or `localhost`: a name lookup blocks,
    /// and the loop must not. Resolve names with [`Ctx::spawn_blocking`] and
    /// connect to the address, with [`ConnectOptions::server_name`] for TLS.
    pub fn connect(&mut self, url: &str, opts: ConnectOptions) -> Result<ConnId, ConnectError> {
        if self.core.stopping {
            return Err(ConnectError::Stopping);
        }
        let target = dial::parse_url(url)?;
        let tls = if target.tls || (opts.tls && target.wire.protocol != Protocol::WebSocket) {
            let config = crate::net::tls::client_config(opts.ca_file.as_deref())
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
            let name = opts.server_name.clone().unwrap_or(target.host.clone());
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| ConnectError::Tls(format!("server name: {e}")))?;
            Some((config, name))
        } else {
            None
        };
        let dial = Dial {
            addr: target.addr,
            authority: target.authority,
            path: target.path,
            tls,
            opts,
            backoff: Duration::ZERO,
            held: Default::default(),
            protocol: None,
        };
        Ok(self.core.start_dial(dial, target.wire))
    }

    // ----- blocking work -----

    /// Runs `job` on this worker's pool of `blocking_threads` threads (made
    /// at the first call), never on the loop. Its return value comes back
    /// to [`crate::Handler::on_job_done`] with the returned id, on the loop.
    ///
    /// At most `blocking_queue` jobs wait for a thread: past that the job is
    /// refused at once with [`PoolBusy`] (answer "busy"; do not retry in a
    /// loop). A job that panics is reported with its panic text. A stopping
    /// worker waits for running jobs up to `stop_timeout_ms`.
    pub fn spawn_blocking<T: Send + 'static>(
        &mut self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JobId, PoolBusy> {
        self.core.pool.submit(job)
    }

    /// Jobs of [`Ctx::spawn_blocking`] whose results have not reached
    /// `on_job_done` yet.
    pub fn pending_jobs(&self) -> usize {
        self.core.pool.pending()
    }

    // ----- HTTP answered later -----

    /// Answers an HTTP request for which [`crate::Handler::on_http_request`]
    /// returned [`Response::later`]; `conn` is the request's
    /// [`crate::Request::conn`]. Returns false if that connection is gone
    /// (the client left, or `handshake_timeout_ms` passed and it was
    /// answered 504) or was answered already.
    pub fn respond(&mut self, conn: ConnId, response: Response) -> bool {
        self.core.respond_later(conn, response)
    }
}

/// Whether `msg` can cross the bus to `target` (its frame is at least as
/// long as the message); logs a refusal. Asked before the message is
/// encoded, so a huge one is not copied.
fn fits_bus(target: &Target, msg: &Message) -> bool {
    let fits = wire::delivery_fits(target, msg.len());
    if !fits {
        log::error!(
            "refusing a send of {} bytes: it cannot cross the bus (a record holds at most {} bytes)",
            msg.len(),
            wire::MAX_RECORD
        );
    }
    fits
}
