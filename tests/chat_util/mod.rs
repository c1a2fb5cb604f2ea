//! Helpers for the chat's integration tests: start the real `chat` example as
//! a child process on a free port, and talk to it as clients do.
//!
//! Everything waits on a condition with a deadline, never on a fixed sleep;
//! every wait that runs out panics with what it was waiting for.
#![allow(dead_code)]

mod client;
#[allow(unused_imports)]
pub use client::{Client, Event};

use hmac::{Hmac, Mac};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// `target/<profile>`, found from this test binary's path
/// (`target/<profile>/deps/chat-…`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_path_buf()
}

/// The `chat` example binary, built on first use (so `cargo test --test
/// chat` works on its own; cargo does not build examples for `--test`).
pub fn chat_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = target_profile_dir();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--example", "chat"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build --example chat");
            assert!(status.success(), "cargo build --example chat failed");
            let bin = dir.join("examples").join("chat");
            assert!(bin.exists(), "{} missing after build", bin.display());
            bin
        })
        .clone()
}

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
pub fn run_chat(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(chat_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chat {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running chat server (master and workers), stopped on drop.
pub struct ChatServer {
    /// The master process.
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The directory holding chat.toml, chat.db and server.log.
    pub dir: PathBuf,
    /// Worker pids seen so far, killed on drop if still alive.
    seen_workers: Vec<i32>,
    /// Leave `dir` in place on drop (for a restart on the same database).
    pub keep_dir: bool,
}

impl ChatServer {
    /// Starts a server with `count` workers and `extra` TOML appended to a
    /// test config (tick off, a generous rate limit) in a fresh directory.
    pub fn start(name: &str, count: usize, extra: &str) -> ChatServer {
        ChatServer::start_in(&temp_dir(name), count, extra)
    }

    /// Starts a server whose files (and database) live in `dir`.
    pub fn start_in(dir: &Path, count: usize, extra: &str) -> ChatServer {
        ChatServer::start_at(dir, count, extra, "127.0.0.1:0")
    }

    /// Starts a server in `dir` listening on `listen` (`127.0.0.1:PORT`).
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
        let log = std::fs::File::create(dir.join("server.log")).expect("server.log");
        let mut child = Command::new(chat_binary())
            .arg("-c")
            .arg(&config)
            .args(["--listen", listen])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn chat");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ChatServer {
            child: Some(child),
            addr: String::new(),
            dir: dir.to_path_buf(),
            seen_workers: Vec::new(),
            keep_dir: false,
        };
        let deadline = Instant::now() + WAIT;
        while server.addr.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        let url = url.trim();
                        server.addr = url.rsplit("://").next().unwrap_or(url).to_string();
                    }
                }
                Err(_) => panic!("the server did not start:\n{}", server.log()),
            }
        }
        server.wait_for_workers(count);
        server
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn http_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The master's pid.
    pub fn master_pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// The live children of the master (its workers).
    pub fn worker_pids(&mut self) -> Vec<i32> {
        let pids = children_of(self.master_pid());
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
    pub fn wait_for_workers(&mut self, count: usize) -> Vec<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            let pids = self.worker_pids();
            if pids.len() == count && self.get("/healthz").0 == 200 {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "workers did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain HTTP GET: (status, body). Status 0 when it could not connect.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    /// SIGKILLs the master, then waits for its workers to go (they get
    /// SIGTERM when the master dies), killing them after a deadline.
    pub fn kill_master(&mut self) {
        let workers = self.worker_pids();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_gone(&workers);
    }

    /// Stops the server gracefully (SIGTERM), killing what is left after a
    /// deadline.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let seen = std::mem::take(&mut self.seen_workers);
        wait_gone(&seen);
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("server log ({}):\n{}", self.dir.display(), self.log());
        } else if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for processes to exit, SIGKILLing them after a deadline.
fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + WAIT;
    for &p in pids {
        while alive(p) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if alive(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids whose parent is `parent` (from /proc).
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
        if ppid == parent && state != "Z" {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// A minimal HTTP/1.1 GET: (status, body); (0, "") when it cannot connect.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(WAIT));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
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
