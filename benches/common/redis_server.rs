//! A `redis-server` of the bench's own, on a free loopback port, killed on
//! drop. Shared by `benches/redis_link` and the `cluster-fanout` scenario of
//! `benches/ws` (each includes this file with `#[path]`).
//!
//! Nothing is written to disk on the hot path (`--save ''`, `--appendonly
//! no`): the benches measure the client side and the fan-out, not fsync.
//! Redis's own CPU is read from `/proc/PID/stat` (all its threads).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child.
pub struct RedisServer {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its working directory (removed on drop).
    dir: PathBuf,
}

/// The binary: `$FOREMAN_REDIS_SERVER`, else `/usr/bin/redis-server`, else
/// `redis-server` on PATH.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FOREMAN_REDIS_SERVER") {
        return p.into();
    }
    let usr = PathBuf::from("/usr/bin/redis-server");
    if usr.exists() {
        usr
    } else {
        "redis-server".into()
    }
}

/// Keeps the calling process (its threads to come) on CPU `cpu`; false if
/// the kernel refused.
pub fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity get valid pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// Whether a `PING` on `addr` gets `+PONG` back.
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl RedisServer {
    /// Starts one and waits (at most 10 s) until it answers `PING`. The
    /// error says "not installed" when there is no binary to run.
    #[allow(dead_code)] // not every including bench needs it
    pub fn start() -> Result<RedisServer, String> {
        RedisServer::start_on(None)
    }

    /// [`RedisServer::start`], with the server and all its threads kept on
    /// CPU `cpu` if given.
    pub fn start_on(cpu: Option<usize>) -> Result<RedisServer, String> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("foreman-bench-redis-{}-{port}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = Command::new(binary());
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(cpu) = cpu {
            // SAFETY: the closure runs in the forked child before exec and
            // only calls sched_setaffinity, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    if pin_to(cpu) {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = fs::remove_dir_all(&dir);
                return Err("redis-server not installed".into());
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(format!("spawn redis-server: {e}"));
            }
        };
        let mut server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_ping(server.addr()) {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its pid.
    #[allow(dead_code)] // not every including bench needs it
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU it has used so far (utime + stime of all its threads), in seconds.
    pub fn cpu_secs(&self) -> f64 {
        let stat =
            fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after `(comm)`: state=0 ... utime=11, stime=12.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf has no memory-safety preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (num(11) + num(12)) as f64 / tck
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
