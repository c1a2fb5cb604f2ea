//! The online-user registry: which connections exist on the whole server, the
//! uid each is bound to, the groups each has joined and its session data.
//!
//! Every worker holds a full replica. A worker changes only the entries of its
//! own connections and tells the others over the bus; entries of other workers
//! change only when their owner says so. Queries are therefore answered
//! locally, without a round trip, and are as fresh as the bus (sub-millisecond
//! on one machine). Routing never depends on a stale replica for correctness of
//! the target worker's own connections: a delivery names a uid or group, and the
//! owning worker resolves it against its own, authoritative entries.
//!
//! Because every worker holds every connection, a connection costs its
//! entry once per worker: with 16 workers and 250,000 connections a hash map
//! entry of 33 bytes was 1.1 KiB per connection over the server. So a
//! connection with nothing set is only its serial number, 8 bytes, in a
//! vector per unit (a worker slot of a node) indexed by its key in that
//! unit's table, which is dense from 0 (a slab); uid, groups and session
//! live in a map of the connections that have one.

use crate::id::ConnId;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The replicated data of one connection; absent until something is set, so an
/// idle connection costs only its serial in its [`Unit`].
#[derive(Default, Debug)]
struct Entry {
    uid: Option<Box<str>>,
    groups: Vec<Box<str>>,
    session: Option<Bytes>,
}

/// A place of [`Unit::dense`] that holds no connection.
const EMPTY: u64 = u64::MAX;

/// Keys a unit's dense part may run past four times its connections: a
/// table's keys are dense from 0, but a peer may announce them in any
/// order, and one that says something odd must not make every worker
/// allocate much for it.
const DENSE_SLACK: usize = 1024;

/// The connections of one unit (a worker slot of one node): the serial
/// of the connection at each key of its table.
#[derive(Default, Debug)]
struct Unit {
    /// Serial by key, [`EMPTY`] where there is none.
    dense: Vec<u64>,
    /// Keys past what the dense part may cover, and a serial equal to
    /// [`EMPTY`]: empty unless a peer announces keys far from dense.
    sparse: HashMap<u32, u64>,
    /// Connections held.
    len: usize,
}

impl Unit {
    fn get(&self, key: u32) -> Option<u64> {
        match self.dense.get(key as usize) {
            Some(&serial) if serial != EMPTY => Some(serial),
            _ => self.sparse.get(&key).copied(),
        }
    }

    /// Puts `serial` at `key`; returns the serial it replaced.
    fn insert(&mut self, key: u32, serial: u64) -> Option<u64> {
        let old = self.remove(key);
        let k = key as usize;
        if k >= self.dense.len() && k < self.dense_bound() {
            self.grow(k + 1);
        }
        match self.dense.get_mut(k) {
            Some(place) if serial != EMPTY => *place = serial,
            _ => {
                self.sparse.insert(key, serial);
            }
        }
        self.len += 1;
        old
    }

    fn remove(&mut self, key: u32) -> Option<u64> {
        let old = match self.dense.get_mut(key as usize) {
            Some(place) if *place != EMPTY => Some(std::mem::replace(place, EMPTY)),
            _ => self.sparse.remove(&key),
        };
        if old.is_some() {
            self.len -= 1;
            // Most connections gone: the memory of the free keys at the
            // end goes back (twice the bound, so that connections coming
            // and going at the end do not shrink and grow it each time).
            if self.dense.len() > 2 * self.dense_bound() {
                while self.dense.last() == Some(&EMPTY) {
                    self.dense.pop();
                }
                self.dense.shrink_to_fit();
            }
        }
        old
    }

    /// How far the dense part may reach for the connections held.
    fn dense_bound(&self) -> usize {
        4 * self.len + DENSE_SLACK
    }

    /// Extends the dense part to at least `len` keys (an eighth and 64
    /// more, as far as [`Unit::dense_bound`] lets it), taking over the
    /// sparse keys it now covers.
    fn grow(&mut self, len: usize) {
        let to = (self.dense.len() + self.dense.len() / 8 + 64)
            .min(self.dense_bound())
            .max(len);
        self.dense.reserve_exact(to - self.dense.len());
        self.dense.resize(to, EMPTY);
        if !self.sparse.is_empty() {
            let dense = &mut self.dense;
            self.sparse.retain(|&key, &mut serial| {
                let covered = (key as usize) < to && serial != EMPTY;
                if covered {
                    dense[key as usize] = serial;
                }
                !covered
            });
        }
    }

    /// Every (key, serial) held.
    fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let dense = self.dense.iter().enumerate();
        dense
            .filter(|(_, &serial)| serial != EMPTY)
            .map(|(key, &serial)| (key as u32, serial))
            .chain(self.sparse.iter().map(|(&key, &serial)| (key, serial)))
    }
}

/// Hashes a unit's (node, worker slot) with a multiplication per field
/// (FxHash's): every registry call looks a unit up, and there are a few
/// hundred at most, so SipHash's resistance is not worth its time here.
#[derive(Default)]
struct UnitHasher(u64);

impl UnitHasher {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for UnitHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
}

/// The replica; see the module docs.
#[derive(Default, Debug)]
pub(crate) struct Registry {
    /// Every live connection on the server, by (node, worker slot).
    units: HashMap<(u32, u16), Unit, BuildHasherDefault<UnitHasher>>,
    /// Connections in `units`.
    count: usize,
    /// The data of the connections that have some.
    data: HashMap<ConnId, Entry>,
    /// uid -> its connections.
    uids: HashMap<Box<str>, Vec<ConnId>>,
    /// group -> its member connections.
    groups: HashMap<Box<str>, HashSet<ConnId>>,
}

impl Registry {
    /// Adds a connection. One that takes the key of another of its unit
    /// (whose close was never said) replaces it.
    pub(crate) fn open(&mut self, id: ConnId) {
        let unit = self.units.entry((id.node, id.worker)).or_default();
        match unit.get(id.key) {
            Some(serial) if serial == id.serial => {}
            Some(old) => {
                unit.insert(id.key, id.serial);
                self.forget(ConnId { serial: old, ..id });
            }
            None => {
                unit.insert(id.key, id.serial);
                self.count += 1;
            }
        }
    }

    /// Forgets a connection and every binding it had.
    pub(crate) fn close(&mut self, id: ConnId) {
        let unit = (id.node, id.worker);
        let Some(u) = self.units.get_mut(&unit) else {
            return;
        };
        if u.get(id.key) != Some(id.serial) {
            return;
        }
        u.remove(id.key);
        if u.len == 0 {
            self.units.remove(&unit);
        }
        self.count -= 1;
        self.forget(id);
    }

    /// Drops the data of a connection that is gone.
    fn forget(&mut self, id: ConnId) {
        let Some(entry) = self.data.remove(&id) else {
            return;
        };
        if let Some(uid) = entry.uid {
            self.remove_uid_link(&uid, id);
        }
        for g in entry.groups {
            self.remove_group_link(&g, id);
        }
    }

    fn remove_uid_link(&mut self, uid: &str, id: ConnId) {
        if let Some(list) = self.uids.get_mut(uid) {
            list.retain(|c| *c != id);
            if list.is_empty() {
                self.uids.remove(uid);
            }
        }
    }

    fn remove_group_link(&mut self, group: &str, id: ConnId) {
        if let Some(set) = self.groups.get_mut(group) {
            set.remove(&id);
            if set.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    fn entry(&mut self, id: ConnId) -> Option<&mut Entry> {
        if !self.contains(id) {
            return None;
        }
        Some(self.data.entry(id).or_default())
    }

    /// Binds `id` to `uid`, replacing an earlier binding. False if `id` is unknown.
    pub(crate) fn bind(&mut self, id: ConnId, uid: &str) -> bool {
        let Some(entry) = self.entry(id) else {
            return false;
        };
        let old = entry.uid.replace(uid.into());
        if let Some(old) = old {
            if &*old == uid {
                return true;
            }
            self.remove_uid_link(&old, id);
        }
        self.uids.entry(uid.into()).or_default().push(id);
        true
    }

    pub(crate) fn unbind(&mut self, id: ConnId) -> Option<Box<str>> {
        let old = self.entry(id)?.uid.take()?;
        self.remove_uid_link(&old, id);
        Some(old)
    }

    /// Adds `id` to `group`. False if unknown or already a member.
    pub(crate) fn join(&mut self, id: ConnId, group: &str) -> bool {
        let Some(entry) = self.entry(id) else {
            return false;
        };
        if entry.groups.iter().any(|g| &**g == group) {
            return false;
        }
        entry.groups.push(group.into());
        self.groups.entry(group.into()).or_default().insert(id);
        true
    }

    /// Removes `id` from `group`. False if it was not a member.
    pub(crate) fn leave(&mut self, id: ConnId, group: &str) -> bool {
        let Some(entry) = self.entry(id) else {
            return false;
        };
        let before = entry.groups.len();
        entry.groups.retain(|g| &**g != group);
        if entry.groups.len() == before {
            return false;
        }
        self.remove_group_link(group, id);
        true
    }

    pub(crate) fn set_session(&mut self, id: ConnId, data: Option<Bytes>) -> bool {
        match self.entry(id) {
            Some(e) => {
                e.session = data;
                true
            }
            None => false,
        }
    }

    /// Forgets every connection of one worker slot of one node (it died or
    /// resynchronises).
    pub(crate) fn clear_unit(&mut self, node: u32, worker: u16) {
        let Some(unit) = self.units.remove(&(node, worker)) else {
            return;
        };
        self.count -= unit.len;
        let gone: Vec<ConnId> = self
            .data
            .keys()
            .filter(|c| c.worker == worker && c.node == node)
            .copied()
            .collect();
        for id in gone {
            self.forget(id);
        }
    }

    pub(crate) fn contains(&self, id: ConnId) -> bool {
        self.units
            .get(&(id.node, id.worker))
            .is_some_and(|u| u.get(id.key) == Some(id.serial))
    }

    /// Connections of nodes other than `node`.
    pub(crate) fn remote_count(&self, node: u32) -> usize {
        let units = self.units.iter();
        units.filter(|(u, _)| u.0 != node).map(|(_, u)| u.len).sum()
    }

    pub(crate) fn conn_count(&self) -> usize {
        self.count
    }

    pub(crate) fn conn_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.units.iter().flat_map(|(&(node, worker), u)| {
            u.iter()
                .map(move |(key, serial)| ConnId::on_node(node, worker, key, serial))
        })
    }

    pub(crate) fn uid_of(&self, id: ConnId) -> Option<&str> {
        self.data.get(&id)?.uid.as_deref()
    }

    pub(crate) fn session(&self, id: ConnId) -> Option<&Bytes> {
        self.data.get(&id)?.session.as_ref()
    }

    pub(crate) fn groups_of(&self, id: ConnId) -> &[Box<str>] {
        match self.data.get(&id) {
            Some(e) => &e.groups,
            None => &[],
        }
    }

    pub(crate) fn conns_of_uid(&self, uid: &str) -> &[ConnId] {
        self.uids.get(uid).map(Vec::as_slice).unwrap_or(&[])
    }

    pub(crate) fn uids(&self) -> impl Iterator<Item = &str> {
        self.uids.keys().map(|u| &**u)
    }

    pub(crate) fn uid_count(&self) -> usize {
        self.uids.len()
    }

    pub(crate) fn group_members(&self, group: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.groups.get(group).into_iter().flatten().copied()
    }

    pub(crate) fn group_len(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, HashSet::len)
    }

    pub(crate) fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(|g| &**g)
    }

    /// The state of one connection as the bus messages that recreate it.
    pub(crate) fn describe(&self, id: ConnId) -> (Option<&str>, &[Box<str>], Option<&Bytes>) {
        (self.uid_of(id), self.groups_of(id), self.session(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(w: u16, k: u32) -> ConnId {
        ConnId::new(w, k, k as u64)
    }

    #[test]
    fn bindings_follow_connections() {
        let mut r = Registry::default();
        r.open(id(0, 1));
        r.open(id(1, 2));
        assert!(r.bind(id(0, 1), "ann"));
        assert!(r.bind(id(1, 2), "ann"));
        assert!(r.join(id(0, 1), "room"));
        assert!(!r.join(id(0, 1), "room"));
        assert_eq!(r.conns_of_uid("ann").len(), 2);
        r.close(id(0, 1));
        assert_eq!(r.conns_of_uid("ann"), &[id(1, 2)]);
        assert_eq!(r.group_len("room"), 0);
        assert_eq!(r.groups().count(), 0);
    }

    #[test]
    fn rebinding_moves_the_connection() {
        let mut r = Registry::default();
        r.open(id(0, 1));
        r.bind(id(0, 1), "a");
        r.bind(id(0, 1), "b");
        assert!(r.conns_of_uid("a").is_empty());
        assert_eq!(r.uid_of(id(0, 1)), Some("b"));
        assert_eq!(r.unbind(id(0, 1)).as_deref(), Some("b"));
        assert_eq!(r.uid_count(), 0);
    }

    #[test]
    fn clearing_a_worker_leaves_the_others() {
        let mut r = Registry::default();
        for k in 0..10 {
            r.open(id((k % 2) as u16, k));
            r.join(id((k % 2) as u16, k), "g");
        }
        r.clear_unit(0, 1);
        assert_eq!(r.conn_count(), 5);
        assert!(r.group_members("g").all(|c| c.worker == 0));
    }

    #[test]
    fn keys_far_apart_and_odd_serials_are_kept_exactly() {
        let mut r = Registry::default();
        let far = [
            id(0, 0),
            id(0, 3),
            id(0, 4_000_000_000),
            ConnId::new(0, 7, u64::MAX),
            ConnId::on_node(9, 0, 5, 1),
        ];
        for c in far {
            r.open(c);
        }
        assert_eq!(r.conn_count(), 5);
        assert!(far.iter().all(|c| r.contains(*c)));
        assert!(!r.contains(id(0, 1)) && !r.contains(ConnId::new(0, 3, 4)));
        let mut listed: Vec<ConnId> = r.conn_ids().collect();
        listed.sort();
        let mut want = far.to_vec();
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(r.remote_count(0), 1);
        // A dense part that grows past the sparse keys takes them over.
        for k in 8..5000 {
            r.open(id(0, k));
        }
        assert_eq!(r.conn_count(), 5 + 4992);
        assert!(far.iter().all(|c| r.contains(*c)));
        for k in 8..5000 {
            r.close(id(0, k));
        }
        r.close(id(0, 4_000_000_000));
        assert_eq!(r.conn_count(), 4);
        assert!(!r.contains(id(0, 4_000_000_000)));
        assert!(r.contains(ConnId::new(0, 7, u64::MAX)));
    }

    #[test]
    fn a_new_connection_on_a_key_replaces_the_old_one() {
        let mut r = Registry::default();
        r.open(ConnId::new(1, 4, 10));
        r.bind(ConnId::new(1, 4, 10), "ann");
        r.join(ConnId::new(1, 4, 10), "g");
        r.open(ConnId::new(1, 4, 11));
        assert_eq!(r.conn_count(), 1);
        assert!(!r.contains(ConnId::new(1, 4, 10)));
        assert!(r.conns_of_uid("ann").is_empty());
        assert_eq!(r.group_len("g"), 0);
        // Closing the stale id is a no-op.
        r.close(ConnId::new(1, 4, 10));
        assert!(r.contains(ConnId::new(1, 4, 11)));
    }

    #[test]
    fn clearing_a_unit_drops_its_bindings() {
        let mut r = Registry::default();
        for k in 0..6 {
            r.open(id(k as u16 % 2, k));
            r.bind(id(k as u16 % 2, k), "u");
            r.set_session(id(k as u16 % 2, k), Some(Bytes::from_static(b"s")));
        }
        r.clear_unit(0, 0);
        assert_eq!(r.conn_count(), 3);
        assert_eq!(r.conns_of_uid("u").len(), 3);
        assert!(r.session(id(0, 0)).is_none());
        assert!(r.session(id(1, 1)).is_some());
    }

    #[test]
    fn unknown_connections_are_refused() {
        let mut r = Registry::default();
        assert!(!r.bind(id(0, 9), "x"));
        assert!(!r.join(id(0, 9), "g"));
        assert!(!r.set_session(id(0, 9), None));
    }
}
