//! `Handler::busy`: a stopping worker with no connections keeps its loop (and
//! timers) running while its handler says it is busy, and `stop_timeout`
//! still bounds the wait. Through the `testbed` example's `--busy-on-stop`.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// What the testbed prints when its pretend background work is done.
const DONE: &str = "testbed: worker 0 busy work done";

fn start_busy(busy_ms: u64, stop_timeout_ms: u64) -> Server {
    let busy = busy_ms.to_string();
    let toml = format!("[server]\nstop_timeout_ms = {stop_timeout_ms}\n");
    Server::start_ws("testbed", 1, &["--busy-on-stop", &busy], Some(&toml))
}

/// Stops the server with SIGTERM; returns how long the master took to exit
/// and everything it printed (up to its last line).
#[track_caller]
fn stop(server: &mut Server) -> (Duration, String) {
    let start = Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the master exits");
    let took = start.elapsed();
    assert!(status.success(), "the master's exit: {status:?}");
    // The pipes are read by threads: wait for the master's last word.
    wait_until(REPLY_TIMEOUT, "the master's last log line", || {
        let out = server.output();
        out.contains("all workers stopped") || out.contains("did not stop in time")
    });
    (took, server.output())
}

/// The index of the first line containing `needle`.
#[track_caller]
fn line_of(out: &str, needle: &str) -> usize {
    out.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

#[test]
fn a_stopping_worker_runs_until_its_handler_is_not_busy() {
    const BUSY_MS: u64 = 700;
    let mut server = start_busy(BUSY_MS, 20_000);
    let pid = server.wait_workers(1, REPLY_TIMEOUT)[0];
    // A client came and went: the stopping worker has no connections.
    Peer::connect(server.addr).close();

    let (took, out) = stop(&mut server);
    let done = line_of(&out, DONE);
    let exited = line_of(&out, &format!("worker 0 (pid {pid}) exited: Exited("));
    assert!(
        done < exited,
        "the worker exits after its busy work is done:\n{out}"
    );
    assert!(
        took >= Duration::from_millis(BUSY_MS),
        "the master exited after {took:?}, before the {BUSY_MS} ms of busy work"
    );
    assert!(!out.contains("did not stop in time"), "{out}");
}

#[test]
fn stop_timeout_bounds_a_busy_worker() {
    const STOP_MS: u64 = 2_000;
    // The worker's own deadline: `stop_timeout` less 200 ms for the exit.
    const WORKER_MS: u64 = STOP_MS - 200;
    let mut server = start_busy(600_000, STOP_MS);
    let pid = server.wait_workers(1, REPLY_TIMEOUT)[0];

    let (took, out) = stop(&mut server);
    assert!(
        took >= Duration::from_millis(WORKER_MS),
        "the master exited after {took:?}: the busy worker should run until its deadline"
    );
    // It ended its loop itself, before the master's deadline: not killed.
    line_of(&out, &format!("worker 0 (pid {pid}) exited: Exited("));
    assert!(!out.contains("did not stop in time"), "{out}");
    assert!(
        !out.contains(DONE),
        "the busy work cannot have finished:\n{out}"
    );
}
