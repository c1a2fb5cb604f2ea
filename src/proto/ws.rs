//! WebSocket pieces around tungstenite: the stream it reads from and writes
//! to ([`WsIo`]), its per-connection settings, the server's answer to an
//! upgrade ([`Accept`], the `Origin` allow-list), the peer's [`CloseFrame`],
//! and the client side of the opening handshake (we write the request and
//! check the 101 ourselves, then tungstenite takes the stream, as on the
//! server side).

use crate::net::OutQueue;
use crate::proto::codec::OP_CLOSE;
use crate::proto::http::{header_problem, Request};
use bytes::Bytes;
use std::io::{self, Read, Write};
use tungstenite::protocol::WebSocketConfig;

/// tungstenite's per-connection read chunk. It is allocated for every
/// connection, so it is small: idle connections cost little, and the socket
/// reads themselves go through the worker's one shared buffer. Frames longer
/// than this are copied into tungstenite in chunks of this size.
const READ_CHUNK: usize = 128;

/// tungstenite's settings for every WebSocket of a worker.
pub(crate) fn config(max_frame: usize, max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK)
        .write_buffer_size(0)
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_message))
}

/// The stream tungstenite sees: reads come from the bytes the worker already
/// read from the socket, writes (pongs, close frames) go to the queue, in order
/// with the frames the worker queued itself.
///
/// The queue's cap (`max_output_bytes`) holds for these replies too: a pong
/// written while the queue holds `cap` bytes or more is dropped and counted
/// in `dropped`, for the caller to apply the overflow policy. A close frame
/// always goes (there is one per connection, at most 125 bytes of payload),
/// so a connection closed for overflow still says why.
///
/// Dropping whole frames is sound because every write is one whole frame:
/// tungstenite formats each frame it queues into its own buffer and writes
/// that buffer at once ([`config`] sets no write buffering), and a write
/// here never takes less than all of it, so nothing is left over to join
/// the next frame.
pub(crate) struct WsIo<'a> {
    input: &'a [u8],
    out: &'a mut OutQueue,
    /// Bytes `out` may hold before control replies are dropped.
    cap: usize,
    /// Control replies dropped for the cap since this was made.
    pub(crate) dropped: u64,
}

impl<'a> WsIo<'a> {
    /// Reads come from `input`; writes go to `out` while it holds less
    /// than `cap` bytes.
    pub(crate) fn new(input: &'a [u8], out: &'a mut OutQueue, cap: usize) -> Self {
        WsIo {
            input,
            out,
            cap,
            dropped: 0,
        }
    }

    /// Input not read yet.
    pub(crate) fn unread(&self) -> usize {
        self.input.len()
    }
}

impl Read for WsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for WsIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let close = buf.first().is_some_and(|b| b & 0x0f == OP_CLOSE);
        if self.out.len() >= self.cap && !close {
            self.dropped += 1;
        } else {
            self.out.push(Bytes::copy_from_slice(buf));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How [`crate::Handler::on_websocket_connect`] accepts an upgrade: the
/// subprotocol chosen among those the client offered (if any), and headers
/// to add to the `101 Switching Protocols` answer (a cookie, say).
///
/// `Ok(Accept::default())` (or `Ok(().into())`) accepts with neither. A
/// subprotocol the client did not offer ([`Request::protocols`]), a header
/// name that is not a token, a value with a control character (CR, LF,
/// NUL, ...) or a header the handshake writes itself (`Upgrade`,
/// `Connection`, `Sec-WebSocket-*`, `Content-Length`, `Transfer-Encoding`)
/// is the handler's error: it is logged, the client gets `500`, and nothing
/// of it is sent.
///
/// When the client offered subprotocols and none is chosen, the answer has
/// no `Sec-WebSocket-Protocol` header (RFC 6455 4.2.2); browsers then fail
/// the connection, so a server that knows one of them should choose it.
///
/// ```
/// use foreman::Accept;
/// let accept = Accept::new()
///     .protocol("chat.v1")
///     .header("Set-Cookie", "session=abc; HttpOnly");
/// assert_eq!(accept.chosen_protocol(), Some("chat.v1"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    protocol: Option<String>,
    headers: Vec<(String, String)>,
}

impl From<()> for Accept {
    fn from(_: ()) -> Self {
        Accept::default()
    }
}

/// Headers the 101 answer writes itself; a handler may not add them.
const HANDSHAKE_HEADERS: [&str; 7] = [
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Accept",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "Content-Length",
    "Transfer-Encoding",
];

impl Accept {
    /// Accepts with no subprotocol and no extra header.
    pub fn new() -> Self {
        Accept::default()
    }

    /// Chooses `protocol`, which must be one the client offered; the answer
    /// says `Sec-WebSocket-Protocol: <protocol>`.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = Some(protocol.into());
        self
    }

    /// Adds a header to the 101 answer.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The subprotocol chosen, if any.
    pub fn chosen_protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The headers added, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The 101 answer to `request`, whose `Sec-WebSocket-Key` gives
    /// `accept_key`; `Err` says what is wrong with this `Accept`.
    pub(crate) fn answer(&self, request: &Request, accept_key: &str) -> Result<String, String> {
        let mut head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n"
        );
        if let Some(p) = &self.protocol {
            if !request.protocols().contains(&p.as_str()) {
                return Err(format!(
                    "subprotocol {p:?} was not offered (offered: {:?})",
                    request.protocols()
                ));
            }
            head.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        for (name, value) in &self.headers {
            if let Some(problem) = header_problem(name, value) {
                return Err(problem);
            }
            if HANDSHAKE_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                return Err(format!("header {name} is the handshake's own"));
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        Ok(head)
    }
}

impl Request {
    /// The subprotocols a WebSocket upgrade request offers
    /// (`Sec-WebSocket-Protocol`, every such header, in order), for
    /// [`Accept::protocol`] to choose from.
    pub fn protocols(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    }
}

/// Whether an upgrade with this `Origin` header may go on: always when the
/// list is empty or the request has no `Origin` (not a browser); otherwise
/// when the origin is on the list, compared without regard to ASCII case.
pub(crate) fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(o) => allowed.iter().any(|a| a.eq_ignore_ascii_case(o.trim())),
    }
}

/// The close frame a WebSocket peer sent, as [`crate::Handler::on_close`]
/// gets it. A close frame without a status code is reported as code 1005
/// ("no status received", RFC 6455 7.1.5) with an empty reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code (1000 normal, 1001 going away, 4000-4999 the
    /// application's own, ...).
    pub code: u16,
    /// The reason, UTF-8, at most 123 bytes.
    pub reason: String,
}

impl CloseFrame {
    /// What tungstenite made of the peer's close frame.
    pub(crate) fn from_peer(frame: Option<tungstenite::protocol::CloseFrame>) -> Self {
        match frame {
            Some(f) => CloseFrame {
                code: f.code.into(),
                reason: f.reason.to_string(),
            },
            None => CloseFrame {
                code: 1005,
                reason: String::new(),
            },
        }
    }
}

/// Most bytes of a server's handshake answer we read before giving up.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// The client's opening handshake: what it asked, to check the answer.
#[derive(Debug)]
pub(crate) struct ClientHandshake {
    /// `Sec-WebSocket-Key` as sent.
    key: String,
    /// Subprotocols offered, in order of preference.
    protocols: Vec<String>,
}

/// What the server answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The head is not complete yet.
    Partial,
    /// 101 with the right accept key; the WebSocket starts after `head_len`
    /// bytes. `protocol`: the subprotocol the server chose.
    Accepted {
        head_len: usize,
        protocol: Option<String>,
    },
    /// Anything else; the text says what.
    Refused(String),
}

impl ClientHandshake {
    /// A fresh key, and the request head to send for `path` on `host`.
    pub(crate) fn start(
        host: &str,
        path: &str,
        protocols: &[String],
        headers: &[(String, String)],
    ) -> (ClientHandshake, Bytes) {
        let key = tungstenite::handshake::client::generate_key();
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if !protocols.is_empty() {
            head.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                protocols.join(", ")
            ));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let hs = ClientHandshake {
            key,
            protocols: protocols.to_vec(),
        };
        (hs, Bytes::from(head))
    }

    /// Checks the server's answer in `buf` (RFC 6455 4.1): status 101,
    /// `Upgrade: websocket`, `Connection: Upgrade`, the accept key derived
    /// from ours, and a subprotocol among those offered (one must be chosen
    /// when any was offered, as browsers require).
    pub(crate) fn check(&self, buf: &[u8]) -> Answer {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        let head_len = match res.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER_BYTES => {
                return Answer::Refused("answer head too long".into())
            }
            Ok(httparse::Status::Partial) => return Answer::Partial,
            Err(e) => return Answer::Refused(format!("malformed answer: {e}")),
        };
        if res.code != Some(101) {
            return Answer::Refused(format!(
                "status {} {}",
                res.code.unwrap_or(0),
                res.reason.unwrap_or("")
            ));
        }
        let header = |name: &str| {
            res.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::trim)
        };
        let has_token = |name: &str, token: &str| {
            header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
            return Answer::Refused("101 without Upgrade: websocket / Connection: Upgrade".into());
        }
        let expected = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        if header("Sec-WebSocket-Accept") != Some(expected.as_str()) {
            return Answer::Refused("wrong Sec-WebSocket-Accept".into());
        }
        let protocol = header("Sec-WebSocket-Protocol").map(str::to_string);
        match &protocol {
            Some(p) if !self.protocols.iter().any(|o| o == p) => {
                return Answer::Refused(format!("subprotocol {p:?} was not offered"))
            }
            None if !self.protocols.is_empty() => {
                return Answer::Refused("no subprotocol chosen of those offered".into())
            }
            _ => {}
        }
        Answer::Accepted { head_len, protocol }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::{Role, WebSocketContext};

    #[test]
    fn ws_io_reads_what_it_was_given_then_would_block() {
        let mut out = OutQueue::default();
        let mut io = WsIo::new(b"abc", &mut out, usize::MAX);
        let mut buf = [0u8; 2];
        assert_eq!(io.read(&mut buf).unwrap(), 2);
        assert_eq!(io.read(&mut buf).unwrap(), 1);
        assert_eq!(
            io.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        io.write_all(b"pong").unwrap();
        assert_eq!(out.len(), 4);
    }

    /// A server context fed `pings` masked pings through a queue capped at
    /// `cap`: what was queued, and how many pongs were dropped.
    fn pong_for_pings(pings: usize, cap: usize) -> (OutQueue, u64) {
        let mut ws = WebSocketContext::new(Role::Server, Some(config(1024, 1024)));
        let ping = [0x89, 0x81, 1, 2, 3, 4, b'p' ^ 1];
        let input = ping.repeat(pings);
        let mut out = OutQueue::default();
        let mut io = WsIo::new(&input, &mut out, cap);
        loop {
            match ws.read(&mut io) {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let dropped = io.dropped;
        let _ = ws.close(&mut WsIo::new(&[], &mut out, cap), None);
        (out, dropped)
    }

    #[test]
    fn pongs_past_the_cap_are_dropped_but_the_close_goes() {
        // Every pong is 3 bytes; a close without code 2.
        assert_eq!(pong_for_pings(10, usize::MAX).0.len(), 10 * 3 + 2);
        let (out, dropped) = pong_for_pings(10, 7);
        assert_eq!(dropped, 7, "3 pongs fit under 7 bytes");
        assert_eq!(out.len(), 3 * 3 + 2, "and the close after them");
    }

    fn answer(hs: &ClientHandshake, extra: &str) -> String {
        let accept = tungstenite::handshake::derive_accept_key(hs.key.as_bytes());
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn the_client_checks_the_servers_answer() {
        let (hs, head) = ClientHandshake::start("h:1", "/ws", &[], &[]);
        let head = std::str::from_utf8(&head).unwrap();
        assert!(
            head.starts_with("GET /ws HTTP/1.1\r\nHost: h:1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("Sec-WebSocket-Key: {}\r\n", hs.key)));
        let ok = answer(&hs, "");
        assert_eq!(hs.check(&ok.as_bytes()[..20]), Answer::Partial);
        let mut with_frame = ok.clone().into_bytes();
        with_frame.extend_from_slice(b"\x81\x00");
        assert_eq!(
            hs.check(&with_frame),
            Answer::Accepted {
                head_len: ok.len(),
                protocol: None
            }
        );
        let wrong = ok.replace("Accept: ", "Accept: x");
        assert!(matches!(hs.check(wrong.as_bytes()), Answer::Refused(_)));
        let refused = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            hs.check(refused.as_bytes()),
            Answer::Refused("status 403 Forbidden".into())
        );
    }

    #[test]
    fn subprotocols_must_be_among_those_offered() {
        let offered = vec!["chat.v2".to_string(), "chat.v1".to_string()];
        let (hs, head) = ClientHandshake::start("h", "/", &offered, &[]);
        assert!(std::str::from_utf8(&head)
            .unwrap()
            .contains("Sec-WebSocket-Protocol: chat.v2, chat.v1\r\n"));
        let ok = answer(&hs, "Sec-WebSocket-Protocol: chat.v1\r\n");
        assert!(matches!(
            hs.check(ok.as_bytes()),
            Answer::Accepted { protocol: Some(p), .. } if p == "chat.v1"
        ));
        let other = answer(&hs, "Sec-WebSocket-Protocol: mqtt\r\n");
        assert!(matches!(hs.check(other.as_bytes()), Answer::Refused(_)));
        assert!(matches!(
            hs.check(answer(&hs, "").as_bytes()),
            Answer::Refused(_)
        ));
    }
}
