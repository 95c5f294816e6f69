//! Passwords and tokens: argon2id hashing on a fixed set of worker threads,
//! random bearer tokens kept only as SHA-256 hashes, and name/password
//! validation.
//!
//! Memory is the scarce resource here, not CPU: one argon2id hash needs
//! 19 MiB. So a node runs at most `password_hash_parallel` hashes at once,
//! each on its own long-lived thread that keeps one argon2 buffer and reuses
//! it for every hash (a freed 19 MiB block would otherwise stay in that
//! thread's malloc arena, one per blocking-pool thread). In front of the
//! workers is a bounded queue; when it is full a call fails at once with
//! [`AuthError::Busy`] instead of waiting, so a login storm costs a bounded
//! amount of memory and time. This module knows nothing of HTTP, accounts or
//! rate limits: the service turns `Busy` into 503 `unavailable`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use argon2::Algorithm;
use argon2::Argon2;
use argon2::Block;
use argon2::Params;
use argon2::Version;
use argon2::password_hash::phc::Output;
use argon2::password_hash::phc::ParamsString;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::phc::Salt;
use base64::Engine as _;
use parking_lot::Condvar;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::Digest;
use sha2::Sha256;

use crate::meta::TokenHash;

/// OWASP's argon2id minimum: 19 MiB, two passes, one lane.
const MEMORY_KIB: u32 = 19_456;
const PASSES: u32 = 2;
const LANES: u32 = 1;
/// The salt and output sizes `argon2`'s own `hash_password` used, so new
/// hashes look exactly like the ones already stored.
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;
/// A stored hash asking for more argon2 memory than this (1 GiB) is refused
/// rather than allocated: stored hashes are ours, so this only guards
/// against a corrupted or planted record taking the node down.
const MAX_MEMORY_KIB: u32 = 1 << 20;
/// Guess of one hash's duration until the workers have measured some.
const FIRST_GUESS_MICROS: u64 = 100_000;
/// Bounds of the `retry_after_ms` a busy answer suggests.
const RETRY_MIN_MS: u64 = 100;
const RETRY_MAX_MS: u64 = 30_000;

/// Why a password operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// argon2 refused its inputs (never expected with validated input).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The worker dropped the job: the node is shutting down.
    #[error("password worker unavailable")]
    Worker,
    /// Every worker is busy and the queue is full: try again later.
    #[error("password hashing is saturated; retry in {retry_after_ms} ms")]
    Busy {
        /// About how long the queued work takes to drain.
        retry_after_ms: u64,
    },
}

/// Hashes and verifies passwords on dedicated worker threads.
pub struct Passwords {
    pool: HashPool,
    /// A well-formed hash that matches no password: verifying against it for
    /// unknown users makes "no such user" cost as much as "wrong password".
    dummy: Arc<str>,
}

impl Passwords {
    /// Starts `parallel` workers (at least one) behind a queue of `queue`
    /// waiting calls (at least one).
    pub fn new(parallel: usize, queue: usize) -> Result<Self, AuthError> {
        let pool = HashPool::start(parallel.max(1), queue.max(1))?;
        Ok(Self { pool, dummy: dummy_hash()?.into() })
    }

    /// The argon2id PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.pool.run(move |memory| hash_with(memory, password.as_bytes())).await?
    }

    /// Whether `password` matches `hash`; with no hash (unknown user) it
    /// spends the same time and answers false. A stored hash that cannot be
    /// read also answers false, after the same work.
    pub async fn verify(&self, hash: Option<String>, password: String) -> Result<bool, AuthError> {
        let dummy = self.dummy.clone();
        self.pool
            .run(move |memory| {
                if let Some(stored) = &hash {
                    match check(memory, stored, password.as_bytes()) {
                        Ok(matched) => return matched,
                        Err(e) => tracing::warn!(error = %e, "a stored password hash cannot be verified"),
                    }
                }
                // Only the time matters: the dummy matches no password.
                let _ = check(memory, &dummy, password.as_bytes());
                false
            })
            .await
    }
}

/// Blocks of the default parameters' memory (one lane: `m` KiB = `m` blocks).
const DEFAULT_BLOCKS: usize = MEMORY_KIB as usize;

fn default_params() -> Result<Params, AuthError> {
    Params::new(MEMORY_KIB, PASSES, LANES, None).map_err(hash_error)
}

fn hash_error(e: impl std::fmt::Display) -> AuthError {
    AuthError::Hash(e.to_string())
}

/// A worker's argon2 memory: allocated on its first hash, then reused for
/// every later one, so a worker never frees and allocates 19 MiB again.
#[derive(Default)]
struct Memory {
    blocks: Vec<Block>,
}

impl Memory {
    fn hash_into(
        &mut self,
        argon: &Argon2<'_>,
        params: &Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        let needed = params.block_count();
        if needed > DEFAULT_BLOCKS {
            // A hash stored with bigger parameters: rare, so a temporary
            // buffer rather than growing every worker's for good.
            let mut temp = vec![Block::new(); needed];
            return argon.hash_password_into_with_memory(password, salt, out, &mut temp[..]);
        }
        if self.blocks.len() < DEFAULT_BLOCKS {
            self.blocks = vec![Block::new(); DEFAULT_BLOCKS];
        }
        // argon2 uses the first `needed` blocks and initialises each before reading it.
        argon.hash_password_into_with_memory(password, salt, out, &mut self.blocks[..])
    }
}

/// The PHC string argon2's own `hash_password` would write for these values.
fn phc_string(params: &Params, salt: &[u8], output: &[u8]) -> Result<String, AuthError> {
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(hash_error)?,
        salt: Some(Salt::new(salt).map_err(hash_error)?),
        hash: Some(Output::new(output).map_err(hash_error)?),
    };
    Ok(hash.to_string())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A hash with the default parameters, a random salt and a random output:
/// checking a password against it costs one full hash and never matches.
fn dummy_hash() -> Result<String, AuthError> {
    phc_string(&default_params()?, &random_bytes::<SALT_LEN>(), &random_bytes::<OUTPUT_LEN>())
}

fn hash_with(memory: &mut Memory, password: &[u8]) -> Result<String, AuthError> {
    let params = default_params()?;
    let salt = random_bytes::<SALT_LEN>();
    let mut output = [0u8; OUTPUT_LEN];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    memory.hash_into(&argon, &params, password, &salt, &mut output).map_err(hash_error)?;
    phc_string(&params, &salt, &output)
}

/// A stored hash that cannot be checked.
#[derive(Debug, thiserror::Error)]
#[error("unusable stored password hash: {0}")]
struct StoredHashError(String);

fn stored_error(e: impl std::fmt::Display) -> StoredHashError {
    StoredHashError(e.to_string())
}

/// Whether `password` matches the PHC string `stored`, with the parameters,
/// algorithm and version written in it.
fn check(memory: &mut Memory, stored: &str, password: &[u8]) -> Result<bool, StoredHashError> {
    let parsed = PasswordHash::new(stored).map_err(stored_error)?;
    let algorithm = Algorithm::new(parsed.algorithm.as_str()).map_err(stored_error)?;
    let version = parsed.version.map(Version::try_from).transpose().map_err(stored_error)?.unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(stored_error)?;
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(StoredHashError(format!("m={} KiB is over the {MAX_MEMORY_KIB} KiB limit", params.m_cost())));
    }
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(StoredHashError("no salt or no output".into()));
    };
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let out = buffer.get_mut(..expected.len()).ok_or_else(|| StoredHashError("output too long".into()))?;
    let argon = Argon2::new(algorithm, version, params.clone());
    memory.hash_into(&argon, &params, password, salt.as_ref(), out).map_err(stored_error)?;
    let computed = Output::new(out).map_err(stored_error)?;
    // `Output`'s equality is constant-time.
    Ok(computed == *expected)
}

/// Work for a worker, with that worker's memory; answers whether it hashed
/// (an abandoned job does not, and must not count in the average).
type Job = Box<dyn FnOnce(&mut Memory) -> bool + Send>;

/// What the callers and the workers share.
struct Shared {
    state: Mutex<QueueState>,
    wake: Condvar,
    /// Jobs that may wait for a worker.
    capacity: usize,
    workers: usize,
    /// Jobs being computed now, and the most ever at once.
    running: AtomicUsize,
    peak: AtomicUsize,
    /// Moving average of one job's duration.
    average_micros: AtomicU64,
}

struct QueueState {
    waiting: VecDeque<Job>,
    closed: bool,
}

impl Shared {
    /// About how long a full queue takes to drain.
    fn retry_after_ms(&self) -> u64 {
        let job_ms = match self.average_micros.load(Ordering::Relaxed) {
            0 => FIRST_GUESS_MICROS,
            us => us,
        } / 1000;
        let rounds = (self.capacity / self.workers + 1) as u64;
        (rounds * job_ms).clamp(RETRY_MIN_MS, RETRY_MAX_MS)
    }

    fn record(&self, took_micros: u64) {
        // An exponential average over about eight jobs; racing updates only
        // lose a sample, which an estimate can afford.
        let old = self.average_micros.load(Ordering::Relaxed);
        let new = if old == 0 { took_micros } else { old - old / 8 + took_micros / 8 };
        self.average_micros.store(new.max(1), Ordering::Relaxed);
    }
}

/// K worker threads behind a bounded queue.
struct HashPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl HashPool {
    fn start(workers: usize, capacity: usize) -> Result<Self, AuthError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState { waiting: VecDeque::with_capacity(capacity), closed: false }),
            wake: Condvar::new(),
            capacity,
            workers,
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            average_micros: AtomicU64::new(0),
        });
        // Built before the threads so that a failed spawn still stops the
        // ones already started (through Drop).
        let mut pool = Self { shared, threads: Vec::with_capacity(workers) };
        for i in 0..workers {
            let shared = pool.shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("palaver-argon2-{i}"))
                .spawn(move || work(&shared))
                .map_err(|e| AuthError::Hash(format!("cannot start a password worker: {e}")))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Queues `job`, or refuses at once when the queue is full.
    fn submit(&self, job: Job) -> Result<(), AuthError> {
        let mut state = self.shared.state.lock();
        if state.closed {
            return Err(AuthError::Worker);
        }
        if state.waiting.len() >= self.shared.capacity {
            drop(state);
            metrics::counter!("palaver_password_hash_busy_total").increment(1);
            return Err(AuthError::Busy { retry_after_ms: self.shared.retry_after_ms() });
        }
        state.waiting.push_back(job);
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Runs `work` on a worker and answers its result.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |memory| {
            // The caller stopped waiting (its client left): spare the worker.
            if tx.is_closed() {
                return false;
            }
            let _ = tx.send(work(memory));
            true
        }))?;
        rx.await.map_err(|_| AuthError::Worker)
    }
}

impl Drop for HashPool {
    /// Stops the workers: queued jobs are dropped (their callers get
    /// [`AuthError::Worker`]), running ones finish first.
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        // Outside the lock: dropping a job wakes its caller.
        drop(dropped);
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            // A worker that panicked has nothing left to stop.
            let _ = thread.join();
        }
    }
}

/// One worker: takes jobs until the pool closes.
fn work(shared: &Shared) {
    let mut memory = Memory::default();
    loop {
        let job = {
            let mut state = shared.state.lock();
            loop {
                if state.closed {
                    return;
                }
                if let Some(job) = state.waiting.pop_front() {
                    break job;
                }
                shared.wake.wait(&mut state);
            }
        };
        let now = shared.running.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        let start = Instant::now();
        // A panicking job must not cost the node a worker; its caller sees
        // the dropped reply as `Worker`.
        let hashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut memory)));
        shared.running.fetch_sub(1, Ordering::SeqCst);
        if hashed.unwrap_or(false) {
            shared.record(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
}

/// A new 256-bit random token, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a token or ticket.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks a username against `^[a-z0-9_.-]{3,32}$`.
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a room id against `^[a-z0-9_-]{1,64}$`.
pub fn valid_room_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Checks a password's length: 8 to 128 characters.
pub fn valid_password(password: &str) -> bool {
    (8..=128).contains(&password.chars().count())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use argon2::PasswordHasher;
    use argon2::PasswordVerifier;

    use super::*;

    #[test]
    fn names_follow_the_protocol() {
        for ok in ["abc", "a_b.c-d", "0123456789012345678901234567890x"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in ["ab", "ABC", "a b", "ab:c", "", "x".repeat(33).as_str(), "é12"] {
            assert!(!valid_username(bad), "{bad}");
        }
        assert!(valid_room_id("a"));
        assert!(valid_room_id(&"r".repeat(64)));
        for bad in ["", "a.b", "A", "dm:a:b", &"r".repeat(65)] {
            assert!(!valid_room_id(bad), "{bad}");
        }
        assert!(valid_password("12345678"));
        assert!(!valid_password("1234567"));
        assert!(valid_password(&"é".repeat(128)));
        assert!(!valid_password(&"x".repeat(129)));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    /// Generous bound on anything these tests wait for.
    const WAIT: Duration = Duration::from_secs(30);

    /// Polls `f` until true, for at most [`WAIT`].
    async fn until(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < WAIT, "{what}: not true within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A job that holds its worker until `gate` is dropped or sent to.
    fn gate_job() -> (std::sync::mpsc::Sender<()>, Job) {
        let (open, gate) = std::sync::mpsc::channel::<()>();
        (
            open,
            Box::new(move |_| {
                let _ = gate.recv_timeout(WAIT);
                true
            }),
        )
    }

    #[test]
    fn the_default_parameters_fill_the_worker_buffer_exactly() {
        assert_eq!(default_params().expect("params").block_count(), DEFAULT_BLOCKS);
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_password() {
        let pw = Passwords::new(2, 8).expect("hasher");
        let hash = pw.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        let parsed = PasswordHash::new(&hash).expect("a PHC string");
        assert_eq!(parsed.salt.map(|s| s.len()), Some(SALT_LEN));
        assert_eq!(parsed.hash.map(|h| h.len()), Some(OUTPUT_LEN));
        // Twice each, so a worker's reused buffer is exercised too.
        for _ in 0..2 {
            assert!(pw.verify(Some(hash.clone()), "correct horse".into()).await.expect("verify"));
            assert!(!pw.verify(Some(hash.clone()), "wrong horse".into()).await.expect("verify"));
        }
        assert!(!pw.verify(None, "correct horse".into()).await.expect("verify"));
        // The argon2 crate's own verifier agrees: the format is unchanged.
        assert!(Argon2::default().verify_password(b"correct horse", hash.as_str()).is_ok());
        assert!(Argon2::default().verify_password(b"wrong horse", hash.as_str()).is_err());
        let theirs = Argon2::default().hash_password(b"correct horse").expect("argon2's own hash").to_string();
        assert!(pw.verify(Some(theirs.clone()), "correct horse".into()).await.expect("verify"));
        assert!(!pw.verify(Some(theirs), "wrong horse".into()).await.expect("verify"));
    }

    #[tokio::test]
    async fn hashes_stored_with_other_parameters_still_verify() {
        let pw = Passwords::new(1, 8).expect("hasher");
        let cases = [
            // Smaller than today's: a slice of the worker's buffer.
            (Algorithm::Argon2id, Version::V0x13, Params::new(8192, 1, 1, None)),
            // Bigger (and two lanes): a temporary buffer.
            (Algorithm::Argon2id, Version::V0x13, Params::new(24_576, 1, 2, None)),
            (Algorithm::Argon2i, Version::V0x13, Params::new(4096, 3, 1, None)),
            (Algorithm::Argon2d, Version::V0x10, Params::new(4096, 1, 1, None)),
            (Algorithm::Argon2id, Version::V0x13, Params::new(4096, 1, 1, Some(64))),
        ];
        for (algorithm, version, params) in cases {
            let params = params.expect("valid params");
            let label = format!("{algorithm} v{} m={} p={}", u32::from(version), params.m_cost(), params.p_cost());
            let stored = Argon2::new(algorithm, version, params)
                .hash_password(b"old password")
                .expect("argon2's own hash")
                .to_string();
            assert!(pw.verify(Some(stored.clone()), "old password".into()).await.expect("verify"), "{label}");
            assert!(!pw.verify(Some(stored), "old passwore".into()).await.expect("verify"), "{label}");
        }
    }

    #[tokio::test]
    async fn unreadable_stored_hashes_answer_false() {
        let pw = Passwords::new(1, 8).expect("hasher");
        let good = pw.hash("password1".into()).await.expect("hash");
        let huge = good.replace("m=19456", "m=2000000");
        let no_output = good.rsplit_once('$').map(|(head, _)| head.to_string()).expect("a $");
        for stored in [
            "",
            "$argon2id$test$alice",
            "not a hash",
            "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            &huge,
            &no_output,
        ] {
            assert!(!pw.verify(Some(stored.to_string()), "password1".into()).await.expect("verify"), "{stored:?}");
        }
    }

    #[test]
    fn the_dummy_hash_costs_a_full_hash_and_matches_nothing() {
        let dummy = dummy_hash().expect("dummy");
        assert!(dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{dummy}");
        assert_ne!(dummy, dummy_hash().expect("dummy"));
        let mut memory = Memory::default();
        // It parses and computes (Ok), unlike an unreadable hash (Err), so an
        // unknown user costs what a wrong password costs.
        assert!(!check(&mut memory, &dummy, b"anything").expect("a usable hash"));
        assert_eq!(memory.blocks.len(), DEFAULT_BLOCKS, "the full default memory was used");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let pw = Arc::new(Passwords::new(1, 1).expect("hasher"));
        let (open, job) = gate_job();
        pw.pool.submit(job).expect("the first job is accepted");
        until("the worker holds the gate", || pw.pool.shared.running.load(Ordering::SeqCst) == 1).await;
        let queued = tokio::spawn({
            let pw = pw.clone();
            async move { pw.verify(None, "password1".into()).await }
        });
        until("one call waits in the queue", || pw.pool.shared.state.lock().waiting.len() == 1).await;
        let start = Instant::now();
        let refused = pw.verify(None, "password1".into()).await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "a full queue must answer at once, took {:?}",
            start.elapsed()
        );
        match refused {
            Err(AuthError::Busy { retry_after_ms }) => {
                assert!((RETRY_MIN_MS..=RETRY_MAX_MS).contains(&retry_after_ms), "{retry_after_ms}")
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(matches!(pw.hash("password1".into()).await, Err(AuthError::Busy { .. })), "hash is refused too");
        drop(open);
        let answer = tokio::time::timeout(WAIT, queued).await.expect("in time").expect("the task");
        assert!(!answer.expect("the queued call is answered once the worker is free"));
        // Room again: a call now succeeds.
        assert!(!pw.verify(None, "password1".into()).await.expect("verify"));
    }

    #[tokio::test]
    async fn no_more_than_k_hashes_run_at_once() {
        let k = 2;
        let pw = Arc::new(Passwords::new(k, 64).expect("hasher"));
        let hash = pw.hash("password1".into()).await.expect("hash");
        // Jobs that report how many of them overlap, besides the pool's own count.
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut receivers = Vec::new();
        for _ in 0..12 {
            let (tx, rx) = std::sync::mpsc::channel();
            let (inside, most) = (inside.clone(), most.clone());
            pw.pool
                .submit(Box::new(move |_| {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    let _ = tx.send(());
                    true
                }))
                .expect("room in the queue");
            receivers.push(rx);
        }
        let calls: Vec<_> = (0..12)
            .map(|i| {
                let (pw, hash) = (pw.clone(), hash.clone());
                tokio::spawn(async move { pw.verify(Some(hash), format!("password{}", i % 2)).await })
            })
            .collect();
        for rx in receivers {
            rx.recv_timeout(WAIT).expect("every job ran");
        }
        for (i, call) in calls.into_iter().enumerate() {
            let ok = tokio::time::timeout(WAIT, call).await.expect("in time").expect("task").expect("verify");
            assert_eq!(ok, i % 2 == 1, "call {i}");
        }
        let most = most.load(Ordering::SeqCst);
        let peak = pw.pool.shared.peak.load(Ordering::SeqCst);
        assert!((1..=k).contains(&most), "{most} jobs overlapped with {k} workers");
        assert!((1..=k).contains(&peak), "the pool saw {peak} jobs at once with {k} workers");
    }

    #[test]
    fn dropping_the_hasher_stops_its_workers() {
        let pw = Passwords::new(2, 8).expect("hasher");
        let shared = Arc::downgrade(&pw.pool.shared);
        let (open, job) = gate_job();
        pw.pool.submit(job).expect("accepted");
        let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
        let (second_open, second) = gate_job();
        pw.pool.submit(second).expect("accepted");
        // Both workers are held, so this one waits in the queue.
        let start = Instant::now();
        while pw.pool.shared.running.load(Ordering::SeqCst) < 2 {
            assert!(start.elapsed() < WAIT, "the workers never took the gate jobs");
            std::thread::sleep(Duration::from_millis(5));
        }
        pw.pool
            .submit(Box::new(move |_| {
                let _ = ran_tx.send(());
                true
            }))
            .expect("accepted");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let dropper = std::thread::spawn(move || {
            drop(pw);
            let _ = done_tx.send(());
        });
        // Release the running jobs only once the queue is closed, so the
        // queued job cannot be taken by a freed worker first.
        let start = Instant::now();
        while !shared.upgrade().is_some_and(|s| s.state.lock().closed) {
            assert!(start.elapsed() < WAIT, "the drop never closed the queue");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The drop waits for the running jobs; release them.
        drop(open);
        drop(second_open);
        done_rx.recv_timeout(WAIT).expect("dropping the hasher finished");
        dropper.join().expect("no panic while dropping");
        assert!(ran_rx.recv_timeout(Duration::from_millis(100)).is_err(), "the queued job was dropped, not run");
        assert!(shared.upgrade().is_none(), "every worker thread ended");
    }
}
