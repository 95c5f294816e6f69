//! Reading room logs, and the committed seq of each room kept in memory.
//!
//! A shard's state machine writes a room's messages and raises its committed
//! seq in one batch; every read is capped at the committed seq, so a page
//! never shows a message whose batch is still being written.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use super::record::COMMITTED;
use super::record::DEDUP;
use super::record::MESSAGES;
use super::record::Message;
use super::record::{self};
use super::seen::FILTER_BYTES;
use super::seen::SeenFilter;
use crate::storage::Order;
use crate::storage::StorageError;
use crate::storage::Store;

/// Read access to the room logs, shared by every request handler.
pub struct RoomLog {
    store: Store,
    /// Committed seq per room key. Only ever raised, so a reader that
    /// loaded an old value from the store can never lower it.
    last: RwLock<HashMap<u64, u64>>,
    /// Which dedup keys may be stored; trusted once filled
    /// ([`RoomLog::fill_seen`]), until then every lookup asks the store.
    seen: Arc<SeenFilter>,
}

impl RoomLog {
    /// Wraps the room-log store.
    pub fn new(store: Store) -> Self {
        Self { store, last: RwLock::new(HashMap::new()), seen: Arc::new(SeenFilter::new(FILTER_BYTES)) }
    }

    /// Starts filling the dedup filter from the store in the background.
    pub fn fill_seen(&self) -> std::io::Result<()> {
        super::seen::fill_in_background(self.seen.clone(), Arc::downgrade(&self.store))
    }

    /// The dedup filter, for the writers of dedup entries: each adds its
    /// key before writing it.
    pub(crate) fn seen(&self) -> &SeenFilter {
        &self.seen
    }

    /// The store, for the shards' state machines.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The highest committed seq of a room (0 when empty). A room not seen
    /// since start begins at the committed seq last persisted.
    pub fn last_seq(&self, room_key: u64) -> Result<u64, StorageError> {
        if let Some(seq) = self.last.read().get(&room_key) {
            return Ok(*seq);
        }
        let seq = match self.store.get(COMMITTED, &record::room_prefix(room_key))? {
            Some(v) => record::decode_seq(&v)?,
            None => 0,
        };
        self.raise(room_key, seq);
        Ok(seq)
    }

    /// The room's last seq as the store has it: its newest message, or
    /// the committed mark when its newest messages expired.
    pub fn stored_last(&self, room_key: u64) -> Result<u64, StorageError> {
        stored_last(&self.store, room_key)
    }

    /// Records that `seq` is committed in a room.
    pub(crate) fn raise(&self, room_key: u64, seq: u64) {
        let mut last = self.last.write();
        let entry = last.entry(room_key).or_insert(0);
        *entry = (*entry).max(seq);
    }

    /// Forgets a deleted room's cached seq.
    pub(crate) fn forget(&self, room_key: u64) {
        self.last.write().remove(&room_key);
    }

    /// Committed messages with seq > `after`, ascending, at most `limit`.
    pub fn after(&self, room_key: u64, after: u64, limit: usize) -> Result<Vec<Message>, StorageError> {
        let committed = self.last_seq(room_key)?;
        if after >= committed {
            return Ok(Vec::new());
        }
        let start = record::message_key(room_key, after + 1);
        let end = record::message_key(room_key, committed);
        self.scan(Bound::Included(&start[..]), Bound::Included(&end[..]), Order::Ascending, limit)
    }

    /// The newest `limit` committed messages with seq < `before`, ascending.
    pub fn before(&self, room_key: u64, before: u64, limit: usize) -> Result<Vec<Message>, StorageError> {
        let committed = self.last_seq(room_key)?;
        let start = record::message_key(room_key, 0);
        let end = record::message_key(room_key, before.min(committed.saturating_add(1)));
        let mut page = self.scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]), Order::Descending, limit)?;
        page.reverse();
        Ok(page)
    }

    /// The oldest message stored, if any.
    pub fn first_stored(&self, room_key: u64) -> Result<Option<Message>, StorageError> {
        let start = record::message_key(room_key, 0);
        let end = record::room_end(room_key);
        let mut first = self.scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]), Order::Ascending, 1)?;
        Ok(first.pop())
    }

    /// One stored message, committed or not.
    pub fn get_stored(&self, room_key: u64, seq: u64) -> Result<Option<Message>, StorageError> {
        match self.store.get(MESSAGES, &record::message_key(room_key, seq))? {
            Some(bytes) => Ok(Some(Message { seq, stored: record::decode(&bytes)? })),
            None => Ok(None),
        }
    }

    /// The seq already given to a dedup key ([`record::dedup_key`]), if any.
    pub fn deduped(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        if !self.seen.may_hold(key) {
            return Ok(None);
        }
        self.store.get(DEDUP, key)?.map(|v| record::decode_seq(&v)).transpose()
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Message>, StorageError> {
        let rows = self.store.range(MESSAGES, start, end, order, limit)?;
        rows.into_iter()
            .map(|(k, v)| {
                let (_, seq) = record::parse_message_key(&k)
                    .ok_or_else(|| StorageError::Corrupt { tree: MESSAGES, message: "short key".into() })?;
                Ok(Message { seq, stored: record::decode(&v)? })
            })
            .collect()
    }
}

/// The last seq of a room in `store`: its newest message, or the committed
/// mark, which outlives messages that expired (a seq must never be given
/// twice: not by this replica's state machine, nor by one that installs a
/// snapshot of it).
pub(crate) fn stored_last(store: &Store, room_key: u64) -> Result<u64, StorageError> {
    let start = record::message_key(room_key, 0);
    let end = record::room_end(room_key);
    let found = store.range(
        MESSAGES,
        Bound::Included(start.as_slice()),
        Bound::Excluded(end.as_slice()),
        Order::Descending,
        1,
    )?;
    let newest = match found.first() {
        Some((k, _)) => {
            record::parse_message_key(k)
                .ok_or_else(|| StorageError::Corrupt { tree: MESSAGES, message: "short key".into() })?
                .1
        }
        None => 0,
    };
    let committed = match store.get(COMMITTED, &record::room_prefix(room_key))? {
        Some(v) => record::decode_seq(&v)?,
        None => 0,
    };
    Ok(newest.max(committed))
}
