//! One scheduler as this executor sees it: its sessions (one per
//! connection that came up) and the jobs it pushed, as plain data. The
//! handler (`executor.rs`) does the I/O; this decides which job may start,
//! which must wait for a slot, and whose result may still be sent.
//!
//! # Slots
//!
//! At most `capacity` jobs of one scheduler run at a time, whatever their
//! session. A job pushed while that many run waits here for a slot: this
//! happens after a reconnect, when jobs of the lost session still run (the
//! scheduler gave their leases up and counts the new session from zero),
//! or when a lease ran out on the scheduler's side while the job still
//! ran here. At most `capacity` jobs wait; a scheduler that pushes more
//! breaks the protocol and the push is refused.
//!
//! # Whose result is sent
//!
//! A result goes back only on the session that got the job, while it is up,
//! and while the scheduler has not said the lease is gone (`not_leased`).
//! Otherwise the scheduler runs the job again (at-least-once), and a
//! result sent now would only be answered `not_leased`.

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// A job pushed to this executor, from its push to its end here; its
/// number is the key of [`Link`]'s table.
#[derive(Debug)]
pub struct Run {
    /// The job's id.
    pub job: String,
    /// Its attempt number, as pushed.
    pub attempt: u64,
    /// The lease, as pushed (and as `extended` last said).
    pub lease_ms: u64,
    /// The session that got it.
    pub session: u64,
    /// The payload while it waits for a slot; `None` once started.
    pub waiting: Option<Value>,
    /// The scheduler said its lease is gone.
    pub lost: bool,
}

/// What to do with a pushed job.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Run it now.
    Start,
    /// It waits for a slot; `running` jobs hold them.
    Wait {
        /// How many jobs run now.
        running: usize,
    },
    /// Refuse it: more jobs were pushed than capacity allows.
    Refuse,
}

/// Why a run's result is not sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Lost {
    /// Its session ended (the connection closed, or came up again since).
    Connection,
    /// The scheduler answered `not_leased`.
    Lease,
}

/// One scheduler: its sessions and the jobs it pushed.
#[derive(Debug)]
pub struct Link {
    /// `frame://host:port`.
    pub url: String,
    /// Jobs that may run at once, and wait at most.
    capacity: usize,
    /// The number of the latest session; 0 before the first.
    session: u64,
    /// That session is up.
    up: bool,
    /// Every job pushed and not ended here, by run number.
    runs: BTreeMap<u64, Run>,
    /// Runs waiting for a slot, in the order pushed.
    queue: VecDeque<u64>,
    /// The next run number.
    next: u64,
}

impl Link {
    /// A scheduler at `url` not connected yet.
    pub fn new(url: String, capacity: usize) -> Link {
        Link {
            url,
            capacity,
            session: 0,
            up: false,
            runs: BTreeMap::new(),
            queue: VecDeque::new(),
            next: 0,
        }
    }

    /// A connection came up: a new session.
    pub fn connected(&mut self) {
        self.session += 1;
        self.up = true;
    }

    /// Whether a session is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The session ended: runs still waiting are dropped (they never
    /// started) and returned with their numbers; started ones run on, and
    /// their results will not be sent.
    pub fn closed(&mut self) -> Vec<(u64, Run)> {
        self.up = false;
        let dropped: Vec<u64> = self.queue.drain(..).collect();
        dropped
            .into_iter()
            .filter_map(|no| self.runs.remove(&no).map(|r| (no, r)))
            .collect()
    }

    /// Jobs that run now (of any session).
    pub fn running(&self) -> usize {
        self.runs.len() - self.queue.len()
    }

    /// Jobs that wait for a slot.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// A `job` push on the current session: its run number and what to do.
    /// A refused push is not kept.
    pub fn push(
        &mut self,
        job: String,
        attempt: u64,
        lease_ms: u64,
        payload: Value,
    ) -> (u64, Admit) {
        // The scheduler hands a job out again only after its lease ended: an
        // older run of the same job here has lost its lease.
        let session = self.session;
        for r in self.runs.values_mut() {
            if r.session == session && r.job == job {
                r.lost = true;
            }
        }
        let running = self.running();
        let admit = if running < self.capacity {
            Admit::Start
        } else if self.queue.len() < self.capacity {
            Admit::Wait { running }
        } else {
            Admit::Refuse
        };
        let no = self.next;
        self.next += 1;
        if admit != Admit::Refuse {
            let waiting = matches!(admit, Admit::Wait { .. });
            self.runs.insert(
                no,
                Run {
                    job,
                    attempt,
                    lease_ms,
                    session,
                    waiting: waiting.then_some(payload),
                    lost: false,
                },
            );
            if waiting {
                self.queue.push_back(no);
            }
        }
        (no, admit)
    }

    /// A run that waited may start now: its number, attempt and payload.
    pub fn next_to_start(&mut self) -> Option<(u64, u64, Value)> {
        if self.running() >= self.capacity {
            return None;
        }
        let no = self.queue.pop_front()?;
        let run = self.runs.get_mut(&no)?;
        let payload = run.waiting.take()?;
        Some((no, run.attempt, payload))
    }

    /// A run ended here: it is forgotten, and returned with why its result
    /// must not be sent (`None`: send it).
    pub fn finished(&mut self, no: u64) -> Option<(Run, Option<Lost>)> {
        let run = self.runs.remove(&no)?;
        let lost = self.why_lost(&run);
        Some((run, lost))
    }

    /// The run `no`, if it has not ended.
    pub fn run(&self, no: u64) -> Option<&Run> {
        self.runs.get(&no)
    }

    /// Whether `extend`, `done` or `fail` for run `no` may go to the
    /// scheduler; `None` if the run has ended.
    pub fn lost(&self, no: u64) -> Option<Option<Lost>> {
        self.runs.get(&no).map(|r| self.why_lost(r))
    }

    fn why_lost(&self, run: &Run) -> Option<Lost> {
        if !self.up || run.session != self.session {
            Some(Lost::Connection)
        } else if run.lost {
            Some(Lost::Lease)
        } else {
            None
        }
    }

    /// The scheduler said `job` is not leased to this session (any more):
    /// its runs of this session are marked lost. The run numbers marked
    /// now.
    pub fn lease_gone(&mut self, job: &str) -> Vec<u64> {
        let session = self.session;
        self.runs
            .iter_mut()
            .filter(|(_, r)| r.session == session && r.job == job && !r.lost)
            .map(|(no, r)| {
                r.lost = true;
                *no
            })
            .collect()
    }

    /// `extended {job, lease_ms}`: the lease of this session's run of `job`.
    pub fn extended(&mut self, job: &str, lease_ms: u64) {
        let session = self.session;
        for r in self.runs.values_mut() {
            if r.session == session && r.job == job {
                r.lease_ms = lease_ms;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(capacity: usize) -> Link {
        let mut l = Link::new("frame://127.0.0.1:1".into(), capacity);
        l.connected();
        l
    }

    fn push(l: &mut Link, job: &str) -> (u64, Admit) {
        l.push(job.into(), 1, 1000, json!({"kind": "noop"}))
    }

    #[test]
    fn capacity_jobs_run_then_as_many_wait_then_pushes_are_refused() {
        let mut l = link(2);
        assert_eq!(push(&mut l, "1").1, Admit::Start);
        assert_eq!(push(&mut l, "2").1, Admit::Start);
        assert_eq!(push(&mut l, "3").1, Admit::Wait { running: 2 });
        assert_eq!(push(&mut l, "4").1, Admit::Wait { running: 2 });
        assert_eq!(push(&mut l, "5").1, Admit::Refuse);
        assert_eq!((l.running(), l.waiting()), (2, 2));
        assert_eq!(l.next_to_start(), None, "no slot is free");
        let (run, lost) = l.finished(0).unwrap();
        assert_eq!((run.job.as_str(), lost), ("1", None));
        let (no, attempt, payload) = l.next_to_start().unwrap();
        assert_eq!((no, attempt, payload), (2, 1, json!({"kind": "noop"})));
        assert_eq!(l.next_to_start(), None);
        assert_eq!((l.running(), l.waiting()), (2, 1));
    }

    #[test]
    fn a_lost_session_keeps_its_slots_but_not_its_results() {
        let mut l = link(1);
        let (a, _) = push(&mut l, "a");
        let (b, _) = push(&mut l, "b");
        let dropped = l.closed();
        assert_eq!(dropped.len(), 1);
        assert_eq!((dropped[0].0, dropped[0].1.job.as_str()), (b, "b"));
        assert_eq!(l.lost(a), Some(Some(Lost::Connection)));
        l.connected();
        assert_eq!(l.lost(a), Some(Some(Lost::Connection)), "a new session");
        let (c, admit) = push(&mut l, "c");
        assert_eq!(admit, Admit::Wait { running: 1 });
        assert_eq!(l.finished(a).unwrap().1, Some(Lost::Connection));
        assert_eq!(l.next_to_start().map(|s| s.0), Some(c));
        assert_eq!(l.finished(c).unwrap().1, None);
    }

    #[test]
    fn not_leased_and_a_second_push_mark_the_lease_lost() {
        let mut l = link(4);
        let (a, _) = push(&mut l, "a");
        assert_eq!(l.lease_gone("a"), vec![a]);
        assert_eq!(l.lease_gone("a"), Vec::<u64>::new(), "once");
        assert_eq!(l.lost(a), Some(Some(Lost::Lease)));
        let (b, _) = push(&mut l, "b");
        let (b2, _) = push(&mut l, "b");
        assert_eq!(l.lost(b), Some(Some(Lost::Lease)));
        assert_eq!(l.lost(b2), Some(None));
        l.extended("b", 5000);
        assert_eq!(l.run(b2).map(|r| r.lease_ms), Some(5000));
    }
}
