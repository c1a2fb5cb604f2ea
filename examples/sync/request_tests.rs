//! The checks of `request.rs`: every code a frame alone can earn, and the
//! order between them.

use super::*;
use serde_json::json;

fn gate(said_hello: bool) -> Gate<'static> {
    Gate {
        said_hello,
        max_value_bytes: 20,
        max_subscriptions: 3,
        subscribed: &|k| k == "held",
        subscription_count: 1,
        rate_limited: false,
    }
}

fn code(text: &str, gate: &Gate) -> ErrorCode {
    parse(text, gate).expect_err(text).code
}

#[test]
fn every_request_parses() {
    let g = gate(true);
    let ok = |t: &str| {
        parse(t, &g)
            .unwrap_or_else(|e| panic!("{t}: {e:?}"))
            .request
    };
    assert_eq!(
        ok(r#"{"type":"get","key":"a/b.c:d_e-f"}"#),
        Request::Get(Get {
            key: "a/b.c:d_e-f".into()
        })
    );
    assert!(matches!(
        ok(r#"{"type":"put","key":"k","base_version":0,"value":{"x":1},"op":"o","extra":1}"#),
        Request::Put(Put { base: 0, .. })
    ));
    assert!(matches!(
        ok(r#"{"type":"patch","key":"k","base_version":3,"merge":{"x":null},"op":"o"}"#),
        Request::Patch(Patch { base: 3, .. })
    ));
    assert!(matches!(
        ok(r#"{"type":"delete","key":"k","base_version":3,"op":"o"}"#),
        Request::Delete(_)
    ));
    assert_eq!(
        ok(r#"{"type":"subscribe","keys":["a","b"],"since":{"a":2,"zz":"x"}}"#),
        Request::Subscribe(Subscribe {
            keys: vec!["a".into(), "b".into()],
            since: vec![("a".into(), 2)],
        })
    );
    assert!(matches!(
        ok(r#"{"type":"unsubscribe","keys":["a"]}"#),
        Request::Unsubscribe(_)
    ));
    assert_eq!(
        ok(r#"{"type":"list"}"#),
        Request::List(List {
            prefix: String::new(),
            after: None,
            limit: 100
        })
    );
    let frame = parse(r#"{"type":"hello","client":"c1","ref":"r"}"#, &gate(false)).unwrap();
    assert_eq!(frame.reference.as_deref(), Some("r"));
}

#[test]
fn the_earlier_error_wins() {
    let mut g = gate(false);
    assert_eq!(code("[1]", &g), ErrorCode::BadJson);
    assert_eq!(code("{} {}", &g), ErrorCode::BadJson);
    assert_eq!(code(r#"{"key":"k"}"#, &g), ErrorCode::UnknownType);
    assert_eq!(code(r#"{"type":"gett"}"#, &g), ErrorCode::UnknownType);
    assert_eq!(
        code(r#"{"type":"get","key":"bad key"}"#, &g),
        ErrorCode::NotHello
    );
    g.said_hello = true;
    assert_eq!(
        code(r#"{"type":"hello","client":"c"}"#, &g),
        ErrorCode::AlreadyHello
    );
    g.rate_limited = true;
    // Frame errors come before the rate limit.
    assert_eq!(
        code(r#"{"type":"get","key":"bad key"}"#, &g),
        ErrorCode::BadKey
    );
    assert_eq!(code(r#"{"type":"get"}"#, &g), ErrorCode::BadRequest);
    assert_eq!(
        code(r#"{"type":"get","key":"k"}"#, &g),
        ErrorCode::RateLimited
    );
    g.rate_limited = false;
    // bad_request before bad_key, bad_key before too_large.
    assert_eq!(
        code(
            r#"{"type":"put","key":"bad key","base_version":-1,"value":1,"op":"o"}"#,
            &g
        ),
        ErrorCode::BadRequest
    );
    let big = format!(
        r#"{{"type":"put","key":"bad key","base_version":1,"value":"{}","op":"o"}}"#,
        "x".repeat(30)
    );
    assert_eq!(code(&big, &g), ErrorCode::BadKey);
    let big = big.replace("bad key", "k");
    assert_eq!(code(&big, &g), ErrorCode::TooLarge);
}

#[test]
fn fields_are_checked_never_clamped() {
    let g = gate(true);
    for text in [
        r#"{"type":"put","key":"k","base_version":1.5,"value":1,"op":"o"}"#,
        r#"{"type":"put","key":"k","base_version":"1","value":1,"op":"o"}"#,
        r#"{"type":"put","key":"k","base_version":1,"value":null,"op":"o"}"#,
        r#"{"type":"put","key":"k","base_version":1,"op":"o"}"#,
        r#"{"type":"put","key":"k","base_version":1,"value":1,"op":""}"#,
        r#"{"type":"patch","key":"k","base_version":1,"merge":[1],"op":"o"}"#,
        r#"{"type":"subscribe","keys":[]}"#,
        r#"{"type":"subscribe","keys":["a","a"]}"#,
        r#"{"type":"subscribe","keys":["a"],"since":{"a":-1}}"#,
        r#"{"type":"list","limit":0}"#,
        r#"{"type":"list","limit":1001}"#,
        r#"{"type":"get","key":"k","ref":7}"#,
    ] {
        assert_eq!(code(text, &g), ErrorCode::BadRequest, "{text}");
    }
    let long_ref = format!(r#"{{"type":"get","key":"k","ref":"{}"}}"#, "é".repeat(65));
    assert_eq!(code(&long_ref, &g), ErrorCode::BadRequest);
    let ok_ref = format!(r#"{{"type":"get","key":"k","ref":"{}"}}"#, "é".repeat(64));
    assert!(parse(&ok_ref, &g).is_ok());
    let op = format!(
        r#"{{"type":"delete","key":"k","base_version":1,"op":"{}"}}"#,
        "é".repeat(64)
    );
    assert!(parse(&op, &g).is_ok());
    for text in [
        r#"{"type":"list","prefix":"a b"}"#,
        r#"{"type":"list","after":""}"#,
        r#"{"type":"unsubscribe","keys":["ok","no!"]}"#,
    ] {
        assert_eq!(code(text, &g), ErrorCode::BadKey, "{text}");
    }
    assert!(parse(
        &format!(r#"{{"type":"get","key":"{}"}}"#, "k".repeat(200)),
        &g
    )
    .is_ok());
    let long = format!(r#"{{"type":"get","key":"{}"}}"#, "k".repeat(201));
    assert_eq!(code(&long, &g), ErrorCode::BadKey);
}

#[test]
fn hello_checks_the_client() {
    let g = gate(false);
    assert_eq!(
        code(r#"{"type":"hello","client":"a/b"}"#, &g),
        ErrorCode::BadRequest
    );
    assert_eq!(code(r#"{"type":"hello"}"#, &g), ErrorCode::BadRequest);
    assert_eq!(
        code(r#"{"type":"hello","client":"c","token":5}"#, &g),
        ErrorCode::BadRequest
    );
    assert!(parse(r#"{"type":"hello","client":"a.b_c:d-e"}"#, &g).is_ok());
}

#[test]
fn too_many_counts_only_new_keys() {
    let g = gate(true);
    // Holds 1 ("held") of 3.
    assert!(parse(r#"{"type":"subscribe","keys":["held","a","b"]}"#, &g).is_ok());
    assert_eq!(
        code(r#"{"type":"subscribe","keys":["a","b","c"]}"#, &g),
        ErrorCode::TooMany
    );
}

#[test]
fn depth_is_counted_from_the_frame() {
    let g = gate(true);
    let nest = |levels: usize| {
        // The frame is level 1; `value` holds `levels - 1` more arrays.
        let inner = format!("{}1{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        format!(r#"{{"type":"put","key":"k","base_version":0,"op":"o","value":{inner}}}"#)
    };
    let g = Gate {
        max_value_bytes: 1000,
        ..g
    };
    assert!(parse(&nest(64), &g).is_ok());
    assert_eq!(code(&nest(65), &g), ErrorCode::BadJson);
    assert_eq!(code(&nest(200), &g), ErrorCode::BadJson);
}

#[test]
fn sizes_are_compact_json() {
    assert_eq!(
        compact_len(&json!({"a": [1, 2], "é": "ü"})),
        r#"{"a":[1,2],"é":"ü"}"#.len()
    );
    assert_eq!(
        fingerprint("put", "k", 1, Some(&json!({"b": 1, "a": 2}))),
        fingerprint(
            "put",
            "k",
            1,
            Some(&serde_json::from_str(r#"{"a":2,"b":1}"#).unwrap())
        )
    );
}

#[test]
fn messages_never_grow_with_the_input() {
    let g = gate(true);
    let long = "x".repeat(10_000);
    for text in [
        format!(r#"{{"type":"{long}"}}"#),
        format!(r#"{{"type":"subscribe","keys":["{long}","{long}"]}}"#),
        format!(r#"{{"type":"subscribe","keys":["{long}"],"since":{{"{long}":-1}}}}"#),
    ] {
        let r = parse(&text, &g).expect_err("refused");
        assert!(
            r.message.len() < 200,
            "{} bytes: {:?}",
            r.message.len(),
            r.code
        );
    }
}

#[test]
fn a_queued_write_is_a_put_unless_its_type_says_otherwise() {
    let put = parse_write(r#"{"key":"a","base_version":2,"value":[1],"op":"o1"}"#, 100);
    assert!(
        matches!(&put, Ok(Request::Put(p)) if p.key == "a" && p.base == 2 && p.op == "o1"),
        "{put:?}"
    );
    let patch = parse_write(
        r#"{"type":"patch","key":"a","base_version":0,"merge":{"x":1},"op":"o2"}"#,
        100,
    );
    assert!(matches!(patch, Ok(Request::Patch(_))), "{patch:?}");
    let delete = parse_write(
        r#"{"type":"delete","key":"a","base_version":3,"op":"o3"}"#,
        100,
    );
    assert!(matches!(delete, Ok(Request::Delete(_))), "{delete:?}");
    for (text, want) in [
        ("[1]", ErrorCode::BadJson),
        ("{", ErrorCode::BadJson),
        (r#"{"type":"get","key":"a"}"#, ErrorCode::UnknownType),
        (r#"{"type":"hello","client":"c"}"#, ErrorCode::UnknownType),
        (r#"{"key":"a","value":1,"op":"o"}"#, ErrorCode::BadRequest),
        (
            r#"{"key":"a","base_version":0,"value":null,"op":"o"}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"key":"a b","base_version":0,"value":1,"op":"o"}"#,
            ErrorCode::BadKey,
        ),
    ] {
        let got = parse_write(text, 100).map(|_| ()).map_err(|r| r.code);
        assert_eq!(got, Err(want), "{text}");
    }
    let big = json!({"key": "a", "base_version": 0, "value": "x".repeat(200), "op": "o"});
    let got = parse_write(&big.to_string(), 100).map_err(|r| r.code);
    assert_eq!(got.err(), Some(ErrorCode::TooLarge));
}
