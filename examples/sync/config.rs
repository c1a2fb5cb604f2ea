//! `sync.toml`: foreman's `[server]` table plus the sync server's own
//! tables, parsed into one [`SyncConfig`].
//!
//! Pipeline: file -> [`SyncFile`] (serde, unknown keys refused in every
//! table, every key optional) -> [`SyncConfig::from_file`] (defaults of
//! `shared/sync-protocol.md`, validation). A bad key or value stops start-up
//! with a message naming it.

use crate::app::{self, bad, in_range};
use crate::rate::RateLimit;
use foreman::{
    AmqpSection, ApiSection, ClusterSection, Config, Error, ExchangeSection, ServerSection,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFile {
    /// foreman's keys: listen address, worker count, limits.
    #[serde(default)]
    pub server: ServerSection,
    /// The protocol's limits and the database.
    #[serde(default)]
    pub sync: SyncSection,
    /// Device tokens.
    #[serde(default)]
    pub auth: AuthSection,
    /// Several sync servers as one through Redis: then documents, versions
    /// and op memory live there (see `store_redis.rs`), not in SQLite.
    pub cluster: Option<ClusterSection>,
    /// The HTTP push API for backends (`/api/`), on when it has a key.
    pub api: Option<ApiSection>,
    /// The RabbitMQ bridge, on when it has a `url`: writes from
    /// `sync.updates_queue`, every change to `sync.changes_exchange`.
    pub amqp: Option<AmqpSection>,
}

/// `[sync]` as written: the protocol's defaults table, and the store's own
/// knobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// Largest value or merge, as compact JSON.
    pub max_value_bytes: Option<usize>,
    /// Largest WebSocket frame (1009 past it) and HTTP body (413 past it).
    pub max_frame_bytes: Option<usize>,
    /// Versions per key replayable by `since`.
    pub keep_versions: Option<u64>,
    /// How long an `ack` or `conflict` is remembered by (client, op).
    pub op_ttl_ms: Option<u64>,
    /// Keys one connection may subscribe to.
    pub max_subscriptions: Option<usize>,
    /// Requests a second per connection after `hello`.
    pub rate_per_sec: Option<u32>,
    /// Requests at once after a quiet spell.
    pub rate_burst: Option<u32>,
    /// Refused requests in a row after which the connection is closed.
    pub rate_close_after: Option<u32>,
    /// The history database; relative to the config file.
    pub db_path: Option<String>,
    /// Bearer key for `/doc/`; absent: HTTP needs none.
    pub api_key: Option<String>,
    /// How long a writer waits for another worker's write lock.
    pub busy_timeout_ms: Option<u64>,
    /// Most requests in one transaction (group commit).
    pub max_batch: Option<usize>,
    /// Most requests waiting for the store per worker.
    pub max_queue: Option<usize>,
    /// With `[amqp]`: the durable queue of writes (`put`, `patch`,
    /// `delete` as JSON), answered on each message's `reply_to`.
    pub updates_queue: Option<String>,
    /// With `[amqp]`: the durable topic exchange every change goes to,
    /// routing key = key.
    pub changes_exchange: Option<String>,
}

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The HS256 secret; absent: auth is off.
    pub secret: Option<String>,
}

/// Everything the sync server needs, validated, with defaults filled in.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// foreman's validated server config (its frame, message and HTTP body
    /// limits are `max_frame_bytes`).
    pub server: Config,
    /// Largest value or merge, as compact JSON, sent or merged.
    pub max_value_bytes: usize,
    /// Versions per key kept for `since`.
    pub keep_versions: u64,
    /// How long op memory lasts.
    pub op_ttl: Duration,
    /// Keys per connection.
    pub max_subscriptions: usize,
    /// The per-connection token bucket.
    pub rate_limit: RateLimit,
    /// The SQLite database file.
    pub db_path: PathBuf,
    /// Bearer key for `/doc/`.
    pub api_key: Option<String>,
    /// HS256 secret for `hello` tokens; `None`: auth off.
    pub auth_secret: Option<Vec<u8>>,
    /// SQLite busy timeout.
    pub busy_timeout: Duration,
    /// Group-commit batch size.
    pub max_batch: usize,
    /// Most jobs waiting for a worker's store before requests are refused
    /// with `unavailable`.
    pub max_queue: usize,
    /// The queue of writes over RabbitMQ (consumed with `[amqp]`).
    pub updates_queue: String,
    /// The exchange of changes (published to with `[amqp]`, from SQLite;
    /// not with `[cluster]`).
    pub changes_exchange: String,
}

impl SyncConfig {
    /// Reads and validates `path`. Errors name the file and the key.
    pub fn load(path: &Path) -> Result<SyncConfig, Error> {
        app::load(path, SyncConfig::from_toml_str)
    }

    /// Parses TOML text; a relative `db_path` is taken relative to `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<SyncConfig, Error> {
        let file: SyncFile = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        SyncConfig::from_file(file, base)
    }

    /// Fills defaults and validates.
    pub fn from_file(mut file: SyncFile, base: &Path) -> Result<SyncConfig, Error> {
        let c = &file.sync;
        let max_frame_bytes = in_range(
            "sync.max_frame_bytes",
            c.max_frame_bytes,
            262_144,
            1024,
            64 << 20,
        )?;
        let max_value_bytes = in_range(
            "sync.max_value_bytes",
            c.max_value_bytes,
            65_536,
            1,
            max_frame_bytes,
        )?;
        let keep_versions = in_range("sync.keep_versions", c.keep_versions, 100, 1, 1_000_000)?;
        let op_ttl = in_range(
            "sync.op_ttl_ms",
            c.op_ttl_ms,
            86_400_000,
            1000,
            30 * 86_400_000,
        )?;
        let max_subscriptions = in_range(
            "sync.max_subscriptions",
            c.max_subscriptions,
            1000,
            1,
            1_000_000,
        )?;
        let per_second = in_range("sync.rate_per_sec", c.rate_per_sec, 50, 1, 1_000_000)?;
        let burst = in_range("sync.rate_burst", c.rate_burst, 100, 1, 1_000_000)?;
        let close_after = in_range(
            "sync.rate_close_after",
            c.rate_close_after,
            200,
            1,
            1_000_000,
        )?;
        let db_path = match c.db_path.as_deref() {
            None => base.join("sync.db"),
            Some("") => return bad("sync.db_path = \"\": give a file path".into()),
            Some(p) => base.join(p),
        };
        let api_key = match &c.api_key {
            Some(k) if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) => {
                return bad(
                    "sync.api_key: must be printable ASCII without spaces, or absent".into(),
                )
            }
            other => other.clone(),
        };
        let busy = in_range("sync.busy_timeout_ms", c.busy_timeout_ms, 5000, 1, 600_000)?;
        let max_batch = in_range("sync.max_batch", c.max_batch, 256, 1, 100_000)?;
        let max_queue = in_range("sync.max_queue", c.max_queue, 4096, 1, 1_000_000)?;
        let updates_queue = amqp_name("sync.updates_queue", &c.updates_queue, "sync.updates")?;
        let changes_exchange =
            amqp_name("sync.changes_exchange", &c.changes_exchange, "sync.changes")?;

        let s = &mut file.server;
        for (key, set) in [
            ("max_frame_bytes", s.max_frame_bytes.is_some()),
            ("max_message_bytes", s.max_message_bytes.is_some()),
            ("max_http_body_bytes", s.max_http_body_bytes.is_some()),
        ] {
            if set {
                return bad(format!(
                    "server.{key}: set sync.max_frame_bytes instead (it is the frame, message and HTTP body limit)"
                ));
            }
        }
        if s.output_overflow == Some(foreman::OverflowPolicy::Drop) {
            return bad(
                "server.output_overflow = \"drop\": a sync client is never sent a gap; a slow one is closed (\"close\")".into(),
            );
        }
        s.listen.get_or_insert_with(|| "127.0.0.1:8001".into());
        s.websocket_path.get_or_insert_with(|| "/sync".into());
        s.name.get_or_insert_with(|| "sync".into());
        s.max_frame_bytes = Some(max_frame_bytes);
        s.max_message_bytes = Some(max_frame_bytes);
        s.max_http_body_bytes = Some(max_frame_bytes);
        let mut server = Config::from_section(s)?;
        if let Some(cluster) = &file.cluster {
            server.set_cluster(cluster)?;
        }
        if let Some(api) = &file.api {
            server.set_api(api)?;
        }
        if let Some(amqp) = &file.amqp {
            // The sync server's queue and exchange join the table's own.
            let mut amqp = amqp.clone();
            let consume = amqp.consume.get_or_insert_with(Vec::new);
            if !consume.contains(&updates_queue) {
                consume.push(updates_queue.clone());
            }
            let exchanges = amqp.exchanges.get_or_insert_with(Vec::new);
            if !exchanges.iter().any(|e| e.name == changes_exchange) {
                exchanges.push(ExchangeSection {
                    name: changes_exchange.clone(),
                    kind: Some("topic".into()),
                });
            }
            server.set_amqp(&amqp)?;
        }

        let auth_secret = match file.auth.secret {
            None => None,
            Some(s) if s.is_empty() => {
                return bad("auth.secret = \"\": remove the key to turn auth off".into())
            }
            Some(s) => Some(s.into_bytes()),
        };

        Ok(SyncConfig {
            server,
            max_value_bytes,
            keep_versions,
            op_ttl: Duration::from_millis(op_ttl),
            max_subscriptions,
            rate_limit: RateLimit {
                per_second,
                burst,
                close_after,
            },
            db_path,
            api_key,
            auth_secret,
            busy_timeout: Duration::from_millis(busy),
            max_batch,
            max_queue,
            updates_queue,
            changes_exchange,
        })
    }
}

/// A queue or exchange name of `[sync]`: 1 to 255 visible ASCII
/// characters, not starting with `amq.` (RabbitMQ keeps those).
fn amqp_name(key: &str, value: &Option<String>, default: &str) -> Result<String, Error> {
    let Some(name) = value else {
        return Ok(default.into());
    };
    if name.is_empty()
        || name.len() > 255
        || !name.bytes().all(|b| b.is_ascii_graphic())
        || name.starts_with("amq.")
    {
        return bad(format!(
            "{key} = {name:?}: 1 to 255 visible ASCII characters, not starting with \"amq.\""
        ));
    }
    Ok(name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SyncConfig, String> {
        SyncConfig::from_toml_str(text, Path::new("/srv")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen_url(), "websocket://127.0.0.1:8001");
        assert_eq!(c.server.websocket_path.as_deref(), Some("/sync"));
        assert_eq!(c.max_value_bytes, 65_536);
        assert_eq!(c.server.max_frame_bytes, 262_144);
        assert_eq!(c.server.max_http_body_bytes, 262_144);
        assert_eq!(c.keep_versions, 100);
        assert_eq!(c.op_ttl, Duration::from_millis(86_400_000));
        assert_eq!(c.max_subscriptions, 1000);
        assert_eq!((c.rate_limit.per_second, c.rate_limit.burst), (50, 100));
        assert_eq!(c.db_path, PathBuf::from("/srv/sync.db"));
        assert!(c.api_key.is_none());
        assert!(c.auth_secret.is_none());
    }

    #[test]
    fn the_shipped_file_is_valid_and_documents_every_key() {
        let text = include_str!("../../sync.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.server.listen_url(), "websocket://127.0.0.1:8001");
        assert_eq!(c.server.count, 2);
        assert!(c.server.cluster.is_none());
        for key in [
            "max_value_bytes = 65536",
            "max_frame_bytes = 262144",
            "keep_versions = 100",
            "op_ttl_ms = 86400000",
            "max_subscriptions = 1000",
            "rate_per_sec = 50",
            "rate_burst = 100",
            "db_path = \"sync.db\"",
            "# api_key",
            "# secret",
            "# [cluster]",
            "appendfsync always",
            "updates_queue = \"sync.updates\"",
            "changes_exchange = \"sync.changes\"",
            "# [amqp]",
        ] {
            assert!(text.contains(key), "{key}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("[sync]\nkeep_version = 5", "keep_version"),
            ("[server]\ncuont = 2", "cuont"),
            ("[auth]\nkey = \"x\"", "key"),
            ("[synk]\n", "synk"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("[sync]\nmax_value_bytes = 0", "sync.max_value_bytes"),
            ("[sync]\nmax_value_bytes = 300000", "sync.max_value_bytes"),
            ("[sync]\nkeep_versions = 0", "sync.keep_versions"),
            ("[sync]\nop_ttl_ms = \"long\"", "op_ttl_ms"),
            ("[sync]\nrate_burst = 0", "sync.rate_burst"),
            ("[sync]\ndb_path = \"\"", "sync.db_path"),
            ("[sync]\napi_key = \"a b\"", "sync.api_key"),
            ("[server]\nmax_frame_bytes = 10", "server.max_frame_bytes"),
            ("[server]\ncount = 0", "server.count"),
            (
                "[server]\noutput_overflow = \"drop\"",
                "server.output_overflow",
            ),
            ("[auth]\nsecret = \"\"", "auth.secret"),
            ("[sync]\nupdates_queue = \"\"", "sync.updates_queue"),
            (
                "[sync]\nchanges_exchange = \"amq.x\"",
                "sync.changes_exchange",
            ),
            ("[amqp]\nurl = \"http://h\"", "[amqp] url"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn amqp_adds_the_updates_queue_and_the_changes_exchange() {
        let c = parse("").unwrap();
        assert!(c.server.amqp.is_none(), "off without [amqp]");
        assert_eq!(
            (c.updates_queue.as_str(), c.changes_exchange.as_str()),
            ("sync.updates", "sync.changes")
        );
        let c = parse(
            "[amqp]\nurl = \"amqp://h\"\nconsume = [\"u2\"]\n\
             [sync]\nupdates_queue = \"u2\"\nchanges_exchange = \"c2\"",
        )
        .unwrap();
        let amqp = c.server.amqp.expect("on");
        assert_eq!(amqp.consume, ["u2"], "listed once");
        assert_eq!(amqp.exchanges.len(), 1);
        assert_eq!(amqp.exchanges[0].name, "c2");
        assert_eq!(amqp.exchanges[0].kind, foreman::ExchangeKind::Topic);
    }

    #[test]
    fn values_are_taken() {
        let c = parse(
            "[server]\ncount = 3\n[sync]\nmax_frame_bytes = 4096\nmax_value_bytes = 100\n\
             keep_versions = 5\ndb_path = \"/tmp/x.db\"\napi_key = \"k1\"\n[auth]\nsecret = \"s3\"",
        )
        .unwrap();
        assert_eq!(c.server.count, 3);
        assert_eq!(c.server.max_frame_bytes, 4096);
        assert_eq!(c.max_value_bytes, 100);
        assert_eq!(c.keep_versions, 5);
        assert_eq!(c.db_path, PathBuf::from("/tmp/x.db"));
        assert_eq!(c.api_key.as_deref(), Some("k1"));
        assert_eq!(c.auth_secret.as_deref(), Some(&b"s3"[..]));
    }
}
