//! Reading Redis replies (`redis::Value`) of the apps' Lua scripts: the
//! shapes a script returns, with a message naming what came instead.

use redis::Value;

/// An array reply; an empty Lua table comes back as nil, so nil is empty.
pub fn array(v: Value) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("expected an array, got {other:?}")),
    }
}

/// A string reply (bulk or simple), as UTF-8.
pub fn string(v: Value) -> Result<String, String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|e| e.to_string()),
        Value::SimpleString(s) => Ok(s),
        other => Err(format!("expected a string, got {other:?}")),
    }
}
