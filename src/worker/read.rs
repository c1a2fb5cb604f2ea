//! Reading connections: drain the socket into the worker's shared buffer and
//! hand the bytes to the connection's protocol.

use super::*;

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
        if self.tls.is_some() {
            return self.read_tls_conn(key);
        }
        let mut budget = READ_BUDGET;
        loop {
            let Some(c) = self.ctx.conns.get_mut(key) else {
                return;
            };
            if c.paused {
                return;
            }
            let n = match c.sock.read(&mut self.scratch) {
                Ok(0) => return self.peer_gone(key, None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.peer_gone(key, Some(ConnError::Io(e))),
            };
            c.last_read = self.ctx.now;
            c.pinged = false;
            self.feed(key, n);
            if n < SCRATCH && !until_eagain {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.defer_read(key);
                return;
            }
        }
    }

    /// [`Self::read_conn`] through TLS: decrypted bytes go to the protocol,
    /// then more ciphertext is read, until the socket is drained, the budget
    /// is spent or the connection is paused. Handshake answers and alerts the
    /// session wants to send make the connection dirty.
    fn read_tls_conn(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        let mut eof = false;
        loop {
            // What the session decrypted already.
            loop {
                let Some(c) = self.ctx.conns.get_mut(key) else {
                    return;
                };
                let Some(tls) = c.tls.as_deref_mut() else {
                    return;
                };
                if c.paused {
                    return;
                }
                match tls.reader().read(&mut self.scratch) {
                    // close_notify, or the TCP stream ended without one.
                    Ok(0) => return self.peer_gone(key, None),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return self.peer_gone(key, None)
                    }
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        self.feed(key, n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return self.peer_gone(key, Some(ConnError::Io(e))),
                }
            }
            if eof {
                return self.peer_gone(key, None);
            }
            if budget == 0 {
                self.defer_read(key);
                return;
            }
            let Some(c) = self.ctx.conns.get_mut(key) else {
                return;
            };
            let Some(tls) = c.tls.as_deref_mut() else {
                return;
            };
            match tls.read_tls(&mut c.sock) {
                Ok(0) => eof = true,
                // Ciphertext counts too: handshake and alert records bring
                // no plaintext.
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.peer_gone(key, Some(ConnError::Io(e))),
            }
            c.last_read = self.ctx.now;
            c.pinged = false;
            if let Err(e) = tls.process_new_packets() {
                // The session queued an alert saying why; send it if we can.
                let _ = crate::tls::TlsSend {
                    tls,
                    sock: &mut c.sock,
                }
                .drain();
                return self.peer_gone(key, Some(ConnError::Protocol(format!("TLS: {e}"))));
            }
            let wants_write = tls.wants_write();
            // A plain protocol's connection opens when its handshake is done.
            let open_now = !tls.is_handshaking()
                && !c.open
                && !c.closing
                && matches!(c.state, State::Plain(_));
            if open_now {
                c.deadline = None;
            }
            if wants_write {
                self.ctx.mark_dirty(key);
            }
            if open_now {
                self.open_plain(key);
            }
        }
    }

    /// Reads `key` again next turn (its budget ran out, or it was resumed),
    /// once however often that happens within a turn.
    pub(super) fn defer_read(&mut self, key: usize) {
        if let Some(c) = self.ctx.conns.get_mut(key) {
            if !c.read_pending {
                c.read_pending = true;
                self.pending_reads.push_back(key);
            }
        }
    }

    /// The peer closed its end or the socket failed: nothing more can be
    /// exchanged, so the connection goes now.
    pub(super) fn peer_gone(&mut self, key: usize, error: Option<ConnError>) {
        if self.ctx.conns.contains(key) {
            self.ctx.forget(key, error);
            self.remove(key);
        }
    }

    /// Drops connection `key`. Closing the socket is enough: the kernel takes
    /// a descriptor out of every epoll set when its last reference closes,
    /// and nothing else holds a client socket (workers never fork or dup),
    /// so an explicit `EPOLL_CTL_DEL` would be one more syscall per
    /// connection for nothing.
    pub(super) fn remove(&mut self, key: usize) {
        if let Some(mut c) = self.ctx.conns.try_remove(key) {
            if let Some(tls) = c.tls.as_deref_mut() {
                // Best effort: tell the peer the stream ends here, not cut.
                tls.send_close_notify();
                let _ = crate::tls::TlsSend {
                    tls,
                    sock: &mut c.sock,
                }
                .drain();
            }
        }
    }

    /// Hands `scratch[..n]`, just read from connection `key`, to its protocol.
    pub(super) fn feed(&mut self, key: usize, n: usize) {
        let c = &mut self.ctx.conns[key];
        match &mut c.state {
            State::Head(buf) => {
                buf.extend_from_slice(&self.scratch[..n]);
                self.try_head(key);
            }
            State::Ws(_) => self.feed_ws(key, n),
            State::Plain(buf) => {
                buf.extend_from_slice(&self.scratch[..n]);
                self.feed_plain(key);
            }
            State::Done => {}
        }
    }

    pub(super) fn feed_plain(&mut self, key: usize) {
        let protocol = self.ctx.cfg.protocol;
        let max = self.ctx.cfg.max_frame_bytes;
        loop {
            let Some(c) = self.ctx.conns.get_mut(key) else {
                return;
            };
            if !c.open {
                return;
            }
            let State::Plain(buf) = &mut c.state else {
                return;
            };
            match codec::decode_plain(protocol, buf, max) {
                Ok(Some(msg)) => self.deliver(key, msg),
                Ok(None) => return,
                Err(e) => {
                    let err = match e {
                        codec::FramingError::TooBig(size) => ConnError::TooBig { size, limit: max },
                        codec::FramingError::BadLength(l) => {
                            ConnError::Protocol(format!("frame length {l} is below 4"))
                        }
                    };
                    return self.ctx.begin_close(key, 1002, "", Some(err));
                }
            }
        }
    }

    /// Calls `on_message` for an open connection.
    pub(super) fn deliver(&mut self, key: usize, msg: Message) {
        let c = &self.ctx.conns[key];
        if !c.open || c.closing {
            return;
        }
        let id = self.ctx.id_of(key, c);
        self.ctx.stats.messages_in += 1;
        self.guard(Some(id), |h, ctx| h.on_message(ctx, id, msg));
    }

    pub(super) fn feed_ws(&mut self, key: usize, n: usize) {
        let mut pos = 0;
        loop {
            let Some(c) = self.ctx.conns.get_mut(key) else {
                return;
            };
            let State::Ws(ws) = &mut c.state else {
                return;
            };
            let mut io = WsIo {
                input: &self.scratch[pos..n],
                out: &mut c.out,
            };
            let r = ws.read(&mut io);
            pos = n - io.input.len();
            let queued = !c.out.is_empty();
            if queued {
                self.ctx.mark_dirty(key);
            }
            use tungstenite::Error as E;
            match r {
                Ok(tungstenite::Message::Text(t)) => self.deliver(key, Message::Text(t)),
                Ok(tungstenite::Message::Binary(b)) => self.deliver(key, Message::Binary(b)),
                Ok(tungstenite::Message::Close(_)) => {
                    // The peer closed (or answered our close); tungstenite
                    // queued the reply. Flush it into our queue.
                    let c = &mut self.ctx.conns[key];
                    if let State::Ws(ws) = &mut c.state {
                        let _ = ws.flush(&mut WsIo {
                            input: &[],
                            out: &mut c.out,
                        });
                    }
                    c.closing = true;
                    c.deadline.get_or_insert(self.ctx.now + CLOSE_GRACE);
                    self.ctx.forget(key, None);
                    self.ctx.mark_dirty(key);
                }
                Ok(_) => {}
                Err(E::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(E::ConnectionClosed | E::AlreadyClosed) => {
                    let c = &mut self.ctx.conns[key];
                    c.state = State::Done;
                    c.closing = true;
                    self.ctx.forget(key, None);
                    self.ctx.mark_dirty(key);
                    return;
                }
                Err(e) => return self.ws_failed(key, e),
            }
        }
    }

    /// A WebSocket protocol failure: close with the code RFC 6455 asks for and
    /// read nothing more from this peer.
    pub(super) fn ws_failed(&mut self, key: usize, e: tungstenite::Error) {
        use tungstenite::error::CapacityError;
        use tungstenite::Error as E;
        let limit = self.ctx.cfg.max_message_bytes;
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
        log::debug!("websocket {}: {err}", self.ctx.conns[key].peer);
        self.ctx.begin_close(key, code, "", Some(err));
        // Whatever else the peer sends is not parsed any more; the socket goes
        // when the close frame is written.
        let c = &mut self.ctx.conns[key];
        c.state = State::Done;
    }
}
