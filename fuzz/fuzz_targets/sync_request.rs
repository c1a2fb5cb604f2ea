//! The sync server's request checks (`examples/sync/request.rs`, included
//! as is) on any text frame, under every kind of connection state.
//!
//! Checks: a frame that is not one JSON object no deeper than 64 levels is
//! `bad_json`, and only such a frame is; before `hello` only a `hello` is
//! accepted, after it never; a frame accepted without the rate limit is
//! `rate_limited` with it, and nothing accepted is over the limit; a `ref`
//! echoed back is a valid one and is the frame's; no error message grows
//! with the input; an accepted put or patch is within `max_value_bytes`.
#![no_main]

#[allow(dead_code)]
#[path = "../../examples/sync/request.rs"]
mod request;

use request::{ErrorCode, Gate, Refusal, Request};

/// Longer error messages would mean client text echoed without a bound.
const MAX_MESSAGE: usize = 1024;
/// The largest value the gates below accept.
const MAX_VALUE: usize = 32;

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
    let object = request::parse_object(text).is_ok();
    let held = |k: &str| k == "held";
    let mut accepted_unlimited = [false; 2];
    for bits in 0u8..8 {
        let gate = Gate {
            said_hello: bits & 1 != 0,
            max_value_bytes: MAX_VALUE,
            max_subscriptions: 2,
            subscribed: &held,
            subscription_count: usize::from(bits & 4 != 0),
            rate_limited: bits & 2 != 0,
        };
        match request::parse(text, &gate) {
            Ok(frame) => {
                assert!(object);
                assert!(!gate.rate_limited, "over the limit, yet accepted");
                if bits & 4 == 0 {
                    accepted_unlimited[usize::from(gate.said_hello)] = true;
                }
                assert_eq!(matches!(frame.request, Request::Hello(_)), !gate.said_hello);
                if let Some(reference) = &frame.reference {
                    assert!(reference.chars().count() <= request::MAX_REF_CHARS);
                }
                match &frame.request {
                    Request::Put(p) => assert!(request::compact_len(&p.value) <= MAX_VALUE),
                    Request::Patch(p) => assert!(request::compact_len(&p.merge) <= MAX_VALUE),
                    _ => {}
                }
            }
            Err(r) => {
                check_refusal(&r);
                assert_eq!(r.code == ErrorCode::BadJson, !object, "{r:?}");
                if r.code == ErrorCode::RateLimited {
                    assert!(gate.rate_limited);
                }
                // Codes only the store or the connection's own handling
                // give never come from the frame checks.
                assert!(
                    !matches!(
                        r.code,
                        ErrorCode::OpReused
                            | ErrorCode::NotFound
                            | ErrorCode::Unavailable
                            | ErrorCode::AuthFailed
                            | ErrorCode::Unsupported
                    ),
                    "{r:?}"
                );
                // What was accepted without the limit is refused with it,
                // as rate_limited and nothing else.
                if gate.rate_limited
                    && bits & 4 == 0
                    && accepted_unlimited[usize::from(gate.said_hello)]
                {
                    assert_eq!(r.code, ErrorCode::RateLimited, "{r:?}");
                }
            }
        }
    }
});
