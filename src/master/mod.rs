//! The master process: binds the listeners, forks the workers, supervises
//! them, and acts on signals. It never serves a client.
//!
//! Signals are blocked and read from a signalfd in the master's own loop, so
//! they only ever mark work for the loop to do (nginx's rule).
//!
//! `server.rs` is the public [`Server`]; `process.rs` sets up the master's
//! process (logging, limits, daemon, the listening socket); `spawn.rs`
//! starts the master and forks workers; `supervise.rs` is the master's loop
//! (respawns, stop, reload, status); `pid_file.rs` is the pid file as a lock
//! the master holds; `control.rs` talks to a running master.

mod control;
mod pid_file;
mod process;
mod server;
mod spawn;
mod supervise;

pub use server::Server;

use crate::config::Config;
use crate::error::Result;
use crate::shm::Scoreboard;
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The worker slot of this process, -1 in the master (for log lines).
pub(super) static WORKER_SLOT: AtomicI32 = AtomicI32::new(-1);
/// A worker that dies sooner than this after start is respawned with backoff.
pub(super) const QUICK_DEATH: Duration = Duration::from_secs(1);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often the master reads the workers' heartbeats (at most; a shorter
/// `handler_timeout` is checked four times per timeout).
pub(super) const HEARTBEAT_CHECK: Duration = Duration::from_millis(250);

/// Builds the config anew for `reload` (see [`Server::reload_config`]).
pub(super) type Reconfigure = Box<dyn FnMut() -> Result<Config>>;

/// One worker slot as the master sees it.
pub(super) struct Slot {
    pid: Option<Pid>,
    started: Instant,
    incarnation: u32,
    /// When to respawn an empty slot.
    respawn_at: Option<Instant>,
    backoff: Duration,
    listener: TcpListener,
    bus_listener: UnixListener,
    /// Times a worker in this slot was killed for not coming back to its
    /// loop within `handler_timeout`.
    stuck_kills: u32,
    /// Its worker was sent SIGKILL as stuck and has not been reaped yet.
    killing: bool,
}

/// The running master.
pub(super) struct Master<F> {
    cfg: Arc<Config>,
    factory: F,
    /// The master's pid (after `-d` detached it).
    pid: u32,
    /// Names the bus addresses: the pid at bind time.
    bus_id: u32,
    /// The sockets of `also_listen`, in order.
    also: Vec<TcpListener>,
    slots: Vec<Slot>,
    signals: SignalFd,
    stop_deadline: Option<Instant>,
    /// Slots still to be replaced by a reload, in order; the head is being replaced.
    reloading: Vec<usize>,
    /// The slot whose replacement must live [`QUICK_DEATH`] before a reload
    /// goes on to the next slot.
    probation: Option<usize>,
    /// A reload asked for while one was under way: it follows.
    reload_queued: bool,
    started: Instant,
    /// What it listens on, as printed at start.
    url: String,
    reconfigure: Option<Reconfigure>,
    /// TLS for the workers, loaded from the config's files.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Heartbeats and per-address counts, shared with the workers.
    board: Scoreboard,
    /// When the heartbeats are next checked.
    next_check: Instant,
}
