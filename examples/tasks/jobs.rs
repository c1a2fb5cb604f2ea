//! The job table: every kept job, the ready queues, the executors and
//! their leases, the due times; the rules of `shared/tasks-protocol.md`
//! ("Jobs", "Submitters", "Executors") as a state machine without I/O.
//! Only the brain (worker 0) holds one. Every method appends what must
//! happen to `out` ([`Out`]), in order; times are wall ms passed in.
//!
//! STUB: the interface the brain is written against; the table is being
//! written on its own branch.

use crate::types::{JobView, Limits, Out, Recovered, Submit, Tag};
use foreman::ConnId;
use std::collections::BTreeMap;

/// See the module docs.
pub struct Jobs {
    _limits: Limits,
}

impl Jobs {
    /// The table as the store held it at start. Jobs that were `leased`
    /// stay leased to their `lease_conn` until [`Jobs::recover_leases`].
    pub fn new(limits: Limits, recovered: Recovered, now_ms: u64) -> Jobs {
        let _ = (recovered, now_ms);
        Jobs { _limits: limits }
    }

    /// After a restart: every job leased to a connection for which `alive`
    /// is false counts as if its executor had closed (`queued`, or `dead`
    /// with `"executor_lost"` on the last attempt). Leases of connections
    /// still alive stay, with their stored deadlines, and those executors
    /// must then [`Jobs::join`] with those leases counted against their
    /// capacity.
    pub fn recover_leases(
        &mut self,
        now_ms: u64,
        alive: &dyn Fn(ConnId) -> bool,
        out: &mut Vec<Out>,
    ) {
        let _ = (now_ms, alive, out);
    }

    /// `submit`: `accepted` (or the duplicate's id and state).
    pub fn submit(&mut self, now_ms: u64, tag: Tag, req: Submit, out: &mut Vec<Out>) {
        let _ = (now_ms, tag, req, out);
    }

    /// `status`: `job {...}` or `not_found`.
    pub fn status(&mut self, tag: Tag, job: &str, out: &mut Vec<Out>) {
        let _ = (tag, job, out);
    }

    /// `watch`: `watching`, then one `finished` push to `tag.conn`.
    pub fn watch(&mut self, tag: Tag, job: &str, out: &mut Vec<Out>) {
        let _ = (tag, job, out);
    }

    /// `cancel`.
    pub fn cancel(&mut self, now_ms: u64, tag: Tag, job: &str, out: &mut Vec<Out>) {
        let _ = (now_ms, tag, job, out);
    }

    /// `stats`.
    pub fn stats(&mut self, tag: Tag, queue: &str, out: &mut Vec<Out>) {
        let _ = (tag, queue, out);
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
        let _ = (now_ms, exec, queues, capacity, out);
    }

    /// A connection closed: if an executor, its leases end (`queued`, or
    /// `dead` with `"executor_lost"`); its watches go.
    pub fn gone(&mut self, now_ms: u64, conn: ConnId, out: &mut Vec<Out>) {
        let _ = (now_ms, conn, out);
    }

    /// `extend`.
    pub fn extend(&mut self, now_ms: u64, tag: Tag, job: &str, out: &mut Vec<Out>) {
        let _ = (now_ms, tag, job, out);
    }

    /// `done`.
    pub fn done(&mut self, now_ms: u64, tag: Tag, job: &str, result: String, out: &mut Vec<Out>) {
        let _ = (now_ms, tag, job, result, out);
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
        let _ = (now_ms, tag, job, error, retry, out);
    }

    /// Everything due at `now_ms`: delays and backoffs over, leases
    /// expired, finished jobs past retention; then dispatch.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Out>) {
        let _ = (now_ms, out);
    }

    /// The wall ms of the next due time, if any.
    pub fn next_due(&self) -> Option<u64> {
        None
    }

    /// Jobs kept per queue and state, for the page.
    pub fn counts(&self) -> BTreeMap<String, crate::types::Counts> {
        BTreeMap::new()
    }

    /// The `n` newest jobs, newest first, for the page.
    pub fn recent(&self, n: usize) -> Vec<JobView> {
        let _ = n;
        Vec::new()
    }

    /// True when something changed since the last call (the page's
    /// snapshots are sent only then).
    pub fn take_changed(&mut self) -> bool {
        false
    }
}
