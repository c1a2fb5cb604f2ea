//! WebSocket hardening, seen from clients: control replies (pongs) count
//! against `max_output_bytes` like every other byte queued for a
//! connection.

mod common;

use common::*;
use serde_json::{json, Value};
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
    let server = start_capped("close");
    let mut watcher = Peer::connect(server.addr);
    let baseline = rss_bytes(watcher.pid).expect("worker RSS");
    let mut stream = small_window_client(server.addr, 4096);
    let flooder = other_conn(&mut watcher);

    let started = Instant::now();
    let flood = flood_pings(&mut stream, 1_500_000, watcher.pid);
    eprintln!("flood took {:?}", started.elapsed());
    let bound = baseline + CAP + SLACK;
    assert!(
        flood.peak_rss < bound,
        "worker RSS reached {} MiB during the flood (baseline {} MiB, bound {} MiB)",
        flood.peak_rss >> 20,
        baseline >> 20,
        bound >> 20
    );

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
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    let mut ws = Ws {
        ws: WebSocket::from_raw_socket(stream, Role::Client, None),
    };
    match ws.recv(REPLY_TIMEOUT) {
        Recv::Close(code) => assert_eq!(code, Some(1008)),
        Recv::Gone(why) => assert!(
            flood.cut.is_some() || why.contains("reset") || why.contains("closed"),
            "the connection ended without a close frame: {why}"
        ),
        other => panic!("expected the close or the end of the connection, got {other:?}"),
    }
    let after = rss_bytes(watcher.pid).expect("worker RSS");
    assert!(
        after < bound,
        "worker RSS {} MiB after the flood",
        after >> 20
    );
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
    let server = start_capped("drop");
    let mut watcher = Peer::connect(server.addr);
    let baseline = rss_bytes(watcher.pid).expect("worker RSS");
    let mut stream = small_window_client(server.addr, 4096);
    let flooder = other_conn(&mut watcher);

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
    let bound = baseline + CAP + SLACK;
    let peak = flood.peak_rss.max(rss_bytes(watcher.pid).expect("RSS"));
    assert!(
        peak < bound,
        "worker RSS reached {} MiB (baseline {} MiB, bound {} MiB)",
        peak >> 20,
        baseline >> 20,
        bound >> 20
    );
    let stats = watcher.stats();
    assert!(
        strings(&stats["connections"]).contains(&flooder),
        "the flooder stays online: {stats}"
    );
    assert!(errors(&mut watcher).is_empty(), "no error under drop");

    // It reads again: pongs, then the answer to its close.
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    let mut ws = Ws {
        ws: WebSocket::from_raw_socket(stream, Role::Client, None),
    };
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
