//! The `cluster-fanout` scenario's extra parts: a `redis-server` of the
//! bench's own, one config file per node with its `[cluster]` table, and a
//! probe that waits until every node's broadcasts reach every other node
//! before any load generator connects.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;
use crate::wire::{self, MaskRng};

/// Redis and the node configs of one run; the server is killed on drop.
pub struct Cluster {
    /// The Redis server joining the nodes.
    pub redis: RedisServer,
    configs: Vec<PathBuf>,
}

/// Node names: `a`, `b`, ...
fn node_name(i: usize) -> String {
    char::from(b'a' + (i % 26) as u8).to_string()
}

impl Cluster {
    /// Starts Redis and writes `nodes` config files under `out`.
    pub fn start(nodes: usize, tag: &str, out: &Path) -> Result<Cluster, String> {
        let redis = RedisServer::start()?;
        let dir = out.join("cluster");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut configs = Vec::new();
        for i in 0..nodes {
            let path = dir.join(format!("{tag}-{}.toml", node_name(i)));
            let toml = format!(
                "[cluster]\nredis_url = \"{}\"\nnode = \"{}\"\n",
                redis.url(),
                node_name(i)
            );
            std::fs::write(&path, toml).map_err(|e| format!("{}: {e}", path.display()))?;
            configs.push(path);
        }
        Ok(Cluster { redis, configs })
    }

    /// Node `i`'s name and config file.
    pub fn node(&self, i: usize) -> (String, &Path) {
        (node_name(i), &self.configs[i])
    }
}

/// One probe connection, blocking, with a short read timeout.
pub struct Probe {
    stream: TcpStream,
    buf: Vec<u8>,
    rng: MaskRng,
}

impl Probe {
    /// Connects to `addr` and upgrades on path `path`.
    pub fn connect(addr: SocketAddr, path: &str) -> Result<Probe, String> {
        let err = |e: std::io::Error| format!("probe {addr}: {e}");
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(err)?;
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(err)?;
        stream
            .write_all(&wire::upgrade_request(&addr.to_string(), path))
            .map_err(err)?;
        let mut p = Probe {
            stream,
            buf: Vec::new(),
            rng: MaskRng::new(addr.port() as u32),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match wire::parse_upgrade(&p.buf) {
                wire::Upgrade::Done(n) => {
                    p.buf.drain(..n);
                    return Ok(p);
                }
                wire::Upgrade::Refused => return Err(format!("probe {addr}: upgrade refused")),
                wire::Upgrade::Partial if Instant::now() > deadline => {
                    return Err(format!("probe {addr}: no upgrade within 5 s"))
                }
                wire::Upgrade::Partial => p.fill()?,
            }
        }
    }

    /// Reads what arrives within the read timeout.
    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("probe: the server closed the connection".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("probe: {e}")),
        }
    }

    /// Sends text frame `text`.
    pub fn send(&mut self, text: &[u8]) -> Result<(), String> {
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, wire::OP_TEXT, text, &mut self.rng);
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("probe: {e}"))
    }

    /// Whether a text frame for which `hit` holds came in within the read
    /// timeout (frames before it are dropped).
    pub fn received_matching(&mut self, hit: impl Fn(&[u8]) -> bool) -> Result<bool, String> {
        self.fill()?;
        while let Some(f) = wire::parse_frame(&mut self.buf) {
            let hit = f.opcode == wire::OP_TEXT && hit(&self.buf[f.start..f.start + f.len]);
            self.buf.drain(..f.start + f.len);
            if hit {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// How the probes speak to the nodes: the broadcast example's raw texts, or
/// an application's protocol.
pub struct Speech<'a> {
    /// The WebSocket path.
    pub path: &'a str,
    /// Readies probe `i` (an application's login, ...) before any probe text.
    pub setup: &'a dyn Fn(&mut Probe, usize) -> Result<(), String>,
    /// The frame that sends probe text `text` to the other nodes.
    pub say: &'a dyn Fn(&str) -> String,
    /// What a frame that carries `text` contains.
    pub heard: &'a dyn Fn(&str) -> String,
}

/// The broadcast example's: every text to every connection.
pub const BROADCAST: Speech<'static> = Speech {
    path: "/",
    setup: &|_, _| Ok(()),
    say: &|text| text.to_string(),
    heard: &|text| text.to_string(),
};

/// Waits until a broadcast from each node reaches every other node, within
/// `limit`: the nodes have found each other through Redis. The probe's
/// connections close before the load generators connect.
pub fn wait_routing(addrs: &[SocketAddr], limit: Duration, speech: &Speech) -> Result<(), String> {
    let mut probes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut probe = Probe::connect(*addr, speech.path)?;
        (speech.setup)(&mut probe, i)?;
        probes.push(probe);
    }
    let deadline = Instant::now() + limit;
    for from in 0..probes.len() {
        for to in (0..probes.len()).filter(|t| *t != from) {
            let mut attempt = 0u32;
            'pair: loop {
                let text = format!("probe {from}->{to} #{attempt}");
                probes[from].send((speech.say)(&text).as_bytes())?;
                let heard = (speech.heard)(&text);
                // Resend every 500 ms: a node that was not subscribed yet
                // missed the earlier ones.
                let resend = Instant::now() + Duration::from_millis(500);
                while Instant::now() < resend {
                    let hit = |t: &[u8]| t.windows(heard.len()).any(|w| w == heard.as_bytes());
                    if probes[to].received_matching(hit)? {
                        break 'pair;
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "cluster: node {from}'s broadcasts did not reach node {to} within {} s",
                        limit.as_secs()
                    ));
                }
                attempt += 1;
            }
        }
    }
    Ok(())
}
