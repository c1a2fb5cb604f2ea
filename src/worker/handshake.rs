//! Request heads on a `websocket://` listener: plain HTTP answers and
//! WebSocket upgrades (we write the 101 ourselves, then tungstenite takes the
//! stream).

use super::*;

impl<H: Handler> Worker<H> {
    pub(super) fn try_head(&mut self, key: usize) {
        let max_body = self.ctx.cfg.max_http_body_bytes;
        let c = &mut self.ctx.conns[key];
        let State::Head(buf) = &mut c.state else {
            return;
        };
        let (mut request, head_len, body_len) = match crate::http::parse_head(buf, c.peer, max_body)
        {
            Head::Partial => return,
            Head::Reject(status) => return self.respond(key, Response::status(status), false),
            Head::Complete {
                request,
                head_len,
                body_len,
            } => (request, head_len, body_len),
        };
        if is_upgrade(&request, self.ctx.cfg.websocket_path.as_deref()) {
            let rest = buf.split_off(head_len);
            return self.upgrade(key, request, rest);
        }
        if buf.len() < head_len + body_len {
            return;
        }
        request.body = buf.split_off(head_len).split_to(body_len).freeze();
        let head_only = request.method == "HEAD";
        let response = self.http_response(&request);
        self.respond(key, response, head_only);
    }

    pub(super) fn http_response(&mut self, request: &Request) -> Response {
        let r = catch_unwind(AssertUnwindSafe(|| {
            self.handler.on_http_request(&mut self.ctx, request)
        }));
        r.unwrap_or_else(|p| {
            log::error!("on_http_request panicked: {}", panic_text(&p));
            Response::status(500)
        })
    }

    /// Writes an HTTP response and closes the connection after it.
    pub(super) fn respond(&mut self, key: usize, response: Response, head_only: bool) {
        let bytes = response.encode(head_only);
        let c = &mut self.ctx.conns[key];
        c.state = State::Done;
        c.out.push(bytes.into());
        c.closing = true;
        c.deadline = Some(self.ctx.now + CLOSE_GRACE);
        self.ctx.mark_dirty(key);
    }

    pub(super) fn upgrade(&mut self, key: usize, request: Request, rest: BytesMut) {
        if request.method != "GET" || !request.header_has_token("Connection", "upgrade") {
            return self.respond(key, Response::status(400), false);
        }
        if request.header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
            let r = Response::status(426).header("Sec-WebSocket-Version", "13");
            return self.respond(key, r, false);
        }
        let Some(ws_key) = request.header("Sec-WebSocket-Key") else {
            return self.respond(key, Response::status(400), false);
        };
        let accept = tungstenite::handshake::derive_accept_key(ws_key.trim().as_bytes());
        let id = self.ctx.id_of(key, &self.ctx.conns[key]);
        let verdict = catch_unwind(AssertUnwindSafe(|| {
            self.handler
                .on_websocket_connect(&mut self.ctx, id, &request)
        }));
        match verdict {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => return self.respond(key, refusal, false),
            Err(p) => {
                log::error!("on_websocket_connect panicked: {}", panic_text(&p));
                return self.respond(key, Response::status(500), false);
            }
        }
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        let c = &mut self.ctx.conns[key];
        c.out.push(head.into_bytes().into());
        c.deadline = None;
        let leftover = !rest.is_empty();
        c.state = State::Ws(Box::new(WebSocketContext::from_partially_read(
            rest.to_vec(),
            Role::Server,
            Some(self.ws_config),
        )));
        self.ctx.mark_dirty(key);
        let id = self.ctx.announce(key);
        self.guard(Some(id), |h, ctx| h.on_connect(ctx, id));
        if self.stop_deadline.is_some() {
            return self
                .ctx
                .begin_close(key, 1001, "server shutting down", None);
        }
        if leftover {
            self.feed_ws(key, 0);
        }
    }
}

/// Whether a request asks for a WebSocket on the configured path (any path
/// when none is configured). Upgrades elsewhere are plain HTTP requests.
fn is_upgrade(req: &Request, path: Option<&str>) -> bool {
    req.header_has_token("Upgrade", "websocket") && path.is_none_or(|p| p == req.path)
}
