//! The redb engine: one file, one redb table per tree.
//!
//! Durability: `write` commits with `Durability::None` and `flush` commits an
//! empty transaction with `Durability::Immediate`. redb documents that a
//! `None` commit "will not be persisted to disk unless followed by a commit
//! with `Durability::Immediate`", and its durable commit writes the newest
//! root (which includes every earlier non-durable commit) and fsyncs, so one
//! flush makes all earlier writes durable. This keeps the fsync out of the
//! write path, which is what lets many writes share one flush (group commit).

use std::fmt::Display;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering as AtomicOrdering;

use parking_lot::Mutex;
use redb::Database;
use redb::Durability;
use redb::ReadOnlyTable;
use redb::ReadableDatabase;
use redb::Table;
use redb::TableDefinition;
use redb::TableError;

use super::Batch;
use super::Bytes;
use super::Engine;
use super::Op;
use super::Order;
use super::StorageError;

const ENGINE: &str = "redb";

/// Keys and values are raw bytes, ordered by redb as byte slices.
type Raw = &'static [u8];

fn def(tree: &str) -> TableDefinition<'_, Raw, Raw> {
    TableDefinition::new(tree)
}

fn engine_err(e: impl Display) -> StorageError {
    StorageError::Engine { engine: ENGINE, message: e.to_string() }
}

/// A store in a single redb file.
pub struct RedbEngine {
    db: Database,
    /// Batches committed so far; bumped only after a commit has returned, so
    /// a flush that starts later is sure to cover every batch it counts.
    committed: AtomicU64,
    /// The `committed` count that the last durable commit covered. Holding
    /// the lock while committing makes concurrent flushes queue behind one
    /// fsync and then find their writes already covered, instead of each
    /// paying for its own.
    durable: Mutex<u64>,
}

impl std::fmt::Debug for RedbEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbEngine")
            .field("committed", &self.committed.load(AtomicOrdering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedbEngine {
    /// Opens (creating when absent, with its parent directory) the redb file
    /// at `path`, its page cache bounded by `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| engine_err(format_args!("cannot create directory {}: {e}", parent.display())))?;
        }
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| engine_err(format_args!("cannot open {}: {e}", path.display())))?;
        Ok(Self { db, committed: AtomicU64::new(0), durable: Mutex::new(0) })
    }

    /// Opens `tree` for reading, or `None` when it has never been written.
    fn read_table(&self, tree: &str) -> Result<Option<ReadOnlyTable<Raw, Raw>>, StorageError> {
        let txn = self.db.begin_read().map_err(engine_err)?;
        match txn.open_table(def(tree)) {
            Ok(table) => Ok(Some(table)),
            // Tables are created by their first write; until then the tree reads as empty.
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(engine_err(e)),
        }
    }
}

/// Applies one op to its (already open) table.
fn apply(table: &mut Table<'_, Raw, Raw>, op: &Op) -> Result<(), redb::Error> {
    match op {
        Op::Put { key, value, .. } => {
            table.insert(key.as_slice(), value.as_slice())?;
        }
        Op::Delete { key, .. } => {
            table.remove(key.as_slice())?;
        }
        Op::DeleteRange { start, end, .. } => {
            let upper = match end {
                Some(end) => Bound::Excluded(end.as_slice()),
                None => Bound::Unbounded,
            };
            table.retain_in::<&[u8], _>((Bound::Included(start.as_slice()), upper), |_, _| false)?;
        }
    }
    Ok(())
}

/// Applies every op of `batch` in `txn`; on error the caller drops the
/// transaction uncommitted, which aborts it: none of the batch is applied.
fn fill(txn: &redb::WriteTransaction, batch: &Batch) -> Result<(), StorageError> {
    // A table may be open only once per transaction, so keep each one open
    // for the whole batch; all must be dropped before commit. A batch
    // touches few trees, so a list beats a map here.
    let mut tables: Vec<(&'static str, Table<'_, Raw, Raw>)> = Vec::new();
    for op in &batch.ops {
        let name = op_tree(op);
        let index = match tables.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                tables.push((name, txn.open_table(def(name)).map_err(engine_err)?));
                tables.len() - 1
            }
        };
        apply(&mut tables[index].1, op).map_err(engine_err)?;
    }
    Ok(())
}

fn op_tree(op: &Op) -> &'static str {
    match op {
        Op::Put { tree, .. } | Op::Delete { tree, .. } | Op::DeleteRange { tree, .. } => tree,
    }
}

impl Engine for RedbEngine {
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let Some(table) = self.read_table(tree)? else {
            return Ok(None);
        };
        let value = table.get(key).map_err(engine_err)?;
        Ok(value.map(|v| v.value().to_vec()))
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
        let Some(table) = self.read_table(tree)? else {
            return Ok(Vec::new());
        };
        // redb treats an inverted range as empty rather than panicking.
        let iter = table.range::<&[u8]>((start, end)).map_err(engine_err)?;
        let entry = |item: Result<_, redb::StorageError>| {
            let (k, v): (redb::AccessGuard<'_, Raw>, redb::AccessGuard<'_, Raw>) = item.map_err(engine_err)?;
            Ok((k.value().to_vec(), v.value().to_vec()))
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
        // begin_write blocks while another write transaction is open, so
        // redb itself serialises writers; no lock of our own is needed.
        let mut txn = self.db.begin_write().map_err(engine_err)?;
        txn.set_durability(Durability::None).map_err(engine_err)?;
        fill(&txn, &batch)?;
        txn.commit().map_err(engine_err)?;
        self.committed.fetch_add(1, AtomicOrdering::SeqCst);
        Ok(())
    }

    fn write_durable(&self, batch: Batch) -> Result<(), StorageError> {
        // Held across the commit, like `flush`, so `durable` only grows.
        let mut durable = self.durable.lock();
        let mut txn = self.db.begin_write().map_err(engine_err)?;
        txn.set_durability(Durability::Immediate).map_err(engine_err)?;
        fill(&txn, &batch)?;
        txn.commit().map_err(engine_err)?;
        // No other commit runs while a write transaction is open, so every
        // one counted before this one came earlier and is durable with it.
        let before = self.committed.fetch_add(1, AtomicOrdering::SeqCst);
        *durable = (*durable).max(before + 1);
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        let target = self.committed.load(AtomicOrdering::SeqCst);
        let mut durable = self.durable.lock();
        if *durable >= target {
            // A flush that started after our writes returned already covered them.
            return Ok(());
        }
        // Read before the transaction begins: every batch counted here has
        // committed, so the durable commit below includes it.
        let covers = self.committed.load(AtomicOrdering::SeqCst);
        let mut txn = self.db.begin_write().map_err(engine_err)?;
        txn.set_durability(Durability::Immediate).map_err(engine_err)?;
        txn.commit().map_err(engine_err)?;
        *durable = covers;
        Ok(())
    }

    fn name(&self) -> &'static str {
        ENGINE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(value: u8) -> Batch {
        let mut b = Batch::new();
        b.put("t", b"k".to_vec(), vec![value]);
        b
    }

    /// Whether a flush now would have a commit to make durable.
    fn uncovered(engine: &RedbEngine) -> bool {
        *engine.durable.lock() < engine.committed.load(AtomicOrdering::SeqCst)
    }

    #[test]
    fn a_flush_with_nothing_to_cover_costs_no_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = RedbEngine::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
        engine.write(put(1)).expect("write");
        assert!(uncovered(&engine), "a write to cover");
        engine.flush().expect("flush");
        assert!(!uncovered(&engine), "covered by the flush");
        engine.write_durable(put(2)).expect("durable write");
        assert!(!uncovered(&engine), "a durable write covers itself and all before it: a flush after it does nothing");
        engine.write(put(3)).expect("write");
        engine.flush().expect("flush");
        assert!(!uncovered(&engine));
        assert_eq!(engine.get("t", b"k").expect("read"), Some(vec![3]));
    }
}
