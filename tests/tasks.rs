//! The task scheduler (`examples/tasks`) from outside, with two workers,
//! as `shared/tasks-protocol.md` says. Executors here are raw protocol
//! clients, so that every push and lease can be watched; the real
//! executor (`task_worker`) runs in `tasks_load.rs`.
//!
//! | rule | test |
//! |---|---|
//! | every error code, the check order, frame lengths, ping, ref | `errors_and_their_order` |
//! | auth: a token signed for the name; auth_failed closes | `auth_failed_closes_after_the_error` |
//! | priority, then FIFO; delays; capacity 1 | `priority_then_fifo_and_never_before_the_delay` |
//! | balance over 3 executors; capacity never exceeded | `three_executors_share_by_capacity` |
//! | retry with backoff then success; dead with finished to a watcher | `retries_then_success_and_retries_exhausted_then_dead` |
//! | lease expiry; extend; not_leased after | `a_lease_expires_without_extend_and_is_handed_out_again` |
//! | executor lost with 10 leases: all 10 run elsewhere at once | `ten_leases_of_a_lost_executor_run_elsewhere_at_once` |
//! | unique, cancel rules, stats, retention | `unique_cancel_stats_and_retention` |
//! | crash: 300 jobs, workers and master SIGKILLed | `jobs_survive_sigkill_of_every_process` |
//! | the page at `/`, text snapshots and the protocol on `/live` | `the_page_is_served_and_its_socket_streams_text_snapshots` |

mod common;
mod tasks_util;

use common::jwt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tasks_util::{kill9, Client, Tasks};

fn code(c: &mut Client, req: Value) -> String {
    let r = c.request(req);
    assert_eq!(r["type"], "error", "{r}");
    r["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn errors_and_their_order() {
    let t = Tasks::start("errors", 2, "max_payload_bytes = 1000", "");
    let mut c = Client::connect(t.addr());
    // Before hello: ping works, anything else is not_hello.
    assert_eq!(c.request(json!({"type": "ping"}))["type"], "pong");
    assert_eq!(
        code(&mut c, json!({"type": "status", "job": "1"})),
        "not_hello"
    );
    assert_eq!(code(&mut c, json!({"type": "nope"})), "unknown_type");
    assert_eq!(code(&mut c, json!({"queue": "q"})), "unknown_type");
    // JSON, then ref (answered without ref).
    c.send_payload(b"");
    let e = c.recv();
    assert_eq!((e["code"].as_str(), e.get("ref")), (Some("bad_json"), None));
    c.send_payload(b"[1,2]");
    assert_eq!(c.recv()["code"], "bad_json");
    c.send(&json!({"type": "ping", "ref": "x".repeat(65)}));
    let e = c.recv();
    assert_eq!(
        (e["code"].as_str(), e.get("ref")),
        (Some("bad_request"), None)
    );
    assert_eq!(
        code(
            &mut c,
            json!({"type": "hello", "role": "boss", "name": "a"})
        ),
        "bad_request"
    );
    assert_eq!(
        c.request(json!({"type": "hello", "role": "submitter", "name": "a"}))["type"],
        "welcome"
    );
    assert_eq!(
        code(
            &mut c,
            json!({"type": "hello", "role": "submitter", "name": "a"})
        ),
        "bad_request"
    );
    assert_eq!(
        code(&mut c, json!({"type": "done", "job": "1"})),
        "wrong_role"
    );
    assert_eq!(
        code(
            &mut c,
            json!({"type": "submit", "queue": "q/1", "payload": 1})
        ),
        "bad_queue"
    );
    assert_eq!(
        code(
            &mut c,
            json!({"type": "submit", "queue": "q", "payload": 1, "priority": 5.5})
        ),
        "bad_request"
    );
    assert_eq!(
        code(
            &mut c,
            json!({"type": "submit", "queue": "q", "payload": 1, "priority": 10})
        ),
        "bad_request"
    );
    assert_eq!(
        code(
            &mut c,
            json!({"type": "submit", "queue": "q", "payload": "x".repeat(1000)})
        ),
        "too_large"
    );
    assert_eq!(
        code(&mut c, json!({"type": "status", "job": "999"})),
        "not_found"
    );
    assert_eq!(
        code(&mut c, json!({"type": "watch", "job": "abc"})),
        "not_found"
    );
    assert_eq!(
        code(&mut c, json!({"type": "cancel", "job": "999"})),
        "not_found"
    );
    // A request answered with an error changed nothing.
    let s = c.request(json!({"type": "stats", "queue": "q"}));
    assert_eq!(
        s["counts"],
        json!({"scheduled":0,"queued":0,"leased":0,"retry":0,"succeeded":0,"dead":0,"cancelled":0})
    );

    let mut e = Client::executor(t.addr(), &["q"], 1);
    assert_eq!(
        code(
            &mut e,
            json!({"type": "submit", "queue": "q", "payload": 1})
        ),
        "wrong_role"
    );
    assert_eq!(
        code(&mut e, json!({"type": "extend", "job": "1"})),
        "not_leased"
    );
    assert_eq!(
        code(&mut e, json!({"type": "done", "job": "1"})),
        "not_leased"
    );
    assert_eq!(
        code(&mut e, json!({"type": "fail", "job": "1", "retry": "no"})),
        "bad_request"
    );
    let big = "x".repeat(1000);
    assert_eq!(
        code(&mut e, json!({"type": "done", "job": "1", "result": big})),
        "too_large"
    );

    // Frame lengths below 4, or above 4 + max_frame_bytes, close at once
    // without an error frame.
    let mut short = Client::connect(t.addr());
    short.send_raw(&3u32.to_be_bytes());
    assert!(short.closed(), "a length of 3 closes");
    assert!(short.seen.is_empty());
    let mut long = Client::connect(t.addr());
    long.send_raw(&(4 + 2_097_152u32 + 1).to_be_bytes());
    assert!(long.closed(), "a length past max_frame_bytes closes");
}

#[test]
fn auth_failed_closes_after_the_error() {
    let t = Tasks::start("auth", 2, "", "[auth]\nsecret = \"s3cret\"");
    let mut c = Client::connect(t.addr());
    c.send(&json!({"type": "hello", "role": "submitter", "name": "alice", "ref": "h"}));
    let e = c.recv();
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("auth_failed"), Some("h"))
    );
    assert!(c.closed());
    let mut c = Client::connect(t.addr());
    let wrong = jwt::token("s3cret", "bob", jwt::now_secs() + 3600);
    c.send(&json!({"type": "hello", "role": "submitter", "name": "alice", "token": wrong}));
    assert_eq!(c.recv()["code"], "auth_failed", "a token for another name");
    let mut c = Client::connect(t.addr());
    let good = jwt::token("s3cret", "alice", jwt::now_secs() + 3600);
    c.send(&json!({"type": "hello", "role": "submitter", "name": "alice", "token": good}));
    assert_eq!(c.recv()["type"], "welcome");
}

#[test]
fn priority_then_fifo_and_never_before_the_delay() {
    let t = Tasks::start("order", 2, "", "");
    let mut s = Client::submitter(t.addr());
    let low1 = s.submit("q", json!(1), json!({"priority": 1}));
    let high = s.submit("q", json!(2), json!({"priority": 9}));
    let low2 = s.submit("q", json!(3), json!({"priority": 1}));
    let mid = s.submit("q", json!(4), json!({}));
    // Taken before the submit is sent, so the server's delay starts after
    // it. The scheduler counts whole wall-clock milliseconds, so a delay
    // may end up to 1 ms before the exact instant: that is its granularity,
    // not an early push.
    let submitted = Instant::now();
    let later = s.submit("q", json!(5), json!({"priority": 9, "delay_ms": 1500}));
    assert_eq!(s.status(&later)["state"], "scheduled");
    let mut e = Client::executor(t.addr(), &["q"], 1);
    let mut order = Vec::new();
    for _ in 0..5 {
        let j = e.next_job();
        let id = j["job"].as_str().unwrap().to_string();
        if id == later {
            assert!(
                submitted.elapsed() >= Duration::from_millis(1499),
                "pushed before its delay"
            );
        }
        assert_eq!(
            e.request(json!({"type": "done", "job": id}))["state"],
            "succeeded"
        );
        order.push(id);
    }
    assert_eq!(order, vec![high, mid, low1, low2, later]);
}

#[test]
fn three_executors_share_by_capacity() {
    let t = Tasks::start("balance", 2, "", "");
    let mut e: Vec<Client> = [1, 2, 4]
        .iter()
        .map(|&cap| Client::executor(t.addr(), &["q"], cap))
        .collect();
    let mut s = Client::submitter(t.addr());
    for i in 0..7 {
        s.submit("q", json!(i), json!({}));
    }
    // Each gets exactly its capacity: one short waits out next_job's
    // deadline, one over shows its extra push below.
    for (c, cap) in e.iter_mut().zip([1, 2, 4]) {
        for _ in 0..cap {
            c.next_job();
        }
    }
    // One more waits: every slot is taken.
    s.submit("q", json!(8), json!({}));
    assert!(
        e.iter_mut()
            .all(|c| c.quiet_for(Duration::from_millis(300))),
        "capacity exceeded"
    );
}

#[test]
fn retries_then_success_and_retries_exhausted_then_dead() {
    let t = Tasks::start("retry", 2, "retry_base_ms = 200\nretry_max_ms = 300", "");
    let mut s = Client::submitter(t.addr());
    let mut e = Client::executor(t.addr(), &["q"], 1);
    let ok = s.submit("q", json!("ok"), json!({}));
    let mut w = Client::submitter(t.addr());
    assert_eq!(
        w.request(json!({"type": "watch", "job": ok}))["type"],
        "watching"
    );
    let j = e.next_job();
    let failed_at = Instant::now();
    assert_eq!(
        e.request(json!({"type": "fail", "job": ok, "error": "once"}))["state"],
        "retry"
    );
    assert_eq!(s.status(&ok)["state"], "retry");
    let j2 = e.next_job();
    assert!(
        failed_at.elapsed() >= Duration::from_millis(200),
        "retried before its backoff"
    );
    assert_eq!(
        (j["attempt"].as_u64(), j2["attempt"].as_u64()),
        (Some(1), Some(2))
    );
    e.request(json!({"type": "done", "job": ok, "result": {"n": 2}}));
    let f = w.recv_type("finished");
    assert_eq!(
        (f["state"].as_str(), &f["result"]),
        (Some("succeeded"), &json!({"n": 2}))
    );

    let bad = s.submit("q", json!("bad"), json!({"max_attempts": 2}));
    assert_eq!(
        w.request(json!({"type": "watch", "job": bad}))["type"],
        "watching"
    );
    for attempt in 1..=2 {
        let j = e.next_job();
        assert_eq!(j["attempt"], attempt);
        let r = e.request(json!({"type": "fail", "job": bad, "error": {"try": attempt}}));
        assert_eq!(r["state"], if attempt == 1 { "retry" } else { "dead" });
    }
    let f = w.recv_type("finished");
    assert_eq!(
        (f["state"].as_str(), &f["error"]),
        (Some("dead"), &json!({"try": 2}))
    );
    let st = s.status(&bad);
    assert_eq!(
        (st["state"].as_str(), st["attempts"].as_u64()),
        (Some("dead"), Some(2))
    );
    assert!(
        w.quiet_for(Duration::from_millis(300)),
        "one finished per watch"
    );
}

#[test]
fn a_lease_expires_without_extend_and_is_handed_out_again() {
    let t = Tasks::start("lease", 2, "", "");
    let mut s = Client::submitter(t.addr());
    let mut a = Client::executor(t.addr(), &["q"], 1);
    let id = s.submit("q", json!(1), json!({"timeout_ms": 600}));
    let j = a.next_job();
    assert_eq!(j["lease_ms"], 600);
    // Extended twice past its first deadline: still a's.
    for _ in 0..3 {
        assert_eq!(
            a.request(json!({"type": "extend", "job": id}))["type"],
            "extended"
        );
        assert!(a.quiet_for(Duration::from_millis(300)));
    }
    let mut b = Client::executor(t.addr(), &["q"], 1);
    let again = b.next_job();
    assert_eq!(
        (again["job"].as_str(), again["attempt"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    assert_eq!(
        a.request(json!({"type": "done", "job": id}))["code"],
        "not_leased"
    );
    assert_eq!(
        b.request(json!({"type": "done", "job": id}))["state"],
        "succeeded"
    );
}

#[test]
fn ten_leases_of_a_lost_executor_run_elsewhere_at_once() {
    let t = Tasks::start("lost", 2, "", "");
    let mut s = Client::submitter(t.addr());
    let mut a = Client::executor(t.addr(), &["q"], 10);
    let ids: HashSet<String> = (0..10)
        .map(|i| s.submit("q", json!(i), json!({"timeout_ms": 600000})))
        .collect();
    let held: HashSet<String> = (0..10)
        .map(|_| a.next_job()["job"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(held, ids);
    let mut b = Client::executor(t.addr(), &["q"], 10);
    assert!(b.quiet_for(Duration::from_millis(200)));
    // The leases last 600 s: only the closed connection can free them
    // within next_job's deadline.
    drop(a);
    let again: HashSet<String> = (0..10)
        .map(|_| b.next_job()["job"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(again, ids);
}

#[test]
fn unique_cancel_stats_and_retention() {
    let t = Tasks::start("unique", 2, "result_retention_ms = 500", "");
    let mut s = Client::submitter(t.addr());
    let first = s.request(
        json!({"type": "submit", "queue": "q", "payload": 1, "unique": "k", "delay_ms": 60000}),
    );
    assert_eq!(
        (first["state"].as_str(), first["duplicate"].as_bool()),
        (Some("scheduled"), Some(false))
    );
    let dup = s.request(json!({"type": "submit", "queue": "q", "payload": 2, "unique": "k"}));
    assert_eq!(
        (dup["job"].clone(), dup["duplicate"].as_bool()),
        (first["job"].clone(), Some(true))
    );
    let other = s.request(json!({"type": "submit", "queue": "r", "payload": 2, "unique": "k"}));
    assert_ne!(other["job"], first["job"], "queues do not share keys");
    let id = first["job"].as_str().unwrap().to_string();
    assert_eq!(
        s.request(json!({"type": "cancel", "job": id}))["type"],
        "cancelled"
    );
    assert_eq!(
        s.request(json!({"type": "cancel", "job": id}))["type"],
        "cancelled"
    );
    let st = s.request(json!({"type": "stats", "queue": "q"}));
    assert_eq!(st["counts"]["cancelled"], 1);
    // Leased: busy; finished: already_finished.
    let mut e = Client::executor(t.addr(), &["r"], 1);
    let leased = other["job"].as_str().unwrap().to_string();
    e.next_job();
    assert_eq!(
        code(&mut s, json!({"type": "cancel", "job": leased})),
        "busy"
    );
    e.request(json!({"type": "done", "job": leased}));
    assert_eq!(
        code(&mut s, json!({"type": "cancel", "job": leased})),
        "already_finished"
    );
    // After retention: gone, and the key is free.
    common::poll_until(common::REPLY_TIMEOUT, "the cancelled job removed", || {
        (s.status(&id)["type"] == "error").then_some(())
    });
    let again = s.request(json!({"type": "submit", "queue": "q", "payload": 3, "unique": "k"}));
    assert_eq!(again["duplicate"], false);
    assert_ne!(again["job"], first["job"], "ids are never reused");
}

#[test]
fn jobs_survive_sigkill_of_every_process() {
    let t = Tasks::start("crash", 2, "", "");
    let mut s = Client::submitter(t.addr());
    let ids: Vec<String> = (0..300)
        .map(|i| s.submit("q", json!({"i": i}), json!({})))
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 300);
    // 20 finished with results, 10 leased to an executor that holds them.
    let mut e = Client::executor(t.addr(), &["q"], 30);
    let mut results = HashMap::new();
    let mut leased = HashSet::new();
    for n in 0..30 {
        let j = e.next_job();
        let id = j["job"].as_str().unwrap().to_string();
        if n < 20 {
            let r = e.request(json!({"type": "done", "job": id, "result": {"r": id}}));
            assert_eq!(r["state"], "succeeded");
            results.insert(id, json!({"r": j["job"]}));
        } else {
            leased.insert(id);
        }
    }
    drop(e);
    let (w0, w1) = (t.worker_pid(0), t.worker_pid(1));
    kill9(w0);
    kill9(w1);
    kill9(t.server.pid());
    let t = t.restart();
    let mut s = Client::submitter(t.addr());
    let mut states: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let st = s.status(id);
        assert_eq!(st["type"], "job", "job {id} is there after the crash: {st}");
        *states
            .entry(st["state"].as_str().unwrap().to_string())
            .or_default() += 1;
        if let Some(r) = results.get(id) {
            assert_eq!((&st["state"], &st["result"]), (&json!("succeeded"), r));
        }
    }
    assert_eq!(states.get("succeeded"), Some(&20), "{states:?}");
    // The leased ones (their executor is gone) run again, with the rest.
    let mut e = Client::executor(t.addr(), &["q"], 1000);
    let mut pushed = HashSet::new();
    for _ in 0..280 {
        let j = e.next_job();
        assert!(
            pushed.insert(j["job"].as_str().unwrap().to_string()),
            "pushed twice: {j}"
        );
    }
    assert!(leased.is_subset(&pushed));
    assert!(
        e.quiet_for(Duration::from_millis(300)),
        "nothing more than the 280 unfinished"
    );
}

/// The next snapshot on a page socket that lists job `id` (a text frame:
/// `recv_text` panics on a binary one).
fn snapshot_with(ws: &mut common::Ws, id: &str) -> Value {
    let deadline = Instant::now() + common::REPLY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m: Value = serde_json::from_str(&ws.recv_text(left)).expect("JSON");
        let listed = m["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| j["job"] == id));
        if m["type"] == "snapshot" && listed {
            return m;
        }
    }
}

#[test]
fn the_page_is_served_and_its_socket_streams_text_snapshots() {
    let t = Tasks::start("page", 2, "", "");
    let page = t.page_addr();
    let r = common::http_get(page, "/");
    assert_eq!(r.status, 200, "{}", r.status_line);
    assert!(
        r.body_text().contains("\"/live\""),
        "the page names its socket"
    );
    assert_eq!(common::http_get(page, "/nope").status, 404);
    // Several sockets, so that both workers hold some: snapshots reach
    // each through the group, across the bus too.
    let mut pages: Vec<common::Ws> = (0..4).map(|_| common::Ws::connect(page, "/live")).collect();
    let mut s = Client::submitter(t.addr());
    let id = s.submit("q", json!({"x": 1}), json!({}));
    for ws in pages.iter_mut() {
        let snap = snapshot_with(ws, &id);
        assert_eq!(snap["queues"]["q"]["queued"], 1, "{snap}");
    }
    // The page speaks the protocol itself.
    let ws = &mut pages[0];
    ws.send_text(&json!({"type": "hello", "role": "submitter", "name": "page"}).to_string());
    ws.send_text(&json!({"type": "status", "job": id, "ref": "p"}).to_string());
    let deadline = Instant::now() + common::REPLY_TIMEOUT;
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m: Value = serde_json::from_str(&ws.recv_text(left)).expect("JSON");
        if m["ref"] == "p" {
            break m;
        }
    };
    assert_eq!(
        (reply["type"].as_str(), reply["state"].as_str()),
        (Some("job"), Some("queued"))
    );
}
