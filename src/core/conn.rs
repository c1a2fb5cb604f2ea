//! One connection, accepted or opened by the worker: its transport, what its
//! bytes mean now, where it is in its life, and its queued output.
//!
//! A connection's life is one [`Lifecycle`] value, and only its methods move
//! it from one phase to the next:
//!
//! ```text
//!  outbound:  Connecting ──> Handshaking ──> Open ──> Closing ──> (removed)
//!                 │              │            │                     │
//!  inbound:       │     Handshaking / Open ───┘   reconnect option: ▼
//!                 └──────────────┴──────────────────────────────> Waiting ──> Connecting
//! ```
//!
//! The side effects of each step (the registry, the bus, the callbacks owed
//! to the handler) are taken in one place, `core/lifecycle.rs`.

use super::dial::Dial;
use crate::net::{OutQueue, Transport};
use crate::proto::codec::Wire;
use crate::proto::http::HttpConn;
use crate::proto::ws::ClientHandshake;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocketContext;

/// How long a closing connection may take to flush and finish its close
/// handshake before the socket is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the bytes a connection reads mean right now.
pub(crate) enum Proto {
    /// Plain HTTP on a `websocket://` listener: reading request heads and
    /// bodies, waiting for an answer given later, kept alive between
    /// requests, until an upgrade or the close.
    Http(Box<HttpConn>),
    /// Client side: our upgrade request is out; reading the server's answer.
    Upgrading(Box<(ClientHandshake, BytesMut)>),
    /// An open WebSocket, either side.
    Ws(Box<WebSocketContext>),
    /// An open `text://`, `frame://` or `tcp://` connection, with its partial input.
    Plain(BytesMut),
    /// Nothing more is read: an HTTP response or a close is being written.
    Done,
}

/// A connection's phase; see the module docs. The fields are private: every
/// transition is a method of [`Lifecycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Outbound: the TCP connect is under way.
    Connecting { deadline: Instant },
    /// A TLS handshake, a request head or a WebSocket upgrade is under way;
    /// the handler does not see the connection yet.
    Handshaking { deadline: Instant },
    /// The handler saw `on_connect`; `on_close` is owed.
    Open,
    /// Closing: the handler was told; the socket goes once its output is
    /// written (and a WebSocket peer answered our close) or at the deadline.
    Closing { deadline: Instant },
    /// Outbound with reconnect: disconnected, the next attempt is due at `at`.
    Waiting { at: Instant },
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifecycle(Phase);

impl Lifecycle {
    /// An outbound connect just started.
    pub(crate) fn connecting(deadline: Instant) -> Self {
        Lifecycle(Phase::Connecting { deadline })
    }

    /// An accepted connection whose handshake (TLS, request head) must be
    /// done by `deadline`.
    pub(crate) fn handshaking(deadline: Instant) -> Self {
        Lifecycle(Phase::Handshaking { deadline })
    }

    /// Visible to the handler: `on_connect` ran and `on_close` is owed.
    pub(crate) fn is_open(&self) -> bool {
        self.0 == Phase::Open
    }

    /// Closing its socket; the handler has been told.
    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.0, Phase::Closing { .. })
    }

    /// The outbound connect is still under way.
    pub(crate) fn is_connecting(&self) -> bool {
        matches!(self.0, Phase::Connecting { .. })
    }

    /// Disconnected, waiting to reconnect.
    pub(crate) fn is_waiting(&self) -> bool {
        matches!(self.0, Phase::Waiting { .. })
    }

    /// When this phase times out: a connect, a handshake or a close that
    /// took too long.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.0 {
            Phase::Connecting { deadline }
            | Phase::Handshaking { deadline }
            | Phase::Closing { deadline } => Some(deadline),
            Phase::Open | Phase::Waiting { .. } => None,
        }
    }

    /// When a waiting connection tries again.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        match self.0 {
            Phase::Waiting { at } => Some(at),
            _ => None,
        }
    }

    /// Its name in `connections` output.
    pub(crate) fn name(&self) -> &'static str {
        match self.0 {
            Phase::Connecting { .. } => "connecting",
            Phase::Handshaking { .. } => "handshake",
            Phase::Open => "open",
            Phase::Closing { .. } => "closing",
            Phase::Waiting { .. } => "waiting",
        }
    }

    /// The TCP connect completed: the handshakes (if any) have until
    /// `deadline`.
    pub(crate) fn connected(&mut self, deadline: Instant) {
        if self.is_connecting() {
            self.0 = Phase::Handshaking { deadline };
        }
    }

    /// A handshake goes on for longer: it must now be done by `deadline`.
    pub(crate) fn extend(&mut self, deadline: Instant) {
        if let Phase::Handshaking { .. } = self.0 {
            self.0 = Phase::Handshaking { deadline };
        }
    }

    /// The handshakes are done: the handler is about to see `on_connect`.
    /// False (and no change) unless it was connecting or handshaking.
    pub(crate) fn open(&mut self) -> bool {
        match self.0 {
            Phase::Connecting { .. } | Phase::Handshaking { .. } => {
                self.0 = Phase::Open;
                true
            }
            _ => false,
        }
    }

    /// Begins closing, with `CLOSE_GRACE` from `now` to finish. `None` when
    /// it was closing already (the earlier deadline holds); otherwise
    /// whether it had been open, so `on_close` is owed.
    pub(crate) fn close(&mut self, now: Instant) -> Option<bool> {
        match self.0 {
            Phase::Closing { .. } => None,
            was => {
                self.0 = Phase::Closing {
                    deadline: now + CLOSE_GRACE,
                };
                Some(was == Phase::Open)
            }
        }
    }

    /// The connection ended and will be tried again at `at`. Whether it had
    /// been open, so `on_close` is owed.
    pub(crate) fn wait(&mut self, at: Instant) -> bool {
        let was_open = self.is_open();
        self.0 = Phase::Waiting { at };
        was_open
    }

    /// A waiting connection's next attempt starts, to finish by `deadline`.
    pub(crate) fn redial(&mut self, deadline: Instant) {
        if self.is_waiting() {
            self.0 = Phase::Connecting { deadline };
        }
    }
}

/// Marks the worker's loop keeps on a connection, apart from its life.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Marks {
    /// In the worker's list of connections to write this turn.
    pub(crate) dirty: bool,
    /// In the worker's list of connections to read again next turn.
    pub(crate) read_pending: bool,
    /// The handler paused reading ([`crate::Ctx::pause_reading`]).
    pub(crate) paused: bool,
    /// `on_buffer_full` fired; `on_buffer_drain` is due when the queue empties.
    pub(crate) full: bool,
    /// A ping went out since the peer last sent anything.
    pub(crate) pinged: bool,
    /// The peer has sent data (the first-byte deadline of plain protocols).
    pub(crate) heard: bool,
    /// In the registry (every open inbound connection; an outbound one
    /// once the handler binds it to a uid or group).
    pub(crate) listed: bool,
    /// Counted in the worker's per-address table (`max_connections_per_ip`):
    /// released when the connection is removed.
    pub(crate) per_ip: bool,
    /// The listener it was accepted on: 0 for `listen`, 1.. for
    /// `also_listen` (0 for outbound connections).
    pub(crate) listener: u8,
}

/// One connection in the worker's slab.
pub(crate) struct Conn {
    /// The socket, plain or TLS; `None` while an outbound connection waits
    /// to reconnect.
    pub(crate) io: Option<Transport>,
    /// With the slot and key, the [`crate::ConnId`].
    pub(crate) serial: u64,
    pub(crate) peer: SocketAddr,
    /// How its messages are encoded.
    pub(crate) wire: Wire,
    pub(crate) proto: Proto,
    pub(crate) life: Lifecycle,
    pub(crate) out: OutQueue,
    pub(crate) marks: Marks,
    /// Last time the peer sent anything (idle timeout, pings).
    pub(crate) last_read: Instant,
    /// What an outbound connection was asked to reach, and how to retry.
    pub(crate) dial: Option<Box<Dial>>,
    /// Output held back from the socket ([`crate::Ctx::hold_output`]).
    pub(crate) held: Option<Box<Held>>,
}

/// Frames sent to a connection while its output is held
/// ([`crate::Ctx::hold_output`]), and how many holds are not released yet.
#[derive(Default)]
pub(crate) struct Held {
    /// Holds taken and not yet released; the frames go out at 0.
    pub(crate) count: u32,
    /// The frames, in the order they were sent.
    pub(crate) out: OutQueue,
}

impl Conn {
    /// A connection accepted on the worker's listener.
    pub(crate) fn accepted(
        io: Transport,
        peer: SocketAddr,
        serial: u64,
        wire: Wire,
        proto: Proto,
        life: Lifecycle,
        now: Instant,
    ) -> Self {
        Conn {
            io: Some(io),
            serial,
            peer,
            wire,
            proto,
            life,
            out: OutQueue::default(),
            marks: Marks::default(),
            last_read: now,
            dial: None,
            held: None,
        }
    }

    /// Bytes queued for the socket or held back: what the output cap counts.
    pub(crate) fn queued(&self) -> usize {
        self.out.len() + self.held.as_ref().map_or(0, |h| h.out.len())
    }

    /// Whether the worker opened it (`ctx.connect`).
    pub(crate) fn outbound(&self) -> bool {
        self.dial.is_some()
    }

    /// Writes queued output. `Ok(true)`: all of it reached the socket (and
    /// no TLS handshake holds it back); `Ok(false)` without a socket.
    pub(crate) fn flush(&mut self) -> std::io::Result<bool> {
        match self.io.as_mut() {
            Some(io) => io.flush(&mut self.out),
            None => Ok(false),
        }
    }

    /// A closing connection whose output is written may go: plain
    /// protocols at once, a WebSocket once the peer has answered our close.
    pub(crate) fn close_done(&self) -> bool {
        match &self.proto {
            Proto::Ws(ws) => !ws.can_read(),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_life_moves_only_forward_and_closes_once() {
        let t = Instant::now();
        let mut life = Lifecycle::connecting(t);
        assert!(life.is_connecting());
        life.connected(t + CLOSE_GRACE);
        assert_eq!(life.deadline(), Some(t + CLOSE_GRACE));
        assert!(life.open());
        assert!(!life.open(), "opens once");
        assert_eq!(life.close(t), Some(true), "on_close owed");
        assert_eq!(life.close(t + CLOSE_GRACE), None, "closes once");
        assert_eq!(
            life.deadline(),
            Some(t + CLOSE_GRACE),
            "first deadline holds"
        );
        let mut refused = Lifecycle::handshaking(t);
        assert_eq!(refused.close(t), Some(false), "never opened: no on_close");
    }

    #[test]
    fn a_reconnecting_life_waits_then_dials_again() {
        let t = Instant::now();
        let mut life = Lifecycle::connecting(t);
        assert!(!life.wait(t), "a failed connect owes no on_close");
        assert_eq!(life.retry_at(), Some(t));
        assert_eq!(life.deadline(), None);
        life.redial(t + CLOSE_GRACE);
        assert!(life.is_connecting());
        assert!(life.open());
        assert!(life.wait(t), "an open connection that drops owes on_close");
    }
}
