//! Each key's stream of versions to this worker's subscribers: in order,
//! each once, never with a gap.
//!
//! Changes reach a worker from three places: its own writes (after the
//! `ack`), other workers' writes over the bus, and on a cluster the store's
//! feed (Redis). Over the bus two workers' changes of one key may arrive in
//! either order, a worker may die between its commit and its send, and a
//! stuck peer's records may be dropped; the Redis feed may drop messages
//! while the link is down. So nothing here trusts arrival order: a [`Feed`]
//! keeps the highest version it has delivered in order (`head`), holds
//! versions that came early (`ahead`), and asks the store for what is
//! missing ([`Action::FeedSince`]) when a gap stays open longer than a grace
//! period, or when the periodic check of heads ([`Feeds::head_seen`]) finds
//! the store ahead of it.
//!
//! Each subscriber has the last version it was sent (`last`): from its
//! snapshot or replay on, it gets every version after it once, in order. A
//! subscriber whose snapshot is older than the feed's head is caught up
//! from the feed's recent versions, or else from the store
//! ([`Action::ConnSince`]). Versions the store no longer has (more than
//! `keep_versions` behind) cannot be sent without a gap: the subscriber is
//! closed with 1008 instead ([`Action::Close`]).
//!
//! The type is generic over the item sent (the worker's prepared frame; the
//! tests use numbers), and returns what to do as [`Action`]s, so it is
//! tested without a server.

use foreman::ConnId;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Versions held out of order per key before the feed gives up waiting and
/// reads the store (what it held is dropped: the read brings it again).
const MAX_AHEAD: usize = 4096;

/// What the worker is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<T> {
    /// Send an item to a subscriber.
    Send(ConnId, T),
    /// A subscriber cannot be sent its next version (the store no longer
    /// has it): close it with 1008.
    Close(ConnId),
    /// The feed of `key` misses versions after `after`: read them
    /// (`Work::Since`) and hand them to [`Feeds::filled`].
    FeedSince {
        /// The key.
        key: String,
        /// The feed's head.
        after: u64,
    },
    /// A subscriber of `key` needs versions after `after` that the feed no
    /// longer holds: read them and hand them to [`Feeds::caught_up`].
    ConnSince {
        /// The subscriber.
        conn: ConnId,
        /// The key.
        key: String,
        /// Its last version.
        after: u64,
    },
}

/// Where a subscriber is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The snapshot of the latest `subscribe` is in flight; nothing is
    /// sent meanwhile.
    Awaiting,
    /// Gets each version as the feed delivers it.
    Live,
    /// A read of the versions it misses is in flight.
    Catching,
}

#[derive(Clone, Debug)]
struct Sub {
    /// The last version sent.
    last: u64,
    state: State,
    /// The token of the latest `subscribe` (see [`Feeds::subscribe`]).
    token: u64,
    /// Writes of this connection to this key waiting for their answer:
    /// while there are any it is sent nothing, so that its `change` comes
    /// after its `ack` ([`Feeds::hold`]).
    holds: u32,
}

/// One key's feed on this worker.
#[derive(Debug)]
struct Feed<T> {
    /// The highest version delivered in order; `None` until the first
    /// snapshot says where the stream stands.
    head: Option<u64>,
    /// Versions above `head + 1` that came early.
    ahead: BTreeMap<u64, T>,
    /// The last versions delivered, for subscribers catching up.
    recent: VecDeque<(u64, T)>,
    /// Subscribers.
    subs: HashMap<ConnId, Sub>,
    /// A [`Action::FeedSince`] is in flight.
    filling: bool,
    /// Since when a gap has been open.
    gap_since: Option<Instant>,
}

impl<T> Feed<T> {
    fn new() -> Self {
        Feed {
            head: None,
            ahead: BTreeMap::new(),
            recent: VecDeque::new(),
            subs: HashMap::new(),
            filling: false,
            gap_since: None,
        }
    }
}

/// Every key's feed on this worker.
#[derive(Debug)]
pub struct Feeds<T> {
    keys: HashMap<String, Feed<T>>,
    /// Keys whose feed has a gap open.
    gapped: HashSet<String>,
    /// Versions kept in each feed's `recent`.
    recent: usize,
    /// The last subscription token handed out.
    tokens: u64,
}

impl<T: Clone> Feeds<T> {
    /// Feeds that keep `recent` versions each for subscribers catching up.
    pub fn new(recent: usize) -> Self {
        Feeds {
            keys: HashMap::new(),
            gapped: HashSet::new(),
            recent: recent.max(1),
            tokens: 0,
        }
    }

    /// `conn` subscribes to `key` (again): nothing is sent to it until the
    /// snapshot of this subscription is in ([`Feeds::snapshot`] with the
    /// token returned here). The answer of an earlier subscription still on
    /// its way is then ignored, so the stream restarts at the newest
    /// snapshot only.
    pub fn subscribe(&mut self, key: &str, conn: ConnId) -> u64 {
        self.tokens += 1;
        let token = self.tokens;
        let feed = self.keys.entry(key.to_string()).or_insert_with(Feed::new);
        let sub = feed.subs.entry(conn).or_insert(Sub {
            last: 0,
            state: State::Awaiting,
            token,
            holds: 0,
        });
        sub.state = State::Awaiting;
        sub.token = token;
        token
    }

    /// The subscription with `token` failed: `conn` no longer follows `key`,
    /// unless it subscribed again since. True if it was dropped.
    pub fn abandon(&mut self, key: &str, conn: ConnId, token: u64) -> bool {
        let current = self
            .keys
            .get(key)
            .and_then(|f| f.subs.get(&conn))
            .is_some_and(|s| s.token == token);
        if current {
            self.unsubscribe(key, conn);
        }
        current
    }

    /// A write of `conn` to `key` is on its way to the store: nothing is
    /// sent to `conn` about `key` until [`Feeds::release`], so that its own
    /// `change` cannot overtake its `ack`. False if it does not follow
    /// `key` (nothing to hold).
    pub fn hold(&mut self, key: &str, conn: ConnId) -> bool {
        match self.keys.get_mut(key).and_then(|f| f.subs.get_mut(&conn)) {
            Some(sub) => {
                sub.holds += 1;
                true
            }
            None => false,
        }
    }

    /// The write [`Feeds::hold`] held for has been answered (its `ack` sent):
    /// `conn` gets what it was not sent meanwhile.
    pub fn release(&mut self, key: &str, conn: ConnId) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let Some(sub) = self.keys.get_mut(key).and_then(|f| f.subs.get_mut(&conn)) else {
            return actions;
        };
        sub.holds = sub.holds.saturating_sub(1);
        if sub.holds == 0 && sub.state == State::Live {
            self.go_live(key, conn, &mut actions);
        }
        actions
    }

    /// `conn` no longer follows `key`.
    pub fn unsubscribe(&mut self, key: &str, conn: ConnId) {
        if let Some(feed) = self.keys.get_mut(key) {
            feed.subs.remove(&conn);
            if feed.subs.is_empty() {
                self.keys.remove(key);
                self.gapped.remove(key);
            }
        }
    }

    /// Whether some connection of this worker follows `key`.
    pub fn is_known(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Whether `conn` follows `key`.
    #[cfg(test)]
    pub fn is_subscribed(&self, key: &str, conn: ConnId) -> bool {
        self.keys
            .get(key)
            .is_some_and(|f| f.subs.contains_key(&conn))
    }

    /// The store answered `conn`'s subscription `token` to `key` at
    /// `version` (its `doc` or `changes` reply is sent by the caller first).
    /// The answer of a subscription that was replaced or dropped since is
    /// ignored.
    pub fn snapshot(
        &mut self,
        key: &str,
        conn: ConnId,
        token: u64,
        version: u64,
        now: Instant,
    ) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let Some(feed) = self.keys.get_mut(key) else {
            return actions;
        };
        let Some(sub) = feed.subs.get_mut(&conn) else {
            return actions;
        };
        if sub.state != State::Awaiting || sub.token != token {
            return actions;
        }
        sub.last = version;
        sub.state = State::Catching;
        if feed.head.is_none() {
            feed.head = Some(version);
            if self.drain(key, &mut actions) {
                self.open_gap(key, now);
            }
        }
        self.go_live(key, conn, &mut actions);
        actions
    }

    /// Notes that the feed of `key` has a gap since `now`.
    fn open_gap(&mut self, key: &str, now: Instant) {
        if let Some(feed) = self.keys.get_mut(key) {
            feed.gap_since.get_or_insert(now);
            self.gapped.insert(key.to_string());
        }
    }

    /// The store's answer to an [`Action::ConnSince`]: versions after the
    /// subscriber's last, in order.
    pub fn caught_up(&mut self, key: &str, conn: ConnId, items: Vec<(u64, T)>) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let Some(sub) = self.keys.get_mut(key).and_then(|f| f.subs.get_mut(&conn)) else {
            return actions;
        };
        if sub.state != State::Catching {
            return actions;
        }
        if sub.holds > 0 {
            // What the read found may hold this connection's own write,
            // whose `ack` is not out yet: [`Feeds::release`] catches up.
            sub.state = State::Live;
            return actions;
        }
        for (version, item) in items {
            if version <= sub.last {
                continue;
            }
            if version != sub.last + 1 {
                self.drop_sub(key, conn, &mut actions);
                return actions;
            }
            sub.last = version;
            actions.push(Action::Send(conn, item));
        }
        self.go_live(key, conn, &mut actions);
        actions
    }

    /// A subscriber that has its snapshot or a catch-up: live if it is at
    /// the feed's head or past it, caught up from `recent` if that holds
    /// what it misses, else it waits for a read of the store.
    fn go_live(&mut self, key: &str, conn: ConnId, actions: &mut Vec<Action<T>>) {
        let Some(feed) = self.keys.get_mut(key) else {
            return;
        };
        let head = feed.head.unwrap_or(0);
        let Some(sub) = feed.subs.get_mut(&conn) else {
            return;
        };
        if sub.last >= head || sub.holds > 0 {
            // At the head, or held: [`Feeds::release`] catches it up.
            sub.state = State::Live;
            return;
        }
        let first = feed.recent.front().map_or(u64::MAX, |(v, _)| *v);
        if first <= sub.last + 1 {
            for (version, item) in &feed.recent {
                if *version > sub.last {
                    actions.push(Action::Send(conn, item.clone()));
                }
            }
            sub.last = head;
            sub.state = State::Live;
        } else {
            sub.state = State::Catching;
            actions.push(Action::ConnSince {
                conn,
                key: key.to_string(),
                after: sub.last,
            });
        }
    }

    fn drop_sub(&mut self, key: &str, conn: ConnId, actions: &mut Vec<Action<T>>) {
        self.unsubscribe(key, conn);
        actions.push(Action::Close(conn));
    }

    /// A change of `key` at `version` arrived (from this worker's write,
    /// the bus or the store's feed), at `now`.
    pub fn arrive(&mut self, key: &str, version: u64, item: T, now: Instant) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let Some(feed) = self.keys.get_mut(key) else {
            return actions;
        };
        match feed.head {
            Some(head) if version <= head => {}
            Some(head) if version == head + 1 => {
                self.deliver(key, version, item, &mut actions);
                self.drain(key, &mut actions);
            }
            _ => {
                feed.ahead.insert(version, item);
                if feed.head.is_some() && feed.gap_since.is_none() {
                    feed.gap_since = Some(now);
                    self.gapped.insert(key.to_string());
                }
                if feed.ahead.len() > MAX_AHEAD {
                    // Waiting for the missing version costs memory without
                    // bound: read the store for all of it now.
                    feed.ahead.clear();
                    if let (Some(after), false) = (feed.head, feed.filling) {
                        feed.filling = true;
                        actions.push(Action::FeedSince {
                            key: key.to_string(),
                            after,
                        });
                    }
                }
            }
        }
        actions
    }

    /// Delivers `version` (which is `head + 1`) to every live subscriber
    /// that is at `head`.
    fn deliver(&mut self, key: &str, version: u64, item: T, actions: &mut Vec<Action<T>>) {
        let Some(feed) = self.keys.get_mut(key) else {
            return;
        };
        feed.head = Some(version);
        for (&conn, sub) in feed.subs.iter_mut() {
            if sub.state == State::Live && sub.holds == 0 && sub.last + 1 == version {
                sub.last = version;
                actions.push(Action::Send(conn, item.clone()));
            }
        }
        if feed.recent.len() == self.recent {
            feed.recent.pop_front();
        }
        feed.recent.push_back((version, item));
    }

    /// Delivers what `ahead` holds from `head + 1` on; true if a gap is
    /// still open after.
    fn drain(&mut self, key: &str, actions: &mut Vec<Action<T>>) -> bool {
        loop {
            let Some(feed) = self.keys.get_mut(key) else {
                return false;
            };
            let head = feed.head.unwrap_or(0);
            // Drop what the head has passed.
            while feed
                .ahead
                .first_key_value()
                .is_some_and(|(v, _)| *v <= head)
            {
                feed.ahead.pop_first();
            }
            match feed.ahead.first_key_value() {
                Some((&v, _)) if v == head + 1 => {
                    let (version, item) = feed.ahead.pop_first().expect("just seen");
                    self.deliver(key, version, item, actions);
                }
                Some(_) => return true,
                None => {
                    feed.gap_since = None;
                    self.gapped.remove(key);
                    return false;
                }
            }
        }
    }

    /// Gaps open longer than `grace` at `now`: the reads that fill them.
    pub fn due(&mut self, now: Instant, grace: Duration) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        for key in &self.gapped {
            let Some(feed) = self.keys.get_mut(key) else {
                continue;
            };
            let due = feed
                .gap_since
                .is_some_and(|t| now.saturating_duration_since(t) >= grace);
            if let (true, false, Some(after)) = (due, feed.filling, feed.head) {
                feed.filling = true;
                actions.push(Action::FeedSince {
                    key: key.clone(),
                    after,
                });
            }
        }
        actions
    }

    /// Whether some gap is open (the worker checks [`Feeds::due`] then).
    pub fn has_gaps(&self) -> bool {
        !self.gapped.is_empty()
    }

    /// The store's answer to an [`Action::FeedSince`]: the versions after
    /// the feed's head that it still has, in order.
    pub fn filled(&mut self, key: &str, items: Vec<(u64, T)>, now: Instant) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let Some(feed) = self.keys.get_mut(key) else {
            return actions;
        };
        feed.filling = false;
        for (version, item) in items {
            let head = self.keys.get(key).and_then(|f| f.head).unwrap_or(0);
            if version <= head {
                continue;
            }
            if version > head + 1 {
                // Gone from the store: a live subscriber that still needs a
                // version before this one cannot be sent it without a gap.
                // (One waiting for its snapshot starts from that; one
                // catching up reads its own versions.)
                let stuck: Vec<ConnId> = self.keys[key]
                    .subs
                    .iter()
                    .filter(|(_, s)| s.state == State::Live && s.last + 1 < version)
                    .map(|(c, _)| *c)
                    .collect();
                for conn in stuck {
                    self.drop_sub(key, conn, &mut actions);
                }
                let Some(feed) = self.keys.get_mut(key) else {
                    return actions;
                };
                feed.recent.clear();
                feed.head = Some(version - 1);
            }
            self.deliver(key, version, item, &mut actions);
        }
        if self.drain(key, &mut actions) {
            if let Some(feed) = self.keys.get_mut(key) {
                feed.gap_since = Some(now);
            }
        }
        actions
    }

    /// A read found `key` at `version` in the store (the periodic check):
    /// if the feed is behind, it reads what it misses.
    pub fn head_seen(&mut self, key: &str, version: u64) -> Option<Action<T>> {
        let feed = self.keys.get_mut(key)?;
        let head = feed.head?;
        if version <= head || feed.filling {
            return None;
        }
        feed.filling = true;
        Some(Action::FeedSince {
            key: key.to_string(),
            after: head,
        })
    }

    /// A read for the feed of `key` failed: it may be asked again.
    pub fn fill_failed(&mut self, key: &str, now: Instant) {
        if let Some(feed) = self.keys.get_mut(key) {
            feed.filling = false;
        }
        self.open_gap(key, now);
    }

    /// A catch-up read for `conn` failed: it is tried again (its state stays
    /// `Catching`).
    pub fn retry_conn(&mut self, key: &str, conn: ConnId) -> Option<Action<T>> {
        let sub = self.keys.get(key)?.subs.get(&conn)?;
        (sub.state == State::Catching).then(|| Action::ConnSince {
            conn,
            key: key.to_string(),
            after: sub.last,
        })
    }

    /// Keys whose feed knows its head (for the periodic check).
    pub fn known_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(_, f)| f.head.is_some() && !f.filling)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys with at least one subscriber on this worker.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
