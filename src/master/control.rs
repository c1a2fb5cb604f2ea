//! `stop`, `restart`, `reload`, `status` and `connections`: talking to a running master
//! through its pid file and signals. Only the holder of the pid file's lock
//! is signalled or asked (see `pid_file.rs`); a stale file is reported and
//! nobody is signalled.

use super::pid_file::{holder, Holder};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::report;
use nix::sys::signal::Signal;
use std::time::Duration;

/// The master holding the lock of the config's pid file.
fn master(cfg: &Config) -> Result<Holder> {
    let path = cfg.pid_file.as_ref().ok_or_else(|| {
        Error::Config("server.pid_file is not set: cannot find the running server".into())
    })?;
    holder(path)
}

/// The running master, `None` if there is none (for `restart`).
pub(super) fn running(cfg: &Config) -> Result<Option<Holder>> {
    match master(cfg) {
        Ok(h) => Ok(Some(h)),
        Err(Error::NotRunning(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn signal(cfg: &Config, sig: Signal, what: &str) -> Result<()> {
    let m = master(cfg)?;
    m.signal(sig)?;
    println!("{what}: signalled master {}", m.pid);
    Ok(())
}

pub(super) fn stop(cfg: &Config) -> Result<()> {
    stop_master(cfg, &master(cfg)?)
}

/// Stops `m`, waiting until it is gone.
pub(super) fn stop_master(cfg: &Config, m: &Holder) -> Result<()> {
    m.signal(Signal::SIGTERM)?;
    if !m.wait_exit(cfg.stop_timeout + Duration::from_secs(2)) {
        return Err(Error::Usage(format!(
            "master {} did not stop in time",
            m.pid
        )));
    }
    println!("stopped (master {})", m.pid);
    Ok(())
}

pub(super) fn status(cfg: &Config) -> Result<()> {
    let m = master(cfg)?;
    let g = report::gather::<report::WorkerReport>(cfg, m.pid, report::Ask::Status)?;
    print!("{}", report::status_table(&g));
    g.complete()
}

pub(super) fn connections(cfg: &Config) -> Result<()> {
    let m = master(cfg)?;
    let g = report::gather::<report::ConnsReport>(cfg, m.pid, report::Ask::Connections)?;
    print!("{}", report::connections_table(&g));
    g.complete()
}
