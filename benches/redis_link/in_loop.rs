//! Design A: Redis connections owned by the loop. Commands of a turn are
//! encoded with foreman's RESP codec into one write buffer and written
//! together; replies and subscribed messages are decoded in the loop.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use foreman::bench_support::resp::{self, Value};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::{hset_field, payload, Driver, Work, CHANNEL, HASH};

const COMMANDS: Token = Token(0);
const SUBSCRIBER: Token = Token(1);

/// One non-blocking Redis connection with its buffers.
struct Link {
    stream: TcpStream,
    token: Token,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Whether WRITABLE is in the registered interest (only while output
    /// is left over: a write's ACK would otherwise wake the loop each time).
    want_write: bool,
}

impl Link {
    fn open(addr: SocketAddr, poll: &Poll, token: Token) -> io::Result<Link> {
        // Connecting blocks, once, before the measurement: what matters here
        // is the steady state.
        let std = std::net::TcpStream::connect(addr)?;
        std.set_nodelay(true)?;
        std.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std);
        poll.registry()
            .register(&mut stream, token, Interest::READABLE)?;
        Ok(Link {
            stream,
            token,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            want_write: false,
        })
    }

    /// Writes what is queued until the socket would block; asks for
    /// WRITABLE while something is left.
    fn write_out(&mut self, poll: &Poll) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let want = !self.wbuf.is_empty();
        if want != self.want_write {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry()
                .reregister(&mut self.stream, self.token, interest)?;
            self.want_write = want;
        }
        Ok(())
    }

    /// Reads until the socket would block (edge-triggered).
    fn read_in(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn next_value(&mut self) -> Result<Option<Value>, String> {
        resp::decode(&mut self.rbuf)
    }
}

/// The third element of a subscribed `message` push.
fn message_payload(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Array(Some(items)) if items.len() == 3 => match (&items[0], &items[2]) {
            (Value::Bulk(Some(kind)), Value::Bulk(Some(p))) if &kind[..] == b"message" => {
                Some(&p[..])
            }
            _ => None,
        },
        _ => None,
    }
}

/// Subscribes `link` to [`CHANNEL`] and waits (at most 5 s) for the
/// confirmation.
fn subscribe(link: &mut Link, poll: &mut Poll, scratch: &mut [u8]) -> Result<(), String> {
    resp::encode(
        &mut link.wbuf,
        &[b"SUBSCRIBE".as_slice(), CHANNEL.as_bytes()],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events = Events::with_capacity(16);
    loop {
        link.write_out(poll)
            .map_err(|e| format!("subscribe: {e}"))?;
        if let Some(v) = link.next_value()? {
            return match v {
                Value::Array(Some(items)) if items.len() == 3 => Ok(()),
                other => Err(format!("subscribe answered {other:?}")),
            };
        }
        if Instant::now() > deadline {
            return Err("no SUBSCRIBE confirmation within 5 s".into());
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        link.read_in(scratch)
            .map_err(|e| format!("subscribe: {e}"))?;
    }
}

/// Whether `v` is what the command of `work` answers.
fn expected(work: Work, v: &Value) -> bool {
    match (work, v) {
        // One subscriber: every PUBLISH reaches exactly one.
        (Work::Publish(_), Value::Int(n)) => *n == 1,
        (Work::Ping, Value::Simple(s)) => &s[..] == b"PONG",
        (Work::Hset, Value::Int(n)) => *n == 0 || *n == 1,
        _ => false,
    }
}

/// Runs `d`'s workload to its end.
pub fn run(addr: SocketAddr, d: &mut Driver) -> Result<(), String> {
    let err = |e: io::Error| e.to_string();
    let mut poll = Poll::new().map_err(err)?;
    let mut scratch = vec![0u8; 64 * 1024];
    let work = d.work();
    let mut cmds = Link::open(addr, &poll, COMMANDS).map_err(err)?;
    let mut sub = None;
    if work.delivers() {
        let mut link = Link::open(addr, &poll, SUBSCRIBER).map_err(err)?;
        subscribe(&mut link, &mut poll, &mut scratch)?;
        sub = Some(link);
    }
    let mut events = Events::with_capacity(64);
    while !d.done()? {
        // This turn's commands: one buffer, one write.
        if let Some((first, n, ts)) = d.next_burst() {
            for seq in first..first + n as u64 {
                match work {
                    Work::Publish(_) => resp::encode(
                        &mut cmds.wbuf,
                        &[b"PUBLISH".as_slice(), CHANNEL.as_bytes(), &payload(seq, ts)],
                    ),
                    Work::Ping => resp::encode(&mut cmds.wbuf, &[b"PING"]),
                    Work::Hset => resp::encode(
                        &mut cmds.wbuf,
                        &[
                            b"HSET".as_slice(),
                            HASH.as_bytes(),
                            hset_field(seq).as_bytes(),
                            b"0123456789abcdef",
                        ],
                    ),
                }
            }
            cmds.write_out(&poll).map_err(err)?;
        }
        match poll.poll(&mut events, Some(crate::POLL_TIMEOUT)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r.map_err(err)?,
        }
        for ev in events.iter() {
            if ev.token() == COMMANDS {
                if ev.is_writable() {
                    cmds.write_out(&poll).map_err(err)?;
                }
                cmds.read_in(&mut scratch).map_err(err)?;
                while let Some(v) = cmds.next_value()? {
                    d.on_reply(expected(work, &v));
                }
            } else if let Some(link) = sub.as_mut() {
                link.read_in(&mut scratch).map_err(err)?;
                while let Some(v) = link.next_value()? {
                    match message_payload(&v) {
                        Some(p) => d.on_delivery(p),
                        None => return Err(format!("subscriber got {v:?}")),
                    }
                }
            }
        }
    }
    Ok(())
}
