//! The online-user registry as handlers see it: bindings, groups, sessions
//! and server-wide queries.

use super::Ctx;
use crate::id::ConnId;
use bytes::Bytes;

impl Ctx<'_> {
    /// Binds a connection (on any worker) to a uid, a user id of the
    /// application, replacing an earlier binding of that connection. A uid may
    /// have many connections. An outbound connection of this worker joins the
    /// registry with it.
    pub fn bind_uid(&mut self, conn: ConnId, uid: &str) {
        self.core.bind_uid(conn, uid);
    }

    /// Removes a connection's uid binding (on any worker).
    pub fn unbind_uid(&mut self, conn: ConnId) {
        self.core.unbind_uid(conn);
    }

    /// Adds a connection (on any worker) to a group.
    pub fn join_group(&mut self, conn: ConnId, group: &str) {
        self.core.join_group(conn, group);
    }

    /// Removes a connection (on any worker) from a group.
    pub fn leave_group(&mut self, conn: ConnId, group: &str) {
        self.core.leave_group(conn, group);
    }

    /// Removes every member from a group, on every worker.
    pub fn ungroup(&mut self, group: &str) {
        self.core.ungroup(group);
    }

    /// Stores small session data (at most [`crate::MAX_SESSION_BYTES`]) for a
    /// connection on any worker, readable with [`Ctx::session`] on every
    /// worker. Returns false if the data is too big or the connection is not
    /// online. For another worker's connection the change is made by its
    /// owner, so it shows in this worker's [`Ctx::session`] a bus round trip
    /// later.
    pub fn set_session(&mut self, conn: ConnId, data: impl Into<Bytes>) -> bool {
        self.core.set_session(conn, Some(data.into()))
    }

    /// A connection's session data, on any worker.
    pub fn session(&self, conn: ConnId) -> Option<Bytes> {
        self.core.registry.session(conn).cloned()
    }

    /// Whether a connection is online anywhere on the server.
    pub fn is_online(&self, conn: ConnId) -> bool {
        self.core.registry.contains(conn)
    }

    /// Whether a uid has at least one connection.
    pub fn is_uid_online(&self, uid: &str) -> bool {
        !self.core.registry.conns_of_uid(uid).is_empty()
    }

    /// The connections bound to a uid.
    pub fn conns_of_uid(&self, uid: &str) -> Vec<ConnId> {
        self.core.registry.conns_of_uid(uid).to_vec()
    }

    /// The uid a connection is bound to.
    pub fn uid_of_conn(&self, conn: ConnId) -> Option<String> {
        self.core.registry.uid_of(conn).map(str::to_string)
    }

    /// Connections on the whole server.
    pub fn connection_count(&self) -> usize {
        self.core.registry.conn_count()
    }

    /// Every connection on the whole server, in no particular order.
    pub fn connections(&self) -> Vec<ConnId> {
        self.core.registry.conn_ids().collect()
    }

    /// The open connections of this worker only (Workerman's
    /// `$worker->connections`).
    pub fn local_connections(&self) -> Vec<ConnId> {
        self.core
            .conns
            .iter()
            .filter(|(_, c)| c.marks.listed)
            .map(|(k, c)| self.core.id_of(k, c))
            .collect()
    }

    /// Distinct uids with at least one connection.
    pub fn uid_count(&self) -> usize {
        self.core.registry.uid_count()
    }

    /// Every uid with at least one connection, sorted.
    pub fn uids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.core.registry.uids().map(str::to_string).collect();
        v.sort_unstable();
        v
    }

    /// Every group with at least one member, sorted.
    pub fn groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self.core.registry.groups().map(str::to_string).collect();
        v.sort_unstable();
        v
    }

    /// The groups a connection is in, in the order it joined them.
    pub fn groups_of_conn(&self, conn: ConnId) -> Vec<String> {
        self.core
            .registry
            .groups_of(conn)
            .iter()
            .map(|g| g.to_string())
            .collect()
    }

    /// The member connections of a group.
    pub fn group_conns(&self, group: &str) -> Vec<ConnId> {
        self.core.registry.group_members(group).collect()
    }

    /// The distinct uids of a group's members, sorted (members without a uid
    /// are not counted).
    pub fn group_uids(&self, group: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .core
            .registry
            .group_members(group)
            .filter_map(|c| self.core.registry.uid_of(c).map(str::to_string))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How many connections are in a group.
    pub fn group_conn_count(&self, group: &str) -> usize {
        self.core.registry.group_len(group)
    }
}
