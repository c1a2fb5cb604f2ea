//! The HTTP push API: backends (a PHP or Python app, a cron job) address
//! users through the server's own port, as GatewayWorker's `Gateway::sendToUid`
//! does. Off unless `[api] key` is set ([`crate::ApiConfig`]); then every
//! request under `/api/` is answered here, before the handler's
//! `on_http_request` sees it, and needs `Authorization: Bearer KEY`.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /api/publish` | `{"to": TARGET, "data": STRING or JSON}` | `{"delivered": N}` |
//! | `GET /api/online` | | `{"connections", "uids", "groups"}` (counts) |
//! | `GET /api/uid/UID` | | `{"uid", "online", "connections": [ID], "groups": [NAME]}` |
//! | `GET /api/group/NAME` | | `{"group", "uids": [UID], "count"}` (`count`: connections) |
//! | `POST /api/close` | `{"uid"}` or `{"conn"}`, optional `code` (1000), `reason` | `{"closed": N}` |
//! | `POST /api/group/NAME/join` | `{"uid"}` | `{"joined": N}` (connections added: those this worker's registry lists as not members yet) |
//! | `POST /api/group/NAME/leave` | `{"uid"}` | `{"left": N}` (connections removed) |
//!
//! `TARGET` is one of `{"uid": UID}`, `{"uids": [UID, ...]}`,
//! `{"group": NAME}`, `{"all": true}`, `{"conn": ID}`. A string `data` is sent
//! as a text message as it is; any other JSON value as its JSON text. `N` is
//! the number of connections the send was handed to, on every worker and
//! (with `[cluster]`) every node, as this worker's registry replica lists them
//! at that moment; a connection closing at the same time may miss it.
//! `UID` and `NAME` in a path are percent-decoded.
//!
//! Errors answer `{"error": MESSAGE}`: 400 naming the field, 401 without the
//! right key (nothing is done), 404, 405 with `Allow`, 413 past
//! `max_http_body_bytes` (from the HTTP layer), 415 for a body whose
//! `Content-Type` is not JSON, 503 when a send could not cross to every
//! worker or node (the message is too large for the bus, or Redis is down:
//! the connections of this node may have it; `delivered` says how many).

use crate::ctx::Ctx;
use crate::id::ConnId;
use crate::message::Message;
use crate::proto::http::{Request, Response};
use serde_json::{json, Map, Value};

/// Where `/api/publish` sends, the `to` of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum To {
    /// Every connection bound to the uid.
    Uid(String),
    /// Every connection bound to any of them (each connection once).
    Uids(Vec<String>),
    /// Every member of the group.
    Group(String),
    /// Every connection.
    All,
    /// One connection.
    Conn(ConnId),
}

/// A parsed `/api/publish` body (also the body of a message from the
/// RabbitMQ bridge's push queue).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Publish {
    /// The recipients.
    pub to: To,
    /// The message: a string as text, other JSON as its text.
    pub data: String,
}

/// A request the API refuses: its status and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What was wrong, naming the field.
    pub message: String,
    /// For 405: the method the path takes.
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    fn response(&self) -> Response {
        let mut r = Response::new(self.status, json!({"error": self.message}).to_string())
            .header("Content-Type", "application/json");
        if self.status == 401 {
            r = r.header("WWW-Authenticate", "Bearer");
        }
        if let Some(allow) = self.allow {
            r = r.header("Allow", allow);
        }
        r
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether `path` belongs to the API (`/api` or under `/api/`).
pub(crate) fn owns(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// Answers one request under `/api/`; `key` is the configured key.
pub(crate) fn handle(ctx: &mut Ctx, key: &str, request: &Request) -> Response {
    match answer(ctx, key, request) {
        Ok(body) => Response::json(body.to_string()),
        Err(e) => e.response(),
    }
}

fn answer(ctx: &mut Ctx, key: &str, request: &Request) -> Result<Value, ApiError> {
    if !authorized(key, request.header("Authorization")) {
        return Err(ApiError::new(
            401,
            "missing or wrong Authorization: Bearer key",
        ));
    }
    let route = Route::of(&request.path)?;
    let method = request.method.as_str();
    if method != route.method() {
        let allow = route.method();
        let mut e = ApiError::new(405, format!("{method} not allowed here; use {allow}"));
        e.allow = Some(allow);
        return Err(e);
    }
    let body = || json_body(request);
    match route {
        Route::Publish => {
            json_type(request)?;
            let p = parse_publish(&request.body)?;
            let (delivered, complete) = deliver(ctx, &p);
            if complete {
                Ok(json!({ "delivered": delivered }))
            } else {
                Err(ApiError::new(
                    503,
                    format!(
                        "the message could not reach every worker or node \
                         (too large for the bus, or the cluster link is down); \
                         delivered: {delivered} at most"
                    ),
                ))
            }
        }
        Route::Online => Ok(json!({
            "connections": ctx.connection_count(),
            "uids": ctx.uid_count(),
            "groups": ctx.groups().len(),
        })),
        Route::Uid(uid) => {
            let conns = ctx.conns_of_uid(&uid);
            let mut groups: Vec<String> =
                conns.iter().flat_map(|c| ctx.groups_of_conn(*c)).collect();
            groups.sort_unstable();
            groups.dedup();
            let ids: Vec<String> = conns.iter().map(ConnId::to_string).collect();
            Ok(json!({
                "uid": uid,
                "online": !ids.is_empty(),
                "connections": ids,
                "groups": groups,
            }))
        }
        Route::Group(name) => Ok(json!({
            "uids": ctx.group_uids(&name),
            "count": ctx.group_conn_count(&name),
            "group": name,
        })),
        Route::Close => {
            let b = body()?;
            let (code, reason) = close_code(&b)?;
            let conns = uid_or_conn(ctx, &b)?;
            for c in &conns {
                ctx.close_with(*c, code, reason);
            }
            Ok(json!({ "closed": conns.len() }))
        }
        Route::Join(name) => membership(ctx, &name, &body()?, true),
        Route::Leave(name) => membership(ctx, &name, &body()?, false),
    }
}

/// `/api/group/NAME/join` (`join`) or `/leave` for the connections of a
/// body's `uid`: how many changed.
fn membership(ctx: &mut Ctx, group: &str, b: &Value, join: bool) -> Result<Value, ApiError> {
    let uid = string_field(b, "uid")?;
    let mut changed = 0;
    for c in ctx.conns_of_uid(uid) {
        let member = ctx.groups_of_conn(c).iter().any(|g| g == group);
        if join && !member {
            ctx.join_group(c, group);
            changed += 1;
        } else if !join && member {
            ctx.leave_group(c, group);
            changed += 1;
        }
    }
    Ok(if join {
        json!({ "joined": changed })
    } else {
        json!({ "left": changed })
    })
}

/// The API's paths.
enum Route {
    Publish,
    Online,
    Uid(String),
    Group(String),
    Close,
    Join(String),
    Leave(String),
}

impl Route {
    fn of(path: &str) -> Result<Route, ApiError> {
        let rest = path.strip_prefix("/api/").unwrap_or("");
        let parts: Vec<&str> = rest.split('/').collect();
        let name = |s: &str| match percent_decode(s) {
            Some(n) if !n.is_empty() => Ok(n),
            _ => Err(ApiError::bad(format!("bad name in path: {s:?}"))),
        };
        Ok(match parts.as_slice() {
            ["publish"] => Route::Publish,
            ["online"] => Route::Online,
            ["close"] => Route::Close,
            ["uid", uid] => Route::Uid(name(uid)?),
            ["group", g] => Route::Group(name(g)?),
            ["group", g, "join"] => Route::Join(name(g)?),
            ["group", g, "leave"] => Route::Leave(name(g)?),
            _ => return Err(ApiError::new(404, format!("no such endpoint: {path}"))),
        })
    }

    fn method(&self) -> &'static str {
        match self {
            Route::Online | Route::Uid(_) | Route::Group(_) => "GET",
            _ => "POST",
        }
    }
}

/// `Authorization: Bearer KEY`, compared in constant time (for a key of a
/// given length: only the length can leak).
fn authorized(key: &str, header: Option<&str>) -> bool {
    let Some(given) = header.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }) else {
        return false;
    };
    let (a, b) = (key.as_bytes(), given.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

/// The body as JSON: 415 if its `Content-Type` says it is something else,
/// 400 if it does not parse.
fn json_body(request: &Request) -> Result<Value, ApiError> {
    json_type(request)?;
    serde_json::from_slice(&request.body)
        .map_err(|e| ApiError::bad(format!("body: not JSON ({e})")))
}

/// 415 unless the body's `Content-Type` (if any) is JSON.
fn json_type(request: &Request) -> Result<(), ApiError> {
    if let Some(ct) = request.header("Content-Type") {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(ApiError::new(
                415,
                format!("Content-Type {mime:?}: the body must be application/json"),
            ));
        }
    }
    Ok(())
}

/// Parses a publish body: `{"to": TARGET, "data": ...}`.
pub(crate) fn parse_publish(body: &[u8]) -> Result<Publish, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("body: not JSON ({e})")))?;
    parse_publish_value(v)
}

fn parse_publish_value(v: Value) -> Result<Publish, ApiError> {
    let Value::Object(mut obj) = v else {
        return Err(ApiError::bad("body: must be a JSON object"));
    };
    let to = match obj.remove("to") {
        None => return Err(ApiError::bad("to: missing")),
        Some(Value::Object(t)) => parse_to(&t)?,
        Some(_) => return Err(ApiError::bad("to: must be an object")),
    };
    let data = match obj.remove("data") {
        None => return Err(ApiError::bad("data: missing")),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    if let Some(k) = obj.keys().next() {
        return Err(ApiError::bad(format!("{k}: unknown field")));
    }
    Ok(Publish { to, data })
}

fn parse_to(t: &Map<String, Value>) -> Result<To, ApiError> {
    if t.len() != 1 {
        return Err(ApiError::bad(
            "to: must have exactly one of uid, uids, group, all, conn",
        ));
    }
    let (k, v) = t.iter().next().expect("one entry");
    let text = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::bad(format!("to.{k}: must be a non-empty string"))),
    };
    Ok(match k.as_str() {
        "uid" => To::Uid(text(v)?),
        "group" => To::Group(text(v)?),
        "conn" => To::Conn(
            text(v)?
                .parse()
                .map_err(|_| ApiError::bad("to.conn: not a connection id"))?,
        ),
        "all" if *v == Value::Bool(true) => To::All,
        "all" => return Err(ApiError::bad("to.all: must be true")),
        "uids" => {
            let Value::Array(a) = v else {
                return Err(ApiError::bad("to.uids: must be an array of strings"));
            };
            let mut uids = Vec::with_capacity(a.len());
            for u in a {
                match u {
                    Value::String(s) if !s.is_empty() => uids.push(s.clone()),
                    _ => return Err(ApiError::bad("to.uids: must be an array of strings")),
                }
            }
            uids.sort_unstable();
            uids.dedup();
            To::Uids(uids)
        }
        other => return Err(ApiError::bad(format!("to.{other}: unknown target"))),
    })
}

/// Hands `p` to the registry's send. Returns the connections it was handed
/// to (as this worker's registry lists them) and whether the send reached
/// every worker and node (false: too large for the bus, or the cluster
/// link down; see [`Ctx::send_to_all`]). A uid, uids, group or all target
/// this worker's replica lists no connection for is sent all the same:
/// each worker resolves it against its own connections, so a uid bound on
/// another worker a moment ago, whose bind has not reached this replica
/// yet, still gets it. A `conn` target needs the replica's entry to be
/// routed, and one it does not list is not sent.
pub(crate) fn deliver(ctx: &mut Ctx, p: &Publish) -> (usize, bool) {
    let msg = Message::from(p.data.clone());
    match &p.to {
        To::Uid(uid) => (ctx.conns_of_uid(uid).len(), ctx.send_to_uid(uid, msg)),
        To::Uids(uids) => {
            let n = uids.iter().map(|u| ctx.conns_of_uid(u).len()).sum();
            let refs: Vec<&str> = uids.iter().map(String::as_str).collect();
            (n, ctx.send_to_uids(&refs, msg))
        }
        To::Group(g) => (ctx.group_conn_count(g), ctx.send_to_group(g, msg, &[])),
        To::All => (ctx.connection_count(), ctx.send_to_all(msg, &[])),
        To::Conn(c) => {
            if ctx.is_online(*c) {
                (1, ctx.send(*c, msg))
            } else {
                (0, true)
            }
        }
    }
}

/// The connections named by a body's `uid` or `conn` (exactly one).
fn uid_or_conn(ctx: &Ctx, b: &Value) -> Result<Vec<ConnId>, ApiError> {
    match (b.get("uid"), b.get("conn")) {
        (Some(_), None) => Ok(ctx.conns_of_uid(string_field(b, "uid")?)),
        (None, Some(_)) => {
            let c: ConnId = string_field(b, "conn")?
                .parse()
                .map_err(|_| ApiError::bad("conn: not a connection id"))?;
            Ok(if ctx.is_online(c) {
                vec![c]
            } else {
                Vec::new()
            })
        }
        _ => Err(ApiError::bad("uid or conn: give exactly one")),
    }
}

/// `code` (default 1000; 1000 or 3000-4999, as an application may send)
/// and `reason` (default empty, at most 123 bytes) of `/api/close`.
fn close_code(b: &Value) -> Result<(u16, &str), ApiError> {
    let code = match b.get("code") {
        None => 1000,
        Some(v) => match v.as_u64() {
            Some(c) if c == 1000 || (3000..=4999).contains(&c) => c as u16,
            _ => return Err(ApiError::bad("code: must be 1000 or 3000-4999")),
        },
    };
    let reason = match b.get("reason") {
        None => "",
        Some(Value::String(s)) if s.len() <= 123 => s.as_str(),
        Some(_) => {
            return Err(ApiError::bad(
                "reason: must be a string of at most 123 bytes",
            ))
        }
    };
    Ok((code, reason))
}

/// `b[name]` as a non-empty string.
fn string_field<'a>(b: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    match b.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None => Err(ApiError::bad(format!("{name}: missing"))),
        Some(_) => Err(ApiError::bad(format!("{name}: must be a non-empty string"))),
    }
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not
/// UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_must_match_exactly() {
        assert!(authorized("s3cret", Some("Bearer s3cret")));
        assert!(authorized("s3cret", Some("bearer  s3cret ")));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer S3cret",
            "Basic s3cret",
            "s3cret",
            "",
        ] {
            assert!(!authorized("s3cret", Some(wrong)), "{wrong:?}");
        }
        assert!(!authorized("s3cret", None));
    }

    #[test]
    fn publish_bodies_parse_and_bad_ones_name_the_field() {
        let p = parse_publish(br#"{"to":{"uid":"42"},"data":"hi"}"#).unwrap();
        assert_eq!(
            p,
            Publish {
                to: To::Uid("42".into()),
                data: "hi".into()
            }
        );
        let p = parse_publish(br#"{"to":{"uids":["b","a","b"]},"data":{"x":1}}"#).unwrap();
        assert_eq!(p.to, To::Uids(vec!["a".into(), "b".into()]));
        assert_eq!(p.data, r#"{"x":1}"#);
        assert_eq!(
            parse_publish(br#"{"to":{"all":true},"data":1}"#)
                .unwrap()
                .to,
            To::All
        );
        let cases: [(&[u8], &str); 9] = [
            (b"nope", "body"),
            (b"[]", "body"),
            (br#"{"data":"x"}"#, "to: missing"),
            (br#"{"to":{"uid":"a"}}"#, "data: missing"),
            (br#"{"to":{"uid":""},"data":"x"}"#, "to.uid"),
            (
                br#"{"to":{"uid":"a","group":"g"},"data":"x"}"#,
                "exactly one",
            ),
            (br#"{"to":{"all":false},"data":"x"}"#, "to.all"),
            (br#"{"to":{"conn":"zz"},"data":"x"}"#, "to.conn"),
            (br#"{"to":{"uid":"a"},"data":"x","extra":1}"#, "extra"),
        ];
        for (body, field) in cases {
            let e = parse_publish(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(field), "{e} should name {field}");
        }
    }

    #[test]
    fn paths_route_and_names_are_decoded() {
        assert!(matches!(Route::of("/api/uid/a%20b"), Ok(Route::Uid(u)) if u == "a b"));
        assert!(matches!(Route::of("/api/group/r%2F1/join"), Ok(Route::Join(g)) if g == "r/1"));
        assert_eq!(Route::of("/api/nope").err().map(|e| e.status), Some(404));
        assert_eq!(Route::of("/api/uid/").err().map(|e| e.status), Some(400));
        assert_eq!(Route::of("/api/uid/%zz").err().map(|e| e.status), Some(400));
        assert_eq!(Route::of("/api/uid/%+1").err().map(|e| e.status), Some(400));
        assert!(owns("/api") && owns("/api/x") && !owns("/apix"));
    }

    #[test]
    fn close_codes_are_checked() {
        assert_eq!(close_code(&json!({})).unwrap(), (1000, ""));
        assert_eq!(
            close_code(&json!({"code": 4001, "reason": "bye"})).unwrap(),
            (4001, "bye")
        );
        assert!(close_code(&json!({"code": 1006})).is_err());
        assert!(close_code(&json!({"reason": "x".repeat(124)})).is_err());
    }
}
