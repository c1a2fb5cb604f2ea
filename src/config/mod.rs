//! Configuration: the `[server]` table of a TOML file (or [`Config::default`])
//! validated into a [`Config`].
//!
//! Pipeline: file -> [`ServerSection`] (serde, unknown keys refused, every key
//! optional) -> [`Config::from_section`] (defaults, validation). A bad file
//! stops start-up with a message naming the key and the problem.

mod amqp;
mod api;
mod cluster;

pub use amqp::{AmqpConfig, AmqpExchange, AmqpSection, ExchangeKind, ExchangeSection, QueueType};
pub use api::{ApiConfig, ApiSection};
pub(crate) use cluster::node_number;
pub use cluster::{ClusterConfig, ClusterSection, RedisUrl};

use crate::error::{Error, Result};
use crate::proto::Protocol;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// What happens to a send to a connection whose queued output is already at
/// `max_output_bytes` (a consumer that does not read fast enough). The
/// WebSocket's own pongs count as sends here: a peer that pings and never
/// reads meets the same policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverflowPolicy {
    /// Close the connection (WebSocket code 1008) and report
    /// [`crate::ConnError::Overflow`]: the client knows it missed messages and
    /// can reconnect. The default.
    Close,
    /// Drop the message and count it ([`crate::Ctx::dropped_sends`]); the
    /// connection stays open and silently misses it.
    Drop,
}

/// The `[server]` table of a config file, as written: every key optional.
/// [`Config::from_section`] fills defaults and validates. Applications that
/// keep their own tables in the same file embed this type as their `server`
/// field.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// `scheme://host:port`, or `host:port` for `websocket://`.
    pub listen: Option<String>,
    /// Worker processes.
    pub count: Option<usize>,
    /// One SO_REUSEPORT socket per worker instead of one shared socket.
    pub reuse_port: Option<bool>,
    /// Shared listeners are left to the least loaded worker.
    pub balance_accept: Option<bool>,
    /// The path that accepts WebSocket upgrades; absent: every path.
    pub websocket_path: Option<String>,
    /// A name for logs and status output.
    pub name: Option<String>,
    /// Where the master writes its pid (for `stop`, `status`).
    pub pid_file: Option<String>,
    /// Where log lines go instead of stderr (appended).
    pub log_file: Option<String>,
    /// Graceful stop: how long workers get before they are killed.
    pub stop_timeout_ms: Option<u64>,
    /// How long a client has to send its request head.
    pub handshake_timeout_ms: Option<u64>,
    /// Close connections that sent nothing for this long (0 = never).
    pub idle_timeout_ms: Option<u64>,
    /// Send a WebSocket ping to connections quiet for this long (0 = never).
    pub ping_interval_ms: Option<u64>,
    /// Largest WebSocket frame, `text://` line or `frame://` payload accepted.
    pub max_frame_bytes: Option<usize>,
    /// Largest WebSocket message (all fragments) accepted.
    pub max_message_bytes: Option<usize>,
    /// Most connections one worker holds.
    pub max_connections: Option<usize>,
    /// Most bytes queued for one connection.
    pub max_output_bytes: Option<usize>,
    /// `close` or `drop`: what a send past `max_output_bytes` does.
    pub output_overflow: Option<OverflowPolicy>,
    /// Largest plain HTTP request body accepted.
    pub max_http_body_bytes: Option<usize>,
    /// Most bytes queued on the bus for one other worker before it is
    /// considered stuck.
    pub bus_peer_buffer_bytes: Option<usize>,
    /// PEM file with the certificate chain: serve TLS (`wss://`, `https://`).
    pub tls_cert: Option<String>,
    /// PEM file with the private key for `tls_cert`.
    pub tls_key: Option<String>,
    /// Expanded TLS 1.3 record keys each worker keeps for busy connections.
    pub tls_key_cache: Option<usize>,
    /// Threads of each worker's blocking-work pool.
    pub blocking_threads: Option<usize>,
    /// Jobs that may wait for a blocking-pool thread before more are refused.
    pub blocking_queue: Option<usize>,
    /// Most connections from one address (IPv6: one /64), server-wide (0 = off).
    pub max_connections_per_ip: Option<usize>,
    /// `Origin` values a WebSocket upgrade may carry (empty or absent = any).
    pub allowed_origins: Option<Vec<String>>,
    /// A worker that has not come back to its loop for this long is replaced (0 = never).
    pub handler_timeout_ms: Option<u64>,
    /// How long a kept-alive HTTP connection may wait for its next request (0 = no keep-alive).
    pub keepalive_timeout_ms: Option<u64>,
    /// Most HTTP requests answered on one connection before it is closed.
    pub max_requests_per_connection: Option<usize>,
    /// More listeners besides `listen`, each a listen URL (`websocket://`,
    /// `text://`, `frame://`, `tcp://`; plain TCP, never TLS).
    pub also_listen: Option<Vec<String>>,
}

/// A validated server configuration. Build it with [`Config::default`] and the
/// public fields, from a file with [`Config::load`], or from a parsed table with
/// [`Config::from_section`]; [`Config::validate`] checks it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener protocol, from the listen URL's scheme.
    pub protocol: Protocol,
    /// Listener address as written (`127.0.0.1:8000`, `localhost:0`).
    pub addr: String,
    /// Worker processes (1 to 1024). Default 1.
    pub count: usize,
    /// `false` (default): the master binds one socket and every worker accepts
    /// on it. `true`: one SO_REUSEPORT socket per worker slot, balanced by the
    /// kernel; the master keeps each slot's socket open across worker restarts
    /// so no queued connection is lost.
    pub reuse_port: bool,
    /// `true`: a worker woken for a new connection on a listener every
    /// worker shares leaves it to a less loaded one (within 8 plus a
    /// thirty-second), never waiting on a worker stuck for 50 ms; without
    /// it (default `false`), the worker that calls `accept` first takes it
    /// and the split can be very uneven. Off by default for now: see the
    /// README (*Spreading connections over workers*).
    pub balance_accept: bool,
    /// The path that accepts WebSocket upgrades (`/ws`); `None` (default):
    /// every path does. Other requests go to `on_http_request`.
    pub websocket_path: Option<String>,
    /// A name for logs and status output. Default `foreman`.
    pub name: String,
    /// Where the master writes its pid; `None` (default): nowhere. `stop`,
    /// `reload` and `status` need it.
    pub pid_file: Option<String>,
    /// Where log lines go (appended); `None` (default): stderr. A server
    /// started with `-d` without a log file logs nowhere.
    pub log_file: Option<String>,
    /// Graceful stop: workers close their clients (1001) and exit; the master
    /// kills what is left after this. Default 5 s.
    pub stop_timeout: Duration,
    /// A request head (HTTP or upgrade) must be complete within this. Default 10 s.
    pub handshake_timeout: Duration,
    /// Close connections that sent nothing for this long; `None` (default): never.
    pub idle_timeout: Option<Duration>,
    /// Ping WebSocket connections that were quiet this long; `None` (default): never.
    pub ping_interval: Option<Duration>,
    /// Largest frame, line or payload accepted (close 1009 past it). Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Largest WebSocket message accepted (close 1009 past it). Default 1 MiB.
    pub max_message_bytes: usize,
    /// Most connections per worker. Near it the worker stops accepting and
    /// resumes below it; it is also capped by the open-files limit. Default 100,000.
    pub max_connections: usize,
    /// Most bytes queued for one connection; see [`OverflowPolicy`]. Default 4 MiB.
    pub max_output_bytes: usize,
    /// What a send past `max_output_bytes` does. Default [`OverflowPolicy::Close`].
    pub output_overflow: OverflowPolicy,
    /// Largest plain HTTP body accepted (413 past it). Default 64 KiB.
    pub max_http_body_bytes: usize,
    /// Most bytes queued on the bus for one other worker. Past it that worker is
    /// treated as stuck: its queue is dropped (counted), the link is re-made and
    /// the registry resynchronised. Default 64 MiB.
    pub bus_peer_buffer_bytes: usize,
    /// PEM certificate chain; with [`Config::tls_key`], every connection is
    /// TLS (`wss://`, `https://`). `None` (default): plain TCP. Read at start
    /// and again on `reload`.
    pub tls_cert: Option<String>,
    /// PEM private key for [`Config::tls_cert`].
    pub tls_key: Option<String>,
    /// Expanded TLS 1.3 record keys (about 560 B each) a worker keeps, for
    /// the connections that seal or open records; an idle connection keeps
    /// only its raw keys (about 80 B a direction), and one whose expanded key was taken by
    /// others expands it again at its next record (about 0.1-0.3 µs). Set
    /// it to at least twice the connections of one worker that are busy at
    /// once (1 to 1,048,576). Default 1024.
    pub tls_key_cache: usize,
    /// Threads of each worker's pool for [`crate::Ctx::spawn_blocking`],
    /// started at the first job (1 to 256). Default 4.
    pub blocking_threads: usize,
    /// Jobs that may wait for a thread of that pool; past it
    /// `spawn_blocking` is refused at once. Default 1024.
    pub blocking_queue: usize,
    /// Most connections from one client address at a time, counted across
    /// all workers and including connections still in their handshake; IPv6
    /// addresses count by their /64. The connection past it gets `503` with
    /// `Retry-After` (HTTP, WebSocket) or is closed at once (`text://`,
    /// `frame://`, `tcp://`). 0 (default): no limit.
    pub max_connections_per_ip: usize,
    /// `Origin` header values a WebSocket upgrade may carry, compared without
    /// regard to ASCII case (`https://chat.example.com`). An upgrade with
    /// another `Origin` gets `403`; one without `Origin` (not a browser) is
    /// allowed. Empty (default): any origin.
    pub allowed_origins: Vec<String>,
    /// A worker that has not come back to its event loop for this long (a
    /// handler that blocks, a process stopped by a signal) is killed and
    /// replaced by the master. `None`: never. Default 10 s.
    pub handler_timeout: Option<Duration>,
    /// How long a kept-alive HTTP connection may sit between requests before
    /// it is closed. `None`: no keep-alive (every answer says
    /// `Connection: close`). Default 5 s.
    pub keepalive_timeout: Option<Duration>,
    /// Most HTTP requests answered on one kept-alive connection; the last one
    /// says `Connection: close`. Default 1000.
    pub max_requests_per_connection: usize,
    /// The `[cluster]` table: `None` (default) for a single node. See
    /// [`ClusterConfig`].
    pub cluster: Option<ClusterConfig>,
    /// The `[api]` table: the HTTP push API under `/api/` on `listen`;
    /// `None` (default): off, and `/api/` goes to the handler like any path.
    pub api: Option<ApiConfig>,
    /// The `[amqp]` table: the RabbitMQ bridge; `None` (default): off. See
    /// [`AmqpConfig`].
    pub amqp: Option<AmqpConfig>,
    /// More listeners besides `listen` (`also_listen`), in order: a
    /// connection accepted on the first has [`crate::ConnInfo::listener`]
    /// 1, and so on (0 is `listen`). Each has its own protocol; they are
    /// plain TCP (TLS applies to `listen` only) and share `listen`'s limits
    /// and `websocket_path`. Set with [`Config::also_listen`].
    pub also_listen: Vec<Listen>,
}

/// Most listeners of [`Config::also_listen`].
pub(crate) const MAX_ALSO: usize = 32;

/// One more listener of [`Config::also_listen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Its protocol, from the URL's scheme.
    pub protocol: Protocol,
    /// Its address as written.
    pub addr: String,
}

impl Listen {
    /// `scheme://addr`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.protocol.scheme(), self.addr)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocol: Protocol::WebSocket,
            addr: "127.0.0.1:8000".into(),
            count: 1,
            reuse_port: false,
            balance_accept: false,
            websocket_path: None,
            name: "foreman".into(),
            pid_file: None,
            log_file: None,
            stop_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            ping_interval: None,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            max_connections: 100_000,
            max_output_bytes: 4 << 20,
            output_overflow: OverflowPolicy::Close,
            max_http_body_bytes: 64 << 10,
            bus_peer_buffer_bytes: 64 << 20,
            tls_cert: None,
            tls_key: None,
            tls_key_cache: 1024,
            blocking_threads: 4,
            blocking_queue: 1024,
            max_connections_per_ip: 0,
            allowed_origins: Vec::new(),
            handler_timeout: Some(Duration::from_secs(10)),
            keepalive_timeout: Some(Duration::from_secs(5)),
            max_requests_per_connection: 1000,
            cluster: None,
            api: None,
            amqp: None,
            also_listen: Vec::new(),
        }
    }
}

fn ms(key: &str, v: u64) -> Result<Duration> {
    if v > 86_400_000 {
        return Err(Error::Config(format!(
            "server.{key} = {v}: at most 86400000 (one day)"
        )));
    }
    Ok(Duration::from_millis(v))
}

fn optional_ms(key: &str, v: u64) -> Result<Option<Duration>> {
    Ok((v > 0).then_some(ms(key, v)?))
}

impl Config {
    /// Reads `path` and builds the config from its `[server]` table. Other
    /// top-level tables belong to the application and are ignored here; keys
    /// inside `[server]` must all be known.
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Builds the config from the `[server]`, `[cluster]`, `[api]` and
    /// `[amqp]` tables of TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            server: Option<toml::Value>,
            #[serde(default)]
            cluster: Option<toml::Value>,
            #[serde(default)]
            api: Option<toml::Value>,
            #[serde(default)]
            amqp: Option<toml::Value>,
        }
        let file: File = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let section = match file.server {
            None => ServerSection::default(),
            Some(v) => ServerSection::deserialize(v)
                .map_err(|e| Error::Config(format!("[server]: {e}")))?,
        };
        let mut config = Config::from_section(&section)?;
        if let Some(v) = file.cluster {
            let cluster = ClusterSection::deserialize(v)
                .map_err(|e| Error::Config(format!("[cluster]: {e}")))?;
            config.set_cluster(&cluster)?;
        }
        if let Some(v) = file.api {
            let api =
                ApiSection::deserialize(v).map_err(|e| Error::Config(format!("[api]: {e}")))?;
            config.set_api(&api)?;
        }
        if let Some(v) = file.amqp {
            let amqp =
                AmqpSection::deserialize(v).map_err(|e| Error::Config(format!("[amqp]: {e}")))?;
            config.set_amqp(&amqp)?;
        }
        Ok(config)
    }

    /// Validates a `[cluster]` table into [`Config::cluster`] (`None` when
    /// it has no `redis_url`). Errors name the key.
    pub fn set_cluster(&mut self, section: &ClusterSection) -> Result<()> {
        self.cluster = ClusterConfig::from_section(section)?;
        Ok(())
    }

    /// Validates an `[api]` table into [`Config::api`] (`None` when it has
    /// no key). Errors name the key.
    pub fn set_api(&mut self, section: &ApiSection) -> Result<()> {
        self.api = ApiConfig::from_section(section)?;
        Ok(())
    }

    /// Validates an `[amqp]` table into [`Config::amqp`] (`None` when it has
    /// no `url`). Errors name the key.
    pub fn set_amqp(&mut self, section: &AmqpSection) -> Result<()> {
        self.amqp = AmqpConfig::from_section(section)?;
        Ok(())
    }

    /// Fills defaults for absent keys and validates.
    pub fn from_section(s: &ServerSection) -> Result<Config> {
        let mut c = Config::default();
        if let Some(listen) = &s.listen {
            c.set_listen(listen)?;
        }
        if let Some(v) = s.count {
            c.count = v;
        }
        if let Some(v) = s.reuse_port {
            c.reuse_port = v;
        }
        if let Some(v) = s.balance_accept {
            c.balance_accept = v;
        }
        c.websocket_path.clone_from(&s.websocket_path);
        if let Some(v) = &s.name {
            c.name.clone_from(v);
        }
        c.pid_file.clone_from(&s.pid_file);
        c.tls_cert.clone_from(&s.tls_cert);
        c.tls_key.clone_from(&s.tls_key);
        c.log_file.clone_from(&s.log_file);
        if let Some(v) = s.stop_timeout_ms {
            c.stop_timeout = ms("stop_timeout_ms", v)?;
        }
        if let Some(v) = s.handshake_timeout_ms {
            c.handshake_timeout = ms("handshake_timeout_ms", v)?;
        }
        if let Some(v) = s.idle_timeout_ms {
            c.idle_timeout = optional_ms("idle_timeout_ms", v)?;
        }
        if let Some(v) = s.ping_interval_ms {
            c.ping_interval = optional_ms("ping_interval_ms", v)?;
        }
        let sizes = [
            (&mut c.max_frame_bytes, s.max_frame_bytes),
            (&mut c.max_message_bytes, s.max_message_bytes),
            (&mut c.max_connections, s.max_connections),
            (&mut c.max_output_bytes, s.max_output_bytes),
            (&mut c.max_http_body_bytes, s.max_http_body_bytes),
            (&mut c.bus_peer_buffer_bytes, s.bus_peer_buffer_bytes),
            (&mut c.tls_key_cache, s.tls_key_cache),
            (&mut c.blocking_threads, s.blocking_threads),
            (&mut c.blocking_queue, s.blocking_queue),
            (&mut c.max_connections_per_ip, s.max_connections_per_ip),
            (
                &mut c.max_requests_per_connection,
                s.max_requests_per_connection,
            ),
        ];
        for (field, value) in sizes {
            if let Some(v) = value {
                *field = v;
            }
        }
        if let Some(v) = s.output_overflow {
            c.output_overflow = v;
        }
        if let Some(v) = s.handler_timeout_ms {
            c.handler_timeout = optional_ms("handler_timeout_ms", v)?;
        }
        if let Some(v) = s.keepalive_timeout_ms {
            c.keepalive_timeout = optional_ms("keepalive_timeout_ms", v)?;
        }
        if let Some(v) = &s.allowed_origins {
            c.allowed_origins.clone_from(v);
        }
        for url in s.also_listen.iter().flatten() {
            c.also_listen(url)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Sets protocol and address from a listen URL: `websocket://host:port`,
    /// `ws://`, `http://`, `text://`, `frame://`, `tcp://`, or a bare
    /// `host:port` (WebSocket).
    pub fn set_listen(&mut self, url: &str) -> Result<()> {
        let Listen { protocol, addr } = parse_listen(url)?;
        self.protocol = protocol;
        self.addr = addr;
        Ok(())
    }

    /// Adds a listener (see [`Config::also_listen`]) from a listen URL, as
    /// [`Config::set_listen`] reads them; returns its number (1 for the
    /// first added).
    pub fn also_listen(&mut self, url: &str) -> Result<usize> {
        let listen = parse_listen(url)?;
        if self.also_listen.len() >= MAX_ALSO {
            return Err(Error::Config(format!(
                "also_listen = {url:?}: at most {MAX_ALSO} more listeners"
            )));
        }
        let any_port = listen.addr.ends_with(":0");
        let taken =
            listen.addr == self.addr || self.also_listen.iter().any(|l| l.addr == listen.addr);
        if taken && !any_port {
            return Err(Error::Config(format!(
                "also_listen = {url:?}: that address is listened on already"
            )));
        }
        self.also_listen.push(listen);
        Ok(self.also_listen.len())
    }

    /// The listen URL, `scheme://addr`.
    pub fn listen_url(&self) -> String {
        format!("{}://{}", self.protocol.scheme(), self.addr)
    }

    /// Resolves the listen address.
    pub(crate) fn socket_addr(&self) -> Result<SocketAddr> {
        resolve(&self.addr)
    }

    /// Reads and checks the files the config names (the TLS certificate and
    /// key), as start-up and `reload` do. For a reload hook that must not
    /// commit to a config the master would then refuse (see
    /// [`crate::Server::reload_config`]).
    pub fn check_files(&self) -> Result<()> {
        self.server_tls().map(drop)
    }

    /// The TLS server configuration of `tls_cert` and `tls_key`, read from
    /// their files; `None` without them.
    pub(crate) fn server_tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        use crate::net::tls::{self, TlsError};
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        tls::server_config(Path::new(cert), Path::new(key))
            .map(Some)
            .map_err(|e| {
                Error::Config(match e {
                    TlsError::Cert { reason, .. } => {
                        format!("server.tls_cert = {cert:?}: {reason}")
                    }
                    TlsError::Key { reason, .. } => format!("server.tls_key = {key:?}: {reason}"),
                    TlsError::Refused(r) => format!("server.tls_cert / tls_key: {r}"),
                })
            })
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(1..=1024).contains(&self.count) {
            return bad(format!("server.count = {}: must be 1 to 1024", self.count));
        }
        if self.max_frame_bytes < 125 || self.max_message_bytes < 125 {
            return bad("server.max_frame_bytes and max_message_bytes must be at least 125".into());
        }
        if self.max_frame_bytes > self.max_message_bytes {
            return bad(format!(
                "server.max_frame_bytes = {} is larger than max_message_bytes = {}",
                self.max_frame_bytes, self.max_message_bytes
            ));
        }
        if self.max_message_bytes > 1 << 30 {
            return bad("server.max_message_bytes: at most 1 GiB".into());
        }
        if self.max_connections == 0 {
            return bad("server.max_connections must be at least 1".into());
        }
        if self.max_output_bytes < 1024 {
            return bad("server.max_output_bytes must be at least 1024".into());
        }
        if self.bus_peer_buffer_bytes < 1 << 20 {
            return bad("server.bus_peer_buffer_bytes must be at least 1 MiB".into());
        }
        if let Some(p) = &self.websocket_path {
            if !p.starts_with('/') {
                return bad(format!(
                    "server.websocket_path = {p:?}: must start with '/'"
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("server.tls_cert and tls_key go together: set both or neither".into());
        }
        if !(1..=1 << 20).contains(&self.tls_key_cache) {
            return bad(format!(
                "server.tls_key_cache = {}: must be 1 to 1048576",
                self.tls_key_cache
            ));
        }
        if !(1..=256).contains(&self.blocking_threads) {
            return bad(format!(
                "server.blocking_threads = {}: must be 1 to 256",
                self.blocking_threads
            ));
        }
        if self.blocking_queue == 0 {
            return bad("server.blocking_queue must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return bad("server.handshake_timeout_ms must be above 0".into());
        }
        if self.max_requests_per_connection == 0 {
            return bad("server.max_requests_per_connection must be at least 1".into());
        }
        if self
            .handler_timeout
            .is_some_and(|t| t < Duration::from_millis(100))
        {
            return bad("server.handler_timeout_ms: at least 100 (or 0 for never)".into());
        }
        for o in &self.allowed_origins {
            let ok = o.split_once("://").is_some_and(|(scheme, host)| {
                !scheme.is_empty() && !host.is_empty() && !host.contains('/')
            });
            if !ok {
                return bad(format!(
                    "server.allowed_origins: {o:?} is not an origin \
                     (scheme://host[:port], no path, as in \"https://chat.example.com\")"
                ));
            }
        }
        Ok(())
    }
}

/// Resolves a listen address (`host:port`) to its first socket address.
pub(crate) fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| Error::Config(format!("listen = {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("listen = {addr:?}: no address")))
}

/// A listen URL as [`Config::set_listen`] documents it.
fn parse_listen(url: &str) -> Result<Listen> {
    let (protocol, addr) = match url.split_once("://") {
        None => (Protocol::WebSocket, url),
        Some((scheme, rest)) => {
            let p = match scheme.to_ascii_lowercase().as_str() {
                "websocket" | "ws" | "http" => Protocol::WebSocket,
                "text" => Protocol::Text,
                "frame" => Protocol::Frame,
                "tcp" => Protocol::Tcp,
                other => {
                    return Err(Error::Config(format!(
                        "listen = {url:?}: unknown scheme {other:?} \
                             (use websocket, text, frame or tcp)"
                    )))
                }
            };
            (p, rest.trim_end_matches('/'))
        }
    };
    if addr
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(Error::Config(format!(
            "listen = {url:?}: expected host:port, as in websocket://127.0.0.1:8000"
        )));
    }
    Ok(Listen {
        protocol,
        addr: addr.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.listen_url(), "websocket://127.0.0.1:8000");
        assert_eq!(c.count, 1);
    }

    #[test]
    fn schemes_select_protocols() {
        let c = Config::from_toml_str("[server]\nlisten = \"frame://0.0.0.0:9\"").unwrap();
        assert_eq!(
            (c.protocol, c.addr.as_str()),
            (Protocol::Frame, "0.0.0.0:9")
        );
        let e = Config::from_toml_str("[server]\nlisten = \"gopher://x:1\"").unwrap_err();
        assert!(e.to_string().contains("unknown scheme"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::from_toml_str("[server]\ncuont = 2").unwrap_err();
        assert!(e.to_string().contains("cuont"), "{e}");
        let e = Config::from_toml_str("[server]\ncount = 0").unwrap_err();
        assert!(e.to_string().contains("server.count"), "{e}");
        let e = Config::from_toml_str("[server]\ncount = \"two\"").unwrap_err();
        assert!(e.to_string().contains("count"), "{e}");
        let e = Config::from_toml_str("[server]\nlisten = \"nohost\"").unwrap_err();
        assert!(e.to_string().contains("host:port"), "{e}");
        let e = Config::from_toml_str("[server]\ntls_key_cache = 0").unwrap_err();
        assert!(e.to_string().contains("server.tls_key_cache"), "{e}");
        let c = Config::from_toml_str("[server]\ntls_key_cache = 4096").expect("config");
        assert_eq!(c.tls_key_cache, 4096);
    }

    #[test]
    fn the_cluster_table_is_read() {
        let c = Config::from_toml_str(
            "[cluster]\nredis_url = \"redis://127.0.0.1:7/1\"\nnode = \"a\"\npresence_ttl_ms = 900",
        )
        .unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!((cl.node.as_str(), cl.redis.port, cl.redis.db), ("a", 7, 1));
        let e = Config::from_toml_str("[cluster]\nredis = 1").unwrap_err();
        assert!(e.to_string().contains("[cluster]"), "{e}");
        assert!(Config::from_toml_str("").unwrap().cluster.is_none());
    }

    #[test]
    fn the_api_table_is_read_and_its_key_checked() {
        let c = Config::from_toml_str("[api]\nkey = \"0123456789abcdef\"").unwrap();
        assert_eq!(c.api.unwrap().key, "0123456789abcdef");
        assert!(Config::from_toml_str("[api]\nkey = \"\"")
            .unwrap()
            .api
            .is_none());
        assert!(Config::from_toml_str("").unwrap().api.is_none());
        for bad in [
            "[api]\nkey = \"short\"",
            "[api]\nkey = \"with a space in it!\"",
        ] {
            let e = Config::from_toml_str(bad).unwrap_err();
            assert!(e.to_string().contains("[api] key"), "{e}");
        }
        let e = Config::from_toml_str("[api]\nkee = 1").unwrap_err();
        assert!(e.to_string().contains("kee"), "{e}");
    }

    #[test]
    fn other_tables_belong_to_the_application() {
        let c = Config::from_toml_str("[chat]\nanything = 1\n[server]\ncount = 3").unwrap();
        assert_eq!(c.count, 3);
    }
}
