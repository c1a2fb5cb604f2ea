//! Handshakes in the protocol: request heads on a `websocket://` listener
//! (plain HTTP answers and WebSocket upgrades: we write the 101 ourselves,
//! then tungstenite takes the stream), and the server's answer to an
//! outbound WebSocket's upgrade request.

use super::{panic_text, Worker};
use crate::core::conn::Proto;
use crate::ctx::Ctx;
use crate::error::ConnError;
use crate::handler::Handler;
use crate::proto::http::{self, Head, Request, Response};
use crate::proto::ws::{self, Answer};
use bytes::BytesMut;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tungstenite::protocol::{Role, WebSocketContext};

impl<H: Handler> Worker<H> {
    pub(super) fn try_head(&mut self, key: usize) {
        let max_body = self.core.cfg.max_http_body_bytes;
        let c = &mut self.core.conns[key];
        let id = crate::id::ConnId::new(self.core.slot, key as u32, c.serial);
        let Proto::Head(buf) = &mut c.proto else {
            return;
        };
        let (mut request, head_len, body_len) = match http::parse_head(buf, c.peer, id, max_body) {
            Head::Partial => return,
            Head::Reject(status) => {
                return self.core.respond(key, &Response::status(status), false)
            }
            Head::Complete {
                request,
                head_len,
                body_len,
            } => (request, head_len, body_len),
        };
        if is_upgrade(&request, self.core.cfg.websocket_path.as_deref()) {
            let rest = buf.split_off(head_len);
            return self.upgrade(key, request, rest);
        }
        if buf.len() < head_len + body_len {
            return;
        }
        request.body = buf.split_off(head_len).split_to(body_len).freeze();
        let head_only = request.method == "HEAD";
        let response = self.http_response(&request);
        if response.is_later() {
            self.core.await_response(key, head_only);
        } else {
            self.core.respond(key, &response, head_only);
        }
    }

    fn http_response(&mut self, request: &Request) -> Response {
        let handler = &mut self.handler;
        let core = &mut self.core;
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
