//! The brain: worker 0's job table ([`Jobs`]) and store ([`Store`]).
//! Every request that needs the table comes here, from this worker's front
//! directly and from the others' over the bus ([`Msg`]).
//!
//! Rules:
//! - **Durable before said.** Every frame the table produces (a reply, a
//!   `job` push, a `finished` push) waits until every store write the
//!   table produced before it is committed. Writes of one turn go in one
//!   batch; the store's thread commits batches in order (group commit).
//! - **Replies go back through the front** that forwarded the request
//!   ([`Msg::Reply`]); pushes go straight to the connection. Both leave
//!   this worker in the order produced, and the bus keeps that order per
//!   receiving worker, so `watching` comes before its `finished`.
//! - **A new brain** (start, or after worker 0 died) reads the store,
//!   asks every front which executors it holds ([`Msg::Up`] /
//!   [`Msg::Here`]), ends the leases of executors that are gone, and only
//!   then handles requests (those that arrived meanwhile wait, in order).
//!   Each front's marker is answered ([`Msg::Lost`]) behind everything
//!   before it, so the front knows which of its requests the old brain took
//!   with it and answers those `unavailable`.

use crate::config::TasksConfig;
use crate::front::Front;
use crate::jobs::Jobs;
use crate::link::{Executor, Msg, BRAIN};
use crate::live;
use crate::store::Store;
use crate::types::{Out, Request, Tag, Write};
use foreman::{ConnId, Ctx};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a new brain waits for every front's [`Msg::Here`] (a worker
/// that is itself restarting may never answer this brain's `Up`; its
/// executors are gone anyway).
const HERE_WAIT: Duration = Duration::from_secs(3);

/// Wall-clock ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A frame waiting for the batch it depends on.
enum Held {
    /// A reply for request `tag.seq` of a front.
    Reply(Tag, String),
    /// A push to a connection.
    Push(ConnId, String),
    /// The answer to a front's marker.
    Lost(usize, u64),
}

/// The brain before its table is ready.
struct Waking {
    /// Fronts that have not answered `Up`.
    missing: HashSet<usize>,
    /// Executors they hold.
    executors: Vec<Executor>,
    /// Until when to wait.
    deadline: Instant,
    /// Messages that came meanwhile, in order.
    queued: Vec<(usize, Msg)>,
}

/// See the module docs.
pub struct Brain {
    config: Arc<TasksConfig>,
    jobs: Jobs,
    store: Store,
    waking: Option<Waking>,
    /// Writes of this turn, not yet handed to the store.
    writes: Vec<Write>,
    /// The last batch handed to the store.
    submitted: u64,
    /// Frames waiting for their batch, in order.
    held: VecDeque<(u64, Held)>,
    /// Scratch for the table's output.
    out: Vec<Out>,
    /// Executors of other workers, checked for having vanished with their
    /// worker (a killed worker says no `Gone`).
    remote: HashSet<ConnId>,
    /// Every executor joined: a new brain hears of one both from a
    /// front's `Here` and from a `Join` that waited on the bus for it.
    joined: HashSet<ConnId>,
    last_snapshot_ms: u64,
}

impl Brain {
    /// Opens the store and reads it, and asks the fronts for their
    /// executors. Errors stop the worker (the master forks another).
    pub fn start(
        ctx: &mut Ctx,
        front: &mut Front,
        config: Arc<TasksConfig>,
    ) -> Result<Brain, String> {
        let (store, recovered) = Store::open(&config.database, ctx.waker())?;
        log::info!(
            "brain: {} jobs kept, next id {}",
            recovered.jobs.len(),
            recovered.next_id
        );
        let jobs = Jobs::new(config.limits, recovered);
        let missing: HashSet<usize> = (1..ctx.worker_count()).collect();
        if !missing.is_empty() {
            ctx.send_to_workers(Msg::Up.encode());
        }
        let mut brain = Brain {
            config,
            jobs,
            store,
            waking: Some(Waking {
                missing,
                executors: Vec::new(),
                deadline: Instant::now() + HERE_WAIT,
                queued: Vec::new(),
            }),
            writes: Vec::new(),
            submitted: 0,
            held: VecDeque::new(),
            out: Vec::new(),
            remote: HashSet::new(),
            joined: HashSet::new(),
            last_snapshot_ms: 0,
        };
        brain.try_wake(ctx, front);
        Ok(brain)
    }

    /// A message from front `from` (this worker's own front too).
    pub fn handle(&mut self, ctx: &mut Ctx, front: &mut Front, from: usize, msg: Msg) {
        if let Some(w) = self.waking.as_mut() {
            if let Msg::Here { executors, marker } = msg {
                w.missing.remove(&from);
                w.executors.extend(executors);
                w.queued.push((from, Msg::Lost { marker }));
                self.try_wake(ctx, front);
            } else {
                w.queued.push((from, msg));
            }
            return;
        }
        self.apply(ctx, from, msg);
        self.flush(ctx, front);
    }

    fn apply(&mut self, ctx: &mut Ctx, from: usize, msg: Msg) {
        let now = now_ms();
        let out = &mut self.out;
        match msg {
            Msg::Request { seq, conn, request } => {
                let Ok(conn) = conn.parse::<ConnId>() else {
                    return;
                };
                let tag = Tag { conn, seq };
                match request {
                    Request::Submit(s) => self.jobs.submit(now, tag, s, out),
                    Request::Status { job } => self.jobs.status(tag, &job, out),
                    Request::Watch { job } => self.jobs.watch(tag, &job, out),
                    Request::Cancel { job } => self.jobs.cancel(now, tag, &job, out),
                    Request::Stats { queue } => self.jobs.stats(tag, &queue, out),
                    Request::Extend { job } => self.jobs.extend(now, tag, &job, out),
                    Request::Done { job, result } => self.jobs.done(now, tag, &job, result, out),
                    Request::Fail { job, error, retry } => {
                        self.jobs.fail(now, tag, &job, error, retry, out)
                    }
                    // The front answers these itself.
                    Request::Hello(_) | Request::Ping => {}
                }
            }
            Msg::Join(e) => self.join(now, from, e),
            Msg::Gone { conn } => {
                if let Ok(conn) = conn.parse::<ConnId>() {
                    self.remote.remove(&conn);
                    self.joined.remove(&conn);
                    self.jobs.gone(now, conn, out);
                }
            }
            Msg::Page { conn } => {
                if let Ok(conn) = conn.parse::<ConnId>() {
                    ctx.send(conn, live::snapshot(&self.jobs, now));
                }
            }
            Msg::Lost { marker } => {
                let batch = self.batch_needed();
                self.held.push_back((batch, Held::Lost(from, marker)));
            }
            // Only the brain sends these.
            Msg::Up | Msg::Here { .. } | Msg::Reply { .. } => {}
        }
    }

    fn join(&mut self, now: u64, from: usize, e: Executor) {
        let Ok(conn) = e.conn.parse::<ConnId>() else {
            return;
        };
        if !self.joined.insert(conn) {
            return;
        }
        if from != BRAIN {
            self.remote.insert(conn);
        }
        self.jobs
            .join(now, conn, e.queues, e.capacity, &mut self.out);
    }

    /// Ends the waking once every front answered or the wait is over.
    fn try_wake(&mut self, ctx: &mut Ctx, front: &mut Front) {
        let Some(w) = self.waking.as_ref() else {
            return;
        };
        if !w.missing.is_empty() && Instant::now() < w.deadline {
            return;
        }
        let Some(w) = self.waking.take() else {
            return;
        };
        if !w.missing.is_empty() {
            log::warn!(
                "brain: no answer from workers {:?}; their executors count as gone",
                w.missing
            );
        }
        let now = now_ms();
        let alive: HashSet<ConnId> = w
            .executors
            .iter()
            .filter_map(|e| e.conn.parse().ok())
            .collect();
        self.jobs
            .recover_leases(now, &|c| alive.contains(&c), &mut self.out);
        for e in w.executors {
            let from = e.conn.parse::<ConnId>().map_or(BRAIN, |c| c.worker());
            self.join(now, from, e);
        }
        log::info!("brain: ready, {} executors", alive.len());
        for (from, msg) in w.queued {
            self.apply(ctx, from, msg);
        }
        self.flush(ctx, front);
    }

    /// The timer: due times, vanished executors, the page, the wait for
    /// the fronts.
    pub fn tick(&mut self, ctx: &mut Ctx, front: &mut Front) {
        if self.waking.is_some() {
            self.try_wake(ctx, front);
            return;
        }
        let now = now_ms();
        if self.jobs.next_due().is_some_and(|due| due <= now) {
            self.jobs.tick(now, &mut self.out);
        }
        let lost: Vec<ConnId> = self
            .remote
            .iter()
            .copied()
            .filter(|c| !ctx.is_online(*c))
            .collect();
        for conn in lost {
            log::info!("brain: executor {conn} vanished with its worker");
            self.remote.remove(&conn);
            self.joined.remove(&conn);
            self.jobs.gone(now, conn, &mut self.out);
        }
        if self.config.http_listen.is_some()
            && now >= self.last_snapshot_ms + live::INTERVAL_MS
            && self.jobs.take_changed()
        {
            self.last_snapshot_ms = now;
            ctx.send_to_group(live::PAGE_GROUP, live::snapshot(&self.jobs, now), &[]);
        }
        self.flush(ctx, front);
    }

    /// The store committed something (or failed).
    pub fn on_wake(&mut self, ctx: &mut Ctx, front: &mut Front) {
        if let Some(e) = self.store.failed() {
            log::error!(
                "brain: the store failed ({e}); exiting so that a new brain reads it again"
            );
            std::process::exit(1);
        }
        self.release(ctx, front);
    }

    /// Frames are still waiting for the store.
    pub fn busy(&self) -> bool {
        !self.held.is_empty() || !self.writes.is_empty()
    }

    /// The batch a frame produced now depends on.
    fn batch_needed(&self) -> u64 {
        if self.writes.is_empty() {
            self.submitted
        } else {
            self.submitted + 1
        }
    }

    /// Sorts the table's output into this turn's batch and held frames,
    /// hands the batch to the store and sends what may go.
    fn flush(&mut self, ctx: &mut Ctx, front: &mut Front) {
        for o in std::mem::take(&mut self.out) {
            match o {
                Out::Write(w) => self.writes.push(w),
                Out::Reply(tag, frame) => {
                    let b = self.batch_needed();
                    self.held.push_back((b, Held::Reply(tag, frame)));
                }
                Out::Push(conn, frame) => {
                    let b = self.batch_needed();
                    self.held.push_back((b, Held::Push(conn, frame)));
                }
            }
        }
        if !self.writes.is_empty() {
            self.submitted = self.store.write(std::mem::take(&mut self.writes));
        }
        self.release(ctx, front);
    }

    /// Sends every held frame whose batch is committed, in order.
    fn release(&mut self, ctx: &mut Ctx, front: &mut Front) {
        let committed = self.store.committed();
        while self.held.front().is_some_and(|(b, _)| *b <= committed) {
            let Some((_, held)) = self.held.pop_front() else {
                break;
            };
            match held {
                Held::Reply(tag, frame) => {
                    let to = tag.conn.worker();
                    if to == ctx.worker_id() {
                        front.reply(ctx, tag.seq, frame);
                    } else {
                        ctx.send_to_worker(
                            to,
                            Msg::Reply {
                                seq: tag.seq,
                                frame,
                            }
                            .encode(),
                        );
                    }
                }
                Held::Push(conn, frame) => {
                    ctx.send(conn, frame);
                }
                Held::Lost(to, marker) => {
                    if to == ctx.worker_id() {
                        front.lost(ctx, marker);
                    } else {
                        ctx.send_to_worker(to, Msg::Lost { marker }.encode());
                    }
                }
            }
        }
    }
}
