//! The sync server over real sockets: every request, reply shape and error
//! code of `shared/sync-protocol.md`, against a server of two workers
//! talked to as devices do. HTTP is `sync_http.rs`; many writers, ordering,
//! `since` and op memory across workers are `sync_order.rs`; crashes
//! `sync_crash.rs`; two nodes `sync_cluster.rs`.
//!
//! Which test covers what (WebSocket):
//!
//! | request / code | tests |
//! |---|---|
//! | `hello`, `welcome {epoch, client}` | `hello_comes_first_and_only_once`, `the_epoch_is_the_same_on_every_worker` |
//! | `get`, `doc` | `get_put_and_conflict`, `delete_and_the_deleted_flag` |
//! | `put`, `ack`, `conflict` | `get_put_and_conflict` |
//! | `patch` | `patch_merges_by_rfc_7396` |
//! | `delete` | `delete_and_the_deleted_flag` |
//! | `subscribe`, `subscribed`, `change` | `subscribe_unsubscribe_and_change_events` |
//! | `subscribe` with `since`, `changes` | `since_replays_what_was_missed_or_sends_a_doc`, `sync_order::a_reconnecting_client_gets_exactly_what_it_missed` |
//! | `unsubscribe`, `unsubscribed` | `subscribe_unsubscribe_and_change_events` |
//! | `list`, `keys` | `list_by_prefix_after_and_limit` |
//! | `ref` echo rules, unknown fields | `frames_that_are_not_requests`, `hello_comes_first_and_only_once` |
//! | `deleted: true` only on deletes | every test: [`Client`] checks each frame it reads |
//! | `bad_json` (and depth 64 / 65) | `frames_that_are_not_requests`, `rate_limited_then_closed_with_1008` |
//! | `unknown_type` | `frames_that_are_not_requests`, `hello_comes_first_and_only_once` |
//! | `not_hello` | `hello_comes_first_and_only_once` |
//! | `already_hello` | `hello_comes_first_and_only_once` |
//! | `bad_request` | `get_put_and_conflict`, `patch_merges_by_rfc_7396`, `subscribe_unsubscribe_and_change_events`, `list_by_prefix_after_and_limit`, `frames_that_are_not_requests`, `hello_comes_first_and_only_once` |
//! | `bad_key` | `get_put_and_conflict`, `list_by_prefix_after_and_limit`, `subscribe_unsubscribe_and_change_events`, `rate_limited_then_closed_with_1008` |
//! | `too_large` (sent, merged) | `too_large_as_sent_and_as_merged` |
//! | `too_many` | `too_many_subscriptions_are_refused_whole` |
//! | `rate_limited`, 1008 | `rate_limited_then_closed_with_1008` |
//! | `op_reused` | `op_memory_repeats_replies_and_refuses_reuse` |
//! | `not_found` | `delete_and_the_deleted_flag` |
//! | `unavailable` | `unavailable_while_the_database_is_locked` |
//! | `auth_failed`, 1008 | `auth_failed_closes_with_1008` |
//! | `unsupported` | `frames_that_are_not_requests` |
//! | 1009, 1007 | `oversized_and_invalid_utf8_frames_close` |
//! | config errors | `a_bad_config_is_refused_naming_the_key` |

mod common;
mod sync_util;

use common::{now_secs, token};
use serde_json::{json, Value};
use sync_util::{run_sync, temp_dir, Client, Event, Setup, SyncServer, WAIT};

/// `put KEY` from `base` with `value` as write attempt `op`; the reply.
#[track_caller]
fn put(c: &mut Client, key: &str, base: u64, value: Value, op: &str) -> Value {
    c.request(json!({"type": "put", "key": key, "base_version": base, "value": value, "op": op}))
}

/// `put` that must be acked with version `base + 1` (or 1 from base 0 on
/// an absent key); returns the version.
#[track_caller]
fn put_ok(c: &mut Client, key: &str, base: u64, value: Value, op: &str) -> u64 {
    let a = put(c, key, base, value, op);
    assert_eq!(a["type"], "ack", "put {key} from {base}: {a}");
    assert_eq!((&a["key"], &a["op"]), (&json!(key), &json!(op)), "{a}");
    a["version"].as_u64().expect("ack.version")
}

/// `get KEY`: the `doc`.
#[track_caller]
fn get(c: &mut Client, key: &str) -> Value {
    let d = c.request(json!({"type": "get", "key": key}));
    assert_eq!((&d["type"], &d["key"]), (&json!("doc"), &json!(key)), "{d}");
    d
}

/// `subscribe` (see [`Client::subscribe`]).
#[track_caller]
fn subscribe(c: &mut Client, keys: &[&str], since: Option<Value>) -> Vec<Value> {
    c.subscribe(keys, since)
}

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
    assert_eq!(get(&mut c, "k")["version"], 0);
    let mut second = Client::hello(&server, &name);
    assert_eq!(second.epoch, epoch);
    assert_eq!(get(&mut second, "k")["version"], 0);
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
    let stored = get(&mut c, "deep");
    assert_eq!(stored["value"].to_string(), nested(64));
    // A binary frame: unsupported; the connection stays.
    c.send_binary(b"\x00\x01{}");
    let e = c.recv();
    assert_eq!(e["code"], "unsupported", "{e}");
    assert_eq!(get(&mut c, "k")["version"], 0);
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
fn get_put_and_conflict() {
    let server = SyncServer::start("put");
    let mut c = Client::hello(&server, "dev");
    // An absent key: version 0, value null, no `deleted`.
    let d = get(&mut c, "k");
    assert_eq!(d["version"], 0);
    assert!(d["value"].is_null() && d.get("value").is_some(), "{d}");
    assert!(d.get("deleted").is_none(), "{d}");
    // Create-only from 0, then each write from the current version.
    let value = json!({"title": "list", "items": [1, "two", {"three": 3.5}], "ok": true});
    let a = put(&mut c, "k", 0, value.clone(), "op-1");
    assert_eq!(
        a,
        json!({"type": "ack", "key": "k", "version": 1, "op": "op-1", "ref": a["ref"]})
    );
    assert!(a["ref"].is_string());
    let d = get(&mut c, "k");
    assert_eq!((&d["version"], &d["value"]), (&json!(1), &value), "{d}");
    assert_eq!(put_ok(&mut c, "k", 1, json!("second"), "op-2"), 2);
    // Stale bases, 0 on a present key included: conflict with the current
    // version and value, nothing changed.
    for (base, op) in [(0, "c-0"), (1, "c-1"), (3, "c-3"), (1000, "c-1000")] {
        let r = put(&mut c, "k", base, json!("lost"), op);
        assert_eq!(
            r,
            json!({"type": "conflict", "key": "k", "version": 2, "value": "second", "op": op, "ref": r["ref"]}),
            "base {base}"
        );
    }
    assert_eq!(get(&mut c, "k")["value"], "second");
    // A base on an absent key other than 0: conflict at version 0.
    let r = put(&mut c, "absent", 4, json!(1), "c-absent");
    assert_eq!(
        (&r["type"], &r["version"]),
        (&json!("conflict"), &json!(0)),
        "{r}"
    );
    assert!(r["value"].is_null() && r.get("deleted").is_none(), "{r}");
    // Any JSON but null is a value; every type survives the round trip.
    for (i, v) in [
        json!(0),
        json!(""),
        json!(false),
        json!([]),
        json!({}),
        json!(-1.25e10),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("types-{i}");
        put_ok(&mut c, &key, 0, v.clone(), &format!("t{i}"));
        assert_eq!(get(&mut c, &key)["value"], v);
    }
    // Keys: 1-200 of letters, digits and . _ : / -
    let long = "k".repeat(200);
    for key in ["aZ09._:/-", long.as_str()] {
        assert_eq!(
            put_ok(&mut c, key, 0, json!(1), &format!("key-{}", key.len())),
            1
        );
        assert_eq!(get(&mut c, key)["version"], 1);
    }
    let too_long = "k".repeat(201);
    for bad in ["", "a b", "é", "a?b", "a#b", "a\\b", too_long.as_str()] {
        c.expect_error(json!({"type": "get", "key": bad}), "bad_key");
        c.expect_error(
            json!({"type": "put", "key": bad, "base_version": 0, "value": 1, "op": "bk"}),
            "bad_key",
        );
    }
    // Fields missing, of the wrong type or out of range: bad_request,
    // never clamped; and a bad field ranks before a bad key.
    let p = |f: &dyn Fn(&mut Value)| {
        let mut v = json!({"type": "put", "key": "k", "base_version": 2, "value": 1, "op": "br"});
        f(&mut v);
        v
    };
    for bad in [
        json!({"type": "get"}),
        json!({"type": "get", "key": 5}),
        p(&|v| v["base_version"] = json!(-1)),
        p(&|v| v["base_version"] = json!(1.5)),
        p(&|v| v["base_version"] = json!("1")),
        p(&|v| v["base_version"] = json!(null)),
        p(&|v| {
            v.as_object_mut().expect("object").remove("base_version");
        }),
        p(&|v| v["value"] = json!(null)),
        p(&|v| {
            v.as_object_mut().expect("object").remove("value");
        }),
        p(&|v| {
            v.as_object_mut().expect("object").remove("op");
        }),
        p(&|v| v["op"] = json!("")),
        p(&|v| v["op"] = json!(7)),
        p(&|v| v["op"] = json!("o".repeat(65))),
        p(&|v| {
            v["op"] = json!("");
            v["key"] = json!("bad key");
        }),
    ] {
        c.expect_error(bad, "bad_request");
    }
    // None of them wrote anything; an op of 64 characters is fine.
    assert_eq!(get(&mut c, "k")["version"], 2);
    assert_eq!(put_ok(&mut c, "k", 2, json!(3), &"é".repeat(64)), 3);
}

#[test]
fn too_large_as_sent_and_as_merged() {
    let server = SyncServer::start_with("large", Setup::default().sync("max_value_bytes", 100));
    let mut c = Client::hello(&server, "dev");
    // Compact UTF-8 JSON, non-ASCII unescaped: `"é…é"` of 49 is 100 bytes,
    // of 50 is 102, however the frame spells it (escaped, with spaces).
    let escaped = |n: usize| format!("\"{}\"", "\\u00e9".repeat(n));
    let frame = |n: usize, op: &str| {
        format!(
            "{{ \"type\" : \"put\", \"key\" : \"big\", \"base_version\" : 0, \"op\" : \"{op}\", \"ref\": \"{op}\", \"value\" :   {} }}",
            escaped(n)
        )
    };
    c.send_text(&frame(50, "p50"));
    let e = c.reply_to("p50");
    assert_eq!(e["code"], "too_large", "{e}");
    c.send_text(&frame(49, "p49"));
    assert_eq!(c.reply_to("p49")["type"], "ack");
    assert_eq!(get(&mut c, "big")["value"], json!("é".repeat(49)));
    // too_large of the value sent ranks before conflict.
    let r = put(&mut c, "big", 7, json!("x".repeat(99)), "p-stale");
    assert_eq!(r["code"], "too_large", "{r}");

    // A merge as sent: `{"a":"…"}` is 8 bytes plus the string.
    let small = json!({"a": "x".repeat(60)});
    put_ok(&mut c, "m", 0, small.clone(), "m0");
    let r = c.request(
        json!({"type": "patch", "key": "m", "base_version": 1, "op": "m1",
        "merge": {"b": "y".repeat(93)}}),
    );
    assert_eq!(r["code"], "too_large", "a merge of 101 bytes as sent: {r}");
    // Small as sent, one byte too large merged.
    let empty_b = json!({"a": "x".repeat(60), "b": ""}).to_string().len();
    let over = 101 - empty_b;
    let merge = json!({"b": "y".repeat(over)});
    let r = c.request(
        json!({"type": "patch", "key": "m", "base_version": 1, "op": "m2", "merge": merge}),
    );
    assert_eq!(r["code"], "too_large", "{r}");
    // The merged size ranks after the version check: a stale base is a
    // conflict.
    let r = c.request(
        json!({"type": "patch", "key": "m", "base_version": 9, "op": "m3", "merge": merge}),
    );
    assert_eq!(r["type"], "conflict", "{r}");
    // One byte less fits.
    let merge = json!({"b": "y".repeat(over - 1)});
    let r = c.request(
        json!({"type": "patch", "key": "m", "base_version": 1, "op": "m4", "merge": merge}),
    );
    assert_eq!(
        (&r["type"], &r["version"]),
        (&json!("ack"), &json!(2)),
        "{r}"
    );
    // Nothing too large was written.
    assert_eq!(get(&mut c, "m")["value"]["b"], json!("y".repeat(over - 1)));
}

#[test]
fn patch_merges_by_rfc_7396() {
    let server = SyncServer::start("patch");
    let mut c = Client::hello(&server, "dev");
    let patch = |c: &mut Client, key: &str, base: u64, merge: Value, op: &str| {
        c.request(
            json!({"type": "patch", "key": key, "base_version": base, "merge": merge, "op": op}),
        )
    };
    // An absent key patches `{}`: 201-like create from base 0.
    let a = patch(
        &mut c,
        "p",
        0,
        json!({"a": 1, "b": {"c": 2, "x": [1]}, "n": null}),
        "p1",
    );
    assert_eq!(
        (&a["type"], &a["version"], &a["op"]),
        (&json!("ack"), &json!(1), &json!("p1")),
        "{a}"
    );
    assert_eq!(
        get(&mut c, "p")["value"],
        json!({"a": 1, "b": {"c": 2, "x": [1]}})
    );
    // Members merge recursively, null removes, arrays replace.
    let a = patch(
        &mut c,
        "p",
        1,
        json!({"b": {"c": null, "d": 3, "x": [2, 3]}, "a": null, "e": "new"}),
        "p2",
    );
    assert_eq!(a["version"], 2, "{a}");
    assert_eq!(
        get(&mut c, "p")["value"],
        json!({"b": {"d": 3, "x": [2, 3]}, "e": "new"})
    );
    // A value that is not an object is replaced by the merge.
    put_ok(&mut c, "scalar", 0, json!([1, 2]), "s0");
    patch(&mut c, "scalar", 1, json!({"k": {"v": null}}), "s1");
    assert_eq!(get(&mut c, "scalar")["value"], json!({"k": {}}));
    // A conflict carries the current value; base 0 on a present key too.
    let r = patch(&mut c, "p", 0, json!({"z": 1}), "p3");
    assert_eq!(r["type"], "conflict");
    assert_eq!(
        r["value"],
        json!({"b": {"d": 3, "x": [2, 3]}, "e": "new"}),
        "{r}"
    );
    assert_eq!(r["version"], 2, "{r}");
    // `merge` must be an object.
    for merge in [json!([1]), json!(5), json!("s"), json!(null), json!(true)] {
        c.expect_error(
            json!({"type": "patch", "key": "p", "base_version": 2, "merge": merge, "op": "pb"}),
            "bad_request",
        );
    }
    c.expect_error(
        json!({"type": "patch", "key": "p", "base_version": 2, "op": "pb"}),
        "bad_request",
    );
    assert_eq!(get(&mut c, "p")["version"], 2);
}

#[test]
fn delete_and_the_deleted_flag() {
    let server = SyncServer::start("delete");
    let mut c = Client::hello(&server, "dev");
    let delete = |c: &mut Client, key: &str, base: u64, op: &str| {
        c.request(json!({"type": "delete", "key": key, "base_version": base, "op": op}))
    };
    // An absent key: not_found, from base 0; another base is a conflict
    // (the version check ranks first).
    c.expect_error(
        json!({"type": "delete", "key": "d", "base_version": 0, "op": "d0"}),
        "not_found",
    );
    let r = delete(&mut c, "d", 2, "d0b");
    assert_eq!(
        (&r["type"], &r["version"]),
        (&json!("conflict"), &json!(0)),
        "{r}"
    );
    put_ok(&mut c, "d", 0, json!({"v": 1}), "w1");
    put_ok(&mut c, "d", 1, json!({"v": 2}), "w2");
    let r = delete(&mut c, "d", 1, "d1");
    assert_eq!(
        (&r["type"], &r["version"], &r["value"]),
        (&json!("conflict"), &json!(2), &json!({"v": 2})),
        "{r}"
    );
    let a = delete(&mut c, "d", 2, "d2");
    assert_eq!(
        (&a["type"], &a["version"], &a["op"]),
        (&json!("ack"), &json!(3), &json!("d2")),
        "{a}"
    );
    // A deleted version says so; a key at version 0 does not.
    let d = get(&mut c, "d");
    assert_eq!(
        d,
        json!({"type": "doc", "key": "d", "version": 3, "value": null, "deleted": true, "ref": d["ref"]})
    );
    // Deleting again: not_found, from its version or from 0 (absent).
    for (base, op) in [(3, "d3"), (0, "d4")] {
        c.expect_error(
            json!({"type": "delete", "key": "d", "base_version": base, "op": op}),
            "not_found",
        );
    }
    // A conflict describing the deleted version says deleted too.
    let r = put(&mut c, "d", 1, json!(1), "late");
    assert_eq!(
        r,
        json!({"type": "conflict", "key": "d", "version": 3, "value": null, "deleted": true, "op": "late", "ref": r["ref"]})
    );
    // Writing again, from 0 (absent: create-only) or from its version;
    // the version goes on, never back.
    assert_eq!(put_ok(&mut c, "d", 0, json!("again"), "w4"), 4);
    let d = get(&mut c, "d");
    assert!(d.get("deleted").is_none(), "{d}");
    delete(&mut c, "d", 4, "d5");
    assert_eq!(put_ok(&mut c, "d", 5, json!("third"), "w6"), 6);
    // Bad deletes.
    for bad in [
        json!({"type": "delete", "key": "d", "op": "x"}),
        json!({"type": "delete", "key": "d", "base_version": 6}),
        json!({"type": "delete", "key": "d", "base_version": -1, "op": "x"}),
    ] {
        c.expect_error(bad, "bad_request");
    }
    c.expect_error(
        json!({"type": "delete", "key": "d d", "base_version": 6, "op": "x"}),
        "bad_key",
    );
    assert_eq!(get(&mut c, "d")["version"], 6);
}

#[test]
fn list_by_prefix_after_and_limit() {
    let server = SyncServer::start("list");
    let mut c = Client::hello(&server, "dev");
    // Keys whose code points order differently from any case-folding or
    // locale order; some deleted, some elsewhere.
    let mut names: Vec<String> = ["A", "B", "_", "-", ".", "0", ":", "a", "b/c", "b", "Z9"]
        .iter()
        .map(|s| format!("p/{s}"))
        .collect();
    for (i, k) in names.iter().enumerate() {
        put_ok(&mut c, k, 0, json!(i), &format!("l{i}"));
    }
    // Versions differ: p/a gets two more writes.
    put_ok(&mut c, "p/a", 1, json!("x"), "la2");
    put_ok(&mut c, "p/a", 2, json!("y"), "la3");
    put_ok(&mut c, "q/other", 0, json!(1), "lq");
    put_ok(&mut c, "p/gone", 0, json!(1), "lg");
    c.request(json!({"type": "delete", "key": "p/gone", "base_version": 1, "op": "lgd"}));
    names.sort();
    let version = |k: &str| if k == "p/a" { 3 } else { 1 };
    let items = |keys: &[String]| -> Value {
        keys.iter()
            .map(|k| json!({"key": k, "version": version(k)}))
            .collect()
    };

    let l = c.request(json!({"type": "list", "prefix": "p/"}));
    assert_eq!(
        l,
        json!({"type": "keys", "prefix": "p/", "items": items(&names), "ref": l["ref"]})
    );
    let l = c.request(json!({"type": "list", "prefix": "p/", "after": names[3], "limit": 4}));
    assert_eq!(l["items"], items(&names[4..8]), "{l}");
    // `after` need not exist; past the end is empty.
    let l = c.request(json!({"type": "list", "prefix": "p/", "after": "p/a0"}));
    let rest: Vec<String> = names
        .iter()
        .filter(|k| k.as_str() > "p/a0")
        .cloned()
        .collect();
    assert_eq!(l["items"], items(&rest));
    let l = c.request(json!({"type": "list", "prefix": "p/", "after": "p/zzz"}));
    assert_eq!(l["items"], json!([]));
    // No prefix: "" and every present key.
    let l = c.request(json!({"type": "list"}));
    assert_eq!(l["prefix"], "");
    let all: Vec<String> = l["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["key"].as_str().expect("key").to_string())
        .collect();
    let mut want = names.clone();
    want.push("q/other".into());
    want.sort();
    assert_eq!(all, want);
    // limit defaults to 100 and goes up to 1000.
    for i in 0..101 {
        put_ok(
            &mut c,
            &format!("many/{i:03}"),
            0,
            json!(i),
            &format!("many{i}"),
        );
    }
    let l = c.request(json!({"type": "list", "prefix": "many/"}));
    let got = l["items"].as_array().expect("items");
    assert_eq!(got.len(), 100);
    assert_eq!(got[99]["key"], "many/099");
    let l = c.request(json!({"type": "list", "prefix": "many/", "limit": 1000}));
    assert_eq!(l["items"].as_array().expect("items").len(), 101);
    let l = c.request(json!({"type": "list", "prefix": "many/", "limit": 1}));
    assert_eq!(l["items"], json!([{"key": "many/000", "version": 1}]));
    // Out of range, never clamped.
    for bad in [
        json!({"type": "list", "limit": 0}),
        json!({"type": "list", "limit": 1001}),
        json!({"type": "list", "limit": 2.5}),
        json!({"type": "list", "limit": "5"}),
        json!({"type": "list", "prefix": 1}),
        json!({"type": "list", "after": 1}),
    ] {
        c.expect_error(bad, "bad_request");
    }
    for bad in [
        json!({"type": "list", "prefix": "a b"}),
        json!({"type": "list", "after": ""}),
        json!({"type": "list", "after": "é"}),
        json!({"type": "list", "prefix": "k".repeat(201)}),
    ] {
        c.expect_error(bad, "bad_key");
    }
}

#[test]
fn subscribe_unsubscribe_and_change_events() {
    let server = SyncServer::start("subscribe");
    let mut watch = Client::hello(&server, "watch");
    let mut writer = Client::hello(&server, "writer");
    let mut writer2 = Client::hello(&server, "writer");
    put_ok(&mut writer, "s/present", 0, json!({"n": 1}), "s0");
    // Per key in order: a doc of each (version 0 for an absent one).
    let frames = subscribe(&mut watch, &["s/present", "s/absent"], None);
    assert_eq!(frames[0]["type"], "doc");
    assert_eq!(
        (&frames[0]["version"], &frames[0]["value"]),
        (&json!(1), &json!({"n": 1}))
    );
    assert_eq!(
        (&frames[1]["type"], &frames[1]["version"]),
        (&json!("doc"), &json!(0))
    );
    assert!(frames[1]["value"].is_null());
    subscribe(&mut writer, &["s/present"], None);
    subscribe(&mut writer2, &["s/present"], None);

    // A write: the writer gets its ack and then the change; everyone
    // subscribed gets the change, the writer's other connection too.
    let r = writer.send_request(json!({"type": "put", "key": "s/present", "base_version": 1,
        "value": {"n": 2}, "op": "s1"}));
    let ack = writer.recv();
    assert_eq!(
        (&ack["type"], &ack["ref"]),
        (&json!("ack"), &json!(r)),
        "the ack first: {ack}"
    );
    let want = json!({"type": "change", "key": "s/present", "version": 2, "value": {"n": 2}, "op": "s1", "client": "writer"});
    assert_eq!(writer.expect_change("s/present"), want);
    assert_eq!(writer2.expect_change("s/present"), want);
    assert_eq!(watch.expect_change("s/present"), want);
    // A conflict sends nothing: the next change the others see is the next
    // version.
    let r = put(&mut writer2, "s/present", 1, json!("stale"), "s-stale");
    assert_eq!(r["type"], "conflict");
    put_ok(&mut writer2, "s/present", 2, json!("three"), "s2");
    assert_eq!(watch.expect_change("s/present")["version"], 3);
    assert_eq!(writer.expect_change("s/present")["version"], 3);
    assert_eq!(writer2.expect_change("s/present")["version"], 3);
    // A delete's change says deleted.
    writer.request(json!({"type": "delete", "key": "s/present", "base_version": 3, "op": "s3"}));
    let ch = watch.expect_change("s/present");
    assert_eq!(
        ch,
        json!({"type": "change", "key": "s/present", "version": 4, "value": null, "deleted": true, "op": "s3", "client": "writer"})
    );
    // Subscribing again answers afresh, without doubling events.
    let frames = subscribe(&mut watch, &["s/present"], None);
    assert_eq!(
        (&frames[0]["version"], &frames[0]["deleted"]),
        (&json!(4), &json!(true))
    );
    put_ok(&mut writer2, "s/absent", 0, json!(1), "a1");
    assert_eq!(watch.expect_change("s/absent")["version"], 1);
    put_ok(&mut writer2, "s/present", 0, json!(5), "s4");
    let five = watch.expect_change("s/present");
    assert_eq!(five["version"], 5);
    put_ok(&mut writer2, "s/present", 5, json!(6), "s5");
    assert_eq!(
        watch.expect_change("s/present")["version"],
        6,
        "no second copy of version 5"
    );

    // Unsubscribe: no change of those keys comes after `unsubscribed`.
    let u = watch.request(json!({"type": "unsubscribe", "keys": ["s/present"]}));
    assert_eq!(
        (&u["type"], &u["keys"]),
        (&json!("unsubscribed"), &json!(["s/present"])),
        "{u}"
    );
    put_ok(&mut writer2, "s/present", 6, json!(7), "s6");
    // writer, still subscribed, has every version in order up to 7: the
    // server has sent version 7 out.
    for v in 4..=7 {
        assert_eq!(writer.expect_change("s/present")["version"], v);
    }
    let frames = subscribe(&mut watch, &["s/present"], None);
    assert_eq!(frames[0]["version"], 7);
    // Anything of s/present that came before the new doc is a leak; the
    // stream must go on at 8 (not 7 again).
    put_ok(&mut writer2, "s/present", 7, json!(8), "s7");
    let next = watch.expect_change("s/present");
    assert_eq!(
        next["version"], 8,
        "nothing of s/present while unsubscribed: {next}"
    );
    // Unsubscribing a key not subscribed is fine; keys must be good.
    let u = watch.request(json!({"type": "unsubscribe", "keys": ["never"]}));
    assert_eq!(u["type"], "unsubscribed");

    for bad in [
        json!({"type": "subscribe"}),
        json!({"type": "subscribe", "keys": []}),
        json!({"type": "subscribe", "keys": "s/present"}),
        json!({"type": "subscribe", "keys": ["a", "a"]}),
        json!({"type": "subscribe", "keys": [1]}),
        json!({"type": "subscribe", "keys": ["a"], "since": 5}),
        json!({"type": "subscribe", "keys": ["a"], "since": ["a"]}),
        json!({"type": "unsubscribe"}),
        json!({"type": "unsubscribe", "keys": []}),
        json!({"type": "unsubscribe", "keys": ["a", "a"]}),
    ] {
        watch.expect_error(bad, "bad_request");
    }
    for bad in [
        json!({"type": "subscribe", "keys": ["ok", "not ok"]}),
        json!({"type": "unsubscribe", "keys": [""]}),
    ] {
        watch.expect_error(bad, "bad_key");
    }
    // A refused subscribe subscribed nothing: watch writes "ok" itself (a
    // subscribed writer gets the change right after its ack), then
    // s/present; the first change it sees is of s/present.
    put_ok(&mut watch, "ok", 0, json!(1), "ok1");
    put_ok(&mut watch, "s/present", 8, json!(9), "s8");
    let next = watch.recv();
    assert_eq!(
        (&next["key"], &next["version"]),
        (&json!("s/present"), &json!(9)),
        "{next}"
    );
}

#[test]
fn since_replays_what_was_missed_or_sends_a_doc() {
    let server = SyncServer::start_with("since", Setup::default().sync("keep_versions", 5));
    let mut w = Client::hello(&server, "w");
    // Versions 1..=9 of "h", version 4 a delete.
    let mut values = vec![Value::Null];
    for v in 1..=9u64 {
        if v == 4 {
            w.request(json!({"type": "delete", "key": "h", "base_version": 3, "op": "h4"}));
            values.push(Value::Null);
        } else {
            let base = if v == 5 { 0 } else { v - 1 };
            put_ok(&mut w, "h", base, json!({"v": v}), &format!("h{v}"));
            values.push(json!({"v": v}));
        }
    }
    let replay = |from: u64| -> Value {
        (from + 1..=9)
            .map(|v| {
                let mut c = json!({"version": v, "value": values[v as usize], "op": format!("h{v}"), "client": "w"});
                if v == 4 {
                    c["deleted"] = json!(true);
                }
                c
            })
            .collect()
    };
    let mut c = Client::hello(&server, "reader");
    // Within keep_versions (9 - 5 = 4 <= S <= 9): exactly what was missed.
    for s in [4u64, 7, 8] {
        let f = subscribe(&mut c, &["h"], Some(json!({"h": s})));
        let want = json!({"type": "changes", "key": "h", "since": s, "version": 9, "changes": replay(s), "ref": f[0]["ref"]});
        assert_eq!(f[0], want, "since {s}");
    }
    // S = V: empty changes.
    let f = subscribe(&mut c, &["h"], Some(json!({"h": 9})));
    assert_eq!(
        (&f[0]["type"], &f[0]["changes"]),
        (&json!("changes"), &json!([])),
        "{}",
        f[0]
    );
    // Older than keep_versions, or ahead of the version: a doc of V.
    for s in [3u64, 0, 10, 1000] {
        let f = subscribe(&mut c, &["h"], Some(json!({"h": s})));
        assert_eq!(
            (&f[0]["type"], &f[0]["version"], &f[0]["value"]),
            (&json!("doc"), &json!(9), &json!({"v": 9})),
            "since {s}: {}",
            f[0]
        );
    }
    // `since` entries for other keys are ignored; keys without one get a doc.
    put_ok(&mut w, "g", 0, json!(1), "g1");
    let f = subscribe(&mut c, &["g", "h"], Some(json!({"h": 8, "other": 1})));
    assert_eq!(
        (&f[0]["type"], &f[0]["version"]),
        (&json!("doc"), &json!(1))
    );
    assert_eq!(
        (&f[1]["type"], &f[1]["changes"]),
        (&json!("changes"), &replay(8))
    );
    // Then the stream goes on from there, once.
    for v in 10..=11u64 {
        put_ok(&mut w, "h", v - 1, json!({"v": v}), &format!("h{v}"));
        assert_eq!(c.expect_change("h")["version"], v);
    }
}

#[test]
fn too_many_subscriptions_are_refused_whole() {
    let server = SyncServer::start_with("toomany", Setup::default().sync("max_subscriptions", 3));
    let mut c = Client::hello(&server, "dev");
    subscribe(&mut c, &["a", "b"], None);
    let e = c.expect_error(json!({"type": "subscribe", "keys": ["c", "d"]}), "too_many");
    assert!(e["ref"].is_string());
    // Refused whole: "c" was not taken, so one more key still fits; keys
    // already held do not count twice.
    subscribe(&mut c, &["c"], None);
    subscribe(&mut c, &["a", "b", "c"], None);
    c.expect_error(json!({"type": "subscribe", "keys": ["d"]}), "too_many");
    // Unsubscribing makes room.
    c.request(json!({"type": "unsubscribe", "keys": ["a"]}));
    subscribe(&mut c, &["d"], None);
    // "a" is gone, "d" is held: a write to each shows which.
    let mut w = Client::hello(&server, "w");
    put_ok(&mut w, "a", 0, json!(1), "wa");
    put_ok(&mut w, "d", 0, json!(1), "wd");
    assert_eq!(c.expect_change("d")["version"], 1);
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
        get(&mut c, "k");
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
    assert_eq!(get(&mut c, "k")["version"], 0);
    assert_eq!(put_ok(&mut c, "k", 0, json!(1), "limited"), 1);
}

#[test]
fn op_memory_repeats_replies_and_refuses_reuse() {
    let server = SyncServer::start("ops");
    let mut c = Client::hello(&server, "dev");
    let mut watch = Client::hello(&server, "watch");
    subscribe(&mut watch, &["o"], None);
    let a1 = put(&mut c, "o", 0, json!({"a": 1, "b": [1, 2]}), "op-1");
    assert_eq!(watch.expect_change("o")["version"], 1);
    // The same write again: the same reply with its own ref, and nothing
    // changes; the same JSON however it is spelled.
    let again = c.request(json!({"type": "put", "key": "o", "base_version": 0, "value": {"b": [1, 2], "a": 1}, "op": "op-1", "ref": "again"}));
    let mut want = a1.clone();
    want["ref"] = json!("again");
    assert_eq!(again, want);
    c.send_text(r#"{ "op" : "op-1", "type":"put", "value" : { "b":[ 1, 2 ] ,"a" : 1 }, "key":"o","base_version":0, "ref":"spaced"}"#);
    let spaced = c.reply_to("spaced");
    assert_eq!(
        (&spaced["type"], &spaced["version"]),
        (&json!("ack"), &json!(1)),
        "{spaced}"
    );
    assert_eq!(get(&mut c, "o")["version"], 1);
    // Another write under the same op: op_reused, whichever part differs.
    for other in [
        json!({"type": "put", "key": "o", "base_version": 0, "value": {"a": 2}, "op": "op-1"}),
        json!({"type": "put", "key": "o", "base_version": 1, "value": {"a": 1, "b": [1, 2]}, "op": "op-1"}),
        json!({"type": "put", "key": "o2", "base_version": 0, "value": {"a": 1, "b": [1, 2]}, "op": "op-1"}),
        json!({"type": "patch", "key": "o", "base_version": 0, "merge": {"a": 1, "b": [1, 2]}, "op": "op-1"}),
        json!({"type": "delete", "key": "o", "base_version": 0, "op": "op-1"}),
    ] {
        c.expect_error(other, "op_reused");
    }
    // A conflict is remembered too: repeated after the key moved on, the
    // reply is still the first conflict (op memory ranks before the
    // version check).
    let c1 = put(&mut c, "o", 0, json!("stale"), "op-c");
    assert_eq!(
        (&c1["type"], &c1["version"]),
        (&json!("conflict"), &json!(1))
    );
    put_ok(&mut c, "o", 1, json!("two"), "op-2");
    assert_eq!(watch.expect_change("o")["version"], 2);
    let mut c1_again = put(&mut c, "o", 0, json!("stale"), "op-c");
    c1_again["ref"] = c1["ref"].clone();
    assert_eq!(c1_again, c1);
    // A remembered delete ranks before not_found.
    let d = c.request(json!({"type": "delete", "key": "o", "base_version": 2, "op": "op-d"}));
    assert_eq!(d["type"], "ack");
    assert_eq!(watch.expect_change("o")["version"], 3);
    let mut d_again =
        c.request(json!({"type": "delete", "key": "o", "base_version": 2, "op": "op-d"}));
    d_again["ref"] = d["ref"].clone();
    assert_eq!(d_again, d);
    // Errors are not remembered: not_found, then the same op succeeds.
    c.expect_error(
        json!({"type": "delete", "key": "nf", "base_version": 0, "op": "op-nf"}),
        "not_found",
    );
    put_ok(&mut c, "nf", 0, json!(1), "op-nf0");
    let d = c.request(json!({"type": "delete", "key": "nf", "base_version": 1, "op": "op-nf"}));
    assert_eq!(d["type"], "ack", "{d}");
    // Another client's same op is another write.
    let mut other = Client::hello(&server, "other");
    let r = put(&mut other, "o", 0, json!({"a": 1, "b": [1, 2]}), "op-1");
    assert_eq!(
        (&r["type"], &r["version"]),
        (&json!("ack"), &json!(4)),
        "absent after the delete: {r}"
    );
    // No repeat sent a change: the next change after 3 is 4, then 5.
    assert_eq!(watch.expect_change("o")["version"], 4);
    put_ok(&mut other, "o", 4, json!(5), "op-5");
    assert_eq!(watch.expect_change("o")["version"], 5);
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
    assert_eq!(get(&mut c, "u")["value"], 2);
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
    assert_eq!(get(&mut c, "k")["version"], 0);
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
    assert_eq!(get(&mut c, "k")["version"], 0);
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
