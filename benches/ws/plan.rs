//! What a run is made of: a scenario's kind, its parameters, its load
//! generator, and the figures a run gives. The runner (`scenario.rs`), the
//! report and the scenarios' own modules all take these from here.

use std::collections::BTreeMap;
use std::time::Duration;

/// What kind of traffic a scenario drives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Hold connections.
    Idle,
    /// Ping-pong per connection.
    Echo,
    /// Broadcast from some senders to all.
    Fanout,
    /// Open, upgrade, close in a loop.
    Churn,
    /// The sync server: every client `put`s its own keys (closed loop).
    Writes,
    /// The sync server: every client `put`s one key, retrying conflicts.
    HotKey,
    /// An application's fan-out: `conns` subscribers of one sync key (or
    /// members of one chat room) and `senders` more connections writing
    /// it at `rate`.
    AppFanout,
    /// Members of rooms, `senders` of them sending to their own room at
    /// `rate` in all (`chatrooms.rs`).
    Rooms,
}

/// Which load generator drives a scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Client {
    /// Ours: one mio loop per process, writes batched (`loadgen.rs`).
    Own,
    /// tokio-tungstenite, one task per connection (`loadgen_tokio.rs`).
    Tokio,
}

impl Client {
    /// The bench binary's subcommand that plays it.
    pub(crate) fn subcommand(self) -> &'static str {
        match self {
            Client::Own => "loadgen",
            Client::Tokio => "loadgen-tokio",
        }
    }
}

/// One scenario with its parameters.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name used in tables and on the command line, e.g. `fanout-sat`.
    pub name: String,
    /// Traffic shape.
    pub kind: Kind,
    /// Connections (churn: concurrent attempts over all clients).
    pub conns: usize,
    /// Message bytes.
    pub size: usize,
    /// Fanout senders.
    pub senders: usize,
    /// Fanout offered messages/s over all senders; 0 = saturation.
    pub rate: f64,
    /// Load generator processes.
    pub clients: usize,
    /// The cluster comparison: runs on a cluster of foreman nodes (load
    /// generator `i` talking to node `i % nodes`) and on one foreman node.
    pub cluster: bool,
    /// Over `wss://`: every server serves the bench's certificate
    /// ([`crate::tls::BenchCert`]) and the load generators trust it.
    pub tls: bool,
    /// Warm-up before the measure window.
    pub warm: Duration,
    /// Measure window.
    pub measure: Duration,
    /// The load generator.
    pub client: Client,
}

impl Scenario {
    /// Connections the load generators open: an application fan-out's
    /// writers come on top of its subscribers.
    pub fn connections(&self) -> usize {
        match self.kind {
            Kind::AppFanout => self.conns + self.senders,
            _ => self.conns,
        }
    }
}

/// Figures of one run, by name (see the table legend in `report.rs`).
pub type Figures = BTreeMap<String, f64>;
