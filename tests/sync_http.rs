//! The sync server's HTTP for backends (`shared/sync-protocol.md`, "HTTP
//! for backends") over real sockets, one connection per request.
//!
//! | behaviour | test |
//! |---|---|
//! | `GET` 200 + ETag, 404 (with `deleted` after a delete), `/healthz`, other paths | `get_put_and_delete_with_preconditions` |
//! | `PUT` `If-Match` / `If-None-Match: *`, 201 / 200 + ETag, 412 + body + ETag, 428, 400 | `get_put_and_delete_with_preconditions` |
//! | `PATCH` merge-patch, 415 + `Accept-Patch`, media type parameters | `patch_and_media_types` |
//! | `DELETE`, 404 `not_found` | `get_put_and_delete_with_preconditions` |
//! | 405 + `Allow` | `methods_and_paths` |
//! | 400 `bad_json` / `bad_request` / `bad_key`, 413 | `bad_bodies_and_keys` |
//! | percent-decoded keys, query ignored | `methods_and_paths` |
//! | `Idempotency-Key` repeats, 422 `op_reused` | `idempotency_key_repeats_the_first_answer` |
//! | `api_key`: 401 + `WWW-Authenticate: Bearer`, `/healthz` open | `api_key_guards_doc_only` |
//! | HTTP writes reach subscribers with `client: "http"` | `http_writes_reach_websocket_subscribers` |
//! | 503 `unavailable` | `unavailable_is_503` |
//! | `[amqp]`: writes from the updates queue answered on `reply_to` (ack, conflict, error, repeat), seen by WebSocket and HTTP clients | `queued_writes_are_answered_on_reply_to` |
//! | `[amqp]`: every change on the changes exchange, once, in version order per key, from both workers | `every_change_reaches_the_changes_exchange_in_order` |

mod common;
mod sync_util;

use common::rabbit;
use serde_json::{json, Value};
use sync_util::{clients_on_both_workers, etag, race, Client, Http, Setup, SyncServer, WAIT};

/// `If-Match: "V"`.
fn if_match(v: u64) -> (&'static str, String) {
    ("If-Match", etag(v))
}

#[test]
fn get_put_and_delete_with_preconditions() {
    let server = SyncServer::start("http-put");
    let h = Http::new(server.addr());
    // Absent: 404 with the doc's body, no ETag.
    let r = h.get("k");
    assert_eq!(r.status, 404);
    assert_eq!(r.json, json!({"key": "k", "version": 0, "value": null}));
    assert_eq!(r.etag(), None);
    // Create-only: If-None-Match: * -> 201, the new ETag.
    let r = h.put("k", &json!({"a": 1}), &[("If-None-Match", "*")]);
    assert_eq!(r.status, 201, "{:?}", r.raw);
    assert_eq!(r.etag(), Some("\"1\""));
    assert_eq!(
        (&r.json["key"], &r.json["version"]),
        (&json!("k"), &json!(1)),
        "{}",
        r.json
    );
    assert!(r.json["op"].is_string(), "{}", r.json);
    let r = h.get("k");
    assert_eq!((r.status, r.etag()), (200, Some("\"1\"")));
    assert_eq!(r.json, json!({"key": "k", "version": 1, "value": {"a": 1}}));
    // If-Match the current version: 200.
    let (n, v) = if_match(1);
    let r = h.put("k", &json!([2]), &[(n, &v)]);
    assert_eq!((r.status, r.etag()), (200, Some("\"2\"")), "{:?}", r.raw);
    assert_eq!(r.json["version"], 2);
    // Stale: 412 with the current doc and its ETag; create-only on a
    // present key too.
    for (name, value) in [if_match(1), ("If-None-Match", "*".to_string())] {
        let r = h.put("k", &json!("lost"), &[(name, &value)]);
        assert_eq!(r.status, 412, "{name}: {value}");
        assert_eq!(r.json, json!({"key": "k", "version": 2, "value": [2]}));
        assert_eq!(r.etag(), Some("\"2\""));
    }
    // A stale base on an absent key: 412 at version 0, no ETag.
    let (n, v) = if_match(3);
    let r = h.put("nokey", &json!(1), &[(n, &v)]);
    assert_eq!(r.status, 412);
    assert_eq!(r.json, json!({"key": "nokey", "version": 0, "value": null}));
    assert_eq!(r.etag(), None);
    // No precondition: 428; both, or other values: 400.
    let r = h.put("k", &json!(1), &[]);
    assert_eq!(r.status, 428);
    assert_eq!(r.json["code"], "bad_request", "{}", r.json);
    assert!(r.json["message"].is_string());
    for headers in [
        vec![("If-Match", "\"2\""), ("If-None-Match", "*")],
        vec![("If-Match", "2")],
        vec![("If-Match", "W/\"2\"")],
        vec![("If-Match", "\"x\"")],
        vec![("If-Match", "\"-1\"")],
        vec![("If-Match", "*")],
        vec![("If-None-Match", "\"2\"")],
    ] {
        let r = h.put("k", &json!(1), &headers);
        assert_eq!(r.status, 400, "{headers:?}");
        assert_eq!(r.json["code"], "bad_request", "{headers:?}: {}", r.json);
    }
    assert_eq!(h.get("k").json["version"], 2, "nothing was written");
    // DELETE: If-Match; then 404 with deleted; again: 404 not_found.
    assert_eq!(h.delete("k", &[]).status, 428);
    let (n, v) = if_match(2);
    let r = h.delete("k", &[(n, &v)]);
    assert_eq!((r.status, r.etag()), (200, Some("\"3\"")), "{:?}", r.raw);
    assert_eq!(r.json["version"], 3);
    let r = h.get("k");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json,
        json!({"key": "k", "version": 3, "value": null, "deleted": true})
    );
    assert_eq!(r.etag(), None);
    let (n, v) = if_match(3);
    let r = h.delete("k", &[(n, &v)]);
    assert_eq!(
        (r.status, &r.json["code"]),
        (404, &json!("not_found")),
        "{}",
        r.json
    );
    // A put that finds the key absent (deleted) is a 201 again.
    let r = h.put("k", &json!("back"), &[("If-None-Match", "*")]);
    assert_eq!((r.status, r.etag()), (201, Some("\"4\"")));
    // Health and other paths.
    let r = h.send("GET", "/healthz", &[], b"");
    assert_eq!((r.status, r.raw.body_text().trim()), (200, "ok"));
    for path in ["/nope", "/doc", "/docs/k"] {
        assert_eq!(h.send("GET", path, &[], b"").status, 404, "{path}");
    }
}

#[test]
fn patch_and_media_types() {
    let server = SyncServer::start("http-patch");
    let h = Http::new(server.addr());
    let r = h.patch(
        "p",
        &json!({"a": 1, "b": {"c": 2}}),
        &[("If-None-Match", "*")],
    );
    assert_eq!((r.status, r.etag()), (201, Some("\"1\"")), "{:?}", r.raw);
    let r = h.patch(
        "p",
        &json!({"b": {"c": null, "d": 4}}),
        &[("If-Match", "\"1\"")],
    );
    assert_eq!((r.status, r.etag()), (200, Some("\"2\"")), "{:?}", r.raw);
    assert_eq!(h.get("p").json["value"], json!({"a": 1, "b": {"d": 4}}));
    let r = h.patch("p", &json!({"z": 1}), &[("If-Match", "\"1\"")]);
    assert_eq!(r.status, 412);
    assert_eq!(r.json["value"], json!({"a": 1, "b": {"d": 4}}));
    // A wrong Content-Type: 415, with Accept-Patch on PATCH.
    let body = json!({"z": 1}).to_string();
    let r = h.send(
        "PATCH",
        "/doc/p",
        &[("Content-Type", "application/json"), ("If-Match", "\"2\"")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 415);
    assert_eq!(r.json["code"], "bad_request");
    let accept = r
        .header("Accept-Patch")
        .expect("Accept-Patch on a PATCH's 415");
    assert!(accept.contains("application/merge-patch+json"), "{accept}");
    for ct in [
        Some("text/plain"),
        Some("application/merge-patch+json"),
        None,
    ] {
        let mut headers = vec![("If-Match", "\"2\"")];
        if let Some(ct) = ct {
            headers.push(("Content-Type", ct));
        }
        let r = h.send("PUT", "/doc/p", &headers, b"1");
        assert_eq!(r.status, 415, "PUT with {ct:?}");
    }
    // Media type parameters (and case) are ignored.
    let r = h.send(
        "PUT",
        "/doc/p",
        &[
            ("Content-Type", "Application/JSON; charset=utf-8"),
            ("If-Match", "\"2\""),
        ],
        b"\"plain\"",
    );
    assert_eq!(r.status, 200, "{:?}", r.raw);
    let r = h.send(
        "PATCH",
        "/doc/p",
        &[
            ("Content-Type", "application/merge-patch+json;charset=UTF-8"),
            ("If-Match", "\"3\""),
        ],
        br#"{"x":1}"#,
    );
    assert_eq!(r.status, 200, "{:?}", r.raw);
    assert_eq!(h.get("p").json["value"], json!({"x": 1}));
    // A merge must be an object.
    let r = h.send(
        "PATCH",
        "/doc/p",
        &[
            ("Content-Type", "application/merge-patch+json"),
            ("If-Match", "\"4\""),
        ],
        b"[1]",
    );
    assert_eq!((r.status, &r.json["code"]), (400, &json!("bad_request")));
}

#[test]
fn bad_bodies_and_keys() {
    let setup = Setup::default()
        .sync("max_value_bytes", 200)
        .sync("max_frame_bytes", 1024);
    let server = SyncServer::start_with("http-bad", setup);
    let h = Http::new(server.addr());
    let put_raw = |body: &[u8]| {
        h.send(
            "PUT",
            "/doc/b",
            &[("Content-Type", "application/json"), ("If-None-Match", "*")],
            body,
        )
    };
    for body in [&b"{"[..], b"", b"1 2", b"\xff"] {
        let r = put_raw(body);
        assert_eq!(
            (r.status, &r.json["code"]),
            (400, &json!("bad_json")),
            "{body:?}"
        );
    }
    let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    // The body is level 1: 65 levels are too deep, 64 are fine.
    let r = put_raw(deep(65).as_bytes());
    assert_eq!((r.status, &r.json["code"]), (400, &json!("bad_json")));
    let r = put_raw(b"null");
    assert_eq!((r.status, &r.json["code"]), (400, &json!("bad_request")));
    let r = put_raw(deep(64).as_bytes());
    assert_eq!(r.status, 201, "64 levels: {:?}", r.raw);
    // Too large as a value (413 too_large) and as a body (413).
    let (n, v) = if_match(1);
    let r = h.put("b", &json!("x".repeat(199)), &[(n, &v)]);
    assert_eq!((r.status, &r.json["code"]), (413, &json!("too_large")));
    let r = h.put("b", &json!("x".repeat(2000)), &[(n, &v)]);
    assert_eq!(r.status, 413);
    assert_eq!(h.get("b").json["version"], 1);
    // Bad keys: 400 bad_key.
    let long = "k".repeat(201);
    for path in [
        "/doc/",
        "/doc/a%20b",
        "/doc/%C3%A9",
        "/doc/a~b",
        &format!("/doc/{long}"),
    ] {
        let r = h.send("GET", path, &[], b"");
        assert_eq!(
            (r.status, &r.json["code"]),
            (400, &json!("bad_key")),
            "{path}"
        );
    }
}

#[test]
fn methods_and_paths() {
    let server = SyncServer::start("http-paths");
    let h = Http::new(server.addr());
    let r = h.send(
        "POST",
        "/doc/k",
        &[("Content-Type", "application/json")],
        b"1",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.json["code"], "bad_request");
    let allow = r
        .header("Allow")
        .expect("Allow on 405")
        .to_ascii_uppercase();
    for m in ["GET", "PUT", "PATCH", "DELETE"] {
        assert!(allow.contains(m), "Allow: {allow}");
    }
    // Percent-decoded keys; the query is ignored.
    let r = h.put("a%2Fb%3Ac", &json!(1), &[("If-None-Match", "*")]);
    assert_eq!(
        (r.status, &r.json["key"]),
        (201, &json!("a/b:c")),
        "{:?}",
        r.raw
    );
    let mut ws = Client::hello(&server, "dev");
    let d = ws.request(json!({"type": "get", "key": "a/b:c"}));
    assert_eq!((&d["version"], &d["value"]), (&json!(1), &json!(1)));
    let r = h.get("a/b:c?x=1&y");
    assert_eq!((r.status, &r.json["key"]), (200, &json!("a/b:c")));
    let r = h.get("a%2fb%3ac?v=2");
    assert_eq!((r.status, r.etag()), (200, Some("\"1\"")));
    let r = h.put("q?If-Match=1", &json!(2), &[("If-None-Match", "*")]);
    assert_eq!((r.status, &r.json["key"]), (201, &json!("q")));
}

#[test]
fn idempotency_key_repeats_the_first_answer() {
    let server = SyncServer::start("http-idem");
    let h = Http::new(server.addr());
    let mut watch = Client::hello(&server, "watch");
    watch.subscribe(&["i"], None);
    let first = h.put(
        "i",
        &json!({"n": 1}),
        &[("If-None-Match", "*"), ("Idempotency-Key", "idem-1")],
    );
    assert_eq!(first.status, 201);
    assert_eq!(first.json["op"], "idem-1");
    let ch = watch.expect_change("i");
    assert_eq!(
        (&ch["version"], &ch["op"], &ch["client"]),
        (&json!(1), &json!("idem-1"), &json!("http"))
    );
    // The repeat: the first status, ETag and body, nothing written.
    let again = h.put(
        "i",
        &json!({"n": 1}),
        &[("If-None-Match", "*"), ("Idempotency-Key", "idem-1")],
    );
    assert_eq!(
        (again.status, again.etag(), &again.json),
        (201, first.etag(), &first.json)
    );
    // Another write under it: 422 op_reused.
    let r = h.put(
        "i",
        &json!({"n": 2}),
        &[("If-None-Match", "*"), ("Idempotency-Key", "idem-1")],
    );
    assert_eq!((r.status, &r.json["code"]), (422, &json!("op_reused")));
    // A 412 is remembered too, even after the key moved on.
    let stale = h.put(
        "i",
        &json!("s"),
        &[("If-Match", "\"7\""), ("Idempotency-Key", "idem-s")],
    );
    assert_eq!(stale.status, 412);
    let moved = h.put("i", &json!({"n": 3}), &[("If-Match", "\"1\"")]);
    assert_eq!(moved.status, 200);
    let op = moved.json["op"].as_str().expect("op").to_string();
    let again = h.put(
        "i",
        &json!("s"),
        &[("If-Match", "\"7\""), ("Idempotency-Key", "idem-s")],
    );
    assert_eq!(
        (again.status, again.etag(), &again.json),
        (412, stale.etag(), &stale.json)
    );
    // Without a key the server picks a unique op per write.
    let other = h.put("i", &json!({"n": 4}), &[("If-Match", "\"2\"")]);
    assert_eq!(other.status, 200);
    assert_ne!(other.json["op"], json!(op));
    // Idempotency keys are ops of client "http": a device's same op is
    // another write.
    let mut dev = Client::hello(&server, "dev");
    let r = dev.request(
        json!({"type": "put", "key": "i", "base_version": 0, "value": {"n": 1}, "op": "idem-1"}),
    );
    assert_eq!(
        r["type"], "conflict",
        "another client's op is another write: {r}"
    );
    // Too long a key is a 400.
    let long = "i".repeat(65);
    let r = h.put(
        "i",
        &json!(5),
        &[("If-Match", "\"3\""), ("Idempotency-Key", &long)],
    );
    assert_eq!(r.status, 400);
    // Every version reached the subscriber once, in order.
    for v in 2..=3 {
        let ch = watch.expect_change("i");
        assert_eq!((&ch["version"], &ch["client"]), (&json!(v), &json!("http")));
    }
}

#[test]
fn api_key_guards_doc_only() {
    let server = SyncServer::start_with("http-key", Setup::default().sync("api_key", "\"k3y\""));
    let mut h = Http::new(server.addr());
    for key in [None, Some("wrong"), Some("K3Y")] {
        h.api_key = key.map(String::from);
        let r = h.get("k");
        assert_eq!(r.status, 401, "key {key:?}");
        assert_eq!(r.json["code"], "auth_failed");
        let challenge = r.header("WWW-Authenticate").expect("WWW-Authenticate");
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let r = h.put("k", &json!(1), &[("If-None-Match", "*")]);
        assert_eq!(r.status, 401);
    }
    h.api_key = None;
    let r = h.send("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
    h.api_key = Some("k3y".into());
    assert_eq!(h.get("k").status, 404);
    assert_eq!(h.put("k", &json!(1), &[("If-None-Match", "*")]).status, 201);
    assert_eq!(h.get("k").status, 200);
}

#[test]
fn http_writes_reach_websocket_subscribers() {
    let mut server = SyncServer::start("http-ws");
    let mut watchers = clients_on_both_workers(&mut server, "watch", 2);
    for w in &mut watchers {
        w.subscribe(&["x"], None);
    }
    let h = Http::new(server.addr());
    let mut base = 0;
    for (i, body) in [json!({"v": 1}), json!({"v": 2})].iter().enumerate() {
        let r = if i == 0 {
            h.put("x", body, &[("If-None-Match", "*")])
        } else {
            h.patch("x", body, &[("If-Match", &etag(base))])
        };
        assert!(r.status == 200 || r.status == 201, "{:?}", r.raw);
        base = r.json["version"].as_u64().expect("version");
    }
    let r = h.delete("x", &[("If-Match", &etag(base))]);
    assert_eq!(r.status, 200);
    for w in &mut watchers {
        let mut got: Vec<Value> = Vec::new();
        for _ in 0..3 {
            let ch = w.expect_change("x");
            assert_eq!(ch["client"], "http", "{ch}");
            got.push(ch["version"].clone());
        }
        assert_eq!(got, [json!(1), json!(2), json!(3)]);
    }
}

#[test]
fn unavailable_is_503() {
    let server = SyncServer::start_with("http-503", Setup::default().sync("busy_timeout_ms", 50));
    let h = Http::new(server.addr());
    assert_eq!(h.put("u", &json!(1), &[("If-None-Match", "*")]).status, 201);
    let lock = rusqlite::Connection::open(server.db_path()).expect("open db");
    lock.execute_batch("BEGIN IMMEDIATE").expect("lock db");
    let r = h.put(
        "u",
        &json!(2),
        &[("If-Match", "\"1\""), ("Idempotency-Key", "u2")],
    );
    assert_eq!((r.status, &r.json["code"]), (503, &json!("unavailable")));
    lock.execute_batch("ROLLBACK").expect("unlock db");
    let r = h.put(
        "u",
        &json!(2),
        &[("If-Match", "\"1\""), ("Idempotency-Key", "u2")],
    );
    assert_eq!(
        (r.status, r.etag()),
        (200, Some("\"2\"")),
        "not remembered: applied now"
    );
}

/// The broker's side of an `[amqp]` test: a client, and the queues and
/// exchange named for this test alone, deleted when it ends, passed or not.
struct Broker {
    client: rabbit::Client,
    updates: String,
    changes: String,
    /// The push queue and the test's own queues.
    queues: Vec<String>,
}

impl Broker {
    /// A queue of the test's own, declared (and deleted at the end).
    fn queue(&mut self, prefix: &str) -> String {
        let name = rabbit::unique(prefix);
        self.client.declare(&name);
        self.queues.push(name.clone());
        name
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for q in self.queues.iter().chain([&self.updates]) {
            self.client.delete(q);
        }
        self.client.delete_exchange(&self.changes);
    }
}

/// A sync server on a broker: the server first, so that it stops before
/// the broker's side deletes the queues (a bridge still running would
/// declare them again).
struct Amqp {
    server: SyncServer,
    broker: Broker,
}

/// A sync server with `[amqp]` on the machine's broker, its updates queue,
/// changes exchange and push queue named for this test alone.
fn amqp_server(name: &str) -> Amqp {
    let url = rabbit::machine_url();
    let broker = Broker {
        client: rabbit::Client::connect(&url, WAIT),
        updates: rabbit::unique("sync.updates"),
        changes: rabbit::unique("sync.changes"),
        queues: vec![rabbit::unique("sync.push")],
    };
    // Declared here too, so that what the test publishes before the
    // server's bridge is up waits in the queue.
    broker.client.declare(&broker.updates);
    let setup = Setup::default()
        .sync("updates_queue", format!("{:?}", broker.updates))
        .sync("changes_exchange", format!("{:?}", broker.changes))
        .extra(&format!(
            "[amqp]\nurl = \"{url}\"\nqueue = \"{}\"\n",
            broker.queues[0]
        ));
    Amqp {
        server: SyncServer::start_with(name, setup),
        broker,
    }
}

/// How long a queue must stay quiet after what was expected, to show that
/// nothing more (a repeat) comes.
const QUIET: std::time::Duration = std::time::Duration::from_millis(500);

#[test]
fn queued_writes_are_answered_on_reply_to() {
    let mut t = amqp_server("amqp-updates");
    let (server, broker) = (&t.server, &mut t.broker);
    let replies = broker.queue("sync.replies");
    let (rmq, updates) = (&broker.client, &broker.updates);
    let mut device = Client::hello(server, "phone");
    device.subscribe(&["doc"], None);
    let send = |body: &str, correlation: &str| {
        let props = lapin::BasicProperties::default()
            .with_reply_to(replies.as_str().into())
            .with_correlation_id(correlation.into());
        rmq.publish_confirmed(updates, [body.to_string()], props, 1)
            .expect("confirmed");
    };
    let mut answers = rmq.subscribe(&replies);
    let mut answer = |correlation: &str| -> Value {
        let got = rmq.take(&mut answers, 1, WAIT, std::time::Duration::ZERO);
        let (body, id) = got.first().expect("an answer on reply_to");
        assert_eq!(id.as_deref(), Some(correlation), "{body}");
        serde_json::from_str(body).expect("a JSON answer")
    };
    let write = json!({"key": "doc", "base_version": 0, "value": {"a": 1}, "op": "w1"});
    send(&write.to_string(), "c1");
    assert_eq!(
        answer("c1"),
        json!({"type": "ack", "key": "doc", "version": 1, "op": "w1"})
    );
    let change = device.expect_change("doc");
    assert_eq!(
        (change["version"].clone(), change["client"].clone()),
        (json!(1), json!("amqp"))
    );
    let doc = Http::new(server.addr()).get("doc");
    assert_eq!(doc.json["value"], json!({"a": 1}), "{:?}", doc.raw);

    // The same write again (as a redelivery brings it): the same answer,
    // from op memory, and no second change (the next one is version 2's).
    send(&write.to_string(), "c2");
    assert_eq!(answer("c2")["version"], 1);
    // A stale base: a conflict with the current value.
    let stale = json!({"key": "doc", "base_version": 0, "value": {"b": 2}, "op": "w2"});
    send(&stale.to_string(), "c3");
    assert_eq!(
        answer("c3"),
        json!({"type": "conflict", "key": "doc", "version": 1, "value": {"a": 1}, "op": "w2"})
    );
    // Malformed: an error, not retried (the next answer is the next write's).
    send("{not json", "c4");
    assert_eq!(answer("c4")["code"], "bad_json");
    send(r#"{"type": "get", "key": "doc"}"#, "c5");
    assert_eq!(answer("c5")["code"], "unknown_type");
    let patch =
        json!({"type": "patch", "key": "doc", "base_version": 1, "merge": {"b": 2}, "op": "w3"});
    send(&patch.to_string(), "c6");
    assert_eq!(answer("c6")["version"], 2);
    let change = device.expect_change("doc");
    assert_eq!(
        (change["version"].clone(), change["value"].clone()),
        (json!(2), json!({"a": 1, "b": 2}))
    );
}

#[test]
fn every_change_reaches_the_changes_exchange_in_order() {
    const ROUNDS: usize = 8;
    let mut t = amqp_server("amqp-changes");
    let events = t.broker.queue("sync.events");
    t.broker.client.bind(&events, &t.broker.changes, "#");
    let mut writers = clients_on_both_workers(&mut t.server, "w", 2);
    let mut heads = std::collections::BTreeMap::new();
    for key in ["k.a", "k.b", "k.c"] {
        let mut head = 0;
        for _ in 0..ROUNDS {
            let (acks, _) = race(&mut writers, key, head);
            head = *acks.keys().last().expect("acks");
        }
        heads.insert(key.to_string(), head);
    }
    let h = Http::new(t.server.addr());
    let r = h.put(
        "k.a",
        &json!("from http"),
        &[("If-Match", &etag(heads["k.a"]))],
    );
    assert_eq!(r.status, 200, "{:?}", r.raw);
    *heads.get_mut("k.a").unwrap() += 1;
    let total: u64 = heads.values().sum();
    // Then a moment more: a repeat after the last would show.
    let got = t
        .broker
        .client
        .consume_then_quiet(&events, total as usize, WAIT, QUIET);
    let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
    for (body, _) in &got {
        let c: Value = serde_json::from_str(body).expect("a change event");
        assert_eq!(c["type"], "change", "{c}");
        let key = c["key"].as_str().expect("key").to_string();
        let version = c["version"].as_u64().expect("version");
        let last = seen.insert(key.clone(), version).unwrap_or(0);
        assert_eq!(version, last + 1, "{key}: version {version} after {last}");
    }
    assert_eq!(seen, heads, "every change of every key, in order");
    assert_eq!(got.len() as u64, total, "none twice without faults");
}
