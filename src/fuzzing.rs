//! Entry points for the fuzz targets (`fuzz/`) into crate-private parsers.
//! Not part of the API: hidden from the docs and free to change.
//!
//! Each function takes the fuzzer's bytes, runs one parser over them the way
//! the worker does, and panics when an invariant breaks, so libFuzzer
//! reports it as a crash. A decoder of a stream is run twice, once over all
//! of the input and once over it in chunks (the first input byte picks their
//! size), and must find the same messages both times: a socket can split its
//! bytes anywhere.

use crate::cluster::resp;
use crate::cluster::wire::{self as bus_wire, Record};
use crate::config::Config;
use crate::id::ConnId;
use crate::message::Message;
use crate::net::OutQueue;
use crate::proto::codec::{self, Wire};
use crate::proto::http::{self, Head, MAX_HEAD_BYTES};
use crate::proto::plain;
use crate::proto::ws::{self, WsIo};
use crate::proto::Protocol;
use bytes::{Bytes, BytesMut};
use std::io;
use std::net::SocketAddr;
use tungstenite::protocol::{Role, WebSocketContext};

/// Longest line or payload in the `text://` and `frame://` runs: small, so
/// the fuzzer reaches the limit checks.
const PLAIN_MAX: usize = 4096;

/// The first byte of `data` as a chunk size (1 to 256), and the rest.
fn chunked(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (usize::from(*first) + 1, rest),
        None => (1, data),
    }
}

/// What one run of a stream decoder found: each item with the number of
/// bytes it took off the buffer, and whether the decoder gave up.
struct Decoded<T> {
    items: Vec<(T, usize)>,
    failed: bool,
}

/// Runs `decode` over `stream` handed over `chunk` bytes at a time, as reads
/// from a socket would, until it needs more bytes or fails. `decode` also
/// gets how many bytes at the front were already scanned in vain (the
/// worker keeps that count so a trickled line costs linear time).
fn decode_stream<T, E>(
    stream: &[u8],
    chunk: usize,
    decode: &mut impl FnMut(&mut BytesMut, usize) -> Result<Option<T>, E>,
) -> Decoded<T> {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut scanned = 0;
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode(&mut buf, scanned) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before, "a message came out of no bytes");
                    items.push((item, before - buf.len()));
                    scanned = 0;
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "bytes taken without a message");
                    scanned = buf.len();
                    break;
                }
                Err(_) => {
                    return Decoded {
                        items,
                        failed: true,
                    }
                }
            }
        }
    }
    Decoded {
        items,
        failed: false,
    }
}

/// Runs `decode` over `stream` whole and in chunks of `chunk` bytes and
/// checks both runs agree; returns the whole run.
fn decode_both_ways<T: PartialEq + std::fmt::Debug, E>(
    stream: &[u8],
    chunk: usize,
    mut decode: impl FnMut(&mut BytesMut, usize) -> Result<Option<T>, E>,
) -> Decoded<T> {
    let whole = decode_stream(stream, stream.len(), &mut decode);
    let split = decode_stream(stream, chunk, &mut decode);
    assert_eq!(whole.items, split.items, "chunking changed the messages");
    assert_eq!(whole.failed, split.failed, "chunking changed the verdict");
    let taken: usize = whole.items.iter().map(|(_, n)| n).sum();
    assert!(
        taken <= stream.len(),
        "took {taken} of {} bytes",
        stream.len()
    );
    whole
}

/// The HTTP request-head parser of `websocket://` listeners: the first byte
/// picks a chunk size, the head is fed in chunks through the incremental
/// parser as reads would deliver it, and the verdict must be the one the
/// whole buffer gets at once.
pub fn http_head(data: &[u8]) {
    let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
    let conn = ConnId::new(0, 0, 0);
    let max_body = Config::default().max_http_body_bytes;
    let (chunk, data) = chunked(data);
    let mut scanned = 0;
    let mut incremental = Head::Partial;
    for end in (chunk..data.len()).step_by(chunk).chain([data.len()]) {
        incremental = http::parse_head_from(&data[..end], &mut scanned, peer, conn, max_body);
        assert!(scanned <= end, "scanned {scanned} of {end}");
        if !matches!(incremental, Head::Partial) {
            break;
        }
    }
    match http::parse_head(data, peer, conn, max_body) {
        Head::Complete {
            request, head_len, ..
        } => {
            assert!(
                head_len <= data.len(),
                "head of {head_len} in {}",
                data.len()
            );
            assert!(head_len <= MAX_HEAD_BYTES, "head of {head_len} accepted");
            assert!(
                !request.path.contains('?'),
                "query left in {}",
                request.path
            );
            // The head alone parses to the same head.
            let again = http::parse_head(&data[..head_len], peer, conn, max_body);
            assert!(
                matches!(again, Head::Complete { head_len: n, .. } if n == head_len),
                "the head alone gave {again:?}"
            );
            assert!(
                matches!(incremental, Head::Complete { head_len: n, .. } if n == head_len),
                "fed in chunks of {chunk}: {incremental:?}"
            );
        }
        Head::Partial => {
            assert!(data.len() < MAX_HEAD_BYTES, "partial past the cap");
            assert!(matches!(incremental, Head::Partial), "{incremental:?}");
        }
        Head::Reject(status) => {
            assert!((400..600).contains(&status), "rejected with {status}")
        }
    }
}

/// `text://` decoding: every line re-encodes to the bytes it came from (with
/// the `\r` the decoder strips), and is text exactly when it is UTF-8.
pub fn text(data: &[u8]) {
    let (chunk, stream) = chunked(data);
    let run = decode_both_ways(stream, chunk, |buf, scanned| {
        plain::decode(Protocol::Text, buf, PLAIN_MAX, scanned)
    });
    let mut at = 0;
    for (msg, taken) in &run.items {
        let line = msg.as_bytes();
        assert!(line.len() <= PLAIN_MAX, "a line of {} bytes", line.len());
        assert!(!line.contains(&b'\n'), "a line with a newline");
        assert_eq!(msg.is_text(), std::str::from_utf8(line).is_ok());
        let mut wire = codec::encode(Wire::server(Protocol::Text), msg).to_vec();
        if *taken == wire.len() + 1 {
            wire.insert(line.len(), b'\r');
        }
        assert_eq!(&stream[at..at + taken], &wire[..], "line re-encoded");
        at += taken;
    }
}

/// `frame://` decoding: every frame re-encodes to the same bytes.
pub fn frame(data: &[u8]) {
    let (chunk, stream) = chunked(data);
    let run = decode_both_ways(stream, chunk, |buf, scanned| {
        plain::decode(Protocol::Frame, buf, PLAIN_MAX, scanned)
    });
    let mut at = 0;
    for (msg, taken) in &run.items {
        assert!(!msg.is_text(), "frame:// gave text");
        assert!(msg.len() <= PLAIN_MAX, "a frame of {} bytes", msg.len());
        let wire = codec::encode(Wire::server(Protocol::Frame), msg);
        assert_eq!(&stream[at..at + taken], &wire[..], "frame re-encoded");
        at += taken;
    }
}

/// The bus record decoder: every record it finds encodes to at most the
/// bytes it took and decodes from its encoding to itself, and a delivery's
/// payload goes through reframing, as `deliver_local` does it for a
/// connection whose wire is not the listener's.
pub fn bus_record(data: &[u8]) {
    let (chunk, stream) = chunked(data);
    let run = decode_both_ways(stream, chunk, |buf, _| bus_wire::decode(buf));
    for (rec, taken) in &run.items {
        let mut wire = BytesMut::new();
        bus_wire::encode(&mut wire, rec);
        assert!(wire.len() <= *taken, "{rec:?} grew from {taken} bytes");
        let len = wire.len();
        let back: Option<Record> = bus_wire::decode(&mut wire).expect("own encoding");
        assert_eq!(back.as_ref(), Some(rec), "round trip of {len} bytes");
        assert!(wire.is_empty());
        if let Record::Deliver { payload, .. } = rec {
            for listener in WIRES.iter().filter(|w| !w.masked) {
                for to in WIRES {
                    let _ = codec::reframe(*listener, payload.clone(), to);
                }
            }
        }
    }
}

/// Replies from Redis (RESP2), whole and in chunks; every bulk string is
/// also read as a cluster message (a batch, heartbeat or delivery from
/// another node), as the subscriber link reads the third element of each
/// push.
pub fn resp(data: &[u8]) {
    let (chunk, stream) = chunked(data);
    let run = decode_both_ways(stream, chunk, |buf, _| resp::decode(buf));
    for (v, _) in &run.items {
        let mut bulks = Vec::new();
        collect_bulks(v, &mut bulks);
        for b in bulks {
            crate::cluster::node::read_message(b);
        }
    }
}

fn collect_bulks(v: &resp::Value, out: &mut Vec<Bytes>) {
    match v {
        resp::Value::Bulk(Some(b)) => out.push(b.clone()),
        resp::Value::Array(Some(items)) => items.iter().for_each(|i| collect_bulks(i, out)),
        _ => {}
    }
}

/// The WebSocket read path of an accepted connection: the first chunk of
/// `data` comes with the upgrade request (tungstenite gets it when it takes
/// the stream), the rest arrives in chunks; tungstenite's server-role
/// context reads through `WsIo` under the server's default limits, as the
/// worker's `feed_ws` runs it. Every message it gives passes through the
/// send path's reframing to every wire and back.
pub fn websocket(data: &[u8]) {
    let (chunk, stream) = chunked(data);
    let cfg = Config::default();
    let (first, rest) = stream.split_at(chunk.min(stream.len()));
    let mut ctx = WebSocketContext::from_partially_read(
        first.to_vec(),
        Role::Server,
        Some(ws::config(cfg.max_frame_bytes, cfg.max_message_bytes)),
    );
    let mut out = OutQueue::default();
    let mut fed = first.len();
    // The bytes of the handshake come first: `feed_ws` with no new input.
    let mut open = ws_feed(&mut ctx, &mut out, &[], cfg.max_message_bytes);
    for piece in rest.chunks(chunk) {
        if !open {
            break;
        }
        fed += piece.len();
        open = ws_feed(&mut ctx, &mut out, piece, cfg.max_message_bytes);
    }
    // Replies tungstenite writes itself (pongs, the close echo) are never
    // larger than the frames that asked for them, plus one close frame.
    assert!(
        out.len() <= fed + 2 + 125,
        "{} bytes out for {fed} in",
        out.len()
    );
}

/// One read's worth of `input` through `ctx`, as `feed_ws` does it; false
/// once the connection would read nothing more.
fn ws_feed(ctx: &mut WebSocketContext, out: &mut OutQueue, input: &[u8], max: usize) -> bool {
    use tungstenite::Error as E;
    let mut pos = 0;
    loop {
        // A small cap, so the fuzzer reaches the pongs dropped past it.
        let mut io = WsIo::new(&input[pos..], out, 64 << 10);
        let r = ctx.read(&mut io);
        let left = io.unread();
        assert!(left <= input.len() - pos, "tungstenite read past its input");
        pos = input.len() - left;
        match r {
            Ok(tungstenite::Message::Text(t)) => reframe_everywhere(&Message::Text(t), max),
            Ok(tungstenite::Message::Binary(b)) => reframe_everywhere(&Message::Binary(b), max),
            Ok(_) => {}
            Err(E::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                assert_eq!(pos, input.len(), "would block with input left");
                return true;
            }
            Err(_) => return false,
        }
    }
}

/// Every wire a message can be sent on.
const WIRES: [Wire; 5] = [
    Wire {
        protocol: Protocol::WebSocket,
        masked: false,
    },
    Wire {
        protocol: Protocol::WebSocket,
        masked: true,
    },
    Wire {
        protocol: Protocol::Text,
        masked: false,
    },
    Wire {
        protocol: Protocol::Frame,
        masked: false,
    },
    Wire {
        protocol: Protocol::Tcp,
        masked: false,
    },
];

/// A message read from a client, encoded for each wire and reframed to
/// each other wire, comes out as that wire would carry it.
fn reframe_everywhere(msg: &Message, max: usize) {
    assert!(msg.len() <= max, "a message of {} bytes", msg.len());
    for from in WIRES {
        let sent = codec::encode(from, msg);
        let carried = carried(from.protocol, msg);
        for to in WIRES {
            let got = codec::reframe(from, sent.clone(), to).expect("own encoding");
            let want = codec::encode(to, &carried);
            if to.masked {
                let plain = unmask(&got);
                let server = codec::encode(Wire::server(Protocol::WebSocket), &carried);
                assert_eq!(plain, server, "{from:?} -> {to:?}");
            } else {
                assert_eq!(got, want, "{from:?} -> {to:?}");
            }
        }
    }
}

/// The message a wire carries for `msg`: the plain wires (`text://`,
/// `frame://`, `tcp://`) carry no text mark, and give text for any UTF-8.
fn carried(protocol: Protocol, msg: &Message) -> Message {
    let bytes = Bytes::copy_from_slice(msg.as_bytes());
    match protocol {
        Protocol::WebSocket => msg.clone(),
        Protocol::Text | Protocol::Frame | Protocol::Tcp => match bytes.clone().try_into() {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(bytes),
        },
    }
}

/// A client's masked frame as the server's unmasked one.
fn unmask(frame: &[u8]) -> Bytes {
    let len_bytes = match frame[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let head = 2 + len_bytes;
    let key = &frame[head..head + 4];
    let mut out = BytesMut::with_capacity(frame.len() - 4);
    out.extend_from_slice(&frame[..head]);
    out[1] &= 0x7f;
    out.extend(
        frame[head + 4..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i & 3]),
    );
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Runs `check` over every seed of `target` in `fuzz/seeds/`, as the
    /// fuzzer's first pass does, so the stable test run keeps them (and any
    /// crash input added there) passing.
    fn seeds(target: &str, check: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("seed directory") {
            let path = entry.expect("seed").path();
            let data = std::fs::read(&path).expect("seed file");
            let ran = std::panic::catch_unwind(|| check(&data));
            assert!(ran.is_ok(), "{} fails", path.display());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn the_http_head_seeds_pass() {
        seeds("http_head", http_head);
    }

    #[test]
    fn the_text_seeds_pass() {
        seeds("text", text);
    }

    #[test]
    fn the_frame_seeds_pass() {
        seeds("frame", frame);
    }

    #[test]
    fn the_resp_seeds_pass() {
        seeds("resp", resp);
        let batch =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/resp/batch"))
                .expect("seed");
        let mut buf = BytesMut::from(&batch[1..]);
        let v = resp::decode(&mut buf).expect("RESP").expect("whole");
        let payload = v.items()[2].bytes().expect("bulk").clone();
        assert_eq!(crate::cluster::node::read_message(payload), Some(1));
    }

    #[test]
    fn the_bus_record_seeds_pass() {
        seeds("bus_record", bus_record);
    }

    #[test]
    fn the_websocket_seeds_pass() {
        seeds("websocket", websocket);
    }

    #[test]
    fn the_bus_seed_has_every_kind_of_record() {
        // The seed the bus fuzzer starts from holds one record of each kind
        // (and both session forms and every target): the wire encoder agrees
        // on its bytes.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/bus_record/every_kind");
        let data = std::fs::read(path).expect("seed");
        let mut buf = BytesMut::from(&data[1..]);
        let mut kinds = std::collections::BTreeSet::new();
        while let Some(rec) = bus_wire::decode(&mut buf).expect("a valid seed") {
            let mut wire = BytesMut::new();
            bus_wire::encode(&mut wire, &rec);
            kinds.insert(wire[4]);
        }
        assert!(buf.is_empty());
        assert_eq!(kinds.len(), 13, "{kinds:?}");
    }
}
