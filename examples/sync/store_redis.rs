//! The sync server's store on a cluster: documents, versions and op memory
//! in Redis, so every node serves the same documents. Same [`Backend`]
//! contract as the SQLite store, run by the same [`crate::store::Writer`]
//! threads; and a feed thread that turns every change committed anywhere
//! into an [`Event::Change`].
//!
//! # One script a batch
//!
//! A batch of writes is one call of `store_redis.lua` (sent once, then
//! called by its SHA): Redis runs a script alone, so the steps of each
//! write (op memory, the base check, the new version, its version entry,
//! pruning, remembering the op) are atomic, and the change is `PUBLISH`ed
//! on `PREFIX:sync:changes` by the same script: subscribers get every
//! change of a key in commit order. Reads are one call too (one consistent
//! view of every key asked).
//!
//! # Patches are merged here, not in Lua
//!
//! Redis's Lua has only doubles for numbers, and its cjson turns big
//! integers into floats (`12345678901234567890` comes back
//! `1.2345678901235e+19`): a value must never pass through it. So values
//! stay opaque strings in Lua, and a patch is merged in Rust: the writer
//! reads the key's version and value, merges (and measures) here, and
//! sends the result with the version it was merged on. The script applies
//! it only if the key is still at that version; else it answers "stale",
//! and the writer reads and merges again (a later write of the same key or
//! op in that batch is then redone after it, so batch order holds). Stale
//! only happens when the key moved between the read and the script: the
//! base check still comes first, so a patch on an old base is a conflict,
//! not a retry.
//!
//! # Keys
//!
//! Under `PREFIX:sync:` (`PREFIX` is `[cluster] prefix`): `epoch` (a
//! string, `SET NX` by the first store that opens); `doc:KEY` (hash: `v`
//! the version, `val` the value, absent after a delete); `ver:KEY` (list of
//! the last `keep_versions` versions, oldest first, each
//! `V,CLIENT,OPLEN,OP` then the value, nothing for a delete: keys and
//! clients hold no `,`); `present` (sorted set of present keys, score 0,
//! so `ZRANGEBYLEX` lists them in byte order); `op:CLIENT\nOP` (hash: `fp`
//! the fingerprint, `d` the decision, `exp` its expiry on the writer's
//! clock, which the script compares; `PEXPIREAT` then removes it). The
//! feed's messages are `KEY\n` and a version entry.
//!
//! # Redis unreachable
//!
//! Connecting, reading and writing time out after [`TIMEOUT`]; any error
//! drops the connection (the next call connects anew) and fails the call,
//! so jobs are answered `Err` (`unavailable`) in bounded time while Redis
//! is down. A write that timed out may have been applied: the client sends
//! it again with the same op, and op memory answers it. The feed
//! reconnects every [`RECONNECT`] and, once subscribed again, sends
//! [`Event::FeedGap`]: changes may have been missed meanwhile, and the
//! worker asks for its keys' heads.

use crate::redis_reply::{array, string};
use crate::store::{
    change_of, new_value, prefix_end, random_epoch, replayable, Answer, Backend, Change, Decided,
    Doc, Event, Failure, NewValue, Outcome, Settings, Sink, Snapshot, Work, Write, WriteKind,
};
use foreman::ClusterConfig;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long connecting to Redis, or one read or write, may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// How often the feed tries to reach Redis again while it is down.
pub const RECONNECT: Duration = Duration::from_millis(250);

/// How long the feed waits for a message before it looks whether its
/// writer is gone.
/// Events the feed lets wait for the loop before it drops changes (and
/// reports a gap): every node's changes of every key come to every worker,
/// so a stalled loop must not make the queue grow without bound.
const MAX_QUEUED_CHANGES: usize = 65_536;
const FEED_POLL: Duration = Duration::from_secs(1);

/// Rounds of a batch in a row in which every write left was a patch that
/// found its key moved on, before the batch fails (only other nodes
/// writing the same keys that fast get there).
const ROUNDS: usize = 8;

/// The script of every call.
const SCRIPT: &str = include_str!("store_redis.lua");

/// A client for the cluster's Redis (no connection yet).
fn client(cluster: &ClusterConfig) -> Result<redis::Client, String> {
    let url = &cluster.redis;
    let mut redis_settings = RedisConnectionInfo::default().set_db(i64::from(url.db));
    if let Some(user) = &url.username {
        redis_settings = redis_settings.set_username(user);
    }
    if let Some(password) = &url.password {
        redis_settings = redis_settings.set_password(password);
    }
    let info = ConnectionAddr::Tcp(url.host.clone(), url.port)
        .into_connection_info()
        .map(|i| i.set_redis_settings(redis_settings))
        .map_err(|e| e.to_string())?;
    redis::Client::open(info).map_err(|e| e.to_string())
}

/// A connection with read and write timeouts.
fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// One connection to the sync keys in Redis; a writer has two (its write
/// and read threads).
pub struct RedisStore {
    /// Where Redis is.
    client: redis::Client,
    /// The connection, when up: dropped after any error, made again by the
    /// next call.
    con: Option<redis::Connection>,
    /// `PREFIX:sync:`.
    prefix: String,
    /// The limits.
    settings: Settings,
    /// The script.
    script: redis::Script,
    /// The last call failed (so only the first failure of a spell is a
    /// warning).
    failing: bool,
    /// The epoch read last; every script call checks that Redis still has
    /// it ([`Backend::lost`]).
    epoch: String,
    /// A call found another epoch (or none): the history is gone.
    lost: bool,
}

impl RedisStore {
    /// A store on the cluster's Redis. Connects lazily: Redis may be down
    /// now and up by the first call.
    pub fn new(cluster: &ClusterConfig, settings: &Settings) -> Result<RedisStore, String> {
        Ok(RedisStore {
            client: client(cluster)?,
            con: None,
            prefix: format!("{}:sync:", cluster.prefix),
            settings: settings.clone(),
            script: redis::Script::new(SCRIPT),
            failing: false,
            epoch: String::new(),
            lost: false,
        })
    }

    /// Runs `f` on the connection (connecting first if needed); any error
    /// drops the connection.
    fn with<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Failure> {
        let result = match self.con.as_mut() {
            Some(con) => f(con),
            None => connect(&self.client, TIMEOUT).and_then(|mut con| {
                let r = f(&mut con);
                self.con = Some(con);
                r
            }),
        };
        match result {
            Ok(v) => {
                if std::mem::take(&mut self.failing) {
                    log::info!("sync store: Redis is back");
                }
                Ok(v)
            }
            Err(e) if e.code() == Some("EPOCH") => {
                log::error!(
                    "sync store: Redis no longer has this history (epoch {}): it was emptied or replaced; a new epoch starts",
                    self.epoch
                );
                self.lost = true;
                Err(Failure {
                    message: format!("Redis: {what}: the history is gone"),
                    retry: false,
                })
            }
            Err(e) => {
                self.con = None;
                let message = format!("Redis: {what}: {e}");
                if std::mem::replace(&mut self.failing, true) {
                    log::debug!("sync store: {message}");
                } else {
                    log::warn!("sync store: {message}; answering `unavailable` until it is back");
                }
                // Not tried again at once: a Redis that is down would make
                // each try wait for the timeout.
                Err(Failure {
                    message,
                    retry: false,
                })
            }
        }
    }

    /// One call of the script: `mode` (`write` or `read`) and the
    /// operations' arguments; one answer each.
    fn call(&mut self, mode: &str, now: u64, args: &[String]) -> Result<Vec<Value>, Failure> {
        if self.epoch.is_empty() {
            // The read thread's store, or a store whose Redis was down when
            // it opened: it learns the epoch it checks against first.
            self.epoch()?;
        }
        let (prefix, s) = (self.prefix.clone(), self.settings.clone());
        let (script, epoch) = (self.script.clone(), self.epoch.clone());
        let answer = self.with(mode, |con| {
            let mut call = script.prepare_invoke();
            call.arg(&prefix)
                .arg(mode)
                .arg(now)
                .arg(s.op_ttl_ms)
                .arg(s.keep_versions)
                .arg(&epoch);
            for a in args {
                call.arg(a);
            }
            call.invoke::<Value>(con)
        })?;
        array(answer).map_err(Failure::transient)
    }

    /// Each key's version and value now (for merging patches).
    fn docs(&mut self, keys: &[&str]) -> Result<HashMap<String, (u64, Option<String>)>, Failure> {
        let mut args = Vec::new();
        for k in keys {
            args.extend(["get".to_string(), k.to_string()]);
        }
        let answers = self.call("read", 0, &args)?;
        keys.iter()
            .zip(answers)
            .map(|(k, a)| Ok((k.to_string(), version_value(a)?)))
            .collect::<Result<_, String>>()
            .map_err(Failure::transient)
    }

    /// One round of a batch: the writes at `todo` (indices into `writes`);
    /// `None` where a write is to be redone.
    fn round(
        &mut self,
        writes: &[Write],
        todo: &[usize],
        now: u64,
    ) -> Result<Vec<Option<Outcome>>, Failure> {
        let mut patched: Vec<&str> = todo
            .iter()
            .filter(|&&i| matches!(writes[i].kind, WriteKind::Patch(_)))
            .map(|&i| writes[i].key.as_str())
            .collect();
        patched.sort_unstable();
        patched.dedup();
        let found = match patched.is_empty() {
            true => HashMap::new(),
            false => self.docs(&patched)?,
        };
        let mut args = Vec::with_capacity(todo.len() * 9);
        // The merged value of each patch (the change an ack makes).
        let mut merged: HashMap<usize, Option<String>> = HashMap::new();
        for &i in todo {
            let w = &writes[i];
            let (kind, merged_on, too_large, value) = match &w.kind {
                WriteKind::Put(v) => ("put", -1, false, v.clone()),
                WriteKind::Delete => ("delete", -1, false, String::new()),
                WriteKind::Patch(_) => {
                    let (version, current) = found.get(&w.key).cloned().unwrap_or((0, None));
                    let max = self.settings.max_value_bytes;
                    match new_value(&w.kind, current.as_deref(), max) {
                        Ok(value) => {
                            merged.insert(i, value.clone());
                            ("patch", version as i64, false, value.unwrap_or_default())
                        }
                        Err(NewValue::TooLarge) => ("patch", version as i64, true, String::new()),
                        Err(NewValue::NotFound) => unreachable!("only deletes are not found"),
                        Err(NewValue::Corrupt(e)) => {
                            return Err(Failure::transient(format!("{}: {e}", w.key)))
                        }
                    }
                }
            };
            args.extend([
                w.key.clone(),
                w.base.to_string(),
                kind.into(),
                w.client.clone(),
                w.op.clone(),
                w.fingerprint.clone(),
                merged_on.to_string(),
                if too_large { "1" } else { "0" }.into(),
                value,
            ]);
        }
        let answers = self.call("write", now, &args)?;
        if answers.len() != todo.len() {
            return Err(Failure::transient(format!(
                "{} answers to {} writes",
                answers.len(),
                todo.len()
            )));
        }
        todo.iter()
            .zip(answers)
            .map(|(&i, a)| {
                let w = &writes[i];
                let value = match &w.kind {
                    WriteKind::Put(v) => Some(v.clone()),
                    WriteKind::Delete => None,
                    WriteKind::Patch(_) => merged.remove(&i).flatten(),
                };
                outcome(w, &string(a)?, value)
            })
            .collect::<Result<_, String>>()
            .map_err(Failure::transient)
    }

    fn read_work(&mut self, work: &Work) -> Result<Answer, Failure> {
        let mut args: Vec<String> = Vec::new();
        let mut op = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
        match work {
            Work::Write(_) => return Err(Failure::transient("a write sent to the reader")),
            Work::Get(key) => op(&["get", key]),
            Work::Subscribe { keys, since } => {
                for key in keys {
                    let s = since.iter().find(|(k, _)| k == key).map(|(_, s)| *s);
                    // A since beyond any version is never replayed: -1.
                    let s = s.filter(|&s| s < i64::MAX as u64).map_or(-1, |s| s as i64);
                    op(&["sub", key, &s.to_string()]);
                }
            }
            Work::List {
                prefix,
                after,
                limit,
            } => {
                let min = match after {
                    Some(a) if a.as_str() >= prefix.as_str() => format!("({a}"),
                    _ if prefix.is_empty() => "-".into(),
                    _ => format!("[{prefix}"),
                };
                let max = prefix_end(prefix).map_or("+".into(), |end| format!("({end}"));
                op(&["list", &min, &max, &limit.to_string()]);
            }
            Work::Since { key, after } => {
                op(&["since", key, &after.min(&(i64::MAX as u64)).to_string()])
            }
            Work::Heads(keys) => {
                for key in keys {
                    op(&["head", key]);
                }
            }
        }
        let answers = self.call("read", 0, &args)?;
        self.answer(work, answers).map_err(Failure::transient)
    }

    /// A read's answer from the script's.
    fn answer(&self, work: &Work, answers: Vec<Value>) -> Result<Answer, String> {
        let mut answers = answers.into_iter();
        let mut next = || answers.next().ok_or("too few answers").map(array)?;
        Ok(match work {
            Work::Write(_) => unreachable!("refused above"),
            Work::Get(key) => {
                let (version, value) = version_value(Value::Array(next()?))?;
                Answer::Doc(Doc {
                    key: key.clone(),
                    version,
                    value,
                })
            }
            Work::Subscribe { keys, since } => {
                let mut snapshots = Vec::with_capacity(keys.len());
                for key in keys {
                    let mut items = next()?.into_iter();
                    let version = int(items.next())?;
                    let value = opt_string(items.next())?;
                    let replayed = int(items.next())? == 1;
                    let s = since.iter().find(|(k, _)| k == key).map(|(_, s)| *s);
                    snapshots.push(match s {
                        Some(s)
                            if replayed && replayable(s, version, self.settings.keep_versions) =>
                        {
                            Snapshot::Changes {
                                key: key.clone(),
                                since: s,
                                version,
                                changes: entries(key, items)?,
                            }
                        }
                        _ => Snapshot::Doc(Doc {
                            key: key.clone(),
                            version,
                            value,
                        }),
                    });
                }
                Answer::Subscribed(snapshots)
            }
            Work::List { .. } => {
                let mut keys = Vec::new();
                let mut items = next()?.into_iter();
                while let Some(key) = items.next() {
                    keys.push((string(key)?, int(items.next())?));
                }
                Answer::Keys(keys)
            }
            Work::Since { key, .. } => {
                let mut items = next()?.into_iter();
                Answer::Since {
                    key: key.clone(),
                    version: int(items.next())?,
                    changes: entries(key, items)?,
                }
            }
            Work::Heads(keys) => Answer::Heads(
                keys.iter()
                    .map(|k| Ok((k.clone(), int(next()?.into_iter().next())?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

impl Backend for RedisStore {
    /// Sets the epoch if none is set (the first store of a new history),
    /// and reads it.
    fn epoch(&mut self) -> Result<String, Failure> {
        let key = format!("{}epoch", self.prefix);
        let fresh = random_epoch().map_err(|e| Failure::transient(format!("/dev/urandom: {e}")))?;
        let epoch = self.with("the epoch", |con| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&fresh)
                .arg("NX")
                .exec(con)?;
            redis::cmd("GET").arg(&key).query::<String>(con)
        })?;
        self.epoch.clone_from(&epoch);
        self.lost = false;
        Ok(epoch)
    }

    fn lost(&self) -> bool {
        self.lost
    }

    fn adopt_epoch(&mut self, epoch: &str) {
        if self.epoch.is_empty() {
            self.epoch = epoch.to_string();
        }
    }

    fn write(&mut self, writes: &[Write], now_ms: u64) -> Result<Vec<Outcome>, Failure> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; writes.len()];
        let mut todo: Vec<usize> = (0..writes.len()).collect();
        // Rounds in a row that decided nothing (another node kept moving
        // a patched key on); a round that decides something resets it, so
        // a batch of many patches of one key (one a round) still passes.
        let mut idle = 0;
        while idle < ROUNDS {
            let found = self.round(writes, &todo, now_ms)?;
            let mut again = Vec::new();
            for (i, o) in todo.iter().zip(found) {
                match o {
                    Some(o) => outcomes[*i] = Some(o),
                    None => again.push(*i),
                }
            }
            if again.is_empty() {
                return Ok(outcomes.into_iter().map(|o| o.expect("decided")).collect());
            }
            idle = if again.len() < todo.len() {
                0
            } else {
                idle + 1
            };
            todo = again;
        }
        Err(Failure::transient(format!(
            "{} patches found their keys moved on {ROUNDS} times in a row",
            todo.len()
        )))
    }

    fn read(&mut self, work: &Work) -> Result<Answer, Failure> {
        self.read_work(work)
    }
}

/// A write's outcome from the script's answer (`None`: redo it): `D` and a
/// decision (decided now), `R` and one (a repeat), `U` (op reused), `N`
/// (not found), `T` (too large), `S` (stale). `value` is what an ack wrote.
fn outcome(w: &Write, answer: &str, value: Option<String>) -> Result<Option<Outcome>, String> {
    let (tag, rest) = answer.split_at(answer.len().min(1));
    Ok(Some(match tag {
        "D" => {
            let decided = decision(rest)?;
            let change = match &decided {
                Decided::Ack { version, .. } => Some(change_of(w, *version, value)),
                Decided::Conflict { .. } => None,
            };
            Outcome::Decided { decided, change }
        }
        "R" => Outcome::Repeat(decision(rest)?),
        "U" => Outcome::OpReused,
        "N" => Outcome::NotFound,
        "T" => Outcome::TooLarge,
        "S" => return Ok(None),
        _ => return Err(format!("unexpected write answer {answer:?}")),
    }))
}

/// A decision as op memory keeps it: `aV,C` (ack, `C` 1 if created) or
/// `cV,VALUE` (conflict; an empty value is none).
fn decision(text: &str) -> Result<Decided, String> {
    let bad = || format!("bad decision {text:?}");
    let (tag, rest) = text.split_at(text.len().min(1));
    let (version, rest) = rest.split_once(',').ok_or_else(bad)?;
    let version = version.parse().map_err(|_| bad())?;
    match tag {
        "a" => Ok(Decided::Ack {
            version,
            created: rest == "1",
        }),
        "c" => Ok(Decided::Conflict {
            version,
            value: (!rest.is_empty()).then(|| rest.to_string()),
        }),
        _ => Err(bad()),
    }
}

/// A version entry (`V,CLIENT,OPLEN,OP` then the value) of `key`.
fn entry(key: &str, text: &str) -> Result<Change, String> {
    let bad = || format!("bad version entry of {key}");
    let mut parts = text.splitn(4, ',');
    let (version, client, op_len, rest) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    let op_len: usize = op_len.parse().map_err(|_| bad())?;
    if !rest.is_char_boundary(op_len) {
        return Err(bad());
    }
    let (op, value) = rest.split_at(op_len);
    Ok(Change {
        key: key.to_string(),
        version: version.parse().map_err(|_| bad())?,
        value: (!value.is_empty()).then(|| value.to_string()),
        op: op.to_string(),
        client: client.to_string(),
    })
}

fn entries(key: &str, items: impl Iterator<Item = Value>) -> Result<Vec<Change>, String> {
    items.map(|e| entry(key, &string(e)?)).collect()
}

/// A feed message: `KEY\n` and a version entry.
pub fn feed_change(message: &str) -> Result<Change, String> {
    let (key, e) = message
        .split_once('\n')
        .ok_or_else(|| format!("bad feed message {message:?}"))?;
    entry(key, e)
}

fn version_value(v: Value) -> Result<(u64, Option<String>), String> {
    let mut items = array(v)?.into_iter();
    Ok((int(items.next())?, opt_string(items.next())?))
}

fn int(v: Option<Value>) -> Result<u64, String> {
    match v {
        Some(Value::Int(n)) if n >= 0 => Ok(n as u64),
        other => Err(format!("expected a version, got {other:?}")),
    }
}

fn opt_string(v: Option<Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => string(v).map(Some),
    }
}

/// Starts the feed thread of worker `worker`: it subscribes to the
/// changes channel on a connection of its own and hands every change to
/// the loop, in the order Redis published them, until `stop` or the
/// writer is gone.
pub fn spawn_feed(
    cluster: &ClusterConfig,
    worker: usize,
    sink: Sink,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let client = client(cluster).map_err(std::io::Error::other)?;
    let channel = format!("{}:sync:changes", cluster.prefix);
    std::thread::Builder::new()
        .name(format!("sync-feed-{worker}"))
        .spawn(move || feed(client, channel, sink, stop))?;
    Ok(())
}

fn feed(client: redis::Client, channel: String, sink: Sink, stop: Arc<AtomicBool>) {
    // Owed once subscribed again: a connection was lost, or never made.
    let mut gap = false;
    let mut failing = false;
    while !stop.load(Ordering::Acquire) {
        let mut con = match connect(&client, TIMEOUT) {
            Ok(con) => con,
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    log::warn!("sync feed: Redis: {e}; trying again every {RECONNECT:?}");
                }
                gap = true;
                std::thread::sleep(RECONNECT);
                continue;
            }
        };
        let mut pubsub = con.as_pubsub();
        if let Err(e) = pubsub
            .subscribe(&channel)
            .and_then(|()| pubsub.set_read_timeout(Some(FEED_POLL)))
        {
            log::warn!("sync feed: SUBSCRIBE: {e}");
            gap = true;
            std::thread::sleep(RECONNECT);
            continue;
        }
        if std::mem::take(&mut failing) {
            log::info!("sync feed: Redis is back");
        }
        if std::mem::take(&mut gap) {
            if !sink.send(Event::FeedGap) {
                return;
            }
            sink.wake();
        }
        // Changes dropped because the loop was behind.
        let mut dropped = false;
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    let change = std::str::from_utf8(msg.get_payload_bytes())
                        .map_err(|e| e.to_string())
                        .and_then(feed_change);
                    match change {
                        Ok(change) => {
                            if sink.queued() >= MAX_QUEUED_CHANGES {
                                // The loop is far behind: the queue holds no
                                // more (memory stays bounded); the worker
                                // reads what it missed when told of the gap.
                                dropped = true;
                                continue;
                            }
                            if std::mem::take(&mut dropped) && !sink.send(Event::FeedGap) {
                                return;
                            }
                            if !sink.send(Event::Change(change)) {
                                return;
                            }
                            sink.wake();
                        }
                        // Not ours to drop silently: the worker checks.
                        Err(e) => {
                            log::error!("sync feed: {e}");
                            gap = true;
                            break;
                        }
                    }
                }
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    log::warn!("sync feed: Redis: {e}; subscribing again");
                    failing = true;
                    gap = true;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "store_redis_tests.rs"]
mod tests;
