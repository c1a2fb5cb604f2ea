//! The `chat` scenario in the load generator: members of [`ROOMS`] rooms,
//! some of them senders to their own room, against the chat
//! (`shared/chat-protocol.md`: `login`, `join`, `say`, `ack`, `message`) or
//! the broadcast example's room mode (`join NAME` answered `joined NAME`,
//! then every text to the room).
//!
//! Connection `g` (global index) is in room `g % ROOMS`. One in every
//! `stride = conns_total / senders_total` connections is a sender, spread
//! over the connect order (and so over the server's workers) and the rooms
//! alike: `g` with `g % stride == (g / stride) % ROOMS`, sender id
//! `g / stride`, in room `g % ROOMS` like every connection; each room has
//! `senders_total / ROOMS` of them. Every member, a sender too, receives each
//! message of its room once; the delivery latency is recorded at the other
//! members only. A chat `say` carries the bench payload as its text and its
//! first 32 bytes (sender, sequence, send time) as its `ref`, so its `ack`
//! gives the ack latency without a table of sends.
//!
//! At a rate, senders send on schedule; without one (saturation), each
//! keeps [`WINDOW`] messages in flight: it sends the next one when one is
//! acked (chat) or came back to it (broadcast example), so that the chat's
//! writer has concurrent requests to commit together.

use serde::Deserialize;

use super::{App, Conn, Gen, LoadConfig};
use crate::wire::{self, read_payload, PAYLOAD_MIN};

/// Rooms of the `chat` scenario.
pub const ROOMS: usize = 10;

/// Saturation: messages each sender keeps in flight.
pub const WINDOW: u64 = 8;

/// Places connection `global` in its room and makes it a sender if it is
/// one (see the module docs).
pub(super) fn place(conn: &mut Conn, global: usize, cfg: &LoadConfig) {
    let senders = cfg.senders_total as usize;
    let stride = (cfg.conns_total / senders.max(1)).max(ROOMS);
    let sender = global % stride == (global / stride) % ROOMS && global / stride < senders;
    conn.app.global = global;
    conn.sender = sender.then_some((global / stride) as u32);
    conn.expect = vec![0; senders];
}

/// A connection's room name.
fn room(c: &Conn) -> String {
    format!("r{}", c.app.global % ROOMS)
}

/// The fields of a chat frame this scenario reads.
#[derive(Deserialize)]
struct ChatFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    /// `message`.
    #[serde(default)]
    text: Option<&'a str>,
    /// `ack`, and errors of a `say`.
    #[serde(default, rename = "ref")]
    reference: Option<&'a str>,
}

impl Gen {
    /// Connection `i` upgraded: logs in (chat) or joins its room.
    pub(super) fn rooms_open(&mut self, app: App, i: usize) {
        let Some(c) = self.conns[i].as_ref() else {
            return;
        };
        let text = match app {
            App::ChatRooms => format!(r#"{{"type":"login","name":"u{}"}}"#, c.app.global),
            _ => format!("join {}", room(c)),
        };
        self.app_text(i, &text);
    }

    /// Sends sender `i`'s next message, stamped `ts`.
    pub(super) fn rooms_send(&mut self, app: App, i: usize, ts: u64) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        wire::write_payload(&mut self.msg, c.sender.unwrap_or(0), c.seq, ts);
        c.seq = c.seq.wrapping_add(1);
        self.stats.sent += 1;
        c.app.in_flight += 1;
        let payload = String::from_utf8_lossy(&self.msg).into_owned();
        let text = match app {
            App::ChatRooms => {
                c.awaiting = true;
                format!(
                    r#"{{"type":"say","room":"{}","text":"{payload}","ref":"{}"}}"#,
                    room(c),
                    &payload[..PAYLOAD_MIN]
                )
            }
            _ => {
                // No ack: every message sent is owed to the room.
                count_room(&mut self.stats.room_counts, c.app.global);
                payload
            }
        };
        self.app_text(i, &text);
    }

    /// A server frame arrived on connection `i` at `now`.
    pub(super) fn rooms_message(&mut self, app: App, i: usize, payload: &[u8], now: u64) {
        let ready = self.conns[i].as_ref().is_some_and(|c| c.app.ready);
        if app == App::BroadcastRooms {
            return match (ready, payload.starts_with(b"joined ")) {
                (false, true) => self.app_ready(i),
                (false, false) => self.errors_before_ready(i),
                (true, _) => self.rooms_delivered(app, i, payload, now),
            };
        }
        let Ok(f) = serde_json::from_slice::<ChatFrame>(payload) else {
            self.stats.errors += 1;
            return;
        };
        match (f.kind, ready) {
            ("welcome", false) => {
                if let Some(c) = self.conns[i].as_ref() {
                    let join = format!(r#"{{"type":"join","room":"{}"}}"#, room(c));
                    self.app_text(i, &join);
                }
            }
            ("joined", false) => self.app_ready(i),
            ("error", false) => self.errors_before_ready(i),
            ("message", true) => {
                let text = f.text.unwrap_or_default().as_bytes();
                self.rooms_delivered(app, i, text, now);
            }
            ("ack", true) => self.acked(i, f.reference, now),
            ("error", true) => self.stats.errors += 1,
            // presence, tick, ...
            _ => {}
        }
    }

    /// A setup that went wrong: the attempt fails.
    fn errors_before_ready(&mut self, i: usize) {
        self.stats.errors += 1;
        self.finish_attempt(i, false);
    }

    /// Chat sender `i`'s `say` with `ref` `reference` is stored.
    fn acked(&mut self, i: usize, reference: Option<&str>, now: u64) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        c.app.in_flight = c.app.in_flight.saturating_sub(1);
        c.awaiting = c.app.in_flight > 0;
        self.stats.acked += 1;
        count_room(&mut self.stats.room_counts, c.app.global);
        let w = self.window;
        if w.contains(now) {
            self.stats.acked_in_window += 1;
        }
        match reference.and_then(|r| read_payload(r.as_bytes())) {
            Some((_, _, ts)) if w.contains(ts) => self.stats.ack_latency.record_ns(now - ts),
            Some(_) => {}
            None => self.stats.errors += 1,
        }
        self.rooms_again(App::ChatRooms, i, now);
    }

    /// Saturation (no rate): sender `i`'s next messages, up to [`WINDOW`]
    /// in flight, while the run lasts.
    fn rooms_again(&mut self, app: App, i: usize, now: u64) {
        let closed_loop = self.cfg.rate_per_sender <= 0.0;
        while closed_loop && self.running && now < self.window.end {
            match self.conns[i].as_ref() {
                Some(c) if c.app.in_flight < WINDOW => self.rooms_send(app, i, now),
                _ => break,
            }
        }
    }

    /// Member `i` received the bench payload `payload` of its room.
    fn rooms_delivered(&mut self, app: App, i: usize, payload: &[u8], now: u64) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        c.received += 1;
        let Some((sender, seq, ts)) = read_payload(payload) else {
            self.stats.errors += 1;
            self.stats.delivery(self.window, now, None);
            return;
        };
        // The latency of a delivery to another member, not of the echo.
        let mine = c.sender == Some(sender);
        if mine && app == App::BroadcastRooms {
            c.app.in_flight = c.app.in_flight.saturating_sub(1);
        }
        self.stats
            .delivery(self.window, now, Some(ts).filter(|_| !mine));
        self.stats.check_order(&mut c.expect, sender, seq);
        if mine && app == App::BroadcastRooms {
            self.rooms_again(app, i, now);
        }
    }
}

/// One more message owed to the room of connection `global`.
fn count_room(counts: &mut Vec<u64>, global: usize) {
    counts.resize(ROOMS, 0);
    counts[global % ROOMS] += 1;
}

/// What each member of a room must receive, from the runner's
/// `expect-rooms N0 N1 ...` (messages owed to each room).
pub(super) fn owed(c: &Conn, counts: &[u64]) -> u64 {
    counts.get(c.app.global % ROOMS).copied().unwrap_or(0)
}
