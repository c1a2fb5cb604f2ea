//! Frames out: every reply and push of `shared/tasks-protocol.md` as one
//! compact JSON object, built as text so that client JSON kept as text
//! (`payload`, `result`, `error`) goes in without being parsed again.
//! Replies are built without `ref`; the front adds it with [`with_ref`].

use crate::types::{job_name, Counts, JobNo, JobView, Role, State};
use std::fmt::Write as _;

/// A JSON object being written: `{"type":...` then fields.
struct Obj(String);

impl Obj {
    fn new(kind: &str) -> Obj {
        let mut s = String::with_capacity(96);
        s.push_str("{\"type\":");
        push_str(&mut s, kind);
        Obj(s)
    }

    fn str(mut self, key: &str, value: &str) -> Obj {
        self.key(key);
        push_str(&mut self.0, value);
        self
    }

    fn num(mut self, key: &str, value: u64) -> Obj {
        self.key(key);
        let _ = write!(self.0, "{value}");
        self
    }

    fn bool(mut self, key: &str, value: bool) -> Obj {
        self.key(key);
        self.0.push_str(if value { "true" } else { "false" });
        self
    }

    /// `json` is already compact JSON text.
    fn raw(mut self, key: &str, json: &str) -> Obj {
        self.key(key);
        self.0.push_str(json);
        self
    }

    fn key(&mut self, key: &str) {
        self.0.push(',');
        push_str(&mut self.0, key);
        self.0.push(':');
    }

    fn done(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    // serde_json's escaping: infallible for a str.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// `frame` with `"ref"` as its second field, when there is one.
pub fn with_ref(frame: String, reference: Option<&str>) -> String {
    let Some(r) = reference else {
        return frame;
    };
    let Some(close) = frame.find(',').or_else(|| frame.rfind('}')) else {
        return frame;
    };
    let mut out = String::with_capacity(frame.len() + r.len() + 10);
    out.push_str(&frame[..close]);
    out.push_str(",\"ref\":");
    push_str(&mut out, r);
    out.push_str(&frame[close..]);
    out
}

/// `error {code, message}`.
pub fn error(code: &str, message: &str) -> String {
    Obj::new("error")
        .str("code", code)
        .str("message", message)
        .done()
}

/// `welcome {role, node}`.
pub fn welcome(role: Role, node: &str) -> String {
    Obj::new("welcome")
        .str("role", role.as_str())
        .str("node", node)
        .done()
}

/// `pong`.
pub fn pong() -> String {
    Obj::new("pong").done()
}

/// `accepted {job, state, duplicate}`.
pub fn accepted(job: JobNo, state: State, duplicate: bool) -> String {
    Obj::new("accepted")
        .str("job", &job_name(job))
        .str("state", state.as_str())
        .bool("duplicate", duplicate)
        .done()
}

/// `job {job, queue, state, priority, attempts, max_attempts, created_ms,
/// updated_ms}`, with `result` if succeeded and `error` if dead.
pub fn status(v: &JobView) -> String {
    let mut o = Obj::new("job")
        .str("job", &job_name(v.id))
        .str("queue", &v.queue)
        .str("state", v.state.as_str())
        .num("priority", v.priority.into())
        .num("attempts", v.attempts.into())
        .num("max_attempts", v.max_attempts.into())
        .num("created_ms", v.created_ms)
        .num("updated_ms", v.updated_ms);
    match v.state {
        State::Succeeded => o = o.raw("result", v.result.as_deref().unwrap_or("null")),
        State::Dead => o = o.raw("error", v.error.as_deref().unwrap_or("null")),
        _ => {}
    }
    o.done()
}

/// `watching {job, state}`.
pub fn watching(job: JobNo, state: State) -> String {
    Obj::new("watching")
        .str("job", &job_name(job))
        .str("state", state.as_str())
        .done()
}

/// `finished {job, state, result | error}` (neither for `cancelled`).
pub fn finished(job: JobNo, state: State, result: Option<&str>, error: Option<&str>) -> String {
    let o = Obj::new("finished")
        .str("job", &job_name(job))
        .str("state", state.as_str());
    match state {
        State::Succeeded => o.raw("result", result.unwrap_or("null")),
        State::Dead => o.raw("error", error.unwrap_or("null")),
        _ => o,
    }
    .done()
}

/// `cancelled {job}`.
pub fn cancelled(job: JobNo) -> String {
    Obj::new("cancelled").str("job", &job_name(job)).done()
}

/// `stats {queue, counts}`, `counts` having the seven states as keys.
pub fn stats(queue: &str, counts: &Counts) -> String {
    Obj::new("stats")
        .str("queue", queue)
        .raw("counts", &counts_json(counts))
        .done()
}

/// `{"scheduled":N,...}` over the seven states.
pub fn counts_json(counts: &Counts) -> String {
    let mut s = String::from("{");
    for (i, st) in State::ALL.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_str(&mut s, st.as_str());
        s.push(':');
        let _ = write!(s, "{}", counts[i]);
    }
    s.push('}');
    s
}

/// The push `job {job, queue, payload, attempt, lease_ms}`.
pub fn job(job: JobNo, queue: &str, payload: &str, attempt: u32, lease_ms: u64) -> String {
    Obj::new("job")
        .str("job", &job_name(job))
        .str("queue", queue)
        .raw("payload", payload)
        .num("attempt", attempt.into())
        .num("lease_ms", lease_ms)
        .done()
}

/// `extended {job, lease_ms}`.
pub fn extended(job: JobNo, lease_ms: u64) -> String {
    Obj::new("extended")
        .str("job", &job_name(job))
        .num("lease_ms", lease_ms)
        .done()
}

/// `recorded {job, state}`.
pub fn recorded(job: JobNo, state: State) -> String {
    Obj::new("recorded")
        .str("job", &job_name(job))
        .str("state", state.as_str())
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_goes_after_the_type() {
        let f = with_ref(pong(), Some("a\"b"));
        assert_eq!(f, r#"{"type":"pong","ref":"a\"b"}"#);
        let f = with_ref(cancelled(7), Some("r"));
        assert_eq!(f, r#"{"type":"cancelled","ref":"r","job":"7"}"#);
        assert_eq!(with_ref(pong(), None), r#"{"type":"pong"}"#);
    }

    #[test]
    fn raw_json_goes_in_as_is() {
        let f = job(3, "q", r#"{"a":[1,"é"]}"#, 2, 500);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["payload"]["a"][1], "é");
        assert_eq!(v["attempt"], 2);
        let s: serde_json::Value =
            serde_json::from_str(&stats("q", &[1, 2, 3, 4, 5, 6, 7])).unwrap();
        assert_eq!(s["counts"]["cancelled"], 7);
        assert_eq!(s["counts"]["scheduled"], 1);
    }
}
