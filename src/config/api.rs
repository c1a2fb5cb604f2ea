//! The `[api]` table: the HTTP push API ([`crate::Config::api`]).

use crate::error::{Error, Result};
use serde::Deserialize;

/// The `[api]` table of a config file, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The bearer key; absent or empty: the API is off.
    pub key: Option<String>,
}

/// The HTTP push API, on: requests under `/api/` on the server's own port
/// (its `listen`) are answered by the library with `Authorization: Bearer
/// KEY`. The endpoints are in the README ("HTTP push API").
#[derive(Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// The key clients send. 16 to 256 visible ASCII characters.
    pub key: String,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A key must not end up in a log line.
        f.debug_struct("ApiConfig")
            .field("key", &"<hidden>")
            .finish()
    }
}

impl ApiConfig {
    /// Validates a table: `None` when the API is off (no key, or empty).
    pub fn from_section(s: &ApiSection) -> Result<Option<ApiConfig>> {
        let Some(key) = s.key.as_deref().filter(|k| !k.is_empty()) else {
            return Ok(None);
        };
        ApiConfig::new(key).map(Some)
    }

    /// An API with this key, checked: 16 to 256 visible ASCII characters
    /// (no spaces), so that it fits a header and is not guessed.
    pub fn new(key: &str) -> Result<ApiConfig> {
        if !(16..=256).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(
                "[api] key: must be 16 to 256 visible ASCII characters, without spaces".into(),
            ));
        }
        Ok(ApiConfig { key: key.into() })
    }
}
