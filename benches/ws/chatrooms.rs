//! The `chat` scenario (issue 15, "the chat's own figures"): 1,000 users
//! logged in, 100 in each of [`ROOMS`] rooms, 50 of them (5 a room) sending
//! to their room at the chat's default rate limit, against `examples/chat`
//! (count 2, SQLite on disk under `target/bench/apps/`, its defaults
//! otherwise) and the broadcast example's room mode (`--rooms`: the same
//! rooms and messages as foreman groups, nothing stored) under the same
//! load, interleaved in one run; and the chat with `[cluster]`, two nodes
//! of one worker each joined by a `redis-server` of the bench's own made
//! durable like the SQLite store (`appendfsync always`), each load
//! generator on one node. The load generator's side is `loadgen/rooms.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::cluster::{Probe, Speech};
use crate::loadgen::{Stats, ROOMS, WINDOW};
use crate::plan::{Figures, Kind, Scenario};
use crate::redis_server::RedisServer;
use crate::rows::{self, Row};
use crate::server::ServerSpec;

/// The chat's default rate limit (`[rate_limit] per_second` in chat.toml,
/// and the protocol's defaults): each sender sends at exactly this rate.
pub const CHAT_RATE_PER_SEC: f64 = 20.0;

/// Senders over all rooms.
const SENDERS: usize = 50;

/// The scenario, from the profile's base (name, kind, connections).
pub fn scenario(base: Scenario) -> Scenario {
    Scenario {
        senders: SENDERS,
        rate: SENDERS as f64 * CHAT_RATE_PER_SEC,
        ..base
    }
}

/// The saturation variant: the same rooms and senders, closed loop.
pub fn saturation(base: Scenario) -> Scenario {
    Scenario {
        senders: SENDERS,
        ..base
    }
}

/// The servers of the scenarios: `Some(runs)` says whether the server named
/// `key` runs `sc` when either is one of this file's; `None` leaves it to
/// the other rules.
pub fn serves(key: &str, sc: &Scenario) -> Option<bool> {
    // The cluster's nodes keep the chat's rate limit: not at saturation.
    let ours = matches!(key, "chat" | "foreman") || (key == "chat-cluster" && sc.rate > 0.0);
    match (sc.kind, key) {
        (Kind::Rooms, _) => Some(ours),
        (_, "chat-cluster") => Some(false),
        _ => None,
    }
}

/// What the load generators play against `spec`.
pub fn loadgen_scenario(spec: &ServerSpec) -> String {
    match spec.name {
        "chat" => "chat-rooms".into(),
        _ => "broadcast-rooms".into(),
    }
}

/// The broadcast example's mode (`server.rs`).
pub const MODE: &str = "rooms";

/// The `expect-rooms` line from the load generators' `sent` reports:
/// messages owed to each room's members (acked by the chat, sent to the
/// broadcast example); also records what was sent and owed in all.
pub fn expect_line(sent: &[Stats], sc: &Scenario, fig: &mut Figures) -> String {
    let mut rooms = [0u64; ROOMS];
    for s in sent {
        for (r, n) in rooms.iter_mut().zip(&s.room_counts) {
            *r += n;
        }
    }
    let owed: u64 = rooms.iter().sum();
    let sent_total: u64 = sent.iter().map(|s| s.sent).sum();
    fig.insert("sent".into(), sent_total as f64);
    fig.insert("stored".into(), owed as f64);
    let members = (sc.conns / ROOMS) as u64;
    fig.insert("expected".into(), (owed * members) as f64);
    let counts: Vec<String> = rooms.iter().map(u64::to_string).collect();
    format!("expect-rooms {}", counts.join(" "))
}

/// The scenario's figures from the load generators' `done` reports, summed
/// in `sum` (deliveries and their latency), over a window of `secs`.
pub fn figures(stats: &[Stats], sum: &Stats, secs: f64, fig: &mut Figures) {
    let mut ack = crate::hist::Histogram::default();
    for s in stats {
        ack.merge(&s.ack_latency);
    }
    let acked_in_window: u64 = stats.iter().map(|s| s.acked_in_window).sum();
    let deliveries = sum.received_in_window as f64 / secs;
    fig.insert("deliveries_per_s".into(), deliveries);
    if ack.total > 0 {
        fig.insert("acks_per_s".into(), acked_in_window as f64 / secs);
        fig.insert("ack_p50_ms".into(), ack.quantile_us(0.50) as f64 / 1e3);
        fig.insert("ack_p99_ms".into(), ack.quantile_us(0.99) as f64 / 1e3);
    }
    let cpu = fig.get("server_cpu_pct").copied().unwrap_or(0.0)
        + fig.get("redis_cpu_pct").copied().unwrap_or(0.0);
    if cpu > 0.0 {
        fig.insert("deliveries_per_cpu_s".into(), deliveries / (cpu / 100.0));
    }
    fig.insert("received".into(), sum.received_total as f64);
    fig.insert("lost".into(), sum.lost as f64);
    fig.insert("duplicated".into(), sum.duplicated as f64);
    fig.insert("reordered".into(), sum.reordered as f64);
    fig.insert("errors".into(), sum.errors as f64);
}

/// The table's columns.
pub const COLUMNS: &[(&str, &str)] = &[
    ("acks_per_s", "stored msgs/s (acks)"),
    ("deliveries_per_s", "deliveries/s"),
    ("ack_p50_ms", "ack p50 ms"),
    ("ack_p99_ms", "ack p99 ms"),
    ("p50_ms", "delivery p50 ms"),
    ("p99_ms", "delivery p99 ms"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("reordered", "out of order"),
    ("errors", "errors"),
    ("worker_conns_min", "conns/worker min"),
    ("worker_conns_max", "conns/worker max"),
    ("server_cpu_pct", "server CPU %"),
    ("redis_cpu_pct", "redis CPU %"),
    ("deliveries_per_cpu_s", "deliveries/CPU-s"),
    ("client_cpu_pct", "client CPU %"),
    ("other_cpu_pct", "other CPU %"),
];

/// The table's heading.
pub fn describe(sc: &Scenario) -> String {
    let per_room = sc.conns / ROOMS;
    if sc.rate <= 0.0 {
        return format!(
            "saturation: {} users in {ROOMS} rooms of {per_room}, {} senders ({} a room) \
             each keeping {WINDOW} texts of {} B in flight, the next sent when one is acked \
             (chat; rate limit lifted, no tick) or came back to it (broadcast example, \
             room mode)",
            sc.conns,
            sc.senders,
            sc.senders / ROOMS,
            sc.size
        );
    }
    format!(
        "{} users logged in, {per_room} in each of {ROOMS} rooms, {} of them senders \
         ({} a room) at the chat's rate limit of {} msgs/s each = {} msgs/s = {} \
         deliveries/s offered, {} B texts; latency from the send time (`say` -> `ack`; \
         `say` -> `message` at another member); the broadcast example in its room mode \
         under the same load",
        sc.conns,
        sc.senders,
        sc.senders / ROOMS,
        CHAT_RATE_PER_SEC,
        sc.rate,
        sc.rate * per_room as f64,
        sc.size
    )
}

/// The issue's bar: the chat's durable deliveries against the broadcast
/// example's under the same load, and what the chat pays per delivery; at
/// the rate limit (`chat`) and at saturation (`chat-sat`).
pub fn bars(rows: &[Row], out: &mut Vec<String>) {
    for (scenario, bar) in [("chat", " (bar >= 0.5x)"), ("chat-sat", "")] {
        scenario_bars(rows, scenario, bar, out);
    }
}

fn scenario_bars(rows: &[Row], scenario: &str, bar: &str, out: &mut Vec<String>) {
    let find = |name: &str, nodes: usize, count: usize| {
        rows::find_nodes(rows, name, nodes, count, scenario)
    };
    let (chat, bcast) = (find("chat", 1, 2), find("foreman", 1, 2));
    let get = |f: &Figures, k: &str| f.get(k).copied().unwrap_or(f64::NAN);
    let ratio = |what: &str, key: &str, bar: &str| match (chat, bcast) {
        (Some(c), Some(b)) if get(b, key) > 0.0 => format!(
            "{scenario} {what}, chat c=2 / broadcast rooms c=2: {} / {} = {:.2}x{bar}",
            rows::fmt(get(c, key)),
            rows::fmt(get(b, key)),
            get(c, key) / get(b, key)
        ),
        _ => format!("{scenario} {what}: n/a (a side was skipped or failed)"),
    };
    out.push(ratio("deliveries/s", "deliveries_per_s", bar));
    out.push(ratio(
        "deliveries per CPU-second",
        "deliveries_per_cpu_s",
        "",
    ));
    let cluster = find("chat", 2, 1);
    for (label, f) in [("chat c=2", chat), ("chat 2 nodes x c=1", cluster)] {
        let Some(c) = f else { continue };
        out.push(format!(
            "{scenario} {label}: {} stored msgs/s, {} deliveries/s, ack p50 {:.2} / p99 {:.2} \
             ms, delivery p50 {:.2} / p99 {:.2} ms, lost {}, duplicated {} (bar 0 and 0)",
            rows::fmt(get(c, "acks_per_s")),
            rows::fmt(get(c, "deliveries_per_s")),
            get(c, "ack_p50_ms"),
            get(c, "ack_p99_ms"),
            get(c, "p50_ms"),
            get(c, "p99_ms"),
            rows::fmt(get(c, "lost")),
            rows::fmt(get(c, "duplicated")),
        ));
    }
}

/// The chat's side of the cluster probe (`cluster::wait_routing`): each
/// probe logs in and joins room `probe`, then says the probe texts there.
pub const SPEECH: Speech<'static> = Speech {
    path: "/ws",
    setup: &probe_setup,
    say: &|text| format!(r#"{{"type":"say","room":"probe","text":"{text}"}}"#),
    heard: &|text| format!(r#""text":"{text}""#),
};

/// Logs probe `i` in and joins it to room `probe`, within 5 s each.
fn probe_setup(probe: &mut Probe, i: usize) -> Result<(), String> {
    let steps = [
        (
            format!(r#"{{"type":"login","name":"probe{i}"}}"#),
            "welcome",
        ),
        (r#"{"type":"join","room":"probe"}"#.to_string(), "joined"),
    ];
    for (request, answer) in steps {
        probe.send(request.as_bytes())?;
        let want = format!(r#""type":"{answer}""#);
        let deadline = Instant::now() + Duration::from_secs(5);
        let hit = |t: &[u8]| t.windows(want.len()).any(|w| w == want.as_bytes());
        while !probe.received_matching(hit)? {
            if Instant::now() > deadline {
                return Err(format!("chat probe {i}: no `{answer}` within 5 s"));
            }
        }
    }
    Ok(())
}

/// Makes the cluster's Redis as durable as the chat's SQLite
/// (`synchronous=FULL`): `appendonly yes`, `appendfsync always` (what
/// chat.toml says to run a cluster's Redis with), so that an acked message
/// is on disk.
pub fn make_durable(redis: &RedisServer) -> Result<(), String> {
    let err = |e: std::io::Error| format!("redis CONFIG SET: {e}");
    let mut s = TcpStream::connect(redis.addr()).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    for (key, value) in [("appendonly", "yes"), ("appendfsync", "always")] {
        let cmd = format!(
            "*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
            key.len(),
            value.len()
        );
        s.write_all(cmd.as_bytes()).map_err(err)?;
        let mut reply = [0u8; 5];
        s.read_exact(&mut reply).map_err(err)?;
        if &reply != b"+OK\r\n" {
            return Err(format!(
                "redis CONFIG SET {key} {value}: {}",
                String::from_utf8_lossy(&reply)
            ));
        }
    }
    Ok(())
}
