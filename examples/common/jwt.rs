//! HS256 JSON Web Tokens (RFC 7519, compact JWS of RFC 7515), shared by the
//! example apps: each includes this file with
//! `#[path = "../common/jwt.rs"] mod jwt;` and checks `sub` itself. The
//! fuzz crate includes it the same way (`fuzz/fuzz_targets/jwt.rs`).
//!
//! [`verify`] accepts a token only when all of this holds:
//!
//! - three base64url parts without padding, the first two JSON objects in
//!   UTF-8;
//! - the header says `"alg": "HS256"`, exactly: `none`, `hs256`, `HS512`,
//!   RS256 and every other name are refused before the signature is looked
//!   at, and a header with `crit` (extensions we would have to understand)
//!   is refused too;
//! - the HMAC-SHA256 of `header.claims` under the secret matches the
//!   signature (compared in constant time);
//! - `exp` is present, a number, and `now < exp + LEEWAY_SECS`; a token
//!   without `exp` never passes;
//! - `nbf`, when present, is a number and `nbf < now + LEEWAY_SECS`.
//!
//! Why our own ~100 lines over `hmac`, `sha2` and `base64` rather than the
//! `jsonwebtoken` crate: its 10.x line (12.x needs Rust 1.88, above our
//! 1.85) has two crypto backends, `aws_lc_rs` (needs cmake) and
//! `rust_crypto`, which pulls in `rsa`, `p256`, `p384`, `ed25519-dalek` and
//! `rand` for algorithms we refuse (and `rsa` carries an unfixed
//! timing advisory, RUSTSEC-2023-0071); an HMAC-only setup means writing
//! and installing a process-wide `CryptoProvider` over these same crates.
//! What we verify is one algorithm and three claims, each with a unit test
//! below, and the function is fuzzed (`scripts/fuzz.sh 60 jwt`).

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Clock skew allowed between the issuer and us, in seconds, on `exp` and
/// `nbf`: a token is still good for this long after its `exp`.
pub const LEEWAY_SECS: u64 = 30;

/// base64url without padding, as RFC 7515 writes JWS parts.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or a header or claims that are not the
    /// JSON objects a JWT has.
    #[error("the token is malformed")]
    Malformed,
    /// The header names another algorithm than HS256 (`none` included).
    #[error("the token must be signed with HS256")]
    Algorithm,
    /// The header has `crit`: extensions we do not implement.
    #[error("the token needs extensions we do not support")]
    Critical,
    /// The signature does not match the secret.
    #[error("the token's signature is invalid")]
    Signature,
    /// There is no `exp` claim.
    #[error("the token has no expiry")]
    NoExpiry,
    /// `exp` (plus the leeway) has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` (less the leeway) is still to come.
    #[error("the token is not valid yet")]
    NotYetValid,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    crit: Option<serde_json::Value>,
}

/// The claims of a verified token that the apps use.
#[derive(Debug, Deserialize)]
pub struct Claims {
    /// Whom the token is for: the user name.
    pub sub: Option<String>,
    /// Expiry, in seconds since the Unix epoch (may be fractional).
    exp: Option<f64>,
    /// Not before, likewise.
    nbf: Option<f64>,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// Checks `token` against `secret` at `now_secs` (Unix seconds) and returns
/// its claims.
pub fn verify(secret: &[u8], token: &str, now_secs: u64) -> Result<Claims, JwtError> {
    let (signed, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let (header, claims) = signed.split_once('.').ok_or(JwtError::Malformed)?;
    if claims.contains('.') {
        return Err(JwtError::Malformed);
    }
    let decode = |part: &str| B64.decode(part).map_err(|_| JwtError::Malformed);
    // UTF-8 JSON (RFC 7519 7.2): serde_json does not check the UTF-8 of
    // members it skips, so the text is checked whole first.
    let json = |part: &str| String::from_utf8(decode(part)?).map_err(|_| JwtError::Malformed);
    let header: Header = serde_json::from_str(&json(header)?).map_err(|_| JwtError::Malformed)?;
    if header.alg != "HS256" {
        return Err(JwtError::Algorithm);
    }
    if header.crit.is_some() {
        return Err(JwtError::Critical);
    }
    let mut mac = mac(secret);
    mac.update(signed.as_bytes());
    mac.verify_slice(&decode(signature)?)
        .map_err(|_| JwtError::Signature)?;
    let claims: Claims = serde_json::from_str(&json(claims)?).map_err(|_| JwtError::Malformed)?;
    let now = now_secs as f64;
    let leeway = LEEWAY_SECS as f64;
    match claims.exp {
        None => return Err(JwtError::NoExpiry),
        Some(exp) if now >= exp + leeway => return Err(JwtError::Expired),
        Some(_) => {}
    }
    if claims.nbf.is_some_and(|nbf| nbf >= now + leeway) {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

/// Makes an HS256 token of `claims` (a JSON object) under `secret`, as an
/// application's backend would.
pub fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let input = format!("{header}.{}", B64.encode(claims.to_string()));
    let mut mac = mac(secret);
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const KEY: &[u8] = b"k";

    /// A token of these header and claims bytes, signed with `KEY`.
    fn raw(header: &[u8], claims: &[u8]) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let mut m = mac(KEY);
        m.update(input.as_bytes());
        format!("{input}.{}", B64.encode(m.finalize().into_bytes()))
    }

    /// A token with this header and claims, signed with `KEY`.
    fn with_header(header: &str, claims: &serde_json::Value) -> String {
        raw(header.as_bytes(), claims.to_string().as_bytes())
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "alice", "exp": NOW + 60})
    }

    #[test]
    fn a_good_token_passes_and_gives_its_subject() {
        let t = sign(KEY, &good_claims());
        assert_eq!(
            verify(KEY, &t, NOW).map(|c| c.sub),
            Ok(Some("alice".into()))
        );
    }

    #[test]
    fn the_jwt_io_example_verifies_up_to_its_missing_expiry() {
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                 eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
                 SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let secret = b"your-256-bit-secret";
        assert_eq!(verify(secret, t, NOW).err(), Some(JwtError::NoExpiry));
        assert_eq!(verify(b"other", t, NOW).err(), Some(JwtError::Signature));
    }

    #[test]
    fn alg_none_is_refused_with_or_without_a_signature() {
        let header = B64.encode(br#"{"alg":"none"}"#);
        let claims = B64.encode(good_claims().to_string());
        let unsigned = format!("{header}.{claims}.");
        assert_eq!(verify(KEY, &unsigned, NOW).err(), Some(JwtError::Algorithm));
        let two_parts = format!("{header}.{claims}");
        assert_eq!(
            verify(KEY, &two_parts, NOW).err(),
            Some(JwtError::Malformed)
        );
        let signed = with_header(r#"{"alg":"none"}"#, &good_claims());
        assert_eq!(verify(KEY, &signed, NOW).err(), Some(JwtError::Algorithm));
    }

    #[test]
    fn every_algorithm_but_hs256_is_refused() {
        for alg in [
            "HS384", "HS512", "RS256", "ES256", "EdDSA", "hs256", "HS256 ", "",
        ] {
            let t = with_header(&format!(r#"{{"alg":{alg:?}}}"#), &good_claims());
            assert_eq!(
                verify(KEY, &t, NOW).err(),
                Some(JwtError::Algorithm),
                "{alg}"
            );
        }
        let t = with_header(r#"{"alg":5}"#, &good_claims());
        assert_eq!(verify(KEY, &t, NOW).err(), Some(JwtError::Malformed));
        let t = with_header(r#"{"typ":"JWT"}"#, &good_claims());
        assert_eq!(verify(KEY, &t, NOW).err(), Some(JwtError::Malformed));
    }

    #[test]
    fn critical_extensions_are_refused() {
        let t = with_header(
            r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
            &good_claims(),
        );
        assert_eq!(verify(KEY, &t, NOW).err(), Some(JwtError::Critical));
    }

    #[test]
    fn a_wrong_secret_or_a_changed_part_breaks_the_signature() {
        let good = sign(KEY, &good_claims());
        assert_eq!(
            verify(b"other", &good, NOW).err(),
            Some(JwtError::Signature)
        );
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        parts[1] = B64.encode(json!({"sub": "mallory", "exp": NOW + 60}).to_string());
        assert_eq!(
            verify(KEY, &parts.join("."), NOW).err(),
            Some(JwtError::Signature)
        );
        let mut flipped = good.into_bytes();
        let i = flipped.len() - 10;
        flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("base64 is ASCII");
        assert_eq!(verify(KEY, &flipped, NOW).err(), Some(JwtError::Signature));
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let t = sign(KEY, &json!({"sub": "alice"}));
        assert_eq!(verify(KEY, &t, NOW).err(), Some(JwtError::NoExpiry));
        let t = sign(KEY, &json!({"sub": "alice", "exp": null}));
        assert_eq!(verify(KEY, &t, NOW).err(), Some(JwtError::NoExpiry));
        let t = sign(KEY, &json!({"sub": "alice", "exp": "soon"}));
        assert_eq!(verify(KEY, &t, NOW).err(), Some(JwtError::Malformed));
    }

    #[test]
    fn exp_has_a_leeway_of_thirty_seconds() {
        let at = |exp: u64| verify(KEY, &sign(KEY, &json!({"sub": "a", "exp": exp})), NOW);
        assert!(at(NOW + 1).is_ok());
        assert!(at(NOW).is_ok(), "within the leeway");
        assert!(at(NOW - LEEWAY_SECS + 1).is_ok(), "within the leeway");
        assert_eq!(at(NOW - LEEWAY_SECS).err(), Some(JwtError::Expired));
        assert_eq!(at(NOW - 3600).err(), Some(JwtError::Expired));
    }

    #[test]
    fn nbf_has_the_same_leeway() {
        let at = |nbf: u64| {
            let claims = json!({"sub": "a", "exp": NOW + 3600, "nbf": nbf});
            verify(KEY, &sign(KEY, &claims), NOW)
        };
        assert!(at(NOW).is_ok());
        assert!(at(NOW + LEEWAY_SECS - 1).is_ok(), "within the leeway");
        assert_eq!(at(NOW + LEEWAY_SECS).err(), Some(JwtError::NotYetValid));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = sign(KEY, &good_claims());
        let padded = {
            let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
            parts[2].push('=');
            parts.join(".")
        };
        let not_json = with_header(r#"{"alg":"HS256"}"#, &json!("just a string"));
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            "e30.e30.e30",
            &format!("{good}."),
            &padded,
            &not_json,
        ] {
            assert!(verify(KEY, junk, NOW).is_err(), "{junk}");
        }
        assert_eq!(verify(KEY, &not_json, NOW).err(), Some(JwtError::Malformed));
    }

    #[test]
    fn claims_that_are_not_utf8_are_refused() {
        // Found by the fuzzer: a byte that is not UTF-8 in a member the
        // verifier skips got past serde_json.
        let claims = b"{\"su)\":\"\x96lice\",\"exp\":1700000060}";
        let t = raw(br#"{"alg":"HS256","typ":"JWT"}"#, claims);
        assert_eq!(verify(KEY, &t, NOW).err(), Some(JwtError::Malformed));
        let header = b"{\"alg\":\"HS256\",\"x\":\"\xff\"}";
        let t = raw(header, good_claims().to_string().as_bytes());
        assert_eq!(verify(KEY, &t, NOW).err(), Some(JwtError::Malformed));
    }
}
