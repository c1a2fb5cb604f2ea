//! Device and login tokens as an application backend issues them: HS256
//! JWTs, made here from their parts so the tests do not trust the servers'
//! own `token` subcommands to be right.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// An HS256 JWT for `sub`, signed with `secret`, expiring at `exp` (seconds
/// since the Unix epoch).
pub fn token(secret: &str, sub: &str, exp: u64) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64.encode(json!({"sub": sub, "exp": exp}).to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{header}.{claims}").as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{sig}")
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
