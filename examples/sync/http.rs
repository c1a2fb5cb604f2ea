//! HTTP for backends: `/doc/KEY` with ETags, `If-Match` and merge-patch, as
//! `shared/sync-protocol.md` ("HTTP for backends") says.
//!
//! A request is checked here in this order, the first failure answering:
//! the API key (401), the method (405), the key (400 `bad_key`), the
//! precondition (428, or 400 for a bad or doubled one), `Idempotency-Key`
//! (400), the media type (415), the body (400 `bad_json` or `bad_request`,
//! 413 `too_large`). What passes becomes store work ([`DocCall`]); its
//! answer is turned into the response by [`get_response`] and
//! [`write_response`]. Bodies over `max_frame_bytes` never get here: the
//! library answers them 413 before the handler runs.

use crate::reply::{self, Obj};
use crate::request::{self, ErrorCode};
use crate::store::{Decided, Doc, Outcome, Write, WriteKind};
use foreman::{Request, Response};
use serde_json::Value;

/// The client of HTTP writes.
pub const HTTP_CLIENT: &str = "http";

/// What a `/doc/KEY` request asks of the store.
#[derive(Clone, Debug, PartialEq)]
pub enum DocCall {
    /// `GET`.
    Get(String),
    /// `PUT`, `PATCH` or `DELETE`.
    Write(Write),
}

/// An error response with a `{code, message}` body.
pub fn error(status: u16, code: ErrorCode, message: &str) -> Response {
    Response::new(status, reply::http_error(code, message))
        .header("Content-Type", "application/json")
}

fn json(status: u16, body: String) -> Response {
    Response::new(status, body).header("Content-Type", "application/json")
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// Compares two byte strings in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-decodes a path segment; `None` for a bad escape or non-UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The media type of a `Content-Type` value: before any `;`, trimmed,
/// lower case.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `If-Match: "V"` -> V; `If-None-Match: *` -> 0.
fn base_version(req: &Request) -> Result<u64, Response> {
    let if_match = req.header("If-Match").map(str::trim);
    let if_none = req.header("If-None-Match").map(str::trim);
    let bad = |m: &str| Err(error(400, ErrorCode::BadRequest, m));
    match (if_match, if_none) {
        (None, None) => Err(error(
            428,
            ErrorCode::BadRequest,
            "send If-Match: \"VERSION\" (or If-None-Match: * to create)",
        )),
        (Some(_), Some(_)) => bad("send If-Match or If-None-Match, not both"),
        (None, Some("*")) => Ok(0),
        (None, Some(_)) => bad("If-None-Match must be *"),
        (Some(tag), None) => {
            let digits = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
            match digits {
                Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => d
                    .parse()
                    .or_else(|_| bad("If-Match: the version is too large")),
                _ => bad("If-Match must be a version in quotes, as the ETag gives it"),
            }
        }
    }
}

/// The body of a `PUT` (`patch` false) or `PATCH`, checked.
fn body(req: &Request, patch: bool, max_value_bytes: usize) -> Result<Value, Response> {
    let text = std::str::from_utf8(&req.body)
        .map_err(|_| error(400, ErrorCode::BadJson, "the body is not UTF-8"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|_| error(400, ErrorCode::BadJson, "the body is not one JSON value"))?;
    if !request::depth_within(&value, request::MAX_DEPTH) {
        return Err(error(
            400,
            ErrorCode::BadJson,
            "nested deeper than 64 levels",
        ));
    }
    if patch && !value.is_object() {
        return Err(error(
            400,
            ErrorCode::BadRequest,
            "a merge patch must be an object",
        ));
    }
    if value.is_null() {
        return Err(error(
            400,
            ErrorCode::BadRequest,
            "the value must not be null (send DELETE)",
        ));
    }
    let len = request::compact_len(&value);
    if len > max_value_bytes {
        let message = format!("{len} bytes as compact JSON; at most {max_value_bytes}");
        return Err(error(413, ErrorCode::TooLarge, &message));
    }
    Ok(value)
}

/// Checks a request for `/doc/...` (`rest` is the path after `/doc/`).
/// `new_op` makes a unique op for a write without `Idempotency-Key`.
pub fn doc_call(
    req: &Request,
    rest: &str,
    api_key: Option<&str>,
    max_value_bytes: usize,
    new_op: impl FnOnce() -> String,
) -> Result<DocCall, Response> {
    if let Some(key) = api_key {
        let sent = req
            .header("Authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !sent.is_some_and(|s| same_secret(s.as_bytes(), key.as_bytes())) {
            return Err(error(
                401,
                ErrorCode::AuthFailed,
                "send Authorization: Bearer API_KEY",
            )
            .header("WWW-Authenticate", "Bearer"));
        }
    }
    let method = req.method.as_str();
    if !matches!(method, "GET" | "PUT" | "PATCH" | "DELETE") {
        return Err(
            error(405, ErrorCode::BadRequest, "use GET, PUT, PATCH or DELETE")
                .header("Allow", "GET, PUT, PATCH, DELETE"),
        );
    }
    let key = percent_decode(rest)
        .filter(|k| request::valid_key(k))
        .ok_or_else(|| {
            error(
                400,
                ErrorCode::BadKey,
                "the key must be 1 to 200 of ASCII letters, digits and . _ : / -",
            )
        })?;
    if method == "GET" {
        return Ok(DocCall::Get(key));
    }
    let base = base_version(req)?;
    let op = match req.header("Idempotency-Key") {
        Some(op) if request::valid_op(op) => op.to_string(),
        Some(_) => {
            return Err(error(
                400,
                ErrorCode::BadRequest,
                "Idempotency-Key must be 1 to 64 characters",
            ))
        }
        None => new_op(),
    };
    let content = req.header("Content-Type").map(media_type);
    let (name, sent) = match method {
        "PUT" => {
            if content.as_deref() != Some("application/json") {
                return Err(error(
                    415,
                    ErrorCode::BadRequest,
                    "PUT takes application/json",
                ));
            }
            ("put", Some(body(req, false, max_value_bytes)?))
        }
        "PATCH" => {
            if content.as_deref() != Some("application/merge-patch+json") {
                return Err(error(
                    415,
                    ErrorCode::BadRequest,
                    "PATCH takes application/merge-patch+json",
                )
                .header("Accept-Patch", "application/merge-patch+json"));
            }
            ("patch", Some(body(req, true, max_value_bytes)?))
        }
        _ => ("delete", None),
    };
    let fingerprint = request::fingerprint(name, &key, base, sent.as_ref());
    let kind = match sent {
        Some(value) if name == "put" => WriteKind::Put(value.to_string()),
        Some(merge) => WriteKind::Patch(merge),
        None => WriteKind::Delete,
    };
    Ok(DocCall::Write(Write {
        kind,
        key,
        base,
        client: HTTP_CLIENT.into(),
        op,
        fingerprint,
    }))
}

/// `GET /doc/KEY`: 200 with the ETag, or 404 with the same body when absent.
pub fn get_response(doc: &Doc) -> Response {
    let body = reply::doc_fields(Obj::plain(), doc).end();
    if doc.value.is_none() {
        return json(404, body);
    }
    json(200, body).header("ETag", etag(doc.version))
}

/// The response to a write of `key` with `op`.
pub fn write_response(key: &str, op: &str, outcome: &Outcome) -> Response {
    let decided = match outcome {
        Outcome::Decided { decided, .. } | Outcome::Repeat(decided) => decided,
        Outcome::OpReused => {
            return error(
                422,
                ErrorCode::OpReused,
                "this Idempotency-Key was used for another write",
            )
        }
        Outcome::NotFound => return error(404, ErrorCode::NotFound, "the key is absent"),
        Outcome::TooLarge => {
            return error(
                413,
                ErrorCode::TooLarge,
                "the merged value is over max_value_bytes",
            )
        }
    };
    match decided {
        Decided::Ack { version, created } => {
            let body = Obj::plain()
                .str("key", key)
                .num("version", *version)
                .str("op", op)
                .end();
            json(if *created { 201 } else { 200 }, body).header("ETag", etag(*version))
        }
        Decided::Conflict { version, value } => {
            let doc = Doc {
                key: key.into(),
                version: *version,
                value: value.clone(),
            };
            let response = json(412, reply::doc_fields(Obj::plain(), &doc).end());
            if *version > 0 {
                response.header("ETag", etag(*version))
            } else {
                response
            }
        }
    }
}

/// 503: the store failed.
pub fn unavailable(message: &str) -> Response {
    error(503, ErrorCode::Unavailable, message).header("Retry-After", "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%3ac").as_deref(), Some("a/b:c"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
        assert_eq!(
            media_type(" application/merge-patch+json"),
            "application/merge-patch+json"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
