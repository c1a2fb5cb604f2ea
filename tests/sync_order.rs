//! Many writers and readers of one key on both workers of a sync server:
//! one ack per version, every version to every subscriber once and in
//! order, `since` after a reconnect, op memory across workers and
//! connections, reads after an ack (`shared/sync-protocol.md`, "Writes",
//! "Subscriptions", "Ordering and durability").
//!
//! Clients are placed on chosen workers (see [`Client::hello_on`]), so the
//! cross-worker paths are the ones under test.

mod common;
mod sync_util;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use sync_util::{
    clients_on_both_workers, expect_every_change, put, race, Client, Setup, SyncServer,
};

#[test]
fn fifty_concurrent_writes_from_one_base_give_one_ack_per_version() {
    let mut server = SyncServer::start("race");
    let mut writers = clients_on_both_workers(&mut server, "w", 50);
    let first = writers[0].request(put("race", 0, &json!("start"), "race-start"));
    assert_eq!(first["version"], 1, "{first}");
    let (acked, rounds) = race(&mut writers, "race", 1);
    // All 50 from version 1 at once: one ack, 49 conflicts; then the
    // retries converge with every version acked once, 2 to 51.
    assert_eq!(rounds[0], 49, "round one: exactly one ack: {rounds:?}");
    let versions: Vec<u64> = acked.keys().copied().collect();
    assert_eq!(versions, (2..=51).collect::<Vec<u64>>());
    // And the store agrees with the last ack.
    let last = writers[1].request(json!({"type": "get", "key": "race"}));
    assert_eq!(last["version"], 51);
    assert_eq!(last["value"], acked[&51].0);
}

#[test]
fn subscribers_on_both_workers_see_every_version_once_in_order() {
    let mut server = SyncServer::start("fanout");
    let mut subscribers = clients_on_both_workers(&mut server, "sub", 4);
    let mut writers = clients_on_both_workers(&mut server, "pen", 4);
    for s in &mut subscribers {
        let f = s.subscribe(&["live"], None);
        assert_eq!(f[0]["version"], 0);
    }
    // 4 writers on two workers race 15 times each: 60 versions, written
    // concurrently from both workers.
    let mut acked = BTreeMap::new();
    let mut base = 0;
    for _ in 0..15 {
        let (got, _) = race(&mut writers, "live", base);
        base = *got.keys().last().expect("acks");
        acked.extend(got);
    }
    let versions: Vec<u64> = acked.keys().copied().collect();
    assert_eq!(versions, (1..=base).collect::<Vec<u64>>());
    // Each subscriber has every version once, in order, as written.
    for s in &mut subscribers {
        expect_every_change(s, "live", &acked);
    }
    // Nothing more: the next change of the key is the next version.
    let r = writers[0].request(put("live", base, &json!("end"), "live-end"));
    assert_eq!(r["type"], "ack");
    for s in &mut subscribers {
        assert_eq!(s.expect_change("live")["version"], base + 1);
    }
}

#[test]
fn a_reconnecting_client_gets_exactly_what_it_missed() {
    let setup = Setup::default().sync("keep_versions", 10);
    let mut server = SyncServer::start_with("reconnect", setup);
    let workers = server.worker_pids();
    let mut writer = Client::hello_on(&mut server, "writer", workers[1]);
    for v in 1..=3u64 {
        let r = writer.request(put("doc", v - 1, &json!({"v": v}), &format!("d{v}")));
        assert_eq!(r["version"], v, "{r}");
    }
    // A device on worker 0 follows the key, then goes away at version 3.
    let mut device = Client::hello_on(&mut server, "phone", workers[0]);
    let seen = device.subscribe(&["doc"], None)[0]["version"]
        .as_u64()
        .expect("version");
    assert_eq!(seen, 3);
    device.close();
    // Missed: 10 versions (keep_versions), the 5th a delete, written on
    // worker 1.
    let mut written = Vec::new();
    for v in 4..=13u64 {
        let r = if v == 8 {
            writer.request(json!({"type": "delete", "key": "doc", "base_version": v - 1, "op": format!("d{v}")}))
        } else {
            writer.request(put("doc", v - 1, &json!({"v": v}), &format!("d{v}")))
        };
        assert_eq!(
            (&r["type"], &r["version"]),
            (&json!("ack"), &json!(v)),
            "{r}"
        );
        let mut change = json!({"version": v, "value": if v == 8 { Value::Null } else { json!({"v": v}) }, "op": format!("d{v}"), "client": "writer"});
        if v == 8 {
            change["deleted"] = json!(true);
        }
        written.push(change);
    }
    // Back, on either worker: exactly the missed versions, then live.
    for &w in &workers {
        let mut device = Client::hello_on(&mut server, "phone", w);
        let f = device.subscribe(&["doc"], Some(json!({"doc": seen})));
        assert_eq!(
            (&f[0]["type"], &f[0]["since"], &f[0]["version"]),
            (&json!("changes"), &json!(seen), &json!(13)),
            "{}",
            f[0]
        );
        assert_eq!(f[0]["changes"], Value::Array(written.clone()));
        // Farther behind than keep_versions, or ahead: a doc of 13.
        for since in [seen - 1, 14] {
            let f = device.subscribe(&["doc"], Some(json!({"doc": since})));
            assert_eq!(
                (&f[0]["type"], &f[0]["version"]),
                (&json!("doc"), &json!(13)),
                "since {since}"
            );
        }
    }
    let mut device = Client::hello_on(&mut server, "phone", workers[0]);
    device.subscribe(&["doc"], Some(json!({"doc": 13})));
    // Live from there, each version once.
    for v in 14..=15u64 {
        writer.request(put("doc", v - 1, &json!(v), &format!("d{v}")));
        assert_eq!(device.expect_change("doc")["version"], v);
    }
}

#[test]
fn a_repeated_op_is_not_applied_twice_across_workers() {
    let mut server = SyncServer::start("repeat");
    let workers = server.worker_pids();
    let mut watchers = clients_on_both_workers(&mut server, "watch", 2);
    for w in &mut watchers {
        w.subscribe(&["r"], None);
    }
    // Written on worker 0, the connection then lost.
    let mut first = Client::hello_on(&mut server, "dev", workers[0]);
    let ack = first.request(json!({"type": "put", "key": "r", "base_version": 0, "value": [1], "op": "once", "ref": "a"}));
    assert_eq!((&ack["type"], &ack["version"]), (&json!("ack"), &json!(1)));
    first.close();
    // Sent again on worker 1 and on worker 0: the same ack, own ref.
    for (i, &w) in workers.iter().enumerate() {
        let mut again = Client::hello_on(&mut server, "dev", w);
        let r = format!("again-{i}");
        let reply = again.request(json!({"type": "put", "key": "r", "base_version": 0, "value": [1], "op": "once", "ref": r}));
        let mut want = ack.clone();
        want["ref"] = json!(r);
        assert_eq!(reply, want);
        // A conflict under a remembered op on another worker is refused.
        again.expect_error(
            json!({"type": "put", "key": "r", "base_version": 0, "value": [2], "op": "once"}),
            "op_reused",
        );
    }
    // Another client's same op is another write: a conflict here.
    let mut other = Client::hello_on(&mut server, "tablet", workers[1]);
    let r = other
        .request(json!({"type": "put", "key": "r", "base_version": 0, "value": [1], "op": "once"}));
    assert_eq!(
        (&r["type"], &r["version"]),
        (&json!("conflict"), &json!(1)),
        "{r}"
    );
    // That conflict is remembered under (tablet, once): a new op now.
    let r = other.request(
        json!({"type": "put", "key": "r", "base_version": 1, "value": [1], "op": "twice"}),
    );
    assert_eq!(
        (&r["type"], &r["version"]),
        (&json!("ack"), &json!(2)),
        "{r}"
    );
    // The watchers saw 1 and then 2: no repeat made a change.
    for w in &mut watchers {
        let ones: Vec<Value> = (0..2).map(|_| w.expect_change("r")).collect();
        assert_eq!(
            (&ones[0]["client"], &ones[0]["version"]),
            (&json!("dev"), &json!(1))
        );
        assert_eq!(
            (&ones[1]["client"], &ones[1]["version"]),
            (&json!("tablet"), &json!(2))
        );
    }
}

#[test]
fn reads_after_an_ack_see_it_on_every_worker() {
    let mut server = SyncServer::start("readafter");
    let workers = server.worker_pids();
    let mut writer = Client::hello_on(&mut server, "w", workers[0]);
    let mut reader = Client::hello_on(&mut server, "r", workers[1]);
    let http = sync_util::Http::new(server.addr());
    for v in 1..=40u64 {
        let a = writer.request(put("ra", v - 1, &json!(v), &format!("ra{v}")));
        assert_eq!(a["version"], v);
        let d = reader.request(json!({"type": "get", "key": "ra"}));
        assert!(
            d["version"].as_u64() >= Some(v),
            "get on the other worker after ack {v}: {d}"
        );
        let l = reader.request(json!({"type": "list", "prefix": "ra"}));
        assert!(
            l["items"][0]["version"].as_u64() >= Some(v),
            "list after ack {v}: {l}"
        );
        if v % 10 == 0 {
            let r = http.get("ra");
            assert!(
                r.json["version"].as_u64() >= Some(v),
                "HTTP GET after ack {v}"
            );
        }
    }
    // A subscribe started after an ack sees it.
    let a = writer.request(put("ra", 40, &json!("last"), "ra41"));
    assert_eq!(a["version"], 41);
    let f = reader.subscribe(&["ra"], None);
    assert_eq!(f[0]["version"], 41);
}
