//! Decoders of the plain-TCP protocols (`text://`, `frame://`, `tcp://`).
//! WebSocket input is decoded by tungstenite (see [`super::ws`]).

use super::Protocol;
use crate::message::Message;
use bytes::BytesMut;

/// The peer broke the framing of a plain protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// A line or payload longer than the limit.
    TooBig(usize),
    /// A `frame://` length below 4 (it counts its own header).
    BadLength(u32),
}

/// Takes the next whole message of a plain protocol off the front of `buf`.
/// `Ok(None)`: need more bytes. The first `scanned` bytes are known to hold
/// no line end (they were all there when the last call said `Ok(None)`), so
/// a `text://` line is searched for in the bytes after them only: a line
/// that arrives a byte at a time costs linear time.
pub(crate) fn decode(
    protocol: Protocol,
    buf: &mut BytesMut,
    max: usize,
    scanned: usize,
) -> Result<Option<Message>, FramingError> {
    match protocol {
        Protocol::Text => match newline(buf, scanned) {
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
                // Room for what is coming, but never a whole announced
                // megabyte per connection before its bytes arrive.
                buf.reserve((total as usize - buf.len()).min(64 << 10));
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

/// The first `\n` of `buf` at or after `from`.
fn newline(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.min(buf.len());
    buf[from..]
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_does_not_reserve_all_it_announces() {
        let mut buf = BytesMut::from(&(1u32 << 20).to_be_bytes()[..]);
        assert_eq!(decode(Protocol::Frame, &mut buf, 1 << 20, 0), Ok(None));
        assert!(buf.capacity() <= 4 + (64 << 10), "{}", buf.capacity());
    }
    use crate::proto::codec::{encode, Wire};

    #[test]
    fn text_lines_split_and_coalesce() {
        let mut buf = BytesMut::from(&b"one\r\ntw"[..]);
        let m = decode(Protocol::Text, &mut buf, 100, 0).unwrap();
        assert_eq!(m, Some(Message::from("one")));
        assert_eq!(decode(Protocol::Text, &mut buf, 100, 0), Ok(None));
        buf.extend_from_slice(b"o\nthree\n");
        let m = decode(Protocol::Text, &mut buf, 100, 0).unwrap();
        assert_eq!(m, Some(Message::from("two")));
        let m = decode(Protocol::Text, &mut buf, 100, 0).unwrap();
        assert_eq!(m, Some(Message::from("three")));
        let mut long = BytesMut::from(&[b'x'; 11][..]);
        assert!(decode(Protocol::Text, &mut long, 10, 0).is_err());
    }

    #[test]
    fn frames_count_their_header_as_in_workerman() {
        let wire = encode(Wire::server(Protocol::Frame), &Message::from(&b"abc"[..]));
        assert_eq!(&wire[..], b"\x00\x00\x00\x07abc");
        let mut buf = BytesMut::from(&wire[..5]);
        assert_eq!(decode(Protocol::Frame, &mut buf, 100, 0), Ok(None));
        buf.extend_from_slice(&wire[5..]);
        buf.extend_from_slice(&wire);
        for _ in 0..2 {
            let m = decode(Protocol::Frame, &mut buf, 100, 0).unwrap().unwrap();
            assert_eq!(m.as_bytes(), b"abc");
        }
        let mut bad = BytesMut::from(&b"\x00\x00\x00\x02"[..]);
        assert_eq!(
            decode(Protocol::Frame, &mut bad, 100, 0),
            Err(FramingError::BadLength(2))
        );
    }
}
