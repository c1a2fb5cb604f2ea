//! Plain HTTP on the WebSocket port: the request head parser, [`Request`] and
//! [`Response`].
//!
//! The head is parsed by httparse once its blank line is in (the search for
//! it looks at new bytes only), capped at [`MAX_HEAD_BYTES`] (larger heads
//! get `431`), and must arrive within the configured handshake timeout. The
//! body is framed as RFC 9112 §6.3 says: `Content-Length` (differing values,
//! or anything but digits: `400`), or `Transfer-Encoding: chunked`, decoded
//! by [`Chunked`] with its trailers skipped (with `Content-Length`, in
//! HTTP/1.0 or without `chunked` last: `400`; another coding before it:
//! `501`); past `max_http_body_bytes`: `413`. `Expect: 100-continue` gets
//! `100 Continue` before the body is read; another expectation `417`.
//!
//! A connection lives on after an answer when the client keeps it (HTTP/1.1
//! unless `Connection: close`, HTTP/1.0 with `Connection: keep-alive`) and
//! the config allows ([`HttpConn`] and `Core::answer`); every refusal
//! closes it.

use crate::id::ConnId;
use bytes::{Bytes, BytesMut};
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
    /// Extra headers; `Content-Length` and `Connection` are added when the
    /// response is written (a `Connection: close` here closes the connection
    /// after the answer).
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
    /// blocking job, say). The request waits for at most
    /// `handshake_timeout_ms`; then it is answered 504 and the connection
    /// closed. Requests pipelined behind it wait their turn (their input is
    /// capped at one head plus `max_http_body_bytes`, then the socket is
    /// left unread); on a kept-alive connection, answer each request once.
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

    /// Whether the handler's own headers say `Connection: close`.
    pub(crate) fn says_close(&self) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }

    /// The bytes on the wire: status line, headers, body. `head_only` leaves the
    /// body out (for `HEAD` requests) but keeps its `Content-Length`;
    /// `keep_alive` says `Connection: keep-alive` instead of `close`. A
    /// `1xx`, `204` or `304` answer has no body, and `1xx` and `204` no
    /// `Content-Length` (RFC 9110 §8.6). The handler's own `Content-Length`
    /// and `Connection` headers are replaced by ours.
    pub(crate) fn encode(&self, head_only: bool, keep_alive: bool) -> Vec<u8> {
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("Content-Length") || n.eq_ignore_ascii_case("Connection") {
                continue;
            }
            let _ = write!(head, "{n}: {v}\r\n");
        }
        let bodyless = matches!(self.status, 100..=199 | 204 | 304);
        if !matches!(self.status, 100..=199 | 204) {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let _ = write!(head, "Connection: {connection}\r\n\r\n");
        let mut out = head.into_bytes();
        if !head_only && !bodyless {
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

/// The reason phrase of a status code (RFC 9110's, and 428/429/431 of
/// RFC 6585); "Unknown" for codes it does not define.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// How a request's body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length` bytes (0 without either header).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the head parser made of the bytes so far. Returned once per head
/// and taken apart at once, never stored: its size does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Head {
    /// Need more bytes.
    Partial,
    /// A whole head of this many bytes.
    Complete {
        request: Request,
        head_len: usize,
        /// How its body is framed.
        framing: Framing,
        /// The client lets the connection live on after the answer
        /// (HTTP/1.1 without `Connection: close`, HTTP/1.0 with
        /// `Connection: keep-alive`).
        keep_alive: bool,
        /// `Expect: 100-continue` on an HTTP/1.1 request.
        expect_continue: bool,
    },
    /// The request is bad; answer with this status and close.
    Reject(u16),
}

/// Where the blank line that ends a head is, searching `buf` from `from`:
/// the length of the head, `\r\n\r\n` or a bare `\n\n` included.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Parses a request head from the start of `buf`, scanning for its end from
/// `*scanned` only: the bytes before it are known not to end a head, so a
/// head that arrives a byte at a time costs linear time. httparse runs once
/// the end is there. `*scanned` is left where the next search starts.
pub(crate) fn parse_head_from(
    buf: &[u8],
    scanned: &mut usize,
    peer: SocketAddr,
    conn: ConnId,
    max_body: usize,
) -> Head {
    loop {
        let Some(end) = head_end(buf, *scanned) else {
            // A `\n` or `\n\r` at the end may start the blank line.
            *scanned = buf.len().saturating_sub(2);
            return if buf.len() >= MAX_HEAD_BYTES {
                Head::Reject(431)
            } else {
                Head::Partial
            };
        };
        match parse_head(&buf[..end], peer, conn, max_body) {
            // Empty lines before the request line (allowed by RFC 9112
            // §2.2): the head ends at a later blank line.
            Head::Partial => *scanned = end - 1,
            done => {
                *scanned = 0;
                return done;
            }
        }
    }
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
    let http11 = req.version == Some(1);
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
    let framing = match framing(&request, http11, max_body) {
        Ok(f) => f,
        Err(status) => return Head::Reject(status),
    };
    let keep_alive = if http11 {
        !request.header_has_token("Connection", "close")
    } else {
        request.header_has_token("Connection", "keep-alive")
    };
    // HTTP/1.0 clients do not know 100 Continue: the expectation is ignored
    // (RFC 9110 §10.1.1).
    let expect_continue = match request.header("Expect").map(str::trim) {
        None => false,
        Some(_) if !http11 => false,
        Some(e) if e.eq_ignore_ascii_case("100-continue") => true,
        Some(_) => return Head::Reject(417),
    };
    Head::Complete {
        request,
        head_len,
        framing,
        keep_alive,
        expect_continue,
    }
}

/// The body's framing by RFC 9112 §6.3, or the status that refuses it:
/// `Transfer-Encoding` with `Content-Length`, in HTTP/1.0, or without
/// `chunked` last: 400; another coding before `chunked`: 501;
/// `Content-Length` values that differ or are not all digits: 400; a length
/// over `max_body`: 413.
fn framing(request: &Request, http11: bool, max_body: usize) -> Result<Framing, u16> {
    let mut codings = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Transfer-Encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .peekable();
    let has_length = request
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("Content-Length"));
    if codings.peek().is_some() {
        let codings: Vec<&str> = codings.collect();
        if has_length || !http11 {
            return Err(400);
        }
        return match codings.split_last() {
            Some((last, [])) if last.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            Some((last, _)) if last.eq_ignore_ascii_case("chunked") => Err(501),
            _ => Err(400),
        };
    }
    let mut length: Option<u64> = None;
    let values = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .flat_map(|(_, v)| v.split(','));
    for v in values {
        let v = v.trim_matches([' ', '\t']);
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(400);
        }
        // All digits: only too many of them fails, and that is too large.
        let n = v.parse::<u64>().unwrap_or(u64::MAX);
        if length.is_some_and(|l| l != n) {
            return Err(400);
        }
        length = Some(n);
    }
    match length {
        None => Ok(Framing::Length(0)),
        Some(n) if n > max_body as u64 => Err(413),
        Some(n) => Ok(Framing::Length(n as usize)),
    }
}

/// The longest chunk-size line accepted (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// Where a chunked body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// Reading chunk data: this many bytes to go.
    Data(usize),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer lines after the last chunk, until an empty one.
    Trailers,
}

/// Decodes a `Transfer-Encoding: chunked` request body as it arrives.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: ChunkState,
    body: BytesMut,
    /// Bytes at the front of the input known to hold no line end.
    scanned: usize,
    /// Trailer bytes seen: capped like a head.
    trailers: usize,
}

impl Chunked {
    pub(crate) fn new() -> Self {
        Chunked {
            state: ChunkState::Size,
            body: BytesMut::new(),
            scanned: 0,
            trailers: 0,
        }
    }

    /// Takes what it can off the front of `input`. `Ok(Some(body))` once the
    /// last chunk and the trailers (skipped) are in; `Ok(None)`: need more;
    /// `Err(status)`: a body over `max` (413) or broken framing (400).
    pub(crate) fn decode(
        &mut self,
        input: &mut BytesMut,
        max: usize,
    ) -> Result<Option<Bytes>, u16> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = self.line(input, MAX_CHUNK_LINE)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&line)?;
                    if size > max.saturating_sub(self.body.len()) {
                        return Err(413);
                    }
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let take = left.min(input.len());
                    self.body.extend_from_slice(&input.split_to(take));
                    self.state = match left - take {
                        0 => ChunkState::DataEnd,
                        more => ChunkState::Data(more),
                    };
                }
                ChunkState::DataEnd => match &input[..] {
                    [b'\r', b'\n', ..] => {
                        let _ = input.split_to(2);
                        self.state = ChunkState::Size;
                    }
                    // Only CRLF: a lenient reading here is what request
                    // smuggling between two parsers is made of.
                    [] | [b'\r'] => return Ok(None),
                    _ => return Err(400),
                },
                ChunkState::Trailers => {
                    let room = MAX_HEAD_BYTES.saturating_sub(self.trailers);
                    let line = self.line(input, room);
                    // Too long is 431; a bad line end stays 400.
                    let line = line.map_err(|e| if input.len() > room { 431 } else { e });
                    let Some(line) = line? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        return Ok(Some(std::mem::take(&mut self.body).freeze()));
                    }
                    self.trailers += line.len() + 2;
                }
            }
        }
    }

    /// The next line off the front of `input`, without its line end;
    /// `Ok(None)` until its `\n` is in (searched for in new bytes only);
    /// 400 when it is longer than `max` or does not end in CRLF.
    fn line(&mut self, input: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, u16> {
        let from = self.scanned.min(input.len());
        match input[from..].iter().position(|b| *b == b'\n') {
            None if input.len() > max => Err(400),
            None => {
                self.scanned = input.len();
                Ok(None)
            }
            Some(p) => {
                self.scanned = 0;
                let mut line = input.split_to(from + p + 1);
                line.truncate(from + p);
                // Chunk-size and trailer lines end in CRLF, never a bare LF.
                if line.last() != Some(&b'\r') {
                    return Err(400);
                }
                line.truncate(line.len() - 1);
                Ok(Some(line))
            }
        }
    }
}

/// The size of a chunk-size line (`1a;ext=1`): hex digits, then extensions
/// (ignored) after optional whitespace.
fn chunk_size(line: &[u8]) -> Result<usize, u16> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let blank = line[digits..]
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let rest = &line[digits + blank..];
    if digits == 0 || !(rest.is_empty() || rest[0] == b';') {
        return Err(400);
    }
    let mut size: usize = 0;
    for b in &line[..digits] {
        let d = (*b as char).to_digit(16).unwrap_or(0) as usize;
        // More than fits: larger than any limit.
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or(413u16)?;
    }
    Ok(size)
}

/// What a request asks of the connection once it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The request was `HEAD`: the answer's head only.
    pub(crate) head_only: bool,
    /// The client keeps the connection for another request.
    pub(crate) keep_alive: bool,
}

/// Where an HTTP connection is between two requests.
#[derive(Debug)]
pub(crate) enum Stage {
    /// Reading a request head.
    Head,
    /// The head is in; its body is arriving.
    Body {
        request: Box<Request>,
        reply: Reply,
        /// `None`: a `Content-Length` body of this many bytes.
        chunked: Option<Box<Chunked>>,
        len: usize,
    },
    /// `on_http_request` answers later ([`crate::Ctx::respond`]); what
    /// arrives meanwhile waits in the input.
    Responding(Reply),
}

/// An HTTP connection on a `websocket://` listener until it is upgraded or
/// closed: its unparsed input and where it is.
#[derive(Debug)]
pub(crate) struct HttpConn {
    /// Bytes read and not yet parsed: the request under way and any
    /// pipelined after it.
    pub(crate) input: BytesMut,
    /// The front of `input` known not to end a head.
    pub(crate) scanned: usize,
    /// Requests answered on this connection.
    pub(crate) served: usize,
    pub(crate) stage: Stage,
    /// Input waits to be parsed outside a read: it came while an answer
    /// was pending, or output was over its cap.
    pub(crate) held: bool,
}

impl Default for HttpConn {
    fn default() -> Self {
        HttpConn {
            input: BytesMut::new(),
            scanned: 0,
            served: 0,
            stage: Stage::Head,
            held: false,
        }
    }
}

impl HttpConn {
    /// Whether `on_http_request` still owes an answer.
    pub(crate) fn responding(&self) -> bool {
        matches!(self.stage, Stage::Responding(_))
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

    fn framing_of(extra: &str) -> Result<Framing, u16> {
        let head = format!("POST / HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
        match parse_head(head.as_bytes(), peer(), ConnId::new(0, 0, 0), 100) {
            Head::Complete { framing, .. } => Ok(framing),
            Head::Reject(status) => Err(status),
            Head::Partial => panic!("partial"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        assert_eq!(framing_of(""), Ok(Framing::Length(0)));
        assert_eq!(framing_of("Content-Length: 7\r\n"), Ok(Framing::Length(7)));
        let same = "Content-Length: 7\r\nContent-Length: 7\r\n";
        assert_eq!(framing_of(same), Ok(Framing::Length(7)));
        let differ = "Content-Length: 7\r\nContent-Length: 8\r\n";
        assert_eq!(framing_of(differ), Err(400));
        assert_eq!(framing_of("Content-Length: 7, 8\r\n"), Err(400));
        for bad in ["+7", "-7", "0x7", "7 7", ""] {
            assert_eq!(
                framing_of(&format!("Content-Length: {bad}\r\n")),
                Err(400),
                "{bad:?}"
            );
        }
        assert_eq!(framing_of("Content-Length: 101\r\n"), Err(413));
        assert_eq!(
            framing_of("Content-Length: 99999999999999999999999\r\n"),
            Err(413)
        );
        let te = "Transfer-Encoding: chunked\r\n";
        assert_eq!(framing_of(te), Ok(Framing::Chunked));
        assert_eq!(framing_of(&format!("{te}Content-Length: 5\r\n")), Err(400));
        assert_eq!(framing_of("Transfer-Encoding: gzip, chunked\r\n"), Err(501));
        assert_eq!(framing_of("Transfer-Encoding: gzip\r\n"), Err(400));
        assert_eq!(framing_of("Transfer-Encoding: chunked, gzip\r\n"), Err(400));
    }

    #[test]
    fn a_head_is_scanned_once_however_it_arrives() {
        let whole = b"\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\nnext";
        let mut scanned = 0;
        for n in 1..whole.len() - 4 {
            let head = parse_head_from(&whole[..n], &mut scanned, peer(), ConnId::new(0, 0, 0), 0);
            assert!(matches!(head, Head::Partial), "{n}: {head:?}");
            assert!(
                scanned + 2 >= n,
                "{n}: only new bytes are searched ({scanned})"
            );
        }
        let head = parse_head_from(whole, &mut scanned, peer(), ConnId::new(0, 0, 0), 0);
        let Head::Complete {
            head_len,
            request,
            keep_alive,
            ..
        } = head
        else {
            panic!("{head:?}")
        };
        assert_eq!((head_len, request.path.as_str()), (whole.len() - 4, "/x"));
        assert!(keep_alive, "HTTP/1.1 keeps the connection by default");
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces_and_skip_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET";
        let mut input = BytesMut::new();
        let mut decoder = Chunked::new();
        let mut body = None;
        let mut fed = 0;
        while body.is_none() && fed < wire.len() {
            input.extend_from_slice(&wire[fed..fed + 1]);
            fed += 1;
            body = decoder.decode(&mut input, 100).unwrap();
        }
        assert_eq!(body.as_deref(), Some(&b"hello world"[..]));
        input.extend_from_slice(&wire[fed..]);
        assert_eq!(&input[..], b"GET", "the next request is left alone");
        let mut big = BytesMut::from(&b"b\r\nhello world\r\n0\r\n\r\n"[..]);
        assert_eq!(Chunked::new().decode(&mut big, 10), Err(413));
        let mut bad = BytesMut::from(&b"zz\r\n"[..]);
        assert_eq!(Chunked::new().decode(&mut bad, 10), Err(400));
    }

    #[test]
    fn chunked_framing_takes_crlf_only() {
        // Shapes another parser in front of us could read differently.
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
        ] {
            let mut input = BytesMut::from(wire);
            let got = Chunked::new().decode(&mut input, 100);
            assert_eq!(got, Err(400), "{:?}", String::from_utf8_lossy(wire));
        }
        let mut ok = BytesMut::from(&b"5 \t;x\r\nhello\r\n0\r\n\r\n"[..]);
        assert_eq!(
            Chunked::new().decode(&mut ok, 100),
            Ok(Some(Bytes::from_static(b"hello")))
        );
    }

    #[test]
    fn answers_say_whether_the_connection_lives_on() {
        let text =
            |r: &Response, head_only, keep| String::from_utf8(r.encode(head_only, keep)).unwrap();
        let r = Response::text("hi").header("Connection", "close");
        assert!(r.says_close());
        let kept = text(&Response::text("hi"), false, true);
        assert!(
            kept.ends_with("Content-Length: 2\r\nConnection: keep-alive\r\n\r\nhi"),
            "{kept}"
        );
        let head = text(&Response::text("hi"), true, false);
        assert!(
            head.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
        let empty = text(&Response::new(204, "x"), false, true);
        assert!(
            !empty.contains("Content-Length") && empty.ends_with("\r\n\r\n"),
            "{empty}"
        );
    }
}
