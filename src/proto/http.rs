//! Plain HTTP on the WebSocket port: the request head parser, [`Request`] and
//! [`Response`].
//!
//! The head is parsed by httparse, capped at [`MAX_HEAD_BYTES`] (larger heads
//! get `431`) and must arrive within the configured handshake timeout. A body is
//! read when `Content-Length` announces one, up to `max_http_body_bytes`
//! (`413` past it); chunked request bodies get `411`. Every response closes the
//! connection (`Connection: close`).

use crate::id::ConnId;
use bytes::Bytes;
use std::fmt::Write as _;
use std::net::SocketAddr;

/// The largest request head accepted, in bytes; a larger one is answered `431`.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// An HTTP request: a WebSocket upgrade request or a plain one.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query, as sent (not percent-decoded).
    pub path: String,
    /// The query after `?`, without the `?`, empty when absent.
    pub query: String,
    /// Headers in the order sent; names as sent. Use [`Request::header`] to look
    /// one up case-insensitively.
    pub headers: Vec<(String, String)>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The connection it came on: keep it to answer later with
    /// [`crate::Ctx::respond`] (see [`Response::later`]).
    pub conn: ConnId,
    /// The request body (empty without `Content-Length`).
    pub body: Bytes,
}

impl Request {
    /// The first header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of one query parameter (`a` in `?a=1&b=2`), not percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// Whether a comma-separated header (`Connection: keep-alive, Upgrade`)
    /// contains this token, case-insensitively.
    pub(crate) fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// An HTTP response. Build one with [`Response::new`] or a shortcut and add
/// headers with [`Response::header`].
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra headers; `Content-Length`, `Connection` and `Date`-less framing
    /// are added when the response is written.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// Made by [`Response::later`]: the answer comes from `Ctx::respond`.
    later: bool,
}

impl Response {
    /// Returned by [`crate::Handler::on_http_request`]: the handler answers
    /// later with [`crate::Ctx::respond`] and the request's
    /// [`Request::conn`], from any later callback of the same worker (after a
    /// blocking job, say). The connection waits, reading nothing more, for
    /// at most `handshake_timeout_ms`; then it is answered 504.
    pub fn later() -> Self {
        Response {
            later: true,
            ..Response::status(504)
        }
    }

    /// Whether this is [`Response::later`].
    pub fn is_later(&self) -> bool {
        self.later
    }

    /// A response with this status and body and no extra headers.
    pub fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
            later: false,
        }
    }

    /// `200` with `text/plain; charset=utf-8`.
    pub fn text(body: impl Into<Bytes>) -> Self {
        Response::new(200, body).header("Content-Type", "text/plain; charset=utf-8")
    }

    /// `200` with `text/html; charset=utf-8`.
    pub fn html(body: impl Into<Bytes>) -> Self {
        Response::new(200, body).header("Content-Type", "text/html; charset=utf-8")
    }

    /// `200` with `application/json`.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Response::new(200, body).header("Content-Type", "application/json")
    }

    /// A status with its reason phrase as a plain-text body (`404 Not Found`).
    pub fn status(status: u16) -> Self {
        let body = format!("{} {}\n", status, reason(status));
        Response::new(status, body).header("Content-Type", "text/plain; charset=utf-8")
    }

    /// `404 Not Found`.
    pub fn not_found() -> Self {
        Response::status(404)
    }

    /// Adds a header. A name that is not a token or a value with a control
    /// character (CR, LF, NUL, ...) is never sent: the client gets `500`
    /// instead, and the error is logged.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The bytes on the wire: status line, headers, body. `head_only` leaves the
    /// body out (for `HEAD` requests) but keeps its `Content-Length`.
    pub(crate) fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// What is wrong with a header the application wants to send, if anything:
/// its name must be a token (RFC 9110 5.6.2) and its value free of control
/// characters but tab (CR and LF would end the header early and let the
/// value write headers or a body of its own).
pub(crate) fn header_problem(name: &str, value: &str) -> Option<String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Some(format!("header name {name:?} is not a token"));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Some(format!(
            "header {name}: value {value:?} has a control character"
        ));
    }
    None
}

impl Response {
    /// The first header of this response that must not be sent
    /// ([`header_problem`]), if any.
    pub(crate) fn header_problem(&self) -> Option<String> {
        self.headers.iter().find_map(|(n, v)| header_problem(n, v))
    }
}

/// The reason phrase for the status codes we use; "Unknown" otherwise.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// What the head parser made of the bytes so far.
#[derive(Debug)]
pub(crate) enum Head {
    /// Need more bytes.
    Partial,
    /// A whole head of this many bytes, and the body length it announces.
    Complete {
        request: Request,
        head_len: usize,
        body_len: usize,
    },
    /// The request is bad; answer with this status and close.
    Reject(u16),
}

/// Parses a request head from the start of `buf`.
pub(crate) fn parse_head(buf: &[u8], peer: SocketAddr, conn: ConnId, max_body: usize) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => return Head::Reject(431),
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => return Head::Reject(431),
        Err(_) => return Head::Reject(400),
    };
    if head_len > MAX_HEAD_BYTES {
        return Head::Reject(431);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: req.method.unwrap_or("GET").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: Vec::with_capacity(req.headers.len()),
        peer,
        conn,
        body: Bytes::new(),
    };
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Head::Reject(400);
        };
        request
            .headers
            .push((h.name.to_string(), value.to_string()));
    }
    if request.header_has_token("Transfer-Encoding", "chunked") {
        return Head::Reject(411);
    }
    let body_len = match request.header("Content-Length") {
        None => 0,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > max_body => return Head::Reject(413),
            Ok(n) => n,
            Err(_) => return Head::Reject(400),
        },
    };
    Head::Complete {
        request,
        head_len,
        body_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn parses_a_complete_head_with_query() {
        let buf = b"GET /ws?room=a&x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        match parse_head(buf, peer(), ConnId::new(0, 0, 0), 0) {
            Head::Complete {
                request, head_len, ..
            } => {
                assert_eq!(head_len, buf.len());
                assert_eq!(request.path, "/ws");
                assert_eq!(request.query_param("room"), Some("a"));
                assert_eq!(request.header("upgrade"), Some("websocket"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_until_the_cap_then_431() {
        let mut buf = b"GET / HTTP/1.1\r\nX: ".to_vec();
        assert!(matches!(
            parse_head(&buf, peer(), ConnId::new(0, 0, 0), 0),
            Head::Partial
        ));
        buf.resize(MAX_HEAD_BYTES, b'a');
        assert!(matches!(
            parse_head(&buf, peer(), ConnId::new(0, 0, 0), 0),
            Head::Reject(431)
        ));
    }

    #[test]
    fn garbage_is_400_and_big_bodies_413() {
        assert!(matches!(
            parse_head(b"\x01\x02 nope\r\n\r\n", peer(), ConnId::new(0, 0, 0), 0),
            Head::Reject(400)
        ));
        let big = b"POST / HTTP/1.1\r\nContent-Length: 99\r\n\r\n";
        assert!(matches!(
            parse_head(big, peer(), ConnId::new(0, 0, 0), 10),
            Head::Reject(413)
        ));
    }

    #[test]
    fn connection_header_tokens_match_case_insensitively() {
        let buf = b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        let Head::Complete { request, .. } = parse_head(buf, peer(), ConnId::new(0, 0, 0), 0)
        else {
            panic!()
        };
        assert!(request.header_has_token("connection", "upgrade"));
        assert!(!request.header_has_token("connection", "close"));
    }
}
