//! One client connection: its socket, protocol state and queued output.

use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;
use tungstenite::protocol::WebSocketContext;

/// Most buffers handed to one `writev`.
const MAX_IOV: usize = 64;

/// Output waiting for the socket: whole encoded frames, shared with other
/// recipients of the same broadcast. Written with one `writev` per loop turn.
#[derive(Default)]
pub(crate) struct OutQueue {
    bufs: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    pub(crate) fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.bufs.push_back(b);
        }
    }

    /// Bytes queued.
    pub(crate) fn len(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Writes as much as the socket takes. `Ok(true)`: all written.
    pub(crate) fn write_to(&mut self, w: &mut impl SendVectored) -> io::Result<bool> {
        while !self.bufs.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let n = self
                .bufs
                .iter()
                .zip(slices.iter_mut())
                .map(|(b, s)| *s = IoSlice::new(b))
                .count();
            match w.send_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Frees the queue's allocation when it is empty: called for quiet
    /// connections, so an idle connection keeps none, while a busy one reuses
    /// its allocation turn after turn.
    pub(crate) fn release(&mut self) {
        if self.bufs.is_empty() && self.bufs.capacity() > 0 {
            self.bufs = VecDeque::new();
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self.bufs.front_mut().expect("wrote more than queued");
            if front.len() <= n {
                n -= front.len();
                self.bufs.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

/// Where queued output goes: a socket, or a mock in tests.
pub(crate) trait SendVectored {
    /// Writes what it can of `bufs`, in order, without blocking.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl SendVectored for TcpStream {
    /// `sendmsg(2)` rather than `writev(2)`: the socket call skips the VFS
    /// layer (file position lock, iterator setup), which shows in profiles of
    /// broadcasts, where nearly all the time is one send per connection.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero msghdr is valid; it then points at `bufs`, whose
        // `IoSlice`s are ABI-compatible with `iovec`, for the duration of the
        // call only.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        // SAFETY: `msg` is valid as above; the fd is this stream's own.
        let n = unsafe {
            libc::sendmsg(
                self.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// The stream tungstenite sees: reads come from the bytes the worker already
/// read from the socket, writes (pongs, close frames) go to the queue, in order
/// with the frames the worker queued itself.
pub(crate) struct WsIo<'a> {
    pub(crate) input: &'a [u8],
    pub(crate) out: &'a mut OutQueue,
}

impl Read for WsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for WsIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a connection is in its life.
pub(crate) enum State {
    /// Reading an HTTP request head (and body) on a `websocket://` listener.
    Head(BytesMut),
    /// An open WebSocket.
    Ws(Box<WebSocketContext>),
    /// An open `text://`, `frame://` or `tcp://` connection, with its partial input.
    Plain(BytesMut),
    /// Nothing more is read: an HTTP response or a close is being written.
    Done,
}

/// One connection in the worker's slab.
pub(crate) struct Conn {
    pub(crate) sock: TcpStream,
    /// With the slot and key, the [`crate::ConnId`].
    pub(crate) serial: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) state: State,
    pub(crate) out: OutQueue,
    /// Visible to the handler: `on_connect` was called and `on_close` not yet.
    pub(crate) open: bool,
    /// We are closing: drop the socket once the output is written (and, for a
    /// WebSocket, the peer answered our close) or `deadline` passes.
    pub(crate) closing: bool,
    /// In the worker's list of connections to flush this turn.
    pub(crate) dirty: bool,
    /// `on_buffer_full` fired; `on_buffer_drain` is due when the queue empties.
    pub(crate) full: bool,
    /// Handshake or close deadline.
    pub(crate) deadline: Option<Instant>,
    /// Last time the peer sent anything (idle timeout, pings).
    pub(crate) last_read: Instant,
    /// A ping went out since the peer last sent anything.
    pub(crate) pinged: bool,
    /// The handler paused reading ([`crate::Ctx::pause_reading`]).
    pub(crate) paused: bool,
    /// In the worker's list of connections to read again next turn.
    pub(crate) read_pending: bool,
    /// The TLS session, on a TLS listener.
    pub(crate) tls: Option<Box<rustls::ServerConnection>>,
}

impl Conn {
    pub(crate) fn new(
        sock: TcpStream,
        peer: SocketAddr,
        serial: u64,
        state: State,
        now: Instant,
    ) -> Self {
        Conn {
            sock,
            serial,
            peer,
            state,
            out: OutQueue::default(),
            open: false,
            closing: false,
            dirty: false,
            full: false,
            deadline: None,
            last_read: now,
            pinged: false,
            paused: false,
            read_pending: false,
            tls: None,
        }
    }

    /// Writes queued output (through TLS when on). `Ok(true)`: all of it
    /// reached the socket.
    pub(crate) fn flush(&mut self) -> io::Result<bool> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.out.write_to(&mut self.sock);
        };
        let handshaking = tls.is_handshaking();
        let mut w = crate::tls::TlsSend {
            tls,
            sock: &mut self.sock,
        };
        // Output queued during the handshake waits in the session until it
        // is done: not written yet, so a connection closing meanwhile stays.
        Ok(self.out.write_to(&mut w)? && w.drain()? && !handshaking)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes `room` bytes, then blocks, like a full send buffer.
    struct Tight {
        got: Vec<u8>,
        room: usize,
    }

    impl SendVectored for Tight {
        fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.write_vectored(bufs)
        }
    }

    impl Write for Tight {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::from_static(b"world"));
        let mut sock = Tight {
            got: Vec::new(),
            room: 8,
        };
        assert!(!q.write_to(&mut sock).unwrap());
        assert_eq!(q.len(), 3);
        sock.room = 100;
        assert!(q.write_to(&mut sock).unwrap());
        assert_eq!(sock.got, b"hello world");
        assert!(q.is_empty());
    }

    #[test]
    fn ws_io_reads_what_it_was_given_then_would_block() {
        let mut out = OutQueue::default();
        let mut io = WsIo {
            input: b"abc",
            out: &mut out,
        };
        let mut buf = [0u8; 2];
        assert_eq!(io.read(&mut buf).unwrap(), 2);
        assert_eq!(io.read(&mut buf).unwrap(), 1);
        assert_eq!(
            io.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        io.write_all(b"pong").unwrap();
        assert_eq!(out.len(), 4);
    }
}
