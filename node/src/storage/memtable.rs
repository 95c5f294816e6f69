//! An engine in front of another that keeps recent writes in memory and
//! hands them over in one transaction per interval: for a store whose
//! writes need not be durable at once (the shards' state machines, whose
//! Raft logs are), so that a B-tree page written by many applies in that
//! interval is copied and written once, not once per apply.
//!
//! Writes land in the *active* layer. A flush freezes it (readers still see
//! it) and commits it to the inner engine durably, then drops it (or, when
//! the commit fails, takes it back under the newer writes); a timer
//! thread flushes every interval, or sooner once the layer holds
//! [`FLUSH_AT_BYTES`]; a writer that finds the layer at [`HOLD_AT_BYTES`]
//! (the timer thread, which runs niced, fell behind) flushes it itself
//! before going on. A batch with a range delete is written through at
//! once, with everything before it, so a layer never has to shadow a range.
//!
//! Reads merge the layers over the inner engine under a read lock, which a
//! freeze and a drop need exclusively: a reader sees each batch whole, never
//! half in a layer and half below it.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Condvar;
use parking_lot::Mutex;
use parking_lot::RwLock;

use super::Batch;
use super::Bytes;
use super::Engine;
use super::Op;
use super::Order;
use super::StorageError;
use super::Store;

/// A layer this big is flushed without waiting for the timer.
const FLUSH_AT_BYTES: usize = 32 << 20;
/// A layer this big is flushed by the writer that finds it so: the bound
/// on the memory the layers hold.
const HOLD_AT_BYTES: usize = 4 * FLUSH_AT_BYTES;

/// Writes not yet in the inner engine: per tree, each key's newest value
/// (`None`: deleted).
#[derive(Default, Clone)]
struct Layer {
    trees: HashMap<&'static str, BTreeMap<Bytes, Option<Bytes>>>,
    /// Keys and values held, roughly (to bound memory).
    bytes: usize,
}

impl Layer {
    fn apply(&mut self, tree: &'static str, key: Bytes, value: Option<Bytes>) {
        self.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        self.trees.entry(tree).or_default().insert(key, value);
    }

    /// Takes back the entries of `older` (a layer written before this
    /// one) for keys this layer does not have.
    fn take_older(&mut self, older: Layer) {
        for (tree, keys) in older.trees {
            let mine = self.trees.entry(tree).or_default();
            for (key, value) in keys {
                if let std::collections::btree_map::Entry::Vacant(slot) = mine.entry(key) {
                    self.bytes += slot.key().len() + value.as_ref().map_or(0, Vec::len);
                    slot.insert(value);
                }
            }
        }
    }

    fn get(&self, tree: &'static str, key: &[u8]) -> Option<&Option<Bytes>> {
        self.trees.get(tree)?.get(key)
    }

    /// The layer as a batch for the inner engine.
    fn to_batch(&self) -> Batch {
        let mut batch = Batch::new();
        for (tree, keys) in &self.trees {
            for (key, value) in keys {
                match value {
                    Some(value) => batch.put(tree, key.clone(), value.clone()),
                    None => batch.delete(tree, key.clone()),
                }
            }
        }
        batch
    }
}

#[derive(Default)]
struct Layers {
    active: Layer,
    /// The layer a flush is committing.
    frozen: Option<Arc<Layer>>,
}

/// A call to the timer thread.
#[derive(Default)]
struct Wake {
    /// Flush now: the layer is big.
    now: bool,
    /// End: the engine is dropped.
    stop: bool,
}

/// What the engine and its timer thread share.
struct Shared {
    inner: Store,
    layers: RwLock<Layers>,
    /// One flush at a time.
    flushing: Mutex<()>,
    /// What the timer thread is told besides its interval.
    wake: Mutex<Wake>,
    woken: Condvar,
}

/// An engine that holds writes in memory and commits them to `inner` in
/// one transaction per flush.
pub struct MemtableEngine {
    shared: Arc<Shared>,
    timer: Option<std::thread::JoinHandle<()>>,
}

impl MemtableEngine {
    /// Wraps `inner`, flushing every `every` (and when a layer grows big)
    /// from a thread of its own, which ends with the engine.
    pub fn start(inner: Store, every: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            inner,
            layers: RwLock::new(Layers::default()),
            flushing: Mutex::new(()),
            wake: Mutex::new(Wake::default()),
            woken: Condvar::new(),
        });
        let timer = {
            let shared = shared.clone();
            std::thread::Builder::new().name("store-flush".into()).spawn(move || {
                // A second's writes are one burst of work; at the request
                // threads' priority it stalled deliveries while it ran.
                crate::background::lower_priority("store flush");
                loop {
                    {
                        let mut wake = shared.wake.lock();
                        if !wake.now && !wake.stop {
                            shared.woken.wait_for(&mut wake, every);
                        }
                        if wake.stop {
                            return;
                        }
                        wake.now = false;
                    }
                    if let Err(e) = shared.flush() {
                        tracing::error!(error = %e, "the timed flush of a store failed; retrying at the next");
                    }
                }
            })?
        };
        Ok(Self { shared, timer: Some(timer) })
    }
}

impl Shared {
    /// Freezes the active layer, commits it (with `then`, in the same
    /// transaction) and drops it.
    fn commit(&self, durable: bool, then: Option<Batch>) -> Result<(), StorageError> {
        let _one = self.flushing.lock();
        let frozen = {
            let mut layers = self.layers.write();
            let layer = Arc::new(std::mem::take(&mut layers.active));
            layers.frozen = Some(layer.clone());
            layer
        };
        let mut batch = frozen.to_batch();
        let written_through = then.is_some();
        if let Some(then) = then {
            batch.ops.extend(then.ops);
        }
        // A batch written through is committed with readers held off: they
        // would otherwise see the frozen layer over a range already deleted
        // below it.
        let held = written_through.then(|| self.layers.write());
        let result = match (batch.is_empty(), durable) {
            (true, true) => self.inner.flush(),
            (true, false) => Ok(()),
            (false, true) => self.inner.write_durable(batch),
            (false, false) => self.inner.write(batch),
        };
        let mut layers = match held {
            Some(layers) => layers,
            None => self.layers.write(),
        };
        layers.frozen = None;
        if let Err(e) = &result {
            // Kept for the next flush: dropping them would lose writes
            // that readers have seen. Should flushes keep failing, the
            // layer reaches HOLD_AT_BYTES and the writers get the error.
            tracing::error!(error = %e, "a store's memory layer could not be committed; kept for the next flush");
            layers.active.take_older(Arc::unwrap_or_clone(frozen));
        }
        result
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.commit(true, None)
    }
}

/// True when no key is inside (start, end) (where `BTreeMap::range` would
/// panic).
fn empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => s > e,
        _ => false,
    }
}

/// The arguments of one [`Engine::range`] call.
struct Scan<'k> {
    tree: &'static str,
    start: Bound<&'k [u8]>,
    end: Bound<&'k [u8]>,
    order: Order,
}

impl Scan<'_> {
    /// A layer's entries in range, in scan order.
    fn of<'a>(&self, layer: Option<&'a Layer>) -> Entries<'a> {
        let Some(keys) = layer.and_then(|l| l.trees.get(self.tree)) else { return Box::new(std::iter::empty()) };
        let found = keys.range::<[u8], _>((self.start, self.end)).map(|(k, v)| (k.as_slice(), v));
        match self.order {
            Order::Ascending => Box::new(found),
            Order::Descending => Box::new(found.rev()),
        }
    }
}

/// A layer's entries in scan order.
type Entries<'a> = Box<dyn Iterator<Item = (&'a [u8], &'a Option<Bytes>)> + 'a>;

/// Whether key `a` comes after key `b` in a scan in `order`.
fn comes_after(a: &[u8], b: &[u8], order: Order) -> bool {
    match order {
        Order::Ascending => a > b,
        Order::Descending => a < b,
    }
}

/// Two layers' entries, each in scan order, merged in scan order; on a key
/// in both, the newer layer's entry.
struct Merge<'a> {
    newer: std::iter::Peekable<Entries<'a>>,
    older: std::iter::Peekable<Entries<'a>>,
    order: Order,
}

impl<'a> Merge<'a> {
    fn new(newer: Entries<'a>, older: Entries<'a>, order: Order) -> Self {
        Self { newer: newer.peekable(), older: older.peekable(), order }
    }
}

impl<'a> Iterator for Merge<'a> {
    type Item = (&'a [u8], &'a Option<Bytes>);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.newer.peek(), self.older.peek()) {
            (Some((n, _)), Some((o, _))) if n == o => {
                self.older.next();
                self.newer.next()
            }
            (Some((n, _)), Some((o, _))) if comes_after(n, o, self.order) => self.older.next(),
            (Some(_), _) => self.newer.next(),
            (None, _) => self.older.next(),
        }
    }
}

impl Engine for MemtableEngine {
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let layers = self.shared.layers.read();
        if let Some(value) = layers.active.get(tree, key) {
            return Ok(value.clone());
        }
        if let Some(value) = layers.frozen.as_deref().and_then(|l| l.get(tree, key)) {
            return Ok(value.clone());
        }
        self.shared.inner.get(tree, key)
    }

    fn range(
        &self,
        tree: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StorageError> {
        let inner = &self.shared.inner;
        if limit == 0 || empty_range(start, end) {
            return inner.range(tree, start, end, order, limit);
        }
        let layers = self.shared.layers.read();
        let scan = Scan { tree, start, end, order };
        let (active, frozen) = (scan.of(Some(&layers.active)), scan.of(layers.frozen.as_deref()));
        let mut layered = Merge::new(active, frozen, order).peekable();
        if layered.peek().is_none() {
            return inner.range(tree, start, end, order, limit);
        }
        let mut out = Vec::new();
        // The last row of the page before, which the next page starts after.
        let mut after: Option<Bytes> = None;
        loop {
            let (lo, hi) = match (&after, order) {
                (Some(k), Order::Ascending) => (Bound::Excluded(k.as_slice()), end),
                (Some(k), Order::Descending) => (start, Bound::Excluded(k.as_slice())),
                (None, _) => (start, end),
            };
            let page = inner.range(tree, lo, hi, order, limit)?;
            let exhausted = page.len() < limit;
            let last = page.last().map(|(k, _)| k.clone());
            for (k, v) in page {
                // Layer entries that come first, then the row unless a layer
                // has its key.
                let mut hidden = false;
                while let Some((lk, lv)) = layered.next_if(|(lk, _)| !comes_after(lk, &k, order)) {
                    hidden |= lk == k.as_slice();
                    if let Some(lv) = lv {
                        out.push((lk.to_vec(), lv.clone()));
                    }
                }
                if !hidden {
                    out.push((k, v));
                }
                if out.len() >= limit {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
            if exhausted {
                break;
            }
            // Tombstones hid rows of this page: the next one starts after it.
            after = last;
        }
        for (lk, lv) in layered {
            if let Some(lv) = lv {
                out.push((lk.to_vec(), lv.clone()));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        if batch.ops.iter().any(|op| matches!(op, Op::DeleteRange { .. })) {
            return self.shared.commit(false, Some(batch));
        }
        let held = {
            let mut layers = self.shared.layers.write();
            for op in batch.ops {
                match op {
                    Op::Put { tree, key, value } => layers.active.apply(tree, key, Some(value)),
                    Op::Delete { tree, key } => layers.active.apply(tree, key, None),
                    Op::DeleteRange { .. } => unreachable!("a batch with a range delete is written through above"),
                }
            }
            layers.active.bytes
        };
        if held >= HOLD_AT_BYTES {
            return self.shared.flush();
        }
        if held >= FLUSH_AT_BYTES {
            self.shared.wake.lock().now = true;
            self.shared.woken.notify_one();
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.shared.flush()
    }

    fn name(&self) -> &'static str {
        self.shared.inner.name()
    }
}

impl Drop for MemtableEngine {
    /// Stops the timer thread and flushes what is left, so that the inner
    /// engine is closed when this returns (a store reopened at once must
    /// not find its files still in use).
    fn drop(&mut self) {
        self.shared.wake.lock().stop = true;
        self.shared.woken.notify_one();
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
        if let Err(e) = self.shared.flush() {
            tracing::error!(error = %e, "a store's last flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::RangeBounds;

    use super::*;
    use crate::storage::EngineKind;
    use crate::storage::bound_slice;

    const T: &str = "t";

    /// A tiny deterministic generator (xorshift64), so a failure replays.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn key(n: u64) -> Bytes {
        vec![n as u8]
    }

    fn bound(d: &mut Dice, k: &Bytes) -> Bound<Bytes> {
        match d.below(3) {
            0 => Bound::Included(k.clone()),
            1 => Bound::Excluded(k.clone()),
            _ => Bound::Unbounded,
        }
    }

    /// Random puts, deletes, range deletes and flushes against a model:
    /// every read through the layers answers what the model holds, with the
    /// newest value of a key split across the layer and the store below.
    #[test]
    fn reads_through_the_layers_match_a_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = crate::storage::open(EngineKind::Redb, &dir.path().join("m.redb")).expect("open");
        let engine = MemtableEngine::start(inner, Duration::from_secs(3600)).expect("start");
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let mut d = Dice(0x9e37_79b9_7f4a_7c15);
        for step in 0..3000u64 {
            let mut batch = Batch::new();
            for _ in 0..=d.below(3) {
                let k = key(d.below(40));
                match d.below(10) {
                    0..=5 => {
                        let v = step.to_be_bytes().to_vec();
                        model.insert(k.clone(), v.clone());
                        batch.put(T, k, v);
                    }
                    6..=8 => {
                        model.remove(&k);
                        batch.delete(T, k);
                    }
                    _ => {
                        let end = key(d.below(40));
                        model.retain(|m, _| !(*m >= k && *m < end));
                        batch.delete_range(T, k, Some(end));
                    }
                }
            }
            engine.write(batch).expect("write");
            if d.below(50) == 0 {
                engine.flush().expect("flush");
            }
            let probe = key(d.below(40));
            assert_eq!(engine.get(T, &probe).expect("get"), model.get(&probe).cloned(), "get at step {step}");
            let (a, b) = (key(d.below(40)), key(d.below(40)));
            let (start, end) = (bound(&mut d, &a), bound(&mut d, &b));
            let limit = [0, 1, 2, 5, usize::MAX][d.below(5) as usize];
            let order = if d.below(2) == 0 { Order::Ascending } else { Order::Descending };
            let got = engine.range(T, bound_slice(&start), bound_slice(&end), order, limit).expect("range");
            let mut want: Vec<(Bytes, Bytes)> = model
                .iter()
                .filter(|(k, _)| RangeBounds::<[u8]>::contains(&(bound_slice(&start), bound_slice(&end)), k.as_slice()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if order == Order::Descending {
                want.reverse();
            }
            want.truncate(limit);
            assert_eq!(got, want, "range {start:?}..{end:?} {order:?} limit {limit} at step {step}");
        }
    }

    /// What is in the layer when the engine is dropped reaches the store.
    #[test]
    fn dropping_the_engine_commits_its_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.redb");
        let inner = crate::storage::open(EngineKind::Redb, &path).expect("open");
        let engine = MemtableEngine::start(inner.clone(), Duration::from_secs(3600)).expect("start");
        let mut batch = Batch::new();
        batch.put(T, b"k".to_vec(), b"v".to_vec());
        engine.write(batch).expect("write");
        assert_eq!(inner.get(T, b"k").expect("get"), None, "held in memory until a flush");
        drop(engine);
        assert_eq!(inner.get(T, b"k").expect("get"), Some(b"v".to_vec()));
    }

    /// An engine whose writes fail while `failing` is set.
    struct Flaky {
        inner: Store,
        failing: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StorageError> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StorageError::Engine { engine: "flaky", message: "disk full".into() });
            }
            Ok(())
        }
    }

    impl Engine for Flaky {
        fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
            self.inner.get(tree, key)
        }

        fn range(
            &self,
            tree: &'static str,
            start: Bound<&[u8]>,
            end: Bound<&[u8]>,
            order: Order,
            limit: usize,
        ) -> Result<Vec<(Bytes, Bytes)>, StorageError> {
            self.inner.range(tree, start, end, order, limit)
        }

        fn write(&self, batch: Batch) -> Result<(), StorageError> {
            self.check()?;
            self.inner.write(batch)
        }

        fn flush(&self) -> Result<(), StorageError> {
            self.check()?;
            self.inner.flush()
        }

        fn name(&self) -> &'static str {
            "flaky"
        }
    }

    /// A flush that fails keeps its writes: readers still see them, and the
    /// next flush commits them under what was written since.
    #[test]
    fn a_failed_flush_keeps_its_writes_for_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let redb = crate::storage::open(EngineKind::Redb, &dir.path().join("f.redb")).expect("open");
        let flaky = Arc::new(Flaky { inner: redb.clone(), failing: false.into() });
        let engine = MemtableEngine::start(flaky.clone(), Duration::from_secs(3600)).expect("start");
        let put = |k: &[u8], v: &[u8]| {
            let mut batch = Batch::new();
            batch.put(T, k.to_vec(), v.to_vec());
            engine.write(batch).expect("write");
        };
        put(b"a", b"1");
        put(b"b", b"1");
        flaky.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(engine.flush().is_err(), "the inner engine refused the commit");
        assert_eq!(engine.get(T, b"a").expect("get"), Some(b"1".to_vec()), "still readable");
        put(b"b", b"2");
        let mut dropped = Batch::new();
        dropped.delete_range(T, b"x".to_vec(), None);
        assert!(engine.write(dropped).is_err(), "a write-through fails with its commit");
        flaky.failing.store(false, std::sync::atomic::Ordering::SeqCst);
        let all = engine.range(T, Bound::Unbounded, Bound::Unbounded, Order::Ascending, 10).expect("range");
        assert_eq!(all, vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
        engine.flush().expect("flush");
        assert_eq!(redb.get(T, b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(redb.get(T, b"b").expect("get"), Some(b"2".to_vec()), "the newer write wins");
    }

    /// The timer thread flushes by itself.
    #[test]
    fn the_timer_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = crate::storage::open(EngineKind::Redb, &dir.path().join("t.redb")).expect("open");
        let engine = MemtableEngine::start(inner.clone(), Duration::from_millis(20)).expect("start");
        let mut batch = Batch::new();
        batch.put(T, b"k".to_vec(), b"v".to_vec());
        engine.write(batch).expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while inner.get(T, b"k").expect("get").is_none() {
            assert!(std::time::Instant::now() < deadline, "no timed flush within 30 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
