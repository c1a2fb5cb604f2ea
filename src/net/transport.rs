//! A connection's byte stream: a TCP socket, plain or through a TLS session
//! (server or client side). The rest of the worker reads and writes through
//! [`Transport`] and never asks which it is.

use super::out_queue::{OutQueue, SendVectored};
use crate::error::ConnError;
use mio::net::TcpStream;
use std::io::{self, IoSlice, Read, Write};

/// What one [`Transport::read`] brought.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// `n` bytes of the peer's stream are at the front of the buffer.
    /// `drained`: the socket had no more at that moment (a short read on
    /// a plain socket), so on an edge-triggered socket nothing is lost by
    /// not reading again until the next event.
    Data { n: usize, drained: bool },
    /// TLS records came in (`n` bytes of ciphertext) that carried no
    /// application data yet: a handshake message, a key update.
    Progress(usize),
    /// Nothing to read now.
    Blocked,
    /// The peer ended its stream (FIN, or a TLS close_notify).
    Eof,
}

/// A TCP socket, plain or under TLS.
pub(crate) enum Transport {
    /// Bytes go to the socket as they are.
    Plain(TcpStream),
    /// Bytes go through a rustls session.
    Tls(Box<Tls>),
}

/// A socket and its TLS session.
pub(crate) struct Tls {
    sock: TcpStream,
    session: rustls::Connection,
    /// The socket reached end of stream; what the session still holds is
    /// read before [`Input::Eof`] is reported.
    eof: bool,
}

impl Transport {
    /// A TLS transport over `sock` with a fresh server or client session.
    pub(crate) fn tls(sock: TcpStream, session: impl Into<rustls::Connection>) -> Self {
        Transport::Tls(Box::new(Tls {
            sock,
            session: session.into(),
            eof: false,
        }))
    }

    /// The socket underneath.
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    /// Whether a TLS handshake is still under way: the peer's protocol
    /// bytes have not started, and output waits in the session.
    pub(crate) fn handshaking(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.session.is_handshaking(),
        }
    }

    /// Whether the session has records of its own to send (handshake
    /// answers, alerts), so the connection should be written.
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.session.wants_write(),
        }
    }

    /// Reads what the peer sent into `buf`, once: the caller loops.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<Input, ConnError> {
        match self {
            Transport::Plain(sock) => loop {
                return match sock.read(buf) {
                    Ok(0) => Ok(Input::Eof),
                    Ok(n) => Ok(Input::Data {
                        n,
                        drained: n < buf.len(),
                    }),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Input::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(ConnError::Io(e)),
                };
            },
            Transport::Tls(t) => t.read(buf),
        }
    }

    /// Writes queued output (encrypted under TLS). `Ok(true)`: all of it,
    /// and every record of the session, reached the socket. Output queued
    /// during a TLS handshake waits in the session until it is done, so the
    /// answer stays false until then.
    pub(crate) fn flush(&mut self, out: &mut OutQueue) -> io::Result<bool> {
        match self {
            Transport::Plain(sock) => out.write_to(sock),
            Transport::Tls(t) => {
                let handshaking = t.session.is_handshaking();
                let mut w = TlsSend {
                    session: &mut t.session,
                    sock: &mut t.sock,
                };
                Ok(out.write_to(&mut w)? && w.drain()? && !handshaking)
            }
        }
    }

    /// Best effort before the socket is dropped: a TLS close_notify (and any
    /// alert the session queued saying why it failed), so the peer sees the
    /// stream end rather than being cut.
    pub(crate) fn shutdown(&mut self) {
        if let Transport::Tls(t) = self {
            t.session.send_close_notify();
            let _ = TlsSend {
                session: &mut t.session,
                sock: &mut t.sock,
            }
            .drain();
        }
    }
}

impl Tls {
    /// Decrypted bytes first; with none, one read of ciphertext from the
    /// socket.
    fn read(&mut self, buf: &mut [u8]) -> Result<Input, ConnError> {
        match self.session.reader().read(buf) {
            // close_notify, or the TCP stream ended without one.
            Ok(0) => return Ok(Input::Eof),
            Ok(n) => return Ok(Input::Data { n, drained: false }),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Input::Eof),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(ConnError::Io(e)),
        }
        if self.eof {
            return Ok(Input::Eof);
        }
        let n = loop {
            match self.session.read_tls(&mut self.sock) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        };
        if n == 0 {
            // Hand over what the session decrypted before the end.
            self.eof = true;
        }
        if let Err(e) = self.session.process_new_packets() {
            // The session queued an alert saying why; the caller's shutdown
            // sends it if it can.
            return Err(ConnError::Protocol(format!("TLS: {e}")));
        }
        Ok(Input::Progress(n))
    }
}

/// A connection's socket seen through its TLS session: plaintext in,
/// ciphertext out to the socket.
struct TlsSend<'a> {
    session: &'a mut rustls::Connection,
    sock: &'a mut TcpStream,
}

impl TlsSend<'_> {
    /// Writes the ciphertext the session holds. `Ok(true)`: none is left.
    fn drain(&mut self) -> io::Result<bool> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut NoSigpipe(self.sock)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl SendVectored for TlsSend<'_> {
    /// Encrypts what the session takes once its earlier ciphertext is out, so
    /// the session never holds more than one batch: the rest stays in the
    /// connection's queue, counted against `max_output_bytes`.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.drain()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.session.writer().write_vectored(bufs)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.drain()?;
        Ok(n)
    }
}

/// The socket as rustls writes to it: through `sendmsg(2)` with
/// `MSG_NOSIGNAL`, like plain output, so a peer that reset never raises
/// SIGPIPE even in a program that does not ignore it.
struct NoSigpipe<'a>(&'a mut TcpStream);

impl Write for NoSigpipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
