//! Accepting: take connections off the listener until it would block, under
//! the connection cap, pausing after running out of descriptors.

use super::Worker;
use crate::core::conn::{Conn, Lifecycle, Proto};
use crate::handler::Handler;
use crate::net::Transport;
use crate::proto::Protocol;
use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io;
use std::time::Duration;

/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl<H: Handler> Worker<H> {
    pub(super) fn accept(&mut self) {
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
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => {
                    self.accept_starved = false;
                    self.admit(sock, peer)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
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

    fn admit(&mut self, mut sock: TcpStream, peer: std::net::SocketAddr) {
        let _ = sock.set_nodelay(true);
        let entry = self.core.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("register: {e}");
            return;
        }
        let io = match &self.tls {
            None => Transport::Plain(sock),
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(session) => Transport::tls(sock, session),
                Err(e) => {
                    log::error!("TLS session for {peer}: {e}");
                    return;
                }
            },
        };
        let serial = self.core.serials.next(self.core.slot as usize);
        let websocket = self.core.cfg.protocol == Protocol::WebSocket;
        let proto = if websocket {
            Proto::Head(BytesMut::new())
        } else {
            Proto::Plain(BytesMut::new())
        };
        // A request head, or a TLS handshake, must come in time.
        let life = Lifecycle::handshaking(self.core.now + self.core.cfg.handshake_timeout);
        let handshaking = io.handshaking();
        let wire = self.core.wire;
        entry.insert(Conn::accepted(
            io,
            peer,
            serial,
            wire,
            proto,
            life,
            self.core.now,
        ));
        // A plain protocol's connection opens at once, or once its TLS
        // handshake is done (see `transport_ready`), so that what
        // `on_connect` sends has a session to go through.
        if !websocket && !handshaking {
            self.open_now(key);
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
