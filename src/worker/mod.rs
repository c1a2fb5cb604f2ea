//! A worker process: one mio loop serving its connections, its bus links and
//! its timers. Runs in the child after fork, until told to stop.
//!
//! This file has the loop, accepting, writing and stopping; `read.rs` feeds
//! what connections send to their protocol, `handshake.rs` answers request heads
//! and WebSocket upgrades.

mod handshake;
mod read;

use crate::bus::{self, Bus, BusToken};
use crate::codec;
use crate::config::{Config, Protocol};
use crate::conn::{Conn, State, WsIo};
use crate::ctx::{Ctx, Deferred, Stats, Waker, CLOSE_GRACE};
use crate::http::{Head, Request, Response};
use crate::registry::Registry;
use crate::report;
use crate::timer::Timers;
use crate::{ConnError, ConnId, Handler, Message};
use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use slab::Slab;
use std::any::Any;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
/// Bytes read from one connection per event before others get a turn.
const READ_BUDGET: usize = 256 * 1024;
/// The shared receive buffer: one per worker, not one per connection.
const SCRATCH: usize = 64 * 1024;
/// How often deadlines (handshake, close, idle, ping) are checked.
const SWEEP: Duration = Duration::from_millis(100);
/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// tungstenite's per-connection read chunk. It is allocated for every
/// connection, so it is small: idle connections cost little, and the socket
/// reads themselves go through the worker's one shared buffer. Frames longer
/// than this are copied into tungstenite in chunks of this size.
const WS_READ_CHUNK: usize = 128;
/// Writes between two looks at new events while a turn writes its dirty
/// connections (see [`Worker::flush_conns`]).
const POLL_EVERY: usize = 32;

/// Everything a worker gets from the master.
pub(crate) struct Setup {
    pub(crate) cfg: Arc<Config>,
    pub(crate) slot: u16,
    pub(crate) incarnation: u32,
    /// Names the bus addresses (the master's pid when it bound them).
    pub(crate) bus_id: u32,
    pub(crate) listener: std::net::TcpListener,
    /// TLS for every connection, when configured.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) bus_listener: std::os::unix::net::UnixListener,
}

/// One worker's loop.
pub(crate) struct Worker<H: Handler> {
    handler: H,
    ctx: Ctx,
    poll: Poll,
    listener: Option<TcpListener>,
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

/// The signals a worker acts on; the master blocks them before forking.
pub(crate) fn worker_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGIO,
    ] {
        s.add(sig);
    }
    s
}

/// Descriptors kept for everything but client sockets: the listener, bus
/// links, epoll, signalfd, the application's own files.
const FD_RESERVE: usize = 100;

/// The open-files limit caps connections: keep [`FD_RESERVE`] for the rest.
fn fd_cap() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => (soft as usize).saturating_sub(FD_RESERVE),
        Err(_) => 1000,
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
        let waker = Waker(Arc::new(mio::Waker::new(poll.registry(), WAKER)?));
        let signals = SignalFd::with_flags(
            &worker_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )?;
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let count = cfg.count as u16;
        let bus = Bus::new(
            setup.slot,
            count,
            setup.incarnation,
            setup.bus_id,
            setup.bus_listener,
            poll.registry(),
            cfg.bus_peer_buffer_bytes,
        )?;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_CHUNK)
            .write_buffer_size(0)
            .max_frame_size(Some(cfg.max_frame_bytes))
            .max_message_size(Some(cfg.max_message_bytes));
        let max_conns = cfg.max_connections.min(fd_cap()).max(1);
        let now = Instant::now();
        let ctx = Ctx {
            slot: setup.slot,
            count,
            conns: Slab::new(),
            serial: (setup.incarnation as u64) << 40,
            dirty: Vec::new(),
            deferred: VecDeque::new(),
            keys: Vec::new(),
            resumed: Vec::new(),
            registry: Registry::default(),
            bus,
            timers: Timers::default(),
            waker,
            now,
            stats: Stats::default(),
            mio: mio_registry,
            cfg,
        };
        let handler = handler_factory(setup.slot as usize);
        Ok(Worker {
            handler,
            ctx,
            poll,
            listener: Some(listener),
            tls: setup.tls,
            signals,
            scratch: vec![0; SCRATCH],
            ws_config,
            pending_reads: VecDeque::new(),
            mid_events: Events::with_capacity(64),
            max_conns,
            accept_full: false,
            accept_resume: None,
            next_sweep: now + SWEEP,
            stop_deadline: None,
        })
    }

    /// Runs until stopped; returns when every connection is closed or the stop
    /// deadline passed.
    pub(crate) fn run(mut self) -> io::Result<()> {
        self.ctx.link_peers();
        self.guard(None, |h, ctx| h.on_worker_start(ctx));
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.ctx.now = Instant::now();
            for event in events.iter() {
                self.dispatch(event);
            }
            self.turn();
            if let Some(deadline) = self.stop_deadline {
                let idle = self.ctx.conns.is_empty() && !self.handler_busy();
                if idle || self.ctx.now >= deadline {
                    self.ctx.bus.flush(&self.ctx.mio);
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.pending_reads.is_empty()
            || !self.ctx.dirty.is_empty()
            || !self.ctx.deferred.is_empty()
            || !self.ctx.resumed.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut next = self.next_sweep;
        for t in [
            self.ctx.timers.next_due(),
            self.ctx.bus.next_retry(),
            self.accept_resume,
            self.stop_deadline,
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(t);
        }
        let now = Instant::now();
        // Round up to whole milliseconds so a timer is never woken early.
        Some(next.saturating_duration_since(now) + Duration::from_micros(999))
    }

    fn dispatch(&mut self, event: &mio::event::Event) {
        match event.token() {
            LISTENER => self.accept(),
            WAKER => self.guard(None, |h, ctx| h.on_wake(ctx)),
            SIGNALS => self.read_signals(),
            token => match bus::classify(token) {
                Some(BusToken::Listen) => self.ctx.bus.accept(&self.ctx.mio),
                Some(BusToken::Out(slot)) => {
                    if event.is_writable() {
                        self.flush_bus();
                    }
                    if (event.is_readable() || event.is_error())
                        && self.ctx.bus.outbound_event(slot, &self.ctx.mio)
                    {
                        self.ctx.link_peers();
                    }
                }
                Some(BusToken::In(key)) => {
                    let mut items = Vec::new();
                    self.ctx
                        .bus
                        .read(key, &self.ctx.mio, |item| items.push(item));
                    for item in items {
                        self.ctx.apply(item);
                        // A worker message reaches the handler with the
                        // registry as it was when it was sent, before the
                        // records after it are applied.
                        if !self.ctx.deferred.is_empty() {
                            self.run_deferred();
                        }
                    }
                }
                None => {
                    let key = token.0;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read_conn(key, event.is_read_closed() || event.is_error());
                    }
                    if event.is_writable() {
                        self.ctx.mark_dirty(key);
                    }
                }
            },
        }
    }

    /// Everything after the events of one poll: more reads, timers, deferred
    /// callbacks, deadlines, then one write per dirty connection and bus link
    /// (a write pass that handles events arriving meanwhile).
    fn turn(&mut self) {
        for key in std::mem::take(&mut self.ctx.resumed) {
            self.defer_read(key);
        }
        for _ in 0..self.pending_reads.len() {
            if let Some(key) = self.pending_reads.pop_front() {
                if let Some(c) = self.ctx.conns.get_mut(key) {
                    c.read_pending = false;
                }
                self.read_conn(key, true);
            }
        }
        while let Some(id) = self.ctx.timers.pop_due(Instant::now()) {
            self.guard(None, |h, ctx| h.on_timer(ctx, id));
        }
        if self.ctx.now >= self.next_sweep {
            self.sweep();
            self.next_sweep = self.ctx.now + SWEEP;
        }
        if self.accept_resume.is_some_and(|t| t <= self.ctx.now) {
            self.accept_resume = None;
            self.accept();
        }
        self.run_deferred();
        // The bus first: the other workers start their share of a broadcast
        // while this one writes its own.
        self.flush_bus();
        self.flush_conns();
        self.run_deferred();
        self.flush_bus();
        if self.accept_full && self.ctx.conns.len() < self.max_conns {
            self.accept_full = false;
            self.accept();
        }
    }

    /// Runs a callback, catching a panic. With `conn`, a panic closes that
    /// connection (1011) and reports it through `on_error`.
    fn guard(&mut self, conn: Option<ConnId>, f: impl FnOnce(&mut H, &mut Ctx)) {
        let r = catch_unwind(AssertUnwindSafe(|| f(&mut self.handler, &mut self.ctx)));
        if let Err(p) = r {
            let text = panic_text(&p);
            match conn.and_then(|id| self.ctx.local_key(id).map(|k| (id, k))) {
                Some((id, key)) => {
                    log::error!("handler panicked on {id}: {text}; closing it");
                    self.ctx.begin_close(
                        key,
                        1011,
                        "internal error",
                        Some(ConnError::HandlerPanic(text)),
                    );
                }
                None => log::error!("handler panicked: {text}"),
            }
        }
    }

    fn handler_busy(&mut self) -> bool {
        let mut busy = false;
        self.guard(None, |h, ctx| busy = h.busy(ctx));
        busy
    }

    fn run_deferred(&mut self) {
        while let Some(d) = self.ctx.deferred.pop_front() {
            match d {
                Deferred::WorkerMessage(from, data) => {
                    self.guard(None, |h, ctx| h.on_worker_message(ctx, from, data))
                }
                Deferred::Closed(id, error) => {
                    if let Some(e) = error {
                        self.guard(None, |h, ctx| h.on_error(ctx, id, &e));
                    }
                    self.guard(None, |h, ctx| h.on_close(ctx, id));
                }
                Deferred::BufferFull(id) if self.ctx.local_key(id).is_some() => {
                    self.guard(Some(id), |h, ctx| h.on_buffer_full(ctx, id))
                }
                Deferred::BufferDrain(id) if self.ctx.local_key(id).is_some() => {
                    self.guard(Some(id), |h, ctx| h.on_buffer_drain(ctx, id))
                }
                _ => {}
            }
        }
    }

    // ----- accepting -----

    fn accept(&mut self) {
        if self.stop_deadline.is_some() || self.accept_resume.is_some() {
            return;
        }
        loop {
            if self.ctx.conns.len() >= self.max_conns {
                if !self.accept_full {
                    log::warn!("at max_connections ({}): not accepting", self.max_conns);
                }
                self.accept_full = true;
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => self.admit(sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO)) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: pause instead of spinning.
                    log::warn!("accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.accept_resume = Some(self.ctx.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut sock: TcpStream, peer: std::net::SocketAddr) {
        let _ = sock.set_nodelay(true);
        let tls = match &self.tls {
            None => None,
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(session) => Some(Box::new(session)),
                Err(e) => {
                    log::error!("TLS session for {peer}: {e}");
                    return;
                }
            },
        };
        let entry = self.ctx.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("register: {e}");
            return;
        }
        let serial = self.ctx.serial;
        self.ctx.serial += 1;
        let websocket = self.ctx.cfg.protocol == Protocol::WebSocket;
        let state = if websocket {
            State::Head(BytesMut::new())
        } else {
            State::Plain(BytesMut::new())
        };
        let mut conn = Conn::new(sock, peer, serial, state, self.ctx.now);
        // A request head, or a TLS handshake, must come in time.
        if websocket || tls.is_some() {
            conn.deadline = Some(self.ctx.now + self.ctx.cfg.handshake_timeout);
        }
        let handshaking = tls.is_some();
        conn.tls = tls;
        entry.insert(conn);
        // A plain protocol's connection opens at once, or once its TLS
        // handshake is done (see `read_tls_conn`), so that what `on_connect`
        // sends has a session to go through.
        if !websocket && !handshaking {
            self.open_plain(key);
        }
    }

    /// Makes a `text://`, `frame://` or `tcp://` connection visible and calls
    /// `on_connect`.
    pub(super) fn open_plain(&mut self, key: usize) {
        let id = self.ctx.announce(key);
        self.guard(Some(id), |h, ctx| h.on_connect(ctx, id));
    }

    // ----- writing -----

    /// One write per dirty connection, in the order they became dirty.
    ///
    /// Every [`POLL_EVERY`] writes the pass looks for new events and handles
    /// them before going on. A broadcast that arrives while a pass is writing
    /// 1,000 connections then rides along with the rest of this pass and
    /// reaches the connections already written at the same place in the next
    /// one: each receiver waits at most one pass, not the rest of this pass
    /// plus a whole next one. Connections written in this pass and dirty again
    /// go to the next pass, so each still gets one write per pass.
    fn flush_conns(&mut self) {
        let dirty = std::mem::take(&mut self.ctx.dirty);
        for (i, &key) in dirty.iter().enumerate() {
            if i % POLL_EVERY == POLL_EVERY - 1 {
                self.poll_between_writes();
            }
            let Some(c) = self.ctx.conns.get_mut(key) else {
                continue;
            };
            if !c.dirty {
                // Written already: it was closed and its key reused mid-pass.
                continue;
            }
            c.dirty = false;
            match c.flush() {
                Ok(true) => {
                    if c.full {
                        c.full = false;
                        let id = ConnId::new(self.ctx.slot, key as u32, c.serial);
                        self.ctx.deferred.push_back(Deferred::BufferDrain(id));
                    }
                    if c.closing && close_done(c) {
                        self.remove(key);
                    }
                }
                Ok(false) => {}
                Err(e) => self.peer_gone(key, Some(ConnError::Io(e))),
            }
        }
        // Keep the larger allocation for the next pass.
        let mut done = dirty;
        done.clear();
        if done.capacity() > self.ctx.dirty.capacity() {
            done.extend_from_slice(&self.ctx.dirty);
            self.ctx.dirty = done;
        }
    }

    /// Handles whatever became ready since the turn's poll, without waiting,
    /// and passes new bus records on at once.
    fn poll_between_writes(&mut self) {
        let mut events = std::mem::replace(&mut self.mid_events, Events::with_capacity(0));
        if self.poll.poll(&mut events, Some(Duration::ZERO)).is_ok() && !events.is_empty() {
            self.ctx.now = Instant::now();
            for event in events.iter() {
                self.dispatch(event);
            }
            self.flush_bus();
        }
        self.mid_events = events;
    }

    fn flush_bus(&mut self) {
        let broken = self.ctx.bus.flush(&self.ctx.mio);
        if !broken.is_empty() {
            self.ctx.link_peers();
            // The snapshot for a new link is written on the next flush.
        }
    }

    // ----- deadlines, signals, stopping -----

    fn sweep(&mut self) {
        let now = self.ctx.now;
        let idle = self.ctx.cfg.idle_timeout;
        let ping = self.ctx.cfg.ping_interval;
        let mut expired = Vec::new();
        let mut idle_out = Vec::new();
        let mut to_ping = Vec::new();
        for (key, c) in self.ctx.conns.iter_mut() {
            if !c.dirty {
                c.out.release();
            }
            if c.deadline.is_some_and(|d| d <= now) {
                expired.push(key);
            } else if c.open && !c.closing {
                let quiet = now.saturating_duration_since(c.last_read);
                if idle.is_some_and(|i| quiet >= i) {
                    idle_out.push(key);
                } else if ping.is_some_and(|p| quiet >= p)
                    && !c.pinged
                    && matches!(c.state, State::Ws(_))
                {
                    c.pinged = true;
                    to_ping.push(key);
                }
            }
        }
        for key in expired {
            // A head that never completed, or a close the peer never finished.
            self.ctx
                .forget(key, Some(ConnError::Timeout("handshake or close")));
            self.remove(key);
        }
        for key in idle_out {
            self.ctx
                .begin_close(key, 1001, "idle timeout", Some(ConnError::Timeout("idle")));
        }
        for key in to_ping {
            self.ctx.queue(key, codec::ws_frame(codec::OP_PING, b""));
        }
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGUSR2) if report::is_request(&info) => self.answer_status(),
                Ok(Signal::SIGUSR2) => self.log_status(),
                Ok(Signal::SIGIO) if report::is_request(&info) => self.answer_connections(),
                Ok(Signal::SIGIO) => {}
                sig => {
                    log::debug!("worker {} got {sig:?}: stopping", self.ctx.slot);
                    self.stop();
                }
            }
        }
    }

    /// Answers the waiting `status` requests (see [`crate::report`]).
    fn answer_status(&self) {
        let ctx = &self.ctx;
        let name = report::Ask::Status.answer_name(ctx.slot as usize);
        let tokens = report::waiting(&ctx.cfg, Some(report::Ask::Status), &name);
        if tokens.is_empty() {
            return;
        }
        let r = self.status_report();
        for token in tokens {
            report::answer(&ctx.cfg, &name, token, &r);
        }
    }

    /// Answers the waiting `connections` requests (see [`crate::report`]).
    fn answer_connections(&self) {
        let ctx = &self.ctx;
        let name = report::Ask::Connections.answer_name(ctx.slot as usize);
        let tokens = report::waiting(&ctx.cfg, Some(report::Ask::Connections), &name);
        if tokens.is_empty() {
            return;
        }
        let scheme = ctx.cfg.protocol.scheme();
        let conns = ctx
            .conns
            .iter()
            .map(|(key, c)| {
                let id = ConnId::new(ctx.slot, key as u32, c.serial);
                let (protocol, state) = match &c.state {
                    State::Head(_) => ("http", "request"),
                    State::Ws(_) | State::Plain(_) if c.closing => (scheme, "closing"),
                    State::Ws(_) | State::Plain(_) => (scheme, "open"),
                    State::Done => (scheme, "closing"),
                };
                report::ConnRow {
                    id: id.to_string(),
                    protocol: protocol.into(),
                    state: state.into(),
                    local: c.sock.local_addr().map_or("-".into(), |a| a.to_string()),
                    peer: c.peer.to_string(),
                    queued_bytes: c.out.len(),
                    idle_ms: ctx.now.saturating_duration_since(c.last_read).as_millis() as u64,
                    uid: ctx.registry.uid_of(id).map(str::to_string),
                }
            })
            .collect();
        let r = report::ConnsReport {
            pid: std::process::id(),
            conns,
        };
        for token in tokens {
            report::answer(&ctx.cfg, &name, token, &r);
        }
    }

    /// This worker's figures, for `status` and for its log line.
    fn status_report(&self) -> report::WorkerReport {
        let ctx = &self.ctx;
        report::WorkerReport {
            pid: std::process::id(),
            rss_bytes: report::rss_bytes(),
            conns: ctx.conns.len(),
            server_conns: ctx.registry.conn_count(),
            uids: ctx.registry.uid_count(),
            timers: ctx.timers.len(),
            messages_in: ctx.stats.messages_in,
            queued_bytes: ctx.conns.iter().map(|(_, c)| c.out.len()).sum(),
            dropped_sends: ctx.stats.dropped_sends,
            bus_queued_bytes: ctx.bus.queued_bytes(),
            bus_dropped_bytes: ctx.bus.dropped_bytes,
            bus_relinks: ctx.bus.relinks,
        }
    }

    /// One status line (a plain `kill -USR2`): what `status` shows for this
    /// worker.
    fn log_status(&self) {
        let r = self.status_report();
        log::info!(
            "status: pid {} local connections {} (server {}), uids {}, timers {}, \
             messages in {}, queued output {} B, dropped sends {}, bus queued {} B, \
             bus dropped {} B, bus relinks {}",
            r.pid,
            r.conns,
            r.server_conns,
            r.uids,
            r.timers,
            r.messages_in,
            r.queued_bytes,
            r.dropped_sends,
            r.bus_queued_bytes,
            r.bus_dropped_bytes,
            r.bus_relinks,
        );
    }

    /// Graceful stop: no more accepts, every client is closed (1001), and the
    /// loop ends when all are gone or the stop timeout is near.
    fn stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        let grace = self
            .ctx
            .cfg
            .stop_timeout
            .saturating_sub(Duration::from_millis(200));
        self.stop_deadline = Some(self.ctx.now + grace);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.guard(None, |h, ctx| h.on_worker_stop(ctx));
        let keys: Vec<usize> = self.ctx.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let c = &self.ctx.conns[key];
            // A request head still arriving is answered (an upgrade then gets
            // 1001 at once), so a reload loses no request in flight; the
            // handshake timeout and the stop deadline bound the wait.
            if c.open {
                self.ctx
                    .begin_close(key, 1001, "server shutting down", None);
            } else if !c.closing && !matches!(c.state, State::Head(_)) {
                self.remove(key);
            }
        }
    }
}

/// A closing connection whose output is written may go: plain protocols at
/// once, a WebSocket once the peer has answered our close frame.
fn close_done(c: &Conn) -> bool {
    match &c.state {
        State::Ws(ws) => !ws.can_read(),
        _ => true,
    }
}
