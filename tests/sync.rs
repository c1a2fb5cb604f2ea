//! The sync server over real sockets: every request, reply shape and error
//! code of `shared/sync-protocol.md`, against a server of two workers
//! talked to as devices do. This file: the connection (`hello`, frames,
//! limits, rate, auth, the store failing, config); the documents'
//! requests are `sync_docs.rs`; HTTP is `sync_http.rs`; many writers, ordering,
//! `since` and op memory across workers are `sync_order.rs`; crashes
//! `sync_crash.rs`; two nodes `sync_cluster.rs`.
//!
//! Which test covers what (WebSocket):
//!
//! | request / code | tests |
//! |---|---|
//! | `hello`, `welcome {epoch, client}` | `hello_comes_first_and_only_once`, `the_epoch_is_the_same_on_every_worker` |
//! | `get`, `doc` | `sync_docs::get_put_and_conflict`, `sync_docs::delete_and_the_deleted_flag` |
//! | `put`, `ack`, `conflict` | `sync_docs::get_put_and_conflict` |
//! | `patch` | `sync_docs::patch_merges_by_rfc_7396` |
//! | `delete` | `sync_docs::delete_and_the_deleted_flag` |
//! | `subscribe`, `subscribed`, `change` | `sync_docs::subscribe_unsubscribe_and_change_events` |
//! | `subscribe` with `since`, `changes` | `sync_docs::since_replays_what_was_missed_or_sends_a_doc`, `sync_order::a_reconnecting_client_gets_exactly_what_it_missed` |
//! | `unsubscribe`, `unsubscribed` | `sync_docs::subscribe_unsubscribe_and_change_events` |
//! | `list`, `keys` | `sync_docs::list_by_prefix_after_and_limit` |
//! | `ref` echo rules, unknown fields | `frames_that_are_not_requests`, `hello_comes_first_and_only_once` |
//! | `deleted: true` only on deletes | every test: [`Client`] checks each frame it reads |
//! | `bad_json` (and depth 64 / 65) | `frames_that_are_not_requests`, `rate_limited_then_closed_with_1008` |
//! | `unknown_type` | `frames_that_are_not_requests`, `hello_comes_first_and_only_once` |
//! | `not_hello` | `hello_comes_first_and_only_once` |
//! | `already_hello` | `hello_comes_first_and_only_once` |
//! | `bad_request` | `sync_docs::get_put_and_conflict`, `sync_docs::patch_merges_by_rfc_7396`, `sync_docs::subscribe_unsubscribe_and_change_events`, `sync_docs::list_by_prefix_after_and_limit`, `frames_that_are_not_requests`, `hello_comes_first_and_only_once` |
//! | `bad_key` | `sync_docs::get_put_and_conflict`, `sync_docs::list_by_prefix_after_and_limit`, `sync_docs::subscribe_unsubscribe_and_change_events`, `rate_limited_then_closed_with_1008` |
//! | `too_large` (sent, merged) | `sync_docs::too_large_as_sent_and_as_merged` |
//! | `too_many` | `sync_docs::too_many_subscriptions_are_refused_whole` |
//! | `rate_limited`, 1008 | `rate_limited_then_closed_with_1008` |
//! | `op_reused` | `sync_docs::op_memory_repeats_replies_and_refuses_reuse` |
//! | `not_found` | `sync_docs::delete_and_the_deleted_flag` |
//! | `unavailable` | `unavailable_while_the_database_is_locked` |
//! | `auth_failed`, 1008 | `auth_failed_closes_with_1008` |
//! | `unsupported` | `frames_that_are_not_requests` |
//! | 1009, 1007 | `oversized_and_invalid_utf8_frames_close` |
//! | config errors | `a_bad_config_is_refused_naming_the_key` |
//! | one ack per version among 50 concurrent writes | `sync_order::fifty_concurrent_writes_from_one_base_give_one_ack_per_version`, `sync_cluster::fifty_concurrent_writes_on_two_nodes_give_one_ack_per_version` |
//! | every version to every subscriber once, in order, across workers / nodes | `sync_order::subscribers_on_both_workers_see_every_version_once_in_order`, `sync_cluster::writes_on_either_node_reach_subscribers_on_both_in_order` |
//! | op memory across workers and connections | `sync_order::a_repeated_op_is_not_applied_twice_across_workers` |
//! | reads after an ack, on any worker | `sync_order::reads_after_an_ack_see_it_on_every_worker` |
//! | acked writes survive SIGKILL, no version reused, same epoch | `sync_crash::acked_writes_survive_sigkill_of_workers_and_master` |
//! | HTTP (`/doc/KEY`, every status) | the table in `sync_http.rs` |

mod common;
mod sync_util;

use common::{now_secs, token};
use serde_json::json;
use sync_util::{get_doc, put_ok, run_sync, temp_dir, Client, Event, Setup, SyncServer, WAIT};

#[test]
fn hello_comes_first_and_only_once() {
    let server = SyncServer::start("hello");
    let mut c = Client::connect(&server);
    let requests = [
        json!({"type": "get", "key": "k"}),
        json!({"type": "put", "key": "k", "base_version": 0, "value": 1, "op": "o"}),
        json!({"type": "patch", "key": "k", "base_version": 0, "merge": {}, "op": "o"}),
        json!({"type": "delete", "key": "k", "base_version": 0, "op": "o"}),
        json!({"type": "subscribe", "keys": ["k"]}),
        json!({"type": "unsubscribe", "keys": ["k"]}),
        json!({"type": "list"}),
        // not_hello ranks before bad_request and bad_key.
        json!({"type": "get"}),
        json!({"type": "get", "key": "bad key"}),
    ];
    for request in requests {
        let e = c.expect_error(request.clone(), "not_hello");
        assert!(e["ref"].is_string(), "the ref is echoed: {e}");
    }
    // unknown_type ranks before not_hello; bad_json before both.
    c.expect_error(json!({"type": "nope"}), "unknown_type");
    c.send_text("{");
    match c.next_event(WAIT) {
        Event::Frame(e) => assert_eq!(e["code"], "bad_json", "{e}"),
        other => panic!("{other:?}"),
    }
    for bad in [
        json!({"type": "hello"}),
        json!({"type": "hello", "client": 7}),
        json!({"type": "hello", "client": ""}),
        json!({"type": "hello", "client": "has space"}),
        json!({"type": "hello", "client": "a/b"}),
        json!({"type": "hello", "client": "ünï"}),
        json!({"type": "hello", "client": "x".repeat(65)}),
    ] {
        c.expect_error(bad, "bad_request");
    }
    // A bad ref: bad_request, and the error carries no ref.
    for r in [json!(5), json!("x".repeat(65))] {
        c.send(&json!({"type": "hello", "client": "c", "ref": r}));
        let e = c.recv();
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!("bad_request")),
            "{e}"
        );
        assert!(e.get("ref").is_none(), "{e}");
    }
    // Every allowed character, 64 of them; unknown fields ignored.
    let name = format!("aZ09._:-{}", "q".repeat(56));
    let w = c.request(json!({"type": "hello", "client": name, "ref": "h", "color": "red"}));
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(
        (&w["client"], &w["ref"]),
        (&json!(name), &json!("h")),
        "{w}"
    );
    let epoch = w["epoch"].as_str().expect("epoch");
    assert!((1..=64).contains(&epoch.chars().count()), "{epoch:?}");
    // already_hello, also before bad_request.
    c.expect_error(json!({"type": "hello", "client": "other"}), "already_hello");
    c.expect_error(
        json!({"type": "hello", "client": "bad name"}),
        "already_hello",
    );
    c.expect_error(json!({"type": "hello", "client": name}), "already_hello");
    // The connection works, and the same client may hold more connections.
    assert_eq!(get_doc(&mut c, "k")["version"], 0);
    let mut second = Client::hello(&server, &name);
    assert_eq!(second.epoch, epoch);
    assert_eq!(get_doc(&mut second, "k")["version"], 0);
}

#[test]
fn the_epoch_is_the_same_on_every_worker() {
    let mut server = SyncServer::start("epoch");
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 2);
    let epochs: Vec<String> = workers
        .iter()
        .map(|&w| Client::hello_on(&mut server, "dev", w).epoch)
        .collect();
    assert_eq!(epochs[0], epochs[1], "one epoch per database");
}

#[test]
fn frames_that_are_not_requests() {
    let server = SyncServer::start("frames");
    let mut c = Client::hello(&server, "dev");
    for text in [
        "",
        "{",
        "[]",
        "42",
        "\"get\"",
        "null",
        "{\"type\":\"get\"} {}",
    ] {
        c.send_text(text);
        let e = c.recv();
        assert_eq!(e["code"], "bad_json", "{text:?} -> {e}");
        assert!(e.get("ref").is_none(), "{e}");
    }
    c.expect_error(json!({"key": "k"}), "unknown_type");
    c.expect_error(json!({"type": 3}), "unknown_type");
    let e = c.expect_error(json!({"type": "shout", "ref": "s"}), "unknown_type");
    assert_eq!(e["ref"], "s");
    // The ref rules: a string of at most 64 characters (not bytes).
    let r = "é".repeat(64);
    let d = c.request(json!({"type": "get", "key": "k", "ref": r}));
    assert_eq!((&d["type"], &d["ref"]), (&json!("doc"), &json!(r)), "{d}");
    for bad in [
        json!("é".repeat(65)),
        json!(1),
        json!({"a": 1}),
        json!(["r"]),
    ] {
        c.send(&json!({"type": "get", "key": "k", "ref": bad}));
        let e = c.recv();
        assert_eq!(e["code"], "bad_request", "ref {bad} -> {e}");
        assert!(e.get("ref").is_none(), "{e}");
    }
    // Unknown fields are ignored.
    let d = c.request(json!({"type": "get", "key": "k", "extra": {"deep": [1, 2]}, "v": 2}));
    assert_eq!(
        (&d["type"], &d["version"]),
        (&json!("doc"), &json!(0)),
        "{d}"
    );
    // Depth: the frame is level 1; 64 levels are fine, 65 are bad_json.
    let nested = |levels: usize| {
        // The value sits at level 2: `levels - 1` arrays deep in all.
        let depth = levels - 1;
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    };
    let frame = |levels: usize, op: &str| {
        format!(
            r#"{{"type":"put","key":"deep","base_version":0,"op":"{op}","ref":"{op}","value":{}}}"#,
            nested(levels)
        )
    };
    c.send_text(&frame(65, "d65"));
    let e = c.recv();
    assert_eq!(e["code"], "bad_json", "65 levels: {e}");
    c.send_text(&frame(64, "d64"));
    let a = c.reply_to("d64");
    assert_eq!(a["type"], "ack", "64 levels: {a}");
    let stored = get_doc(&mut c, "deep");
    assert_eq!(stored["value"].to_string(), nested(64));
    // A binary frame: unsupported; the connection stays.
    c.send_binary(b"\x00\x01{}");
    let e = c.recv();
    assert_eq!(e["code"], "unsupported", "{e}");
    assert_eq!(get_doc(&mut c, "k")["version"], 0);
}

#[test]
fn oversized_and_invalid_utf8_frames_close() {
    let server = SyncServer::start_with(
        "limits",
        Setup::default()
            .sync("max_frame_bytes", 1024)
            .sync("max_value_bytes", 512),
    );
    let mut c = Client::hello(&server, "dev");
    // Exactly the limit passes (the frame is a get padded with an unknown
    // field to 1024 bytes); one byte more closes with 1009.
    let framed = |len: usize| {
        let base = r#"{"type":"get","key":"k","ref":"fit","pad":""}"#.len();
        format!(
            r#"{{"type":"get","key":"k","ref":"fit","pad":"{}"}}"#,
            "p".repeat(len - base)
        )
    };
    c.send_text(&framed(1024));
    assert_eq!(c.reply_to("fit")["type"], "doc");
    c.send_text(&framed(1025));
    assert_eq!(c.expect_close(), Some(1009));

    let mut c = Client::hello(&server, "dev");
    c.send_invalid_utf8();
    assert_eq!(c.expect_close(), Some(1007));
}

#[test]
fn rate_limited_then_closed_with_1008() {
    let setup = Setup::default()
        .sync("rate_per_sec", 1)
        .sync("rate_burst", 3)
        .sync("rate_close_after", 10);
    let server = SyncServer::start_with("rate", setup);
    let mut c = Client::hello(&server, "dev");
    for _ in 0..3 {
        get_doc(&mut c, "k");
    }
    // The bucket is empty (a token a second): the next request is refused,
    // a write too, and it is not applied nor remembered.
    c.expect_error(json!({"type": "get", "key": "k"}), "rate_limited");
    let e = c.expect_error(
        json!({"type": "put", "key": "k", "base_version": 0, "value": 1, "op": "limited"}),
        "rate_limited",
    );
    assert!(e["ref"].is_string());
    // A frame error ranks before rate_limited.
    c.send_text("{");
    assert_eq!(c.recv()["code"], "bad_json");
    c.expect_error(json!({"type": "get", "key": "bad key"}), "bad_key");
    c.expect_error(json!({"type": "get"}), "bad_request");
    // Going on: closed with 1008 (within rate_close_after refusals).
    let mut closed = None;
    for _ in 0..20 {
        if !c.try_send_text(&json!({"type": "get", "key": "k"}).to_string()) {
            break;
        }
    }
    loop {
        match c.next_event(WAIT) {
            Event::Frame(v) => assert_eq!(v["code"], "rate_limited", "{v}"),
            Event::Closed(code) => {
                closed = Some(code);
                break;
            }
            Event::Timeout => break,
        }
    }
    assert_eq!(closed, Some(Some(1008)), "closed for abuse");
    // The limited write was not applied and not remembered: resent with
    // the same op on a new connection, it is applied now.
    let mut c = Client::hello(&server, "dev");
    assert_eq!(get_doc(&mut c, "k")["version"], 0);
    assert_eq!(put_ok(&mut c, "k", 0, json!(1), "limited"), 1);
}

#[test]
fn unavailable_while_the_database_is_locked() {
    let server =
        SyncServer::start_with("unavailable", Setup::default().sync("busy_timeout_ms", 50));
    let mut c = Client::hello(&server, "dev");
    put_ok(&mut c, "u", 0, json!(1), "u1");
    // A slow disk, made certain: another writer holds the write lock.
    let lock = rusqlite::Connection::open(server.db_path()).expect("open db");
    lock.execute_batch("BEGIN IMMEDIATE").expect("lock db");
    let e = c.expect_error(
        json!({"type": "put", "key": "u", "base_version": 1, "value": 2, "op": "u2"}),
        "unavailable",
    );
    assert!(e["ref"].is_string());
    lock.execute_batch("ROLLBACK").expect("unlock db");
    // Not remembered: resent with the same op, it is applied now.
    assert_eq!(put_ok(&mut c, "u", 1, json!(2), "u2"), 2);
    assert_eq!(get_doc(&mut c, "u")["value"], 2);
}

#[test]
fn auth_failed_closes_with_1008() {
    let secret = "s3cret";
    let setup = Setup::default().extra(&format!("[auth]\nsecret = \"{secret}\"\n"));
    let server = SyncServer::start_with("auth", setup);
    let good = token(secret, "dev-1", now_secs() + 600);
    let bad_tokens = [
        None,
        Some(token("wrong", "dev-1", now_secs() + 600)),
        Some(token(secret, "dev-1", now_secs() - 120)),
        Some(token(secret, "dev-2", now_secs() + 600)),
        Some("not.a.jwt".to_string()),
        Some(good[..good.len() - 2].to_string()),
    ];
    for t in bad_tokens {
        let mut c = Client::connect(&server);
        let mut hello = json!({"type": "hello", "client": "dev-1"});
        if let Some(t) = &t {
            hello["token"] = t.clone().into();
        }
        c.expect_error(hello, "auth_failed");
        assert_eq!(c.expect_close(), Some(1008), "token {t:?}");
    }
    // A bad client ranks before the token.
    let mut c = Client::connect(&server);
    c.expect_error(
        json!({"type": "hello", "client": "bad name", "token": good}),
        "bad_request",
    );
    // A good token; and one the binary's `token` subcommand made.
    let mut c = Client::hello_to(server.addr(), "dev-1", Some(&good));
    assert_eq!(get_doc(&mut c, "k")["version"], 0);
    let config = server.dir.join("sync.toml");
    let out = run_sync(&["-c", config.to_str().expect("path"), "token", "dev-9"]);
    assert!(out.status.success(), "{out:?}");
    let made = out
        .stdout
        .lines()
        .last()
        .expect("a token line")
        .trim()
        .to_string();
    let mut c = Client::hello_to(server.addr(), "dev-9", Some(&made));
    assert_eq!(get_doc(&mut c, "k")["version"], 0);
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let dir = temp_dir("badconfig");
    for (toml, names) in [
        ("[sync]\nmax_valu_bytes = 5\n", "max_valu_bytes"),
        ("[sync]\nkeep_versions = 0\n", "keep_versions"),
        ("[sync]\nmax_value_bytes = \"big\"\n", "max_value_bytes"),
        ("[sync]\nrate_per_sec = -1\n", "rate_per_sec"),
        ("[sync]\ndb_path = \"\"\n", "db_path"),
        (
            "[sync]\nmax_value_bytes = 2048\nmax_frame_bytes = 1024\n",
            "max_value_bytes",
        ),
        ("[server]\nmax_frame_bytes = 4096\n", "max_frame_bytes"),
        ("[auth]\nsecret = \"\"\n", "secret"),
        ("[nonsense]\nx = 1\n", "nonsense"),
    ] {
        let path = dir.join("sync.toml");
        std::fs::write(&path, toml).expect("write");
        let out = run_sync(&[
            "-c",
            path.to_str().expect("path"),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success(), "{toml:?} was accepted: {out:?}");
        assert!(
            out.stderr.contains(names),
            "{toml:?}: stderr does not name {names}: {}",
            out.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
