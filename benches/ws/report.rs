//! Results: medians over runs, Markdown tables, the bars as ratios,
//! and JSON under `target/bench/`.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::plan::{Figures, Kind, Scenario};
use crate::rows::{find, find_nodes, fmt, Row};

/// Figures where the worst run, not the median, is reported.
const WORST: &[&str] = &[
    "lost",
    "duplicated",
    "reordered",
    "connect_failed",
    "closed_by_server",
    "errors",
    "writer_conflicts",
    "conflicts",
];

/// Combines runs: median per figure (max for error counts).
pub fn combine(runs: &[Figures]) -> Figures {
    let mut out = Figures::new();
    let Some(first) = runs.first() else {
        return out;
    };
    for key in first.keys() {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(key).copied()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let pick = if WORST.contains(&key.as_str()) {
            v[v.len() - 1]
        } else {
            v[v.len() / 2]
        };
        out.insert(key.clone(), pick);
    }
    out
}

/// Columns shown for each kind of scenario: (figure, heading). The
/// cluster comparison adds Redis's CPU beside the servers', and deliveries
/// per CPU-second of both.
fn columns(sc: &Scenario) -> Vec<(&'static str, &'static str)> {
    let mut cols = kind_columns(sc.kind).to_vec();
    if sc.kind == Kind::Idle {
        cols.extend(crate::scenario::quarter::columns(sc));
    }
    if sc.cluster {
        let at = cols
            .iter()
            .position(|c| c.0 == "server_cpu_pct")
            .map_or(cols.len(), |i| i + 1);
        cols.insert(at, ("redis_cpu_pct", "redis CPU %"));
        cols.insert(at + 1, ("deliveries_per_cpu_s", "deliveries/CPU-s"));
    }
    cols
}

fn kind_columns(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::Idle => &[
            ("conns", "conns"),
            ("handshakes_per_s", "handshakes/s"),
            ("rss_empty_mib", "RSS empty MiB"),
            ("rss_mib", "RSS holding MiB"),
            ("rss_per_conn_b", "RSS/conn B"),
        ],
        Kind::Echo => &[
            ("msgs_per_s", "msgs/s"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
            ("server_cpu_pct", "server CPU %"),
            ("client_cpu_pct", "client CPU %"),
            ("other_cpu_pct", "other CPU %"),
        ],
        Kind::Fanout => &[
            ("deliveries_per_s", "deliveries/s"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
            ("lost", "lost"),
            ("server_cpu_pct", "server CPU %"),
            ("client_cpu_pct", "client CPU %"),
            ("other_cpu_pct", "other CPU %"),
        ],
        Kind::Churn => &[
            ("handshakes_per_s", "handshakes/s"),
            ("connect_failed", "failed"),
            ("server_cpu_pct", "server CPU %"),
            ("client_cpu_pct", "client CPU %"),
            ("other_cpu_pct", "other CPU %"),
        ],
        Kind::Writes | Kind::HotKey => &[
            ("acks_per_s", "acks/s"),
            ("conflicts_per_s", "conflicts/s"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
            ("errors", "errors"),
            ("server_cpu_pct", "server CPU %"),
            ("client_cpu_pct", "client CPU %"),
            ("other_cpu_pct", "other CPU %"),
        ],
        Kind::AppFanout => &[
            ("deliveries_per_s", "deliveries/s"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
            ("lost", "lost"),
            ("reordered", "out of order"),
            ("worker_conns_min", "conns/worker min"),
            ("worker_conns_max", "conns/worker max"),
            ("server_cpu_pct", "server CPU %"),
            ("deliveries_per_cpu_s", "deliveries/CPU-s"),
            ("client_cpu_pct", "client CPU %"),
            ("other_cpu_pct", "other CPU %"),
        ],
        Kind::Rooms => crate::chatrooms::COLUMNS,
    }
}

/// Markdown tables, one per scenario, in plan order.
pub fn tables(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut seen: Vec<String> = Vec::new();
    for r in rows {
        if seen.contains(&r.scenario.name) {
            continue;
        }
        seen.push(r.scenario.name.clone());
        let sc = &r.scenario;
        let _ = writeln!(out, "\n### {} ({})\n", sc.name, describe(sc));
        let cols = columns(sc);
        let _ = write!(out, "| server |");
        for (_, h) in &cols {
            let _ = write!(out, " {h} |");
        }
        let _ = write!(out, "\n|---|");
        for _ in cols.iter() {
            let _ = write!(out, "---:|");
        }
        out.push('\n');
        for r in rows.iter().filter(|x| x.scenario.name == sc.name) {
            let mark = if r.status != "ok" && !r.median.is_empty() {
                " (failed, see below)"
            } else {
                ""
            };
            let _ = write!(out, "| {}{mark} |", r.spec.label());
            if r.status != "ok" && r.median.is_empty() {
                let _ = write!(out, " {}: {} |", r.status, r.reason);
                for _ in 1..cols.len() {
                    out.push_str(" |");
                }
            } else {
                for (k, _) in &cols {
                    let v = r
                        .median
                        .get(*k)
                        .map(|v| fmt(*v))
                        .unwrap_or_else(|| "-".into());
                    let _ = write!(out, " {v} |");
                }
            }
            out.push('\n');
        }
        for r in rows.iter().filter(|x| x.scenario.name == sc.name) {
            let noted = r.status == "ok" && !r.reason.is_empty();
            if noted || (r.status != "ok" && !r.median.is_empty()) {
                let _ = writeln!(out, "\n{} {}: {}", r.spec.label(), r.status, r.reason);
            }
        }
    }
    out
}

/// One line saying what a scenario does.
pub fn describe(sc: &Scenario) -> String {
    match sc.kind {
        Kind::Idle if sc.senders > 0 => format!(
            "hold {} connections, {} client processes, then one {} B broadcast to all",
            sc.conns, sc.clients, sc.size
        ),
        Kind::Idle => format!(
            "hold {} connections, {} client processes",
            sc.conns, sc.clients
        ),
        Kind::Echo => format!("{} connections ping-pong {} B text", sc.conns, sc.size),
        Kind::Fanout if sc.cluster => format!(
            "{} connections, {} senders, {} B, saturation; 2 nodes x 1 worker joined by Redis \
             (each load generator on one node) against one node with count 2",
            sc.conns, sc.senders, sc.size
        ),
        Kind::Fanout if sc.rate > 0.0 => format!(
            "{} connections, {} senders, {} B, offered {} msgs/s = {} deliveries/s",
            sc.conns,
            sc.senders,
            sc.size,
            fmt(sc.rate),
            fmt(sc.rate * sc.conns as f64)
        ),
        Kind::Fanout => format!(
            "{} connections, {} senders, {} B, saturation: next send when own message returns",
            sc.conns, sc.senders, sc.size
        ),
        Kind::Churn => format!("open, upgrade, close; {} concurrent attempts", sc.conns),
        Kind::Writes => format!(
            "{} clients each `put` their own {} keys in turn from the version they hold, \
             one write in flight, {} B values; latency send -> ack",
            sc.conns,
            crate::loadgen::KEYS_PER_WRITER,
            sc.size
        ),
        Kind::HotKey => format!(
            "{} clients `put` one key from their last seen version, one write in flight, \
             a conflict retried at once from the version it carries; latency of a \
             successful write from its first try",
            sc.conns
        ),
        Kind::AppFanout => format!(
            "{} subscribers of one sync key (members of one chat room), {} writer(s) \
             at {} writes/s = {} deliveries/s offered, {} B values; latency from the \
             write's send time",
            sc.conns,
            sc.senders,
            fmt(sc.rate),
            fmt(sc.rate * sc.conns as f64),
            sc.size
        ),
        Kind::Rooms => crate::chatrooms::describe(sc),
    }
}

/// The bars, as lines of text (figures, not pass/fail gates).
pub fn bars(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let ratio =
        |out: &mut Vec<String>, what: &str, a: Option<&Figures>, b: Option<&Figures>, key: &str| {
            let line = match (a.and_then(|f| f.get(key)), b.and_then(|f| f.get(key))) {
                (Some(x), Some(y)) if *y > 0.0 => {
                    format!("{what}: {} / {} = {:.2}x", fmt(*x), fmt(*y), x / y)
                }
                _ => format!("{what}: n/a (a side was skipped or failed)"),
            };
            out.push(line);
        };
    let ours = |sc: &str| find(rows, "foreman", 2, sc);
    let uws = |sc: &str| find(rows, "uws", 1, sc);
    ratio(
        &mut out,
        "fanout-sat deliveries/s, foreman c=2 vs uWS.js",
        ours("fanout-sat"),
        uws("fanout-sat"),
        "deliveries_per_s",
    );
    ratio(
        &mut out,
        "echo msgs/s, foreman c=2 vs uWS.js",
        ours("echo"),
        uws("echo"),
        "msgs_per_s",
    );
    ratio(
        &mut out,
        "churn handshakes/s, foreman c=2 vs uWS.js",
        ours("churn"),
        uws("churn"),
        "handshakes_per_s",
    );
    let c1 = find(rows, "foreman", 1, "fanout-sat");
    ratio(
        &mut out,
        "fanout-sat deliveries/s, foreman c=2 vs c=1 (bar >= 0.8x)",
        ours("fanout-sat"),
        c1,
        "deliveries_per_s",
    );
    let cluster = find_nodes(rows, "foreman", 2, 1, "cluster-fanout");
    let single = ours("cluster-fanout");
    ratio(
        &mut out,
        "cluster-fanout deliveries/s, 2 nodes x c=1 vs one node c=2 (bar >= 0.6x)",
        cluster,
        single,
        "deliveries_per_s",
    );
    // Per CPU-second of the servers (and Redis): on a shared machine the
    // CPU a side got moves its deliveries/s; this moves much less.
    let per_cpu = |f: Option<&Figures>| f.and_then(|f| f.get("deliveries_per_cpu_s").copied());
    match (per_cpu(cluster), per_cpu(single)) {
        (Some(c), Some(s)) if s > 0.0 => out.push(format!(
            "cluster-fanout deliveries per CPU-second (servers + Redis): {} / {} = {:.2}x",
            fmt(c),
            fmt(s),
            c / s
        )),
        _ => out.push("cluster-fanout deliveries per CPU-second: n/a".into()),
    }
    if let Some(f) = cluster {
        let get = |k: &str| f.get(k).copied().unwrap_or(f64::NAN);
        let p99 = |f: Option<&Figures>| f.and_then(|f| f.get("p99_ms")).copied();
        out.push(format!(
            "cluster-fanout 2 nodes: lost {} (bar 0), p99 {:.2} ms (one node: {}), redis CPU {:.0}%",
            fmt(get("lost")),
            get("p99_ms"),
            p99(single).map_or("n/a".into(), |v| format!("{v:.2} ms")),
            get("redis_cpu_pct"),
        ));
    }
    match ours("fanout-rate") {
        Some(f) => {
            let lost = f.get("lost").copied().unwrap_or(f64::NAN);
            let p99 = f.get("p99_ms").copied().unwrap_or(f64::NAN);
            let met = lost == 0.0 && p99 < 15.0;
            out.push(format!(
                "fanout-rate foreman c=2: lost {}, p99 {p99:.2} ms (bar: 0 lost, p99 < 15 ms): {}",
                fmt(lost),
                if met { "met" } else { "NOT met" }
            ));
        }
        None => out.push("fanout-rate foreman c=2: n/a".into()),
    }
    // Issue 15: the count=2 tail no worse than uWebSockets.js's, under our
    // load generator and under the tokio one.
    for sc in ["fanout-rate", "fanout-rate-tokio"] {
        let p99 = |f: Option<&Figures>| f.and_then(|f| f.get("p99_ms")).copied();
        match (p99(ours(sc)), p99(uws(sc))) {
            (Some(a), Some(b)) => out.push(format!(
                "{sc} p99, foreman c=2 vs uWS.js (bar <= 1.0x): {a:.2} / {b:.2} ms = {:.2}x: {}",
                a / b,
                if a <= b { "met" } else { "NOT met" }
            )),
            _ => out.push(format!("{sc} p99, foreman c=2 vs uWS.js: n/a")),
        }
    }
    tls_bars(rows, &mut out);
    sync_bars(rows, &mut out);
    crate::chatrooms::bars(rows, &mut out);
    out.extend(crate::scenario::quarter::bars(rows));
    for sc in ["idle-10k", "idle-36k"] {
        match ours(sc).and_then(|f| f.get("rss_per_conn_b")) {
            Some(b) => out.push(format!(
                "{sc} foreman c=2: {} B RSS/conn (bar <= 1024): {}",
                fmt(*b),
                if *b <= 1024.0 { "met" } else { "NOT met" }
            )),
            None => out.push(format!("{sc} foreman c=2: n/a")),
        }
    }
    out
}

/// The `*-tls` lines: idle memory against its bar, and our throughput
/// over `wss://` against uWebSockets.js's `SSLApp` and against the
/// baseline build when one ran.
fn tls_bars(rows: &[Row], out: &mut Vec<String>) {
    let get = |server: &str, sc: &str, key: &str| {
        find(rows, server, if server == "uws" { 1 } else { 2 }, sc)
            .and_then(|f| f.get(key).copied())
    };
    match get("foreman", "idle-tls", "rss_per_conn_b") {
        Some(b) => out.push(format!(
            "idle-tls foreman c=2: {} B RSS/conn (bar <= 4096): {}",
            fmt(b),
            if b <= 4096.0 { "met" } else { "NOT met" }
        )),
        None => out.push("idle-tls foreman c=2: n/a".into()),
    }
    for (sc, key) in [
        ("idle-tls", "rss_per_conn_b"),
        ("echo-tls", "msgs_per_s"),
        ("fanout-tls", "deliveries_per_s"),
        ("idle-10k", "rss_per_conn_b"),
        ("fanout-sat", "deliveries_per_s"),
    ] {
        for other in ["uws", "baseline"] {
            if other == "uws" && !sc.ends_with("-tls") {
                continue;
            }
            if let (Some(x), Some(y)) = (get("foreman", sc, key), get(other, sc, key)) {
                out.push(format!(
                    "{sc} {key}, foreman c=2 vs {other}: {} / {} = {:.2}x",
                    fmt(x),
                    fmt(y),
                    x / y
                ));
            }
        }
    }
}

/// The sync server's lines: its write rates, and its fan-out against the
/// chat's under the same load, measured in the same run.
fn sync_bars(rows: &[Row], out: &mut Vec<String>) {
    let sync = |sc: &str| find(rows, "sync", 2, sc);
    let get = |f: &Figures, k: &str| f.get(k).copied().unwrap_or(f64::NAN);
    match sync("sync-writes") {
        Some(f) => out.push(format!(
            "sync-writes sync c=2: {} acks/s to distinct keys, ack p50 {:.2} / p99 {:.2} ms, \
             errors {}",
            fmt(get(f, "acks_per_s")),
            get(f, "p50_ms"),
            get(f, "p99_ms"),
            fmt(get(f, "errors"))
        )),
        None => out.push("sync-writes sync c=2: n/a".into()),
    }
    match sync("sync-hot") {
        Some(f) => out.push(format!(
            "sync-hot sync c=2: {} acks/s to one key, {} conflicts/s, successful write \
             p50 {:.2} / p99 {:.2} ms",
            fmt(get(f, "acks_per_s")),
            fmt(get(f, "conflicts_per_s")),
            get(f, "p50_ms"),
            get(f, "p99_ms")
        )),
        None => out.push("sync-hot sync c=2: n/a".into()),
    }
    let (s, c) = (sync("sync-fanout"), find(rows, "chat", 2, "sync-fanout"));
    let mut ratio = |what: &str, key: &str| {
        out.push(match (s.map(|f| get(f, key)), c.map(|f| get(f, key))) {
            (Some(x), Some(y)) if y > 0.0 => {
                format!(
                    "sync-fanout {what}, sync / chat: {} / {} = {:.2}x",
                    fmt(x),
                    fmt(y),
                    x / y
                )
            }
            _ => format!("sync-fanout {what}, sync / chat: n/a (a side was skipped or failed)"),
        })
    };
    ratio("deliveries/s", "deliveries_per_s");
    ratio("p50 ms", "p50_ms");
    ratio("p99 ms", "p99_ms");
    ratio("deliveries per CPU-second", "deliveries_per_cpu_s");
    for (name, f) in [("sync", s), ("chat", c)] {
        if let Some(f) = f {
            out.push(format!(
                "sync-fanout {name} c=2: lost {}, out of order {} (bar 0 and 0); \
                 connections per worker {}-{}",
                fmt(get(f, "lost")),
                fmt(get(f, "reordered")),
                fmt(get(f, "worker_conns_min")),
                fmt(get(f, "worker_conns_max"))
            ));
        }
    }
}

/// Writes the JSON report to `dir/ws-<profile>-<unix>.json` and
/// `dir/ws-latest.json`; returns the first path.
pub fn write_json(
    dir: &Path,
    profile: &str,
    command: &str,
    rows: &[Row],
    bars: &[String],
) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let doc = json!({
        "date_utc": utc_date(unix),
        "unix": unix,
        "profile": profile,
        "command": command,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "bars": bars,
        "rows": rows.iter().map(|r| json!({
            "server": r.spec.name,
            "count": r.spec.count,
            "scenario": r.scenario.name,
            "description": describe(&r.scenario),
            "status": r.status,
            "reason": r.reason,
            "median": r.median,
            "runs": r.runs,
        })).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
    let path = dir.join(format!("ws-{profile}-{unix}.json"));
    std::fs::write(&path, &text)?;
    std::fs::write(dir.join("ws-latest.json"), &text)?;
    Ok(path.display().to_string())
}

/// `YYYY-MM-DD HH:MM` UTC from Unix seconds (civil-from-days).
pub fn utc_date(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}
