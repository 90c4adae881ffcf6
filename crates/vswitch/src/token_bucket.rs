//! The token bucket behind `rate_limit` rules: `bytes_per_sec` tokens flow in, at most `burst`
//! are kept, and a frame passes when the bucket holds at least its length in tokens (which it
//! then spends). The caller passes the time, so tests drive it with a clock of their own.
//!
//! Tokens are counted in nanobytes (bytes times 10^9) in a `u128`, so refilling is exact integer
//! arithmetic at any rate and never overflows.

use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket of bytes.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    bytes_per_sec: u64,
    /// Capacity in nanobytes.
    capacity: u128,
    /// Tokens in nanobytes.
    tokens: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. `bytes_per_sec` and `burst` are positive (rules are validated
    /// before a bucket is made); zero would only mean that nothing ever passes.
    pub fn new(bytes_per_sec: u64, burst: u64, now: Instant) -> Self {
        let capacity = u128::from(burst) * NANOS_PER_SEC;
        TokenBucket {
            bytes_per_sec,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock reading before the last one (callers on other threads) adds nothing.
        let elapsed: Duration = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let added = elapsed
            .as_nanos()
            .saturating_mul(u128::from(self.bytes_per_sec));
        self.tokens = self.tokens.saturating_add(added).min(self.capacity);
    }

    /// Takes `bytes` tokens at `now` if the bucket holds that many: whether the frame passes.
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        let cost = bytes as u128 * NANOS_PER_SEC;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 3000, t0);
        assert!(b.take(1000, t0) && b.take(1000, t0) && b.take(1000, t0));
        assert!(!b.take(1, t0), "the burst is spent");
        assert!(
            !b.take(600, t0 + Duration::from_millis(500)),
            "500 tokens only"
        );
        assert!(b.take(1000, t0 + Duration::from_millis(1000)));
        // Idle for an hour: the bucket holds its burst, not more.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(3000, later));
        assert!(!b.take(1, later));
        // Time going backwards adds nothing.
        assert!(!b.take(1, t0));
    }

    #[test]
    fn long_run_throughput_is_the_rate() {
        // Offer 1500-byte frames every millisecond (1.5 MB/s) to a 100 kB/s bucket for 10 s
        // of simulated time: what passes is the burst plus rate times time, within a frame.
        let t0 = Instant::now();
        let (rate, burst) = (100_000u64, 10_000u64);
        let mut b = TokenBucket::new(rate, burst, t0);
        let mut passed = 0u64;
        for ms in 0..10_000u64 {
            if b.take(1500, t0 + Duration::from_millis(ms)) {
                passed += 1500;
            }
        }
        let expected = burst + rate * 10;
        assert!(passed <= expected, "{passed} > {expected}");
        assert!(passed + 1500 >= expected, "{passed} far below {expected}");
    }

    #[test]
    fn huge_rates_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(u64::MAX, u64::MAX, t0);
        assert!(b.take(usize::MAX, t0 + Duration::from_secs(1 << 40)));
        let mut slow = TokenBucket::new(1, 1, t0);
        assert!(!slow.take(2, t0 + Duration::from_secs(1 << 40)));
    }
}
