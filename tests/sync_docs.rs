//! The sync server's documents over WebSocket (`shared/sync-protocol.md`,
//! "Client to server", "Writes", "Subscriptions"): `get`, `put`, `patch`,
//! `delete`, `list`, `subscribe` and `unsubscribe` with their replies and
//! errors, and op memory, against a server of two workers. The table of
//! which test covers which request and code is in `sync.rs`.

mod common;
mod sync_util;

use serde_json::{json, Value};
use sync_util::{get_doc, put_ok, put_reply, Client, Setup, SyncServer};

#[test]
fn get_put_and_conflict() {
    let server = SyncServer::start("put");
    let mut c = Client::hello(&server, "dev");
    // An absent key: version 0, value null, no `deleted`.
    let d = get_doc(&mut c, "k");
    assert_eq!(d["version"], 0);
    assert!(d["value"].is_null() && d.get("value").is_some(), "{d}");
    assert!(d.get("deleted").is_none(), "{d}");
    // Create-only from 0, then each write from the current version.
    let value = json!({"title": "list", "items": [1, "two", {"three": 3.5}], "ok": true});
    let a = put_reply(&mut c, "k", 0, value.clone(), "op-1");
    assert_eq!(
        a,
        json!({"type": "ack", "key": "k", "version": 1, "op": "op-1", "ref": a["ref"]})
    );
    assert!(a["ref"].is_string());
    let d = get_doc(&mut c, "k");
    assert_eq!((&d["version"], &d["value"]), (&json!(1), &value), "{d}");
    assert_eq!(put_ok(&mut c, "k", 1, json!("second"), "op-2"), 2);
    // Stale bases, 0 on a present key included: conflict with the current
    // version and value, nothing changed.
    for (base, op) in [(0, "c-0"), (1, "c-1"), (3, "c-3"), (1000, "c-1000")] {
        let r = put_reply(&mut c, "k", base, json!("lost"), op);
        assert_eq!(
            r,
            json!({"type": "conflict", "key": "k", "version": 2, "value": "second", "op": op, "ref": r["ref"]}),
            "base {base}"
        );
    }
    assert_eq!(get_doc(&mut c, "k")["value"], "second");
    // A base on an absent key other than 0: conflict at version 0.
    let r = put_reply(&mut c, "absent", 4, json!(1), "c-absent");
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
        assert_eq!(get_doc(&mut c, &key)["value"], v);
    }
    // Keys: 1-200 of letters, digits and . _ : / -
    let long = "k".repeat(200);
    for key in ["aZ09._:/-", long.as_str()] {
        assert_eq!(
            put_ok(&mut c, key, 0, json!(1), &format!("key-{}", key.len())),
            1
        );
        assert_eq!(get_doc(&mut c, key)["version"], 1);
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
    assert_eq!(get_doc(&mut c, "k")["version"], 2);
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
    assert_eq!(get_doc(&mut c, "big")["value"], json!("é".repeat(49)));
    // too_large of the value sent ranks before conflict.
    let r = put_reply(&mut c, "big", 7, json!("x".repeat(99)), "p-stale");
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
    assert_eq!(
        get_doc(&mut c, "m")["value"]["b"],
        json!("y".repeat(over - 1))
    );
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
        get_doc(&mut c, "p")["value"],
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
        get_doc(&mut c, "p")["value"],
        json!({"b": {"d": 3, "x": [2, 3]}, "e": "new"})
    );
    // A value that is not an object is replaced by the merge.
    put_ok(&mut c, "scalar", 0, json!([1, 2]), "s0");
    patch(&mut c, "scalar", 1, json!({"k": {"v": null}}), "s1");
    assert_eq!(get_doc(&mut c, "scalar")["value"], json!({"k": {}}));
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
    assert_eq!(get_doc(&mut c, "p")["version"], 2);
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
    let d = get_doc(&mut c, "d");
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
    let r = put_reply(&mut c, "d", 1, json!(1), "late");
    assert_eq!(
        r,
        json!({"type": "conflict", "key": "d", "version": 3, "value": null, "deleted": true, "op": "late", "ref": r["ref"]})
    );
    // Writing again, from 0 (absent: create-only) or from its version;
    // the version goes on, never back.
    assert_eq!(put_ok(&mut c, "d", 0, json!("again"), "w4"), 4);
    let d = get_doc(&mut c, "d");
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
    assert_eq!(get_doc(&mut c, "d")["version"], 6);
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
    let frames = watch.subscribe(&["s/present", "s/absent"], None);
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
    writer.subscribe(&["s/present"], None);
    writer2.subscribe(&["s/present"], None);

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
    let r = put_reply(&mut writer2, "s/present", 1, json!("stale"), "s-stale");
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
    let frames = watch.subscribe(&["s/present"], None);
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
    let frames = watch.subscribe(&["s/present"], None);
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
        let f = c.subscribe(&["h"], Some(json!({"h": s})));
        let want = json!({"type": "changes", "key": "h", "since": s, "version": 9, "changes": replay(s), "ref": f[0]["ref"]});
        assert_eq!(f[0], want, "since {s}");
    }
    // S = V: empty changes.
    let f = c.subscribe(&["h"], Some(json!({"h": 9})));
    assert_eq!(
        (&f[0]["type"], &f[0]["changes"]),
        (&json!("changes"), &json!([])),
        "{}",
        f[0]
    );
    // Older than keep_versions, or ahead of the version: a doc of V.
    for s in [3u64, 0, 10, 1000] {
        let f = c.subscribe(&["h"], Some(json!({"h": s})));
        assert_eq!(
            (&f[0]["type"], &f[0]["version"], &f[0]["value"]),
            (&json!("doc"), &json!(9), &json!({"v": 9})),
            "since {s}: {}",
            f[0]
        );
    }
    // `since` entries for other keys are ignored; keys without one get a doc.
    put_ok(&mut w, "g", 0, json!(1), "g1");
    let f = c.subscribe(&["g", "h"], Some(json!({"h": 8, "other": 1})));
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
    c.subscribe(&["a", "b"], None);
    let e = c.expect_error(json!({"type": "subscribe", "keys": ["c", "d"]}), "too_many");
    assert!(e["ref"].is_string());
    // Refused whole: "c" was not taken, so one more key still fits; keys
    // already held do not count twice.
    c.subscribe(&["c"], None);
    c.subscribe(&["a", "b", "c"], None);
    c.expect_error(json!({"type": "subscribe", "keys": ["d"]}), "too_many");
    // Unsubscribing makes room.
    c.request(json!({"type": "unsubscribe", "keys": ["a"]}));
    c.subscribe(&["d"], None);
    // "a" is gone, "d" is held: a write to each shows which.
    let mut w = Client::hello(&server, "w");
    put_ok(&mut w, "a", 0, json!(1), "wa");
    put_ok(&mut w, "d", 0, json!(1), "wd");
    assert_eq!(c.expect_change("d")["version"], 1);
}

#[test]
fn op_memory_repeats_replies_and_refuses_reuse() {
    let server = SyncServer::start("ops");
    let mut c = Client::hello(&server, "dev");
    let mut watch = Client::hello(&server, "watch");
    watch.subscribe(&["o"], None);
    let a1 = put_reply(&mut c, "o", 0, json!({"a": 1, "b": [1, 2]}), "op-1");
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
    assert_eq!(get_doc(&mut c, "o")["version"], 1);
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
    let c1 = put_reply(&mut c, "o", 0, json!("stale"), "op-c");
    assert_eq!(
        (&c1["type"], &c1["version"]),
        (&json!("conflict"), &json!(1))
    );
    put_ok(&mut c, "o", 1, json!("two"), "op-2");
    assert_eq!(watch.expect_change("o")["version"], 2);
    let mut c1_again = put_reply(&mut c, "o", 0, json!("stale"), "op-c");
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
    let r = put_reply(&mut other, "o", 0, json!({"a": 1, "b": [1, 2]}), "op-1");
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
