//! The master's loop: signals, respawning dead workers with backoff,
//! replacing stuck ones (their heartbeat in the [`crate::shm::Scoreboard`]
//! older than `handler_timeout`), the graceful stop, the rolling reload, and
//! answers to `status`.

use super::{Master, FIRST_BACKOFF, HEARTBEAT_CHECK, MAX_BACKOFF, QUICK_DEATH};
use crate::config::Config;
use crate::error::Result;
use crate::handler::Handler;
use crate::report;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl<F> Master<F> {
    pub(super) fn supervise<H: Handler>(&mut self) -> Result<()>
    where
        F: FnMut(usize) -> H,
    {
        loop {
            let now = Instant::now();
            let next = self
                .slots
                .iter()
                .filter_map(|s| s.respawn_at)
                .chain(self.stop_deadline)
                .chain(self.probation_ends())
                .chain(self.heartbeat_check_due())
                .min();
            let timeout = match next {
                None => PollTimeout::NONE,
                Some(t) => {
                    let ms = t.saturating_duration_since(now).as_millis() as u64 + 1;
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            while let Ok(Some(info)) = self.signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {}
                    Ok(Signal::SIGUSR1) => self.begin_reload(),
                    Ok(sig @ (Signal::SIGUSR2 | Signal::SIGIO)) if report::is_request(&info) => {
                        self.answer(sig)
                    }
                    Ok(Signal::SIGHUP | Signal::SIGUSR2) => self.log_status(),
                    Ok(Signal::SIGIO) => {}
                    Ok(sig) => {
                        log::info!("{sig}: stopping");
                        self.begin_stop();
                    }
                    Err(_) => {}
                }
            }
            self.reap();
            let now = Instant::now();
            if self.stop_deadline.is_some() {
                if self.slots.iter().all(|s| s.pid.is_none()) {
                    log::info!("all workers stopped");
                    return Ok(());
                }
                if self.stop_deadline.is_some_and(|d| d <= now) {
                    self.kill_all();
                    return Ok(());
                }
                continue;
            }
            if self.heartbeat_check_due().is_some_and(|t| t <= now) {
                self.kill_stuck();
            }
            for slot in 0..self.slots.len() {
                if self.slots[slot].respawn_at.is_some_and(|t| t <= now) {
                    self.spawn(slot);
                }
            }
            if self.probation_ends().is_some_and(|t| t <= now) {
                self.probation = None;
                self.next_reload();
                if self.reloading.is_empty() {
                    log::info!("reload done");
                }
            }
            if self.reload_queued && self.reloading.is_empty() && self.probation.is_none() {
                self.reload_queued = false;
                self.begin_reload();
            }
        }
    }

    /// When the heartbeats are next read (never while stopping: the stop
    /// deadline kills what does not stop).
    fn heartbeat_check_due(&self) -> Option<Instant> {
        self.cfg.handler_timeout?;
        self.stop_deadline.is_none().then_some(self.next_check)
    }

    /// Kills (SIGKILL) every worker whose heartbeat is older than
    /// `handler_timeout`: stuck in a callback, or stopped by a signal. It is
    /// replaced when reaped, like any dead worker.
    fn kill_stuck(&mut self) {
        let Some(limit) = self.cfg.handler_timeout else {
            return;
        };
        self.next_check = Instant::now() + HEARTBEAT_CHECK.min(limit / 4);
        for (slot, s) in self.slots.iter_mut().enumerate() {
            let Some(pid) = s.pid else { continue };
            let silent = self.board.since_beat(slot);
            if s.killing || silent <= limit {
                continue;
            }
            log::error!(
                "worker {slot} (pid {pid}) has not come back to its event loop for {} ms \
                 (handler_timeout_ms {}): stuck in a handler or stopped; killing it (SIGKILL) \
                 and replacing it",
                silent.as_millis(),
                limit.as_millis()
            );
            s.killing = true;
            s.stuck_kills += 1;
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    /// When the replacement on probation has lived long enough.
    fn probation_ends(&self) -> Option<Instant> {
        let s = &self.slots[self.probation?];
        s.pid.map(|_| s.started + QUICK_DEATH)
    }

    /// Collects exited workers and schedules their replacements.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let Some(pid) = status.pid() else { continue };
            let Some(slot) = self.slots.iter().position(|s| s.pid == Some(pid)) else {
                continue;
            };
            // Its connections no longer count against any address.
            self.board.clear(slot);
            let s = &mut self.slots[slot];
            s.pid = None;
            if self.stop_deadline.is_some() {
                log::info!("worker {slot} (pid {pid}) exited: {status:?}");
                continue;
            }
            let reloaded = self.reloading.first() == Some(&slot);
            let lived = s.started.elapsed();
            if self.probation == Some(slot) && lived < QUICK_DEATH {
                // The new code or config does not come up: keep the workers
                // that still run the old one.
                log::error!(
                    "reload stopped: the new worker {slot} (pid {pid}) died {lived:?} after \
                     start ({status:?}); {} worker(s) keep running as before",
                    self.reloading.len()
                );
                self.probation = None;
                self.reloading.clear();
            }
            if reloaded {
                s.backoff = Duration::ZERO;
            } else if lived < QUICK_DEATH {
                s.backoff = (s.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                log::error!(
                    "worker {slot} (pid {pid}) died {lived:?} after start: {status:?}; respawning in {:?}",
                    s.backoff
                );
            } else if s.killing {
                s.backoff = Duration::ZERO;
                log::error!("worker {slot} (pid {pid}) killed as stuck: {status:?}; respawning");
            } else {
                s.backoff = Duration::ZERO;
                log::error!("worker {slot} (pid {pid}) died: {status:?}; respawning");
            }
            s.respawn_at = Some(Instant::now() + s.backoff);
            if reloaded {
                // Its replacement starts now; the next slot waits until it
                // has lived QUICK_DEATH.
                self.reloading.remove(0);
                self.probation = Some(slot);
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.stop_deadline = Some(Instant::now() + self.cfg.stop_timeout);
        for s in &mut self.slots {
            s.respawn_at = None;
            if let Some(pid) = s.pid {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
    }

    fn kill_all(&mut self) {
        for (slot, s) in self.slots.iter_mut().enumerate() {
            if let Some(pid) = s.pid.take() {
                log::warn!("worker {slot} (pid {pid}) did not stop in time: killing it");
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
        }
    }

    /// Replaces the workers one at a time: each is stopped gracefully and its
    /// replacement forked as soon as it has exited, so the listener (held by the
    /// master) never stops accepting. The next slot's turn comes once that
    /// replacement has lived [`QUICK_DEATH`]; if it dies sooner, the reload
    /// stops and the other workers keep running as they were.
    fn begin_reload(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        if !self.reloading.is_empty() || self.probation.is_some() {
            log::info!("reload asked for during a reload: it follows when this one is done");
            self.reload_queued = true;
            return;
        }
        if let Some(reconfigure) = self.reconfigure.as_mut() {
            let new = reconfigure().and_then(|c| {
                c.validate()?;
                let tls = c.server_tls()?;
                Ok((c, tls))
            });
            match new {
                Ok((new, tls)) => {
                    self.cfg = Arc::new(keep_fixed(&self.cfg, new));
                    self.tls = tls;
                }
                Err(e) => {
                    log::error!("reload refused, the workers keep running: {e}");
                    return;
                }
            }
        }
        log::info!(
            "reload: replacing {} workers one at a time",
            self.slots.len()
        );
        self.reloading = (0..self.slots.len()).collect();
        self.next_reload();
    }

    fn next_reload(&mut self) {
        while let Some(&slot) = self.reloading.first() {
            match self.slots[slot].pid {
                Some(pid) => {
                    let _ = kill(pid, Signal::SIGTERM);
                    return;
                }
                None => {
                    self.reloading.remove(0);
                }
            }
        }
    }

    /// Answers `status` or `connections` commands (see [`crate::report`]):
    /// writes the master's view for each waiting request and passes the
    /// signal on to every worker.
    fn answer(&self, sig: Signal) {
        let now = Instant::now();
        let workers = self
            .slots
            .iter()
            .enumerate()
            .map(|(slot, s)| {
                let (per_ip_refused, per_ip_uncounted) = self.board.per_ip_counters(slot);
                report::SlotReport {
                    slot,
                    pid: s.pid.map(|p| p.as_raw()),
                    incarnation: s.incarnation,
                    up_ms: now.saturating_duration_since(s.started).as_millis() as u64,
                    stuck_kills: s.stuck_kills,
                    per_ip_refused,
                    per_ip_uncounted,
                }
            })
            .collect();
        let master = report::MasterReport {
            pid: self.pid,
            name: self.cfg.name.clone(),
            listen: self.url.clone(),
            up_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            workers,
        };
        // The workers first: the command reads the master's answer, then waits
        // for theirs.
        for s in &self.slots {
            if let Some(pid) = s.pid {
                if let Err(e) = report::queue_signal(pid, sig) {
                    log::warn!("cannot ask worker {pid}: {e}");
                }
            }
        }
        for token in report::waiting(&self.cfg, None, "master") {
            report::answer(&self.cfg, "master", token, &master);
        }
    }

    /// Logs the master's view and asks every worker to log its own.
    fn log_status(&self) {
        for (slot, s) in self.slots.iter().enumerate() {
            if let Some(pid) = s.pid {
                let _ = kill(pid, Signal::SIGUSR2);
            }
            let (refused, uncounted) = self.board.per_ip_counters(slot);
            log::info!(
                "status: worker {slot} pid {:?} incarnation {} up {:?}, killed as stuck {} times, \
                 per-address refusals {refused} (admitted uncounted {uncounted})",
                s.pid.map(|p| p.as_raw()),
                s.incarnation,
                s.started.elapsed(),
                s.stuck_kills,
            );
        }
    }
}
/// `new` with the settings a reload cannot change taken from `running`, and
/// a warning for each that differs.
fn keep_fixed(running: &Config, mut new: Config) -> Config {
    let keep = |what: &str, differs: bool| {
        if differs {
            log::warn!("reload: {what} changed in the config; it takes a restart, keeping the running value");
        }
    };
    keep(
        "listen",
        new.protocol != running.protocol || new.addr != running.addr,
    );
    keep("also_listen", new.also_listen != running.also_listen);
    keep("count", new.count != running.count);
    keep("reuse_port", new.reuse_port != running.reuse_port);
    keep("pid_file", new.pid_file != running.pid_file);
    keep("log_file", new.log_file != running.log_file);
    new.protocol = running.protocol;
    new.addr = running.addr.clone();
    new.also_listen = running.also_listen.clone();
    new.count = running.count;
    new.reuse_port = running.reuse_port;
    new.pid_file = running.pid_file.clone();
    new.log_file = running.log_file.clone();
    new
}
