//! Frames in: the checks of `shared/tasks-protocol.md` in its order
//! (JSON, `ref`, `type`, hello, role, fields: `bad_request`, `bad_queue`,
//! `too_large`), making a [`Request`]. Auth and the job's state come after,
//! in the front and the brain.
//!

use crate::types::{Hello, Request, Role, Submit};
use serde_json::{Map, Value};

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

/// Deepest nesting of objects and arrays accepted (the frame is level 1).
pub const MAX_DEPTH: usize = 64;
/// Longest `ref` and job id, in characters.
pub const MAX_REF_CHARS: usize = 64;
/// Longest name and queue name, in characters.
pub const MAX_NAME: usize = 64;
/// Longest `unique`, in characters.
pub const MAX_UNIQUE: usize = 128;

/// Client text in a message, cut after 64 characters.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A name or queue name: 1-64 of ASCII letters, digits, `_ - . :`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn depth_ok(v: &Value, level: usize) -> bool {
    match v {
        Value::Array(a) => level <= MAX_DEPTH && a.iter().all(|x| depth_ok(x, level + 1)),
        Value::Object(o) => level <= MAX_DEPTH && o.values().all(|x| depth_ok(x, level + 1)),
        _ => true,
    }
}

/// The types a submitter sends.
const SUBMITTER: &[&str] = &["submit", "status", "watch", "cancel", "stats"];
/// The types an executor sends.
const EXECUTOR: &[&str] = &["extend", "done", "fail"];

/// A failed check with the request's `ref`.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    reference: &'a Option<String>,
}

impl Fields<'_> {
    fn refuse<T>(&self, code: Code, message: String) -> Result<T, Refusal> {
        Err(Refusal {
            code,
            message,
            reference: self.reference.clone(),
        })
    }

    fn bad<T>(&self, message: String) -> Result<T, Refusal> {
        self.refuse(Code::BadRequest, message)
    }

    fn string(&self, key: &str, max_chars: usize) -> Result<Option<String>, Refusal> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => {
                let n = s.chars().count();
                if n == 0 || n > max_chars {
                    return self.bad(format!("{key}: 1 to {max_chars} characters"));
                }
                Ok(Some(s.clone()))
            }
            Some(_) => self.bad(format!("{key}: must be a string")),
        }
    }

    fn required(&self, key: &str, max_chars: usize) -> Result<String, Refusal> {
        match self.string(key, max_chars)? {
            Some(s) => Ok(s),
            None => self.bad(format!("{key}: missing")),
        }
    }

    fn int(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, Refusal> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if (min..=max).contains(&v) => Ok(v),
                _ => self.bad(format!("{key}: an integer from {min} to {max}")),
            },
            Some(_) => self.bad(format!("{key}: an integer from {min} to {max}")),
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, Refusal> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => self.bad(format!("{key}: must be true or false")),
        }
    }

    /// A queue name: `bad_request` if not a string, `bad_queue` if it
    /// breaks the rules. Returns the refusal for the caller to order.
    fn queue_of(&self, v: &Value, key: &str) -> Result<String, (Code, String)> {
        match v {
            Value::String(s) if valid_name(s) => Ok(s.clone()),
            Value::String(s) => Err((
                Code::BadQueue,
                format!(
                    "{key}: {:?} is not 1-64 of letters, digits, _ - . :",
                    shown(s)
                ),
            )),
            _ => Err((Code::BadRequest, format!("{key}: must be a string"))),
        }
    }

    /// A JSON value kept as compact text, `null` when absent, `too_large`
    /// past `max`.
    fn json(
        &self,
        key: &str,
        required: bool,
        max: usize,
    ) -> Result<Result<String, String>, Refusal> {
        let text = match self.obj.get(key) {
            None if required => return self.bad(format!("{key}: missing")),
            None => "null".to_string(),
            Some(v) => serde_json::to_string(v).unwrap_or_default(),
        };
        if text.len() > max {
            return Ok(Err(format!(
                "{key}: {} bytes as compact JSON, over max_payload_bytes ({max})",
                text.len()
            )));
        }
        Ok(Ok(text))
    }
}

/// Checks `payload` from a connection whose `hello` set `role` (`None`:
/// no good `hello` yet); `max_payload_bytes` bounds `payload`, `result`
/// and `error` as compact JSON.
///
/// Among the field checks, every `bad_request` comes first, then
/// `bad_queue`, then `too_large` (the protocol's list order), whichever
/// field is named first in the frame.
pub fn parse(
    payload: &[u8],
    role: Option<Role>,
    max_payload_bytes: usize,
) -> Result<Parsed, Refusal> {
    let refuse = |code, message: &str| Refusal {
        code,
        message: message.to_string(),
        reference: None,
    };
    let Ok(text) = std::str::from_utf8(payload) else {
        return Err(refuse(Code::BadJson, "the payload is not UTF-8"));
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(refuse(Code::BadJson, &format!("not JSON: {e}"))),
    };
    let Value::Object(obj) = value else {
        return Err(refuse(Code::BadJson, "the payload is not a JSON object"));
    };
    if !obj.values().all(|v| depth_ok(v, 2)) {
        return Err(refuse(Code::BadJson, "nested deeper than 64"));
    }
    let reference = match obj.get("ref") {
        None => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_REF_CHARS => Some(s.clone()),
        Some(Value::String(_)) => {
            return Err(refuse(Code::BadRequest, "ref: at most 64 characters"))
        }
        Some(_) => return Err(refuse(Code::BadRequest, "ref: must be a string")),
    };
    let f = Fields {
        obj: &obj,
        reference: &reference,
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return f.refuse(Code::UnknownType, "type: must be a string".into()),
        None => return f.refuse(Code::UnknownType, "type: missing".into()),
    };
    let known =
        kind == "hello" || kind == "ping" || SUBMITTER.contains(&kind) || EXECUTOR.contains(&kind);
    if !known {
        return f.refuse(
            Code::UnknownType,
            format!("type: {:?} is not a request", shown(kind)),
        );
    }
    match (role, kind) {
        (_, "ping") => {}
        (None, "hello") => {}
        (None, _) => return f.refuse(Code::NotHello, format!("{kind}: say hello first")),
        (Some(_), "hello") => return f.bad("hello: this connection said hello already".into()),
        (Some(Role::Executor), k) if SUBMITTER.contains(&k) => {
            return f.refuse(
                Code::WrongRole,
                format!("{k}: a submitter's request; this is an executor"),
            )
        }
        (Some(Role::Submitter), k) if EXECUTOR.contains(&k) => {
            return f.refuse(
                Code::WrongRole,
                format!("{k}: an executor's request; this is a submitter"),
            )
        }
        _ => {}
    }
    let request = fields(&f, kind, max_payload_bytes)?;
    Ok(Parsed { reference, request })
}

/// The field checks of one request type.
fn fields(f: &Fields, kind: &str, max: usize) -> Result<Request, Refusal> {
    Ok(match kind {
        "ping" => Request::Ping,
        "hello" => hello(f)?,
        "submit" => submit(f, max)?,
        "stats" => match f.obj.get("queue").map(|v| f.queue_of(v, "queue")) {
            None => return f.bad("queue: missing".into()),
            Some(Ok(queue)) => Request::Stats { queue },
            Some(Err((code, m))) => return f.refuse(code, m),
        },
        "status" | "watch" | "cancel" | "extend" => {
            let job = f.required("job", MAX_REF_CHARS)?;
            match kind {
                "status" => Request::Status { job },
                "watch" => Request::Watch { job },
                "cancel" => Request::Cancel { job },
                _ => Request::Extend { job },
            }
        }
        "done" => {
            let job = f.required("job", MAX_REF_CHARS)?;
            match f.json("result", false, max)? {
                Ok(result) => Request::Done { job, result },
                Err(m) => return f.refuse(Code::TooLarge, m),
            }
        }
        _ => {
            let job = f.required("job", MAX_REF_CHARS)?;
            let retry = f.boolean("retry", true)?;
            match f.json("error", false, max)? {
                Ok(error) => Request::Fail { job, error, retry },
                Err(m) => return f.refuse(Code::TooLarge, m),
            }
        }
    })
}

fn hello(f: &Fields) -> Result<Request, Refusal> {
    let role = match f.obj.get("role") {
        Some(Value::String(r)) if r == "submitter" => Role::Submitter,
        Some(Value::String(r)) if r == "executor" => Role::Executor,
        Some(_) => return f.bad("role: \"submitter\" or \"executor\"".into()),
        None => return f.bad("role: missing".into()),
    };
    let name = f.required("name", MAX_NAME)?;
    if !valid_name(&name) {
        return f.bad(format!(
            "name: {:?} is not 1-64 of letters, digits, _ - . :",
            shown(&name)
        ));
    }
    let token = match f.obj.get("token") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return f.bad("token: must be a string".into()),
    };
    if role == Role::Submitter {
        return Ok(Request::Hello(Hello {
            role,
            name,
            token,
            queues: Vec::new(),
            capacity: 1,
        }));
    }
    let capacity = f.int("capacity", 1, 1, 1000)? as u32;
    let list = match f.obj.get("queues") {
        Some(Value::Array(a)) if (1..=100).contains(&a.len()) => a,
        Some(Value::Array(_)) => return f.bad("queues: 1 to 100 queue names".into()),
        Some(_) => return f.bad("queues: must be an array of queue names".into()),
        None => return f.bad("queues: missing".into()),
    };
    let mut queues: Vec<String> = Vec::with_capacity(list.len());
    let mut bad_queue = None;
    for (i, v) in list.iter().enumerate() {
        match f.queue_of(v, &format!("queues[{i}]")) {
            Ok(q) => {
                if !queues.contains(&q) {
                    queues.push(q);
                }
            }
            Err((Code::BadQueue, m)) => {
                bad_queue.get_or_insert(m);
            }
            Err((code, m)) => return f.refuse(code, m),
        }
    }
    if let Some(m) = bad_queue {
        return f.refuse(Code::BadQueue, m);
    }
    Ok(Request::Hello(Hello {
        role,
        name,
        token,
        queues,
        capacity,
    }))
}

fn submit(f: &Fields, max: usize) -> Result<Request, Refusal> {
    let queue = match f.obj.get("queue") {
        None => return f.bad("queue: missing".into()),
        Some(v) => f.queue_of(v, "queue"),
    };
    if let Err((Code::BadRequest, m)) = &queue {
        return f.bad(m.clone());
    }
    if !f.obj.contains_key("payload") {
        return f.bad("payload: missing".into());
    }
    let priority = f.int("priority", 5, 0, 9)? as u8;
    let delay_ms = f.int("delay_ms", 0, 0, 2_592_000_000)?;
    let max_attempts = f.int("max_attempts", 3, 1, 100)? as u32;
    let timeout_ms = match f.obj.get("timeout_ms") {
        None => None,
        Some(_) => Some(f.int("timeout_ms", 0, 100, 86_400_000)?),
    };
    let unique = f.string("unique", MAX_UNIQUE)?;
    let queue = match queue {
        Ok(q) => q,
        Err((code, m)) => return f.refuse(code, m),
    };
    let payload = match f.json("payload", true, max)? {
        Ok(p) => p,
        Err(m) => return f.refuse(Code::TooLarge, m),
    };
    Ok(Request::Submit(Submit {
        queue,
        payload,
        priority,
        delay_ms,
        max_attempts,
        timeout_ms,
        unique,
    }))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
