//! What the fronts (every worker) and the brain (worker 0) say to each
//! other over the bus, as worker messages ([`foreman::Ctx::send_to_worker`]).
//! Per sending worker they arrive in order, with that worker's registry
//! changes and deliveries; the rules of the module docs of `brain.rs` rest
//! on that.
//!
//! Encoding: one kind byte, then for [`Msg::Reply`] (the busiest) the
//! request number (8 bytes, big-endian) and the frame's bytes; the others
//! carry a JSON body.

use crate::types::Request;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The worker that holds the brain.
pub const BRAIN: usize = 0;

/// An executor as a front knows it: what its `hello` said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executor {
    /// Its connection, as text.
    pub conn: String,
    /// Its queues.
    pub queues: Vec<String>,
    /// Its capacity.
    pub capacity: u32,
}

/// One message between a front and the brain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// Front -> brain: a checked request of `conn`, numbered `seq` by the
    /// front.
    Request {
        /// The front's number.
        seq: u64,
        /// The connection, as text.
        conn: String,
        /// The request.
        request: Request,
    },
    /// Front -> brain: an executor got `welcome`.
    Join(Executor),
    /// Front -> brain: a connection that said `hello` closed.
    Gone {
        /// The connection, as text.
        conn: String,
    },
    /// Front -> brain: a page connection opened; send it a snapshot.
    Page {
        /// The connection, as text.
        conn: String,
    },
    /// Brain -> fronts: a brain started (after a crash, a new one): say
    /// which executors you hold, and where your requests stand.
    Up,
    /// Front -> brain, the answer to [`Msg::Up`]: its executors, and the
    /// front's next request number: every request before it that the
    /// brain has not answered when it answers this was lost with the old
    /// brain.
    Here {
        /// Executors open on that worker.
        executors: Vec<Executor>,
        /// The front's next request number.
        marker: u64,
    },
    /// Brain -> front: requests numbered below `marker` that are not
    /// answered yet never will be (`unavailable`).
    Lost {
        /// As in [`Msg::Here`].
        marker: u64,
    },
    /// Brain -> front: the reply to request `seq`, one JSON object
    /// without `ref`.
    Reply {
        /// The front's number.
        seq: u64,
        /// The frame.
        frame: String,
    },
}

const REPLY: u8 = b'R';
const JSON: u8 = b'J';

impl Msg {
    /// The message's bytes.
    pub fn encode(&self) -> Bytes {
        match self {
            Msg::Reply { seq, frame } => {
                let mut b = Vec::with_capacity(9 + frame.len());
                b.push(REPLY);
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(frame.as_bytes());
                Bytes::from(b)
            }
            other => {
                let mut b = vec![JSON];
                // Infallible: every field serializes.
                serde_json::to_writer(&mut b, other).unwrap_or_default();
                Bytes::from(b)
            }
        }
    }

    /// A message from its bytes; `None` for bytes no front or brain of
    /// this build sends.
    pub fn decode(data: &[u8]) -> Option<Msg> {
        match data.split_first()? {
            (&REPLY, rest) if rest.len() >= 8 => {
                let (seq, frame) = rest.split_at(8);
                Some(Msg::Reply {
                    seq: u64::from_be_bytes(seq.try_into().ok()?),
                    frame: String::from_utf8(frame.to_vec()).ok()?,
                })
            }
            (&JSON, rest) => serde_json::from_slice(rest).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Submit;

    #[test]
    fn every_kind_survives_the_trip() {
        let msgs = [
            Msg::Reply {
                seq: 1 << 40,
                frame: "{\"type\":\"pong\",\"é\":1}".into(),
            },
            Msg::Request {
                seq: 3,
                conn: "0-1-2".into(),
                request: Request::Submit(Submit {
                    queue: "q".into(),
                    payload: "{\"a\":\"\\\"\"}".into(),
                    priority: 9,
                    delay_ms: 0,
                    max_attempts: 3,
                    timeout_ms: Some(100),
                    unique: None,
                }),
            },
            Msg::Join(Executor {
                conn: "c".into(),
                queues: vec!["a".into(), "b".into()],
                capacity: 16,
            }),
            Msg::Gone { conn: "c".into() },
            Msg::Page { conn: "c".into() },
            Msg::Up,
            Msg::Here {
                executors: vec![],
                marker: 7,
            },
            Msg::Lost { marker: 7 },
        ];
        for m in msgs {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
        assert_eq!(Msg::decode(b""), None);
        assert_eq!(Msg::decode(b"R123"), None);
        assert_eq!(Msg::decode(b"Jnot json"), None);
    }
}
