//! Writing: one write per dirty connection per pass, in the order they
//! became dirty, with new events handled every few writes; and the bus.

use super::Worker;
use crate::core::Deferred;
use crate::error::ConnError;
use crate::handler::Handler;
use crate::id::ConnId;
use mio::Events;
use std::time::{Duration, Instant};

/// Writes between two looks at new events while a turn writes its dirty
/// connections (see [`Worker::flush_conns`]).
const POLL_EVERY: usize = 32;

impl<H: Handler> Worker<H> {
    /// One write per dirty connection, in the order they became dirty.
    ///
    /// Every [`POLL_EVERY`] writes the pass looks for new events and handles
    /// them before going on. A broadcast that arrives while a pass is writing
    /// 1,000 connections then rides along with the rest of this pass and
    /// reaches the connections already written at the same place in the next
    /// one: each receiver waits at most one pass, not the rest of this pass
    /// plus a whole next one. Connections written in this pass and dirty again
    /// go to the next pass, so each still gets one write per pass.
    pub(super) fn flush_conns(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
        for (i, &key) in dirty.iter().enumerate() {
            if i % POLL_EVERY == POLL_EVERY - 1 {
                self.poll_between_writes();
            }
            let Some(c) = self.core.conns.get_mut(key) else {
                continue;
            };
            if !c.marks.dirty {
                // Written already: it was closed and its key reused mid-pass.
                continue;
            }
            c.marks.dirty = false;
            match c.flush() {
                Ok(true) => {
                    if c.marks.full {
                        c.marks.full = false;
                        let id =
                            ConnId::on_node(self.core.node, self.core.slot, key as u32, c.serial);
                        self.core.deferred.push_back(Deferred::BufferDrain(id));
                    }
                    if c.life.is_closing() && c.close_done() {
                        self.core.drop_socket(key, None);
                    }
                }
                Ok(false) => {}
                Err(e) => self.core.drop_socket(key, Some(ConnError::Io(e))),
            }
        }
        // Keep the larger allocation for the next pass.
        let mut done = dirty;
        done.clear();
        if done.capacity() > self.core.dirty.capacity() {
            done.extend_from_slice(&self.core.dirty);
            self.core.dirty = done;
        }
    }

    /// Handles whatever became ready since the turn's poll, without waiting,
    /// and passes new bus records on at once.
    fn poll_between_writes(&mut self) {
        let mut events = std::mem::replace(&mut self.mid_events, Events::with_capacity(0));
        if self.poll.poll(&mut events, Some(Duration::ZERO)).is_ok() && !events.is_empty() {
            self.core.now = Instant::now();
            for event in events.iter() {
                self.dispatch(event);
            }
            self.flush_bus();
        }
        self.mid_events = events;
    }

    pub(super) fn flush_bus(&mut self) {
        let broken = self.core.bus.flush(&self.core.mio);
        if !broken.is_empty() {
            self.core.link_peers();
            // The snapshot for a new link is written on the next flush.
        }
    }
}
