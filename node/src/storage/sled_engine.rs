//! The sled engine: one directory, one sled `Tree` per tree.
//!
//! Durability: `write` applies the batch atomically (sled's log makes a batch
//! or transaction recover all-or-nothing) and `flush` calls `Db::flush`, which
//! fsyncs everything logged so far. sled's flush returns at once when the log
//! is already stable up to its end, so many callers can share one fsync.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt::Display;
use std::ops::Bound;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
use parking_lot::RwLock;
use sled::Transactional;

use super::Batch;
use super::Bytes;
use super::Engine;
use super::Op;
use super::Order;
use super::StorageError;

const ENGINE: &str = "sled";

fn engine_err(e: impl Display) -> StorageError {
    StorageError::Engine { engine: ENGINE, message: e.to_string() }
}

/// The net effect of a batch on one tree: `None` removes the key.
type Writes = BTreeMap<Bytes, Option<Bytes>>;

/// A store in a sled directory.
pub struct SledEngine {
    db: sled::Db,
    /// `open_tree` takes sled's tenant lock and copies the name; caching the
    /// handles keeps that off every read.
    trees: RwLock<HashMap<&'static str, sled::Tree>>,
    /// Serialises our writers. A range delete must list the keys it removes
    /// before sled's transaction starts (scanning inside one deadlocks: it
    /// holds sled's global write lock, which iterators also take), so no other
    /// write may slip in between the scan and the commit. Every write to this
    /// database goes through this engine, so this lock is enough.
    writer: Mutex<()>,
}

impl std::fmt::Debug for SledEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledEngine").finish_non_exhaustive()
    }
}

impl SledEngine {
    /// Opens (creating when absent) the sled database in directory `path`,
    /// its page cache bounded by `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        std::fs::create_dir_all(path)
            .map_err(|e| engine_err(format_args!("cannot create directory {}: {e}", path.display())))?;
        let db =
            open_db(path, cache_bytes).map_err(|e| engine_err(format_args!("cannot open {}: {e}", path.display())))?;
        Ok(Self { db, trees: RwLock::new(HashMap::new()), writer: Mutex::new(()) })
    }

    fn tree(&self, name: &'static str) -> Result<sled::Tree, StorageError> {
        if let Some(tree) = self.trees.read().get(name) {
            return Ok(tree.clone());
        }
        // Opening creates the tree; a tree that was never written then
        // simply reads as empty.
        let tree = self.db.open_tree(name).map_err(engine_err)?;
        Ok(self.trees.write().entry(name).or_insert(tree).clone())
    }

    /// Folds the batch, in order, into the final state of every key it
    /// touches, per tree (in first-touched order). A range delete lists every
    /// key it removes, in memory, since sled has no range delete of its own.
    fn resolve(&self, batch: Batch) -> Result<Vec<(sled::Tree, Writes)>, StorageError> {
        let mut out: Vec<(&'static str, sled::Tree, Writes)> = Vec::new();
        for op in batch.ops {
            let name = match &op {
                Op::Put { tree, .. } | Op::Delete { tree, .. } | Op::DeleteRange { tree, .. } => *tree,
            };
            let index = match out.iter().position(|(n, _, _)| *n == name) {
                Some(i) => i,
                None => {
                    out.push((name, self.tree(name)?, Writes::new()));
                    out.len() - 1
                }
            };
            let (_, tree, writes) = &mut out[index];
            match op {
                Op::Put { key, value, .. } => {
                    writes.insert(key, Some(value));
                }
                Op::Delete { key, .. } => {
                    writes.insert(key, None);
                }
                Op::DeleteRange { start, end, .. } => {
                    if end.as_ref().is_some_and(|end| *end <= start) {
                        continue;
                    }
                    let upper = match &end {
                        Some(end) => Bound::Excluded(end.clone()),
                        None => Bound::Unbounded,
                    };
                    let bounds = (Bound::Included(start), upper);
                    // Keys put earlier in this batch are not in sled yet.
                    for value in writes.range_mut::<Bytes, _>(bounds.clone()).map(|(_, v)| v) {
                        *value = None;
                    }
                    for key in tree.range::<Bytes, _>(bounds).keys() {
                        writes.insert(key.map_err(engine_err)?.to_vec(), None);
                    }
                }
            }
        }
        Ok(out.into_iter().map(|(_, tree, writes)| (tree, writes)).collect())
    }
}

/// How long `open` waits for a file lock left by a store just closed.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Opens the database, retrying briefly while the directory is locked.
///
/// After a `Db` is dropped, sled's background threads may hold its file lock
/// a little longer (spacejam/sled#1234), so reopening at once can fail. A lock
/// held by a live store lasts far longer than `LOCK_WAIT` and still fails.
fn open_db(path: &Path, cache_bytes: usize) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(2);
    loop {
        match sled::Config::new().path(path).cache_capacity(cache_bytes as u64).open() {
            // sled reports this as ErrorKind::Other, so only the text tells it apart.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

impl Engine for SledEngine {
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let value = self.tree(tree)?.get(key).map_err(engine_err)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        tree: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // sled's iterator yields nothing for an inverted or empty range.
        let iter = self.tree(tree)?.range::<&[u8], _>((start, end));
        let entry = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, v) = item.map_err(engine_err)?;
            Ok((k.to_vec(), v.to_vec()))
        };
        match order {
            Order::Ascending => iter.take(limit).map(entry).collect(),
            Order::Descending => iter.rev().take(limit).map(entry).collect(),
        }
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let _writer = self.writer.lock();
        let mut resolved = self.resolve(batch)?;
        if resolved.len() == 1 {
            // One tree: sled's batch is atomic too and, unlike a transaction,
            // does not read every key's old value first.
            let Some((tree, writes)) = resolved.pop() else {
                return Ok(());
            };
            let mut sled_batch = sled::Batch::default();
            for (key, value) in writes {
                match value {
                    Some(value) => sled_batch.insert(key, value),
                    None => sled_batch.remove(key),
                }
            }
            return tree.apply_batch(sled_batch).map_err(engine_err);
        }
        let (trees, writes): (Vec<sled::Tree>, Vec<Writes>) = resolved.into_iter().unzip();
        // The closure may run again after a conflict, so it only replays the
        // precomputed writes.
        Transactional::<()>::transaction(trees.as_slice(), |views| {
            for (view, writes) in views.iter().zip(&writes) {
                for (key, value) in writes {
                    match value {
                        Some(value) => view.insert(key.as_slice(), value.as_slice())?,
                        None => view.remove(key.as_slice())?,
                    };
                }
            }
            Ok(())
        })
        .map_err(|e| match e {
            sled::transaction::TransactionError::Abort(()) => engine_err("transaction aborted"),
            sled::transaction::TransactionError::Storage(e) => engine_err(e),
        })
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(engine_err)
    }

    fn name(&self) -> &'static str {
        ENGINE
    }
}
