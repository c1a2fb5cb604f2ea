//! WebSocket hardening, seen from clients: control replies (pongs) count
//! against `max_output_bytes` like every other byte queued for a
//! connection.

mod common;

use common::*;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use tungstenite::protocol::{Role, WebSocket};

/// `max_output_bytes` of the flood tests' servers.
const CAP: u64 = 1 << 20;
/// What the worker may grow by, besides `CAP`, while it is flooded.
const SLACK: u64 = 10 << 20;
/// Largest payload of a control frame (RFC 6455 5.5).
const PING_PAYLOAD: usize = 125;
/// A masked ping with a 125-byte payload: 2 header bytes, 4 of mask key.
const PING_LEN: usize = 2 + 4 + PING_PAYLOAD;
/// The server's pong to one of those pings: unmasked, 2 header bytes.
const PONG_LEN: usize = 2 + PING_PAYLOAD;
/// More than the socket buffers of a loopback connection hold, both ends
/// together (what the server's send buffer and the client's receive buffer
/// take of the pongs, however much they grow).
const KERNEL_BUFFERS: u64 = 8 << 20;
/// Pings encoded in one buffer and written over and over.
const PINGS_PER_BATCH: usize = 8192;
/// How long a flood may take before the test gives up on it.
const FLOOD_TIMEOUT: Duration = Duration::from_secs(120);

/// A testbed with the flood tests' cap and `policy` for what passes it.
fn start_capped(policy: &str) -> Server {
    let toml = format!("[server]\nmax_output_bytes = {CAP}\noutput_overflow = \"{policy}\"\n");
    Server::start_ws("testbed", 1, &[], Some(&toml))
}

/// `PINGS_PER_BATCH` masked pings of `PING_PAYLOAD` bytes, as a client
/// must send them.
fn ping_batch() -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(PINGS_PER_BATCH * PING_LEN);
    for i in 0..PINGS_PER_BATCH {
        out.push(0x89);
        out.push(0x80 | PING_PAYLOAD as u8);
        out.extend_from_slice(&key);
        out.extend((0..PING_PAYLOAD).map(|j| (i + j) as u8 ^ key[j & 3]));
    }
    out
}

/// An upgrade request head for `path` with `extra` header lines.
fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A WebSocket client whose socket has a receive buffer of `rcvbuf` bytes
/// (set before connecting, so the window it offers is small from the
/// start), upgraded on a raw socket. The stream is left just after the 101.
#[track_caller]
fn small_window_client(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    s.connect_timeout(&addr.into(), REPLY_TIMEOUT)
        .expect("connect");
    let mut stream: TcpStream = s.into();
    stream
        .write_all(upgrade_request(addr, "/", "").as_bytes())
        .expect("write the upgrade request");
    let status = read_status_line(&mut stream);
    assert!(status.starts_with("HTTP/1.1 101"), "{status:?}");
    stream
}

/// How a flood ended, and the worker's largest RSS while it went on.
struct Flood {
    /// Pings written in whole.
    pings: u64,
    /// The write error that cut it short (the server closed the socket).
    cut: Option<std::io::Error>,
    peak_rss: u64,
}

/// Writes `total` pings (a multiple of the batch) to `stream` without ever
/// reading, nonblocking, waiting for room with a deadline; samples the RSS of
/// `worker` between writes. Ends early when a write fails.
#[track_caller]
fn flood_pings(stream: &mut TcpStream, total: u64, worker: i32) -> Flood {
    let batch = ping_batch();
    stream.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + FLOOD_TIMEOUT;
    let target = total * PING_LEN as u64;
    let mut written = 0u64;
    let mut peak_rss = 0;
    let mut cut = None;
    while written < target {
        peak_rss = peak_rss.max(rss_bytes(worker).expect("worker RSS"));
        let at = (written % batch.len() as u64) as usize;
        match stream.write(&batch[at..]) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "{written} bytes of pings written in {FLOOD_TIMEOUT:?}: the flood never ended"
                );
                wait_writable(stream, Duration::from_millis(50));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    peak_rss = peak_rss.max(rss_bytes(worker).expect("worker RSS"));
    stream.set_nonblocking(false).expect("blocking");
    Flood {
        pings: written / PING_LEN as u64,
        cut,
        peak_rss,
    }
}

/// Waits until `stream` has room to write (or has failed), at most `timeout`.
fn wait_writable(stream: &TcpStream, timeout: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let _ = poll(&mut fds, ms);
}

/// The `on_error` reports of the worker `peer` is on.
fn errors(peer: &mut Peer) -> Vec<String> {
    peer.call(json!({"op": "errors"}))["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().expect("string").to_string())
        .collect()
}

/// The connection id of the only connection of the server that is not `me`.
#[track_caller]
fn other_conn(me: &mut Peer) -> String {
    let stats = me.stats();
    let others: Vec<String> = strings(&stats["connections"])
        .into_iter()
        .filter(|c| *c != me.conn)
        .collect();
    assert_eq!(others.len(), 1, "{stats}");
    others[0].clone()
}

/// A flood test's setup: a capped testbed, a watcher connection on its one
/// worker, the worker's RSS then, and the flooding client (a raw socket
/// with a 4 KiB receive buffer) with its connection id.
struct Flooded {
    _server: Server,
    watcher: Peer,
    baseline: u64,
    stream: TcpStream,
    flooder: String,
}

impl Flooded {
    #[track_caller]
    fn start(policy: &str) -> Flooded {
        let server = start_capped(policy);
        let mut watcher = Peer::connect(server.addr);
        let baseline = rss_bytes(watcher.pid).expect("worker RSS");
        let stream = small_window_client(server.addr, 4096);
        let flooder = other_conn(&mut watcher);
        Flooded {
            _server: server,
            watcher,
            baseline,
            stream,
            flooder,
        }
    }
}

/// The worker's RSS `rss` is within `baseline` + the cap + [`SLACK`].
#[track_caller]
fn assert_rss_within(rss: u64, baseline: u64) {
    let bound = baseline + CAP + SLACK;
    assert!(
        rss < bound,
        "worker RSS reached {} MiB (baseline {} MiB, bound {} MiB)",
        rss >> 20,
        baseline >> 20,
        bound >> 20
    );
}

/// A raw upgraded socket as a tungstenite client, reads bounded.
fn into_ws(stream: TcpStream) -> Ws {
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    Ws {
        ws: WebSocket::from_raw_socket(stream, Role::Client, None),
    }
}

/// A client that sends 1.5 M pings and never reads. Its pongs count against
/// `max_output_bytes`: past it the close policy closes the connection with
/// 1008 and reports the overflow, and the worker's memory stays within the
/// cap (plus slack), where queuing every pong took hundreds of MiB.
///
/// What a client that never reads can observe of that close is only that
/// the server stops taking its bytes or resets the socket (it drops it,
/// unread data and all, when the close handshake cannot finish); reading
/// afterwards it finds the 1008 close frame behind the pongs that were
/// queued, or, once the server let go of the socket, a reset.
#[test]
fn a_ping_flood_that_never_reads_is_closed_1008_within_the_output_cap() {
    // The server lives as long as `f` (its other fields move out).
    let f = Flooded::start("close");
    let (mut watcher, mut stream, flooder) = (f.watcher, f.stream, f.flooder);
    let baseline = f.baseline;

    let started = Instant::now();
    let flood = flood_pings(&mut stream, 1_500_000, watcher.pid);
    eprintln!("flood took {:?}", started.elapsed());
    assert_rss_within(flood.peak_rss, baseline);

    // The overflow was reported for the flooder, and it is no longer online.
    let reported = errors(&mut watcher);
    assert!(
        reported.iter().any(
            |e| e.starts_with(&format!("{flooder}: output buffer overflow"))
                && e.contains(&format!("limit {CAP}"))
        ),
        "on_error reports the overflow of {flooder}: {reported:?}"
    );
    assert!(
        !strings(&watcher.stats()["connections"]).contains(&flooder),
        "the flooder is offline"
    );

    // Reading now: the pongs that were queued, then the close frame, unless
    // the server has let go of the socket already.
    let mut ws = into_ws(stream);
    match ws.recv(REPLY_TIMEOUT) {
        Recv::Close(code) => assert_eq!(code, Some(1008)),
        Recv::Gone(why) => assert!(
            flood.cut.is_some() || why.contains("reset") || why.contains("closed"),
            "the connection ended without a close frame: {why}"
        ),
        other => panic!("expected the close or the end of the connection, got {other:?}"),
    }
    let after = rss_bytes(watcher.pid).expect("worker RSS");
    assert_rss_within(after, baseline);
    eprintln!(
        "flood: {} pings, cut short: {:?}, worker RSS baseline {} KiB, peak {} KiB, after {} KiB",
        flood.pings,
        flood.cut.map(|e| e.kind()),
        baseline >> 10,
        flood.peak_rss >> 10,
        after >> 10
    );
}

/// Under the drop policy a pong past the cap is dropped and counted; the
/// connection stays open and its memory bounded, and once it reads again it
/// is served: its close is answered.
#[test]
fn a_ping_flood_under_the_drop_policy_drops_counted_pongs_and_stays_open() {
    // The server lives as long as `f` (its other fields move out).
    let f = Flooded::start("drop");
    let (mut watcher, mut stream, flooder) = (f.watcher, f.stream, f.flooder);
    let baseline = f.baseline;

    let total = 40 * PINGS_PER_BATCH as u64;
    let flood = flood_pings(&mut stream, total, watcher.pid);
    assert!(flood.cut.is_none(), "the flood was cut: {:?}", flood.cut);
    // Every pong but those the queue and the kernel's buffers took is
    // dropped, once the worker has read the last pings.
    let kept_at_most = (CAP + KERNEL_BUFFERS) / PONG_LEN as u64;
    let mut dropped = 0;
    wait_until(
        REPLY_TIMEOUT,
        "pongs past the cap dropped and counted",
        || {
            dropped = watcher.stats()["dropped_sends"].as_u64().expect("dropped");
            dropped >= total - kept_at_most
        },
    );
    let peak = flood.peak_rss.max(rss_bytes(watcher.pid).expect("RSS"));
    assert_rss_within(peak, baseline);
    let stats = watcher.stats();
    assert!(
        strings(&stats["connections"]).contains(&flooder),
        "the flooder stays online: {stats}"
    );
    assert!(errors(&mut watcher).is_empty(), "no error under drop");

    // It reads again: pongs, then the answer to its close.
    let mut ws = into_ws(stream);
    ws.ws.close(None).expect("send close");
    assert!(
        matches!(ws.recv(REPLY_TIMEOUT), Recv::Close(_)),
        "the server answers the close"
    );
    eprintln!(
        "drop flood: {} pings, {dropped} pongs dropped, RSS baseline {} KiB, peak {} KiB",
        flood.pings,
        baseline >> 10,
        peak >> 10
    );
}

/// Origins the allow-list tests' server accepts.
const ALLOWED: &str = r#"allowed_origins = ["http://127.0.0.1:8000", "https://chat.example.com"]"#;

/// A testbed whose upgrades must come from [`ALLOWED`] origins (or none).
fn start_with_origins() -> Server {
    Server::start_ws("testbed", 1, &[], Some(&format!("[server]\n{ALLOWED}\n")))
}

/// Sends an upgrade request for `path` with `extra` header lines on a fresh
/// connection and reads the answer's head (a 101 keeps the connection; the
/// stream is left after the head).
#[track_caller]
fn upgrade(addr: SocketAddr, path: &str, extra: &str) -> (HttpReply, TcpStream) {
    let mut s = tcp_connect(addr, REPLY_TIMEOUT);
    s.write_all(upgrade_request(addr, path, extra).as_bytes())
        .expect("write the upgrade request");
    (read_head(&mut s), s)
}

/// Reads a response head byte by byte, up to its blank line.
#[track_caller]
fn read_head(s: &mut TcpStream) -> HttpReply {
    s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => panic!("EOF in the head: {:?}", String::from_utf8_lossy(&got)),
            Ok(_) => got.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the head: {e}"),
        }
    }
    parse_reply(&got)
}

/// Every header line of `reply` with this name.
fn all_headers<'a>(reply: &'a HttpReply, name: &str) -> Vec<&'a str> {
    reply
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// An upgrade whose `Origin` is not on the list gets 403 without reaching
/// `on_websocket_connect` (`?panic` would make that answer 500); a listed
/// origin, in any case, and no origin at all are accepted.
#[test]
fn the_origin_allow_list_refuses_foreign_origins_before_the_handler() {
    let server = start_with_origins();
    let addr = server.addr;
    let (foreign, _) = upgrade(addr, "/?panic", "Origin: http://evil.example\r\n");
    assert_eq!(foreign.status, 403, "{foreign:?}");
    let (prefixed, _) = upgrade(addr, "/", "Origin: https://chat.example.com.evil\r\n");
    assert_eq!(prefixed.status, 403, "{prefixed:?}");
    let (reached, _) = upgrade(addr, "/?panic", "Origin: https://chat.example.com\r\n");
    assert_eq!(reached.status, 500, "a listed origin reaches the handler");

    let (listed, _) = upgrade(addr, "/", "Origin: HTTPS://Chat.Example.COM\r\n");
    assert_eq!(listed.status, 101, "{listed:?}");
    let (page, _) = upgrade(addr, "/", "Origin: http://127.0.0.1:8000\r\n");
    assert_eq!(page.status, 101, "{page:?}");
    let (none, s) = upgrade(addr, "/", "");
    assert_eq!(none.status, 101, "{none:?}");
    // And the connection it opened is served.
    let mut ws = into_ws(s);
    ws.send_text(r#"{"op": "whoami", "id": 1}"#);
    assert!(ws.recv_text(REPLY_TIMEOUT).contains(r#""id":1"#));
}

/// The handler's subprotocol is echoed in the 101; one the client did not
/// offer is the handler's error (500, no 101); none chosen means no
/// `Sec-WebSocket-Protocol` header at all.
#[test]
fn the_chosen_subprotocol_is_echoed_and_must_have_been_offered() {
    let server = start_with_origins();
    let addr = server.addr;
    let offer = "Sec-WebSocket-Protocol: a, b\r\n";
    let (b, _) = upgrade(addr, "/?protocol=b", offer);
    assert_eq!(b.status, 101, "{b:?}");
    assert_eq!(all_headers(&b, "Sec-WebSocket-Protocol"), ["b"], "{b:?}");

    let (split, _) = upgrade(
        addr,
        "/?protocol=a",
        "Sec-WebSocket-Protocol: b\r\nSec-WebSocket-Protocol: a\r\n",
    );
    assert_eq!(all_headers(&split, "Sec-WebSocket-Protocol"), ["a"]);

    let (unoffered, _) = upgrade(addr, "/?protocol=c", offer);
    assert_eq!(unoffered.status, 500, "{unoffered:?}");
    assert!(all_headers(&unoffered, "Sec-WebSocket-Protocol").is_empty());

    let (none, _) = upgrade(addr, "/", offer);
    assert_eq!(none.status, 101, "{none:?}");
    assert!(
        all_headers(&none, "Sec-WebSocket-Protocol").is_empty(),
        "{none:?}"
    );
}

/// A tungstenite client that asks for a subprotocol connects when the
/// handler chooses it, and fails (as browsers do) when it chooses none.
#[test]
fn a_tungstenite_client_asking_for_a_subprotocol_gets_it() {
    use tungstenite::client::IntoClientRequest;
    let server = start_with_origins();
    let connect = |path: &str| {
        let mut req = server.ws_url(path).into_client_request().expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "chat.v2, chat.v1".parse().expect("header value"),
        );
        tungstenite::client(req, tcp_connect(server.addr, REPLY_TIMEOUT)).map_err(|e| e.to_string())
    };
    let (mut ws, response) = connect("/?protocol=chat.v1").expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().expect("ASCII")),
        Some("chat.v1")
    );
    ws.send(tungstenite::Message::binary(&b"bin"[..]))
        .expect("send");
    assert_eq!(
        ws.read().expect("echo"),
        tungstenite::Message::binary(&b"bin"[..])
    );

    let refused = connect("/").map(|_| ()).expect_err("no subprotocol chosen");
    assert!(refused.to_lowercase().contains("subprotocol"), "{refused}");
}

/// Headers the handler adds reach the 101; a value with CR LF (which would
/// write a header of its own) or a handshake header is never sent: 500.
#[test]
fn upgrade_headers_are_sent_only_when_valid() {
    let server = start_with_origins();
    let addr = server.addr;
    let (ok, _) = upgrade(addr, "/?header=Set-Cookie:session%3Dabc", "");
    assert_eq!(ok.status, 101, "{ok:?}");
    assert_eq!(ok.header("Set-Cookie"), Some("session=abc"), "{ok:?}");

    for bad in [
        "/?header=X-Bad:a%0D%0AInjected:%20yes",
        "/?header=X%20Bad:a",
        "/?header=X-Nul:a%00b",
        "/?header=Sec-WebSocket-Accept:forged",
    ] {
        let (reply, _) = upgrade(addr, bad, "");
        assert_eq!(reply.status, 500, "{bad}: {reply:?}");
        assert!(
            reply.header("Injected").is_none() && reply.header("Sec-WebSocket-Accept").is_none(),
            "{bad}: {reply:?}"
        );
    }
}

/// A plain HTTP answer with an invalid header is not sent either: 500.
#[test]
fn http_response_headers_are_validated() {
    let server = start_with_origins();
    let post = |query: &str| {
        let req = format!(
            "POST /echo{query} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        http_exchange(server.addr, &[req.as_bytes()])
    };
    let ok = post("?header=X-Ok:1");
    assert_eq!((ok.status, ok.header("X-Ok")), (200, Some("1")), "{ok:?}");
    let bad = post("?header=X-Bad:a%0D%0AInjected:%20yes");
    assert_eq!(bad.status, 500, "{bad:?}");
    assert!(bad.header("Injected").is_none(), "{bad:?}");
    assert!(bad.header("X-Bad").is_none(), "{bad:?}");
}

/// `on_close` gets the peer's close code and reason; a connection the
/// server closed gets none.
#[test]
fn on_close_sees_the_peers_close_code_and_reason() {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::CloseFrame;
    let server = start_with_origins();
    let mut watcher = Peer::connect(server.addr);
    let mut leaving = Peer::connect(server.addr);
    let closed = Peer::connect(server.addr);
    let (leaving_conn, closed_conn) = (leaving.conn.clone(), closed.conn.clone());
    leaving
        .ws
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        }))
        .expect("send close");
    assert_eq!(leaving.ws.recv(REPLY_TIMEOUT), Recv::Close(Some(4001)));
    watcher.call(json!({"op": "close", "conn": closed_conn}));

    let mut closes: Vec<String> = Vec::new();
    wait_until(REPLY_TIMEOUT, "two on_close calls", || {
        closes = strings(&watcher.call(json!({"op": "closes"}))["closes"]);
        closes.len() == 2
    });
    let mut want = vec![
        format!("{leaving_conn} 4001 bye"),
        format!("{closed_conn} -"),
    ];
    want.sort();
    assert_eq!(closes, want);
}
