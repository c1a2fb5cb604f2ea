//! The shared JWT verifier (`examples/common/jwt.rs`, included as is).
//!
//! The input is used twice. As a token string it must never panic the
//! verifier, and cannot pass (the fuzzer does not know the secret). Split at
//! its first `\n` into a header and claims that are then signed with the
//! secret, it reaches the checks past the signature; whatever passes must
//! have `"alg": "HS256"`, no `crit`, and a numeric `exp` no more than the
//! leeway in the past, by an independent reading of the JSON.
#![no_main]

#[allow(dead_code)]
#[path = "../../examples/common/jwt.rs"]
mod jwt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-secret";
const NOW: u64 = 1_700_000_000;

/// `header` and `claims` as they are, base64url'd and signed with `SECRET`.
fn signed(header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        assert!(jwt::verify(SECRET, token, NOW).is_err(), "forged: {token}");
    }
    let (header, claims) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let token = signed(header, claims);
    let Ok(got) = jwt::verify(SECRET, &token, NOW) else {
        return;
    };
    let header: Value = serde_json::from_slice(header).expect("accepted a header that is not JSON");
    assert_eq!(header["alg"], "HS256", "{header}");
    assert!(header.get("crit").is_none(), "{header}");
    let claims: Value = serde_json::from_slice(claims).expect("accepted claims that are not JSON");
    let exp = claims["exp"]
        .as_f64()
        .expect("accepted without a numeric exp");
    assert!(
        exp + jwt::LEEWAY_SECS as f64 > NOW as f64,
        "expired at {exp}"
    );
    assert_eq!(got.sub.as_deref(), claims["sub"].as_str());
});
