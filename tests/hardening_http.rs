//! HTTP that behaves, against the real `testbed`, `dialer` and `echo`
//! binaries: keep-alive, pipelining, HEAD, chunked bodies,
//! `Expect: 100-continue`, RFC 9112 §6.3 framing errors, the keep-alive idle
//! timeout and request cap, heads trickled byte by byte (with the worker's
//! CPU time printed), 1,000 trickling connections beside a normal upgrade,
//! a `text://` line trickled byte by byte and the plain protocols'
//! first-byte deadline.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn start(name: &str, toml: &str) -> Server {
    Server::start_ws(name, 1, &[], Some(toml))
}

/// A request head; `extra` lines end with `\r\n` each.
fn head(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n").into_bytes()
}

/// A `POST /echo` with `extra` headers and then `body`, on a connection of
/// its own: answered with `status` (the first answer: no `100 Continue`
/// before it), then closed.
fn refused_post(server: &Server, extra: &str, body: &str, status: u16) {
    let mut c = Client::connect(server.addr);
    let mut request = head("POST", "/echo", extra);
    request.extend_from_slice(body.as_bytes());
    c.send(&request);
    let r = c.reply();
    assert_eq!(r.status, status, "{extra:?}: {r:?}");
    c.expect_closed();
}

fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    let mut h = head(
        "POST",
        path,
        &format!("Content-Length: {}\r\n{extra}", body.len()),
    );
    h.extend_from_slice(body.as_bytes());
    h
}

/// A client on one kept-alive connection: writes requests, reads answers
/// one at a time.
struct Client {
    s: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client {
            s: tcp_connect(addr, REPLY_TIMEOUT),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write the request");
    }

    #[track_caller]
    fn reply(&mut self) -> HttpReply {
        read_one_reply(&mut self.s, &mut self.pending, false)
    }

    #[track_caller]
    fn head_reply(&mut self) -> HttpReply {
        read_one_reply(&mut self.s, &mut self.pending, true)
    }

    /// Waits for the server to close the connection (EOF or reset), reading
    /// and dropping anything else; panics if it is still open after
    /// [`REPLY_TIMEOUT`].
    #[track_caller]
    fn expect_closed(&mut self) {
        assert!(self.pending.is_empty(), "unread bytes: {:?}", self.pending);
        expect_closed(&mut self.s, REPLY_TIMEOUT);
    }
}

/// Reads `s` until the server closes it (EOF or reset) within `timeout`;
/// returns what came before.
#[track_caller]
fn expect_closed(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "still open after {timeout:?}; got {got:?}");
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn two_requests_on_one_kept_alive_connection() {
    let server = start("testbed", "");
    let mut c = Client::connect(server.addr);
    for body in ["one", "two"] {
        c.send(&post("/echo", body, ""));
        let r = c.reply();
        assert_eq!((r.status, r.body_text()), (200, body.into()), "{r:?}");
        assert_eq!(r.header("Connection"), Some("keep-alive"), "{r:?}");
    }
    // The client's `Connection: close` is honoured.
    c.send(&post("/echo", "three", "Connection: close\r\n"));
    let r = c.reply();
    assert_eq!(
        (r.body_text(), r.header("Connection")),
        ("three".into(), Some("close"))
    );
    c.expect_closed();

    // HTTP/1.0 is kept alive only when it asks.
    let mut c = Client::connect(server.addr);
    c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.reply().header("Connection"), Some("keep-alive"));
    c.send(b"GET /b HTTP/1.0\r\n\r\n");
    assert_eq!(c.reply().header("Connection"), Some("close"));
    c.expect_closed();
}

#[test]
fn keep_alive_off_closes_after_every_answer() {
    let server = start("testbed", "[server]\nkeepalive_timeout_ms = 0\n");
    let mut c = Client::connect(server.addr);
    c.send(&post("/echo", "only", ""));
    let r = c.reply();
    assert_eq!(
        (r.body_text(), r.header("Connection")),
        ("only".into(), Some("close"))
    );
    c.expect_closed();
}

#[test]
fn five_pipelined_requests_are_answered_in_order() {
    let server = start("testbed", "");
    let mut c = Client::connect(server.addr);
    let all: Vec<u8> = (0..5)
        .flat_map(|i| post("/echo", &format!("r{i}"), ""))
        .collect();
    c.send(&all);
    for i in 0..5 {
        let r = c.reply();
        assert_eq!((r.status, r.body_text()), (200, format!("r{i}")), "{r:?}");
    }
    // Then an upgrade on the same connection, after the plain requests.
    let upgrade = head(
        "GET",
        "/",
        "Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    c.send(&upgrade);
    let r = c.head_reply();
    assert_eq!(r.status, 101, "{r:?}");
    assert!(c.pending.is_empty());
    let mut ws = Ws {
        ws: tungstenite::WebSocket::from_raw_socket(c.s, tungstenite::protocol::Role::Client, None),
    };
    ws.send_text(r#"{"op":"whoami","id":1}"#);
    assert!(ws.recv_text(REPLY_TIMEOUT).contains(r#""id":1"#));
}

#[test]
fn an_answer_given_later_holds_the_pipelined_request_behind_it() {
    let server = start("dialer", "");
    let mut c = Client::connect(server.addr);
    let mut both = head("GET", "/later?ms=300", "");
    both.extend_from_slice(&head("GET", "/elsewhere", ""));
    c.send(&both);
    let first = c.reply();
    assert_eq!(
        (first.status, first.body_text()),
        (200, "slept 300 ms".into())
    );
    assert_eq!(first.header("Connection"), Some("keep-alive"), "{first:?}");
    assert_eq!(c.reply().status, 404, "the second answer comes second");
    // And the connection goes on.
    c.send(&head("GET", "/later?ms=1", ""));
    assert_eq!(c.reply().body_text(), "slept 1 ms");
}

#[test]
fn head_answers_with_the_get_headers_and_no_body() {
    let server = start("testbed", "");
    let mut c = Client::connect(server.addr);
    c.send(&head("GET", "/page", ""));
    let get = c.reply();
    c.send(&head("HEAD", "/page", ""));
    let head_reply = c.head_reply();
    assert_eq!(head_reply.status, get.status);
    assert_eq!(
        head_reply.header("Content-Length"),
        get.header("Content-Length")
    );
    assert!(head_reply.body.is_empty());
    // No body came after the head: the next answer starts right there.
    c.send(&head("GET", "/page", ""));
    let next = c.reply();
    assert_eq!(
        (next.status_line.as_str(), next.body),
        (get.status_line.as_str(), get.body)
    );
}

#[test]
fn a_chunked_body_is_decoded_and_bounded() {
    let server = start("testbed", "[server]\nmax_http_body_bytes = 100\n");
    let mut c = Client::connect(server.addr);
    c.send(&head("POST", "/echo", "Transfer-Encoding: chunked\r\n"));
    for piece in [
        &b"5;x=y\r\nhel"[..],
        b"lo\r\n6\r\n world\r",
        b"\n0\r\nX-T: 1\r\n\r\n",
    ] {
        c.send(piece);
    }
    let r = c.reply();
    assert_eq!(
        (r.status, r.body_text()),
        (200, "hello world".into()),
        "{r:?}"
    );
    // The chunks were not taken for a next request: this one is next.
    c.send(&post("/echo", "after", ""));
    assert_eq!(c.reply().body_text(), "after");

    // Past max_http_body_bytes: 413 and closed.
    let body = format!("65\r\n{}\r\n0\r\n\r\n", "x".repeat(101));
    refused_post(&server, "Transfer-Encoding: chunked\r\n", &body, 413);
    // Another coding before chunked: 501.
    refused_post(&server, "Transfer-Encoding: gzip, chunked\r\n", "", 501);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = start("testbed", "[server]\nmax_http_body_bytes = 100\n");
    let mut c = Client::connect(server.addr);
    c.send(&head(
        "POST",
        "/echo",
        "Content-Length: 4\r\nExpect: 100-continue\r\n",
    ));
    let interim = c.reply();
    assert_eq!(interim.status_line, "HTTP/1.1 100 Continue", "{interim:?}");
    c.send(b"body");
    let r = c.reply();
    assert_eq!((r.status, r.body_text()), (200, "body".into()), "{r:?}");

    // Over the limit: 413 at once, no 100.
    let over = "Content-Length: 101\r\nExpect: 100-continue\r\n";
    refused_post(&server, over, "", 413);
    // An expectation we cannot meet: 417.
    refused_post(&server, "Content-Length: 4\r\nExpect: teapot\r\n", "", 417);
}

#[test]
fn ambiguous_framing_is_400_and_closes() {
    let server = start("testbed", "");
    for (what, extra) in [
        ("two lengths", "Content-Length: 3\r\nContent-Length: 4\r\n"),
        ("a sign", "Content-Length: +3\r\n"),
        ("not digits", "Content-Length: 3a\r\n"),
        (
            "length and chunked",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        ),
    ] {
        let mut c = Client::connect(server.addr);
        let mut req = head("POST", "/echo", extra);
        req.extend_from_slice(b"abcd");
        c.send(&req);
        let r = c.reply();
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert_eq!(r.header("Connection"), Some("close"), "{what}");
        c.expect_closed();
    }
}

#[test]
fn an_idle_kept_alive_connection_is_closed_after_keepalive_timeout() {
    // The handshake timeout is far beyond the wait: only the keep-alive
    // timeout can close it.
    let server = start(
        "testbed",
        "[server]\nkeepalive_timeout_ms = 300\nhandshake_timeout_ms = 60000\n",
    );
    let mut c = Client::connect(server.addr);
    c.send(&post("/echo", "x", ""));
    assert_eq!(c.reply().header("Connection"), Some("keep-alive"));
    c.expect_closed();
}

#[test]
fn max_requests_per_connection_is_honoured() {
    let server = start("testbed", "[server]\nmax_requests_per_connection = 3\n");
    let mut c = Client::connect(server.addr);
    for (i, connection) in ["keep-alive", "keep-alive", "close"].iter().enumerate() {
        c.send(&post("/echo", &i.to_string(), ""));
        let r = c.reply();
        assert_eq!(
            r.header("Connection"),
            Some(*connection),
            "answer {i}: {r:?}"
        );
    }
    c.expect_closed();
}

fn head_with_filler(filler: usize) -> Vec<u8> {
    let mut h = b"GET /trickled HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ".to_vec();
    h.resize(h.len() + filler, b'a');
    h.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    h
}

/// Writes `bytes` one byte per write.
fn trickle(s: &mut TcpStream, bytes: &[u8]) {
    for b in bytes {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            return;
        }
    }
}

/// Sends a head of about `size` bytes one byte per write to the only worker
/// of `server`; returns the status and the worker's CPU time it cost.
fn trickled_head(server: &Server, worker: i32, size: usize) -> (u16, Duration) {
    let before = cpu_time(worker).expect("worker cpu");
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    trickle(&mut s, &head_with_filler(size));
    let reply = read_reply(&mut s);
    let cost = cpu_time(worker).expect("worker cpu") - before;
    (reply.status, cost)
}

#[test]
fn a_15_kib_head_trickled_byte_by_byte_is_served() {
    let server = start("echo", "[server]\nhandshake_timeout_ms = 60000\n");
    let worker = server.wait_workers(1, REPLY_TIMEOUT)[0];
    for kib in [5, 15] {
        let (status, cost) = trickled_head(&server, worker, kib * 1024);
        println!("{kib} KiB head, one byte per write: worker CPU {cost:?}");
        assert_eq!(status, 404, "the {kib} KiB head is answered by the handler");
    }
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    let _ = s.write_all(&head_with_filler(17 * 1024));
    let status = read_status_line(&mut s);
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "a 17 KiB head: {status:?}"
    );
}

#[test]
fn a_thousand_trickling_heads_do_not_hold_up_an_upgrade_and_are_closed_in_time() {
    let server = start("echo", "[server]\nhandshake_timeout_ms = 1500\n");
    let request = head_with_filler(64);
    let mut slow: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let source: SocketAddr = format!("127.0.0.{}:0", 10 + i % 50).parse().expect("addr");
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.bind(&source.into()).expect("bind the source address");
            sock.connect(&server.addr.into()).expect("connect");
            let s: TcpStream = sock.into();
            s.set_nodelay(true).expect("nodelay");
            s
        })
        .collect();
    // Every connection has begun its head.
    for s in &mut slow {
        s.write_all(&request[..1]).expect("first byte");
    }
    // A normal client meanwhile, while the others trickle on.
    let trickler = {
        let mut socks: Vec<TcpStream> =
            slow.iter().map(|s| s.try_clone().expect("clone")).collect();
        let request = request.clone();
        std::thread::spawn(move || {
            for at in 1..request.len() - 4 {
                let mut alive = 0;
                for s in &mut socks {
                    alive += s.write_all(&request[at..at + 1]).is_ok() as usize;
                }
                if alive == 0 {
                    return;
                }
            }
        })
    };
    let began = Instant::now();
    let mut ws = Ws::connect(server.addr, "/");
    ws.send_text("through");
    assert_eq!(ws.recv_text(REPLY_TIMEOUT), "through");
    println!(
        "upgrade and echo beside 1,000 trickling heads: {:?}",
        began.elapsed()
    );
    // All 1,000 are closed by their handshake deadline.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    for (i, s) in slow.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = expect_closed(s, left.max(Duration::from_millis(1)));
        assert!(got.is_empty(), "connection {i} was answered: {got:?}");
    }
    trickler.join().expect("trickler");
    // The normal connection is still served.
    ws.send_text("still");
    assert_eq!(ws.recv_text(REPLY_TIMEOUT), "still");
}

fn start_plain(scheme: &str, toml: &str) -> Server {
    let listen = format!("{scheme}://127.0.0.1:0");
    Server::start_with_toml("echo", &["--listen", &listen, "--count", "1"], toml)
}

#[test]
fn a_text_line_trickled_byte_by_byte_is_one_message() {
    let server = start_plain("text", "[server]\nhandshake_timeout_ms = 60000\n");
    let worker = server.wait_workers(1, REPLY_TIMEOUT)[0];
    let line: Vec<u8> = (0..8 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let before = cpu_time(worker).expect("worker cpu");
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    trickle(&mut s, &line);
    s.write_all(b"\n").expect("the line end");
    let mut echoed = vec![0u8; line.len() + 1];
    s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    s.read_exact(&mut echoed).expect("the line echoed");
    println!(
        "8 KiB text line, one byte per write: worker CPU {:?}",
        cpu_time(worker).expect("worker cpu") - before
    );
    assert_eq!(&echoed[..line.len()], &line[..]);
    assert_eq!(echoed[line.len()], b'\n');
}

#[test]
fn plain_connections_that_send_nothing_are_closed_after_handshake_timeout() {
    for scheme in ["tcp", "text", "frame"] {
        let server = start_plain(scheme, "[server]\nhandshake_timeout_ms = 500\n");
        let mut silent = tcp_connect(server.addr, REPLY_TIMEOUT);
        let mut talker = tcp_connect(server.addr, REPLY_TIMEOUT);
        let message: &[u8] = match scheme {
            "frame" => b"\x00\x00\x00\x05x",
            _ => b"x\n",
        };
        talker.write_all(message).expect("write");
        let mut back = vec![0u8; message.len()];
        talker
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("timeout");
        talker.read_exact(&mut back).expect("echo");
        let got = expect_closed(&mut silent, REPLY_TIMEOUT);
        assert!(got.is_empty(), "{scheme}: {got:?}");
        // The one that spoke is still served after the silent one went.
        talker.write_all(message).expect("write");
        talker
            .read_exact(&mut back)
            .expect("echo after the deadline");
        assert_eq!(back, message, "{scheme}");
    }
}
