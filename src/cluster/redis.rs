//! One TCP connection to Redis inside a worker's mio loop: non-blocking
//! connect, a bounded output buffer that commands are appended to (so every
//! command of a loop turn goes out in one write: pipelining for free), and
//! replies decoded with [`super::resp`]. Nothing here blocks: a Redis that
//! does not read leaves bytes in the buffer until it is full, and a Redis
//! that does not answer is noticed by the caller's reply deadline.

use super::resp::{self, Value};
use crate::config::RedisUrl;
use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const READ_CHUNK: usize = 64 * 1024;
/// First pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No socket; try again at the time given.
    Down(Instant),
    /// `connect` is under way.
    Connecting,
    /// Connected (AUTH and SELECT are queued first, so commands after them
    /// run in the right database).
    Up,
}

/// One connection; see the module docs.
pub(crate) struct Link {
    token: Token,
    url: RedisUrl,
    addr: Option<SocketAddr>,
    stream: Option<TcpStream>,
    pub(crate) phase: Phase,
    out: BytesMut,
    input: BytesMut,
    /// Most bytes `out` may hold; past it the link is dropped.
    cap: usize,
    backoff: Duration,
    writable: bool,
    /// Bytes at the front of `out` that do not count against the cap (a
    /// unit's whole state, written once per connect).
    exempt: usize,
    /// When the current connect began.
    connecting_since: Option<Instant>,
}

impl Link {
    pub(crate) fn new(
        token: Token,
        url: RedisUrl,
        addr: Option<SocketAddr>,
        cap: usize,
        now: Instant,
    ) -> Link {
        Link {
            token,
            url,
            addr,
            stream: None,
            phase: Phase::Down(now),
            out: BytesMut::new(),
            input: BytesMut::new(),
            cap,
            backoff: MIN_BACKOFF,
            writable: false,
            exempt: 0,
            connecting_since: None,
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// When a down link should be tried again.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Down(t) => Some(t),
            _ => None,
        }
    }

    /// Starts connecting if the link is down and its pause is over. The
    /// address comes from the master's lookup; only when that failed is the
    /// host looked up here (a name lookup blocks), once, and kept.
    pub(crate) fn try_connect(&mut self, mio: &Registry, now: Instant) -> io::Result<bool> {
        match self.phase {
            Phase::Down(t) if t <= now => {}
            _ => return Ok(false),
        }
        let addr = match self.addr {
            Some(a) => a,
            None => {
                let a = std::net::ToSocketAddrs::to_socket_addrs(&(
                    self.url.host.as_str(),
                    self.url.port,
                ))?
                .next()
                .ok_or_else(|| io::Error::other("the host name has no address"))?;
                self.addr = Some(a);
                a
            }
        };
        let mut stream = TcpStream::connect(addr)?;
        mio.register(
            &mut stream,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        self.phase = Phase::Connecting;
        self.connecting_since = Some(now);
        self.writable = false;
        self.exempt = 0;
        self.out.clear();
        self.input.clear();
        // Authentication and database come first.
        if let Some(pw) = &self.url.password {
            match &self.url.username {
                Some(u) => resp::encode(&mut self.out, &[b"AUTH", u.as_bytes(), pw.as_bytes()]),
                None => resp::encode(&mut self.out, &[&b"AUTH"[..], pw.as_bytes()]),
            }
        }
        if self.url.db != 0 {
            let db = self.url.db.to_string();
            resp::encode(&mut self.out, &[&b"SELECT"[..], db.as_bytes()]);
        }
        Ok(true)
    }

    /// How many replies the handshake queued (AUTH, SELECT) before the
    /// caller's first command.
    pub(crate) fn handshake_replies(&self) -> usize {
        usize::from(self.url.password.is_some()) + usize::from(self.url.db != 0)
    }

    /// Drops the socket; the next attempt comes after a growing pause.
    pub(crate) fn drop_link(&mut self, mio: &Registry, now: Instant) {
        if let Some(mut s) = self.stream.take() {
            let _ = mio.deregister(&mut s);
        }
        let jitter = Duration::from_millis(crate::entropy::next_u64() % 50);
        self.phase = Phase::Down(now + self.backoff + jitter);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.out.clear();
        self.input.clear();
    }

    /// Appends one command; false (nothing appended) when the link is down.
    /// A link that is up takes every command (so a `MULTI` is never cut in
    /// two and replies stay in step with what was sent); one whose buffer
    /// ends a turn over its cap is dropped by the caller
    /// ([`Link::over_cap`]).
    pub(crate) fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> bool {
        if self.stream.is_none() {
            return false;
        }
        resp::encode(&mut self.out, args);
        true
    }

    /// Lets what is queued now through whatever its size (a unit's state).
    pub(crate) fn exempt_queued(&mut self) {
        self.exempt = self.out.len();
    }

    /// More is queued than the cap allows, besides what is exempt.
    pub(crate) fn over_cap(&self) -> bool {
        self.out.len() > self.cap + self.exempt
    }

    /// The connect has been under way longer than `limit`.
    pub(crate) fn connect_overdue(&self, now: Instant, limit: Duration) -> bool {
        self.phase == Phase::Connecting && self.connecting_since.is_some_and(|t| now > t + limit)
    }

    /// Handles a readiness event: finishes a connect, writes what is queued.
    /// `Ok(true)` when the link just came up.
    pub(crate) fn ready(&mut self, writable: bool) -> io::Result<bool> {
        let Some(stream) = &self.stream else {
            return Ok(false);
        };
        let mut came_up = false;
        if self.phase == Phase::Connecting {
            if let Some(e) = stream.take_error()? {
                return Err(e);
            }
            match stream.peer_addr() {
                Ok(_) => {
                    self.phase = Phase::Up;
                    self.backoff = MIN_BACKOFF;
                    came_up = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if writable {
            self.writable = true;
        }
        self.flush()?;
        Ok(came_up)
    }

    /// Writes what is queued, as far as the socket takes it.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.phase != Phase::Up || !self.writable {
            return Ok(());
        }
        let Some(stream) = &mut self.stream else {
            return Ok(());
        };
        while !self.out.is_empty() {
            match stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.out.split_to(n);
                    self.exempt = self.exempt.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out.is_empty() && self.out.capacity() > 1 << 20 {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Reads what arrived (at most `budget` bytes) and hands each complete
    /// reply to `f`. An error or end of stream means the link is broken.
    pub(crate) fn read(&mut self, budget: usize, mut f: impl FnMut(Value)) -> io::Result<bool> {
        let Some(stream) = &mut self.stream else {
            return Ok(false);
        };
        let mut got = 0;
        let mut more = false;
        loop {
            if got >= budget {
                more = true;
                break;
            }
            self.input.reserve(READ_CHUNK);
            let start = self.input.len();
            // SAFETY-free: read into the spare capacity through a zeroed tail.
            self.input.resize(start + READ_CHUNK, 0);
            match stream.read(&mut self.input[start..]) {
                Ok(0) => {
                    self.input.truncate(start);
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => {
                    self.input.truncate(start + n);
                    got += n;
                }
                Err(e) => {
                    self.input.truncate(start);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(e),
                    }
                }
            }
            while let Some(v) = resp::decode(&mut self.input).map_err(|c| io::Error::other(c.0))? {
                f(v);
            }
        }
        while let Some(v) = resp::decode(&mut self.input).map_err(|c| io::Error::other(c.0))? {
            f(v);
        }
        Ok(more)
    }
}
