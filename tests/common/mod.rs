//! Helpers shared by the integration tests: start an example server as a child
//! process, talk to it as clients do, wait on conditions with deadlines, and
//! read process facts from /proc.
//!
//! Every wait here has a deadline and panics with what it was waiting for;
//! none sleeps to let something happen.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod app;
pub mod browser;
pub mod cert;
pub mod cluster;
pub mod dialer;
pub mod http;
pub mod jwt;
pub mod nodes;
pub mod procfs;
pub mod rabbit;
pub mod redis;
pub mod sockdiag;
pub mod ws;

/// The benches' nested-build helpers; the tests use [`clean_cargo_env`].
#[path = "../../benches/common/cargo.rs"]
mod cargo;

pub use cargo::clean_cargo_env;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use api::Backend;
pub use app::AppServer;
pub use cluster::*;
pub use http::*;
pub use jwt::*;
pub use nodes::*;
pub use procfs::*;
pub use redis::*;
pub use ws::*;

/// Polls `cond` until it holds or `timeout` passes; panics naming `what`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes; panics naming `what`.
#[track_caller]
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The target directory and profile directory the running test belongs to:
/// `target/debug/deps/test-xxx` -> (`target`, `debug`).
fn target_layout() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let target = profile_dir.parent().expect("target dir").to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    (target, profile)
}

/// The target directory the running test belongs to (`target`).
pub fn target_dir() -> PathBuf {
    target_layout().0
}

/// The path of example `name`, built by this test's cargo if it is stale or
/// missing (cheap when fresh), so `cargo test --test X` alone is enough.
/// Set `FOREMAN_TEST_NO_BUILD=1` to use whatever binary is there.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let (target, profile) = target_layout();
    let path = target.join(&profile).join("examples").join(name);
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if std::env::var_os("FOREMAN_TEST_NO_BUILD").is_none() && !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name, "--target-dir"])
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        clean_cargo_env(&mut cmd);
        if profile == "release" {
            cmd.arg("--release");
        }
        // Quiet unless it fails: warnings would clutter every test's output.
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build --example {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        built.push(name.to_string());
    }
    assert!(
        path.exists(),
        "example binary {} is missing",
        path.display()
    );
    path
}

/// A fresh, empty directory for one test's files:
/// `foreman-APP-NAME-PID-N` in the temp dir.
pub fn temp_dir(app: &str, name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "foreman-{app}-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A file in the temp dir removed on drop (configs for the servers).
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(ext: &str, contents: &str) -> TempFile {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("foreman-test-{}-{n}.{ext}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Lines a server printed (stdout and stderr, interleaved as read).
type Log = Arc<Mutex<Vec<String>>>;

fn pump(
    stream: impl Read + Send + 'static,
    tag: &'static str,
    log: Log,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &tx {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let url = url.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(url);
                }
            }
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{tag}{line}"));
        }
    });
}

/// A running example server (the master process and its workers). Dropping
/// it kills every process of it with SIGKILL.
pub struct Server {
    child: Child,
    /// The URL from the master's `listening on URL` line.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    log: Log,
    exited: Option<ExitStatus>,
    _config: Option<TempFile>,
}

impl Server {
    /// Starts example `name` with `args` (add `--listen SCHEME://127.0.0.1:0`
    /// yourself) and waits for its `listening on` line.
    #[track_caller]
    pub fn start(name: &str, args: &[&str]) -> Server {
        Server::start_with_config(&[], name, args, None, &[])
    }

    /// Starts example `name` on a free loopback WebSocket port with `count`
    /// workers, then `extra` arguments, with `toml` (if any) as its config.
    #[track_caller]
    pub fn start_ws(name: &str, count: usize, extra: &[&str], toml: Option<&str>) -> Server {
        let count = count.to_string();
        let mut args = vec!["--listen", "websocket://127.0.0.1:0", "--count", &count];
        args.extend_from_slice(extra);
        match toml {
            Some(t) => Server::start_with_toml(name, &args, t),
            None => Server::start(name, &args),
        }
    }

    /// As [`Server::start`], with these environment variables set (say
    /// `RUST_LOG`).
    #[track_caller]
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with_config(&[], name, args, None, env)
    }

    /// As [`Server::start`], passing `-c FILE` with `toml` as the config.
    #[track_caller]
    pub fn start_with_toml(name: &str, args: &[&str], toml: &str) -> Server {
        Server::start_with_config(&[], name, args, Some(TempFile::new("toml", toml)), &[])
    }

    /// As [`Server::start`], run by the command `prefix` (say `prlimit
    /// --nofile=64:64`), which then runs the example.
    #[track_caller]
    pub fn start_under(prefix: &[&str], name: &str, args: &[&str]) -> Server {
        Server::start_with_config(prefix, name, args, None, &[])
    }

    #[track_caller]
    fn start_with_config(
        prefix: &[&str],
        name: &str,
        args: &[&str],
        config: Option<TempFile>,
        env: &[(&str, &str)],
    ) -> Server {
        let bin = example(name);
        let mut cmd = match prefix.split_first() {
            Some((run, its_args)) => {
                let mut c = Command::new(run);
                c.args(its_args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        if let Some(c) = &config {
            cmd.arg("-c").arg(&c.path);
        }
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let log: Log = Arc::default();
        let (tx, rx) = mpsc::channel();
        pump(
            child.stdout.take().expect("stdout"),
            "",
            log.clone(),
            Some(tx),
        );
        pump(
            child.stderr.take().expect("stderr"),
            "[stderr] ",
            log.clone(),
            None,
        );
        let mut server = Server {
            child,
            url: String::new(),
            addr: "0.0.0.0:0".parse().expect("addr"),
            log,
            exited: None,
            _config: config,
        };
        let url = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => url,
            Err(_) => panic!(
                "{name} {args:?} printed no `listening on URL` line within 20 s; output:\n{}",
                server.output()
            ),
        };
        let hostport = url
            .split("://")
            .nth(1)
            .unwrap_or(&url)
            .trim_end_matches('/');
        server.addr = hostport
            .parse()
            .unwrap_or_else(|e| panic!("listening on {url:?}: not host:port ({e})"));
        server.url = url;
        server
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The `ws://` URL for WebSocket clients.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The master's live child processes (its workers).
    pub fn workers(&self) -> Vec<i32> {
        children(self.pid())
            .into_iter()
            .filter(|&p| is_alive(p))
            .collect()
    }

    /// Waits until the master has exactly `n` live workers; returns their pids.
    #[track_caller]
    pub fn wait_workers(&self, n: usize, timeout: Duration) -> Vec<i32> {
        poll_until(timeout, &format!("{n} live workers"), || {
            let w = self.workers();
            (w.len() == n).then_some(w)
        })
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: Signal) {
        assert!(
            self.exited.is_none(),
            "the master has exited; its pid may be reused"
        );
        kill(Pid::from_raw(self.pid()), sig).expect("signal the master");
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Lines printed so far.
    pub fn output_lines(&self) -> usize {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits for the master to exit; `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return self.exited;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the master and every process below it at once (a machine
    /// that loses power, as far as the others can tell) and reaps the
    /// master. Does nothing if it has already exited.
    pub fn kill_all(&mut self) {
        // A master already reaped has given its pid (and process group id)
        // back to the system: signalling it now could hit an unrelated
        // process. Its workers died with it (PR_SET_PDEATHSIG).
        let reaped = self.exited.is_some() || matches!(self.child.try_wait(), Ok(Some(_)));
        if !reaped {
            let mut pids = descendants(self.pid());
            pids.push(self.pid());
            let _ = kill(Pid::from_raw(-self.pid()), Signal::SIGKILL);
            for p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let tail: VecDeque<_> = log.iter().rev().take(80).collect();
            eprintln!("---- last lines of the server ({} in all) ----", log.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Waits for processes to exit, SIGKILLing those still alive after
/// `timeout`.
pub fn wait_gone(pids: &[i32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for &p in pids {
        while is_alive(p) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_alive(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

/// Connects a TCP stream, retrying refused connections until `timeout`.
#[track_caller]
pub fn tcp_connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_nodelay(true).expect("nodelay");
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

/// Connects a TCP stream to `addr` from the local address `from`
/// (127.0.0.x: one test can be many client addresses); one attempt.
pub fn tcp_connect_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(from, 0).into())?;
    sock.connect_timeout(&addr.into(), timeout)?;
    let stream = TcpStream::from(sock);
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a command that was run to its end finished.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdin null, stdout and stderr captured) and waits at most
/// `timeout` for it to exit; panics, killing it, if it does not. Output is
/// collected until the pipes close or shortly after the exit (a daemon child
/// may hold them open).
#[track_caller]
pub fn run_to_exit(cmd: &mut Command, timeout: Duration) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let (out_log, err_log): (Log, Log) = (Arc::default(), Arc::default());
    let (tx, eof) = mpsc::channel();
    for (stream, log) in [
        (
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            out_log.clone(),
        ),
        (
            Box::new(child.stderr.take().expect("stderr")) as Box<dyn Read + Send>,
            err_log.clone(),
        ),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
            let _ = tx.send(());
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not exit within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                out_log.lock().unwrap_or_else(|e| e.into_inner()).join("\n"),
                err_log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Both pipes at EOF, or give up on them after a second.
    let grace = Instant::now() + Duration::from_secs(1);
    for _ in 0..2 {
        let left = grace.saturating_duration_since(Instant::now());
        if eof.recv_timeout(left).is_err() {
            break;
        }
    }
    let text = |log: &Log| log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
    Finished {
        status,
        stdout: text(&out_log),
        stderr: text(&err_log),
    }
}

/// A process that is not our child (a daemon) and its descendants, killed
/// with SIGKILL on drop.
pub struct ProcessTree(pub i32);

impl Drop for ProcessTree {
    fn drop(&mut self) {
        let mut pids = descendants(self.0);
        pids.push(self.0);
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}
