//! foreman's WebSocket bench suite: runner and load generator in one binary.
//!
//! ```text
//! cargo bench --bench ws                     # quick profile, < 5 min
//! cargo bench --bench ws -- --full           # long profile, median of 3 runs
//! cargo bench --bench ws -- --servers foreman,uws --scenarios fanout-sat,echo
//! cargo bench --bench ws -- --scenarios sync       # the sync server's three
//! cargo bench --bench ws -- --servers chat,foreman,chat-cluster --scenarios chat,chat-sat
//! ```
//!
//! The runner builds the server examples (`broadcast`, `echo`, `peer_tokio`,
//! `chat`, `sync`) in release mode, then for every (server, scenario) pair starts the server
//! as a child process on an ephemeral port, spreads the client connections
//! over load generator processes (this binary again, `ws loadgen <json>`),
//! drives the scenario, samples the server tree's RSS and CPU from /proc, stops
//! the server with SIGTERM and prints Markdown tables plus the issue's bars.
//! JSON goes to `target/bench/ws-latest.json`. Node peers (uWebSockets.js,
//! ws) need `scripts/setup-bench-peers.sh`; without it they are reported as
//! skipped. Options:
//!
//! - `--full`: 10 s windows, 3 runs per pair (median), adds `idle-36k`
//!   (which also runs when named).
//! - `--servers LIST`: among `foreman`, `foreman1` (count 1), `tokio`, `uws`, `ws`,
//!   `foreman-cluster` (2 nodes x count 1 joined by a `redis-server` the bench
//!   starts; it runs only `cluster-fanout`), `sync` and `chat` (the example
//!   applications, count 2, each run with a fresh SQLite database under
//!   `target/bench/apps/`, their defaults but a rate limit no load here
//!   reaches and no chat tick; they run only the `sync-*` scenarios, and
//!   the chat the `chat` scenario too, with its defaults), `chat-cluster`
//!   (the chat with `[cluster]`: 2 nodes x count 1 and a durable Redis; it
//!   runs only `chat`). And `baseline`, only when named: foreman's
//!   `broadcast`/`echo` from the directory in `FOREMAN_BENCH_BASELINE` (an
//!   earlier build, count 2), so a change is measured against what it
//!   changes in one interleaved run.
//! - `--scenarios LIST`: among `idle-10k`, `idle-36k`, `idle-250k` (run only
//!   when named: 250,000 connections from 16 load generators to the
//!   `broadcast` server with count 16, kernel memory per socket, then one
//!   broadcast to all and the time until the last has it), `echo`, `fanout-sat`,
//!   `fanout-rate`, `churn`, `cluster-fanout` (`fanout-sat`'s load against
//!   `foreman-cluster` and one `foreman` node with count 2), `idle-tls`,
//!   `echo-tls` and `fanout-tls` (`idle-10k`, `echo` and `fanout-sat` over
//!   `wss://`, every server with one self-signed certificate the runner
//!   makes; `tls` names all three), and the sync server's (`sync` names all
//!   three):
//!   - `sync-writes`: 200 clients each `put` their own 4 keys in turn from
//!     the version they hold, one write in flight; acks/s and the ack's
//!     latency.
//!   - `sync-hot`: 50 clients `put` one key from their last seen version,
//!     retrying each conflict from the version it carries; acks/s,
//!     conflicts/s and the latency of a successful write from its first try.
//!   - `chat` (issue 15; `chatrooms.rs`): 1,000 users logged in, 100 in
//!     each of 10 rooms, 50 of them sending to their room at the chat's
//!     default rate limit (20 msgs/s each), against the chat (SQLite on
//!     disk) and the broadcast example's room mode under the same load:
//!     stored messages/s, deliveries/s, ack and delivery latency, lost and
//!     repeated deliveries (a row with any fails). Servers `chat`,
//!     `foreman` (the broadcast example) and `chat-cluster`.
//!   - `chat-sat`: the same rooms and senders at saturation, each keeping
//!     8 messages in flight (the next sent when one is acked; when one came
//!     back, to the broadcast example), the chat's rate limit lifted: where
//!     the store is the limit.
//!   - `sync-fanout`: 1,000 subscribers of one key and one more client
//!     writing it at 200 writes/s (not waiting for acks), against the chat:
//!     1,000 members of one room and one more sending to it at the same rate;
//!     deliveries/s, latency from the write's send time, lost and
//!     out-of-order changes per subscriber (a row with any fails), and the
//!     connections each worker holds.
//! - `--client LIST`: the load generators, `own` (default), `tokio`
//!   (tokio-tungstenite, a task per connection: `loadgen_tokio.rs`) or
//!   both; the tokio client's rows are the plain scenarios named
//!   `NAME-tokio` (`--scenarios fanout-rate` picks both).
//! - `--runs N`, `--measure-ms N`, `--conns N`: override the profile.
//! - `--client-procs N`: load generator processes per scenario (fanout and
//!   echo use 2 by default; each holds at most 15,000 connections).
//! - `--no-build`: use the examples as they are in `target/release/examples`.
//!
//! With several runs, the runs of one scenario interleave over its servers
//! (run 1 of each, then run 2, ...), so drifting load from the rest of the
//! machine falls on all of them alike.

mod apps;
#[path = "../common/cargo.rs"]
mod cargo;
mod chatrooms;
mod cluster;
mod hist;
mod nofile;
mod plan;
#[path = "../common/redis_server.rs"]
mod redis_server;

pub use nofile::raise_nofile_limit;
mod loadgen;
mod loadgen_tokio;
mod report;
mod rows;
mod scenario;
mod server;
mod tls;
mod wire;

use std::time::{Duration, Instant};

use cargo::{paths, Paths};
use plan::{Client, Kind, Scenario};
use rows::Row;
use server::ServerSpec;

/// Command-line options of the runner.
struct Options {
    full: bool,
    servers: Option<Vec<String>>,
    scenarios: Option<Vec<String>>,
    runs: Option<usize>,
    measure_ms: Option<u64>,
    conns: Option<usize>,
    build: bool,
    /// Load generators: ours, tokio's, or both.
    clients: Vec<Client>,
    /// Load generator processes per scenario, instead of its own number.
    client_procs: Option<usize>,
}

fn parse_options(args: &[String]) -> Options {
    let mut o = Options {
        full: false,
        servers: None,
        scenarios: None,
        runs: None,
        measure_ms: None,
        conns: None,
        build: true,
        clients: vec![Client::Own],
        client_procs: None,
    };
    let list = |v: Option<&String>| v.map(|s| s.split(',').map(str::to_string).collect());
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--full" => o.full = true,
            "--quick" => o.full = false,
            "--no-build" => o.build = false,
            "--servers" => {
                o.servers = list(args.get(i + 1));
                i += 1;
            }
            "--scenarios" => {
                o.scenarios = list(args.get(i + 1));
                i += 1;
            }
            "--runs" => {
                o.runs = args.get(i + 1).and_then(|v| v.parse().ok());
                i += 1;
            }
            "--conns" => {
                o.conns = args.get(i + 1).and_then(|v| v.parse().ok());
                i += 1;
            }
            "--client" => {
                let names: Vec<String> = list(args.get(i + 1)).unwrap_or_default();
                o.clients = names
                    .iter()
                    .map(|n| match n.as_str() {
                        "own" => Client::Own,
                        "tokio" => Client::Tokio,
                        other => {
                            eprintln!("bench: --client {other}: give own, tokio or own,tokio");
                            std::process::exit(2);
                        }
                    })
                    .collect();
                i += 1;
            }
            "--client-procs" => {
                o.client_procs = args.get(i + 1).and_then(|v| v.parse().ok());
                i += 1;
            }
            "--measure-ms" => {
                o.measure_ms = args.get(i + 1).and_then(|v| v.parse().ok());
                i += 1;
            }
            _ => {} // `--bench` and filters from cargo
        }
        i += 1;
    }
    o
}

/// The scenarios of a profile.
fn scenarios(o: &Options) -> Vec<Scenario> {
    let (warm, measure) = if o.full { (2000, 10_000) } else { (1000, 3000) };
    let measure = Duration::from_millis(o.measure_ms.unwrap_or(measure));
    let warm = Duration::from_millis(warm);
    let base = |name: &str, kind: Kind, conns: usize, clients: usize| Scenario {
        name: name.into(),
        kind,
        conns,
        size: 64,
        senders: 0,
        rate: 0.0,
        clients,
        cluster: false,
        tls: false,
        warm,
        measure,
        client: Client::Own,
    };
    let mut v = vec![base("idle-10k", Kind::Idle, 10_000, 2)];
    // With --full, or when named.
    let named = |name: &str| {
        o.scenarios
            .iter()
            .flatten()
            .any(|s| s.strip_suffix("-tokio").unwrap_or(s) == name)
    };
    if o.full || named("idle-36k") {
        v.push(base("idle-36k", Kind::Idle, 36_000, 3));
    }
    // Issue 15, only when named: 250,000 idle connections from 16 load
    // generators (each under the 20,000-descriptor cap), then one
    // broadcast to all (`scenario/quarter.rs`).
    if o.scenarios.iter().flatten().any(|s| s == "idle-250k") {
        v.push(Scenario {
            senders: 1,
            ..base("idle-250k", Kind::Idle, 250_000, 16)
        });
    }
    v.push(Scenario {
        size: 512,
        ..base("echo", Kind::Echo, 500, 2)
    });
    v.push(Scenario {
        senders: 10,
        ..base("fanout-sat", Kind::Fanout, 1000, 2)
    });
    v.push(Scenario {
        senders: 10,
        rate: 1000.0,
        ..base("fanout-rate", Kind::Fanout, 1000, 2)
    });
    v.push(base("churn", Kind::Churn, 64, 2));
    // Issue 15: idle, echo and fan-out saturation over `wss://`, every
    // server with the same certificate (`tls.rs`).
    v.push(Scenario {
        tls: true,
        ..base("idle-tls", Kind::Idle, 10_000, 2)
    });
    v.push(Scenario {
        size: 512,
        tls: true,
        ..base("echo-tls", Kind::Echo, 500, 2)
    });
    v.push(Scenario {
        senders: 10,
        tls: true,
        ..base("fanout-tls", Kind::Fanout, 1000, 2)
    });
    // Issue 11: the same saturation load over 2 nodes x 1 worker joined by
    // Redis (the servers of `foreman-cluster`; each load generator holds one
    // node's half) and over one node with count = 2 (`foreman`).
    v.push(Scenario {
        senders: 10,
        cluster: true,
        ..base("cluster-fanout", Kind::Fanout, 1000, 2)
    });
    // Issue 12: the sync server. Writes are durable commits (SQLite,
    // synchronous=FULL): concurrent clients let them share a commit.
    v.push(base("sync-writes", Kind::Writes, 200, 2));
    v.push(base("sync-hot", Kind::HotKey, 50, 2));
    v.push(Scenario {
        senders: 1,
        rate: 200.0,
        ..base("sync-fanout", Kind::AppFanout, 1000, 2)
    });
    // Issue 15: the chat's own figures (`chatrooms.rs`).
    v.push(chatrooms::scenario(base("chat", Kind::Rooms, 1000, 2)));
    v.push(chatrooms::saturation(base(
        "chat-sat",
        Kind::Rooms,
        1000,
        2,
    )));
    // The tokio client plays the plain scenarios: each gets a twin named
    // `NAME-tokio`, right after it; without `own` the originals go.
    if o.clients.contains(&Client::Tokio) {
        let own = o.clients.contains(&Client::Own);
        v = v
            .into_iter()
            .flat_map(|sc| {
                // Not the cluster's, TLS or idle-250k's one broadcast: our
                // generator's alone.
                let plain = match sc.kind {
                    Kind::Idle => sc.senders == 0,
                    Kind::Echo | Kind::Fanout | Kind::Churn => true,
                    _ => false,
                } && !sc.cluster
                    && !sc.tls;
                let twin = plain.then(|| Scenario {
                    name: format!("{}-tokio", sc.name),
                    client: Client::Tokio,
                    ..sc.clone()
                });
                (own || !plain).then_some(sc).into_iter().chain(twin)
            })
            .collect();
    }
    if o.conns.is_some() || o.client_procs.is_some() {
        for sc in &mut v {
            sc.conns = o.conns.unwrap_or(sc.conns);
            // As many processes as asked, each under the descriptor cap.
            let procs = o.client_procs.unwrap_or(sc.clients).max(1);
            sc.clients = procs.max(sc.conns.div_ceil(15_000));
        }
    }
    v
}

/// Which servers run which scenarios.
fn plan(o: &Options) -> Vec<(ServerSpec, Scenario)> {
    let servers = [
        ("foreman", ServerSpec::single("foreman", 2)),
        ("foreman1", ServerSpec::single("foreman", 1)),
        ("tokio", ServerSpec::single("tokio", 2)),
        ("uws", ServerSpec::single("uws", 1)),
        ("ws", ServerSpec::single("ws", 1)),
        (
            "foreman-cluster",
            ServerSpec {
                name: "foreman",
                count: 1,
                nodes: 2,
            },
        ),
        ("sync", ServerSpec::single("sync", 2)),
        ("chat", ServerSpec::single("chat", 2)),
        (
            "chat-cluster",
            ServerSpec {
                name: "chat",
                count: 1,
                nodes: 2,
            },
        ),
        ("baseline", ServerSpec::single("baseline", 2)),
    ];
    // `sync` in `--scenarios` names the sync server's three, `tls` the
    // three over `wss://`.
    let wanted = |list: &Option<Vec<String>>, name: &str| match list {
        None => true,
        Some(l) => l.iter().any(|x| {
            x == name
                || name.strip_suffix("-tokio") == Some(x.as_str())
                || (x == "sync" && name.starts_with("sync-"))
                || (x == "tls" && name.ends_with("-tls"))
        }),
    };
    let mut out = Vec::new();
    for sc in scenarios(o) {
        if !wanted(&o.scenarios, &sc.name) {
            continue;
        }
        for (key, spec) in &servers {
            if let Some(runs) = chatrooms::serves(key, &sc) {
                if runs && wanted(&o.servers, key) {
                    out.push((spec.clone(), sc.clone()));
                }
                continue;
            }
            // count=1 of ours only in fanout, where the issue compares it.
            if *key == "foreman1" && (sc.kind != Kind::Fanout || sc.cluster || sc.tls) {
                continue;
            }
            // The cluster runs only its scenario, which compares it with one
            // node of count 2 alone.
            let cluster_pair = matches!(*key, "foreman" | "foreman-cluster");
            if (sc.cluster && !cluster_pair) || (*key == "foreman-cluster" && !sc.cluster) {
                continue;
            }
            // The applications run only their scenarios: the sync server
            // all three, the chat the fan-out beside it.
            let app_scenario = matches!(sc.kind, Kind::Writes | Kind::HotKey | Kind::AppFanout);
            let app_server = match *key {
                "sync" => app_scenario,
                "chat" => sc.kind == Kind::AppFanout,
                _ => !app_scenario,
            };
            if !app_server {
                continue;
            }
            // The baseline only when named: it needs FOREMAN_BENCH_BASELINE.
            let named = o
                .servers
                .as_ref()
                .is_some_and(|l| l.iter().any(|x| x == key));
            if wanted(&o.servers, key) && (*key != "baseline" || named) {
                let mut spec = spec.clone();
                if spec.on_foreman() {
                    spec.count = scenario::quarter::workers_for(sc.conns, spec.count);
                }
                out.push((spec, sc.clone()));
            }
        }
    }
    out
}

/// Builds the server examples with the cargo that runs us, if any, without
/// the variables cargo set for this bench ([`cargo::clean_cargo_env`]). A
/// failed build is reported; its servers then show as skipped ("not built").
fn build_examples(paths: &Paths) {
    // One group each for the applications: a build error in one must not
    // skip the other.
    let groups = [
        &["peer_tokio"][..],
        &["broadcast", "echo"][..],
        &["chat"][..],
        &["sync"][..],
    ];
    for group in groups {
        if let Err(e) = cargo::build_release_examples(&paths.manifest, group) {
            eprintln!("bench: {e}; those servers will be skipped");
        }
    }
}

/// A row for `spec` x `sc`, skipped up front when it cannot run here.
fn new_row(spec: ServerSpec, sc: Scenario) -> Row {
    let mut row = Row {
        spec,
        scenario: sc,
        status: "ok",
        reason: String::new(),
        runs: Vec::new(),
        median: Default::default(),
    };
    if row.spec.single_process() && row.scenario.conns > 19_000 {
        row.status = "skipped";
        row.reason = format!(
            "one process cannot hold {} connections (20,000 open-file cap)",
            row.scenario.conns
        );
    }
    row
}

/// Takes run number `run` (from 0) of `row`, retrying while `retries_left`
/// allows; a row that cannot go on is left skipped or failed.
fn measure(row: &mut Row, run: usize, runs: usize, retries_left: &mut u32, paths: &Paths) {
    while row.status == "ok" && row.runs.len() == run {
        let (spec, sc) = (&row.spec, &row.scenario);
        eprintln!(
            "bench: {} / {} run {}/{} ...",
            spec.label(),
            sc.name,
            run + 1,
            runs
        );
        let tag = format!("{}-run{}", sc.name, run + 1);
        match scenario::run(spec, sc, &tag, paths) {
            Ok(fig) => row.runs.push(fig),
            Err(e) if e.contains("not built") || e.contains("not install") => {
                row.status = "skipped";
                row.reason = e;
            }
            Err(e) if *retries_left > 0 => {
                eprintln!("bench: run failed, retrying once: {e}");
                *retries_left -= 1;
                row.reason = format!("one run retried after: {e}");
            }
            Err(e) => {
                row.status = "failed";
                row.reason = e;
            }
        }
    }
}

/// Medians over the row's runs, and its verdict.
fn judge(row: &mut Row) {
    row.median = report::combine(&row.runs);
    // Lost deliveries fail our server; a peer that cannot keep up with
    // the offered rate just shows its count in the `lost` column.
    let failed = row.median.get("connect_failed").copied().unwrap_or(0.0);
    if row.status == "ok" && failed > 0.0 && row.scenario.kind != Kind::Churn {
        row.status = "failed";
        row.reason = format!(
            "{failed} of {} connections did not upgrade",
            row.scenario.conns
        );
    }
    let lost = row.median.get("lost").copied().unwrap_or(0.0);
    if row.status == "ok" && lost > 0.0 && row.spec.on_foreman() {
        row.status = "failed";
        row.reason = format!("{lost} deliveries lost");
    }
    // The applications promise every change once and in order, and the
    // bench must never be refused (its rate limit is raised) nor meet a
    // conflict as a key's only writer.
    if matches!(row.spec.name, "sync" | "chat") || row.scenario.kind == Kind::Rooms {
        let mut checks = vec![
            ("reordered", "out of order"),
            ("duplicated", "repeated"),
            ("errors", "error replies"),
            ("writer_conflicts", "conflicts of the only writer"),
        ];
        if row.scenario.kind == Kind::Writes {
            checks.push(("conflicts", "conflicts on keys of one client each"));
        }
        let broken: Vec<String> = checks
            .iter()
            .filter_map(|(k, what)| {
                let n = row.median.get(*k).copied().unwrap_or(0.0);
                (n > 0.0).then(|| format!("{n} {what}"))
            })
            .collect();
        if !broken.is_empty() {
            let before = if row.status == "ok" {
                String::new()
            } else {
                format!("{}; ", row.reason)
            };
            row.status = "failed";
            row.reason = format!("{before}{}", broken.join(", "));
        }
    }
    if row.status != "ok" {
        eprintln!(
            "bench: {} / {}: {}: {}",
            row.spec.label(),
            row.scenario.name,
            row.status,
            row.reason
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let generator = match args.get(1).map(String::as_str) {
        Some("loadgen") => Some(loadgen::main as fn(&str) -> std::io::Result<()>),
        Some("loadgen-tokio") => Some(loadgen_tokio::main as fn(&str) -> std::io::Result<()>),
        _ => None,
    };
    if let Some(generator) = generator {
        let json = args.get(2).cloned().unwrap_or_default();
        if let Err(e) = generator(&json) {
            eprintln!("{}: {e}", args[1]);
            std::process::exit(1);
        }
        return;
    }
    raise_nofile_limit();
    let o = parse_options(&args[1..]);
    let paths = paths();
    if o.build {
        build_examples(&paths);
    }
    let profile = if o.full { "full" } else { "quick" };
    let runs = o.runs.unwrap_or(if o.full { 3 } else { 1 }).max(1);
    let t0 = Instant::now();
    let mut rows: Vec<Row> = plan(&o)
        .into_iter()
        .map(|(spec, sc)| new_row(spec, sc))
        .collect();
    // One retry per row: the machine is shared, and a stray signal or a
    // rebuilt binary should not void a 15-minute run. The retry is noted.
    let mut retries = vec![1u32; rows.len()];
    // Runs interleave within a scenario (run 1 of every server, then run 2,
    // ...), so the load of the rest of the machine drifts over all of them
    // alike.
    let mut first = 0;
    while first < rows.len() {
        let name = rows[first].scenario.name.clone();
        let end = first
            + rows[first..]
                .iter()
                .take_while(|r| r.scenario.name == name)
                .count();
        for run in 0..runs {
            for k in first..end {
                measure(&mut rows[k], run, runs, &mut retries[k], &paths);
            }
        }
        first = end;
    }
    for row in &mut rows {
        judge(row);
    }
    let command = format!(
        "cargo bench --bench ws --{}",
        if o.full { " --full" } else { "" }
    );
    let mut bars = report::bars(&rows);
    let busiest = rows
        .iter()
        .filter_map(|r| r.median.get("other_cpu_pct").copied())
        .fold(0.0, f64::max);
    if busiest > 20.0 {
        bars.push(format!(
            "warning: other processes used up to {busiest:.0}% CPU during a window; figures are noisy"
        ));
    }
    println!(
        "\n## WebSocket bench ({profile} profile, {runs} run(s) per row; took {:.0} s)",
        t0.elapsed().as_secs_f64()
    );
    println!("{}", report::tables(&rows));
    println!("### bars\n");
    for b in &bars {
        println!("- {b}");
    }
    match report::write_json(&paths.out, profile, &command, &rows, &bars) {
        Ok(p) => println!("\nJSON: {p}"),
        Err(e) => eprintln!("bench: cannot write JSON: {e}"),
    }
    if rows.iter().any(|r| r.status == "failed") {
        std::process::exit(1);
    }
}
