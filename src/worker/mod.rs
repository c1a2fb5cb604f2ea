//! A worker process: one mio loop serving its connections, its bus links, its
//! timers and its blocking pool's results. Runs in the child after fork,
//! until told to stop.
//!
//! The loop owns the [`Core`] and lends it to the handler as a
//! [`crate::Ctx`] for each callback. The files follow the data path:
//! `accept.rs` takes connections, `read.rs` drains sockets into their
//! protocol, `handshake.rs` answers request heads and WebSocket upgrades on
//! both sides, `event_loop.rs` dispatches events and runs the callbacks,
//! `write.rs` writes queued output, `sweep.rs` keeps deadlines and stops,
//! `status.rs` answers `status` and `connections`.

mod accept;
mod event_loop;
mod handshake;
mod read;
mod status;
mod sweep;
mod write;

use crate::cluster::bus::Bus;
use crate::config::Config;
use crate::core::{Core, CoreParts};
use crate::handler::Handler;
use crate::proto::codec::Wire;
use crate::shm::Scoreboard;
use crate::signals::worker_signals;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocketConfig;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
/// The `also_listen` listeners: `ALSO_BASE + i` for the listener numbered
/// `i + 1`; below every other fixed token and above every bus token.
const ALSO_BASE: usize = usize::MAX - 64 - MAX_ALSO;
use crate::config::MAX_ALSO;
/// The shared receive buffer: one per worker, not one per connection.
const SCRATCH: usize = 64 * 1024;
/// How often deadlines (handshake, close, idle, ping) are checked.
const SWEEP: Duration = Duration::from_millis(100);

/// Everything a worker gets from the master.
pub(crate) struct Setup {
    pub(crate) cfg: Arc<Config>,
    pub(crate) slot: u16,
    pub(crate) incarnation: u32,
    /// Names the bus addresses (the master's pid when it bound them).
    pub(crate) bus_id: u32,
    pub(crate) listener: std::net::TcpListener,
    /// The `also_listen` sockets, in order.
    pub(crate) also: Vec<std::net::TcpListener>,
    /// TLS for every connection, when configured.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) bus_listener: std::os::unix::net::UnixListener,
    /// Heartbeats and per-address counts, shared with the master and the
    /// other workers.
    pub(crate) board: Scoreboard,
}

/// One worker's loop.
pub(crate) struct Worker<H: Handler> {
    handler: H,
    core: Core,
    poll: Poll,
    listener: Option<TcpListener>,
    /// The `also_listen` listeners with their wires (closed at stop).
    also: Vec<(TcpListener, Wire)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    signals: SignalFd,
    scratch: Vec<u8>,
    ws_config: WebSocketConfig,
    /// Connections that had more to read when their budget ran out.
    pending_reads: VecDeque<usize>,
    /// Events taken in the middle of a write pass.
    mid_events: Events,
    max_conns: usize,
    /// Accepting stopped at the connection cap; resume below it.
    accept_full: bool,
    accept_resume: Option<Instant>,
    /// With more than one worker: listeners every worker shares are left to
    /// the least loaded worker (see [`crate::shm::Scoreboard::fair_to_accept`]).
    balance: bool,
    /// Per listener, when it was last left to a less loaded worker.
    deferred: Vec<Option<accept::Deferral>>,
    /// Accepting ran out of descriptors and said so; quiet until it works.
    accept_starved: bool,
    next_sweep: Instant,
    stop_deadline: Option<Instant>,
}

fn panic_text(p: &Box<dyn Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".into()
    }
}

/// Descriptors a worker holds besides clients and bus links: the standard
/// streams, the listeners, epoll, signalfd, the waker, a log file.
const FD_FIXED: usize = 16;

/// Descriptors kept free of client sockets below an open-files limit of
/// `limit` with `count` workers: the fixed ones, the bus links (one
/// outbound and one inbound per other worker, and one more of each while a
/// link is made again), and a sixteenth of the limit for the application's
/// own files and outbound connections.
fn fd_reserve(limit: usize, count: usize) -> usize {
    FD_FIXED + 2 * count + limit / 16
}

/// The open-files limit, if it can be read.
fn nofile_limit() -> Option<usize> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft as usize)
}

/// The connections the open-files limit leaves room for, after
/// [`fd_reserve`].
fn fd_cap(count: usize) -> usize {
    match nofile_limit() {
        Some(limit) => limit.saturating_sub(fd_reserve(limit, count)),
        None => 1000,
    }
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(setup: Setup, handler_factory: impl FnOnce(usize) -> H) -> io::Result<Self> {
        let cfg = setup.cfg;
        let poll = Poll::new()?;
        let mio_registry = poll.registry().try_clone()?;
        setup.listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(setup.listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut also = Vec::with_capacity(setup.also.len());
        for (i, (sock, l)) in setup.also.into_iter().zip(&cfg.also_listen).enumerate() {
            sock.set_nonblocking(true)?;
            let mut sock = TcpListener::from_std(sock);
            poll.registry()
                .register(&mut sock, Token(ALSO_BASE + i), Interest::READABLE)?;
            also.push((sock, Wire::server(l.protocol)));
        }
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let signals = SignalFd::with_flags(
            &worker_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )?;
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let bus = Bus::new(
            setup.slot,
            cfg.count as u16,
            setup.incarnation,
            setup.bus_id,
            setup.bus_listener,
            poll.registry(),
            cfg.bus_peer_buffer_bytes,
        )?;
        let ws_config = crate::proto::ws::config(cfg.max_frame_bytes, cfg.max_message_bytes);
        crate::net::set_tls_key_cache(cfg.tls_key_cache);
        let max_conns = cfg.max_connections.min(fd_cap(cfg.count)).max(1);
        let (balance, also_len) = (cfg.count > 1 && cfg.balance_accept, also.len());
        // A worker that does not balance says nothing of its load, so that
        // balancing ones (mid-reload) never wait on it.
        setup
            .board
            .set_load(setup.slot as usize, balance.then_some(0));
        let core = Core::new(CoreParts {
            cfg,
            slot: setup.slot,
            bus,
            waker,
            mio: mio_registry,
            board: setup.board,
        });
        let next_sweep = core.now + SWEEP;
        let handler = handler_factory(setup.slot as usize);
        Ok(Worker {
            handler,
            core,
            poll,
            listener: Some(listener),
            also,
            tls: setup.tls,
            signals,
            scratch: vec![0; SCRATCH],
            ws_config,
            pending_reads: VecDeque::new(),
            mid_events: Events::with_capacity(64),
            max_conns,
            accept_full: false,
            accept_resume: None,
            balance,
            deferred: vec![None; 1 + also_len],
            accept_starved: false,
            next_sweep,
            stop_deadline: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fd_reserve;

    #[test]
    fn a_small_limit_keeps_room_for_clients_and_bus_links() {
        // 64 descriptors, 2 workers: 40 clients each, 24 for the rest.
        assert_eq!(64 - fd_reserve(64, 2), 40);
        // The default limit keeps a sixteenth and the bus links.
        assert_eq!(fd_reserve(20_000, 4), 16 + 8 + 1250);
    }
}
