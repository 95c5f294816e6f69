//! What one client may make the cluster do: logins per address and per
//! account, registrations per address, and per user sends, tickets, room
//! creations and other metadata writes.
//!
//! Per-user and per-account counts hold across the cluster, approximately:
//! each node counts what it admitted, tells its peers once a second
//! ([`Quotas::drain_tally`], carried by the presence gossip), and charges
//! what its peers admitted to its own buckets ([`Quotas::charge_remote`]).
//! A user spread over N nodes can thus exceed a limit by at most what the
//! nodes admit within one gossip interval (up to N bursts), after which the
//! configured rate holds cluster-wide.
//!
//! Logins are limited so that an attacker cannot lock the owner out: failed
//! logins are counted per (account, address), strictly, and per address for
//! any account; an account that fails too often cluster-wide is only slowed
//! down ([`Quotas::slow_down`]), never refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::ApiError;
use crate::config::Limits as Settings;
use crate::ratelimit::KeyedLimiter;
pub use crate::ratelimit::Usage;

/// Spacing between two login attempts on one node for an account under
/// attack (its failures past the per-minute limit, cluster-wide).
const SLOW_SPACING: Duration = Duration::from_secs(2);
/// Most entries one gossip carries; the rest wait for the next one.
const TALLY_MAX: usize = 10_000;

/// A login attempt on a slowed-down account: the next one on this node
/// waits until this one is dropped, and then some.
pub type SlowedAttempt = tokio::sync::OwnedMutexGuard<Option<tokio::time::Instant>>;

/// The limiters of one node. Every key is a string: a username, an account
/// name, a client address, or both, so that any count can cross nodes.
pub struct Quotas {
    register_by_address: KeyedLimiter<String>,
    failed_by_address: KeyedLimiter<String>,
    failed_by_pair: KeyedLimiter<String>,
    failed_by_account: KeyedLimiter<String>,
    sends: KeyedLimiter<String>,
    tickets: KeyedLimiter<String>,
    rooms: KeyedLimiter<String>,
    writes: KeyedLimiter<String>,
    /// Attachment bytes per user: a day's quota, refilled over a day.
    upload_bytes: KeyedLimiter<String>,
    /// Accounts being slowed down: when the last attempt here started.
    slowed: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>>>,
    /// What this node admitted since the last gossip (kept only when there
    /// are peers to tell).
    tally: Option<Mutex<HashMap<(Usage, String), u32>>>,
}

fn limited(wait_ms: u64) -> ApiError {
    ApiError::rate_limited(wait_ms)
}

/// The key of an (account, address) pair.
fn pair(account: &str, addr: IpAddr) -> String {
    format!("{account} {addr}")
}

impl Quotas {
    /// Limiters with the configured rates; `shared` when peers hear of what
    /// this node admits.
    pub fn new(s: &Settings, shared: bool) -> Self {
        Self {
            register_by_address: KeyedLimiter::per_minute(s.register_per_address_per_min),
            failed_by_address: KeyedLimiter::per_minute(s.login_per_address_per_min),
            failed_by_pair: KeyedLimiter::per_minute(s.login_per_account_per_min),
            failed_by_account: KeyedLimiter::per_minute(s.login_per_account_per_min),
            sends: KeyedLimiter::new(s.send_rate_per_sec, s.send_burst),
            tickets: KeyedLimiter::per_minute(s.tickets_per_user_per_min),
            rooms: KeyedLimiter::per_minute(s.rooms_per_user_per_min),
            writes: KeyedLimiter::per_minute(s.writes_per_user_per_min),
            upload_bytes: {
                let quota = s.attachment_quota_bytes.max(1) as f64;
                KeyedLimiter::new(quota / 86_400.0, quota)
            },
            slowed: Mutex::new(HashMap::new()),
            tally: shared.then(|| Mutex::new(HashMap::new())),
        }
    }

    fn limiter(&self, usage: Usage) -> &KeyedLimiter<String> {
        match usage {
            Usage::Send => &self.sends,
            Usage::FailedLogin => &self.failed_by_account,
            Usage::FailedLoginPair => &self.failed_by_pair,
            Usage::FailedLoginAddress => &self.failed_by_address,
            Usage::Register => &self.register_by_address,
            Usage::Ticket => &self.tickets,
            Usage::Room => &self.rooms,
            Usage::Write => &self.writes,
            Usage::UploadBytes => &self.upload_bytes,
        }
    }

    fn count(&self, usage: Usage, key: &str) {
        self.count_n(usage, key, 1);
    }

    fn count_n(&self, usage: Usage, key: &str, n: u32) {
        let Some(tally) = &self.tally else { return };
        let mut tally = tally.lock();
        let key = (usage, key.to_string());
        // Bounded even if nobody drains it (peers unreachable for long).
        if tally.len() < TALLY_MAX * 4 || tally.contains_key(&key) {
            let count = tally.entry(key).or_insert(0);
            *count = count.saturating_add(n);
        }
    }

    /// Takes `bytes` of `user`'s attachment quota, or `rate_limited` with
    /// the wait until that much is there again (`u64::MAX`: more than the
    /// whole quota). Peers hear of it only once [`Quotas::uploaded`] says
    /// the upload counted.
    pub fn take_upload(&self, user: &str, bytes: u64, now_ms: u64) -> Result<(), u64> {
        self.upload_bytes.take_n(&user.to_string(), bytes as f64, now_ms)
    }

    /// An upload taken with [`Quotas::take_upload`] was answered: peers
    /// charge it too. Without `ok`, it failed: the bytes go back.
    pub fn uploaded(&self, user: &str, bytes: u64, ok: bool, now_ms: u64) {
        if ok {
            self.count_n(Usage::UploadBytes, user, u32::try_from(bytes).unwrap_or(u32::MAX));
        } else {
            self.upload_bytes.refund_n(&user.to_string(), bytes as f64, now_ms);
        }
    }

    /// Takes one `usage` for `key` (a username), or `rate_limited` with the wait.
    pub fn take(&self, usage: Usage, key: &str, now_ms: u64) -> Result<(), ApiError> {
        self.limiter(usage).take(&key.to_string(), now_ms).map_err(limited)?;
        self.count(usage, key);
        Ok(())
    }

    /// Takes one registration for `addr`.
    pub fn take_register(&self, addr: IpAddr, now_ms: u64) -> Result<(), ApiError> {
        self.take(Usage::Register, &addr.to_string(), now_ms)
    }

    /// Before a login's password check: takes one failure from the
    /// address's and the pair's allowance (given back if the password
    /// matches, [`Quotas::login_ok`]), so concurrent guesses cannot slip past
    /// the limit; refused when either is spent.
    pub fn check_login(&self, account: &str, addr: IpAddr, now_ms: u64) -> Result<(), ApiError> {
        let (addr_key, pair_key) = (addr.to_string(), pair(account, addr));
        self.failed_by_address.take(&addr_key, now_ms).map_err(limited)?;
        if let Err(wait) = self.failed_by_pair.take(&pair_key, now_ms) {
            self.failed_by_address.refund(&addr_key, now_ms);
            return Err(limited(wait));
        }
        Ok(())
    }

    /// After a login whose password matched: the attempt was no failure.
    pub fn login_ok(&self, account: &str, addr: IpAddr, now_ms: u64) {
        self.failed_by_address.refund(&addr.to_string(), now_ms);
        self.failed_by_pair.refund(&pair(account, addr), now_ms);
    }

    /// After a failed login: counts it for the account here, and for the
    /// address, the pair and the account on every other node (by gossip).
    pub fn login_failed(&self, account: &str, addr: IpAddr, now_ms: u64) {
        let _ = self.failed_by_account.take(&account.to_string(), now_ms);
        self.count(Usage::FailedLoginAddress, &addr.to_string());
        self.count(Usage::FailedLoginPair, &pair(account, addr));
        self.count(Usage::FailedLogin, account);
    }

    /// Waits before a login attempt on an account that failed too often
    /// cluster-wide: attempts on it go one at a time on this node, at least
    /// [`SLOW_SPACING`] apart. Hold the answer until the attempt is done.
    pub async fn slow_down(&self, account: &str, now_ms: u64) -> Option<SlowedAttempt> {
        let hot = self.failed_by_account.check(&account.to_string(), now_ms).is_err();
        let slot = {
            let mut slowed = self.slowed.lock();
            if !hot {
                // Forget accounts that cooled down and that nobody waits on.
                slowed.retain(|_, s| Arc::strong_count(s) > 1);
                return None;
            }
            slowed.entry(account.to_string()).or_default().clone()
        };
        let mut last = slot.lock_owned().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + SLOW_SPACING).await;
        }
        *last = Some(tokio::time::Instant::now());
        metrics::counter!("palaver_logins_slowed_total").increment(1);
        Some(last)
    }

    /// What this node admitted since the last call, for its peers.
    pub fn drain_tally(&self) -> Vec<(Usage, String, u32)> {
        let Some(tally) = &self.tally else { return Vec::new() };
        let mut tally = tally.lock();
        if tally.len() <= TALLY_MAX {
            return tally.drain().map(|((u, k), n)| (u, k, n)).collect();
        }
        let keys: Vec<(Usage, String)> = tally.keys().take(TALLY_MAX).cloned().collect();
        keys.into_iter().filter_map(|k| tally.remove(&k).map(|n| (k.0, k.1, n))).collect()
    }

    /// Charges what a peer admitted to this node's buckets.
    pub fn charge_remote(&self, counts: &[(Usage, String, u32)], now_ms: u64) {
        for (usage, key, n) in counts {
            self.limiter(*usage).charge(key, *n, now_ms);
            metrics::counter!("palaver_quota_remote_charges_total", "usage" => usage.as_str()).increment(u64::from(*n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            login_per_account_per_min: 3,
            login_per_address_per_min: 5,
            send_rate_per_sec: 1.0,
            send_burst: 2.0,
            ..Settings::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn failed_logins_lock_only_the_pair_and_then_the_address() {
        let l = Quotas::new(&settings(), true);
        for _ in 0..3 {
            assert!(l.check_login("ann", ip(1), 0).is_ok());
            l.login_failed("ann", ip(1), 0);
        }
        assert!(l.check_login("ann", ip(1), 0).is_err(), "the pair is out of attempts");
        assert!(l.check_login("ann", ip(2), 0).is_ok(), "the owner elsewhere is not locked out");
        l.login_ok("ann", ip(2), 0);
        assert!(l.check_login("bob", ip(1), 0).is_ok(), "other accounts from the address still may");
        l.login_ok("bob", ip(1), 0);
        for name in ["x1", "x2"] {
            assert!(l.check_login(name, ip(1), 0).is_ok());
            l.login_failed(name, ip(1), 0);
        }
        assert!(l.check_login("bob", ip(1), 0).is_err(), "five failures from one address, any names");
        assert!(l.check_login("bob", ip(1), 60_000).is_ok(), "a minute later the address may again");
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_failing_everywhere_is_slowed_not_refused() {
        let l = Quotas::new(&settings(), true);
        assert!(l.slow_down("ann", 0).await.is_none(), "no failures, no wait");
        for i in 0..3 {
            l.login_failed("ann", ip(i), 0);
        }
        let start = tokio::time::Instant::now();
        drop(l.slow_down("ann", 0).await.expect("hot"));
        drop(l.slow_down("ann", 0).await.expect("hot"));
        drop(l.slow_down("ann", 0).await.expect("hot"));
        assert_eq!(start.elapsed(), SLOW_SPACING * 2, "three attempts, two spacings");
        assert!(l.slow_down("bob", 0).await.is_none(), "other accounts are not slowed");
    }

    /// A user's upload bytes come from a day's quota, shared with the other
    /// nodes once an upload counted; a failed one gives its bytes back.
    #[test]
    fn upload_bytes_count_on_every_node() {
        let s = Settings { attachment_quota_bytes: 1000, ..settings() };
        let (here, there) = (Quotas::new(&s, true), Quotas::new(&s, true));
        assert!(there.take_upload("ann", 600, 0).is_ok());
        there.uploaded("ann", 600, true, 0);
        assert!(there.take_upload("ann", 500, 0).is_err(), "400 left");
        assert!(there.take_upload("ann", 400, 0).is_ok());
        there.uploaded("ann", 400, false, 0);
        assert!(there.take_upload("ann", 400, 0).is_ok(), "a failed upload gave its bytes back");
        here.charge_remote(&there.drain_tally(), 0);
        assert!(here.take_upload("ann", 500, 0).is_err(), "600 were uploaded through the other node");
        assert!(here.take_upload("bob", 1000, 0).is_ok());
        assert_eq!(here.take_upload("bob", 1001, 86_400_000), Err(u64::MAX), "more than a day's quota, ever");
        assert!(here.take_upload("ann", 1000, 86_400_000).is_ok(), "a day later the quota is whole again");
    }

    #[test]
    fn uses_on_other_nodes_count_here() {
        let here = Quotas::new(&settings(), true);
        let there = Quotas::new(&settings(), true);
        assert!(there.take(Usage::Send, "ann", 0).is_ok());
        assert!(there.take(Usage::Send, "ann", 0).is_ok());
        let tally = there.drain_tally();
        assert_eq!(tally, vec![(Usage::Send, "ann".to_string(), 2)]);
        assert!(there.drain_tally().is_empty(), "drained once");
        here.charge_remote(&tally, 0);
        assert!(here.take(Usage::Send, "ann", 0).is_err(), "ann's burst was spent on the other node");
        assert!(here.take(Usage::Send, "bob", 0).is_ok());
        assert!(here.take(Usage::Send, "ann", 1_000).is_ok(), "the rate refills");
    }
}
