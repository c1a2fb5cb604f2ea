//! A per-worker pool of threads for blocking work.
//!
//! A worker's mio event loop must never block, so a handler hands disk, database or CPU-heavy
//! jobs to its [`Pool`]. Jobs wait in a bounded queue (a full queue is refused at once with
//! [`PoolBusy`], never waited on); `threads` threads named `foreman-blocking-N` run them, each
//! catching its job's panic, push every result onto a shared list and then call
//! [`mio::Waker::wake`]. Wakes may coalesce, so the loop drains all results with
//! [`Pool::take_done`] whenever the waker's token fires. Threads start at the first submit, not
//! when the pool is made, because a worker makes its pool right after `fork`. Shutdown drops
//! the jobs not yet started, waits until a deadline for the running ones, then detaches those
//! still running and discards their late results.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

/// Identifies one job within its worker's pool.
///
/// Ids come from a counter that starts at 0 and grows by one for every accepted job, so they
/// are never reused within a pool and sort in submission order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct JobId(pub(crate) u64);

impl JobId {
    /// Returns the number behind this id.
    pub fn get(&self) -> u64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job#{}", self.0)
    }
}

/// What a job produced: its value, with its type erased, or the text of its panic.
///
/// Use [`JobResult::downcast`] to get the value back as the type the job returned.
pub struct JobResult(Result<Box<dyn Any + Send>, String>);

impl JobResult {
    /// Returns the job's value if it is a `T`.
    ///
    /// Returns `Err(self)` unchanged if the job returned another type or panicked, so the
    /// caller may try another type or read [`JobResult::panic_message`].
    pub fn downcast<T: 'static>(self) -> Result<T, JobResult> {
        match self.0 {
            Ok(value) => value.downcast().map(|v| *v).map_err(|v| JobResult(Ok(v))),
            Err(_) => Err(self),
        }
    }

    /// Returns the panic message if the job panicked, `None` if it returned a value.
    ///
    /// A panic whose payload is neither `&str` nor `String` reads `"non-string panic payload"`.
    pub fn panic_message(&self) -> Option<&str> {
        self.0.as_ref().err().map(String::as_str)
    }
}

impl fmt::Debug for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(_) => f.write_str("JobResult(value)"),
            Err(message) => write!(f, "JobResult(panicked: {message:?})"),
        }
    }
}

/// The pool refused a job: its queue is full, or the pool is shut down.
///
/// The job was dropped without running. The caller should answer "busy" (for HTTP, a 503)
/// and must not retry in a loop: only a job leaving the queue frees a place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolBusy {
    /// Jobs waiting for a thread when this job was refused (0 after shutdown).
    pub queued: usize,
}

impl fmt::Display for PoolBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocking pool busy: {} jobs already queued", self.queued)
    }
}

impl std::error::Error for PoolBusy {}

/// A queued job: its id and the job, boxed to return its value type-erased.
type Task = (JobId, Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>);

/// Results not taken yet; once `closed` by shutdown, threads drop their results instead.
#[derive(Default)]
struct Done {
    closed: bool,
    items: Vec<(JobId, JobResult)>,
}

/// What the pool shares with its threads.
struct Shared {
    /// Set by shutdown: a thread drops, without running, any job it receives after this.
    stop: AtomicBool,
    done: Mutex<Done>,
    waker: Arc<mio::Waker>,
}

/// The started threads and the channels that feed and watch them.
struct Threads {
    jobs: Sender<Task>,
    /// A clone of the threads' receiver, so shutdown can drain jobs never started.
    drain: Receiver<Task>,
    /// Never sent on: every thread holds a `Sender`, so it disconnects when all have exited.
    exited: Receiver<()>,
    handles: Vec<JoinHandle<()>>,
}

/// A worker's pool of threads for blocking jobs; see the [module docs](self).
///
/// The pool belongs to the loop thread: submit from it, and call [`Pool::take_done`] when the
/// waker given to [`Pool::new`] fires. Dropping the pool is [`Pool::shutdown`] with a deadline
/// of now, so it never waits for a job.
pub(crate) struct Pool {
    threads: usize,
    queue: usize,
    next_id: u64,
    pending: usize,
    shared: Arc<Shared>,
    running: Option<Threads>,
}

impl Pool {
    /// Makes a pool of `threads.max(1)` threads and a queue of `queue` jobs, which wakes
    /// `waker` after each result; the waker must be registered with the loop's `mio::Poll`.
    ///
    /// No thread starts here; they start at the first [`Pool::submit`]. A `queue` of 0 accepts
    /// a job only while a thread is idle in that instant.
    pub(crate) fn new(threads: usize, queue: usize, waker: Arc<mio::Waker>) -> Pool {
        let (stop, done) = (AtomicBool::new(false), Mutex::default());
        let shared = Arc::new(Shared { stop, done, waker });
        Pool {
            threads: threads.max(1),
            queue,
            next_id: 0,
            pending: 0,
            shared,
            running: None,
        }
    }

    /// Queues `job` to run on a pool thread and returns the id its result will carry.
    ///
    /// Never blocks: if `queue` jobs are waiting already, if the pool is shut down, or if no
    /// thread could be started (logged as an error), the job is dropped without running and
    /// `Err(PoolBusy)` comes back at once. The first call starts the threads.
    pub(crate) fn submit<T: Send + 'static>(
        &mut self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JobId, PoolBusy> {
        if self.running.is_none() && !self.shared.stop.load(SeqCst) {
            self.start();
        }
        let Some(threads) = &self.running else {
            return Err(PoolBusy { queued: 0 });
        };
        let id = JobId(self.next_id);
        let task: Task = (id, Box::new(move || Box::new(job()) as Box<dyn Any + Send>));
        let busy = |_| PoolBusy {
            queued: threads.jobs.len(),
        };
        threads.jobs.try_send(task).map_err(busy)?;
        self.next_id += 1;
        self.pending += 1;
        Ok(id)
    }

    /// Moves every result that came back since the last call onto the end of `out`, in
    /// completion order.
    ///
    /// Call it each time the waker fires; since wakes coalesce, one call may bring many
    /// results. It may be called at any time and returns at once when nothing is done.
    pub(crate) fn take_done(&mut self, out: &mut Vec<(JobId, JobResult)>) {
        let mut done = lock(&self.shared.done);
        self.pending -= done.items.len();
        out.append(&mut done.items);
    }

    /// Returns how many accepted jobs have results not yet taken: queued, running, or done but
    /// not yet moved out by [`Pool::take_done`]. After shutdown, abandoned jobs no longer count.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Returns how many jobs are waiting for a thread right now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.running.as_ref().map_or(0, |t| t.jobs.len())
    }

    /// Returns whether the threads have been started (by a first submit).
    #[cfg(test)]
    pub(crate) fn started(&self) -> bool {
        self.running.is_some()
    }

    /// Stops taking jobs, drops the queued ones, and waits at most until `deadline` for the
    /// running ones to finish; returns how many jobs were abandoned.
    ///
    /// Abandoned jobs are those never started and those still running at the deadline; their
    /// results never come. Results that did come stay for [`Pool::take_done`]. Threads still
    /// running at the deadline are detached, never joined. Later submits are refused, and a
    /// second call returns 0.
    pub(crate) fn shutdown(&mut self, deadline: Instant) -> usize {
        self.shared.stop.store(true, SeqCst);
        if let Some(threads) = self.running.take() {
            drop(threads.jobs);
            threads.drain.try_iter().for_each(drop);
            // Err(Disconnected) once every thread has exited, Err(Timeout) at the deadline.
            let _ = threads.exited.recv_deadline(deadline);
            for handle in threads.handles.into_iter().filter(|h| h.is_finished()) {
                let _ = handle.join();
            }
        }
        let mut done = lock(&self.shared.done);
        done.closed = true;
        let abandoned = self.pending - done.items.len();
        self.pending = done.items.len();
        abandoned
    }

    /// Spawns the threads; on failure logs it and keeps the ones that started, if any.
    fn start(&mut self) {
        let (jobs, drain) = bounded::<Task>(self.queue);
        let (alive, exited) = bounded::<()>(0);
        let mut handles = Vec::with_capacity(self.threads);
        for n in 0..self.threads {
            let (rx, shared, alive) = (drain.clone(), Arc::clone(&self.shared), alive.clone());
            let spawned = thread::Builder::new()
                .name(format!("foreman-blocking-{n}"))
                .spawn(move || work(rx, shared, alive));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => log::error!("cannot start blocking thread {n}: {e}"),
            }
        }
        if !handles.is_empty() {
            self.running = Some(Threads {
                jobs,
                drain,
                exited,
                handles,
            });
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown(Instant::now());
    }
}

/// A pool thread: runs jobs until the queue closes or the pool stops; `_alive` drops on exit.
fn work(jobs: Receiver<Task>, shared: Arc<Shared>, _alive: Sender<()>) {
    for (id, job) in jobs.iter() {
        if shared.stop.load(SeqCst) {
            break;
        }
        let result = JobResult(catch_unwind(AssertUnwindSafe(job)).map_err(|p| panic_text(&*p)));
        let mut done = lock(&shared.done);
        if done.closed {
            break; // Drops the guard, then `result` outside the lock.
        }
        done.items.push((id, result));
        drop(done);
        if let Err(e) = shared.waker.wake() {
            log::warn!("blocking pool cannot wake the event loop: {e}");
        }
    }
}

/// The text of a panic payload, as `std` prints it.
fn panic_text(payload: &(dyn Any + Send)) -> String {
    let text = payload.downcast_ref::<&str>().copied();
    let text = text.or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    text.unwrap_or("non-string panic payload").to_owned()
}

/// Locks the results; no code panics under this lock, so poison is ignored.
fn lock(done: &Mutex<Done>) -> MutexGuard<'_, Done> {
    done.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;
    use mio::{Events, Poll, Token, Waker};
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(30);

    fn setup(threads: usize, queue: usize) -> (Poll, Pool) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(7)).unwrap());
        (poll, Pool::new(threads, queue, waker))
    }

    /// Waits on the waker, as the loop does, until `n` results are taken; fails after `LONG`.
    fn wait_for(poll: &mut Poll, pool: &mut Pool, n: usize) -> Vec<(JobId, JobResult)> {
        let (deadline, mut events, mut out) =
            (Instant::now() + LONG, Events::with_capacity(8), vec![]);
        loop {
            pool.take_done(&mut out);
            if out.len() >= n {
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {} of {n} results came", out.len());
            if let Err(e) = poll.poll(&mut events, Some(left)) {
                assert_eq!(e.kind(), std::io::ErrorKind::Interrupted);
            }
        }
    }

    /// Submits `job` and returns once a pool thread has started it.
    fn submit_started<T: Send + 'static>(
        pool: &mut Pool,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> JobId {
        let (began, started) = unbounded();
        let id = pool.submit(move || began.send(()).map(|()| job()).unwrap());
        started.recv_timeout(LONG).expect("job never started");
        id.unwrap()
    }

    /// A job that returns 0 once the returned sender sends.
    fn gated() -> (Sender<()>, impl FnOnce() -> i32 + Send + 'static) {
        let (release, gate) = unbounded();
        (release, move || gate.recv().map(|()| 0).unwrap())
    }

    fn value<T: 'static>((_, result): (JobId, JobResult)) -> T {
        result.downcast().unwrap()
    }

    #[test]
    fn thousand_jobs_all_come_back_with_their_own_result() {
        let (mut poll, mut pool) = setup(4, 1000);
        for i in 0..1000u64 {
            let id = pool.submit(move || {
                thread::sleep(Duration::from_millis(1));
                i * 2
            });
            assert_eq!(id, Ok(JobId(i)));
        }
        let mut results = wait_for(&mut poll, &mut pool, 1000);
        results.sort_by_key(|(id, _)| *id);
        for (i, (id, result)) in (0..).zip(results) {
            assert_eq!((id, result.downcast::<u64>().unwrap()), (JobId(i), i * 2));
        }
        assert_eq!(pool.pending(), 0);
    }

    #[test]
    fn full_queue_is_refused_then_all_results_arrive() {
        let (mut poll, mut pool) = setup(1, 2);
        let (release, job) = gated();
        submit_started(&mut pool, job);
        pool.submit(|| 1).unwrap();
        pool.submit(|| 2).unwrap();
        assert_eq!(pool.submit(|| 3), Err(PoolBusy { queued: 2 }));
        assert_eq!((pool.queued(), pool.pending()), (2, 3));
        release.send(()).unwrap();
        let results = wait_for(&mut poll, &mut pool, 3);
        let values: Vec<i32> = results.into_iter().map(value).collect();
        assert_eq!(values, [0, 1, 2]);
    }

    #[test]
    fn panicking_job_reports_its_message_and_pool_keeps_working() {
        let (mut poll, mut pool) = setup(1, 4);
        let bad = pool.submit(|| -> u8 { panic!("boom {}", 7) }).unwrap();
        let (id, result) = wait_for(&mut poll, &mut pool, 1).remove(0);
        let result = result.downcast::<u8>().unwrap_err();
        assert_eq!((id, result.panic_message()), (bad, Some("boom 7")));
        pool.submit(|| 5u8).unwrap();
        assert_eq!(value::<u8>(wait_for(&mut poll, &mut pool, 1).remove(0)), 5);
    }

    #[test]
    fn shutdown_waits_for_a_finishing_job_and_abandons_a_late_one() {
        let (_poll, mut pool) = setup(2, 4);
        let quick = submit_started(&mut pool, || thread::sleep(Duration::from_millis(50)));
        let (release, late) = gated();
        submit_started(&mut pool, late);
        let abandoned = pool.shutdown(Instant::now() + Duration::from_millis(500));
        assert_eq!(abandoned, 1, "only the late job is abandoned");
        let mut out = vec![];
        pool.take_done(&mut out);
        assert_eq!((out.len(), out[0].0, pool.pending()), (1, quick, 0));
        assert_eq!(pool.submit(|| 0), Err(PoolBusy { queued: 0 }));
        release.send(()).unwrap();
        assert_eq!(pool.shutdown(Instant::now()), 0);
    }

    #[test]
    fn shutdown_drops_jobs_never_started() {
        let (_poll, mut pool) = setup(1, 4);
        let (release, job) = gated();
        submit_started(&mut pool, job);
        let token = Arc::new(());
        for _ in 0..2 {
            let token = Arc::clone(&token);
            pool.submit(move || drop(token)).unwrap();
        }
        assert_eq!((pool.shutdown(Instant::now()), pool.pending()), (3, 0));
        assert_eq!(Arc::strong_count(&token), 1, "queued jobs were not dropped");
        release.send(()).unwrap();
    }

    #[test]
    fn threads_start_at_first_submit_and_wrong_downcast_gives_result_back() {
        let (mut poll, mut pool) = setup(0, 1);
        assert!(!pool.started());
        assert_eq!((pool.queued(), pool.pending()), (0, 0));
        let id = pool.submit(|| thread::current().name().map(str::to_owned));
        assert!(pool.started());
        assert_eq!(id.unwrap().to_string(), "job#0");
        let (_, result) = wait_for(&mut poll, &mut pool, 1).remove(0);
        let result = result.downcast::<String>().unwrap_err();
        assert_eq!(result.panic_message(), None);
        assert_eq!(format!("{result:?}"), "JobResult(value)");
        let name = result.downcast::<Option<String>>().unwrap();
        assert_eq!(name.as_deref(), Some("foreman-blocking-0"));
    }
}
