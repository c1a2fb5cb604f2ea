//! A worker that stops reading (SIGSTOP) while 10,000 broadcasts flow cannot
//! make the others grow without bound; after SIGCONT everyone is served again
//! (or, where a worker's backlog was dropped, told so with a 1013 close).

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WORKERS: usize = 4;
const STOPPED: usize = 3;
const BROADCASTS: u64 = 10_000;
const BATCH: u64 = 250;
const PAYLOAD: u64 = 8 * 1024;
const BUS_PEER_BUFFER: u64 = 1 << 20;
const MAX_OUTPUT: u64 = 256 * 1024;
/// Allocator slack and everything else a worker may legitimately grow by.
const SLACK: u64 = 24 << 20;

/// Reads and discards pushes until one starts with "after", or the server
/// closes with 1013 (its worker missed records: `on_gap`); counts that in
/// `done` and returns the peer (`None` if closed) and how many pushes it read.
fn drain(mut peer: Peer, done: Arc<AtomicUsize>) -> JoinHandle<(Option<Peer>, u64)> {
    std::thread::spawn(move || {
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match peer.ws.recv(Duration::from_millis(50)) {
                Recv::Text(m) if m.starts_with("after") => {
                    done.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Recv::Text(_) => n += 1,
                Recv::Timeout => {}
                Recv::Close(Some(1013)) => {
                    done.fetch_add(1, Ordering::SeqCst);
                    return (None, n);
                }
                other => panic!("{}: waiting for a push, got {other:?}", peer.conn),
            }
        }
        (Some(peer), n)
    })
}

#[test]
fn sigstopped_worker_keeps_the_others_bounded_then_recovers() {
    let toml = format!(
        "[server]\nbus_peer_buffer_bytes = {BUS_PEER_BUFFER}\nmax_output_bytes = {MAX_OUTPUT}\n\
         output_overflow = \"drop\"\n"
    );
    let server = start_testbed(WORKERS, Some(&toml));
    let mut peers = connect_peers(server.addr, 40);
    let by: Vec<Vec<usize>> = spread(&peers, WORKERS).into_values().collect();
    let flooder_idx = by[0][0];
    let stopped_pid = peers[by[STOPPED][0]].pid;
    let running: Vec<i32> = by
        .iter()
        .enumerate()
        .filter(|(w, _)| *w != STOPPED)
        .map(|(_, on_w)| peers[on_w[0]].pid)
        .collect();
    let local_conns = by.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let truth = Truth::of(&peers);
    converge(
        &mut peers,
        &[by[0][0], by[1][0], by[2][0], by[3][0]],
        &truth,
        Duration::from_secs(2),
    );

    // Everyone but the flooder drains in the background.
    let mut flooder = peers.remove(flooder_idx);
    let done = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = peers.into_iter().map(|p| drain(p, done.clone())).collect();

    // Warm up allocators with the stopped worker still running, then take
    // the baseline.
    let flood = |f: &mut Peer, tag: &str, n: u64| {
        let id = f.send_cmd(json!({"op": "flood", "n": n, "size": PAYLOAD, "tag": tag}));
        f.reply(id)
    };
    for _ in 0..4 {
        flood(&mut flooder, "warm", BATCH);
    }
    let baseline: Vec<u64> = running
        .iter()
        .map(|&p| rss_bytes(p).expect("rss"))
        .collect();

    kill(Pid::from_raw(stopped_pid), Signal::SIGSTOP).expect("SIGSTOP");
    wait_until(Duration::from_secs(2), "the worker is stopped", || {
        proc_state(stopped_pid) == Some('T')
    });

    let mut peak = baseline.clone();
    let started = Instant::now();
    for k in 0..BROADCASTS / BATCH {
        flood(&mut flooder, &format!("b{k}"), BATCH);
        for (i, &p) in running.iter().enumerate() {
            peak[i] = peak[i].max(rss_bytes(p).expect("a running worker died"));
        }
    }
    let flow_time = started.elapsed();
    let allowed = (WORKERS as u64 - 1) * BUS_PEER_BUFFER + local_conns * MAX_OUTPUT + SLACK;
    let growth: Vec<u64> = peak
        .iter()
        .zip(&baseline)
        .map(|(p, b)| p.saturating_sub(*b))
        .collect();
    let total = BROADCASTS * PAYLOAD;
    eprintln!(
        "{BROADCASTS} broadcasts of {PAYLOAD} B in {flow_time:?}; RSS growth of running workers: {:?} KiB \
         (allowed {} KiB; unbounded queueing would be about {} KiB); flooder's dropped_sends: {}",
        growth.iter().map(|g| g / 1024).collect::<Vec<_>>(),
        allowed / 1024,
        total / 1024,
        flooder.stats()["dropped_sends"]
    );
    for (i, g) in growth.iter().enumerate() {
        assert!(
            *g <= allowed,
            "worker pid {} grew by {} KiB while worker {STOPPED} was stopped (allowed {} KiB)",
            running[i],
            g / 1024,
            allowed / 1024
        );
    }

    kill(Pid::from_raw(stopped_pid), Signal::SIGCONT).expect("SIGCONT");
    wait_until(Duration::from_secs(2), "the worker runs again", || {
        proc_state(stopped_pid).is_some_and(|s| s != 'T')
    });

    // Everyone gets service again. Under the drop policy a message may be
    // dropped while the old backlog drains, so broadcast "after-N" until
    // every reader has seen one (or was closed with 1013).
    let readers_n = readers.len();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::SeqCst) < readers_n {
        assert!(
            Instant::now() < deadline,
            "only {} of {readers_n} clients got a broadcast within 20 s of SIGCONT",
            done.load(Ordering::SeqCst)
        );
        flooder.call(
            json!({"op": "send_to_all", "data": format!("after-{n}"), "exclude": [flooder.conn]}),
        );
        n += 1;
        let probe = Instant::now();
        wait_until(Duration::from_secs(1), "a round trip", || {
            done.load(Ordering::SeqCst) == readers_n
                || probe.elapsed() >= Duration::from_millis(100)
        });
    }
    let mut peers: Vec<Peer> = readers
        .into_iter()
        .filter_map(|r| r.join().expect("reader thread").0)
        .collect();
    eprintln!(
        "{} of {readers_n} clients were closed with 1013 (their worker missed records)",
        readers_n - peers.len()
    );
    for p in peers.iter_mut() {
        let me = p.call(json!({"op": "whoami"}));
        assert_eq!(me["conn"], json!(p.conn), "{} answers", p.conn);
    }
    assert_eq!(server.workers().len(), WORKERS, "no worker died");
    let mut all = vec![flooder];
    all.extend(peers);
    let reps: Vec<usize> = by_worker(&all).values().map(|v| v[0]).collect();
    let truth = Truth::of(&all);
    converge(&mut all, &reps, &truth, Duration::from_secs(5));
}
