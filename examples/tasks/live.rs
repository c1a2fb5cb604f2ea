//! The page's live view: what the brain sends to every page connection
//! (the WebSocket at `/live` on `http_listen`, group [`PAGE_GROUP`]) when
//! the job table changed, at most every [`INTERVAL_MS`].
//!
//! STUB: the snapshot is being written on its own branch.

use crate::jobs::Jobs;

/// The registry group of page connections, on every worker.
pub const PAGE_GROUP: &str = "page";

/// Fewest ms between two snapshots.
pub const INTERVAL_MS: u64 = 200;

/// The newest jobs a snapshot lists.
pub const RECENT: usize = 50;

/// One snapshot: `{"type":"snapshot","queues":{...},"jobs":[...]}`.
pub fn snapshot(jobs: &Jobs, now_ms: u64) -> String {
    let _ = (jobs, now_ms);
    String::from("{\"type\":\"snapshot\",\"queues\":{},\"jobs\":[]}")
}
