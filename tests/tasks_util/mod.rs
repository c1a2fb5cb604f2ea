//! What the scheduler's tests share: a frame client (a submitter or an
//! executor of `shared/tasks-protocol.md`), and the scheduler started on
//! free ports with its database in a temp dir.

#![allow(dead_code)]

use crate::common::{self, poll_until, Server, REPLY_TIMEOUT};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A client of the scheduler.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Frames read while waiting for another.
    pub seen: Vec<Value>,
}

impl Client {
    /// Connects (retrying refused connects until the deadline).
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = common::tcp_connect(addr, REPLY_TIMEOUT);
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// A submitter that got `welcome`.
    pub fn submitter(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.send(&json!({"type": "hello", "role": "submitter", "name": "test"}));
        assert_eq!(c.recv()["type"], "welcome");
        c
    }

    /// An executor of `queues` with `capacity` that got `welcome`.
    pub fn executor(addr: SocketAddr, queues: &[&str], capacity: u32) -> Client {
        let mut c = Client::connect(addr);
        c.send(&json!({"type": "hello", "role": "executor", "name": "raw",
            "queues": queues, "capacity": capacity}));
        let w = c.recv_type("welcome");
        assert_eq!(w["role"], "executor");
        c
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one payload as a frame.
    pub fn send_payload(&mut self, payload: &[u8]) {
        let mut f = ((payload.len() + 4) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        self.send_raw(&f);
    }

    /// Sends one JSON object.
    pub fn send(&mut self, v: &Value) {
        self.send_payload(v.to_string().as_bytes());
    }

    /// The next frame within `timeout`, or `None`; panics if the
    /// connection closes.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() >= n {
                    let frame: Vec<u8> = self.buf.drain(..n).skip(4).collect();
                    return Some(serde_json::from_slice(&frame).expect("a JSON frame"));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the scheduler closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next frame.
    #[track_caller]
    pub fn recv(&mut self) -> Value {
        if !self.seen.is_empty() {
            return self.seen.remove(0);
        }
        self.try_recv(REPLY_TIMEOUT)
            .unwrap_or_else(|| panic!("no frame within {REPLY_TIMEOUT:?}"))
    }

    /// The next frame matching `want`; others are kept in `seen`.
    #[track_caller]
    pub fn recv_where(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&want) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(v) = self.try_recv(left) else {
                panic!("no {what} within {REPLY_TIMEOUT:?}; saw {:?}", self.seen);
            };
            if want(&v) {
                return v;
            }
            self.seen.push(v);
        }
    }

    /// The next frame of `type`.
    #[track_caller]
    pub fn recv_type(&mut self, kind: &str) -> Value {
        self.recv_where(kind, |v| v["type"] == kind)
    }

    /// Sends `req` and returns its reply (matched by a fresh `ref`).
    #[track_caller]
    pub fn request(&mut self, mut req: Value) -> Value {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let r = format!("r{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        req["ref"] = json!(r);
        self.send(&req);
        self.recv_where(&format!("the reply to {req}"), |v| v["ref"] == json!(r))
    }

    /// Submits `payload` to `queue` with `extra` fields; the job id.
    #[track_caller]
    pub fn submit(&mut self, queue: &str, payload: Value, extra: Value) -> String {
        let mut req = json!({"type": "submit", "queue": queue, "payload": payload});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                req[k] = v;
            }
        }
        let r = self.request(req);
        assert_eq!(r["type"], "accepted", "{r}");
        r["job"].as_str().expect("job id").to_string()
    }

    /// `status` of `job`.
    #[track_caller]
    pub fn status(&mut self, job: &str) -> Value {
        self.request(json!({"type": "status", "job": job}))
    }

    /// The next `job` push.
    #[track_caller]
    pub fn next_job(&mut self) -> Value {
        self.recv_type("job")
    }

    /// No frame arrives within `quiet`.
    pub fn quiet_for(&mut self, quiet: Duration) -> bool {
        self.seen.is_empty() && self.try_recv(quiet).is_none()
    }

    /// The connection was closed by the scheduler within the deadline.
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            self.stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// A running scheduler on free ports, its database in its own directory.
pub struct Tasks {
    pub server: Server,
    pub dir: PathBuf,
    pub toml: String,
}

impl Tasks {
    /// Starts the scheduler with `count` workers and `extra` TOML lines in
    /// its `[tasks]` table (`auth` for an `[auth]` table after it).
    pub fn start(name: &str, count: usize, tasks: &str, auth: &str) -> Tasks {
        let dir = common::temp_dir("tasks", name);
        let db = dir.join("tasks.db");
        let toml = format!(
            "[server]\nlisten = \"frame://127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ncount = {count}\n\
             [tasks]\ndatabase = {db:?}\n{tasks}\n{auth}\n"
        );
        Tasks::start_toml(dir, toml)
    }

    fn start_toml(dir: PathBuf, toml: String) -> Tasks {
        let server = Server::start_with_toml("tasks", &[], &toml);
        let t = Tasks { server, dir, toml };
        t.wait_ready();
        t
    }

    /// The same database again, after [`Tasks::kill_all`].
    pub fn restart(self) -> Tasks {
        let Tasks {
            mut server,
            dir,
            toml,
        } = self;
        server.kill_all();
        drop(server);
        Tasks::start_toml(dir, toml)
    }

    /// Stops the scheduler with SIGTERM (its clients see their sockets
    /// close) and starts it again on the same database and the same two
    /// ports, the protocol's and the page's.
    pub fn restart_same_ports(self) -> Tasks {
        let (addr, page) = (self.addr(), self.page_addr());
        let Tasks {
            mut server,
            dir,
            toml,
        } = self;
        server.signal(nix::sys::signal::Signal::SIGTERM);
        // Workers get the default stop_timeout (5 s) to close their
        // connections.
        assert!(
            server.wait_exit(Duration::from_secs(15)).is_some(),
            "the scheduler did not stop on SIGTERM:\n{}",
            server.output()
        );
        drop(server);
        let toml = toml
            .replace(
                "listen = \"frame://127.0.0.1:0\"",
                &format!("listen = \"frame://{addr}\""),
            )
            .replace(
                "http_listen = \"127.0.0.1:0\"",
                &format!("http_listen = \"{page}\""),
            );
        let t = Tasks::start_toml(dir, toml);
        assert_eq!((t.addr(), t.page_addr()), (addr, page), "the same ports");
        t
    }

    /// The protocol's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The page's address (`also listening on websocket://ADDR`).
    pub fn page_addr(&self) -> SocketAddr {
        poll_until(REPLY_TIMEOUT, "an `also listening on` line", || {
            self.server.output().lines().find_map(|l| {
                l.split("also listening on websocket://")
                    .nth(1)?
                    .trim()
                    .parse()
                    .ok()
            })
        })
    }

    /// Waits until the brain is ready (a `stats` is answered).
    fn wait_ready(&self) {
        poll_until(REPLY_TIMEOUT, "the brain ready", || {
            self.server.output().contains("brain: ready").then_some(())
        });
    }

    /// The pid of worker `slot`, from the master's latest `worker N
    /// started (pid P)` line.
    pub fn worker_pid(&self, slot: usize) -> i32 {
        let needle = format!("worker {slot} started (pid ");
        poll_until(REPLY_TIMEOUT, "a worker's pid in the log", || {
            let out = self.server.output();
            let line = out.lines().rev().find(|l| l.contains(&needle))?;
            line.split(&needle)
                .nth(1)?
                .trim_end_matches(')')
                .parse()
                .ok()
        })
    }
}

/// SIGKILLs `pid`.
pub fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}
