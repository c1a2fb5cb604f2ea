//! Server-wide limits kept in the scoreboard the master shares with its
//! workers: `max_connections_per_ip` (counted over every worker, released
//! whatever ends a connection, a dead worker's share cleared) and
//! `handler_timeout_ms` (a stopped worker is killed and replaced; an idle
//! one is not).

mod common;

use common::{
    example, poll_until, read_reply, run_to_exit, spread, tcp_connect_from, Peer, Server, TempFile,
    REPLY_TIMEOUT,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A testbed (or other example) config with a pid file, so that `status`
/// can be asked; removed on drop.
struct Config {
    file: TempFile,
    pid_file: std::path::PathBuf,
}

impl Config {
    fn new(server_keys: &str) -> Config {
        static N: AtomicUsize = AtomicUsize::new(0);
        let pid_file = std::env::temp_dir().join(format!(
            "foreman-limits-{}-{}.pid",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let text = format!(
            "[server]\npid_file = \"{}\"\n{server_keys}",
            pid_file.display()
        );
        Config {
            file: TempFile::new("toml", &text),
            pid_file,
        }
    }

    fn path(&self) -> &str {
        self.file.path.to_str().expect("utf-8 path")
    }

    /// `EXAMPLE status -c CONFIG`: its `limits:` line.
    fn limits_line(&self, name: &str) -> String {
        let mut cmd = Command::new(example(name));
        cmd.args(["status", "-c", self.path()]);
        let done = run_to_exit(&mut cmd, Duration::from_secs(20));
        assert!(done.status.success(), "status: {done:?}");
        done.stdout
            .lines()
            .find(|l| l.starts_with("limits:"))
            .unwrap_or_else(|| panic!("no limits line in {}", done.stdout))
            .to_string()
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
        let _ = std::fs::remove_dir_all(format!("{}.report", self.pid_file.display()));
    }
}

/// The figure after `what` in a `limits:` line: `... what N (a + b) ...`.
fn figure(line: &str, what: &str) -> u64 {
    line.split(what)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} figure in {line:?}"))
}

/// Asks for a WebSocket upgrade from `from` and reads the whole answer.
fn upgrade_answer(from: IpAddr, addr: SocketAddr) -> common::HttpReply {
    let mut s = tcp_connect_from(from, addr, REPLY_TIMEOUT).expect("connect");
    // The answer may come (and the socket close) before the request is
    // written: a refused write is part of being refused.
    let _ = s.write_all(UPGRADE);
    read_reply(&mut s)
}

/// A testbed peer from `from`, retried while the server still counts a
/// connection that just closed; returns it and how many 503s it took.
fn peer_once_room(from: IpAddr, addr: SocketAddr) -> (Peer, u64) {
    let mut refused = 0;
    let peer =
        poll_until(
            REPLY_TIMEOUT,
            "a connection past the freed places",
            || match Peer::connect_from(from, addr) {
                Ok(p) => Some(p),
                Err(e) => {
                    assert!(e.contains("503"), "{e}");
                    refused += 1;
                    None
                }
            },
        );
    (peer, refused)
}

#[test]
fn forty_from_one_address_pass_over_both_workers_and_the_forty_first_gets_503() {
    let config = Config::new("max_connections_per_ip = 40\n");
    let server = Server::start_ws("testbed", 2, &["--reuse-port", "-c", config.path()], None);
    server.wait_workers(2, REPLY_TIMEOUT);
    let nine = local(9);
    let mut peers: Vec<Peer> = (0..40)
        .map(|i| {
            Peer::connect_from(nine, server.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    let by_worker = spread(&peers, 2);
    eprintln!(
        "40 connections from 127.0.0.9: {:?} per worker",
        by_worker.values().map(Vec::len).collect::<Vec<_>>()
    );

    let reply = upgrade_answer(nine, server.addr);
    assert_eq!(reply.status, 503, "{}", reply.status_line);
    assert!(reply.header("Retry-After").is_some(), "{:?}", reply.headers);
    let mut refused = 1;

    // Another address has its own count.
    let mut ten = Peer::connect_from(local(10), server.addr).expect("127.0.0.10 is not limited");
    assert_eq!(ten.call(json!({"op": "whoami"}))["conn"], ten.conn.as_str());

    // Five close (some on each worker, as they come); five others take
    // their places, and then the address is full again.
    for p in peers.drain(..5) {
        p.close();
    }
    for _ in 0..5 {
        let (p, waits) = peer_once_room(nine, server.addr);
        refused += waits;
        peers.push(p);
    }
    let again = upgrade_answer(nine, server.addr);
    assert_eq!(again.status, 503, "{}", again.status_line);
    refused += 1;

    let line = config.limits_line("testbed");
    assert_eq!(
        figure(&line, "refused by max_connections_per_ip"),
        refused,
        "{line}"
    );
}

#[test]
fn a_text_listener_closes_the_connection_past_the_limit_at_once() {
    let config = Config::new("max_connections_per_ip = 2\n");
    let server = Server::start(
        "echo",
        &["--listen", "text://127.0.0.1:0", "-c", config.path()],
    );
    let line_of = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
        s.write_all(b"hi\n").expect("write");
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).expect("echo");
        assert_eq!(&buf, b"hi\n");
    };
    let eleven = local(11);
    let mut open: Vec<_> = (0..2)
        .map(|_| tcp_connect_from(eleven, server.addr, REPLY_TIMEOUT).expect("connect"))
        .collect();
    for s in &mut open {
        line_of(s);
    }
    let mut third = tcp_connect_from(eleven, server.addr, REPLY_TIMEOUT).expect("connect");
    third
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    let mut buf = [0u8; 16];
    match third.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the third connection should be closed at once, got {other:?}"),
    }
    // A closed one frees its place.
    drop(open.pop());
    let mut fourth = poll_until(REPLY_TIMEOUT, "a place freed by a close", || {
        let mut s = tcp_connect_from(eleven, server.addr, REPLY_TIMEOUT).ok()?;
        s.set_read_timeout(Some(REPLY_TIMEOUT)).ok()?;
        s.write_all(b"hi\n").ok()?;
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).ok().map(|_| s)
    });
    line_of(&mut fourth);
}

#[test]
fn a_stopped_worker_is_replaced_after_handler_timeout_and_its_share_of_an_address_is_released() {
    let config = Config::new("max_connections_per_ip = 6\nhandler_timeout_ms = 2000\n");
    let server = Server::start_ws("testbed", 2, &["--reuse-port", "-c", config.path()], None);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    let twelve = local(12);
    let peers: Vec<Peer> = (0..6)
        .map(|i| {
            Peer::connect_from(twelve, server.addr)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    let stuck = peers[0].pid;
    let on_stuck = peers.iter().filter(|p| p.pid == stuck).count();
    kill(Pid::from_raw(stuck), Signal::SIGSTOP).expect("SIGSTOP");
    // The master kills it (it never answers again) and starts another.
    let now = poll_until(REPLY_TIMEOUT, "the stopped worker replaced", || {
        let now = server.workers();
        (now.len() == 2 && !now.contains(&stuck)).then_some(now)
    });
    assert!(
        workers.iter().any(|w| now.contains(w)),
        "the other worker lives on"
    );
    assert!(
        server
            .output()
            .contains("has not come back to its event loop"),
        "the master says why"
    );
    // Its connections no longer count: as many new ones pass, and no more.
    let mut fresh = Vec::new();
    for _ in 0..on_stuck {
        fresh.push(Peer::connect_from(twelve, server.addr).expect("a place of the dead worker"));
    }
    let full = upgrade_answer(twelve, server.addr);
    assert_eq!(full.status, 503, "{}", full.status_line);
    let line = config.limits_line("testbed");
    assert_eq!(figure(&line, "stuck workers killed"), 1, "{line}");
}

#[test]
fn idle_workers_are_not_taken_for_stuck() {
    let config = Config::new("handler_timeout_ms = 1000\n");
    let server = Server::start_ws("testbed", 2, &["--reuse-port", "-c", config.path()], None);
    let workers = server.wait_workers(2, REPLY_TIMEOUT);
    // One worker counts 30 ticks of 100 ms (three handler timeouts); the
    // other has no connection at all the whole time.
    let mut p = Peer::connect(server.addr);
    p.call(json!({"op": "timer", "ms": 100, "repeat": true}));
    for _ in 0..30 {
        p.expect_push();
    }
    assert_eq!(server.workers(), workers, "no worker was replaced");
    assert!(
        !server.output().contains("has not come back"),
        "{}",
        server.output()
    );
}

#[test]
fn a_tls_connection_past_the_limit_is_closed_before_its_handshake_and_handshakes_count() {
    let cert = common::cert::TestCert::new();
    let keys = cert.toml().replacen("[server]\n", "", 1) + "max_connections_per_ip = 1\n";
    let config = Config::new(&keys);
    let server = Server::start_ws("testbed", 1, &["-c", config.path()], None);
    server.wait_workers(1, REPLY_TIMEOUT);
    let thirteen = local(13);
    // Holds the only place while it sends nothing: still in its handshake.
    let _silent = tcp_connect_from(thirteen, server.addr, REPLY_TIMEOUT).expect("connect");
    let mut next = tcp_connect_from(thirteen, server.addr, REPLY_TIMEOUT).expect("connect");
    next.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    let _ = next.write_all(b"\x16\x03\x01\x00\x05hello");
    let mut buf = [0u8; 64];
    match next.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected a close before any TLS answer, got {other:?}"),
    }
}
