//! Process and socket facts read from /proc: children, liveness, RSS, and
//! which worker process holds the server side of a client's connection.

use std::collections::{HashMap, HashSet};

/// Direct children of `pid` (every thread's children).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every descendant of `pid`, children first.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// The one-letter state of `pid` (`R`, `S`, `T`, `Z`, ...), `None` if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().next()?.chars().next()
}

/// The parent pid of `pid`, `None` if gone.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// True while `pid` exists and has not exited (a zombie has exited).
pub fn is_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Resident memory of `pid` in bytes (VmRSS), `None` if gone.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Socket inodes of the fds `pid` holds.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in fds.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(n) = n.parse() {
                    out.insert(n);
                }
            }
        }
    }
    out
}

fn hex_port(addr: &str) -> Option<u16> {
    u16::from_str_radix(addr.rsplit(':').next()?, 16).ok()
}

/// For connections accepted on `server_port`: client port -> socket inode,
/// from /proc/net/tcp (slow when the machine has many sockets).
pub fn accepted_sockets(server_port: u16) -> HashMap<u16, u64> {
    let mut out = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote)) = (hex_port(f[1]), hex_port(f[2])) else {
                continue;
            };
            // State 01 = ESTABLISHED; the listener itself has remote port 0.
            if local == server_port && remote != 0 && f[3] == "01" {
                if let Ok(inode) = f[9].parse::<u64>() {
                    if inode != 0 {
                        out.insert(remote, inode);
                    }
                }
            }
        }
    }
    out
}

/// Which of `workers` holds the server side of each client connection to
/// `server_port`: client local port -> worker pid. Connections no worker
/// holds (still in the accept backlog) are absent.
pub fn conn_owners(server_port: u16, workers: &[i32]) -> HashMap<u16, i32> {
    let sockets = super::sockdiag::established_by_local_port(server_port)
        .unwrap_or_else(|| accepted_sockets(server_port));
    let mut owners = HashMap::new();
    for &w in workers {
        let held = socket_inodes(w);
        for (&client_port, inode) in &sockets {
            if held.contains(inode) {
                owners.insert(client_port, w);
            }
        }
    }
    owners
}

/// CPU time `pid` has used, user plus system (utime + stime of
/// /proc/PID/stat, in clock ticks), `None` if gone.
pub fn cpu_time(pid: i32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // After the comm: state is field 3 of the line, utime 14, stime 15.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    };
    Some(std::time::Duration::from_millis(ticks * 1000 / hz))
}
