//! Which (room, sender, client_id) keys may have a dedup entry: a Bloom
//! filter in front of the store's dedup tree.
//!
//! Every send looks its dedup key up before it is stored, and almost
//! every lookup misses: a miss walked the memory layer and redb's B-tree
//! on each replica, the largest part of a send's apply (2026-12-05
//! profile: 9-13 µs of cluster CPU per send). The filter answers most
//! misses from memory.
//!
//! It may say "maybe" for a key that was never stored (then the store is
//! asked, as before), never "no" for one that was: every writer of a dedup
//! entry adds its key here before the entry is written, and the keys
//! already stored when the node starts are added by a background scan;
//! until that scan is done every lookup goes to the store. Keys deleted
//! with their room stay in the filter (a "maybe", never a wrong answer).
//! Its size is fixed: as the stored keys grow past what it was sized for,
//! more lookups fall through to the store, none answer wrongly.

use std::hash::BuildHasher;
use std::hash::RandomState;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use super::record::DEDUP;
use crate::storage::Engine;
use crate::storage::Order;
use crate::storage::StorageError;

/// The filter's size: 8 MiB keeps false "maybe"s near 1-2% up to about
/// six million stored keys on a node.
pub const FILTER_BYTES: usize = 8 * 1024 * 1024;
/// Bits probed per key (about optimal for 1% at the size above).
const PROBES: u64 = 7;
/// Words in one block, the bits one key's probes may set (a cache line).
const BLOCK_WORDS: usize = 8;
/// Bits in one block.
const BLOCK_BITS: u64 = BLOCK_WORDS as u64 * 64;
/// Keys read from the store at a time by the start-up scan.
const SCAN_PAGE: usize = 4096;

/// A Bloom filter over dedup keys, shared by the writers and the readers.
pub struct SeenFilter {
    words: Box<[AtomicU64]>,
    hasher: RandomState,
    /// The stored keys are all in; before that, every key is a "maybe".
    ready: AtomicBool,
}

impl SeenFilter {
    /// An empty filter of `bytes` (rounded to whole words), not ready.
    pub fn new(bytes: usize) -> Self {
        let words = (bytes / 8).max(1);
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            ready: AtomicBool::new(false),
        }
    }

    /// Adds a key. Call before the entry is written.
    pub fn insert(&self, key: &[u8]) {
        for (word, bit) in self.positions(key) {
            self.words[word].fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Whether `key` may have an entry: `false` only when it has none.
    pub fn may_hold(&self, key: &[u8]) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return true;
        }
        self.positions(key).all(|(word, bit)| self.words[word].load(Ordering::Relaxed) & bit != 0)
    }

    /// Whether the start-up scan is done.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Adds every dedup key `store` holds, then lets lookups trust the
    /// filter. Stops early, leaving it not ready, when the store is gone.
    pub fn fill_from(&self, store: &Weak<dyn Engine>) -> Result<(), StorageError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let Some(store) = store.upgrade() else { return Ok(()) };
            let start = match &after {
                Some(key) => Bound::Excluded(key.as_slice()),
                None => Bound::Unbounded,
            };
            let rows = store.range(DEDUP, start, Bound::Unbounded, Order::Ascending, SCAN_PAGE)?;
            for (key, _) in &rows {
                self.insert(key);
            }
            match rows.last() {
                Some((key, _)) if rows.len() == SCAN_PAGE => after = Some(key.to_vec()),
                _ => break,
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// The (word, bit) pairs of a key, all in one 64-byte block (a blocked
    /// Bloom filter): one cache miss per lookup instead of one per probe,
    /// for slightly more false "maybe"s than bits spread over the whole
    /// filter. The hash's high half picks the block, its low half the bits
    /// (double hashing, Kirsch and Mitzenmacher).
    fn positions(&self, key: &[u8]) -> impl Iterator<Item = (usize, u64)> + use<'_> {
        let blocks = (self.words.len() / BLOCK_WORDS).max(1) as u64;
        let hash = self.hasher.hash_one(key);
        let first = ((hash >> 32) % blocks) as usize * BLOCK_WORDS;
        let (h1, h2) = (hash & 0xffff, ((hash >> 16) & 0xffff) | 1);
        let words = self.words.len();
        (0..PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % BLOCK_BITS;
            ((first + (bit / 64) as usize).min(words - 1), 1u64 << (bit % 64))
        })
    }
}

/// Fills `filter` from `store` on a background thread at low priority;
/// a store error leaves the filter not ready (lookups ask the store).
pub fn fill_in_background(filter: Arc<SeenFilter>, store: Weak<dyn Engine>) -> std::io::Result<()> {
    std::thread::Builder::new().name("dedup-filter".into()).spawn(move || {
        crate::background::lower_priority("dedup filter");
        let started = std::time::Instant::now();
        match filter.fill_from(&store) {
            Ok(()) if filter.is_ready() => {
                tracing::debug!(took = ?started.elapsed(), "the dedup filter holds every stored key");
            }
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "the dedup filter could not read the store; every send's dedup key is looked up there"),
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Batch;
    use crate::storage::EngineKind;

    /// A fresh redb store in a temporary folder (kept with it).
    fn store() -> (tempfile::TempDir, Arc<dyn Engine>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::storage::open(EngineKind::Redb, &dir.path().join("rooms.db")).expect("open");
        (dir, store)
    }

    #[test]
    fn a_key_added_is_always_maybe_and_most_others_are_no() {
        let filter = SeenFilter::new(64 * 1024);
        let (_dir, store) = store();
        filter.fill_from(&Arc::downgrade(&store)).expect("fill");
        assert!(filter.is_ready());
        let keys: Vec<Vec<u8>> = (0..20_000u32).map(|i| format!("room-{i}\0alice\0c{i}").into_bytes()).collect();
        for key in &keys {
            filter.insert(key);
        }
        assert!(keys.iter().all(|k| filter.may_hold(k)), "a key added is never a no");
        let strangers = (0..20_000u32).filter(|i| filter.may_hold(format!("other-{i}").as_bytes())).count();
        // 512 Ki bits for 20,000 keys: about 0.1% expected.
        assert!(strangers < 200, "{strangers} of 20,000 keys never added were a maybe");
    }

    #[test]
    fn at_the_keys_per_bit_it_is_sized_for_false_maybes_stay_under_two_percent() {
        // 8 MiB for six million keys is 11.2 bits per key; 64 KiB at the
        // same ratio holds about 46,800.
        let filter = SeenFilter::new(64 * 1024);
        for i in 0..46_800u32 {
            filter.insert(format!("room-{i}\0bob\0c{i}").as_bytes());
        }
        filter.ready.store(true, Ordering::Release);
        let strangers = (0..100_000u32).filter(|i| filter.may_hold(format!("never-{i}").as_bytes())).count();
        assert!(strangers < 2_000, "{strangers} of 100,000 keys never added were a maybe");
    }

    #[test]
    fn before_the_scan_every_key_is_a_maybe_and_after_it_the_stored_ones_are() {
        let (_dir, store) = store();
        let mut batch = Batch::new();
        for i in 0..10_000u32 {
            batch.put(DEDUP, format!("k{i}").into_bytes(), 1u64.to_be_bytes().to_vec());
        }
        store.write(batch).expect("write");
        let filter = SeenFilter::new(64 * 1024);
        assert!(filter.may_hold(b"never stored"), "not ready: the store decides");
        filter.fill_from(&Arc::downgrade(&store)).expect("fill");
        assert!((0..10_000u32).all(|i| filter.may_hold(format!("k{i}").as_bytes())), "every stored key");
        let strangers = (0..10_000u32).filter(|i| filter.may_hold(format!("x{i}").as_bytes())).count();
        assert!(strangers < 100, "{strangers} of 10,000");
    }

    #[test]
    fn a_store_gone_before_the_scan_leaves_the_filter_not_ready() {
        let (_dir, store) = store();
        let weak = Arc::downgrade(&store);
        drop(store);
        let filter = SeenFilter::new(1024);
        filter.fill_from(&weak).expect("no error");
        assert!(!filter.is_ready());
        assert!(filter.may_hold(b"anything"));
    }
}
