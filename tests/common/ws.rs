//! WebSocket clients for the tests: [`Ws`], a blocking tungstenite client
//! whose reads end at a deadline, and [`Peer`], a client of the `testbed`
//! example's JSON command protocol.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocket;
use tungstenite::{Error as WsError, Message as WsMessage};

/// How long a test waits for a message it expects, unless it says otherwise.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What one read brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
    /// The connection ended without (further) close frame: EOF, reset.
    Gone(String),
    /// Nothing arrived before the deadline.
    Timeout,
}

/// A blocking WebSocket client over TCP.
pub struct Ws {
    pub ws: WebSocket<TcpStream>,
}

impl Ws {
    /// Connects and upgrades, retrying refused connections until `timeout`.
    #[track_caller]
    pub fn connect(addr: SocketAddr, path: &str) -> Ws {
        Ws::try_connect(addr, path, REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("WebSocket connect to {addr}{path}: {e}"))
    }

    /// Connects and upgrades; the handshake error as text on failure.
    pub fn try_connect(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Ws, String> {
        Ws::handshake(super::tcp_connect(addr, timeout), path, timeout)
    }

    /// One connection attempt and handshake, without retrying a refused
    /// connect: what a client sees, as an error text.
    pub fn connect_once(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Ws, String> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ws::handshake(stream, path, timeout)
    }

    /// One connection attempt and handshake from the local address `from`
    /// (see [`super::tcp_connect_from`]).
    pub fn connect_from(
        from: std::net::IpAddr,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<Ws, String> {
        let stream = super::tcp_connect_from(from, addr, timeout).map_err(|e| e.to_string())?;
        Ws::handshake(stream, path, timeout)
    }

    /// The client's handshake on a connected stream, reads bounded by `timeout`.
    fn handshake(stream: TcpStream, path: &str, timeout: Duration) -> Result<Ws, String> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let url = format!(
            "ws://{}{path}",
            stream.peer_addr().map_err(|e| e.to_string())?
        );
        match tungstenite::client(url.as_str(), stream) {
            Ok((ws, _response)) => Ok(Ws { ws }),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The client's local port (the key of [`super::conn_owners`]).
    pub fn local_port(&self) -> u16 {
        self.ws.get_ref().local_addr().expect("local_addr").port()
    }

    /// Sends a text message.
    #[track_caller]
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text))
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Sends a binary message.
    #[track_caller]
    pub fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(WsMessage::binary(data))
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Sends a text message; false if the connection is already gone.
    pub fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(WsMessage::text(text)).is_ok()
    }

    /// Sends a text frame whose payload is not valid UTF-8 (`{` 0xc3 0x28
    /// `}`: a lead byte without its continuation).
    #[track_caller]
    pub fn send_invalid_utf8(&mut self) {
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        use tungstenite::protocol::frame::Frame;
        let payload = vec![b'{', 0xc3, 0x28, b'}'];
        let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
        self.ws
            .send(WsMessage::Frame(frame))
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Closes from the client side and reads until the connection ends or
    /// `timeout` passes.
    pub fn close_and_drain(&mut self, timeout: Duration) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        let deadline = Instant::now() + timeout;
        while !matches!(
            self.recv_until(deadline),
            Recv::Close(_) | Recv::Gone(_) | Recv::Timeout
        ) {}
    }

    /// Reads the next data or close frame, waiting until `deadline`.
    pub fn recv_until(&mut self, deadline: Instant) -> Recv {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Recv::Timeout;
            }
            let _ = self.ws.get_mut().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(WsMessage::Text(t)) => return Recv::Text(t.to_string()),
                Ok(WsMessage::Binary(b)) => return Recv::Binary(b.to_vec()),
                Ok(WsMessage::Close(frame)) => {
                    return Recv::Close(frame.map(|f| u16::from(f.code)))
                }
                Ok(_) => continue, // ping, pong, raw frame
                Err(WsError::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => return Recv::Gone(e.to_string()),
            }
        }
    }

    /// Reads the next data or close frame, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Recv {
        self.recv_until(Instant::now() + timeout)
    }

    /// Reads the next text message; panics on anything else.
    #[track_caller]
    pub fn recv_text(&mut self, timeout: Duration) -> String {
        match self.recv(timeout) {
            Recv::Text(t) => t,
            other => panic!("expected a text message within {timeout:?}, got {other:?}"),
        }
    }

    /// Waits for the server's close frame and returns its code; panics if the
    /// connection delivers data or ends without one.
    #[track_caller]
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        match self.recv(timeout) {
            Recv::Close(code) => code,
            other => panic!("expected a close frame within {timeout:?}, got {other:?}"),
        }
    }
}

/// Connects `n` WebSocket clients to `addr`.
#[track_caller]
pub fn connect_many(addr: SocketAddr, path: &str, n: usize) -> Vec<Ws> {
    (0..n).map(|_| Ws::connect(addr, path)).collect()
}

/// A client of the `testbed` example. Replies to its commands carry the
/// command's `id`; everything else that arrives is a push (a message some
/// connection sent here, a timer tick) and is kept in order in `pushes`.
pub struct Peer {
    pub ws: Ws,
    /// This connection's id as the server prints it (`worker.key.serial`,
    /// `node.worker.key.serial` on a cluster).
    pub conn: String,
    /// The node number of a cluster (the first part of a four-part `conn`);
    /// 0 on a single server.
    pub node: u32,
    /// The worker slot it landed on.
    pub worker: usize,
    /// The pid of that worker process.
    pub pid: i32,
    pushes: VecDeque<String>,
    next_id: u64,
}

impl Peer {
    /// Connects to a testbed server and asks who it is.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Peer {
        let mut peer = Peer::unidentified(Ws::connect(addr, "/"));
        let me = peer.call(json!({"op": "whoami"}));
        peer.identify(&me);
        peer
    }

    /// Connects to a testbed server from the local address `from` and asks
    /// who it is; the handshake's error as text on failure.
    pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> Result<Peer, String> {
        let mut peer = Peer::unidentified(Ws::connect_from(from, addr, "/", REPLY_TIMEOUT)?);
        let me = peer.call(json!({"op": "whoami"}));
        peer.identify(&me);
        Ok(peer)
    }

    fn unidentified(ws: Ws) -> Peer {
        Peer {
            ws,
            conn: String::new(),
            node: 0,
            worker: usize::MAX,
            pid: 0,
            pushes: VecDeque::new(),
            next_id: 1,
        }
    }

    #[track_caller]
    fn identify(&mut self, me: &Value) {
        self.conn = me["conn"].as_str().expect("whoami.conn").to_string();
        let parts: Vec<&str> = self.conn.split('.').collect();
        self.node = match parts.len() {
            3 => 0,
            4 => parts[0].parse().expect("whoami.conn: a node number"),
            _ => panic!("whoami.conn {:?}: not a connection id", self.conn),
        };
        self.worker = me["worker"].as_u64().expect("whoami.worker") as usize;
        self.pid = me["pid"].as_i64().expect("whoami.pid") as i32;
    }

    /// Closes from the client side and waits for the server's answer.
    #[track_caller]
    pub fn close(mut self) {
        self.ws.ws.close(None).expect("send close");
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.ws.recv_until(deadline) {
                Recv::Text(_) | Recv::Binary(_) => continue,
                Recv::Close(_) | Recv::Gone(_) => return,
                Recv::Timeout => panic!("{}: the server did not answer our close", self.conn),
            }
        }
    }

    /// Sends a command without waiting for its reply; returns its id.
    #[track_caller]
    pub fn send_cmd(&mut self, mut cmd: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        self.ws.send_text(&cmd.to_string());
        id
    }

    /// The worker this connection is on, and its node: where it lives.
    pub fn unit(&self) -> (u32, usize) {
        (self.node, self.worker)
    }

    /// Waits for the reply to command `id`, keeping pushes that come first.
    #[track_caller]
    pub fn reply(&mut self, id: u64) -> Value {
        self.reply_within(id, REPLY_TIMEOUT)
    }

    /// As [`Peer::reply`], failing if the reply takes longer than `timeout`.
    #[track_caller]
    pub fn reply_within(&mut self, id: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.recv_until(deadline) {
                Recv::Text(t) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        if v.get("id").and_then(Value::as_u64) == Some(id) {
                            if let Some(e) = v.get("error") {
                                panic!("command {id} on {} failed: {e}", self.conn);
                            }
                            return v;
                        }
                    }
                    self.pushes.push_back(t);
                }
                other => panic!(
                    "{}: no reply to command {id} within {timeout:?}: {other:?}",
                    self.conn
                ),
            }
        }
    }

    /// Sends a command and waits for its reply.
    #[track_caller]
    pub fn call(&mut self, cmd: Value) -> Value {
        let id = self.send_cmd(cmd);
        self.reply(id)
    }

    /// The next push, waiting at most `timeout`; `None` if none came.
    pub fn push(&mut self, timeout: Duration) -> Option<String> {
        if let Some(p) = self.pushes.pop_front() {
            return Some(p);
        }
        match self.ws.recv(timeout) {
            Recv::Text(t) => Some(t),
            Recv::Timeout => None,
            other => panic!("{}: waiting for a push, got {other:?}", self.conn),
        }
    }

    /// The next push; panics if none comes within [`REPLY_TIMEOUT`].
    #[track_caller]
    pub fn expect_push(&mut self) -> String {
        let conn = self.conn.clone();
        self.push(REPLY_TIMEOUT)
            .unwrap_or_else(|| panic!("{conn}: no push within {REPLY_TIMEOUT:?}"))
    }

    /// The server-wide statistics as this peer's worker sees them.
    #[track_caller]
    pub fn stats(&mut self) -> Value {
        self.call(json!({"op": "stats"}))
    }
}

/// Sorted strings of a JSON array.
#[track_caller]
pub fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect();
    out.sort();
    out
}

/// Connects `n` testbed peers (the `whoami` round trips overlap).
#[track_caller]
pub fn connect_peers(addr: SocketAddr, n: usize) -> Vec<Peer> {
    connect_peers_across(&[addr], n)
}

/// Connects `n` testbed peers, peer `i` to `addrs[i % addrs.len()]` (the
/// nodes of a cluster, taken in turn).
#[track_caller]
pub fn connect_peers_across(addrs: &[SocketAddr], n: usize) -> Vec<Peer> {
    let mut peers: Vec<Peer> = (0..n)
        .map(|i| Peer::unidentified(Ws::connect(addrs[i % addrs.len()], "/")))
        .collect();
    let ids: Vec<u64> = peers
        .iter_mut()
        .map(|p| p.send_cmd(json!({"op": "whoami"})))
        .collect();
    for (p, id) in peers.iter_mut().zip(ids) {
        let me = p.reply(id);
        p.identify(&me);
    }
    peers
}

/// A testbed peer on worker `worker` of the server at `addr`: connects
/// until the kernel hands a connection to that worker (the others close).
#[track_caller]
pub fn peer_on_worker(addr: SocketAddr, worker: usize) -> Peer {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let p = Peer::connect(addr);
        if p.worker == worker {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "within {REPLY_TIMEOUT:?}, no client landed on worker {worker} of {addr}"
        );
    }
}

/// Sends one command to each peer, then collects the replies in order.
#[track_caller]
pub fn call_all(peers: &mut [Peer], cmd: impl Fn(usize, &Peer) -> Value) -> Vec<Value> {
    let ids: Vec<u64> = (0..peers.len())
        .map(|i| {
            let c = cmd(i, &peers[i]);
            peers[i].send_cmd(c)
        })
        .collect();
    peers
        .iter_mut()
        .zip(ids)
        .map(|(p, id)| p.reply(id))
        .collect()
}
