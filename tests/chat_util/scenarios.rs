//! The chat's scenarios across workers and across nodes: each takes how to
//! start the chat (`Deployment::one` or `Deployment::two`) and places its
//! clients on slots (see [`Deployment`]), so `tests/chat_cluster.rs` runs
//! them on one server with two workers and `tests/cluster_chat.rs` on two
//! nodes of a cluster, clients alternating between the nodes.

use super::{Client, Deployment, Event, WAIT};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How a scenario starts the chat: a name for its files, and extra TOML.
pub type Start = fn(&str, &str) -> Deployment;

/// The ids of a JSON list of messages.
pub fn ids(messages: &Value) -> Vec<i64> {
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
pub fn before_marker(watch: &mut Client, marker: &mut Client, room: &str) -> Vec<Value> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let text = format!("marker {}", N.fetch_add(1, Ordering::SeqCst));
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

/// Makes sure that what `from`'s worker sent so far has reached `to`'s
/// worker: `from` sends `to`'s user a direct message, which takes the same
/// path (the bus, or its node's channel through Redis) after everything
/// `from`'s worker sent before, and `to` waits for it. Returns what else
/// `from` and `to` received meanwhile.
///
/// A room's members are resolved where the event arrives, so an event sent
/// before a connection joined (a presence, a message) can still reach it
/// after its `joined` if it was in flight. A test that orders a join after
/// an event by its own clock settles first, so that its checks do not
/// depend on how fast the event travels.
#[track_caller]
pub fn settle(from: &mut Client, to: &mut Client) -> (Vec<Value>, Vec<Value>) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let text = format!("settle {}", N.fetch_add(1, Ordering::SeqCst));
    let deadline = Instant::now() + WAIT;
    let mut from_other = Vec::new();
    'sent: loop {
        from.send(json!({"type": "say", "to": to.user, "text": text, "ref": text}));
        loop {
            let v = from.recv();
            if v["ref"] == text.as_str() {
                if v["type"] == "ack" {
                    break 'sent;
                }
                // `to` logged in just now: its node may not have told
                // `from`'s yet.
                assert_eq!(v["code"], "unknown_user", "{}: {v}", from.user);
                assert!(
                    Instant::now() < deadline,
                    "{} never saw {} online",
                    from.user,
                    to.user
                );
                continue 'sent;
            }
            if v["type"] != "message" || v["text"] != text.as_str() {
                from_other.push(v);
            }
        }
    }
    let mut to_other = Vec::new();
    loop {
        let v = to.recv();
        if v["type"] == "message" && v["text"] == text.as_str() {
            return (from_other, to_other);
        }
        to_other.push(v);
    }
}

/// Reads `watch`'s `presence` events until each of `users` has left once;
/// a join, or a leave of anyone else or of someone twice, fails (`what`
/// says in which case).
#[track_caller]
pub fn expect_one_leave_each(watch: &mut Client, users: &BTreeSet<String>, what: &str) {
    let mut left = BTreeSet::new();
    while left.len() < users.len() {
        let p = watch.wait_for("leaves", |v| v["type"] == "presence");
        assert_eq!(p["event"], "leave", "{what}: {p}");
        let user = p["user"].as_str().expect("user").to_string();
        assert!(users.contains(&user), "{what}: {p}");
        assert!(left.insert(user), "{what}: twice: {p}");
    }
}

/// `watch` on slot 0 and `mark` on slot 1, both in room `r`, with `mark`'s
/// join seen by `watch`: an observer and a source of markers for
/// [`before_marker`].
#[track_caller]
pub fn watch_and_mark(d: &Deployment) -> (Client, Client) {
    let mut watch = d.login_on("watch", 0);
    watch.join("r");
    let mut mark = d.login_on("mark", 1);
    mark.join("r");
    assert_eq!(watch.expect("presence")["user"], "mark");
    (watch, mark)
}

/// A room message reaches the members on the other slot, once each, and
/// nobody else.
pub fn a_room_message_reaches_members_elsewhere(start: Start) {
    let d = start("cross", "");
    let mut al = d.login_on("al", 0);
    let mut bo = d.login_on("bo", 1);
    let mut outsider = d.login_on("cy", 1);
    al.join("r");
    assert_eq!(settle(&mut al, &mut bo), (vec![], vec![]));
    bo.join("r");
    assert_eq!(al.expect("presence")["user"], "bo");
    al.send(json!({"type": "say", "room": "r", "text": "hi bo", "ref": "1"}));
    let seen = bo.expect("message");
    assert_eq!(seen["from"], "al");
    assert_eq!(seen["text"], "hi bo");
    assert_eq!(seen["room"], "r");
    let mine = al.expect("message");
    assert_eq!(mine, seen);
    assert_eq!(al.expect("ack")["id"], seen["id"]);
    // And back, from slot 1 to slot 0.
    bo.send(json!({"type": "say", "room": "r", "text": "hi al"}));
    assert_eq!(al.expect("message")["text"], "hi al");
    // Once each: the next frame bo gets after its own message is its ack.
    assert_eq!(bo.expect("message")["text"], "hi al");
    bo.expect("ack");
    assert!(bo.sync().is_empty());
    assert!(al.sync().is_empty());
    assert!(outsider.sync().is_empty(), "non-members get nothing");
}

/// A direct message reaches every connection of the sender and of the
/// recipient, on every slot (both workers, both nodes), once each.
pub fn a_direct_message_reaches_every_connection_of_both_users(start: Start) {
    let d = start("dm", "");
    let mut bo: Vec<Client> = (0..4).map(|s| d.login_on("bo", s)).collect();
    let mut al: Vec<Client> = (0..4).map(|s| d.login_on("al", s)).collect();
    let mut cy = d.login_on("cy", 1);
    al[0].send(json!({"type": "say", "to": "bo", "text": "psst", "ref": "d"}));
    let got = bo[0].expect("message");
    assert_eq!(got["from"], "al");
    assert_eq!(got["to"], "bo");
    assert_eq!(got["text"], "psst");
    assert!(got.get("room").is_none());
    for c in bo[1..].iter_mut().chain(&mut al) {
        assert_eq!(c.expect("message"), got, "{} {}", c.user, c.conn);
    }
    assert_eq!(al[0].expect("ack")["id"], got["id"]);
    // Exactly once each: a second message is the next thing everyone sees.
    al[1].send(json!({"type": "say", "to": "bo", "text": "again"}));
    for c in bo.iter_mut().chain(&mut al) {
        assert_eq!(
            c.expect("message")["text"],
            "again",
            "{} {}",
            c.user,
            c.conn
        );
    }
    al[1].expect("ack");
    assert!(cy.sync().is_empty(), "others get nothing");
    // A message to oneself reaches each own connection once.
    bo[1].send(json!({"type": "say", "to": "bo", "text": "note to self"}));
    for c in &mut bo {
        assert_eq!(c.expect("message")["text"], "note to self", "{}", c.conn);
    }
    bo[1].expect("ack");
    for c in bo.iter_mut().chain(&mut al) {
        assert!(c.sync().is_empty(), "{} {}: once each", c.user, c.conn);
    }
    // Both sides read the conversation as one.
    bo[0].send(json!({"type": "history", "with": "al"}));
    let h = bo[0].expect("history");
    assert_eq!(h["with"], "al");
    let texts: Vec<_> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, [json!("psst"), json!("again")]);
    al[3].send(json!({"type": "history", "with": "bo"}));
    assert_eq!(al[3].expect("history")["messages"], h["messages"]);
}

/// `presence` when a user's first connection joins a room and when its last
/// one leaves (by `leave` or by closing), not for the ones in between.
pub fn presence_on_first_join_and_last_leave(start: Start) {
    let d = start("presence", "");
    let (mut watch, mut mark) = watch_and_mark(&d);
    let mut bo0 = d.login_on("bo", 0);
    let mut bo1 = d.login_on("bo", 1);

    // First connection of bo joins: one presence event, not to bo0 itself.
    let joined = bo1.join("r");
    assert_eq!(joined["users"], json!(["bo", "mark", "watch"]));
    let p = watch.expect("presence");
    assert_eq!(
        p,
        json!({"type": "presence", "room": "r", "user": "bo", "event": "join"})
    );
    // Second connection (other slot): no event.
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

    // Explicit leave of the only connection, seen from the other slot.
    let mut cy = d.login_on("cy", 1);
    assert_eq!(settle(&mut watch, &mut cy), (vec![], vec![]));
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

/// 120 messages said on slot 0, read on slot 1: `joined` brings the last
/// ones, `history` pages backwards without gaps or repeats.
pub fn history_pages_backwards_without_gaps(start: Start) {
    let d = start(
        "paging",
        "[chat]\ntick_interval_ms = 0\nhistory_on_join = 5\n",
    );
    let mut al = d.login_on("al", 0);
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
    // A member elsewhere reads it.
    let mut bo = d.login_on("bo", 1);
    assert_eq!(settle(&mut al, &mut bo), (vec![], vec![]));
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

/// Ticks reach logged-in connections on every slot, never anonymous ones,
/// and `online` counts the distinct users of the whole chat (both nodes).
pub fn ticks_go_to_logged_in_connections_only(start: Start) {
    let d = start("tick", "[chat]\ntick_interval_ms = 100\n");
    let mut anon0 = d.connect(0);
    let mut anon1 = d.connect(1);
    let mut al = d.login_on("al", 0);
    let mut bo = d.login_on("bo", 1);
    for c in [&mut al, &mut bo] {
        let deadline = Instant::now() + WAIT;
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
    // Every worker has ticked three times by now; the anonymous ones got nothing.
    for anon in [&mut anon0, &mut anon1] {
        match anon.next_event(Duration::from_millis(10)) {
            Event::Timeout => {}
            Event::Frame(v) => panic!("a connection without login got {v}"),
            Event::Closed(c) => panic!("closed {c:?}"),
        }
    }
    // online counts distinct users everywhere: al's second connection (on
    // the other slot) is not a third user, cy (on a third slot) is.
    let _al2 = d.login_on("al", 1);
    for c in [&mut al, &mut bo] {
        c.wait_for("a tick with 2 online", |v| {
            v["type"] == "tick" && v["online"] == 2
        });
    }
    let _cy = d.login_on("cy", 3);
    for c in [&mut al, &mut bo] {
        let v = c.wait_for("a tick with 3 online", |v| {
            v["type"] == "tick" && v["online"] != 2
        });
        assert_eq!(v["online"], 3, "{}: {v}", c.user);
    }
}

/// Two connections of one user (on two slots) join at once, then leave at
/// once: one `presence` join and one leave each round, never two.
pub fn simultaneous_joins_and_leaves_of_one_user_make_one_event_each(start: Start) {
    let d = start("race", "");
    let (mut watch, mut mark) = watch_and_mark(&d);
    for round in 0..5 {
        let mut a = d.login_on("bo", 0);
        let mut b = d.login_on("bo", 1);
        // No settling here: neither gets a presence about its own user,
        // even when the other's node has not yet heard of it
        // (`send_to_group_except_uids` leaves the user out where each
        // member lives).
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

/// `users` lists the distinct names logged in on every slot, sorted, and
/// the members of a room.
pub fn users_lists_distinct_names_sorted(start: Start) {
    let d = start("users", "");
    let mut zed = d.login_on("zed", 0);
    let mut al = d.login_on("al", 1);
    let _al2 = d.login_on("al", 2);
    let _b = d.login_on("B", 3);
    let _anon = d.connect(0);
    zed.join("r");
    al.join("r");
    // Registry changes reach other workers (and nodes) within moments.
    let all = users_until(&mut al, json!({"type": "users", "ref": "u"}), |v| {
        v["count"] == 3
    });
    assert_eq!(
        all,
        json!({"type": "users", "users": ["B", "al", "zed"], "count": 3, "ref": "u"})
    );
    // The same from the other side.
    let all = users_until(&mut zed, json!({"type": "users", "ref": "z"}), |v| {
        v["count"] == 3
    });
    assert_eq!(all["users"], json!(["B", "al", "zed"]));
    let r = users_until(
        &mut al,
        json!({"type": "users", "room": "r", "ref": "r"}),
        |v| v["count"] == 2,
    );
    assert_eq!(
        r,
        json!({"type": "users", "room": "r", "users": ["al", "zed"], "count": 2, "ref": "r"})
    );
    al.send(json!({"type": "users", "room": "empty"}));
    assert_eq!(al.expect("users")["count"], 0);
    al.send(json!({"type": "users", "room": "bad room"}));
    al.expect_error("bad_name");
}

/// Sends `request` (a `users` request with a `ref`) until its reply
/// satisfies `done`; returns that reply.
#[track_caller]
pub fn users_until(c: &mut Client, request: Value, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    let r = request["ref"].clone();
    loop {
        c.send(request.clone());
        let v = c.wait_for("the users reply", |v| v["type"] == "users" && v["ref"] == r);
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{}: users never satisfied the test within {WAIT:?}; last: {v}",
            c.user
        );
    }
}
