//! Frames out: every reply and event of `shared/sync-protocol.md`, as JSON
//! text. Values are stored as compact JSON text and written into frames as
//! they are, never parsed again; `deleted: true` goes on whatever describes
//! a version that is a delete, and nowhere else.

use crate::request::{ErrorCode, Refusal};
use crate::store::{Change, Decided, Doc, Outcome};

/// A JSON object written field by field.
pub struct Obj(String);

impl Obj {
    /// `{"type":KIND`.
    pub fn typed(kind: &str) -> Obj {
        let mut o = Obj(String::with_capacity(96));
        o.0.push('{');
        o.0.push_str("\"type\":");
        o.0.push_str(&quote(kind));
        o
    }

    /// `{` with no field yet (HTTP bodies).
    pub fn plain() -> Obj {
        Obj("{".into())
    }

    fn name(&mut self, name: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(name);
        self.0.push_str("\":");
    }

    /// A string field.
    pub fn str(mut self, name: &str, value: &str) -> Obj {
        self.name(name);
        self.0.push_str(&quote(value));
        self
    }

    /// A number field.
    pub fn num(mut self, name: &str, value: u64) -> Obj {
        self.name(name);
        self.0.push_str(&value.to_string());
        self
    }

    /// A field whose value is JSON text already (`null` for `None`).
    pub fn raw(mut self, name: &str, json: Option<&str>) -> Obj {
        self.name(name);
        self.0.push_str(json.unwrap_or("null"));
        self
    }

    /// `"deleted":true` if `deleted`.
    pub fn deleted(mut self, deleted: bool) -> Obj {
        if deleted {
            self.name("deleted");
            self.0.push_str("true");
        }
        self
    }

    /// `"ref":...` if there is one.
    pub fn reference(self, reference: Option<&str>) -> Obj {
        match reference {
            Some(r) => self.str("ref", r),
            None => self,
        }
    }

    /// The text.
    pub fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// A JSON string literal.
pub fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `welcome`.
pub fn welcome(epoch: &str, client: &str, reference: Option<&str>) -> String {
    Obj::typed("welcome")
        .str("epoch", epoch)
        .str("client", client)
        .reference(reference)
        .end()
}

/// The fields of a document: `key`, `version`, `value` (and `deleted`).
pub fn doc_fields(o: Obj, doc: &Doc) -> Obj {
    o.str("key", &doc.key)
        .num("version", doc.version)
        .raw("value", doc.value.as_deref())
        .deleted(doc.deleted())
}

/// `doc`.
pub fn doc(doc: &Doc, reference: Option<&str>) -> String {
    doc_fields(Obj::typed("doc"), doc)
        .reference(reference)
        .end()
}

/// `ack`.
pub fn ack(key: &str, version: u64, op: &str, reference: Option<&str>) -> String {
    Obj::typed("ack")
        .str("key", key)
        .num("version", version)
        .str("op", op)
        .reference(reference)
        .end()
}

/// `conflict`: the current version and value.
pub fn conflict(
    key: &str,
    version: u64,
    value: Option<&str>,
    op: &str,
    reference: Option<&str>,
) -> String {
    Obj::typed("conflict")
        .str("key", key)
        .num("version", version)
        .raw("value", value)
        .deleted(version > 0 && value.is_none())
        .str("op", op)
        .reference(reference)
        .end()
}

/// The answer to a write: `ack`, `conflict`, or the error the store
/// decided (`op_reused`, `not_found`, `too_large`).
pub fn write_outcome(key: &str, op: &str, outcome: &Outcome, reference: Option<&str>) -> String {
    let refused = |code, message: &str| {
        error(&Refusal {
            code,
            message: message.into(),
            reference: reference.map(str::to_string),
        })
    };
    match outcome {
        Outcome::Decided { decided, .. } | Outcome::Repeat(decided) => match decided {
            Decided::Ack { version, .. } => ack(key, *version, op, reference),
            Decided::Conflict { version, value } => {
                conflict(key, *version, value.as_deref(), op, reference)
            }
        },
        Outcome::OpReused => refused(ErrorCode::OpReused, "this op was used for another write"),
        Outcome::NotFound => refused(ErrorCode::NotFound, "the key is absent"),
        Outcome::TooLarge => refused(
            ErrorCode::TooLarge,
            "the merged value is over max_value_bytes",
        ),
    }
}

/// One version inside `changes`: `{version, value, op, client}`.
fn version_entry(out: &mut String, c: &Change) {
    let entry = Obj::plain()
        .num("version", c.version)
        .raw("value", c.value.as_deref())
        .deleted(c.value.is_none())
        .str("op", &c.op)
        .str("client", &c.client)
        .end();
    out.push_str(&entry);
}

/// `changes`: every version after `since`.
pub fn changes(
    key: &str,
    since: u64,
    version: u64,
    list: &[Change],
    reference: Option<&str>,
) -> String {
    let mut items = String::from("[");
    for (i, c) in list.iter().enumerate() {
        if i > 0 {
            items.push(',');
        }
        version_entry(&mut items, c);
    }
    items.push(']');
    Obj::typed("changes")
        .str("key", key)
        .num("since", since)
        .num("version", version)
        .raw("changes", Some(&items))
        .reference(reference)
        .end()
}

/// `change`: an event, never with `ref`.
pub fn change(c: &Change) -> String {
    Obj::typed("change")
        .str("key", &c.key)
        .num("version", c.version)
        .raw("value", c.value.as_deref())
        .deleted(c.value.is_none())
        .str("op", &c.op)
        .str("client", &c.client)
        .end()
}

/// A JSON array of strings.
fn strings(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

/// `subscribed` or `unsubscribed`.
pub fn keys_reply(kind: &str, keys: &[String], reference: Option<&str>) -> String {
    Obj::typed(kind)
        .raw("keys", Some(&strings(keys)))
        .reference(reference)
        .end()
}

/// `keys`: a page of `list`.
pub fn listed(prefix: &str, items: &[(String, u64)], reference: Option<&str>) -> String {
    let mut list = String::from("[");
    for (i, (key, version)) in items.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&Obj::plain().str("key", key).num("version", *version).end());
    }
    list.push(']');
    Obj::typed("keys")
        .str("prefix", prefix)
        .raw("items", Some(&list))
        .reference(reference)
        .end()
}

/// `error`.
pub fn error(refusal: &Refusal) -> String {
    Obj::typed("error")
        .str("code", refusal.code.as_str())
        .str("message", &refusal.message)
        .reference(refusal.reference.as_deref())
        .end()
}

/// An HTTP error body: `{code, message}`.
pub fn http_error(code: ErrorCode, message: &str) -> String {
    Obj::plain()
        .str("code", code.as_str())
        .str("message", message)
        .end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(text: &str) -> Value {
        serde_json::from_str(text).expect(text)
    }

    #[test]
    fn frames_are_the_protocols() {
        let d = Doc {
            key: "k".into(),
            version: 3,
            value: None,
        };
        assert_eq!(
            parsed(&doc(&d, Some("r"))),
            json!({"type":"doc","key":"k","version":3,"value":null,"deleted":true,"ref":"r"})
        );
        let d = Doc {
            key: "k".into(),
            version: 0,
            value: None,
        };
        assert_eq!(
            parsed(&doc(&d, None)),
            json!({"type":"doc","key":"k","version":0,"value":null})
        );
        let c = Change {
            key: "k\"".into(),
            version: 2,
            value: Some(r#"{"a":"é"}"#.into()),
            op: "o".into(),
            client: "c".into(),
        };
        assert_eq!(
            parsed(&change(&c)),
            json!({"type":"change","key":"k\"","version":2,"value":{"a":"é"},"op":"o","client":"c"})
        );
        let gone = Change {
            value: None,
            ..c.clone()
        };
        assert_eq!(
            parsed(&changes("k", 1, 2, &[gone], None)),
            json!({"type":"changes","key":"k","since":1,"version":2,
                   "changes":[{"version":2,"value":null,"deleted":true,"op":"o","client":"c"}]})
        );
        assert_eq!(
            parsed(&conflict("k", 0, None, "o", None)),
            json!({"type":"conflict","key":"k","version":0,"value":null,"op":"o"})
        );
        assert_eq!(
            parsed(&listed("a", &[("ab".into(), 4)], Some("x"))),
            json!({"type":"keys","prefix":"a","items":[{"key":"ab","version":4}],"ref":"x"})
        );
        assert_eq!(
            parsed(&keys_reply("subscribed", &["a".into()], None)),
            json!({"type":"subscribed","keys":["a"]})
        );
    }
}
