//! Runner side of one measurement: start the server, spread the connections
//! over load generator processes, drive the phases, collect the figures.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::apps::{self, AppFiles};
use crate::cargo::Paths;
use crate::cluster::{self, Cluster};
use crate::loadgen::{LoadConfig, Stats};
use crate::redis_server::RedisServer;
use crate::server::{self, Sample, ServerSpec};
use crate::tls::BenchCert;
use crate::wire::mono_ns;

pub mod quarter;

use crate::plan::{Client, Figures, Kind, Scenario};

/// Runs `scenario` once against `spec`. `Err` is a failure to run at all.
/// `tag` names the server log (`target/bench/logs/SERVER-cN-TAG.log`; a
/// cluster node's tag ends in its name).
pub fn run(spec: &ServerSpec, sc: &Scenario, tag: &str, paths: &Paths) -> Result<Figures, String> {
    // An idle scenario with a sender broadcasts once (`quarter.rs`).
    let mode = match sc.kind {
        Kind::Fanout => "broadcast",
        Kind::Idle if sc.senders > 0 => "broadcast",
        Kind::Rooms => crate::chatrooms::MODE,
        _ => "echo",
    };
    let cluster = if spec.nodes > 1 {
        Some(Cluster::start(spec.nodes, tag, &paths.out)?)
    } else {
        None
    };
    if let (Some(c), "chat") = (&cluster, spec.name) {
        crate::chatrooms::make_durable(&c.redis)?;
    }
    // An application's config and fresh database, removed after the run.
    let app = match spec.name {
        // The `chat` scenario at the chat's rate limit: its defaults.
        "chat" if sc.kind == Kind::Rooms && sc.rate > 0.0 => {
            Some(AppFiles::write("chat-rooms", tag, &paths.out)?)
        }
        "sync" | "chat" => Some(AppFiles::write(spec.name, tag, &paths.out)?),
        _ => None,
    };
    let cert = if sc.tls {
        Some(BenchCert::get(&paths.out)?)
    } else {
        None
    };
    let mut servers = Vec::new();
    let mut result = Ok(Figures::new());
    for i in 0..spec.nodes {
        let started = match &cluster {
            Some(c) => {
                let (name, config) = c.node(i);
                let tag = format!("{tag}-{name}");
                server::start(spec, mode, &tag, paths, Some(config), None)
            }
            None => {
                let config = app.as_ref().map(|a| &*a.config);
                server::start(spec, mode, tag, paths, config, cert.as_ref())
            }
        };
        match started {
            Ok(s) => servers.push(s),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let (Some(_), Ok(_)) = (&cluster, &result) {
        let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
        let speech = match spec.name {
            "chat" => crate::chatrooms::SPEECH,
            _ => cluster::BROADCAST,
        };
        let limit = Duration::from_secs(20);
        result = cluster::wait_routing(&addrs, limit, &speech).map(|_| Figures::new());
    }
    if result.is_ok() {
        let redis = cluster.as_ref().map(|c| &c.redis);
        let empty = sample_all(&mut servers);
        let ca = cert.as_ref().map(|c| c.cert.clone());
        result = drive(&mut servers, redis, spec, sc, empty, ca);
    }
    for srv in &mut servers {
        if let Some(status) = srv.exited() {
            let log = srv.log.display();
            result = Err(format!(
                "server exited during the run ({status}); see {log}"
            ));
        }
    }
    let pids_seen: usize = servers.iter().map(|s| s.pids_seen()).sum();
    let procs = servers.iter_mut().map(|s| s.sample().procs).sum::<usize>();
    let (mut took, mut clean) = (Duration::ZERO, true);
    for srv in servers {
        let (t, c) = srv.stop(Duration::from_secs(10));
        took = took.max(t);
        clean &= c;
    }
    let mut fig = result?;
    fig.insert("stop_ms".into(), took.as_secs_f64() * 1e3);
    fig.insert("stop_clean".into(), if clean { 1.0 } else { 0.0 });
    fig.insert("server_procs".into(), procs as f64);
    fig.insert("server_pids_seen".into(), pids_seen as f64);
    Ok(fig)
}

/// RSS and CPU summed over every server tree.
fn sample_all(servers: &mut [server::Running]) -> Sample {
    servers.iter_mut().fold(Sample::default(), |mut acc, s| {
        let x = s.sample();
        acc.rss += x.rss;
        acc.cpu_ticks += x.cpu_ticks;
        acc.procs += x.procs;
        acc
    })
}

fn drive(
    servers: &mut [server::Running],
    redis: Option<&RedisServer>,
    spec: &ServerSpec,
    sc: &Scenario,
    empty: Sample,
    tls_ca: Option<PathBuf>,
) -> Result<Figures, String> {
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    quarter::check_limits(sc.connections(), sc.clients);
    let kernel = quarter::Kernel::sample();
    let mut lg = Loadgens::spawn(configs(spec, sc, &addrs, tls_ca), sc.client)?;
    let mut fig = Figures::new();
    // The load generators give up on stuck attempts first and report them.
    let connect_deadline = Duration::from_millis(connect_bound_ms(sc) + 10_000);
    let ready = lg.expect_all("ready", connect_deadline)?;
    let connected: u64 = ready.iter().map(|s| s.connected).sum();
    let failed: u64 = ready.iter().map(|s| s.failed).sum();
    fig.insert("connect_failed".into(), failed as f64);
    if sc.kind != Kind::Churn {
        let secs = ready.iter().map(|s| s.connect_ns).max().unwrap_or(1) as f64 / 1e9;
        fig.insert("conns".into(), connected as f64);
        fig.insert("handshakes_per_s".into(), connected as f64 / secs);
        // Fewer upgraded connections than asked: measure what we have; the
        // runner marks the row failed from `connect_failed`.
        fig.insert(
            "connect_failed".into(),
            sc.connections() as f64 - connected as f64,
        );
    }
    if matches!(sc.kind, Kind::AppFanout | Kind::Rooms) {
        // The subscribers must be on every worker for the cross-worker path
        // to be measured: shown, not assumed.
        let per = apps::conns_per_worker(servers[0].pid(), servers[0].addr.port());
        let (min, max) = (per.iter().min(), per.iter().max());
        fig.insert("worker_conns_min".into(), min.copied().unwrap_or(0) as f64);
        fig.insert("worker_conns_max".into(), max.copied().unwrap_or(0) as f64);
    }
    let holding = sample_all(servers);
    fig.insert("rss_empty_mib".into(), empty.rss as f64 / 1048576.0);
    fig.insert("rss_mib".into(), holding.rss as f64 / 1048576.0);
    if sc.kind == Kind::Idle {
        let per = (holding.rss as f64 - empty.rss as f64) / connected.max(1) as f64;
        fig.insert("rss_per_conn_b".into(), per);
        quarter::after_idle(&mut lg, servers, sc, &kernel, &mut fig)?;
        return Ok(fig);
    }

    let start = mono_ns() + 100_000_000;
    let (warm, measure) = (sc.warm.as_nanos() as u64, sc.measure.as_nanos() as u64);
    lg.send_all(&format!("run {start} {warm} {measure}"))?;
    let redis_secs = || redis.map_or(0.0, |r| r.cpu_secs());
    sleep_until(start + warm);
    let (s0, c0, m0, r0) = (
        sample_all(servers),
        lg.cpu_ticks(),
        server::machine_busy_ticks(),
        redis_secs(),
    );
    sleep_until(start + warm + measure);
    let (s1, c1, m1, r1) = (
        sample_all(servers),
        lg.cpu_ticks(),
        server::machine_busy_ticks(),
        redis_secs(),
    );
    let secs = measure as f64 / 1e9;
    let tps = server::ticks_per_sec();
    if redis.is_some() {
        fig.insert("redis_cpu_pct".into(), (r1 - r0) / secs * 100.0);
    }
    fig.insert(
        "server_cpu_pct".into(),
        s1.cpu_ticks.saturating_sub(s0.cpu_ticks) as f64 / tps / secs * 100.0,
    );
    fig.insert(
        "client_cpu_pct".into(),
        c1.saturating_sub(c0) as f64 / tps / secs * 100.0,
    );
    // CPU the rest of the machine (other builds, ...) took meanwhile: noise.
    let ours = (s1.cpu_ticks.saturating_sub(s0.cpu_ticks) + c1.saturating_sub(c0)) as f64
        + (r1 - r0) * tps;
    let other = m1.saturating_sub(m0) as f64 - ours;
    fig.insert("other_cpu_pct".into(), other.max(0.0) / tps / secs * 100.0);
    fig.insert("rss_mib".into(), s1.rss as f64 / 1048576.0);

    let tail = Duration::from_secs(30);
    let fanout = matches!(sc.kind, Kind::Fanout | Kind::AppFanout);
    let stats = if sc.kind == Kind::Rooms {
        let sent = lg.expect_all("sent", tail)?;
        let line = crate::chatrooms::expect_line(&sent, sc, &mut fig);
        lg.send_all(&line)?;
        lg.expect_all("done", tail)?
    } else if fanout {
        let sent = lg.expect_all("sent", tail)?;
        // An application owes its subscribers the writes it acked.
        let total: u64 = if sc.kind == Kind::AppFanout {
            sent.iter().map(|s| s.acked).sum()
        } else {
            sent.iter().map(|s| s.sent).sum()
        };
        fig.insert("sent".into(), total as f64);
        fig.insert("expected".into(), (total * sc.conns as u64) as f64);
        lg.send_all(&format!("expect {total}"))?;
        lg.expect_all("done", tail)?
    } else {
        lg.expect_all("done", tail)?
    };
    let mut sum = Stats::default();
    for s in &stats {
        sum.connected += s.connected;
        sum.failed += s.failed;
        sum.sent += s.sent;
        sum.received_in_window += s.received_in_window;
        sum.received_total += s.received_total;
        sum.lost += s.lost;
        sum.duplicated += s.duplicated;
        sum.reordered += s.reordered;
        sum.closed_by_server += s.closed_by_server;
        sum.acked += s.acked;
        sum.conflicts += s.conflicts;
        sum.errors += s.errors;
        sum.latency.merge(&s.latency);
    }
    match sc.kind {
        Kind::Churn => {
            fig.insert("handshakes_per_s".into(), sum.connected as f64 / secs);
            fig.insert("connect_failed".into(), sum.failed as f64);
        }
        Kind::Echo => {
            fig.insert("msgs_per_s".into(), sum.received_in_window as f64 / secs);
        }
        Kind::Writes | Kind::HotKey => {
            fig.insert("acks_per_s".into(), sum.received_in_window as f64 / secs);
            fig.insert("conflicts".into(), sum.conflicts as f64);
            fig.insert("conflicts_per_s".into(), sum.conflicts as f64 / secs);
            fig.insert("errors".into(), sum.errors as f64);
        }
        Kind::Fanout | Kind::AppFanout => {
            if sc.kind == Kind::AppFanout {
                fig.insert("errors".into(), sum.errors as f64);
                fig.insert("writer_conflicts".into(), sum.conflicts as f64);
            }
            fig.insert(
                "deliveries_per_s".into(),
                sum.received_in_window as f64 / secs,
            );
            // What a CPU-second of the servers (and Redis) delivers.
            let cpu = fig.get("server_cpu_pct").copied().unwrap_or(0.0)
                + fig.get("redis_cpu_pct").copied().unwrap_or(0.0);
            if cpu > 0.0 {
                fig.insert(
                    "deliveries_per_cpu_s".into(),
                    sum.received_in_window as f64 / secs / (cpu / 100.0),
                );
            }
            fig.insert("received".into(), sum.received_total as f64);
            fig.insert("lost".into(), sum.lost as f64);
            fig.insert("duplicated".into(), sum.duplicated as f64);
            fig.insert("reordered".into(), sum.reordered as f64);
        }
        Kind::Rooms => crate::chatrooms::figures(&stats, &sum, secs, &mut fig),
        Kind::Idle => {}
    }
    if sc.kind != Kind::Churn {
        fig.insert("closed_by_server".into(), sum.closed_by_server as f64);
        fig.insert("p50_ms".into(), sum.latency.quantile_us(0.50) as f64 / 1e3);
        fig.insert("p99_ms".into(), sum.latency.quantile_us(0.99) as f64 / 1e3);
        fig.insert("max_ms".into(), sum.latency.max_us as f64 / 1e3);
    }
    Ok(fig)
}

/// What a load generator plays for `spec` x `sc` (`LoadConfig::scenario`).
fn loadgen_scenario(spec: &ServerSpec, sc: &Scenario) -> String {
    match sc.kind {
        Kind::Writes => "sync-writes".into(),
        Kind::HotKey => "sync-hot".into(),
        Kind::AppFanout => format!("{}-fanout", spec.name),
        Kind::Rooms => crate::chatrooms::loadgen_scenario(spec),
        kind => format!("{kind:?}").to_lowercase(),
    }
}

/// Splits the scenario's connections (and senders) over its client
/// processes; client `i` talks to `targets[i % targets.len()]`, over TLS
/// trusting `tls_ca` if given.
fn configs(
    spec: &ServerSpec,
    sc: &Scenario,
    targets: &[SocketAddr],
    tls_ca: Option<PathBuf>,
) -> Vec<LoadConfig> {
    let n = sc.clients.max(1);
    let mut out = Vec::new();
    let (mut conn_base, mut sender_base) = (0, 0);
    for i in 0..n {
        let senders = sc.senders / n + usize::from(i < sc.senders % n);
        let mut conns = sc.conns / n + usize::from(i < sc.conns % n);
        if sc.kind == Kind::AppFanout {
            conns += senders;
        }
        let senders = senders.min(conns);
        let rate_per_sender = if sc.senders > 0 {
            sc.rate / sc.senders as f64
        } else {
            0.0
        };
        out.push(LoadConfig {
            scenario: loadgen_scenario(spec, sc),
            target: targets[i % targets.len()],
            conns,
            conn_base,
            connect_concurrency: if sc.kind == Kind::Churn { conns } else { 128 },
            size: sc.size,
            senders,
            sender_base,
            senders_total: sc.senders as u32,
            rate_per_sender,
            deadline_ms: connect_bound_ms(sc),
            drain_ms: 10_000,
            conns_total: sc.conns,
            tls_ca: tls_ca.clone(),
        });
        conn_base += conns;
        sender_base += senders as u32;
    }
    out
}

/// How long the connect phase may take: 10 s plus 1 s per 1,000 connections
/// (the slowest server here upgrades about 5,000 per second).
fn connect_bound_ms(sc: &Scenario) -> u64 {
    10_000 + sc.conns as u64
}

fn sleep_until(t: u64) {
    let now = mono_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

/// The load generator child processes of one run.
struct Loadgens {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    lines: Receiver<(usize, Option<String>)>,
}

impl Loadgens {
    /// Starts one child per config: this same binary with `loadgen <json>`
    /// (or `loadgen-tokio <json>`).
    fn spawn(configs: Vec<LoadConfig>, client: Client) -> Result<Self, String> {
        // Our own image even if cargo relinked the file on disk meanwhile
        // (another build replacing it must not break a long run).
        let exe = "/proc/self/exe";
        let (tx, rx) = mpsc::channel();
        let mut lg = Loadgens {
            children: Vec::new(),
            stdins: Vec::new(),
            lines: rx,
        };
        for (i, cfg) in configs.iter().enumerate() {
            let json = serde_json::to_string(cfg).map_err(|e| e.to_string())?;
            let mut child = Command::new(exe)
                .args([client.subcommand(), &json])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn loadgen: {e}"))?;
            let stdout = child.stdout.take().ok_or("no loadgen stdout")?;
            lg.stdins
                .push(child.stdin.take().ok_or("no loadgen stdin")?);
            lg.children.push(child);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((i, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            });
        }
        Ok(lg)
    }

    /// Waits for a `tag {json}` line from every child, bounded by `limit`.
    fn expect_all(&mut self, tag: &str, limit: Duration) -> Result<Vec<Stats>, String> {
        let deadline = Instant::now() + limit;
        let mut got: Vec<Option<Stats>> = vec![None; self.children.len()];
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((i, Some(line))) => {
                    if let Some(json) = line.strip_prefix(tag).map(str::trim) {
                        got[i] = Some(
                            serde_json::from_str(json).map_err(|e| format!("loadgen {i}: {e}"))?,
                        );
                    }
                }
                Ok((i, None)) => return Err(format!("loadgen {i} exited before `{tag}`")),
                Err(_) => {
                    return Err(format!(
                        "timed out waiting for `{tag}` from load generators"
                    ))
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    fn send_all(&mut self, line: &str) -> Result<(), String> {
        for s in &mut self.stdins {
            writeln!(s, "{line}")
                .and_then(|_| s.flush())
                .map_err(|e| format!("loadgen stdin: {e}"))?;
        }
        Ok(())
    }

    /// CPU ticks used so far by all load generators.
    fn cpu_ticks(&self) -> u64 {
        let pids: Vec<i32> = self.children.iter().map(|c| c.id() as i32).collect();
        server::sample_pids(&pids).cpu_ticks
    }
}

impl Drop for Loadgens {
    /// Closes stdin (the children close their connections and exit), waits
    /// up to 5 s, then kills what is left.
    fn drop(&mut self) {
        self.stdins.clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while Instant::now() < deadline {
                match c.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    _ => break,
                }
            }
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}
