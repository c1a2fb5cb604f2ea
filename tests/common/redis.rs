//! A `redis-server` of the test's own: [`RedisServer`] starts one on a free
//! port with a fresh directory (AOF on, fsync always, no RDB snapshots), can
//! kill it, restart it on the same port and directory (the AOF replays), and
//! SIGSTOP / SIGCONT it; it is killed on drop. [`RedisClient`] is a tiny RESP
//! client over a `TcpStream` for tests that look into Redis.
//!
//! Never the shared 6379: a test must not disturb, or be disturbed by, a
//! Redis it did not start. The port is picked below the kernel's ephemeral
//! range, so no client socket of the servers under test (reconnecting every
//! few hundred milliseconds while Redis is down) can take it by a TCP
//! self-connect before the restart.

use super::{is_alive, pump, Log};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long Redis may take to answer PING after a (re)start, AOF replay
/// included.
pub const REDIS_START: Duration = Duration::from_secs(20);

/// The `redis-server` binary: `FOREMAN_REDIS_SERVER`, else the first on
/// `PATH`, else Debian's path.
fn redis_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FOREMAN_REDIS_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"));
    assert!(
        bin.is_file(),
        "redis-server is not installed: run scripts/setup-redis.sh \
         (Debian's redis-server), or set FOREMAN_REDIS_SERVER"
    );
    bin
}

/// The first port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A port below the ephemeral range that nothing listens on right now.
/// Random, so parallel tests (and other test runs on the machine) rarely
/// pick the same one; the caller retries if Redis still finds it taken.
fn free_port() -> u16 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let hi = ephemeral_low().max(12_000);
    let lo = 10_000;
    loop {
        let seed = (
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            Instant::now(),
        );
        let r = RandomState::new().hash_one(seed);
        let port = lo + (r % u64::from(hi - lo)) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// A running (or killed, or stopped) `redis-server` of this test.
pub struct RedisServer {
    /// The process; `None` after [`RedisServer::kill`].
    child: Option<Child>,
    /// Its port, kept across restarts.
    port: u16,
    /// Its directory (the AOF lives in `appendonlydir/` below it), kept
    /// across restarts, removed on drop unless the test panicked.
    dir: PathBuf,
    /// Everything every run of it printed.
    log: Log,
}

impl RedisServer {
    /// Starts a Redis on a free port in a fresh directory and waits until it
    /// answers PING.
    #[track_caller]
    pub fn start() -> RedisServer {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "foreman-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the Redis directory");
        let mut redis = RedisServer {
            child: None,
            port: 0,
            dir,
            log: Log::default(),
        };
        for _ in 0..20 {
            redis.port = free_port();
            if redis.spawn_and_wait() {
                return redis;
            }
        }
        panic!(
            "redis-server did not start on any of 20 ports; output:\n{}",
            redis.output()
        );
    }

    /// Spawns redis-server on `self.port` and waits for PONG: false if the
    /// port turned out to be taken (then another may be tried), a panic on
    /// any other failure.
    #[track_caller]
    fn spawn_and_wait(&mut self) -> bool {
        let mut cmd = Command::new(redis_binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--logfile",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Dies with the test thread that started it, even if the test
        // process is killed before any drop runs.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let first_line = self.log.lock().unwrap_or_else(|e| e.into_inner()).len();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn redis-server: {e}"));
        pump(
            child.stdout.take().expect("stdout"),
            "[redis] ",
            self.log.clone(),
            None,
        );
        pump(
            child.stderr.take().expect("stderr"),
            "[redis stderr] ",
            self.log.clone(),
            None,
        );
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                // The pumps may still be reading its last lines.
                let said =
                    |s: &RedisServer| s.lines_since(first_line).contains("Address already in use");
                let grace = Instant::now() + Duration::from_secs(2);
                while !said(self) && Instant::now() < grace {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if said(self) {
                    return false;
                }
                panic!(
                    "redis-server on port {} exited ({status}); output:\n{}",
                    self.port,
                    self.output()
                );
            }
            if self.ping(Duration::from_millis(200)) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {REDIS_START:?}; output:\n{}",
                self.port,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What it printed from line `first` on.
    fn lines_since(&self, first: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.get(first..).unwrap_or_default().join("\n")
    }

    /// `redis://127.0.0.1:PORT`, for `[cluster] redis_url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its directory (config `dir`: the AOF is below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of the running process; `None` once killed.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Whether it answers PING with PONG within `timeout` (connect and reply).
    pub fn ping(&self, timeout: Duration) -> bool {
        RedisClient::connect(self.addr(), timeout)
            .and_then(|mut c| c.cmd(&["PING"]))
            .is_ok_and(|r| r == Resp::Simple("PONG".into()))
    }

    /// Runs one command on a new connection; panics on an I/O error or an
    /// error reply.
    #[track_caller]
    pub fn cmd(&self, args: &[&str]) -> Resp {
        let reply = RedisClient::connect(self.addr(), Duration::from_secs(5))
            .and_then(|mut c| c.cmd(args))
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"));
        if let Resp::Error(e) = &reply {
            panic!("redis {args:?}: -{e}");
        }
        reply
    }

    /// SIGKILLs it and reaps it; the directory stays for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (after
    /// [`Self::kill`]): Redis replays its AOF. Waits until it answers PING.
    #[track_caller]
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: kill it first");
        assert!(
            self.spawn_and_wait(),
            "port {} was taken while Redis was down; output:\n{}",
            self.port,
            self.output()
        );
    }

    /// SIGSTOPs it: a hung broker. Connections stay open, nothing answers.
    #[track_caller]
    pub fn stop(&mut self) {
        let pid = self.pid().expect("stop: Redis is not running");
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP redis");
        super::wait_until(REDIS_START, "redis-server stopped (state T)", || {
            super::proc_state(pid) == Some('T')
        });
    }

    /// SIGCONTs it after [`Self::stop`].
    #[track_caller]
    pub fn cont(&mut self) {
        let pid = self.pid().expect("cont: Redis is not running");
        kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT redis");
    }

    /// Everything it printed so far (all runs).
    pub fn output(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let _ = child.kill();
            let _ = child.wait();
            debug_assert!(!is_alive(pid));
        }
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server (port {}, dir {}) ----\n{}",
                self.port,
                self.dir.display(),
                self.output()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A reply, as RESP2 has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$N` bytes, or `$-1` (`None`).
    Bulk(Option<Vec<u8>>),
    /// `*N` replies, or `*-1` (`None`).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// A bulk or simple string as text.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// An integer reply.
    pub fn int(&self) -> Option<i64> {
        match self {
            Resp::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The items of an array reply (empty for a nil array or a non-array).
    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(v)) => v,
            _ => &[],
        }
    }
}

/// One connection to a Redis, commands answered in order.
pub struct RedisClient {
    reader: BufReader<TcpStream>,
}

impl RedisClient {
    /// Connects; reads and writes time out after `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<RedisClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RedisClient {
            reader: BufReader::new(stream),
        })
    }

    /// Sends a command (each argument one bulk string) and reads its reply.
    /// An error reply is `Ok(Resp::Error)`.
    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> std::io::Result<Resp> {
        let bad = |what: String| std::io::Error::new(ErrorKind::InvalidData, what);
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let line = line
            .strip_suffix("\r\n")
            .ok_or_else(|| bad(format!("no CRLF: {line:?}")))?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| bad(format!("not a number: {line:?}")))
        };
        Ok(match kind {
            "+" => Resp::Simple(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Int(number()?),
            "$" => match number()? {
                n if n < 0 => Resp::Bulk(None),
                n => {
                    let mut buf = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Resp::Bulk(Some(buf))
                }
            },
            "*" => match number()? {
                n if n < 0 => Resp::Array(None),
                n => Resp::Array(Some(
                    (0..n)
                        .map(|_| self.read_reply())
                        .collect::<std::io::Result<_>>()?,
                )),
            },
            _ => return Err(bad(format!("unknown reply {line:?}"))),
        })
    }
}
