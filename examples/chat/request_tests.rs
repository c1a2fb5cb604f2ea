//! Unit tests of request parsing and error precedence.

use super::*;

fn code(text: &str) -> ErrorCode {
    parse(text).expect_err(text).code
}

fn ok(text: &str) -> Frame {
    parse(text).unwrap_or_else(|r| panic!("{text}: {r:?}"))
}

fn admit(text: &str, logged_in: bool, rooms: &[&str], limited: bool) -> Result<(), ErrorCode> {
    let rooms: BTreeSet<String> = rooms.iter().map(|r| r.to_string()).collect();
    let gate = Gate {
        logged_in,
        rooms: &rooms,
        max_text_chars: 5,
        rate_limited: limited,
        busy: false,
    };
    ok(text).admit(&gate, |u| u == "bob").map_err(|r| r.code)
}

#[test]
fn every_command_parses() {
    assert_eq!(
        ok(r#"{"type":"login","name":"al","token":"t","ref":"1"}"#),
        Frame {
            reference: Some("1".into()),
            request: Request::Login(Login {
                name: "al".into(),
                token: Some("t".into())
            })
        }
    );
    assert_eq!(
        ok(r#"{"type":"join","room":"r"}"#).request,
        Request::Join(Join { room: "r".into() })
    );
    assert_eq!(
        ok(r#"{"type":"leave","room":"r"}"#).request,
        Request::Leave(Leave { room: "r".into() })
    );
    assert_eq!(
        ok(r#"{"type":"say","to":"bob","text":"hi"}"#).request,
        Request::Say(Say {
            target: Target::User("bob".into()),
            text: "hi".into()
        })
    );
    assert_eq!(
        ok(r#"{"type":"history","room":"r"}"#).request,
        Request::History(History {
            target: Target::Room("r".into()),
            before: None,
            limit: 50
        })
    );
    assert_eq!(
        ok(r#"{"type":"history","with":"bob","before":7,"limit":100}"#).request,
        Request::History(History {
            target: Target::User("bob".into()),
            before: Some(7),
            limit: 100
        })
    );
    assert_eq!(
        ok(r#"{"type":"users"}"#).request,
        Request::Users(Users { room: None })
    );
    assert_eq!(
        ok(r#"{"type":"users","room":"r","extra":[1]}"#).request,
        Request::Users(Users {
            room: Some("r".into())
        })
    );
}

#[test]
fn shape_errors() {
    for bad in ["", "nope", "[1]", "\"login\"", "3", "null", "{\"type\":"] {
        assert_eq!(code(bad), ErrorCode::BadJson, "{bad}");
    }
    for unknown in [
        r#"{}"#,
        r#"{"type":"shout"}"#,
        r#"{"type":7}"#,
        r#"{"type":null}"#,
    ] {
        assert_eq!(code(unknown), ErrorCode::UnknownType, "{unknown}");
    }
    for bad in [
        r#"{"type":"login"}"#,
        r#"{"type":"login","name":5}"#,
        r#"{"type":"login","name":"a","token":1}"#,
        r#"{"type":"join"}"#,
        r#"{"type":"join","room":["r"]}"#,
        r#"{"type":"leave","room":null}"#,
        r#"{"type":"say","room":"r"}"#,
        r#"{"type":"say","text":"x"}"#,
        r#"{"type":"say","room":"r","to":"b","text":"x"}"#,
        r#"{"type":"say","room":"r","text":5}"#,
        r#"{"type":"history"}"#,
        r#"{"type":"history","room":"r","with":"b"}"#,
        r#"{"type":"history","room":"r","limit":0}"#,
        r#"{"type":"history","room":"r","limit":101}"#,
        r#"{"type":"history","room":"r","limit":5.5}"#,
        r#"{"type":"history","room":"r","limit":"5"}"#,
        r#"{"type":"history","room":"r","before":0}"#,
        r#"{"type":"history","room":"r","before":-3}"#,
        r#"{"type":"history","room":"r","before":1e3}"#,
        r#"{"type":"users","room":1}"#,
        r#"{"type":"users","ref":1}"#,
        r#"{"type":"users","ref":null}"#,
    ] {
        assert_eq!(code(bad), ErrorCode::BadRequest, "{bad}");
    }
}

#[test]
fn refs_are_checked_and_echoed() {
    let long = "é".repeat(64);
    assert_eq!(
        ok(&format!(r#"{{"type":"users","ref":"{long}"}}"#)).reference,
        Some(long.clone())
    );
    let too_long = format!(r#"{{"type":"users","ref":"{long}x"}}"#);
    assert_eq!(code(&too_long), ErrorCode::BadRequest);
    let r = parse(r#"{"type":"join","ref":"r1"}"#).unwrap_err();
    assert_eq!(
        (r.code, r.reference.as_deref()),
        (ErrorCode::BadRequest, Some("r1"))
    );
    let r = parse(r#"{"type":"dance","ref":"r2"}"#).unwrap_err();
    assert_eq!(
        (r.code, r.reference.as_deref()),
        (ErrorCode::UnknownType, Some("r2"))
    );
    // unknown_type ranks before the bad ref's bad_request.
    let r = parse(r#"{"type":"dance","ref":9}"#).unwrap_err();
    assert_eq!((r.code, r.reference), (ErrorCode::UnknownType, None));
    let r = parse(r#"{"type":"users","ref":9}"#).unwrap_err();
    assert_eq!((r.code, r.reference), (ErrorCode::BadRequest, None));
}

#[test]
fn names_follow_the_rules() {
    assert!(valid_name("a"));
    assert!(valid_name("Al_ice-1.x"));
    assert!(valid_name(&"x".repeat(32)));
    for bad in ["", "a b", "é", "x/y", "a@b", "tab\t", &"x".repeat(33)] {
        assert!(!valid_name(bad), "{bad:?}");
    }
}

#[test]
fn admission_follows_table_order() {
    use ErrorCode::*;
    // not_logged_in beats bad_name, not_in_room, rate_limited.
    assert_eq!(
        admit(r#"{"type":"join","room":"b d"}"#, false, &[], true),
        Err(NotLoggedIn)
    );
    assert_eq!(
        admit(r#"{"type":"users"}"#, false, &[], false),
        Err(NotLoggedIn)
    );
    // already_logged_in beats bad_name.
    assert_eq!(
        admit(r#"{"type":"login","name":"b d"}"#, true, &[], true),
        Err(AlreadyLoggedIn)
    );
    assert_eq!(
        admit(r#"{"type":"login","name":"b d"}"#, false, &[], true),
        Err(BadName)
    );
    // bad_name beats not_in_room and too_long.
    assert_eq!(
        admit(
            r#"{"type":"say","room":"b d","text":"toolongtext"}"#,
            true,
            &[],
            false
        ),
        Err(BadName)
    );
    assert_eq!(
        admit(r#"{"type":"history","with":"a+b"}"#, true, &[], false),
        Err(BadName)
    );
    assert_eq!(
        admit(r#"{"type":"users","room":""}"#, true, &[], false),
        Err(BadName)
    );
    // not_in_room beats too_long and rate_limited.
    assert_eq!(
        admit(
            r#"{"type":"say","room":"r","text":"toolongtext"}"#,
            true,
            &[],
            true
        ),
        Err(NotInRoom)
    );
    assert_eq!(
        admit(r#"{"type":"history","room":"r"}"#, true, &["q"], false),
        Err(NotInRoom)
    );
    // unknown_user beats too_long.
    assert_eq!(
        admit(
            r#"{"type":"say","to":"carol","text":"toolongtext"}"#,
            true,
            &[],
            false
        ),
        Err(UnknownUser)
    );
    // too_long beats rate_limited; 5 characters are fine, bytes do not count.
    assert_eq!(
        admit(
            r#"{"type":"say","room":"r","text":"123456"}"#,
            true,
            &["r"],
            true
        ),
        Err(TooLong)
    );
    assert_eq!(
        admit(
            r#"{"type":"say","room":"r","text":"ééééé"}"#,
            true,
            &["r"],
            false
        ),
        Ok(())
    );
    assert_eq!(
        admit(r#"{"type":"say","to":"bob","text":"hi"}"#, true, &[], true),
        Err(RateLimited)
    );
    assert_eq!(
        admit(r#"{"type":"leave","room":"r"}"#, true, &[], false),
        Ok(())
    );
    assert_eq!(
        admit(r#"{"type":"users","room":"zz"}"#, true, &[], false),
        Ok(())
    );
    assert_eq!(
        admit(r#"{"type":"history","with":"zed"}"#, true, &[], false),
        Ok(())
    );
}

#[test]
fn refusals_from_admission_echo_the_ref() {
    let rooms = BTreeSet::new();
    let gate = Gate {
        logged_in: false,
        rooms: &rooms,
        max_text_chars: 10,
        rate_limited: false,
        busy: false,
    };
    let r = ok(r#"{"type":"users","ref":"q"}"#)
        .admit(&gate, |_| true)
        .unwrap_err();
    assert_eq!(r.reference.as_deref(), Some("q"));
}

#[test]
fn codes_are_in_table_order() {
    use ErrorCode::*;
    let table = [
        BadJson,
        UnknownType,
        BadRequest,
        NotLoggedIn,
        AlreadyLoggedIn,
        BadName,
        NotInRoom,
        UnknownUser,
        TooLong,
        RateLimited,
        AuthFailed,
        Unsupported,
        Busy,
        Unavailable,
    ];
    assert!(table.windows(2).all(|w| w[0] < w[1]));
    let names: Vec<_> = table.iter().map(|c| c.as_str()).collect();
    assert_eq!(names[0], "bad_json");
    assert_eq!(names[11], "unsupported");
    assert_eq!(names[12..], ["busy", "unavailable"]);
}

#[test]
fn a_full_database_queue_refuses_only_requests_that_need_it() {
    let rooms: BTreeSet<String> = ["r".to_string()].into();
    let gate = Gate {
        logged_in: true,
        rooms: &rooms,
        max_text_chars: 5,
        rate_limited: false,
        busy: true,
    };
    let verdict = |text: &str| {
        ok(text)
            .admit(&gate, |_| true)
            .map_err(|r| (r.code, r.reference))
    };
    for text in [
        r#"{"type":"join","room":"r","ref":"b"}"#,
        r#"{"type":"leave","room":"r","ref":"b"}"#,
        r#"{"type":"say","room":"r","text":"hi","ref":"b"}"#,
        r#"{"type":"history","with":"bob","ref":"b"}"#,
    ] {
        assert_eq!(
            verdict(text),
            Err((ErrorCode::Busy, Some("b".into()))),
            "{text}"
        );
    }
    assert_eq!(verdict(r#"{"type":"users"}"#), Ok(()));
    // Earlier errors still win.
    assert_eq!(
        verdict(r#"{"type":"say","room":"r","text":"too long"}"#).map_err(|e| e.0),
        Err(ErrorCode::TooLong)
    );
}
