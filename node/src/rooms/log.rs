//! Reading room logs, and the last seq of each room kept in memory.

use std::collections::HashMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::record::DEDUP;
use super::record::MESSAGES;
use super::record::Message;
use super::record::{self};
use crate::storage::Order;
use crate::storage::StorageError;
use crate::storage::Store;

/// Read access to the room logs, shared by every request handler.
pub struct RoomLog {
    store: Store,
    /// Last committed seq per room key. Only ever raised, so a reader that
    /// loaded an old value from the store can never lower it.
    last: RwLock<HashMap<u64, u64>>,
}

impl RoomLog {
    /// Wraps the room-log store.
    pub fn new(store: Store) -> Self {
        Self { store, last: RwLock::new(HashMap::new()) }
    }

    /// The store, for the writer.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The highest committed seq of a room (0 when empty).
    pub fn last_seq(&self, room_key: u64) -> Result<u64, StorageError> {
        if let Some(seq) = self.last.read().get(&room_key) {
            return Ok(*seq);
        }
        let start = record::message_key(room_key, 0);
        let end = record::room_end(room_key);
        let found = self.store.range(
            MESSAGES,
            Bound::Included(start.as_slice()),
            Bound::Excluded(end.as_slice()),
            Order::Descending,
            1,
        )?;
        let seq = found.first().and_then(|(k, _)| record::parse_message_key(k)).map_or(0, |(_, s)| s);
        self.raise(room_key, seq);
        Ok(seq)
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

    /// Messages with seq > `after`, ascending, at most `limit`.
    pub fn after(&self, room_key: u64, after: u64, limit: usize) -> Result<Vec<Message>, StorageError> {
        let start = record::message_key(room_key, after.saturating_add(1));
        let end = record::room_end(room_key);
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        self.scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]), Order::Ascending, limit)
    }

    /// The newest `limit` messages with seq < `before`, ascending.
    pub fn before(&self, room_key: u64, before: u64, limit: usize) -> Result<Vec<Message>, StorageError> {
        let start = record::message_key(room_key, 0);
        let end = record::message_key(room_key, before);
        let mut page = self.scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]), Order::Descending, limit)?;
        page.reverse();
        Ok(page)
    }

    /// Messages `from..=to` (used to fill a gap between replay and live events).
    pub fn between(&self, room_key: u64, from: u64, to: u64) -> Result<Vec<Message>, StorageError> {
        if from > to {
            return Ok(Vec::new());
        }
        let start = record::message_key(room_key, from);
        let end = record::message_key(room_key, to);
        let limit = usize::try_from(to - from + 1).unwrap_or(usize::MAX);
        self.scan(Bound::Included(&start[..]), Bound::Included(&end[..]), Order::Ascending, limit)
    }

    /// One message.
    pub fn get(&self, room_key: u64, seq: u64) -> Result<Option<Message>, StorageError> {
        match self.store.get(MESSAGES, &record::message_key(room_key, seq))? {
            Some(bytes) => Ok(Some(Message { seq, stored: record::decode(&bytes)? })),
            None => Ok(None),
        }
    }

    /// The seq already given to (sender, client_id) in a room, if any.
    pub fn deduped(&self, room_key: u64, sender: &str, client_id: &str) -> Result<Option<u64>, StorageError> {
        self.store
            .get(DEDUP, &record::dedup_key(room_key, sender, client_id))?
            .map(|v| record::decode_seq(&v))
            .transpose()
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
