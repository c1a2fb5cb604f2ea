//! Output waiting for a socket: whole encoded frames, shared with the other
//! recipients of a broadcast, written with one `sendmsg(2)` per loop turn.

use bytes::{Buf, Bytes};
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice};

/// Most buffers handed to one `writev`.
const MAX_IOV: usize = 64;

/// Output waiting for the socket: whole encoded frames, shared with other
/// recipients of the same broadcast. Written with one `sendmsg` per loop turn.
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

    /// Moves everything queued in `other` behind this queue's frames.
    pub(crate) fn append(&mut self, other: &mut OutQueue) {
        self.bytes += std::mem::take(&mut other.bytes);
        self.bufs.append(&mut other.bufs);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
}
