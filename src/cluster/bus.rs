//! The inter-worker bus: a mesh of Unix stream sockets, one link per ordered
//! pair of workers, so per sender and receiver order is kept and no record takes
//! an extra hop.
//!
//! Every worker slot has a listening socket (an abstract Unix address named
//! after the master's pid and the slot). The master binds them all before it
//! forks and keeps them open across worker restarts, so a replacement inherits
//! its slot's listener and links made while the slot was empty wait in its
//! backlog. A worker *sends* only on the links it made (outbound) and *receives*
//! only on the links it accepted (inbound).
//!
//! A link starts with `Hello { slot, incarnation, epoch, seq }` followed by a
//! snapshot of the sender's part of the registry; after that come registry
//! changes and deliveries in the order they happened. The receiver applies the
//! links of one slot one at a time, oldest first (incarnation, then epoch): a
//! newer link waits, unread, until the one before it has ended and all its
//! records are applied, so order holds across a relink. A link older than
//! the one applied is skipped. When a link is taken up the receiver forgets
//! everything that slot told it before (the snapshot follows); when the
//! applied link ends (the worker died) it forgets the slot's connections at
//! once.
//!
//! Bound: each outbound link queues at most `bus_peer_buffer_bytes` besides
//! its snapshot (which always goes through, however big). A peer that does
//! not read (stopped, stuck) past that is resynchronised: the queue is dropped
//! and counted ([`Bus::dropped_bytes`]), the link is closed and made again
//! with a fresh Hello and snapshot. The registry stays exact.
//!
//! Gaps: the sender numbers the records meant for each peer, whether they
//! were written, dropped with a queue or skipped while the link was down; the
//! Hello carries the number of the record after it. The receiver counts what
//! it applied from each incarnation of a sender; when it takes up a new link
//! of the same incarnation and the numbers differ, records were lost, and it
//! reports [`Inbox::Gap`] before applying anything of the new link: the loop
//! then calls [`crate::Handler::on_gap`] and counts it ([`Bus::gaps`]).
//! Nothing is lost silently.
//!
//! Reading is bounded: at most [`READ_BUDGET`] bytes of one link per call;
//! a link with more is listed in [`Bus::take_pending`] for the next turn.
//! A record larger than [`bus_wire::MAX_RECORD`] is never queued: the sender
//! refuses it ([`Bus::send`] and [`Bus::broadcast`] return false).

use super::wire::{self as bus_wire, Corrupt, Record};
use bytes::BytesMut;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::time::{Duration, Instant};

/// Token of the slot's listening socket.
pub(crate) const LISTEN: Token = Token(usize::MAX - 8);
/// Outbound link to slot `s` has token `OUT_BASE + s`.
const OUT_BASE: usize = 1 << 40;
/// Inbound link with slab key `k` has token `IN_BASE + k`.
const IN_BASE: usize = 1 << 41;
/// How long to wait before retrying a link that could not be made.
const RETRY: Duration = Duration::from_millis(50);
const READ_CHUNK: usize = 64 * 1024;
/// What one call of [`Bus::read`] reads of one link, as for a client.
const READ_BUDGET: usize = 256 * 1024;

/// The abstract Unix address of a slot's bus listener.
pub(crate) fn address(bus_id: u32, slot: usize) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(bus_name(bus_id, slot))
}

fn bus_name(bus_id: u32, slot: usize) -> String {
    format!("foreman-bus.{bus_id}.{slot}")
}

/// Connects to a slot's bus listener without blocking: a listener whose
/// backlog is full (its worker is stopped) answers `EAGAIN` instead of
/// stalling this worker's loop, and the link is retried later.
fn connect(bus_id: u32, slot: u16) -> io::Result<UnixStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new_abstract(bus_name(bus_id, slot as usize).as_bytes())?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from_std(std::os::unix::net::UnixStream::from(
        fd,
    )))
}

/// What a bus token refers to.
pub(crate) enum BusToken {
    Listen,
    Out(u16),
    In(usize),
}

pub(crate) fn classify(token: Token) -> Option<BusToken> {
    match token.0 {
        t if t == LISTEN.0 => Some(BusToken::Listen),
        t if (OUT_BASE..IN_BASE).contains(&t) => Some(BusToken::Out((t - OUT_BASE) as u16)),
        t if (IN_BASE..IN_BASE * 2).contains(&t) => Some(BusToken::In(t - IN_BASE)),
        _ => None,
    }
}

/// One outbound link.
#[derive(Default)]
struct Peer {
    stream: Option<UnixStream>,
    /// Bytes not yet written to the socket.
    out: BytesMut,
    /// The front bytes of `out` that are the Hello and snapshot, which do
    /// not count against the cap.
    snapshot_left: usize,
    /// When to try making the link again, if it is down.
    retry_at: Option<Instant>,
    /// Records meant for this peer so far, sent or lost.
    seq: u64,
    /// The last attempt to link failed (so the next failure is not logged).
    failing: bool,
}

/// Who is on the other end of an inbound link, from its Hello.
#[derive(Clone, Copy)]
struct From {
    slot: u16,
    incarnation: u32,
    epoch: u64,
    /// The sender's number of the first record after the Hello.
    seq: u64,
}

impl From {
    fn rank(&self) -> (u32, u64) {
        (self.incarnation, self.epoch)
    }
}

/// One inbound link.
struct Inbound {
    stream: UnixStream,
    buf: BytesMut,
    from: Option<From>,
    /// A newer link of its slot, waiting unread for the applied one to end.
    waiting: bool,
    /// Listed in [`Bus::pending`].
    pending: bool,
}

/// What this worker knows of one other slot's links.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// The link whose records are applied: `(incarnation, epoch, key)`.
    current: Option<(u32, u64, usize)>,
    /// The incarnation last applied and the number of the next record
    /// expected from it.
    expect: Option<(u32, u64)>,
}

/// This worker's end of the mesh.
pub(crate) struct Bus {
    slot: u16,
    incarnation: u32,
    bus_id: u32,
    listener: UnixListener,
    peers: Vec<Peer>,
    inbound: Slab<Inbound>,
    slots: Vec<Slot>,
    /// Inbound links with more to read next turn.
    pending: Vec<usize>,
    epoch: u64,
    cap: usize,
    /// Bytes of records dropped because a peer fell `cap` behind.
    pub(crate) dropped_bytes: u64,
    /// Times a link was made again (after a peer died or fell behind).
    pub(crate) relinks: u64,
    /// Times another worker's records were found missing (see the module docs).
    pub(crate) gaps: u64,
}

/// What reading an inbound link produced.
pub(crate) enum Inbox {
    /// A record to apply, from this slot.
    Record(u16, Record),
    /// The applied link of this slot ended or broke: forget its connections.
    SlotGone(u16),
    /// A newer link of this slot began: forget what it said before, then apply
    /// what follows.
    SlotReset(u16),
    /// Records this slot meant for this worker were lost (this many) before
    /// what follows: act on it before applying anything more.
    Gap(u16, u64),
}

impl Bus {
    pub(crate) fn new(
        slot: u16,
        count: u16,
        incarnation: u32,
        bus_id: u32,
        listener: std::os::unix::net::UnixListener,
        registry: &Registry,
        cap: usize,
    ) -> io::Result<Bus> {
        listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(listener);
        registry.register(&mut listener, LISTEN, Interest::READABLE)?;
        Ok(Bus {
            slot,
            incarnation,
            bus_id,
            listener,
            peers: (0..count).map(|_| Peer::default()).collect(),
            inbound: Slab::new(),
            slots: vec![Slot::default(); count as usize],
            pending: Vec::new(),
            epoch: 0,
            cap,
            dropped_bytes: 0,
            relinks: 0,
            gaps: 0,
        })
    }

    fn others(&self) -> impl Iterator<Item = u16> + '_ {
        let me = self.slot;
        (0..self.peers.len() as u16).filter(move |s| *s != me)
    }

    /// Slots whose outbound link is down and due for another try.
    pub(crate) fn due_links(&self, now: Instant) -> Vec<u16> {
        self.others()
            .filter(|s| {
                let p = &self.peers[*s as usize];
                p.stream.is_none() && p.retry_at.is_none_or(|t| t <= now)
            })
            .collect()
    }

    /// The earliest retry deadline, for the poll timeout.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.peers.iter().filter_map(|p| p.retry_at).min()
    }

    /// Makes the outbound link to `slot` and queues its Hello. Returns false if
    /// it could not (it will be retried); the caller then queues the snapshot
    /// and calls [`Bus::snapshot_queued`].
    pub(crate) fn link(&mut self, slot: u16, registry: &Registry, now: Instant) -> bool {
        let peer = &mut self.peers[slot as usize];
        if let Some(mut old) = peer.stream.take() {
            let _ = registry.deregister(&mut old);
        }
        let attempt = connect(self.bus_id, slot).and_then(|mut s| {
            registry.register(
                &mut s,
                Token(OUT_BASE + slot as usize),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match attempt {
            Ok(stream) => {
                self.epoch += 1;
                peer.stream = Some(stream);
                peer.retry_at = None;
                peer.failing = false;
                peer.out.clear();
                bus_wire::encode(
                    &mut peer.out,
                    &Record::Hello {
                        slot: self.slot,
                        incarnation: self.incarnation,
                        epoch: self.epoch,
                        seq: peer.seq,
                    },
                );
                true
            }
            Err(e) => {
                // A stopped peer's full backlog (EAGAIN) or no descriptor
                // left (EMFILE): retried, and said once per episode.
                if !std::mem::replace(&mut peer.failing, true) {
                    log::warn!("bus: cannot link to worker {slot} yet ({e}); retrying");
                }
                peer.retry_at = Some(now + RETRY);
                false
            }
        }
    }

    /// What is queued for `slot` now is its snapshot: it is written whatever
    /// its size, and only what comes after it counts against the cap.
    pub(crate) fn snapshot_queued(&mut self, slot: u16) {
        let peer = &mut self.peers[slot as usize];
        peer.snapshot_left = peer.out.len();
    }

    /// Queues a record for one peer (if its link is up; else it is counted
    /// as lost for that peer). False if the record is too large to send.
    pub(crate) fn send(&mut self, slot: u16, rec: &Record) -> bool {
        if !bus_wire::fits(rec) {
            return refuse(rec);
        }
        let peer = &mut self.peers[slot as usize];
        peer.seq += 1;
        if peer.stream.is_some() {
            bus_wire::encode(&mut peer.out, rec);
        }
        true
    }

    /// Queues a record for every peer, encoding it once. False if the record
    /// is too large to send.
    pub(crate) fn broadcast(&mut self, rec: &Record) -> bool {
        if !bus_wire::fits(rec) {
            return refuse(rec);
        }
        if self.peers.len() < 2 {
            return true;
        }
        let mut one = BytesMut::new();
        bus_wire::encode(&mut one, rec);
        let me = self.slot as usize;
        for (s, peer) in self.peers.iter_mut().enumerate() {
            if s != me {
                peer.seq += 1;
                if peer.stream.is_some() {
                    peer.out.extend_from_slice(&one);
                }
            }
        }
        true
    }

    /// Writes what is queued. Links that broke or fell `cap` behind are closed
    /// and returned, for the caller to make again (with a snapshot).
    pub(crate) fn flush(&mut self, registry: &Registry) -> Vec<u16> {
        let mut broken = Vec::new();
        for s in 0..self.peers.len() as u16 {
            let peer = &mut self.peers[s as usize];
            let Some(stream) = peer.stream.as_mut() else {
                continue;
            };
            let mut failed = false;
            while !peer.out.is_empty() {
                match stream.write(&peer.out) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => {
                        let _ = peer.out.split_to(n);
                        peer.snapshot_left = peer.snapshot_left.saturating_sub(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::debug!("bus: link to worker {s} broke: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            let behind = peer.out.len() - peer.snapshot_left;
            if behind > self.cap {
                log::warn!(
                    "bus: worker {s} is {behind} bytes behind (limit {}): dropping its queue and \
                     relinking; its clients will be told of the gap",
                    self.cap
                );
                self.dropped_bytes += peer.out.len() as u64;
                failed = true;
            }
            if failed {
                self.drop_link(s, registry);
                broken.push(s);
            }
        }
        broken
    }

    fn drop_link(&mut self, slot: u16, registry: &Registry) {
        let peer = &mut self.peers[slot as usize];
        if let Some(mut s) = peer.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        peer.out = BytesMut::new();
        peer.snapshot_left = 0;
        peer.retry_at = None;
        self.relinks += 1;
    }

    /// An event on an outbound link: the peer never writes to it, so readable
    /// means it ended. Returns true if the link is gone and must be made again.
    pub(crate) fn outbound_event(&mut self, slot: u16, registry: &Registry) -> bool {
        let Some(stream) = self
            .peers
            .get_mut(slot as usize)
            .and_then(|p| p.stream.as_mut())
        else {
            return false;
        };
        let mut probe = [0u8; 64];
        loop {
            match stream.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        log::debug!("bus: worker {slot} closed our link");
        self.drop_link(slot, registry);
        true
    }

    /// Accepts pending inbound links. Each is listed for reading at once, so
    /// the Hellos of links are seen in the order the links were made.
    pub(crate) fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let entry = self.inbound.vacant_entry();
                    let key = entry.key();
                    if let Err(e) =
                        registry.register(&mut stream, Token(IN_BASE + key), Interest::READABLE)
                    {
                        log::error!("bus: cannot register inbound link: {e}");
                        continue;
                    }
                    entry.insert(Inbound {
                        stream,
                        buf: BytesMut::new(),
                        from: None,
                        waiting: false,
                        pending: true,
                    });
                    self.pending.push(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("bus: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Inbound links to read again (their budget ran out, they were just
    /// accepted or taken up); clears the list.
    pub(crate) fn take_pending(&mut self) -> Vec<usize> {
        let keys = std::mem::take(&mut self.pending);
        for &k in &keys {
            if let Some(link) = self.inbound.get_mut(k) {
                link.pending = false;
            }
        }
        keys
    }

    /// Whether every other worker's link has been taken up once (its
    /// Hello read; its snapshot follows it on the same link), so this
    /// worker's registry replica knows of their connections.
    pub(crate) fn heard_from_all(&self) -> bool {
        self.slots
            .iter()
            .enumerate()
            .all(|(i, s)| i == self.slot as usize || s.current.is_some() || s.expect.is_some())
    }

    /// Whether some inbound link has more to read.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn mark_pending(&mut self, key: usize) {
        if let Some(link) = self.inbound.get_mut(key) {
            if !std::mem::replace(&mut link.pending, true) {
                self.pending.push(key);
            }
        }
    }

    /// Reads an inbound link, at most [`READ_BUDGET`] bytes, and hands every
    /// record it can decode to `apply`, in order. Records of a link older
    /// than its slot's applied one are skipped; a newer link is not read
    /// until the applied one has ended.
    pub(crate) fn read(&mut self, key: usize, registry: &Registry, mut apply: impl FnMut(Inbox)) {
        let mut budget = READ_BUDGET;
        let ended = loop {
            match self.inbound.get(key) {
                Some(link) if !link.waiting => {}
                _ => return,
            }
            if self.drain(key, &mut apply).is_err() {
                log::error!("bus: corrupt record on an inbound link; dropping it");
                break true;
            }
            if self.inbound[key].waiting {
                return;
            }
            if budget == 0 {
                self.mark_pending(key);
                return;
            }
            let link = &mut self.inbound[key];
            match read_into(&mut link.stream, &mut link.buf) {
                Ok(0) => break true,
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if ended {
            self.end(key, registry, &mut apply);
        }
    }

    /// A link ended: forget it; if it was its slot's applied link, forget the
    /// slot's connections and take up the next link waiting for it.
    fn end(&mut self, key: usize, registry: &Registry, apply: &mut impl FnMut(Inbox)) {
        let mut link = self.inbound.remove(key);
        let _ = registry.deregister(&mut link.stream);
        let Some(from) = link.from else { return };
        let slot = &mut self.slots[from.slot as usize];
        if slot.current.is_none_or(|(.., k)| k != key) {
            return;
        }
        slot.current = None;
        apply(Inbox::SlotGone(from.slot));
        let next = self
            .inbound
            .iter()
            .filter(|(_, l)| l.waiting)
            .filter_map(|(k, l)| {
                l.from
                    .filter(|f| f.slot == from.slot)
                    .map(|f| (f.rank(), k))
            })
            .min();
        if let Some((_, k)) = next {
            self.take_up(k, apply);
            self.mark_pending(k);
        }
    }

    /// Makes link `key` its slot's applied one: the slot is reset, and a gap
    /// since the link before it is reported first.
    fn take_up(&mut self, key: usize, apply: &mut impl FnMut(Inbox)) {
        let link = &mut self.inbound[key];
        link.waiting = false;
        let Some(from) = link.from else { return };
        let slot = &mut self.slots[from.slot as usize];
        let missed = match slot.expect {
            Some((inc, next)) if inc == from.incarnation && next != from.seq => {
                Some(from.seq.wrapping_sub(next))
            }
            _ => None,
        };
        slot.current = Some((from.incarnation, from.epoch, key));
        slot.expect = Some((from.incarnation, from.seq));
        apply(Inbox::SlotReset(from.slot));
        if let Some(missed) = missed {
            self.gaps += 1;
            apply(Inbox::Gap(from.slot, missed));
        }
    }

    fn drain(&mut self, key: usize, apply: &mut impl FnMut(Inbox)) -> Result<(), Corrupt> {
        loop {
            let link = &mut self.inbound[key];
            if link.waiting {
                return Ok(());
            }
            let Some(rec) = bus_wire::decode(&mut link.buf)? else {
                return Ok(());
            };
            if let Record::Hello {
                slot,
                incarnation,
                epoch,
                seq,
            } = rec
            {
                if slot == self.slot || slot as usize >= self.slots.len() || link.from.is_some() {
                    return Err(Corrupt);
                }
                let from = From {
                    slot,
                    incarnation,
                    epoch,
                    seq,
                };
                link.from = Some(from);
                match self.slots[slot as usize].current {
                    // An older link: its records are skipped.
                    Some((i, e, _)) if from.rank() <= (i, e) => {}
                    // A newer one waits for the applied one to end.
                    Some(_) => link.waiting = true,
                    None => self.take_up(key, apply),
                }
                continue;
            }
            let Some(from) = link.from else {
                return Err(Corrupt);
            };
            let slot = &mut self.slots[from.slot as usize];
            if slot.current.is_some_and(|(.., k)| k == key) {
                if let Some((_, next)) = slot.expect.as_mut() {
                    *next += 1;
                }
                apply(Inbox::Record(from.slot, rec));
            }
        }
    }

    /// Bytes queued on all outbound links.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.peers.iter().map(|p| p.out.len()).sum()
    }
}

/// Logs a record too large for any peer to accept; false, for the caller.
fn refuse(rec: &Record) -> bool {
    log::error!(
        "bus: refusing a record of {} bytes (the limit is {}): nothing was sent",
        bus_wire::body_len(rec),
        bus_wire::MAX_RECORD
    );
    false
}

/// Reads once from `stream` into the spare capacity of `buf` (no zeroing).
fn read_into(stream: &mut UnixStream, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    let spare = buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into the spare
    // capacity, and we mark as initialised exactly the bytes it reports.
    let n = unsafe {
        libc::read(
            stream.as_raw_fd(),
            spare.as_mut_ptr().cast::<libc::c_void>(),
            spare.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n` bytes past the old length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mio::Poll;

    fn msg(text: &'static str) -> Record {
        Record::WorkerMsg(Bytes::from_static(text.as_bytes()))
    }

    /// What `apply` was handed, as text.
    fn show(item: Inbox) -> String {
        match item {
            Inbox::Record(s, Record::WorkerMsg(d)) => {
                format!("{s}: {}", String::from_utf8_lossy(&d))
            }
            Inbox::Record(s, r) => format!("{s}: {r:?}"),
            Inbox::SlotGone(s) => format!("{s} gone"),
            Inbox::SlotReset(s) => format!("{s} reset"),
            Inbox::Gap(s, n) => format!("{s} gap of {n}"),
        }
    }

    /// Two buses (slots 0 and 1) of one process, on addresses of their own.
    fn pair(poll: &Poll, bus_id: u32) -> (Bus, Bus) {
        let listen = |slot| {
            std::os::unix::net::UnixListener::bind_addr(&address(bus_id, slot).expect("address"))
                .expect("bind")
        };
        let reg = poll.registry();
        let receiver = Bus::new(0, 2, 0, bus_id, listen(0), reg, 1 << 20).expect("bus 0");
        let sender = Bus::new(1, 2, 0, bus_id, listen(1), reg, 1 << 20).expect("bus 1");
        (receiver, sender)
    }

    /// Reads `key`, then whatever is pending, as the loop does.
    fn read(bus: &mut Bus, key: usize, reg: &Registry, out: &mut Vec<String>) {
        bus.read(key, reg, |i| out.push(show(i)));
        while bus.has_pending() {
            for k in bus.take_pending() {
                bus.read(k, reg, |i| out.push(show(i)));
            }
        }
    }

    #[test]
    fn a_newer_link_waits_for_the_old_one_and_a_loss_is_reported_before_it() {
        let poll = Poll::new().expect("poll");
        let reg = poll.registry();
        let (mut rx, mut tx) = pair(&poll, 0x7e57_0000 ^ std::process::id());
        let now = Instant::now();
        assert!(tx.link(0, reg, now));
        tx.snapshot_queued(0);
        tx.send(0, &msg("a0"));
        tx.send(0, &msg("a1"));
        tx.flush(reg);
        rx.accept(reg);
        let mut got = Vec::new();
        for k in rx.take_pending() {
            read(&mut rx, k, reg, &mut got);
        }
        // a2 reaches the socket; "lost" is still queued when the link is
        // dropped (as when the peer falls behind), so it never leaves.
        tx.send(0, &msg("a2"));
        tx.flush(reg);
        tx.send(0, &msg("lost"));
        tx.drop_link(0, reg);
        assert!(tx.link(0, reg, now));
        tx.send(0, &msg("b0"));
        tx.flush(reg);
        rx.accept(reg);
        let new = rx.take_pending();
        assert_eq!(new.len(), 1);
        // The new link is read first (its event came first): it must wait
        // until the old one's last record is applied and the old one ended.
        read(&mut rx, new[0], reg, &mut got);
        read(&mut rx, 0, reg, &mut got);
        // A relink that lost nothing is no gap.
        tx.drop_link(0, reg);
        assert!(tx.link(0, reg, now));
        tx.send(0, &msg("c0"));
        tx.flush(reg);
        rx.accept(reg);
        read(&mut rx, new[0], reg, &mut got);
        for k in rx.take_pending() {
            read(&mut rx, k, reg, &mut got);
        }
        assert_eq!(
            got,
            [
                "1 reset",
                "1: a0",
                "1: a1",
                "1: a2",
                "1 gone",
                "1 reset",
                "1 gap of 1",
                "1: b0",
                "1 gone",
                "1 reset",
                "1: c0"
            ]
        );
        assert_eq!(rx.gaps, 1);
    }

    #[test]
    fn a_snapshot_larger_than_the_cap_goes_through_and_a_huge_record_is_refused() {
        let poll = Poll::new().expect("poll");
        let reg = poll.registry();
        let (_rx, mut tx) = pair(&poll, 0x7e58_0000 ^ std::process::id());
        assert!(tx.link(0, reg, Instant::now()));
        let big = Record::WorkerMsg(Bytes::from(vec![b's'; 3 << 20]));
        tx.send(0, &big);
        tx.snapshot_queued(0);
        assert!(
            tx.flush(reg).is_empty(),
            "the snapshot counted against the cap"
        );
        tx.send(0, &big);
        assert_eq!(tx.flush(reg), [0], "what follows the snapshot is capped");
        let huge = Record::Deliver {
            target: bus_wire::Target::All { exclude: vec![] },
            payload: Bytes::from(vec![0u8; bus_wire::MAX_RECORD]),
        };
        assert!(!tx.broadcast(&huge));
        assert!(!tx.send(0, &huge));
    }
}
