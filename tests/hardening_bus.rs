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
    // 6 MiB through a 1 MiB buffer: the stalled worker's backlog is dropped
    // several times over.
    const BROADCASTS: u64 = 6_000;
    const BATCH: u64 = 500;
    const SIZE: u64 = 1024;
    let toml = format!(
        "[server]\nbus_peer_buffer_bytes = {BUS_PEER_BUFFER}\nmax_output_bytes = {}\n",
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
