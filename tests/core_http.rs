//! Plain HTTP on the WebSocket port: the default 404, HEAD, a POST body that
//! reaches `on_http_request`, the body cap (413), chunked bodies, a
//! malformed request line (400), an upgrade with the wrong WebSocket version
//! (426), and an upgrade on a path other than `websocket_path` (plain HTTP).

mod common;

use common::*;
use std::time::Duration;

fn start(name: &str, toml: &str) -> Server {
    Server::start_ws(name, 1, &[], Some(toml))
}

/// A request head; `extra` lines end with `\r\n` each.
fn head(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n").into_bytes()
}

fn upgrade_head(path: &str, version: &str) -> Vec<u8> {
    head(
        "GET",
        path,
        &format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n"
        ),
    )
}

#[test]
fn unknown_path_on_echo_is_404_and_head_has_no_body() {
    let server = start("echo", "");
    let get = http_exchange(server.addr, &[&head("GET", "/nothing-here", "")]);
    assert_eq!(get.status, 404, "{get:?}");
    assert_eq!(get.body_text(), "404 Not Found\n");
    assert_eq!(get.header("Content-Length"), Some("14"), "{get:?}");
    assert_eq!(get.header("Connection"), Some("keep-alive"), "{get:?}");

    let close = "Connection: close\r\n";
    let head_reply = http_exchange(server.addr, &[&head("HEAD", "/nothing-here", close)]);
    assert_eq!(head_reply.status, 404, "{head_reply:?}");
    assert_eq!(
        head_reply.header("Content-Length"),
        get.header("Content-Length"),
        "HEAD announces the GET body's length"
    );
    assert!(
        head_reply.body.is_empty(),
        "HEAD has no body: {:?}",
        head_reply.body_text()
    );
}

#[test]
fn post_body_reaches_on_http_request_up_to_the_cap() {
    let limit = 1000;
    let server = start(
        "testbed",
        &format!("[server]\nmax_http_body_bytes = {limit}\n"),
    );

    // The head and the body in three writes: the body is gathered first.
    let body: Vec<u8> = (0..limit).map(|i| b'a' + (i % 26) as u8).collect();
    let h = head("POST", "/echo", &format!("Content-Length: {limit}\r\n"));
    let reply = http_exchange(server.addr, &[&h, &body[..10], &body[10..]]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("X-Method"), Some("POST"));
    assert_eq!(reply.body, body, "the body comes back whole");

    // The same request in one write, with the rest of the route's answer.
    let mut whole = h.clone();
    whole.extend_from_slice(&body);
    let reply = http_exchange(server.addr, &[&whole]);
    assert_eq!(reply.header("X-Body-Length"), Some("1000"), "{reply:?}");

    // One byte over the cap: refused before the body is read.
    let over = head(
        "POST",
        "/echo",
        &format!("Content-Length: {}\r\n", limit + 1),
    );
    let reply = http_exchange(server.addr, &[&over]);
    assert_eq!(reply.status, 413, "{reply:?}");

    // A chunked body is decoded.
    let chunked = head("POST", "/echo", "Transfer-Encoding: chunked\r\n");
    let reply = http_exchange(server.addr, &[&chunked, b"5\r\nhello\r\n0\r\n\r\n"]);
    assert_eq!(
        (reply.status, reply.body_text()),
        (200, "hello".into()),
        "{reply:?}"
    );

    // Another path of the same server: the handler's fallback 404.
    let reply = http_exchange(
        server.addr,
        &[&head("POST", "/other", "Content-Length: 0\r\n")],
    );
    assert_eq!(reply.status, 404, "{reply:?}");
}

#[test]
fn malformed_request_line_is_400() {
    let server = start("echo", "");
    for bad in [
        &b"NOT A REQUEST\r\n\r\n"[..],
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
    ] {
        let reply = http_exchange(server.addr, &[bad]);
        assert_eq!(
            reply.status,
            400,
            "{:?}: {reply:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A good request to the same server still gets its 404.
    let reply = http_exchange(server.addr, &[&head("GET", "/", "")]);
    assert_eq!(reply.status, 404, "{reply:?}");
}

#[test]
fn upgrade_with_websocket_version_8_is_426_naming_13() {
    let server = start("echo", "");
    let reply = http_exchange(server.addr, &[&upgrade_head("/", "8")]);
    assert_eq!(reply.status, 426, "{reply:?}");
    assert_eq!(
        reply.header("Sec-WebSocket-Version"),
        Some("13"),
        "{reply:?}"
    );
    // Version 13 on the same server is switched.
    let mut s = tcp_connect(server.addr, REPLY_TIMEOUT);
    std::io::Write::write_all(&mut s, &upgrade_head("/", "13")).expect("write");
    let status = read_status_line(&mut s);
    assert!(status.starts_with("HTTP/1.1 101"), "{status:?}");
}

#[test]
fn upgrade_outside_websocket_path_is_plain_http() {
    let server = start("echo", "[server]\nwebsocket_path = \"/ws\"\n");
    let reply = http_exchange(server.addr, &[&upgrade_head("/elsewhere", "13")]);
    assert_eq!(reply.status, 404, "{reply:?}");

    // On the configured path (with a query) it is a WebSocket.
    let mut ws = Ws::connect(server.addr, "/ws?x=1");
    ws.send_text("on the path");
    assert_eq!(ws.recv_text(REPLY_TIMEOUT), "on the path");
    let err = Ws::try_connect(server.addr, "/", Duration::from_secs(5))
        .err()
        .unwrap_or_default();
    assert!(err.contains("404"), "an upgrade on / is refused: {err:?}");
}
