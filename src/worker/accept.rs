//! Accepting: take connections off the listener until it would block, under
//! the connection cap, pausing after running out of descriptors, and
//! refusing a client address past `max_connections_per_ip` (counted over
//! every worker in the [`crate::shm::Scoreboard`]), and leaving a shared
//! listener to a less loaded worker.

use super::Worker;
use crate::core::conn::{Conn, Lifecycle, Proto};
use crate::handler::Handler;
use crate::net::Transport;
use crate::proto::codec::Wire;
use crate::proto::Protocol;
use crate::shm::Admission;
use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Which listener a connection came from, and its wire.
#[derive(Clone, Copy)]
struct Origin {
    listener: u8,
    wire: Wire,
}

/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a worker that left a shared listener to a less loaded one
/// looks again (the other may have filled up meanwhile).
const BALANCE_RECHECK: Duration = Duration::from_millis(2);

/// A worker that neither waits in its poll nor came back to its loop for
/// this long is not waited for (a handler blocks it); and what a shared
/// listener still holds this long after it was left to another worker is
/// taken anyway.
const BALANCE_WAIT: Duration = Duration::from_millis(50);

/// A listener left to a less loaded worker: look again at `next`, and take
/// what it still holds at `until` whatever the loads.
#[derive(Clone, Copy)]
pub(super) struct Deferral {
    pub(super) next: Instant,
    until: Instant,
}

/// The answer to an HTTP or WebSocket client past `max_connections_per_ip`.
const PER_IP_REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    Retry-After: 10\r\n\
    Content-Type: text/plain\r\n\
    Content-Length: 39\r\n\
    Connection: close\r\n\
    \r\n\
    too many connections from your address\n";

impl<H: Handler> Worker<H> {
    /// Accepts on every listener (after a pause, or room below the cap).
    pub(super) fn accept(&mut self) {
        for n in 0..=self.also.len() {
            self.accept_from(n);
        }
    }

    /// Accepts on listener `n`: 0 is `listen`, 1.. `also_listen`.
    pub(super) fn accept_from(&mut self, n: usize) {
        if self.stop_deadline.is_some() || self.accept_resume.is_some() {
            return;
        }
        loop {
            if self.core.conns.len() >= self.max_conns {
                if !self.accept_full {
                    self.log_full();
                }
                self.accept_full = true;
                return;
            }
            if !self.my_turn_to_accept(n) {
                return;
            }
            let (accepted, wire) = match n {
                0 => match self.listener.as_ref() {
                    Some(l) => (l.accept(), self.core.wire),
                    None => return,
                },
                _ => match self.also.get(n - 1) {
                    Some((l, wire)) => (l.accept(), *wire),
                    None => return,
                },
            };
            match accepted {
                Ok((sock, peer)) => {
                    self.accept_starved = false;
                    let from = Origin {
                        listener: n as u8,
                        wire,
                    };
                    if let Some(counted) = self.limit_per_ip(&sock, peer, from) {
                        self.admit(sock, peer, counted, from);
                        self.publish_load();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing left: whoever was waited for took it.
                    self.deferred[n] = None;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO)) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: pause instead of
                    // spinning, and say so once until an accept works.
                    if !std::mem::replace(&mut self.accept_starved, true) {
                        log::warn!("accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?} at a time");
                    }
                    self.accept_resume = Some(self.core.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Whether to take the next connection of listener `n` now. A shared
    /// listener is left to a less loaded worker that answers
    /// ([`crate::shm::Scoreboard::fair_to_accept`]); the listener is looked
    /// at again every [`BALANCE_RECHECK`], and what it still holds after
    /// [`BALANCE_WAIT`] is taken.
    fn my_turn_to_accept(&mut self, n: usize) -> bool {
        let shared = n > 0 || !self.core.cfg.reuse_port;
        if !self.balance || !shared {
            return true;
        }
        let now = self.core.now;
        if self.deferred[n].is_some_and(|d| now >= d.until) {
            return true;
        }
        let slot = self.core.slot as usize;
        let held = self.core.conns.len();
        if self.core.board.fair_to_accept(slot, held, BALANCE_WAIT) {
            return true;
        }
        let until = self.deferred[n].map_or(now + BALANCE_WAIT, |d| d.until);
        self.deferred[n] = Some(Deferral {
            next: now + BALANCE_RECHECK,
            until,
        });
        false
    }

    /// Listeners left to another worker whose look-again time has come.
    pub(super) fn recheck_deferred(&mut self) {
        let now = self.core.now;
        for n in 0..self.deferred.len() {
            if self.deferred[n].is_some_and(|d| d.next <= now) {
                self.accept_from(n);
                // Not looked at (stopping, paused, at the cap: those resume
                // on their own), or looked at and drained: done.
                if self.deferred[n].is_some_and(|d| d.next <= now) {
                    self.deferred[n] = None;
                }
            }
        }
    }

    /// The earliest look-again time of a listener left to another worker.
    pub(super) fn next_recheck(&self) -> Option<Instant> {
        self.deferred.iter().flatten().map(|d| d.next).min()
    }

    fn admit(
        &mut self,
        mut sock: TcpStream,
        peer: std::net::SocketAddr,
        per_ip: bool,
        from: Origin,
    ) {
        let _ = sock.set_nodelay(true);
        let entry = self.core.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("register: {e}");
            return self.unadmit(peer, per_ip);
        }
        let tls = self.tls.as_ref().filter(|_| from.listener == 0);
        let io = match tls {
            None => Transport::Plain(sock),
            Some(config) => match rustls::server::UnbufferedServerConnection::new(config.clone()) {
                Ok(session) => Transport::tls(sock, session),
                Err(e) => {
                    log::error!("TLS session for {peer}: {e}");
                    return self.unadmit(peer, per_ip);
                }
            },
        };
        let serial = self.core.board.next_serial(self.core.slot as usize);
        let websocket = from.wire.protocol == Protocol::WebSocket;
        let proto = if websocket {
            Proto::Http(Box::default())
        } else {
            Proto::Plain(BytesMut::new())
        };
        // A request head, or a TLS handshake, must come in time.
        let life = Lifecycle::handshaking(self.core.now + self.core.cfg.handshake_timeout);
        let handshaking = io.handshaking();
        entry.insert(Conn::accepted(
            io,
            peer,
            serial,
            from.wire,
            proto,
            life,
            self.core.now,
        ));
        self.core.conns[key].marks.per_ip = per_ip;
        self.core.conns[key].marks.listener = from.listener;
        // A plain protocol's connection opens at once, or once its TLS
        // handshake is done (see `transport_ready`), so that what
        // `on_connect` sends has a session to go through.
        if !websocket && !handshaking {
            self.open_now(key);
        }
    }

    /// `max_connections_per_ip`: `Some(counted)` admits the connection
    /// (`counted`: it holds a place in this worker's table until it is
    /// removed); `None` refused it, and the caller drops the socket. A
    /// refused HTTP or WebSocket client gets `503` with `Retry-After`,
    /// written at once on the fresh socket; a TLS or `text://`, `frame://`,
    /// `tcp://` one is closed at once (a TLS client sees its handshake
    /// fail: answering would cost a handshake per refusal).
    fn limit_per_ip(
        &mut self,
        sock: &TcpStream,
        peer: std::net::SocketAddr,
        from: Origin,
    ) -> Option<bool> {
        let limit = self.core.cfg.max_connections_per_ip;
        let slot = self.core.slot as usize;
        match self.core.board.admit(slot, peer.ip(), limit) {
            Admission::Counted => Some(true),
            Admission::Uncounted => Some(false),
            Admission::Refused => {
                let tls = self.tls.is_some() && from.listener == 0;
                if from.wire.protocol == Protocol::WebSocket && !tls {
                    let _ = (&*sock).write(PER_IP_REFUSAL);
                    let _ = sock.shutdown(std::net::Shutdown::Write);
                    // What the client sent already is read (a few KiB at
                    // most), so that the close sends FIN after the answer,
                    // not a reset.
                    let mut sink = [0u8; 1024];
                    for _ in 0..16 {
                        if !matches!((&*sock).read(&mut sink), Ok(n) if n > 0) {
                            break;
                        }
                    }
                }
                log::debug!("{peer}: over max_connections_per_ip ({limit}); refused");
                None
            }
        }
    }

    /// Tells the other workers how many connections this one holds (while
    /// it accepts; a stopping worker said `None` once).
    pub(super) fn publish_load(&self) {
        if self.balance && self.stop_deadline.is_none() {
            let slot = self.core.slot as usize;
            // Paused after running out of descriptors: not one to wait on.
            let held = self
                .accept_resume
                .is_none()
                .then_some(self.core.conns.len());
            self.core.board.set_load(slot, held);
        }
    }

    /// Gives back the place `limit_per_ip` counted for a connection that
    /// could not be set up.
    fn unadmit(&mut self, peer: std::net::SocketAddr, per_ip: bool) {
        if per_ip {
            self.core.board.release(self.core.slot as usize, peer.ip());
        }
    }

    /// Says, once per episode (until the count drops below again), that
    /// accepting stopped at the cap, and whether the open-files limit set it.
    fn log_full(&self) {
        let limit = super::nofile_limit().unwrap_or(0);
        if self.max_conns < self.core.cfg.max_connections {
            log::warn!(
                "at max_connections: {} connections, all the open-files limit ({limit}) \
                 allows after its reserve for the bus and the rest (max_connections is {}); \
                 not accepting until one closes. Raise `ulimit -n` for more",
                self.max_conns,
                self.core.cfg.max_connections
            );
        } else {
            log::warn!(
                "at max_connections ({}): not accepting until one closes",
                self.max_conns
            );
        }
    }

    /// Opens a connection whose handshakes are done and calls `on_connect`.
    pub(super) fn open_now(&mut self, key: usize) {
        if let Some(id) = self.core.open(key) {
            self.opened(key, id);
        }
    }
}
