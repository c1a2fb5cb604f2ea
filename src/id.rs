//! Identifiers seen by users: connections and timers.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A connection, unique on the whole server for the server's lifetime.
///
/// It names the worker slot that owns the connection, the connection's key in
/// that worker's table, and a serial number that is never reused for another
/// connection, not even by a replacement worker in the same slot, however
/// many times the slot is restarted (see [`Serials`]). A stale id therefore
/// never reaches a new tenant: sends to it are no-ops.
///
/// Its text form, `"{worker}.{key}.{serial}"`, is what [`fmt::Display`] prints
/// and [`FromStr`] parses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) worker: u16,
    pub(crate) key: u32,
    pub(crate) serial: u64,
}

impl ConnId {
    pub(crate) fn new(worker: u16, key: u32, serial: u64) -> Self {
        ConnId {
            worker,
            key,
            serial,
        }
    }

    /// The worker slot (0 to count - 1) that owns this connection.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.worker, self.key, self.serial)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

/// The text was not of the form `worker.key.serial`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a connection id (expected worker.key.serial): {0:?}")]
pub struct ParseConnIdError(String);

impl FromStr for ConnId {
    type Err = ParseConnIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseConnIdError(s.chars().take(64).collect());
        let mut parts = s.split('.');
        let worker = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let key = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let serial = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(ConnId::new(worker, key, serial))
    }
}

/// The connection serials of every worker slot: one counter per slot in a
/// shared anonymous mapping that the master makes before its first fork.
/// Every worker of a slot, the first and each replacement, takes its serials
/// from the same counter, so a slot never hands out a serial twice in the
/// life of the master (2^64 connections), whatever the number of restarts.
/// (Serials used to be `incarnation << 40 | n`, which repeated after 2^24
/// restarts.)
#[derive(Clone)]
pub(crate) struct Serials {
    counters: *const AtomicU64,
    slots: usize,
}

// SAFETY: the mapping is never unmapped (it lives as long as the process)
// and is only reached through atomics.
unsafe impl Send for Serials {}
// SAFETY: as above.
unsafe impl Sync for Serials {}

impl Serials {
    /// Maps one zeroed counter per slot, shared with the children forked
    /// later.
    pub(crate) fn new(slots: usize) -> io::Result<Serials> {
        let len = slots.max(1) * std::mem::size_of::<AtomicU64>();
        // SAFETY: a fresh anonymous mapping, no address hint, no file; its
        // pages are zero, a valid AtomicU64 each, and suitably aligned.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Serials {
            counters: ptr.cast(),
            slots,
        })
    }

    /// The next serial of `slot`: never one handed out before, by any
    /// worker of that slot.
    pub(crate) fn next(&self, slot: usize) -> u64 {
        assert!(slot < self.slots, "slot {slot} of {}", self.slots);
        // SAFETY: `slot` is in the mapping, which is never unmapped.
        let counter = unsafe { &*self.counters.add(slot) };
        counter.fetch_add(1, Ordering::Relaxed)
    }
}

impl fmt::Debug for Serials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serials({} slots)", self.slots)
    }
}

/// A timer made by [`crate::Ctx::add_timer`], unique within its worker.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TimerId(pub(crate) u64);

impl TimerId {
    /// The number behind the id, for logs and wire formats.
    pub fn get(&self) -> u64 {
        self.0
    }
}

impl fmt::Display for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_round_trips_through_text() {
        let id = ConnId::new(3, 17, 1 << 41);
        assert_eq!(id.to_string().parse::<ConnId>(), Ok(id));
    }

    #[test]
    fn serials_never_repeat_across_restarts() {
        let serials = Serials::new(2).expect("mmap");
        // The old scheme put the incarnation above bit 40: incarnation 2^24
        // started again at incarnation 0's serials.
        assert_eq!((1u64 << 24).wrapping_shl(40), 0);
        // Every incarnation of a slot takes from one counter: a worker
        // started after 2^24 + 1 restarts continues where the last one
        // stopped, so its first ids differ from the first worker's.
        let first: Vec<u64> = (0..100).map(|_| serials.next(0)).collect();
        let restarted = serials.clone(); // what a replacement worker holds
        let later: Vec<u64> = (0..100).map(|_| restarted.next(0)).collect();
        assert!(first.iter().all(|s| !later.contains(s)));
        assert_eq!(later[0], 100);
        // Slots count apart, near the top of the range too.
        assert_eq!(serials.next(1), 0);
        // SAFETY: slot 1 is in the mapping.
        unsafe { &*serials.counters.add(1) }.store(u64::MAX - 1, Ordering::Relaxed);
        assert_eq!(serials.next(1), u64::MAX - 1);
        let id = ConnId::new(1, 0, serials.next(1));
        assert_eq!(id.to_string().parse::<ConnId>(), Ok(id));
        assert_eq!(serials.next(0), 200);
    }

    #[test]
    fn conn_id_rejects_malformed_text() {
        for bad in ["", "1", "1.2", "1.2.3.4", "a.b.c", "70000.1.1", "-1.0.0"] {
            assert!(bad.parse::<ConnId>().is_err(), "{bad:?} parsed");
        }
    }
}
