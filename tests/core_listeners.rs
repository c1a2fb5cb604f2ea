//! More listeners than one (`also_listen`): a server on `websocket://` that
//! also listens on `text://` serves both, each connection in its own
//! protocol, and a broadcast from one reaches the other's clients, on
//! every worker. And one listening socket shared by the workers hands new
//! connections to the worker that holds fewer, without ever waiting for a
//! stuck one.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The address of the master's `also listening on text://ADDR` line.
fn also_addr(server: &Server) -> SocketAddr {
    poll_until(REPLY_TIMEOUT, "an `also listening on` line", || {
        server.output().lines().find_map(|l| {
            let url = l.split("also listening on ").nth(1)?;
            url.trim().strip_prefix("text://")?.parse().ok()
        })
    })
}

#[test]
fn a_text_listener_beside_websocket_shares_broadcasts_both_ways() {
    let toml = "[server]\nalso_listen = [\"text://127.0.0.1:0\"]\n";
    let server = Server::start_ws("broadcast", 2, &[], Some(toml));
    server.wait_workers(2, REPLY_TIMEOUT);
    let text_addr = also_addr(&server);
    assert_ne!(text_addr.port(), server.addr.port());

    // Enough text clients that both workers hold some.
    let mut texts: Vec<BufReader<TcpStream>> = (0..8)
        .map(|_| {
            let s = tcp_connect(text_addr, REPLY_TIMEOUT);
            s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
            BufReader::new(s)
        })
        .collect();
    let mut ws = connect_many(server.addr, "/", 4);
    // Every client is open once a broadcast from the last one reaches all.
    ws[3].send_text("ready");
    for t in texts.iter_mut() {
        let mut line = String::new();
        t.read_line(&mut line).expect("text client reads");
        assert_eq!(
            line, "ready\n",
            "a text client gets a WebSocket client's message as a line"
        );
    }
    for w in ws.iter_mut() {
        assert_eq!(w.recv_text(REPLY_TIMEOUT), "ready");
    }

    texts[0].get_mut().write_all(b"from text\n").expect("write");
    for w in ws.iter_mut() {
        assert_eq!(
            w.recv_text(REPLY_TIMEOUT),
            "from text",
            "a WebSocket client gets a text client's line as a message"
        );
    }
    for t in texts.iter_mut() {
        let mut line = String::new();
        t.read_line(&mut line).expect("text client reads");
        assert_eq!(line, "from text\n");
    }
}

#[test]
fn a_listener_on_a_taken_address_stops_start_up_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let toml = format!("[server]\nalso_listen = [\"text://{addr}\"]\n");
    let config = TempFile::new("toml", &toml);
    let out = run_to_exit(
        std::process::Command::new(example("broadcast")).args([
            "-c".as_ref(),
            config.path.as_os_str(),
            "--listen".as_ref(),
            "websocket://127.0.0.1:0".as_ref(),
        ]),
        REPLY_TIMEOUT,
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.status.success(), "started on a taken address: {text}");
    assert!(text.contains(&addr.to_string()), "{text}");
}

/// Whether `pid`'s main thread sleeps in `nanosleep` (testbed's `block`).
fn sleeping(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("nanosleep"))
}

/// Connections each of `workers` holds on the server's port, once they add
/// up to `total` (closes in flight are done).
#[track_caller]
fn held_by(server: &Server, workers: &[i32], total: usize) -> Vec<usize> {
    poll_until(REPLY_TIMEOUT, &format!("{total} connections held"), || {
        let owners = conn_owners(server.addr.port(), workers);
        let held: Vec<usize> = workers
            .iter()
            .map(|w| owners.values().filter(|o| *o == w).count())
            .collect();
        (held.iter().sum::<usize>() == total).then_some(held)
    })
}

#[test]
fn a_shared_listener_evens_out_the_workers_and_never_waits_for_a_stuck_one() {
    // One shared socket (no --reuse-port); the master leaves a blocked
    // worker alone.
    let toml = "[server]\nhandler_timeout_ms = 0\nbalance_accept = true\n";
    let server = Server::start_ws("testbed", 2, &[], Some(toml));
    server.wait_workers(2, REPLY_TIMEOUT);
    let (first, neighbour, mut stuck) = neighbour_and_stranger(&server);
    let workers = [first.pid, stuck.pid];
    let mut peers = vec![first, neighbour];

    // One worker blocks in its handler: clients that come meanwhile are all
    // served by the other, at once, while the blocked one still sleeps.
    let block = stuck.send_cmd(serde_json::json!({"op": "block", "ms": 5_000}));
    wait_until(REPLY_TIMEOUT, "the worker to block", || sleeping(stuck.pid));
    for _ in 0..30 {
        let p = Peer::connect(server.addr);
        assert_eq!(
            p.pid, workers[0],
            "{}: served by the worker that answers",
            p.conn
        );
        peers.push(p);
    }
    assert!(
        sleeping(stuck.pid),
        "30 clients were served while the other worker was blocked (or the machine took 5 s)"
    );
    let held = held_by(&server, &workers, 33);
    assert_eq!(held, [32, 1]);

    // Back from its handler, the emptier worker takes new clients until the
    // two hold about as many (within 8 plus a thirty-second).
    stuck.reply_within(block, Duration::from_secs(15));
    for _ in 0..40 {
        peers.push(Peer::connect(server.addr));
    }
    let held = held_by(&server, &workers, 73);
    let (most, least) = (held[0].max(held[1]), held[0].min(held[1]));
    assert!(
        most - least <= 8 + least / 32 + 1,
        "connections per worker: {held:?}, not evened out"
    );
    drop(stuck);
}
