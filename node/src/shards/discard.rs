//! Removing the copy of a shard a node no longer holds: its Raft log and
//! hard state, its snapshot files, its rooms' rows and its applied state.
//! Without this a node keeps every shard it ever held, and a node the shard
//! comes back to would reopen an old member's state.
//!
//! Crash-safe: a durable mark (tree `shard_discard`) is written first and
//! removed in the last batch; a mark found later (the host reads them when
//! it starts, and before it opens a shard) means the discard is finished
//! then. The decision to discard is the host's (see
//! [`super::host::ShardHost::retire`]); this module only carries it out.

use std::io;
use std::ops::Bound;
use std::path::Path;

use super::machine::SHARD_APPLIED;
use super::machine::drop_room;
use super::placement::ShardId;
use super::snapshot;
use crate::raft::Space;
use crate::raft::log_store::discard_space;
use crate::raft::types::io_err;
use crate::rooms::RoomLog;
use crate::storage::Batch;
use crate::storage::Order;
use crate::storage::Store;

/// Tree of discards decided and not finished: key shard, value empty.
const SHARD_DISCARD: &str = "shard_discard";

/// Records, durably, that shard `shard`'s copy here is to go.
pub fn mark(rooms: &Store, shard: ShardId) -> io::Result<()> {
    let mut batch = Batch::new();
    batch.put(SHARD_DISCARD, shard.to_be_bytes().to_vec(), Vec::new());
    rooms.write_durable(batch).map_err(io_err)
}

/// Whether a discard of `shard` was decided and not finished.
pub fn is_marked(rooms: &Store, shard: ShardId) -> io::Result<bool> {
    Ok(rooms.get(SHARD_DISCARD, &shard.to_be_bytes()).map_err(io_err)?.is_some())
}

/// Every shard with a discard decided and not finished.
pub fn marked(rooms: &Store) -> io::Result<Vec<ShardId>> {
    let rows =
        rooms.range(SHARD_DISCARD, Bound::Unbounded, Bound::Unbounded, Order::Ascending, usize::MAX).map_err(io_err)?;
    Ok(rows.iter().filter_map(|(k, _)| k.as_slice().try_into().ok().map(u32::from_be_bytes)).collect())
}

/// Carries out a marked discard; answers how many rooms' rows went. The
/// shard's group must not be open here, nor its state machine alive.
pub fn finish(raft: &Store, rooms: &Store, log: &RoomLog, snapshots: &Path, shard: ShardId) -> io::Result<usize> {
    discard_space(raft, &Space::shard(shard))?;
    snapshot::discard(rooms, shard, snapshots)?;
    let keys: Vec<u64> = snapshot::rooms_of(rooms, shard)?.into_iter().map(|(key, _)| key).collect();
    let mut batch = Batch::new();
    for key in &keys {
        // Files no room names any more go at the node's next start (sweep).
        drop_room(rooms, &mut batch, shard, *key)?;
    }
    batch.delete(SHARD_APPLIED, shard.to_be_bytes().to_vec());
    batch.delete(SHARD_DISCARD, shard.to_be_bytes().to_vec());
    rooms.write_durable(batch).map_err(io_err)?;
    for key in &keys {
        log.forget(*key);
    }
    Ok(keys.len())
}
