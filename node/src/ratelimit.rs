//! Token buckets: one per connection for sends, and keyed ones (per account,
//! per client address) for logins. Pure arithmetic over a caller-supplied
//! clock, so tests need no sleeping.

use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::Mutex;
use serde::Deserialize;
use serde::Serialize;

/// A use of the cluster that counts against a per-user (or per-account)
/// limit on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Usage {
    /// A message sent or a typing notice.
    Send,
    /// A failed login, counted per account.
    FailedLogin,
    /// A failed login, counted per (account, client address).
    FailedLoginPair,
    /// A failed login, counted per client address.
    FailedLoginAddress,
    /// A registration, counted per client address.
    Register,
    /// A ticket issued.
    Ticket,
    /// A room created.
    Room,
    /// Any other metadata write.
    Write,
    /// Attachment bytes uploaded, counted per user (appended: gossip
    /// carries this enum by variant index).
    UploadBytes,
}

impl Usage {
    /// A name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Send => "send",
            Usage::FailedLogin => "failed_login",
            Usage::FailedLoginPair => "failed_login_pair",
            Usage::FailedLoginAddress => "failed_login_address",
            Usage::Register => "register",
            Usage::Ticket => "ticket",
            Usage::Room => "room",
            Usage::Write => "write",
            Usage::UploadBytes => "upload_bytes",
        }
    }
}

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

    /// Whether a token is available now (nothing is taken), or how many ms
    /// until one is.
    pub fn check(&mut self, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Takes `n` tokens whether or not they are there: the bucket may go
    /// into debt, at most one burst deep (uses counted elsewhere, such as on
    /// another node, slow this bucket down without blocking forever).
    pub fn charge(&mut self, n: f64, now_ms: u64) {
        self.refill(now_ms);
        self.tokens = (self.tokens - n).max(-self.burst);
    }

    /// Takes `n` tokens at once, or says how many ms until they are there
    /// (`u64::MAX` when `n` is more than the bucket holds).
    pub fn take_n(&mut self, n: f64, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else if n > self.burst {
            Err(u64::MAX)
        } else {
            Err((((n - self.tokens) / self.rate) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Gives back `n` tokens taken for something that turned out not to count.
    pub fn refund_n(&mut self, n: f64, now_ms: u64) {
        self.refill(now_ms);
        self.tokens = (self.tokens + n).min(self.burst);
    }

    /// Gives back one token taken for something that turned out not to count.
    pub fn refund(&mut self, now_ms: u64) {
        self.refill(now_ms);
        self.tokens = (self.tokens + 1.0).min(self.burst);
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
        self.with(key, now_ms, |b| b.take(now_ms))
    }

    /// Whether `key` has an attempt left (none is taken), or how many ms to wait.
    pub fn check(&self, key: &K, now_ms: u64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock();
        match buckets.get_mut(key) {
            Some(b) => b.check(now_ms),
            None => Ok(()),
        }
    }

    /// Counts `n` attempts made elsewhere against `key` (see [`TokenBucket::charge`]).
    pub fn charge(&self, key: &K, n: u32, now_ms: u64) {
        self.with(key, now_ms, |b| b.charge(f64::from(n), now_ms));
    }

    /// Takes `n` at once for `key` (see [`TokenBucket::take_n`]).
    pub fn take_n(&self, key: &K, n: f64, now_ms: u64) -> Result<(), u64> {
        self.with(key, now_ms, |b| b.take_n(n, now_ms))
    }

    /// Gives back `n` taken for `key`.
    pub fn refund_n(&self, key: &K, n: f64, now_ms: u64) {
        if let Some(b) = self.buckets.lock().get_mut(key) {
            b.refund_n(n, now_ms);
        }
    }

    /// Gives back one attempt taken for `key` (it turned out not to count).
    pub fn refund(&self, key: &K, now_ms: u64) {
        if let Some(b) = self.buckets.lock().get_mut(key) {
            b.refund(now_ms);
        }
    }

    fn with<T>(&self, key: &K, now_ms: u64, f: impl FnOnce(&mut TokenBucket) -> T) -> T {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(key) {
            buckets.retain(|_, b| !b.is_full(now_ms));
        }
        f(buckets.entry(key.clone()).or_insert_with(|| TokenBucket::new(self.rate, self.burst, now_ms)))
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
    fn a_check_takes_nothing_and_a_charge_can_go_into_debt() {
        let l = KeyedLimiter::new(1.0, 2.0);
        assert!(l.check(&"a", 0).is_ok(), "an unknown key has its burst");
        l.charge(&"a", 5, 0);
        assert_eq!(l.check(&"a", 0), Err(3000), "charged 5 of 2: two deep in debt, three seconds to one token");
        assert!(l.take(&"a", 2_000).is_err());
        assert!(l.take(&"a", 3_000).is_ok());
        assert!(l.check(&"b", 0).is_ok() && l.check(&"b", 0).is_ok(), "checks take nothing");
    }

    #[test]
    fn many_tokens_are_taken_at_once_or_not_at_all() {
        let mut b = TokenBucket::new(10.0, 100.0, 0);
        assert_eq!(b.take_n(60.0, 0), Ok(()));
        assert_eq!(b.take_n(60.0, 0), Err(2000), "20 missing at 10 a second");
        assert_eq!(b.take_n(40.0, 0), Ok(()), "a refused take took nothing");
        assert_eq!(b.take_n(101.0, 10_000), Err(u64::MAX), "more than the bucket holds, ever");
        b.refund_n(40.0, 0);
        assert_eq!(b.take_n(40.0, 0), Ok(()));
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
