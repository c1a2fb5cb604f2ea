//! Starting the master (bind, pid file, first workers) and forking a
//! worker into a slot.

use super::pid_file::{release_in_worker, PidLock};
use super::process::{bind, init_logging, raise_nofile, thread_count, Output};
use super::{Master, Reconfigure, Slot, FIRST_BACKOFF, WORKER_SLOT};
use crate::cluster::bus;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::report;
use crate::shm::Scoreboard;
use crate::signals::master_signals;
use crate::worker::{Setup, Worker};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{fork, ForkResult};
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl<F> Master<F> {
    pub(super) fn start<H: Handler>(
        cfg: Config,
        daemon: bool,
        reconfigure: Option<Reconfigure>,
        factory: F,
    ) -> Result<()>
    where
        F: FnMut(usize) -> H,
    {
        let threads = thread_count();
        if threads > 1 {
            return Err(Error::Threaded { threads });
        }
        let mut cfg = cfg;
        if let Some(cluster) = cfg.cluster.as_mut() {
            cluster.resolve();
        }
        let mut pid_lock = cfg.pid_file.as_deref().map(PidLock::take).transpose()?;
        let output = Output::open(&cfg, daemon)?;
        init_logging();
        raise_nofile();
        let tls = cfg.server_tls()?;
        let mut addr = cfg.socket_addr()?;
        let listen_err = |source| Error::Listen {
            addr: cfg.addr.clone(),
            source,
        };
        let first = bind(addr, cfg.reuse_port).map_err(listen_err)?;
        addr = first.local_addr().map_err(listen_err)?;
        let mut listeners = vec![first];
        while cfg.reuse_port && listeners.len() < cfg.count {
            listeners.push(bind(addr, true).map_err(listen_err)?);
        }
        let bus_id = std::process::id();
        let mut slots = Vec::with_capacity(cfg.count);
        for slot in 0..cfg.count {
            let listener = match listeners.get(slot) {
                Some(l) if cfg.reuse_port => l.try_clone(),
                _ => listeners[0].try_clone(),
            }
            .map_err(|e| Error::io("dup listener", e))?;
            let bus_addr = bus::address(bus_id, slot).map_err(|e| Error::io("bus address", e))?;
            let bus_listener =
                UnixListener::bind_addr(&bus_addr).map_err(|e| Error::io("bind bus socket", e))?;
            slots.push(Slot {
                pid: None,
                started: Instant::now(),
                incarnation: 0,
                respawn_at: None,
                backoff: Duration::ZERO,
                listener,
                bus_listener,
                stuck_kills: 0,
                killing: false,
            });
        }
        drop(listeners);
        let also = bind_also(&cfg)?;
        // Before any fork: every worker inherits the same mapping.
        let board = Scoreboard::new(cfg.count).map_err(|e| Error::io("map the scoreboard", e))?;
        if cfg.cluster.is_some() {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            board.start_serials_at(ms << 20);
        }
        let url = format!("{}://{}", cfg.protocol.scheme(), addr);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {url}");
        for (l, sock) in cfg.also_listen.iter().zip(&also) {
            if let Ok(a) = sock.local_addr() {
                let _ = writeln!(out, "also listening on {}://{a}", l.protocol.scheme());
            }
        }
        let _ = out.flush();
        drop(out);
        output.settle()?;
        log::info!(
            "{}: {url}, {} workers, reuse_port={}, tls={}",
            cfg.name,
            cfg.count,
            cfg.reuse_port,
            tls.is_some()
        );
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&master_signals()), None)?;
        let signals = SignalFd::with_flags(
            &master_signals(),
            SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
        )?;
        let pid = std::process::id();
        if let Some(lock) = &mut pid_lock {
            lock.write_pid(pid)?;
        }
        if let Some(dir) = report::dir(&cfg) {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                log::warn!(
                    "{}: {e}; status and connections cannot answer",
                    dir.display()
                );
            }
        }
        let mut master = Master {
            cfg: Arc::new(cfg),
            factory,
            pid,
            bus_id,
            slots,
            signals,
            stop_deadline: None,
            reloading: Vec::new(),
            probation: None,
            reload_queued: false,
            started: Instant::now(),
            url,
            reconfigure,
            tls,
            board,
            next_check: Instant::now(),
            also,
        };
        for slot in 0..master.slots.len() {
            master.spawn(slot);
        }
        let r = master.supervise();
        if let Some(dir) = report::dir(&master.cfg) {
            let _ = std::fs::remove_dir_all(dir);
        }
        drop(pid_lock); // removes the pid file
        r
    }

    pub(super) fn spawn<H: Handler>(&mut self, slot: usize)
    where
        F: FnMut(usize) -> H,
    {
        // The replacement is judged from a fresh stamp, and counts its own
        // connections from zero.
        self.board.beat(slot);
        self.board.clear(slot);
        let s = &mut self.slots[slot];
        s.incarnation += 1;
        s.respawn_at = None;
        s.killing = false;
        // SAFETY: the master is single-threaded (checked at start), so the child
        // gets a consistent copy of its memory.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                s.pid = Some(child);
                s.started = Instant::now();
                log::info!("worker {slot} started (pid {child})");
            }
            Ok(ForkResult::Child) => {
                let code = self.child(slot);
                std::process::exit(code);
            }
            Err(e) => {
                log::error!("fork for worker {slot}: {e}; retrying");
                s.respawn_at = Some(Instant::now() + FIRST_BACKOFF);
            }
        }
    }

    /// Runs in the forked child: becomes worker `slot`; returns its exit code.
    fn child<H: Handler>(&mut self, slot: usize) -> i32
    where
        F: FnMut(usize) -> H,
    {
        WORKER_SLOT.store(slot as i32, Ordering::Relaxed);
        release_in_worker();
        // Die with the master: a worker must not outlive its supervisor.
        // SAFETY: prctl(PR_SET_PDEATHSIG) has no memory effects.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
        if nix::unistd::getppid().as_raw() as u32 != self.pid {
            return 0;
        }
        let mut unblock = SigSet::empty();
        for sig in [Signal::SIGCHLD, Signal::SIGHUP] {
            unblock.add(sig);
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&unblock), None);
        // Other slots' sockets stay with the master.
        for (i, other) in self.slots.iter().enumerate() {
            if i != slot {
                // SAFETY: these fds belong to the master's copy of the slot
                // table, which this process never uses again (it exits).
                unsafe {
                    libc::close(other.bus_listener.as_raw_fd());
                    if self.cfg.reuse_port {
                        libc::close(other.listener.as_raw_fd());
                    }
                }
            }
        }
        // SAFETY: as above, the master's signalfd is not used in the child.
        unsafe { libc::close(self.signals.as_fd().as_raw_fd()) };
        let s = &self.slots[slot];
        let also: std::io::Result<Vec<_>> = self.also.iter().map(|l| l.try_clone()).collect();
        let setup = match (s.listener.try_clone(), s.bus_listener.try_clone(), also) {
            (Ok(listener), Ok(bus_listener), Ok(also)) => Setup {
                cfg: self.cfg.clone(),
                tls: self.tls.clone(),
                slot: slot as u16,
                incarnation: s.incarnation,
                bus_id: self.bus_id,
                listener,
                also,
                bus_listener,
                board: self.board.clone(),
            },
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                log::error!("worker {slot}: {e}");
                return 1;
            }
        };
        let factory = &mut self.factory;
        let r = catch_unwind(AssertUnwindSafe(|| {
            Worker::new(setup, factory).and_then(Worker::run)
        }));
        match r {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                log::error!("worker {slot} failed: {e}");
                1
            }
            Err(_) => {
                log::error!("worker {slot} panicked outside a callback");
                2
            }
        }
    }
}

/// Binds the listeners of `also_listen`: one socket each, shared by every
/// worker.
fn bind_also(cfg: &Config) -> Result<Vec<TcpListener>> {
    cfg.also_listen
        .iter()
        .map(|l| {
            let err = |source| Error::Listen {
                addr: l.addr.clone(),
                source,
            };
            let addr = crate::config::resolve(&l.addr)?;
            bind(addr, false).map_err(err)
        })
        .collect()
}
