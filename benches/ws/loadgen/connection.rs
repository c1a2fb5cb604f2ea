//! One client connection's life inside the load generator: a non-blocking
//! connect from a chosen source address, the upgrade, frames in and out, and
//! the close.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use mio::net::TcpStream;
use mio::{Interest, Token};
use socket2::{Domain, Socket, Type};

use super::{App, AppConn, Conn, Gen, State, SOURCE_ADDRS};
use crate::wire::{self, Upgrade};

/// Linux `IP_BIND_ADDRESS_NO_PORT`: pick the port at connect, per 4-tuple.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

impl Gen {
    /// Opens connections up to the configured concurrency.
    pub(super) fn start_connects(&mut self) {
        let churn = self.cfg.scenario == "churn";
        while self.pending < self.cfg.connect_concurrency.max(1)
            && (churn || self.started < self.cfg.conns)
        {
            let global = self.cfg.conn_base + self.started;
            self.started += 1;
            let src = Ipv4Addr::new(127, 0, 0, 2 + (global % SOURCE_ADDRS) as u8);
            match connect(src, self.cfg.target) {
                Ok(stream) => {
                    let idx = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    let mut conn = Conn {
                        stream,
                        tls: None,
                        state: State::Connecting,
                        rbuf: Vec::new(),
                        wbuf: Vec::new(),
                        frag: Vec::new(),
                        sender: None,
                        seq: 0,
                        awaiting: false,
                        next_due: 0,
                        received: 0,
                        expect: Vec::new(),
                        app: AppConn::default(),
                    };
                    if self.app.is_some_and(App::rooms) {
                        super::rooms::place(&mut conn, global, &self.cfg);
                    } else if !churn {
                        let local = idx;
                        conn.sender = match (self.cfg.scenario.as_str(), self.app) {
                            ("echo", _) => Some((global) as u32),
                            // Every client of the write scenarios writes.
                            (_, Some(app)) if !app.fanout() => Some(global as u32),
                            ("fanout", _) | (_, Some(_)) if local < self.cfg.senders => {
                                Some(self.cfg.sender_base + local as u32)
                            }
                            _ => None,
                        };
                        if self.cfg.scenario == "fanout" {
                            conn.expect = vec![0; self.cfg.senders_total as usize];
                        }
                    }
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .poll
                        .registry()
                        .register(&mut conn.stream, Token(idx), interest)
                        .is_ok()
                    {
                        if conn.sender.is_some() {
                            self.senders.push(idx);
                        }
                        self.conns[idx] = Some(conn);
                        self.pending += 1;
                    } else {
                        self.free.push(idx);
                        self.stats.failed += 1;
                    }
                }
                Err(_) => self.stats.failed += 1,
            }
        }
    }

    pub(super) fn ready(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        if c.state == State::Connecting {
            match c.stream.take_error() {
                Ok(None) if c.stream.peer_addr().is_ok() => {
                    let _ = c.stream.set_nodelay(true);
                    if let Some(config) = &self.tls {
                        match client_session(config) {
                            Ok(s) => c.tls = Some(s),
                            Err(_) => return self.finish_attempt(i, false),
                        }
                    }
                    let path = self.app.map_or("/", App::path);
                    c.wbuf
                        .extend_from_slice(&wire::upgrade_request(&self.host, path));
                    c.state = State::Upgrading;
                }
                Ok(None) => return, // not connected yet
                _ => return self.finish_attempt(i, false),
            }
        }
        flush(c);
        // Read until WouldBlock.
        loop {
            let Some(c) = self.conns[i].as_mut() else {
                return;
            };
            let got = match c.tls.as_deref_mut() {
                None => c.stream.read(&mut self.scratch),
                Some(tls) => read_tls(tls, &mut c.stream, &mut self.scratch, &mut c.rbuf),
            };
            match got {
                Ok(0) => return self.gone(i),
                Ok(n) if c.tls.is_none() => c.rbuf.extend_from_slice(&self.scratch[..n]),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.gone(i),
            }
        }
        if let Some(c) = self.conns[i].as_mut() {
            // Handshake answers, or output the handshake held back.
            if c.tls.as_ref().is_some_and(|t| t.wants_write()) {
                flush(c);
            }
        }
        self.parse(i);
    }

    /// Handles what connection `i` has buffered: the upgrade, then frames.
    fn parse(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let mut buf = std::mem::take(&mut c.rbuf);
        let mut pos = 0;
        if c.state == State::Upgrading {
            match wire::parse_upgrade(&buf) {
                Upgrade::Partial => {
                    c.rbuf = buf;
                    return;
                }
                Upgrade::Refused => return self.finish_attempt(i, false),
                Upgrade::Done(n) => {
                    c.state = State::Open;
                    pos = n;
                    // An application's connection is connected once its
                    // setup (hello, subscribe, ...) is answered.
                    match self.app {
                        Some(app) => self.app_open(app, i),
                        None => self.finish_attempt(i, true),
                    }
                }
            }
        }
        let now = wire::mono_ns();
        while let Some(f) = wire::parse_frame(&mut buf[pos..]) {
            let (start, end) = (pos + f.start, pos + f.start + f.len);
            pos = end;
            let Some(c) = self.conns[i].as_mut() else {
                return;
            };
            match f.opcode {
                wire::OP_TEXT | wire::OP_CONT if f.fin && c.frag.is_empty() => {
                    self.message(i, &buf[start..end], now)
                }
                wire::OP_TEXT | wire::OP_CONT => {
                    c.frag.extend_from_slice(&buf[start..end]);
                    if f.fin {
                        let whole = std::mem::take(&mut c.frag);
                        self.message(i, &whole, now);
                    }
                }
                wire::OP_PING => {
                    wire::encode_frame(&mut c.wbuf, wire::OP_PONG, &buf[start..end], &mut self.rng);
                    flush(c);
                }
                wire::OP_CLOSE => {
                    if c.state == State::Open {
                        // `gone` below counts it as closed by the server.
                        wire::encode_frame(
                            &mut c.wbuf,
                            wire::OP_CLOSE,
                            &wire::CLOSE_NORMAL,
                            &mut self.rng,
                        );
                        flush(c);
                    }
                    return self.gone(i);
                }
                _ => {}
            }
        }
        if let Some(c) = self.conns[i].as_mut() {
            buf.drain(..pos);
            c.rbuf = buf;
        }
    }

    /// A complete text message arrived on connection `i` at `now`.
    fn message(&mut self, i: usize, payload: &[u8], now: u64) {
        if let Some(app) = self.app {
            return self.app_message(app, i, payload, now);
        }
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let w = self.window;
        c.received += 1;
        let parsed = wire::read_payload(payload);
        self.stats.delivery(w, now, parsed.map(|p| p.2));
        let Some((sender, seq, _)) = parsed else {
            return;
        };
        self.stats.check_order(&mut c.expect, sender, seq);
        let mine = c.sender == Some(sender) && c.awaiting && seq.wrapping_add(1) == c.seq;
        let closed_loop = self.cfg.scenario == "echo" || self.cfg.rate_per_sender <= 0.0;
        if mine {
            c.awaiting = false;
            if closed_loop && self.running && now < w.end {
                self.send_next(i, now);
            }
        }
    }

    /// Connection attempt `i` finished (upgraded or failed).
    /// Outside churn an attempt stops counting as pending here; in churn a
    /// connection counts against the concurrency until it is dropped.
    pub(super) fn finish_attempt(&mut self, i: usize, ok: bool) {
        let churn = self.cfg.scenario == "churn";
        if !churn {
            self.pending = self.pending.saturating_sub(1);
        }
        if !ok {
            self.stats.failed += 1;
            self.drop_conn(i);
            return;
        }
        if churn {
            let now = wire::mono_ns();
            if (self.window.measure..self.window.end).contains(&now) {
                self.stats.connected += 1;
            }
            if let Some(c) = self.conns[i].as_mut() {
                begin_close(c, &mut self.rng);
            }
        } else {
            self.stats.connected += 1;
            self.last_upgrade = wire::mono_ns();
        }
    }

    /// The peer closed or broke connection `i`.
    fn gone(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        match c.state {
            State::Connecting | State::Upgrading => return self.finish_attempt(i, false),
            State::Open if self.app.is_some() && !c.app.ready => {
                return self.finish_attempt(i, false)
            }
            State::Open => {
                self.stats.closed_by_server += 1;
                c.state = State::Dead;
            }
            _ => c.state = State::Dead,
        }
        if self.cfg.scenario == "churn" {
            self.drop_conn(i);
        } else if let Some(c) = self.conns[i].as_mut() {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    fn drop_conn(&mut self, i: usize) {
        if let Some(mut c) = self.conns[i].take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(i);
            if self.cfg.scenario == "churn" {
                self.pending = self.pending.saturating_sub(1);
            }
        }
    }
}

/// Sends a normal close frame and waits for the server's answer.
pub(super) fn begin_close(c: &mut Conn, rng: &mut wire::MaskRng) {
    wire::encode_frame(&mut c.wbuf, wire::OP_CLOSE, &wire::CLOSE_NORMAL, rng);
    c.state = State::Closing;
    flush(c);
}

/// Writes as much of the connection's queued output as the socket takes
/// (under TLS: hands all of it to the session, which encrypts it once its
/// handshake is done, and writes what ciphertext the socket takes).
pub(super) fn flush(c: &mut Conn) {
    if c.state == State::Connecting {
        return;
    }
    if let Some(tls) = c.tls.as_deref_mut() {
        if !c.wbuf.is_empty() {
            // Unlimited plaintext buffer (set at creation): all of it goes.
            let _ = tls.writer().write_all(&c.wbuf);
            c.wbuf.clear();
        }
        while tls.wants_write() {
            match tls.write_tls(&mut c.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // as below
            }
        }
        return;
    }
    let mut done = 0;
    while done < c.wbuf.len() {
        match c.stream.write(&c.wbuf[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break, // WouldBlock: wait for WRITABLE; errors surface on read
        }
    }
    c.wbuf.drain(..done);
}

/// A TLS session for a new connection to the bench's server.
fn client_session(
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<Box<rustls::ClientConnection>, rustls::Error> {
    let name = rustls::pki_types::ServerName::try_from(crate::tls::SERVER_NAME)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut s = rustls::ClientConnection::new(config.clone(), name)?;
    s.set_buffer_limit(None);
    Ok(Box::new(s))
}

/// One read of ciphertext from `sock` into `tls`; the plaintext it brings
/// is appended to `rbuf` (through `scratch`). Returns the ciphertext's
/// length: 0 at end of stream, as a plain read.
fn read_tls(
    tls: &mut rustls::ClientConnection,
    sock: &mut TcpStream,
    scratch: &mut [u8],
    rbuf: &mut Vec<u8>,
) -> io::Result<usize> {
    let n = tls.read_tls(sock)?;
    tls.process_new_packets().map_err(io::Error::other)?;
    loop {
        match tls.reader().read(scratch) {
            Ok(0) => return Ok(0), // close_notify
            Ok(m) => rbuf.extend_from_slice(&scratch[..m]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// Starts a non-blocking connect from `src` (port chosen at connect time).
fn connect(src: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid fd and a pointer to a local c_int.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}
