//! The `[cluster]` table: several servers (nodes) that act as one through a
//! Redis server. Absent, or without `redis_url`, the server is a single
//! node, with exactly the behaviour and cost it has without the table.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// The `[cluster]` table of a config file, as written: every key optional.
/// Applications that keep their own tables in the same file embed this type
/// as their `cluster` field and pass it to [`crate::Config::set_cluster`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://[user[:password]@]host[:port][/db]`; absent: a single node.
    pub redis_url: Option<String>,
    /// This node's name, unique in the cluster; default: host name and pid.
    pub node: Option<String>,
    /// How long a node's connections stay listed after it was last heard of.
    pub presence_ttl_ms: Option<u64>,
    /// Prefix of every Redis key and channel the cluster uses.
    pub prefix: Option<String>,
}

/// Where the Redis server is, from `redis_url`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port. Default 6379.
    pub port: u16,
    /// Database number (`SELECT`). Default 0.
    pub db: u32,
    /// User for `AUTH` (Redis 6 ACLs); `None`: the default user.
    pub username: Option<String>,
    /// Password for `AUTH`; `None`: no `AUTH`.
    pub password: Option<String>,
}

impl RedisUrl {
    /// Parses `redis://[user[:password]@]host[:port][/db]`.
    pub fn parse(url: &str) -> std::result::Result<RedisUrl, String> {
        let rest = match url.split_once("://") {
            Some(("redis", rest)) => rest,
            Some(("rediss", _)) => return Err("TLS to Redis (rediss://) is not supported".into()),
            _ => return Err("expected redis://host[:port][/db]".into()),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse()
                    .map_err(|_| format!("database {d:?} is not a number"))?,
            ),
            None => (rest, 0),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse()
                    .map_err(|_| format!("port {p:?} is not a number"))?,
            ),
            _ => (hostport, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some(("", p)) => (None, Some(p.to_string())),
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            db,
            username,
            password,
        })
    }
}

impl RedisUrl {
    /// The URL again, password included (for building a config from one).
    pub fn to_url(&self) -> String {
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(p)) => format!("{u}:{p}@"),
            (None, Some(p)) => format!(":{p}@"),
            _ => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("redis://{auth}{host}:{}/{}", self.port, self.db)
    }
}

/// Prints the URL with the password hidden, as logs and `status` show it.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.username, &self.password) {
            (Some(u), _) => write!(f, "{u}:***@")?,
            (None, Some(_)) => f.write_str(":***@")?,
            (None, None) => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// A validated `[cluster]` table; see the module docs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis server every node uses.
    pub redis: RedisUrl,
    /// This node's name: 1 to 64 of ASCII letters, digits, `.`, `_`, `-`.
    /// Default: the host name, `-` and the master's pid.
    pub node: String,
    /// A node not heard of for this long (it died, or lost Redis) is dropped
    /// from every other node's answers. Nodes refresh their presence three
    /// times per period. Default 15 s.
    pub presence_ttl: Duration,
    /// Prefix of Redis keys and channels (so several clusters can share one
    /// Redis). Default `foreman`.
    pub prefix: String,
    /// The Redis address, looked up by the master before it forks, so no
    /// worker's loop waits on a name lookup; `None`: the worker looks it up.
    pub(crate) addr: Option<std::net::SocketAddr>,
}

fn name_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The host name, for the default node name.
fn host_name() -> String {
    let raw = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(48)
        .collect();
    if clean.is_empty() {
        "node".into()
    } else {
        clean
    }
}

impl ClusterConfig {
    /// Validates a `[cluster]` table: `None` when it has no `redis_url` (a
    /// single node). Errors name the key.
    pub fn from_section(s: &ClusterSection) -> Result<Option<ClusterConfig>> {
        let bad = |m: String| Err(Error::Config(m));
        let Some(url) = &s.redis_url else {
            if s.node.is_some() || s.presence_ttl_ms.is_some() || s.prefix.is_some() {
                return bad(
                    "cluster: redis_url is missing (without it the other keys do nothing)".into(),
                );
            }
            return Ok(None);
        };
        let redis = match RedisUrl::parse(url) {
            Ok(r) => r,
            Err(e) => return bad(format!("cluster.redis_url = {url:?}: {e}")),
        };
        let node = match &s.node {
            Some(n) => n.clone(),
            None => format!("{}-{}", host_name(), std::process::id()),
        };
        if !name_ok(&node) {
            return bad(format!(
                "cluster.node = {node:?}: 1 to 64 of ASCII letters, digits, '.', '_', '-'"
            ));
        }
        let ttl = s.presence_ttl_ms.unwrap_or(15_000);
        if !(300..=86_400_000).contains(&ttl) {
            return bad(format!(
                "cluster.presence_ttl_ms = {ttl}: must be 300 to 86400000"
            ));
        }
        let prefix = s.prefix.clone().unwrap_or_else(|| "foreman".into());
        if !name_ok(&prefix) {
            return bad(format!(
                "cluster.prefix = {prefix:?}: 1 to 64 of ASCII letters, digits, '.', '_', '-'"
            ));
        }
        Ok(Some(ClusterConfig {
            redis,
            node,
            presence_ttl: Duration::from_millis(ttl),
            prefix,
            addr: None,
        }))
    }

    /// The node's number in [`crate::ConnId`]s: a 32-bit hash of its name
    /// (FNV-1a), never 0. Two nodes whose names hash alike (about one pair
    /// in four billion) cannot tell each other's messages from their own:
    /// each logs the clash, at most once a second, and ignores the other;
    /// rename one.
    pub fn node_number(&self) -> u32 {
        node_number(&self.node)
    }

    /// Looks up the Redis host (the master does, before it forks). A host
    /// that cannot be looked up now is left to the workers, which try again
    /// at each connect.
    pub(crate) fn resolve(&mut self) {
        use std::net::ToSocketAddrs;
        match (self.redis.host.as_str(), self.redis.port).to_socket_addrs() {
            Ok(mut addrs) => self.addr = addrs.next(),
            Err(e) => log::warn!(
                "cluster: cannot look up {} now ({e}); the workers will try",
                self.redis
            ),
        }
    }

    /// How often a node refreshes its presence: a third of the TTL.
    pub fn heartbeat(&self) -> Duration {
        self.presence_ttl / 3
    }
}

/// See [`ClusterConfig::node_number`].
pub(crate) fn node_number(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> ClusterSection {
        ClusterSection {
            redis_url: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn urls_parse() {
        let u = RedisUrl::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6380, 2));
        let u = RedisUrl::parse("redis://ann:s3cr@t@h").unwrap();
        assert_eq!(u.username.as_deref(), Some("ann"));
        assert_eq!(u.password.as_deref(), Some("s3cr@t"));
        assert_eq!(u.to_string(), "redis://ann:***@h:6379/0");
        assert_eq!(RedisUrl::parse(&u.to_url()).unwrap(), u);
        let u = RedisUrl::parse("redis://:pw@[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 7000));
        assert_eq!(u.password.as_deref(), Some("pw"));
        for bad in [
            "http://x",
            "redis://",
            "redis://h:port",
            "redis://h/x",
            "rediss://h",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (section("nope"), "cluster.redis_url"),
            (
                ClusterSection {
                    node: Some("a b".into()),
                    ..section("redis://h")
                },
                "cluster.node",
            ),
            (
                ClusterSection {
                    presence_ttl_ms: Some(10),
                    ..section("redis://h")
                },
                "cluster.presence_ttl_ms",
            ),
            (
                ClusterSection {
                    prefix: Some(String::new()),
                    ..section("redis://h")
                },
                "cluster.prefix",
            ),
            (
                ClusterSection {
                    node: Some("a".into()),
                    ..Default::default()
                },
                "redis_url",
            ),
        ];
        for (s, key) in cases {
            let e = ClusterConfig::from_section(&s).unwrap_err().to_string();
            assert!(e.contains(key), "{e} should name {key}");
        }
    }

    #[test]
    fn defaults() {
        assert!(ClusterConfig::from_section(&ClusterSection::default())
            .unwrap()
            .is_none());
        let c = ClusterConfig::from_section(&section("redis://h"))
            .unwrap()
            .unwrap();
        assert_eq!(c.presence_ttl, Duration::from_secs(15));
        assert_eq!(c.prefix, "foreman");
        assert!(c.node.ends_with(&format!("-{}", std::process::id())));
        assert_ne!(c.node_number(), 0);
        assert_ne!(node_number("a"), node_number("b"));
    }

    #[test]
    fn the_master_looks_the_host_up() {
        let mut c = ClusterConfig::from_section(&section("redis://127.0.0.1:7"))
            .unwrap()
            .unwrap();
        assert_eq!(c.addr, None);
        c.resolve();
        assert_eq!(c.addr, Some(([127, 0, 0, 1], 7).into()));
    }
}
