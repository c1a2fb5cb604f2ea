//! Limits that push back on clients: `max_connections` per worker (the next
//! client waits in the backlog until one leaves) and `max_output_bytes` per
//! connection under both overflow policies, with `on_buffer_full` and
//! `on_buffer_drain`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::time::Duration;
use tungstenite::protocol::{Role, WebSocket};

/// Bytes of output a connection may queue.
const CAP: u64 = 64 * 1024;
/// One flooded message.
const MSG: u64 = 4 * 1024;
/// Messages per `flood_to` command: half the cap, so a client that reads
/// never reaches it, and one that does not reaches it after the kernel's
/// socket buffers are full.
const BATCH: u64 = 8;
/// More than any loopback socket buffers hold; past it the test gives up.
const MAX_VOLUME: u64 = 64 << 20;

fn start_testbed_with(policy: &str) -> Server {
    let toml = format!("[server]\nmax_output_bytes = {CAP}\noutput_overflow = \"{policy}\"\n");
    Server::start_ws("testbed", 1, &[], Some(&toml))
}

fn flood_to(flooder: &mut Peer, to: &str, tag: &str) -> (u64, u64) {
    let r = flooder.call(json!({"op": "flood_to", "to": to, "n": BATCH, "size": MSG, "tag": tag}));
    (
        r["sent"].as_u64().expect("sent"),
        r["refused"].as_u64().expect("refused"),
    )
}

/// Reads `n` flooded messages and checks they are `tag:0..n` in order.
#[track_caller]
fn read_batch(peer: &mut Peer, tag: &str, n: u64) {
    for i in 0..n {
        let m = peer.expect_push();
        let want = format!("{tag}:{i}:");
        assert!(
            m.starts_with(&want),
            "{}: expected {want}.., got {:.40}",
            peer.conn,
            m
        );
    }
}

/// Floods `victim` (which does not read) and `reader` (which does) batch by
/// batch until a send to the victim is refused. Returns the victim's accepted
/// messages as (tag, count) per batch, and the refused count.
fn flood_until_refused(
    flooder: &mut Peer,
    victim: &str,
    reader: &mut Peer,
) -> (Vec<(String, u64)>, u64) {
    let mut accepted = Vec::new();
    let mut volume = 0;
    for k in 0.. {
        assert!(
            volume < MAX_VOLUME,
            "{volume} bytes flooded and the victim's sends were never refused"
        );
        let tag = format!("v{k}");
        let (sent, refused) = flood_to(flooder, victim, &tag);
        volume += BATCH * MSG;
        accepted.push((tag, sent));
        let reader_conn = reader.conn.clone();
        let rtag = format!("r{k}");
        assert_eq!(
            flood_to(flooder, &reader_conn, &rtag),
            (BATCH, 0),
            "the reader's batch {k}"
        );
        read_batch(reader, &rtag, BATCH);
        if refused > 0 {
            return (accepted, refused);
        }
    }
    unreachable!()
}

#[track_caller]
fn strings_of(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn a_client_that_stops_reading_is_closed_1008_under_the_close_policy() {
    let server = start_testbed_with("close");
    let mut flooder = Peer::connect(server.addr);
    let mut victim = Peer::connect(server.addr);
    let mut reader = Peer::connect(server.addr);
    let victim_conn = victim.conn.clone();

    let (accepted, refused) = flood_until_refused(&mut flooder, &victim_conn, &mut reader);
    assert!(refused > 0);

    // on_error named the overflow, for the victim only.
    let errors = strings_of(&flooder.call(json!({"op": "errors"}))["errors"]);
    assert!(
        errors.iter().any(
            |e| e.starts_with(&format!("{victim_conn}: output buffer overflow"))
                && e.contains(&format!("limit {CAP}"))
        ),
        "on_error reports the overflow of {victim_conn}: {errors:?}"
    );
    assert_eq!(errors.len(), 1, "nothing else was reported: {errors:?}");
    let stats = flooder.stats();
    assert!(
        !strings(&stats["connections"]).contains(&victim_conn),
        "the victim is no longer online: {stats}"
    );
    assert_eq!(
        stats["dropped_sends"],
        json!(0),
        "nothing is dropped under close"
    );

    // The victim reads again: every accepted message, in order, then 1008.
    for (tag, n) in &accepted {
        for i in 0..*n {
            match victim.ws.recv(REPLY_TIMEOUT) {
                Recv::Text(t) => assert!(
                    t.starts_with(&format!("{tag}:{i}:")),
                    "expected {tag}:{i}, got {:.40}",
                    t
                ),
                other => panic!("the victim expected {tag}:{i}, got {other:?}"),
            }
        }
    }
    assert_eq!(victim.ws.recv(REPLY_TIMEOUT), Recv::Close(Some(1008)));

    // The reader, flooded as much, was never closed.
    let me = reader.call(json!({"op": "whoami"}));
    assert_eq!(me["conn"], json!(reader.conn));
}

#[test]
fn a_client_that_stops_reading_misses_counted_sends_under_the_drop_policy() {
    let server = start_testbed_with("drop");
    let mut flooder = Peer::connect(server.addr);
    let mut victim = Peer::connect(server.addr);
    let mut reader = Peer::connect(server.addr);
    let victim_conn = victim.conn.clone();

    let (accepted, mut refused) = flood_until_refused(&mut flooder, &victim_conn, &mut reader);
    // A second batch while it is still full: all of it dropped.
    let (sent, more) = flood_to(&mut flooder, &victim_conn, "late");
    assert_eq!((sent, more), (0, BATCH), "a full queue takes nothing");
    refused += more;

    let stats = flooder.stats();
    assert_eq!(
        stats["dropped_sends"],
        json!(refused),
        "every refused send is counted: {stats}"
    );
    assert!(
        strings(&stats["connections"]).contains(&victim_conn),
        "the victim stays online: {stats}"
    );
    let events = strings_of(&flooder.call(json!({"op": "buffer_events"}))["events"]);
    assert_eq!(
        events,
        vec![format!("{victim_conn} full")],
        "on_buffer_full, once"
    );
    assert_eq!(
        flooder.call(json!({"op": "errors"}))["count"],
        json!(0),
        "no error under drop"
    );

    // The victim reads again: what was accepted arrives in order; then the
    // queue is empty and on_buffer_drain fires.
    for (tag, n) in &accepted {
        for i in 0..*n {
            let m = victim.expect_push();
            assert!(
                m.starts_with(&format!("{tag}:{i}:")),
                "expected {tag}:{i}, got {m:.40}"
            );
        }
    }
    wait_until(REPLY_TIMEOUT, "on_buffer_drain for the victim", || {
        strings_of(&flooder.call(json!({"op": "buffer_events"}))["events"]).len() == 2
    });
    let events = strings_of(&flooder.call(json!({"op": "buffer_events"}))["events"]);
    assert_eq!(
        events,
        vec![
            format!("{victim_conn} full"),
            format!("{victim_conn} drain")
        ]
    );
    let me = victim.call(json!({"op": "whoami"}));
    assert_eq!(me["conn"], json!(victim_conn), "the victim is served again");
    assert_eq!(
        victim.push(Duration::ZERO),
        None,
        "nothing of the dropped sends arrives"
    );
    let stats = flooder.stats();
    assert_eq!(stats["buffer_full"], json!(1));
    assert_eq!(stats["buffer_drain"], json!(1));
}

/// An upgrade request written on a raw socket.
fn upgrade_request() -> &'static [u8] {
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
}

/// Closes a client from its side and waits for the server's answer.
#[track_caller]
fn close_client(mut c: Ws) {
    c.ws.close(None).expect("send close");
    match c.recv(REPLY_TIMEOUT) {
        Recv::Close(_) | Recv::Gone(_) => {}
        other => panic!("expected the server to answer our close, got {other:?}"),
    }
}

/// The extra client is connected (in the backlog) but no worker holds it, and
/// it has no answer, after a round trip of a served client proved the worker
/// had its turn.
#[track_caller]
fn assert_waiting(
    server: &Server,
    workers: &[i32],
    served: &mut Ws,
    extra: &mut std::net::TcpStream,
) {
    served.send_text("turn");
    assert_eq!(served.recv_text(REPLY_TIMEOUT), "turn");
    let port = extra.local_addr().expect("local addr").port();
    assert!(
        !conn_owners(server.port(), workers).contains_key(&port),
        "the worker accepted a connection past max_connections"
    );
    extra
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match extra.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the waiting client got {other:?}"),
    }
}

#[test]
fn max_connections_holds_the_next_client_in_the_backlog_until_one_leaves() {
    const MAX: usize = 3;
    let toml = format!("[server]\nmax_connections = {MAX}\n");
    let server = Server::start_ws("echo", 1, &[], Some(&toml));
    let workers = server.wait_workers(1, REPLY_TIMEOUT);
    let mut clients = connect_many(server.addr, "/", MAX);
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_text(&format!("c{i}"));
        assert_eq!(c.recv_text(REPLY_TIMEOUT), format!("c{i}"));
    }

    // Client MAX + 1: the TCP connect succeeds, the handshake waits.
    let mut extra = tcp_connect(server.addr, REPLY_TIMEOUT);
    extra.write_all(upgrade_request()).expect("write");
    assert_waiting(&server, &workers, &mut clients[1], &mut extra);

    // One leaves: the waiting client is answered and served.
    close_client(clients.remove(0));
    let status = read_status_line(&mut extra);
    assert!(status.starts_with("HTTP/1.1 101"), "{status:?}");
    extra
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    let mut ws = Ws {
        ws: WebSocket::from_raw_socket(extra, Role::Client, None),
    };
    ws.send_text("finally");
    assert_eq!(ws.recv_text(REPLY_TIMEOUT), "finally");

    // At the cap again: the next one waits again.
    let mut another = tcp_connect(server.addr, REPLY_TIMEOUT);
    another.write_all(upgrade_request()).expect("write");
    assert_waiting(&server, &workers, &mut ws, &mut another);
}
