//! Outbound connections (Workerman's `AsyncTcpConnection`): what
//! [`crate::Ctx::connect`] takes, and what the worker keeps to reach the
//! peer again.

use crate::error::ConnectError;
use crate::net::OutQueue;
use crate::proto::codec::Wire;
use crate::proto::Protocol;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How [`crate::Ctx::connect`] opens and keeps an outbound connection.
///
/// ```
/// use foreman::{ConnectOptions, Reconnect};
/// use std::time::Duration;
///
/// let opts = ConnectOptions::new()
///     .timeout(Duration::from_secs(3))
///     .reconnect(Reconnect::new(Duration::from_millis(100), Duration::from_secs(10)))
///     .hold(1 << 20);
/// assert!(opts.reconnect.is_some());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// How long the TCP connect, and then the TLS and WebSocket handshakes
    /// each, may take before the attempt fails with
    /// [`crate::ConnError::Timeout`]. Default 10 s.
    pub timeout: Duration,
    /// TLS under `text://`, `frame://` and `tcp://` (for WebSocket the scheme
    /// decides: `wss://`). Default false.
    pub tls: bool,
    /// Trust only the CAs in this PEM file instead of the Mozilla roots
    /// compiled in (`webpki-roots`); for private CAs and tests.
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry; default: the URL's host.
    pub server_name: Option<String>,
    /// WebSocket subprotocols to offer (`Sec-WebSocket-Protocol`), in order
    /// of preference. When any is offered the server must choose one.
    pub protocols: Vec<String>,
    /// More headers for the WebSocket upgrade request (`Origin`,
    /// `Authorization`, ...).
    pub headers: Vec<(String, String)>,
    /// Connect again after a failure or a disconnect; `None` (default): the
    /// connection is gone after its first end.
    pub reconnect: Option<Reconnect>,
    /// What sends do while the connection is not up (before the first
    /// `on_connect`, and between attempts). Default [`WhileDown::Refuse`].
    pub while_down: WhileDown,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(10),
            tls: false,
            ca_file: None,
            server_name: None,
            protocols: Vec::new(),
            headers: Vec::new(),
            reconnect: None,
            while_down: WhileDown::Refuse,
        }
    }
}

impl ConnectOptions {
    /// The defaults: 10 s timeout, no TLS for plain schemes, no reconnect.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`ConnectOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::tls`].
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Sets [`ConnectOptions::ca_file`].
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets [`ConnectOptions::server_name`].
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Adds a subprotocol to offer.
    pub fn protocol(mut self, name: impl Into<String>) -> Self {
        self.protocols.push(name.into());
        self
    }

    /// Adds a header to the upgrade request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets [`ConnectOptions::reconnect`].
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = Some(reconnect);
        self
    }

    /// Holds sends made while the connection is not up, up to `max_bytes`
    /// of encoded frames ([`WhileDown::Hold`]).
    pub fn hold(mut self, max_bytes: usize) -> Self {
        self.while_down = WhileDown::Hold { max_bytes };
        self
    }
}

/// Reconnecting (Workerman's `reConnect`): after a failed attempt or a lost
/// connection the worker waits, then connects again, with the same
/// [`crate::ConnId`]. The wait starts at `initial` and doubles up to `max`;
/// each wait is drawn between half and all of that (jitter), so many clients
/// of one server do not come back in step.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Reconnect {
    /// The first wait. At least 1 ms.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Reconnect {
    /// Waits from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Reconnect {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
        }
    }
}

/// What a send to an outbound connection that is down (connecting, or
/// waiting to reconnect) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhileDown {
    /// The send returns false and nothing is kept. The default.
    Refuse,
    /// The send is kept (it returns true) while at most `max_bytes` are
    /// held; past that it returns false and is counted in
    /// [`crate::Ctx::dropped_sends`]. What is held is written, in order,
    /// right after the next `on_connect`'s own sends.
    Hold {
        /// The bound on held bytes.
        max_bytes: usize,
    },
}

/// What the worker keeps of an outbound connection.
pub(crate) struct Dial {
    pub(crate) addr: SocketAddr,
    /// `host[:port]` as written: the `Host` header.
    pub(crate) authority: String,
    /// Path and query for the WebSocket request.
    pub(crate) path: String,
    /// TLS session settings and the name to verify; `None`: plain.
    pub(crate) tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub(crate) opts: ConnectOptions,
    /// The wait before the next attempt (doubles up to the maximum).
    pub(crate) backoff: Duration,
    /// Sends held while down ([`WhileDown::Hold`]).
    pub(crate) held: OutQueue,
    /// The subprotocol the server chose.
    pub(crate) protocol: Option<String>,
}

impl Dial {
    /// Holds `frame` if the options allow it; false when it is refused.
    pub(crate) fn hold(&mut self, frame: bytes::Bytes) -> bool {
        match self.opts.while_down {
            WhileDown::Hold { max_bytes } if self.held.len() + frame.len() <= max_bytes => {
                self.held.push(frame);
                true
            }
            _ => false,
        }
    }

    /// Whether sends are held while down.
    pub(crate) fn holds(&self) -> bool {
        matches!(self.opts.while_down, WhileDown::Hold { .. })
    }

    /// When the next attempt starts, if there is one; steps the backoff.
    pub(crate) fn next_attempt(&mut self, now: Instant) -> Option<Instant> {
        let r = self.opts.reconnect.as_ref()?;
        let b = self.backoff.max(r.initial);
        let half = b / 2;
        let jitter = crate::entropy::next_u64() % (half.as_micros() as u64 + 1);
        self.backoff = (b * 2).min(r.max);
        Some(now + half + Duration::from_micros(jitter))
    }

    /// A connection came up: the next failure waits `initial` again.
    pub(crate) fn reset_backoff(&mut self) {
        self.backoff = Duration::ZERO;
    }
}

/// A URL that `connect` understands, taken apart.
pub(crate) struct Target {
    pub(crate) wire: Wire,
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) authority: String,
    pub(crate) addr: SocketAddr,
    pub(crate) path: String,
}

/// Parses `ws://`, `wss://`, `text://`, `frame://` and `tcp://` URLs. The
/// host must be an IP literal or `localhost` (names are not resolved on the
/// loop, which must not block).
pub(crate) fn parse_url(url: &str) -> Result<Target, ConnectError> {
    let bad = |why: &str| ConnectError::Url(format!("{url:?}: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme://"))?;
    let (protocol, tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "websocket" => (Protocol::WebSocket, false, Some(80)),
        "wss" => (Protocol::WebSocket, true, Some(443)),
        "text" => (Protocol::Text, false, None),
        "frame" => (Protocol::Frame, false, None),
        "tcp" => (Protocol::Tcp, false, None),
        _ => return Err(bad("scheme must be ws, wss, text, frame or tcp")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
            let port = p.parse::<u16>().map_err(|_| bad("bad port"))?;
            (h, port)
        }
        _ => (authority, default_port.ok_or_else(|| bad("no port"))?),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if bare.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bare.parse::<IpAddr>().map_err(|_| {
            bad("host must be an IP address or localhost (names are not resolved on the event loop; resolve it with spawn_blocking and set server_name for TLS)")
        })?
    };
    Ok(Target {
        wire: Wire {
            protocol,
            masked: protocol == Protocol::WebSocket,
        },
        tls,
        host: bare.to_string(),
        authority: authority.to_string(),
        addr: SocketAddr::new(ip, port),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_scheme_address_and_path() {
        let t = parse_url("ws://127.0.0.1:9000/chat?room=a").unwrap();
        assert_eq!(
            (t.wire.protocol, t.wire.masked, t.tls),
            (Protocol::WebSocket, true, false)
        );
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            (t.path.as_str(), t.authority.as_str()),
            ("/chat?room=a", "127.0.0.1:9000")
        );
        let t = parse_url("wss://localhost").unwrap();
        assert_eq!(
            (t.addr.port(), t.tls, t.host.as_str()),
            (443, true, "localhost")
        );
        let t = parse_url("frame://[::1]:7").unwrap();
        assert_eq!(
            (t.wire.protocol, t.addr),
            (Protocol::Frame, "[::1]:7".parse().unwrap())
        );
        let t = parse_url("ws://127.0.0.1:1?x=1").unwrap();
        assert_eq!(t.path, "/?x=1");
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("127.0.0.1:1", "scheme"),
            ("gopher://1.2.3.4:1", "scheme must be"),
            ("text://1.2.3.4", "no port"),
            ("ws://example.com/", "IP address or localhost"),
            ("tcp://1.2.3.4:99999", "bad port"),
        ] {
            let e = parse_url(url).err().expect(url).to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn backoff_doubles_to_the_maximum_with_jitter() {
        let r = Reconnect::new(Duration::from_millis(100), Duration::from_millis(400));
        let mut d = Dial {
            addr: "127.0.0.1:1".parse().unwrap(),
            authority: String::new(),
            path: String::new(),
            tls: None,
            opts: ConnectOptions::new().reconnect(r),
            backoff: Duration::ZERO,
            held: OutQueue::default(),
            protocol: None,
        };
        let t = Instant::now();
        for want in [100, 200, 400, 400] {
            let wait = d.next_attempt(t).unwrap() - t;
            let want = Duration::from_millis(want);
            assert!(wait >= want / 2 && wait <= want, "{wait:?} for {want:?}");
        }
        d.reset_backoff();
        assert!(d.next_attempt(t).unwrap() - t <= Duration::from_millis(100));
    }
}
