//! The chat's request parser (`examples/chat/request.rs`, included as is)
//! on any text frame, then its admission checks under every kind of gate.
//!
//! Checks: `parse` refuses only with the shape codes (`bad_json`,
//! `unknown_type`, `bad_request`) and `bad_json` only for what is not a
//! JSON object; `admit` refuses only with the codes after those, always
//! when the frame is over the rate limit; a `ref` echoed back is a valid
//! one; no error message grows with the input.
#![no_main]

#[allow(dead_code)]
#[path = "../../examples/chat/request.rs"]
mod request;

use request::{ErrorCode, Gate, Refusal};
use std::collections::BTreeSet;

/// Longer error messages would mean client text echoed without a bound.
const MAX_MESSAGE: usize = 1024;

fn check_refusal(r: &Refusal) {
    assert!(r.message.len() <= MAX_MESSAGE, "{} bytes", r.message.len());
    if let Some(reference) = &r.reference {
        assert!(reference.chars().count() <= request::MAX_REF_CHARS);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The worker hands only text frames, which are UTF-8, to `parse`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = match request::parse(text) {
        Ok(frame) => frame,
        Err(r) => {
            check_refusal(&r);
            assert!(r.code <= ErrorCode::BadRequest, "{r:?}");
            let object =
                serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object());
            assert_eq!(r.code == ErrorCode::BadJson, !object, "{r:?}");
            return;
        }
    };
    if let Some(reference) = &frame.reference {
        assert!(reference.chars().count() <= request::MAX_REF_CHARS);
    }
    let joined: BTreeSet<String> = ["lobby", "r"].iter().map(|s| s.to_string()).collect();
    let empty = BTreeSet::new();
    for bits in 0u8..16 {
        let gate = Gate {
            logged_in: bits & 1 != 0,
            rooms: if bits & 2 != 0 { &joined } else { &empty },
            max_text_chars: 16,
            rate_limited: bits & 4 != 0,
            busy: bits & 8 != 0,
        };
        match frame.admit(&gate, |user| user == "bob") {
            Ok(()) => assert!(!gate.rate_limited, "over the limit, yet admitted"),
            Err(r) => {
                check_refusal(&r);
                // Refusals of a parsed frame: the rules of the errors
                // table up to the rate limit, and `busy` (protocol 1.1);
                // never a code that only the connection's own state gives.
                assert!(r.code > ErrorCode::BadRequest, "{r:?}");
                assert!(
                    r.code < ErrorCode::AuthFailed || r.code == ErrorCode::Busy,
                    "{r:?}"
                );
                assert_eq!(r.reference, frame.reference);
            }
        }
    }
});
