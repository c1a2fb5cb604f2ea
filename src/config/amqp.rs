//! The `[amqp]` table: the RabbitMQ bridge ([`crate::Config::amqp`]). Off
//! unless `url` is set; then every worker runs a bridge thread that consumes
//! the push queue (and the application's `consume` queues) and publishes
//! what handlers hand to [`crate::Ctx::publish`].

use crate::error::{Error, Result};
use serde::Deserialize;
use std::fmt;

/// The `[amqp]` table of a config file, as written: every key optional.
/// Applications that keep their own tables in the same file embed this type
/// and pass it to [`crate::Config::set_amqp`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    /// `amqp://user:password@host:port/vhost`; absent or empty: the bridge
    /// is off.
    pub url: Option<String>,
    /// The durable queue whose messages (`/api/publish` JSON bodies) are
    /// pushed to users. Default `foreman.push`.
    pub queue: Option<String>,
    /// Unacknowledged messages RabbitMQ hands each worker's consumer at
    /// once (per queue). Default 256.
    pub prefetch: Option<u16>,
    /// Publishes of a worker not yet confirmed by the broker, at most;
    /// past it [`crate::Ctx::publish`] fails. Default 10,000.
    pub max_pending: Option<usize>,
    /// Durable exchanges declared at every (re)connect.
    pub exchanges: Option<Vec<ExchangeSection>>,
    /// The application's own durable queues, declared and consumed; their
    /// messages reach [`crate::Handler::on_amqp_message`].
    pub consume: Option<Vec<String>>,
    /// `classic` (default) or `quorum`: the type the push queue and the
    /// `consume` queues are declared with.
    pub queue_type: Option<String>,
}

/// The type the bridge declares its queues with ([`AmqpConfig::queue_type`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A classic queue, declared without `x-queue-type` (so a queue that
    /// exists already without one is taken as it is).
    #[default]
    Classic,
    /// A quorum queue (`x-queue-type = quorum`): replicated over a Raft
    /// log that is on disk before the broker confirms a publish; the type
    /// RabbitMQ recommends for data that must not be lost.
    Quorum,
}

/// One entry of `[amqp] exchanges`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeSection {
    /// The exchange's name.
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`. Default `topic`.
    pub kind: Option<String>,
}

/// The kind of an exchange ([`AmqpExchange::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes by exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by routing-key pattern (`chat.*`, `#`).
    Topic,
    /// Routes by header values.
    Headers,
}

impl ExchangeKind {
    fn parse(s: &str) -> Option<ExchangeKind> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }
}

/// A durable exchange the bridge declares at every (re)connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpExchange {
    /// Its name: 1 to 255 bytes, not starting with `amq.` (reserved).
    pub name: String,
    /// Its kind.
    pub kind: ExchangeKind,
}

/// The RabbitMQ bridge, on; see the module docs and the README ("RabbitMQ
/// bridge").
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost`, checked (no TLS: `amqps://`
    /// is refused). `Debug` and [`AmqpConfig::display_url`] hide the password.
    pub url: String,
    /// The push queue. Default `foreman.push`.
    pub queue: String,
    /// Per-consumer prefetch, 1 to 65,535. Default 256.
    pub prefetch: u16,
    /// Unconfirmed publishes per worker, at most, 1 to 1,000,000. Default
    /// 10,000.
    pub max_pending: usize,
    /// Exchanges declared (durable) at every (re)connect; add your own here
    /// in code before [`crate::Server::run`].
    pub exchanges: Vec<AmqpExchange>,
    /// The application's queues, declared durable and consumed.
    pub consume: Vec<String>,
    /// The type of the push queue and the `consume` queues. Default classic.
    pub queue_type: QueueType,
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.display_url())
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("max_pending", &self.max_pending)
            .field("exchanges", &self.exchanges)
            .field("consume", &self.consume)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

/// Checks a queue or exchange name: 1 to 255 bytes of visible ASCII.
fn check_name(key: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(format!(
            "[amqp] {key}: {name:?} must be 1 to 255 visible ASCII characters"
        )));
    }
    Ok(())
}

impl AmqpConfig {
    /// A bridge to `url` with every other key at its default.
    pub fn new(url: &str) -> Result<AmqpConfig> {
        AmqpConfig::from_section(&AmqpSection {
            url: Some(url.into()),
            ..AmqpSection::default()
        })?
        .ok_or_else(|| Error::Config("[amqp] url: empty".into()))
    }

    /// Validates a table: `None` when the bridge is off (no `url`, or
    /// empty). Errors name the key.
    pub fn from_section(s: &AmqpSection) -> Result<Option<AmqpConfig>> {
        let Some(url) = s.url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        check_url(url).map_err(|e| Error::Config(format!("[amqp] url: {e}")))?;
        let queue = s.queue.clone().unwrap_or_else(|| "foreman.push".into());
        check_name("queue", &queue)?;
        let prefetch = s.prefetch.unwrap_or(256);
        if prefetch == 0 {
            return Err(Error::Config("[amqp] prefetch: must be 1 to 65535".into()));
        }
        let max_pending = s.max_pending.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_pending) {
            return Err(Error::Config(
                "[amqp] max_pending: must be 1 to 1000000".into(),
            ));
        }
        let mut exchanges = Vec::new();
        for e in s.exchanges.iter().flatten() {
            check_name("exchanges name", &e.name)?;
            if e.name.starts_with("amq.") {
                return Err(Error::Config(format!(
                    "[amqp] exchanges name: {:?}: names starting with amq. are the broker's",
                    e.name
                )));
            }
            let kind = match e.kind.as_deref() {
                None => ExchangeKind::Topic,
                Some(k) => ExchangeKind::parse(k).ok_or_else(|| {
                    Error::Config(format!(
                        "[amqp] exchanges kind: {k:?} is not one of direct, fanout, topic, headers"
                    ))
                })?,
            };
            exchanges.push(AmqpExchange {
                name: e.name.clone(),
                kind,
            });
        }
        let consume = s.consume.clone().unwrap_or_default();
        for q in &consume {
            check_name("consume", q)?;
            if *q == queue {
                return Err(Error::Config(format!(
                    "[amqp] consume: {q:?} is the push queue already"
                )));
            }
        }
        let mut seen = consume.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != consume.len() {
            return Err(Error::Config(
                "[amqp] consume: a queue is listed twice".into(),
            ));
        }
        let queue_type = match s.queue_type.as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(t) => {
                return Err(Error::Config(format!(
                    "[amqp] queue_type: {t:?} is not one of classic, quorum"
                )))
            }
        };
        Ok(Some(AmqpConfig {
            url: url.into(),
            queue,
            prefetch,
            max_pending,
            exchanges,
            consume,
            queue_type,
        }))
    }

    /// The URL with its password hidden, as logs and `status` show it.
    pub fn display_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((auth, host)) => {
                    let user = auth.split_once(':').map_or(auth, |(u, _)| u);
                    format!("{scheme}://{user}:***@{host}")
                }
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }
}

/// Checks an AMQP URL as the client will read it.
fn check_url(url: &str) -> std::result::Result<(), String> {
    match url.split_once("://") {
        Some(("amqp", _)) => {}
        Some(("amqps", _)) => return Err("TLS to RabbitMQ (amqps://) is not supported".into()),
        _ => return Err("expected amqp://user:password@host:port/vhost".into()),
    }
    url.parse::<lapin::uri::AMQPUri>().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> AmqpSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_and_keys_are_read() {
        assert!(AmqpConfig::from_section(&AmqpSection::default())
            .unwrap()
            .is_none());
        let c = AmqpConfig::new("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            (c.queue.as_str(), c.prefetch, c.max_pending),
            ("foreman.push", 256, 10_000)
        );
        assert_eq!(c.display_url(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert!(!format!("{c:?}").contains("secret"));
        let c = AmqpConfig::from_section(&section(
            "url = \"amqp://127.0.0.1\"\nqueue = \"q\"\nprefetch = 8\nmax_pending = 5\n\
             exchanges = [{name = \"chat.messages\"}, {name = \"f\", kind = \"fanout\"}]\n\
             consume = [\"sync.updates\"]\nqueue_type = \"quorum\"",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((c.queue.as_str(), c.prefetch, c.max_pending), ("q", 8, 5));
        assert_eq!(c.exchanges[0].kind, ExchangeKind::Topic);
        assert_eq!(c.exchanges[1].kind, ExchangeKind::Fanout);
        assert_eq!(c.consume, ["sync.updates"]);
        assert_eq!(c.queue_type, QueueType::Quorum);
        let c = AmqpConfig::new("amqp://127.0.0.1").unwrap();
        assert_eq!(c.queue_type, QueueType::Classic);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("url = \"http://x\"", "[amqp] url"),
            ("url = \"amqps://x\"", "[amqp] url"),
            ("url = \"amqp://h:notaport\"", "[amqp] url"),
            ("url = \"amqp://h\"\nqueue = \"\"", "[amqp] queue"),
            ("url = \"amqp://h\"\nprefetch = 0", "[amqp] prefetch"),
            ("url = \"amqp://h\"\nmax_pending = 0", "[amqp] max_pending"),
            (
                "url = \"amqp://h\"\nexchanges = [{name = \"e\", kind = \"x\"}]",
                "[amqp] exchanges kind",
            ),
            (
                "url = \"amqp://h\"\nexchanges = [{name = \"amq.topic\"}]",
                "[amqp] exchanges name",
            ),
            (
                "url = \"amqp://h\"\nconsume = [\"foreman.push\"]",
                "[amqp] consume",
            ),
            (
                "url = \"amqp://h\"\nconsume = [\"a\", \"a\"]",
                "[amqp] consume",
            ),
            (
                "url = \"amqp://h\"\nqueue_type = \"stream\"",
                "[amqp] queue_type",
            ),
        ] {
            let e = AmqpConfig::from_section(&section(text)).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        assert!(toml::from_str::<AmqpSection>("urll = 1").is_err());
    }
}
