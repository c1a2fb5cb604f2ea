//! The online-user registry as handlers see it: bindings, groups, sessions
//! and server-wide queries.

use super::*;

impl Ctx {
    /// Binds a connection (on any worker) to a uid, a user id of the
    /// application, replacing an earlier binding of that connection. A uid may
    /// have many connections.
    pub fn bind_uid(&mut self, conn: ConnId, uid: &str) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Bind(conn, uid.to_string()));
        }
        if self.registry.bind(conn, uid) {
            self.bus.broadcast(&Record::Bind(conn, uid.to_string()));
        }
    }

    /// Removes a connection's uid binding (on any worker).
    pub fn unbind_uid(&mut self, conn: ConnId) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Unbind(conn));
        }
        if self.registry.unbind(conn).is_some() {
            self.bus.broadcast(&Record::Unbind(conn));
        }
    }

    /// Adds a connection (on any worker) to a group.
    pub fn join_group(&mut self, conn: ConnId, group: &str) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Join(conn, group.to_string()));
        }
        if self.registry.join(conn, group) {
            self.bus.broadcast(&Record::Join(conn, group.to_string()));
        }
    }

    /// Removes a connection (on any worker) from a group.
    pub fn leave_group(&mut self, conn: ConnId, group: &str) {
        if !self.owns(conn) {
            return self.ask_owner(Record::Leave(conn, group.to_string()));
        }
        if self.registry.leave(conn, group) {
            self.bus.broadcast(&Record::Leave(conn, group.to_string()));
        }
    }

    /// Registry changes to another worker's connection are made by that
    /// worker, which then tells everyone (this worker included), so every
    /// replica sees one order of changes per connection. Until then this
    /// worker's queries still show the old state; sends issued after the
    /// request are resolved by the owner after it.
    pub(super) fn ask_owner(&mut self, rec: Record) {
        let conn = match &rec {
            Record::Bind(c, _)
            | Record::Unbind(c)
            | Record::Join(c, _)
            | Record::Leave(c, _)
            | Record::Session(c, _) => *c,
            _ => unreachable!("only registry changes are requested"),
        };
        if conn.worker != self.slot && self.registry.contains(conn) {
            self.bus.send(conn.worker, &Record::Request(Box::new(rec)));
        }
    }

    /// Removes every member from a group, on every worker.
    pub fn ungroup(&mut self, group: &str) {
        self.bus.broadcast(&Record::Ungroup(group.to_string()));
        self.ungroup_local(group);
    }

    pub(crate) fn ungroup_local(&mut self, group: &str) {
        let mine: Vec<ConnId> = self
            .registry
            .group_members(group)
            .filter(|c| c.worker == self.slot)
            .collect();
        for c in mine {
            self.leave_group(c, group);
        }
    }

    /// Stores small session data (at most [`MAX_SESSION_BYTES`]) for a
    /// connection on any worker, readable with [`Ctx::session`] on every
    /// worker. Returns false if the data is too big or the connection is not
    /// online. For another worker's connection the change is made by its
    /// owner, so it shows in this worker's [`Ctx::session`] a bus round trip
    /// later.
    pub fn set_session(&mut self, conn: ConnId, data: impl Into<Bytes>) -> bool {
        let data = data.into();
        if data.len() > MAX_SESSION_BYTES || !self.registry.contains(conn) {
            return false;
        }
        if !self.owns(conn) {
            self.ask_owner(Record::Session(conn, Some(data)));
            return true;
        }
        if self.registry.set_session(conn, Some(data.clone())) {
            self.bus.broadcast(&Record::Session(conn, Some(data)));
            return true;
        }
        false
    }

    /// A connection's session data, on any worker.
    pub fn session(&self, conn: ConnId) -> Option<Bytes> {
        self.registry.session(conn).cloned()
    }

    /// Whether a connection is online anywhere on the server.
    pub fn is_online(&self, conn: ConnId) -> bool {
        self.registry.contains(conn)
    }

    /// Whether a uid has at least one connection.
    pub fn is_uid_online(&self, uid: &str) -> bool {
        !self.registry.conns_of_uid(uid).is_empty()
    }

    /// The connections bound to a uid.
    pub fn conns_of_uid(&self, uid: &str) -> Vec<ConnId> {
        self.registry.conns_of_uid(uid).to_vec()
    }

    /// The uid a connection is bound to.
    pub fn uid_of_conn(&self, conn: ConnId) -> Option<String> {
        self.registry.uid_of(conn).map(str::to_string)
    }

    /// Connections on the whole server.
    pub fn connection_count(&self) -> usize {
        self.registry.conn_count()
    }

    /// Every connection on the whole server, in no particular order.
    pub fn connections(&self) -> Vec<ConnId> {
        self.registry.conn_ids().collect()
    }

    /// The open connections of this worker only (Workerman's
    /// `$worker->connections`).
    pub fn local_connections(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.open)
            .map(|(k, c)| self.id_of(k, c))
            .collect()
    }

    /// Distinct uids with at least one connection.
    pub fn uid_count(&self) -> usize {
        self.registry.uid_count()
    }

    /// Every uid with at least one connection, sorted.
    pub fn uids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.registry.uids().map(str::to_string).collect();
        v.sort_unstable();
        v
    }

    /// Every group with at least one member, sorted.
    pub fn groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self.registry.groups().map(str::to_string).collect();
        v.sort_unstable();
        v
    }

    /// The groups a connection is in, in the order it joined them.
    pub fn groups_of_conn(&self, conn: ConnId) -> Vec<String> {
        self.registry
            .groups_of(conn)
            .iter()
            .map(|g| g.to_string())
            .collect()
    }

    /// The member connections of a group.
    pub fn group_conns(&self, group: &str) -> Vec<ConnId> {
        self.registry.group_members(group).collect()
    }

    /// The distinct uids of a group's members, sorted (members without a uid
    /// are not counted).
    pub fn group_uids(&self, group: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .registry
            .group_members(group)
            .filter_map(|c| self.registry.uid_of(c).map(str::to_string))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How many connections are in a group.
    pub fn group_conn_count(&self, group: &str) -> usize {
        self.registry.group_len(group)
    }
}
