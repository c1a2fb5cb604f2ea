//! [`Redis`]: a `redis-server` of one test, on a free port, with the durable
//! settings the chat's docs ask for (`appendonly yes`, `appendfsync
//! always`), killed on drop. (A small one for the chat's tests; the shared
//! integration helper may replace it.)

use super::{temp_dir, WAIT};
use crate::common::poll_until;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server`.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its files (the append-only file).
    pub dir: PathBuf,
}

impl Redis {
    /// Starts one on a free port in a fresh directory.
    #[track_caller]
    pub fn start(name: &str) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Redis {
            child: None,
            port,
            dir: temp_dir(&format!("redis-{name}")),
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again (after [`Redis::kill`]) on the same port and files,
    /// and waits until it answers PING (its files loaded).
    #[track_caller]
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        poll_until(WAIT, "redis-server answers PING", || {
            (self.command("PING").as_deref() == Some("+PONG")).then_some(())
        });
    }

    /// Sends one inline command; its first reply line, or `None` if Redis
    /// does not answer within a second.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    }

    /// SIGKILLs it and waits for it to go.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends it a signal (SIGSTOP, SIGCONT).
    pub fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
