//! Encode once: the wire bytes of outgoing messages per protocol and side.
//!
//! A server's WebSocket frames are unmasked, so a broadcast is encoded once
//! and the same bytes are queued for every recipient. A client's frames are
//! masked (RFC 6455 5.3); a message sent to many outbound connections is
//! still encoded once, with one fresh mask key, and shared.

use super::Protocol;
use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// WebSocket opcodes we write ourselves.
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;

/// How a connection's messages look on the wire: its protocol, and for a
/// WebSocket which side we are (clients mask their frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Wire {
    pub(crate) protocol: Protocol,
    /// We are the client of a WebSocket: frames are masked.
    pub(crate) masked: bool,
}

impl Wire {
    /// The wire of connections accepted on a `protocol` listener.
    pub(crate) fn server(protocol: Protocol) -> Wire {
        Wire {
            protocol,
            masked: false,
        }
    }
}

/// A final WebSocket frame, unmasked, or masked with `mask`: header and
/// payload in one buffer.
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 14);
    out.put_u8(0x80 | opcode);
    let bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(bit | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(bit | 127);
        out.put_u64(len as u64);
    }
    match mask {
        None => out.put_slice(payload),
        Some(key) => {
            out.put_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        }
    }
    out.freeze()
}

/// An unmasked, final WebSocket frame, as a server sends it.
pub(crate) fn ws_frame(opcode: u8, payload: &[u8]) -> Bytes {
    frame(opcode, payload, None)
}

/// A fresh mask key per frame. Masking only has to keep a script that
/// chooses the payload from choosing the bytes on the wire.
fn mask_key() -> [u8; 4] {
    (crate::entropy::next_u64() as u32).to_be_bytes()
}

/// A message encoded once for a protocol, ready to be queued for any number of
/// connections without being encoded or copied again (gorilla/websocket calls
/// this a prepared message). Make one with [`crate::Ctx::prepare`] and send it
/// with [`crate::Ctx::send_prepared`]; clones share the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub(crate) wire: Wire,
    pub(crate) bytes: Bytes,
}

impl Prepared {
    /// Encodes `msg` for `protocol` as a server sends it: for WebSocket, one
    /// unmasked final frame. Sent to an outbound connection of another wire
    /// (a masked WebSocket client, another protocol), it is re-encoded for
    /// that connection.
    pub fn new(protocol: Protocol, msg: &Message) -> Prepared {
        let wire = Wire::server(protocol);
        Prepared {
            wire,
            bytes: encode(wire, msg),
        }
    }

    /// The bytes on the wire.
    pub fn wire_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The bytes that carry `msg` over `wire`.
pub(crate) fn encode(wire: Wire, msg: &Message) -> Bytes {
    let payload = msg.as_bytes();
    match wire.protocol {
        Protocol::WebSocket => {
            let op = if msg.is_text() { OP_TEXT } else { OP_BINARY };
            frame(op, payload, wire.masked.then(mask_key))
        }
        Protocol::Text => {
            let mut out = BytesMut::with_capacity(payload.len() + 1);
            out.put_slice(payload);
            out.put_u8(b'\n');
            out.freeze()
        }
        Protocol::Frame => {
            let mut out = BytesMut::with_capacity(payload.len() + 4);
            out.put_u32((payload.len() + 4) as u32);
            out.put_slice(payload);
            out.freeze()
        }
        Protocol::Tcp => match msg {
            Message::Binary(b) => b.clone(),
            Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
        },
    }
}

/// The message inside bytes that [`encode`] made for `wire`; `None` for
/// bytes it did not make (a ping, a close, or a cut or corrupt frame from
/// a bus record).
fn decode_own(wire: Wire, bytes: &Bytes) -> Option<Message> {
    // The plain wires carry no text mark: what is UTF-8 counts as text, so
    // that a message re-encoded for WebSocket (a connection of another
    // listener, an outbound one) is a text frame when it can be.
    let text_or_binary = |b: Bytes| match std::str::from_utf8(&b) {
        Ok(_) => Message::Text(b.try_into().expect("checked UTF-8")),
        Err(_) => Message::Binary(b),
    };
    match wire.protocol {
        Protocol::WebSocket => {
            let op = bytes.first()? & 0x0f;
            let second = *bytes.get(1)?;
            let (len, mut at) = match second & 0x7f {
                126 => (
                    u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
                    4,
                ),
                127 => (
                    u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            let key = if second & 0x80 != 0 {
                let k: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
                at += 4;
                Some(k)
            } else {
                None
            };
            if bytes.len().checked_sub(at)? != len {
                return None;
            }
            let body = bytes.slice(at..);
            let body = match key {
                None => body,
                Some(k) => body.iter().enumerate().map(|(i, b)| b ^ k[i & 3]).collect(),
            };
            match op {
                OP_TEXT => Some(text_or_binary(body)),
                OP_BINARY => Some(Message::Binary(body)),
                _ => None,
            }
        }
        Protocol::Text => Some(text_or_binary(bytes.slice(..bytes.len().checked_sub(1)?))),
        Protocol::Frame => (bytes.len() >= 4).then(|| text_or_binary(bytes.slice(4..))),
        Protocol::Tcp => Some(text_or_binary(bytes.clone())),
    }
}

/// `bytes`, encoded for `from`, as they must go to a connection of wire
/// `to`: the same bytes when the wires agree (the common case: nothing is
/// copied), otherwise the message re-encoded.
pub(crate) fn reframe(from: Wire, bytes: Bytes, to: Wire) -> Option<Bytes> {
    if from == to && !to.masked {
        return Some(bytes);
    }
    decode_own(from, &bytes).map(|m| encode(to, &m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_frame_lengths_use_the_three_encodings() {
        assert_eq!(&ws_frame(OP_TEXT, b"hi")[..], b"\x81\x02hi");
        let mid = ws_frame(OP_BINARY, &[0; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 1, 44]);
        let big = ws_frame(OP_BINARY, &vec![0; 70_000]);
        assert_eq!(&big[..2], &[0x82, 127]);
        assert_eq!(big.len(), 70_000 + 10);
    }

    #[test]
    fn client_frames_are_masked_with_fresh_keys() {
        let client = Wire {
            protocol: Protocol::WebSocket,
            masked: true,
        };
        let a = encode(client, &Message::from("hello"));
        let b = encode(client, &Message::from("hello"));
        assert_eq!(a[1], 0x80 | 5);
        assert_ne!(a[2..6], b[2..6], "two frames, two mask keys");
        let unmasked: Vec<u8> = a[6..]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ a[2 + (i & 3)])
            .collect();
        assert_eq!(unmasked, b"hello");
    }

    #[test]
    fn reframing_carries_the_message_across_wires() {
        let server = Wire::server(Protocol::WebSocket);
        let text = Wire::server(Protocol::Text);
        let client = Wire {
            protocol: Protocol::WebSocket,
            masked: true,
        };
        let frame = encode(server, &Message::from("hi"));
        assert_eq!(reframe(server, frame.clone(), server).unwrap(), frame);
        assert_eq!(&reframe(server, frame.clone(), text).unwrap()[..], b"hi\n");
        let masked = reframe(server, frame, client).unwrap();
        assert_eq!(decode_own(client, &masked), Some(Message::from("hi")));
        let big = encode(text, &Message::from("x".repeat(70_000)));
        let ws = reframe(text, big, server).unwrap();
        assert_eq!(ws.len(), 70_010);
        assert_eq!(reframe(server, ws_frame(OP_PING, b""), text), None);
    }

    #[test]
    fn bytes_it_did_not_make_are_refused_not_a_panic() {
        // A delivery's payload from a corrupt bus record, reframed for an
        // outbound connection: cut frames and lengths past the end.
        let server = Wire::server(Protocol::WebSocket);
        let client = Wire {
            protocol: Protocol::WebSocket,
            masked: true,
        };
        for bytes in [
            &b"\x81\x7e"[..],
            b"\x81\x7e\x00",
            b"\x81\x05hi",
            b"\x81\x7f\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x81\x85\x01\x02",
        ] {
            let payload = Bytes::copy_from_slice(bytes);
            assert_eq!(reframe(server, payload, client), None, "{bytes:?}");
        }
        let text = Wire::server(Protocol::Text);
        assert_eq!(reframe(text, Bytes::new(), server), None);
        let frame = Wire::server(Protocol::Frame);
        assert_eq!(
            reframe(frame, Bytes::from_static(b"\x00\x00"), server),
            None
        );
    }

    #[test]
    fn plain_payloads_reach_websocket_as_text_when_they_are_utf8() {
        let ws = Wire::server(Protocol::WebSocket);
        for protocol in [Protocol::Frame, Protocol::Tcp, Protocol::Text] {
            let plain = Wire::server(protocol);
            let text = encode(plain, &Message::from("{\"a\":\"é\"}"));
            let out = reframe(plain, text, ws).expect("own encoding");
            assert_eq!(
                out[0],
                0x80 | OP_TEXT,
                "{protocol:?}: UTF-8 is a text frame"
            );
            let raw = encode(plain, &Message::Binary(Bytes::from_static(b"\xff\x00")));
            let out = reframe(plain, raw, ws).expect("own encoding");
            assert_eq!(
                out[0],
                0x80 | OP_BINARY,
                "{protocol:?}: other bytes stay binary"
            );
        }
    }
}
