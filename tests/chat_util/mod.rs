//! Helpers for the chat's integration tests: start the real `chat` example as
//! a child process on a free port (through [`common::Server`]), and talk to it
//! as clients do.
//!
//! Everything waits on a condition with a deadline, never on a fixed sleep;
//! every wait that runs out panics with what it was waiting for.
//!
//! A test that uses these declares `mod common;` next to `mod chat_util;`.
#![allow(dead_code)]

mod client;
mod deploy;
pub mod scenarios;
#[allow(unused_imports)]
pub use crate::common::redis::RedisServer as Redis;
#[allow(unused_imports)]
pub use client::{Client, Event};
#[allow(unused_imports)]
pub use deploy::Deployment;

use crate::common::{self, http_get, is_alive, run_to_exit, Server};
use hmac::{Hmac, Mac};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "foreman-chat-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Runs the chat binary with `args` to completion (it must exit within
/// [`WAIT`]): (success, stdout, stderr).
#[track_caller]
pub fn run_chat(args: &[&str]) -> (bool, String, String) {
    let done = run_to_exit(Command::new(common::example("chat")).args(args), WAIT);
    (done.status.success(), done.stdout, done.stderr)
}

/// A running chat server (master and workers), stopped gracefully on drop.
pub struct ChatServer {
    /// The master process and its output.
    server: Server,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The directory holding chat.toml and chat.db.
    pub dir: PathBuf,
    /// Worker pids seen so far, killed on drop if still alive.
    seen_workers: Vec<i32>,
    /// Leave `dir` in place on drop (for a restart on the same database).
    pub keep_dir: bool,
}

impl ChatServer {
    /// Starts a server with `count` workers and `extra` TOML appended to a
    /// test config (tick off, a generous rate limit) in a fresh directory.
    #[track_caller]
    pub fn start(name: &str, count: usize, extra: &str) -> ChatServer {
        ChatServer::start_in(&temp_dir(name), count, extra)
    }

    /// Starts a server whose files (and database) live in `dir`.
    #[track_caller]
    pub fn start_in(dir: &Path, count: usize, extra: &str) -> ChatServer {
        ChatServer::start_at(dir, count, extra, "127.0.0.1:0")
    }

    /// Starts a server in `dir` listening on `listen` (`127.0.0.1:PORT`).
    #[track_caller]
    pub fn start_at(dir: &Path, count: usize, extra: &str, listen: &str) -> ChatServer {
        let has = |table: &str| extra.contains(&format!("[{table}]"));
        let mut toml = String::new();
        let extra = if has("server") {
            extra.replacen("[server]\n", &format!("[server]\ncount = {count}\n"), 1)
        } else {
            toml.push_str(&format!("[server]\ncount = {count}\n"));
            extra.to_string()
        };
        if !has("chat") {
            toml.push_str("[chat]\ntick_interval_ms = 0\n");
        }
        if !has("rate_limit") {
            toml.push_str("[rate_limit]\nper_second = 100000\nburst = 100000\n");
        }
        toml.push_str(&extra);
        let config = dir.join("chat.toml");
        std::fs::write(&config, toml).expect("write chat.toml");
        let config = config.to_str().expect("utf-8 path");
        // Info level whatever the caller's RUST_LOG: worker_pid reads the
        // master's "worker N started" lines.
        let server = Server::start_with_env(
            "chat",
            &["-c", config, "--listen", listen],
            &[("RUST_LOG", "info")],
        );
        let mut server = ChatServer {
            addr: server.addr.to_string(),
            server,
            dir: dir.to_path_buf(),
            seen_workers: Vec::new(),
            keep_dir: false,
        };
        server.wait_for_workers(count);
        server
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        self.server.output()
    }

    /// The address clients connect to.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        self.server.ws_url("/ws")
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn http_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The master's pid.
    pub fn master_pid(&self) -> i32 {
        self.server.pid()
    }

    /// The live children of the master (its workers).
    pub fn worker_pids(&mut self) -> Vec<i32> {
        let pids = self.server.workers();
        for p in &pids {
            if !self.seen_workers.contains(p) {
                self.seen_workers.push(*p);
            }
        }
        pids
    }

    /// The pid of the worker now in `slot`: the last "worker SLOT started
    /// (pid N)" line of the master's log, if that process still runs.
    pub fn worker_pid(&mut self, slot: usize) -> Option<i32> {
        let prefix = format!("worker {slot} started (pid ");
        let log = self.log();
        let pid = log
            .lines()
            .rev()
            .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
            .and_then(|rest| rest.trim_end_matches(')').parse::<i32>().ok())?;
        self.worker_pids().contains(&pid).then_some(pid)
    }

    /// Waits until `count` workers run and the server answers `/healthz`.
    #[track_caller]
    pub fn wait_for_workers(&mut self, count: usize) -> Vec<i32> {
        let what = format!("{count} workers and /healthz");
        common::poll_until(WAIT, &what, || {
            let pids = self.worker_pids();
            (pids.len() == count && self.get("/healthz").0 == 200).then_some(pids)
        })
    }

    /// A plain HTTP GET: (status, body).
    #[track_caller]
    pub fn get(&self, path: &str) -> (u16, String) {
        let reply = http_get(self.server.addr, path);
        (reply.status, reply.body_text())
    }

    /// SIGKILLs the master, then waits for its workers to go (they get
    /// SIGTERM when the master dies), killing them after a deadline.
    pub fn kill_master(&mut self) {
        let workers = self.worker_pids();
        if self.running() {
            self.server.signal(Signal::SIGKILL);
            self.server.wait_exit(WAIT);
        }
        wait_gone(&workers);
    }

    /// SIGKILLs the master and its workers at once: nothing of it says
    /// goodbye.
    pub fn kill_all(&mut self) {
        self.server.kill_all();
        let seen = std::mem::take(&mut self.seen_workers);
        wait_gone(&seen);
    }

    /// Stops the server gracefully (SIGTERM), killing what is left after a
    /// deadline.
    pub fn stop(&mut self) {
        if self.running() {
            self.server.signal(Signal::SIGTERM);
            if self.server.wait_exit(WAIT).is_none() {
                self.server.signal(Signal::SIGKILL);
                self.server.wait_exit(WAIT);
            }
        }
        let seen = std::mem::take(&mut self.seen_workers);
        wait_gone(&seen);
    }

    /// Whether the master has not exited yet.
    fn running(&mut self) -> bool {
        self.server.wait_exit(Duration::ZERO).is_none()
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop();
        // On a panic, `Server`'s drop prints the end of the log.
        if std::thread::panicking() {
            eprintln!("server files: {}", self.dir.display());
        } else if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for processes to exit, SIGKILLing them after a deadline.
fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + WAIT;
    for &p in pids {
        while is_alive(p) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_alive(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

/// An HS256 JWT, as an application backend would issue it.
pub fn token(secret: &str, sub: &str, exp: u64) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64.encode(json!({"sub": sub, "exp": exp}).to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{header}.{claims}").as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{sig}")
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
