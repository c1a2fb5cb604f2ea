//! [`Client`]: one WebSocket connection to the sync server, as a device
//! opens it. Replies are matched to requests by `ref`; everything else that
//! arrives meanwhile (events, replies to other requests) is kept in order
//! for [`Client::next_event`].

use super::{SyncServer, WAIT};
use crate::common::{Recv, Ws};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a read ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A JSON frame.
    Frame(Value),
    /// The server closed the connection (close code, if any).
    Closed(Option<u16>),
    /// Nothing before the deadline.
    Timeout,
}

/// One WebSocket connection.
pub struct Client {
    ws: Ws,
    /// The `client` of the `hello` (empty before it).
    pub client: String,
    /// The `epoch` of the `welcome`.
    pub epoch: String,
    /// Frames read while looking for a reply, in arrival order.
    pending: VecDeque<Value>,
    /// Set once the server closed (code, if any).
    closed: Option<Option<u16>>,
}

/// A ref no other request of this test process uses.
pub fn fresh_ref() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("r{}", N.fetch_add(1, Ordering::Relaxed))
}

impl Client {
    /// Opens a WebSocket to the server's `/sync`; no `hello` yet.
    #[track_caller]
    pub fn connect(server: &SyncServer) -> Client {
        Client::connect_to(server.addr())
    }

    /// Opens a WebSocket to `ws://ADDR/sync`.
    #[track_caller]
    pub fn connect_to(addr: SocketAddr) -> Client {
        Client {
            ws: Ws::connect(addr, "/sync"),
            client: String::new(),
            epoch: String::new(),
            pending: VecDeque::new(),
            closed: None,
        }
    }

    /// Connects and says `hello` as `client` (no token).
    #[track_caller]
    pub fn hello(server: &SyncServer, client: &str) -> Client {
        Client::hello_to(server.addr(), client, None)
    }

    /// Connects to `addr` and says `hello` as `client`, with `token` if
    /// given; panics unless the reply is a `welcome` for `client`.
    #[track_caller]
    pub fn hello_to(addr: SocketAddr, client: &str, token: Option<&str>) -> Client {
        let mut c = Client::connect_to(addr);
        let mut hello = json!({"type": "hello", "client": client});
        if let Some(t) = token {
            hello["token"] = t.into();
        }
        let w = c.request(hello);
        assert_eq!(w["type"], "welcome", "{w}");
        assert_eq!(w["client"], client, "{w}");
        c.client = client.to_string();
        c.epoch = w["epoch"].as_str().expect("welcome.epoch").to_string();
        c
    }

    /// Says `hello` as `client` on a connection served by worker `pid`:
    /// connects until the kernel hands a connection to that worker.
    #[track_caller]
    pub fn hello_on(server: &mut SyncServer, client: &str, pid: i32) -> Client {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = Client::hello(server, client);
            if server.worker_of_port(c.local_port()) == Some(pid) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "within {WAIT:?}, no connection landed on worker {pid}"
            );
        }
    }

    /// The client's local port (which worker holds it: see
    /// [`SyncServer::worker_of_port`]).
    pub fn local_port(&self) -> u16 {
        self.ws.local_port()
    }

    /// Sends a JSON frame.
    #[track_caller]
    pub fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Sends a text frame as is.
    #[track_caller]
    pub fn send_text(&mut self, text: &str) {
        self.ws.send_text(text);
    }

    /// Sends a text frame; false if the connection is already gone.
    pub fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.try_send_text(text)
    }

    /// Sends a binary frame.
    #[track_caller]
    pub fn send_binary(&mut self, data: &[u8]) {
        self.ws.send_binary(data.to_vec());
    }

    /// Sends a text frame whose payload is not valid UTF-8.
    #[track_caller]
    pub fn send_invalid_utf8(&mut self) {
        self.ws.send_invalid_utf8();
    }

    /// Sends `request` with a fresh `ref` (unless it has one) without
    /// waiting; returns the ref.
    #[track_caller]
    pub fn send_request(&mut self, mut request: Value) -> String {
        let r = match request.get("ref").and_then(Value::as_str) {
            Some(r) => r.to_string(),
            None => {
                let r = fresh_ref();
                request["ref"] = r.clone().into();
                r
            }
        };
        self.send(&request);
        r
    }

    /// Waits for the reply carrying `r`, keeping what comes first for
    /// [`Client::next_event`].
    #[track_caller]
    pub fn reply_to(&mut self, r: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["ref"] == r) {
            return self.pending.remove(i).expect("present");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.read(deadline) {
                Event::Frame(v) if v["ref"] == r => return v,
                Event::Frame(v) => self.pending.push_back(v),
                other => panic!("{}: no reply to ref {r}: {other:?}", self.client),
            }
        }
    }

    /// Sends `request` (with a fresh `ref` unless it has a string one) and
    /// returns its reply, matched by `ref`.
    #[track_caller]
    pub fn request(&mut self, request: Value) -> Value {
        let r = self.send_request(request);
        self.reply_to(&r)
    }

    /// As [`Client::request`]; the reply must be an `error` with `code`,
    /// echoing the ref.
    #[track_caller]
    pub fn expect_error(&mut self, request: Value, code: &str) -> Value {
        let shown = request.to_string();
        let v = self.request(request);
        assert_eq!(v["type"], "error", "{shown} -> {v}");
        assert_eq!(v["code"], code, "{shown} -> {v}");
        assert!(v["message"].is_string(), "{shown} -> {v}");
        v
    }

    /// Subscribes to `keys` (with `since` if given) and returns the frames
    /// answering it, one `doc` or `changes` per key in order, after
    /// checking that they are that and that `subscribed` lists `keys`.
    #[track_caller]
    pub fn subscribe(&mut self, keys: &[&str], since: Option<Value>) -> Vec<Value> {
        let mut req = json!({"type": "subscribe", "keys": keys});
        if let Some(s) = since {
            req["since"] = s;
        }
        let r = self.send_request(req);
        let mut frames = Vec::new();
        loop {
            let v = self.reply_to(&r);
            if v["type"] == "subscribed" {
                assert_eq!(v["keys"], json!(keys), "{v}");
                break;
            }
            assert!(v["type"] == "doc" || v["type"] == "changes", "{v}");
            frames.push(v);
        }
        let got: Vec<&Value> = frames.iter().map(|f| &f["key"]).collect();
        let want: Vec<Value> = keys.iter().map(|k| json!(k)).collect();
        assert_eq!(
            got,
            want.iter().collect::<Vec<_>>(),
            "one frame per key, in order"
        );
        frames
    }

    /// The next frame not taken as a reply yet, or how the wait ended.
    pub fn next_event(&mut self, timeout: Duration) -> Event {
        if let Some(v) = self.pending.pop_front() {
            return Event::Frame(v);
        }
        self.read(Instant::now() + timeout)
    }

    /// The next frame; panics on close or timeout.
    #[track_caller]
    pub fn recv(&mut self) -> Value {
        match self.next_event(WAIT) {
            Event::Frame(v) => v,
            other => panic!("{}: expected a frame: {other:?}", self.client),
        }
    }

    /// The next frame, which must be a `change` of `key`.
    #[track_caller]
    pub fn expect_change(&mut self, key: &str) -> Value {
        let v = self.recv();
        assert_eq!(
            (&v["type"], &v["key"]),
            (&json!("change"), &json!(key)),
            "{}: expected a change of {key}, got {v}",
            self.client
        );
        assert!(v.get("ref").is_none(), "a change carries no ref: {v}");
        v
    }

    /// Waits for the server to close the connection; returns the close code.
    /// Frames before it are dropped.
    #[track_caller]
    pub fn expect_close(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        self.pending.clear();
        loop {
            match self.read(deadline) {
                Event::Frame(_) => {}
                Event::Closed(code) => return code,
                Event::Timeout => panic!("{}: not closed within {WAIT:?}", self.client),
            }
        }
    }

    /// Closes from the client side and waits for the end of the stream.
    pub fn close(mut self) {
        self.ws.close_and_drain(WAIT);
    }

    /// Reads one frame from the socket until `deadline`, checking the
    /// rules every frame keeps (a JSON object with a string `type`;
    /// `deleted: true` exactly on deleted versions).
    fn read(&mut self, deadline: Instant) -> Event {
        if let Some(code) = self.closed {
            return Event::Closed(code);
        }
        match self.ws.recv_until(deadline) {
            Recv::Text(t) => {
                let v: Value = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("server sent non-JSON {t:?}: {e}"));
                assert!(v.is_object() && v["type"].is_string(), "frame: {v}");
                check_deleted(&v);
                Event::Frame(v)
            }
            Recv::Binary(b) => panic!("the server sent a binary frame: {b:?}"),
            Recv::Close(code) => {
                self.closed = Some(code);
                Event::Closed(code)
            }
            Recv::Gone(_) => {
                self.closed = Some(None);
                Event::Closed(None)
            }
            Recv::Timeout => Event::Timeout,
        }
    }
}

/// `deleted` appears, as `true`, exactly where a frame describes a
/// version that is a delete: a `doc`, `change` or `conflict` at a version
/// above 0 with value `null`, and such items of `changes`. Nothing else has
/// it (the protocol's Model).
#[track_caller]
fn check_deleted(v: &Value) {
    let describes = |d: &Value| {
        let deleted = d["version"].as_u64().unwrap_or(0) > 0 && d["value"].is_null();
        if deleted {
            assert_eq!(
                d.get("deleted"),
                Some(&json!(true)),
                "a deleted version says so: {v}"
            );
        } else {
            assert!(
                d.get("deleted").is_none(),
                "deleted on a version that is no delete: {v}"
            );
        }
    };
    match v["type"].as_str() {
        Some("doc" | "change" | "conflict") => describes(v),
        Some("changes") => {
            assert!(v.get("deleted").is_none(), "{v}");
            for c in v["changes"]
                .as_array()
                .unwrap_or_else(|| panic!("changes: {v}"))
            {
                describes(c);
            }
        }
        _ => assert!(v.get("deleted").is_none(), "deleted outside a version: {v}"),
    }
}
