//! Outbound connections (`Ctx::connect`): the `dialer` example connects out
//! to the `echo` example over every scheme, as a test client asks it to, and
//! reports what its handler saw.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// A control client of the `dialer` example.
struct Dialer {
    _server: Server,
    ws: Ws,
}

impl Dialer {
    fn start(count: usize) -> Dialer {
        let server = Server::start_ws("dialer", count, &[], None);
        let ws = Ws::connect(server.addr, "/");
        Dialer {
            _server: server,
            ws,
        }
    }

    #[track_caller]
    fn call(&mut self, cmd: Value) -> Value {
        self.ws.send_text(&cmd.to_string());
        let reply: Value =
            serde_json::from_str(&self.ws.recv_text(REPLY_TIMEOUT)).expect("JSON reply");
        assert!(reply.get("error").is_none(), "{cmd} -> {reply}");
        reply
    }

    #[track_caller]
    fn connect(&mut self, mut cmd: Value) -> String {
        cmd["op"] = json!("connect");
        self.call(cmd)["conn"].as_str().expect("conn").to_string()
    }

    fn state(&mut self, conn: &str) -> Value {
        self.call(json!({"op": "state", "conn": conn}))
    }

    /// Waits until the connection's handler saw `event` `n` times.
    #[track_caller]
    fn wait_events(&mut self, conn: &str, event: &str, n: usize, timeout: Duration) -> Value {
        poll_until(timeout, &format!("{n} x {event} on {conn}"), || {
            let s = self.state(conn);
            let seen = s["events"].as_array().map_or(0, |e| {
                e.iter()
                    .filter(|v| v.as_str().is_some_and(|t| t.starts_with(event)))
                    .count()
            });
            (seen >= n).then_some(s)
        })
    }
}

fn echo(scheme: &str, extra: &[&str]) -> Server {
    let listen = format!("{scheme}://127.0.0.1:0");
    let mut args = vec!["--listen", listen.as_str(), "--count", "2"];
    args.extend_from_slice(extra);
    Server::start("echo", &args)
}

fn url(scheme: &str, addr: SocketAddr) -> String {
    format!("{scheme}://{addr}/")
}

/// 10,000 messages out and 10,000 echoed back, in order, over `scheme`.
fn exchange(scheme: &str, listen_scheme: &str) {
    let upstream = echo(listen_scheme, &[]);
    let mut d = Dialer::start(1);
    let conn = d.connect(json!({"url": url(scheme, upstream.addr)}));
    let s = d.wait_events(&conn, "connect", 1, REPLY_TIMEOUT);
    assert_eq!(s["info"]["outbound"], json!(true), "{s}");
    assert_eq!(
        s["server_connections"],
        json!(1),
        "only the control client is online: {s}"
    );
    let sent = d.call(json!({"op": "send", "conn": conn, "n": 10_000, "prefix": "m"}));
    assert_eq!(sent["accepted"], json!(10_000));
    let s = poll_until(Duration::from_secs(30), "10,000 echoes", || {
        let s = d.state(&conn);
        (s["received"].as_u64() == Some(10_000)).then_some(s)
    });
    assert_eq!(s["in_order"], json!(true), "{s}");
    assert_eq!(s["last"], json!("m9999"), "{s}");
}

#[test]
fn websocket_client_exchanges_ten_thousand_messages_in_order() {
    exchange("ws", "websocket");
}

#[test]
fn frame_client_exchanges_ten_thousand_messages_in_order() {
    exchange("frame", "frame");
}

#[test]
fn text_client_exchanges_ten_thousand_messages_in_order() {
    exchange("text", "text");
}
