//! Crash safety of the sync server's history (`shared/sync-protocol.md`,
//! "Ordering and durability"): every acked write survives SIGKILL of the
//! workers and then of the master, versions are never reused after a
//! restart, and the epoch stays.

mod common;
mod sync_util;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use sync_util::{put, Client, SyncServer, WAIT};

/// Keys written, and versions per key: 30 x 10 = 300 acked writes.
const KEYS: usize = 30;
const VERSIONS: u64 = 10;

/// Checks with a fresh client that every key has its last acked version
/// and value.
#[track_caller]
fn check_all(server: &SyncServer, acked: &BTreeMap<String, (u64, Value)>, when: &str) {
    let mut reader = Client::hello(server, "reader");
    for (key, (version, value)) in acked {
        let d = reader.request(json!({"type": "get", "key": key}));
        assert_eq!(
            (&d["version"], &d["value"]),
            (&json!(version), value),
            "{key} {when}"
        );
    }
}

#[test]
fn acked_writes_survive_sigkill_of_workers_and_master() {
    let mut server = SyncServer::start("crash");
    let epoch = Client::hello(&server, "probe").epoch;
    let workers = server.worker_pids();
    // Two writers, one on each worker, writing into one database at once,
    // each its own half of the keys; each round sends a version of every
    // key of its half before reading the acks.
    let mut writers: Vec<Client> = workers
        .iter()
        .map(|&w| Client::hello_on(&mut server, "writer", w))
        .collect();
    let mut acked: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    for v in 1..=VERSIONS {
        let mut sent = Vec::new();
        for k in 0..KEYS {
            let key = format!("crash/{k:02}");
            let value = json!({"k": k, "v": v});
            let w = k % writers.len();
            let r = writers[w].send_request(put(&key, v - 1, &value, &format!("{key}-{v}")));
            sent.push((w, r, key, value));
        }
        for (w, r, key, value) in sent {
            let a = writers[w].reply_to(&r);
            assert_eq!(
                (&a["type"], &a["version"]),
                (&json!("ack"), &json!(v)),
                "{a}"
            );
            acked.insert(key, (v, value));
        }
    }
    assert_eq!(acked.len() as u64 * VERSIONS, 300);
    drop(writers);

    // SIGKILL both workers, one after the other; the master replaces them.
    for victim in workers {
        kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill worker");
        common::wait_until(WAIT, "the killed worker is replaced", || {
            let now = server.worker_pids();
            now.len() == 2 && !now.contains(&victim)
        });
        server.wait_for_workers();
    }
    check_all(&server, &acked, "after both workers were killed");

    // SIGKILL the master, then whatever is left; start again on the same
    // database.
    server.kill_master();
    server.kill_all();
    server.keep_dir = true;
    let (dir, setup) = (server.dir.clone(), server.setup.clone());
    drop(server);
    let server = SyncServer::start_in(&dir, setup);
    check_all(&server, &acked, "after the master was killed");
    let mut c = Client::hello(&server, "after");
    assert_eq!(c.epoch, epoch, "the same history, the same epoch");
    // The next write of each key is its version + 1: none is reused.
    for (key, (version, _)) in &acked {
        let a = c.request(put(key, *version, &json!("after"), &format!("{key}-after")));
        assert_eq!(
            (&a["type"], &a["version"]),
            (&json!("ack"), &json!(version + 1)),
            "{key}: {a}"
        );
    }
}
