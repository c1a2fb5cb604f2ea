//! The applications' protocols in the load generator: just what the
//! `sync-*` scenarios need of the sync server's (`shared/sync-protocol.md`:
//! `hello`, `get`, `subscribe`, `put`) and of the chat's
//! (`shared/chat-protocol.md`: `login`, `join`, `say`).
//!
//! Roles, fixed when a connection opens:
//! - `sync-writes`, `sync-hot`: every connection is a client with one write
//!   in flight (closed loop). On `ack` it holds the new version and writes
//!   again; on `conflict` it takes the version the reply carries and tries
//!   the same write again under a new `op`.
//! - `sync-fanout`, `chat-fanout`: the writers (`senders`) write at the
//!   offered rate without waiting (each `put` bases on the version the
//!   previous one will make: the writer is the key's only one); every other
//!   connection subscribes (joins the room) and checks that each change
//!   comes once and in order.
//!
//! Values and chat texts are the bench payload (`wire::write_payload`:
//! writer, sequence, send time, padding) as a JSON string, so a delivery's
//! latency is read from it. Its ASCII needs no JSON escape.

use serde::Deserialize;

use super::{Gen, KEYS_PER_WRITER};
use crate::wire::{self, read_payload};

/// Which protocol and scenario a load generator plays.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum App {
    /// `sync-writes`: each client `put`s its own keys.
    SyncWrites,
    /// `sync-hot`: every client `put`s one key.
    SyncHot,
    /// `sync-fanout`: subscribers of one key, writers of it.
    SyncFanout,
    /// `chat-fanout`: members of one room, senders to it.
    ChatFanout,
    /// `chat-rooms`: members of several chat rooms, some sending to their
    /// own (`rooms.rs`).
    ChatRooms,
    /// `broadcast-rooms`: the same against the broadcast example's rooms.
    BroadcastRooms,
}

/// The key of `sync-hot` and `sync-fanout`, and the room of `chat-fanout`.
const SHARED: &str = "bench";

impl App {
    /// The application a `LoadConfig::scenario` names, if any.
    pub fn parse(scenario: &str) -> Option<App> {
        match scenario {
            "sync-writes" => Some(App::SyncWrites),
            "sync-hot" => Some(App::SyncHot),
            "sync-fanout" => Some(App::SyncFanout),
            "chat-fanout" => Some(App::ChatFanout),
            "chat-rooms" => Some(App::ChatRooms),
            "broadcast-rooms" => Some(App::BroadcastRooms),
            _ => None,
        }
    }

    /// The server's WebSocket path.
    pub fn path(self) -> &'static str {
        match self {
            App::ChatFanout | App::ChatRooms => "/ws",
            App::BroadcastRooms => "/",
            _ => "/sync",
        }
    }

    /// Whether writers feed subscribers (else every client writes).
    pub fn fanout(self) -> bool {
        matches!(self, App::SyncFanout | App::ChatFanout) || self.rooms()
    }

    /// Whether members of rooms send to their own room (`rooms.rs`): the
    /// senders are members too.
    pub fn rooms(self) -> bool {
        matches!(self, App::ChatRooms | App::BroadcastRooms)
    }
}

/// One connection's protocol state.
#[derive(Default)]
pub struct AppConn {
    /// Setup answered: the connection counts as connected.
    pub ready: bool,
    /// Sync writers: the version each key of theirs is at (as far as this
    /// client knows), or will be at once the writes in flight are acked.
    versions: Vec<u64>,
    /// Write scenarios: which of `versions` the next write is for.
    next_key: usize,
    /// Write attempts so far: each one's `op`.
    ops: u64,
    /// Write scenarios: when the write in flight was first tried (its
    /// conflicts' retries keep it), for the latency of a successful write.
    first_try: u64,
    /// Fanout writers: writes sent and not yet answered.
    pub in_flight: u64,
    /// Subscribers: the position of the latest change seen (sync: its
    /// version; chat: the sender's sequence number + 1).
    last: u64,
    /// Rooms: the connection's global index (its room, its user name).
    pub global: usize,
}

/// The fields of a server frame the bench looks at; the rest is skipped.
/// Borrowed strings: a frame whose strings need unescaping is not one of
/// ours and counts as an error.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    /// `doc`, `ack`, `conflict`, `change`.
    #[serde(default)]
    version: u64,
    /// `doc`, `conflict`, `change` (null in a `doc` of version 0).
    #[serde(default)]
    value: Option<&'a str>,
    /// Chat `message`.
    #[serde(default)]
    text: Option<&'a str>,
}

impl Gen {
    /// Connection `i` upgraded: starts its setup.
    pub(super) fn app_open(&mut self, app: App, i: usize) {
        if app.rooms() {
            return self.rooms_open(app, i);
        }
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let who = c
            .sender
            .map_or(format!("s{i}-{}", self.cfg.conn_base), |id| {
                format!("w{id}")
            });
        c.app.versions = vec![
            0;
            if app == App::SyncWrites {
                KEYS_PER_WRITER
            } else {
                1
            }
        ];
        let text = match app {
            App::ChatFanout => format!(r#"{{"type":"login","name":"{who}"}}"#),
            _ => format!(r#"{{"type":"hello","client":"{who}"}}"#),
        };
        self.app_text(i, &text);
    }

    /// Queues text frame `text` on connection `i` and writes what fits.
    pub(super) fn app_text(&mut self, i: usize, text: &str) {
        if let Some(c) = self.conns[i].as_mut() {
            wire::encode_frame(&mut c.wbuf, wire::OP_TEXT, text.as_bytes(), &mut self.rng);
            super::flush(c);
        }
    }

    /// Sends connection `i`'s next write, stamped `ts`.
    pub(super) fn app_send(&mut self, app: App, i: usize, ts: u64) {
        if app.rooms() {
            return self.rooms_send(app, i, ts);
        }
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let id = c.sender.unwrap_or(0);
        wire::write_payload(&mut self.msg, id, c.seq, ts);
        c.seq = c.seq.wrapping_add(1);
        c.app.ops += 1;
        let payload = String::from_utf8_lossy(&self.msg);
        let text = if app == App::ChatFanout {
            format!(
                r#"{{"type":"say","room":"{SHARED}","text":"{payload}","ref":"{}"}}"#,
                c.app.ops
            )
        } else {
            let k = c.app.next_key;
            let base = c.app.versions[k];
            let key = match app {
                App::SyncWrites => format!("w/{id}/{k}"),
                _ => SHARED.to_string(),
            };
            if app.fanout() {
                c.app.versions[k] += 1;
            }
            format!(
                r#"{{"type":"put","key":"{key}","base_version":{base},"value":"{payload}","op":"{}"}}"#,
                c.app.ops
            )
        };
        if app.fanout() {
            c.app.in_flight += 1;
        } else if c.app.first_try == 0 {
            c.app.first_try = ts;
        }
        c.awaiting = true;
        self.stats.sent += 1;
        self.app_text(i, &text);
    }

    /// A server frame arrived on connection `i` at `now`.
    pub(super) fn app_message(&mut self, app: App, i: usize, payload: &[u8], now: u64) {
        if app.rooms() {
            return self.rooms_message(app, i, payload, now);
        }
        let Ok(f) = serde_json::from_slice::<Frame>(payload) else {
            self.stats.errors += 1;
            return;
        };
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let writer = c.sender.is_some();
        match (f.kind, c.app.ready) {
            // Setup.
            ("welcome", false) => match (app, writer) {
                (App::ChatFanout, _) => {
                    let join = format!(r#"{{"type":"join","room":"{SHARED}"}}"#);
                    self.app_text(i, &join);
                }
                (App::SyncFanout, true) => {
                    let get = format!(r#"{{"type":"get","key":"{SHARED}"}}"#);
                    self.app_text(i, &get);
                }
                (App::SyncFanout, false) => {
                    let sub = format!(r#"{{"type":"subscribe","keys":["{SHARED}"]}}"#);
                    self.app_text(i, &sub);
                }
                _ => self.app_ready(i),
            },
            ("doc", false) => {
                c.app.last = f.version;
                c.app.versions[0] = f.version;
                if writer {
                    self.app_ready(i);
                }
            }
            ("subscribed" | "joined", false) => self.app_ready(i),
            ("error", false) => {
                self.stats.errors += 1;
                self.finish_attempt(i, false);
            }
            // Deliveries.
            ("change", true) if !writer => {
                let pos = f.version;
                self.delivered(i, pos, f.value, now);
            }
            ("message", true) if !writer => {
                let pos = f
                    .text
                    .and_then(|t| read_payload(t.as_bytes()))
                    .map_or(0, |(_, seq, _)| seq as u64 + 1);
                self.delivered(i, pos, f.text, now);
            }
            // Replies to writes.
            ("ack" | "conflict", true) if app.fanout() => {
                c.app.in_flight = c.app.in_flight.saturating_sub(1);
                c.awaiting = c.app.in_flight > 0;
                if f.kind == "ack" {
                    self.stats.acked += 1;
                } else {
                    // The only writer met another version: count it, and
                    // base the next writes on it.
                    self.stats.conflicts += 1;
                    c.app.versions[0] = f.version;
                }
            }
            ("ack" | "conflict", true) => {
                let w = self.window;
                let in_window = w.contains(now);
                let k = c.app.next_key;
                c.app.versions[k] = f.version;
                if f.kind == "ack" {
                    self.stats.acked += 1;
                    if in_window {
                        self.stats.received_in_window += 1;
                    }
                    if w.contains(c.app.first_try) {
                        self.stats.latency.record_ns(now - c.app.first_try);
                    }
                    c.app.first_try = 0;
                    c.app.next_key = (k + 1) % c.app.versions.len();
                } else if in_window {
                    self.stats.conflicts += 1;
                }
                self.write_again(app, i, now);
            }
            ("error", true) => {
                self.stats.errors += 1;
                if !app.fanout() {
                    // The closed loop goes on (the row fails on errors).
                    self.write_again(app, i, now);
                }
            }
            // Chat presence, the room's messages to its senders, ...
            _ => {}
        }
    }

    /// Closed loop: the next write (or retry) while the run lasts.
    /// A write first tried inside the window is retried after it too
    /// (while the runner drains): dropping the ones still conflicting at
    /// the end would leave the slowest successes out of the latency.
    fn write_again(&mut self, app: App, i: usize, now: u64) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        c.awaiting = false;
        let unfinished = c.app.first_try != 0 && self.window.contains(c.app.first_try);
        if (self.running && now < self.window.end) || unfinished {
            self.app_send(app, i, now);
        } else {
            c.app.first_try = 0;
        }
    }

    /// Setup of connection `i` is answered.
    pub(super) fn app_ready(&mut self, i: usize) {
        if let Some(c) = self.conns[i].as_mut() {
            c.app.ready = true;
        }
        self.finish_attempt(i, true);
    }

    /// Subscriber `i` got the change at position `pos` carrying `payload`.
    fn delivered(&mut self, i: usize, pos: u64, payload: Option<&str>, now: u64) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        c.received += 1;
        let parsed = payload.and_then(|p| read_payload(p.as_bytes()));
        self.stats.delivery(self.window, now, parsed.map(|p| p.2));
        if parsed.is_none() {
            self.stats.errors += 1;
        }
        // A gap is not counted here: what is missing shows as lost after
        // the drain, unless it comes later, out of order.
        if pos > c.app.last {
            c.app.last = pos;
        } else {
            // At or below a version already seen: late or repeated.
            self.stats.reordered += 1;
        }
    }
}
