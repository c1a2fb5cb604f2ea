//! Wire encodings of outgoing messages per protocol, and the decoders of the
//! plain-TCP protocols (`text://`, `frame://`). WebSocket input is decoded by
//! tungstenite (see `conn.rs`).

use crate::config::Protocol;
use crate::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// WebSocket opcodes we write ourselves.
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_PING: u8 = 0x9;

/// An unmasked, final WebSocket frame: header and payload in one buffer, so a
/// broadcast is encoded once and the same bytes are queued for every recipient.
pub(crate) fn ws_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A message encoded once for a protocol, ready to be queued for any number of
/// connections without being encoded or copied again (gorilla/websocket calls
/// this a prepared message). Make one with [`crate::Ctx::prepare`] and send it
/// with [`crate::Ctx::send_prepared`]; clones share the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared(pub(crate) Bytes);

impl Prepared {
    /// Encodes `msg` for `protocol`: for WebSocket, one unmasked final frame.
    pub fn new(protocol: Protocol, msg: &Message) -> Prepared {
        Prepared(encode(protocol, msg))
    }

    /// The bytes on the wire.
    pub fn wire_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes that carry `msg` over `protocol`.
pub(crate) fn encode(protocol: Protocol, msg: &Message) -> Bytes {
    let payload = msg.as_bytes();
    match protocol {
        Protocol::WebSocket => {
            let op = if msg.is_text() { OP_TEXT } else { OP_BINARY };
            ws_frame(op, payload)
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

/// The peer broke the framing of a plain protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// A line or payload longer than the limit.
    TooBig(usize),
    /// A `frame://` length below 4 (it counts its own header).
    BadLength(u32),
}

/// Takes the next whole message of a plain protocol off the front of `buf`.
/// `Ok(None)`: need more bytes.
pub(crate) fn decode_plain(
    protocol: Protocol,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Message>, FramingError> {
    match protocol {
        Protocol::Text => match buf.iter().position(|b| *b == b'\n') {
            None if buf.len() > max => Err(FramingError::TooBig(buf.len())),
            None => Ok(None),
            Some(i) if i > max => Err(FramingError::TooBig(i)),
            Some(i) => {
                let mut line = buf.split_to(i + 1);
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                let line = line.freeze();
                Ok(Some(match std::str::from_utf8(&line) {
                    Ok(_) => Message::Text(line.try_into().expect("checked UTF-8")),
                    Err(_) => Message::Binary(line),
                }))
            }
        },
        Protocol::Frame => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if total < 4 {
                return Err(FramingError::BadLength(total));
            }
            let len = total as usize - 4;
            if len > max {
                return Err(FramingError::TooBig(len));
            }
            if buf.len() < total as usize {
                buf.reserve(total as usize - buf.len());
                return Ok(None);
            }
            let mut frame = buf.split_to(total as usize);
            let _ = frame.split_to(4);
            Ok(Some(Message::Binary(frame.freeze())))
        }
        Protocol::Tcp => {
            if buf.is_empty() {
                Ok(None)
            } else {
                Ok(Some(Message::Binary(buf.split().freeze())))
            }
        }
        Protocol::WebSocket => unreachable!("WebSocket input is decoded by tungstenite"),
    }
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
    fn text_lines_split_and_coalesce() {
        let mut buf = BytesMut::from(&b"one\r\ntw"[..]);
        let m = decode_plain(Protocol::Text, &mut buf, 100).unwrap();
        assert_eq!(m, Some(Message::from("one")));
        assert_eq!(decode_plain(Protocol::Text, &mut buf, 100), Ok(None));
        buf.extend_from_slice(b"o\nthree\n");
        let m = decode_plain(Protocol::Text, &mut buf, 100).unwrap();
        assert_eq!(m, Some(Message::from("two")));
        let m = decode_plain(Protocol::Text, &mut buf, 100).unwrap();
        assert_eq!(m, Some(Message::from("three")));
        let mut long = BytesMut::from(&[b'x'; 11][..]);
        assert!(decode_plain(Protocol::Text, &mut long, 10).is_err());
    }

    #[test]
    fn frames_count_their_header_as_in_workerman() {
        let wire = encode(Protocol::Frame, &Message::from(&b"abc"[..]));
        assert_eq!(&wire[..], b"\x00\x00\x00\x07abc");
        let mut buf = BytesMut::from(&wire[..5]);
        assert_eq!(decode_plain(Protocol::Frame, &mut buf, 100), Ok(None));
        buf.extend_from_slice(&wire[5..]);
        buf.extend_from_slice(&wire);
        for _ in 0..2 {
            let m = decode_plain(Protocol::Frame, &mut buf, 100)
                .unwrap()
                .unwrap();
            assert_eq!(m.as_bytes(), b"abc");
        }
        let mut bad = BytesMut::from(&b"\x00\x00\x00\x02"[..]);
        assert_eq!(
            decode_plain(Protocol::Frame, &mut bad, 100),
            Err(FramingError::BadLength(2))
        );
    }
}
