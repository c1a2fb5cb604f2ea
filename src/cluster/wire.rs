//! The bus's wire format: length-prefixed binary records between workers.
//!
//! A record is `u32 length (LE, of what follows) | u8 kind | body`. Integers
//! are little-endian, strings and byte strings are `u32 length | bytes`, a
//! [`ConnId`] is `u32 node | u16 worker | u32 key | u64 serial`. Payloads of deliveries are
//! already encoded for the listener's protocol (a whole WebSocket frame, say),
//! so the receiving worker queues them as they are, shared among recipients.

use crate::id::ConnId;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest record accepted from a peer; a larger length means a corrupt link.
/// A sender refuses to queue a record larger than this (see [`fits`]).
pub(crate) const MAX_RECORD: usize = 1 << 30;

/// Who a delivery is for, resolved by the receiving worker against its own
/// connections.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    Conn(ConnId),
    All {
        exclude: Vec<ConnId>,
    },
    Uids(Vec<String>),
    Group {
        group: String,
        exclude: Vec<ConnId>,
    },
    /// A group's members except the connections of these uids, as the
    /// owner of each member knows them.
    GroupButUids {
        group: String,
        uids: Vec<String>,
    },
}

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// First record on every link: who is talking, and which link this is.
    /// `seq` numbers the record after it in the sender's count of records
    /// meant for this receiver (sent, or lost while the link was down or its
    /// queue was dropped): a receiver that applied fewer missed some.
    Hello {
        slot: u16,
        incarnation: u32,
        epoch: u64,
        seq: u64,
    },
    Open(ConnId),
    Close(ConnId),
    Bind(ConnId, String),
    Unbind(ConnId),
    Join(ConnId, String),
    Leave(ConnId, String),
    Session(ConnId, Option<Bytes>),
    Ungroup(String),
    Deliver {
        target: Target,
        payload: Bytes,
    },
    CloseConn {
        id: ConnId,
        code: u16,
        reason: String,
    },
    /// Asks the owner of a connection to make a registry change to it (bind,
    /// unbind, join, leave, session); the owner then announces it as usual.
    Request(Box<Record>),
    /// Handler-to-handler data.
    WorkerMsg(Bytes),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const CLOSE: u8 = 3;
    pub const BIND: u8 = 4;
    pub const UNBIND: u8 = 5;
    pub const JOIN: u8 = 6;
    pub const LEAVE: u8 = 7;
    pub const SESSION: u8 = 8;
    pub const UNGROUP: u8 = 9;
    pub const DELIVER: u8 = 10;
    pub const CLOSE_CONN: u8 = 11;
    pub const REQUEST: u8 = 12;
    pub const WORKER_MSG: u8 = 13;
    pub const T_CONN: u8 = 0;
    pub const T_ALL: u8 = 1;
    pub const T_UIDS: u8 = 2;
    pub const T_GROUP: u8 = 3;
    pub const T_GROUP_BUT_UIDS: u8 = 4;
}

fn put_id(out: &mut BytesMut, id: ConnId) {
    out.put_u32_le(id.node);
    out.put_u16_le(id.worker);
    out.put_u32_le(id.key);
    out.put_u64_le(id.serial);
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn put_strings(out: &mut BytesMut, strings: &[String]) {
    out.put_u32_le(strings.len() as u32);
    for s in strings {
        put_bytes(out, s.as_bytes());
    }
}

fn put_ids(out: &mut BytesMut, ids: &[ConnId]) {
    out.put_u32_le(ids.len() as u32);
    for id in ids {
        put_id(out, *id);
    }
}

/// Appends one record to `out`.
pub(crate) fn encode(out: &mut BytesMut, rec: &Record) {
    let start = out.len();
    out.put_u32_le(0);
    match rec {
        Record::Hello {
            slot,
            incarnation,
            epoch,
            seq,
        } => {
            out.put_u8(kind::HELLO);
            out.put_u16_le(*slot);
            out.put_u32_le(*incarnation);
            out.put_u64_le(*epoch);
            out.put_u64_le(*seq);
        }
        Record::Open(id) => {
            out.put_u8(kind::OPEN);
            put_id(out, *id);
        }
        Record::Close(id) => {
            out.put_u8(kind::CLOSE);
            put_id(out, *id);
        }
        Record::Bind(id, s) | Record::Join(id, s) | Record::Leave(id, s) => {
            out.put_u8(match rec {
                Record::Bind(..) => kind::BIND,
                Record::Join(..) => kind::JOIN,
                _ => kind::LEAVE,
            });
            put_id(out, *id);
            put_bytes(out, s.as_bytes());
        }
        Record::Unbind(id) => {
            out.put_u8(kind::UNBIND);
            put_id(out, *id);
        }
        Record::Session(id, data) => {
            out.put_u8(kind::SESSION);
            put_id(out, *id);
            match data {
                None => out.put_u8(0),
                Some(d) => {
                    out.put_u8(1);
                    put_bytes(out, d);
                }
            }
        }
        Record::Ungroup(g) => {
            out.put_u8(kind::UNGROUP);
            put_bytes(out, g.as_bytes());
        }
        Record::Deliver { target, payload } => {
            out.put_u8(kind::DELIVER);
            match target {
                Target::Conn(id) => {
                    out.put_u8(kind::T_CONN);
                    put_id(out, *id);
                }
                Target::All { exclude } => {
                    out.put_u8(kind::T_ALL);
                    put_ids(out, exclude);
                }
                Target::Uids(uids) => {
                    out.put_u8(kind::T_UIDS);
                    put_strings(out, uids);
                }
                Target::GroupButUids { group, uids } => {
                    out.put_u8(kind::T_GROUP_BUT_UIDS);
                    put_bytes(out, group.as_bytes());
                    put_strings(out, uids);
                }
                Target::Group { group, exclude } => {
                    out.put_u8(kind::T_GROUP);
                    put_bytes(out, group.as_bytes());
                    put_ids(out, exclude);
                }
            }
            put_bytes(out, payload);
        }
        Record::CloseConn { id, code, reason } => {
            out.put_u8(kind::CLOSE_CONN);
            put_id(out, *id);
            out.put_u16_le(*code);
            put_bytes(out, reason.as_bytes());
        }
        Record::Request(inner) => {
            out.put_u8(kind::REQUEST);
            encode(out, inner);
        }
        Record::WorkerMsg(data) => {
            out.put_u8(kind::WORKER_MSG);
            put_bytes(out, data);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Bytes of one id, and of a length prefix.
const ID: usize = 18;
const LEN: usize = 4;

/// The size of a record's body (what its length prefix counts), computed
/// without encoding it: a huge payload is measured, not copied.
pub(crate) fn body_len(rec: &Record) -> usize {
    1 + match rec {
        Record::Hello { .. } => 2 + 4 + 8 + 8,
        Record::Open(_) | Record::Close(_) | Record::Unbind(_) => ID,
        Record::Bind(_, s) | Record::Join(_, s) | Record::Leave(_, s) => ID + LEN + s.len(),
        Record::Session(_, d) => ID + 1 + d.as_ref().map_or(0, |d| LEN + d.len()),
        Record::Ungroup(g) => LEN + g.len(),
        Record::Deliver { target, payload } => deliver_len(target, payload.len()),
        Record::CloseConn { reason, .. } => ID + 2 + LEN + reason.len(),
        Record::Request(inner) => LEN + body_len(inner),
        Record::WorkerMsg(d) => LEN + d.len(),
    }
}

/// The body of a `Deliver` record to `target` with a payload of
/// `payload_len` bytes, less its kind byte.
fn deliver_len(target: &Target, payload_len: usize) -> usize {
    let ids = |v: &[ConnId]| LEN + v.len() * ID;
    let strings = |v: &[String]| LEN + v.iter().map(|u| LEN + u.len()).sum::<usize>();
    let target = 1 + match target {
        Target::Conn(_) => ID,
        Target::All { exclude } => ids(exclude),
        Target::Uids(uids) => strings(uids),
        Target::GroupButUids { group, uids } => LEN + group.len() + strings(uids),
        Target::Group { group, exclude } => LEN + group.len() + ids(exclude),
    };
    target + LEN + payload_len
}

/// Whether a record is small enough for a peer to accept ([`MAX_RECORD`]).
pub(crate) fn fits(rec: &Record) -> bool {
    body_len(rec) <= MAX_RECORD
}

/// Whether a delivery to `target` of a payload this long would fit in a
/// record: asked before a message is copied anywhere.
pub(crate) fn delivery_fits(target: &Target, payload_len: usize) -> bool {
    // With its kind byte, at most MAX_RECORD.
    deliver_len(target, payload_len) < MAX_RECORD
}

/// A record the peer sent was malformed: the link is corrupt and is dropped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Corrupt;

/// Reads primitives from one record's body; every read checks the length.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), Corrupt> {
        if self.0.remaining() < n {
            Err(Corrupt)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, Corrupt> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, Corrupt> {
        self.need(2)?;
        Ok(self.0.get_u16_le())
    }
    fn u32(&mut self) -> Result<u32, Corrupt> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, Corrupt> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn id(&mut self) -> Result<ConnId, Corrupt> {
        Ok(ConnId::on_node(
            self.u32()?,
            self.u16()?,
            self.u32()?,
            self.u64()?,
        ))
    }
    fn bytes(&mut self) -> Result<Bytes, Corrupt> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self) -> Result<String, Corrupt> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Corrupt)
    }
    fn strings(&mut self) -> Result<Vec<String>, Corrupt> {
        let n = self.u32()? as usize;
        self.need(n.saturating_mul(LEN))?;
        (0..n).map(|_| self.string()).collect()
    }

    fn ids(&mut self) -> Result<Vec<ConnId>, Corrupt> {
        let n = self.u32()? as usize;
        self.need(n.saturating_mul(ID))?;
        (0..n).map(|_| self.id()).collect()
    }
}

/// Most bytes [`decode`] reserves ahead of a record that has not arrived.
const RESERVE_AHEAD: usize = 256 << 10;

/// Takes one whole record off the front of `buf`, if there is one. Payload
/// bytes are shared with `buf`'s allocation, not copied.
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Record>, Corrupt> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_RECORD {
        return Err(Corrupt);
    }
    if buf.len() < 4 + len {
        // Room for what is coming, but not all of a huge announced record
        // before its bytes arrive: the buffer grows as they do.
        buf.reserve((4 + len - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    buf.advance(4);
    let mut r = Reader(buf.split_to(len).freeze());
    let rec = match r.u8()? {
        kind::HELLO => Record::Hello {
            slot: r.u16()?,
            incarnation: r.u32()?,
            epoch: r.u64()?,
            seq: r.u64()?,
        },
        kind::OPEN => Record::Open(r.id()?),
        kind::CLOSE => Record::Close(r.id()?),
        kind::BIND => Record::Bind(r.id()?, r.string()?),
        kind::UNBIND => Record::Unbind(r.id()?),
        kind::JOIN => Record::Join(r.id()?, r.string()?),
        kind::LEAVE => Record::Leave(r.id()?, r.string()?),
        kind::SESSION => {
            let id = r.id()?;
            let data = match r.u8()? {
                0 => None,
                _ => Some(r.bytes()?),
            };
            Record::Session(id, data)
        }
        kind::UNGROUP => Record::Ungroup(r.string()?),
        kind::DELIVER => {
            let target = match r.u8()? {
                kind::T_CONN => Target::Conn(r.id()?),
                kind::T_ALL => Target::All { exclude: r.ids()? },
                kind::T_UIDS => Target::Uids(r.strings()?),
                kind::T_GROUP_BUT_UIDS => Target::GroupButUids {
                    group: r.string()?,
                    uids: r.strings()?,
                },
                kind::T_GROUP => Target::Group {
                    group: r.string()?,
                    exclude: r.ids()?,
                },
                _ => return Err(Corrupt),
            };
            Record::Deliver {
                target,
                payload: r.bytes()?,
            }
        }
        kind::CLOSE_CONN => Record::CloseConn {
            id: r.id()?,
            code: r.u16()?,
            reason: r.string()?,
        },
        kind::REQUEST => {
            let mut inner = BytesMut::from(&r.0[..]);
            match decode(&mut inner)? {
                Some(rec) if inner.is_empty() && !matches!(rec, Record::Request(_)) => {
                    Record::Request(Box::new(rec))
                }
                _ => return Err(Corrupt),
            }
        }
        kind::WORKER_MSG => Record::WorkerMsg(r.bytes()?),
        _ => return Err(Corrupt),
    };
    Ok(Some(rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_announced_record_reserves_only_a_bounded_part_of_it() {
        let mut buf = BytesMut::from(&((MAX_RECORD as u32).to_le_bytes())[..]);
        assert_eq!(decode(&mut buf), Ok(None));
        assert!(buf.capacity() <= 4 + RESERVE_AHEAD, "{}", buf.capacity());
    }

    fn samples() -> Vec<Record> {
        let a = ConnId::new(1, 2, 3);
        let b = ConnId::new(4, 5, 6);
        vec![
            Record::Hello {
                slot: 3,
                incarnation: 7,
                epoch: 9,
                seq: 11,
            },
            Record::Open(a),
            Record::Close(b),
            Record::Bind(a, "ann".into()),
            Record::Unbind(a),
            Record::Join(a, "room".into()),
            Record::Leave(b, "room".into()),
            Record::Session(a, Some(Bytes::from_static(b"{}"))),
            Record::Session(a, None),
            Record::Ungroup("room".into()),
            Record::Deliver {
                target: Target::Group {
                    group: "g".into(),
                    exclude: vec![a, b],
                },
                payload: Bytes::from_static(b"\x81\x02hi"),
            },
            Record::Deliver {
                target: Target::Uids(vec!["x".into(), "y".into()]),
                payload: Bytes::new(),
            },
            Record::Deliver {
                target: Target::GroupButUids {
                    group: "g".into(),
                    uids: vec!["x".into(), String::new()],
                },
                payload: Bytes::from_static(b"p"),
            },
            Record::Deliver {
                target: Target::All { exclude: vec![] },
                payload: Bytes::from_static(b"p"),
            },
            Record::Deliver {
                target: Target::Conn(b),
                payload: Bytes::from_static(b"q"),
            },
            Record::CloseConn {
                id: a,
                code: 1000,
                reason: "bye".into(),
            },
            Record::Request(Box::new(Record::Join(b, "room".into()))),
            Record::WorkerMsg(Bytes::from_static(b"hi")),
        ]
    }

    #[test]
    fn every_record_round_trips_even_when_split() {
        let mut wire = BytesMut::new();
        for r in samples() {
            encode(&mut wire, &r);
        }
        let wire = wire.freeze();
        // Feed one byte at a time: records come out whole and in order.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(r) = decode(&mut buf).unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, samples());
        assert!(buf.is_empty());
    }

    #[test]
    fn body_len_is_what_encode_writes() {
        for r in samples() {
            let mut wire = BytesMut::new();
            encode(&mut wire, &r);
            assert_eq!(body_len(&r), wire.len() - 4, "{r:?}");
        }
    }

    #[test]
    fn a_record_over_the_limit_does_not_fit() {
        let all = Target::All { exclude: vec![] };
        // kind, target kind, exclude count, payload length.
        let overhead = 1 + 1 + 4 + 4;
        assert!(delivery_fits(&all, MAX_RECORD - overhead));
        assert!(!delivery_fits(&all, MAX_RECORD - overhead + 1));
        let small = Record::WorkerMsg(Bytes::from_static(b"x"));
        assert!(fits(&small));
    }

    #[test]
    fn truncated_bodies_and_unknown_kinds_are_corrupt() {
        let mut buf = BytesMut::from(&[2, 0, 0, 0, kind::OPEN, 1][..]);
        assert_eq!(decode(&mut buf), Err(Corrupt));
        let mut buf = BytesMut::from(&[1, 0, 0, 0, 99][..]);
        assert_eq!(decode(&mut buf), Err(Corrupt));
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf), Err(Corrupt));
    }
}
