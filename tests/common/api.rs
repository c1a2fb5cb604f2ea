//! A backend of the HTTP push API (`[api] key`): one kept-alive HTTP
//! connection sending `Authorization: Bearer KEY` and JSON bodies, reading
//! JSON answers.

use super::{read_one_reply, tcp_connect, HttpReply, REPLY_TIMEOUT};
use serde_json::{json, Value};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

/// A backend's kept-alive HTTP connection.
pub struct Backend {
    addr: SocketAddr,
    /// The connection.
    pub stream: TcpStream,
    /// Bytes read past the last response.
    pub pending: Vec<u8>,
    key: Option<String>,
}

impl Backend {
    /// Connects, to send `key` with every request.
    pub fn new(addr: SocketAddr, key: &str) -> Backend {
        Backend::with_key(addr, Some(key))
    }

    /// Connects, to send `key` (or no `Authorization` at all).
    pub fn with_key(addr: SocketAddr, key: Option<&str>) -> Backend {
        Backend {
            addr,
            stream: tcp_connect(addr, REPLY_TIMEOUT),
            pending: Vec::new(),
            key: key.map(str::to_string),
        }
    }

    /// The bytes of one request, with a JSON body if given.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>, extra: &str) -> Vec<u8> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n{extra}", self.addr);
        if let Some(k) = &self.key {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() && !extra.contains("Content-Type") {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        head.into_bytes()
    }

    /// Sends one request with extra header lines and reads its answer.
    #[track_caller]
    pub fn call_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        extra: &str,
    ) -> HttpReply {
        let req = self.request(method, path, body, extra);
        self.stream.write_all(&req).expect("write request");
        read_one_reply(&mut self.stream, &mut self.pending, false)
    }

    /// Status and JSON body.
    #[track_caller]
    pub fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let r = self.call_with(method, path, body.as_deref(), "");
        let v = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: body not JSON ({e}): {}", r.body_text()));
        (r.status, v)
    }

    #[track_caller]
    /// As [`Backend::call`], asserting 200.
    pub fn ok(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }

    #[track_caller]
    /// `POST /api/publish`; returns `delivered`.
    pub fn publish(&mut self, to: Value, data: Value) -> u64 {
        let v = self.ok(
            "POST",
            "/api/publish",
            Some(json!({"to": to, "data": data})),
        );
        v["delivered"].as_u64().expect("delivered")
    }
}
