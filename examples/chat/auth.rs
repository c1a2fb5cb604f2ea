//! Login tokens: HS256 JSON Web Tokens whose `sub` is the user name.
//!
//! The application's own backend issues tokens; the chat server only verifies
//! them: the header must say `alg: HS256`, the signature must match the
//! configured secret, `sub` must equal the login name and `exp` (seconds since
//! the Unix epoch, required) must lie in the future.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// base64url, with or without padding on input, none on output.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token was refused (for logs and the error message; the client only
/// learns `auth_failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token while auth is on.
    #[error("a token is required")]
    Missing,
    /// Not three base64url parts of JSON.
    #[error("the token is malformed")]
    Malformed,
    /// The header names another algorithm.
    #[error("the token must be signed with HS256")]
    Algorithm,
    /// The signature does not match the secret.
    #[error("the token's signature is invalid")]
    Signature,
    /// `sub` is missing or another user.
    #[error("the token is for another user")]
    Subject,
    /// `exp` is missing or has passed.
    #[error("the token has expired")]
    Expired,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
}

/// Checks `token` for user `name` at `now_secs` (Unix seconds).
pub fn verify(
    secret: &[u8],
    token: Option<&str>,
    name: &str,
    now_secs: u64,
) -> Result<(), TokenError> {
    let token = token.ok_or(TokenError::Missing)?;
    let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, claims) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if claims.contains('.') {
        return Err(TokenError::Malformed);
    }
    let decode = |part: &str| B64.decode(part).map_err(|_| TokenError::Malformed);
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| TokenError::Signature)?;
    mac.update(signed.as_bytes());
    mac.verify_slice(&decode(signature)?)
        .map_err(|_| TokenError::Signature)?;
    let claims: Claims =
        serde_json::from_slice(&decode(claims)?).map_err(|_| TokenError::Malformed)?;
    if claims.sub.as_deref() != Some(name) {
        return Err(TokenError::Subject);
    }
    match claims.exp {
        Some(exp) if exp > now_secs as f64 => Ok(()),
        _ => Err(TokenError::Expired),
    }
}

/// Makes a token (for tests and for trying the server out).
pub fn sign(secret: &[u8], sub: &str, exp: u64) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64.encode(serde_json::json!({ "sub": sub, "exp": exp }).to_string());
    let input = format!("{header}.{claims}");
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return input,
    };
    mac.update(input.as_bytes());
    let signature = B64.encode(mac.finalize().into_bytes());
    format!("{input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn a_good_token_passes() {
        let t = sign(b"s3cret", "alice", NOW + 60);
        assert_eq!(verify(b"s3cret", Some(&t), "alice", NOW), Ok(()));
    }

    #[test]
    fn the_jwt_io_example_verifies() {
        // The example token of jwt.io; it has no `exp`, so it gets past the
        // signature check and stops at the expiry check.
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                 eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
                 SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let secret = b"your-256-bit-secret";
        assert_eq!(
            verify(secret, Some(t), "1234567890", NOW),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(b"other", Some(t), "1234567890", NOW),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        let good = sign(b"k", "alice", NOW + 60);
        assert_eq!(verify(b"k", None, "alice", NOW), Err(TokenError::Missing));
        assert_eq!(
            verify(b"other", Some(&good), "alice", NOW),
            Err(TokenError::Signature)
        );
        assert_eq!(
            verify(b"k", Some(&good), "bob", NOW),
            Err(TokenError::Subject)
        );
        let old = sign(b"k", "alice", NOW);
        assert_eq!(
            verify(b"k", Some(&old), "alice", NOW),
            Err(TokenError::Expired)
        );
        for junk in ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
            assert!(verify(b"k", Some(junk), "alice", NOW).is_err(), "{junk}");
        }
        // alg none, signature stripped.
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(br#"{"sub":"alice","exp":9999999999}"#)
        );
        assert_eq!(
            verify(b"k", Some(&none), "alice", NOW),
            Err(TokenError::Algorithm)
        );
        // a tampered payload.
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = B64.encode(br#"{"sub":"mallory","exp":9999999999}"#);
        parts[1] = &forged;
        assert_eq!(
            verify(b"k", Some(&parts.join(".")), "mallory", NOW),
            Err(TokenError::Signature)
        );
        // no exp.
        let header = B64.encode(br#"{"alg":"HS256"}"#);
        let claims = B64.encode(br#"{"sub":"alice"}"#);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        mac.update(format!("{header}.{claims}").as_bytes());
        let t = format!(
            "{header}.{claims}.{}",
            B64.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            verify(b"k", Some(&t), "alice", NOW),
            Err(TokenError::Expired)
        );
    }
}
