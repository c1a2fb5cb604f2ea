//! Timers of one worker: a binary heap of deadlines; the nearest one is the
//! event loop's poll timeout. Cancelled timers are forgotten lazily.

use crate::id::TimerId;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Timer {
    interval: Duration,
    repeat: bool,
    /// The deadline currently in the heap for this timer; older heap entries
    /// with another deadline are stale.
    due: Instant,
}

/// All timers of one worker.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: HashMap<u64, Timer>,
    next_id: u64,
}

impl Timers {
    pub(crate) fn add(&mut self, now: Instant, interval: Duration, repeat: bool) -> TimerId {
        // A repeating timer of 0 would spin the loop; 1 ms is the floor.
        let interval = interval.max(Duration::from_millis(if repeat { 1 } else { 0 }));
        self.next_id += 1;
        let id = self.next_id;
        let due = now + interval;
        self.live.insert(
            id,
            Timer {
                interval,
                repeat,
                due,
            },
        );
        self.heap.push(Reverse((due, id)));
        TimerId(id)
    }

    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        self.live.remove(&id.0).is_some()
    }

    /// The nearest deadline of a live timer.
    pub(crate) fn next_due(&mut self) -> Option<Instant> {
        while let Some(Reverse((due, id))) = self.heap.peek().copied() {
            match self.live.get(&id) {
                Some(t) if t.due == due => return Some(due),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Pops one timer due at or before `now`, rescheduling it if it repeats.
    /// A repeating timer that fell behind fires once and is rescheduled from
    /// `now`, so a stalled loop does not fire a burst.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerId> {
        let due = self.next_due()?;
        if due > now {
            return None;
        }
        let Reverse((_, id)) = self.heap.pop().expect("peeked");
        let timer = self.live.get_mut(&id).expect("live");
        if timer.repeat {
            let mut next = timer.due + timer.interval;
            if next <= now {
                next = now + timer.interval;
            }
            timer.due = next;
            self.heap.push(Reverse((next, id)));
        } else {
            self.live.remove(&id);
        }
        Some(TimerId(id))
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_and_repeating_timers_fire_in_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let a = t.add(t0, Duration::from_millis(10), true);
        let b = t.add(t0, Duration::from_millis(15), false);
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.next_due(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(10)), Some(a));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(16)), Some(b));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(16)), None);
        assert_eq!(t.pop_due(t0 + Duration::from_millis(20)), Some(a));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cancelled_timers_never_fire() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let a = t.add(t0, Duration::from_millis(1), true);
        assert!(t.cancel(a));
        assert!(!t.cancel(a));
        assert_eq!(t.next_due(), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn a_late_repeating_timer_fires_once_not_a_burst() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let a = t.add(t0, Duration::from_millis(1), true);
        let late = t0 + Duration::from_millis(100);
        assert_eq!(t.pop_due(late), Some(a));
        assert_eq!(t.pop_due(late), None);
    }
}
