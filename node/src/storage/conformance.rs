//! The conformance suite: every engine must pass the same checks.
//!
//! Each check is a plain function taking the engine (its kind, bare or
//! behind a [`MemtableEngine`]); the macro at the
//! bottom turns each into one `#[test]` per engine, so a failure names both
//! the check and the engine.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use tempfile::TempDir;

use super::Batch;
use super::Bytes;
use super::EngineKind;
use super::MemtableEngine;
use super::Order;
use super::StorageError;
use super::Store;
use super::open;

const A: &str = "tree_a";
const B: &str = "tree_b";

/// An engine as a check opens it.
#[derive(Debug, Clone, Copy)]
struct Flavor {
    engine: EngineKind,
    /// Behind a [`MemtableEngine`], as the room logs are.
    memtable: bool,
}

impl Flavor {
    fn open(self, path: &Path) -> Result<Store, StorageError> {
        let store = open(self.engine, path)?;
        if !self.memtable {
            return Ok(store);
        }
        // Its timer never fires within a check: a check's flushes are its own.
        let memtable = MemtableEngine::start(store, Duration::from_secs(3600)).expect("start the flush thread");
        Ok(Arc::new(memtable))
    }

    /// The test module of this flavour's checks.
    fn module(self) -> String {
        format!("on_{}{}", self.engine, if self.memtable { "_memtable" } else { "" })
    }
}

/// A store in its own temporary directory, which outlives the store.
struct Fixture {
    flavor: Flavor,
    path: PathBuf,
    store: Option<Store>,
    _dir: TempDir,
}

impl Fixture {
    fn new(flavor: Flavor) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // A parent that does not exist yet: opening must create it.
        let path = dir.path().join("not").join("yet").join(format!("store.{}", flavor.engine));
        let store = Some(flavor.open(&path).expect("open store"));
        Self { flavor, path, store, _dir: dir }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    /// Closes the store and opens the same path again.
    fn reopen(&mut self) {
        let store = self.store.take().expect("store is open");
        // Only the last handle closes the files; a leaked clone would keep them locked.
        assert_eq!(Arc::strong_count(&store), 1, "a handle to the store leaked");
        drop(store);
        self.store = Some(self.flavor.open(&self.path).expect("reopen store"));
    }
}

fn be(n: u64) -> Bytes {
    n.to_be_bytes().to_vec()
}

fn put(store: &Store, tree: &'static str, key: impl Into<Bytes>, value: impl Into<Bytes>) {
    let mut batch = Batch::new();
    batch.put(tree, key, value);
    store.write(batch).expect("write");
}

fn get(store: &Store, tree: &'static str, key: &[u8]) -> Option<Bytes> {
    store.get(tree, key).expect("get")
}

fn all(store: &Store, tree: &'static str) -> Vec<(Bytes, Bytes)> {
    store.range(tree, Bound::Unbounded, Bound::Unbounded, Order::Ascending, usize::MAX).expect("range")
}

fn keys(store: &Store, tree: &'static str) -> Vec<Bytes> {
    all(store, tree).into_iter().map(|(k, _)| k).collect()
}

/// Puts big-endian keys `ns` with value `v<n>` in one batch.
fn put_numbers(store: &Store, tree: &'static str, ns: impl IntoIterator<Item = u64>) {
    let mut batch = Batch::new();
    for n in ns {
        batch.put(tree, be(n), format!("v{n}").into_bytes());
    }
    store.write(batch).expect("write");
}

fn numbers(keys: &[Bytes]) -> Vec<u64> {
    keys.iter().map(|k| u64::from_be_bytes(k.as_slice().try_into().expect("8-byte key"))).collect()
}

fn get_missing_key_and_missing_tree(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    assert_eq!(get(s, A, b"nothing"), None);
    assert!(all(s, A).is_empty());
    assert_eq!(s.last(A).expect("last"), None);
    let descending = s.range(A, Bound::Unbounded, Bound::Unbounded, Order::Descending, 10).expect("range");
    assert!(descending.is_empty());

    put(s, A, b"k".to_vec(), b"v".to_vec());
    assert_eq!(get(s, A, b"k2"), None);
    assert_eq!(get(s, A, b""), None);
    assert_eq!(get(s, B, b"k"), None, "a write to one tree must not create keys in another");
}

fn put_get_overwrite(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put(s, A, b"k".to_vec(), b"one".to_vec());
    assert_eq!(get(s, A, b"k"), Some(b"one".to_vec()));
    put(s, A, b"k".to_vec(), b"two".to_vec());
    assert_eq!(get(s, A, b"k"), Some(b"two".to_vec()));
    put(s, A, b"k".to_vec(), Vec::new());
    assert_eq!(get(s, A, b"k"), Some(Vec::new()), "an empty value is a value, not a delete");
    assert_eq!(all(s, A).len(), 1, "overwriting must not add entries");
}

fn delete(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put_numbers(s, A, 1..=3);
    let mut batch = Batch::new();
    batch.delete(A, be(2));
    batch.delete(A, be(99)); // absent: not an error
    batch.delete(B, be(1)); // tree never written: not an error
    s.write(batch).expect("write");
    assert_eq!(get(s, A, &be(2)), None);
    assert_eq!(numbers(&keys(s, A)), vec![1, 3]);
}

fn delete_range_with_end(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put_numbers(s, A, 1..=10);
    put_numbers(s, B, 1..=10);
    let mut batch = Batch::new();
    batch.delete_range(A, be(3), Some(be(7)));
    s.write(batch).expect("write");
    assert_eq!(numbers(&keys(s, A)), vec![1, 2, 7, 8, 9, 10], "start kept out, end kept in");
    assert_eq!(numbers(&keys(s, B)), (1..=10).collect::<Vec<_>>(), "other tree untouched");

    // Bounds that are not stored keys, an empty and an inverted range.
    let mut batch = Batch::new();
    batch.delete_range(A, vec![0, 0, 0, 0, 0, 0, 0, 8, 0], Some(vec![0, 0, 0, 0, 0, 0, 0, 10]));
    batch.delete_range(A, be(1), Some(be(1)));
    batch.delete_range(A, be(9), Some(be(2)));
    s.write(batch).expect("write");
    assert_eq!(numbers(&keys(s, A)), vec![1, 2, 7, 8, 10]);
}

fn delete_range_without_end(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put_numbers(s, A, 1..=10);
    put(s, A, vec![0xff; 20], b"high".to_vec());
    let mut batch = Batch::new();
    batch.delete_range(A, be(5), None);
    s.write(batch).expect("write");
    assert_eq!(numbers(&keys(s, A)), vec![1, 2, 3, 4]);

    let mut batch = Batch::new();
    batch.delete_range(A, Vec::new(), None);
    s.write(batch).expect("write");
    assert!(all(s, A).is_empty(), "an empty start with no end clears the tree");
}

fn delete_range_sees_earlier_ops_in_the_batch(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put_numbers(s, A, [1, 5]);
    let mut batch = Batch::new();
    batch.put(A, be(6), b"new".to_vec());
    batch.put(B, be(6), b"other tree".to_vec());
    batch.delete_range(A, be(2), None);
    batch.put(A, be(7), b"after".to_vec());
    s.write(batch).expect("write");
    assert_eq!(numbers(&keys(s, A)), vec![1, 7], "a put before the range delete is deleted");
    assert_eq!(get(s, A, &be(7)), Some(b"after".to_vec()));
    assert_eq!(get(s, B, &be(6)), Some(b"other tree".to_vec()));
}

/// The entries of `model` inside the bounds, ascending; empty for an inverted
/// range, where `BTreeMap::range` would panic but a store must return nothing.
fn model_range(model: &BTreeMap<Bytes, Bytes>, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Vec<(Bytes, Bytes)> {
    let inverted = match (start, end) {
        (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => s > e,
        _ => false,
    };
    if inverted {
        return Vec::new();
    }
    model.range::<[u8], _>((start, end)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn range_bounds_and_orders(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    let stored = [1u64, 2, 4, 5, 7];
    put_numbers(s, A, stored);
    let model: BTreeMap<Bytes, Bytes> = stored.iter().map(|&n| (be(n), format!("v{n}").into_bytes())).collect();

    // 4 is stored, 3 and 6 are not: bounds must work on both.
    let points = [be(3), be(4), be(6)];
    let mut checked = 0;
    for lo in &points {
        for hi in &points {
            let (lo, hi): (&[u8], &[u8]) = (lo, hi);
            for start in [Bound::Included(lo), Bound::Excluded(lo), Bound::Unbounded] {
                for end in [Bound::Included(hi), Bound::Excluded(hi), Bound::Unbounded] {
                    let expected = model_range(&model, start, end);
                    let ascending = s.range(A, start, end, Order::Ascending, usize::MAX).expect("range");
                    assert_eq!(ascending, expected, "ascending {start:?}..{end:?}");
                    let descending = s.range(A, start, end, Order::Descending, usize::MAX).expect("range");
                    let reversed: Vec<_> = expected.iter().rev().cloned().collect();
                    assert_eq!(descending, reversed, "descending {start:?}..{end:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 81);

    // Spot checks independent of the model.
    let r = s.range(A, Bound::Excluded(&be(2)), Bound::Included(&be(5)), Order::Descending, 10).expect("range");
    assert_eq!(numbers(&r.into_iter().map(|(k, _)| k).collect::<Vec<_>>()), vec![5, 4]);
}

fn range_limits(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put_numbers(s, A, 1..=5);
    let run = |start: Bound<&[u8]>, order, limit| {
        let r = s.range(A, start, Bound::Unbounded, order, limit).expect("range");
        numbers(&r.into_iter().map(|(k, _)| k).collect::<Vec<_>>())
    };
    for order in [Order::Ascending, Order::Descending] {
        assert!(run(Bound::Unbounded, order, 0).is_empty(), "limit 0 returns nothing");
    }
    assert_eq!(run(Bound::Unbounded, Order::Ascending, 1), vec![1]);
    assert_eq!(run(Bound::Unbounded, Order::Descending, 1), vec![5]);
    assert_eq!(run(Bound::Unbounded, Order::Ascending, 3), vec![1, 2, 3]);
    assert_eq!(run(Bound::Unbounded, Order::Descending, 3), vec![5, 4, 3]);
    let b2 = be(2);
    assert_eq!(run(Bound::Excluded(&b2), Order::Ascending, 2), vec![3, 4]);
    assert_eq!(run(Bound::Included(&b2), Order::Descending, 2), vec![5, 4]);
    assert_eq!(run(Bound::Unbounded, Order::Ascending, 100), vec![1, 2, 3, 4, 5]);
    assert_eq!(run(Bound::Unbounded, Order::Descending, usize::MAX), vec![5, 4, 3, 2, 1]);
}

fn byte_ordering(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    // Inserted out of order, and in separate batches so no engine can rely on batch order.
    let ns = [256u64, 1, u64::MAX, 65_536, 0, 255, 2, 1 << 40];
    for n in ns {
        put_numbers(s, A, [n]);
    }
    let mut sorted = ns.to_vec();
    sorted.sort_unstable();
    assert_eq!(numbers(&keys(s, A)), sorted, "big-endian keys sort numerically");

    // Prefixes sort before their extensions; bytes compare unsigned.
    let raw: Vec<Bytes> = vec![
        b"b".to_vec(),
        b"abc".to_vec(),
        b"a".to_vec(),
        Vec::new(),
        b"ab".to_vec(),
        vec![0x80],
        vec![0x7f],
        vec![0xff, 0x00],
        vec![0xff],
        vec![0x00],
    ];
    for k in &raw {
        put(s, B, k.clone(), k.clone());
    }
    let expected: Vec<Bytes> = vec![
        Vec::new(),
        vec![0x00],
        b"a".to_vec(),
        b"ab".to_vec(),
        b"abc".to_vec(),
        b"b".to_vec(),
        vec![0x7f],
        vec![0x80],
        vec![0xff],
        vec![0xff, 0x00],
    ];
    assert_eq!(keys(s, B), expected);
    assert_eq!(get(s, B, b""), Some(Vec::new()), "the empty key is a key");
    // A prefix bound excludes exactly the prefix itself, not its extensions.
    let after_a = s.range(B, Bound::Excluded(b"a"), Bound::Excluded(b"b"), Order::Ascending, 10).expect("range");
    let after_a: Vec<Bytes> = after_a.into_iter().map(|(k, _)| k).collect();
    assert_eq!(after_a, vec![b"ab".to_vec(), b"abc".to_vec()]);
}

fn trees_are_independent(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put(s, A, b"k".to_vec(), b"in a".to_vec());
    put(s, B, b"k".to_vec(), b"in b".to_vec());
    put(s, B, b"only b".to_vec(), b"x".to_vec());
    assert_eq!(get(s, A, b"k"), Some(b"in a".to_vec()));
    assert_eq!(get(s, B, b"k"), Some(b"in b".to_vec()));
    assert_eq!(keys(s, A), vec![b"k".to_vec()], "a range sees only its own tree");
    assert_eq!(s.last(A).expect("last").map(|(k, _)| k), Some(b"k".to_vec()));

    let mut batch = Batch::new();
    batch.delete(A, b"k".to_vec());
    s.write(batch).expect("write");
    assert_eq!(get(s, A, b"k"), None);
    assert_eq!(get(s, B, b"k"), Some(b"in b".to_vec()));

    let mut batch = Batch::new();
    batch.delete_range(B, Vec::new(), None);
    s.write(batch).expect("write");
    assert!(all(s, B).is_empty());
    put(s, A, b"again".to_vec(), b"a".to_vec());
    assert_eq!(keys(s, A), vec![b"again".to_vec()]);
}

fn batch_applies_ops_in_order(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put(s, A, b"old".to_vec(), b"x".to_vec());
    let mut batch = Batch::new();
    batch.put(A, b"k".to_vec(), b"first".to_vec());
    batch.put(A, b"k".to_vec(), b"second".to_vec());
    batch.put(A, b"gone".to_vec(), b"x".to_vec());
    batch.delete(A, b"gone".to_vec());
    batch.delete(A, b"old".to_vec());
    batch.put(A, b"old".to_vec(), b"back".to_vec());
    s.write(batch).expect("write");
    assert_eq!(get(s, A, b"k"), Some(b"second".to_vec()));
    assert_eq!(get(s, A, b"gone"), None);
    assert_eq!(get(s, A, b"old"), Some(b"back".to_vec()));
}

fn batch_across_two_trees_is_all_visible(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    put_numbers(s, B, [9]);
    let mut batch = Batch::new();
    batch.put(A, b"a1".to_vec(), b"1".to_vec());
    batch.put(B, b"b1".to_vec(), b"2".to_vec());
    batch.put(A, b"a2".to_vec(), b"3".to_vec());
    batch.delete(B, be(9));
    s.write(batch).expect("write");
    assert_eq!(get(s, A, b"a1"), Some(b"1".to_vec()));
    assert_eq!(get(s, A, b"a2"), Some(b"3".to_vec()));
    assert_eq!(get(s, B, b"b1"), Some(b"2".to_vec()));
    assert_eq!(get(s, B, &be(9)), None);
}

/// While batches that put key `i` in both trees are written, a reader that
/// sees `i` in one tree must then also see it in the other: seeing one half
/// means the whole batch was already committed.
fn batch_is_atomic_for_concurrent_readers(flavor: Flavor) {
    const BATCHES: u64 = 300;
    let f = Fixture::new(flavor);
    let s = f.store().clone();
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let reader = {
        let (s, done, seen) = (s.clone(), done.clone(), seen.clone());
        std::thread::spawn(move || {
            while !done.load(AtomicOrdering::SeqCst) {
                // Both directions, so a split commit is caught whichever half lands first.
                for (first, second) in [(B, A), (A, B)] {
                    let Some((k, _)) = s.last(first).expect("last") else {
                        continue;
                    };
                    let other = s.get(second, &k).expect("get");
                    assert!(other.is_some(), "saw {first}'s half of a batch without {second}'s");
                    seen.fetch_add(1, AtomicOrdering::SeqCst);
                }
            }
        })
    };
    for i in 0..BATCHES {
        let mut batch = Batch::new();
        batch.put(B, be(i), b"b".to_vec());
        batch.put(A, be(i), b"a".to_vec());
        s.write(batch).expect("write");
        // Flushes among the writes: an engine that moves writes from one
        // place to another on a flush must not show half a batch meanwhile.
        if i % 50 == 49 {
            s.flush().expect("flush");
        }
    }
    // Writes into memory may all be done before the reader first looks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.load(AtomicOrdering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    done.store(true, AtomicOrdering::SeqCst);
    reader.join().expect("reader thread");
    assert!(seen.load(AtomicOrdering::SeqCst) > 0, "the reader never observed a batch");
    drop(s);
    assert_eq!(all(f.store(), A).len(), BATCHES as usize);
}

fn last_entry(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    assert_eq!(s.last(A).expect("last"), None);
    put_numbers(s, A, [3, 300, 30]);
    assert_eq!(s.last(A).expect("last"), Some((be(300), b"v300".to_vec())));
    let mut batch = Batch::new();
    batch.delete(A, be(300));
    s.write(batch).expect("write");
    assert_eq!(s.last(A).expect("last"), Some((be(30), b"v30".to_vec())));
    assert_eq!(s.last(B).expect("last"), None);
}

fn data_survives_reopen_after_flush(flavor: Flavor) {
    let mut f = Fixture::new(flavor);
    put_numbers(f.store(), A, 1..=100);
    put(f.store(), B, b"b".to_vec(), b"kept".to_vec());
    let mut batch = Batch::new();
    batch.delete_range(A, be(50), None);
    batch.put(B, b"durable".to_vec(), b"yes".to_vec());
    f.store().write_durable(batch).expect("write_durable");
    put(f.store(), A, be(1000), b"flushed later".to_vec());
    f.store().flush().expect("flush");

    f.reopen();
    let s = f.store();
    let mut expected: Vec<u64> = (1..50).collect();
    expected.push(1000);
    assert_eq!(numbers(&keys(s, A)), expected);
    assert_eq!(get(s, A, &be(1000)), Some(b"flushed later".to_vec()));
    assert_eq!(get(s, B, b"b"), Some(b"kept".to_vec()));
    assert_eq!(get(s, B, b"durable"), Some(b"yes".to_vec()));

    // The reopened store takes writes and survives a second reopen.
    put(s, A, be(2000), b"second life".to_vec());
    s.flush().expect("flush");
    f.reopen();
    assert_eq!(get(f.store(), A, &be(2000)), Some(b"second life".to_vec()));
    assert_eq!(all(f.store(), A).len(), 51);
}

fn empty_batch_is_fine(flavor: Flavor) {
    let f = Fixture::new(flavor);
    let s = f.store();
    s.write(Batch::new()).expect("empty write on a fresh store");
    s.write_durable(Batch::new()).expect("empty durable write");
    s.flush().expect("flush with nothing written");
    put(s, A, b"k".to_vec(), b"v".to_vec());
    s.write(Batch::new()).expect("empty write");
    s.flush().expect("flush");
    s.flush().expect("second flush with nothing new");
    assert_eq!(all(s, A), vec![(b"k".to_vec(), b"v".to_vec())]);
}

fn large_values(flavor: Flavor) {
    const MIB: usize = 1 << 20;
    let mut f = Fixture::new(flavor);
    let first: Bytes = (0..MIB).map(|i| (i % 251) as u8).collect();
    let second: Bytes = (0..MIB + 7).map(|i| (i % 241) as u8).collect();
    put(f.store(), A, b"big".to_vec(), first.clone());
    put(f.store(), A, b"big2".to_vec(), first.clone());
    assert_eq!(get(f.store(), A, b"big").as_ref(), Some(&first));
    put(f.store(), A, b"big".to_vec(), second.clone());
    assert_eq!(get(f.store(), A, b"big").as_ref(), Some(&second));
    let r = f.store().range(A, Bound::Unbounded, Bound::Unbounded, Order::Descending, 5);
    let r = r.expect("range");
    assert_eq!(r, vec![(b"big2".to_vec(), first.clone()), (b"big".to_vec(), second.clone())]);

    f.store().flush().expect("flush");
    f.reopen();
    assert_eq!(get(f.store(), A, b"big").as_ref(), Some(&second));
    assert_eq!(get(f.store(), A, b"big2").as_ref(), Some(&first));
}

/// Many threads writing and flushing at once (the group-commit pattern):
/// every flush succeeds and every write survives a reopen.
fn concurrent_writes_and_flushes(flavor: Flavor) {
    const THREADS: u64 = 4;
    const WRITES: u64 = 25;
    let mut f = Fixture::new(flavor);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = f.store().clone();
            std::thread::spawn(move || {
                for i in 0..WRITES {
                    let mut batch = Batch::new();
                    batch.put(A, be(t * 1000 + i), b"x".to_vec());
                    batch.put(B, be(t), be(i));
                    s.write(batch).expect("write");
                    s.flush().expect("flush");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    f.reopen();
    assert_eq!(all(f.store(), A).len(), (THREADS * WRITES) as usize);
    for t in 0..THREADS {
        assert_eq!(get(f.store(), B, &be(t)), Some(be(WRITES - 1)));
    }
}

/// Set in the child process of [`flushed_writes_survive_a_crash`] to the store path.
const CRASH_CHILD_ENV: &str = "PALAVER_STORAGE_CRASH_CHILD";

/// A child process writes, flushes, writes once more and aborts without
/// closing the store. Everything flushed must be there after reopening, and
/// the unflushed batch must be there whole or not at all. A clean close would
/// hide a flush that does nothing (redb persists pending commits on close),
/// hence the abort.
fn flushed_writes_survive_a_crash(flavor: Flavor) {
    const FLUSHED: u64 = 50;
    if let Some(path) = std::env::var_os(CRASH_CHILD_ENV) {
        let store = flavor.open(Path::new(&path)).expect("open in child");
        for i in 0..FLUSHED {
            let mut batch = Batch::new();
            batch.put(A, be(i), b"a".to_vec());
            batch.put(B, be(i), b"b".to_vec());
            store.write(batch).expect("write in child");
        }
        store.flush().expect("flush in child");
        let mut batch = Batch::new();
        batch.put(A, be(1000), b"a".to_vec());
        batch.put(B, be(1000), b"b".to_vec());
        store.write(batch).expect("write in child");
        std::process::abort();
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("crash.{}", flavor.engine));
    let test = format!("storage::conformance::{}::flushed_writes_survive_a_crash", flavor.module());
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", &test, "--test-threads=1", "--nocapture"])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run child");
    // Success would mean the child ran no test (a renamed test) or never crashed.
    assert!(!status.success(), "the child did not abort: {status}");

    let store = flavor.open(&path).expect("reopen after crash");
    for i in 0..FLUSHED {
        assert_eq!(get(&store, A, &be(i)), Some(b"a".to_vec()), "flushed key {i} lost in A");
        assert_eq!(get(&store, B, &be(i)), Some(b"b".to_vec()), "flushed key {i} lost in B");
    }
    let a = get(&store, A, &be(1000)).is_some();
    let b = get(&store, B, &be(1000)).is_some();
    assert_eq!(a, b, "the unflushed batch survived only in part");
}

fn engine_names(flavor: Flavor) {
    let f = Fixture::new(flavor);
    assert_eq!(f.store().name(), flavor.engine.to_string());
}

/// Two stores on one path would be two uncoordinated writers: the second
/// open must fail with an engine error, not panic or succeed.
fn second_open_of_same_path_fails_cleanly(flavor: Flavor) {
    let f = Fixture::new(flavor);
    put(f.store(), A, b"k".to_vec(), b"v".to_vec());
    match flavor.open(&f.path) {
        Err(StorageError::Engine { engine, .. }) => assert_eq!(engine, flavor.engine.to_string()),
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(_) => panic!("a second open of a store in use succeeded"),
    }
    assert_eq!(get(f.store(), A, b"k"), Some(b"v".to_vec()), "the failed open left the store alone");
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        conformance!(@on on_redb, Redb, false; $($check),*);
        conformance!(@on on_sled, Sled, false; $($check),*);
        conformance!(@on on_redb_memtable, Redb, true; $($check),*);
    };
    (@on $module:ident, $kind:ident, $memtable:expr; $($check:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $check() {
                    super::$check(super::Flavor { engine: super::EngineKind::$kind, memtable: $memtable });
                }
            )*
        }
    };
}

conformance!(
    get_missing_key_and_missing_tree,
    put_get_overwrite,
    delete,
    delete_range_with_end,
    delete_range_without_end,
    delete_range_sees_earlier_ops_in_the_batch,
    range_bounds_and_orders,
    range_limits,
    byte_ordering,
    trees_are_independent,
    batch_applies_ops_in_order,
    batch_across_two_trees_is_all_visible,
    batch_is_atomic_for_concurrent_readers,
    last_entry,
    data_survives_reopen_after_flush,
    empty_batch_is_fine,
    large_values,
    concurrent_writes_and_flushes,
    flushed_writes_survive_a_crash,
    engine_names,
    second_open_of_same_path_fails_cleanly,
);
