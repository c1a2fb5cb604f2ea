//! A log-linear latency histogram (microseconds, ~1.6% resolution) that can be
//! shipped between processes and merged.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two.
const SUB: u64 = 64;
const SUB_BITS: u32 = 6;

/// Latency histogram in microseconds.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Histogram {
    /// Sparse `(bucket, count)` pairs when serialized; dense while recording.
    #[serde(with = "sparse")]
    counts: Vec<u64>,
    /// Number of recorded values.
    pub total: u64,
    /// Largest recorded value, exact.
    pub max_us: u64,
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() - SUB_BITS + 1; // v >> exp in [32, 64)
    let mant = v >> exp; // in [SUB/2, SUB)
    (exp as u64 * (SUB / 2) + mant) as usize
}

fn bucket_low(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let exp = (b - SUB / 2) / (SUB / 2);
    let mant = b - exp * (SUB / 2);
    mant << exp
}

impl Histogram {
    /// Records one latency in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        let us = ns / 1000;
        let b = bucket(us);
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The value at quantile `q` (0..=1) in microseconds (bucket's low edge).
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_low(b).min(self.max_us);
            }
        }
        self.max_us
    }
}

mod sparse {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(usize, u64)> = v
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i, c))
            .collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let pairs: Vec<(usize, u64)> = Vec::deserialize(d)?;
        let mut v = vec![0; pairs.iter().map(|p| p.0 + 1).max().unwrap_or(0)];
        for (i, c) in pairs {
            v[i] = c;
        }
        Ok(v)
    }
}
