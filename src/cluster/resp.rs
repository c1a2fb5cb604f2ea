//! RESP2, the Redis wire protocol, sans-IO: commands encoded into a buffer,
//! replies decoded from one. No socket here: the cluster link owns the
//! socket and calls these from its loop.
//!
//! Decoding is two passes over the bytes of one reply: a scan that checks
//! the reply is complete and well formed and finds its length (nothing is
//! allocated, so a partial reply costs nothing but the scan), then a build
//! over the frozen bytes in which bulk strings are slices of one shared
//! buffer, not copies.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest bulk string accepted (Redis's own limit is 512 MiB).
const MAX_BULK: usize = 512 << 20;
/// Most elements of one array accepted.
const MAX_ITEMS: usize = 1 << 24;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 8;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(Bytes),
    /// `-ERR ...`.
    Error(Bytes),
    /// `:42`.
    Int(i64),
    /// `$-1` is `Bulk(None)`.
    Bulk(Option<Bytes>),
    /// `*-1` is `Array(None)`.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bytes of a bulk or simple string.
    pub(crate) fn bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bulk(Some(b)) | Value::Simple(b) => Some(b),
            _ => None,
        }
    }

    pub(crate) fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub(crate) fn items(&self) -> &[Value] {
        match self {
            Value::Array(Some(v)) => v,
            _ => &[],
        }
    }

    pub(crate) fn into_items(self) -> Vec<Value> {
        match self {
            Value::Array(Some(v)) => v,
            _ => Vec::new(),
        }
    }

    pub(crate) fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }
}

/// The bytes are not RESP2: the link is broken and must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) &'static str);

/// Appends one command, an array of bulk strings.
pub(crate) fn encode<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    let len: usize = args.iter().map(|a| a.as_ref().len() + 16).sum();
    out.reserve(len + 16);
    put_header(out, b'*', args.len());
    for a in args {
        let a = a.as_ref();
        put_header(out, b'$', a.len());
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

fn put_header(out: &mut BytesMut, kind: u8, n: usize) {
    out.put_u8(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

/// Takes one complete reply off the front of `buf`: `Ok(None)` while it is
/// incomplete (nothing is consumed).
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Value>, Corrupt> {
    let Some(len) = scan(buf, 0, 0)? else {
        return Ok(None);
    };
    let whole = buf.split_to(len).freeze();
    let mut at = 0;
    Ok(Some(build(&whole, &mut at)))
}

/// The line starting at `at` (without its CRLF) and where the next begins.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Corrupt> {
    let Some(rest) = buf.get(at..) else {
        return Ok(None);
    };
    match rest.iter().position(|&b| b == b'\n') {
        None if rest.len() > 64 << 10 => Err(Corrupt("line too long")),
        None => Ok(None),
        Some(0) => Err(Corrupt("bare LF")),
        Some(i) if rest[i - 1] != b'\r' => Err(Corrupt("bare LF")),
        Some(i) => Ok(Some((&rest[..i - 1], at + i + 1))),
    }
}

fn number(digits: &[u8]) -> Result<i64, Corrupt> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Corrupt("bad number"))
}

/// The length of a count (`$N`, `*N`): -1 for null, else 0 to `max`.
fn count(digits: &[u8], max: usize) -> Result<Option<usize>, Corrupt> {
    match number(digits)? {
        -1 => Ok(None),
        n if n >= 0 && n as u64 <= max as u64 => Ok(Some(n as usize)),
        _ => Err(Corrupt("bad length")),
    }
}

/// Checks the reply starting at `at` and returns where it ends, or `None`
/// if it is not all there yet.
fn scan(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, Corrupt> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((head, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => Ok(Some(next)),
        b':' => number(head).map(|_| Some(next)),
        b'$' => match count(head, MAX_BULK)? {
            None => Ok(Some(next)),
            Some(n) => {
                let end = next + n + 2;
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(Corrupt("bulk string without CRLF"));
                }
                Ok(Some(end))
            }
        },
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err(Corrupt("arrays nested too deep"));
            }
            let Some(n) = count(head, MAX_ITEMS)? else {
                return Ok(Some(next));
            };
            let mut at = next;
            for _ in 0..n {
                match scan(buf, at, depth + 1)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(Corrupt("unknown reply type")),
    }
}

/// Builds the reply [`scan`] checked; bulk strings share `whole`.
fn build(whole: &Bytes, at: &mut usize) -> Value {
    let kind = whole[*at];
    let start = *at + 1;
    let nl = start
        + whole[start..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("scanned");
    let head = &whole[start..nl - 1];
    *at = nl + 1;
    match kind {
        b'+' => Value::Simple(whole.slice(start..nl - 1)),
        b'-' => Value::Error(whole.slice(start..nl - 1)),
        b':' => Value::Int(number(head).expect("scanned")),
        b'$' => match count(head, MAX_BULK).expect("scanned") {
            None => Value::Bulk(None),
            Some(n) => {
                let b = whole.slice(*at..*at + n);
                *at += n + 2;
                Value::Bulk(Some(b))
            }
        },
        _ => match count(head, MAX_ITEMS).expect("scanned") {
            None => Value::Array(None),
            Some(n) => Value::Array(Some((0..n).map(|_| build(whole, at)).collect())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode(&mut out, &[&b"SET"[..], b"k", b""]);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn replies_decode_whole_and_in_pieces() {
        let wire: &[u8] = b"+OK\r\n-ERR no\r\n:-42\r\n$-1\r\n*-1\r\n$5\r\nhe\r\nl\r\n\
            *3\r\n$7\r\nmessage\r\n*0\r\n*1\r\n:7\r\n";
        let expected = vec![
            Value::Simple(Bytes::from_static(b"OK")),
            Value::Error(Bytes::from_static(b"ERR no")),
            Value::Int(-42),
            Value::Bulk(None),
            Value::Array(None),
            bulk("he\r\nl"),
            Value::Array(Some(vec![
                bulk("message"),
                Value::Array(Some(vec![])),
                Value::Array(Some(vec![Value::Int(7)])),
            ])),
        ];
        // Fed one byte at a time, every value comes out once, complete.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire {
            buf.put_u8(b);
            while let Some(v) = decode(&mut buf).unwrap() {
                got.push(v);
            }
        }
        assert_eq!(got, expected);
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b"?x\r\n"[..],
            b"$3\r\nabcd\r\n",
            b":12a\r\n",
            b"$-2\r\n",
            b"+OK\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(decode(&mut buf).is_err(), "{bad:?}");
        }
    }
}
