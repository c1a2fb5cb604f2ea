//! The WebSocket client side of `Ctx::connect`, checked on the wire: the
//! `dialer` example connects out to a raw TCP server in this test process,
//! which reads the upgrade request and the client's frames byte by byte and
//! writes exactly the frames (and mistakes) it wants the client to meet.
//!
//! The raw server speaks just enough of RFC 6455 for that: it answers the
//! upgrade itself and parses and writes frames here, so nothing between the
//! client and the assertions fixes up what the client sent.

mod common;

use base64::Engine as _;
use common::dialer::Dialer;
use common::*;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

// ---------------------------------------------------------------------------
// The dialer, driven over its control connection.

impl Dialer {
    /// Starts an outbound WebSocket to `addr`, offering `protocols`.
    #[track_caller]
    fn connect(&mut self, addr: SocketAddr, path: &str, protocols: &[&str]) -> String {
        let url = format!("ws://{addr}{path}");
        let reply = self.call(json!({"op": "connect", "url": url, "protocols": protocols}));
        reply["conn"].as_str().expect("conn").to_string()
    }

    fn state(&mut self, conn: &str) -> Value {
        self.call(json!({"op": "state", "conn": conn}))
    }

    fn events(&mut self, conn: &str) -> Vec<String> {
        events_of(&self.state(conn))
    }

    /// Waits until the handler saw an event starting with `event`.
    #[track_caller]
    fn wait_event(&mut self, conn: &str, event: &str) -> Value {
        poll_until(REPLY_TIMEOUT, &format!("{event} on {conn}"), || {
            let s = self.state(conn);
            events_of(&s)
                .iter()
                .any(|e| e.starts_with(event))
                .then_some(s)
        })
    }

    /// Waits until the worker has let go of the connection (`conn_info` is
    /// gone: the socket was dropped and no reconnect follows).
    #[track_caller]
    fn wait_gone(&mut self, conn: &str) -> Value {
        poll_until(REPLY_TIMEOUT, &format!("{conn} let go"), || {
            let s = self.state(conn);
            s["info"].is_null().then_some(s)
        })
    }
}

fn events_of(state: &Value) -> Vec<String> {
    state["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The raw server.

struct Upstream {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Upstream {
    fn bind() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        Upstream { listener, addr }
    }

    /// The client's next connection.
    #[track_caller]
    fn accept(&self) -> Raw {
        let stream = poll_until(REPLY_TIMEOUT, "the client's TCP connect", || {
            match self.listener.accept() {
                Ok((s, _)) => Some(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => panic!("accept: {e}"),
            }
        });
        stream.set_nonblocking(false).expect("blocking");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }
}

/// The upgrade request as the client wrote it.
struct Head {
    request_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    fn key(&self) -> &str {
        self.header("Sec-WebSocket-Key").expect("Sec-WebSocket-Key")
    }
}

/// One frame as it was on the wire.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    /// The mask key, when the mask bit was set.
    mask: Option<[u8; 4]>,
    /// The payload as sent (still masked).
    raw: Vec<u8>,
    /// The payload unmasked.
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    fn close_reason(&self) -> &[u8] {
        self.payload.get(2..).unwrap_or_default()
    }
}

/// What a read brought.
#[derive(Debug)]
enum Got {
    Frame(Frame),
    /// The client ended the stream (EOF or reset).
    Eof,
}

/// A connection from the client under test.
struct Raw {
    stream: TcpStream,
    /// Read but not consumed yet.
    buf: Vec<u8>,
}

impl Raw {
    /// Reads more, waiting until `deadline`; 0 at end of stream.
    #[track_caller]
    fn fill(&mut self, deadline: Instant, what: &str) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out waiting for {what}; have {:02x?}", self.buf);
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return n;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return 0, // reset: the stream is over too
            }
        }
    }

    /// Reads the upgrade request head.
    #[track_caller]
    fn read_head(&mut self) -> Head {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.fill(deadline, "the upgrade request") == 0 {
                panic!("the client closed before its request was complete");
            }
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).expect("ASCII head");
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("header {l:?}"));
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        Head {
            request_line,
            headers,
        }
    }

    /// Writes to the client. A client that went away already is not an
    /// error here: what the test reads or asks the dialer next says why.
    fn write(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            eprintln!("write to the client: {e}");
        }
    }

    /// A 101 answer to `head`, with `accept` as the accept key and `extra`
    /// header lines.
    fn answer_101(&mut self, accept: &str, extra: &str) {
        let text = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        );
        self.write(text.as_bytes());
    }

    /// Accepts the upgrade properly.
    fn accept_upgrade(&mut self, head: &Head, extra: &str) {
        let accept = tungstenite::handshake::derive_accept_key(head.key().as_bytes());
        self.answer_101(&accept, extra);
    }

    /// Reads the client's next frame (or the end of its stream).
    #[track_caller]
    fn read_frame(&mut self) -> Got {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(frame) = parse_frame(&mut self.buf) {
                return Got::Frame(frame);
            }
            if self.fill(deadline, "a frame from the client") == 0 {
                assert!(
                    self.buf.is_empty(),
                    "the stream ended inside a frame: {:02x?}",
                    self.buf
                );
                return Got::Eof;
            }
        }
    }

    /// The client's next frame; panics at the end of the stream.
    #[track_caller]
    fn frame(&mut self) -> Frame {
        match self.read_frame() {
            Got::Frame(f) => f,
            Got::Eof => panic!("the client ended the stream; a frame was expected"),
        }
    }

    /// The client ends the stream next, without another frame.
    #[track_caller]
    fn expect_eof(&mut self) {
        match self.read_frame() {
            Got::Eof => {}
            Got::Frame(f) => panic!("expected the end of the stream, got {f:?}"),
        }
    }

    /// Writes one frame from the server side: unmasked unless `mask`.
    fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
        self.write(&encode_frame(fin, opcode, payload, mask));
    }
}

fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(bit | len as u8);
    } else if len <= 0xffff {
        out.push(bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        None => out.extend_from_slice(payload),
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
    }
    out
}

/// Takes one whole frame off the front of `buf`, if there is one.
fn parse_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let mut at = 2;
    let len = match b1 & 0x7f {
        126 => {
            let b = buf.get(2..4)?;
            at = 4;
            u16::from_be_bytes([b[0], b[1]]) as usize
        }
        127 => {
            let b = buf.get(2..10)?;
            at = 10;
            u64::from_be_bytes(b.try_into().ok()?) as usize
        }
        n => n as usize,
    };
    let mask = if b1 & 0x80 != 0 {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let raw = buf.get(at..at + len)?.to_vec();
    buf.drain(..at + len);
    let payload = match mask {
        None => raw.clone(),
        Some(k) => raw.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
    };
    Some(Frame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask,
        raw,
        payload,
    })
}

/// A close frame's payload: code and reason.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// The dialer connects to a fresh raw server, which accepts the upgrade;
/// returns once the handler saw `on_connect`.
fn open(d: &mut Dialer) -> (Upstream, Raw, String) {
    let up = Upstream::bind();
    let conn = d.connect(up.addr, "/", &[]);
    let mut raw = up.accept();
    let head = raw.read_head();
    raw.accept_upgrade(&head, "");
    d.wait_event(&conn, "connect");
    (up, raw, conn)
}

#[track_caller]
fn assert_masked(f: &Frame, what: &str) -> [u8; 4] {
    let key = f
        .mask
        .unwrap_or_else(|| panic!("{what}: the client sent an unmasked frame: {f:?}"));
    // Masking XORs the payload with the key (RFC 6455 5.3).
    let remasked: Vec<u8> = f
        .payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    assert_eq!(remasked, f.raw, "{what}: payload is the masked bytes");
    key
}

// ---------------------------------------------------------------------------
// The tests.

/// Every data frame the client writes is masked (RFC 6455 5.1: a server
/// must fail a connection on an unmasked frame), unmasking gives what was
/// sent, and each frame has its own key.
#[test]
fn client_frames_are_masked_each_with_its_own_key() {
    let mut d = Dialer::start(1, None);
    let (_up, mut raw, conn) = open(&mut d);
    let sent = d.call(json!({"op": "send", "conn": conn, "n": 3, "prefix": "masked-"}));
    assert_eq!(sent["accepted"], json!(3));
    let sent = d.call(json!({"op": "binary", "conn": conn, "n": 2}));
    assert_eq!(sent["accepted"], json!(2));
    // One long enough for the 16-bit length (and the key to repeat).
    d.call(json!({"op": "send", "conn": conn, "n": 1, "prefix": "long-", "size": 300}));

    let mut keys = Vec::new();
    for i in 0..3 {
        let f = raw.frame();
        assert_eq!((f.fin, f.opcode), (true, OP_TEXT), "{f:?}");
        keys.push(assert_masked(&f, "text"));
        assert_eq!(f.payload, format!("masked-{i}").as_bytes());
        assert_ne!(f.raw, f.payload, "the bytes on the wire are not the text");
    }
    for i in 0..2u32 {
        let f = raw.frame();
        assert_eq!((f.fin, f.opcode), (true, OP_BINARY), "{f:?}");
        keys.push(assert_masked(&f, "binary"));
        assert_eq!(f.payload, i.to_be_bytes());
    }
    let f = raw.frame();
    assert_eq!((f.opcode, f.payload.len()), (OP_TEXT, 300), "{f:?}");
    keys.push(assert_masked(&f, "long text"));
    assert!(f.payload.starts_with(b"long-0 xxx"));

    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "every frame has its own mask key: {keys:02x?}"
    );
}

/// The upgrade request: `GET` of the URL's path with `Host`, `Upgrade`,
/// `Connection`, version 13, a key of 16 random bytes that is new for every
/// attempt, and `Sec-WebSocket-Protocol` exactly when subprotocols are
/// offered; the one the server picks is what `conn_info` reports.
#[test]
fn upgrade_request_has_a_fresh_key_version_13_and_the_offered_protocols() {
    let mut d = Dialer::start(1, None);
    let up = Upstream::bind();

    let mut keys = Vec::new();
    for _ in 0..2 {
        let conn = d.connect(up.addr, "/feed?room=a", &["chat.v2", "chat.v1"]);
        let mut raw = up.accept();
        let head = raw.read_head();
        assert_eq!(head.request_line, "GET /feed?room=a HTTP/1.1");
        assert_eq!(head.header("Host"), Some(up.addr.to_string().as_str()));
        assert!(
            head.header("Upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "Upgrade: {:?}",
            head.header("Upgrade")
        );
        assert!(
            head.header("Connection").is_some_and(|v| v
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))),
            "Connection: {:?}",
            head.header("Connection")
        );
        assert_eq!(head.header("Sec-WebSocket-Version"), Some("13"));
        assert_eq!(head.count("Sec-WebSocket-Key"), 1);
        let key = base64::engine::general_purpose::STANDARD
            .decode(head.key())
            .unwrap_or_else(|e| panic!("key {:?} is not base64: {e}", head.key()));
        assert_eq!(key.len(), 16, "the key is 16 bytes (RFC 6455 4.1)");
        keys.push(head.key().to_string());
        assert_eq!(
            head.header("Sec-WebSocket-Protocol"),
            Some("chat.v2, chat.v1"),
            "offered in order of preference"
        );

        raw.accept_upgrade(&head, "Sec-WebSocket-Protocol: chat.v1\r\n");
        let s = d.wait_event(&conn, "connect");
        assert_eq!(s["info"]["subprotocol"], json!("chat.v1"), "{s}");
        d.call(json!({"op": "close", "conn": conn}));
    }
    assert_ne!(keys[0], keys[1], "each attempt has a fresh key");

    // Nothing offered: no Sec-WebSocket-Protocol at all, and none chosen.
    let conn = d.connect(up.addr, "/", &[]);
    let mut raw = up.accept();
    let head = raw.read_head();
    assert_eq!(head.request_line, "GET / HTTP/1.1");
    assert_eq!(
        head.count("Sec-WebSocket-Protocol"),
        0,
        "{:?}",
        head.headers
    );
    assert_ne!(head.key(), keys[0]);
    assert_ne!(head.key(), keys[1]);
    raw.accept_upgrade(&head, "");
    let s = d.wait_event(&conn, "connect");
    assert_eq!(s["info"]["subprotocol"], json!(null), "{s}");
}

/// A 101 whose `Sec-WebSocket-Accept` is not derived from our key fails
/// the attempt: `on_error` says why, `on_connect` never runs, the socket
/// is closed, and a frame the server sent along is never delivered.
#[test]
fn a_wrong_accept_key_fails_the_attempt_before_on_connect() {
    let mut d = Dialer::start(1, None);
    let up = Upstream::bind();
    let conn = d.connect(up.addr, "/", &[]);
    let mut raw = up.accept();
    let head = raw.read_head();
    // The accept key of some other request's key.
    let wrong = tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
    assert_ne!(
        wrong,
        tungstenite::handshake::derive_accept_key(head.key().as_bytes())
    );
    raw.answer_101(&wrong, "");
    raw.send_frame(true, OP_TEXT, b"m0 should never arrive", None);

    // Whatever the handler hears first (an error, or wrongly a connect).
    let s = poll_until(REPLY_TIMEOUT, "the attempt's first event", || {
        let s = d.state(&conn);
        (!events_of(&s).is_empty()).then_some(s)
    });
    assert_eq!(
        events_of(&s),
        ["error: handshake refused: wrong Sec-WebSocket-Accept"],
        "{s}"
    );
    let s = d.wait_gone(&conn);
    assert_eq!(
        events_of(&s),
        ["error: handshake refused: wrong Sec-WebSocket-Accept"],
        "{s}"
    );
    assert_eq!(s["received"], json!(0), "{s}");
    raw.expect_eof();
    // Still nothing after the socket is gone.
    assert_eq!(
        d.events(&conn),
        ["error: handshake refused: wrong Sec-WebSocket-Accept"]
    );
}

/// A text message in three frames (text, continuation, final continuation)
/// reaches `on_message` once, whole. The first fragment comes in the same
/// write as the 101, so it is also parsed from the handshake's leftovers.
#[test]
fn a_fragmented_text_message_arrives_as_one_message() {
    let mut d = Dialer::start(1, None);
    let up = Upstream::bind();
    let conn = d.connect(up.addr, "/", &[]);
    let mut raw = up.accept();
    let head = raw.read_head();
    let accept = tungstenite::handshake::derive_accept_key(head.key().as_bytes());
    let mut first = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    first.extend(encode_frame(false, OP_TEXT, b"m0-first-", None));
    raw.write(&first);
    raw.send_frame(false, OP_CONT, "middle-ü-".as_bytes(), None);
    raw.send_frame(true, OP_CONT, b"last", None);
    // And one whole message after it, to know when the first was handled.
    raw.send_frame(true, OP_TEXT, b"m1", None);

    let s = poll_until(REPLY_TIMEOUT, "the message after the fragments", || {
        let s = d.state(&conn);
        let ended = events_of(&s).len() > 1; // an error or a close
        (s["last"] == json!("m1") || s["received"].as_u64() >= Some(4) || ended).then_some(s)
    });
    assert_eq!(events_of(&s), ["connect"], "{s}");
    assert_eq!(
        s["received"],
        json!(2),
        "two messages, not four frames: {s}"
    );
    assert_eq!(s["in_order"], json!(true), "{s}");

    // The whole first message, checked by its echo: the dialer keeps only
    // the last one, so send it again, in four frames this time.
    raw.send_frame(false, OP_TEXT, b"m2-", None);
    raw.send_frame(false, OP_CONT, b"", None);
    raw.send_frame(false, OP_CONT, "middle-ü-".as_bytes(), None);
    raw.send_frame(true, OP_CONT, b"last", None);
    let s = poll_until(REPLY_TIMEOUT, "the second fragmented message", || {
        let s = d.state(&conn);
        (s["received"].as_u64() >= Some(3)).then_some(s)
    });
    assert_eq!(s["last"], json!("m2-middle-ü-last"), "{s}");
    assert_eq!(s["received"], json!(3), "{s}");
}

/// The server's ping is answered with a pong carrying the same payload,
/// masked like every client frame.
#[test]
fn a_ping_from_the_server_gets_a_masked_pong_with_its_payload() {
    let mut d = Dialer::start(1, None);
    let (_up, mut raw, conn) = open(&mut d);
    raw.send_frame(true, OP_PING, b"are you there?", None);
    let f = raw.frame();
    assert_eq!((f.fin, f.opcode), (true, OP_PONG), "{f:?}");
    assert_masked(&f, "pong");
    assert_eq!(f.payload, b"are you there?");

    // An empty ping, between data: the pong keeps its place.
    d.call(json!({"op": "send", "conn": conn, "n": 1, "prefix": "before-"}));
    let f = raw.frame();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"before-0"[..])
    );
    raw.send_frame(true, OP_PING, b"", None);
    let f = raw.frame();
    assert_eq!((f.opcode, f.payload.len()), (OP_PONG, 0), "{f:?}");
    assert_masked(&f, "empty pong");
    assert!(
        d.events(&conn).iter().all(|e| !e.starts_with("error")),
        "pings are no error"
    );
}

/// The server closes with 4001: the client answers with a masked close
/// frame with the same code, the handler sees `on_close`, and the client
/// lets go of the socket.
#[test]
fn the_servers_close_is_answered_with_a_masked_close() {
    let mut d = Dialer::start(1, None);
    let (_up, mut raw, conn) = open(&mut d);
    raw.send_frame(true, OP_CLOSE, &close_payload(4001, "going away now"), None);
    let f = raw.frame();
    assert_eq!((f.fin, f.opcode), (true, OP_CLOSE), "{f:?}");
    assert_masked(&f, "close reply");
    assert_eq!(f.close_code(), Some(4001), "{f:?}");

    let s = d.wait_event(&conn, "close");
    assert_eq!(events_of(&s), ["connect", "close"], "{s}");
    raw.expect_eof();
    d.wait_gone(&conn);
}

/// The client closes with 4002: a masked close frame with that code and
/// reason goes out, the socket stays up until the server answers, and ends
/// once it has.
#[test]
fn a_client_close_sends_a_masked_close_and_waits_for_the_answer() {
    let mut d = Dialer::start(1, None);
    let (_up, mut raw, conn) = open(&mut d);
    d.call(json!({"op": "close", "conn": conn, "code": 4002, "reason": "done here"}));
    let f = raw.frame();
    assert_eq!((f.fin, f.opcode), (true, OP_CLOSE), "{f:?}");
    assert_masked(&f, "close");
    assert_eq!(f.close_code(), Some(4002), "{f:?}");
    assert_eq!(f.close_reason(), b"done here");

    // The worker drops a socket in the same write pass that finishes its
    // close, so a state asked for after the close frame arrived shows
    // whether it kept the socket: it must, until the server answers.
    let s = d.state(&conn);
    assert!(
        !s["info"].is_null(),
        "the client let go before the server answered its close: {s}"
    );
    assert_eq!(s["info"]["open"], json!(false), "{s}");
    assert_eq!(events_of(&s), ["connect", "close"], "{s}");

    raw.send_frame(true, OP_CLOSE, &close_payload(4002, ""), None);
    raw.expect_eof();
    d.wait_gone(&conn);
}

/// A masked frame from the server breaks RFC 6455 5.1: the client fails
/// the connection with 1002 (its close frame masked too) and does not
/// deliver the message.
#[test]
fn a_masked_frame_from_the_server_is_a_protocol_error() {
    let mut d = Dialer::start(1, None);
    let (_up, mut raw, conn) = open(&mut d);
    raw.send_frame(true, OP_TEXT, b"m0 masked", Some([1, 2, 3, 4]));
    let f = raw.frame();
    assert_eq!(f.opcode, OP_CLOSE, "{f:?}");
    assert_masked(&f, "close");
    assert_eq!(f.close_code(), Some(1002), "{f:?}");

    let s = d.wait_event(&conn, "close");
    let events = events_of(&s);
    assert_eq!(events.len(), 3, "{s}");
    assert_eq!(events[0], "connect");
    assert!(events[1].starts_with("error: protocol error"), "{s}");
    assert_eq!(events[2], "close");
    assert_eq!(s["received"], json!(0), "{s}");
    // Failing the connection: the client does not wait for an answer.
    raw.expect_eof();
}
