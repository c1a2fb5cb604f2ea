//! A worker's store threads: the [`Writer`] the worker holds, the write
//! thread that group-commits, the read thread beside it, and the [`Sink`]
//! they (and a cluster's feed) hand events back through. What they run on
//! is a [`Backend`]; see `store.rs` for the contract.
//!
//! # Back-pressure
//!
//! The channels are unbounded, so the loop never blocks on a submit; the
//! worker bounds the queue itself with [`Writer::pending`] (jobs submitted
//! and not yet answered) against `max_queue`.

use crate::store::{now_ms, Answer, Backend, Event, Job, Settings, Store, Work, Write};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Attempts at a failing batch before its jobs are answered `Err`.
pub const ATTEMPTS: u32 = 3;

/// What the threads of a [`Writer`] share to hand events to the loop.
#[derive(Clone)]
pub struct Sink {
    /// Events out.
    events: Sender<Event>,
    /// The loop's waker, shared by the threads.
    notify: Arc<dyn Fn() + Send + Sync>,
    /// Jobs submitted and not yet answered.
    pending: Arc<AtomicUsize>,
}

impl Sink {
    /// Queues an event (false once the [`Writer`] is gone); the caller
    /// wakes the loop with [`Sink::wake`] after a burst.
    pub fn send(&self, event: Event) -> bool {
        self.events.send(event).is_ok()
    }

    /// Events queued and not yet taken by the loop.
    pub fn queued(&self) -> usize {
        self.events.len()
    }

    /// Wakes the loop.
    pub fn wake(&self) {
        (self.notify)()
    }

    /// Hands back the answers of finished jobs, then counts them done and
    /// wakes the loop.
    fn answer(&self, done: impl IntoIterator<Item = (u64, Result<Answer, String>)>) -> bool {
        let mut n = 0;
        for (id, result) in done {
            n += 1;
            if !self.send(Event::Done { id, result }) {
                return false;
            }
        }
        self.pending.fetch_sub(n, Ordering::AcqRel);
        self.wake();
        true
    }
}

/// A worker's handle on its store threads.
pub struct Writer {
    /// Writes in; `None` once dropping.
    writes: Option<Sender<Job>>,
    /// Other work in; `None` once dropping.
    reads: Option<Sender<Job>>,
    /// Events out.
    events: Receiver<Event>,
    /// Jobs submitted and not yet answered.
    pending: Arc<AtomicUsize>,
    /// The write and read threads, joined on drop (they finish what is
    /// queued).
    threads: Vec<JoinHandle<()>>,
    /// Tells the cluster feed's thread to end (it is not joined: it may be
    /// waiting for Redis for a read timeout).
    stop: Arc<AtomicBool>,
    /// For the cluster feed's thread.
    sink: Sink,
}

impl Writer {
    /// Starts the store threads for worker slot `worker`, from the config;
    /// `notify` runs whenever events are queued (the worker passes its
    /// waker). A failure to open the SQLite database is logged and ends the
    /// worker process (the master replaces it). On a cluster whose Redis is
    /// down, writes are answered `Err` until it is up, and
    /// [`Event::Opened`] comes once it is (so then `Done` events may come
    /// first); otherwise `Opened` is the first event.
    pub fn spawn(
        config: &crate::config::SyncConfig,
        worker: usize,
        notify: impl Fn() + Send + 'static,
    ) -> std::io::Result<Writer> {
        let settings = Settings::from_config(config);
        let notify = Mutex::new(notify);
        let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Ok(f) = notify.lock() {
                f()
            }
        });
        match &config.server.cluster {
            Some(cluster) => {
                let writer = {
                    let (cluster, settings) = (cluster.clone(), settings.clone());
                    move || crate::store_redis::RedisStore::new(&cluster, &settings)
                };
                let w = Writer::start(writer, settings.max_batch, worker, notify)?;
                crate::store_redis::spawn_feed(cluster, worker, w.sink.clone(), w.stop.clone())?;
                Ok(w)
            }
            None => {
                let (path, busy) = (config.db_path.clone(), config.busy_timeout);
                let s = settings.clone();
                let open = move || {
                    Store::open(&path, busy, s.clone())
                        .map_err(|e| format!("{}: {e}", path.display()))
                };
                Writer::start(open, settings.max_batch, worker, notify)
            }
        }
    }

    /// Starts the write and read threads on stores made by `open` (each
    /// thread its own, made in that thread, so not even opening runs on the
    /// loop).
    pub fn start<B: Backend + 'static>(
        open: impl Fn() -> Result<B, String> + Send + Clone + 'static,
        max_batch: usize,
        worker: usize,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Writer> {
        let (write_tx, write_rx) = crossbeam_channel::unbounded::<Job>();
        let (read_tx, read_rx) = crossbeam_channel::unbounded::<Job>();
        let (event_tx, event_rx) = crossbeam_channel::unbounded();
        // Sent to (or closed) by the write thread once it has tried to open its store,
        // so that reads are answered after `Opened` when the store is up.
        // It carries the epoch the write thread read, if it could.
        let (tried_tx, tried_rx) = crossbeam_channel::bounded::<String>(1);
        let pending = Arc::new(AtomicUsize::new(0));
        let sink = Sink {
            events: event_tx,
            notify,
            pending: pending.clone(),
        };
        let mut threads = Vec::new();
        let (s, o) = (sink.clone(), open.clone());
        let r = sink.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("sync-write-{worker}"))
                .spawn(move || write_loop(opened(o), write_rx, max_batch, s, tried_tx))?,
        );
        threads.push(
            std::thread::Builder::new()
                .name(format!("sync-read-{worker}"))
                .spawn(move || {
                    let known = tried_rx.recv().ok();
                    read_loop(opened(open), known, read_rx, r)
                })?,
        );
        Ok(Writer {
            writes: Some(write_tx),
            reads: Some(read_tx),
            events: event_rx,
            pending,
            threads,
            stop: Arc::new(AtomicBool::new(false)),
            sink,
        })
    }

    /// Queues a job; false if the thread is gone. Never blocks: the worker
    /// bounds the queue with [`Writer::pending`].
    pub fn submit(&self, job: Job) -> bool {
        let to = match job.work {
            Work::Write(_) => &self.writes,
            _ => &self.reads,
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        let sent = to.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Jobs submitted and not yet answered (their answers may wait in
    /// [`Writer::ready`]).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Events queued since the last call.
    pub fn ready(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }
}

impl Drop for Writer {
    /// Lets the threads finish the queued jobs, then joins them; tells the
    /// feed to end.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.writes = None;
        self.reads = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A thread's store, or the end of the worker process: a store that cannot
/// even be made (a SQLite file that does not open) leaves nothing to serve.
fn opened<B: Backend>(open: impl FnOnce() -> Result<B, String>) -> B {
    match open() {
        Ok(store) => store,
        Err(e) => {
            log::error!("sync: cannot open the store: {e}");
            std::process::exit(1);
        }
    }
}

/// How long the write thread waits before it asks a store that is down
/// (Redis at start) for its epoch again.
const REOPEN_PAUSE: Duration = Duration::from_millis(250);

/// The write thread: the epoch first, then batches of writes, each
/// answered after its commit.
fn write_loop<B: Backend>(
    mut store: B,
    jobs: Receiver<Job>,
    max_batch: usize,
    sink: Sink,
    tried: Sender<String>,
) {
    let mut tried = Some(tried);
    let mut open = false;
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        if !open {
            match store.epoch() {
                Ok(epoch) => {
                    // Said first, so that reads are answered after it.
                    open = sink.send(Event::Opened {
                        epoch: epoch.clone(),
                    });
                    if let Some(t) = tried.take() {
                        let _ = t.send(epoch);
                    }
                    if !open {
                        return;
                    }
                    sink.wake();
                }
                Err(e) => log::warn!("sync store: cannot read the epoch: {}", e.message),
            }
            drop(tried.take());
        }
        let first = match open {
            true => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
            false => jobs.recv_timeout(REOPEN_PAUSE),
        };
        match first {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = match open {
            true => run_batch(&mut store, &batch),
            false => Err("the store is not reachable".to_string()),
        };
        let answers: Vec<_> = match results {
            Ok(answers) => batch.drain(..).map(|j| j.id).zip(answers).collect(),
            Err(e) => batch.drain(..).map(|j| (j.id, Err(e.clone()))).collect(),
        };
        if !sink.answer(answers) {
            return;
        }
        // The history is gone: read the epoch again (a new one) and say it,
        // before anything else is written.
        open &= !store.lost();
    }
}

/// Runs one batch with retries: an answer per job, in order. Work other
/// than writes (never routed here) is read.
fn run_batch<B: Backend>(
    store: &mut B,
    batch: &[Job],
) -> Result<Vec<Result<Answer, String>>, String> {
    let writes: Vec<Write> = batch
        .iter()
        .filter_map(|j| match &j.work {
            Work::Write(w) => Some(w.clone()),
            _ => None,
        })
        .collect();
    let mut outcomes = Vec::new();
    if !writes.is_empty() {
        let mut attempt = 0;
        outcomes = loop {
            match store.write(&writes, now_ms()) {
                Ok(outcomes) => break outcomes,
                Err(f) => {
                    attempt += 1;
                    log::warn!(
                        "sync store: a batch of {} writes failed (try {attempt}): {}",
                        writes.len(),
                        f.message
                    );
                    if !f.retry || attempt >= ATTEMPTS {
                        return Err(f.message);
                    }
                    std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                }
            }
        };
    }
    let mut outcomes = outcomes.into_iter();
    Ok(batch
        .iter()
        .map(|j| match &j.work {
            Work::Write(_) => outcomes
                .next()
                .map(Answer::Write)
                .ok_or_else(|| "the store answered fewer writes than it was given".to_string()),
            work => store.read(work).map_err(|f| f.message),
        })
        .collect())
}

/// The read thread: one job at a time, each in one consistent view.
fn read_loop<B: Backend>(mut store: B, known: Option<String>, jobs: Receiver<Job>, sink: Sink) {
    // The epoch its calls are checked against (Redis): the one the write
    // thread read and said, so that a history emptied before this thread's
    // first call is found lost, not adopted. If the write thread could not
    // read it (Redis down), the store reads it on its first call instead.
    match known {
        Some(epoch) => store.adopt_epoch(&epoch),
        None => {
            let _ = store.epoch();
        }
    }
    while let Ok(job) = jobs.recv() {
        let mut done = vec![(job.id, read(&mut store, &job.work, &sink))];
        // Whatever else is waiting goes out with one wake-up.
        while done.len() < 64 {
            match jobs.try_recv() {
                Ok(job) => done.push((job.id, read(&mut store, &job.work, &sink))),
                Err(_) => break,
            }
        }
        if !sink.answer(done) {
            return;
        }
    }
}

/// One read. If it finds the history gone (the write thread may have found
/// it first, or no write comes to find it), the store reads the epoch again
/// and says it before the read is answered, under the new epoch.
fn read<B: Backend>(store: &mut B, work: &Work, sink: &Sink) -> Result<Answer, String> {
    match store.read(work) {
        Err(_) if store.lost() => match store.epoch() {
            Ok(epoch) => {
                let _ = sink.send(Event::Opened { epoch });
                store.read(work).map_err(|f| f.message)
            }
            Err(e) => Err(e.message),
        },
        other => other.map_err(|f| f.message),
    }
}
