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
/// Its text form, `"{worker}.{key}.{serial}"`, is what [`fmt::Display`] prints
/// and [`FromStr`] parses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) worker: u16,
    pub(crate) key: u32,
    pub(crate) serial: u64,
}

impl ConnId {
    pub(crate) fn new(worker: u16, key: u32, serial: u64) -> Self {
        ConnId {
            worker,
            key,
            serial,
        }
    }

    /// The worker slot (0 to count - 1) that owns this connection.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
#[error("not a connection id (expected worker.key.serial): {0:?}")]
pub struct ParseConnIdError(String);

impl FromStr for ConnId {
    type Err = ParseConnIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseConnIdError(s.chars().take(64).collect());
        let mut parts = s.split('.');
        let worker = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let key = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let serial = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(ConnId::new(worker, key, serial))
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
    }

    #[test]
    fn conn_id_rejects_malformed_text() {
        for bad in ["", "1", "1.2", "1.2.3.4", "a.b.c", "70000.1.1", "-1.0.0"] {
            assert!(bad.parse::<ConnId>().is_err(), "{bad:?} parsed");
        }
    }
}
