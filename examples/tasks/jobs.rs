//! The job table: every kept job, the ready queues, the executors and
//! their leases, the due times; the rules of `shared/tasks-protocol.md`
//! ("Jobs", "Submitters", "Executors") as a state machine without I/O.
//! Only the brain (worker 0) holds one. Every method appends what must
//! happen to `out` ([`Out`]), in order; times are wall ms passed in.
//!
//! Indexes, so that no event scans every job: a ready set per queue
//! ordered by (priority first, then the order jobs became queued), one set
//! of due times (delays, backoffs, leases, retention), unique keys per
//! queue, leases per connection, watches per connection, counts per queue
//! and state. Dispatch costs O(queues x executors) per job handed out.

use crate::reply;
use crate::request::Code;
use crate::types::{
    job_no, Counts, JobNo, JobRow, JobUpdate, JobView, Limits, Out, Recovered, State, Submit, Tag,
    Write,
};
use foreman::ConnId;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One kept job.
struct Job {
    queue: String,
    state: State,
    priority: u8,
    /// Dropped once the job is final.
    payload: Option<String>,
    attempts: u32,
    max_attempts: u32,
    timeout_ms: u64,
    unique: Option<String>,
    created_ms: u64,
    updated_ms: u64,
    due_ms: u64,
    ready_seq: u64,
    result: Option<String>,
    error: Option<String>,
    lease: Option<ConnId>,
    /// Connections owed one `finished` each (one entry per `watch`).
    watchers: Vec<ConnId>,
}

/// An executor that said `hello`.
struct Exec {
    queues: Vec<String>,
    capacity: u32,
    in_use: u32,
    /// When it was last given a job (0: never), on the give counter.
    last_given: u64,
    /// The order it joined in.
    joined: u64,
}

/// Ready jobs of one queue: (priority, highest first; became-queued
/// order; id).
type Ready = BTreeSet<Place>;

/// A ready job's place in line.
type Place = (Reverse<u8>, u64, JobNo);

/// See the module docs.
pub struct Jobs {
    limits: Limits,
    jobs: BTreeMap<JobNo, Job>,
    ready: HashMap<String, Ready>,
    due: BTreeSet<(u64, JobNo)>,
    uniques: HashMap<(String, String), JobNo>,
    execs: HashMap<ConnId, Exec>,
    /// Jobs leased per connection (also of connections not joined yet
    /// after a restart).
    leases: HashMap<ConnId, HashSet<JobNo>>,
    /// Jobs each connection watches.
    watching: HashMap<ConnId, HashSet<JobNo>>,
    counts: HashMap<String, Counts>,
    /// Leased jobs read back without a readable connection.
    orphans: Vec<JobNo>,
    next_id: JobNo,
    next_seq: u64,
    gives: u64,
    joins: u64,
    changed: bool,
}

fn err(tag: Tag, code: Code, message: &str, out: &mut Vec<Out>) {
    out.push(Out::Reply(tag, reply::error(code.as_str(), message)));
}

/// The JSON text of a string.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

impl Jobs {
    /// The table as the store held it at start. Jobs that were `leased`
    /// stay leased to their `lease_conn` until [`Jobs::recover_leases`].
    pub fn new(limits: Limits, recovered: Recovered) -> Jobs {
        let mut t = Jobs {
            limits,
            jobs: BTreeMap::new(),
            ready: HashMap::new(),
            due: BTreeSet::new(),
            uniques: HashMap::new(),
            execs: HashMap::new(),
            leases: HashMap::new(),
            watching: HashMap::new(),
            counts: HashMap::new(),
            orphans: Vec::new(),
            next_id: recovered.next_id.max(1),
            next_seq: 1,
            gives: 0,
            joins: 0,
            changed: true,
        };
        for r in recovered.jobs {
            t.next_id = t.next_id.max(r.id + 1);
            t.next_seq = t.next_seq.max(r.ready_seq + 1);
            let lease = r
                .lease_conn
                .as_deref()
                .and_then(|c| c.parse::<ConnId>().ok());
            let job = Job {
                queue: r.queue,
                state: r.state,
                priority: r.priority,
                payload: (!r.state.is_final()).then_some(r.payload),
                attempts: r.attempts,
                max_attempts: r.max_attempts,
                timeout_ms: r.timeout_ms,
                unique: r.unique,
                created_ms: r.created_ms,
                updated_ms: r.updated_ms,
                due_ms: r.due_ms,
                ready_seq: r.ready_seq,
                result: r.result,
                error: r.error,
                lease,
                watchers: Vec::new(),
            };
            t.count(&job.queue, job.state, 1);
            if let Some(u) = &job.unique {
                t.uniques.insert((job.queue.clone(), u.clone()), r.id);
            }
            match job.state {
                State::Queued => {
                    t.ready_of(&job.queue)
                        .insert((Reverse(job.priority), job.ready_seq, r.id));
                }
                State::Leased => {
                    t.due.insert((job.due_ms, r.id));
                    match lease {
                        Some(conn) => {
                            t.leases.entry(conn).or_default().insert(r.id);
                        }
                        // Without a readable connection it counts as lost.
                        None => t.orphans.push(r.id),
                    }
                }
                _ => {
                    t.due.insert((job.due_ms, r.id));
                }
            }
            t.jobs.insert(r.id, job);
        }
        t
    }

    /// After a restart: every job leased to a connection for which `alive`
    /// is false counts as if its executor had closed (`queued`, or `dead`
    /// with `"executor_lost"` on the last attempt). Leases of connections
    /// still alive stay, with their stored deadlines, and count against
    /// those executors' capacity when they [`Jobs::join`].
    pub fn recover_leases(
        &mut self,
        now_ms: u64,
        alive: &dyn Fn(ConnId) -> bool,
        out: &mut Vec<Out>,
    ) {
        for id in std::mem::take(&mut self.orphans) {
            self.lease_ended(now_ms, id, "executor_lost", out);
        }
        let dead: Vec<ConnId> = self.leases.keys().copied().filter(|c| !alive(*c)).collect();
        for conn in dead {
            self.leases_lost(now_ms, conn, out);
        }
        self.dispatch(now_ms, out);
    }

    /// `submit`: `accepted` (or the duplicate's id and state).
    pub fn submit(&mut self, now_ms: u64, tag: Tag, req: Submit, out: &mut Vec<Out>) {
        if let Some(key) = &req.unique {
            if let Some(&id) = self.uniques.get(&(req.queue.clone(), key.clone())) {
                if let Some(j) = self.jobs.get(&id) {
                    out.push(Out::Reply(tag, reply::accepted(id, j.state, true)));
                    return;
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let (state, due_ms, ready_seq) = if req.delay_ms > 0 {
            (State::Scheduled, now_ms.saturating_add(req.delay_ms), 0)
        } else {
            let s = self.next_seq;
            self.next_seq += 1;
            (State::Queued, 0, s)
        };
        let job = Job {
            queue: req.queue,
            state,
            priority: req.priority,
            payload: Some(req.payload),
            attempts: 0,
            max_attempts: req.max_attempts,
            timeout_ms: req.timeout_ms.unwrap_or(self.limits.default_timeout_ms),
            unique: req.unique,
            created_ms: now_ms,
            updated_ms: now_ms,
            due_ms,
            ready_seq,
            result: None,
            error: None,
            lease: None,
            watchers: Vec::new(),
        };
        if let Some(u) = &job.unique {
            self.uniques.insert((job.queue.clone(), u.clone()), id);
        }
        self.count(&job.queue, state, 1);
        if state == State::Queued {
            self.ready_of(&job.queue)
                .insert((Reverse(job.priority), ready_seq, id));
        } else {
            self.due.insert((due_ms, id));
        }
        out.push(Out::Write(Write::Insert(row(id, &job))));
        out.push(Out::Reply(tag, reply::accepted(id, state, false)));
        self.jobs.insert(id, job);
        self.changed = true;
        self.dispatch(now_ms, out);
    }

    /// The kept job a client's id names.
    fn find(&self, job: &str) -> Option<JobNo> {
        job_no(job).filter(|id| self.jobs.contains_key(id))
    }

    /// `status`: `job {...}` or `not_found`.
    pub fn status(&mut self, tag: Tag, job: &str, out: &mut Vec<Out>) {
        match self.find(job).and_then(|id| self.view(id)) {
            Some(v) => out.push(Out::Reply(tag, reply::status(&v))),
            None => err(tag, Code::NotFound, "no such job is kept", out),
        }
    }

    /// `watch`: `watching`, then one `finished` push to `tag.conn`.
    pub fn watch(&mut self, tag: Tag, job: &str, out: &mut Vec<Out>) {
        let Some(id) = self.find(job) else {
            return err(tag, Code::NotFound, "no such job is kept", out);
        };
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        out.push(Out::Reply(tag, reply::watching(id, j.state)));
        if j.state.is_final() {
            out.push(Out::Push(tag.conn, finished(id, j)));
        } else {
            j.watchers.push(tag.conn);
            self.watching.entry(tag.conn).or_default().insert(id);
        }
    }

    /// `cancel`.
    pub fn cancel(&mut self, now_ms: u64, tag: Tag, job: &str, out: &mut Vec<Out>) {
        let Some(id) = self.find(job) else {
            return err(tag, Code::NotFound, "no such job is kept", out);
        };
        let Some(state) = self.jobs.get(&id).map(|j| j.state) else {
            return;
        };
        match state {
            State::Leased => err(tag, Code::Busy, "the job is leased to an executor", out),
            State::Succeeded | State::Dead => {
                err(tag, Code::AlreadyFinished, "the job has finished", out)
            }
            State::Cancelled => out.push(Out::Reply(tag, reply::cancelled(id))),
            State::Scheduled | State::Queued | State::Retry => {
                self.leave_state(id);
                self.finish(now_ms, id, State::Cancelled, None, None, out);
                out.push(Out::Reply(tag, reply::cancelled(id)));
            }
        }
    }

    /// `stats`.
    pub fn stats(&mut self, tag: Tag, queue: &str, out: &mut Vec<Out>) {
        let counts = self.counts.get(queue).copied().unwrap_or_default();
        out.push(Out::Reply(tag, reply::stats(queue, &counts)));
    }

    /// An executor said `hello` (and got `welcome`): it counts from now.
    pub fn join(
        &mut self,
        now_ms: u64,
        exec: ConnId,
        queues: Vec<String>,
        capacity: u32,
        out: &mut Vec<Out>,
    ) {
        self.joins += 1;
        let in_use = self.leases.get(&exec).map_or(0, |l| l.len() as u32);
        self.execs.insert(
            exec,
            Exec {
                queues,
                capacity,
                in_use,
                last_given: 0,
                joined: self.joins,
            },
        );
        self.dispatch(now_ms, out);
    }

    /// A connection closed: if an executor, its leases end (`queued`, or
    /// `dead` with `"executor_lost"`); its watches go.
    pub fn gone(&mut self, now_ms: u64, conn: ConnId, out: &mut Vec<Out>) {
        for id in self.watching.remove(&conn).into_iter().flatten() {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.watchers.retain(|c| *c != conn);
            }
        }
        self.execs.remove(&conn);
        self.leases_lost(now_ms, conn, out);
        self.dispatch(now_ms, out);
    }

    /// The leases of `conn`, an executor gone, end with `executor_lost`.
    /// They become queued at one instant, so they go back in line in the
    /// order they had in it before they were leased (priority first, then
    /// their old place), not in the order of their ids: a job that had
    /// come back from `retry` stays behind one submitted after it.
    fn leases_lost(&mut self, now_ms: u64, conn: ConnId, out: &mut Vec<Out>) {
        let mut lost: Vec<Place> = self
            .leases
            .remove(&conn)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let j = self.jobs.get(&id)?;
                Some((Reverse(j.priority), j.ready_seq, id))
            })
            .collect();
        lost.sort_unstable();
        for (_, _, id) in lost {
            self.lease_ended(now_ms, id, "executor_lost", out);
        }
    }

    /// The job `job` if it is leased to `conn`, else `not_leased`.
    fn leased_to(&self, tag: Tag, job: &str, out: &mut Vec<Out>) -> Option<JobNo> {
        let id = self.find(job).filter(|id| {
            self.jobs
                .get(id)
                .is_some_and(|j| j.state == State::Leased && j.lease == Some(tag.conn))
        });
        if id.is_none() {
            err(
                tag,
                Code::NotLeased,
                "the job is not leased to this connection",
                out,
            );
        }
        id
    }

    /// `extend`.
    pub fn extend(&mut self, now_ms: u64, tag: Tag, job: &str, out: &mut Vec<Out>) {
        let Some(id) = self.leased_to(tag, job, out) else {
            return;
        };
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        self.due.remove(&(j.due_ms, id));
        j.due_ms = now_ms.saturating_add(j.timeout_ms);
        self.due.insert((j.due_ms, id));
        out.push(Out::Write(Write::Update(update(id, j))));
        out.push(Out::Reply(tag, reply::extended(id, j.timeout_ms)));
    }

    /// `done`.
    pub fn done(&mut self, now_ms: u64, tag: Tag, job: &str, result: String, out: &mut Vec<Out>) {
        let Some(id) = self.leased_to(tag, job, out) else {
            return;
        };
        self.free_slot(tag.conn, id);
        self.leave_state(id);
        self.finish(now_ms, id, State::Succeeded, Some(result), None, out);
        out.push(Out::Reply(tag, reply::recorded(id, State::Succeeded)));
        self.dispatch(now_ms, out);
    }

    /// `fail`.
    pub fn fail(
        &mut self,
        now_ms: u64,
        tag: Tag,
        job: &str,
        error: String,
        retry: bool,
        out: &mut Vec<Out>,
    ) {
        let Some(id) = self.leased_to(tag, job, out) else {
            return;
        };
        self.free_slot(tag.conn, id);
        self.leave_state(id);
        let Some(j) = self.jobs.get(&id) else {
            return;
        };
        let state = if !retry || j.attempts >= j.max_attempts {
            self.finish(now_ms, id, State::Dead, None, Some(error), out);
            State::Dead
        } else {
            let shift = j.attempts.saturating_sub(1).min(63);
            let backoff = self
                .limits
                .retry_base_ms
                .saturating_mul(1u64 << shift)
                .min(self.limits.retry_max_ms);
            self.enter(
                now_ms,
                id,
                State::Retry,
                now_ms.saturating_add(backoff),
                out,
            );
            State::Retry
        };
        out.push(Out::Reply(tag, reply::recorded(id, state)));
        self.dispatch(now_ms, out);
    }

    /// Everything due at `now_ms`: delays and backoffs over, leases
    /// expired, finished jobs past retention; then dispatch.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Out>) {
        while let Some(&(due, id)) = self.due.first() {
            if due > now_ms {
                break;
            }
            let Some(state) = self.jobs.get(&id).map(|j| j.state) else {
                self.due.remove(&(due, id));
                continue;
            };
            match state {
                State::Scheduled | State::Retry => {
                    self.leave_state(id);
                    self.enter(now_ms, id, State::Queued, 0, out);
                }
                State::Leased => {
                    if let Some(conn) = self.jobs.get(&id).and_then(|j| j.lease) {
                        self.free_slot(conn, id);
                    }
                    self.lease_ended(now_ms, id, "lease_expired", out);
                }
                State::Succeeded | State::Dead | State::Cancelled => self.remove(id, out),
                State::Queued => {
                    self.due.remove(&(due, id));
                }
            }
        }
        self.dispatch(now_ms, out);
    }

    /// The wall ms of the next due time, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(d, _)| *d)
    }

    /// Jobs kept per queue and state, for the page.
    pub fn counts(&self) -> BTreeMap<String, Counts> {
        self.counts
            .iter()
            .filter(|(_, c)| c.iter().any(|n| *n > 0))
            .map(|(q, c)| (q.clone(), *c))
            .collect()
    }

    /// The `n` newest jobs, newest first, for the page.
    pub fn recent(&self, n: usize) -> Vec<JobView> {
        self.jobs
            .keys()
            .rev()
            .take(n)
            .filter_map(|id| self.view(*id))
            .collect()
    }

    /// True when something changed since the last call (the page's
    /// snapshots are sent only then).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// One job as `status` shows it.
    pub fn view(&self, id: JobNo) -> Option<JobView> {
        let j = self.jobs.get(&id)?;
        Some(JobView {
            id,
            queue: j.queue.clone(),
            state: j.state,
            priority: j.priority,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            created_ms: j.created_ms,
            updated_ms: j.updated_ms,
            result: j.result.clone(),
            error: j.error.clone(),
        })
    }

    // --- the transitions ---

    fn ready_of(&mut self, queue: &str) -> &mut Ready {
        if !self.ready.contains_key(queue) {
            self.ready.insert(queue.to_string(), Ready::new());
        }
        self.ready.get_mut(queue).expect("just inserted")
    }

    fn count(&mut self, queue: &str, state: State, delta: i64) {
        if !self.counts.contains_key(queue) {
            self.counts.insert(queue.to_string(), Counts::default());
        }
        if let Some(c) = self.counts.get_mut(queue) {
            let n = &mut c[state.index()];
            *n = n.saturating_add_signed(delta);
        }
    }

    /// A job of `queue` went from `old` to `new`: the counts follow.
    fn moved(&mut self, queue: &str, old: State, new: State) {
        self.count(queue, old, -1);
        self.count(queue, new, 1);
        self.changed = true;
    }

    /// Takes job `id` out of the index of its current state.
    fn leave_state(&mut self, id: JobNo) {
        let Some(j) = self.jobs.get(&id) else {
            return;
        };
        let (queue, state, prio, seq, due) =
            (j.queue.clone(), j.state, j.priority, j.ready_seq, j.due_ms);
        match state {
            State::Queued => {
                if let Some(r) = self.ready.get_mut(&queue) {
                    r.remove(&(Reverse(prio), seq, id));
                }
            }
            _ => {
                self.due.remove(&(due, id));
            }
        }
    }

    /// Puts job `id` (out of every index) into `state`: `queued` (ready,
    /// a new place in line), or `retry`/`scheduled` until `due`.
    fn enter(&mut self, now_ms: u64, id: JobNo, state: State, due: u64, out: &mut Vec<Out>) {
        let seq = if state == State::Queued {
            self.next_seq += 1;
            self.next_seq - 1
        } else {
            0
        };
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        let (queue, old) = (j.queue.clone(), j.state);
        j.state = state;
        j.updated_ms = now_ms;
        j.lease = None;
        if state == State::Queued {
            j.ready_seq = seq;
            j.due_ms = 0;
        } else {
            j.due_ms = due;
        }
        let key = (Reverse(j.priority), j.ready_seq, id);
        out.push(Out::Write(Write::Update(update(id, j))));
        if state == State::Queued {
            self.ready_of(&queue).insert(key);
        } else {
            self.due.insert((due, id));
        }
        self.moved(&queue, old, state);
    }

    /// Makes job `id` (out of every index) final, keeps it for
    /// `result_retention_ms`, and tells its watchers.
    fn finish(
        &mut self,
        now_ms: u64,
        id: JobNo,
        state: State,
        result: Option<String>,
        error: Option<String>,
        out: &mut Vec<Out>,
    ) {
        let due = now_ms.saturating_add(self.limits.result_retention_ms);
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        let (queue, old) = (j.queue.clone(), j.state);
        j.state = state;
        j.updated_ms = now_ms;
        j.due_ms = due;
        j.lease = None;
        j.payload = None;
        j.result = result;
        j.error = error;
        out.push(Out::Write(Write::Update(update(id, j))));
        let frame = finished(id, j);
        for w in std::mem::take(&mut j.watchers) {
            out.push(Out::Push(w, frame.clone()));
            if let Some(set) = self.watching.get_mut(&w) {
                set.remove(&id);
            }
        }
        self.due.insert((due, id));
        self.moved(&queue, old, state);
    }

    /// A lease ended without `done` or `fail` (`why`: `lease_expired`,
    /// `executor_lost`): queued again, or dead on the last attempt. The
    /// slot is already free.
    fn lease_ended(&mut self, now_ms: u64, id: JobNo, why: &str, out: &mut Vec<Out>) {
        let Some(j) = self.jobs.get(&id) else {
            return;
        };
        if j.state != State::Leased {
            return;
        }
        let last = j.attempts >= j.max_attempts;
        self.leave_state(id);
        if last {
            self.finish(now_ms, id, State::Dead, None, Some(json_str(why)), out);
        } else {
            self.enter(now_ms, id, State::Queued, 0, out);
        }
    }

    /// Frees the slot `conn` held for job `id`.
    fn free_slot(&mut self, conn: ConnId, id: JobNo) {
        if let Some(l) = self.leases.get_mut(&conn) {
            if l.remove(&id) {
                if let Some(e) = self.execs.get_mut(&conn) {
                    e.in_use = e.in_use.saturating_sub(1);
                }
            }
        }
    }

    /// Removes a final job after its retention.
    fn remove(&mut self, id: JobNo, out: &mut Vec<Out>) {
        let Some(j) = self.jobs.remove(&id) else {
            return;
        };
        self.due.remove(&(j.due_ms, id));
        if let Some(u) = j.unique {
            let key = (j.queue.clone(), u);
            if self.uniques.get(&key) == Some(&id) {
                self.uniques.remove(&key);
            }
        }
        self.count(&j.queue, j.state, -1);
        if self
            .counts
            .get(&j.queue)
            .is_some_and(|c| c.iter().all(|n| *n == 0))
        {
            self.counts.remove(&j.queue);
        }
        out.push(Out::Write(Write::Delete(id)));
        self.changed = true;
    }

    /// Hands ready jobs to free executors while there are both: the best
    /// job (priority, then FIFO) among queues with a free executor, to the
    /// eligible executor with the least share in use, then given a job
    /// least recently, then joined first.
    fn dispatch(&mut self, now_ms: u64, out: &mut Vec<Out>) {
        loop {
            let mut best: Option<(Place, &str)> = None;
            for (queue, ready) in &self.ready {
                let Some(&head) = ready.first() else {
                    continue;
                };
                if best.is_some_and(|(b, _)| b <= head) {
                    continue;
                }
                let free = self
                    .execs
                    .values()
                    .any(|e| e.in_use < e.capacity && e.queues.iter().any(|q| q == queue));
                if free {
                    best = Some((head, queue.as_str()));
                }
            }
            let Some((key, queue)) = best else {
                return;
            };
            let Some(conn) = self.pick(queue) else {
                return;
            };
            let queue = queue.to_string();
            if let Some(r) = self.ready.get_mut(&queue) {
                r.remove(&key);
            }
            self.lease(now_ms, key.2, conn, out);
        }
    }

    /// The executor a job of `queue` goes to.
    fn pick(&self, queue: &str) -> Option<ConnId> {
        self.execs
            .iter()
            .filter(|(_, e)| e.in_use < e.capacity && e.queues.iter().any(|q| q == queue))
            .min_by(|(_, a), (_, b)| {
                let share = (u64::from(a.in_use) * u64::from(b.capacity))
                    .cmp(&(u64::from(b.in_use) * u64::from(a.capacity)));
                share
                    .then(a.last_given.cmp(&b.last_given))
                    .then(a.joined.cmp(&b.joined))
            })
            .map(|(c, _)| *c)
    }

    /// Leases ready job `id` (already out of its ready set) to `conn`.
    fn lease(&mut self, now_ms: u64, id: JobNo, conn: ConnId, out: &mut Vec<Out>) {
        self.gives += 1;
        if let Some(e) = self.execs.get_mut(&conn) {
            e.in_use += 1;
            e.last_given = self.gives;
        }
        self.leases.entry(conn).or_default().insert(id);
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        let queue = j.queue.clone();
        j.attempts += 1;
        j.state = State::Leased;
        j.updated_ms = now_ms;
        j.due_ms = now_ms.saturating_add(j.timeout_ms);
        j.lease = Some(conn);
        out.push(Out::Write(Write::Update(update(id, j))));
        let payload = j.payload.as_deref().unwrap_or("null");
        out.push(Out::Push(
            conn,
            reply::job(id, &queue, payload, j.attempts, j.timeout_ms),
        ));
        self.due.insert((j.due_ms, id));
        self.moved(&queue, State::Queued, State::Leased);
    }
}

/// The `finished` push of a final job.
fn finished(id: JobNo, j: &Job) -> String {
    reply::finished(id, j.state, j.result.as_deref(), j.error.as_deref())
}

/// A new job's row.
fn row(id: JobNo, j: &Job) -> JobRow {
    JobRow {
        id,
        queue: j.queue.clone(),
        state: j.state,
        priority: j.priority,
        payload: j.payload.clone().unwrap_or_else(|| "null".into()),
        attempts: j.attempts,
        max_attempts: j.max_attempts,
        timeout_ms: j.timeout_ms,
        unique: j.unique.clone(),
        created_ms: j.created_ms,
        updated_ms: j.updated_ms,
        due_ms: j.due_ms,
        ready_seq: j.ready_seq,
        result: j.result.clone(),
        error: j.error.clone(),
        lease_conn: j.lease.map(|c| c.to_string()),
    }
}

/// A job's change of state.
fn update(id: JobNo, j: &Job) -> JobUpdate {
    JobUpdate {
        id,
        state: j.state,
        attempts: j.attempts,
        updated_ms: j.updated_ms,
        due_ms: j.due_ms,
        ready_seq: j.ready_seq,
        result: j.result.clone(),
        error: j.error.clone(),
        lease_conn: j.lease.map(|c| c.to_string()),
    }
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
mod tests;
