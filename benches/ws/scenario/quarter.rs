//! Issue 15's quarter million (`idle-250k`): the kernel limits such a run
//! needs, the kernel's memory per socket for every idle scenario, and one
//! broadcast to every idle connection with the time until the last one
//! has it.

use std::fs;
use std::time::Duration;

use super::Loadgens;
use crate::hist::Histogram;
use crate::loadgen::SOURCE_ADDRS;
use crate::plan::{Figures, Scenario};
use crate::rows::Row;
use crate::server::Running;

/// Connections a worker can hold under this machine's 20,000-descriptor
/// cap (what the worker keeps free for itself taken off).
const WORKER_HOLDS: usize = 18_000;

/// Connections one worker is given when more workers are needed: the rest
/// is headroom for an uneven spread.
const CONNS_PER_WORKER: usize = 16_000;

/// Workers a foreman server runs with for `conns` connections: its `usual`
/// count if those can hold them, else one per 16,000.
pub fn workers_for(conns: usize, usual: usize) -> usize {
    if conns <= usual * WORKER_HOLDS {
        usual
    } else {
        conns.div_ceil(CONNS_PER_WORKER)
    }
}

/// The kernel's memory, read from /proc.
#[derive(Clone, Copy, Default)]
pub(super) struct Kernel {
    /// `Slab` of /proc/meminfo, KiB.
    slab_kib: u64,
    /// `SUnreclaim` of /proc/meminfo, KiB.
    sunreclaim_kib: u64,
    /// `TCP: mem` of /proc/net/sockstat: pages of socket buffers.
    tcp_mem_pages: u64,
    /// `TCP: inuse` of /proc/net/sockstat: TCP sockets.
    tcp_inuse: u64,
    /// Bytes of the slab caches every socket takes an object of (see
    /// [`SOCKET_SLABS`]), from /proc/slabinfo: active objects x size.
    socket_slabs_b: u64,
}

/// The slab caches of a TCP socket with its file in an epoll set: the
/// socket, its inode, its file, its epoll entry. Machine-wide `Slab` moves
/// with everything else the machine does (dentries, page tables of other
/// jobs); these hardly do. Each socket has a dentry too (192 B), in a cache
/// every file shares, so it is left out.
const SOCKET_SLABS: [&str; 4] = ["TCP", "sock_inode_cache", "filp", "eventpoll_epi"];

/// [`SOCKET_SLABS`]' bytes in /proc/slabinfo (0 where unreadable).
fn socket_slabs() -> u64 {
    let info = fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            // name active_objs num_objs objsize ...
            let f: Vec<&str> = l.split_whitespace().take(4).collect();
            let ours = SOCKET_SLABS.contains(f.first()?);
            let bytes = f.get(1)?.parse::<u64>().ok()? * f.get(3)?.parse::<u64>().ok()?;
            ours.then_some(bytes)
        })
        .sum()
}

impl Kernel {
    /// Reads the figures now (0 for what cannot be read).
    pub(super) fn sample() -> Kernel {
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let sockstat = fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let tcp: Vec<&str> = sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP:"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        let field = |name: &str| {
            tcp.iter()
                .position(|w| *w == name)
                .and_then(|i| tcp.get(i + 1)?.parse().ok())
                .unwrap_or(0)
        };
        Kernel {
            slab_kib: kib("Slab"),
            sunreclaim_kib: kib("SUnreclaim"),
            tcp_mem_pages: field("mem"),
            tcp_inuse: field("inuse"),
            socket_slabs_b: socket_slabs(),
        }
    }

    /// What the sockets opened since `before` cost the kernel, per socket
    /// (both ends of every connection are on this machine): slab memory
    /// (socket, inode, file, epoll entry, ...), its unreclaimable part,
    /// the socket's own caches alone, and buffer pages.
    pub(super) fn per_socket(&self, before: &Kernel, fig: &mut Figures) {
        let sockets = self.tcp_inuse.saturating_sub(before.tcp_inuse).max(1) as f64;
        let delta = |a: u64, b: u64| a as f64 - b as f64;
        fig.insert("kernel_sockets".into(), sockets);
        fig.insert(
            "kernel_slab_per_socket_b".into(),
            delta(self.slab_kib, before.slab_kib) * 1024.0 / sockets,
        );
        fig.insert(
            "kernel_sunreclaim_per_socket_b".into(),
            delta(self.sunreclaim_kib, before.sunreclaim_kib) * 1024.0 / sockets,
        );
        fig.insert(
            "kernel_socket_slabs_per_socket_b".into(),
            delta(self.socket_slabs_b, before.socket_slabs_b) / sockets,
        );
        fig.insert(
            "kernel_tcp_mem_per_socket_b".into(),
            delta(self.tcp_mem_pages, before.tcp_mem_pages) * page_size() / sockets,
        );
    }
}

fn page_size() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as f64 }
}

/// Checks the kernel settings `conns` loopback connections need (both ends
/// here, spread over [`SOURCE_ADDRS`] source addresses, `clients` load
/// generators connecting 128 at a time each) and raises, as root, those
/// that are too low, saying so on stderr. Not root: says what is short.
pub(super) fn check_limits(conns: usize, clients: usize) {
    let fds = 2 * conns as u64 + 10_000;
    let ports_needed = conns.div_ceil(SOURCE_ADDRS) as u64 + 1000;
    let backlog = 128 * clients as u64 + 1024;
    let ports = read_sysctl("net/ipv4/ip_local_port_range");
    let range: Vec<u64> = ports
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if let [lo, hi] = range[..] {
        if hi.saturating_sub(lo) + 1 < ports_needed {
            let lo = lo.min(65_535u64.saturating_sub(ports_needed));
            raise(
                "net/ipv4/ip_local_port_range",
                &ports,
                &format!("{lo} 65535"),
            );
        }
    }
    for (key, need) in [
        ("fs/file-max", fds),
        ("fs/nr_open", 20_000),
        ("net/core/somaxconn", backlog),
        ("net/ipv4/tcp_max_syn_backlog", backlog),
        // Only where conntrack is loaded (loopback is tracked then too).
        ("net/netfilter/nf_conntrack_max", conns as u64 * 2),
    ] {
        let now = read_sysctl(key);
        match now.trim().parse::<u64>() {
            Ok(v) if v < need => raise(key, &now, &need.to_string()),
            _ => {}
        }
    }
}

fn read_sysctl(key: &str) -> String {
    fs::read_to_string(format!("/proc/sys/{key}"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn raise(key: &str, from: &str, to: &str) {
    let name = key.replace('/', ".");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench: {name} is {from}, below the {to} this run needs (not root: left alone)");
        return;
    }
    match fs::write(format!("/proc/sys/{key}"), to) {
        Ok(()) => eprintln!("bench: raised {name} from {from} to {to} (machine-wide, left so)"),
        Err(e) => eprintln!("bench: {name} is {from}, below {to}, and cannot be raised: {e}"),
    }
}

/// After the connections of an idle scenario are held: the kernel's
/// memory per socket since `before`, and for a scenario with a sender
/// (`idle-250k`) the spread over the workers and one broadcast of a
/// `sc.size`-byte message to every connection.
pub(super) fn after_idle(
    lg: &mut Loadgens,
    servers: &[Running],
    sc: &Scenario,
    before: &Kernel,
    fig: &mut Figures,
) -> Result<(), String> {
    Kernel::sample().per_socket(before, fig);
    if sc.senders == 0 {
        return Ok(());
    }
    let per = crate::apps::conns_per_worker(servers[0].pid(), servers[0].addr.port());
    fig.insert(
        "worker_conns_min".into(),
        per.iter().min().copied().unwrap_or(0) as f64,
    );
    fig.insert(
        "worker_conns_max".into(),
        per.iter().max().copied().unwrap_or(0) as f64,
    );
    // Every receiver counts from `arm`; only then is the message sent.
    lg.send_all("arm")?;
    lg.expect_all("armed", Duration::from_secs(30))?;
    lg.send_all("fire")?;
    let got = lg.expect_all("bcast", Duration::from_secs(30))?;
    let mut latency = Histogram::default();
    let (mut received, mut lost, mut closed) = (0, 0, 0);
    for s in &got {
        latency.merge(&s.latency);
        received += s.received_total;
        lost += s.lost;
        closed += s.closed_by_server;
    }
    fig.insert("bcast_received".into(), received as f64);
    fig.insert("lost".into(), lost as f64);
    fig.insert("closed_by_server".into(), closed as f64);
    fig.insert("bcast_p50_ms".into(), latency.quantile_us(0.5) as f64 / 1e3);
    fig.insert(
        "bcast_p99_ms".into(),
        latency.quantile_us(0.99) as f64 / 1e3,
    );
    fig.insert("bcast_last_ms".into(), latency.max_us as f64 / 1e3);
    Ok(())
}

/// Columns an idle scenario adds to its table: the kernel's memory, and
/// the broadcast's figures for one with a sender.
pub fn columns(sc: &Scenario) -> Vec<(&'static str, &'static str)> {
    let mut cols = vec![
        ("kernel_slab_per_socket_b", "kernel slab/socket B"),
        ("kernel_sunreclaim_per_socket_b", "of it unreclaimable B"),
        ("kernel_socket_slabs_per_socket_b", "socket caches/socket B"),
    ];
    if sc.senders > 0 {
        cols.extend([
            ("worker_conns_min", "conns/worker min"),
            ("worker_conns_max", "conns/worker max"),
            ("bcast_p50_ms", "broadcast p50 ms"),
            ("bcast_last_ms", "broadcast last ms"),
            ("lost", "lost"),
            ("closed_by_server", "closed"),
        ]);
    }
    cols
}

/// The bar of issue 15, for a report's bars.
pub fn bars(rows: &[Row]) -> Vec<String> {
    let row = rows.iter().find(|r| {
        r.spec.name == "foreman" && r.scenario.name == "idle-250k" && !r.median.is_empty()
    });
    let Some(r) = row else {
        return Vec::new();
    };
    let get = |k: &str| r.median.get(k).copied().unwrap_or(f64::NAN);
    let (rss, conns) = (get("rss_per_conn_b"), get("conns"));
    let met = rss <= 1024.0 && conns >= r.scenario.conns as f64 && get("lost") == 0.0;
    vec![format!(
        "idle-250k {}: {conns:.0} connections, {rss:.0} B RSS/conn, broadcast to all in \
         {:.1} ms, lost {} (bar: all held, <= 1024 B, 0 lost): {}",
        r.spec.label(),
        get("bcast_last_ms"),
        get("lost"),
        if met { "met" } else { "NOT met" }
    )]
}
