//! A shard's state machine: the room logs of the shard's rooms, applied from
//! its Raft log. Applying a [`ShardBatch`] assigns each new message the next
//! seq of its room (so seqs are gapless and equal on every replica), answers
//! a repeated (sender, client_id) with the original seq, and removes bodies.
//!
//! Storage: the node's room-log store, in the layout [`crate::rooms::RoomLog`]
//! reads (messages keyed by (room, seq), dedup entries, committed seqs), plus
//! tree `shard_rooms` (shard, room key → room id) and tree `shard_applied`
//! (shard → last applied log id and membership), written in one batch per
//! `apply` call. Those writes are not flushed: the Raft log is durable, so a
//! crash loses at most applies that are replayed from it on restart (the
//! applied mark is in the same atomic batch as what it covers).
//!
//! Snapshots are files ([`super::snapshot`]): fuzzy, taken while applies go
//! on, and consistent because every operation is idempotent when replayed
//! over a state that may already contain it.

use std::collections::HashMap;
use std::io;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::Stream;
use futures_util::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use parking_lot::Mutex;

use super::indexing;
use super::placement::ShardId;
use super::snapshot;
use super::snapshot::SnapshotFile;
use super::types::Entry;
use super::types::LogId;
use super::types::MAX_EXPIRE;
use super::types::OpResult;
use super::types::ShardBatch;
use super::types::ShardOp;
use super::types::ShardResults;
use super::types::ShardTypes;
use super::types::SnapshotMeta;
use super::types::StoredMembership;
use crate::raft::types::blocking;
use crate::raft::types::decode;
use crate::raft::types::encode;
use crate::raft::types::io_err;
use crate::rooms::Attached;
use crate::rooms::Message;
use crate::rooms::Published;
use crate::rooms::Publisher;
use crate::rooms::Reaction;
use crate::rooms::RoomLog;
use crate::rooms::StoredMessage;
use crate::rooms::attachments;
use crate::rooms::attachments::AttachmentId;
use crate::rooms::attachments::Sha;
use crate::rooms::attachments::StoredAttachment;
use crate::rooms::files::Files;
use crate::rooms::files::Wanted;
use crate::rooms::record;
use crate::search::Change;
use crate::search::SearchIndex;
use crate::storage::Batch;
use crate::storage::Order;
use crate::storage::Store;
use crate::storage::WriteThread;

/// Tree of the rooms each shard holds: key shard + room key, value room id.
pub(crate) const SHARD_ROOMS: &str = "shard_rooms";
/// Tree of each shard's applied state: key shard, value [`Applied`].
pub(crate) const SHARD_APPLIED: &str = "shard_applied";

/// The key of a room in [`SHARD_ROOMS`].
pub(crate) fn shard_room_key(shard: ShardId, room_key: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.to_be_bytes());
    k[4..].copy_from_slice(&room_key.to_be_bytes());
    k
}

/// What `shard_applied` keeps per shard.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Applied {
    /// The last applied log id.
    pub last: Option<LogId>,
    /// The membership as of it.
    pub membership: StoredMembership,
}

/// Held by a shard's state machine, and by the snapshot builds it started,
/// while they may still write: openraft does not wait for a stopped group's
/// state machine worker, which goes on applying what it was sent, so the
/// host opens the shard's next state machine only once every holder is gone
/// (two would number the same rooms' messages each from its own view).
pub type Lease = Arc<tokio::sync::OwnedMutexGuard<()>>;

/// Messages and dedup entries written by the apply under way, not yet in
/// the store.
#[derive(Default)]
struct Pending {
    messages: HashMap<(u64, u64), StoredMessage>,
    dedup: HashMap<Vec<u8>, u64>,
    /// Rooms dropped: their cached committed seqs go once the batch is written.
    dropped: Vec<u64>,
    /// What the search index is to change (when the node has one).
    index: Vec<Change>,
    /// Per room given messages: its id and last seq, written once per
    /// apply (committed seq, shard membership) rather than once per message.
    touched: HashMap<u64, (String, u64)>,
    /// Attachment rows written (`None`: dropped with their room) by this apply.
    attachments: HashMap<(u64, AttachmentId), Option<StoredAttachment>>,
    /// Contents recorded by this apply (room, sha, size): their files are
    /// no longer pinned, and are fetched when missing here.
    kept: Vec<(String, Sha, u64)>,
    /// Contents a row stopped naming: their files go unless named elsewhere.
    released: Vec<Sha>,
}

/// One shard's state machine on this node.
pub struct ShardStateMachine {
    shard: ShardId,
    store: Store,
    /// Writes `store` in one transaction with the other shards' applies.
    writer: WriteThread,
    log: Arc<RoomLog>,
    publish: Publisher,
    applied: Applied,
    /// Last seq per room of this shard (loaded from the store on first use).
    last: HashMap<u64, u64>,
    snapshots: PathBuf,
    /// The cluster's shard count, to refuse an operation on a room of
    /// another shard (two shards writing one room would split its seqs).
    shard_count: Option<u32>,
    /// The newest snapshot built or installed: its meta and file.
    current: Arc<Mutex<Option<(SnapshotMeta, PathBuf)>>>,
    /// This shard's one-writer lease, if the host gave one.
    lease: Option<Lease>,
    /// The node's search index, fed as the shard applies.
    index: Option<Arc<SearchIndex>>,
    /// The node's attachment files, if the host gave them.
    files: Option<Arc<Files>>,
}

impl std::fmt::Debug for ShardStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStateMachine").field("shard", &self.shard).field("applied", &self.applied.last).finish()
    }
}

impl ShardStateMachine {
    /// Opens shard `shard`'s state over the room-log store (`log` reads the
    /// same store); snapshots live in `snapshots`; committed messages and
    /// deletions go to `publish`. With `shard_count`, an operation on a room
    /// that is not this shard's is refused.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        shard: ShardId,
        shard_count: Option<u32>,
        store: Store,
        writer: WriteThread,
        log: Arc<RoomLog>,
        snapshots: PathBuf,
        publish: Publisher,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshots)?;
        snapshot::resume_install(&store, shard, &snapshots, log.seen())?;
        let applied = match store.get(SHARD_APPLIED, &shard.to_be_bytes()).map_err(io_err)? {
            Some(bytes) => decode(SHARD_APPLIED, &bytes)?,
            None => Applied::default(),
        };
        let current = snapshot::load_current(&store, shard, &snapshots)?;
        tracing::debug!(
            shard,
            applied = ?applied.last,
            snapshot = ?current.as_ref().map(|(meta, _)| meta.last_log_id),
            "state machine opened"
        );
        Ok(Self {
            shard,
            store,
            writer,
            log,
            publish,
            applied,
            last: HashMap::new(),
            snapshots,
            shard_count,
            current: Arc::new(Mutex::new(current)),
            lease: None,
            index: None,
            files: None,
        })
    }

    /// Feeds `index` from now on; the shard's part of it is made again from
    /// the room logs when it is not as far as this state machine.
    pub fn indexing(mut self, index: Arc<SearchIndex>) -> Self {
        let mark = indexing::mark(self.applied.last);
        if index.mark(self.shard).as_deref() != Some(mark.as_str()) {
            index.reindex(self.shard, mark, indexing::source(self.store.clone(), self.shard));
        }
        self.index = Some(index);
        self
    }

    /// Removes attachment files no room names any more, and unpins those
    /// recorded, as this shard applies; without, the files are left alone.
    pub fn with_files(mut self, files: Option<Arc<Files>>) -> Self {
        self.files = files;
        self
    }

    /// Holds `lease` for as long as this state machine, or a snapshot build
    /// it started, may write.
    pub fn holding(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    fn last_seq(&mut self, room_key: u64) -> io::Result<u64> {
        if let Some(seq) = self.last.get(&room_key) {
            return Ok(*seq);
        }
        let seq = self.log.stored_last(room_key).map_err(io_err)?;
        self.last.insert(room_key, seq);
        Ok(seq)
    }

    fn message(&self, pending: &Pending, room_key: u64, seq: u64) -> io::Result<Option<StoredMessage>> {
        if let Some(m) = pending.messages.get(&(room_key, seq)) {
            return Ok(Some(m.clone()));
        }
        // The store still holds what a drop in this apply removes.
        if pending.dropped.contains(&room_key) {
            return Ok(None);
        }
        Ok(self.log.get_stored(room_key, seq).map_err(io_err)?.map(|m| m.stored))
    }

    fn attachment(&self, pending: &Pending, room_key: u64, id: &AttachmentId) -> io::Result<Option<StoredAttachment>> {
        if let Some(row) = pending.attachments.get(&(room_key, *id)) {
            return Ok(row.clone());
        }
        if pending.dropped.contains(&room_key) {
            return Ok(None);
        }
        match self.store.get(attachments::ATTACHMENTS, &attachments::attachment_key(room_key, id)).map_err(io_err)? {
            Some(bytes) => Ok(Some(attachments::decode(&bytes).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    /// Writes an attachment row back (and keeps it for later ops of this apply).
    fn set_attachment(
        &self,
        room_key: u64,
        id: &AttachmentId,
        row: StoredAttachment,
        pending: &mut Pending,
        batch: &mut Batch,
    ) {
        let key = attachments::attachment_key(room_key, id).to_vec();
        batch.put(attachments::ATTACHMENTS, key, attachments::encode(&row));
        pending.attachments.insert((room_key, *id), Some(row));
    }

    /// Retires an attachment whose last carrier was deleted (message
    /// `seq`): its use of the content goes; the row stays as a tombstone.
    fn retire_attachment(
        &self,
        room_key: u64,
        id: &AttachmentId,
        mut row: StoredAttachment,
        seq: u64,
        pending: &mut Pending,
        batch: &mut Batch,
    ) {
        batch.delete(attachments::FILE_USES, attachments::use_key(&row.sha, room_key, id));
        pending.released.push(row.sha);
        row.retired_by = Some(seq);
        self.set_attachment(room_key, id, row, pending, batch);
    }

    /// Message `seq` no longer carries `attached` (deleted or expired): an
    /// attachment no other message carries is retired.
    fn release_attachments(
        &self,
        room_key: u64,
        seq: u64,
        attached: Vec<Attached>,
        pending: &mut Pending,
        batch: &mut Batch,
    ) -> io::Result<()> {
        for a in attached {
            let Some((_, id)) = attachments::parse_public_id(&a.id) else { continue };
            if let Some(mut row) = self.attachment(pending, room_key, &id)? {
                row.carriers.retain(|c| *c != seq);
                if row.carriers.is_empty() && row.live() {
                    self.retire_attachment(room_key, &id, row, seq, pending, batch);
                } else {
                    self.set_attachment(room_key, &id, row, pending, batch);
                }
            }
        }
        Ok(())
    }

    /// Makes a retired attachment live again (an upload of it again, or a
    /// replay of a send that carried it before it was retired).
    fn revive(
        &self,
        room_key: u64,
        id: &AttachmentId,
        row: &mut StoredAttachment,
        pending: &mut Pending,
        batch: &mut Batch,
    ) {
        if row.retired_by.take().is_some() {
            batch.put(attachments::FILE_USES, attachments::use_key(&row.sha, room_key, id), Vec::new());
            pending.kept.push((row.room.clone(), row.sha, row.size));
        }
    }

    /// Records an uploaded file in its room (again: nothing changes).
    fn attach(&mut self, op: &ShardOp, pending: &mut Pending, batch: &mut Batch) -> io::Result<OpResult> {
        let ShardOp::Attach { room_key, room, id, sha, name, mime, size, uploader } = op else {
            return Ok(OpResult::Nothing);
        };
        pending.kept.push((room.clone(), *sha, *size));
        if let Some(mut row) = self.attachment(pending, *room_key, id)? {
            if !row.live() {
                self.revive(*room_key, id, &mut row, pending, batch);
                self.set_attachment(*room_key, id, row, pending, batch);
            }
            return Ok(OpResult::Attached);
        }
        let row = StoredAttachment {
            sha: *sha,
            name: name.clone(),
            mime: mime.clone(),
            size: *size,
            uploader: uploader.clone(),
            room: room.clone(),
            carriers: Vec::new(),
            retired_by: None,
        };
        batch.put(
            attachments::ATTACHMENTS,
            attachments::attachment_key(*room_key, id).to_vec(),
            attachments::encode(&row),
        );
        batch.put(attachments::FILE_USES, attachments::use_key(sha, *room_key, id), Vec::new());
        pending.attachments.insert((*room_key, *id), Some(row));
        // Listed in the shard (so snapshots carry it) even with no message yet.
        let last = self.last_seq(*room_key)?;
        pending.touched.entry(*room_key).or_insert_with(|| (room.clone(), last));
        Ok(OpResult::Attached)
    }

    /// Stores a new message unless its (sender, client_id) was stored
    /// before, which answers the original.
    fn post(
        &mut self,
        ts: u64,
        p: Post<'_>,
        pending: &mut Pending,
        batch: &mut Batch,
        out: &mut Vec<Published>,
    ) -> io::Result<OpResult> {
        let room_key = p.room_key;
        let dedup = record::dedup_key(room_key, p.from, p.client_id);
        let seen = match pending.dedup.get(&dedup) {
            Some(seq) => Some(*seq),
            None if pending.dropped.contains(&room_key) => None,
            None => self.log.deduped(&dedup).map_err(io_err)?,
        };
        if let Some(seq) = seen {
            let ts = self.message(pending, room_key, seq)?.map_or(0, |m| m.ts);
            return Ok(OpResult::Duplicate { seq, ts });
        }
        let last = self.last_seq(room_key)?;
        if p.reply_to.is_some_and(|r| r == 0 || r > last) {
            return Ok(OpResult::NoSuchReply);
        }
        let seq = last + 1;
        let mut carried = Vec::with_capacity(p.attachments.len());
        for id in p.attachments {
            match self.attachment(pending, room_key, id)? {
                Some(row) if row.usable_by(seq) => carried.push((*id, row)),
                _ => return Ok(OpResult::NoSuchAttachment),
            }
        }
        let mut attached = Vec::with_capacity(carried.len());
        for (id, mut row) in carried {
            // Twice in one message: the row as this loop left it.
            if let Some(Some(now)) = pending.attachments.get(&(room_key, id)) {
                row = now.clone();
            }
            attached.push(Attached {
                id: attachments::public_id(p.room, &id),
                name: row.name.clone(),
                mime: row.mime.clone(),
                size: row.size,
            });
            self.revive(room_key, &id, &mut row, pending, batch);
            if !row.carriers.contains(&seq) {
                row.carriers.push(seq);
            }
            self.set_attachment(room_key, &id, row, pending, batch);
        }
        self.last.insert(room_key, seq);
        let stored = StoredMessage {
            from: p.from.to_string(),
            body: Some(p.body.to_string()),
            ts,
            client_id: p.client_id.to_string(),
            reply_to: p.reply_to,
            attachments: attached,
            ..StoredMessage::default()
        };
        batch.put(record::MESSAGES, record::message_key(room_key, seq).to_vec(), record::encode(&stored));
        // In the filter before the store: a lookup must never miss it.
        self.log.seen().insert(&dedup);
        batch.put(record::DEDUP, dedup.clone(), seq.to_be_bytes().to_vec());
        pending.touched.entry(room_key).and_modify(|t| t.1 = seq).or_insert_with(|| (p.room.to_string(), seq));
        pending.dedup.insert(dedup, seq);
        if self.index.is_some() {
            pending.index.push(Change::Put { room_key, seq, ts, body: p.body.to_string() });
        }
        pending.messages.insert((room_key, seq), stored.clone());
        out.push(Published::Message { room: p.room.into(), room_key, message: Message { seq, stored } });
        Ok(OpResult::Stored { seq, ts })
    }

    /// Removes the room's oldest stored messages while their `ts` is before
    /// `before_ts`, at most [`MAX_EXPIRE`]. Messages of this apply are
    /// newer than any retention, so the store holds every candidate.
    fn expire(
        &mut self,
        room_key: u64,
        before_ts: u64,
        pending: &mut Pending,
        batch: &mut Batch,
    ) -> io::Result<OpResult> {
        if pending.dropped.contains(&room_key) {
            return Ok(OpResult::Expired { count: 0, through_seq: 0 });
        }
        let (start, end) = (record::message_key(room_key, 0), record::room_end(room_key));
        let rows = self
            .store
            .range(
                record::MESSAGES,
                Bound::Included(&start[..]),
                Bound::Excluded(&end[..]),
                Order::Ascending,
                MAX_EXPIRE,
            )
            .map_err(io_err)?;
        let (mut count, mut through_seq) = (0, 0);
        for (key, value) in rows {
            let Some((_, seq)) = record::parse_message_key(&key) else { continue };
            // An edit or a deletion earlier in this apply is in `pending`.
            let stored = match pending.messages.get(&(room_key, seq)) {
                Some(m) => m.clone(),
                None => record::decode(&value).map_err(io_err)?,
            };
            if stored.ts >= before_ts {
                break;
            }
            self.release_attachments(room_key, seq, stored.attachments, pending, batch)?;
            batch.delete(record::MESSAGES, key);
            pending.messages.remove(&(room_key, seq));
            if self.index.is_some() {
                pending.index.push(Change::Remove { room_key, seq });
            }
            count += 1;
            through_seq = seq;
        }
        Ok(OpResult::Expired { count, through_seq })
    }

    /// Writes a changed message back (and keeps it for later ops of this apply).
    fn rewrite(&self, room_key: u64, seq: u64, stored: &StoredMessage, pending: &mut Pending, batch: &mut Batch) {
        batch.put(record::MESSAGES, record::message_key(room_key, seq).to_vec(), record::encode(stored));
        pending.messages.insert((room_key, seq), stored.clone());
    }

    fn apply_op(
        &mut self,
        ts: u64,
        op: &ShardOp,
        pending: &mut Pending,
        batch: &mut Batch,
        out: &mut Vec<Published>,
    ) -> io::Result<OpResult> {
        match op {
            ShardOp::Send { room_key, room, from, body, client_id } => {
                let post = Post { room_key: *room_key, room, from, body, client_id, reply_to: None, attachments: &[] };
                self.post(ts, post, pending, batch, out)
            }
            ShardOp::Post { room_key, room, from, body, client_id, reply_to } => {
                let post =
                    Post { room_key: *room_key, room, from, body, client_id, reply_to: *reply_to, attachments: &[] };
                self.post(ts, post, pending, batch, out)
            }
            ShardOp::PostWith { room_key, room, from, body, client_id, reply_to, attachments } => {
                let post = Post { room_key: *room_key, room, from, body, client_id, reply_to: *reply_to, attachments };
                self.post(ts, post, pending, batch, out)
            }
            ShardOp::Attach { .. } => self.attach(op, pending, batch),
            ShardOp::Edit { room_key, room, seq, actor, body } => {
                let Some(mut stored) = self.message(pending, *room_key, *seq)? else {
                    return Ok(OpResult::NotFound);
                };
                if stored.from != *actor {
                    return Ok(OpResult::Forbidden);
                }
                let Some(old_body) = stored.body.replace(body.clone()) else {
                    return Ok(OpResult::NotFound);
                };
                stored.edited_at = Some(ts);
                self.rewrite(*room_key, *seq, &stored, pending, batch);
                if self.index.is_some() {
                    pending.index.push(Change::Edit {
                        room_key: *room_key,
                        seq: *seq,
                        ts: stored.ts,
                        body: body.clone(),
                    });
                }
                out.push(Published::Edited {
                    room: room.as_str().into(),
                    room_key: *room_key,
                    seq: *seq,
                    body: body.clone(),
                    edited_at: ts,
                });
                Ok(OpResult::Edited { message: Box::new(Message { seq: *seq, stored }), old_body })
            }
            ShardOp::React { room_key, room, seq, actor, emoji, on } => {
                let Some(mut stored) = self.message(pending, *room_key, *seq)? else {
                    return Ok(OpResult::NotFound);
                };
                if stored.body.is_none() {
                    return Ok(OpResult::NotFound);
                }
                match react(&mut stored.reactions, emoji, actor, *on) {
                    Reacted::Unchanged => return Ok(OpResult::Reacted { changed: false }),
                    Reacted::Full => return Ok(OpResult::TooManyReactions),
                    Reacted::Changed => {}
                }
                self.rewrite(*room_key, *seq, &stored, pending, batch);
                out.push(Published::Reaction {
                    room: room.as_str().into(),
                    room_key: *room_key,
                    seq: *seq,
                    emoji: emoji.clone(),
                    username: actor.clone(),
                    on: *on,
                });
                Ok(OpResult::Reacted { changed: true })
            }
            ShardOp::Delete { room_key, room, seq, actor, moderator } => {
                let Some(mut stored) = self.message(pending, *room_key, *seq)? else {
                    return Ok(OpResult::NotFound);
                };
                if stored.from != *actor && !moderator {
                    return Ok(OpResult::Forbidden);
                }
                if stored.body.is_some() {
                    stored.body = None;
                    stored.reactions.clear();
                    self.release_attachments(*room_key, *seq, std::mem::take(&mut stored.attachments), pending, batch)?;
                    self.rewrite(*room_key, *seq, &stored, pending, batch);
                    if self.index.is_some() {
                        pending.index.push(Change::Remove { room_key: *room_key, seq: *seq });
                    }
                    out.push(Published::Deleted { room: room.as_str().into(), room_key: *room_key, seq: *seq });
                }
                Ok(OpResult::Deleted { sender: stored.from })
            }
            ShardOp::Expire { room_key, before_ts, .. } => self.expire(*room_key, *before_ts, pending, batch),
            ShardOp::Drop { room_key } => {
                pending.released.extend(drop_room(&self.store, batch, self.shard, *room_key)?);
                for ((r, id), row) in &pending.attachments {
                    if let (true, Some(row)) = (r == room_key, row) {
                        batch.delete(attachments::FILE_USES, attachments::use_key(&row.sha, *r, id));
                        pending.released.push(row.sha);
                    }
                }
                pending.attachments.retain(|(r, _), _| r != room_key);
                // Not reloaded from the store, which keeps the old rows
                // until this apply's batch is written.
                self.last.insert(*room_key, 0);
                pending.messages.retain(|(r, _), _| r != room_key);
                pending.dedup.retain(|k, _| !k.starts_with(&record::room_prefix(*room_key)));
                pending.dropped.push(*room_key);
                pending.touched.remove(room_key);
                if self.index.is_some() {
                    pending.index.push(Change::DropRoom { room_key: *room_key });
                }
                Ok(OpResult::Dropped)
            }
        }
    }

    fn apply_batch(
        &mut self,
        b: &ShardBatch,
        pending: &mut Pending,
        batch: &mut Batch,
        out: &mut Vec<Published>,
    ) -> io::Result<ShardResults> {
        if b.shard != self.shard {
            tracing::error!(shard = self.shard, entry_shard = b.shard, "a shard log holds another shard's entry");
            return Ok(ShardResults(vec![OpResult::Nothing; b.ops.len()]));
        }
        let mut results = Vec::with_capacity(b.ops.len());
        for op in &b.ops {
            if let (Some(room), Some(count)) = (op.room(), self.shard_count)
                && super::placement::shard_of(room, count) != self.shard
            {
                tracing::error!(shard = self.shard, room, "an operation on another shard's room: refused");
                results.push(OpResult::Nothing);
                continue;
            }
            results.push(self.apply_op(b.ts, op, pending, batch, out)?);
        }
        Ok(ShardResults(results))
    }
}

impl ShardStateMachine {
    /// Applies entries in order, writes what they did in one batch, raises
    /// the rooms' committed seqs and publishes the events; answers each
    /// entry's results.
    pub(crate) async fn apply_entries(&mut self, entries: Vec<Entry>) -> io::Result<Vec<ShardResults>> {
        let mut pending = Pending::default();
        let mut batch = Batch::new();
        let mut published = Vec::new();
        let mut answers = Vec::with_capacity(entries.len());
        for entry in entries {
            let results = match &entry.payload {
                EntryPayload::Normal(b) => self.apply_batch(b, &mut pending, &mut batch, &mut published)?,
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    ShardResults::default()
                }
                EntryPayload::Blank => ShardResults::default(),
            };
            tracing::debug!(shard = self.shard, log_id = %entry.log_id, ?results, "applied");
            self.applied.last = Some(entry.log_id);
            answers.push(results);
        }
        // After every op of the batch, so a room dropped and given messages
        // again within it ends up listed.
        for (room_key, (room, seq)) in pending.touched.drain() {
            batch.put(record::COMMITTED, record::room_prefix(room_key).to_vec(), seq.to_be_bytes().to_vec());
            batch.put(SHARD_ROOMS, shard_room_key(self.shard, room_key).to_vec(), room.into_bytes());
        }
        batch.put(SHARD_APPLIED, self.shard.to_be_bytes().to_vec(), encode("shard applied state", &self.applied)?);
        self.writer.write(batch).await?;
        for room_key in pending.dropped {
            self.log.forget(room_key);
        }
        if let Some(index) = &self.index {
            let store = self.store.clone();
            let shard = self.shard;
            index.apply(shard, pending.index, indexing::mark(self.applied.last), || indexing::source(store, shard));
        }
        if let Some(files) = &self.files {
            for (room, sha, size) in pending.kept {
                files.unpin(&sha);
                files.want(Wanted { room, sha, size });
            }
            if !pending.released.is_empty() {
                let (files, store, released) = (files.clone(), self.store.clone(), pending.released);
                tokio::task::spawn_blocking(move || files.collect(&store, &released));
            }
        }
        // Visible in the store now: readers may see it, and the events go out.
        for p in published {
            if let Published::Message { room_key, message, .. } = &p {
                self.log.raise(*room_key, message.seq);
            }
            (self.publish)(p);
        }
        Ok(answers)
    }
}

impl ShardStateMachine {
    /// Asks for the files the rows of these rooms name that this node lacks
    /// (rows that came with a snapshot come without their files).
    fn want_files(&self, files: &Files, rooms: &[(u64, String, u64)]) -> io::Result<()> {
        for (room_key, room, _) in rooms {
            let rows = attachments::room_rows(&self.store, *room_key).map_err(io_err)?;
            for (_, value) in rows {
                if let Ok(row) = attachments::decode(&value)
                    && row.live()
                {
                    files.want(Wanted { room: room.clone(), sha: row.sha, size: row.size });
                }
            }
        }
        Ok(())
    }
}

/// A message to store, as a `Send` or a `Post` names it.
struct Post<'a> {
    room_key: u64,
    room: &'a str,
    from: &'a str,
    body: &'a str,
    client_id: &'a str,
    reply_to: Option<u64>,
    attachments: &'a [AttachmentId],
}

/// Distinct emoji a message may carry.
pub const MAX_REACTIONS: usize = 20;

/// What [`react`] did.
#[derive(Debug, PartialEq, Eq)]
enum Reacted {
    Changed,
    Unchanged,
    /// A new emoji, and the message has [`MAX_REACTIONS`] already.
    Full,
}

/// Adds `user` to `emoji`'s reactors (`on`) or takes them off; an emoji
/// nobody chooses any more goes.
fn react(reactions: &mut Vec<Reaction>, emoji: &str, user: &str, on: bool) -> Reacted {
    let at = reactions.iter().position(|r| r.emoji == emoji);
    match (at, on) {
        (Some(i), true) if reactions[i].users.iter().any(|u| u == user) => Reacted::Unchanged,
        (Some(i), true) => {
            reactions[i].users.push(user.to_string());
            Reacted::Changed
        }
        (None, true) if reactions.len() >= MAX_REACTIONS => Reacted::Full,
        (None, true) => {
            reactions.push(Reaction { emoji: emoji.to_string(), users: vec![user.to_string()] });
            Reacted::Changed
        }
        (Some(i), false) => {
            let before = reactions[i].users.len();
            reactions[i].users.retain(|u| u != user);
            let changed = reactions[i].users.len() != before;
            if reactions[i].users.is_empty() {
                reactions.remove(i);
            }
            if changed { Reacted::Changed } else { Reacted::Unchanged }
        }
        (None, false) => Reacted::Unchanged,
    }
}

/// Adds to `batch` the removal of a room's log, its attachments and its
/// place in the shard; answers the contents its attachments named (as
/// `store` holds them).
pub(crate) fn drop_room(store: &Store, batch: &mut Batch, shard: ShardId, room_key: u64) -> io::Result<Vec<Sha>> {
    let (start, end) = (record::room_prefix(room_key).to_vec(), record::room_end(room_key).to_vec());
    let rows = attachments::room_rows(store, room_key).map_err(io_err)?;
    let mut released = Vec::with_capacity(rows.len());
    for (key, value) in rows {
        let (Some((_, id)), Ok(row)) = (attachments::parse_attachment_key(&key), attachments::decode(&value)) else {
            continue;
        };
        batch.delete(attachments::FILE_USES, attachments::use_key(&row.sha, room_key, &id));
        released.push(row.sha);
    }
    batch.delete_range(attachments::ATTACHMENTS, start.clone(), Some(end.clone()));
    batch.delete_range(record::MESSAGES, start.clone(), Some(end.clone()));
    batch.delete_range(record::DEDUP, start.clone(), Some(end));
    batch.delete(record::COMMITTED, start);
    batch.delete(SHARD_ROOMS, shard_room_key(shard, room_key).to_vec());
    Ok(released)
}

impl RaftStateMachine<ShardTypes> for ShardStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = snapshot::Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied.last, self.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<ShardTypes>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        let results = self.apply_entries(batch).await?;
        // Every entry is answered, blank and membership ones too, or
        // `client_write` would never return.
        for (responder, results) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(results);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let meta = SnapshotMeta { last_log_id: self.applied.last, last_membership: self.applied.membership.clone() };
        let current = self.current.clone();
        snapshot::Builder::new(
            self.shard,
            self.store.clone(),
            self.snapshots.clone(),
            meta,
            current,
            self.lease.clone(),
        )
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let (store, log) = (self.store.clone(), self.log.clone());
        let (shard, dir, file_meta) = (self.shard, self.snapshots.clone(), meta.clone());
        let rooms = blocking(move || snapshot::install(&store, shard, &dir, &file_meta, snapshot, log.seen())).await?;
        tracing::debug!(
            shard = self.shard,
            last_log_id = ?meta.last_log_id,
            rooms = ?rooms.iter().map(|(_, room, last)| (room.as_str(), *last)).collect::<Vec<_>>(),
            "snapshot installed"
        );
        self.applied = Applied { last: meta.last_log_id, membership: meta.last_membership.clone() };
        self.last.clear();
        if let Some(index) = &self.index {
            let source = indexing::source(self.store.clone(), self.shard);
            index.reindex(self.shard, indexing::mark(self.applied.last), source);
        }
        *self.current.lock() = snapshot::load_current(&self.store, self.shard, &self.snapshots)?;
        if let Some(files) = &self.files {
            self.want_files(files, &rooms)?;
        }
        // Local subscribers learn of what arrived by a live event past
        // their cursor: their delivery fills the gap from the store.
        for (room_key, room, last) in rooms {
            self.log.raise(room_key, last);
            if let Some(message) = self.log.get_stored(room_key, last).map_err(io_err)? {
                (self.publish)(Published::Message { room: room.into(), room_key, message });
            }
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::type_config::alias::SnapshotOf<ShardTypes, SnapshotFile>>, io::Error> {
        let current = self.current.lock().clone();
        match current {
            Some((meta, path)) => Ok(Some(openraft::type_config::alias::SnapshotOf::<ShardTypes, SnapshotFile> {
                meta,
                snapshot: SnapshotFile::open(path)?,
            })),
            None => Ok(None),
        }
    }
}

impl RaftSnapshotBuilder<ShardTypes> for snapshot::Builder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::type_config::alias::SnapshotOf<ShardTypes, SnapshotFile>, io::Error> {
        let builder = self.take()?;
        blocking(move || builder.build()).await
    }
}
