//! Login tokens: HS256 JSON Web Tokens whose `sub` is the name a client
//! logs in with (the chat's user name, the sync server's `client`). Shared by
//! the example apps: `#[path = "../common/auth.rs"] mod auth;` beside `jwt`.
//!
//! The application's own backend issues tokens; the servers only verify
//! them with the shared verifier (`examples/common/jwt.rs`, see [`crate::jwt`]
//! for every rule): `alg` must be HS256, the signature must match the
//! configured secret, `exp` is required and may have passed by at most
//! [`crate::jwt::LEEWAY_SECS`]; here, `sub` must also equal the name.

use crate::jwt::{self, JwtError};

/// Why a token was refused (for logs and the error message; the client only
/// learns `auth_failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token while auth is on.
    #[error("a token is required")]
    Missing,
    /// The token itself is bad: malformed, another algorithm, a wrong
    /// signature, no or a past `exp`.
    #[error(transparent)]
    Token(#[from] JwtError),
    /// `sub` is missing or another name.
    #[error("the token is for another name")]
    Subject,
}

/// Checks `token` for `name` at `now_secs` (Unix seconds).
pub fn verify(
    secret: &[u8],
    token: Option<&str>,
    name: &str,
    now_secs: u64,
) -> Result<(), TokenError> {
    let claims = jwt::verify(secret, token.ok_or(TokenError::Missing)?, now_secs)?;
    if claims.sub.as_deref() != Some(name) {
        return Err(TokenError::Subject);
    }
    Ok(())
}

/// Checks `token` for `name` now (the system clock).
pub fn verify_now(secret: &[u8], token: Option<&str>, name: &str) -> Result<(), TokenError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    verify(secret, token, name, now)
}

/// Makes a token for `sub` expiring at `exp` (for tests and for trying the
/// server out).
pub fn sign(secret: &[u8], sub: &str, exp: u64) -> String {
    jwt::sign(secret, &serde_json::json!({ "sub": sub, "exp": exp }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn a_good_token_for_the_name_passes() {
        let t = sign(b"s3cret", "alice", NOW + 60);
        assert_eq!(verify(b"s3cret", Some(&t), "alice", NOW), Ok(()));
    }

    #[test]
    fn a_missing_token_or_another_name_is_refused() {
        let good = sign(b"k", "alice", NOW + 60);
        assert_eq!(verify(b"k", None, "alice", NOW), Err(TokenError::Missing));
        assert_eq!(
            verify(b"k", Some(&good), "bob", NOW),
            Err(TokenError::Subject)
        );
        let nobody = jwt::sign(b"k", &serde_json::json!({ "exp": NOW + 60 }));
        assert_eq!(
            verify(b"k", Some(&nobody), "alice", NOW),
            Err(TokenError::Subject)
        );
    }

    #[test]
    fn the_tokens_own_faults_come_through() {
        let old = sign(b"k", "alice", NOW - 3600);
        assert_eq!(
            verify(b"k", Some(&old), "alice", NOW),
            Err(TokenError::Token(JwtError::Expired))
        );
        let good = sign(b"k", "alice", NOW + 60);
        assert_eq!(
            verify(b"other", Some(&good), "alice", NOW),
            Err(TokenError::Token(JwtError::Signature))
        );
    }
}
