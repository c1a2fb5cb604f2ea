//! The page's live view: what the brain sends to every page connection
//! (the WebSocket at `/live` on `http_listen`, group [`PAGE_GROUP`]) when
//! the job table changed, at most every [`INTERVAL_MS`].
//!
//! `{"type":"snapshot","now_ms":N,"queues":{"NAME":{"scheduled":0,...}},
//! "jobs":[{"job","queue","state","priority","attempts","max_attempts",
//! "created_ms","updated_ms","result"?,"error"?}, ...]}`, the jobs newest
//! first, at most [`RECENT`].

use crate::jobs::Jobs;
use crate::reply;
use crate::types::{Counts, JobView};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The registry group of page connections, on every worker.
pub const PAGE_GROUP: &str = "page";

/// Fewest ms between two snapshots.
pub const INTERVAL_MS: u64 = 200;

/// The newest jobs a snapshot lists.
pub const RECENT: usize = 50;

/// One snapshot of `jobs`.
pub fn snapshot(jobs: &Jobs, now_ms: u64) -> String {
    render(now_ms, &jobs.counts(), &jobs.recent(RECENT))
}

/// A snapshot of these counts and jobs.
pub fn render(now_ms: u64, counts: &BTreeMap<String, Counts>, views: &[JobView]) -> String {
    let mut s = String::with_capacity(256 + 200 * views.len());
    let _ = write!(
        s,
        "{{\"type\":\"snapshot\",\"now_ms\":{now_ms},\"queues\":{{"
    );
    for (i, (queue, c)) in counts.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{}:{}", json(queue), reply::counts_json(c));
    }
    s.push_str("},\"jobs\":[");
    for (i, v) in views.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // The status reply is the row: its fields, without "type".
        let row = reply::status(v);
        let body = row.split_once(',').map_or("}", |(_, rest)| rest);
        s.push('{');
        s.push_str(body);
    }
    s.push_str("]}");
    s
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::State;

    #[test]
    fn a_snapshot_is_one_json_object_with_queues_and_rows() {
        let mut counts = BTreeMap::new();
        counts.insert("q\"1".to_string(), [1, 2, 3, 4, 5, 6, 7]);
        let v = JobView {
            id: 9,
            queue: "q\"1".into(),
            state: State::Succeeded,
            priority: 5,
            attempts: 1,
            max_attempts: 3,
            created_ms: 1,
            updated_ms: 2,
            result: Some("{\"x\":[1]}".into()),
            error: None,
        };
        let text = render(42, &counts, &[v]);
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["type"], "snapshot");
        assert_eq!(j["now_ms"], 42);
        assert_eq!(j["queues"]["q\"1"]["retry"], 4);
        assert_eq!(j["jobs"][0]["job"], "9");
        assert_eq!(j["jobs"][0]["result"]["x"][0], 1);
        assert!(j["jobs"][0].get("type").is_none());
        let empty: serde_json::Value =
            serde_json::from_str(&render(0, &BTreeMap::new(), &[])).unwrap();
        assert_eq!(empty["jobs"], serde_json::json!([]));
    }
}
