//! The sync server's page in a real browser: `tests/browser/sync.mjs` has two
//! headless Chromium tabs edit the shared list of a two-worker server (adds,
//! edits, an index merged without asking, two conflicts resolved through the
//! conflict view, once each way), then the server is restarted on the same
//! port and database and both pages must reconnect by themselves, still
//! converged, and keep syncing.
//!
//! Setup and skipping as in the chat's browser test (`common::browser`):
//! under CI a missing browser fails the test.

mod common;

use common::browser;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The screenshots sync.mjs takes.
const SHOTS: [&str; 3] = [
    "sync-browser-a.png",
    "sync-browser-b.png",
    "sync-browser-conflict.png",
];

/// A sync server with two workers, its sync.toml and database in a
/// directory of its own. A stand-in until `tests/sync_util/` lands: it only
/// starts, restarts and stops the server.
struct SyncServer {
    /// The master and its output.
    server: Option<common::Server>,
    /// `127.0.0.1:PORT`.
    addr: String,
    /// Holds sync.toml and sync.db.
    dir: PathBuf,
}

impl SyncServer {
    /// Starts a server on a free port with a fresh database (the protocol's
    /// defaults otherwise: the page must live within them).
    #[track_caller]
    fn start(name: &str) -> SyncServer {
        let dir = std::env::temp_dir().join(format!("foreman-sync-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        std::fs::write(
            dir.join("sync.toml"),
            "[server]\ncount = 2\n[sync]\ndb_path = \"sync.db\"\n",
        )
        .expect("write sync.toml");
        let mut s = SyncServer {
            server: None,
            addr: "127.0.0.1:0".into(),
            dir,
        };
        s.run();
        s
    }

    /// Starts the master on `self.addr` and waits for both workers and
    /// `/healthz`.
    #[track_caller]
    fn run(&mut self) {
        let config = self.dir.join("sync.toml");
        let config = config.to_str().expect("utf-8 path");
        let server = common::Server::start("sync", &["-c", config, "--listen", &self.addr]);
        server.wait_workers(2, Duration::from_secs(15));
        common::wait_until(Duration::from_secs(15), "/healthz answers 200", || {
            common::http_get(server.addr, "/healthz").status == 200
        });
        self.addr = server.addr.to_string();
        self.server = Some(server);
    }

    /// Stops the server (SIGTERM: clients see their sockets close) and waits
    /// for it to exit.
    #[track_caller]
    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.signal(nix::sys::signal::Signal::SIGTERM);
            assert!(
                server.wait_exit(Duration::from_secs(15)).is_some(),
                "the sync server did not stop on SIGTERM:\n{}",
                server.output()
            );
        }
    }

    /// Stops the server and starts it again on the same port and database.
    #[track_caller]
    fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for SyncServer {
    fn drop(&mut self) {
        // `common::Server`'s drop kills what is left and, on a panic, prints
        // the end of the log.
        self.server = None;
        if std::thread::panicking() {
            eprintln!("server files: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn two_tabs_edit_the_shared_list() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser::ready(root) {
        return;
    }
    let mut server = SyncServer::start("browser");
    let shots = common::target_dir();
    for old in SHOTS {
        let _ = std::fs::remove_file(shots.join(old));
    }
    let url = format!("http://{}/", server.addr);
    let mut restarted = false;
    let status = browser::run_script(
        root,
        "sync.mjs",
        &[&url, shots.to_str().expect("utf-8 path"), "--restart"],
        Duration::from_secs(180),
        |line| {
            (line == "RESTART").then(|| {
                server.restart();
                restarted = true;
                "restarted".to_string()
            })
        },
    );
    assert!(status.success(), "tests/browser/sync.mjs failed: {status}");
    assert!(restarted, "the page script never asked for the restart");
    browser::assert_screenshots(&shots, &SHOTS);
}
