//! Reading connections: drain the transport into the worker's shared buffer
//! and hand the bytes to the connection's protocol.

use super::Worker;
use crate::core::conn::Proto;
use crate::error::ConnError;
use crate::handler::Handler;
use crate::message::Message;
use crate::net::Input;
use crate::proto::http::{self, Stage};
use crate::proto::plain::{self, FramingError};
use crate::proto::ws::{CloseFrame, WsIo};
use std::io;

/// Bytes read from one connection per event before others get a turn.
const READ_BUDGET: usize = 256 * 1024;

impl<H: Handler> Worker<H> {
    /// Reads connection `key` until the socket is drained, its budget is
    /// spent or it is paused.
    ///
    /// `until_eagain` is false for a readiness event that did not report the
    /// peer's FIN: the socket is edge-triggered, so data arriving after a read
    /// raises a new event, and a read shorter than the buffer means nothing
    /// was left. Stopping there saves the read that would only say EAGAIN,
    /// one syscall per message for ping-pong traffic. Reads without an event
    /// (resumed, out of budget) and events with a FIN read until EAGAIN or
    /// end of stream, since nothing else would bring the rest.
    pub(super) fn read_conn(&mut self, key: usize, until_eagain: bool) {
        let mut budget = READ_BUDGET;
        self.parse_held(key);
        loop {
            let Some(c) = self.core.conns.get_mut(key) else {
                return;
            };
            if c.marks.paused || c.life.is_connecting() {
                return;
            }
            let Some(io) = c.io.as_mut() else {
                return;
            };
            let was_handshaking = io.handshaking();
            let got = io.read(&mut self.scratch);
            let ready = was_handshaking && !io.handshaking();
            if io.wants_write() {
                self.core.mark_dirty(key);
            }
            match got {
                Ok(Input::Data { n, drained }) => {
                    self.touch(key);
                    self.core.conns[key].marks.heard = true;
                    self.feed(key, n);
                    if drained && !until_eagain {
                        return;
                    }
                    budget = budget.saturating_sub(n);
                }
                Ok(Input::Progress(n)) => {
                    self.touch(key);
                    // Ciphertext counts too: handshake and alert records
                    // bring no plaintext.
                    budget = budget.saturating_sub(n);
                    if ready {
                        self.transport_ready(key);
                    }
                }
                Ok(Input::Blocked) => return,
                Ok(Input::Eof) => return self.core.drop_socket(key, None),
                Err(e) => return self.core.drop_socket(key, Some(e)),
            }
            if budget == 0 {
                self.defer_read(key);
                return;
            }
        }
    }

    fn touch(&mut self, key: usize) {
        let c = &mut self.core.conns[key];
        c.last_read = self.core.now;
        c.marks.pinged = false;
    }

    /// A TLS handshake just finished: an accepted plain-protocol connection
    /// opens; an outbound one starts its protocol (and may open).
    fn transport_ready(&mut self, key: usize) {
        let c = &self.core.conns[key];
        if c.outbound() {
            if let Some(id) = self.core.start_protocol(key) {
                self.opened(key, id);
            }
        } else if matches!(c.proto, Proto::Plain(_)) {
            self.open_now(key);
        }
    }

    /// Reads `key` again next turn (its budget ran out, or it was resumed),
    /// once however often that happens within a turn.
    pub(super) fn defer_read(&mut self, key: usize) {
        if let Some(c) = self.core.conns.get_mut(key) {
            if !c.marks.read_pending {
                c.marks.read_pending = true;
                self.pending_reads.push_back(key);
            }
        }
    }

    /// Hands `scratch[..n]`, just read from connection `key`, to its protocol.
    fn feed(&mut self, key: usize, n: usize) {
        let c = &mut self.core.conns[key];
        match &mut c.proto {
            Proto::Http(h) => {
                let first = h.input.is_empty() && h.served > 0;
                h.input.extend_from_slice(&self.scratch[..n]);
                if h.responding() {
                    // Pipelined input waits for the pending answer, one
                    // head and body at most: then the socket is left unread.
                    let cap = http::MAX_HEAD_BYTES + self.core.cfg.max_http_body_bytes;
                    if h.input.len() >= cap {
                        c.marks.paused = true;
                    }
                    return;
                }
                if first && matches!(h.stage, Stage::Head) {
                    // A kept-alive connection's next head has begun: it
                    // must be done within the handshake timeout.
                    c.life
                        .extend(self.core.now + self.core.cfg.handshake_timeout);
                }
                self.try_head(key);
            }
            Proto::Upgrading(hs) => {
                hs.1.extend_from_slice(&self.scratch[..n]);
                self.try_answer(key);
            }
            Proto::Ws(_) => self.feed_ws(key, n),
            Proto::Plain(buf) => {
                let scanned = buf.len();
                buf.extend_from_slice(&self.scratch[..n]);
                self.feed_plain(key, scanned);
            }
            Proto::Done => {}
        }
    }

    /// HTTP input that waited (for an answer given later, or for output
    /// to drain) is parsed before the socket is read again.
    fn parse_held(&mut self, key: usize) {
        let Some(c) = self.core.conns.get_mut(key) else {
            return;
        };
        if let Proto::Http(h) = &mut c.proto {
            if std::mem::take(&mut h.held) {
                // The hold's pause ends with it: `try_head` pauses again if
                // output is still over the cap. (Left set, a partial head
                // would leave the socket unread with nothing to resume it.)
                if !h.responding() {
                    c.marks.paused = false;
                }
                self.try_head(key);
            }
        }
    }

    /// Delivers the whole messages of a plain protocol's input; the first
    /// `scanned` bytes are known to hold none (they were there after the
    /// last message was taken), so a `text://` line is searched for in new
    /// bytes only.
    fn feed_plain(&mut self, key: usize, mut scanned: usize) {
        let max = self.core.cfg.max_frame_bytes;
        loop {
            let Some(c) = self.core.conns.get_mut(key) else {
                return;
            };
            if !c.life.is_open() {
                return;
            }
            let protocol = c.wire.protocol;
            let Proto::Plain(buf) = &mut c.proto else {
                return;
            };
            match plain::decode(protocol, buf, max, std::mem::take(&mut scanned)) {
                Ok(Some(msg)) => self.deliver(key, msg),
                Ok(None) => return,
                Err(e) => {
                    let err = match e {
                        FramingError::TooBig(size) => ConnError::TooBig { size, limit: max },
                        FramingError::BadLength(l) => {
                            ConnError::Protocol(format!("frame length {l} is below 4"))
                        }
                    };
                    return self.core.begin_close(key, 1002, "", Some(err));
                }
            }
        }
    }

    /// Calls `on_message` for an open connection.
    fn deliver(&mut self, key: usize, msg: Message) {
        let c = &self.core.conns[key];
        if !c.life.is_open() {
            return;
        }
        let id = self.core.id_of(key, c);
        self.core.stats.messages_in += 1;
        self.guard(Some(id), |h, ctx| h.on_message(ctx, id, msg));
    }

    /// Hands `scratch[..n]` to a WebSocket, either side, until it needs
    /// more. With `n` = 0 it parses what it holds already (bytes that came
    /// with the handshake).
    ///
    /// The pongs and close replies tungstenite writes are queued under the
    /// output cap like any send ([`WsIo`]): a pong that does not fit is
    /// dropped and the overflow policy applies, so a peer that pings and
    /// never reads costs at most the cap.
    pub(super) fn feed_ws(&mut self, key: usize, n: usize) {
        let cap = self.core.cfg.max_output_bytes;
        let mut pos = 0;
        loop {
            let Some(c) = self.core.conns.get_mut(key) else {
                return;
            };
            let Proto::Ws(ws) = &mut c.proto else {
                return;
            };
            let mut io = WsIo::new(&self.scratch[pos..n], &mut c.out, cap);
            let r = ws.read(&mut io);
            pos = n - io.unread();
            let dropped = io.dropped;
            if !c.out.is_empty() {
                self.core.note_full(key);
                self.core.mark_dirty(key);
            }
            if dropped > 0 {
                self.core.overflow(key, dropped);
            }
            use tungstenite::Error as E;
            match r {
                Ok(tungstenite::Message::Text(t)) => self.deliver(key, Message::Text(t)),
                Ok(tungstenite::Message::Binary(b)) => self.deliver(key, Message::Binary(b)),
                // The peer closed, or answered our close; tungstenite
                // queued the reply, which closing writes out.
                Ok(tungstenite::Message::Close(frame)) => {
                    self.core.peer_closed(key, CloseFrame::from_peer(frame))
                }
                Ok(_) => {}
                Err(E::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(E::ConnectionClosed | E::AlreadyClosed) => {
                    return self.core.abort(key, 1000, None)
                }
                Err(e) => return self.ws_failed(key, e),
            }
        }
    }

    /// A WebSocket protocol failure: close with the code RFC 6455 asks for and
    /// read nothing more from this peer.
    fn ws_failed(&mut self, key: usize, e: tungstenite::Error) {
        use tungstenite::error::CapacityError;
        use tungstenite::Error as E;
        let limit = self.core.cfg.max_message_bytes;
        let (code, err) = match e {
            E::Capacity(CapacityError::MessageTooLong { size, max_size }) => (
                1009,
                ConnError::TooBig {
                    size,
                    limit: max_size,
                },
            ),
            E::Capacity(other) => (
                1009,
                ConnError::Protocol(format!("{other} (limit {limit})")),
            ),
            E::Utf8(_) => (1007, ConnError::InvalidUtf8),
            E::Protocol(p) => (1002, ConnError::Protocol(p.to_string())),
            other => (1002, ConnError::Protocol(other.to_string())),
        };
        log::debug!("websocket {}: {err}", self.core.conns[key].peer);
        // Whatever else the peer sends is not parsed any more; the socket goes
        // when the close frame is written.
        self.core.abort(key, code, Some(err));
    }
}
