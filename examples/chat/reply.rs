//! Server-to-client frames, as JSON text.
//!
//! Each function returns the whole frame; `ref` is added only when the
//! request had one.

use crate::request::{Refusal, Target};
use crate::store::StoredMessage;
use serde_json::{json, Map, Value};

/// Adds `ref` when present and serialises.
fn finish(mut value: Value, reference: Option<&str>) -> String {
    if let (Some(r), Value::Object(map)) = (reference, &mut value) {
        map.insert("ref".into(), Value::String(r.into()));
    }
    value.to_string()
}

/// A message as `message` events and `history` replies show it (without
/// `type`).
pub fn message_fields(m: &StoredMessage) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("id".into(), m.id.into());
    map.insert("from".into(), m.from.clone().into());
    match &m.target {
        Target::Room(r) => map.insert("room".into(), r.clone().into()),
        Target::User(u) => map.insert("to".into(), u.clone().into()),
    };
    map.insert("text".into(), m.text.clone().into());
    map.insert("time".into(), m.time.into());
    map
}

fn messages(list: &[StoredMessage]) -> Value {
    Value::Array(
        list.iter()
            .map(|m| Value::Object(message_fields(m)))
            .collect(),
    )
}

/// `welcome`: after a good `login`.
pub fn welcome(user: &str, conn: &str, reference: Option<&str>) -> String {
    finish(
        json!({"type": "welcome", "user": user, "conn": conn}),
        reference,
    )
}

/// `joined`: reply to `join`.
pub fn joined(
    room: &str,
    users: &[String],
    history: &[StoredMessage],
    reference: Option<&str>,
) -> String {
    finish(
        json!({"type": "joined", "room": room, "users": users, "history": messages(history)}),
        reference,
    )
}

/// `left`: reply to `leave`.
pub fn left(room: &str, reference: Option<&str>) -> String {
    finish(json!({"type": "left", "room": room}), reference)
}

/// `presence`: a user's first connection joined a room, or its last left.
pub fn presence(room: &str, user: &str, joined: bool) -> String {
    let event = if joined { "join" } else { "leave" };
    json!({"type": "presence", "room": room, "user": user, "event": event}).to_string()
}

/// `message`: a stored room or direct message.
pub fn message(m: &StoredMessage) -> String {
    let mut map = Map::new();
    map.insert("type".into(), "message".into());
    map.extend(message_fields(m));
    Value::Object(map).to_string()
}

/// `ack`: the sender's message is stored.
pub fn ack(id: i64, reference: Option<&str>) -> String {
    finish(json!({"type": "ack", "id": id}), reference)
}

/// `history`: reply to `history`.
pub fn history(target: &Target, list: &[StoredMessage], reference: Option<&str>) -> String {
    let (key, name) = match target {
        Target::Room(r) => ("room", r),
        Target::User(u) => ("with", u),
    };
    let mut map = Map::new();
    map.insert("type".into(), "history".into());
    map.insert(key.into(), name.clone().into());
    map.insert("messages".into(), messages(list));
    finish(Value::Object(map), reference)
}

/// `users`: reply to `users`; `users` must be sorted and distinct.
pub fn users(room: Option<&str>, users: &[String], reference: Option<&str>) -> String {
    let mut value = json!({"type": "users", "users": users, "count": users.len()});
    if let (Some(room), Value::Object(map)) = (room, &mut value) {
        map.insert("room".into(), room.into());
    }
    finish(value, reference)
}

/// `tick`: the server's clock and how many distinct users are online.
pub fn tick(time: i64, online: usize) -> String {
    json!({"type": "tick", "time": time, "online": online}).to_string()
}

/// `error`.
pub fn error(refusal: &Refusal) -> String {
    finish(
        json!({"type": "error", "code": refusal.code.as_str(), "message": refusal.message}),
        refusal.reference.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ErrorCode;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn frames_have_the_protocol_fields() {
        let m = StoredMessage {
            id: 3,
            from: "al".into(),
            target: Target::User("bo".into()),
            text: "hi".into(),
            time: 1000,
        };
        assert_eq!(
            parse(&message(&m)),
            json!({"type":"message","id":3,"from":"al","to":"bo","text":"hi","time":1000})
        );
        assert_eq!(
            parse(&history(&Target::User("bo".into()), &[m], Some("r"))),
            json!({"type":"history","with":"bo","ref":"r",
                   "messages":[{"id":3,"from":"al","to":"bo","text":"hi","time":1000}]})
        );
        assert_eq!(parse(&ack(3, None)), json!({"type":"ack","id":3}));
        assert_eq!(
            parse(&users(Some("r"), &["a".into(), "b".into()], None)),
            json!({"type":"users","room":"r","users":["a","b"],"count":2})
        );
        assert_eq!(
            parse(&presence("r", "al", false)),
            json!({"type":"presence","room":"r","user":"al","event":"leave"})
        );
        let refusal = Refusal {
            code: ErrorCode::TooLong,
            message: "m".into(),
            reference: Some("x".into()),
        };
        assert_eq!(
            parse(&error(&refusal)),
            json!({"type":"error","code":"too_long","message":"m","ref":"x"})
        );
    }
}
