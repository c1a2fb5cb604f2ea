//! `tasks.toml`: foreman's `[server]` table (with the scheduler's own
//! `http_listen` in it), `[tasks]` and `[auth]`, parsed into one
//! [`TasksConfig`].
//!
//! Pipeline: file -> TOML table (`server.http_listen` taken out) ->
//! [`TasksFile`] (serde, unknown keys refused in every table) ->
//! [`TasksConfig::from_file`] (the protocol's defaults, validation). A bad
//! key or value stops start-up with a message naming it.

use crate::app::{self, bad, in_range};
use crate::types::Limits;
use foreman::{Config, Error, ServerSection};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The tables as written (`server.http_listen` already taken out).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksFile {
    /// foreman's keys: listen address, worker count, limits.
    #[serde(default)]
    pub server: ServerSection,
    /// The protocol's defaults and the database.
    #[serde(default)]
    pub tasks: TasksSection,
    /// Hello tokens.
    #[serde(default)]
    pub auth: AuthSection,
}

/// `[tasks]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksSection {
    /// Largest payload, result or error, as compact JSON.
    pub max_payload_bytes: Option<usize>,
    /// The lease of a job submitted without `timeout_ms`.
    pub default_timeout_ms: Option<u64>,
    /// The first backoff.
    pub retry_base_ms: Option<u64>,
    /// The longest backoff.
    pub retry_max_ms: Option<u64>,
    /// The SQLite file, relative to the config file, or `:memory:`.
    pub database: Option<String>,
    /// How long a finished job is kept.
    pub result_retention_ms: Option<u64>,
}

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The HS256 secret; absent: auth is off.
    pub secret: Option<String>,
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A file (WAL, `synchronous=FULL`).
    File(PathBuf),
    /// `:memory:`: nothing survives the brain's process.
    Memory,
}

/// Everything the scheduler needs, validated, with defaults filled in.
#[derive(Debug, Clone)]
pub struct TasksConfig {
    /// foreman's validated server config; the page's listener, when on, is
    /// its second listener (index 1).
    pub server: Config,
    /// The page's address, if on.
    pub http_listen: Option<String>,
    /// Largest payload, result or error, as compact JSON.
    pub max_payload_bytes: usize,
    /// The job table's durations.
    pub limits: Limits,
    /// The store.
    pub database: Database,
    /// HS256 secret for `hello` tokens; `None`: auth off.
    pub auth_secret: Option<Vec<u8>>,
}

/// Most bytes a frame may have beyond the largest payload: the rest of the
/// request around it.
const FRAME_SLACK: usize = 65_536;

impl TasksConfig {
    /// Reads and validates `path`. Errors name the file and the key.
    pub fn load(path: &Path) -> Result<TasksConfig, Error> {
        app::load(path, TasksConfig::from_toml_str)
    }

    /// Parses TOML text; a relative `database` is taken relative to `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<TasksConfig, Error> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let http_listen = match table.get_mut("server").and_then(|s| s.as_table_mut()) {
            Some(server) => match server.remove("http_listen") {
                None => Some("127.0.0.1:8101".to_string()),
                Some(toml::Value::String(s)) if s.is_empty() => None,
                Some(toml::Value::String(s)) => Some(s),
                Some(other) => {
                    return bad(format!(
                        "server.http_listen = {other}: must be a string \"host:port\" (\"\" for no page)"
                    ))
                }
            },
            None => Some("127.0.0.1:8101".to_string()),
        };
        let file: TasksFile = table
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.to_string()))?;
        TasksConfig::from_file(file, http_listen, base)
    }

    /// Fills defaults and validates.
    pub fn from_file(
        mut file: TasksFile,
        http_listen: Option<String>,
        base: &Path,
    ) -> Result<TasksConfig, Error> {
        let t = &file.tasks;
        let max_payload_bytes = in_range(
            "tasks.max_payload_bytes",
            t.max_payload_bytes,
            1_048_576,
            1,
            256 << 20,
        )?;
        let default_timeout_ms = in_range(
            "tasks.default_timeout_ms",
            t.default_timeout_ms,
            30_000,
            100,
            86_400_000,
        )?;
        let retry_base_ms = in_range("tasks.retry_base_ms", t.retry_base_ms, 1000, 1, 86_400_000)?;
        let retry_max_ms = in_range(
            "tasks.retry_max_ms",
            t.retry_max_ms,
            300_000.max(retry_base_ms),
            retry_base_ms,
            30 * 86_400_000,
        )?;
        let result_retention_ms = in_range(
            "tasks.result_retention_ms",
            t.result_retention_ms,
            86_400_000,
            1,
            3650 * 86_400_000,
        )?;
        let database = match t.database.as_deref() {
            None => Database::File(base.join("tasks.db")),
            Some("") => {
                return bad("tasks.database = \"\": give a file path or \":memory:\"".into())
            }
            Some(":memory:") => Database::Memory,
            Some(p) => Database::File(base.join(p)),
        };

        let s = &mut file.server;
        let least_frame = max_payload_bytes + FRAME_SLACK;
        let max_frame = s.max_frame_bytes.unwrap_or(2_097_152.max(least_frame));
        if max_frame < least_frame {
            return bad(format!(
                "server.max_frame_bytes = {max_frame}: must be at least tasks.max_payload_bytes + {FRAME_SLACK} ({least_frame})"
            ));
        }
        s.max_frame_bytes = Some(max_frame);
        s.max_message_bytes.get_or_insert(max_frame);
        s.listen
            .get_or_insert_with(|| "frame://127.0.0.1:8100".into());
        if s.listen.as_deref().is_some_and(|l| !l.contains("://")) {
            s.listen = s.listen.take().map(|l| format!("frame://{l}"));
        }
        s.count.get_or_insert(2);
        s.name.get_or_insert_with(|| "tasks".into());
        s.websocket_path.get_or_insert_with(|| "/live".into());
        let mut server = Config::from_section(s)?;
        if server.protocol != foreman::Protocol::Frame {
            return bad(format!(
                "server.listen = {:?}: the task protocol is frame:// only",
                server.listen_url()
            ));
        }
        if let Some(addr) = &http_listen {
            if addr.contains("://") {
                return bad(format!(
                    "server.http_listen = {addr:?}: give host:port (it is always HTTP)"
                ));
            }
            server
                .also_listen(&format!("websocket://{addr}"))
                .map_err(|e| Error::Config(format!("server.http_listen: {e}")))?;
        }

        let auth_secret = match file.auth.secret {
            None => None,
            Some(s) if s.is_empty() => {
                return bad("auth.secret = \"\": remove the key to turn auth off".into())
            }
            Some(s) => Some(s.into_bytes()),
        };

        Ok(TasksConfig {
            server,
            http_listen,
            max_payload_bytes,
            limits: Limits {
                default_timeout_ms,
                retry_base_ms,
                retry_max_ms,
                result_retention_ms,
            },
            database,
            auth_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TasksConfig, String> {
        TasksConfig::from_toml_str(text, Path::new("/srv")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_protocols() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen_url(), "frame://127.0.0.1:8100");
        assert_eq!(c.server.count, 2);
        assert_eq!(c.server.max_frame_bytes, 2_097_152);
        assert_eq!(c.http_listen.as_deref(), Some("127.0.0.1:8101"));
        assert_eq!(c.max_payload_bytes, 1_048_576);
        assert_eq!(c.limits.default_timeout_ms, 30_000);
        assert_eq!(
            (c.limits.retry_base_ms, c.limits.retry_max_ms),
            (1000, 300_000)
        );
        assert_eq!(c.limits.result_retention_ms, 86_400_000);
        assert_eq!(c.database, Database::File(PathBuf::from("/srv/tasks.db")));
        assert!(c.auth_secret.is_none());
    }

    #[test]
    fn the_shipped_file_is_the_defaults() {
        let text = include_str!("../../tasks.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.server.listen_url(), "frame://127.0.0.1:8100");
        assert_eq!(c.http_listen.as_deref(), Some("127.0.0.1:8101"));
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let e = parse("[tasks]\nretry_base = 5\n").unwrap_err();
        assert!(e.contains("retry_base"), "{e}");
        let e = parse("[server]\nhttp_listen = 5\n").unwrap_err();
        assert!(e.contains("server.http_listen"), "{e}");
        let e = parse("[tasks]\nmax_payload_bytes = 0\n").unwrap_err();
        assert!(e.contains("tasks.max_payload_bytes"), "{e}");
        let e = parse("[server]\nmax_frame_bytes = 1000\n").unwrap_err();
        assert!(e.contains("server.max_frame_bytes"), "{e}");
        let e = parse("[server]\nlisten = \"websocket://127.0.0.1:1\"\n").unwrap_err();
        assert!(e.contains("frame:// only"), "{e}");
        let e = parse("[tasks]\nretry_base_ms = 10\nretry_max_ms = 5\n").unwrap_err();
        assert!(e.contains("tasks.retry_max_ms"), "{e}");
        let e = parse("[auth]\nsecret = \"\"\n").unwrap_err();
        assert!(e.contains("auth.secret"), "{e}");
    }

    #[test]
    fn the_page_can_be_off_and_memory_is_a_database() {
        let c = parse("[server]\nhttp_listen = \"\"\n[tasks]\ndatabase = \":memory:\"\n").unwrap();
        assert!(c.http_listen.is_none());
        assert_eq!(c.database, Database::Memory);
        assert!(c.server.also_listen.is_empty());
    }
}
