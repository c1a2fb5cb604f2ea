//! Between nodes: one worker's part of a cluster of servers that share a
//! Redis server (`[cluster]` in the config).
//!
//! # What each worker does
//!
//! Each worker is a *unit* of the cluster (its node's name and its slot) and
//! holds two Redis connections in its own loop ([`super::redis::Link`]): one
//! for commands, one subscribed to two channels: `{prefix}:reg`, where every
//! unit announces changes to its connections' registry entries, and
//! `{prefix}:n:{node}`, where other nodes send what is for this node.
//!
//! # Presence: each unit owns its facts
//!
//! A unit keeps its connections' entries (uid, groups, session) in one Redis
//! hash, `{prefix}:u:{node}:{slot}`, one field per connection, plus a field
//! `~` with the unit's `epoch` and `seq`. Every loop turn that changed any
//! of its entries becomes one numbered *batch*: in one `MULTI`, the changed
//! fields are written or deleted, `~` is set to the new `seq`, and the batch
//! (the bus records of the changes) is published on `{prefix}:reg`. Every
//! third of `presence_ttl` the unit refreshes the hash's expiry (`PEXPIRE`,
//! `presence_ttl`), its score in the `{prefix}:units` sorted set (expiry
//! time, so a joining node finds the units), and publishes a heartbeat with
//! its current `seq`. Redis 7.0 has no per-field expiry; one hash per unit
//! that expires as a whole, refreshed by its only writer, needs none.
//!
//! Every other unit keeps a replica of it in the worker's registry, so
//! queries are answered locally. A replica is taken up by reading the hash
//! (`HGETALL`) while the batches that arrive meanwhile are kept; it then
//! applies the kept batches numbered after the hash's `seq`. A batch that
//! skips a number (lost while a link was down), a new `epoch` (the unit
//! restarted or reconnected) or a heartbeat ahead of what was applied makes
//! the replica read the hash again. A unit not heard from for `presence_ttl`
//! is dropped: a dead node vanishes from every other node's answers within
//! `presence_ttl` plus one heartbeat.
//!
//! When its command link comes up, a unit *asserts* its state: a new, greater
//! epoch, the hash rewritten from scratch, a heartbeat; every replica then
//! reads it again. So nothing it did while Redis was away is lost from the
//! others' view once Redis is back, and nothing is replayed.
//!
//! # Sends
//!
//! A send to a group, uids or everyone goes to every other node known from
//! the replicas, as one bus record per node, published on that node's
//! channel: encoded once, published once per node, never once per
//! recipient. A send to one connection goes to its node only. Each worker of
//! the receiving node resolves the target against its own connections, as
//! the bus does. Every record for one node in one loop turn is one
//! `PUBLISH`, in order.
//!
//! # Outage
//!
//! Redis down, unreachable, or not answering within `presence_ttl` (a
//! stopped process): the links are dropped and made again with backoff
//! (100 ms doubling to 2 s). Meanwhile local service goes on; the cross-node
//! part of every send fails: the send returns false, the loss is counted
//! ([`ClusterStats::dropped`], shown by `status`), and logged at most once a
//! second. A `PUBLISH` that reached no subscriber (the node left) counts the
//! same way. Nothing is queued for later.

use super::redis::Link;
use super::registry::Registry;
use super::resp::Value;
use super::wire::{self, Record};
use crate::config::ClusterConfig;
use crate::id::ConnId;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use mio::Token;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Token of the command link.
pub(crate) const CMD: Token = Token(usize::MAX - 10);
/// Token of the subscriber link.
pub(crate) const SUB: Token = Token(usize::MAX - 11);
/// What one call reads of one link, as for a client.
const READ_BUDGET: usize = 256 * 1024;
/// Batches kept for one replica while its hash is read; past this it is
/// read again afterwards.
const MAX_KEPT: usize = 10_000;
/// Fields written by one `HSET` when a unit asserts its state.
const HSET_CHUNK: usize = 512;

mod kind {
    pub const BATCH: u8 = 1;
    pub const BEAT: u8 = 2;
    pub const BYE: u8 = 3;
    pub const DELIVER: u8 = 4;
}

/// Counters and state shown by `status` and [`crate::Ctx::cluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    /// Both links are up and subscribed.
    pub connected: bool,
    /// When `connected` last changed (or the worker started).
    pub since: Option<SystemTime>,
    /// Cross-node parts of sends that were not delivered: Redis was down or
    /// behind, or no worker of the node was subscribed.
    pub dropped: u64,
    /// Other nodes this worker knows of.
    pub nodes: usize,
    /// Connections of other nodes in this worker's registry.
    pub remote_connections: usize,
    /// Times a link to Redis was lost.
    pub disconnects: u64,
}

/// What the cluster tells the core to do.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Forget every connection of a unit.
    ClearUnit(u32, u16),
    /// A registry change of a unit's own connection.
    Apply(u32, u16, Record),
    /// Something for this node: a delivery, a close, a request, an ungroup.
    Node(Record),
    /// The command link is up: call [`Cluster::assert_state`].
    Assert,
}

/// A reply the command link owes, in order.
enum Reply {
    Ignore,
    /// `EXEC` of a batch: an error means the hash may not hold this unit's
    /// state, which is then asserted again.
    Exec,
    /// `EXEC` of a heartbeat: as `Exec`, and a `PEXPIRE` that found no hash
    /// (it expired or was evicted) also means asserting again.
    Beat,
    /// `PUBLISH` of `records` records to a node: 0 receivers is a loss.
    Published(usize),
    Units,
    Snapshot(u32, u16, u64),
}

/// One message on a channel, parsed.
struct Msg {
    kind: u8,
    node: u32,
    slot: u16,
    epoch: u64,
    seq: u64,
    name: String,
    body: Bytes,
}

/// A replica of another unit.
struct Remote {
    name: String,
    epoch: u64,
    seq: u64,
    heard: Instant,
    /// Its hash is being read (the number of that read), and what came
    /// meanwhile.
    fetching: Option<(u64, Vec<Msg>, bool)>,
}

/// A log line at most once a second, with a count of what was held back.
#[derive(Default)]
struct Quiet {
    last: Option<Instant>,
    held: u64,
}

impl Quiet {
    fn log(&mut self, now: Instant, line: impl FnOnce() -> String) {
        if self.last.is_some_and(|t| now < t + Duration::from_secs(1)) {
            self.held += 1;
            return;
        }
        let held = std::mem::take(&mut self.held);
        if held > 0 {
            log::warn!("cluster: {} ({held} more like it)", line());
        } else {
            log::warn!("cluster: {}", line());
        }
        self.last = Some(now);
    }
}

/// One worker's part of the cluster; see the module docs.
pub(crate) struct Cluster {
    cfg: ClusterConfig,
    node: u32,
    slot: u16,
    cmd: Link,
    sub: Link,
    replies: VecDeque<(Instant, Reply)>,
    /// Subscription confirmations still to come.
    confirms: usize,
    subscribed: bool,
    /// Pings sent on the subscriber link and not answered.
    sub_pings: VecDeque<Instant>,
    epoch: u64,
    seq: u64,
    asserted: bool,
    resync: bool,
    /// This turn's registry changes of own connections.
    batch: BytesMut,
    changed: HashSet<ConnId>,
    /// This turn's records for each other node.
    outgoing: BTreeMap<u32, (usize, BytesMut)>,
    remotes: HashMap<(u32, u16), Remote>,
    /// Other nodes: name and how many of its units are known.
    nodes: BTreeMap<u32, (String, usize)>,
    next_beat: Instant,
    fetches: u64,
    /// The links' buffer cap.
    cap: usize,
    /// Units whose hash Redis refused to read, asked again at the next
    /// heartbeat.
    retry: HashSet<(u32, u16)>,
    /// Links that had more to read when their budget ran out.
    unread: Vec<Token>,
    pub(crate) stats: ClusterStats,
    quiet: Quiet,
    names: Names,
}

/// Keys and channels.
struct Names {
    reg: String,
    units: String,
    own_unit: String,
    own_member: String,
    own_channel: String,
    prefix: String,
}

impl Names {
    fn unit(&self, node: &str, slot: u16) -> String {
        format!("{}:u:{node}:{slot}", self.prefix)
    }
    fn node_channel(&self, node: &str) -> String {
        format!("{}:n:{node}", self.prefix)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn field(id: ConnId) -> [u8; 18] {
    let mut f = [0u8; 18];
    f[..4].copy_from_slice(&id.node.to_le_bytes());
    f[4..6].copy_from_slice(&id.worker.to_le_bytes());
    f[6..10].copy_from_slice(&id.key.to_le_bytes());
    f[10..].copy_from_slice(&id.serial.to_le_bytes());
    f
}

fn parse_field(f: &[u8]) -> Option<ConnId> {
    if f.len() != 18 {
        return None;
    }
    Some(ConnId::on_node(
        u32::from_le_bytes(f[..4].try_into().ok()?),
        u16::from_le_bytes(f[4..6].try_into().ok()?),
        u32::from_le_bytes(f[6..10].try_into().ok()?),
        u64::from_le_bytes(f[10..].try_into().ok()?),
    ))
}

/// The records that recreate one connection's entry (without its Open).
pub(crate) fn describe(registry: &Registry, id: ConnId, out: &mut BytesMut) {
    let (uid, groups, session) = registry.describe(id);
    if let Some(uid) = uid {
        wire::encode(out, &Record::Bind(id, uid.to_string()));
    }
    for g in groups {
        wire::encode(out, &Record::Join(id, g.to_string()));
    }
    if let Some(s) = session {
        wire::encode(out, &Record::Session(id, Some(s.clone())));
    }
}

/// Reads one cluster message as the subscriber does, for the fuzzer: how
/// many records it holds, or `None` if it is malformed.
pub(crate) fn read_message(b: Bytes) -> Option<usize> {
    let m = Cluster::parse(b)?;
    decode_records(&m.body).ok().map(|r| r.len())
}

fn decode_records(body: &Bytes) -> Result<Vec<Record>, wire::Corrupt> {
    let mut buf = BytesMut::from(&body[..]);
    let mut out = Vec::new();
    while let Some(rec) = wire::decode(&mut buf)? {
        out.push(rec);
    }
    if !buf.is_empty() {
        return Err(wire::Corrupt);
    }
    Ok(out)
}

impl Cluster {
    pub(crate) fn new(cfg: &ClusterConfig, slot: u16, cap: usize, now: Instant) -> Cluster {
        let p = &cfg.prefix;
        let names = Names {
            reg: format!("{p}:reg"),
            units: format!("{p}:units"),
            own_unit: format!("{p}:u:{}:{slot}", cfg.node),
            own_member: format!("{}:{slot}", cfg.node),
            own_channel: format!("{p}:n:{}", cfg.node),
            prefix: p.clone(),
        };
        Cluster {
            node: cfg.node_number(),
            slot,
            cmd: Link::new(CMD, cfg.redis.clone(), cfg.addr, cap, now),
            sub: Link::new(SUB, cfg.redis.clone(), cfg.addr, cap, now),
            replies: VecDeque::new(),
            confirms: 0,
            subscribed: false,
            sub_pings: VecDeque::new(),
            epoch: 0,
            seq: 0,
            asserted: false,
            resync: false,
            batch: BytesMut::new(),
            changed: HashSet::new(),
            outgoing: BTreeMap::new(),
            remotes: HashMap::new(),
            nodes: BTreeMap::new(),
            next_beat: now,
            fetches: 0,
            cap,
            retry: HashSet::new(),
            unread: Vec::new(),
            stats: ClusterStats {
                since: Some(SystemTime::now()),
                ..Default::default()
            },
            quiet: Quiet::default(),
            names,
            cfg: cfg.clone(),
        }
    }

    fn connected(&self) -> bool {
        self.cmd.is_up() && self.subscribed && self.asserted
    }

    fn set_connected(&mut self) {
        let c = self.connected();
        if c != self.stats.connected {
            self.stats.connected = c;
            self.stats.since = Some(SystemTime::now());
            if c {
                log::info!(
                    "cluster: node {} worker {} connected to {}",
                    self.cfg.node,
                    self.slot,
                    self.cfg.redis
                );
            }
        }
    }

    /// The earliest time [`Cluster::tick`] has work.
    pub(crate) fn next_due(&self) -> Instant {
        let mut t = self.next_beat;
        for r in [self.cmd.retry_at(), self.sub.retry_at()]
            .into_iter()
            .flatten()
        {
            t = t.min(r);
        }
        t
    }

    fn header(&self, out: &mut BytesMut, kind: u8, seq: u64) {
        out.put_u8(kind);
        out.put_u32_le(self.node);
        out.put_u16_le(self.slot);
        out.put_u64_le(self.epoch);
        out.put_u64_le(seq);
        out.put_u16_le(self.cfg.node.len() as u16);
        out.put_slice(self.cfg.node.as_bytes());
    }

    fn parse(mut b: Bytes) -> Option<Msg> {
        if b.remaining() < 1 + 4 + 2 + 8 + 8 + 2 {
            return None;
        }
        let kind = b.get_u8();
        let node = b.get_u32_le();
        let slot = b.get_u16_le();
        let epoch = b.get_u64_le();
        let seq = b.get_u64_le();
        let n = b.get_u16_le() as usize;
        if b.remaining() < n {
            return None;
        }
        let name = String::from_utf8(b.split_to(n).to_vec()).ok()?;
        Some(Msg {
            kind,
            node,
            slot,
            epoch,
            seq,
            name,
            body: b,
        })
    }

    // ----- links -----

    /// Connects what is down and due, sends heartbeats, drops replicas not
    /// heard from and links that stopped answering.
    pub(crate) fn tick(&mut self, mio: &mio::Registry, now: Instant, out: &mut Vec<Incoming>) {
        let ttl = self.cfg.presence_ttl;
        if self.replies.front().is_some_and(|(t, _)| now > *t + ttl) {
            self.lost(CMD, mio, now, "Redis did not answer in presence_ttl_ms");
        }
        if self.sub_pings.front().is_some_and(|t| now > *t + ttl) {
            self.lost(SUB, mio, now, "Redis did not answer in presence_ttl_ms");
        }
        for token in [CMD, SUB] {
            if self.link(token).connect_overdue(now, ttl) {
                self.lost(
                    token,
                    mio,
                    now,
                    "connecting took longer than presence_ttl_ms",
                );
            }
            let link = self.link(token);
            match link.try_connect(mio, now) {
                Ok(true) if token == CMD => {
                    // AUTH and SELECT are queued first: their replies come
                    // before those of anything sent after.
                    let skip = self.cmd.handshake_replies();
                    self.replies.extend((0..skip).map(|_| (now, Reply::Ignore)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.link(token).drop_link(mio, now);
                    let url = self.cfg.redis.to_string();
                    self.quiet
                        .log(now, || format!("cannot connect to {url}: {e}"));
                }
            }
        }
        if now >= self.next_beat {
            self.next_beat = now + self.cfg.heartbeat();
            self.beat();
            for (node, slot) in std::mem::take(&mut self.retry) {
                self.fetch(node, slot, now, Vec::new());
            }
            if self.subscribed && self.sub.command(&[&b"PING"[..]]) {
                self.sub_pings.push_back(now);
            }
            let gone: Vec<(u32, u16)> = self
                .remotes
                .iter()
                .filter(|(_, r)| now > r.heard + ttl)
                .map(|(k, _)| *k)
                .collect();
            for (node, slot) in gone {
                log::info!(
                    "cluster: unit {}:{slot} not heard from in {} ms; dropping its connections",
                    self.remotes[&(node, slot)].name,
                    ttl.as_millis()
                );
                self.forget(node, slot, out);
            }
        }
        self.stats.nodes = self.nodes.len();
    }

    fn link(&mut self, token: Token) -> &mut Link {
        if token == CMD {
            &mut self.cmd
        } else {
            &mut self.sub
        }
    }

    fn lost(&mut self, token: Token, mio: &mio::Registry, now: Instant, why: &str) {
        let was_up = self.link(token).is_up();
        self.link(token).drop_link(mio, now);
        if token == CMD {
            // Deliveries written or queued and not confirmed: lost with the
            // link, and counted.
            let unconfirmed: usize = self
                .replies
                .iter()
                .map(|(_, r)| match r {
                    Reply::Published(n) => *n,
                    _ => 0,
                })
                .sum();
            self.stats.dropped += unconfirmed as u64;
            self.replies.clear();
            self.asserted = false;
        } else {
            self.subscribed = false;
            self.confirms = 0;
            self.sub_pings.clear();
        }
        if was_up {
            self.stats.disconnects += 1;
        }
        let which = if token == CMD {
            "command"
        } else {
            "subscriber"
        };
        let url = self.cfg.redis.to_string();
        self.quiet.log(now, || {
            format!("{which} link to {url} lost: {why}; reconnecting")
        });
        self.set_connected();
    }

    /// A readiness event on one of the links.
    pub(crate) fn event(
        &mut self,
        token: Token,
        ev: &mio::event::Event,
        mio: &mio::Registry,
        now: Instant,
        out: &mut Vec<Incoming>,
    ) {
        let came_up = match self.link(token).ready(ev.is_writable()) {
            Ok(up) => up,
            Err(e) => return self.lost(token, mio, now, &e.to_string()),
        };
        if came_up {
            if token == CMD {
                // (The handshake's replies were expected at the connect.)
                out.push(Incoming::Assert);
            } else {
                self.confirms = self.sub.handshake_replies() + 2;
                let (reg, own) = (self.names.reg.clone(), self.names.own_channel.clone());
                self.sub
                    .command(&[b"SUBSCRIBE", reg.as_bytes(), own.as_bytes()]);
                let _ = self.sub.flush();
            }
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read(token, mio, now, out);
        }
    }

    /// Whether a link has more to read (the loop must not wait).
    pub(crate) fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Reads on where the budget stopped last turn.
    pub(crate) fn read_unread(
        &mut self,
        mio: &mio::Registry,
        now: Instant,
        out: &mut Vec<Incoming>,
    ) {
        for token in std::mem::take(&mut self.unread) {
            self.read(token, mio, now, out);
        }
    }

    /// Reads one link within its budget; a link with more is read again
    /// next turn.
    fn read(&mut self, token: Token, mio: &mio::Registry, now: Instant, out: &mut Vec<Incoming>) {
        let mut values = Vec::new();
        let r = self.link(token).read(READ_BUDGET, |v| values.push(v));
        for v in values {
            if token == CMD {
                self.on_reply(v, now, out);
            } else {
                self.on_push(v, now, out);
            }
        }
        match r {
            Ok(true) if !self.unread.contains(&token) => self.unread.push(token),
            Ok(_) => {}
            Err(e) => self.lost(token, mio, now, &e.to_string()),
        }
    }

    /// Writes what is queued, at the end of a loop turn: this turn's batch
    /// and records for other nodes first.
    pub(crate) fn flush(&mut self, registry: &Registry, mio: &mio::Registry, now: Instant) {
        self.flush_batch(registry, now);
        self.flush_outgoing(now);
        for token in [CMD, SUB] {
            if self.link(token).over_cap() {
                self.lost(token, mio, now, "Redis fell too far behind");
                continue;
            }
            if let Err(e) = self.link(token).flush() {
                self.lost(token, mio, now, &e.to_string());
            }
        }
    }

    fn send(&mut self, args: &[&[u8]], reply: Reply, now: Instant) -> bool {
        if self.cmd.command(args) {
            self.replies.push_back((now, reply));
            true
        } else {
            false
        }
    }

    // ----- own state -----

    /// The start of an `HSET` of this unit's hash that sets its `~` field
    /// (epoch and seq).
    fn hset_meta(&self) -> Vec<Vec<u8>> {
        let meta = format!("{} {}", self.epoch, self.seq);
        vec![
            b"HSET".to_vec(),
            self.names.own_unit.clone().into(),
            b"~".to_vec(),
            meta.into(),
        ]
    }

    /// Writes this unit's whole state under a new epoch (the command link
    /// just came up) and asks for every other unit's.
    pub(crate) fn assert_state(&mut self, registry: &Registry, own: &[ConnId], now: Instant) {
        // Epochs grow (wall-clock ms, with random low bits against two
        // asserts in one ms), so a message of an older epoch that arrives
        // late is told apart from a newer one and ignored.
        self.epoch = (wall_ms() << 16 | crate::entropy::next_u64() & 0xffff).max(self.epoch + 1);
        self.seq = 0;
        self.batch.clear();
        self.changed.clear();
        let key = self.names.own_unit.clone();
        self.send(&[b"MULTI"], Reply::Ignore, now);
        self.send(&[b"DEL", key.as_bytes()], Reply::Ignore, now);
        let mut args = self.hset_meta();
        let mut state = BytesMut::new();
        for &id in own {
            state.clear();
            describe(registry, id, &mut state);
            args.push(field(id).to_vec());
            args.push(state.to_vec());
            if args.len() >= 2 + HSET_CHUNK * 2 {
                let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                self.send(&a, Reply::Ignore, now);
                args.truncate(2);
            }
        }
        if args.len() > 2 {
            let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            self.send(&a, Reply::Ignore, now);
        }
        self.asserted = true;
        self.beat_commands(now, Reply::Exec);
        self.cmd.exempt_queued();
        self.resync = true;
        self.request_resync(now);
        self.set_connected();
    }

    fn beat(&mut self) {
        if self.cmd.is_up() && self.asserted {
            let now = Instant::now();
            self.send(&[b"MULTI"], Reply::Ignore, now);
            self.beat_commands(now, Reply::Beat);
        }
    }

    /// The rest of a `MULTI` that refreshes this unit's expiry and publishes
    /// a heartbeat, then `EXEC`.
    fn beat_commands(&mut self, now: Instant, exec: Reply) {
        let ttl = self.cfg.presence_ttl.as_millis().to_string();
        let key = self.names.own_unit.clone();
        let wall = wall_ms();
        let expiry = (wall + self.cfg.presence_ttl.as_millis() as u64).to_string();
        let stale = wall
            .saturating_sub(self.cfg.presence_ttl.as_millis() as u64 * 2)
            .to_string();
        let (units, member, reg) = (
            self.names.units.clone(),
            self.names.own_member.clone(),
            self.names.reg.clone(),
        );
        let mut msg = BytesMut::new();
        self.header(&mut msg, kind::BEAT, self.seq);
        self.send(
            &[b"PEXPIRE", key.as_bytes(), ttl.as_bytes()],
            Reply::Ignore,
            now,
        );
        self.send(
            &[
                b"ZADD",
                units.as_bytes(),
                expiry.as_bytes(),
                member.as_bytes(),
            ],
            Reply::Ignore,
            now,
        );
        self.send(
            &[
                b"ZREMRANGEBYSCORE",
                units.as_bytes(),
                b"-inf",
                stale.as_bytes(),
            ],
            Reply::Ignore,
            now,
        );
        self.send(&[b"PUBLISH", reg.as_bytes(), &msg], Reply::Ignore, now);
        self.send(&[b"EXEC"], exec, now);
    }

    /// Reads the list of units once both links are up, then every unit's
    /// hash.
    fn request_resync(&mut self, now: Instant) {
        if !(self.resync && self.subscribed && self.cmd.is_up() && self.asserted) {
            return;
        }
        let units = self.names.units.clone();
        if self.send(
            &[b"ZRANGE", units.as_bytes(), b"0", b"-1"],
            Reply::Units,
            now,
        ) {
            self.resync = false;
        }
    }

    /// A registry change of an own connection, for this turn's batch.
    pub(crate) fn note(&mut self, rec: &Record) {
        if !self.asserted {
            // Asserted whole when the link comes back.
            return;
        }
        let id = match rec {
            Record::Open(id)
            | Record::Close(id)
            | Record::Bind(id, _)
            | Record::Unbind(id)
            | Record::Join(id, _)
            | Record::Leave(id, _)
            | Record::Session(id, _) => *id,
            _ => return,
        };
        wire::encode(&mut self.batch, rec);
        self.changed.insert(id);
    }

    fn flush_batch(&mut self, registry: &Registry, now: Instant) {
        if self.batch.is_empty() || !self.cmd.is_up() || !self.asserted {
            return;
        }
        self.seq += 1;
        let key = self.names.own_unit.clone();
        let reg = self.names.reg.clone();
        let mut set = self.hset_meta();
        let mut del: Vec<Vec<u8>> = vec![b"HDEL".to_vec(), key.clone().into()];
        let mut state = BytesMut::new();
        for id in self.changed.drain() {
            if registry.contains(id) {
                state.clear();
                describe(registry, id, &mut state);
                set.push(field(id).to_vec());
                set.push(state.to_vec());
            } else {
                del.push(field(id).to_vec());
            }
        }
        let mut msg = BytesMut::new();
        self.header(&mut msg, kind::BATCH, self.seq);
        msg.extend_from_slice(&self.batch);
        self.batch.clear();
        self.send(&[b"MULTI"], Reply::Ignore, now);
        if del.len() > 2 {
            let a: Vec<&[u8]> = del.iter().map(Vec::as_slice).collect();
            self.send(&a, Reply::Ignore, now);
        }
        let a: Vec<&[u8]> = set.iter().map(Vec::as_slice).collect();
        self.send(&a, Reply::Ignore, now);
        self.send(&[b"PUBLISH", reg.as_bytes(), &msg], Reply::Ignore, now);
        self.send(&[b"EXEC"], Reply::Exec, now);
    }

    /// Says goodbye when the worker stops: the hash goes, and every replica
    /// drops this unit at once.
    pub(crate) fn leave(&mut self, now: Instant) {
        if !self.cmd.is_up() || !self.asserted {
            return;
        }
        let (key, units, member, reg) = (
            self.names.own_unit.clone(),
            self.names.units.clone(),
            self.names.own_member.clone(),
            self.names.reg.clone(),
        );
        let mut msg = BytesMut::new();
        self.header(&mut msg, kind::BYE, self.seq);
        self.send(&[b"DEL", key.as_bytes()], Reply::Ignore, now);
        self.send(
            &[b"ZREM", units.as_bytes(), member.as_bytes()],
            Reply::Ignore,
            now,
        );
        self.send(&[b"PUBLISH", reg.as_bytes(), &msg], Reply::Ignore, now);
        let _ = self.cmd.flush();
    }

    // ----- sends to other nodes -----

    /// Queues `rec` for every other node. False if any part cannot go.
    pub(crate) fn send_all_nodes(&mut self, rec: &Record, now: Instant) -> bool {
        if !self.connected() {
            // Other nodes may exist that this worker cannot know of now.
            let n = self.nodes.len().max(1);
            return self.fail(now, n);
        }
        let mut one = BytesMut::new();
        wire::encode(&mut one, rec);
        if !self.fits(one.len(), now) {
            let n = self.nodes.len();
            return self.fail(now, n);
        }
        for (count, buf) in self.outgoing_for_all() {
            *count += 1;
            buf.extend_from_slice(&one);
        }
        true
    }

    fn outgoing_for_all(&mut self) -> impl Iterator<Item = &mut (usize, BytesMut)> {
        for node in self.nodes.keys() {
            self.outgoing.entry(*node).or_default();
        }
        self.outgoing.values_mut()
    }

    /// Queues `rec` for one node. False if it cannot go.
    pub(crate) fn send_node(&mut self, node: u32, rec: &Record, now: Instant) -> bool {
        if !self.connected() || !self.nodes.contains_key(&node) {
            return self.fail(now, 1);
        }
        let mut one = BytesMut::new();
        wire::encode(&mut one, rec);
        if !self.fits(one.len(), now) {
            return self.fail(now, 1);
        }
        let (count, buf) = self.outgoing.entry(node).or_default();
        *count += 1;
        buf.extend_from_slice(&one);
        true
    }

    /// Whether a record of `len` bytes may cross: at most a quarter of the
    /// link's buffer cap, so one send cannot make the link look stuck.
    fn fits(&mut self, len: usize, now: Instant) -> bool {
        let max = self.cap / 4;
        if len <= max {
            return true;
        }
        self.quiet.log(now, || {
            format!("a send of {len} bytes is over the cluster's limit of {max} (bus_peer_buffer_bytes / 4)")
        });
        false
    }

    fn fail(&mut self, now: Instant, n: usize) -> bool {
        self.stats.dropped += n as u64;
        let url = self.cfg.redis.to_string();
        let total = self.stats.dropped;
        self.quiet.log(now, || {
            format!("not connected to {url}: a send to other nodes was dropped ({total} so far)")
        });
        false
    }

    fn flush_outgoing(&mut self, now: Instant) {
        if self.outgoing.is_empty() {
            return;
        }
        let outgoing = std::mem::take(&mut self.outgoing);
        for (node, (count, records)) in outgoing {
            if count == 0 {
                continue;
            }
            let Some((name, _)) = self.nodes.get(&node) else {
                self.fail(now, count);
                continue;
            };
            let channel = self.names.node_channel(name);
            let mut msg = BytesMut::with_capacity(records.len() + 64);
            self.header(&mut msg, kind::DELIVER, 0);
            msg.extend_from_slice(&records);
            if !self.send(
                &[b"PUBLISH", channel.as_bytes(), &msg],
                Reply::Published(count),
                now,
            ) {
                self.fail(now, count);
            }
        }
    }

    // ----- what Redis says -----

    fn on_reply(&mut self, v: Value, now: Instant, out: &mut Vec<Incoming>) {
        let Some((_, reply)) = self.replies.pop_front() else {
            log::warn!("cluster: a reply nobody asked for: {v:?}");
            return;
        };
        match reply {
            Reply::Ignore => {
                if let Value::Error(e) = &v {
                    let e = String::from_utf8_lossy(e).into_owned();
                    self.quiet
                        .log(now, || format!("Redis refused a command: {e}"));
                }
            }
            Reply::Beat if v.items().first().and_then(Value::int) == Some(0) => {
                self.quiet.log(now, || {
                    "this unit's hash was gone from Redis (expired or evicted); writing it again"
                        .into()
                });
                self.reassert(out);
            }
            Reply::Exec | Reply::Beat => {
                let errors: Vec<String> = v
                    .items()
                    .iter()
                    .filter_map(|i| match i {
                        Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
                        _ => None,
                    })
                    .collect();
                if v.is_error() || !errors.is_empty() {
                    self.quiet.log(now, || {
                        format!("Redis refused a batch: {v:?} {errors:?}; writing this unit's state again")
                    });
                    self.reassert(out);
                }
            }
            Reply::Published(n) => {
                if v.int() == Some(0) {
                    self.stats.dropped += n as u64;
                }
            }
            Reply::Units => {
                for m in v.into_items() {
                    let Some(m) = m
                        .bytes()
                        .and_then(|b| std::str::from_utf8(b).ok().map(str::to_string))
                    else {
                        continue;
                    };
                    let Some((name, slot)) = m.rsplit_once(':') else {
                        continue;
                    };
                    let Ok(slot) = slot.parse::<u16>() else {
                        continue;
                    };
                    let node = crate::config::node_number(name);
                    if node == self.node {
                        continue;
                    }
                    self.track(node, slot, name, now);
                    self.fetch(node, slot, now, Vec::new());
                }
            }
            Reply::Snapshot(node, slot, n) => self.on_snapshot(node, slot, n, v, now, out),
        }
    }

    /// Writes this unit's whole state again, under a new epoch, once the
    /// core hands it over (what it holds in Redis may be missing).
    fn reassert(&mut self, out: &mut Vec<Incoming>) {
        if self.asserted {
            self.asserted = false;
            out.push(Incoming::Assert);
        }
    }

    fn on_push(&mut self, v: Value, now: Instant, out: &mut Vec<Incoming>) {
        let items = v.items();
        let kind = items
            .first()
            .and_then(Value::bytes)
            .map(|b| b.to_ascii_lowercase());
        match kind.as_deref() {
            Some(b"message") => {
                if let Some(payload) = items.get(2).and_then(Value::bytes) {
                    match Self::parse(payload.clone()) {
                        Some(m) => self.on_message(m, now, out),
                        None => self.quiet.log(now, || "a malformed cluster message".into()),
                    }
                }
            }
            Some(b"subscribe") => {
                self.confirms = self.confirms.saturating_sub(1);
                if self.confirms == 0 {
                    self.subscribed = true;
                    self.resync = true;
                    self.request_resync(now);
                    self.set_connected();
                }
            }
            Some(b"pong") => {
                self.sub_pings.pop_front();
            }
            _ => {
                if let Value::Error(e) = &v {
                    let e = String::from_utf8_lossy(e).into_owned();
                    self.quiet
                        .log(now, || format!("Redis refused the subscription: {e}"));
                } else if self.confirms > 0 {
                    // AUTH / SELECT replies before the subscription.
                    self.confirms -= 1;
                }
            }
        }
    }

    fn on_message(&mut self, m: Msg, now: Instant, out: &mut Vec<Incoming>) {
        if m.node == self.node {
            if m.name != self.cfg.node {
                self.quiet.log(now, || {
                    format!(
                        "node names {:?} and {:?} have the same number; rename one",
                        m.name, self.cfg.node
                    )
                });
            }
            return;
        }
        if m.kind == kind::DELIVER {
            match decode_records(&m.body) {
                Ok(recs) => out.extend(recs.into_iter().map(Incoming::Node)),
                Err(_) => self.quiet.log(now, || "a malformed delivery".into()),
            }
            return;
        }
        let key = (m.node, m.slot);
        if !self.remotes.contains_key(&key) {
            if m.kind == kind::BYE {
                return;
            }
            // Its epoch and seq come with its hash.
            self.track(m.node, m.slot, &m.name.clone(), now);
            self.fetch(m.node, m.slot, now, vec![m]);
            return;
        }
        let r = self.remotes.get_mut(&key).expect("checked");
        r.heard = now;
        if let Some((_, kept, overflow)) = &mut r.fetching {
            if kept.len() < MAX_KEPT {
                kept.push(m);
            } else {
                *overflow = true;
            }
            return;
        }
        self.live(m, now, out);
    }

    /// A message for a replica that is up to date.
    fn live(&mut self, m: Msg, now: Instant, out: &mut Vec<Incoming>) {
        let key = (m.node, m.slot);
        let Some(r) = self.remotes.get_mut(&key) else {
            return;
        };
        if m.epoch != r.epoch {
            return match m.kind {
                // A goodbye of a later epoch; an earlier one is stale.
                kind::BYE if m.epoch > r.epoch => self.forget(m.node, m.slot, out),
                kind::BYE => {}
                // Restarted or reconnected (it asserted a new state), or a
                // late message of an earlier epoch: the hash says which
                // epoch is current. (Epochs grow on one host's clock; the
                // hash also settles a unit moved to a host whose clock is
                // behind.)
                _ => self.fetch(m.node, m.slot, now, Vec::new()),
            };
        }
        match m.kind {
            kind::BYE => self.forget(m.node, m.slot, out),
            kind::BATCH if m.seq == r.seq + 1 => {
                r.seq = m.seq;
                match decode_records(&m.body) {
                    Ok(recs) => out.extend(
                        recs.into_iter()
                            .map(|rec| Incoming::Apply(m.node, m.slot, rec)),
                    ),
                    Err(_) => {
                        self.quiet
                            .log(now, || "a malformed batch; reading the unit again".into());
                        self.fetch(m.node, m.slot, now, Vec::new());
                    }
                }
            }
            kind::BATCH | kind::BEAT if m.seq > r.seq => {
                // Batches were lost: read the whole state again.
                self.fetch(m.node, m.slot, now, vec![m]);
            }
            _ => {}
        }
    }

    /// Knows of a unit (and its node).
    fn track(&mut self, node: u32, slot: u16, name: &str, now: Instant) {
        if self.remotes.contains_key(&(node, slot)) {
            return;
        }
        self.remotes.insert(
            (node, slot),
            Remote {
                name: name.to_string(),
                epoch: 0,
                seq: 0,
                heard: now,
                fetching: None,
            },
        );
        let e = self
            .nodes
            .entry(node)
            .or_insert_with(|| (name.to_string(), 0));
        e.1 += 1;
        self.stats.nodes = self.nodes.len();
    }

    /// Forgets a unit and its connections.
    fn forget(&mut self, node: u32, slot: u16, out: &mut Vec<Incoming>) {
        if self.remotes.remove(&(node, slot)).is_none() {
            return;
        }
        out.push(Incoming::ClearUnit(node, slot));
        if let Some(e) = self.nodes.get_mut(&node) {
            e.1 -= 1;
            if e.1 == 0 {
                self.nodes.remove(&node);
            }
        }
        self.stats.nodes = self.nodes.len();
    }

    /// Starts (or restarts) reading a unit's hash, keeping `kept` and what
    /// comes meanwhile.
    fn fetch(&mut self, node: u32, slot: u16, now: Instant, kept: Vec<Msg>) {
        self.fetches += 1;
        let n = self.fetches;
        let Some(r) = self.remotes.get_mut(&(node, slot)) else {
            return;
        };
        let mut all = match r.fetching.take() {
            Some((_, old, _)) => old,
            None => Vec::new(),
        };
        all.extend(kept);
        r.fetching = Some((n, all, false));
        let key = self.names.unit(&r.name, slot);
        if !self.send(
            &[b"HGETALL", key.as_bytes()],
            Reply::Snapshot(node, slot, n),
            now,
        ) {
            // Asked again when the link is back (resync).
            self.resync = true;
        }
    }

    fn on_snapshot(
        &mut self,
        node: u32,
        slot: u16,
        n: u64,
        v: Value,
        now: Instant,
        out: &mut Vec<Incoming>,
    ) {
        let Some(r) = self.remotes.get_mut(&(node, slot)) else {
            return;
        };
        match &r.fetching {
            Some((m, _, _)) if *m == n => {}
            _ => return,
        }
        if let Value::Error(e) = &v {
            // Loading, out of memory...: ask again at the next heartbeat.
            let e = String::from_utf8_lossy(e).into_owned();
            self.quiet
                .log(now, || format!("Redis refused to read a unit: {e}"));
            self.retry.insert((node, slot));
            return;
        }
        let items = v.items();
        if items.is_empty() {
            // Expired or said goodbye.
            return self.forget(node, slot, out);
        }
        let mut meta = None;
        let mut entries = Vec::new();
        for pair in items.chunks(2) {
            let (Some(f), Some(val)) = (pair[0].bytes(), pair.get(1).and_then(Value::bytes)) else {
                continue;
            };
            if &f[..] == b"~" {
                meta = std::str::from_utf8(val).ok().and_then(|s| {
                    let (e, q) = s.split_once(' ')?;
                    Some((e.parse::<u64>().ok()?, q.parse::<u64>().ok()?))
                });
            } else if let Some(id) = parse_field(f) {
                if id.node == node && id.worker == slot {
                    entries.push((id, val.clone()));
                }
            }
        }
        let Some((epoch, seq)) = meta else {
            return self.forget(node, slot, out);
        };
        out.push(Incoming::ClearUnit(node, slot));
        for (id, state) in entries {
            out.push(Incoming::Apply(node, slot, Record::Open(id)));
            match decode_records(&state) {
                Ok(recs) => {
                    out.extend(recs.into_iter().map(|rec| Incoming::Apply(node, slot, rec)))
                }
                Err(_) => self
                    .quiet
                    .log(now, || "a malformed entry in a unit's hash".into()),
            }
        }
        let (_, kept, overflow) = r.fetching.take().expect("checked");
        r.epoch = epoch;
        r.seq = seq;
        r.heard = now;
        for m in kept {
            if m.epoch != epoch {
                // Of another epoch than the hash's: before it, or of a
                // state the next read will show.
                continue;
            }
            if self
                .remotes
                .get(&(node, slot))
                .is_some_and(|r| r.fetching.is_none())
            {
                self.live(m, now, out);
            } else if let Some(Remote {
                fetching: Some((_, k, _)),
                ..
            }) = self.remotes.get_mut(&(node, slot))
            {
                k.push(m);
            }
        }
        if overflow {
            self.fetch(node, slot, now, Vec::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterSection;

    fn cluster() -> Cluster {
        let cfg = ClusterConfig::from_section(&ClusterSection {
            redis_url: Some("redis://127.0.0.1:1".into()),
            node: Some("me".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        Cluster::new(&cfg, 0, 1 << 20, Instant::now())
    }

    const THEM: &str = "them";

    fn msg(kind: u8, epoch: u64, seq: u64, recs: &[Record]) -> Value {
        let node = crate::config::node_number(THEM);
        let mut b = BytesMut::new();
        b.put_u8(kind);
        b.put_u32_le(node);
        b.put_u16_le(1);
        b.put_u64_le(epoch);
        b.put_u64_le(seq);
        b.put_u16_le(THEM.len() as u16);
        b.put_slice(THEM.as_bytes());
        for r in recs {
            wire::encode(&mut b, r);
        }
        let bulk = |x: &[u8]| Value::Bulk(Some(Bytes::copy_from_slice(x)));
        Value::Array(Some(vec![bulk(b"message"), bulk(b"foreman:reg"), bulk(&b)]))
    }

    fn id(key: u32) -> ConnId {
        ConnId::on_node(crate::config::node_number(THEM), 1, key, key as u64)
    }

    fn fetching(c: &Cluster) -> Option<u64> {
        let key = (crate::config::node_number(THEM), 1);
        c.remotes.get(&key)?.fetching.as_ref().map(|f| f.0)
    }

    /// The hash of unit `them:1` as `HGETALL` answers it.
    fn hash(epoch: u64, seq: u64, conns: &[(ConnId, &[Record])]) -> Value {
        let bulk = |x: &[u8]| Value::Bulk(Some(Bytes::copy_from_slice(x)));
        let mut items = vec![bulk(b"~"), bulk(format!("{epoch} {seq}").as_bytes())];
        for (c, recs) in conns {
            let mut b = BytesMut::new();
            for r in *recs {
                wire::encode(&mut b, r);
            }
            items.push(bulk(&field(*c)));
            items.push(bulk(&b));
        }
        Value::Array(Some(items))
    }

    /// Makes `them:1` a live replica of epoch `epoch` with seq 0 and no
    /// connections: a heartbeat, then its (empty) hash.
    fn live(c: &mut Cluster, epoch: u64, now: Instant) {
        let mut out = Vec::new();
        c.on_push(msg(kind::BEAT, epoch, 0, &[]), now, &mut out);
        let n = fetching(c).expect("reading the unit");
        c.on_snapshot(id(0).node, 1, n, hash(epoch, 0, &[]), now, &mut out);
        assert!(fetching(c).is_none());
    }

    fn applied(out: &[Incoming]) -> Vec<String> {
        out.iter().map(|i| format!("{i:?}")).collect()
    }

    #[test]
    fn a_replica_is_read_then_kept_current_by_numbered_batches() {
        let mut c = cluster();
        let now = Instant::now();
        let mut out = Vec::new();
        // Batch 5 of a unit never seen: its hash is read, the batch kept.
        c.on_push(
            msg(kind::BATCH, 7, 5, &[Record::Open(id(2))]),
            now,
            &mut out,
        );
        let n = fetching(&c).expect("reading the unit");
        assert!(out.is_empty());
        // Batch 6 arrives while the hash is read.
        let bind = Record::Bind(id(2), "ann".into());
        c.on_push(
            msg(kind::BATCH, 7, 6, std::slice::from_ref(&bind)),
            now,
            &mut out,
        );
        // The hash was written at seq 5: batch 5 is in it, batch 6 is not.
        let v = hash(7, 5, &[(id(1), &[]), (id(2), &[])]);
        c.on_snapshot(crate::config::node_number(THEM), 1, n, v, now, &mut out);
        let got = applied(&out);
        assert!(got[0].starts_with("ClearUnit"), "{got:?}");
        assert_eq!(
            got.iter().filter(|g| g.contains("Open")).count(),
            2,
            "{got:?}"
        );
        assert_eq!(
            got.last().unwrap(),
            &format!("{:?}", Incoming::Apply(id(2).node, 1, bind))
        );
        assert!(fetching(&c).is_none());
        // The next batch applies; one that skips a number makes it read again.
        out.clear();
        c.on_push(
            msg(kind::BATCH, 7, 7, &[Record::Close(id(1))]),
            now,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        c.on_push(
            msg(kind::BATCH, 7, 9, &[Record::Close(id(2))]),
            now,
            &mut out,
        );
        assert_eq!(out.len(), 1, "a batch after a gap is not applied");
        assert!(
            fetching(&c).is_some(),
            "a gap makes the replica read the hash again"
        );
    }

    #[test]
    fn epochs_order_restarts_and_goodbyes_drop_at_once() {
        let mut c = cluster();
        let now = Instant::now();
        let mut out = Vec::new();
        live(&mut c, 10, now);
        // A late message of an older epoch: the hash says epoch 10 is
        // current, and the stale batch is not applied.
        c.on_push(
            msg(kind::BATCH, 9, 1, &[Record::Open(id(3))]),
            now,
            &mut out,
        );
        let n = fetching(&c).expect("read again");
        c.on_snapshot(id(0).node, 1, n, hash(10, 0, &[]), now, &mut out);
        assert!(!applied(&out).iter().any(|a| a.contains("Open")), "{out:?}");
        assert!(fetching(&c).is_none());
        out.clear();
        // A newer epoch (the unit reconnected) is read again.
        c.on_push(msg(kind::BEAT, 11, 0, &[]), now, &mut out);
        let n = fetching(&c).expect("read again");
        // Its hash is gone (it expired): the unit is forgotten.
        c.on_snapshot(id(0).node, 1, n, Value::Array(Some(vec![])), now, &mut out);
        assert!(applied(&out)[0].starts_with("ClearUnit"));
        assert!(c.nodes.is_empty());
        // Goodbye of a live unit.
        out.clear();
        live(&mut c, 12, now);
        c.on_push(msg(kind::BYE, 12, 0, &[]), now, &mut out);
        assert_eq!(applied(&out), vec![format!("ClearUnit({}, 1)", id(0).node)]);
        assert!(c.remotes.is_empty());
    }

    #[test]
    fn a_unit_not_heard_from_within_the_ttl_is_dropped() {
        let mut c = cluster();
        let t0 = Instant::now();
        let mut out = Vec::new();
        live(&mut c, 1, t0);
        let poll = mio::Poll::new().unwrap();
        let later = t0 + c.cfg.presence_ttl + Duration::from_millis(1);
        c.next_beat = later;
        c.tick(poll.registry(), later, &mut out);
        assert_eq!(applied(&out), vec![format!("ClearUnit({}, 1)", id(0).node)]);
    }

    #[test]
    fn a_missing_own_hash_or_a_refused_batch_asserts_again() {
        let mut c = cluster();
        let now = Instant::now();
        let mut out = Vec::new();
        c.asserted = true;
        // A heartbeat whose PEXPIRE found no hash.
        c.replies.push_back((now, Reply::Beat));
        let exec = |first: i64| {
            Value::Array(Some(vec![
                Value::Int(first),
                Value::Int(0),
                Value::Int(0),
                Value::Int(1),
            ]))
        };
        c.on_reply(exec(0), now, &mut out);
        assert!(matches!(out[..], [Incoming::Assert]), "{out:?}");
        assert!(!c.asserted);
        // A heartbeat that found it: nothing to do.
        out.clear();
        c.asserted = true;
        c.replies.push_back((now, Reply::Beat));
        c.on_reply(exec(1), now, &mut out);
        assert!(out.is_empty());
        // A batch Redis refused.
        c.replies.push_back((now, Reply::Exec));
        c.on_reply(Value::Error(Bytes::from_static(b"OOM no")), now, &mut out);
        assert!(matches!(out[..], [Incoming::Assert]), "{out:?}");
    }

    #[test]
    fn a_refused_read_is_asked_again_not_taken_for_an_expired_unit() {
        let mut c = cluster();
        let now = Instant::now();
        let mut out = Vec::new();
        c.on_push(msg(kind::BEAT, 3, 0, &[]), now, &mut out);
        let n = fetching(&c).unwrap();
        let refused = Value::Error(Bytes::from_static(b"LOADING"));
        c.on_snapshot(id(0).node, 1, n, refused, now, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert!(c.remotes.contains_key(&(id(0).node, 1)));
        assert!(c.retry.contains(&(id(0).node, 1)));
    }

    #[test]
    fn sends_fail_and_count_while_not_connected() {
        let mut c = cluster();
        let rec = Record::Ungroup("g".into());
        assert!(!c.send_all_nodes(&rec, Instant::now()));
        assert!(!c.send_node(5, &rec, Instant::now()));
        assert_eq!(c.stats.dropped, 2);
    }
}
