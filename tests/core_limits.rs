//! Limits at the edge: a request head over 16 KiB gets 431, a frame or message
//! over the configured maximum (1 MiB by default) gets close 1009. Each limit
//! is shown next to a request just under it that is served.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

fn start_echo() -> Server {
    Server::start_ws("echo", 2, &[], None)
}

/// Writes `bytes` and ignores a write that fails because the server already
/// answered and closed.
fn write_best_effort(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}

fn head_with_filler(path: &str, filler: usize, terminated: bool) -> Vec<u8> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ").into_bytes();
    head.resize(head.len() + filler, b'a');
    head.extend_from_slice(b"\r\n");
    if terminated {
        head.extend_from_slice(b"\r\n");
    }
    head
}

#[test]
fn request_head_over_16_kib_gets_431() {
    let server = start_echo();

    // Just under the cap: a plain request is answered by the HTTP hook.
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    s.write_all(&head_with_filler("/no-such-page", 15 * 1024, true))
        .expect("write");
    let status = read_status_line(&mut s);
    assert!(
        status.starts_with("HTTP/1.1 ") && !status.contains(" 431"),
        "a 15 KiB head is served, got {status:?}"
    );

    // Over the cap, complete.
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    write_best_effort(&mut s, &head_with_filler("/", 17 * 1024, true));
    let status = read_status_line(&mut s);
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "a 17 KiB head: got {status:?}"
    );

    // Over the cap and never ending: answered without waiting for the end.
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    write_best_effort(&mut s, &head_with_filler("/", 32 * 1024, false));
    let status = read_status_line(&mut s);
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "an unterminated 32 KiB head: got {status:?}"
    );
}

#[test]
fn websocket_upgrade_with_a_15_kib_head_is_accepted() {
    let server = start_echo();
    let mut request = server.ws_url("/").into_client_request().expect("request");
    let filler = HeaderValue::from_str(&"c".repeat(15 * 1024)).expect("header");
    request.headers_mut().insert("x-filler", filler);
    let stream = tcp_connect(server.addr, REPLY_TIMEOUT);
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    let (ws, _) = tungstenite::client(request, stream).expect("upgrade with a 15 KiB head");
    let mut ws = Ws { ws };
    ws.send_text("big head, small message");
    assert_eq!(ws.recv_text(REPLY_TIMEOUT), "big head, small message");
}

/// A client-to-server frame header (masked with a zero key, which leaves the
/// payload as is).
fn frame_header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut h = vec![(u8::from(fin) << 7) | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Writes raw frames from a second thread (the server may stop reading and
/// close before all of it is written) while this thread waits for the close.
#[track_caller]
fn expect_close_after_raw(frames: Vec<u8>, server: &Server) -> Recv {
    let mut ws = Ws::connect(server.addr, "/");
    ws.send_text("warm-up");
    assert_eq!(ws.recv_text(REPLY_TIMEOUT), "warm-up");
    let mut writer = ws.ws.get_ref().try_clone().expect("clone stream");
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&frames);
    });
    let got = ws.recv(REPLY_TIMEOUT);
    t.join().expect("writer thread");
    got
}

#[test]
fn frame_over_the_limit_gets_close_1009() {
    let server = start_echo();

    // Just under the 1 MiB default: echoed.
    let mut ws = Ws::connect(server.addr, "/");
    let under = vec![7u8; 1024 * 1024 - 64];
    ws.send_binary(under.clone());
    assert_eq!(
        ws.recv(REPLY_TIMEOUT),
        Recv::Binary(under),
        "a frame under 1 MiB is echoed"
    );

    // A single 2 MiB frame.
    let len = 2 * 1024 * 1024;
    let mut frame = frame_header(true, 0x2, len);
    frame.resize(frame.len() + len, 0);
    assert_eq!(
        expect_close_after_raw(frame, &server),
        Recv::Close(Some(1009)),
        "2 MiB frame"
    );
}

#[test]
fn message_over_the_limit_in_small_fragments_gets_close_1009() {
    let server = start_echo();
    // 2 MiB as four 512 KiB fragments: each frame is under the frame limit,
    // the message is not.
    let part = 512 * 1024;
    let mut frames = Vec::new();
    for i in 0..4 {
        let opcode = if i == 0 { 0x2 } else { 0x0 };
        frames.extend(frame_header(i == 3, opcode, part));
        frames.resize(frames.len() + part, b'm');
    }
    assert_eq!(
        expect_close_after_raw(frames, &server),
        Recv::Close(Some(1009)),
        "2 MiB message in fragments"
    );
}

#[test]
fn incomplete_head_is_dropped_after_the_handshake_timeout() {
    let server = Server::start_ws(
        "echo",
        1,
        &[],
        Some("[server]\nhandshake_timeout_ms = 300\n"),
    );
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    // Whatever the server says (a 408 or nothing), it ends the connection.
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection was not dropped within 5 s: {e}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "dropped before the timeout: {:?}",
        started.elapsed()
    );
}
