//! The token bucket behind `rate_limit` rules and port rates: `bytes_per_sec` tokens flow in,
//! and at most `burst` are kept. A rule [takes](TokenBucket::take) a frame's length: the frame
//! passes when the bucket holds that many tokens, and one longer than the burst (a 64 KiB TCP
//! segment a guest sends with TSO, against a burst of 32 KiB) passes when the bucket is full,
//! owing the rest, so it is neither dropped forever nor let past the rate. A port
//! [charges](TokenBucket::charge) a frame whenever the bucket [owes](TokenBucket::owes) nothing:
//! it spends what the bucket holds and leaves a debt that the next tokens pay first. The caller
//! passes the time, so tests drive it with a clock of their own.
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
    /// Nanobytes charged beyond the tokens there were (then `tokens` is zero).
    debt: u128,
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
            debt: 0,
            last: now,
        }
    }

    /// The rate.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    fn refill(&mut self, now: Instant) {
        // A clock reading before the last one (callers on other threads) adds nothing.
        let elapsed: Duration = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let added = elapsed
            .as_nanos()
            .saturating_mul(u128::from(self.bytes_per_sec));
        let paid = added.min(self.debt);
        self.debt -= paid;
        self.tokens = self.tokens.saturating_add(added - paid).min(self.capacity);
    }

    /// Takes `bytes` tokens at `now` if the bucket holds that many: whether the frame passes.
    /// More than the bucket can hold is taken when it is full, the rest owed.
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        if bytes as u128 * NANOS_PER_SEC > self.capacity {
            self.refill(now);
            return self.tokens == self.capacity && self.charge(bytes, now);
        }
        if self.holds(bytes, now) {
            self.tokens -= bytes as u128 * NANOS_PER_SEC;
            true
        } else {
            false
        }
    }

    /// Whether the bucket holds `bytes` tokens at `now` (taking none).
    pub fn holds(&mut self, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= bytes as u128 * NANOS_PER_SEC
    }

    /// Whether earlier charges are still being paid for at `now`.
    pub fn owes(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.debt > 0
    }

    /// Charges `bytes` at `now` if the bucket is not in debt, spending what it holds and owing
    /// the rest: whether the frame passes. (For frames that may not wait: they pass unless an
    /// earlier one is still being paid for, and the rate holds over time.)
    pub fn charge(&mut self, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        if self.debt > 0 {
            return false;
        }
        let cost = bytes as u128 * NANOS_PER_SEC;
        let spent = cost.min(self.tokens);
        self.tokens -= spent;
        self.debt = cost - spent;
        true
    }

    /// Whether the earlier charges will have been paid for at `now` (without refilling).
    pub fn paid_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        elapsed.saturating_mul(u128::from(self.bytes_per_sec)) >= self.debt
    }

    /// How long after `now` the earlier charges will have been paid for (zero if they are).
    pub fn time_until_paid(&mut self, now: Instant) -> Duration {
        self.refill(now);
        // Nanobytes over bytes per second is nanoseconds; round up so the debt is gone.
        let nanos = self.debt.div_ceil(u128::from(self.bytes_per_sec.max(1)));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
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
        assert!(
            slow.take(2, t0 + Duration::from_secs(1 << 40)),
            "full: it passes"
        );
        assert!(!slow.take(1, t0 + Duration::from_secs(1 << 40)), "and owes");
    }

    #[test]
    fn frames_longer_than_the_burst_pass_when_it_is_full_and_the_rate_holds() {
        // 64 KiB segments offered every millisecond to a 200 kB/s bucket of 32 KiB for 10 s:
        // one passes whenever the bucket is full, and what passes is the rate, within a segment.
        let t0 = Instant::now();
        let (rate, burst, segment) = (200_000u64, 32_768u64, 65_536usize);
        let mut b = TokenBucket::new(rate, burst, t0);
        let mut passed = 0u64;
        for ms in 0..10_000u64 {
            if b.take(segment, t0 + Duration::from_millis(ms)) {
                passed += segment as u64;
            }
        }
        let expected = rate * 10;
        assert!(passed <= expected + segment as u64, "{passed} > {expected}");
        assert!(
            passed + 2 * segment as u64 >= expected,
            "{passed} far below {expected}"
        );
        // A bucket not yet full refuses one.
        let mut b = TokenBucket::new(rate, burst, t0);
        assert!(b.take(1, t0));
        assert!(!b.take(segment, t0));
    }

    #[test]
    fn a_charge_beyond_the_tokens_owes_the_rest_and_says_when_it_is_paid() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 2000, t0);
        assert_eq!(b.time_until_paid(t0), Duration::ZERO);
        assert!(b.charge(2500, t0), "no debt: it passes, owing 500");
        assert!(b.owes(t0) && !b.charge(1, t0), "in debt");
        assert_eq!(b.time_until_paid(t0), Duration::from_millis(500));
        let later = t0 + Duration::from_millis(499);
        assert!(b.owes(later) && !b.paid_at(later));
        assert_eq!(b.time_until_paid(later), Duration::from_millis(1));
        assert!(b.paid_at(t0 + Duration::from_millis(500)));
        let paid = t0 + Duration::from_millis(500);
        assert!(
            !b.owes(paid) && !b.holds(1, paid),
            "paid, and nothing left over"
        );
        assert!(b.holds(100, paid + Duration::from_millis(100)));
    }
}
