//! Client requests: one type per command, parsed from a text frame, and the
//! checks that decide which error code a request gets.
//!
//! Checking happens in two steps so that the error earlier in the protocol's
//! table always wins: [`parse`] finds `bad_json`, `unknown_type` and
//! `bad_request` (shape); [`Frame::admit`] then finds `not_logged_in`,
//! `already_logged_in`, `bad_name`, `not_in_room`, `unknown_user`, `too_long`
//! and `rate_limited` (over the connection's limit, or the worker's database
//! queue is full), in that order. `auth_failed` (login only) and
//! `unsupported` (binary frames) come after all of these. A binary frame is
//! not a request at all (it has no JSON, type or fields to check), so the
//! only error that can outrank `unsupported` for it is `rate_limited`: every
//! frame, whatever it holds, costs a token.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Longest `ref`, in Unicode scalar values.
pub const MAX_REF_CHARS: usize = 64;
/// Longest user or room name.
pub const MAX_NAME_CHARS: usize = 32;
/// Default and largest `limit` of a `history` request.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest `limit` of a `history` request.
pub const MAX_LIMIT: u32 = 100;

/// The protocol's error codes, in the order of its table: when two apply, the
/// smaller one wins (`Ord` follows the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    BadJson,
    /// `type` is missing or not a known command.
    UnknownType,
    /// A field is missing, of the wrong type or out of range.
    BadRequest,
    /// Anything but `login` before a good `login`.
    NotLoggedIn,
    /// A second `login` on one connection.
    AlreadyLoggedIn,
    /// A user or room name breaks the rules.
    BadName,
    /// `say` or `history` for a room this connection has not joined.
    NotInRoom,
    /// `say` to a user who is not online.
    UnknownUser,
    /// `text` longer than the configured maximum.
    TooLong,
    /// More frames than the rate limit allows.
    RateLimited,
    /// A missing or invalid token while auth is on (closes the connection).
    AuthFailed,
    /// A binary frame.
    Unsupported,
    /// The server cannot take the request now (its store's queue is full,
    /// or the database stayed locked); the client may send it again.
    Busy,
    /// The store failed the request; nothing was stored or delivered.
    Unavailable,
}

impl ErrorCode {
    /// The code as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::AlreadyLoggedIn => "already_logged_in",
            ErrorCode::BadName => "bad_name",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// A request that cannot be done: the `error` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What went wrong.
    pub code: ErrorCode,
    /// For people: which field and why.
    pub message: String,
    /// The request's `ref` when it had a valid one.
    pub reference: Option<String>,
}

impl Refusal {
    /// A refusal without a `ref`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            reference: None,
        }
    }

    fn with_ref(mut self, reference: &Option<String>) -> Self {
        self.reference.clone_from(reference);
        self
    }
}

/// Where a `say` goes or which conversation a `history` reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A room, by name.
    Room(String),
    /// A direct conversation with this user.
    User(String),
}

/// `login`: must come first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub name: String,
    /// A JWT, needed when auth is on.
    pub token: Option<String>,
}

/// `join`: enter a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// The room.
    pub room: String,
}

/// `leave`: leave a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leave {
    /// The room.
    pub room: String,
}

/// `say`: a room message or a direct message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Say {
    /// `room` or `to`.
    pub target: Target,
    /// The message text.
    pub text: String,
}

/// `history`: a page of stored messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// `room` or `with`.
    pub target: Target,
    /// Only messages with a smaller id; `None`: the newest.
    pub before: Option<i64>,
    /// How many, 1 to 100.
    pub limit: u32,
}

/// `users`: who is online.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Users {
    /// A room, or `None` for the whole server.
    pub room: Option<String>,
}

/// One request of any type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `login`.
    Login(Login),
    /// `join`.
    Join(Join),
    /// `leave`.
    Leave(Leave),
    /// `say`.
    Say(Say),
    /// `history`.
    History(History),
    /// `users`.
    Users(Users),
}

/// A parsed frame: the request and its `ref`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Echoed in the reply and in errors.
    pub reference: Option<String>,
    /// The command.
    pub request: Request,
}

/// What [`Frame::admit`] needs to know about the connection and the server.
pub struct Gate<'a> {
    /// Whether this connection has logged in.
    pub logged_in: bool,
    /// The rooms this connection has joined.
    pub rooms: &'a BTreeSet<String>,
    /// Longest `text`.
    pub max_text_chars: usize,
    /// Whether this frame is over the connection's rate limit.
    pub rate_limited: bool,
    /// Whether the worker's database queue is full: requests that need the
    /// database are refused with `busy` (protocol 1.1).
    pub busy: bool,
}

/// Whether `name` is a valid user or room name: 1 to 32 ASCII letters,
/// digits, `_`, `-` or `.`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The fields of one JSON object, with typed getters that turn a wrong type
/// into `bad_request`.
struct Fields<'a>(&'a Map<String, Value>);

type Shape<T> = Result<T, String>;

impl Fields<'_> {
    fn string(&self, key: &str) -> Shape<Option<String>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{key}` must be a string")),
        }
    }

    fn required(&self, key: &str) -> Shape<String> {
        self.string(key)?
            .ok_or_else(|| format!("`{key}` is missing"))
    }

    fn integer(&self, key: &str, min: i64, max: i64) -> Shape<Option<i64>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(format!("`{key}` must be an integer from {min} to {max}")),
            },
        }
    }

    /// Exactly one of two string fields (`room` or `to`/`with`).
    fn target(&self, user_key: &str) -> Shape<Target> {
        match (self.string("room")?, self.string(user_key)?) {
            (Some(room), None) => Ok(Target::Room(room)),
            (None, Some(user)) => Ok(Target::User(user)),
            (Some(_), Some(_)) => Err(format!("give `room` or `{user_key}`, not both")),
            (None, None) => Err(format!("`room` or `{user_key}` is missing")),
        }
    }
}

/// Parses a text frame into a request, or refuses it with `bad_json`,
/// `unknown_type` or `bad_request`.
pub fn parse(text: &str) -> Result<Frame, Refusal> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new(ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Refusal::new(ErrorCode::BadJson, "not a JSON object"));
    };
    let fields = Fields(&object);
    // A valid ref is echoed even in an `unknown_type` error; a bad one is
    // `bad_request`, which ranks after `unknown_type`.
    let reference = match object.get("ref") {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= MAX_REF_CHARS => Ok(Some(s.clone())),
        Some(_) => Err(format!(
            "`ref` must be a string of at most {MAX_REF_CHARS} characters"
        )),
    };
    let kind = match object.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => "",
        None => {
            return Err(Refusal::new(ErrorCode::UnknownType, "`type` is missing")
                .with_ref(reference.as_ref().unwrap_or(&None)))
        }
    };
    let request = match kind {
        "login" => request_login(&fields),
        "join" => fields
            .required("room")
            .map(|room| Request::Join(Join { room })),
        "leave" => fields
            .required("room")
            .map(|room| Request::Leave(Leave { room })),
        "say" => request_say(&fields),
        "history" => request_history(&fields),
        "users" => fields
            .string("room")
            .map(|room| Request::Users(Users { room })),
        _ => {
            let shown: String = kind.chars().take(32).collect();
            return Err(
                Refusal::new(ErrorCode::UnknownType, format!("unknown type {shown:?}"))
                    .with_ref(reference.as_ref().unwrap_or(&None)),
            );
        }
    };
    let reference = reference.map_err(|m| Refusal::new(ErrorCode::BadRequest, m))?;
    let request =
        request.map_err(|m| Refusal::new(ErrorCode::BadRequest, m).with_ref(&reference))?;
    Ok(Frame { reference, request })
}

fn request_login(f: &Fields) -> Shape<Request> {
    Ok(Request::Login(Login {
        name: f.required("name")?,
        token: f.string("token")?,
    }))
}

fn request_say(f: &Fields) -> Shape<Request> {
    Ok(Request::Say(Say {
        target: f.target("to")?,
        text: f.required("text")?,
    }))
}

fn request_history(f: &Fields) -> Shape<Request> {
    let target = f.target("with")?;
    let before = f.integer("before", 1, i64::MAX)?;
    let limit = f.integer("limit", 1, i64::from(MAX_LIMIT))?;
    Ok(Request::History(History {
        target,
        before,
        limit: limit.map_or(DEFAULT_LIMIT, |n| n as u32),
    }))
}

impl Request {
    /// Whether answering needs the database (the worker's writer queue).
    pub fn needs_store(&self) -> bool {
        matches!(
            self,
            Request::Join(_) | Request::Leave(_) | Request::Say(_) | Request::History(_)
        )
    }

    /// The names this request carries (user and room), for `bad_name`.
    fn names(&self) -> Vec<(&'static str, &str)> {
        fn target<'a>(t: &'a Target, user_key: &'static str) -> (&'static str, &'a str) {
            match t {
                Target::Room(r) => ("room", r.as_str()),
                Target::User(u) => (user_key, u.as_str()),
            }
        }
        match self {
            Request::Login(l) => vec![("name", l.name.as_str())],
            Request::Join(Join { room }) | Request::Leave(Leave { room }) => {
                vec![("room", room.as_str())]
            }
            Request::Say(s) => vec![target(&s.target, "to")],
            Request::History(h) => vec![target(&h.target, "with")],
            Request::Users(u) => u.room.iter().map(|r| ("room", r.as_str())).collect(),
        }
    }
}

impl Frame {
    /// Decides whether the request may go ahead, checking the errors after
    /// `bad_request` in table order. `user_online` says whether a user has a
    /// connection anywhere on the server. `auth_failed` is left to the caller.
    pub fn admit(&self, gate: &Gate, user_online: impl Fn(&str) -> bool) -> Result<(), Refusal> {
        let refuse =
            |code, message: String| Err(Refusal::new(code, message).with_ref(&self.reference));
        let is_login = matches!(self.request, Request::Login(_));
        if !is_login && !gate.logged_in {
            return refuse(ErrorCode::NotLoggedIn, "log in first".into());
        }
        if is_login && gate.logged_in {
            return refuse(
                ErrorCode::AlreadyLoggedIn,
                "this connection is logged in already".into(),
            );
        }
        for (key, name) in self.request.names() {
            if !valid_name(name) {
                let shown: String = name.chars().take(40).collect();
                return refuse(
                    ErrorCode::BadName,
                    format!(
                        "`{key}` {shown:?}: use 1-{MAX_NAME_CHARS} ASCII letters, digits, _ - ."
                    ),
                );
            }
        }
        let room = match &self.request {
            Request::Say(Say { target, .. }) | Request::History(History { target, .. }) => {
                match target {
                    Target::Room(r) => Some(r),
                    Target::User(_) => None,
                }
            }
            _ => None,
        };
        if let Some(room) = room {
            if !gate.rooms.contains(room) {
                return refuse(ErrorCode::NotInRoom, format!("join {room:?} first"));
            }
        }
        if let Request::Say(say) = &self.request {
            if let Target::User(to) = &say.target {
                if !user_online(to) {
                    return refuse(ErrorCode::UnknownUser, format!("{to:?} is not online"));
                }
            }
            let chars = say.text.chars().count();
            if chars > gate.max_text_chars {
                return refuse(
                    ErrorCode::TooLong,
                    format!(
                        "`text` has {chars} characters, at most {} allowed",
                        gate.max_text_chars
                    ),
                );
            }
        }
        if gate.rate_limited {
            return refuse(ErrorCode::RateLimited, "slow down".into());
        }
        if gate.busy && self.request.needs_store() {
            return refuse(
                ErrorCode::Busy,
                "the server is busy; try again shortly".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
