//! The server under test: which binary to start for each implementation, its
//! process tree in /proc (RSS and CPU summed over master and workers), and a
//! bounded SIGTERM stop.

use crate::cargo::Paths;
use crate::tls::BenchCert;
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An implementation under test and the worker count it runs with.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// `foreman`, `tokio`, `uws`, `ws`, or an application on foreman:
    /// `sync`, `chat` (their example binaries, with a config of the bench's).
    pub name: &'static str,
    /// `--count`: worker processes (foreman), runtime threads (tokio), 1 (node).
    pub count: usize,
    /// foreman servers acting as one cluster through a Redis server of the
    /// bench's own; 1: a single server, no `[cluster]`.
    pub nodes: usize,
}

impl ServerSpec {
    /// A single server of `name` with `count` workers.
    pub fn single(name: &'static str, count: usize) -> ServerSpec {
        ServerSpec {
            name,
            count,
            nodes: 1,
        }
    }

    /// Label used in tables, e.g. `foreman c=2`, `foreman 2 nodes x c=1`.
    pub fn label(&self) -> String {
        if self.nodes > 1 {
            format!("{} {} nodes x c={}", self.name, self.nodes, self.count)
        } else {
            format!("{} c={}", self.name, self.count)
        }
    }

    /// Whether it is foreman's (a master and `count` workers).
    pub fn on_foreman(&self) -> bool {
        matches!(self.name, "foreman" | "sync" | "chat" | "baseline")
    }

    /// Whether all connections live in one process (bound by its fd cap).
    pub fn single_process(&self) -> bool {
        !self.on_foreman() || self.count * self.nodes == 1
    }

    /// Processes the tree has once it is up.
    fn expected_procs(&self) -> usize {
        if self.on_foreman() {
            self.count + 1
        } else {
            1
        }
    }

    /// The command that starts this server in `mode` (`broadcast`/`echo`, or
    /// `rooms`: the broadcast example's room mode;
    /// the applications have one mode) on an ephemeral port, or why it
    /// cannot run here. `config`: a foreman config file (`-c`), for a
    /// cluster node's `[cluster]` table or an application's settings.
    /// `tls`: serve `wss://` with that certificate (foreman: its config
    /// file, in place of `config`; the peers: `--tls-cert`/`--tls-key`).
    pub fn command(
        &self,
        mode: &str,
        paths: &Paths,
        config: Option<&Path>,
        tls: Option<&BenchCert>,
    ) -> Result<Command, String> {
        let listen = "websocket://127.0.0.1:0";
        let count = self.count.to_string();
        let config = tls.map(|t| t.toml.as_path()).or(config);
        let tls_args = |cmd: &mut Command| {
            if let Some(t) = tls {
                cmd.arg("--tls-cert").arg(&t.cert);
                cmd.arg("--tls-key").arg(&t.key);
            }
        };
        match self.name {
            "foreman" | "sync" | "chat" | "baseline" => {
                // `rooms`: the broadcast example's room mode (`chat` scenario).
                let exe = if mode == "rooms" { "broadcast" } else { mode };
                let bin = match self.name {
                    "foreman" => paths.examples.join(exe),
                    "baseline" => match std::env::var_os("FOREMAN_BENCH_BASELINE") {
                        Some(dir) => PathBuf::from(dir).join(exe),
                        None => return Err("not built: set FOREMAN_BENCH_BASELINE".into()),
                    },
                    app => paths.examples.join(app),
                };
                if !bin.exists() {
                    return Err(format!("{} not built", bin.display()));
                }
                let mut cmd = Command::new(bin);
                cmd.args(["--listen", listen, "--count", &count]);
                if let Some(c) = config {
                    cmd.arg("-c").arg(c);
                }
                if matches!(self.name, "foreman" | "baseline") && mode == "broadcast" {
                    cmd.args(["--tick-ms", "0"]);
                }
                if self.name == "foreman" && mode == "rooms" {
                    cmd.args(["--tick-ms", "0", "--rooms"]);
                }
                Ok(cmd)
            }
            "tokio" => {
                let bin = paths.examples.join("peer_tokio");
                if !bin.exists() {
                    return Err(format!("{} not built", bin.display()));
                }
                let mut cmd = Command::new(bin);
                cmd.args(["--mode", mode, "--listen", listen, "--count", &count]);
                tls_args(&mut cmd);
                Ok(cmd)
            }
            "uws" | "ws" => {
                let dir = paths.manifest.join("benches/peers/node");
                if !node_present() {
                    return Err("node not installed".into());
                }
                let module = if self.name == "uws" {
                    "@trufflesuite/uws-js-unofficial"
                } else {
                    "ws"
                };
                if !dir.join("node_modules").join(module).exists() {
                    return Err("not installed: run scripts/setup-bench-peers.sh".into());
                }
                let mut cmd = Command::new("node");
                cmd.current_dir(&dir);
                cmd.args([
                    "server.js",
                    "--impl",
                    self.name,
                    "--mode",
                    mode,
                    "--listen",
                    listen,
                ]);
                cmd.args(["--count", &count]);
                tls_args(&mut cmd);
                Ok(cmd)
            }
            other => Err(format!("unknown server {other}")),
        }
    }
}

fn node_present() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A started server process tree.
pub struct Running {
    child: Child,
    /// Address parsed from its `listening on` line.
    pub addr: SocketAddr,
    /// Every pid seen in its tree, for a final cleanup.
    seen: Vec<i32>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// One reading of a process tree.
#[derive(Clone, Copy, Default, Debug)]
pub struct Sample {
    /// Resident set summed over the tree's processes, bytes.
    pub rss: u64,
    /// utime + stime summed over the tree, clock ticks.
    pub cpu_ticks: u64,
    /// Processes in the tree.
    pub procs: usize,
}

/// Starts the server (`config`, `tls`: see [`ServerSpec::command`]) and
/// waits (bounded) for its `listening on` line and for its workers to appear.
pub fn start(
    spec: &ServerSpec,
    mode: &str,
    tag: &str,
    paths: &Paths,
    config: Option<&Path>,
    tls: Option<&BenchCert>,
) -> Result<Running, String> {
    let mut cmd = spec.command(mode, paths, config, tls)?;
    let log = paths
        .out
        .join("logs")
        .join(format!("{}-c{}-{tag}.log", spec.name, spec.count));
    let _ = fs::create_dir_all(log.parent().unwrap_or(Path::new(".")));
    let stderr = fs::File::create(&log)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = cmd.spawn().map_err(|e| format!("spawn {spec:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("");
                    let hostport = url.split("://").nth(1).unwrap_or(url).trim_end_matches('/');
                    let _ = tx.send(hostport.parse::<SocketAddr>().ok());
                    sent = true;
                }
            }
        }
        let _ = tx.send(None);
    });
    let addr = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(Some(addr)) => addr,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no `listening on` line; see {}", log.display()));
        }
    };
    let mut running = Running {
        child,
        addr,
        seen: Vec::new(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while running.sample().procs < spec.expected_procs() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(running)
}

impl Running {
    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Distinct pids seen in the tree so far (more than master + workers
    /// means a worker was replaced).
    pub fn pids_seen(&self) -> usize {
        self.seen.len()
    }

    /// Why the master is no longer running, if it is not.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Sums RSS and CPU over the master and all its descendants.
    pub fn sample(&mut self) -> Sample {
        let pids = tree(self.pid());
        for &p in &pids {
            if !self.seen.contains(&p) {
                self.seen.push(p);
            }
        }
        sample_pids(&pids)
    }

    /// SIGTERM, then waits up to `grace` for the whole tree to exit; SIGKILLs
    /// what is left. Returns how long the exit took and whether it was clean.
    pub fn stop(mut self, grace: Duration) -> (Duration, bool) {
        let _ = self.sample();
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let mut clean = false;
        while t0.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                clean = self.seen.iter().all(|&p| !alive(p));
                if clean {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = t0.elapsed();
        if !clean {
            for &p in &self.seen {
                if alive(p) {
                    // SAFETY: kill(2) on a pid that was in our child's tree.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = self.child.wait();
        (took, clean)
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still has a stat file; state 'Z' counts as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_fields(&s).map(|f| f[0] != "Z").unwrap_or(false),
        Err(_) => false,
    }
}

/// Fields of /proc/PID/stat after the `(comm)`, starting at `state`.
fn stat_fields(s: &str) -> Option<Vec<&str>> {
    let after = &s[s.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// `root` and all its descendants, found by scanning /proc for ppids.
pub fn tree(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Some(ppid) =
                stat_fields(&stat).and_then(|f| f.get(1).and_then(|p| p.parse().ok()))
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Sums RSS and CPU ticks over `pids` (vanished ones count as zero).
pub fn sample_pids(pids: &[i32]) -> Sample {
    let page = page_size();
    let mut s = Sample::default();
    for &pid in pids {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(f) = stat_fields(&stat) else {
            continue;
        };
        if f[0] == "Z" {
            continue;
        }
        // After `(comm)`: state=0, ppid=1, ... utime=11, stime=12, rss=21.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        s.cpu_ticks += num(11) + num(12);
        s.rss += num(21) * page;
        s.procs += 1;
    }
    s
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Clock ticks per second for CPU figures.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: as above.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU ticks spent in processes (user, nice, system) over the whole machine,
/// from /proc/stat. Interrupt time is left out: on loopback it is the
/// bench's own network work, not another process's.
pub fn machine_busy_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0;
    };
    cpu.split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum()
}
