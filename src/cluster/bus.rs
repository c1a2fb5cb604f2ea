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
//! A link starts with `Hello { slot, incarnation, epoch }` followed by a
//! snapshot of the sender's part of the registry; after that come registry
//! changes and deliveries in the order they happened. The receiver trusts only
//! the newest link of each slot (highest incarnation, then epoch): on a newer
//! Hello it forgets everything that slot told it before; when that link ends
//! (the worker died) it forgets the slot's connections at once.
//!
//! Bound: each outbound link queues at most `bus_peer_buffer_bytes`. A peer
//! that does not read (stopped, stuck) past that is resynchronised: the queue is
//! dropped and counted ([`Bus::dropped_bytes`]), the link is closed and made
//! again with a fresh Hello and snapshot. Deliveries in the dropped queue are
//! lost for that peer's clients; the registry stays exact.

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
    /// When to try making the link again, if it is down.
    retry_at: Option<Instant>,
}

/// One inbound link.
struct Inbound {
    stream: UnixStream,
    buf: BytesMut,
    /// `(slot, incarnation, epoch)` from its Hello.
    from: Option<(u16, u32, u64)>,
}

/// The newest link of one slot, the only one whose records are applied.
#[derive(Clone, Copy)]
struct Current {
    incarnation: u32,
    epoch: u64,
    inbound: usize,
}

/// This worker's end of the mesh.
pub(crate) struct Bus {
    slot: u16,
    incarnation: u32,
    bus_id: u32,
    listener: UnixListener,
    peers: Vec<Peer>,
    inbound: Slab<Inbound>,
    current: Vec<Option<Current>>,
    epoch: u64,
    cap: usize,
    /// Bytes of records dropped because a peer fell `cap` behind.
    pub(crate) dropped_bytes: u64,
    /// Times a link was made again (after a peer died or fell behind).
    pub(crate) relinks: u64,
}

/// What reading an inbound link produced.
pub(crate) enum Inbox {
    /// A record to apply, from this slot.
    Record(u16, Record),
    /// The newest link of this slot ended or broke: forget its connections.
    SlotGone(u16),
    /// A newer link of this slot began: forget what it said before, then apply
    /// what follows.
    SlotReset(u16),
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
            current: vec![None; count as usize],
            epoch: 0,
            cap,
            dropped_bytes: 0,
            relinks: 0,
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
    /// it could not (it will be retried); the caller then queues the snapshot.
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
                peer.out.clear();
                bus_wire::encode(
                    &mut peer.out,
                    &Record::Hello {
                        slot: self.slot,
                        incarnation: self.incarnation,
                        epoch: self.epoch,
                    },
                );
                true
            }
            Err(e) => {
                log::debug!("bus: link to worker {slot} not made yet: {e}");
                peer.retry_at = Some(now + RETRY);
                false
            }
        }
    }

    /// Queues a record for one peer (if its link is up).
    pub(crate) fn send(&mut self, slot: u16, rec: &Record) {
        let peer = &mut self.peers[slot as usize];
        if peer.stream.is_some() {
            bus_wire::encode(&mut peer.out, rec);
        }
    }

    /// Queues a record for every peer, encoding it once.
    pub(crate) fn broadcast(&mut self, rec: &Record) {
        if self.peers.len() < 2 {
            return;
        }
        let mut one = BytesMut::new();
        bus_wire::encode(&mut one, rec);
        let me = self.slot as usize;
        for (s, peer) in self.peers.iter_mut().enumerate() {
            if s != me && peer.stream.is_some() {
                peer.out.extend_from_slice(&one);
            }
        }
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
            if peer.out.len() > self.cap {
                log::warn!(
                    "bus: worker {s} is {} bytes behind (limit {}): dropping its queue and relinking",
                    peer.out.len(),
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

    /// Accepts pending inbound links.
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
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("bus: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads an inbound link and hands every record it can decode to `apply`,
    /// in order. Records of a link that is not its slot's newest are skipped.
    pub(crate) fn read(&mut self, key: usize, registry: &Registry, mut apply: impl FnMut(Inbox)) {
        let ended = loop {
            let Some(link) = self.inbound.get_mut(key) else {
                return;
            };
            let r = read_into(&mut link.stream, &mut link.buf);
            let corrupt = self.drain(key, &mut apply).is_err();
            if corrupt {
                log::error!("bus: corrupt record on an inbound link; dropping it");
                break true;
            }
            match r {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        if ended {
            let mut link = self.inbound.remove(key);
            let _ = registry.deregister(&mut link.stream);
            if let Some((slot, ..)) = link.from {
                if self.current[slot as usize].is_some_and(|c| c.inbound == key) {
                    self.current[slot as usize] = None;
                    apply(Inbox::SlotGone(slot));
                }
            }
        }
    }

    fn drain(&mut self, key: usize, apply: &mut impl FnMut(Inbox)) -> Result<(), Corrupt> {
        loop {
            let link = &mut self.inbound[key];
            let Some(rec) = bus_wire::decode(&mut link.buf)? else {
                return Ok(());
            };
            if let Record::Hello {
                slot,
                incarnation,
                epoch,
            } = rec
            {
                if slot == self.slot || slot as usize >= self.current.len() || link.from.is_some() {
                    return Err(Corrupt);
                }
                link.from = Some((slot, incarnation, epoch));
                let newer = self.current[slot as usize]
                    .is_none_or(|c| (incarnation, epoch) > (c.incarnation, c.epoch));
                if newer {
                    self.current[slot as usize] = Some(Current {
                        incarnation,
                        epoch,
                        inbound: key,
                    });
                    apply(Inbox::SlotReset(slot));
                }
                continue;
            }
            let Some((slot, ..)) = link.from else {
                return Err(Corrupt);
            };
            if self.current[slot as usize].is_some_and(|c| c.inbound == key) {
                apply(Inbox::Record(slot, rec));
            }
        }
    }

    /// Bytes queued on all outbound links.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.peers.iter().map(|p| p.out.len()).sum()
    }
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
