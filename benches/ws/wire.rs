//! The client side of RFC 6455, just enough for load generation: the upgrade
//! request, masked text/close/pong frames, an incremental frame parser, and
//! the bench payload (sender, sequence number, send timestamp).

/// The sample key of RFC 6455 section 1.3; the bench needs no fresh nonce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`KEY`].
const ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Bytes the bench payload needs before padding: sender, sequence, time.
pub const PAYLOAD_MIN: usize = 32;

/// The HTTP upgrade request for `path` on `host` (as sent in the `Host`
/// header).
pub fn upgrade_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Outcome of looking at the bytes received so far during the upgrade.
pub enum Upgrade {
    /// The response head is not complete yet.
    Partial,
    /// A valid `101` whose head is this many bytes long; frames may follow.
    Done(usize),
    /// Anything else: the server refused or spoke another protocol.
    Refused,
}

/// Checks an HTTP response head for a valid WebSocket upgrade.
pub fn parse_upgrade(buf: &[u8]) -> Upgrade {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 8192 {
            Upgrade::Refused
        } else {
            Upgrade::Partial
        };
    };
    let head = &buf[..end];
    let ok = head.starts_with(b"HTTP/1.1 101") && head.windows(ACCEPT.len()).any(|w| w == ACCEPT);
    if ok {
        Upgrade::Done(end + 4)
    } else {
        Upgrade::Refused
    }
}

/// A cheap xorshift generator for masking keys.
pub struct MaskRng(u32);

impl MaskRng {
    /// Seeds the generator (any non-zero seed).
    pub fn new(seed: u32) -> Self {
        MaskRng(seed | 1)
    }

    fn next(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_ne_bytes()
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], rng: &mut MaskRng) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = rng.next();
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A close frame payload with status 1000 (normal closure).
pub const CLOSE_NORMAL: [u8; 2] = 1000u16.to_be_bytes();

/// One frame header parsed from the front of a buffer.
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Where the payload starts in the buffer.
    pub start: usize,
    /// Payload length.
    pub len: usize,
}

/// Parses the frame at the front of `buf`; `None` until it is complete.
/// Server frames are unmasked; a masked one is unmasked in place.
pub fn parse_frame(buf: &mut [u8]) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut start) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let mut mask = [0u8; 4];
    if masked {
        if buf.len() < start + 4 {
            return None;
        }
        mask.copy_from_slice(&buf[start..start + 4]);
        start += 4;
    }
    if buf.len() < start + len {
        return None;
    }
    if masked {
        for (i, b) in buf[start..start + len].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        buf[1] &= 0x7F; // unmasked now; a re-parse must not unmask again
    }
    Some(Frame {
        fin,
        opcode,
        start,
        len,
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xF) as usize];
        v >>= 4;
    }
}

fn get_hex(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}

/// Writes the bench payload into `out` (`out.len()` >= [`PAYLOAD_MIN`]):
/// 8 hex digits sender, 8 sequence, 16 send time (CLOCK_MONOTONIC ns), then
/// `x` padding. ASCII, so valid UTF-8 for a text frame.
pub fn write_payload(out: &mut [u8], sender: u32, seq: u32, ts_ns: u64) {
    put_hex(&mut out[0..8], sender as u64);
    put_hex(&mut out[8..16], seq as u64);
    put_hex(&mut out[16..32], ts_ns);
    out[32..].fill(b'x');
}

/// Reads `(sender, seq, ts_ns)` back from a bench payload.
pub fn read_payload(p: &[u8]) -> Option<(u32, u32, u64)> {
    if p.len() < PAYLOAD_MIN {
        return None;
    }
    Some((
        get_hex(&p[0..8])? as u32,
        get_hex(&p[8..16])? as u32,
        get_hex(&p[16..32])?,
    ))
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across the bench's processes.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
