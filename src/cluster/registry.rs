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

use crate::id::ConnId;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};

/// The replicated data of one connection; absent until something is set, so an
/// idle connection costs only its key in [`Registry::conns`].
#[derive(Default, Debug)]
struct Entry {
    uid: Option<Box<str>>,
    groups: Vec<Box<str>>,
    session: Option<Bytes>,
}

/// The replica; see the module docs.
#[derive(Default, Debug)]
pub(crate) struct Registry {
    /// Every live connection on the server.
    conns: HashMap<ConnId, Option<Box<Entry>>>,
    /// uid -> its connections.
    uids: HashMap<Box<str>, Vec<ConnId>>,
    /// group -> its member connections.
    groups: HashMap<Box<str>, HashSet<ConnId>>,
}

impl Registry {
    pub(crate) fn open(&mut self, id: ConnId) {
        self.conns.entry(id).or_insert(None);
    }

    /// Forgets a connection and every binding it had.
    pub(crate) fn close(&mut self, id: ConnId) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        let Some(entry) = entry else { return };
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
        self.conns
            .get_mut(&id)
            .map(|e| &mut **e.get_or_insert_with(Default::default))
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
        let gone: Vec<ConnId> = self
            .conns
            .keys()
            .filter(|c| c.worker == worker && c.node == node)
            .copied()
            .collect();
        for id in gone {
            self.close(id);
        }
    }

    pub(crate) fn contains(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Connections of nodes other than `node`.
    pub(crate) fn remote_count(&self, node: u32) -> usize {
        self.conns.keys().filter(|c| c.node != node).count()
    }

    pub(crate) fn conn_count(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn conn_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    pub(crate) fn uid_of(&self, id: ConnId) -> Option<&str> {
        self.conns.get(&id)?.as_ref()?.uid.as_deref()
    }

    pub(crate) fn session(&self, id: ConnId) -> Option<&Bytes> {
        self.conns.get(&id)?.as_ref()?.session.as_ref()
    }

    pub(crate) fn groups_of(&self, id: ConnId) -> &[Box<str>] {
        match self.conns.get(&id) {
            Some(Some(e)) => &e.groups,
            _ => &[],
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
    fn unknown_connections_are_refused() {
        let mut r = Registry::default();
        assert!(!r.bind(id(0, 9), "x"));
        assert!(!r.join(id(0, 9), "g"));
        assert!(!r.set_session(id(0, 9), None));
    }
}
