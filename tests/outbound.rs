//! Outbound connections (`Ctx::connect`): the `dialer` example connects out
//! to the `echo` example over every scheme (TLS too), as a test client asks
//! it to, and reports what its handler saw: reconnecting with a growing
//! backoff and the same id, sends held (up to a bound) or refused while the
//! connection is down, connect timeouts, subprotocols, and the `relay`
//! example between WebSocket clients and an echo upstream.
//!
//! Timing checks read the dialer's own timestamps of its callbacks
//! (`event_ms`); the only fixed durations here are tolerances for a loaded
//! machine and the one window whose CPU cost is measured.

mod common;

use common::cert::TestCert as Cert;
use common::dialer::Dialer;
use common::*;
use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::HeaderValue;

/// How late a timer or a connect may come on a busy two-core machine
/// (never early: the loop rounds its timeouts up).
const LATE: Duration = Duration::from_millis(300);

impl Dialer {
    #[track_caller]
    fn connect(&mut self, mut cmd: Value) -> String {
        cmd["op"] = json!("connect");
        self.call(cmd)["conn"].as_str().expect("conn").to_string()
    }

    fn state(&mut self, conn: &str) -> Value {
        self.call(json!({"op": "state", "conn": conn}))
    }

    /// `n` sends of `m{from}`, `m{from+1}`, ... padded to `size` bytes;
    /// the reply (`accepted`, `dropped_sends`).
    #[track_caller]
    fn send(&mut self, conn: &str, from: u64, n: u64, size: usize) -> Value {
        self.call(
            json!({"op": "send", "conn": conn, "prefix": "m", "from": from, "n": n,
                         "size": size}),
        )
    }

    /// Waits until the connection's handler saw `event` `n` times.
    #[track_caller]
    fn wait_events(&mut self, conn: &str, event: &str, n: usize, timeout: Duration) -> Value {
        poll_until(timeout, &format!("{n} x {event} on {conn}"), || {
            let s = self.state(conn);
            (events(&s)
                .iter()
                .filter(|(e, _)| e.starts_with(event))
                .count()
                >= n)
                .then_some(s)
        })
    }

    /// Waits until `n` messages came back on `conn`.
    #[track_caller]
    fn wait_received(&mut self, conn: &str, n: u64, timeout: Duration) -> Value {
        poll_until(timeout, &format!("{n} messages back on {conn}"), || {
            let s = self.state(conn);
            (s["received"].as_u64() >= Some(n)).then_some(s)
        })
    }

    /// Waits until the connection was lost `losses` times, and `n` attempts
    /// failed since the last loss.
    #[track_caller]
    fn wait_failures(&mut self, conn: &str, losses: usize, n: usize) -> Value {
        let what = format!("{n} failed attempts after loss {losses} of {conn}");
        poll_until(REPLY_TIMEOUT, &what, || {
            let s = self.state(conn);
            let seen = events(&s);
            let lost = seen.iter().filter(|(e, _)| e == "close").count();
            let failed = seen
                .iter()
                .rev()
                .take_while(|(e, _)| e != "close")
                .filter(|(e, _)| e.starts_with("error: connect:"))
                .count();
            (lost == losses && failed >= n).then_some(s)
        })
    }

    #[track_caller]
    fn cpu_ms(&mut self) -> u64 {
        self.call(json!({"op": "cpu"}))["cpu_ms"]
            .as_u64()
            .expect("cpu_ms")
    }
}

/// A `state` reply's events with their times (ms since the `connect` op).
#[track_caller]
fn events(state: &Value) -> Vec<(String, u64)> {
    let names = state["events"].as_array().expect("events");
    let times = state["event_ms"].as_array().expect("event_ms");
    assert_eq!(names.len(), times.len(), "{state}");
    names
        .iter()
        .zip(times)
        .map(|(e, t)| {
            let e = e.as_str().expect("event").to_string();
            (e, t.as_u64().expect("event time"))
        })
        .collect()
}

fn echo(scheme: &str, extra: &[&str]) -> Server {
    let listen = format!("{scheme}://127.0.0.1:0");
    let mut args = vec!["--listen", listen.as_str(), "--count", "2"];
    args.extend_from_slice(extra);
    Server::start("echo", &args)
}

/// A WebSocket echo with two workers on `port`, once the port can be bound
/// again (the workers of a server killed on it may still hold it briefly).
#[track_caller]
fn echo_on(port: u16) -> Server {
    wait_until(REPLY_TIMEOUT, &format!("port {port} free to bind"), || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        // As the master binds: TIME_WAIT left by the last server is no obstacle.
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .is_ok()
    });
    let listen = format!("websocket://127.0.0.1:{port}");
    Server::start("echo", &["--listen", &listen, "--count", "2"])
}

/// A loopback port nothing listens on (bound once, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr").port()
}

impl Cert {
    /// An echo server with two workers, serving this certificate on a
    /// `scheme` listener.
    fn echo(&self, scheme: &str) -> Server {
        let listen = format!("{scheme}://127.0.0.1:0");
        Server::start_with_toml("echo", &["--listen", &listen, "--count", "2"], &self.toml())
    }
}

fn url(scheme: &str, addr: SocketAddr) -> String {
    format!("{scheme}://{addr}/")
}

/// Connects with `cmd` (the URL and options), then sends 10,000 messages
/// and waits for their 10,000 echoes, in order. Returns the state once the
/// connection was up.
#[track_caller]
fn exchange_with(cmd: Value) -> Value {
    let mut d = Dialer::start(1, None);
    let conn = d.connect(cmd);
    let up = d.wait_events(&conn, "connect", 1, REPLY_TIMEOUT);
    assert_eq!(up["info"]["outbound"], json!(true), "{up}");
    assert_eq!(
        up["server_connections"],
        json!(1),
        "only the control client is online: {up}"
    );
    let sent = d.call(json!({"op": "send", "conn": conn, "n": 10_000, "prefix": "m"}));
    assert_eq!(sent["accepted"], json!(10_000));
    let s = d.wait_received(&conn, 10_000, Duration::from_secs(30));
    assert_eq!(s["received"], json!(10_000), "{s}");
    assert_eq!(s["in_order"], json!(true), "{s}");
    assert_eq!(s["last"], json!("m9999"), "{s}");
    up
}

/// 10,000 messages out and 10,000 echoed back, in order, over `scheme`.
fn exchange(scheme: &str, listen_scheme: &str) {
    let upstream = echo(listen_scheme, &[]);
    let up = exchange_with(json!({"url": url(scheme, upstream.addr)}));
    assert_eq!(up["info"]["tls"], json!(false), "{up}");
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

#[test]
fn wss_client_exchanges_ten_thousand_messages_in_order() {
    let cert = Cert::new();
    let upstream = cert.echo("websocket");
    let url = format!("wss://localhost:{}/", upstream.port());
    let up = exchange_with(json!({"url": url, "ca_file": cert.path()}));
    assert_eq!(up["info"]["tls"], json!(true), "{up}");
}

#[test]
fn wss_client_refuses_a_certificate_it_was_not_told_to_trust() {
    let cert = Cert::new();
    let upstream = cert.echo("websocket");
    let mut d = Dialer::start(1, None);
    // The Mozilla roots compiled in do not include the test's certificate.
    let url = format!("wss://localhost:{}/", upstream.port());
    let conn = d.connect(json!({"url": url}));
    let s = d.wait_events(&conn, "error", 1, REPLY_TIMEOUT);
    let seen = events(&s);
    assert_eq!(seen.len(), 1, "one failed attempt, no on_connect: {s}");
    assert!(seen[0].0.contains("certificate"), "{s}");
    assert_eq!(
        s["info"],
        Value::Null,
        "no reconnect: the connection is gone: {s}"
    );
}

#[test]
fn frame_over_tls_client_exchanges_ten_thousand_messages_in_order() {
    let cert = Cert::new();
    let upstream = cert.echo("frame");
    let url = format!("frame://localhost:{}", upstream.port());
    let up = exchange_with(json!({"url": url, "tls": true, "ca_file": cert.path()}));
    assert_eq!(up["info"]["tls"], json!(true), "{up}");
}

/// The wait before attempt `k` after a loss (k = 0: the first): `initial`
/// doubled `k` times, at most `max`; the worker draws it from half to all
/// of that.
fn backoff(k: u32, (initial, max): (u64, u64)) -> u64 {
    initial.saturating_mul(1 << k.min(32)).min(max)
}

/// Checks that each gap between `times` (the loss, then each failed attempt)
/// is the backoff of its attempt: between half and all of it, give or take
/// the timer's lateness.
#[track_caller]
fn assert_backoff(times: &[u64], reconnect: (u64, u64), state: &Value) {
    for (k, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let b = backoff(k as u32, reconnect);
        // Each time is cut to whole milliseconds: a gap may read 1 ms short.
        assert!(
            gap + 1 >= b / 2 && gap <= b + LATE.as_millis() as u64,
            "wait {k} after the loss took {gap} ms, not within [{}, {b}] ms (+ {LATE:?}): {state}",
            b / 2
        );
    }
}

/// The times of the `error: connect` events after the last `close` (when
/// the connection was lost), with that `close` first.
#[track_caller]
fn failures_after_loss(state: &Value) -> Vec<u64> {
    let seen = events(state);
    let lost = seen
        .iter()
        .rposition(|(e, _)| e == "close")
        .unwrap_or_else(|| panic!("no close: {state}"));
    let mut times = vec![seen[lost].1];
    for (e, t) in &seen[lost + 1..] {
        assert!(
            e.starts_with("error: connect:"),
            "{e:?} after the loss: {state}"
        );
        times.push(*t);
    }
    times
}

#[test]
fn reconnect_backs_off_then_comes_back_with_the_same_id() {
    const RECONNECT: (u64, u64) = (100, 1600);
    // Enough failures for the wait to reach the maximum.
    let failures = (0..)
        .position(|k| backoff(k, RECONNECT) == RECONNECT.1)
        .unwrap()
        + 1;
    let upstream = echo("websocket", &[]);
    let port = upstream.port();
    let mut d = Dialer::start(1, None);
    let conn = d.connect(json!({"url": url("ws", upstream.addr), "reconnect": RECONNECT}));
    d.wait_events(&conn, "connect", 1, REPLY_TIMEOUT);
    assert_eq!(d.send(&conn, 0, 10, 0)["accepted"], json!(10));
    d.wait_received(&conn, 10, REPLY_TIMEOUT);

    drop(upstream); // SIGKILL: the connection is lost, the port refuses
    let s = d.wait_failures(&conn, 1, failures);
    let times = failures_after_loss(&s);
    assert_backoff(&times, RECONNECT, &s);
    assert_eq!(s["info"]["open"], json!(false), "{s}");

    // Back on the same port: the next attempt finds it. The second
    // `connect` is recorded under the id `connect` returned: the same id.
    let upstream = echo_on(port);
    let s = d.wait_events(&conn, "connect", 2, REPLY_TIMEOUT);
    assert_eq!(s["info"]["open"], json!(true), "{s}");
    assert_eq!(d.send(&conn, 10, 10, 0)["accepted"], json!(10));
    let s = d.wait_received(&conn, 20, REPLY_TIMEOUT);
    assert_eq!(
        (&s["received"], &s["in_order"], &s["last"]),
        (&json!(20), &json!(true), &json!("m19")),
        "{s}"
    );

    // A success starts the backoff over: lost again, the first wait is
    // the initial one.
    drop(upstream);
    let s = d.wait_failures(&conn, 2, 1);
    let times = failures_after_loss(&s);
    assert_backoff(&times[..2], RECONNECT, &s);
}

#[test]
fn retrying_a_closed_port_costs_little_cpu() {
    const RECONNECT: (u64, u64) = (50, 400);
    const WINDOW: Duration = Duration::from_secs(5);
    const CPU_BUDGET_MS: u64 = 250;
    let port = closed_port();
    let mut d = Dialer::start(1, None);
    let conn = d.connect(json!({"url": format!("ws://127.0.0.1:{port}/"),
                                "reconnect": RECONNECT}));
    let failures = |s: &Value| {
        events(s)
            .iter()
            .filter(|(e, _)| e.starts_with("error: connect:"))
            .count()
    };
    // Past the first doublings: from here every wait is about the maximum.
    let ramp = (0..)
        .position(|k| backoff(k, RECONNECT) == RECONNECT.1)
        .unwrap();
    let before = failures(&d.wait_events(&conn, "error: connect:", ramp, REPLY_TIMEOUT));

    let cpu_before = d.cpu_ms();
    let start = Instant::now();
    std::thread::sleep(WINDOW); // the window measured, not a wait for something
    let cpu = d.cpu_ms() - cpu_before;
    let window = start.elapsed();
    let s = d.state(&conn);
    let during = failures(&s) - before;
    eprintln!("{cpu} ms of CPU in {window:?} of {during} failed attempts");

    // Each attempt waits at most the maximum (and a late wake-up).
    let slowest = Duration::from_millis(RECONNECT.1) + LATE;
    let least = (window.as_millis() / slowest.as_millis()) as usize - 1;
    assert!(
        during >= least,
        "{during} failed attempts in {window:?}, expected at least {least}: {s}"
    );
    assert!(
        cpu < CPU_BUDGET_MS,
        "{cpu} ms of CPU in {window:?} of {during} failed attempts: {s}"
    );
    assert_eq!(events(&s).len(), failures(&s), "only failed attempts: {s}");
}

#[test]
fn connect_times_out_when_the_listener_never_answers() {
    const TIMEOUT_MS: u64 = 500;
    // A listener that never accepts, with the smallest backlog: once its
    // accept queue is full the kernel drops further SYNs, so a connect to it
    // hangs.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    listener.listen(1).expect("listen");
    let addr = listener
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("inet");
    let mut queued = Vec::new();
    let hung =
        (0..16).any(
            |_| match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => {
                    queued.push(s);
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => true,
                Err(e) => panic!("connect {addr}: {e}"),
            },
        );
    assert!(
        hung,
        "the backlog never filled: {} connects went through",
        queued.len()
    );

    let mut d = Dialer::start(1, None);
    let conn = d.connect(json!({"url": url("ws", addr), "timeout_ms": TIMEOUT_MS}));
    let s = d.wait_events(&conn, "error", 1, REPLY_TIMEOUT);
    let seen = events(&s);
    assert_eq!(
        seen.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        ["error: timed out: connect"],
        "{s}"
    );
    // The timeout is checked by a sweep every 100 ms.
    let at = seen[0].1;
    assert!(
        at + 1 >= TIMEOUT_MS && at <= TIMEOUT_MS + 100 + LATE.as_millis() as u64,
        "timed out after {at} ms, asked for {TIMEOUT_MS} ms: {s}"
    );
    assert_eq!(
        s["info"],
        Value::Null,
        "no reconnect: the connection is gone: {s}"
    );
    drop(queued);
}

#[test]
fn sends_while_down_are_held_up_to_the_bound_then_delivered_in_order() {
    const SENDS: u64 = 5_000;
    // Every message padded to one size, so each is one client frame of a
    // known length: 2 header bytes and a 4-byte mask before a payload
    // under 126 bytes.
    const SIZE: usize = 16;
    const FRAME: usize = 2 + 4 + SIZE;
    const HOLD: usize = 20_000;
    let port = closed_port();
    let mut d = Dialer::start(1, None);
    let conn = d.connect(json!({"url": format!("ws://127.0.0.1:{port}/"),
                                "reconnect": [50, 200], "hold": HOLD}));
    let dropped_before = d.state(&conn)["dropped_sends"]
        .as_u64()
        .expect("dropped_sends");
    let sent = d.send(&conn, 0, SENDS, SIZE);
    let accepted = sent["accepted"].as_u64().expect("accepted");
    assert_eq!(accepted, (HOLD / FRAME) as u64, "{sent}");
    assert_eq!(
        sent["dropped_sends"].as_u64().expect("dropped_sends") - dropped_before,
        SENDS - accepted,
        "every refused send is counted: {sent}"
    );
    let s = d.state(&conn);
    assert_eq!(s["info"]["open"], json!(false), "{s}");
    assert_eq!(s["info"]["queued"], json!(accepted as usize * FRAME), "{s}");

    let _upstream = echo_on(port);
    d.wait_events(&conn, "connect", 1, REPLY_TIMEOUT);
    // A last message sent once up comes back after everything held: when it
    // is back, so is all that was held, and nothing else.
    assert_eq!(d.send(&conn, accepted, 1, SIZE)["accepted"], json!(1));
    let s = d.wait_received(&conn, accepted + 1, Duration::from_secs(30));
    assert_eq!(s["received"], json!(accepted + 1), "{s}");
    assert_eq!(s["in_order"], json!(true), "{s}");
    let last = s["last"].as_str().expect("last");
    assert!(last.starts_with(&format!("m{accepted} ")), "{s}");
}

#[test]
fn sends_while_down_are_refused_without_hold() {
    let port = closed_port();
    let mut d = Dialer::start(1, None);
    let conn = d.connect(json!({"url": format!("ws://127.0.0.1:{port}/"),
                                "reconnect": [50, 200]}));
    let dropped_before = d.state(&conn)["dropped_sends"]
        .as_u64()
        .expect("dropped_sends");
    let sent = d.send(&conn, 0, 100, 0);
    assert_eq!(sent["accepted"], json!(0), "{sent}");
    assert_eq!(
        sent["dropped_sends"].as_u64(),
        Some(dropped_before),
        "a refused send is not a dropped one: {sent}"
    );

    let _upstream = echo_on(port);
    d.wait_events(&conn, "connect", 1, REPLY_TIMEOUT);
    assert_eq!(d.send(&conn, 0, 1, 0)["accepted"], json!(1));
    let s = d.wait_received(&conn, 1, REPLY_TIMEOUT);
    assert_eq!(
        (&s["received"], &s["in_order"], &s["last"]),
        (&json!(1), &json!(true), &json!("m0")),
        "nothing sent while down was kept: {s}"
    );
}

#[test]
fn a_subprotocol_the_server_does_not_choose_fails_the_handshake() {
    let upstream = echo("websocket", &[]);
    let mut d = Dialer::start(1, None);
    let conn = d.connect(json!({"url": url("ws", upstream.addr), "protocols": ["chat.v2"]}));
    let s = d.wait_events(&conn, "error", 1, REPLY_TIMEOUT);
    let seen = events(&s);
    assert_eq!(seen.len(), 1, "one failed attempt, no on_connect: {s}");
    assert!(
        seen[0].0.starts_with("error: handshake refused: ") && seen[0].0.contains("subprotocol"),
        "{s}"
    );
    assert_eq!(
        s["info"],
        Value::Null,
        "no reconnect: the connection is gone: {s}"
    );
}

/// A WebSocket server on a test thread for one connection: it answers the
/// upgrade with `choose(offered)` as its subprotocol, reports what was
/// offered on `offered`, then echoes until the connection ends.
fn subprotocol_server(choose: fn(&str) -> Option<String>) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        // The signature is tungstenite's `Callback`.
        #[allow(clippy::result_large_err)]
        let answer = |req: &Request, mut res: Response| -> Result<Response, ErrorResponse> {
            let offered = req
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if let Some(p) = choose(&offered) {
                let v = HeaderValue::from_str(&p).expect("header value");
                res.headers_mut().insert("Sec-WebSocket-Protocol", v);
            }
            let _ = tx.send(offered);
            Ok(res)
        };
        let Ok(mut ws) = tungstenite::accept_hdr(stream, answer) else {
            return;
        };
        while let Ok(msg) = ws.read() {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

#[test]
fn the_subprotocol_the_server_chose_is_reported() {
    // Chooses chat.v2 if offered, whatever the client prefers.
    let (addr, offered) = subprotocol_server(|offered| {
        offered
            .split(',')
            .map(str::trim)
            .find(|p| *p == "chat.v2")
            .map(str::to_string)
    });
    let mut d = Dialer::start(1, None);
    let conn = d.connect(json!({"url": url("ws", addr), "protocols": ["chat.v3", "chat.v2"]}));
    let s = d.wait_events(&conn, "connect", 1, REPLY_TIMEOUT);
    assert_eq!(
        offered
            .recv_timeout(REPLY_TIMEOUT)
            .expect("the upgrade request"),
        "chat.v3, chat.v2",
        "offered in order of preference"
    );
    assert_eq!(s["info"]["subprotocol"], json!("chat.v2"), "{s}");
    assert_eq!(d.send(&conn, 0, 3, 0)["accepted"], json!(3));
    let s = d.wait_received(&conn, 3, REPLY_TIMEOUT);
    assert_eq!(
        (&s["in_order"], &s["last"]),
        (&json!(true), &json!("m2")),
        "{s}"
    );
}

#[test]
fn a_subprotocol_that_was_not_offered_fails_the_handshake() {
    let (addr, _offered) = subprotocol_server(|_| Some("chat.v9".to_string()));
    let mut d = Dialer::start(1, None);
    let conn = d.connect(json!({"url": url("ws", addr), "protocols": ["chat.v2"]}));
    let s = d.wait_events(&conn, "error", 1, REPLY_TIMEOUT);
    let seen = events(&s);
    assert_eq!(
        seen.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        ["error: handshake refused: subprotocol \"chat.v9\" was not offered"],
        "{s}"
    );
}

/// Established connections accepted on `port` (the server side).
#[track_caller]
fn accepted_on(port: u16) -> usize {
    sockdiag::established_by_local_port(port)
        .unwrap_or_else(|| accepted_sockets(port))
        .len()
}

#[test]
fn relay_carries_twenty_clients_both_ways_and_closes_their_upstreams() {
    const CLIENTS: usize = 20;
    const MESSAGES: usize = 100;
    let upstream = echo("websocket", &[]);
    let relay = Server::start_ws("relay", 2, &["--upstream", &url("ws", upstream.addr)], None);
    // Each client sends everything as soon as it is upgraded, before the
    // relay's upstream for it is up (the relay holds it); all is read back
    // once every client has sent.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut ws = Ws::connect(relay.addr, "/");
        for j in 0..MESSAGES {
            ws.send_text(&format!("{i}:{j}"));
        }
        clients.push(ws);
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        for j in 0..MESSAGES {
            assert_eq!(
                ws.recv_text(REPLY_TIMEOUT),
                format!("{i}:{j}"),
                "client {i}"
            );
        }
    }
    assert_eq!(
        accepted_on(upstream.port()),
        CLIENTS,
        "one upstream per client"
    );
    assert_eq!(
        relay.workers().len(),
        2,
        "the relay has its two workers: {}",
        relay.output()
    );

    for mut ws in clients {
        ws.ws.close(None).expect("close");
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while !matches!(
            ws.recv_until(deadline),
            Recv::Close(_) | Recv::Gone(_) | Recv::Timeout
        ) {}
    }
    wait_until(
        REPLY_TIMEOUT,
        "every upstream closed with its client",
        || accepted_on(upstream.port()) == 0,
    );
}

/// A WebSocket echo on a test thread that accepts nothing until `gate`
/// is sent to (or dropped); the kernel completes the TCP connects meanwhile,
/// so a client's upgrade waits unanswered.
fn gated_echo() -> (SocketAddr, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let (gate, opened) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = opened.recv();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(msg) = ws.read() {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, gate)
}

#[test]
fn relay_holds_what_a_client_sends_before_its_upstream_is_up() {
    const MESSAGES: usize = 100;
    let (upstream, gate) = gated_echo();
    let relay = Server::start_ws("relay", 2, &["--upstream", &url("ws", upstream)], None);
    let mut ws = Ws::connect(relay.addr, "/");
    for j in 0..MESSAGES {
        ws.send_text(&format!("early {j}"));
    }
    // The relay answers a ping after it has handled every message before it:
    // all of them reached it while its upstream was still upgrading.
    ws.ws
        .send(tungstenite::Message::Ping(Vec::new().into()))
        .expect("ping");
    ws.ws
        .get_mut()
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("read timeout");
    loop {
        match ws.ws.read().expect("the relay's pong") {
            tungstenite::Message::Pong(_) => break,
            tungstenite::Message::Ping(_) => continue,
            other => panic!("{other:?} came back before the upstream was let in"),
        }
    }
    gate.send(()).expect("open the gate");
    for j in 0..MESSAGES {
        assert_eq!(ws.recv_text(REPLY_TIMEOUT), format!("early {j}"));
    }
}

#[test]
fn relay_closes_its_client_with_1011_when_the_upstream_refuses() {
    let upstream = echo("websocket", &[]);
    let relay = Server::start_ws("relay", 2, &["--upstream", &url("ws", upstream.addr)], None);
    let port = upstream.port();
    drop(upstream);
    wait_until(REPLY_TIMEOUT, &format!("port {port} refuses"), || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    let mut ws = Ws::connect(relay.addr, "/");
    ws.send_text("anyone there?");
    assert_eq!(ws.expect_close(REPLY_TIMEOUT), Some(1011));
}
