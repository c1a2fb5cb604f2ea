//! Plain HTTP on the WebSocket port, spoken byte by byte: a response is its
//! head and `Content-Length` bytes of body, or everything read until EOF
//! without one; [`read_one_reply`] reads responses one at a time off a
//! kept-alive connection.

use super::{tcp_connect, REPLY_TIMEOUT};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A response as it came off the wire.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// `HTTP/1.1 404 Not Found`.
    pub status_line: String,
    /// The code from the status line (0 if there was none).
    pub status: u16,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Everything after the head.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first header with this name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads until the end of the response head (or EOF) and returns its status
/// line. The stream is left just after the head.
#[track_caller]
pub fn read_status_line(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => got.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "reading the response: {e} (got {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or("").to_string()
}

/// The length of the response at the front of `raw` once all of it is
/// there: its head and `Content-Length` bytes (none after a `HEAD` request
/// when `head_only`, or for 1xx, 204 and 304). `None` while incomplete or
/// without a `Content-Length`.
fn complete_len(raw: &[u8], head_only: bool) -> Option<usize> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let reply = parse_reply(&raw[..end]);
    let bodyless = head_only || matches!(reply.status, 100..=199 | 204 | 304);
    let len = if bodyless {
        0
    } else {
        reply.header("Content-Length")?.parse::<usize>().ok()?
    };
    (raw.len() >= end + len).then_some(end + len)
}

/// Reads one response off a connection that may stay open, within
/// [`REPLY_TIMEOUT`]: `pending` holds bytes read earlier and keeps what came
/// after this response (the next pipelined one). A `1xx` answer is a
/// response of its own. `head_only`: it answers `HEAD` (no body).
#[track_caller]
pub fn read_one_reply(stream: &mut TcpStream, pending: &mut Vec<u8>, head_only: bool) -> HttpReply {
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        if let Some(n) = complete_len(pending, head_only) {
            let reply = parse_reply(&pending[..n]);
            pending.drain(..n);
            return reply;
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "the server closed before a whole response: {:?}",
                String::from_utf8_lossy(pending)
            ),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "reading the response: {e} (got {:?})",
                String::from_utf8_lossy(pending)
            ),
        }
    }
}

/// Reads a whole response within [`REPLY_TIMEOUT`]: its head and
/// `Content-Length` bytes of body, or everything until the server closes
/// without one. A reset after some bytes counts as the end.
#[track_caller]
pub fn read_reply(stream: &mut TcpStream) -> HttpReply {
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if complete_len(&raw, false).is_some() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!(
                "reading the response: {e} (got {:?})",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    parse_reply(&raw)
}

/// Splits raw response bytes into status, headers and body.
#[track_caller]
pub fn parse_reply(raw: &[u8]) -> HttpReply {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(raw)
        );
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpReply {
        status_line,
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// Connects, writes `request` in the given pieces (each its own write), and
/// reads the whole response. A write the server cut short (it answered and
/// closed early) is not an error.
#[track_caller]
pub fn http_exchange(addr: SocketAddr, pieces: &[&[u8]]) -> HttpReply {
    let mut s = tcp_connect(addr, REPLY_TIMEOUT);
    for piece in pieces {
        if s.write_all(piece).is_err() {
            break;
        }
    }
    read_reply(&mut s)
}

/// `GET path` (with `Connection: close`) and the whole response.
#[track_caller]
pub fn http_get(addr: SocketAddr, path: &str) -> HttpReply {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_exchange(addr, &[request.as_bytes()])
}
