//! What the example apps' config files and pages have in common. Each app
//! includes it with `#[path = "../common/app.rs"] mod app;`.
//!
//! A config file is read by [`load`]: the text is parsed by the app (its
//! own tables beside foreman's `[server]`), and an error names the file
//! and the key; [`in_range`] checks one number with its default; [`bad`]
//! is a config error. [`page`] writes the WebSocket path into a page.

use bytes::Bytes;
use foreman::Error;
use std::path::Path;

/// A config error with `message` (which names the key).
pub fn bad<T>(message: String) -> Result<T, Error> {
    Err(Error::Config(message))
}

/// `value`, or `default` when absent, if it is within `min..=max`; else an
/// error naming `key`.
pub fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    key: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, Error> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return bad(format!("{key} = {v}: must be {min} to {max}"));
    }
    Ok(v)
}

/// Reads the config file at `path` and parses it with `parse`, which gets
/// the text and the file's directory (relative paths in the file are
/// relative to it). Errors name the file.
pub fn load<C>(
    path: &Path,
    parse: impl FnOnce(&str, &Path) -> Result<C, Error>,
) -> Result<C, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|e| {
        let message = match e {
            Error::Config(m) => m,
            other => other.to_string(),
        };
        Error::Config(format!("{}: {message}", path.display()))
    })
}

/// `template` with the WebSocket path written into its script where it
/// says `"{{WS_PATH}}"`, as a JSON string (escaped so that it cannot end
/// the script element).
pub fn page(template: &str, ws_path: &str) -> Bytes {
    let literal = serde_json::Value::from(ws_path)
        .to_string()
        .replace('<', "\\u003c");
    Bytes::from(template.replace("\"{{WS_PATH}}\"", &literal))
}
