//! Helpers for the sync server's integration tests: start the real `sync`
//! example as a child process on a free port with a config and database of
//! the test's own ([`SyncServer`]), talk to it over WebSocket as devices do
//! ([`Client`]) and over HTTP as backends do ([`Http`]).
//!
//! Every wait has a deadline and panics naming what it waited for; none
//! sleeps to let something happen.
//!
//! A test that uses these declares `mod common;` next to `mod sync_util;`.
#![allow(dead_code)]

mod client;
mod http;

#[allow(unused_imports)]
pub use client::{Client, Event};
#[allow(unused_imports)]
pub use http::{etag, Http, Reply};

use crate::common::{self, conn_owners, run_to_exit, AppServer, Finished, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// The worker count of the tests' servers unless a test says otherwise:
/// two, so the cross-worker paths are always in use.
pub const WORKERS: usize = 2;

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("sync", name)
}

/// What a test server runs with: `[sync]` keys over the tests' defaults,
/// other tables, command-line arguments.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Worker processes.
    pub count: usize,
    /// `[sync]` keys as `(key, TOML value)`; a key given here replaces the
    /// tests' default for it (a rate limit no test hits by accident).
    pub sync: Vec<(String, String)>,
    /// Further TOML (`[auth]`, `[cluster]`, ...), appended as is.
    pub extra: String,
    /// Further command-line arguments (`--node`, `--redis-url`, ...).
    pub args: Vec<String>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            count: WORKERS,
            sync: Vec::new(),
            extra: String::new(),
            args: Vec::new(),
        }
    }
}

impl Setup {
    /// With `[sync] key = value` (a TOML value: `"5"`, `"\"text\""`).
    pub fn sync(mut self, key: &str, value: impl ToString) -> Setup {
        self.sync.retain(|(k, _)| k != key);
        self.sync.push((key.to_string(), value.to_string()));
        self
    }

    /// With `toml` appended (whole tables).
    pub fn extra(mut self, toml: &str) -> Setup {
        self.extra.push_str(toml);
        self
    }

    /// With `n` workers.
    pub fn count(mut self, n: usize) -> Setup {
        self.count = n;
        self
    }

    /// With these command-line arguments too.
    pub fn args(mut self, args: &[&str]) -> Setup {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The config file's text.
    pub fn toml(&self) -> String {
        let mut sync: Vec<(String, String)> = vec![
            ("rate_per_sec".into(), "1000000".into()),
            ("rate_burst".into(), "1000000".into()),
        ];
        for (k, v) in &self.sync {
            sync.retain(|(d, _)| d != k);
            sync.push((k.clone(), v.clone()));
        }
        let mut toml = format!("[server]\ncount = {}\n\n[sync]\n", self.count);
        for (k, v) in &sync {
            toml.push_str(&format!("{k} = {v}\n"));
        }
        toml.push('\n');
        toml.push_str(&self.extra);
        toml
    }
}

/// A running sync server (master and workers) with its own directory
/// (`sync.toml`, `sync.db`); stopped gracefully on drop (see
/// [`AppServer`], which it derefs to: `dir`, `keep_dir`, the kills).
pub struct SyncServer {
    /// The process and its directory.
    app: AppServer,
    /// How it was started (a restart reuses it).
    pub setup: Setup,
}

impl std::ops::Deref for SyncServer {
    type Target = AppServer;
    fn deref(&self) -> &AppServer {
        &self.app
    }
}

impl std::ops::DerefMut for SyncServer {
    fn deref_mut(&mut self) -> &mut AppServer {
        &mut self.app
    }
}

impl SyncServer {
    /// Starts a server of [`WORKERS`] workers with the tests' defaults in a
    /// fresh directory.
    #[track_caller]
    pub fn start(name: &str) -> SyncServer {
        SyncServer::start_with(name, Setup::default())
    }

    /// Starts a server as `setup` says in a fresh directory.
    #[track_caller]
    pub fn start_with(name: &str, setup: Setup) -> SyncServer {
        SyncServer::start_in(&temp_dir(name), setup)
    }

    /// Starts a server whose files (and database) live in `dir`, on a free
    /// port, and waits until every worker runs and `/healthz` answers.
    #[track_caller]
    pub fn start_in(dir: &Path, setup: Setup) -> SyncServer {
        let config = dir.join("sync.toml");
        std::fs::write(&config, setup.toml()).expect("write sync.toml");
        let config = config.to_str().expect("utf-8 path").to_string();
        let mut args = vec!["-c", &config, "--listen", "127.0.0.1:0"];
        args.extend(setup.args.iter().map(String::as_str));
        // Info level whatever the caller's RUST_LOG, so a failing test shows
        // what the server did.
        let server = Server::start_with_env("sync", &args, &[("RUST_LOG", "info")]);
        let mut server = SyncServer {
            app: AppServer::new(server, dir.to_path_buf()),
            setup,
        };
        server.wait_for_workers();
        server
    }

    /// The address clients connect to.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// `ws://127.0.0.1:PORT/sync`.
    pub fn ws_url(&self) -> String {
        self.server.ws_url("/sync")
    }

    /// The history database.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("sync.db")
    }

    /// The pid of the worker holding the server side of the connection
    /// whose client port is `port`, if one holds it yet.
    pub fn worker_of_port(&mut self, port: u16) -> Option<i32> {
        let workers = self.worker_pids();
        conn_owners(self.server.port(), &workers)
            .get(&port)
            .copied()
    }

    /// Waits until `setup.count` workers run and `/healthz` answers.
    #[track_caller]
    pub fn wait_for_workers(&mut self) -> Vec<i32> {
        let count = self.setup.count;
        let what = format!("{count} workers and /healthz");
        let addr = self.addr();
        common::poll_until(WAIT, &what, || {
            let pids = self.worker_pids();
            (pids.len() == count && common::http_get(addr, "/healthz").status == 200)
                .then_some(pids)
        })
    }
}

/// Runs the sync binary with `args` to completion (it must exit within
/// [`WAIT`]).
#[track_caller]
pub fn run_sync(args: &[&str]) -> Finished {
    run_to_exit(Command::new(common::example("sync")).args(args), WAIT)
}

/// Acked writes of one key: version -> (value, op, client).
pub type Acks = BTreeMap<u64, (Value, String, String)>;

/// `n` connections of clients `NAME-i`, alternating between the two
/// workers of `server`.
#[track_caller]
pub fn clients_on_both_workers(server: &mut SyncServer, name: &str, n: usize) -> Vec<Client> {
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    (0..n)
        .map(|i| Client::hello_on(server, &format!("{name}-{i}"), workers[i % 2]))
        .collect()
}

/// The `put` request of `key` from `base`.
pub fn put(key: &str, base: u64, value: &Value, op: &str) -> Value {
    json!({"type": "put", "key": key, "base_version": base, "value": value, "op": op})
}

/// Races `writers` to write `key` (now at `start`), each from the version
/// it last saw, retrying after each conflict with a new op, until every
/// writer has one ack. Checks the replies as they come: an ack's version
/// is the base + 1, a conflict has a version above the base. Returns
/// version -> (value, op, client) of every ack, and how many conflicts
/// each round had.
#[track_caller]
pub fn race(writers: &mut [Client], key: &str, start: u64) -> (Acks, Vec<usize>) {
    let mut acked = Acks::new();
    let mut conflicts: Vec<(u64, Value)> = Vec::new();
    let mut base: Vec<Option<u64>> = vec![Some(start); writers.len()];
    let mut rounds = Vec::new();
    for round in 0.. {
        assert!(round <= writers.len(), "no progress after {round} rounds");
        // Everyone still waiting sends at once, then the replies are read.
        let sent: Vec<(usize, String, Value, u64)> = writers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, w)| {
                let b = base[i]?;
                let value = json!({"writer": i, "round": round});
                // Unique per race too: a race from another start must not
                // repeat an op.
                let op = format!("{key}-{start}-{i}-{round}");
                let r = w.send_request(put(key, b, &value, &op));
                Some((i, r, value, b))
            })
            .collect();
        if sent.is_empty() {
            break;
        }
        let mut lost = 0;
        for (i, r, value, b) in sent {
            let reply = writers[i].reply_to(&r);
            let version = reply["version"]
                .as_u64()
                .unwrap_or_else(|| panic!("a write's reply: {reply}"));
            match reply["type"].as_str() {
                Some("ack") => {
                    assert_eq!(version, b + 1, "{reply}");
                    let op = reply["op"].as_str().expect("op").to_string();
                    let before = acked.insert(version, (value, op, writers[i].client.clone()));
                    assert!(before.is_none(), "version {version} acked twice: {reply}");
                    base[i] = None;
                }
                Some("conflict") => {
                    assert!(version > b, "a conflict is about a later version: {reply}");
                    conflicts.push((version, reply["value"].clone()));
                    base[i] = Some(version);
                    lost += 1;
                }
                _ => panic!("{reply}"),
            }
        }
        rounds.push(lost);
    }
    // Every conflict carried the value of the version it named.
    for (version, value) in conflicts {
        if let Some((v, _, _)) = acked.get(&version) {
            assert_eq!(v, &value, "conflict at version {version}");
        }
    }
    (acked, rounds)
}

/// Reads the next changes of `key` on `c`, which must be exactly the
/// versions of `acked` in order, each as it was written.
#[track_caller]
pub fn expect_every_change(c: &mut Client, key: &str, acked: &Acks) {
    for (&version, (value, op, client)) in acked {
        let ch = c.expect_change(key);
        assert_eq!(
            ch,
            json!({"type": "change", "key": key, "version": version, "value": value, "op": op, "client": client}),
            "{}",
            c.client
        );
    }
}

/// `put KEY` from `base` with `value` as write attempt `op` on `c`; the
/// reply.
#[track_caller]
pub fn put_reply(c: &mut Client, key: &str, base: u64, value: Value, op: &str) -> Value {
    c.request(put(key, base, &value, op))
}

/// A `put` that must be acked (for `key` and `op`); returns the version.
#[track_caller]
pub fn put_ok(c: &mut Client, key: &str, base: u64, value: Value, op: &str) -> u64 {
    let a = put_reply(c, key, base, value, op);
    assert_eq!(a["type"], "ack", "put {key} from {base}: {a}");
    assert_eq!((&a["key"], &a["op"]), (&json!(key), &json!(op)), "{a}");
    a["version"].as_u64().expect("ack.version")
}

/// `get KEY` on `c`: the `doc`.
#[track_caller]
pub fn get_doc(c: &mut Client, key: &str) -> Value {
    let d = c.request(json!({"type": "get", "key": key}));
    assert_eq!((&d["type"], &d["key"]), (&json!("doc"), &json!(key)), "{d}");
    d
}
