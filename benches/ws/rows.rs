//! A (server, scenario) pair's outcome over its runs, how a figure is
//! printed, and finding a row's figures: what the report and the
//! scenarios' own bars share.

use crate::plan::{Figures, Scenario};
use crate::server::ServerSpec;

/// The outcome of one (server, scenario) pair over its runs.
pub struct Row {
    /// Server under test.
    pub spec: ServerSpec,
    /// Scenario driven.
    pub scenario: Scenario,
    /// `ok`, `skipped` or `failed`.
    pub status: &'static str,
    /// Why skipped or failed.
    pub reason: String,
    /// Figures of each run.
    pub runs: Vec<Figures>,
    /// Median of each figure over runs; for error counts, the maximum.
    pub median: Figures,
}

/// A figure as the tables show it.
pub fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        let s = format!("{:.0}", v);
        // Thousands separators for readability.
        let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &s));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The figures of `server` with `count` workers in `scenario`, if it ran.
pub fn find<'a>(
    rows: &'a [Row],
    server: &str,
    count: usize,
    scenario: &str,
) -> Option<&'a Figures> {
    find_nodes(rows, server, 1, count, scenario)
}

/// The figures of `server` with `nodes` x `count` in `scenario`, if it ran.
pub fn find_nodes<'a>(
    rows: &'a [Row],
    server: &str,
    nodes: usize,
    count: usize,
    scenario: &str,
) -> Option<&'a Figures> {
    rows.iter()
        .find(|r| {
            r.spec.name == server
                && r.spec.nodes == nodes
                && r.spec.count == count
                && r.scenario.name == scenario
                && !r.median.is_empty()
        })
        .map(|r| &r.median)
}
