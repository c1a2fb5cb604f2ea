//! Handshakes in the protocol: request heads on a `websocket://` listener
//! (plain HTTP answers and WebSocket upgrades: we write the 101 ourselves,
//! then tungstenite takes the stream), and the server's answer to an
//! outbound WebSocket's upgrade request.

use super::{panic_text, Worker};
use crate::core::conn::Proto;
use crate::ctx::Ctx;
use crate::error::ConnError;
use crate::handler::Handler;
use crate::proto::http::{self, Chunked, Framing, Head, Reply, Request, Response, Stage};
use crate::proto::ws::{self, Answer};
use bytes::BytesMut;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tungstenite::protocol::{Role, WebSocketContext};

/// `100 Continue`, sent before reading a body the client holds back for it.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What [`Worker::next_request`] found in an HTTP connection's input.
enum Next {
    /// Nothing to do until more bytes come (or an answer is given).
    Wait,
    /// Refuse with this status and close.
    Reject(u16, bool),
    /// A WebSocket upgrade request, and the bytes after its head.
    Upgrade(Request, BytesMut),
    /// A whole request, body included.
    Request(Request, Reply),
}

impl<H: Handler> Worker<H> {
    /// Parses and answers the requests in an HTTP connection's input, one
    /// at a time and in order, until it needs more bytes, an answer is
    /// left for later, the connection is upgraded or closes, or its queued
    /// output is over `max_output_bytes` (the sweep resumes it).
    pub(super) fn try_head(&mut self, key: usize) {
        loop {
            match self.next_request(key) {
                Next::Wait => return,
                Next::Reject(status, head_only) => {
                    return self.core.respond(key, &Response::status(status), head_only)
                }
                Next::Upgrade(request, rest) => return self.upgrade(key, request, rest),
                Next::Request(request, reply) => {
                    let response = self.http_response(&request);
                    if response.is_later() {
                        return self.core.await_response(key, reply);
                    }
                    self.core.answer(key, &response, reply);
                }
            }
        }
    }

    /// Takes the next whole request off an HTTP connection's input: its
    /// head (scanned for its end in new bytes only), then its body
    /// (`Content-Length` or chunked, with `100 Continue` first when the
    /// client waits for it).
    fn next_request(&mut self, key: usize) -> Next {
        let max_body = self.core.cfg.max_http_body_bytes;
        let max_out = self.core.cfg.max_output_bytes;
        let path = self.core.cfg.websocket_path.as_deref();
        let Some(c) = self.core.conns.get_mut(key) else {
            return Next::Wait;
        };
        let id = crate::id::ConnId::on_node(self.core.node, self.core.slot, key as u32, c.serial);
        let (peer, out_len) = (c.peer, c.out.len());
        let Proto::Http(h) = &mut c.proto else {
            return Next::Wait;
        };
        if let Stage::Head = h.stage {
            if h.input.is_empty() {
                return Next::Wait;
            }
            if out_len > max_out {
                // Answers the client does not read: hold its requests.
                h.held = true;
                c.marks.paused = true;
                return Next::Wait;
            }
            let head = http::parse_head_from(&h.input, &mut h.scanned, peer, id, max_body);
            let (request, head_len, framing, keep_alive, expect_continue) = match head {
                Head::Partial => return Next::Wait,
                Head::Reject(status) => return Next::Reject(status, false),
                Head::Complete {
                    request,
                    head_len,
                    framing,
                    keep_alive,
                    expect_continue,
                } => (request, head_len, framing, keep_alive, expect_continue),
            };
            let _ = h.input.split_to(head_len);
            if is_upgrade(&request, path) {
                let rest = h.input.split();
                return Next::Upgrade(request, rest);
            }
            let reply = Reply {
                head_only: request.method == "HEAD",
                keep_alive,
            };
            let (chunked, len) = match framing {
                Framing::Length(n) => (None, n),
                Framing::Chunked => (Some(Box::new(Chunked::new())), 0),
            };
            let body_due = chunked.is_some() || len > h.input.len();
            if expect_continue && body_due {
                c.out.push(CONTINUE.into());
                if !c.marks.dirty {
                    c.marks.dirty = true;
                    self.core.dirty.push(key);
                }
            }
            h.stage = Stage::Body {
                request: Box::new(request),
                reply,
                chunked,
                len,
            };
        }
        let Stage::Body {
            chunked,
            len,
            reply,
            ..
        } = &mut h.stage
        else {
            return Next::Wait;
        };
        let reply = *reply;
        let body = match chunked {
            None if h.input.len() < *len => return Next::Wait,
            None => h.input.split_to(*len).freeze(),
            Some(decoder) => match decoder.decode(&mut h.input, max_body) {
                Ok(None) => return Next::Wait,
                Ok(Some(body)) => body,
                Err(status) => return Next::Reject(status, reply.head_only),
            },
        };
        let Stage::Body { request, .. } = std::mem::replace(&mut h.stage, Stage::Head) else {
            return Next::Wait;
        };
        let mut request = *request;
        request.body = body;
        Next::Request(request, reply)
    }

    fn http_response(&mut self, request: &Request) -> Response {
        let handler = &mut self.handler;
        let core = &mut self.core;
        if core.cfg.api.is_some() && crate::api::owns(&request.path) {
            let cfg = core.cfg.clone();
            if let Some(api) = &cfg.api {
                return crate::api::handle(&mut Ctx::new(core), &api.key, request);
            }
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            handler.on_http_request(&mut Ctx::new(core), request)
        }));
        r.unwrap_or_else(|p| {
            log::error!("on_http_request panicked: {}", panic_text(&p));
            Response::status(500)
        })
    }

    /// Answers an upgrade request: `400` / `426` for a malformed one, `403`
    /// for an `Origin` not on `allowed_origins`, then whatever
    /// `on_websocket_connect` says: its refusal, `500` for a panic or an
    /// invalid [`crate::Accept`], or the 101 with the chosen subprotocol
    /// and headers.
    fn upgrade(&mut self, key: usize, request: Request, rest: BytesMut) {
        if request.method != "GET" || !request.header_has_token("Connection", "upgrade") {
            return self.core.respond(key, &Response::status(400), false);
        }
        if request.header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
            let r = Response::status(426).header("Sec-WebSocket-Version", "13");
            return self.core.respond(key, &r, false);
        }
        let Some(ws_key) = request.header("Sec-WebSocket-Key") else {
            return self.core.respond(key, &Response::status(400), false);
        };
        let origin = request.header("Origin");
        if !ws::origin_allowed(&self.core.cfg.allowed_origins, origin) {
            log::debug!(
                "upgrade from {}: Origin {origin:?} not allowed",
                request.peer
            );
            return self.core.respond(key, &Response::status(403), false);
        }
        let accept_key = tungstenite::handshake::derive_accept_key(ws_key.trim().as_bytes());
        let id = request.conn;
        let handler = &mut self.handler;
        let core = &mut self.core;
        let verdict = catch_unwind(AssertUnwindSafe(|| {
            handler.on_websocket_connect(&mut Ctx::new(core), id, &request)
        }));
        let accept = match verdict {
            Ok(Ok(accept)) => accept,
            Ok(Err(refusal)) => return self.core.respond(key, &refusal, false),
            Err(p) => {
                log::error!("on_websocket_connect panicked: {}", panic_text(&p));
                return self.core.respond(key, &Response::status(500), false);
            }
        };
        let head = match accept.answer(&request, &accept_key) {
            Ok(head) => head,
            Err(why) => {
                log::error!("on_websocket_connect's answer to {id} not sent: {why}");
                return self.core.respond(key, &Response::status(500), false);
            }
        };
        let c = &mut self.core.conns[key];
        c.out.push(head.into_bytes().into());
        self.start_ws(key, Role::Server, rest);
    }

    /// The upgrade is done: tungstenite takes the stream (with the bytes
    /// that came after the handshake), the connection opens.
    fn start_ws(&mut self, key: usize, role: Role, rest: BytesMut) {
        let c = &mut self.core.conns[key];
        let leftover = !rest.is_empty();
        c.proto = Proto::Ws(Box::new(WebSocketContext::from_partially_read(
            rest.to_vec(),
            role,
            Some(self.ws_config),
        )));
        self.core.mark_dirty(key);
        self.open_now(key);
        // A worker that is stopping closed it in `opened`: nothing more is
        // parsed.
        if leftover && self.core.conns.get(key).is_some_and(|c| c.life.is_open()) {
            self.feed_ws(key, 0);
        }
    }

    /// Checks the server's answer to an outbound upgrade request.
    pub(super) fn try_answer(&mut self, key: usize) {
        let c = &mut self.core.conns[key];
        let Proto::Upgrading(hs) = &mut c.proto else {
            return;
        };
        let (handshake, buf) = &mut **hs;
        match handshake.check(buf) {
            Answer::Partial => {}
            Answer::Refused(why) => {
                log::debug!("upgrade to {} refused: {why}", c.peer);
                self.core.drop_socket(key, Some(ConnError::Handshake(why)));
            }
            Answer::Accepted { head_len, protocol } => {
                let rest = buf.split_off(head_len);
                if let Some(dial) = c.dial.as_mut() {
                    dial.protocol = protocol;
                }
                self.start_ws(key, Role::Client, rest);
            }
        }
    }
}

/// Whether a request asks for a WebSocket on the configured path (any path
/// when none is configured). Upgrades elsewhere are plain HTTP requests.
fn is_upgrade(req: &Request, path: Option<&str>) -> bool {
    req.header_has_token("Upgrade", "websocket") && path.is_none_or(|p| p == req.path)
}
