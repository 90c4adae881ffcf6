//! Token buckets for per-device rate limits (bytes per second and operations per second).
//!
//! A bucket holds at most one second's worth of tokens and refills continuously. A request takes
//! its cost in tokens; when the bucket is short, the caller is told how long to wait. A request
//! larger than the whole bucket is let through once the bucket is full (and drives it negative),
//! so a large request is never starved, only paid for afterwards.

use std::time::{Duration, Instant};

/// The most tokens a restored bucket may owe (2^48: far more than one request can cost).
pub const MAX_DEBT: f64 = (1u64 << 48) as f64;

/// One token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket refilling at `rate` tokens per second (0 is refused: use no bucket instead).
    pub fn new(rate: u64) -> Option<Self> {
        (rate > 0).then(|| TokenBucket {
            rate,
            tokens: rate as f64,
            last: Instant::now(),
        })
    }

    /// Tokens per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The tokens in the bucket at `now` (negative after a request larger than the bucket).
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// A bucket of `rate` holding `tokens` at `now` (a saved bucket restored): `None` for a
    /// rate of 0, or tokens that are not finite, above the rate, or more than
    /// [`MAX_DEBT`] below zero.
    pub fn with_tokens(rate: u64, tokens: f64, now: Instant) -> Option<Self> {
        let ok = rate > 0 && tokens.is_finite() && tokens <= rate as f64 && tokens >= -MAX_DEBT;
        ok.then_some(TokenBucket {
            rate,
            tokens,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.rate as f64);
        self.last = now;
    }

    /// Takes `cost` tokens if the request may go now; otherwise returns how long until it may.
    pub fn take(&mut self, cost: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let cost = cost as f64;
        // A request bigger than the bucket goes when the bucket is full.
        let needed = cost.min(self.rate as f64);
        if self.tokens >= needed {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (needed - self.tokens) / self.rate as f64,
            ))
        }
    }
}

/// The limits of one device: bytes and operations per second, either optional.
#[derive(Clone, Debug, Default)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// Limits of `bytes_per_sec` and `ops_per_sec` (0 means unlimited).
    pub fn new(bytes_per_sec: u64, ops_per_sec: u64) -> Self {
        RateLimiter {
            bytes: TokenBucket::new(bytes_per_sec),
            ops: TokenBucket::new(ops_per_sec),
        }
    }

    /// Each bucket's rate and tokens at `now`, bytes then operations (`None`: no limit).
    pub fn buckets(&mut self, now: Instant) -> [Option<(u64, f64)>; 2] {
        let mut out = [None, None];
        for (slot, bucket) in out.iter_mut().zip([&mut self.bytes, &mut self.ops]) {
            *slot = bucket.as_mut().map(|b| (b.rate(), b.tokens(now)));
        }
        out
    }

    /// A limiter of the buckets `bytes` and `ops` as [`RateLimiter::buckets`] gave them.
    pub fn from_buckets(bytes: Option<TokenBucket>, ops: Option<TokenBucket>) -> Self {
        RateLimiter { bytes, ops }
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.bytes.is_some() || self.ops.is_some()
    }

    /// Admits one operation of `bytes` now, or says how long to wait. Nothing is taken unless
    /// both buckets admit it.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let mut probe = self.clone();
        let mut wait = Duration::ZERO;
        if let Some(b) = probe.bytes.as_mut() {
            if let Err(w) = b.take(bytes, now) {
                wait = wait.max(w);
            }
        }
        if let Some(o) = probe.ops.as_mut() {
            if let Err(w) = o.take(1, now) {
                wait = wait.max(w);
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        *self = probe;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_rate_per_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000).unwrap();
        assert!(b.take(600, t0).is_ok());
        let wait = b.take(600, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(201),
            "{wait:?}"
        );
        assert!(b.take(600, t0 + Duration::from_millis(200)).is_ok());
        // Over 10 simulated seconds, about 10 * rate goes through.
        let mut b = TokenBucket::new(1000).unwrap();
        let (mut sent, mut t) = (0u64, t0);
        while t < t0 + Duration::from_secs(10) {
            match b.take(100, t) {
                Ok(()) => sent += 100,
                Err(w) => t += w,
            }
        }
        assert!((10_000..=11_100).contains(&sent), "{sent}");
        assert!(TokenBucket::new(0).is_none());
    }

    #[test]
    fn big_requests_pass_when_full_and_are_paid_for() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100).unwrap();
        assert!(b.take(1000, t0).is_ok());
        let wait = b.take(1, t0).unwrap_err();
        assert!(wait >= Duration::from_secs(9), "{wait:?}");
    }

    #[test]
    fn limiter_takes_from_both_buckets_or_neither() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1_000_000, 2);
        assert!(l.admit(10, t0).is_ok());
        assert!(l.admit(10, t0).is_ok());
        assert!(l.admit(10, t0).is_err(), "third op in the same instant");
        assert!(l.admit(10, t0 + Duration::from_millis(500)).is_ok());
        assert!(!RateLimiter::new(0, 0).is_limited());
        assert!(RateLimiter::new(0, 0).admit(u64::MAX, t0).is_ok());
    }

    #[test]
    fn buckets_are_read_and_restored_and_impossible_ones_refused() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1000, 10);
        l.admit(600, t0).unwrap();
        let [bytes, ops] = l.buckets(t0);
        assert_eq!(bytes, Some((1000, 400.0)));
        assert_eq!(ops, Some((10, 9.0)));
        let b = TokenBucket::with_tokens(1000, 400.0, t0);
        let mut restored = RateLimiter::from_buckets(b, None);
        assert!(restored.admit(400, t0).is_ok());
        assert!(
            restored.admit(1, t0).is_err(),
            "the restored bucket was spent"
        );
        for (rate, tokens) in [(0, 0.0), (10, 11.0), (10, f64::NAN), (10, -MAX_DEBT * 2.0)] {
            assert!(TokenBucket::with_tokens(rate, tokens, t0).is_none());
        }
    }
}
