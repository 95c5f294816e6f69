//! Storage: one small engine trait (named ordered keyspaces, atomic batches,
//! a durable flush) and the engines behind it.
//!
//! Everything above this module (the Raft log, the metadata snapshots, the
//! room logs) speaks only [`Engine`]; it does not know which engine runs.
//! Keys are compared as raw bytes, so callers encode numbers big-endian.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

#[cfg(test)]
mod conformance;
mod memtable;
mod redb_engine;
mod sled_engine;
mod staged;
mod write_thread;

pub use memtable::MemtableEngine;
pub use redb_engine::RedbEngine;
pub use sled_engine::SledEngine;
pub use staged::StagedEngine;
pub use write_thread::FlushDone;
pub use write_thread::WriteThread;

/// Set (to anything) in tests to keep every write in memory until it is
/// flushed, so killing the process loses exactly the unflushed writes.
pub const LOSE_UNFLUSHED_ENV: &str = "PALAVER_TEST_LOSE_UNFLUSHED";

/// A key or value as stored.
pub type Bytes = Vec<u8>;

/// Which engine stores a node's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// redb: stable on-disk format, ACID, syncs on commit (the default).
    #[default]
    Redb,
    /// sled: the engine the user's design card named; beta, selectable.
    Sled,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Redb => "redb",
            EngineKind::Sled => "sled",
        })
    }
}

/// What can go wrong below the engine trait.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine reported an I/O or consistency failure.
    #[error("{engine} storage failed: {message}")]
    Engine {
        /// Which engine failed.
        engine: &'static str,
        /// The engine's own description.
        message: String,
    },
    /// A stored value could not be decoded: the file is damaged or from another version.
    #[error("stored value in {tree} is corrupt: {message}")]
    Corrupt {
        /// The keyspace holding the value.
        tree: &'static str,
        /// What the decoder said.
        message: String,
    },
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e)
    }
}

/// One write in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// Keyspace.
        tree: &'static str,
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Remove `key` if present.
    Delete {
        /// Keyspace.
        tree: &'static str,
        /// Key.
        key: Bytes,
    },
    /// Remove every key in `start..end` (end `None`: to the end of the keyspace).
    DeleteRange {
        /// Keyspace.
        tree: &'static str,
        /// First key removed.
        start: Bytes,
        /// First key kept, or none.
        end: Option<Bytes>,
    },
}

/// Writes applied all together or not at all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, tree: &'static str, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.ops.push(Op::Put { tree, key: key.into(), value: value.into() });
    }

    /// Adds a delete.
    pub fn delete(&mut self, tree: &'static str, key: impl Into<Bytes>) {
        self.ops.push(Op::Delete { tree, key: key.into() });
    }

    /// Adds a range delete of `start..end` (`None`: to the end).
    pub fn delete_range(&mut self, tree: &'static str, start: impl Into<Bytes>, end: Option<Bytes>) {
        self.ops.push(Op::DeleteRange { tree, start: start.into(), end });
    }

    /// True when the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An owned key bound as the borrowed one [`Engine::range`] takes.
pub fn bound_slice(b: &Bound<Bytes>) -> Bound<&[u8]> {
    b.as_ref().map(Vec::as_slice)
}

/// Scan direction for [`Engine::range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Smallest key first.
    Ascending,
    /// Largest key first.
    Descending,
}

/// An embedded ordered key-value store with named keyspaces ("trees").
///
/// Contract, checked by the conformance suite for every engine:
/// - keys are ordered by their bytes;
/// - [`Engine::write`] applies a batch atomically: after a crash either all of
///   it is there or none of it; once `write` returns, reads see it;
/// - [`Engine::flush`] returns only when every earlier `write` is durable,
///   so one flush can serve many writes (group commit);
/// - trees that were never written read as empty.
pub trait Engine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Bytes>, StorageError>;

    /// Reads at most `limit` entries with keys inside `(start, end)`, in `order`.
    fn range(
        &self,
        tree: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StorageError>;

    /// Applies `batch` atomically (not necessarily durably: see [`Engine::flush`]).
    fn write(&self, batch: Batch) -> Result<(), StorageError>;

    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StorageError>;

    /// The engine's name, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Applies `batch` and makes it durable before returning.
    fn write_durable(&self, batch: Batch) -> Result<(), StorageError> {
        self.write(batch)?;
        self.flush()
    }

    /// The last entry of `tree` (largest key), if any.
    fn last(&self, tree: &'static str) -> Result<Option<(Bytes, Bytes)>, StorageError> {
        Ok(self.range(tree, Bound::Unbounded, Bound::Unbounded, Order::Descending, 1)?.pop())
    }
}

/// A shared handle to an engine.
pub type Store = Arc<dyn Engine>;

/// The page cache of a store opened with [`open`] (tests and tools).
const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Opens (creating when absent) the store at `path` with the chosen engine
/// and a 64 MiB page cache.
pub fn open(kind: EngineKind, path: &Path) -> Result<Store, StorageError> {
    open_cached(kind, path, DEFAULT_CACHE_BYTES)
}

/// Opens (creating when absent) the store at `path` with the chosen engine,
/// its page cache bounded by `cache_bytes`.
///
/// redb uses `path` as one file; sled as a directory.
pub fn open_cached(kind: EngineKind, path: &Path, cache_bytes: usize) -> Result<Store, StorageError> {
    let store: Store = match kind {
        EngineKind::Redb => Arc::new(RedbEngine::open(path, cache_bytes)?),
        EngineKind::Sled => Arc::new(SledEngine::open(path, cache_bytes)?),
    };
    if std::env::var_os(LOSE_UNFLUSHED_ENV).is_some() {
        tracing::warn!(path = %path.display(), "test mode: unflushed writes die with the process");
        return Ok(Arc::new(StagedEngine::new(store)));
    }
    Ok(store)
}
