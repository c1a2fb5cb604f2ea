//! The per-connection rate limit: a token bucket, and a count of frames sent
//! over the limit that decides when a connection is abusive. Shared by the
//! example apps: each includes it with `#[path = "../common/rate.rs"] mod rate;`.

use std::time::Instant;

/// A rate limit, validated by the app's config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens regained per second.
    pub per_second: u32,
    /// Bucket capacity.
    pub burst: u32,
    /// Refused frames (without the bucket filling up again in between)
    /// after which the connection is closed with 1008.
    pub close_after: u32,
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Pass,
    /// Over the limit: answer `rate_limited` (unless an earlier error applies).
    Limited,
    /// Over the limit too often: close the connection with 1008.
    Abuse,
}

/// One connection's bucket. It starts full.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The configuration.
    limit: RateLimit,
    /// Tokens now (fractional: refill is continuous).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// Frames refused since the bucket was last full.
    strikes: u32,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            at: now,
            strikes: 0,
        }
    }

    /// Takes a token for one frame arriving at `now`.
    ///
    /// Every frame costs a token, whatever it contains, so a flood of bad
    /// frames is limited too. Refused frames count as strikes; the count goes
    /// back to zero once the bucket has filled up again, and reaching
    /// `close_after` strikes means abuse.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let burst = f64::from(self.limit.burst);
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.per_second)).min(burst);
        self.at = now;
        if self.tokens >= burst {
            self.strikes = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Pass;
        }
        self.strikes += 1;
        if self.strikes >= self.limit.close_after {
            Verdict::Abuse
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMIT: RateLimit = RateLimit {
        per_second: 10,
        burst: 3,
        close_after: 4,
    };

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut b = Bucket::new(LIMIT, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Verdict::Pass);
        }
        assert_eq!(b.take(t0), Verdict::Limited);
        // 10 per second: one token every 100 ms.
        assert_eq!(b.take(t0 + Duration::from_millis(50)), Verdict::Limited);
        assert_eq!(b.take(t0 + Duration::from_millis(110)), Verdict::Pass);
        assert_eq!(b.take(t0 + Duration::from_millis(120)), Verdict::Limited);
    }

    #[test]
    fn the_bucket_never_holds_more_than_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(LIMIT, t0);
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(later), Verdict::Pass);
        }
        assert_eq!(b.take(later), Verdict::Limited);
    }

    #[test]
    fn repeated_abuse_is_detected_and_forgiven_after_a_rest() {
        let t0 = Instant::now();
        let mut b = Bucket::new(LIMIT, t0);
        for _ in 0..3 {
            b.take(t0);
        }
        assert_eq!(b.take(t0), Verdict::Limited);
        assert_eq!(b.take(t0), Verdict::Limited);
        assert_eq!(b.take(t0), Verdict::Limited);
        assert_eq!(b.take(t0), Verdict::Abuse);

        let mut b = Bucket::new(LIMIT, t0);
        for _ in 0..6 {
            b.take(t0);
        }
        // A rest long enough to fill the bucket forgives the strikes.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(b.take(t1), Verdict::Pass);
        }
        assert_eq!(b.take(t1), Verdict::Limited);
    }
}
