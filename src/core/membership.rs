//! Registry changes: uids, groups and session data of connections on any
//! worker. A worker changes only its own connections' entries and tells the
//! others; a change to another worker's connection is asked of its owner.

use super::Core;
use crate::cluster::wire::Record;
use crate::id::ConnId;
use bytes::Bytes;

/// Largest session value accepted by [`crate::Ctx::set_session`].
pub const MAX_SESSION_BYTES: usize = 4096;

impl Core {
    /// The key of an own connection about to get a registry entry: an
    /// outbound connection joins the registry with its first binding.
    fn own_listed(&mut self, conn: ConnId) -> bool {
        match self.local_key(conn) {
            Some(key) => {
                self.list(key);
                true
            }
            None => false,
        }
    }

    pub(crate) fn bind_uid(&mut self, conn: ConnId, uid: &str) {
        if !self.own_listed(conn) {
            return self.ask_owner(Record::Bind(conn, uid.to_string()));
        }
        if self.registry.bind(conn, uid) {
            self.announce(Record::Bind(conn, uid.to_string()));
        }
    }

    pub(crate) fn unbind_uid(&mut self, conn: ConnId) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Unbind(conn));
        }
        if self.registry.unbind(conn).is_some() {
            self.announce(Record::Unbind(conn));
        }
    }

    pub(crate) fn join_group(&mut self, conn: ConnId, group: &str) {
        if !self.own_listed(conn) {
            return self.ask_owner(Record::Join(conn, group.to_string()));
        }
        if self.registry.join(conn, group) {
            self.announce(Record::Join(conn, group.to_string()));
        }
    }

    pub(crate) fn leave_group(&mut self, conn: ConnId, group: &str) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Leave(conn, group.to_string()));
        }
        if self.registry.leave(conn, group) {
            self.announce(Record::Leave(conn, group.to_string()));
        }
    }

    /// Registry changes to another worker's connection are made by that
    /// worker, which then tells everyone (this worker included), so every
    /// replica sees one order of changes per connection.
    fn ask_owner(&mut self, rec: Record) {
        let conn = match &rec {
            Record::Bind(c, _)
            | Record::Unbind(c)
            | Record::Join(c, _)
            | Record::Leave(c, _)
            | Record::Session(c, _) => *c,
            _ => unreachable!("only registry changes are requested"),
        };
        if self.is_mine(conn) || !self.registry.contains(conn) {
            return;
        }
        let rec = Record::Request(Box::new(rec));
        if self.on_this_node(conn) {
            self.bus.send(conn.worker, &rec);
        } else {
            self.send_owner_node(conn, &rec);
        }
    }

    pub(crate) fn ungroup(&mut self, group: &str) {
        let rec = Record::Ungroup(group.to_string());
        self.bus.broadcast(&rec);
        self.send_other_nodes(&rec);
        self.ungroup_local(group);
    }

    pub(crate) fn ungroup_local(&mut self, group: &str) {
        let mine: Vec<ConnId> = self
            .registry
            .group_members(group)
            .filter(|c| self.is_mine(*c))
            .collect();
        for c in mine {
            self.leave_group(c, group);
        }
    }

    /// See [`crate::Ctx::set_session`].
    pub(crate) fn set_session(&mut self, conn: ConnId, data: Option<Bytes>) -> bool {
        if data.as_ref().is_some_and(|d| d.len() > MAX_SESSION_BYTES) {
            return false;
        }
        if !self.own_listed(conn) {
            if !self.registry.contains(conn) {
                return false;
            }
            self.ask_owner(Record::Session(conn, data));
            return true;
        }
        if self.registry.set_session(conn, data.clone()) {
            self.announce(Record::Session(conn, data));
            return true;
        }
        false
    }
}
