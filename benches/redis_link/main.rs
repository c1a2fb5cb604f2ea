//! Which Redis client a worker should use, by measurement (issue 11).
//!
//! ```text
//! cargo bench --bench redis_link                  # 3 runs, about 40 s
//! cargo bench --bench redis_link -- --runs 5 --measure-ms 2000
//! cargo bench --bench redis_link -- --only pub1,ping   # pub1 pub10 pub100 ping hset
//! cargo bench --bench redis_link -- --pin split        # same (default), split, none
//! ```
//!
//! `--pin same` keeps the client (every thread) and Redis on CPU 0: the
//! figures then show what each design costs, not where the scheduler put
//! the processes. Unpinned (`none`) on a small VM, a wakeup across cores
//! costs tens of µs, and whether the client and Redis share a core flips
//! from case to case, so burst-1 figures jump by 5x between runs. `split`
//! keeps the client on CPU 0 and Redis on CPU 1: every hop crosses cores.
//!
//! Starts its own `redis-server` on a free port, then drives the same
//! workloads through two designs, as a worker's loop would use them:
//!
//! - **A, in-loop** (`in_loop.rs`): the mio loop owns a non-blocking
//!   `TcpStream` to Redis; a turn's commands are encoded with foreman's RESP
//!   codec (`foreman::bench_support::resp`) into one buffer and written
//!   together (pipelined); replies are decoded in the loop. The subscriber is
//!   a second connection in the same loop.
//! - **B, bridge thread** (`bridge.rs`): the loop builds `redis::Cmd`s and
//!   hands them to a thread running redis-rs over a bounded crossbeam channel;
//!   the thread drains the channel, sends what is there as one pipeline, and
//!   answers through a channel and the loop's `mio::Waker`. The subscriber is
//!   a redis-rs `PubSub` in a thread of its own, forwarding messages the same
//!   way.
//!
//! Workloads: `PUBLISH` of 64-byte payloads to a channel with one subscriber,
//! offered as bursts of 1, 10 and 100 per loop turn (the next burst goes out
//! once the previous one's replies and deliveries are all back in the loop);
//! and single request/reply round trips of `PING` and `HSET`. For each,
//! commands/s, latency p50/p99 (publish: until the subscriber's copy is in
//! the loop; PING/HSET: until the reply is), the client process's CPU per
//! 100k commands (getrusage user+sys, and the loop thread's share), and
//! Redis's CPU per 100k (from `/proc/PID/stat`). Medians over the runs; the
//! designs alternate in order from run to run, and the workloads rotate.
//! `other CPU %` is what the rest of the machine took meanwhile (of 200% on
//! two cores): noise to read the figures against.

mod bridge;
mod in_loop;
#[path = "../common/redis_server.rs"]
mod redis_server;

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis_server::RedisServer;

/// The channel both designs publish on.
pub const CHANNEL: &str = "foreman-bench";
/// The hash the HSET workload writes.
pub const HASH: &str = "foreman-bench-hash";
/// Bytes of each published payload.
pub const PAYLOAD: usize = 64;
/// Longest wait in one poll (something is always in flight, so a turn
/// normally ends sooner).
pub const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// What one case drives.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Work {
    /// `PUBLISH` bursts of this many commands per turn, one subscriber.
    Publish(usize),
    /// One `PING` at a time.
    Ping,
    /// One `HSET` at a time (a field out of 1,000, 16-byte values).
    Hset,
}

impl Work {
    fn burst(self) -> usize {
        match self {
            Work::Publish(n) => n,
            _ => 1,
        }
    }

    /// Whether each command's payload must also reach the subscriber.
    pub fn delivers(self) -> bool {
        matches!(self, Work::Publish(_))
    }

    /// Its name for `--only`: `pub1`, `pub10`, `pub100`, `ping`, `hset`.
    fn key(self) -> String {
        match self {
            Work::Publish(n) => format!("pub{n}"),
            Work::Ping => "ping".into(),
            Work::Hset => "hset".into(),
        }
    }

    fn label(self) -> String {
        match self {
            Work::Publish(n) => format!("PUBLISH burst {n}"),
            Work::Ping => "PING".into(),
            Work::Hset => "HSET".into(),
        }
    }
}

/// Nanoseconds on a process-wide monotonic clock.
pub fn now_ns() -> u64 {
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The payload of command `seq` sent at `ts`: both stamped in front.
pub fn payload(seq: u64, ts: u64) -> [u8; PAYLOAD] {
    let mut p = [b'x'; PAYLOAD];
    p[..8].copy_from_slice(&ts.to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    p
}

/// The send time stamped in a payload.
fn stamped(p: &[u8]) -> Option<u64> {
    p.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// The field an HSET of `seq` writes.
pub fn hset_field(seq: u64) -> String {
    format!("f{}", seq % 1000)
}

/// User + system CPU in microseconds: the whole process or the calling
/// thread.
fn cpu_us(who: libc::c_int) -> u64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with a valid pointer.
    unsafe { libc::getrusage(who, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// CPU spent in processes (user, nice, system) over the whole machine, in
/// seconds, from /proc/stat.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// One reading at a window's edge.
#[derive(Clone, Copy)]
struct Mark {
    t: u64,
    process_us: u64,
    loop_us: u64,
    redis_s: f64,
    machine_s: f64,
}

impl Mark {
    fn take(redis: &RedisServer) -> Mark {
        Mark {
            t: now_ns(),
            process_us: cpu_us(libc::RUSAGE_SELF),
            loop_us: cpu_us(libc::RUSAGE_THREAD),
            redis_s: redis.cpu_secs(),
            machine_s: machine_busy_secs(),
        }
    }
}

#[derive(PartialEq)]
enum Phase {
    Warm,
    Measure,
    Done,
}

/// The workload's clock and bookkeeping, shared by both designs: which
/// burst to send next, what is still due, latencies and CPU marks. Called
/// from the loop thread only (the loop thread's CPU is read there).
pub struct Driver<'a> {
    work: Work,
    redis: &'a RedisServer,
    warm_end: u64,
    end: u64,
    phase: Phase,
    /// Replies of the burst in flight still to come.
    replies_due: usize,
    /// Deliveries of the burst in flight still to come (publish).
    deliveries_due: usize,
    /// Send times of PING/HSET in flight (replies come back in order).
    issued: VecDeque<u64>,
    seq: u64,
    /// Commands issued inside the measure window.
    measured: u64,
    lat_ns: Vec<u64>,
    /// Replies that were not what the command answers (an error, or a
    /// PUBLISH that reached no subscriber).
    wrong: u64,
    marks: Option<(Mark, Mark)>,
    start: Option<Mark>,
}

impl<'a> Driver<'a> {
    fn new(work: Work, redis: &'a RedisServer, warm: Duration, measure: Duration) -> Self {
        let t = now_ns();
        Driver {
            work,
            redis,
            warm_end: t + warm.as_nanos() as u64,
            end: t + (warm + measure).as_nanos() as u64,
            phase: Phase::Warm,
            replies_due: 0,
            deliveries_due: 0,
            issued: VecDeque::new(),
            seq: 0,
            measured: 0,
            lat_ns: Vec::new(),
            wrong: 0,
            marks: None,
            start: None,
        }
    }

    /// The workload.
    pub fn work(&self) -> Work {
        self.work
    }

    /// The next burst to send as `(first seq, count, send time)`, if the last
    /// one is all back and the run is not over. Window edges fall between
    /// bursts, so every command counted in the window completed in it.
    pub fn next_burst(&mut self) -> Option<(u64, usize, u64)> {
        if self.replies_due > 0 || self.deliveries_due > 0 || self.phase == Phase::Done {
            return None;
        }
        let now = now_ns();
        if self.phase == Phase::Warm && now >= self.warm_end {
            self.phase = Phase::Measure;
            self.start = Some(Mark::take(self.redis));
        }
        if self.phase == Phase::Measure && now >= self.end {
            self.phase = Phase::Done;
            let stop = Mark::take(self.redis);
            self.marks = self.start.map(|s| (s, stop));
            return None;
        }
        let n = self.work.burst();
        self.replies_due = n;
        if self.work.delivers() {
            self.deliveries_due = n;
        } else {
            self.issued.extend(std::iter::repeat_n(now, n));
        }
        if self.phase == Phase::Measure {
            self.measured += n as u64;
        }
        let first = self.seq;
        self.seq += n as u64;
        Some((first, n, now))
    }

    /// Whether the run is over and nothing is in flight. `Err` once what is
    /// in flight is 5 s overdue after the window (a lost reply or delivery).
    pub fn done(&self) -> Result<bool, String> {
        let idle = self.replies_due == 0 && self.deliveries_due == 0;
        if !idle && now_ns() > self.end + 5_000_000_000 {
            return Err(format!(
                "{} replies and {} deliveries still due 5 s after the window",
                self.replies_due, self.deliveries_due
            ));
        }
        Ok(self.phase == Phase::Done && idle)
    }

    /// A reply came back; `ok` says whether it was the expected one.
    pub fn on_reply(&mut self, ok: bool) {
        self.replies_due = self.replies_due.saturating_sub(1);
        self.wrong += u64::from(!ok);
        if let Some(sent) = self.issued.pop_front() {
            if self.phase == Phase::Measure {
                self.lat_ns.push(now_ns() - sent);
            }
        }
    }

    /// A published payload reached the loop from the subscriber.
    pub fn on_delivery(&mut self, payload: &[u8]) {
        self.deliveries_due = self.deliveries_due.saturating_sub(1);
        if let (Some(sent), Phase::Measure) = (stamped(payload), &self.phase) {
            self.lat_ns.push(now_ns().saturating_sub(sent));
        }
    }

    fn result(mut self) -> Result<Figures, String> {
        let (a, b) = self.marks.ok_or("the run ended before its window")?;
        if self.wrong > 0 {
            return Err(format!("{} unexpected replies", self.wrong));
        }
        self.lat_ns.sort_unstable();
        let q = |p: f64| {
            let v = &self.lat_ns;
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
                .map_or(f64::NAN, |ns| *ns as f64 / 1e3)
        };
        let cmds = self.measured.max(1) as f64;
        let per_100k = 100_000.0 / cmds;
        let secs = (b.t - a.t) as f64 / 1e9;
        let ours = (b.process_us - a.process_us) as f64 / 1e6 + (b.redis_s - a.redis_s);
        Ok(Figures {
            cmds_per_s: cmds / secs,
            other_pct: ((b.machine_s - a.machine_s - ours) / secs * 100.0).max(0.0),
            p50_us: q(0.50),
            p99_us: q(0.99),
            client_ms: (b.process_us - a.process_us) as f64 / 1e3 * per_100k,
            loop_ms: (b.loop_us - a.loop_us) as f64 / 1e3 * per_100k,
            redis_ms: (b.redis_s - a.redis_s) * 1e3 * per_100k,
        })
    }
}

/// What one case measured.
#[derive(Clone, Copy, Default)]
struct Figures {
    cmds_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// Client process CPU (all threads) per 100k commands, ms.
    client_ms: f64,
    /// The loop thread's part of it.
    loop_ms: f64,
    /// redis-server CPU per 100k commands, ms.
    redis_ms: f64,
    /// CPU other processes took during the window (of 100% per core):
    /// noise from the rest of the machine.
    other_pct: f64,
}

/// The two designs.
#[derive(Clone, Copy, PartialEq)]
enum Design {
    InLoop,
    Bridge,
}

impl Design {
    fn label(self) -> &'static str {
        match self {
            Design::InLoop => "A in-loop RESP",
            Design::Bridge => "B redis-rs bridge",
        }
    }
}

fn run_case(
    design: Design,
    work: Work,
    redis: &RedisServer,
    warm: Duration,
    measure: Duration,
) -> Result<Figures, String> {
    let mut d = Driver::new(work, redis, warm, measure);
    match design {
        Design::InLoop => in_loop::run(redis.addr(), &mut d)?,
        Design::Bridge => bridge::run(&redis.url(), &mut d)?,
    }
    d.result()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = arg(&args, "--runs").unwrap_or(3).max(1);
    let measure = Duration::from_millis(arg(&args, "--measure-ms").unwrap_or(1000));
    let warm = Duration::from_millis(200);
    // Where the client and Redis run (see the module docs).
    let pin: String = arg(&args, "--pin").unwrap_or_else(|| "same".into());
    let (client_cpu, redis_cpu) = match pin.as_str() {
        "same" => (Some(0), Some(0)),
        "split" => (Some(0), Some(1)),
        "none" => (None, None),
        other => {
            eprintln!("redis_link: --pin {other}: expected same, split or none");
            std::process::exit(2);
        }
    };
    if let Some(cpu) = client_cpu {
        if !redis_server::pin_to(cpu) {
            eprintln!("redis_link: cannot pin to CPU {cpu}");
            std::process::exit(1);
        }
    }
    let redis = match RedisServer::start_on(redis_cpu) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redis_link: {e}");
            std::process::exit(1);
        }
    };
    let only: Option<String> = arg(&args, "--only");
    let works: Vec<Work> = [
        Work::Publish(1),
        Work::Publish(10),
        Work::Publish(100),
        Work::Ping,
        Work::Hset,
    ]
    .into_iter()
    .filter(|w| {
        only.as_ref()
            .is_none_or(|o| o.split(',').any(|k| k == w.key()))
    })
    .collect();
    let designs = [Design::InLoop, Design::Bridge];
    let t0 = Instant::now();
    // results[work][design] = figures of each run
    let mut results = vec![vec![Vec::<Figures>::new(); designs.len()]; works.len()];
    for run in 0..runs {
        eprintln!("redis_link: run {}/{runs} ...", run + 1);
        // Rotate the workloads too: the scheduler's placement of the client
        // and Redis on the two cores lingers after a heavy case and slows
        // the next one, so no case always follows the same one.
        for j in 0..works.len() {
            let w = (j + run) % works.len();
            let work = &works[w];
            for k in 0..designs.len() {
                // Alternate which design goes first.
                let di = (k + run) % designs.len();
                match run_case(designs[di], *work, &redis, warm, measure) {
                    Ok(f) => results[w][di].push(f),
                    Err(e) => {
                        eprintln!(
                            "redis_link: {} / {}: {e}",
                            designs[di].label(),
                            work.label()
                        );
                        std::process::exit(1);
                    }
                }
            }
        }
    }
    println!(
        "\n## Redis client designs (redis-server 127.0.0.1:{}, --pin {pin}, {runs} run(s), {} ms windows, medians; took {:.0} s)\n",
        redis.port,
        measure.as_millis(),
        t0.elapsed().as_secs_f64()
    );
    println!("| workload | design | cmds/s | p50 µs | p99 µs | client CPU ms/100k | loop thread ms/100k | redis CPU ms/100k | other CPU % |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, work) in works.iter().enumerate() {
        for (di, design) in designs.iter().enumerate() {
            let runs = &results[w][di];
            let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
            println!(
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
                work.label(),
                design.label(),
                m(|f| f.cmds_per_s),
                m(|f| f.p50_us),
                m(|f| f.p99_us),
                m(|f| f.client_ms),
                m(|f| f.loop_ms),
                m(|f| f.redis_ms),
                m(|f| f.other_pct),
            );
        }
    }
    println!("\nPUBLISH latency: from the loop sending it to the subscriber's copy being in the loop. PING/HSET: until the reply is in the loop.");
}
