//! Opening outbound connections: the non-blocking connect, the TLS client
//! session, the WebSocket upgrade request, and the retries.

use super::conn::{Conn, Lifecycle, Marks, Proto};
use super::dial::Dial;
use super::Core;
use crate::error::ConnError;
use crate::id::ConnId;
use crate::net::{OutQueue, Transport};
use crate::proto::codec::Wire;
use crate::proto::ws::ClientHandshake;
use crate::proto::Protocol;
use bytes::BytesMut;
use mio::{Interest, Token};
use std::cmp::Reverse;
use std::io;

impl Core {
    /// Adds an outbound connection; its first attempt starts this turn.
    pub(crate) fn start_dial(&mut self, dial: Dial, wire: Wire) -> ConnId {
        let serial = self.next_serial();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut life = Lifecycle::connecting(self.now);
        life.wait(self.now);
        entry.insert(Conn {
            io: None,
            serial,
            peer: dial.addr,
            wire,
            proto: Proto::Done,
            life,
            out: OutQueue::default(),
            marks: Marks::default(),
            last_read: self.now,
            dial: Some(Box::new(dial)),
            held: None,
        });
        self.redials.push(Reverse((self.now, key, serial)));
        self.make_id(key, serial)
    }

    /// Queues the next attempt of a connection that was just dropped and
    /// waits to reconnect.
    pub(crate) fn schedule_redial(&mut self, key: usize) {
        let c = &self.conns[key];
        if let Some(at) = c.life.retry_at() {
            self.redials.push(Reverse((at, key, c.serial)));
        }
    }

    /// When the next attempt is due.
    pub(crate) fn next_redial(&self) -> Option<std::time::Instant> {
        self.redials.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Starts every attempt that is due.
    pub(crate) fn run_redials(&mut self) {
        while let Some(&Reverse((at, key, serial))) = self.redials.peek() {
            if at > self.now {
                return;
            }
            self.redials.pop();
            let due = self
                .conns
                .get(key)
                .is_some_and(|c| c.serial == serial && c.life.retry_at() == Some(at));
            if due {
                self.dial(key);
            }
        }
    }

    /// One attempt: a non-blocking connect, registered for its completion.
    fn dial(&mut self, key: usize) {
        let c = &mut self.conns[key];
        let Some(dial) = c.dial.as_ref() else {
            return;
        };
        c.life.redial(self.now + dial.opts.timeout);
        let sock = mio::net::TcpStream::connect(dial.addr).and_then(|mut sock| {
            self.mio
                .register(
                    &mut sock,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map(|()| sock)
        });
        match sock {
            Ok(sock) => c.io = Some(Transport::Plain(sock)),
            Err(e) => self.drop_socket(key, Some(ConnError::Connect(e))),
        }
    }

    /// An event came for a connection still connecting: the connect is done
    /// (or failed). Returns the id for `on_connect` when the connection
    /// opened right away (a plain protocol without TLS).
    pub(crate) fn connect_done(&mut self, key: usize) -> Option<ConnId> {
        let c = &mut self.conns[key];
        let sock = c.io.as_ref()?.socket();
        let failed = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                // Not connected yet: a spurious wake-up.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failed {
            self.drop_socket(key, Some(ConnError::Connect(e)));
            return None;
        }
        let _ = sock.set_nodelay(true);
        let dial = c.dial.as_ref()?;
        c.life.connected(self.now + dial.opts.timeout);
        if let Some((config, name)) = &dial.tls {
            let session =
                rustls::client::UnbufferedClientConnection::new(config.clone(), name.clone());
            match (session, c.io.take()) {
                (Ok(session), Some(Transport::Plain(sock))) => {
                    c.io = Some(Transport::tls(sock, session));
                    // The ClientHello goes out with the next write pass.
                    self.mark_dirty(key);
                    return None;
                }
                (Err(e), _) => {
                    let e = ConnError::Protocol(format!("TLS: {e}"));
                    self.drop_socket(key, Some(e));
                    return None;
                }
                (Ok(_), other) => c.io = other,
            }
        }
        self.start_protocol(key)
    }

    /// TCP (and TLS) are up: a WebSocket sends its upgrade request, a plain
    /// protocol opens. Returns the id for `on_connect` when it opened.
    pub(crate) fn start_protocol(&mut self, key: usize) -> Option<ConnId> {
        let c = &mut self.conns[key];
        if c.life.is_closing() {
            // Closed by the handler during the TLS handshake.
            return None;
        }
        let dial = c.dial.as_ref()?;
        if c.wire.protocol == Protocol::WebSocket {
            let (hs, head) = ClientHandshake::start(
                &dial.authority,
                &dial.path,
                &dial.opts.protocols,
                &dial.opts.headers,
            );
            c.out.push(head);
            c.proto = Proto::Upgrading(Box::new((hs, BytesMut::new())));
            self.mark_dirty(key);
            return None;
        }
        c.proto = Proto::Plain(BytesMut::new());
        self.open(key)
    }
}
