//! A stuck worker never closes healthy clients: with worker 0 stopped
//! (SIGSTOP) while its database writer holds SQLite's write lock, a user on
//! worker 1 is answered `busy` (and stays connected) until the master
//! replaces worker 0 after `handler_timeout_ms`, which frees the lock; from
//! then on every message is acked and delivered.

mod chat_util;
mod common;

use chat_util::{temp_dir, ChatServer, Client, Event};
use common::{proc_state, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The server's handler timeout and the chat's SQLite busy timeout.
const HANDLER_TIMEOUT_MS: u64 = 5000;
const BUSY_TIMEOUT_MS: u64 = 2000;
/// Messages the user on the healthy worker sends, one per `tick`.
const MESSAGES: usize = 12;

/// Whether another connection holds the database's write lock: a
/// `BEGIN IMMEDIATE` that may not wait fails with SQLITE_BUSY.
fn write_lock_held(db: &Path) -> bool {
    let probe = rusqlite::Connection::open(db).expect("open the database");
    probe.busy_timeout(Duration::ZERO).expect("busy timeout");
    match probe.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => {
            probe.execute_batch("ROLLBACK").expect("rollback");
            false
        }
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => true,
        Err(e) => panic!("probing the lock: {e}"),
    }
}

/// Whether every thread of `pid` is stopped.
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        let tid: i32 = t.file_name().to_string_lossy().parse().unwrap_or(0);
        proc_state(tid) == Some('T')
    })
}

/// Stops worker `pid` (whose client `flooder` keeps its writer busy) at a
/// moment its writer is inside a transaction: SIGSTOP, and if the lock is
/// not held, SIGCONT, let the writer finish one more message, and again.
fn stop_holding_the_write_lock(pid: i32, flooder: &mut Client, db: &Path) -> usize {
    let signal = |sig| kill(Pid::from_raw(pid), sig).expect("signal worker 0");
    let mut outstanding = 0usize;
    let deadline = Instant::now() + chat_util::WAIT;
    for attempt in 1.. {
        assert!(
            Instant::now() < deadline,
            "worker 0 never stopped while holding the write lock ({attempt} tries)"
        );
        if outstanding == 0 {
            for i in 0..1000 {
                flooder.send(json!({"type": "say", "room": "flood", "text": format!("f{i}")}));
            }
            outstanding = 1000;
        }
        // The writer makes progress: one more ack.
        loop {
            let v = flooder.recv();
            if v["type"] == "ack" {
                outstanding -= 1;
                break;
            }
        }
        signal(Signal::SIGSTOP);
        wait_until(chat_util::WAIT, "every thread of worker 0 stopped", || {
            all_threads_stopped(pid)
        });
        if write_lock_held(db) {
            return attempt;
        }
        signal(Signal::SIGCONT);
    }
    unreachable!()
}

/// What the user on the healthy worker got for one message.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Ack(i64),
    Busy,
}

#[test]
fn a_worker_stopped_holding_the_write_lock_makes_others_busy_never_closed_until_replaced() {
    let dir = temp_dir("stuck");
    let extra = format!(
        "[server]\nhandler_timeout_ms = {HANDLER_TIMEOUT_MS}\npid_file = \"{}\"\n\
         [chat]\ntick_interval_ms = 1000\n[history]\nbusy_timeout_ms = {BUSY_TIMEOUT_MS}\n",
        dir.join("chat.pid").display()
    );
    let mut server = ChatServer::start_in(&dir, 2, &extra);
    let db = server.dir.join("chat.db");
    let stuck = server.worker_pid(0).expect("worker 0");
    let mut al = Client::login_on(&server, "al", 0);
    al.join("flood");
    let mut bo = Client::login_on(&server, "bo", 1);
    bo.join("r");
    let mut cy = Client::login_on(&server, "cy", 1);
    cy.join("r");

    let tries = stop_holding_the_write_lock(stuck, &mut al, &db);
    let t0 = Instant::now();
    eprintln!("worker 0 (pid {stuck}) stopped holding the write lock (try {tries})");

    // bo sends one message per tick and notes every answer; cy notes what
    // is delivered.
    let mut sent_at: Vec<Duration> = Vec::new();
    let mut answers: BTreeMap<usize, Vec<(Duration, Answer)>> = BTreeMap::new();
    let mut delivered: BTreeMap<i64, String> = BTreeMap::new();
    let mut replaced: Option<Duration> = None;
    let mut closed = None;
    let deadline = t0 + Duration::from_secs(40);
    while Instant::now() < deadline {
        let done = sent_at.len() == MESSAGES
            && answers.len() == MESSAGES
            && replaced.is_some()
            && answers.values().flatten().all(|(_, a)| match a {
                Answer::Ack(id) => delivered.contains_key(id),
                Answer::Busy => true,
            });
        if done {
            break;
        }
        if replaced.is_none() && server.worker_pid(0).is_some_and(|p| p != stuck) {
            replaced = Some(t0.elapsed());
            eprintln!("{:5.1}s  worker 0 replaced", t0.elapsed().as_secs_f64());
        }
        match bo.next_event(Duration::from_millis(100)) {
            Event::Frame(v) if v["type"] == "tick" => {
                if sent_at.len() < MESSAGES {
                    let k = sent_at.len();
                    let say = json!({"type": "say", "room": "r", "text": format!("m{k}"), "ref": format!("m{k}")});
                    bo.send(say);
                    sent_at.push(t0.elapsed());
                    eprintln!("{:5.1}s  bo sends m{k}", t0.elapsed().as_secs_f64());
                }
            }
            Event::Frame(v) if v["type"] == "ack" || v["type"] == "error" => {
                let r = v["ref"].as_str().unwrap_or_default();
                let k: usize = r.trim_start_matches('m').parse().expect("a ref of ours");
                let answer = match v["type"].as_str() {
                    Some("ack") => Answer::Ack(v["id"].as_i64().expect("id")),
                    _ if v["code"] == "busy" => Answer::Busy,
                    _ => panic!("bo got {v}"),
                };
                eprintln!(
                    "{:5.1}s  bo gets {answer:?} for m{k}",
                    t0.elapsed().as_secs_f64()
                );
                answers.entry(k).or_default().push((t0.elapsed(), answer));
            }
            Event::Frame(_) | Event::Timeout => {}
            Event::Closed(code) => {
                eprintln!("{:5.1}s  bo closed: {code:?}", t0.elapsed().as_secs_f64());
                closed = Some(code);
                break;
            }
        }
        while let Event::Frame(v) = cy.next_event(Duration::ZERO) {
            if v["type"] == "message" && v["from"] == "bo" {
                let id = v["id"].as_i64().expect("id");
                let text = v["text"].as_str().expect("text").to_string();
                assert!(delivered.insert(id, text).is_none(), "{v} delivered twice");
            }
        }
    }

    assert_eq!(closed, None, "bo, on the healthy worker, was closed");
    let replaced = replaced.expect("worker 0 replaced within 40 s");
    assert!(
        server.log().contains("has not come back to its event loop"),
        "the master logs why it killed worker 0"
    );
    assert_eq!(sent_at.len(), MESSAGES, "bo sent every message");
    for (k, at) in sent_at.iter().enumerate() {
        let got = answers.get(&k).cloned().unwrap_or_default();
        assert_eq!(got.len(), 1, "m{k}: one answer each, got {got:?}");
        if *at > replaced {
            assert!(
                matches!(got[0].1, Answer::Ack(_)),
                "m{k}, sent {at:?} after the replacement ({replaced:?}), got {got:?}"
            );
        }
        if let Answer::Ack(id) = got[0].1 {
            assert_eq!(delivered.get(&id), Some(&format!("m{k}")), "m{k} delivered");
        }
    }
    assert!(
        sent_at.iter().any(|at| *at > replaced),
        "some message went after the replacement"
    );

    // The replacement serves, and has everything acked in history.
    let mut di = Client::login_on(&server, "di", 0);
    let joined = di.join("r");
    let history: Vec<i64> = joined["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|m| m["id"].as_i64())
        .collect();
    for id in delivered.keys() {
        assert!(history.contains(id), "message {id} is in history");
    }
    // `status` counts the kill.
    let config = dir.join("chat.toml");
    let (ok, out, err) = chat_util::run_chat(&["status", "-c", config.to_str().expect("path")]);
    assert!(ok, "status: {out}{err}");
    assert!(
        out.contains("stuck workers killed 1 (1 + 0)"),
        "status: {out}"
    );
}
