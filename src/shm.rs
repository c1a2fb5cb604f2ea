//! The scoreboard: memory shared by the master and all its workers, for
//! the two facts no single process can keep alone.
//!
//! - **Heartbeats.** Each worker stamps its slot with the system-wide
//!   `CLOCK_MONOTONIC` once per loop turn; the master reads the stamps and
//!   replaces a worker that has not come back to its loop for
//!   `handler_timeout` (see `master/supervise.rs`).
//! - **Load, for a shared listener.** Each worker publishes how many
//!   connections it holds and whether it is waiting in its poll; a worker
//!   woken for a new connection on a listener all workers share leaves it
//!   to a less loaded one that will take it (see [`Scoreboard::fair_to_accept`]).
//! - **Connections per client address.** Each worker keeps a table of how
//!   many connections it holds per address (IPv6: per /64); a worker
//!   accepting a connection sums that address over every worker's table, so
//!   `max_connections_per_ip` holds server-wide.
//!
//! # Layout and ownership
//!
//! One anonymous `MAP_SHARED` mapping, made by the master before it forks
//! (no thread exists then) and inherited by every worker: a 128-byte
//! [`Cell`] per slot (heartbeat and counters), then a table per slot of
//! [`BUCKETS`] buckets of [`BUCKET`] `AtomicU64` entries (512 KiB per
//! slot; pages nobody writes, as with the limit off, are never allocated).
//! Everything in it is an atomic, so no process can see a torn value.
//!
//! Each slot has one writer at a time: its live worker, or the master
//! while the slot is empty (it stamps a fresh heartbeat before forking a
//! replacement, and clears the table of a worker that died). Readers are
//! everyone.
//!
//! # The address table
//!
//! An entry packs a 40-bit tag of the address's hash (never 0) with a
//! 24-bit count; 0 is an empty entry. An address lives in the bucket its
//! hash picks (two cache lines), anywhere in it: a lookup reads the whole
//! bucket, so removing an entry is just zeroing it. The hash is keyed with
//! a random seed per server start, so clients cannot aim their addresses
//! at one bucket. A full bucket fails open: the connection is admitted
//! uncounted, and that is counted. Two addresses whose tags collide in one
//! bucket (about 1 in 2^40) share a count. Two workers accepting the same
//! address at the same instant may each see the other's count before the
//! other's increment, so the limit can be passed by at most `count - 1`
//! connections in a race; connections that come one after another are
//! counted exactly.

use crate::entropy;
use nix::sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Entries per bucket: 128 bytes, the span one lookup reads per worker.
pub(crate) const BUCKET: usize = 16;
/// Buckets per worker table.
pub(crate) const BUCKETS: usize = 4096;
/// Bits of an entry that hold the count.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// One slot's heartbeat and counters.
#[repr(C, align(128))]
struct Cell {
    /// `CLOCK_MONOTONIC` in milliseconds at the worker's last loop turn
    /// (or when the master forked it); 0 before the first fork.
    beat_ms: AtomicU64,
    /// Connections refused by `max_connections_per_ip` (every incarnation).
    refused: AtomicU64,
    /// Connections admitted uncounted because their bucket was full.
    uncounted: AtomicU64,
    /// The next connection serial of the slot. Every worker of a slot, the
    /// first and each replacement, takes from this one counter, so a slot
    /// never hands out a serial twice in the life of the master (2^64
    /// connections), whatever the number of restarts. (Serials used to be
    /// `incarnation << 40 | n`, which repeated after 2^24 restarts.)
    serial: AtomicU64,
    /// Connections the slot's worker holds, or [`ABSENT`] while no worker
    /// of the slot accepts (before the first fork, after a death, once it
    /// stops).
    load: AtomicU64,
    /// 1 while the worker waits in its poll: it wakes for a new connection
    /// at once, however old its heartbeat.
    polling: AtomicU64,
}

/// The load of a slot whose worker does not accept.
const ABSENT: u64 = u64::MAX;

/// How many connections a worker may hold past the least loaded other one
/// (plus a thirty-second of that one's) and still accept from a shared
/// listener: small enough to keep workers within a few percent of each
/// other, large enough that workers in step do not hand connections back
/// and forth.
const BALANCE_SLACK: u64 = 8;

/// One worker's address table.
#[repr(C, align(4096))]
struct Table([[AtomicU64; BUCKET]; BUCKETS]);

/// The mapping; unmapped when the last handle in a process goes.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    slots: usize,
    /// Where the tables start (page-aligned).
    tables: usize,
    seed: u64,
}

// SAFETY: the mapping holds only atomics, and is never moved or unmapped
// while a handle exists.
unsafe impl Send for Mapping {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are what mmap returned; no reference into
        // the mapping outlives the last handle.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// A handle on the scoreboard; clones share one mapping.
#[derive(Clone)]
pub(crate) struct Scoreboard(Arc<Mapping>);

/// Where an address lives in every worker's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddrKey {
    bucket: usize,
    /// Already shifted into the tag bits.
    tag: u64,
}

/// What the limit says about a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Admitted and counted: release it when the connection is gone.
    Counted,
    /// Admitted uncounted (the limit is off, or its bucket is full).
    Uncounted,
    /// Past the limit: refuse it.
    Refused,
}

/// `CLOCK_MONOTONIC` in milliseconds: the same clock in every process.
pub(crate) fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// splitmix64's finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Scoreboard {
    /// Maps a zeroed scoreboard for `slots` workers. Call before forking.
    pub(crate) fn new(slots: usize) -> std::io::Result<Scoreboard> {
        let page = 4096;
        let cells = (slots * size_of::<Cell>()).div_ceil(page) * page;
        let len = cells + slots * size_of::<Table>();
        let size = NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("no slots"))?;
        // SAFETY: a fresh anonymous mapping aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        let board = Scoreboard(Arc::new(Mapping {
            base: base.cast(),
            len,
            slots,
            tables: cells,
            seed: entropy::next_u64(),
        }));
        for slot in 0..slots {
            board.cell(slot).load.store(ABSENT, Ordering::Relaxed);
        }
        Ok(board)
    }

    fn cell(&self, slot: usize) -> &Cell {
        let m = &*self.0;
        assert!(slot < m.slots, "slot {slot} of {}", m.slots);
        // SAFETY: in bounds (checked), aligned (mmap is page-aligned and
        // Cell divides a page), zero is a valid Cell, and it lives as long
        // as the mapping, which outlives `&self`.
        unsafe { &*m.base.as_ptr().cast::<Cell>().add(slot) }
    }

    fn table(&self, slot: usize) -> &Table {
        let m = &*self.0;
        assert!(slot < m.slots, "slot {slot} of {}", m.slots);
        // SAFETY: as in `cell`: in bounds, page-aligned, all atomics.
        unsafe { &*m.base.as_ptr().add(m.tables).cast::<Table>().add(slot) }
    }

    /// Starts every slot's serials at `first` (before any fork). A cluster
    /// node starts them at its start time in ms shifted left by 20 bits,
    /// so a node that restarts under the same name never hands out an id
    /// that another node may still hold for one of its earlier connections.
    pub(crate) fn start_serials_at(&self, first: u64) {
        for slot in 0..self.0.slots {
            self.cell(slot).serial.store(first, Ordering::Relaxed);
        }
    }

    /// Stamps `slot`'s heartbeat with now.
    pub(crate) fn beat(&self, slot: usize) {
        self.cell(slot)
            .beat_ms
            .store(monotonic_ms(), Ordering::Relaxed);
    }

    /// The next connection serial of `slot`: never one handed out before,
    /// by any worker of that slot.
    pub(crate) fn next_serial(&self, slot: usize) -> u64 {
        self.cell(slot).serial.fetch_add(1, Ordering::Relaxed)
    }

    /// How long ago `slot` last stamped its heartbeat (zero if never).
    pub(crate) fn since_beat(&self, slot: usize) -> Duration {
        let beat = self.cell(slot).beat_ms.load(Ordering::Relaxed);
        if beat == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(monotonic_ms().saturating_sub(beat))
    }

    /// Says whether `slot`'s worker is waiting in its poll (`true`, just
    /// before) or turning (`false`, just after).
    pub(crate) fn polling(&self, slot: usize, waiting: bool) {
        self.cell(slot)
            .polling
            .store(waiting as u64, Ordering::Relaxed);
    }

    /// Publishes the connections `slot`'s worker holds; `None`: it no
    /// longer accepts (it is stopping).
    pub(crate) fn set_load(&self, slot: usize, held: Option<usize>) {
        let v = held.map_or(ABSENT, |n| n as u64);
        self.cell(slot).load.store(v, Ordering::Relaxed);
    }

    /// Whether `slot`'s worker, holding `held` connections, should take the
    /// next one from a listener every worker shares: yes unless another
    /// worker that accepts and answers holds fewer by more than
    /// [`BALANCE_SLACK`] plus a thirty-second of its own. A worker answers
    /// when it waits in its poll (it wakes for the connection at once) or
    /// stamped its heartbeat within `stale`; one stuck in a handler longer
    /// is passed over, so nobody waits on it.
    ///
    /// With one shared listener, each new connection wakes every worker and
    /// the first to call `accept` takes it, or the whole backlog: a worker
    /// that is already running takes more and more (the known "one worker
    /// takes all the load" of shared sockets). Leaving it to the least
    /// loaded worker keeps the split even.
    pub(crate) fn fair_to_accept(&self, slot: usize, held: usize, stale: Duration) -> bool {
        let stale_ms = stale.as_millis() as u64;
        let now = monotonic_ms();
        let least = (0..self.0.slots)
            .filter(|&s| s != slot)
            .map(|s| self.cell(s))
            .filter(|c| {
                c.polling.load(Ordering::Relaxed) == 1
                    || now.saturating_sub(c.beat_ms.load(Ordering::Relaxed)) < stale_ms
            })
            .map(|c| c.load.load(Ordering::Relaxed))
            .min()
            .unwrap_or(ABSENT);
        least == ABSENT || held as u64 <= least + least / 32 + BALANCE_SLACK
    }

    /// Connections refused by the per-address limit in `slot`, and those
    /// admitted uncounted because their bucket was full.
    pub(crate) fn per_ip_counters(&self, slot: usize) -> (u64, u64) {
        let c = self.cell(slot);
        (
            c.refused.load(Ordering::Relaxed),
            c.uncounted.load(Ordering::Relaxed),
        )
    }

    /// Where `ip` lives: IPv4 (also IPv4-mapped IPv6) by address, IPv6 by
    /// its /64.
    pub(crate) fn key(&self, ip: IpAddr) -> AddrKey {
        let raw = match ip {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => u64::from(u32::from(v4)),
                // The /64, kept apart from IPv4 addresses by a second mix.
                None => mix((u128::from(a) >> 64) as u64 ^ 0x6666_6666_6666_6666),
            },
        };
        let h = mix(raw ^ self.0.seed);
        let tag = (h >> COUNT_BITS).max(1) << COUNT_BITS;
        AddrKey {
            bucket: (h as usize) % BUCKETS,
            tag,
        }
    }

    /// Connections of `key` over every worker's table.
    pub(crate) fn count(&self, key: AddrKey) -> u64 {
        (0..self.0.slots)
            .map(|slot| {
                self.table(slot).0[key.bucket]
                    .iter()
                    .map(|e| e.load(Ordering::Relaxed))
                    .filter(|e| e & !COUNT_MASK == key.tag)
                    .map(|e| e & COUNT_MASK)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Decides on a new connection from `ip` in `slot` under `limit`
    /// (0 = none) and counts it (see [`Admission`]). Only `slot`'s worker
    /// calls this.
    pub(crate) fn admit(&self, slot: usize, ip: IpAddr, limit: usize) -> Admission {
        if limit == 0 {
            return Admission::Uncounted;
        }
        let key = self.key(ip);
        let cell = self.cell(slot);
        if self.count(key) >= limit as u64 {
            cell.refused.fetch_add(1, Ordering::Relaxed);
            return Admission::Refused;
        }
        let bucket = &self.table(slot).0[key.bucket];
        let mut free = None;
        for e in bucket {
            let v = e.load(Ordering::Relaxed);
            if v & !COUNT_MASK == key.tag && v & COUNT_MASK < COUNT_MASK {
                e.store(v + 1, Ordering::Relaxed);
                return Admission::Counted;
            }
            if v == 0 && free.is_none() {
                free = Some(e);
            }
        }
        match free {
            Some(e) => {
                e.store(key.tag | 1, Ordering::Relaxed);
                Admission::Counted
            }
            None => {
                cell.uncounted.fetch_add(1, Ordering::Relaxed);
                Admission::Uncounted
            }
        }
    }

    /// A connection from `ip` that [`Scoreboard::admit`] counted in `slot`
    /// is gone. Only `slot`'s worker calls this.
    pub(crate) fn release(&self, slot: usize, ip: IpAddr) {
        let key = self.key(ip);
        for e in &self.table(slot).0[key.bucket] {
            let v = e.load(Ordering::Relaxed);
            if v & !COUNT_MASK == key.tag && v & COUNT_MASK > 0 {
                let left = v - 1;
                e.store(
                    if left & COUNT_MASK == 0 { 0 } else { left },
                    Ordering::Relaxed,
                );
                return;
            }
        }
    }

    /// Forgets every connection `slot` counted: its worker is gone. The
    /// master calls this, before forking a replacement.
    pub(crate) fn clear(&self, slot: usize) {
        let cell = self.cell(slot);
        cell.load.store(ABSENT, Ordering::Relaxed);
        cell.polling.store(0, Ordering::Relaxed);
        let table = self.table(slot);
        let ptr = NonNull::from(table).cast();
        // SAFETY: the range is the slot's own page-aligned table inside the
        // mapping; MADV_REMOVE on shared anonymous memory frees the pages,
        // which read as zeros afterwards (and frees their memory).
        let freed = unsafe { madvise(ptr, size_of::<Table>(), MmapAdvise::MADV_REMOVE) };
        if freed.is_err() {
            for e in table.0.iter().flatten() {
                e.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn counts_add_up_over_workers_and_the_limit_refuses_past_them() {
        let board = Scoreboard::new(2).expect("map");
        let a = ip("127.0.0.9");
        for i in 0..4 {
            assert_eq!(board.admit(i % 2, a, 4), Admission::Counted, "conn {i}");
        }
        assert_eq!(board.count(board.key(a)), 4);
        assert_eq!(board.admit(0, a, 4), Admission::Refused);
        assert_eq!(board.admit(1, a, 4), Admission::Refused);
        assert_eq!(board.per_ip_counters(0), (1, 0));
        assert_eq!(board.admit(0, ip("127.0.0.10"), 4), Admission::Counted);
        board.release(1, a);
        assert_eq!(board.admit(0, a, 4), Admission::Counted, "one was released");
        board.clear(0);
        assert_eq!(board.count(board.key(a)), 1, "worker 1's share is left");
        assert_eq!(board.admit(0, a, 0), Admission::Uncounted, "limit off");
    }

    #[test]
    fn ipv6_groups_by_its_64_and_a_mapped_ipv4_is_the_ipv4() {
        let board = Scoreboard::new(1).expect("map");
        let k = |s| board.key(ip(s));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:127.0.0.9"), k("127.0.0.9"));
        assert_ne!(k("127.0.0.9"), k("127.0.0.10"));
    }

    #[test]
    fn a_full_bucket_fails_open_and_says_so() {
        let board = Scoreboard::new(1).expect("map");
        let target = board.key(ip("10.0.0.1")).bucket;
        let mut same: Vec<IpAddr> = (0u32..)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)))
            .filter(|a| board.key(*a).bucket == target)
            .take(BUCKET)
            .collect();
        same.push(ip("10.0.0.1"));
        for a in &same[..BUCKET] {
            assert_eq!(board.admit(0, *a, 1), Admission::Counted);
        }
        assert_eq!(board.admit(0, same[BUCKET], 1), Admission::Uncounted);
        assert_eq!(board.per_ip_counters(0), (0, 1));
        board.release(0, same[0]);
        assert_eq!(board.admit(0, same[BUCKET], 1), Admission::Counted);
    }

    #[test]
    fn a_heartbeat_ages_from_its_stamp() {
        let board = Scoreboard::new(1).expect("map");
        assert_eq!(board.since_beat(0), Duration::ZERO, "never stamped");
        let old = monotonic_ms() - 3000;
        board.cell(0).beat_ms.store(old, Ordering::Relaxed);
        let stale = board.since_beat(0);
        assert!(stale >= Duration::from_secs(3), "{stale:?}");
        board.beat(0);
        assert!(board.since_beat(0) < stale, "a fresh stamp is younger");
    }

    #[test]
    fn a_shared_listener_is_left_to_the_least_loaded_worker_that_answers() {
        let board = Scoreboard::new(3).expect("map");
        let stale = Duration::from_millis(50);
        // Nobody else accepts yet: take it.
        assert!(board.fair_to_accept(0, 1_000, stale));
        for slot in 0..3 {
            board.beat(slot);
        }
        board.set_load(1, Some(100));
        board.set_load(2, Some(400));
        // Slot 1 is the least loaded: up to 100 + 3 + 8 others may hold.
        assert!(board.fair_to_accept(0, 111, stale));
        assert!(!board.fair_to_accept(0, 112, stale));
        assert!(!board.fair_to_accept(2, 400, stale));
        assert!(board.fair_to_accept(1, 100, stale), "the least takes it");
        // A worker stuck in a handler (old heartbeat, not in its poll) is
        // passed over; one asleep in its poll is not.
        let old = monotonic_ms() - 1_000;
        board.cell(1).beat_ms.store(old, Ordering::Relaxed);
        assert!(board.fair_to_accept(0, 112, stale), "slot 1 is stuck");
        assert!(!board.fair_to_accept(0, 421, stale), "slot 2 still counts");
        board.polling(1, true);
        assert!(
            !board.fair_to_accept(0, 112, stale),
            "slot 1 sleeps, it wakes"
        );
        // A stopping worker, or a dead one, no longer counts.
        board.set_load(1, None);
        assert!(board.fair_to_accept(0, 412, stale));
        board.clear(2);
        assert!(board.fair_to_accept(0, 100_000, stale));
    }

    #[test]
    fn serials_never_repeat_across_restarts() {
        let board = Scoreboard::new(2).expect("map");
        // The old scheme put the incarnation above bit 40: incarnation 2^24
        // started again at incarnation 0's serials.
        assert_eq!((1u64 << 24).wrapping_shl(40), 0);
        // Every incarnation of a slot takes from one counter: a replacement
        // continues where the last worker stopped, and `clear` (the master
        // forgetting a dead worker's connections) does not reset it.
        let first: Vec<u64> = (0..100).map(|_| board.next_serial(0)).collect();
        board.clear(0);
        let restarted = board.clone(); // what a replacement worker holds
        let later: Vec<u64> = (0..100).map(|_| restarted.next_serial(0)).collect();
        assert!(first.iter().all(|s| !later.contains(s)));
        assert_eq!(later[0], 100);
        // Slots count apart, near the top of the range too.
        assert_eq!(board.next_serial(1), 0);
        board.cell(1).serial.store(u64::MAX - 1, Ordering::Relaxed);
        assert_eq!(board.next_serial(1), u64::MAX - 1);
        let id = crate::id::ConnId::new(1, 0, board.next_serial(1));
        assert_eq!(id.to_string().parse::<crate::id::ConnId>(), Ok(id));
    }
}
