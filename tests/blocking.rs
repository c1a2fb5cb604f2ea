//! The per-worker blocking pool (`Ctx::spawn_blocking`, `Handler::on_job_done`)
//! and HTTP answered later (`Response::later`, `Ctx::respond`), driven from
//! the outside through the `dialer` example's `jobs`, `results`, `panic_job`
//! and `ping` ops and its `GET /later?ms=N` route.
//!
//! What is shown: a thousand jobs all come back with their own result; the
//! worker's loop keeps answering while a long job runs; a full queue is
//! refused at once; a panicking job is reported and the pool lives on; a
//! request answered later gets its answer, or 504 when `handshake_timeout_ms`
//! passes first; a stopping worker waits for its running job and hands its
//! result to the handler before it exits.
//!
//! Nothing here sleeps to let something happen: every wait is on a condition
//! with a deadline. Where a time is asserted, it is a bound the behaviour
//! implies (a job of N ms cannot have finished before N ms).

mod common;

use common::dialer::Dialer;
use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

/// A `results` reply: `[index, value]` of the jobs done so far, the panic
/// texts, and the jobs whose results have not reached `on_job_done` yet.
#[derive(Debug)]
struct Results {
    done: Vec<(u64, u64)>,
    panics: Vec<String>,
    pending: u64,
}

impl Dialer {
    #[track_caller]
    fn results(&mut self) -> Results {
        parse_results(&self.call(json!({"op": "results"})))
    }

    /// `ping` answered with `pong`.
    #[track_caller]
    fn ping(&mut self) {
        assert_eq!(self.call(json!({"op": "ping"})), json!({"pong": true}));
    }

    /// A binary message, echoed by the control connection's handler.
    #[track_caller]
    fn echo(&mut self, n: u32) {
        let data = n.to_be_bytes().repeat(4);
        self.ws.send_binary(data.clone());
        assert_eq!(self.ws.recv(REPLY_TIMEOUT), Recv::Binary(data));
    }
}

#[track_caller]
fn parse_results(v: &Value) -> Results {
    let pair = |p: &Value| {
        let n = |i: usize| {
            p[i].as_u64()
                .unwrap_or_else(|| panic!("[index, value]: {p}"))
        };
        (n(0), n(1))
    };
    Results {
        done: v["done"]
            .as_array()
            .expect("done")
            .iter()
            .map(pair)
            .collect(),
        panics: v["panics"]
            .as_array()
            .expect("panics")
            .iter()
            .map(|p| p.as_str().expect("panic text").to_string())
            .collect(),
        pending: v["pending"].as_u64().expect("pending"),
    }
}

/// The ids of a `jobs` reply.
#[track_caller]
fn ids(reply: &Value) -> Vec<u64> {
    reply["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("ids: {reply}"))
        .iter()
        .map(|i| i.as_u64().expect("id"))
        .collect()
}

#[test]
fn thousand_short_jobs_all_come_back_with_their_own_result() {
    let mut d = Dialer::start(1, Some("[server]\nblocking_queue = 1000\n"));
    let reply = d.call(json!({"op": "jobs", "n": 1000, "ms": 1}));
    assert_eq!(reply["busy"], json!(0), "the queue holds all 1000: {reply}");
    assert_eq!(ids(&reply), (0..1000).collect::<Vec<_>>());

    let r = poll_until(Duration::from_secs(30), "1000 results", || {
        let r = d.results();
        (r.done.len() >= 1000).then_some(r)
    });
    assert_eq!(r.done.len(), 1000, "no result twice");
    assert!(r.panics.is_empty(), "{:?}", r.panics);
    assert_eq!(r.pending, 0);
    let mut done = r.done;
    done.sort();
    for (i, pair) in (0..1000u64).zip(done) {
        assert_eq!(pair, (i, 2 * i), "job {i} came back with its own result");
    }
}

#[test]
fn worker_keeps_answering_while_a_long_job_runs() {
    let mut d = Dialer::start(1, Some("[server]\nblocking_threads = 1\n"));
    let job = Duration::from_millis(2000);
    let started = Instant::now();
    let reply = d.call(json!({"op": "jobs", "n": 1, "ms": 2000}));
    assert_eq!((ids(&reply), &reply["busy"]), (vec![0], &json!(0)));

    // Each round: a `ping` and a binary echo, then `results`. Replies on one
    // connection come in order, so a `results` still pending means the ping
    // and the echo before it were answered while the job was running.
    let (mut answered_while_pending, mut slowest, mut round) = (0, Duration::ZERO, 0);
    let r = poll_until(Duration::from_secs(20), "the 2 s job's result", || {
        let t = Instant::now();
        d.ping();
        d.echo(round);
        round += 1;
        slowest = slowest.max(t.elapsed());
        let r = d.results();
        if r.done.is_empty() {
            assert_eq!(r.pending, 1, "{r:?}");
            answered_while_pending += 1;
            return None;
        }
        Some(r)
    });
    assert_eq!((r.done, r.pending), (vec![(0, 0)], 0));
    assert!(
        started.elapsed() >= job,
        "the result came after the job's 2 s"
    );
    assert!(
        answered_while_pending >= 5,
        "only {answered_while_pending} ping + echo rounds were answered while the job ran"
    );
    assert!(
        slowest < job / 2,
        "a ping + echo round took {slowest:?}: the loop waited for the job"
    );
}

#[test]
fn full_queue_is_refused_at_once() {
    let mut d = Dialer::start(
        1,
        Some("[server]\nblocking_threads = 1\nblocking_queue = 2\n"),
    );
    let job = Duration::from_millis(500);
    // `results` is sent right behind `jobs`, so it runs before any result
    // can have been handed to the handler.
    let sent = Instant::now();
    d.ws.send_text(&json!({"op": "jobs", "n": 5, "ms": 500}).to_string());
    d.ws.send_text(&json!({"op": "results"}).to_string());
    let reply: Value = serde_json::from_str(&d.ws.recv_text(REPLY_TIMEOUT)).expect("JSON");
    let took = sent.elapsed();
    let early = parse_results(&serde_json::from_str(&d.ws.recv_text(REPLY_TIMEOUT)).expect("JSON"));

    // Two places in the queue; the thread may or may not have taken the
    // first job off it before the next ones were submitted in the same
    // callback, so 2 or 3 are accepted and the rest refused.
    let accepted = ids(&reply);
    let busy = reply["busy"].as_u64().expect("busy");
    assert_eq!(accepted.len() as u64 + busy, 5, "{reply}");
    assert!(
        (2..=3).contains(&accepted.len()),
        "queue 2 + 1 thread: {reply}"
    );
    assert_eq!(accepted, (0..accepted.len() as u64).collect::<Vec<_>>());
    // A submit that waited for a place would have waited for a 500 ms job.
    assert!(
        took < job,
        "the refusal took {took:?}: a submit waited for a place"
    );
    assert!(early.done.is_empty(), "{early:?}");
    assert_eq!(early.pending, accepted.len() as u64, "{early:?}");

    // The accepted jobs still run and come back.
    let n = accepted.len();
    let r = poll_until(REPLY_TIMEOUT, "the accepted jobs' results", || {
        let r = d.results();
        (r.done.len() >= n).then_some(r)
    });
    let want: Vec<(u64, u64)> = (0..n as u64).map(|i| (i, 2 * i)).collect();
    assert_eq!((r.done, r.pending), (want, 0));
}

#[test]
fn panicking_job_is_reported_and_the_pool_keeps_working() {
    // One thread: if the panic took it down, no later job would run.
    let mut d = Dialer::start(1, Some("[server]\nblocking_threads = 1\n"));
    let reply = d.call(json!({"op": "panic_job"}));
    assert_eq!(reply["id"], json!(0), "{reply}");
    let r = poll_until(REPLY_TIMEOUT, "the panic to be reported", || {
        let r = d.results();
        (!r.panics.is_empty()).then_some(r)
    });
    assert_eq!(r.panics, ["job panicked on purpose"]);
    assert!(r.done.is_empty(), "{r:?}");
    assert_eq!(r.pending, 0);

    let reply = d.call(json!({"op": "jobs", "n": 1, "ms": 1}));
    assert_eq!((ids(&reply), &reply["busy"]), (vec![1], &json!(0)));
    let r = poll_until(REPLY_TIMEOUT, "the next job's result", || {
        let r = d.results();
        (!r.done.is_empty()).then_some(r)
    });
    assert_eq!((r.done, r.panics.len(), r.pending), (vec![(0, 0)], 1, 0));
    d.ping();
}

#[test]
fn request_answered_later_while_the_worker_serves_others() {
    let mut d = Dialer::start(1, Some(""));
    let mut later = tcp_connect(d.server.addr, REPLY_TIMEOUT);
    let request = format!(
        "GET /later?ms=300 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        d.server.addr
    );
    later.write_all(request.as_bytes()).expect("write");
    // The request is waiting once its job is in the pool.
    poll_until(REPLY_TIMEOUT, "the /later job to be submitted", || {
        (d.results().pending == 1).then_some(())
    });

    let other = http_get(d.server.addr, "/elsewhere");
    assert_eq!(other.status, 404, "{other:?}");
    d.ping();
    d.echo(7);
    let r = d.results();
    assert_eq!(
        r.pending, 1,
        "the 404, the ping and the echo were answered while /later waited: {r:?}"
    );

    let reply = read_reply(&mut later);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body_text(), "slept 300 ms");
    assert_eq!(d.results().pending, 0);
}

#[test]
fn request_not_answered_within_handshake_timeout_gets_504() {
    let server = Server::start_ws(
        "dialer",
        1,
        &[],
        Some("[server]\nhandshake_timeout_ms = 500\n"),
    );
    let (deadline, job) = (Duration::from_millis(500), Duration::from_millis(3000));
    let sent = Instant::now();
    let reply = http_get(server.addr, "/later?ms=3000");
    let took = sent.elapsed();
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(took >= deadline, "504 after {took:?}, before the deadline");
    assert!(
        took < job,
        "504 after {took:?}: the server waited for the job, not the deadline"
    );

    // The job still comes back; answering a request already answered is a
    // no-op and the worker goes on.
    let mut d = Dialer::attach(server);
    poll_until(REPLY_TIMEOUT, "the 3 s job to come back", || {
        (d.results().pending == 0).then_some(())
    });
    d.ping();
    let later = http_get(d.server.addr, "/later?ms=1");
    assert_eq!(
        (later.status, later.body_text()),
        (200, "slept 1 ms".into())
    );
}

#[test]
fn stopping_worker_waits_for_its_running_job() {
    let mut d = Dialer::start(1, Some("[server]\nstop_timeout_ms = 5000\n"));
    let job = Duration::from_millis(1500);
    let sent = Instant::now();
    let reply = d.call(json!({"op": "jobs", "n": 1, "ms": 1500}));
    assert_eq!((ids(&reply), &reply["busy"]), (vec![0], &json!(0)));
    d.server.signal(Signal::SIGTERM);
    let signalled = Instant::now();

    // The control connection is closed at once (the client answers the
    // close, as clients do): from then on only the job keeps the worker
    // running.
    assert_eq!(d.ws.expect_close(REPLY_TIMEOUT), Some(1001));
    let _ = d.ws.ws.flush();
    assert!(
        matches!(d.ws.recv(REPLY_TIMEOUT), Recv::Gone(_)),
        "the server ends the connection after the close handshake"
    );
    let status = d
        .server
        .wait_exit(Duration::from_secs(15))
        .expect("the master exits");
    let exited = Instant::now();
    assert!(status.success(), "{status:?}\n{}", d.server.output());

    // `on_job_done` prints this line on the worker's loop: the job finished
    // and its result reached the handler while the worker still ran.
    wait_until(REPLY_TIMEOUT, "the dialer's `job 0 done` line", || {
        d.server.output().contains("dialer: job 0 done")
    });
    assert!(
        exited - sent >= job,
        "exited {:?} after a {job:?} job was sent",
        exited - sent
    );
    // And it went as soon as the job was done, not at the stop deadline
    // (stop_timeout_ms less 200 ms).
    assert!(
        exited - signalled < Duration::from_millis(4500),
        "exited {:?} after SIGTERM",
        exited - signalled
    );
}
