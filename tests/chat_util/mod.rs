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

#[allow(unused_imports)]
pub use crate::common::jwt::{now_secs, token};
use crate::common::{self, http_get, run_to_exit, AppServer, Server};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("chat", name)
}

/// Runs the chat binary with `args` to completion (it must exit within
/// [`WAIT`]): (success, stdout, stderr).
#[track_caller]
pub fn run_chat(args: &[&str]) -> (bool, String, String) {
    let done = run_to_exit(Command::new(common::example("chat")).args(args), WAIT);
    (done.status.success(), done.stdout, done.stderr)
}

/// A running chat server (master and workers), stopped gracefully on drop
/// (see [`AppServer`], which it derefs to: `dir`, `keep_dir`, the kills).
pub struct ChatServer {
    /// The process, its directory (chat.toml and chat.db).
    app: AppServer,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl std::ops::Deref for ChatServer {
    type Target = AppServer;
    fn deref(&self) -> &AppServer {
        &self.app
    }
}

impl std::ops::DerefMut for ChatServer {
    fn deref_mut(&mut self) -> &mut AppServer {
        &mut self.app
    }
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
            app: AppServer::new(server, dir.to_path_buf()),
        };
        server.wait_for_workers(count);
        server
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

    /// Waits until `count` workers run, the master's log (read by another
    /// thread, so a moment behind) names each slot's pid, and the server
    /// answers `/healthz`.
    #[track_caller]
    pub fn wait_for_workers(&mut self, count: usize) -> Vec<i32> {
        let what = format!("{count} workers, their log lines and /healthz");
        common::poll_until(WAIT, &what, || {
            let pids = self.worker_pids();
            let logged = (0..count).all(|slot| self.worker_pid(slot).is_some());
            (pids.len() == count && logged && self.get("/healthz").0 == 200).then_some(pids)
        })
    }

    /// A plain HTTP GET: (status, body).
    #[track_caller]
    pub fn get(&self, path: &str) -> (u16, String) {
        let reply = http_get(self.server.addr, path);
        (reply.status, reply.body_text())
    }
}
