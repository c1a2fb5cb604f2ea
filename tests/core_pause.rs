//! `Ctx::pause_reading` and `Ctx::resume_reading` through the `testbed`
//! example: what a paused client sends waits in the kernel until its writes
//! block, and after resume every message arrives, in order.

mod common;

use common::*;
use serde_json::json;
use std::io::ErrorKind;
use std::time::{Duration, Instant};
use tungstenite::{Error as WsError, Message as WsMessage};

/// Padding per flooded command, so the socket buffers fill after a few
/// hundred of them.
const PAD: usize = 16 * 1024;
/// More than any loopback socket buffers hold; past it the writes should have
/// blocked long ago.
const MAX_VOLUME: usize = 64 << 20;
/// How long one blocked write waits before the client calls it blocked.
const WRITE_STALL: Duration = Duration::from_millis(300);
/// Ids of the flooded commands, clear of the ids `Peer` hands out.
const FLOOD_IDS: u64 = 1_000_000;

fn is_stall(e: &WsError) -> bool {
    matches!(e, WsError::Io(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

#[test]
fn a_paused_connection_is_read_again_only_after_resume() {
    let server = start_testbed(2, None);
    let (mut paused, mut neighbour, mut stranger) = neighbour_and_stranger(&server);

    // Only the connection's own worker can pause or resume it.
    for op in ["pause", "resume"] {
        let r = stranger.call(json!({"op": op, "conn": paused.conn}));
        assert_eq!(r["ok"], json!(false), "{op} from another worker");
    }
    // Paused from its own callback; the reply still comes (output is not paused).
    assert_eq!(paused.call(json!({"op": "pause"}))["ok"], json!(true));

    // Commands that would each push `m:I` to the neighbour, written until the
    // socket buffers are full and a write blocks. Each one is in the client's
    // buffer once `send` returns, blocked or not.
    paused
        .ws
        .ws
        .get_ref()
        .set_write_timeout(Some(WRITE_STALL))
        .expect("write timeout");
    let pad = "p".repeat(PAD);
    let (mut sent, mut volume) = (0u64, 0usize);
    loop {
        let cmd = json!({
            "op": "send_to", "to": neighbour.conn, "data": format!("m:{sent}"),
            "pad": pad, "id": FLOOD_IDS + sent,
        })
        .to_string();
        volume += cmd.len();
        let r = paused.ws.ws.send(WsMessage::text(cmd));
        sent += 1;
        match r {
            Ok(()) => {}
            Err(e) if is_stall(&e) => break,
            Err(e) => panic!("flooding the paused connection: {e}"),
        }
        assert!(
            volume < MAX_VOLUME,
            "{volume} bytes written to a paused connection without blocking: the server reads it"
        );
    }

    // Nothing of it was delivered: a round trip on the same worker comes back
    // with no push before it.
    let me = neighbour.call(json!({"op": "whoami"}));
    assert_eq!(
        me["pid"].as_i64(),
        Some(i64::from(paused.pid)),
        "same worker"
    );
    assert_eq!(
        neighbour.push(Duration::ZERO),
        None,
        "a command of the paused connection was run ({sent} written)"
    );

    // Resumed by the neighbour: the rest of the client's buffer goes out, and
    // every command runs, in order.
    let r = neighbour.call(json!({"op": "resume", "conn": paused.conn}));
    assert_eq!(r["ok"], json!(true));
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        match paused.ws.ws.flush() {
            Ok(()) => break,
            Err(e) if is_stall(&e) && Instant::now() < deadline => {}
            Err(e) => panic!("the resumed connection takes no more data: {e}"),
        }
    }
    for i in 0..sent {
        assert_eq!(neighbour.expect_push(), format!("m:{i}"), "{sent} sent");
    }
    let mut replies = Vec::new();
    paused.call(json!({"op": "whoami"}));
    while let Some(r) = paused.push(Duration::ZERO) {
        let r: serde_json::Value = serde_json::from_str(&r).expect("a JSON reply");
        replies.push(r["id"].as_u64().expect("id") - FLOOD_IDS);
    }
    assert_eq!(
        replies,
        (0..sent).collect::<Vec<_>>(),
        "every command answered, in order"
    );
}
