//! The bus under pressure: a stalled worker's clients never silently miss
//! what the others sent them, a send too big for a bus record is refused at
//! its source, a snapshot bigger than the per-peer buffer still gets through,
//! and a small open-files limit leaves room for the bus links.

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The smallest per-peer bus buffer the config allows.
const BUS_PEER_BUFFER: u64 = 1 << 20;

/// SIGSTOPs a worker and waits until it is stopped.
#[track_caller]
fn stop(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
    wait_until(Duration::from_secs(5), "the worker is stopped", || {
        proc_state(pid) == Some('T')
    });
}

/// SIGCONTs a worker and waits until it runs again.
#[track_caller]
fn resume(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT");
    wait_until(Duration::from_secs(5), "the worker runs again", || {
        proc_state(pid).is_some_and(|s| s != 'T')
    });
}

/// How one client's stream of numbered broadcasts went.
#[derive(Debug)]
struct Received {
    /// The sequence numbers, in arrival order.
    seqs: Vec<u64>,
    /// The close code, if the server closed it; `None` if the end marker came.
    closed: Option<Option<u16>>,
}

impl Received {
    /// The first place the numbers are not 0, 1, 2, ...
    fn first_break(&self) -> Option<(usize, u64)> {
        self.seqs
            .iter()
            .enumerate()
            .find(|(i, s)| **s != *i as u64)
            .map(|(i, s)| (i, *s))
    }
}

/// Reads `tag:N:...` pushes in a thread until `end` arrives or the server
/// closes; the sequence number of `bK:I` is `K * batch + I`.
fn collect(mut peer: Peer, batch: u64, end: &'static str) -> JoinHandle<Received> {
    std::thread::spawn(move || {
        let mut seqs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match peer.ws.recv_until(deadline) {
                Recv::Text(t) if t == end => return Received { seqs, closed: None },
                Recv::Text(t) => {
                    let mut parts = t.splitn(3, ':');
                    let k: u64 = parts
                        .next()
                        .and_then(|p| p.strip_prefix('b'))
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_else(|| panic!("{}: unexpected push {t:.40}", peer.conn));
                    let i: u64 = parts
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_else(|| panic!("{}: unexpected push {t:.40}", peer.conn));
                    seqs.push(k * batch + i);
                }
                Recv::Close(code) => {
                    return Received {
                        seqs,
                        closed: Some(code),
                    }
                }
                other => panic!(
                    "{}: after {} pushes: {other:?} (no close frame)",
                    peer.conn,
                    seqs.len()
                ),
            }
        }
    })
}

#[test]
fn a_stalled_workers_clients_get_every_broadcast_in_order_or_a_1013_close() {
    // The case: 68,000 broadcasts of 1 KiB (66 MiB) through a 1 MiB
    // buffer, so the stalled worker's backlog is dropped many times over.
    const BROADCASTS: u64 = 68_000;
    const BATCH: u64 = 500;
    const SIZE: u64 = 1024;
    let toml = format!(
        "[server]\nbus_peer_buffer_bytes = {BUS_PEER_BUFFER}\nmax_output_bytes = {}\n\
         handler_timeout_ms = 0\n",
        256 << 20
    );
    let server = start_testbed(2, Some(&toml));
    let (mut flooder, neighbour, stranger) = neighbour_and_stranger(&server);
    let stalled = stranger.pid;
    let local = collect(neighbour, BATCH, "end");
    let remote = collect(stranger, BATCH, "end");

    stop(stalled);
    let started = Instant::now();
    for k in 0..BROADCASTS / BATCH {
        flooder.call(json!({"op": "flood", "n": BATCH, "size": SIZE, "tag": format!("b{k}")}));
    }
    flooder.call(json!({"op": "send_to_all", "data": "end", "exclude": [flooder.conn]}));
    let flood_time = started.elapsed();
    resume(stalled);

    let local = local.join().expect("local reader");
    let remote = remote.join().expect("remote reader");
    eprintln!(
        "{BROADCASTS} broadcasts of {SIZE} B in {flood_time:?}; the stalled worker's client got {} of {BROADCASTS} broadcasts (first break: {:?}), then {}; \
         its neighbour's got {}",
        remote.seqs.len(),
        remote.first_break(),
        match remote.closed {
            None => "the end marker".to_string(),
            Some(code) => format!("a close {code:?}"),
        },
        local.seqs.len(),
    );
    assert_eq!(local.closed, None, "the flooder's neighbour was closed");
    assert_eq!(
        local.seqs.len() as u64,
        BROADCASTS,
        "the neighbour lost some"
    );
    assert_eq!(
        local.first_break(),
        None,
        "the neighbour's are out of order"
    );
    assert_eq!(
        remote.first_break(),
        None,
        "the stalled worker's client got a gap or disorder"
    );
    match remote.closed {
        None => assert_eq!(remote.seqs.len() as u64, BROADCASTS),
        Some(code) => assert_eq!(code, Some(1013), "closed, but not with 1013"),
    }
    // The stalled worker serves new clients again.
    let mut again = poll_until(REPLY_TIMEOUT, "a client on the stalled worker", || {
        let p = Peer::connect(server.addr);
        (p.pid == stalled).then_some(p)
    });
    let me = again.call(json!({"op": "whoami"}));
    assert_eq!(me["pid"], json!(stalled));
}

#[test]
fn a_send_too_large_for_a_bus_record_is_refused_and_the_bus_stays_up() {
    let server = start_testbed(2, None);
    let (mut sender, mut neighbour, mut stranger) = neighbour_and_stranger(&server);
    // 1 GiB: with its framing and target, over the largest record a worker
    // accepts. Refused before it is copied, so it costs no memory.
    let reply = sender.call(json!({"op": "huge", "size": 1u64 << 30}));
    assert_eq!(reply["ok"], json!(false), "{reply}");
    sender.call(json!({"op": "send_to_all", "data": "after", "exclude": [sender.conn]}));
    assert_eq!(neighbour.expect_push(), "after");
    assert_eq!(stranger.expect_push(), "after", "the other worker's client");
    assert_eq!(server.workers().len(), 2, "no worker died");
}

#[test]
fn a_snapshot_larger_than_the_peer_buffer_reaches_a_restarted_worker() {
    const GROUPS: usize = 10_000;
    let toml = format!(
        "[server]\nbus_peer_buffer_bytes = {BUS_PEER_BUFFER}\nmax_message_bytes = {}\n\
         max_frame_bytes = {}\n",
        8 << 20,
        8 << 20
    );
    let server = start_testbed(2, Some(&toml));
    let (mut owner, _neighbour, stranger) = neighbour_and_stranger(&server);
    // About 1.2 MiB of Join records in the owner's worker's snapshot.
    let names: Vec<String> = (0..GROUPS)
        .map(|i| format!("group-{i:05}-{}", "g".repeat(100)))
        .collect();
    let cmds: Vec<_> = names
        .iter()
        .map(|g| json!({"op": "join", "group": g}))
        .collect();
    owner.call(json!({"op": "batch", "cmds": cmds}));

    // The other worker dies; its replacement gets the snapshot on a fresh link.
    let old = stranger.pid;
    kill(Pid::from_raw(old), Signal::SIGKILL).expect("SIGKILL");
    wait_until(Duration::from_secs(10), "the worker is replaced", || {
        let w = server.workers();
        w.len() == 2 && !w.contains(&old)
    });
    let replacement = *server
        .workers()
        .iter()
        .find(|&&p| p != owner.pid)
        .expect("the replacement");
    let mut there = poll_until(REPLY_TIMEOUT, "a client on the replacement", || {
        let p = Peer::connect(server.addr);
        (p.pid == replacement).then_some(p)
    });
    let mut seen = 0;
    wait_until(
        Duration::from_secs(10),
        "the replacement sees every group",
        || {
            seen = there.stats()["groups"].as_array().map_or(0, Vec::len);
            seen == GROUPS
        },
    );
    let g = there.call(json!({"op": "group", "group": names[GROUPS - 1]}));
    assert_eq!(g["conns"], json!([owner.conn]));
}

#[test]
fn a_small_open_files_limit_leaves_room_for_clients_and_the_bus() {
    const CLIENTS: usize = 50;
    let server = Server::start_under(
        &["prlimit", "--nofile=64:64"],
        "testbed",
        &[
            "--listen",
            "websocket://127.0.0.1:0",
            "--count",
            "2",
            "--reuse-port",
        ],
    );
    server.wait_workers(2, REPLY_TIMEOUT);
    // With 64 descriptors a worker takes 40 clients (one used to): 50
    // clients spread over two workers all get in.
    let mut peers = connect_peers(server.addr, CLIENTS);
    let by = spread(&peers, 2);
    eprintln!(
        "clients per worker under a 64-descriptor limit: {:?}",
        by.values().map(Vec::len).collect::<Vec<_>>()
    );
    let from = by[&0][0];
    let sender = peers[from].conn.clone();
    peers[from].call(json!({"op": "send_to_all", "data": "hello", "exclude": [sender]}));
    for (i, p) in peers.iter_mut().enumerate() {
        if i != from {
            assert_eq!(
                p.expect_push(),
                "hello",
                "{} on worker {}",
                p.conn,
                p.worker
            );
        }
    }
}
