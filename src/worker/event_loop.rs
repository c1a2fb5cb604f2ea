//! The loop: poll, stamp the heartbeat the master watches (see
//! [`crate::shm`]), dispatch each event, then one turn of everything else
//! (reads owed, timers, blocking results, callbacks owed, deadlines, the
//! write pass). Every callback runs through [`Worker::guard`], which lends
//! the core to the handler as a [`Ctx`] and catches panics.

use super::{panic_text, Worker, ALSO_BASE, LISTENER, SIGNALS, SWEEP, WAKER};
use crate::amqp;
use crate::api;
use crate::cluster::bus::{self, BusToken, Inbox};
use crate::cluster::node;
use crate::config::MAX_ALSO;
use crate::core::Deferred;
use crate::ctx::Ctx;
use crate::error::ConnError;
use crate::handler::Handler;
use crate::id::ConnId;
use mio::Events;
use mio::Token;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

impl<H: Handler> Worker<H> {
    /// Runs until stopped; returns when every connection is closed (and
    /// the blocking jobs are done) or the stop deadline passed.
    pub(crate) fn run(mut self) -> io::Result<()> {
        self.core.link_peers();
        // The bridge starts once the registry replica is filled, within
        // this long at most (a peer may be dead and respawning).
        let amqp_by = Instant::now() + Duration::from_secs(2);
        self.guard(None, |h, ctx| h.on_worker_start(ctx));
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            // Asleep, a worker still takes a connection left to it at once.
            let sleeps = self.balance && timeout != Some(Duration::ZERO);
            if sleeps {
                self.core.board.polling(self.core.slot as usize, true);
            }
            let polled = self.poll.poll(&mut events, timeout);
            if sleeps {
                self.core.board.polling(self.core.slot as usize, false);
            }
            // Back in the loop: the master judges stuck workers by this.
            self.core.board.beat(self.core.slot as usize);
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.core.now = Instant::now();
            for event in events.iter() {
                self.dispatch(event);
            }
            if self.core.cfg.amqp.is_some() && self.core.amqp.is_none() {
                self.core.start_amqp(amqp_by);
            }
            self.turn();
            if let Some(deadline) = self.stop_deadline {
                let idle = self.core.conns.is_empty()
                    && self.core.pool.pending() == 0
                    && !self.handler_busy();
                if idle || self.core.now >= deadline {
                    self.core.pool.shutdown(deadline.max(self.core.now));
                    self.core.bus.flush(&self.core.mio);
                    self.core.cluster_leave();
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.pending_reads.is_empty()
            || self.core.bus.has_pending()
            || !self.core.dirty.is_empty()
            || !self.core.deferred.is_empty()
            || !self.core.resumed.is_empty()
            || self.core.cluster.as_ref().is_some_and(|c| c.has_unread())
            || self.core.amqp.as_ref().is_some_and(|a| a.has_events())
        {
            return Some(Duration::ZERO);
        }
        let mut next = self.next_sweep;
        for t in [
            self.core.timers.next_due(),
            self.core.bus.next_retry(),
            self.accept_resume,
            self.next_recheck(),
            self.stop_deadline,
            self.core.next_redial(),
            self.core.cluster.as_ref().map(|c| c.next_due()),
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(t);
        }
        let now = Instant::now();
        // An idle loop still turns (and stamps its heartbeat) four times per
        // handler_timeout, so that idle is never taken for stuck.
        if let Some(limit) = self.core.cfg.handler_timeout {
            next = next.min(now + limit / 4);
        }
        // Round up to whole milliseconds so a timer is never woken early.
        Some(next.saturating_duration_since(now) + Duration::from_micros(999))
    }

    pub(super) fn dispatch(&mut self, event: &mio::event::Event) {
        match event.token() {
            LISTENER => self.accept_from(0),
            WAKER => {
                self.core.collect_jobs();
                self.amqp_events();
                self.guard(None, |h, ctx| h.on_wake(ctx));
            }
            SIGNALS => self.read_signals(),
            Token(t) if (ALSO_BASE..ALSO_BASE + MAX_ALSO).contains(&t) => {
                self.accept_from(t - ALSO_BASE + 1)
            }
            node::CMD | node::SUB => self.core.cluster_event(event.token(), event),
            token => match bus::classify(token) {
                Some(BusToken::Listen) => self.core.bus.accept(&self.core.mio),
                Some(BusToken::Out(slot)) => {
                    if event.is_writable() {
                        self.flush_bus();
                    }
                    if (event.is_readable() || event.is_error())
                        && self.core.bus.outbound_event(slot, &self.core.mio)
                    {
                        self.core.link_peers();
                    }
                }
                Some(BusToken::In(key)) => self.read_bus(key),
                None => self.conn_event(token.0, event),
            },
        }
    }

    /// Reads one inbound bus link (within its budget) and applies what it
    /// brought, in order.
    fn read_bus(&mut self, key: usize) {
        let mut items = Vec::new();
        self.core
            .bus
            .read(key, &self.core.mio, |item| items.push(item));
        for item in items {
            if let Inbox::Gap(slot, missed) = item {
                // Before anything the sender said after the gap.
                log::warn!("bus: {missed} records from worker {slot} were lost; calling on_gap");
                self.guard(None, |h, ctx| h.on_gap(ctx, slot as usize));
                continue;
            }
            self.core.apply(item);
            // A worker message reaches the handler with the
            // registry as it was when it was sent, before the
            // records after it are applied.
            if !self.core.deferred.is_empty() {
                self.run_deferred();
            }
        }
    }

    fn conn_event(&mut self, key: usize, event: &mio::event::Event) {
        let Some(c) = self.core.conns.get(key) else {
            return;
        };
        if c.life.is_connecting() {
            if let Some(id) = self.core.connect_done(key) {
                self.opened(key, id);
            }
            match self.core.conns.get(key) {
                Some(c) if !c.life.is_connecting() && c.io.is_some() => {}
                _ => return,
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_conn(key, event.is_read_closed() || event.is_error());
        }
        if event.is_writable() {
            self.core.mark_dirty(key);
        }
    }

    /// Everything after the events of one poll: more reads, timers, deferred
    /// callbacks, deadlines, then one write per dirty connection and bus link
    /// (a write pass that handles events arriving meanwhile).
    fn turn(&mut self) {
        for key in std::mem::take(&mut self.core.resumed) {
            self.defer_read(key);
        }
        for key in self.core.bus.take_pending() {
            self.read_bus(key);
        }
        for _ in 0..self.pending_reads.len() {
            if let Some(key) = self.pending_reads.pop_front() {
                if let Some(c) = self.core.conns.get_mut(key) {
                    c.marks.read_pending = false;
                }
                self.read_conn(key, true);
            }
        }
        while let Some(id) = self.core.timers.pop_due(Instant::now()) {
            self.guard(None, |h, ctx| h.on_timer(ctx, id));
        }
        if self.core.now >= self.next_sweep {
            self.sweep();
            self.next_sweep = self.core.now + SWEEP;
        }
        if self.accept_resume.is_some_and(|t| t <= self.core.now) {
            self.accept_resume = None;
            self.accept();
        }
        self.recheck_deferred();
        self.core.cluster_tick();
        self.amqp_events();
        self.run_deferred();
        self.core.run_redials();
        // The bus first: the other workers start their share of a broadcast
        // while this one writes its own.
        self.flush_bus();
        self.flush_conns();
        self.run_deferred();
        self.flush_bus();
        self.core.cluster_flush();
        if self.accept_full && self.core.conns.len() < self.max_conns {
            self.accept_full = false;
            self.accept();
        }
        self.publish_load();
    }

    /// Handles what the RabbitMQ bridge brought (at most
    /// [`amqp::EVENTS_PER_TURN`]; the rest next turn): push messages are
    /// parsed and delivered like `/api/publish`, then acked (malformed ones
    /// rejected without requeue); app messages go to `on_amqp_message`.
    fn amqp_events(&mut self) {
        for _ in 0..amqp::EVENTS_PER_TURN {
            let Some(ev) = self.core.amqp.as_mut().and_then(|b| b.next_event()) else {
                return;
            };
            match ev {
                amqp::Event::Push(id, body) => match api::parse_publish(&body) {
                    Ok(p) => {
                        let (_, complete) = api::deliver(&mut Ctx::new(&mut self.core), &p);
                        if !complete {
                            log::warn!(
                                "amqp: {id} could not reach every worker or node \
                                 (too large for the bus, or the cluster is down); acked anyway"
                            );
                        }
                        if let Some(b) = self.core.amqp.as_mut() {
                            b.ack(id);
                        }
                    }
                    Err(e) => {
                        log::warn!("amqp: rejecting {id} from the push queue: {e}");
                        if let Some(b) = self.core.amqp.as_mut() {
                            b.reject(id, false);
                        }
                    }
                },
                amqp::Event::App(msg) => self.guard(None, |h, ctx| h.on_amqp_message(ctx, &msg)),
                amqp::Event::Confirmed(seq, ok) => {
                    self.guard(None, |h, ctx| h.on_amqp_confirm(ctx, seq, ok))
                }
                amqp::Event::Link(_) => {}
            }
        }
    }

    /// Runs a callback with the core lent as a [`Ctx`], catching a panic.
    /// With `conn`, a panic closes that connection (1011) and reports it
    /// through `on_error`.
    pub(super) fn guard(&mut self, conn: Option<ConnId>, f: impl FnOnce(&mut H, &mut Ctx)) {
        let handler = &mut self.handler;
        let core = &mut self.core;
        let r = catch_unwind(AssertUnwindSafe(|| f(handler, &mut Ctx::new(core))));
        if let Err(p) = r {
            let text = panic_text(&p);
            match conn.and_then(|id| self.core.key_of(id).map(|k| (id, k))) {
                Some((id, key)) => {
                    log::error!("handler panicked on {id}: {text}; closing it");
                    self.core.begin_close(
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

    /// A connection opened: `on_connect`, then what was held for it while
    /// it was down; a worker that is stopping closes it at once.
    pub(super) fn opened(&mut self, key: usize, id: ConnId) {
        self.guard(Some(id), |h, ctx| h.on_connect(ctx, id));
        self.core.release_held(key);
        if self.stop_deadline.is_some() {
            self.core
                .begin_close(key, 1001, "server shutting down", None);
        }
    }

    fn handler_busy(&mut self) -> bool {
        let mut busy = false;
        self.guard(None, |h, ctx| busy = h.busy(ctx));
        busy
    }

    pub(super) fn run_deferred(&mut self) {
        while let Some(d) = self.core.deferred.pop_front() {
            match d {
                Deferred::WorkerMessage(from, data) => {
                    self.guard(None, |h, ctx| h.on_worker_message(ctx, from, data))
                }
                Deferred::Closed(id, error, peer) => {
                    if let Some(e) = error {
                        self.guard(None, |h, ctx| h.on_error(ctx, id, &e));
                    }
                    self.guard(None, |h, ctx| h.on_close(ctx, id, peer.as_ref()));
                }
                Deferred::Failed(id, e) => self.guard(None, |h, ctx| h.on_error(ctx, id, &e)),
                Deferred::BufferFull(id) if self.core.local_key(id).is_some() => {
                    self.guard(Some(id), |h, ctx| h.on_buffer_full(ctx, id))
                }
                Deferred::BufferDrain(id) if self.core.local_key(id).is_some() => {
                    self.guard(Some(id), |h, ctx| h.on_buffer_drain(ctx, id))
                }
                Deferred::JobDone(job, result) => {
                    self.guard(None, |h, ctx| h.on_job_done(ctx, job, result))
                }
                _ => {}
            }
        }
    }
}
