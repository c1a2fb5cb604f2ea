//! The chat example across workers (`count = 2`): room messages, direct
//! messages, presence, history paging and the tick, with clients placed on
//! chosen workers.

mod chat_util;
mod common;

use chat_util::{ChatServer, Client, Event};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn ids(messages: &Value) -> Vec<i64> {
    messages
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].as_i64().expect("id"))
        .collect()
}

/// What `watch` received before a marker that `marker` (a member of `room`)
/// says there now. Whatever `marker`'s worker sent `watch` before, it sent
/// before the marker, over the same path: so an empty answer means that
/// worker sent nothing else, even across the bus (a `users` round trip, as in
/// `Client::sync`, proves that only for `watch`'s own worker).
fn before_marker(watch: &mut Client, marker: &mut Client, room: &str) -> Vec<Value> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let text = format!(
        "marker {}",
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    marker.send(json!({"type": "say", "room": room, "text": text}));
    marker.wait_for("the marker's ack", |v| v["type"] == "ack");
    let mut before = Vec::new();
    loop {
        let v = watch.recv();
        if v["type"] == "message" && v["text"] == text.as_str() {
            return before;
        }
        before.push(v);
    }
}

/// `watch` on worker 0 and `mark` on worker 1, both in room `r`, with
/// `mark`'s join seen by `watch`: an observer and a source of markers for
/// [`before_marker`].
#[track_caller]
fn watch_and_mark(server: &ChatServer) -> (Client, Client) {
    let mut watch = Client::login_on(server, "watch", 0);
    watch.join("r");
    let mut mark = Client::login_on(server, "mark", 1);
    mark.join("r");
    assert_eq!(watch.expect("presence")["user"], "mark");
    (watch, mark)
}

#[test]
fn a_room_message_reaches_members_on_the_other_worker() {
    let server = ChatServer::start("cross", 2, "");
    let mut al = Client::login_on(&server, "al", 0);
    let mut bo = Client::login_on(&server, "bo", 1);
    let mut outsider = Client::login_on(&server, "cy", 1);
    al.join("r");
    bo.join("r");
    al.wait_for("bo's presence", |v| v["type"] == "presence");
    al.send(json!({"type": "say", "room": "r", "text": "hi bo", "ref": "1"}));
    let seen = bo.expect("message");
    assert_eq!(seen["from"], "al");
    assert_eq!(seen["text"], "hi bo");
    assert_eq!(seen["room"], "r");
    let mine = al.expect("message");
    assert_eq!(mine, seen);
    assert_eq!(al.expect("ack")["id"], seen["id"]);
    // And back, from worker 1 to worker 0.
    bo.send(json!({"type": "say", "room": "r", "text": "hi al"}));
    assert_eq!(al.expect("message")["text"], "hi al");
    // Once each: the next frame bo gets after its own message is its ack.
    assert_eq!(bo.expect("message")["text"], "hi al");
    bo.expect("ack");
    assert!(bo.sync().is_empty());
    assert!(al.sync().is_empty());
    assert!(outsider.sync().is_empty(), "non-members get nothing");
}

#[test]
fn a_direct_message_reaches_every_connection_of_both_users() {
    let server = ChatServer::start("dm", 2, "");
    let mut bo0 = Client::login_on(&server, "bo", 0);
    let mut bo1 = Client::login_on(&server, "bo", 1);
    let mut al0 = Client::login_on(&server, "al", 0);
    let mut al1 = Client::login_on(&server, "al", 1);
    let mut cy = Client::login(&server, "cy");
    al0.send(json!({"type": "say", "to": "bo", "text": "psst", "ref": "d"}));
    let got = bo0.expect("message");
    assert_eq!(got["from"], "al");
    assert_eq!(got["to"], "bo");
    assert_eq!(got["text"], "psst");
    assert!(got.get("room").is_none());
    assert_eq!(bo1.expect("message"), got);
    assert_eq!(al1.expect("message"), got);
    assert_eq!(al0.expect("message"), got);
    assert_eq!(al0.expect("ack")["id"], got["id"]);
    // Exactly once each: a second message is the next thing everyone sees.
    al1.send(json!({"type": "say", "to": "bo", "text": "again"}));
    for c in [&mut bo0, &mut bo1, &mut al0, &mut al1] {
        assert_eq!(c.expect("message")["text"], "again");
    }
    al1.expect("ack");
    assert!(cy.sync().is_empty(), "others get nothing");
    // A message to oneself reaches each own connection once.
    bo1.send(json!({"type": "say", "to": "bo", "text": "note to self"}));
    assert_eq!(bo0.expect("message")["text"], "note to self");
    assert_eq!(bo1.expect("message")["text"], "note to self");
    bo1.expect("ack");
    assert!(bo0.sync().is_empty());
    // Both sides read the conversation as one.
    bo0.send(json!({"type": "history", "with": "al"}));
    let h = bo0.expect("history");
    assert_eq!(h["with"], "al");
    let texts: Vec<_> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, [json!("psst"), json!("again")]);
    al0.send(json!({"type": "history", "with": "bo"}));
    assert_eq!(al0.expect("history")["messages"], h["messages"]);
}

#[test]
fn presence_on_first_join_and_last_leave_across_workers() {
    let server = ChatServer::start("presence", 2, "");
    let (mut watch, mut mark) = watch_and_mark(&server);
    let mut bo0 = Client::login_on(&server, "bo", 0);
    let mut bo1 = Client::login_on(&server, "bo", 1);

    // First connection of bo joins: one presence event, not to bo0 itself.
    let joined = bo1.join("r");
    assert_eq!(joined["users"], json!(["bo", "mark", "watch"]));
    let p = watch.expect("presence");
    assert_eq!(
        p,
        json!({"type": "presence", "room": "r", "user": "bo", "event": "join"})
    );
    // Second connection (other worker): no event.
    bo0.join("r");
    assert!(
        watch.sync().is_empty(),
        "no presence for a second connection"
    );
    assert!(bo1.sync().is_empty());
    // One of two leaves: no event.
    bo1.send(json!({"type": "leave", "room": "r"}));
    bo1.expect("left");
    assert!(before_marker(&mut watch, &mut mark, "r").is_empty());
    // The last one goes by closing its connection: a leave event.
    bo0.close();
    let p = watch.expect("presence");
    assert_eq!(
        p,
        json!({"type": "presence", "room": "r", "user": "bo", "event": "leave"})
    );

    // Explicit leave of the only connection, seen from the other worker.
    let mut cy = Client::login_on(&server, "cy", 1);
    cy.join("r");
    assert_eq!(watch.expect("presence")["event"], "join");
    cy.send(json!({"type": "leave", "room": "r", "ref": "bye"}));
    assert_eq!(cy.expect("left")["ref"], "bye");
    let p = watch.expect("presence");
    assert_eq!(
        (p["user"].as_str(), p["event"].as_str()),
        (Some("cy"), Some("leave"))
    );
}

#[test]
fn history_pages_backwards_without_gaps() {
    let server = ChatServer::start(
        "paging",
        2,
        "[chat]\ntick_interval_ms = 0\nhistory_on_join = 5\n",
    );
    let mut al = Client::login_on(&server, "al", 0);
    al.join("r");
    let mut sent = Vec::new();
    for i in 0..120 {
        al.send(json!({"type": "say", "room": "r", "text": format!("m{i}")}));
    }
    while sent.len() < 120 {
        let v = al.recv();
        if v["type"] == "ack" {
            sent.push(v["id"].as_i64().expect("id"));
        }
    }
    // A member on the other worker reads it.
    let mut bo = Client::login_on(&server, "bo", 1);
    let joined = bo.join("r");
    assert_eq!(ids(&joined["history"]), sent[115..]);
    bo.send(json!({"type": "history", "room": "r", "ref": "h"}));
    let page = bo.expect("history");
    assert_eq!(page["room"], "r");
    assert_eq!(page["ref"], "h");
    assert_eq!(
        ids(&page["messages"]),
        sent[70..],
        "default limit 50, oldest first"
    );
    assert_eq!(page["messages"][0]["text"], "m70");
    let mut collected = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut req = json!({"type": "history", "room": "r", "limit": 32});
        if let Some(b) = before {
            req["before"] = b.into();
        }
        bo.send(req);
        let page = bo.expect("history");
        let page_ids = ids(&page["messages"]);
        if page_ids.is_empty() {
            break;
        }
        assert!(page_ids.len() <= 32);
        assert!(page_ids.windows(2).all(|w| w[0] < w[1]), "oldest first");
        before = page_ids.first().copied();
        collected.splice(0..0, page_ids);
    }
    assert_eq!(collected, sent);
    bo.send(json!({"type": "history", "room": "r", "limit": 100}));
    assert_eq!(ids(&bo.expect("history")["messages"]).len(), 100);
    bo.send(json!({"type": "history", "room": "r", "before": sent[0]}));
    assert_eq!(bo.expect("history")["messages"], json!([]));
}

#[test]
fn ticks_go_to_logged_in_connections_only() {
    let server = ChatServer::start("tick", 2, "[chat]\ntick_interval_ms = 100\n");
    let mut anon0 = Client::connect(&server);
    let mut anon1 = Client::connect(&server);
    let mut al = Client::login_on(&server, "al", 0);
    let mut bo = Client::login_on(&server, "bo", 1);
    for c in [&mut al, &mut bo] {
        let deadline = Instant::now() + chat_util::WAIT;
        let mut ticks = 0;
        while ticks < 3 {
            match c.next_event(Duration::from_millis(500)) {
                Event::Frame(v) if v["type"] == "tick" => {
                    ticks += 1;
                    assert!(
                        v["time"].as_i64().is_some_and(|t| t > 1_600_000_000_000),
                        "{v}"
                    );
                    let online = v["online"].as_u64().expect("online");
                    assert!((1..=2).contains(&online), "{v}");
                }
                Event::Frame(v) => panic!("unexpected {v}"),
                _ => assert!(Instant::now() < deadline, "no ticks"),
            }
        }
    }
    // Both workers have ticked three times by now; the anonymous ones got nothing.
    for anon in [&mut anon0, &mut anon1] {
        match anon.next_event(Duration::from_millis(10)) {
            Event::Timeout => {}
            Event::Frame(v) => panic!("a connection without login got {v}"),
            Event::Closed(c) => panic!("closed {c:?}"),
        }
    }
    // online counts distinct users on the whole server.
    let _al2 = Client::login_on(&server, "al", 1);
    let v = bo.wait_for("tick with 2 online", |v| {
        v["type"] == "tick" && v["online"] == 2
    });
    assert_eq!(v["online"], 2);
}

#[test]
fn simultaneous_joins_and_leaves_of_one_user_make_one_event_each() {
    let server = ChatServer::start("race", 2, "");
    let (mut watch, mut mark) = watch_and_mark(&server);
    for round in 0..5 {
        let mut a = Client::login_on(&server, "bo", 0);
        let mut b = Client::login_on(&server, "bo", 1);
        // Both joins leave before either reply is read.
        a.send(json!({"type": "join", "room": "r"}));
        b.send(json!({"type": "join", "room": "r"}));
        a.expect("joined");
        b.expect("joined");
        let p = watch.expect("presence");
        assert_eq!(p["event"], "join", "round {round}: {p}");
        // Both leave at once: exactly one leave, after both are gone.
        a.send(json!({"type": "leave", "room": "r"}));
        b.send(json!({"type": "leave", "room": "r"}));
        a.expect("left");
        b.expect("left");
        let p = watch.expect("presence");
        assert_eq!(p["event"], "leave", "round {round}: {p}");
        let late = before_marker(&mut watch, &mut mark, "r");
        assert!(late.is_empty(), "round {round}: one event each: {late:?}");
        assert!(watch.sync().is_empty(), "round {round}: one event each");
    }
}

#[test]
fn users_of_a_stopped_or_killed_worker_leave_their_rooms() {
    use nix::sys::signal::{kill, Signal};
    use std::collections::BTreeSet;
    let mut server = ChatServer::start("gone", 2, "");
    let mut watch = Client::login_on(&server, "watch", 1);
    watch.join("r");
    let mut mark = Client::login_on(&server, "mark", 1);
    mark.send(json!({"type": "join", "room": "r"}));
    mark.wait_for("joined", |v| v["type"] == "joined");
    watch.expect("presence");
    // SIGTERM: the worker closes its clients (1001) and exits; SIGKILL: it
    // just dies. Either way the members elsewhere learn that its users left,
    // once each.
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let users: BTreeSet<String> = (0..10).map(|i| format!("{signal:?}-{i}")).collect();
        let mut clients = Vec::new();
        for user in &users {
            let mut c = Client::login_on(&server, user, 0);
            c.join("r");
            let p = watch.expect("presence");
            assert_eq!((&p["user"], &p["event"]), (&json!(user), &json!("join")));
            clients.push(c);
        }
        // A slow disk, made certain: the database stays locked until the
        // stopping worker has closed every client (and so left its loop).
        let lock = rusqlite::Connection::open(server.dir.join("chat.db")).expect("open db");
        lock.execute_batch("BEGIN IMMEDIATE").expect("lock db");
        let pid = server.worker_pid(0).expect("worker 0 runs");
        kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal worker 0");
        for c in &mut clients {
            c.expect_gone();
        }
        lock.execute_batch("ROLLBACK").expect("unlock db");
        let mut left = BTreeSet::new();
        while left.len() < users.len() {
            let p = watch.wait_for("leaves", |v| v["type"] == "presence");
            assert_eq!(p["event"], "leave", "{signal:?}: {p}");
            let user = p["user"].as_str().expect("user").to_string();
            assert!(users.contains(&user), "{signal:?}: {p}");
            assert!(left.insert(user), "{signal:?}: twice: {p}");
        }
        // The replacement is up before the next round logs in on worker 0.
        common::wait_until(chat_util::WAIT, "worker 0 is replaced", || {
            server.worker_pid(0).is_some_and(|p| p != pid)
        });
        server.wait_for_workers(2);
    }
    // Worker 0's replacement announced them: nothing more from it.
    let mut mark0 = Client::login_on(&server, "mark0", 0);
    mark0.send(json!({"type": "join", "room": "r"}));
    mark0.wait_for("joined", |v| v["type"] == "joined");
    watch.expect("presence");
    assert!(
        before_marker(&mut watch, &mut mark0, "r").is_empty(),
        "one leave each"
    );
}
