//! Token buckets: one per connection for sends, and keyed ones (per account,
//! per client address) for logins. Pure arithmetic over a caller-supplied
//! clock, so tests need no sleeping.

use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::Mutex;

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn new(rate: f64, burst: f64, now_ms: u64) -> Self {
        Self { rate, burst, tokens: burst, last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Takes one token, or says how many ms until one is available.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// True when the bucket has refilled completely (it can be forgotten).
    pub fn is_full(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= self.burst
    }
}

/// Many buckets, one per key, created full on first use.
pub struct KeyedLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

/// Above this many keys, full buckets are dropped before adding another.
const SWEEP_AT: usize = 10_000;

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `per_minute` attempts per minute per key, all of them usable at once.
    pub fn per_minute(per_minute: u32) -> Self {
        let burst = f64::from(per_minute.max(1));
        Self::new(burst / 60.0, burst)
    }

    /// `rate` per second per key, `burst` at once.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one attempt for `key`, or says how many ms to wait.
    pub fn take(&self, key: &K, now_ms: u64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(key) {
            buckets.retain(|_, b| !b.is_full(now_ms));
        }
        buckets.entry(key.clone()).or_insert_with(|| TokenBucket::new(self.rate, self.burst, now_ms)).take(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_paces() {
        let mut b = TokenBucket::new(10.0, 3.0, 0);
        assert_eq!(b.take(0), Ok(()));
        assert_eq!(b.take(0), Ok(()));
        assert_eq!(b.take(0), Ok(()));
        assert_eq!(b.take(0), Err(100));
        assert_eq!(b.take(50), Err(50));
        assert_eq!(b.take(100), Ok(()));
        assert!(!b.is_full(100));
        assert!(b.is_full(1000));
    }

    #[test]
    fn keys_are_limited_independently() {
        let l = KeyedLimiter::per_minute(2);
        assert!(l.take(&"a", 0).is_ok());
        assert!(l.take(&"a", 0).is_ok());
        let wait = l.take(&"a", 0).expect_err("third attempt");
        assert_eq!(wait, 30_000);
        assert!(l.take(&"b", 0).is_ok());
        assert!(l.take(&"a", 30_000).is_ok());
    }
}
