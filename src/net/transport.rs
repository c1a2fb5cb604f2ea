//! A connection's byte stream: a TCP socket, plain or through a TLS session
//! (server or client side). The rest of the worker reads and writes through
//! [`Transport`] and never asks which it is.
//!
//! TLS uses rustls's unbuffered API, so that an idle session owns no
//! buffer: rustls's buffered `Connection` keeps a 4 KiB deframer buffer per
//! connection for good (it never shrinks below one read), plus queues of
//! plaintext and ciphertext. Here ciphertext is read into, and output
//! gathered and encrypted in, buffers of the worker's thread that every
//! connection borrows in turn ([`Scratch`]); a connection keeps only what
//! is left over (the first part of a record, ciphertext the socket did not
//! take), in vectors freed once empty. What an idle session still costs is
//! rustls's own state: the connection struct (1,088 B), its two AEAD keys
//! (560 B each with ring), the handshake deframer's span list (640 B,
//! allocated at creation and never released), the traffic secrets (224 B)
//! and a few small pieces: about 3.4 KiB of heap (README, Performance,
//! has the measured figures).

use super::out_queue::{OutQueue, SendVectored};
use crate::error::ConnError;
use mio::net::TcpStream;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedConnectionCommon,
    UnbufferedStatus, WriteTraffic,
};
use std::cell::RefCell;
use std::io::{self, IoSlice, Read};

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
    /// Bytes go through a rustls session, server or client side.
    Tls(Box<dyn TlsIo>),
}

/// A socket under a TLS session of either side, as [`Transport`] uses it:
/// each method is the [`Transport`] method of the same name.
pub(crate) trait TlsIo {
    fn socket(&self) -> &TcpStream;
    fn handshaking(&self) -> bool;
    fn wants_write(&self) -> bool;
    fn read(&mut self, buf: &mut [u8]) -> Result<Input, ConnError>;
    fn flush(&mut self, out: &mut OutQueue) -> io::Result<bool>;
    fn shutdown(&mut self);
    /// Bytes of allocation the connection's own buffers hold.
    #[cfg(test)]
    fn buffered(&self) -> usize;
}

impl Transport {
    /// A TLS transport over `sock` with a fresh session, server or client
    /// side (rustls's unbuffered API).
    pub(crate) fn tls(sock: TcpStream, session: impl Side + 'static) -> Self {
        Transport::Tls(Box::new(Tls::new(sock, session)))
    }

    /// The socket underneath.
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => t.socket(),
        }
    }

    /// Whether a TLS handshake is still under way: the peer's protocol
    /// bytes have not started, and output waits in the connection's queue.
    pub(crate) fn handshaking(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.handshaking(),
        }
    }

    /// Whether the session has records of its own to send (handshake
    /// answers, alerts), or just finished its handshake with output
    /// waiting, so the connection should be written.
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.wants_write(),
        }
    }

    /// Reads what the peer sent into `buf`, once: the caller loops. Under
    /// TLS, `buf` must hold at least two records' worth (36 KiB).
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
    /// during a TLS handshake waits in `out` until it is done, so the
    /// answer stays false until then.
    pub(crate) fn flush(&mut self, out: &mut OutQueue) -> io::Result<bool> {
        match self {
            Transport::Plain(sock) => out.write_to(sock),
            Transport::Tls(t) => t.flush(out),
        }
    }

    /// Best effort before the socket is dropped: a TLS close_notify (and any
    /// alert the session queued saying why it failed), so the peer sees the
    /// stream end rather than being cut.
    pub(crate) fn shutdown(&mut self) {
        if let Transport::Tls(t) = self {
            t.shutdown();
        }
    }
}

/// The largest TLS record on the wire: 16 KiB of payload, the 2 KiB of
/// expansion TLS 1.2 allows, and the header.
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

/// Plaintext encrypted at once: what one `send_vectored` takes of the queue.
const SEND_BATCH: usize = 64 * 1024;

/// Room for the ciphertext waiting to be processed: a handshake message
/// rustls joins from records (up to 64 KiB) and a read behind it.
const CIPHER_ROOM: usize = 64 * 1024 + 4 * MAX_RECORD;

/// The worker's buffers that every TLS connection of its thread borrows in
/// turn, so that a session between reads and writes owns none: received
/// ciphertext is processed here, output gathered and encrypted here, and
/// only what is left over (a record's first part, ciphertext the socket
/// did not take) is kept per connection, in buffers freed when emptied.
struct Scratch {
    cipher_in: Vec<u8>,
    plain_out: Vec<u8>,
    cipher_out: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            cipher_in: Vec::new(),
            plain_out: Vec::new(),
            cipher_out: Vec::new(),
        })
    };
}

/// Runs `f` on this thread's [`Scratch`], sized on first use.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with_borrow_mut(|s| {
        if s.cipher_in.is_empty() {
            s.cipher_in = vec![0; CIPHER_ROOM];
            s.plain_out = vec![0; SEND_BATCH];
            s.cipher_out = vec![0; SEND_BATCH + 16 * 64];
        }
        f(s)
    })
}

/// A side of rustls's unbuffered API: the server's or the client's session.
pub(crate) trait Side:
    std::ops::DerefMut<Target = UnbufferedConnectionCommon<Self::Data>>
{
    /// `ServerConnectionData` or `ClientConnectionData`.
    type Data;
    /// [`UnbufferedConnectionCommon::process_tls_records`] of this side.
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for rustls::server::UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Side for rustls::client::UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// A socket and its TLS session (rustls's unbuffered API): the session
/// holds keys and state, no buffers; the connection's own are empty (no
/// allocation) between reads and writes, but for a record that came in
/// part and ciphertext the socket did not take.
pub(crate) struct Tls<S> {
    sock: TcpStream,
    session: S,
    /// Ciphertext received and not yet consumed: the start of a record, or
    /// handshake records rustls is joining.
    incoming: Vec<u8>,
    /// Ciphertext to send: handshake records and alerts, and encrypted
    /// output the socket did not take. Goes out before anything else.
    outgoing: Vec<u8>,
    /// Plaintext that came in the read that finished the handshake: that
    /// read reports [`Input::Progress`] (the caller opens the connection),
    /// the next one hands this over.
    held: Vec<u8>,
    /// The handshake finished since the last flush: output may be waiting.
    became_ready: bool,
    /// The peer's stream ended (FIN or close_notify): after what was
    /// decrypted before, reads report [`Input::Eof`].
    ended: bool,
}

/// What processing the ciphertext at hand came to.
struct Processed {
    /// Ciphertext consumed from the front.
    used: usize,
    /// Plaintext written to the front of the caller's buffer.
    plain: usize,
}

impl<S: Side> Tls<S> {
    fn new(sock: TcpStream, session: S) -> Self {
        Tls {
            sock,
            session,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            held: Vec::new(),
            became_ready: false,
            ended: false,
        }
    }

    /// Runs the session over `cipher` until it needs more input: its
    /// application data goes to `plain`, its own records to `outgoing`.
    /// `done.used` counts the ciphertext consumed even when it fails: what
    /// is left is what the session expects at the front next time (its
    /// alert is still to be collected).
    fn process(
        &mut self,
        cipher: &mut [u8],
        plain: &mut [u8],
        done: &mut Processed,
    ) -> Result<(), ConnError> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.session.records(&mut cipher[done.used..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    done.used += discard;
                    return Err(tls_error(e));
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let at = done.plain;
                        let Some(to) = plain.get_mut(at..at + record.payload.len()) else {
                            return Err(ConnError::Protocol("TLS: record overflows".into()));
                        };
                        to.copy_from_slice(record.payload);
                        done.plain += record.payload.len();
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => encode(&mut e, &mut self.outgoing)?,
                // Ours to send, in order, before any later output.
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.ended = true;
                    done.used += discard;
                    return Ok(());
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    done.used += discard;
                    return Ok(());
                }
                // Early data is not enabled; nothing else is known.
                _ => return Err(ConnError::Protocol("TLS: unexpected state".into())),
            }
            done.used += discard;
        }
    }

    /// Reads ciphertext into the thread's scratch behind what is left of
    /// earlier reads, and processes it.
    fn read_with(&mut self, cipher: &mut [u8], buf: &mut [u8]) -> Result<Input, ConnError> {
        if !self.held.is_empty() {
            let n = self.held.len();
            buf[..n].copy_from_slice(&self.held);
            self.held = Vec::new();
            return Ok(Input::Data { n, drained: false });
        }
        if self.ended {
            return Ok(Input::Eof);
        }
        let kept = self.incoming.len();
        cipher[..kept].copy_from_slice(&self.incoming);
        // Plaintext is never longer than its ciphertext: what is read, and
        // the one record begun before, fit in `buf`.
        let room = (cipher.len() - kept).min(buf.len().saturating_sub(MAX_RECORD));
        if room == 0 {
            return Err(ConnError::Protocol(
                "TLS: handshake message too large".into(),
            ));
        }
        let n = loop {
            match self.sock.read(&mut cipher[kept..kept + room]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        };
        if n == 0 {
            // The TCP stream ended, with or without a close_notify.
            self.ended = true;
            self.incoming = Vec::new();
            return Ok(Input::Eof);
        }
        let was_handshaking = self.session.is_handshaking();
        let mut done = Processed { used: 0, plain: 0 };
        let processed = self.process(&mut cipher[..kept + n], buf, &mut done);
        let left = &cipher[done.used..kept + n];
        self.incoming = if left.is_empty() {
            Vec::new()
        } else {
            left.to_vec()
        };
        // An error leaves an alert queued in the session for the caller's
        // shutdown to send.
        processed?;
        if was_handshaking && !self.session.is_handshaking() {
            self.became_ready = true;
            if done.plain > 0 {
                self.held = buf[..done.plain].to_vec();
                return Ok(Input::Progress(n));
            }
        }
        if done.plain > 0 {
            Ok(Input::Data {
                n: done.plain,
                // Nothing stays decrypted in the session: a short read
                // left the socket empty, unless the stream ended with it.
                drained: n < room && !self.ended,
            })
        } else if self.ended {
            Ok(Input::Eof)
        } else {
            Ok(Input::Progress(n))
        }
    }

    /// Writes `outgoing` to the socket. `Ok(true)`: none is left, and its
    /// allocation is freed.
    fn send_outgoing(&mut self) -> io::Result<bool> {
        let mut sent = 0;
        while sent < self.outgoing.len() {
            match self
                .sock
                .send_vectored(&[IoSlice::new(&self.outgoing[sent..])])
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if sent == self.outgoing.len() {
            self.outgoing = Vec::new();
            return Ok(true);
        }
        self.outgoing.drain(..sent);
        Ok(false)
    }

    /// Runs the session on what is left of its input, with nothing new:
    /// its own records (a ClientHello, a key update, the alert of a failed
    /// handshake) go to `outgoing`; once it may send application data,
    /// `write` runs. `None`: it may not (yet, or any more).
    fn seal<R>(
        &mut self,
        write: impl FnOnce(&mut WriteTraffic<'_, S::Data>) -> R,
    ) -> Result<Option<R>, ConnError> {
        let mut write = Some(write);
        loop {
            let UnbufferedStatus { discard, state } = self.session.records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    return Err(tls_error(e));
                }
            };
            let settled = match state {
                ConnectionState::WriteTraffic(mut w) => Some(write.take().map(|f| f(&mut w))),
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut self.outgoing)?;
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                // Seen by reads first; here only if no read came since.
                ConnectionState::PeerClosed => {
                    self.ended = true;
                    None
                }
                _ => Some(None),
            };
            self.incoming.drain(..discard);
            if let Some(r) = settled {
                return Ok(r);
            }
        }
    }

    /// Encrypts `plain` into `cipher`, grown if too small, behind the
    /// session's own records. Returns the ciphertext's length, or `None`
    /// while the session cannot send application data.
    fn encrypt(&mut self, plain: &[u8], cipher: &mut Vec<u8>) -> Result<Option<usize>, ConnError> {
        self.seal(|w| loop {
            match w.encrypt(plain, cipher) {
                Ok(n) => return Ok(n),
                Err(EncryptError::InsufficientSize(s)) => cipher.resize(s.required_size, 0),
                Err(e) => return Err(ConnError::Protocol(format!("TLS: {e}"))),
            }
        })?
        .transpose()
    }
}

impl<S: Side> TlsIo for Tls<S> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }

    fn handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    fn wants_write(&self) -> bool {
        !self.outgoing.is_empty() || self.became_ready
    }

    /// Decrypted bytes of one read of ciphertext, processed in the
    /// thread's scratch.
    fn read(&mut self, buf: &mut [u8]) -> Result<Input, ConnError> {
        with_scratch(|s| self.read_with(&mut s.cipher_in, buf))
    }

    fn flush(&mut self, out: &mut OutQueue) -> io::Result<bool> {
        self.became_ready = false;
        // The session's own records first: a ClientHello, a key update.
        self.seal(|_| ())
            .map_err(|e| io::Error::other(e.to_string()))?;
        if !self.send_outgoing()? || self.session.is_handshaking() {
            return Ok(false);
        }
        with_scratch(|s| {
            let mut w = TlsSend {
                tls: self,
                scratch: s,
            };
            Ok(out.write_to(&mut w)? && self.outgoing.is_empty())
        })
    }

    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.held.capacity()
    }

    fn shutdown(&mut self) {
        // An alert a failed handshake queued, or the close_notify.
        let mut room = [0u8; 64];
        if let Ok(Some(Ok(n))) = self.seal(|w| w.queue_close_notify(&mut room)) {
            self.outgoing.extend_from_slice(&room[..n]);
        }
        let _ = self.send_outgoing();
    }
}

/// Appends the session's next own record to `outgoing`, which grows by
/// just its size: a handshake's buffers are short-lived but many at once
/// while connections pour in, and memory they touched stays resident.
fn encode<Data>(e: &mut EncodeTlsData<'_, Data>, outgoing: &mut Vec<u8>) -> Result<(), ConnError> {
    let at = outgoing.len();
    loop {
        match e.encode(&mut outgoing[at..]) {
            Ok(n) => {
                outgoing.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) => {
                outgoing.reserve_exact(s.required_size);
                outgoing.resize(at + s.required_size, 0);
            }
            Err(e) => return Err(ConnError::Protocol(format!("TLS: {e}"))),
        }
    }
}

fn tls_error(e: rustls::Error) -> ConnError {
    ConnError::Protocol(format!("TLS: {e}"))
}

/// A connection's socket seen through its TLS session: plaintext in,
/// ciphertext out to the socket.
struct TlsSend<'a, S> {
    tls: &'a mut Tls<S>,
    scratch: &'a mut Scratch,
}

impl<S: Side> SendVectored for TlsSend<'_, S> {
    /// Gathers up to [`SEND_BATCH`] bytes of the queue into one buffer,
    /// encrypts it (records of up to 16 KiB each) and writes the records;
    /// only when the socket takes part of them is the rest kept, and the
    /// next call waits until it is out: the session never holds more than
    /// one batch, the rest stays in the connection's queue, counted
    /// against `max_output_bytes`.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.tls.send_outgoing()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Scratch {
            plain_out,
            cipher_out,
            ..
        } = &mut *self.scratch;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(plain_out.len() - n);
            plain_out[n..n + take].copy_from_slice(&b[..take]);
            n += take;
            if n == plain_out.len() {
                break;
            }
        }
        let sealed = match self.tls.encrypt(&plain_out[..n], cipher_out) {
            Ok(Some(sealed)) => sealed,
            Ok(None) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        if !self.tls.outgoing.is_empty() {
            // The session's own records (a key update) go first.
            self.tls.outgoing.extend_from_slice(&cipher_out[..sealed]);
            self.tls.send_outgoing()?;
            return Ok(n);
        }
        let mut sent = 0;
        while sent < sealed {
            match self
                .tls
                .sock
                .send_vectored(&[IoSlice::new(&cipher_out[sent..sealed])])
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tls
            .outgoing
            .extend_from_slice(&cipher_out[sent..sealed]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// A server `Transport` over loopback and a rustls client session on
    /// the other (blocking) end, trusting a fresh self-signed certificate.
    fn pair() -> (Transport, std::net::TcpStream, rustls::ClientConnection) {
        let (server, client) = crate::net::tls::test_configs();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (sock, _) = listener.accept().expect("accept");
        sock.set_nonblocking(true).expect("nonblocking");
        let session = rustls::server::UnbufferedServerConnection::new(server).expect("session");
        let io = Transport::tls(TcpStream::from_std(sock), session);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let client = rustls::ClientConnection::new(client, name).expect("client");
        (io, peer, client)
    }

    /// Reads the server side until it reports something other than
    /// `Blocked`, within a deadline.
    fn next(io: &mut Transport, buf: &mut [u8]) -> Input {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match io.read(buf).expect("read") {
                Input::Blocked if Instant::now() < deadline => std::thread::yield_now(),
                got => return got,
            }
        }
    }

    fn send(client: &mut rustls::ClientConnection, peer: &mut std::net::TcpStream) {
        while client.wants_write() {
            client.write_tls(peer).expect("client write");
        }
    }

    #[test]
    fn data_with_the_last_handshake_flight_comes_after_the_handshake_and_idle_holds_no_buffer() {
        let (mut io, mut peer, mut client) = pair();
        let mut buf = vec![0u8; 64 * 1024];
        send(&mut client, &mut peer);
        assert!(matches!(next(&mut io, &mut buf), Input::Progress(_)));
        assert!(io.handshaking() && io.wants_write());
        let mut out = OutQueue::default();
        assert!(
            !io.flush(&mut out).expect("server flight"),
            "still handshaking"
        );
        peer.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        while client.is_handshaking() {
            client.read_tls(&mut peer).expect("client read");
            client.process_new_packets().expect("client process");
        }
        // The client's Finished and its first data leave in one write.
        client.writer().write_all(b"hello").expect("queue");
        send(&mut client, &mut peer);
        let Input::Progress(_) = next(&mut io, &mut buf) else {
            panic!("the read that ends the handshake must say so before any data");
        };
        assert!(!io.handshaking() && io.wants_write());
        let Input::Data { n, .. } = next(&mut io, &mut buf) else {
            panic!("the data held back comes next");
        };
        assert_eq!(&buf[..n], b"hello");

        out.push(Bytes::from_static(b"world"));
        assert!(io.flush(&mut out).expect("flush"), "all of it written");
        let mut got = Vec::new();
        while got.len() < 5 {
            client.read_tls(&mut peer).expect("client read");
            client.process_new_packets().expect("client process");
            let mut chunk = [0u8; 16];
            while let Ok(k) = client.reader().read(&mut chunk) {
                got.extend_from_slice(&chunk[..k]);
            }
        }
        assert_eq!(got, b"world");
        assert!(matches!(io.read(&mut buf).expect("read"), Input::Blocked));
        let Transport::Tls(tls) = &io else {
            unreachable!()
        };
        assert!(!tls.wants_write(), "nothing left to send");
        // An idle session owns no buffer of ours (rustls's own state aside).
        assert_eq!(tls.buffered(), 0);
    }
}
