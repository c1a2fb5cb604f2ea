//! Crash safety of the chat's history: what was acked survives SIGKILL of a
//! worker and of the master.

mod chat_util;
mod common;

use chat_util::{ChatServer, Client};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Reads the whole history of `room` by paging backwards: id -> text.
fn full_history(c: &mut Client, room: &str) -> BTreeMap<i64, String> {
    let mut all = BTreeMap::new();
    let mut before: Option<i64> = None;
    loop {
        let mut req = json!({"type": "history", "room": room, "limit": 100});
        if let Some(b) = before {
            req["before"] = b.into();
        }
        c.send(req);
        // Presence events of killed workers' users may come in between.
        let page = c.wait_for("history", |v| v["type"] == "history");
        let messages = page["messages"].as_array().expect("messages").clone();
        if messages.is_empty() {
            return all;
        }
        for m in &messages {
            let id = m["id"].as_i64().expect("id");
            all.insert(id, m["text"].as_str().expect("text").to_string());
        }
        before = messages.first().and_then(|m| m["id"].as_i64());
    }
}

#[test]
fn acked_messages_survive_sigkill_of_workers_and_master() {
    let mut server = ChatServer::start("crash", 2, "");
    let dir = server.dir.clone();
    // Two writers, one per worker, sending at once into one database.
    let mut al = Client::login_on(&server, "al", 0);
    let mut bo = Client::login_on(&server, "bo", 1);
    al.join("crash");
    bo.join("crash");
    for i in 0..250 {
        al.send(json!({"type": "say", "room": "crash", "text": format!("al {i}"), "ref": format!("a{i}")}));
        bo.send(json!({"type": "say", "room": "crash", "text": format!("bo {i}"), "ref": format!("b{i}")}));
    }
    let mut acked = BTreeMap::new();
    for (c, who) in [(&mut al, "al"), (&mut bo, "bo")] {
        let mut got = 0;
        while got < 250 {
            let v: Value = c.recv();
            if v["type"] == "ack" {
                let r = v["ref"].as_str().expect("ref");
                let i: usize = r[1..].parse().expect("ref number");
                acked.insert(v["id"].as_i64().expect("id"), format!("{who} {i}"));
                got += 1;
            }
        }
    }
    assert_eq!(acked.len(), 500, "500 distinct ids");

    // SIGKILL one worker, then the other; the master replaces them.
    for _ in 0..2 {
        let before = server.worker_pids();
        let victim = before[0];
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill worker");
        common::wait_until(chat_util::WAIT, "the killed worker is replaced", || {
            let now = server.worker_pids();
            now.len() == 2 && !now.contains(&victim)
        });
        server.wait_for_workers(2);
        let mut reader = Client::login(&server, "reader");
        reader.send(json!({"type": "join", "room": "crash"}));
        reader.wait_for("joined", |v| v["type"] == "joined");
        assert_eq!(
            full_history(&mut reader, "crash"),
            acked,
            "after a worker was killed"
        );
    }

    // SIGKILL the master, then start again on the same database.
    drop((al, bo));
    server.kill_master();
    server.keep_dir = true;
    drop(server);
    let server = ChatServer::start_in(&dir, 2, "");
    let mut reader = Client::login(&server, "reader");
    reader.join("crash");
    assert_eq!(
        full_history(&mut reader, "crash"),
        acked,
        "after the master was killed"
    );
    // New ids continue above the old ones.
    reader.send(json!({"type": "say", "room": "crash", "text": "after"}));
    let m = reader.wait_for("message", |v| v["type"] == "message");
    assert!(m["id"].as_i64() > acked.keys().last().copied());
}

#[test]
fn what_anyone_received_survives_a_worker_killed_mid_stream() {
    use chat_util::Event;
    use std::collections::BTreeSet;
    let mut server = ChatServer::start("midcrash", 2, "");
    let mut al = Client::login_on(&server, "al", 0);
    let mut bo = Client::login_on(&server, "bo", 1);
    al.join("crash");
    bo.join("crash");
    for i in 0..2000 {
        al.send(json!({"type": "say", "room": "crash", "text": format!("al {i}"), "ref": i.to_string()}));
    }
    // Kill al's worker while its messages are being written and delivered.
    let mut acked = BTreeSet::new();
    let first = al.wait_for("an ack", |v| v["type"] == "ack");
    acked.insert(first["id"].as_i64().expect("id"));
    let pid = server.worker_pid(0).expect("worker 0 runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill worker 0");
    loop {
        match al.next_event(chat_util::WAIT) {
            Event::Frame(v) if v["type"] == "ack" => {
                acked.insert(v["id"].as_i64().expect("id"));
            }
            Event::Frame(_) => {}
            Event::Closed(_) => break,
            Event::Timeout => panic!("al's connection outlived its worker"),
        }
    }
    // bo saw what it saw until al's leave, announced by the replacement.
    let mut received = BTreeSet::new();
    loop {
        let v = bo.recv();
        match v["type"].as_str() {
            Some("message") => {
                received.insert(v["id"].as_i64().expect("id"));
            }
            Some("presence") if v["user"] == "al" && v["event"] == "leave" => break,
            _ => {}
        }
    }
    let mut reader = Client::login(&server, "reader");
    reader.join("crash");
    let stored: BTreeSet<i64> = full_history(&mut reader, "crash").into_keys().collect();
    let lost: Vec<_> = acked
        .union(&received)
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "acked or delivered but not stored: {lost:?}"
    );
    eprintln!(
        "{} acked, {} delivered, {} stored of 2000",
        acked.len(),
        received.len(),
        stored.len()
    );
}
