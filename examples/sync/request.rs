//! Frames in: one type per request of `shared/sync-protocol.md`, and the
//! checks that decide, in the protocol's order, whether a frame is a request
//! the server acts on or an error it answers.
//!
//! The order (the earlier wins): `bad_json`, `unknown_type`, `not_hello`,
//! `already_hello`, `bad_request` (a field, a bad `ref` or `client`),
//! `bad_key`, `too_large` (a value or merge as sent), `too_many`,
//! `rate_limited`. What needs the store (op memory, the version check,
//! `not_found`, the merged size) comes after, in `store.rs`.
//!
//! Depth: the frame object is level 1 and every array or object inside it
//! one level more; scalars add none. A frame with a container at level 65
//! is `bad_json`. Lengths (`ref`, `op`) count Unicode scalar values.

use serde_json::{Map, Value};

/// Deepest nesting of objects and arrays accepted.
pub const MAX_DEPTH: usize = 64;
/// Longest `ref` and `op`, in characters.
pub const MAX_REF_CHARS: usize = 64;
/// Longest key, in bytes (keys are ASCII).
pub const MAX_KEY_BYTES: usize = 200;
/// Most items of a `list`, and its default.
pub const MAX_LIST: usize = 1000;
/// Items of a `list` without `limit`.
pub const DEFAULT_LIST: usize = 100;

/// The protocol's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not one JSON object, or too deep.
    BadJson,
    /// `type` missing or unknown.
    UnknownType,
    /// A request before a good `hello`.
    NotHello,
    /// A second `hello`.
    AlreadyHello,
    /// A field missing, of the wrong type or out of range.
    BadRequest,
    /// A key breaking the key rules.
    BadKey,
    /// A value or merge over `max_value_bytes`.
    TooLarge,
    /// Over `max_subscriptions`.
    TooMany,
    /// Over the rate limit.
    RateLimited,
    /// A remembered op for another write.
    OpReused,
    /// Delete of an absent key.
    NotFound,
    /// The store failed.
    Unavailable,
    /// A bad or missing token.
    AuthFailed,
    /// A binary frame.
    Unsupported,
}

impl ErrorCode {
    /// The code as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotHello => "not_hello",
            ErrorCode::AlreadyHello => "already_hello",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadKey => "bad_key",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooMany => "too_many",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::OpReused => "op_reused",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Unsupported => "unsupported",
        }
    }
}

/// An error reply: code, message, and the request's `ref` if it had a
/// valid one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// The request's valid `ref`.
    pub reference: Option<String>,
}

impl Refusal {
    /// A refusal without `ref`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            reference: None,
        }
    }
}

/// `hello`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hello {
    /// The device.
    pub client: String,
    /// The JWT, when sent.
    pub token: Option<String>,
}

/// `get`.
#[derive(Clone, Debug, PartialEq)]
pub struct Get {
    /// The key.
    pub key: String,
}

/// `put`.
#[derive(Clone, Debug, PartialEq)]
pub struct Put {
    /// The key.
    pub key: String,
    /// The version the client saw.
    pub base: u64,
    /// The new value, never null.
    pub value: Value,
    /// The write attempt.
    pub op: String,
}

/// `patch`.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    /// The key.
    pub key: String,
    /// The version the client saw.
    pub base: u64,
    /// An RFC 7396 merge patch, an object.
    pub merge: Value,
    /// The write attempt.
    pub op: String,
}

/// `delete`.
#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    /// The key.
    pub key: String,
    /// The version the client saw.
    pub base: u64,
    /// The write attempt.
    pub op: String,
}

/// `subscribe`.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscribe {
    /// Non-empty, no repeats.
    pub keys: Vec<String>,
    /// The client's versions of some of `keys` (entries for other keys are
    /// dropped here).
    pub since: Vec<(String, u64)>,
}

/// `unsubscribe`.
#[derive(Clone, Debug, PartialEq)]
pub struct Unsubscribe {
    /// Non-empty, no repeats.
    pub keys: Vec<String>,
}

/// `list`.
#[derive(Clone, Debug, PartialEq)]
pub struct List {
    /// Possibly empty.
    pub prefix: String,
    /// Only keys after this.
    pub after: Option<String>,
    /// 1 to 1000.
    pub limit: usize,
}

/// One request, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `hello`.
    Hello(Hello),
    /// `get`.
    Get(Get),
    /// `put`.
    Put(Put),
    /// `patch`.
    Patch(Patch),
    /// `delete`.
    Delete(Delete),
    /// `subscribe`.
    Subscribe(Subscribe),
    /// `unsubscribe`.
    Unsubscribe(Unsubscribe),
    /// `list`.
    List(List),
}

/// A request and its valid `ref`.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The request.
    pub request: Request,
    /// Its `ref`, echoed by its replies.
    pub reference: Option<String>,
}

/// What the checks need to know about the connection.
pub struct Gate<'a> {
    /// A good `hello` was received.
    pub said_hello: bool,
    /// Largest value or merge, compact JSON bytes.
    pub max_value_bytes: usize,
    /// Keys per connection.
    pub max_subscriptions: usize,
    /// Keys this connection holds now.
    pub subscribed: &'a dyn Fn(&str) -> bool,
    /// How many keys it holds.
    pub subscription_count: usize,
    /// The rate limit refused this frame.
    pub rate_limited: bool,
}

/// Whether `key` follows the key rules: 1-200 of ASCII letters, digits and
/// `. _ : / -`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.bytes().all(key_byte)
}

fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-')
}

/// Whether `client` is a good device name: 1-64 of ASCII letters, digits
/// and `. _ : -`.
pub fn valid_client(client: &str) -> bool {
    (1..=64).contains(&client.len())
        && client
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `op` is 1-64 characters.
pub fn valid_op(op: &str) -> bool {
    (1..=MAX_REF_CHARS).contains(&op.chars().count())
}

/// Whether `value` nests no deeper than `limit` (it is level 1; an array
/// or object is one level more than its container; scalars add nothing).
pub fn depth_within(value: &Value, limit: usize) -> bool {
    // Iterative, so a deep value cannot overflow the stack.
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((v, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if level > limit {
            return false;
        }
        stack.extend(children.map(|c| (c, level + 1)));
    }
    true
}

/// Parses text as one JSON object no deeper than [`MAX_DEPTH`]. (Past
/// serde_json's own recursion limit, 128, the text is refused as invalid:
/// `bad_json` too.)
pub fn parse_object(text: &str) -> Result<Map<String, Value>, &'static str> {
    let value: Value = serde_json::from_str(text).map_err(|_| "not one valid JSON value")?;
    if !depth_within(&value, MAX_DEPTH) {
        return Err("nested deeper than 64 levels");
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err("not a JSON object"),
    }
}

/// The compact size of a JSON value: no whitespace, non-ASCII unescaped.
pub fn compact_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).map_or(usize::MAX, |()| counter.0)
}

/// The checks of one request's fields, in table order: the first failure
/// is kept.
struct Fields<'a> {
    map: &'a Map<String, Value>,
}

type Check<T> = Result<T, (ErrorCode, String)>;

fn bad_request<T>(message: String) -> Check<T> {
    Err((ErrorCode::BadRequest, message))
}

impl Fields<'_> {
    fn string(&self, name: &str) -> Check<&str> {
        match self.map.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => bad_request(format!("{name} must be a string")),
            None => bad_request(format!("{name} is missing")),
        }
    }

    fn opt_string(&self, name: &str) -> Check<Option<&str>> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => bad_request(format!("{name} must be a string")),
        }
    }

    fn version(&self, name: &str) -> Check<u64> {
        match self.map.get(name) {
            None => bad_request(format!("{name} is missing")),
            Some(v) => as_version(v).ok_or_else(|| {
                (
                    ErrorCode::BadRequest,
                    format!("{name} must be an integer >= 0"),
                )
            }),
        }
    }

    fn op(&self) -> Check<String> {
        let op = self.string("op")?;
        if !valid_op(op) {
            return bad_request("op must be 1 to 64 characters".into());
        }
        Ok(op.to_string())
    }

    /// `keys`: a non-empty array of strings without repeats. Key rules are
    /// checked later ([`ErrorCode::BadKey`] comes after every
    /// `bad_request`).
    fn keys(&self) -> Check<Vec<String>> {
        let Some(Value::Array(items)) = self.map.get("keys") else {
            return bad_request("keys must be a non-empty array of keys".into());
        };
        if items.is_empty() {
            return bad_request("keys must not be empty".into());
        }
        let mut keys = Vec::with_capacity(items.len());
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        for item in items {
            let Value::String(key) = item else {
                return bad_request("keys must hold strings".into());
            };
            if !seen.insert(key.as_str()) {
                return bad_request(format!("keys repeats {}", shown(key)));
            }
            keys.push(key.clone());
        }
        Ok(keys)
    }
}

/// Client text as an error message shows it: quoted, and cut after 64
/// characters, so that no message grows with the input.
fn shown(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// A JSON integer >= 0 (not `1.0`, not a string).
pub fn as_version(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn check_key(name: &str, key: &str) -> Check<()> {
    if valid_key(key) {
        Ok(())
    } else {
        Err((
            ErrorCode::BadKey,
            format!("{name} must be 1 to 200 of ASCII letters, digits and . _ : / -"),
        ))
    }
}

fn check_size(name: &str, value: &Value, max: usize) -> Check<()> {
    let len = compact_len(value);
    if len > max {
        return Err((
            ErrorCode::TooLarge,
            format!("{name} is {len} bytes as compact JSON; at most {max}"),
        ));
    }
    Ok(())
}

/// The `ref` of a frame: `Ok(Some)` if valid, `Ok(None)` if absent, `Err`
/// if present but not a string of at most 64 characters.
fn reference(map: &Map<String, Value>) -> Result<Option<String>, ()> {
    match map.get("ref") {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= MAX_REF_CHARS => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

/// Checks one text frame against the connection's state. `Ok`: a request
/// to act on; `Err`: the error reply.
pub fn parse(text: &str, gate: &Gate) -> Result<Frame, Refusal> {
    let map = parse_object(text).map_err(|m| Refusal::new(ErrorCode::BadJson, m))?;
    let reference_ok = reference(&map);
    let reference = reference_ok.clone().ok().flatten();
    let refuse = |(code, message): (ErrorCode, String)| Refusal {
        code,
        message,
        reference: reference.clone(),
    };
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(refuse((
                ErrorCode::UnknownType,
                "type must be a string".into(),
            )))
        }
        None => return Err(refuse((ErrorCode::UnknownType, "type is missing".into()))),
    };
    const TYPES: [&str; 8] = [
        "hello",
        "get",
        "put",
        "patch",
        "delete",
        "subscribe",
        "unsubscribe",
        "list",
    ];
    if !TYPES.contains(&kind) {
        return Err(refuse((
            ErrorCode::UnknownType,
            format!("unknown type {}", shown(kind)),
        )));
    }
    if !gate.said_hello && kind != "hello" {
        return Err(refuse((ErrorCode::NotHello, "send hello first".into())));
    }
    if gate.said_hello && kind == "hello" {
        return Err(refuse((
            ErrorCode::AlreadyHello,
            "hello was sent already".into(),
        )));
    }
    if reference_ok.is_err() {
        return Err(refuse((
            ErrorCode::BadRequest,
            "ref must be a string of at most 64 characters".into(),
        )));
    }
    let request = fields(kind, &Fields { map: &map }, gate).map_err(refuse)?;
    if gate.rate_limited {
        return Err(refuse((ErrorCode::RateLimited, "slow down".into())));
    }
    Ok(Frame { request, reference })
}

/// A write from the updates queue (`[amqp]`), the body of one message: a
/// `put` as the protocol has it (`key`, `base_version`, `value`, `op`),
/// `type` optional; with `type`, also a `patch` or a `delete`. The fields
/// are checked as a frame's are; there is no `ref` (the message's
/// `correlation_id` names the answer) and no `hello`.
pub fn parse_write(text: &str, max_value_bytes: usize) -> Result<Request, Refusal> {
    let map = parse_object(text).map_err(|m| Refusal::new(ErrorCode::BadJson, m))?;
    let kind = match map.get("type") {
        None => "put",
        Some(Value::String(t)) if matches!(t.as_str(), "put" | "patch" | "delete") => t.as_str(),
        Some(_) => {
            return Err(Refusal::new(
                ErrorCode::UnknownType,
                "type must be \"put\", \"patch\" or \"delete\" (absent: put)",
            ))
        }
    };
    let none = |_: &str| false;
    let gate = Gate {
        said_hello: true,
        max_value_bytes,
        max_subscriptions: 0,
        subscribed: &none,
        subscription_count: 0,
        rate_limited: false,
    };
    fields(kind, &Fields { map: &map }, &gate).map_err(|(code, message)| Refusal {
        code,
        message,
        reference: None,
    })
}

/// The fields of a request of type `kind`, checked in table order.
fn fields(kind: &str, f: &Fields, gate: &Gate) -> Check<Request> {
    let max = gate.max_value_bytes;
    Ok(match kind {
        "hello" => {
            let client = f.string("client")?;
            let token = f.opt_string("token")?;
            if !valid_client(client) {
                return bad_request(
                    "client must be 1 to 64 of ASCII letters, digits and . _ : -".into(),
                );
            }
            Request::Hello(Hello {
                client: client.to_string(),
                token: token.map(str::to_string),
            })
        }
        "get" => {
            let key = f.string("key")?;
            check_key("key", key)?;
            Request::Get(Get {
                key: key.to_string(),
            })
        }
        "put" => {
            let key = f.string("key")?;
            let base = f.version("base_version")?;
            let op = f.op()?;
            let value = match f.map.get("value") {
                None => return bad_request("value is missing".into()),
                Some(Value::Null) => {
                    return bad_request("value must not be null (send delete)".into())
                }
                Some(v) => v.clone(),
            };
            check_key("key", key)?;
            check_size("value", &value, max)?;
            Request::Put(Put {
                key: key.to_string(),
                base,
                value,
                op,
            })
        }
        "patch" => {
            let key = f.string("key")?;
            let base = f.version("base_version")?;
            let op = f.op()?;
            let merge = match f.map.get("merge") {
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => return bad_request("merge must be an object".into()),
                None => return bad_request("merge is missing".into()),
            };
            check_key("key", key)?;
            check_size("merge", &merge, max)?;
            Request::Patch(Patch {
                key: key.to_string(),
                base,
                merge,
                op,
            })
        }
        "delete" => {
            let key = f.string("key")?;
            let base = f.version("base_version")?;
            let op = f.op()?;
            check_key("key", key)?;
            Request::Delete(Delete {
                key: key.to_string(),
                base,
                op,
            })
        }
        "subscribe" => {
            let keys = f.keys()?;
            let since = match f.map.get("since") {
                None => Vec::new(),
                Some(Value::Object(since)) => {
                    let mut wanted = Vec::new();
                    for key in &keys {
                        if let Some(v) = since.get(key) {
                            let Some(v) = as_version(v) else {
                                return bad_request(format!(
                                    "since[{}] must be an integer >= 0",
                                    shown(key)
                                ));
                            };
                            wanted.push((key.clone(), v));
                        }
                    }
                    wanted
                }
                Some(_) => return bad_request("since must be an object".into()),
            };
            for key in &keys {
                check_key("keys", key)?;
            }
            let new = keys.iter().filter(|k| !(gate.subscribed)(k)).count();
            if gate.subscription_count + new > gate.max_subscriptions {
                return Err((
                    ErrorCode::TooMany,
                    format!(
                        "a connection holds at most {} keys; this one holds {}",
                        gate.max_subscriptions, gate.subscription_count
                    ),
                ));
            }
            Request::Subscribe(Subscribe { keys, since })
        }
        "unsubscribe" => {
            let keys = f.keys()?;
            for key in &keys {
                check_key("keys", key)?;
            }
            Request::Unsubscribe(Unsubscribe { keys })
        }
        "list" => {
            let prefix = f.opt_string("prefix")?.unwrap_or("");
            let after = f.opt_string("after")?;
            let limit = match f.map.get("limit") {
                None => DEFAULT_LIST,
                Some(v) => match as_version(v) {
                    Some(n) if (1..=MAX_LIST as u64).contains(&n) => n as usize,
                    _ => return bad_request("limit must be an integer from 1 to 1000".into()),
                },
            };
            if !prefix.is_empty() {
                check_key("prefix", prefix)?;
            }
            if let Some(after) = after {
                check_key("after", after)?;
            }
            Request::List(List {
                prefix: prefix.to_string(),
                after: after.map(str::to_string),
                limit,
            })
        }
        _ => unreachable!("types checked above"),
    })
}

/// What op memory compares: the request's type, key, base and value or
/// merge, as one canonical JSON text (serde_json's maps are sorted, so two
/// equal JSON values give one text).
pub fn fingerprint(kind: &str, key: &str, base: u64, body: Option<&Value>) -> String {
    serde_json::json!([kind, key, base, body]).to_string()
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
