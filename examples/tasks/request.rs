//! Frames in: the checks of `shared/tasks-protocol.md` in its order
//! (JSON, `ref`, `type`, hello, role, fields: `bad_request`, `bad_queue`,
//! `too_large`), making a [`Request`]. Auth and the job's state come after,
//! in the front and the brain.
//!
//! STUB: the interface the front is written against; the checks are being
//! written on their own branch.

use crate::types::{Request, Role};

/// The protocol's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Not a UTF-8 JSON object.
    BadJson,
    /// A field missing, of the wrong type or out of range; a bad `ref`; a
    /// second `hello`.
    BadRequest,
    /// `type` missing, not a string, or not a request type.
    UnknownType,
    /// Anything but `hello` or `ping` before a good `hello`.
    NotHello,
    /// A request of the other role.
    WrongRole,
    /// A queue name that breaks the rules.
    BadQueue,
    /// `payload`, `result` or `error` over `max_payload_bytes`.
    TooLarge,
    /// A bad or missing token while auth is on.
    AuthFailed,
    /// A job not kept.
    NotFound,
    /// Not leased to this connection.
    NotLeased,
    /// `cancel` of a leased job.
    Busy,
    /// `cancel` of a succeeded or dead job.
    AlreadyFinished,
    /// A scheduler process restarts.
    Unavailable,
}

impl Code {
    /// The code as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadJson => "bad_json",
            Code::BadRequest => "bad_request",
            Code::UnknownType => "unknown_type",
            Code::NotHello => "not_hello",
            Code::WrongRole => "wrong_role",
            Code::BadQueue => "bad_queue",
            Code::TooLarge => "too_large",
            Code::AuthFailed => "auth_failed",
            Code::NotFound => "not_found",
            Code::NotLeased => "not_leased",
            Code::Busy => "busy",
            Code::AlreadyFinished => "already_finished",
            Code::Unavailable => "unavailable",
        }
    }
}

/// A request refused by the checks: its code, a message, and the `ref` to
/// echo (none when the `ref` itself was bad or the JSON unreadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The code.
    pub code: Code,
    /// Names the field or rule.
    pub message: String,
    /// The request's good `ref`.
    pub reference: Option<String>,
}

/// A request that passed the checks, with its `ref`.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The good `ref`, if any.
    pub reference: Option<String>,
    /// The request.
    pub request: Request,
}

/// Checks `payload` from a connection whose `hello` set `role` (`None`:
/// no good `hello` yet); `max_payload_bytes` bounds `payload`, `result`
/// and `error` as compact JSON.
pub fn parse(
    payload: &[u8],
    role: Option<Role>,
    max_payload_bytes: usize,
) -> Result<Parsed, Refusal> {
    let _ = (payload, role, max_payload_bytes);
    Err(Refusal {
        code: Code::BadJson,
        message: "stub".into(),
        reference: None,
    })
}
