//! `stop`, `restart`, `reload`, `status` and `connections`: talking to a running master
//! through its pid file and signals.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::report;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

fn master_pid(cfg: &Config) -> Result<Pid> {
    let path = cfg.pid_file.as_ref().ok_or_else(|| {
        Error::Config("server.pid_file is not set: cannot find the running server".into())
    })?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("not running? cannot read {path}: {e}")))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| Error::Usage(format!("{path} does not hold a pid")))?;
    let pid = Pid::from_raw(pid);
    kill(pid, None).map_err(|_| Error::Usage(format!("not running (stale {path}: pid {pid})")))?;
    Ok(pid)
}

/// Whether the pid file names a live process.
pub(super) fn running(cfg: &Config) -> Result<bool> {
    if cfg.pid_file.is_none() {
        return Err(Error::Config(
            "server.pid_file is not set: cannot find the running server".into(),
        ));
    }
    Ok(master_pid(cfg).is_ok())
}

pub(super) fn signal(cfg: &Config, sig: Signal, what: &str) -> Result<()> {
    let pid = master_pid(cfg)?;
    kill(pid, sig)?;
    println!("{what}: signalled master {pid}");
    Ok(())
}

pub(super) fn stop(cfg: &Config) -> Result<()> {
    let pid = master_pid(cfg)?;
    kill(pid, Signal::SIGTERM)?;
    let deadline = Instant::now() + cfg.stop_timeout + Duration::from_secs(2);
    while alive(pid) {
        if Instant::now() > deadline {
            return Err(Error::Usage(format!("master {pid} did not stop in time")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("stopped (master {pid})");
    Ok(())
}

/// Whether `pid` runs: a process that exited but was not reaped by its
/// parent (a zombie) has stopped.
fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

pub(super) fn status(cfg: &Config) -> Result<()> {
    let pid = master_pid(cfg)?;
    let g = report::gather::<report::WorkerReport>(cfg, pid, report::Ask::Status)?;
    print!("{}", report::status_table(&g));
    g.complete()
}

pub(super) fn connections(cfg: &Config) -> Result<()> {
    let pid = master_pid(cfg)?;
    let g = report::gather::<report::ConnsReport>(cfg, pid, report::Ask::Connections)?;
    print!("{}", report::connections_table(&g));
    g.complete()
}
