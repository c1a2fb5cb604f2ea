//! Identifiers seen by users: connections and timers.

use std::fmt;
use std::str::FromStr;

/// A connection, unique on the whole server for the server's lifetime.
///
/// It names the worker slot that owns the connection, the connection's key in
/// that worker's table, and a serial number that is never reused for another
/// connection, not even by a replacement worker in the same slot, however
/// many times the slot is restarted (one counter per slot, in memory the
/// master shares with its workers). A stale id therefore
/// never reaches a new tenant: sends to it are no-ops.
///
/// On a cluster (`[cluster]` in the config) it also names the node: a
/// 32-bit number derived from the node's name ([`crate::Ctx::node`]), never
/// 0; on a single server the node number is 0.
///
/// Its text form, `"{worker}.{key}.{serial}"` on a single server and
/// `"{node}.{worker}.{key}.{serial}"` on a cluster, is what [`fmt::Display`]
/// prints and [`FromStr`] parses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) node: u32,
    pub(crate) worker: u16,
    pub(crate) key: u32,
    pub(crate) serial: u64,
}

impl ConnId {
    pub(crate) fn new(worker: u16, key: u32, serial: u64) -> Self {
        ConnId::on_node(0, worker, key, serial)
    }

    pub(crate) fn on_node(node: u32, worker: u16, key: u32, serial: u64) -> Self {
        ConnId {
            node,
            worker,
            key,
            serial,
        }
    }

    /// The node that owns this connection: 0 on a single server.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// The worker slot (0 to count - 1) that owns this connection.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node != 0 {
            write!(f, "{}.", self.node)?;
        }
        write!(f, "{}.{}.{}", self.worker, self.key, self.serial)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

/// The text was not of the form `worker.key.serial`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a connection id (expected worker.key.serial or node.worker.key.serial): {0:?}")]
pub struct ParseConnIdError(String);

impl FromStr for ConnId {
    type Err = ParseConnIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseConnIdError(s.chars().take(64).collect());
        let parts: Vec<&str> = s.split('.').collect();
        let (node, rest) = match parts.len() {
            3 => (0, &parts[..]),
            4 => {
                let node: u32 = parts[0].parse().map_err(|_| bad())?;
                if node == 0 {
                    return Err(bad());
                }
                (node, &parts[1..])
            }
            _ => return Err(bad()),
        };
        let worker = rest[0].parse().map_err(|_| bad())?;
        let key = rest[1].parse().map_err(|_| bad())?;
        let serial = rest[2].parse().map_err(|_| bad())?;
        Ok(ConnId::on_node(node, worker, key, serial))
    }
}

/// A timer made by [`crate::Ctx::add_timer`], unique within its worker.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TimerId(pub(crate) u64);

impl TimerId {
    /// The number behind the id, for logs and wire formats.
    pub fn get(&self) -> u64 {
        self.0
    }
}

impl fmt::Display for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_round_trips_through_text() {
        let id = ConnId::new(3, 17, 1 << 41);
        assert_eq!(id.to_string().parse::<ConnId>(), Ok(id));
        let id = ConnId::on_node(4_000_000_000, 3, 17, 9);
        assert_eq!(id.to_string(), "4000000000.3.17.9");
        assert_eq!(id.to_string().parse::<ConnId>(), Ok(id));
    }

    #[test]
    fn conn_id_rejects_malformed_text() {
        for bad in [
            "",
            "1",
            "1.2",
            "0.1.2.3",
            "1.2.3.4.5",
            "a.b.c",
            "70000.1.1",
            "-1.0.0",
        ] {
            assert!(bad.parse::<ConnId>().is_err(), "{bad:?} parsed");
        }
    }
}
