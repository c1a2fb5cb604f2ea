//! [`Client`]: one WebSocket client of the chat, with waits that have
//! deadlines.

use super::{ChatServer, WAIT};
use crate::common::tcp_connect;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// One WebSocket client.
pub struct Client {
    ws: WebSocket<TcpStream>,
    /// The user after `login`.
    pub user: String,
    /// The connection id from `welcome` (`[node.]worker.key.serial`).
    pub conn: String,
}

/// How a read ended.
pub enum Event {
    /// A JSON frame.
    Frame(Value),
    /// The server closed the connection (close code, if any).
    Closed(Option<u16>),
    /// Nothing before the deadline.
    Timeout,
}

impl Client {
    /// Opens a WebSocket to the server's `/ws`.
    #[track_caller]
    pub fn connect(server: &ChatServer) -> Client {
        let stream = tcp_connect(server.socket_addr(), WAIT);
        let (ws, _) = tungstenite::client(server.ws_url(), stream).expect("websocket handshake");
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        Client {
            ws,
            user: String::new(),
            conn: String::new(),
        }
    }

    /// Connects and logs in as `name`.
    #[track_caller]
    pub fn login(server: &ChatServer, name: &str) -> Client {
        let mut c = Client::connect(server);
        c.send(json!({"type": "login", "name": name}));
        let w = c.expect("welcome");
        assert_eq!(w["user"], name);
        c.user = name.into();
        c.conn = w["conn"].as_str().expect("conn").to_string();
        c
    }

    /// Logs in as `name` on a connection served by worker `worker` (opens
    /// connections until the kernel hands one to that worker).
    #[track_caller]
    pub fn login_on(server: &ChatServer, name: &str, worker: usize) -> Client {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = Client::login(server, name);
            if c.worker() == worker {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "no connection landed on worker {worker}"
            );
        }
    }

    /// The worker serving this connection (`worker.key.serial`, or
    /// `node.worker.key.serial` on a cluster).
    pub fn worker(&self) -> usize {
        self.conn
            .rsplit('.')
            .nth(2)
            .and_then(|w| w.parse().ok())
            .expect("conn id")
    }

    /// Sends a JSON frame.
    #[track_caller]
    pub fn send(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// Sends a text frame as is.
    #[track_caller]
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Sends a text frame; false if the connection is already gone.
    pub fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(Message::text(text)).is_ok()
    }

    /// Sends a binary frame.
    #[track_caller]
    pub fn send_binary(&mut self, data: &[u8]) {
        self.ws.send(Message::binary(data.to_vec())).expect("send");
    }

    /// Sends a text frame whose payload is not valid UTF-8.
    #[track_caller]
    pub fn send_invalid_utf8(&mut self) {
        let frame = Frame::message(vec![0xc3u8, 0x28], OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(frame)).expect("send");
    }

    /// The next frame, tick or not, or how the wait ended.
    pub fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return Event::Frame(
                        serde_json::from_str(t.as_str()).expect("server sent JSON"),
                    )
                }
                Ok(Message::Close(frame)) => {
                    return Event::Closed(frame.map(|f: CloseFrame| u16::from(f.code)))
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    if Instant::now() >= deadline {
                        return Event::Timeout;
                    }
                }
                Err(_) => return Event::Closed(None),
            }
        }
    }

    /// The next frame that is not a `tick`; panics on close or timeout.
    #[track_caller]
    pub fn recv(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Event::Frame(v) if v["type"] == "tick" => {}
                Event::Frame(v) => return v,
                Event::Closed(code) => panic!("{}: closed ({code:?}) while waiting", self.user),
                Event::Timeout => panic!("{}: no frame within {WAIT:?}", self.user),
            }
        }
    }

    /// The next non-tick frame, which must have this `type`.
    #[track_caller]
    pub fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["type"], kind, "{}: expected {kind}, got {v}", self.user);
        v
    }

    /// The next non-tick frame, which must be an `error` with this code.
    #[track_caller]
    pub fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error");
        assert_eq!(v["code"], code, "{}: {v}", self.user);
        assert!(v["message"].is_string(), "{v}");
        v
    }

    /// Skips frames until one matches; panics at the deadline.
    #[track_caller]
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Event::Frame(v) if pred(&v) => return v,
                Event::Frame(_) => {}
                Event::Closed(code) => {
                    panic!("{}: closed ({code:?}) waiting for {what}", self.user)
                }
                Event::Timeout => panic!("{}: no {what} within {WAIT:?}", self.user),
            }
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    #[track_caller]
    pub fn expect_close(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Event::Frame(_) => {}
                Event::Closed(code) => return code,
                Event::Timeout => panic!("{}: not closed within {WAIT:?}", self.user),
            }
        }
    }

    /// Round trip: sends `users` with a fresh ref and returns every frame
    /// that arrived before its reply (ticks excluded). Proves the connection
    /// is open and shows what else it received.
    #[track_caller]
    pub fn sync(&mut self) -> Vec<Value> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let r = format!("sync-{}", N.fetch_add(1, Ordering::SeqCst));
        self.send(json!({"type": "users", "ref": r}));
        let mut before = Vec::new();
        loop {
            let v = self.recv();
            if v["ref"] == r.as_str() {
                return before;
            }
            before.push(v);
        }
    }

    /// Joins a room and returns the `joined` reply, which must be the next
    /// frame (protocol 1.1: nothing of the room comes before it; the test
    /// has nothing else in flight).
    #[track_caller]
    pub fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room}));
        let v = self.recv();
        assert_eq!(
            v["type"], "joined",
            "{}: expected joined, got {v}",
            self.user
        );
        assert_eq!(v["room"], room);
        v
    }

    /// Waits until the server has closed the connection and the socket (the
    /// close handshake answered, then end of stream): the server is done
    /// with it.
    #[track_caller]
    pub fn expect_gone(&mut self) {
        assert!(
            self.read_until_gone(Instant::now() + WAIT),
            "{}: the server did not close the socket",
            self.user
        );
    }

    /// Closes the connection from the client side.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        self.read_until_gone(Instant::now() + WAIT);
    }

    /// Reads and drops whatever comes until the connection ends (true) or
    /// `deadline` passes (false).
    fn read_until_gone(&mut self, deadline: Instant) -> bool {
        loop {
            match self.ws.read() {
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(_) => return true,
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
}

/// A read that ran into the socket's read timeout: nothing arrived yet.
fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e)
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}
