//! The checks of `request.rs`, each code and the order between them.

use super::*;

const MAX: usize = 100;

fn check(text: &str, role: Option<Role>) -> Result<Parsed, Refusal> {
    parse(text.as_bytes(), role, MAX)
}

fn code(text: &str, role: Option<Role>) -> Code {
    check(text, role).map(|_| ()).unwrap_err().code
}

const SUB: Option<Role> = Some(Role::Submitter);
const EXEC: Option<Role> = Some(Role::Executor);

#[test]
fn json_comes_first() {
    assert_eq!(code("", None), Code::BadJson);
    assert_eq!(code("[1]", None), Code::BadJson);
    assert_eq!(code("{\"type\":", None), Code::BadJson);
    assert_eq!(parse(b"\xff", None, MAX).unwrap_err().code, Code::BadJson);
    let deep = format!(
        "{{\"type\":\"ping\",\"x\":{}{}}}",
        "[".repeat(64),
        "]".repeat(64)
    );
    assert_eq!(code(&deep, None), Code::BadJson);
    let ok = format!(
        "{{\"type\":\"ping\",\"x\":{}{}}}",
        "[".repeat(63),
        "]".repeat(63)
    );
    assert!(check(&ok, None).is_ok());
}

#[test]
fn ref_then_type_then_hello_then_role() {
    let long = "r".repeat(65);
    let e = check(&format!("{{\"type\":\"nope\",\"ref\":\"{long}\"}}"), None).unwrap_err();
    assert_eq!((e.code, e.reference), (Code::BadRequest, None));
    let e = check("{\"type\":\"ping\",\"ref\":5}", None).unwrap_err();
    assert_eq!(e.code, Code::BadRequest);
    let e = check("{\"type\":\"nope\",\"ref\":\"é\"}", None).unwrap_err();
    assert_eq!(
        (e.code, e.reference.as_deref()),
        (Code::UnknownType, Some("é"))
    );
    assert_eq!(code("{\"ref\":\"a\"}", None), Code::UnknownType);
    assert_eq!(code("{\"type\":1}", None), Code::UnknownType);
    assert_eq!(code("{\"type\":\"submit\"}", None), Code::NotHello);
    assert_eq!(
        code(
            "{\"type\":\"hello\",\"role\":\"submitter\",\"name\":\"a\"}",
            SUB
        ),
        Code::BadRequest
    );
    assert_eq!(
        code("{\"type\":\"done\",\"job\":\"1\"}", SUB),
        Code::WrongRole
    );
    assert_eq!(code("{\"type\":\"submit\"}", EXEC), Code::WrongRole);
    assert!(matches!(
        check("{\"type\":\"ping\"}", None).unwrap().request,
        Request::Ping
    ));
    assert!(matches!(
        check("{\"type\":\"ping\"}", EXEC).unwrap().request,
        Request::Ping
    ));
    let r = "x".repeat(64);
    let p = check(&format!("{{\"type\":\"ping\",\"ref\":\"{r}\"}}"), None).unwrap();
    assert_eq!(p.reference.as_deref(), Some(r.as_str()));
}

#[test]
fn hello_fields() {
    let h = |s: &str| check(s, None);
    let p = h(
        r#"{"type":"hello","role":"executor","name":"w-1","queues":["a","b","a"],"capacity":16}"#,
    )
    .unwrap();
    let Request::Hello(hello) = p.request else {
        panic!()
    };
    assert_eq!(hello.queues, vec!["a", "b"]);
    assert_eq!(hello.capacity, 16);
    let p = h(r#"{"type":"hello","role":"executor","name":"w","queues":["a"]}"#).unwrap();
    let Request::Hello(hello) = p.request else {
        panic!()
    };
    assert_eq!(hello.capacity, 1);
    for bad in [
        r#"{"type":"hello","role":"boss","name":"a"}"#,
        r#"{"type":"hello","name":"a"}"#,
        r#"{"type":"hello","role":"submitter"}"#,
        r#"{"type":"hello","role":"submitter","name":"a b"}"#,
        r#"{"type":"hello","role":"submitter","name":"a","token":1}"#,
        r#"{"type":"hello","role":"executor","name":"a","queues":[]}"#,
        r#"{"type":"hello","role":"executor","name":"a","queues":"q"}"#,
        r#"{"type":"hello","role":"executor","name":"a","queues":["q"],"capacity":0}"#,
        r#"{"type":"hello","role":"executor","name":"a","queues":["q"],"capacity":1001}"#,
        r#"{"type":"hello","role":"executor","name":"a","queues":["q"],"capacity":2.0}"#,
        r#"{"type":"hello","role":"executor","name":"a","queues":[1]}"#,
    ] {
        assert_eq!(code(bad, None), Code::BadRequest, "{bad}");
    }
    assert_eq!(
        code(
            r#"{"type":"hello","role":"executor","name":"a","queues":["a b"]}"#,
            None
        ),
        Code::BadQueue
    );
    let many: Vec<String> = (0..101).map(|i| format!("\"q{i}\"")).collect();
    let text = format!(
        r#"{{"type":"hello","role":"executor","name":"a","queues":[{}]}}"#,
        many.join(",")
    );
    assert_eq!(code(&text, None), Code::BadRequest);
}

#[test]
fn submit_fields_and_bounds() {
    let s =
        |extra: &str| format!(r#"{{"type":"submit","queue":"q","payload":{{"a":"é"}}{extra}}}"#);
    let p = check(&s(""), SUB).unwrap();
    let Request::Submit(sub) = p.request else {
        panic!()
    };
    assert_eq!(
        (sub.priority, sub.delay_ms, sub.max_attempts, sub.timeout_ms),
        (5, 0, 3, None)
    );
    assert_eq!(sub.payload, r#"{"a":"é"}"#);
    for ok in [
        ",\"priority\":0",
        ",\"priority\":9",
        ",\"delay_ms\":2592000000",
        ",\"max_attempts\":100",
        ",\"timeout_ms\":100",
        ",\"timeout_ms\":86400000",
        ",\"unique\":\"k\"",
    ] {
        assert!(check(&s(ok), SUB).is_ok(), "{ok}");
    }
    for bad in [
        ",\"priority\":10",
        ",\"priority\":-1",
        ",\"priority\":5.0",
        ",\"priority\":\"5\"",
        ",\"delay_ms\":2592000001",
        ",\"max_attempts\":0",
        ",\"max_attempts\":101",
        ",\"timeout_ms\":99",
        ",\"timeout_ms\":86400001",
        ",\"unique\":\"\"",
        ",\"unique\":5",
    ] {
        assert_eq!(code(&s(bad), SUB), Code::BadRequest, "{bad}");
    }
    let long = "u".repeat(129);
    assert_eq!(
        code(&s(&format!(",\"unique\":\"{long}\"")), SUB),
        Code::BadRequest
    );
    let uni = "é".repeat(128);
    assert!(check(&s(&format!(",\"unique\":\"{uni}\"")), SUB).is_ok());
    assert_eq!(
        code(r#"{"type":"submit","queue":"q"}"#, SUB),
        Code::BadRequest
    );
    assert_eq!(
        code(r#"{"type":"submit","payload":1}"#, SUB),
        Code::BadRequest
    );
    assert_eq!(
        code(r#"{"type":"submit","queue":"a/b","payload":1}"#, SUB),
        Code::BadQueue
    );
    // bad_request before bad_queue before too_large.
    let big = format!("\"{}\"", "x".repeat(MAX));
    assert_eq!(
        code(
            &format!(r#"{{"type":"submit","queue":"a/b","payload":{big},"priority":99}}"#),
            SUB
        ),
        Code::BadRequest
    );
    assert_eq!(
        code(
            &format!(r#"{{"type":"submit","queue":"a/b","payload":{big}}}"#),
            SUB
        ),
        Code::BadQueue
    );
    assert_eq!(
        code(
            &format!(r#"{{"type":"submit","queue":"q","payload":{big}}}"#),
            SUB
        ),
        Code::TooLarge
    );
    // Exactly the limit as compact JSON passes; spaces do not count.
    let fits = format!("\"{}\"", "x".repeat(MAX - 2));
    assert!(check(
        &format!(r#"{{"type":"submit","queue":"q","payload":  {fits} }}"#),
        SUB
    )
    .is_ok());
}

#[test]
fn job_requests() {
    assert!(matches!(
        check(r#"{"type":"status","job":"1"}"#, SUB)
            .unwrap()
            .request,
        Request::Status { .. }
    ));
    assert_eq!(code(r#"{"type":"status"}"#, SUB), Code::BadRequest);
    assert_eq!(code(r#"{"type":"watch","job":7}"#, SUB), Code::BadRequest);
    assert_eq!(
        code(
            &format!(r#"{{"type":"cancel","job":"{}"}}"#, "1".repeat(65)),
            SUB
        ),
        Code::BadRequest
    );
    assert_eq!(code(r#"{"type":"stats"}"#, SUB), Code::BadRequest);
    assert_eq!(code(r#"{"type":"stats","queue":""}"#, SUB), Code::BadQueue);
    let Request::Done { result, .. } = check(r#"{"type":"done","job":"1"}"#, EXEC).unwrap().request
    else {
        panic!()
    };
    assert_eq!(result, "null");
    let Request::Fail { error, retry, .. } =
        check(r#"{"type":"fail","job":"1","error":{"e":1}}"#, EXEC)
            .unwrap()
            .request
    else {
        panic!()
    };
    assert_eq!((error.as_str(), retry), (r#"{"e":1}"#, true));
    assert_eq!(
        code(r#"{"type":"fail","job":"1","retry":1}"#, EXEC),
        Code::BadRequest
    );
    let big = format!("\"{}\"", "x".repeat(MAX));
    assert_eq!(
        code(
            &format!(r#"{{"type":"done","job":"1","result":{big}}}"#),
            EXEC
        ),
        Code::TooLarge
    );
    assert_eq!(
        code(
            &format!(r#"{{"type":"fail","job":"1","error":{big}}}"#),
            EXEC
        ),
        Code::TooLarge
    );
    assert!(check(r#"{"type":"extend","job":"1","extra":[1]}"#, EXEC).is_ok());
}
