//! The side effects of a connection's steps through its
//! [`Lifecycle`](super::conn::Lifecycle): the registry and the other workers
//! learn of it, and the handler's callbacks are owed. Every opening and
//! closing of a connection goes through these methods.

use super::conn::Proto;
use super::{Core, Deferred};
use crate::cluster::wire::Record;
use crate::error::ConnError;
use crate::id::ConnId;
use crate::proto::http::{Reply, Response, Stage};
use crate::proto::ws::{CloseFrame, WsIo};
use std::io;
use tungstenite::protocol::frame::coding::CloseCode;

fn close_frame(code: u16, reason: &str) -> tungstenite::protocol::CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    tungstenite::protocol::CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].to_string().into(),
    }
}

impl Core {
    /// The handshakes are done: the connection becomes visible (an accepted
    /// one joins the registry, here and on every worker). Returns its id for
    /// `on_connect`; `None` if it was not waiting to open.
    pub(crate) fn open(&mut self, key: usize) -> Option<ConnId> {
        let c = self.conns.get_mut(key)?;
        if !c.life.open() {
            return None;
        }
        let id = ConnId::on_node(self.node, self.slot, key as u32, c.serial);
        match c.dial.as_mut() {
            Some(dial) => dial.reset_backoff(),
            None => self.list(key),
        }
        Some(id)
    }

    /// Puts an open connection in the registry (an outbound one is there
    /// only once the handler binds it).
    pub(crate) fn list(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.marks.listed || !c.life.is_open() {
            return;
        }
        c.marks.listed = true;
        let id = ConnId::on_node(self.node, self.slot, key as u32, c.serial);
        self.registry.open(id);
        self.announce(Record::Open(id));
    }

    /// After `on_connect`: what was held while an outbound connection was
    /// down goes out, behind what `on_connect` sent.
    pub(crate) fn release_held(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let Some(dial) = c.dial.as_mut() else {
            return;
        };
        if dial.held.is_empty() || !c.life.is_open() {
            return;
        }
        c.out.append(&mut dial.held);
        self.mark_dirty(key);
    }

    /// Begins closing: a WebSocket close frame (`code`, `reason` cut to 123
    /// bytes) is queued and the socket goes when the peer answers or
    /// `CLOSE_GRACE` passes; other protocols go once their output is
    /// written. An open connection leaves the registry and `on_close` is
    /// owed (with `on_error` first when there is an `error`). Closing a
    /// connection that is closing already changes nothing but writing out
    /// what the WebSocket queued (say, its answer to the peer's close).
    pub(crate) fn begin_close(
        &mut self,
        key: usize,
        code: u16,
        reason: &str,
        error: Option<ConnError>,
    ) {
        self.close_step(key, code, reason, error, None);
    }

    /// The WebSocket peer sent `frame`: closing begins (tungstenite queued
    /// the reply), and `on_close` gets the frame if it is owed now.
    pub(crate) fn peer_closed(&mut self, key: usize, frame: CloseFrame) {
        self.close_step(key, 1000, "", None, Some(frame));
    }

    fn close_step(
        &mut self,
        key: usize,
        code: u16,
        reason: &str,
        error: Option<ConnError>,
        peer: Option<CloseFrame>,
    ) {
        let now = self.now;
        let cap = self.cfg.max_output_bytes;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.life.is_waiting() {
            return;
        }
        let step = c.life.close(now);
        match &mut c.proto {
            Proto::Ws(ws) => {
                // A pong still owed is dropped when the queue is full.
                let mut io = WsIo::new(&[], &mut c.out, cap);
                // Queues our close frame, or (closed by the peer, or closing
                // already) only writes out what tungstenite holds.
                let _ = ws.close(&mut io, Some(close_frame(code, reason)));
            }
            _ if step.is_some() => c.proto = Proto::Done,
            _ => {}
        }
        if step == Some(true) {
            self.forget(key, error, peer);
        }
        self.mark_dirty(key);
    }

    /// Like [`Core::begin_close`], and nothing more the peer sends is parsed:
    /// a protocol failure, or a stream that ended.
    pub(crate) fn abort(&mut self, key: usize, code: u16, error: Option<ConnError>) {
        self.begin_close(key, code, "", error);
        if let Some(c) = self.conns.get_mut(key) {
            c.proto = Proto::Done;
        }
    }

    /// An open connection leaves the registry; `on_close` is owed (with the
    /// peer's close frame, if that is what ended it).
    fn forget(&mut self, key: usize, error: Option<ConnError>, peer: Option<CloseFrame>) {
        let c = &mut self.conns[key];
        let id = ConnId::on_node(self.node, self.slot, key as u32, c.serial);
        if c.marks.listed {
            c.marks.listed = false;
            self.registry.close(id);
            self.announce(Record::Close(id));
        }
        self.deferred.push_back(Deferred::Closed(id, error, peer));
    }

    /// The socket goes: its close finished, its deadline passed, the peer
    /// went away or it failed (`error` says why). An open connection is
    /// forgotten first (`on_error`, `on_close`); an outbound attempt that
    /// never opened reports its `error` alone. An outbound connection with
    /// [`crate::Reconnect`] then waits for its next attempt, keeping its
    /// id; every other connection is removed.
    ///
    /// Closing the socket is enough: the kernel takes a descriptor out of
    /// every epoll set when its last reference closes, and nothing else
    /// holds a client socket (workers never fork or dup), so an explicit
    /// `EPOLL_CTL_DEL` would be one more syscall per connection for nothing.
    pub(crate) fn drop_socket(&mut self, key: usize, error: Option<ConnError>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.life.is_waiting() {
            return;
        }
        let id = ConnId::on_node(self.node, self.slot, key as u32, c.serial);
        if c.life.is_open() {
            c.life.close(self.now);
            self.forget(key, error, None);
        } else if c.outbound() && !c.life.is_closing() {
            let error = error.unwrap_or_else(|| {
                ConnError::Connect(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed before the handshake finished",
                ))
            });
            self.deferred.push_back(Deferred::Failed(id, error));
        }
        let c = &mut self.conns[key];
        if let Some(io) = c.io.as_mut() {
            io.shutdown();
        }
        let retry = match c.dial.as_mut() {
            Some(dial) if !self.stopping => dial.next_attempt(self.now),
            _ => None,
        };
        match retry {
            Some(at) => {
                c.io = None;
                c.proto = Proto::Done;
                c.out = Default::default();
                // Keep the marks that say which of the worker's lists hold
                // the key; the rest start over with the next connection.
                let kept = c.marks;
                c.marks = Default::default();
                c.marks.listed = kept.listed;
                c.marks.dirty = kept.dirty;
                c.marks.read_pending = kept.read_pending;
                c.life.wait(at);
                self.schedule_redial(key);
            }
            None => {
                let c = self.conns.remove(key);
                if c.marks.per_ip {
                    self.board.release(self.slot as usize, c.peer.ip());
                }
            }
        }
    }

    /// The handler is done with an outbound connection: no more attempts.
    /// A connection waiting to reconnect goes at once.
    pub(crate) fn give_up(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(dial) = c.dial.as_mut() {
            dial.opts.reconnect = None;
        }
        if c.life.is_waiting() {
            self.conns.remove(key);
        }
    }

    /// Writes an HTTP response and closes the connection after it: a
    /// refusal, a bad request, an answer that ends the connection.
    pub(crate) fn respond(&mut self, key: usize, response: &Response, head_only: bool) {
        let c = &mut self.conns[key];
        let bytes = match response.header_problem() {
            None => response.encode(head_only, false),
            Some(why) => {
                log::error!("response to {} not sent: {why}; answering 500", c.peer);
                Response::status(500).encode(head_only, false)
            }
        };
        c.out.push(bytes.into());
        c.proto = Proto::Done;
        self.begin_close(key, 0, "", None);
    }

    /// Writes the answer to the request an HTTP connection is on. When the
    /// client, the handler's headers, the config (`keepalive_timeout`,
    /// `max_requests_per_connection`) and a worker that is not stopping all
    /// allow, the connection lives on: it reads its next request, with
    /// `keepalive_timeout` to start it in; input that came meanwhile is
    /// parsed on the next turn. Otherwise the answer says `Connection:
    /// close` and the connection closes after it.
    pub(crate) fn answer(&mut self, key: usize, response: &Response, reply: Reply) {
        let now = self.now;
        let (keepalive, handshake) = (self.cfg.keepalive_timeout, self.cfg.handshake_timeout);
        let max_requests = self.cfg.max_requests_per_connection;
        let stopping = self.stopping;
        let c = &mut self.conns[key];
        let Proto::Http(h) = &mut c.proto else {
            return self.respond(key, response, reply.head_only);
        };
        if response.header_problem().is_some() {
            // `respond` logs it and answers 500 instead.
            return self.respond(key, response, reply.head_only);
        }
        h.served += 1;
        let Some(idle) = keepalive.filter(|_| {
            reply.keep_alive && !stopping && !response.says_close() && h.served < max_requests
        }) else {
            return self.respond(key, response, reply.head_only);
        };
        c.out.push(response.encode(reply.head_only, true).into());
        h.stage = Stage::Head;
        // The next head must come within the keep-alive timeout, or be
        // done within the handshake timeout once it has begun.
        let wait = if h.input.is_empty() { idle } else { handshake };
        c.life.extend(now + wait);
        if !h.input.is_empty() || c.marks.paused {
            h.held = true;
            c.marks.paused = false;
            self.resumed.push(key);
        }
        self.mark_dirty(key);
    }

    /// Answers a request that `on_http_request` left for later.
    pub(crate) fn respond_later(&mut self, conn: ConnId, response: Response) -> bool {
        let Some(key) = self.key_of(conn) else {
            return false;
        };
        match &self.conns[key].proto {
            Proto::Http(h) => match h.stage {
                Stage::Responding(reply) => {
                    self.answer(key, &response, reply);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// `on_http_request` will answer later: the request waits, with a new
    /// `handshake_timeout` to be answered in.
    pub(crate) fn await_response(&mut self, key: usize, reply: Reply) {
        let deadline = self.now + self.cfg.handshake_timeout;
        let c = &mut self.conns[key];
        if let Proto::Http(h) = &mut c.proto {
            h.stage = Stage::Responding(reply);
        }
        c.life.extend(deadline);
    }
}
