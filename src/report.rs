//! `status` and `connections`: a command process asks the running master,
//! the master asks its workers, and every process answers with a JSON file in
//! the report directory next to the pid file (`PID_FILE.report/`). The command
//! prints the answers as a table and removes them.
//!
//! A command writes `request.TOKEN` (the token is its pid; the file says
//! `status` or `connections`) and sends the master a signal with
//! `sigqueue(2)`: SIGUSR2 for `status`, SIGIO for `connections`, as in
//! Workerman. The master passes the signal on to its workers. On that signal
//! each process answers every request file of that kind it has not answered
//! yet, as `NAME.TOKEN`: ordinary signals do not queue, so two commands at
//! once may arrive as one signal, and the files, not the signals, say who is
//! asking. When the command is done (or gives up) it removes its request and
//! every answer to it; a process answers only while the request exists, so a
//! worker that was stopped and resumes later leaves nothing behind. A plain
//! `kill -USR2` (not sent with `sigqueue`) still makes every process log its
//! status line instead.

use crate::config::Config;
use crate::error::{Error, Result};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a command waits for every answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Where answers go: `PID_FILE.report`, or none without a pid file.
pub(crate) fn dir(cfg: &Config) -> Option<PathBuf> {
    cfg.pid_file
        .as_ref()
        .map(|p| PathBuf::from(format!("{p}.report")))
}

/// What a command asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Ask {
    /// `status`: each worker's figures ([`WorkerReport`]).
    Status,
    /// `connections`: each worker's connections ([`ConnsReport`]).
    Connections,
}

impl Ask {
    /// The signal that carries the request.
    pub(crate) fn signal(self) -> Signal {
        match self {
            Ask::Status => Signal::SIGUSR2,
            Ask::Connections => Signal::SIGIO,
        }
    }

    /// What a request file holds.
    fn kind(self) -> &'static str {
        match self {
            Ask::Status => "status",
            Ask::Connections => "connections",
        }
    }

    /// The name of worker `slot`'s answers (`NAME.TOKEN`).
    pub(crate) fn answer_name(self, slot: usize) -> String {
        match self {
            Ask::Status => format!("worker.{slot}"),
            Ask::Connections => format!("conns.{slot}"),
        }
    }
}

/// Sends `sig` to `pid` with `sigqueue`, which marks it as a request.
pub(crate) fn queue_signal(pid: Pid, sig: Signal) -> nix::Result<()> {
    let value = libc::sigval {
        sival_ptr: std::ptr::null_mut(),
    };
    // SAFETY: sigqueue takes plain values; nothing is borrowed.
    let r = unsafe { libc::sigqueue(pid.as_raw(), sig as libc::c_int, value) };
    nix::errno::Errno::result(r).map(drop)
}

/// Whether a signal read from a signalfd came from [`queue_signal`] (a
/// command's request) rather than a plain `kill`.
pub(crate) fn is_request(info: &libc::signalfd_siginfo) -> bool {
    info.ssi_code == libc::SI_QUEUE
}

/// The tokens of the requests waiting in the report directory, for `ask` or
/// for anything, that have no `NAME.TOKEN` answer yet.
pub(crate) fn waiting(cfg: &Config, ask: Option<Ask>, name: &str) -> Vec<i32> {
    let Some(dir) = dir(cfg) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let token: i32 = e
                .file_name()
                .to_str()?
                .strip_prefix("request.")?
                .parse()
                .ok()?;
            if dir.join(format!("{name}.{token}")).exists() {
                return None;
            }
            match ask {
                Some(a) => (std::fs::read_to_string(e.path()).ok()? == a.kind()).then_some(token),
                None => Some(token),
            }
        })
        .collect()
}

/// Writes `value` as `dir/NAME.TOKEN`, whole or not at all (temp + rename).
pub(crate) fn answer<T: Serialize>(cfg: &Config, name: &str, token: i32, value: &T) {
    let Some(dir) = dir(cfg) else { return };
    if !dir.join(format!("request.{token}")).exists() {
        log::debug!("request {token} is over: not answering");
        return;
    }
    let path = dir.join(format!("{name}.{token}"));
    let tmp = dir.join(format!(".{name}.{token}.{}", std::process::id()));
    let result = serde_json::to_vec(value)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        log::warn!("cannot write {}: {e}", path.display());
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The master's answer: who it is and which workers it runs.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct MasterReport {
    pub(crate) pid: u32,
    pub(crate) name: String,
    pub(crate) listen: String,
    pub(crate) up_ms: u64,
    pub(crate) workers: Vec<SlotReport>,
}

/// One worker slot as the master sees it.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct SlotReport {
    pub(crate) slot: usize,
    /// `None` while the slot waits to be respawned.
    pub(crate) pid: Option<i32>,
    pub(crate) incarnation: u32,
    pub(crate) up_ms: u64,
    /// Workers of this slot killed for not coming back to their loop
    /// within `handler_timeout`.
    #[serde(default)]
    pub(crate) stuck_kills: u32,
    /// Connections this slot refused under `max_connections_per_ip`.
    #[serde(default)]
    pub(crate) per_ip_refused: u64,
    /// Connections this slot admitted uncounted (their table bucket was full).
    #[serde(default)]
    pub(crate) per_ip_uncounted: u64,
}

/// A worker's answer to `status`.
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct WorkerReport {
    pub(crate) pid: u32,
    pub(crate) rss_bytes: u64,
    /// This worker's connections.
    pub(crate) conns: usize,
    /// Connections on the whole server, as this worker's registry sees them.
    pub(crate) server_conns: usize,
    pub(crate) uids: usize,
    pub(crate) timers: usize,
    pub(crate) messages_in: u64,
    pub(crate) queued_bytes: usize,
    pub(crate) dropped_sends: u64,
    pub(crate) bus_queued_bytes: usize,
    pub(crate) bus_dropped_bytes: u64,
    pub(crate) bus_relinks: u64,
    /// Times records from another worker were found lost (`on_gap` calls).
    pub(crate) bus_gaps: u64,
    /// The worker's part of a cluster, with `[cluster]`.
    #[serde(default)]
    pub(crate) cluster: Option<ClusterReport>,
    /// The worker's RabbitMQ bridge, with `[amqp]`.
    #[serde(default)]
    pub(crate) amqp: Option<AmqpReport>,
}

/// A worker's RabbitMQ bridge figures (see [`crate::AmqpStats`]).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct AmqpReport {
    pub(crate) url: String,
    pub(crate) connected: bool,
    /// When `connected` last changed, in ms since the Unix epoch (0: never).
    pub(crate) since_ms: u64,
    pub(crate) consumed: u64,
    pub(crate) acked: u64,
    pub(crate) rejected: u64,
    pub(crate) confirmed: u64,
    pub(crate) failed: u64,
    pub(crate) pending: usize,
    pub(crate) disconnects: u64,
}

/// `status`'s RabbitMQ line: whether every worker's bridge is connected,
/// and the bridge's counters summed over the workers.
fn amqp_line(reports: &[&WorkerReport]) -> String {
    let parts: Vec<&AmqpReport> = reports.iter().filter_map(|r| r.amqp.as_ref()).collect();
    let Some(first) = parts.first() else {
        return String::new();
    };
    let up = parts.iter().filter(|a| a.connected).count();
    let state = if up == parts.len() {
        "connected".to_string()
    } else {
        let down: Vec<String> = reports
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let a = r.amqp.as_ref()?;
                (!a.connected).then(|| match a.since_ms {
                    0 => format!("worker {i} never yet"),
                    ms => format!("worker {i} for {}", age(ms)),
                })
            })
            .collect();
        format!("NOT connected: {}", down.join(", "))
    };
    let sum = |f: fn(&AmqpReport) -> u64| parts.iter().map(|a| f(a)).sum::<u64>();
    format!(
        "amqp: {} {state}; consumed {}, acked {}, rejected {}; published: confirmed {}, \
         failed {}, pending {}; connections lost {}\n",
        first.url,
        sum(|a| a.consumed),
        sum(|a| a.acked),
        sum(|a| a.rejected),
        sum(|a| a.confirmed),
        sum(|a| a.failed),
        sum(|a| a.pending as u64),
        sum(|a| a.disconnects),
    )
}

/// A worker's cluster figures.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct ClusterReport {
    pub(crate) node: String,
    pub(crate) redis: String,
    pub(crate) connected: bool,
    /// When `connected` last changed, in ms since the Unix epoch.
    pub(crate) since_ms: u64,
    pub(crate) dropped: u64,
    pub(crate) nodes: usize,
    pub(crate) remote_conns: usize,
    pub(crate) disconnects: u64,
}

/// How long ago a wall-clock time (ms since the Unix epoch) was.
fn age(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    duration(now.saturating_sub(ms))
}

/// `status`'s cluster line: whether every worker is connected to Redis and
/// since when, the other nodes seen, and the cross-node sends dropped.
fn cluster_line(reports: &[&WorkerReport]) -> String {
    let parts: Vec<&ClusterReport> = reports.iter().filter_map(|r| r.cluster.as_ref()).collect();
    let Some(first) = parts.first() else {
        return String::new();
    };
    let up = parts.iter().filter(|c| c.connected).count();
    let state = if up == parts.len() {
        let since = parts.iter().map(|c| c.since_ms).max().unwrap_or(0);
        format!("connected for {}", age(since))
    } else {
        let down: Vec<String> = reports
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let c = r.cluster.as_ref()?;
                (!c.connected).then(|| format!("worker {i} for {}", age(c.since_ms)))
            })
            .collect();
        format!("NOT connected: {}", down.join(", "))
    };
    format!(
        "cluster: node {} on {}, {state}; {} other nodes, {} of their connections; \
         cross-node sends dropped {}; Redis links lost {}\n",
        first.node,
        first.redis,
        parts.iter().map(|c| c.nodes).max().unwrap_or(0),
        parts.iter().map(|c| c.remote_conns).max().unwrap_or(0),
        parts.iter().map(|c| c.dropped).sum::<u64>(),
        parts.iter().map(|c| c.disconnects).sum::<u64>(),
    )
}

impl WorkerReport {
    /// The `status` cells from `memory` on.
    fn cells(&self) -> [String; 10] {
        [
            bytes(self.rss_bytes),
            self.conns.to_string(),
            self.timers.to_string(),
            self.messages_in.to_string(),
            bytes(self.queued_bytes as u64),
            self.dropped_sends.to_string(),
            bytes(self.bus_queued_bytes as u64),
            bytes(self.bus_dropped_bytes),
            self.bus_relinks.to_string(),
            self.bus_gaps.to_string(),
        ]
    }

    /// Adds a worker's figures into a total. The registry's are server-wide
    /// already, so they are taken, not added.
    fn add(&mut self, r: &WorkerReport) {
        self.rss_bytes += r.rss_bytes;
        self.conns += r.conns;
        self.server_conns = r.server_conns;
        self.uids = r.uids;
        self.timers += r.timers;
        self.messages_in += r.messages_in;
        self.queued_bytes += r.queued_bytes;
        self.dropped_sends += r.dropped_sends;
        self.bus_queued_bytes += r.bus_queued_bytes;
        self.bus_dropped_bytes += r.bus_dropped_bytes;
        self.bus_relinks += r.bus_relinks;
        self.bus_gaps += r.bus_gaps;
    }
}

/// A worker's answer to `connections`.
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct ConnsReport {
    pub(crate) pid: u32,
    pub(crate) conns: Vec<ConnRow>,
}

/// One connection.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct ConnRow {
    pub(crate) id: String,
    pub(crate) protocol: String,
    pub(crate) state: String,
    pub(crate) local: String,
    pub(crate) peer: String,
    pub(crate) queued_bytes: usize,
    pub(crate) idle_ms: u64,
    pub(crate) uid: Option<String>,
}

/// This process's resident memory.
pub(crate) fn rss_bytes() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a constant.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    };
    pages * page
}

/// What a command gathered: the master's answer, and each of its workers'
/// (`None`: it did not answer in time, or the slot is empty).
pub(crate) struct Gathered<T> {
    pub(crate) master: MasterReport,
    answers: Vec<Option<T>>,
}

impl<T> Gathered<T> {
    /// Each slot the master named, with its worker's answer.
    fn workers(&self) -> impl Iterator<Item = (&SlotReport, Option<&T>)> {
        self.master
            .workers
            .iter()
            .zip(self.answers.iter().map(Option::as_ref))
    }

    /// An error naming the workers that did not answer, if any.
    pub(crate) fn complete(&self) -> Result<()> {
        let silent: Vec<String> = self
            .workers()
            .filter(|(s, r)| s.pid.is_some() && r.is_none())
            .map(|(s, _)| format!("{} (pid {})", s.slot, s.pid.unwrap_or(0)))
            .collect();
        if silent.is_empty() {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "no answer within {ANSWER_TIMEOUT:?} from worker {} (stopped or stuck?)",
                silent.join(", ")
            )))
        }
    }
}

/// Asks the master `master` for `ask` and waits for its answer and its
/// workers' answers.
pub(crate) fn gather<T: DeserializeOwned>(
    cfg: &Config,
    master: Pid,
    ask: Ask,
) -> Result<Gathered<T>> {
    let dir = dir(cfg).ok_or_else(|| Error::Config("server.pid_file is not set".into()))?;
    let token = std::process::id() as i32;
    let request = Request::new(&dir, token, ask.kind())?;
    queue_signal(master, ask.signal())?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let master_report: MasterReport = take(&dir.join(format!("master.{token}")), deadline)
        .ok_or_else(|| {
            Error::Usage(format!(
                "master {master} did not answer within {ANSWER_TIMEOUT:?} (is {} writable?)",
                dir.display()
            ))
        })?;
    let answers = master_report
        .workers
        .iter()
        .map(|slot| {
            slot.pid.and_then(|_| {
                let name = ask.answer_name(slot.slot);
                take(&dir.join(format!("{name}.{token}")), deadline)
            })
        })
        .collect();
    drop(request);
    Ok(Gathered {
        master: master_report,
        answers,
    })
}

/// The request file: answers are written while it exists. Dropping it
/// removes it and every answer to it.
struct Request {
    dir: PathBuf,
    token: i32,
}

impl Request {
    fn new(dir: &Path, token: i32, kind: &str) -> Result<Request> {
        let path = dir.join(format!("request.{token}"));
        std::fs::write(&path, kind).map_err(|e| {
            Error::Usage(format!(
                "cannot write {}: {e} (is the server running, as this user?)",
                path.display()
            ))
        })?;
        Ok(Request {
            dir: dir.to_path_buf(),
            token,
        })
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(format!("request.{}", self.token)));
        let suffix = format!(".{}", self.token);
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_str().is_some_and(|n| n.ends_with(&suffix)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Reads the answer at `path` once it exists, or `None` after `deadline`.
fn take<T: DeserializeOwned>(path: &Path, deadline: Instant) -> Option<T> {
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            return match serde_json::from_slice(&bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    None
                }
            };
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `status`: the master line, then a row per worker and a total.
pub(crate) fn status_table(g: &Gathered<WorkerReport>) -> String {
    let m = &g.master;
    let mut out = format!(
        "{} running: master {}, up {}, {}, {} workers\n",
        m.name,
        m.pid,
        duration(m.up_ms),
        m.listen,
        m.workers.len()
    );
    let mut rows = vec![strings(&[
        "worker",
        "pid",
        "up",
        "memory",
        "conns",
        "timers",
        "msgs in",
        "queued out",
        "dropped",
        "bus queued",
        "bus dropped",
        "relinks",
        "bus gaps",
    ])];
    let mut total = WorkerReport::default();
    let mut answered = Vec::new();
    for (slot, report) in g.workers() {
        let pid = slot.pid.map_or("-".into(), |p| p.to_string());
        let Some(r) = report else {
            let what = if slot.pid.is_some() {
                "no answer"
            } else {
                "respawning"
            };
            rows.push(vec![slot.slot.to_string(), pid, what.into()]);
            continue;
        };
        let mut row = vec![slot.slot.to_string(), pid, duration(slot.up_ms)];
        row.extend(r.cells());
        rows.push(row);
        total.add(r);
        answered.push(r);
    }
    let mut row = vec!["total".into(), String::new(), String::new()];
    row.extend(total.cells());
    rows.push(row);
    out.push_str(&table(&rows));
    out.push_str(&format!(
        "registry: {} connections, {} uids\n",
        total.server_conns, total.uids
    ));
    out.push_str(&cluster_line(&answered));
    out.push_str(&amqp_line(&answered));
    out.push_str(&limits_line(&m.workers));
    out
}

/// `status`'s line on the hardening limits: stuck workers replaced, and
/// connections refused per address, per slot.
fn limits_line(slots: &[SlotReport]) -> String {
    let per_slot = |f: fn(&SlotReport) -> u64| {
        let total: u64 = slots.iter().map(f).sum();
        let each: Vec<String> = slots.iter().map(|s| f(s).to_string()).collect();
        format!("{total} ({})", each.join(" + "))
    };
    format!(
        "limits: stuck workers killed {}, refused by max_connections_per_ip {}, \
         admitted uncounted {}\n",
        per_slot(|s| u64::from(s.stuck_kills)),
        per_slot(|s| s.per_ip_refused),
        per_slot(|s| s.per_ip_uncounted),
    )
}

/// `connections`: a row per connection of every worker that answered.
pub(crate) fn connections_table(g: &Gathered<ConnsReport>) -> String {
    let mut rows = vec![strings(&[
        "worker", "pid", "id", "protocol", "state", "local", "peer", "queued", "idle", "uid",
    ])];
    let mut n = 0;
    for (slot, report) in g.workers() {
        let Some(r) = report else { continue };
        for c in &r.conns {
            n += 1;
            rows.push(vec![
                slot.slot.to_string(),
                r.pid.to_string(),
                c.id.clone(),
                c.protocol.clone(),
                c.state.clone(),
                c.local.clone(),
                c.peer.clone(),
                bytes(c.queued_bytes as u64),
                duration(c.idle_ms),
                c.uid.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    let mut out = table(&rows);
    out.push_str(&format!("total: {n} connections\n"));
    out
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `1d 2h`, `3h 4m`, `5m 6s`, `7.8s`, `90ms`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// `512 B`, `3.4 KiB`, `5.6 MiB`, `1.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_units_read_well() {
        let t = table(&[strings(&["a", "bb"]), strings(&["ccc", "d"])]);
        assert_eq!(t, "a    bb\nccc  d\n");
        assert_eq!(duration(90), "90ms");
        assert_eq!(duration(7_800), "7.8s");
        assert_eq!(duration(306_000), "5m 6s");
        assert_eq!(duration(2 * 86_400_000 + 3_600_000), "2d 1h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 + 512), "3.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
