//! Quiet connections: `idle_timeout_ms` closes a silent client (1001) and
//! spares one that keeps talking; `ping_interval_ms` pings a quiet client
//! and not a talking one.

mod common;

use common::*;
use std::io::ErrorKind;
use std::time::{Duration, Instant};
use tungstenite::{Error as WsError, Message as WsMessage};

fn start_echo(toml: &str) -> Server {
    Server::start_ws("echo", 1, &[], Some(toml))
}

/// The next frame of any kind (pings included), or `None` at the deadline.
fn next_frame(ws: &mut Ws, timeout: Duration) -> Option<WsMessage> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let _ = ws.ws.get_mut().set_read_timeout(Some(left));
        match ws.ws.read() {
            Ok(m) => return Some(m),
            Err(WsError::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => panic!("reading a frame: {e}"),
        }
    }
}

/// One echo round trip, then up to `quiet` of listening: panics on a ping or
/// anything else unexpected. This is also what paces a talking client.
#[track_caller]
fn talk(ws: &mut Ws, n: usize, quiet: Duration) {
    let text = format!("talk {n}");
    ws.send_text(&text);
    match next_frame(ws, REPLY_TIMEOUT) {
        Some(WsMessage::Text(t)) if t.as_str() == text => {}
        other => panic!("a talking client expected its echo, got {other:?}"),
    }
    if let Some(m) = next_frame(ws, quiet) {
        panic!("a talking client got {m:?}");
    }
}

#[test]
fn idle_timeout_closes_a_silent_client_and_spares_a_talking_one() {
    let idle = Duration::from_millis(400);
    let server = start_echo(&format!(
        "[server]\nidle_timeout_ms = {}\n",
        idle.as_millis()
    ));
    let mut silent = Ws::connect(server.addr, "/");
    let mut talker = Ws::connect(server.addr, "/");
    let started = Instant::now();
    let mut closed_after = None;
    let mut n = 0;
    // Talk every ~50 ms for three idle periods; the silent one must go.
    while started.elapsed() < 3 * idle || closed_after.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the silent client was not closed within 10 s"
        );
        talk(&mut talker, n, Duration::from_millis(50));
        n += 1;
        if closed_after.is_none() {
            match silent.recv(Duration::from_millis(1)) {
                Recv::Timeout => {}
                Recv::Close(code) => {
                    assert_eq!(code, Some(1001), "idle close code");
                    closed_after = Some(started.elapsed());
                }
                other => panic!("the silent client got {other:?}"),
            }
        }
    }
    let closed_after = closed_after.expect("closed");
    assert!(
        closed_after + Duration::from_millis(50) >= idle,
        "closed after {closed_after:?}, before the {idle:?} idle timeout"
    );
    eprintln!("silent client closed after {closed_after:?}; the talker talked {n} times");
}

#[test]
fn ping_interval_pings_a_quiet_client_and_not_a_talking_one() {
    let interval = Duration::from_millis(300);
    let server = start_echo(&format!(
        "[server]\nping_interval_ms = {}\n",
        interval.as_millis()
    ));
    let mut quiet = Ws::connect(server.addr, "/");
    let mut talker = Ws::connect(server.addr, "/");
    let started = Instant::now();
    let mut n = 0;
    // The talker talks every ~50 ms (and is never pinged) until the quiet
    // one has been pinged twice: the pong it answered was the only thing it
    // sent, so the second ping shows pings repeat for the quiet.
    let mut pings = Vec::new();
    while pings.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the quiet client got {} pings within 10 s",
            pings.len()
        );
        talk(&mut talker, n, Duration::from_millis(50));
        n += 1;
        match next_frame(&mut quiet, Duration::from_millis(1)) {
            None => {}
            Some(WsMessage::Ping(_)) => {
                pings.push(started.elapsed());
                quiet.ws.flush().expect("send the pong");
            }
            Some(other) => panic!("the quiet client got {other:?}"),
        }
    }
    assert!(
        pings[0] + Duration::from_millis(50) >= interval,
        "the first ping came after {:?}, before the {interval:?} interval",
        pings[0]
    );
    assert!(
        pings[1] - pings[0] + Duration::from_millis(50) >= interval,
        "pings {pings:?} closer than the {interval:?} interval"
    );
    // The quiet client is still served.
    quiet.send_text("still here");
    assert_eq!(quiet.recv_text(REPLY_TIMEOUT), "still here");
}
