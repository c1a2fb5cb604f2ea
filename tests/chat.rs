//! The chat example over real sockets: every request and every error code of
//! `shared/chat-protocol.md`, against a server with two workers.

mod chat_util;
mod common;

use chat_util::{now_secs, run_chat, temp_dir, token, ChatServer, Client, Event, WAIT};
use serde_json::{json, Value};

#[test]
fn page_and_health_check_are_served() {
    let server = ChatServer::start("page", 2, "");
    let (status, body) = server.get("/");
    assert_eq!(status, 200);
    assert!(
        body.contains("<html") && body.contains("foreman chat"),
        "{body}"
    );
    assert!(
        body.contains("const WS_PATH = \"/ws\""),
        "the page knows the socket path"
    );
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no CDN"
    );
    assert_eq!(server.get("/healthz"), (200, "ok".to_string()));
    assert_eq!(server.get("/nope").0, 404);
}

#[test]
fn a_backend_reaches_rooms_by_name_and_users_by_login_through_the_push_api() {
    const KEY: &str = "chat-test-key-0123456789";
    let server = ChatServer::start("api", 2, &format!("[api]\nkey = \"{KEY}\"\n"));
    let mut alice = Client::login_on(&server, "alice", 0);
    let mut bob = Client::login_on(&server, "bob", 1);
    let mut carol = Client::login(&server, "carol");
    alice.join("lobby");
    bob.join("lobby");
    alice.wait_for("bob's presence", |v| v["type"] == "presence");
    let mut api = common::Backend::new(server.socket_addr(), KEY);
    common::poll_until(WAIT, "lobby with two members", || {
        let g = api.ok("GET", "/api/group/lobby", None);
        (g["count"] == 2).then_some(())
    });
    let u = api.ok("GET", "/api/uid/alice", None);
    assert_eq!(u["groups"], json!(["lobby"]), "a room's group is its name");

    // A system message, in the protocol's own `message` shape, to the room.
    let system = json!({"type": "message", "id": 0, "room": "lobby", "from": "system",
        "text": "maintenance at 22:00", "time": 1});
    assert_eq!(api.publish(json!({"group": "lobby"}), system.clone()), 2);
    assert_eq!(
        api.publish(json!({"uid": "carol"}), json!({"type": "note"})),
        1
    );
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.expect("message"), system);
    }
    // carol is not in the room: her own publish is the first thing she gets.
    assert_eq!(carol.recv(), json!({"type": "note"}));
    // The connections go on as before.
    assert!(alice.sync().is_empty());
}

/// `[amqp]`: every stored message reaches a queue bound to `chat.messages`,
/// room messages under `room.NAME` and direct ones under `dm`, each room's
/// in id order, none missing, though the senders are on both workers.
#[test]
fn stored_messages_reach_chat_messages_in_order_per_room() {
    use common::rabbit;
    const EACH: usize = 40;
    let url = rabbit::machine_url();
    let push = rabbit::unique("chat.push");
    let server = ChatServer::start(
        "amqp",
        2,
        &format!("[amqp]\nurl = \"{url}\"\nqueue = \"{push}\"\n"),
    );
    let client = rabbit::Client::connect(&url, WAIT);
    let events = rabbit::unique("chat.events");
    client.bind(&events, "chat.messages", "#");
    let mut al = Client::login_on(&server, "al", 0);
    let mut bo = Client::login_on(&server, "bo", 1);
    for c in [&mut al, &mut bo] {
        c.join("r1");
        c.join("r2");
    }
    let mut acked = std::collections::BTreeSet::new();
    for i in 0..EACH {
        for (who, room) in [(0, "r1"), (1, "r1"), (0, "r2"), (1, "r2")] {
            let c = if who == 0 { &mut al } else { &mut bo };
            c.send(json!({"type": "say", "room": room, "text": format!("{room}-{i}"), "ref": "x"}));
            let ack = c.wait_for("ack", |v| v["type"] == "ack");
            acked.insert(ack["id"].as_i64().unwrap());
        }
    }
    al.send(json!({"type": "say", "to": "bo", "text": "psst", "ref": "dm"}));
    acked.insert(
        al.wait_for("ack", |v| v["type"] == "ack")["id"]
            .as_i64()
            .unwrap(),
    );
    let got = client.consume(&events, acked.len(), WAIT);
    client.delete(&events);
    client.delete(&push);
    let mut ids = std::collections::BTreeSet::new();
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for (body, _) in &got {
        let m: Value = serde_json::from_str(body).expect("a JSON message event");
        assert_eq!(m["type"], "message", "{m}");
        let id = m["id"].as_i64().unwrap();
        let room = m["room"].as_str().unwrap_or("dm").to_string();
        let prev = last.insert(room.clone(), id).unwrap_or(0);
        assert!(id > prev, "room {room}: {id} after {prev}");
        ids.insert(id);
    }
    assert_eq!(ids, acked, "every stored message, once each");
    assert_eq!(got.len(), acked.len(), "none twice without faults");
}

#[test]
fn login_comes_first_and_only_once() {
    let server = ChatServer::start("login", 2, "");
    let mut c = Client::connect(&server);
    for request in [
        json!({"type": "join", "room": "r", "ref": "a"}),
        json!({"type": "leave", "room": "r"}),
        json!({"type": "say", "room": "r", "text": "x"}),
        json!({"type": "history", "room": "r"}),
        json!({"type": "users"}),
        // not_logged_in ranks before bad_name.
        json!({"type": "join", "room": "bad room"}),
    ] {
        c.send(request.clone());
        let e = c.expect_error("not_logged_in");
        assert_eq!(e.get("ref"), request.get("ref"), "{e}");
    }
    c.send(json!({"type": "login"}));
    c.expect_error("bad_request");
    c.send(json!({"type": "login", "name": 7}));
    c.expect_error("bad_request");
    for bad in ["", "has space", "ünï", "a/b", &"x".repeat(33)] {
        c.send(json!({"type": "login", "name": bad, "ref": "n"}));
        assert_eq!(c.expect_error("bad_name")["ref"], "n");
    }
    c.send(json!({"type": "login", "name": "Al_1.-x", "ref": "hello"}));
    let w = c.expect("welcome");
    assert_eq!(w["user"], "Al_1.-x");
    assert_eq!(w["ref"], "hello");
    let conn = w["conn"].as_str().expect("conn");
    assert_eq!(conn.split('.').count(), 3, "{conn}");
    c.send(json!({"type": "login", "name": "other"}));
    c.expect_error("already_logged_in");
    // already_logged_in ranks before bad_name.
    c.send(json!({"type": "login", "name": "bad name"}));
    c.expect_error("already_logged_in");
    // The same user may log in from several connections at once.
    let _second = Client::login(&server, "Al_1.-x");
}

#[test]
fn malformed_frames_are_answered_and_the_connection_stays() {
    let server = ChatServer::start("frames", 2, "");
    let mut c = Client::login(&server, "al");
    for text in ["", "{", "[]", "42", "\"login\"", "null"] {
        c.send_text(text);
        c.expect_error("bad_json");
    }
    c.send(json!({"no_type": 1}));
    c.expect_error("unknown_type");
    c.send(json!({"type": "shout", "ref": "s"}));
    assert_eq!(c.expect_error("unknown_type")["ref"], "s");
    c.send(json!({"type": 3}));
    c.expect_error("unknown_type");
    for bad in [
        json!({"type": "users", "ref": 5}),
        json!({"type": "users", "ref": "x".repeat(65)}),
        json!({"type": "join"}),
        json!({"type": "join", "room": 1}),
        json!({"type": "say", "room": "r"}),
        json!({"type": "say", "room": "r", "to": "bo", "text": "x"}),
        json!({"type": "history"}),
        json!({"type": "history", "room": "r", "limit": 0}),
        json!({"type": "history", "room": "r", "limit": 101}),
        json!({"type": "history", "room": "r", "limit": 2.5}),
        json!({"type": "history", "room": "r", "before": 0}),
        json!({"type": "users", "room": false}),
    ] {
        c.send(bad.clone());
        let e = c.expect_error("bad_request");
        assert!(e.get("ref").is_none() || bad.get("ref").is_none(), "{e}");
    }
    // A ref of exactly 64 characters (not bytes) is fine and echoed.
    let r = "é".repeat(64);
    c.send(json!({"type": "users", "ref": r}));
    assert_eq!(c.expect("users")["ref"], r.as_str());
    c.send_binary(b"\x00\x01");
    c.expect_error("unsupported");
    assert!(c.sync().is_empty(), "still open, nothing else sent");
}

#[test]
fn rooms_join_leave_and_membership_errors() {
    let server = ChatServer::start("rooms", 2, "");
    let mut al = Client::login(&server, "al");
    al.send(json!({"type": "join", "room": "no space"}));
    al.expect_error("bad_name");
    al.send(json!({"type": "say", "room": "r", "text": "hi", "ref": "1"}));
    assert_eq!(al.expect_error("not_in_room")["ref"], "1");
    al.send(json!({"type": "history", "room": "r"}));
    al.expect_error("not_in_room");
    // bad_name ranks before not_in_room.
    al.send(json!({"type": "say", "room": "r!", "text": "hi"}));
    al.expect_error("bad_name");

    al.send(json!({"type": "join", "room": "r", "ref": "j"}));
    let joined = al.expect("joined");
    assert_eq!(
        joined,
        json!({"type": "joined", "room": "r", "users": ["al"], "history": [], "ref": "j"})
    );
    al.send(json!({"type": "say", "room": "r", "text": "first"}));
    al.expect("message");
    al.expect("ack");
    al.send(json!({"type": "leave", "room": "r", "ref": "l"}));
    assert_eq!(
        al.expect("left"),
        json!({"type": "left", "room": "r", "ref": "l"})
    );
    al.send(json!({"type": "say", "room": "r", "text": "gone"}));
    al.expect_error("not_in_room");
    // Joining again brings the room's history.
    let joined = al.join("r");
    assert_eq!(joined["history"][0]["text"], "first");
    assert_eq!(joined["history"][0]["from"], "al");
    assert_eq!(joined["history"][0]["room"], "r");
    // A connection may be in many rooms.
    al.join("s");
    al.send(json!({"type": "say", "room": "s", "text": "in s"}));
    assert_eq!(al.expect("message")["room"], "s");
    al.expect("ack");
}

#[test]
fn say_is_stored_acked_and_checked() {
    let server = ChatServer::start(
        "say",
        2,
        "[chat]\ntick_interval_ms = 0\nmax_text_chars = 10\n",
    );
    let mut al = Client::login(&server, "al");
    al.join("r");
    al.send(json!({"type": "say", "room": "r", "text": "hello", "ref": "m1"}));
    let m = al.expect("message");
    let ack = al.expect("ack");
    assert_eq!(ack["ref"], "m1");
    assert_eq!(ack["id"], m["id"]);
    assert!(m["id"].as_i64().is_some_and(|id| id > 0), "{m}");
    assert_eq!(
        (m["from"].as_str(), m["room"].as_str(), m["text"].as_str()),
        (Some("al"), Some("r"), Some("hello"))
    );
    let now_ms = now_secs() as i64 * 1000;
    assert!(
        (m["time"].as_i64().unwrap_or(0) - now_ms).abs() < 60_000,
        "{m}"
    );
    // 10 characters (not bytes) are fine; 11 are too long.
    al.send(json!({"type": "say", "room": "r", "text": "ééééééééé✓"}));
    al.expect("message");
    al.expect("ack");
    al.send(json!({"type": "say", "room": "r", "text": "12345678901", "ref": "m2"}));
    assert_eq!(al.expect_error("too_long")["ref"], "m2");
    al.send(json!({"type": "say", "to": "nobody", "text": "hi"}));
    al.expect_error("unknown_user");
    // unknown_user ranks before too_long.
    al.send(json!({"type": "say", "to": "nobody", "text": "12345678901"}));
    al.expect_error("unknown_user");
    al.send(json!({"type": "say", "to": "bad name", "text": "hi"}));
    al.expect_error("bad_name");
    // Ids grow.
    al.send(json!({"type": "say", "room": "r", "text": "later"}));
    let later = al.expect("message");
    assert!(later["id"].as_i64() > m["id"].as_i64());
    al.expect("ack");
}

#[test]
fn users_lists_distinct_names_sorted() {
    chat_util::scenarios::users_lists_distinct_names_sorted(chat_util::Deployment::one);
}

#[test]
fn oversized_frames_close_1009_and_bad_utf8_closes_1007() {
    let server = ChatServer::start("limits", 2, "[server]\nmax_frame_bytes = 1024\n");
    let mut c = Client::login(&server, "al");
    c.send(json!({"type": "users", "ref": "x".repeat(2000)}));
    assert_eq!(c.expect_close(), Some(1009));
    let mut c = Client::login(&server, "bo");
    c.send_invalid_utf8();
    assert_eq!(c.expect_close(), Some(1007));
    // Others are unaffected.
    let mut d = Client::login(&server, "cy");
    assert!(d.sync().is_empty());
}

#[test]
fn rate_limit_refuses_then_closes_abusers() {
    let server = ChatServer::start(
        "rate",
        2,
        "[rate_limit]\nper_second = 1\nburst = 5\nclose_after = 10\n",
    );
    let mut c = Client::connect(&server);
    let started = std::time::Instant::now();
    c.send(json!({"type": "login", "name": "al"}));
    c.expect("welcome");
    // A burst of 5 (the login was one), then one frame a second.
    let mut passed = 1;
    loop {
        c.send(json!({"type": "users", "ref": "r"}));
        let v = c.recv();
        if v["type"] == "error" {
            assert_eq!(
                (v["code"].as_str(), v["ref"].as_str()),
                (Some("rate_limited"), Some("r"))
            );
            break;
        }
        passed += 1;
        assert!(passed <= 6 + started.elapsed().as_secs(), "never limited");
    }
    assert!(passed >= 5, "limited after {passed}");
    // Earlier errors in the table still win while limited.
    c.send(json!({"type": "nope"}));
    c.expect_error("unknown_type");
    c.send_binary(b"x");
    c.expect_error("rate_limited");
    // Keep going: after 10 refused frames the connection is closed with 1008.
    for _ in 0..12 {
        if !c.try_send_text("{\"type\":\"users\"}") {
            break;
        }
    }
    let code = loop {
        match c.next_event(chat_util::WAIT) {
            Event::Frame(v) => assert_eq!(v["code"], "rate_limited", "{v}"),
            Event::Closed(code) => break code,
            Event::Timeout => panic!("not closed"),
        }
    };
    assert_eq!(code, Some(1008));
}

#[test]
fn a_full_database_queue_refuses_requests_until_it_drains() {
    let server = ChatServer::start("busy", 1, "[history]\nmax_queue = 3\n");
    let mut al = Client::login(&server, "al");
    al.join("r");
    // Lock the database as a slow disk would: the writer can finish nothing.
    let lock = rusqlite::Connection::open(server.dir.join("chat.db")).expect("open db");
    lock.execute_batch("BEGIN IMMEDIATE").expect("lock db");
    for i in 0..6 {
        al.send(
            json!({"type": "say", "room": "r", "text": format!("m{i}"), "ref": format!("q{i}")}),
        );
    }
    // Three wait for the database; the others are refused at once.
    for i in 3..6 {
        let e = al.expect_error("busy");
        assert_eq!(e["ref"], format!("q{i}"), "{e}");
    }
    // Requests that need no database are still answered.
    al.send(json!({"type": "users", "ref": "u"}));
    assert_eq!(al.expect("users")["ref"], "u");
    lock.execute_batch("ROLLBACK").expect("unlock db");
    let mut acked = Vec::new();
    while acked.len() < 3 {
        let v = al.recv();
        match v["type"].as_str() {
            Some("ack") => acked.push(v["ref"].as_str().expect("ref").to_string()),
            Some("message") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(acked, ["q0", "q1", "q2"]);
    // Drained: accepted again.
    al.send(json!({"type": "say", "room": "r", "text": "later", "ref": "l"}));
    al.expect("message");
    assert_eq!(al.expect("ack")["ref"], "l");
}

#[test]
fn auth_needs_a_valid_token_for_the_name() {
    let server = ChatServer::start("auth", 2, "[auth]\nsecret = \"s3cret\"\n");
    let good = token("s3cret", "al", now_secs() + 600);
    for (name, tok) in [
        ("al", None),
        ("al", Some(token("wrong", "al", now_secs() + 600))),
        ("al", Some(token("s3cret", "al", now_secs() - 120))),
        ("bo", Some(good.clone())),
        ("al", Some("not.a.jwt".to_string())),
    ] {
        let mut c = Client::connect(&server);
        let mut req = json!({"type": "login", "name": name, "ref": "t"});
        if let Some(t) = tok {
            req["token"] = Value::from(t);
        }
        c.send(req);
        assert_eq!(c.expect_error("auth_failed")["ref"], "t");
        assert_eq!(c.expect_close(), Some(1008));
    }
    // bad_name ranks before auth_failed and keeps the connection.
    let mut c = Client::connect(&server);
    c.send(json!({"type": "login", "name": "no good"}));
    c.expect_error("bad_name");
    c.send(json!({"type": "login", "name": "al", "token": 5}));
    c.expect_error("bad_request");
    c.send(json!({"type": "login", "name": "al", "token": good}));
    assert_eq!(c.expect("welcome")["user"], "al");
}

#[test]
fn a_bad_config_stops_start_up_naming_the_key() {
    let dir = temp_dir("badconfig");
    let path = dir.join("chat.toml");
    let path_text = path.to_str().expect("utf-8 path");
    for (toml, named) in [
        ("[chat]\ntick_intervall_ms = 5\n", "tick_intervall_ms"),
        ("[chat]\nmax_text_chars = \"many\"\n", "max_text_chars"),
        ("[rate_limit]\nburst = 0\n", "rate_limit.burst"),
        ("[server]\ncount = 0\n", "server.count"),
        ("[server]\nlisten = \"nowhere\"\n", "listen"),
        (
            "[history]\ndatabase = \"no/such/dir/chat.db\"\n",
            "history.database",
        ),
        ("[auth]\nsecret = \"\"\n", "auth.secret"),
        ("[nope]\n", "nope"),
    ] {
        std::fs::write(&path, toml).expect("write");
        let (ok, _, stderr) = run_chat(&["-c", path_text, "--listen", "127.0.0.1:0"]);
        assert!(!ok, "{toml:?} was accepted");
        assert!(stderr.contains(named), "{toml:?}: {stderr}");
    }
    let (ok, _, stderr) = run_chat(&["-c", path_text, "--bogus"]);
    assert!(!ok);
    assert!(stderr.contains("--bogus"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_binary_mints_tokens_the_server_accepts() {
    let server = ChatServer::start("mint", 2, "[auth]\nsecret = \"mint-secret\"\n");
    let config = server.dir.join("chat.toml");
    let (ok, stdout, stderr) = run_chat(&["-c", config.to_str().expect("path"), "token", "al"]);
    assert!(ok, "{stderr}");
    let mut c = Client::connect(&server);
    c.send(json!({"type": "login", "name": "al", "token": stdout.trim()}));
    assert_eq!(c.expect("welcome")["user"], "al");
}

#[test]
fn reload_applies_a_changed_chat_toml() {
    let dir = temp_dir("reload");
    let pid_file = dir.join("chat.pid");
    let mut server = ChatServer::start_in(
        &dir,
        2,
        &format!(
            "[server]\npid_file = {:?}\n[chat]\ntick_interval_ms = 0\nmax_text_chars = 10\n",
            pid_file.display().to_string()
        ),
    );
    let old = server.worker_pids();
    let mut al = Client::login(&server, "al");
    al.join("r");
    al.send(json!({"type": "say", "room": "r", "text": "12345678901", "ref": "long"}));
    assert_eq!(al.expect_error("too_long")["ref"], "long");
    al.close();

    let config = dir.join("chat.toml");
    let text = std::fs::read_to_string(&config).expect("read chat.toml");
    assert!(text.contains("max_text_chars = 10"), "{text}");
    std::fs::write(
        &config,
        text.replace("max_text_chars = 10", "max_text_chars = 20"),
    )
    .expect("write chat.toml");
    let (ok, out, err) = run_chat(&["reload", "-c", config.to_str().expect("utf-8")]);
    assert!(ok, "reload: {out} {err}");
    common::poll_until(WAIT, "both workers replaced", || {
        let now = server.worker_pids();
        (now.len() == 2 && now.iter().all(|p| !old.contains(p))).then_some(())
    });

    let mut bo = Client::login(&server, "bo");
    bo.join("r");
    bo.send(json!({"type": "say", "room": "r", "text": "12345678901", "ref": "fits"}));
    assert_eq!(bo.expect("message")["text"], "12345678901");
    assert_eq!(bo.expect("ack")["ref"], "fits");

    // A database the workers could not open: the master refuses the reload
    // (instead of replacing workers that would die) and nothing changes.
    let running = server.worker_pids();
    let text = std::fs::read_to_string(&config).expect("read chat.toml");
    std::fs::write(
        &config,
        format!("{text}[history]\ndatabase = \"/nonexistent/dir/chat.db\"\n"),
    )
    .expect("write chat.toml");
    let (ok, out, err) = run_chat(&["reload", "-c", config.to_str().expect("utf-8")]);
    assert!(ok, "reload: {out} {err}");
    common::wait_until(WAIT, "the master refuses the reload", || {
        server.log().contains("reload refused")
    });
    assert!(
        server.log().contains("history.database"),
        "{}",
        server.log()
    );
    assert_eq!(server.worker_pids(), running);
    bo.send(json!({"type": "say", "room": "r", "text": "still fine", "ref": "ok"}));
    assert_eq!(bo.expect("message")["text"], "still fine");
}
