//! The application servers of the `sync-*` scenarios (the `sync` and
//! `chat` examples): a config file per run whose database is a fresh file
//! on disk, removed after the run, and how the clients' connections are
//! spread over the workers.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::server;

/// Rate limits of the applications' configs: past anything the bench
/// offers (the configs' largest allowed value), so no request is refused.
const UNLIMITED: u32 = 1_000_000;

/// One run's config file and database directory; removed on drop.
pub struct AppFiles {
    dir: PathBuf,
    /// The config file to start the server with (`-c`).
    pub config: PathBuf,
}

impl AppFiles {
    /// Writes the config of application `app` (`sync` or `chat`) for run
    /// `tag` under `out/apps/`. Everything is the application's default but
    /// the rate limit (and the chat's tick, which is no room fan-out).
    pub fn write(app: &str, tag: &str, out: &Path) -> Result<AppFiles, String> {
        let dir = out.join("apps").join(format!("{app}-{tag}"));
        // A run killed earlier may have left its database.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let toml = match app {
            "sync" => format!(
                "# benches/ws: defaults but the rate limit.\n[sync]\n\
                 rate_per_sec = {UNLIMITED}\nrate_burst = {UNLIMITED}\ndb_path = \"sync.db\"\n"
            ),
            "chat" => format!(
                "# benches/ws: defaults but the rate limit and the tick.\n\
                 [chat]\ntick_interval_ms = 0\n[rate_limit]\nper_second = {UNLIMITED}\n\
                 burst = {UNLIMITED}\n[history]\ndatabase = \"chat.db\"\n"
            ),
            // The `chat` scenario: the chat's defaults (its rate limit and
            // tick too) but the database's place.
            "chat-rooms" => "# benches/ws, scenario `chat`: the chat's defaults.\n\
                             [history]\ndatabase = \"chat.db\"\n"
                .to_string(),
            other => return Err(format!("no config for application {other}")),
        };
        let config = dir.join(format!("{app}.toml"));
        fs::write(&config, toml).map_err(|e| format!("{}: {e}", config.display()))?;
        Ok(AppFiles { dir, config })
    }
}

impl Drop for AppFiles {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Established connections to local `port` held by each worker of the
/// server whose master is `master` (its child processes), matched by socket
/// inode between `/proc/PID/fd` and `/proc/net/tcp`.
pub fn conns_per_worker(master: i32, port: u16) -> Vec<usize> {
    let established = established_inodes(port);
    server::tree(master)
        .into_iter()
        .filter(|&pid| pid != master)
        .map(|pid| {
            socket_inodes(pid)
                .iter()
                .filter(|i| established.contains(i))
                .count()
        })
        .collect()
}

/// Inodes of the sockets process `pid` has open.
fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|link| {
            let s = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            s.parse().ok()
        })
        .collect()
}

/// Inodes of the IPv4 TCP sockets in state ESTABLISHED whose local port is
/// `port` (the server's side of its clients' connections).
fn established_inodes(port: u16) -> HashSet<u64> {
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st queues timer retrnsmt uid timeout inode
            let local_port = f.get(1)?.rsplit(':').next()?;
            let ours = u16::from_str_radix(local_port, 16).ok()? == port;
            (ours && *f.get(3)? == "01").then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}
