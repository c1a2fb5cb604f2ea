//! Output held back from a connection's socket while the handler gets
//! ready what must reach the client first (see [`crate::Ctx::hold_output`]).

use super::Core;
use crate::net::OutQueue;
use bytes::Bytes;

impl Core {
    /// Takes one more hold on an open accepted connection's output. False
    /// for any other key.
    pub(crate) fn hold_output(&mut self, key: usize) -> bool {
        let c = &mut self.conns[key];
        if !c.life.is_open() || c.outbound() {
            return false;
        }
        c.held.get_or_insert_with(Default::default).count += 1;
        true
    }

    /// Releases one hold: `first` goes before everything held so far; once
    /// no hold is left, all of it goes behind what was queued before the
    /// first hold, and writing resumes. `first` is counted against the
    /// output cap like any send. False when the output was not held, or
    /// `first` did not fit under the cap (the overflow policy applied).
    pub(crate) fn release_output(&mut self, key: usize, first: Option<Bytes>) -> bool {
        let c = &mut self.conns[key];
        let over = first.is_some() && c.queued() >= self.cfg.max_output_bytes;
        let Some(held) = c.held.as_mut() else {
            return false;
        };
        held.count -= 1;
        let mut front = OutQueue::default();
        if let Some(frame) = first.filter(|_| !over) {
            front.push(frame);
        }
        front.append(&mut held.out);
        if held.count > 0 {
            held.out = front;
        } else {
            c.held = None;
            c.out.append(&mut front);
            self.note_full(key);
            self.mark_dirty(key);
        }
        if over {
            self.overflow(key, 1);
        }
        !over
    }
}
