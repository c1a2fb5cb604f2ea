//! The task scheduler's bench (issue 13): `noop` jobs through the scheduler
//! (`examples/tasks`, count 2) and four `task_worker` executors (capacity
//! 16 each, one queue), with the store on disk and in memory.
//!
//! ```text
//! cargo bench --bench tasks                                # 20,000 jobs x 3 runs per store
//! cargo bench --bench tasks -- --jobs 5000 --runs 1 --inflight 256
//! ```
//!
//! For each run and store it writes a `tasks.toml` into a fresh temp dir
//! (free ports, no page, `database` a new file there or `":memory:"`),
//! starts the scheduler and the executors, waits until every executor is
//! connected, and drives the load from this process: a few submitter
//! connections together keep `--inflight` jobs submitted and not yet
//! finished, `watch`ing each job once it is accepted. It measures jobs/s
//! from the first `submit` to the last `finished`, and each job's latency
//! from sending its `submit` to receiving its `finished` (p50, p99).
//! The runs alternate between the stores (disk 1, memory 1, disk 2, ...),
//! so drifting load from the rest of the machine falls on both alike.
//!
//! While measuring it checks: every submit accepted under a fresh id, every
//! job finished exactly once with state `succeeded`, no error or unexpected
//! frame, and at the end the queue's `stats` counting exactly the run's jobs
//! as succeeded and none in another state. Any failure stops the bench with
//! a non-zero exit.
//!
//! It prints a table (store, jobs/s, p50, p99: medians over the runs, and
//! the ratio memory/disk) and writes the figures, every run's too, to
//! `target/bench/tasks-latest.json`; server logs go to
//! `target/bench/logs/`. Options:
//!
//! - `--jobs N`: jobs per run (default 20000).
//! - `--runs N`: runs per store (default 3).
//! - `--inflight N`: jobs in flight at once, over all connections (default 512).
//! - `--conns N`: submitter connections sharing them (default 4).
//! - `--no-build`: use the examples as they are in `target/release/examples`
//!   (otherwise `tasks` and `task_worker` are built in release mode first).
//! - `--help`: this list.

#[path = "../common/cargo.rs"]
mod cargo;
mod load;
#[path = "../common/proc.rs"]
mod proc;
mod procs;
#[path = "../common/run.rs"]
mod run;

use cargo::Paths;
use run::{loadavg, median, TempDir};

use load::{Load, Measured};
use procs::Proc;
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Executors per run, and each one's capacity.
const EXECUTORS: usize = 4;
const CAPACITY: usize = 16;

/// The one queue of the bench.
const QUEUE: &str = "bench";

/// How long the scheduler and the executors may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

const HELP: &str = "\
cargo bench --bench tasks -- [--jobs N] [--runs N] [--inflight N] [--conns N] [--no-build]

  --jobs N      jobs per run (default 20000)
  --runs N      runs per store, disk and memory (default 3)
  --inflight N  jobs submitted and not yet finished at once (default 512)
  --conns N     submitter connections sharing them (default 4)
  --no-build    use target/release/examples as they are
  --help        this text

The scheduler (count 2) and 4 task_workers of capacity 16 run noop jobs;
the table gives jobs/s and submit-to-finished p50/p99 per store (medians over
the runs) and memory/disk. JSON: target/bench/tasks-latest.json.";

/// Command-line options.
#[derive(Debug)]
struct Options {
    jobs: usize,
    runs: usize,
    inflight: usize,
    conns: usize,
    build: bool,
}

/// Parses the options; `Ok(None)` for `--help`.
fn parse_options(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        jobs: 20_000,
        runs: 3,
        inflight: 512,
        conns: 4,
        build: true,
    };
    let numbers = &mut [
        ("--jobs", &mut o.jobs),
        ("--runs", &mut o.runs),
        ("--inflight", &mut o.inflight),
        ("--conns", &mut o.conns),
    ];
    Ok(run::parse_args(args, numbers, &mut o.build)?.then_some(o))
}

/// Where the jobs are kept.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Disk,
    Memory,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Disk => "disk",
            Store::Memory => "memory",
        }
    }
}

/// The scheduler's config for `store`, database in `dir`.
fn config(store: Store, dir: &Path) -> String {
    let database = match store {
        Store::Disk => dir.join("tasks.db").display().to_string(),
        Store::Memory => ":memory:".to_string(),
    };
    // The database path goes in as a TOML basic string (JSON's escapes are
    // TOML's for any path we make).
    format!(
        "[server]\nlisten = \"frame://127.0.0.1:0\"\nhttp_listen = \"\"\ncount = 2\n\n\
         [tasks]\ndatabase = {}\n",
        Value::from(database)
    )
}

/// One run: a fresh scheduler and executors, the load, the final check.
fn one_run(store: Store, run: usize, o: &Options, paths: &Paths) -> Result<Measured, String> {
    let tag = format!("{}-run{}", store.name(), run + 1);
    let dir = TempDir::new("tasks", &tag)?;
    let toml = dir.0.join("tasks.toml");
    std::fs::write(&toml, config(store, &dir.0)).map_err(|e| format!("write config: {e}"))?;
    let logs = paths.out.join("logs");
    let mut sched = procs::scheduler(
        &paths.examples,
        &toml,
        logs.join(format!("tasks-{tag}.log")),
    )?;
    wait_scheduler_ready(&mut sched)?;
    let mut execs: Vec<Proc> = Vec::new();
    for i in 0..EXECUTORS {
        execs.push(procs::executor(
            &paths.examples,
            sched.addr,
            QUEUE,
            CAPACITY,
            &format!("bench-e{i}"),
            logs.join(format!("task_worker-{tag}-e{i}.log")),
        )?);
    }
    for e in &mut execs {
        procs::wait_executor_up(e, READY_TIMEOUT)?;
    }
    let load = Load {
        jobs: o.jobs,
        inflight: o.inflight,
        conns: o.conns,
        queue: QUEUE.into(),
    };
    let measured = load::run(sched.addr, &load).map_err(|e| {
        format!(
            "{e} (logs: {} and the executors' beside it)",
            sched.log.display()
        )
    })?;
    if measured.latencies_us.len() != o.jobs {
        return Err(format!(
            "{} jobs finished of {}",
            measured.latencies_us.len(),
            o.jobs
        ));
    }
    check_stats(sched.addr, o.jobs)?;
    for e in &mut execs {
        e.stop();
    }
    if !sched.stop() {
        eprintln!(
            "bench: the scheduler did not stop on SIGTERM; see {}",
            sched.log.display()
        );
    }
    Ok(measured)
}

/// Waits until the scheduler answers `stats` (its brain is up); an
/// `unavailable` answer or a refused connection is tried again.
fn wait_scheduler_ready(sched: &mut Proc) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(how) = sched.exited() {
            return Err(format!(
                "the scheduler exited ({how}); see {}",
                sched.log.display()
            ));
        }
        let reply = load::Conn::submitter(sched.addr, "bench-ready")
            .and_then(|mut c| c.request(json!({"type": "stats", "queue": QUEUE})));
        match reply {
            Ok(r) if r["type"] == "stats" => return Ok(()),
            Ok(r) => last = r.to_string(),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "the scheduler not ready within {READY_TIMEOUT:?}: {last}"
    ))
}

/// The queue's counts: exactly `jobs` succeeded, nothing in another state.
fn check_stats(addr: std::net::SocketAddr, jobs: usize) -> Result<(), String> {
    let mut c = load::Conn::submitter(addr, "bench-check")?;
    let r = c.request(json!({"type": "stats", "queue": QUEUE}))?;
    let counts = r["counts"]
        .as_object()
        .ok_or_else(|| format!("stats answered {r}"))?;
    for (state, n) in counts {
        let want = if state == "succeeded" { jobs as u64 } else { 0 };
        if n.as_u64() != Some(want) {
            return Err(format!(
                "stats after the run: {state} = {n}, expected {want} ({r})"
            ));
        }
    }
    if !counts.contains_key("succeeded") {
        return Err(format!("stats without a succeeded count: {r}"));
    }
    Ok(())
}

/// One run's figures.
#[derive(Clone, Copy, Debug)]
struct Fig {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    secs: f64,
}

impl Fig {
    fn of(m: &Measured) -> Fig {
        Fig {
            rate: m.rate(),
            p50_ms: m.quantile_ms(0.50),
            p99_ms: m.quantile_ms(0.99),
            secs: m.elapsed.as_secs_f64(),
        }
    }

    fn json(&self) -> Value {
        json!({"jobs_per_s": self.rate, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "secs": self.secs})
    }
}

/// Medians over runs.
fn medians(runs: &[Fig]) -> Fig {
    let m = |f: fn(&Fig) -> f64| median(runs.iter().map(f).collect());
    Fig {
        rate: m(|f| f.rate),
        p50_ms: m(|f| f.p50_ms),
        p99_ms: m(|f| f.p99_ms),
        secs: m(|f| f.secs),
    }
}

fn main() -> ExitCode {
    let (o, paths) = match run::begin(HELP, parse_options, |o| o.build, &["tasks", "task_worker"]) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let stores = [Store::Disk, Store::Memory];
    let mut figs: Vec<Vec<Fig>> = vec![Vec::new(); stores.len()];
    let mut loads = vec![loadavg()];
    let t0 = Instant::now();
    for run in 0..o.runs {
        for (k, &store) in stores.iter().enumerate() {
            eprintln!(
                "bench: {} run {}/{}: {} jobs, {} in flight ...",
                store.name(),
                run + 1,
                o.runs,
                o.jobs,
                o.inflight
            );
            match one_run(store, run, &o, &paths) {
                Ok(m) => {
                    let f = Fig::of(&m);
                    eprintln!(
                        "bench:   {:.0} jobs/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} s (load {})",
                        f.rate,
                        f.p50_ms,
                        f.p99_ms,
                        f.secs,
                        loadavg()
                    );
                    figs[k].push(f);
                }
                Err(e) => {
                    eprintln!("bench: {} run {} FAILED: {e}", store.name(), run + 1);
                    return ExitCode::FAILURE;
                }
            }
            loads.push(loadavg());
        }
    }
    let med: Vec<Fig> = figs.iter().map(|f| medians(f)).collect();
    let ratio = |f: fn(&Fig) -> f64| f(&med[1]) / f(&med[0]).max(1e-9);
    println!(
        "\n## Task scheduler bench ({} jobs x {} run(s) per store, {} in flight over {} connection(s), \
         {EXECUTORS} executors x capacity {CAPACITY}; took {:.0} s)\n",
        o.jobs,
        o.runs,
        o.inflight,
        o.conns,
        t0.elapsed().as_secs_f64()
    );
    println!("| store | jobs/s | p50 ms | p99 ms | runs (jobs/s) |");
    println!("|---|---:|---:|---:|---|");
    for (k, store) in stores.iter().enumerate() {
        let runs: Vec<String> = figs[k].iter().map(|f| format!("{:.0}", f.rate)).collect();
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} |",
            store.name(),
            med[k].rate,
            med[k].p50_ms,
            med[k].p99_ms,
            runs.join(", ")
        );
    }
    println!(
        "| memory/disk | {:.2}x | {:.2}x | {:.2}x | |",
        ratio(|f| f.rate),
        ratio(|f| f.p50_ms),
        ratio(|f| f.p99_ms)
    );
    println!(
        "\nload average (1 min) at start and after each run: {}",
        loads.join(", ")
    );
    let doc = json!({
        "unix": run::unix_secs(),
        "command": format!("cargo bench --bench tasks -- --jobs {} --runs {} --inflight {} --conns {}",
            o.jobs, o.runs, o.inflight, o.conns),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "executors": EXECUTORS,
        "capacity": CAPACITY,
        "scheduler_count": 2,
        "loadavg_1min": loads,
        "rows": stores.iter().enumerate().map(|(k, s)| json!({
            "store": s.name(),
            "median": med[k].json(),
            "runs": figs[k].iter().map(Fig::json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "memory_over_disk": {
            "jobs_per_s": ratio(|f| f.rate),
            "p50_ms": ratio(|f| f.p50_ms),
            "p99_ms": ratio(|f| f.p99_ms),
        },
    });
    if !run::write_json(&paths.out, "tasks-latest.json", &doc) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
