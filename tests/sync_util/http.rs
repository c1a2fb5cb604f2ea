//! [`Http`]: a backend's view of the sync server, `/doc/KEY` over plain
//! HTTP/1.1 (one connection per request, spoken byte by byte through
//! `common::http`).

use crate::common::{http_exchange, HttpReply};
use serde_json::Value;
use std::net::SocketAddr;

/// A response: the raw reply and its body as JSON (`Null` if it is not).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body parsed as JSON, `Value::Null` when it is not JSON.
    pub json: Value,
    /// Everything as it came.
    pub raw: HttpReply,
}

impl Reply {
    /// The first header `name`, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw.header(name)
    }

    /// The `ETag` header.
    pub fn etag(&self) -> Option<&str> {
        self.header("ETag")
    }
}

/// Requests to one server.
#[derive(Clone, Debug)]
pub struct Http {
    addr: SocketAddr,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
}

impl Http {
    /// Requests to `addr`, without an API key.
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            api_key: None,
        }
    }

    /// Sends `METHOD path` with `headers` and `body` (a `Content-Length`
    /// is added when there is a body) and reads the whole response.
    #[track_caller]
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || matches!(method, "PUT" | "PATCH" | "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let raw = http_exchange(self.addr, &[head.as_bytes(), body]);
        let json = serde_json::from_slice(&raw.body).unwrap_or(Value::Null);
        Reply {
            status: raw.status,
            json,
            raw,
        }
    }

    /// `GET /doc/KEY` (`key` as it goes in the path).
    #[track_caller]
    pub fn get(&self, key: &str) -> Reply {
        self.send("GET", &format!("/doc/{key}"), &[], b"")
    }

    /// `PUT /doc/KEY` of `value` as `application/json` with `headers`
    /// (the precondition among them).
    #[track_caller]
    pub fn put(&self, key: &str, value: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.send(
            "PUT",
            &format!("/doc/{key}"),
            &all,
            value.to_string().as_bytes(),
        )
    }

    /// `PATCH /doc/KEY` of `merge` as `application/merge-patch+json`.
    #[track_caller]
    pub fn patch(&self, key: &str, merge: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![("Content-Type", "application/merge-patch+json")];
        all.extend_from_slice(headers);
        self.send(
            "PATCH",
            &format!("/doc/{key}"),
            &all,
            merge.to_string().as_bytes(),
        )
    }

    /// `DELETE /doc/KEY` with `headers`.
    #[track_caller]
    pub fn delete(&self, key: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("DELETE", &format!("/doc/{key}"), headers, b"")
    }
}

/// `"V"`: the entity tag of version V.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}
