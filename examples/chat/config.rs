//! `chat.toml`: foreman's `[server]` table plus the chat's own tables, parsed
//! into one [`ChatConfig`].
//!
//! Pipeline: file -> [`ChatFile`] (serde, unknown keys refused in every table,
//! every key optional) -> [`ChatConfig::from_file`] (defaults, validation). A
//! bad key or value stops start-up with a message naming it.

use crate::app::{self, bad, in_range};
pub use crate::rate::RateLimit;
use foreman::{
    AmqpExchange, AmqpSection, ApiSection, ClusterSection, Config, Error, ExchangeKind,
    ServerSection,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default largest frame and message for the chat (the protocol's default,
/// smaller than foreman's own).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 65_536;

/// The whole file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatFile {
    /// foreman's keys: listen address, worker count, WebSocket path, limits.
    #[serde(default)]
    pub server: ServerSection,
    /// Protocol limits and the tick.
    #[serde(default)]
    pub chat: ChatSection,
    /// The per-connection token bucket.
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    /// Where and how messages are stored.
    #[serde(default)]
    pub history: HistorySection,
    /// Login tokens.
    #[serde(default)]
    pub auth: AuthSection,
    /// Several chat servers as one through Redis: then history, ids and
    /// presence live there (see `store_redis.rs`), not in SQLite.
    pub cluster: Option<ClusterSection>,
    /// The HTTP push API for backends (`/api/`), on when it has a key.
    pub api: Option<ApiSection>,
    /// The RabbitMQ bridge, on when it has a `url`: pushes from the
    /// `queue`, and every stored message published to `chat.messages`.
    pub amqp: Option<AmqpSection>,
}

/// `[chat]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSection {
    /// Milliseconds between `tick` events; 0 turns them off.
    pub tick_interval_ms: Option<u64>,
    /// Longest `text` of a `say`, in Unicode scalar values.
    pub max_text_chars: Option<usize>,
    /// How many of a room's last messages come with `joined`.
    pub history_on_join: Option<usize>,
}

/// `[rate_limit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Frames per second a connection may send on average.
    pub per_second: Option<u32>,
    /// Frames a connection may send at once after a quiet spell.
    pub burst: Option<u32>,
    /// Rate-limited frames after which the connection is closed with 1008.
    pub close_after: Option<u32>,
}

/// `[history]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySection {
    /// The SQLite file; relative paths are relative to the config file.
    pub database: Option<String>,
    /// How long a writer waits for another worker's write lock.
    pub busy_timeout_ms: Option<u64>,
    /// Most requests committed in one transaction (group commit).
    pub max_batch: Option<usize>,
    /// Most requests waiting for the database per worker; more are refused.
    pub max_queue: Option<usize>,
}

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The HS256 secret; absent: auth is off.
    pub secret: Option<String>,
}

/// Everything the chat needs, validated, with defaults filled in.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// foreman's validated server config.
    pub server: Config,
    /// Interval of `tick` events; `None`: off.
    pub tick_interval: Option<Duration>,
    /// Longest `text`, in Unicode scalar values.
    pub max_text_chars: usize,
    /// Messages sent with `joined`.
    pub history_on_join: usize,
    /// The token bucket.
    pub rate_limit: RateLimit,
    /// The SQLite database file.
    pub database: PathBuf,
    /// SQLite busy timeout.
    pub busy_timeout: Duration,
    /// Group-commit batch size.
    pub max_batch: usize,
    /// Most jobs waiting for a worker's writer before requests that need the
    /// database are refused with `busy`.
    pub max_queue: usize,
    /// HS256 secret; `None`: auth off.
    pub auth_secret: Option<Vec<u8>>,
}

impl ChatConfig {
    /// Reads and validates `path`. Errors name the file and the key.
    pub fn load(path: &Path) -> Result<ChatConfig, Error> {
        app::load(path, ChatConfig::from_toml_str)
    }

    /// Parses TOML text; relative database paths are taken relative to `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<ChatConfig, Error> {
        let file: ChatFile = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        ChatConfig::from_file(file, base)
    }

    /// Fills defaults and validates.
    pub fn from_file(mut file: ChatFile, base: &Path) -> Result<ChatConfig, Error> {
        let s = &mut file.server;
        s.listen.get_or_insert_with(|| "127.0.0.1:8000".into());
        s.websocket_path.get_or_insert_with(|| "/ws".into());
        s.name.get_or_insert_with(|| "chat".into());
        s.max_frame_bytes.get_or_insert(DEFAULT_MAX_FRAME_BYTES);
        let frame = s.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES);
        s.max_message_bytes
            .get_or_insert(frame.max(DEFAULT_MAX_FRAME_BYTES));
        let mut server = Config::from_section(s)?;
        if let Some(cluster) = &file.cluster {
            server.set_cluster(cluster)?;
        }
        if let Some(api) = &file.api {
            server.set_api(api)?;
        }
        if let Some(amqp) = &file.amqp {
            server.set_amqp(amqp)?;
        }
        if let Some(amqp) = server.amqp.as_mut() {
            if !amqp
                .exchanges
                .iter()
                .any(|e| e.name == crate::events::EXCHANGE)
            {
                amqp.exchanges.push(AmqpExchange {
                    name: crate::events::EXCHANGE.into(),
                    kind: ExchangeKind::Topic,
                });
            }
        }

        let c = &file.chat;
        let tick = in_range(
            "chat.tick_interval_ms",
            c.tick_interval_ms,
            1000,
            0,
            86_400_000,
        )?;
        let max_text_chars = in_range("chat.max_text_chars", c.max_text_chars, 4000, 1, 1 << 20)?;
        let history_on_join = in_range("chat.history_on_join", c.history_on_join, 50, 0, 1000)?;

        let r = &file.rate_limit;
        let per_second = in_range("rate_limit.per_second", r.per_second, 20, 1, 1_000_000)?;
        let burst = in_range("rate_limit.burst", r.burst, 40, 1, 1_000_000)?;
        let close_after = in_range("rate_limit.close_after", r.close_after, 100, 1, 1_000_000)?;

        let h = &file.history;
        let database = match h.database.as_deref() {
            None => base.join("chat.db"),
            Some("") => return bad("history.database = \"\": give a file path".into()),
            Some(p) => base.join(p),
        };
        let busy = in_range(
            "history.busy_timeout_ms",
            h.busy_timeout_ms,
            5000,
            1,
            600_000,
        )?;
        let max_batch = in_range("history.max_batch", h.max_batch, 256, 1, 100_000)?;
        let max_queue = in_range("history.max_queue", h.max_queue, 4096, 1, 1_000_000)?;

        let auth_secret = match file.auth.secret {
            None => None,
            Some(s) if s.is_empty() => {
                return bad("auth.secret = \"\": remove the key to turn auth off".into())
            }
            Some(s) => Some(s.into_bytes()),
        };

        Ok(ChatConfig {
            server,
            tick_interval: (tick > 0).then(|| Duration::from_millis(tick)),
            max_text_chars,
            history_on_join,
            rate_limit: RateLimit {
                per_second,
                burst,
                close_after,
            },
            database,
            busy_timeout: Duration::from_millis(busy),
            max_batch,
            max_queue,
            auth_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ChatConfig, String> {
        ChatConfig::from_toml_str(text, Path::new("/srv")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen_url(), "websocket://127.0.0.1:8000");
        assert_eq!(c.server.websocket_path.as_deref(), Some("/ws"));
        assert_eq!(c.server.max_frame_bytes, 65_536);
        assert_eq!(c.tick_interval, Some(Duration::from_secs(1)));
        assert_eq!(c.max_text_chars, 4000);
        assert_eq!(c.history_on_join, 50);
        assert_eq!(
            c.rate_limit,
            RateLimit {
                per_second: 20,
                burst: 40,
                close_after: 100
            }
        );
        assert_eq!(c.database, PathBuf::from("/srv/chat.db"));
        assert_eq!(c.max_queue, 4096);
        assert!(c.auth_secret.is_none());
    }

    #[test]
    fn the_shipped_file_is_valid() {
        let text = include_str!("../../chat.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.server.listen_url(), "websocket://127.0.0.1:8000");
        assert_eq!(c.database, PathBuf::from("/srv/chat.db"));
        // The [cluster] table is there, commented out, with its keys and
        // the Redis durability advice.
        assert!(c.server.cluster.is_none());
        for key in [
            "# [cluster]",
            "# redis_url",
            "# node",
            "# presence_ttl_ms",
            "# prefix",
            "appendfsync always",
        ] {
            assert!(text.contains(key), "{key}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("[chat]\ntick_intervall_ms = 5", "tick_intervall_ms"),
            ("[server]\ncuont = 2", "cuont"),
            ("[rate_limit]\nper_minute = 2", "per_minute"),
            ("[history]\npath = \"x\"", "path"),
            ("[auth]\nkey = \"x\"", "key"),
            ("[chatt]\n", "chatt"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("[chat]\ntick_interval_ms = \"fast\"", "tick_interval_ms"),
            ("[chat]\nmax_text_chars = 0", "chat.max_text_chars"),
            ("[chat]\nhistory_on_join = -1", "history_on_join"),
            ("[rate_limit]\nburst = 0", "rate_limit.burst"),
            ("[history]\nmax_queue = 0", "history.max_queue"),
            ("[server]\ncount = 0", "server.count"),
            ("[server]\nlisten = \"nohost\"", "listen"),
            ("[history]\ndatabase = \"\"", "history.database"),
            ("[auth]\nsecret = \"\"", "auth.secret"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_cluster_table_is_read_and_checked() {
        assert!(parse("").unwrap().server.cluster.is_none());
        let c = parse(
            "[cluster]\nredis_url = \"redis://127.0.0.1:7000/2\"\nnode = \"n1\"\n\
             presence_ttl_ms = 900\nprefix = \"p\"",
        )
        .unwrap();
        let cluster = c.server.cluster.expect("cluster");
        assert_eq!((cluster.redis.port, cluster.redis.db), (7000, 2));
        assert_eq!(cluster.node, "n1");
        assert_eq!(cluster.presence_ttl, Duration::from_millis(900));
        assert_eq!(cluster.prefix, "p");
        for (text, key) in [
            ("[cluster]\nredis_url = \"http://x\"", "cluster.redis_url"),
            (
                "[cluster]\nredis_url = \"redis://h\"\nnode = \"a b\"",
                "cluster.node",
            ),
            ("[cluster]\nnode = \"a\"", "redis_url"),
            ("[cluster]\nredis = \"x\"", "redis"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn values_are_taken() {
        let c = parse(
            "[server]\ncount = 3\nmax_frame_bytes = 1000\n[chat]\ntick_interval_ms = 0\n\
             [history]\ndatabase = \"/tmp/x.db\"\n[auth]\nsecret = \"s3\"",
        )
        .unwrap();
        assert_eq!(c.server.count, 3);
        assert_eq!(c.server.max_frame_bytes, 1000);
        assert_eq!(c.tick_interval, None);
        assert_eq!(c.database, PathBuf::from("/tmp/x.db"));
        assert_eq!(c.auth_secret.as_deref(), Some(&b"s3"[..]));
    }
}
