//! A test engine that makes a process crash look like a power cut: writes
//! stay in this process's memory until [`Engine::flush`] hands them to the
//! real engine durably, so a SIGKILL loses exactly what was never flushed.
//! (A plain SIGKILL keeps the page cache, so it cannot catch a missing
//! fsync; this can.) Enabled only by the `PALAVER_TEST_LOSE_UNFLUSHED`
//! environment variable; never in production.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::Mutex;

use super::Batch;
use super::Bytes;
use super::Engine;
use super::Op;
use super::Order;
use super::StorageError;
use super::Store;

/// Holds writes in memory until a flush.
pub struct StagedEngine {
    inner: Store,
    /// Batches written but not flushed, oldest first. The lock is held across
    /// a flush so readers never miss a batch between here and the store.
    staged: Mutex<Vec<Batch>>,
}

impl StagedEngine {
    /// Wraps `inner`.
    pub fn new(inner: Store) -> Self {
        Self { inner, staged: Mutex::new(Vec::new()) }
    }
}

fn in_range(key: &[u8], start: &[u8], end: Option<&[u8]>) -> bool {
    key >= start && end.is_none_or(|e| key < e)
}

fn within(key: &[u8], start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    let after_start = match start {
        Bound::Included(s) => key >= s,
        Bound::Excluded(s) => key > s,
        Bound::Unbounded => true,
    };
    let before_end = match end {
        Bound::Included(e) => key <= e,
        Bound::Excluded(e) => key < e,
        Bound::Unbounded => true,
    };
    after_start && before_end
}

impl Engine for StagedEngine {
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let staged = self.staged.lock();
        for batch in staged.iter().rev() {
            for op in batch.ops.iter().rev() {
                match op {
                    Op::Put { tree: t, key: k, value } if *t == tree && k.as_slice() == key => {
                        return Ok(Some(value.clone()));
                    }
                    Op::Delete { tree: t, key: k } if *t == tree && k.as_slice() == key => return Ok(None),
                    Op::DeleteRange { tree: t, start, end } if *t == tree && in_range(key, start, end.as_deref()) => {
                        return Ok(None);
                    }
                    _ => {}
                }
            }
        }
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
        let staged = self.staged.lock();
        let mut view: BTreeMap<Bytes, Bytes> =
            self.inner.range(tree, start, end, Order::Ascending, usize::MAX)?.into_iter().collect();
        for op in staged.iter().flat_map(|b| b.ops.iter()) {
            match op {
                Op::Put { tree: t, key, value } if *t == tree && within(key, start, end) => {
                    view.insert(key.clone(), value.clone());
                }
                Op::Delete { tree: t, key } if *t == tree => {
                    view.remove(key);
                }
                Op::DeleteRange { tree: t, start: s, end: e } if *t == tree => {
                    view.retain(|k, _| !in_range(k, s, e.as_deref()));
                }
                _ => {}
            }
        }
        Ok(match order {
            Order::Ascending => view.into_iter().take(limit).collect(),
            Order::Descending => view.into_iter().rev().take(limit).collect(),
        })
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        self.staged.lock().push(batch);
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        let mut staged = self.staged.lock();
        if staged.is_empty() {
            return Ok(());
        }
        let merged = Batch { ops: staged.iter().flat_map(|b| b.ops.iter().cloned()).collect() };
        self.inner.write_durable(merged)?;
        staged.clear();
        Ok(())
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::EngineKind;

    #[test]
    fn unflushed_writes_are_visible_but_not_in_the_real_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = crate::storage::open(EngineKind::Redb, &dir.path().join("x.redb")).expect("open");
        let staged = StagedEngine::new(inner.clone());
        let mut b = Batch::new();
        b.put("t", b"a".to_vec(), b"1".to_vec());
        b.put("t", b"b".to_vec(), b"2".to_vec());
        staged.write(b).expect("write");
        let mut d = Batch::new();
        d.delete_range("t", b"b".to_vec(), None);
        d.put("t", b"c".to_vec(), b"3".to_vec());
        staged.write(d).expect("write");
        assert_eq!(staged.get("t", b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(staged.get("t", b"b").expect("get"), None);
        let all = staged.range("t", Bound::Unbounded, Bound::Unbounded, Order::Descending, 10).expect("range");
        assert_eq!(all, vec![(b"c".to_vec(), b"3".to_vec()), (b"a".to_vec(), b"1".to_vec())]);
        assert_eq!(inner.get("t", b"a").expect("inner get"), None, "nothing reached the store before the flush");
        staged.flush().expect("flush");
        assert_eq!(inner.get("t", b"c").expect("inner get"), Some(b"3".to_vec()));
        assert_eq!(inner.get("t", b"b").expect("inner get"), None);
        let _: Store = Arc::new(staged);
    }
}
