//! `text://` and `frame://` framing over plain TCP, with messages split across
//! writes and several messages coalesced into one write, against `echo`.
//!
//! text://  : a message is a line ending in "\n"; a trailing "\r" is stripped;
//!            a send appends "\n".
//! frame:// : be32(4 + len) ++ payload: the length counts its own 4 bytes, as
//!            in Workerman.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a partial message must stay unanswered: the server has read the
/// piece by then (loopback), so an answer would be a premature delivery.
const QUIET: Duration = Duration::from_millis(40);

fn start(scheme: &str) -> Server {
    let listen = format!("{scheme}://127.0.0.1:0");
    Server::start("echo", &["--listen", &listen, "--count", "2"])
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Reads exactly `n` bytes within the reply timeout.
#[track_caller]
fn read_exact_within(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut got = vec![0u8; n];
    let mut have = 0;
    while have < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "got {have} of {n} bytes: {:?}",
            String::from_utf8_lossy(&got[..have])
        );
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut got[have..]) {
            Ok(0) => panic!("connection closed after {have} of {n} bytes"),
            Ok(k) => have += k,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

/// Asserts that nothing arrives for [`QUIET`].
#[track_caller]
fn assert_quiet(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(QUIET)).expect("timeout");
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("{what}: the server closed the connection"),
        Ok(n) => panic!(
            "{what}: premature reply {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Sends `wire` in two writes split at `at`, checking that the first piece
/// alone gets no answer, then expects `reply`.
#[track_caller]
fn split_round_trip(s: &mut TcpStream, wire: &[u8], at: usize, reply: &[u8]) {
    s.write_all(&wire[..at]).expect("write first piece");
    assert_quiet(s, &format!("after the first {at} of {} bytes", wire.len()));
    s.write_all(&wire[at..]).expect("write rest");
    assert_eq!(read_exact_within(s, reply.len()), reply, "split at {at}");
}

#[test]
fn text_lines_split_across_writes() {
    let server = start("text");
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    let line = b"hello, split world\r\n";
    for at in [1, 5, line.len() - 2, line.len() - 1] {
        split_round_trip(&mut s, line, at, b"hello, split world\n");
    }
}

#[test]
fn text_lines_coalesced_into_one_write() {
    let server = start("text");
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    // Three whole lines (one with "\r\n") and the start of a fourth.
    s.write_all(b"one\ntwo\r\nthree\nfou").expect("write");
    assert_eq!(read_exact_within(&mut s, 14), b"one\ntwo\nthree\n");
    assert_quiet(&mut s, "the unfinished fourth line");
    s.write_all(b"r\nfive\n").expect("write");
    assert_eq!(read_exact_within(&mut s, 10), b"four\nfive\n");

    // Many lines in one write, echoed in order.
    let many: String = (0..500).map(|i| format!("line {i}\n")).collect();
    s.write_all(many.as_bytes()).expect("write");
    assert_eq!(read_exact_within(&mut s, many.len()), many.as_bytes());
}

#[test]
fn frames_split_across_writes() {
    let server = start("frame");
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    let payload: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
    let wire = frame(&payload);
    // Inside the length header, right after it, and inside the payload.
    for at in [1, 2, 3, 4, 5, 150, wire.len() - 1] {
        split_round_trip(&mut s, &wire, at, &wire);
    }
    // A payload of 200 KiB, most likely read in many pieces.
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let wire = frame(&big);
    s.write_all(&wire).expect("write");
    assert_eq!(read_exact_within(&mut s, wire.len()), wire, "200 KiB frame");
}

#[test]
fn frames_coalesced_into_one_write() {
    let server = start("frame");
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    let payloads: [&[u8]; 4] = [
        b"first",
        b"second\nwith newline",
        &[0, 1, 2, 0, 255],
        b"fourth",
    ];
    let mut wire = Vec::new();
    for p in &payloads[..3] {
        wire.extend(frame(p));
    }
    let fourth = frame(payloads[3]);
    wire.extend_from_slice(&fourth[..6]);
    s.write_all(&wire).expect("write");
    let expected: Vec<u8> = payloads[..3].iter().flat_map(|p| frame(p)).collect();
    assert_eq!(read_exact_within(&mut s, expected.len()), expected);
    assert_quiet(&mut s, "the unfinished fourth frame");
    s.write_all(&fourth[6..]).expect("write");
    assert_eq!(read_exact_within(&mut s, fourth.len()), fourth);
}
