//! One broadcast to every idle connection (issue 15's `idle-250k`): `arm`
//! makes every receipt count from then on, `fire` has the first load
//! generator's first connection send one message (the `broadcast` server
//! hands it to every connection on the server, the sender's included),
//! then every load generator waits until each of its connections has it.

use std::io;

use mio::Events;

use super::{report, Gen, State, Window};
use crate::hist::Histogram;
use crate::wire;

impl Gen {
    /// `arm`: forgets what was received so far and records the latency of
    /// every message from now on; says `armed`.
    pub(super) fn arm(&mut self) {
        self.window = Window {
            measure: 0,
            end: u64::MAX,
        };
        for c in self.conns.iter_mut().flatten() {
            c.received = 0;
        }
        self.stats.latency = Histogram::default();
        self.stats.received_total = 0;
        self.stats.lost = 0;
        report("armed", &self.stats);
    }

    /// `fire`: the first load generator sends the message, stamped with
    /// its send time (CLOCK_MONOTONIC, shared by all processes); then each
    /// waits, bounded by `drain_ms`, until every connection received it
    /// and says `bcast` with the receipts' latencies (their maximum is the
    /// last delivery) and the connections that never got it (`lost`).
    pub(super) fn fire(&mut self, events: &mut Events) -> io::Result<()> {
        if self.cfg.conn_base == 0 {
            let first = self
                .conns
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.state == State::Open));
            if let Some(i) = first {
                self.send_next(i, wire::mono_ns());
            }
        }
        let deadline = wire::mono_ns() + self.cfg.drain_ms * 1_000_000;
        let all_in = |g: &Gen| {
            g.conns
                .iter()
                .flatten()
                .all(|c| c.received > 0 || c.state == State::Dead)
        };
        while !all_in(self) && wire::mono_ns() < deadline {
            self.turn(events, Some(deadline))?;
        }
        self.stats.lost = self
            .conns
            .iter()
            .flatten()
            .filter(|c| c.received == 0)
            .count() as u64;
        report("bcast", &self.stats);
        Ok(())
    }
}
