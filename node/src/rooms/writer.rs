//! The room-log writer: one thread that takes sends and deletes from every
//! room, groups whatever is waiting into one atomic batch and one durable
//! flush, and only then answers and publishes. Under load a flush serves
//! many messages; alone, a send waits for exactly one flush.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::log::RoomLog;
use super::record::COMMITTED;
use super::record::DEDUP;
use super::record::MESSAGES;
use super::record::Message;
use super::record::StoredMessage;
use super::record::{self};
use super::seq::Accept;
use super::seq::Assignment;
use super::seq::Sequencer;
use crate::clock::now_ms;
use crate::storage::Batch;
use crate::storage::StorageError;

/// Requests waiting beyond this many make senders wait (backpressure).
const QUEUE: usize = 16_384;
/// Most requests in one batch.
const MAX_BATCH: usize = 2_048;

/// The room a request is for, as the metadata describes it.
#[derive(Debug, Clone)]
pub struct RoomRef {
    /// Room log key.
    pub key: u64,
    /// Room id, for events.
    pub id: Arc<str>,
    /// Owner epoch the message is written under.
    pub epoch: u64,
    /// The node that owns the room's log.
    pub owner: u64,
}

/// The answer to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Appended {
    /// The message's seq.
    pub seq: u64,
    /// When it was accepted.
    pub ts: u64,
    /// The (sender, client_id) was seen before; nothing new was stored.
    pub duplicate: bool,
}

/// What was committed, for fan-out.
#[derive(Debug, Clone)]
pub enum Published {
    /// A new message.
    Message {
        /// Room id.
        room: Arc<str>,
        /// Room log key.
        room_key: u64,
        /// The message.
        message: Message,
    },
    /// A message lost its body.
    Deleted {
        /// Room id.
        room: Arc<str>,
        /// Room log key.
        room_key: u64,
        /// Its seq.
        seq: u64,
    },
}

/// Why a write was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The store failed; nothing of the batch was kept.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The writer has stopped (the node is shutting down).
    #[error("the room log writer has stopped")]
    Stopped,
    /// No message with that seq.
    #[error("no such message")]
    NotFound,
    /// The actor may not delete that message.
    #[error("only the sender or a moderator may delete a message")]
    Forbidden,
    /// Replicated records skip ahead of what this node has stored.
    #[error("room {room_key} has only up to seq {have} here")]
    Gap {
        /// The room.
        room_key: u64,
        /// Its last stored seq here.
        have: u64,
    },
    /// Not enough nodes stored the batch in time.
    #[error("not enough nodes confirmed the write in time")]
    NotReplicated,
    /// The room moved to another owner (or epoch) meanwhile.
    #[error("the room moved to another node; retry")]
    Moved,
    /// This node's uncommitted records of a room came from an owner older
    /// than the one now sending: they must go before anything is stored.
    #[error("room {room_key} holds records here from an owner older than epoch {epoch}")]
    StaleTail {
        /// The room.
        room_key: u64,
        /// The sending owner's epoch.
        epoch: u64,
    },
}

impl From<StorageError> for WriteError {
    fn from(e: StorageError) -> Self {
        WriteError::Storage(e.to_string())
    }
}

enum Request {
    Append {
        room: RoomRef,
        from: String,
        body: String,
        client_id: String,
        reply: oneshot::Sender<Result<Appended, WriteError>>,
    },
    Delete {
        room: RoomRef,
        seq: u64,
        actor: String,
        moderator: bool,
        reply: oneshot::Sender<Result<String, WriteError>>,
    },
    Replicated {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    Purge {
        room_key: u64,
    },
    Committed {
        rooms: Vec<(u64, u64)>,
    },
    Reload {
        room_key: u64,
        done: oneshot::Sender<()>,
    },
    Fence {
        room_key: u64,
        epoch: u64,
    },
    DropTail {
        room_key: u64,
        older_than: u64,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    Restamp {
        room: RoomRef,
        from: u64,
        to: u64,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
}

/// One message record as the owner wrote it, to be stored as-is by replicas
/// (a new message, or a rewrite such as a deletion).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Room log key.
    pub room_key: u64,
    /// Room id, for events.
    pub room: String,
    /// The message's seq.
    pub seq: u64,
    /// The stored fields.
    pub stored: StoredMessage,
    /// True for a new message, false for a rewrite of an existing one.
    pub new: bool,
}

/// Hands requests to the writer thread.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Request>,
}

/// Receives everything committed, in commit order.
pub type Publisher = Arc<dyn Fn(Published) + Send + Sync>;

/// Decides when a flushed batch is committed: at once on a single node (or
/// with the `local` ack policy), after a majority of nodes stored it in a
/// cluster.
pub trait FlushSink: Send + Sync + 'static {
    /// A batch is durable on this node.
    fn flushed(&self, batch: FlushedBatch);

    /// Whether every batch commits as soon as it is flushed (then the
    /// committed seqs are written in the same batch as the messages).
    fn commits_at_once(&self) -> bool {
        false
    }
}

/// Commits every batch as soon as it is durable here.
pub struct CommitAtOnce {
    /// Where committed events go.
    pub log: Arc<RoomLog>,
    /// Fan-out.
    pub publish: Publisher,
}

impl FlushSink for CommitAtOnce {
    fn flushed(&self, batch: FlushedBatch) {
        batch.commit(&self.log, &self.publish);
    }

    fn commits_at_once(&self) -> bool {
        true
    }
}

/// A batch that is durable on this node and waits to be committed.
pub struct FlushedBatch {
    /// What replicas must store, in order.
    pub records: Vec<Record>,
    replies: Vec<Pending>,
    published: Vec<Published>,
    raised: HashMap<u64, (Arc<str>, u64, u64)>,
}

impl FlushedBatch {
    /// Whether there is anything to replicate.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Makes the batch visible: raises each room's committed seq, publishes,
    /// answers the senders.
    pub fn commit(self, log: &RoomLog, publish: &Publisher) {
        for (room_key, (_, seq, _)) in &self.raised {
            log.raise(*room_key, *seq);
        }
        metrics::counter!("palaver_messages_committed_total").increment(self.published.len() as u64);
        for p in self.published {
            publish(p);
        }
        for p in self.replies {
            match p {
                Pending::Append { reply, result, room_key } => {
                    // A retry found a seq this node stored but that is not
                    // committed (still in flight, or a stale tail that a new
                    // owner will replace): it is no answer yet.
                    let committed = log.last_seq(room_key).unwrap_or(0);
                    if result.duplicate && result.seq > committed {
                        let _ = reply.send(Err(WriteError::NotReplicated));
                    } else {
                        let _ = reply.send(Ok(result));
                    }
                }
                Pending::Delete { reply, result } => {
                    let _ = reply.send(result);
                }
                Pending::Replicated { reply } | Pending::Restamped { reply } => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// Answers the batch's requests with `err` now; the batch itself stays
    /// and may still commit (a retry with the same client_id then finds it).
    pub fn fail_replies(&mut self, err: &WriteError) {
        for p in self.replies.drain(..) {
            match p {
                Pending::Append { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Pending::Delete { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Pending::Replicated { reply } | Pending::Restamped { reply } => {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// The epoch each room of the batch was written under: (key, epoch).
    pub fn epochs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.records.iter().map(|r| (r.room_key, r.stored.epoch))
    }

    /// The rooms whose committed seq this batch raises: (key, id, seq, epoch).
    pub fn raised_rooms(&self) -> impl Iterator<Item = (u64, String, u64, u64)> + '_ {
        self.raised.iter().map(|(k, (room, seq, epoch))| (*k, room.to_string(), *seq, *epoch))
    }

    /// Answers every request of the batch with `err` (it may still commit
    /// later; a retry with the same client_id then finds it).
    pub fn fail(mut self, err: WriteError) {
        self.fail_replies(&err);
    }
}

impl LogWriter {
    /// Starts the writer thread over `log`; `sink` decides when flushed
    /// batches commit.
    pub fn start(log: Arc<RoomLog>, sink: Arc<dyn FlushSink>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new().name("room-log-writer".into()).spawn(move || run(rx, &log, &*sink))?;
        Ok(Self { tx })
    }

    /// Appends a message (or finds it already there); answers after the commit.
    pub async fn append(
        &self,
        room: RoomRef,
        from: String,
        body: String,
        client_id: String,
    ) -> Result<Appended, WriteError> {
        self.submit_append(room, from, body, client_id).await?.await
    }

    /// Queues an append and returns the wait for its answer. Queuing is
    /// ordered: two submits from one task are written in that order.
    pub async fn submit_append(
        &self,
        room: RoomRef,
        from: String,
        body: String,
        client_id: String,
    ) -> Result<impl Future<Output = Result<Appended, WriteError>> + Send + 'static, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request::Append { room, from, body, client_id, reply }).await.map_err(|_| WriteError::Stopped)?;
        Ok(async move { answer.await.map_err(|_| WriteError::Stopped)? })
    }

    /// Removes a message's body; answers the message's sender.
    pub async fn delete(&self, room: RoomRef, seq: u64, actor: String, moderator: bool) -> Result<String, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request::Delete { room, seq, actor, moderator, reply }).await.map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Stores records an owner sent (replica side); answers once durable.
    /// New records must continue each room's log: a record past a gap is
    /// refused with [`WriteError::Gap`], and one already stored is skipped.
    pub async fn store_replicated(&self, records: Vec<Record>) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request::Replicated { records, reply }).await.map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Records rooms' committed seqs with the next batch, without waiting:
    /// if the writer's queue is full they are skipped (they are a lower
    /// bound; an owner recovers the rest from its peers).
    pub fn persist_committed_now(&self, rooms: Vec<(u64, u64)>) {
        let _ = self.tx.try_send(Request::Committed { rooms });
    }

    /// Records rooms' committed seqs (written with the next batch).
    pub async fn persist_committed(&self, rooms: Vec<(u64, u64)>) {
        // A stopped writer means the node is going down; the committed seqs
        // are recovered from the peers on the next start.
        let _ = self.tx.send(Request::Committed { rooms }).await;
    }

    /// Forgets what the writer knows of a room's seq, so the next write
    /// reads it from the store again (after this node took the room over).
    pub async fn reload(&self, room_key: u64) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Request::Reload { room_key, done }).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Refuses from now on appends to a room under an epoch older than
    /// `epoch` (the room moved, or moved here with a new epoch).
    pub async fn fence(&self, room_key: u64, epoch: u64) {
        let _ = self.tx.send(Request::Fence { room_key, epoch }).await;
    }

    /// Drops this node's uncommitted records of a room from the first one
    /// written under an epoch older than `older_than` (`u64::MAX`: all of
    /// them): a newer owner's log replaces them.
    pub async fn drop_tail(&self, room_key: u64, older_than: u64) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request::DropTail { room_key, older_than, reply }).await.map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Rewrites records `from..=to` of a room this node now owns under the
    /// room's new epoch and replicates them like new ones; answers once a
    /// majority stored them and they are committed. A recovering owner does
    /// this with the tail it adopted, so that what it commits is its own
    /// epoch's writing (Raft's rule: an owner only commits by counting
    /// copies of its own epoch's records).
    pub async fn restamp(&self, room: RoomRef, from: u64, to: u64) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request::Restamp { room, from, to, reply }).await.map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Drops a deleted room's messages.
    pub async fn purge(&self, room_key: u64) {
        // A stopped writer means the node is going down; the purge is redone
        // by nothing, but the room's key is never reused, so the rows are
        // only dead weight.
        let _ = self.tx.send(Request::Purge { room_key }).await;
    }
}

enum Pending {
    Append { reply: oneshot::Sender<Result<Appended, WriteError>>, result: Appended, room_key: u64 },
    Delete { reply: oneshot::Sender<Result<String, WriteError>>, result: Result<String, WriteError> },
    Replicated { reply: oneshot::Sender<Result<(), WriteError>> },
    Restamped { reply: oneshot::Sender<Result<(), WriteError>> },
}

fn run(mut rx: mpsc::Receiver<Request>, log: &RoomLog, sink: &dyn FlushSink) {
    let mut seqs = Sequencer::default();
    let mut batch_requests = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch_requests.push(first);
        while batch_requests.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch_requests.push(r),
                Err(_) => break,
            }
        }
        write_batch(batch_requests.drain(..), log, &mut seqs, sink);
    }
    tracing::debug!("room log writer stopped");
}

fn write_batch(requests: impl Iterator<Item = Request>, log: &RoomLog, seqs: &mut Sequencer, sink: &dyn FlushSink) {
    let now = now_ms();
    let mut batch = Batch::new();
    let mut pending = Vec::new();
    let mut published = Vec::new();
    let mut records = Vec::new();
    let mut raised: HashMap<u64, (Arc<str>, u64, u64)> = HashMap::new();
    // ts of messages new in this batch, for duplicates within it.
    let mut batch_ts: HashMap<(u64, u64), u64> = HashMap::new();
    // Dropped tails go first, so they see the store as the writer does. A
    // newer owner's records go next: they raise the rooms' epoch fences, so
    // a local append under an older epoch in the same batch is refused
    // instead of taking the seq the new owner already gave out.
    let (drops, others): (Vec<Request>, Vec<Request>) = requests.partition(|r| matches!(r, Request::DropTail { .. }));
    let (first, rest): (Vec<Request>, Vec<Request>) =
        others.into_iter().partition(|r| matches!(r, Request::Replicated { .. } | Request::Fence { .. }));
    // Committed seqs are a lower bound (a restart recovers the rest from
    // the peers), so a batch of nothing else needs no fsync of its own: the
    // next durable batch carries it to disk.
    let durable = drops
        .iter()
        .chain(&first)
        .chain(&rest)
        .any(|r| !matches!(r, Request::Committed { .. } | Request::Fence { .. } | Request::Reload { .. }));
    for req in drops.into_iter().chain(first).chain(rest) {
        match req {
            Request::Append { room, from, body, client_id, reply } => {
                match plan_append(log, seqs, &room, &from, &client_id) {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok(Assignment::Duplicate(seq)) => {
                        let ts = match batch_ts.get(&(room.key, seq)) {
                            Some(ts) => *ts,
                            None => log.get_stored(room.key, seq).ok().flatten().map_or(now, |m| m.stored.ts),
                        };
                        pending.push(Pending::Append {
                            reply,
                            result: Appended { seq, ts, duplicate: true },
                            room_key: room.key,
                        });
                    }
                    Ok(Assignment::New(seq)) => {
                        let stored = StoredMessage { from, body: Some(body), ts: now, client_id, epoch: room.epoch };
                        put_record(&mut batch, room.key, seq, &stored, true);
                        batch_ts.insert((room.key, seq), now);
                        raised.insert(room.key, (room.id.clone(), seq, room.epoch));
                        pending.push(Pending::Append {
                            reply,
                            result: Appended { seq, ts: now, duplicate: false },
                            room_key: room.key,
                        });
                        records.push(Record {
                            room_key: room.key,
                            room: room.id.to_string(),
                            seq,
                            stored: stored.clone(),
                            new: true,
                        });
                        published.push(Published::Message {
                            room: room.id,
                            room_key: room.key,
                            message: Message { seq, stored },
                        });
                    }
                }
            }
            Request::Delete { room, seq, actor, moderator, reply } => {
                let result = plan_delete(log, &room, seq, &actor, moderator, &mut batch);
                if let Ok((_, Some(stored))) = &result {
                    records.push(Record {
                        room_key: room.key,
                        room: room.id.to_string(),
                        seq,
                        stored: stored.clone(),
                        new: false,
                    });
                    published.push(Published::Deleted { room: room.id.clone(), room_key: room.key, seq });
                }
                pending.push(Pending::Delete { reply, result: result.map(|(sender, _)| sender) });
            }
            Request::Replicated { records: incoming, reply } => {
                match plan_replicated(log, seqs, &incoming, &mut batch) {
                    Ok(()) => pending.push(Pending::Replicated { reply }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::Committed { rooms } => {
                for (room_key, seq) in rooms {
                    batch.put(COMMITTED, record::room_prefix(room_key).to_vec(), seq.to_be_bytes().to_vec());
                }
            }
            Request::Reload { room_key, done } => {
                seqs.forget(room_key);
                let _ = done.send(());
            }
            Request::Fence { room_key, epoch } => seqs.fence(room_key, epoch),
            Request::DropTail { room_key, older_than, reply } => {
                match plan_drop_tail(log, seqs, room_key, older_than, &mut batch) {
                    Ok(()) => pending.push(Pending::Replicated { reply }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::Restamp { room, from, to, reply } => match plan_restamp(log, &room, from, to, &mut batch) {
                Ok(messages) => {
                    for message in messages {
                        records.push(Record {
                            room_key: room.key,
                            room: room.id.to_string(),
                            seq: message.seq,
                            stored: message.stored.clone(),
                            new: true,
                        });
                        published.push(Published::Message { room: room.id.clone(), room_key: room.key, message });
                    }
                    raised.insert(room.key, (room.id.clone(), to, room.epoch));
                    pending.push(Pending::Restamped { reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::Purge { room_key } => {
                let start = record::room_prefix(room_key).to_vec();
                let end = Some(record::room_end(room_key).to_vec());
                batch.delete_range(MESSAGES, start.clone(), end.clone());
                batch.delete_range(DEDUP, start, end);
                batch.delete(COMMITTED, record::room_prefix(room_key).to_vec());
                seqs.forget(room_key);
                log.forget(room_key);
            }
        }
    }
    if sink.commits_at_once() {
        for (room_key, (_, seq, _)) in &raised {
            batch.put(COMMITTED, record::room_prefix(*room_key).to_vec(), seq.to_be_bytes().to_vec());
        }
    }
    let flushed = FlushedBatch { records, replies: pending, published, raised };
    let stored = match (batch.is_empty(), durable) {
        (true, _) => Ok(()),
        (false, true) => log.store().write_durable(batch),
        (false, false) => log.store().write(batch),
    };
    match stored {
        Ok(()) => {
            seqs.commit();
            metrics::counter!("palaver_room_log_flushes_total").increment(1);
            let mut flushed = flushed;
            // A replica's store is answered once durable here: its commit is
            // the owner's business, and it must not wait behind this node's
            // own rooms.
            flushed.replies.retain_mut(|p| match p {
                Pending::Replicated { reply } => {
                    let (done, _) = oneshot::channel();
                    let _ = std::mem::replace(reply, done).send(Ok(()));
                    false
                }
                _ => true,
            });
            sink.flushed(flushed);
        }
        Err(e) => {
            tracing::error!(error = %e, "room log batch failed; answering its requests with an error");
            seqs.rollback();
            flushed.fail(WriteError::from(e));
        }
    }
}

fn put_record(batch: &mut Batch, room_key: u64, seq: u64, stored: &StoredMessage, new: bool) {
    batch.put(MESSAGES, record::message_key(room_key, seq).to_vec(), record::encode(stored));
    if new {
        batch.put(DEDUP, record::dedup_key(room_key, &stored.from, &stored.client_id), seq.to_be_bytes().to_vec());
    }
}

fn plan_append(
    log: &RoomLog,
    seqs: &mut Sequencer,
    room: &RoomRef,
    from: &str,
    client_id: &str,
) -> Result<Assignment, WriteError> {
    if room.epoch < seqs.fence_of(room.key) {
        return Err(WriteError::Moved);
    }
    if !seqs.knows(room.key) {
        // Fix the committed seq before this batch stores records past it.
        log.last_seq(room.key)?;
        seqs.load(room.key, log.stored_last(room.key)?);
    }
    let key = record::dedup_key(room.key, from, client_id);
    let stored = log.deduped(room.key, from, client_id)?;
    Ok(seqs.assign(room.key, &key, stored))
}

/// Plans storing an owner's records: skips what is already here or
/// committed, refuses a gap, and refuses to build on (or keep) records of an
/// older owner that the sending owner's log may not have.
fn plan_replicated(
    log: &RoomLog,
    seqs: &mut Sequencer,
    records: &[Record],
    batch: &mut Batch,
) -> Result<(), WriteError> {
    let mut planned = Vec::new();
    let mut fences: HashMap<u64, u64> = HashMap::new();
    let refuse = |seqs: &mut Sequencer, e: WriteError| {
        seqs.rollback_rooms(records.iter().map(|r| r.room_key));
        Err(e)
    };
    for r in records {
        if !seqs.knows(r.room_key) {
            seqs.load(r.room_key, log.stored_last(r.room_key)?);
        }
        if !r.new {
            // A rewrite (a deletion) of a record this node does not hold yet
            // would leave a hole past its log's end; the record comes later,
            // rewritten, with the owner's log.
            if r.seq <= seqs.last(r.room_key) {
                planned.push(r);
            }
            continue;
        }
        let committed = log.last_seq(r.room_key)?;
        if r.seq <= committed {
            // Committed records are final here; a newer owner's copy of one
            // differs at most in the epoch stamp.
            continue;
        }
        let epoch = r.stored.epoch;
        let newer_owner = epoch > seqs.fence_of(r.room_key) && !fences.contains_key(&r.room_key);
        let fence = fences.entry(r.room_key).or_insert(0);
        *fence = (*fence).max(epoch);
        let stale = WriteError::StaleTail { room_key: r.room_key, epoch };
        match seqs.accept(r.room_key, r.seq) {
            Accept::Next => {
                let prev = r.seq - 1;
                if newer_owner && prev > committed && written_before(log, r.room_key, prev, epoch)? {
                    return refuse(seqs, stale);
                }
                planned.push(r);
            }
            Accept::AlreadyStored => {
                if stale_here(log, r)? {
                    return refuse(seqs, stale);
                }
            }
            Accept::Gap { have } => return refuse(seqs, WriteError::Gap { room_key: r.room_key, have }),
        }
    }
    for (room_key, epoch) in fences {
        seqs.fence(room_key, epoch);
    }
    for r in planned {
        put_record(batch, r.room_key, r.seq, &r.stored, r.new);
    }
    Ok(())
}

/// Whether the stored record at `seq` was written under an epoch older than
/// `epoch` (false when it is not in the store yet: then it is in the batch
/// under way, from the same owner).
fn written_before(log: &RoomLog, room_key: u64, seq: u64, epoch: u64) -> Result<bool, WriteError> {
    Ok(log.get_stored(room_key, seq)?.is_some_and(|m| m.stored.epoch < epoch))
}

/// Whether the record stored here at `r`'s seq came from an older owner
/// epoch and differs (another message, or the same one written again with
/// another ts or stamp): the newer owner's version wins everywhere.
fn stale_here(log: &RoomLog, r: &Record) -> Result<bool, WriteError> {
    Ok(log
        .get_stored(r.room_key, r.seq)?
        .is_some_and(|old| old.stored.epoch < r.stored.epoch && old.stored != r.stored))
}

/// Plans dropping a room's uncommitted records from the first one written
/// under an epoch older than `older_than`.
fn plan_drop_tail(
    log: &RoomLog,
    seqs: &mut Sequencer,
    room_key: u64,
    older_than: u64,
    batch: &mut Batch,
) -> Result<(), WriteError> {
    let committed = log.last_seq(room_key)?;
    let last = log.stored_last(room_key)?;
    if last <= committed {
        return Ok(());
    }
    let tail = log.stored_range(room_key, committed + 1, last, usize::MAX)?;
    let Some(from) = tail.iter().find(|m| m.stored.epoch < older_than).map(|m| m.seq) else { return Ok(()) };
    for stale in tail.iter().filter(|m| m.seq >= from) {
        batch.delete(DEDUP, record::dedup_key(room_key, &stale.stored.from, &stale.stored.client_id));
    }
    batch.delete_range(
        MESSAGES,
        record::message_key(room_key, from).to_vec(),
        Some(record::room_end(room_key).to_vec()),
    );
    tracing::warn!(room_key, from, to = last, older_than, "dropping an uncommitted tail from an earlier owner");
    seqs.load(room_key, last);
    seqs.truncate(room_key, from - 1);
    Ok(())
}

/// Plans rewriting records `from..=to` under the room's epoch: the messages
/// as they will be replicated.
fn plan_restamp(
    log: &RoomLog,
    room: &RoomRef,
    from: u64,
    to: u64,
    batch: &mut Batch,
) -> Result<Vec<Message>, WriteError> {
    let mut messages = log.stored_range(room.key, from, to, usize::MAX)?;
    let complete = messages.len() as u64 == to.saturating_sub(from) + 1
        && messages.iter().zip(from..).all(|(m, seq)| m.seq == seq);
    if !complete {
        return Err(WriteError::Storage(format!("records {from}..={to} of room {} are not all here", room.key)));
    }
    for m in &mut messages {
        m.stored.epoch = room.epoch;
        put_record(batch, room.key, m.seq, &m.stored, false);
    }
    Ok(messages)
}

/// Plans a deletion: the message's sender, and the rewritten record when
/// anything changes (deleting a deleted message changes nothing and succeeds).
fn plan_delete(
    log: &RoomLog,
    room: &RoomRef,
    seq: u64,
    actor: &str,
    moderator: bool,
    batch: &mut Batch,
) -> Result<(String, Option<StoredMessage>), WriteError> {
    let mut msg = log.get_stored(room.key, seq)?.ok_or(WriteError::NotFound)?;
    if msg.stored.from != actor && !moderator {
        return Err(WriteError::Forbidden);
    }
    if msg.stored.body.is_none() {
        return Ok((msg.stored.from, None));
    }
    msg.stored.body = None;
    // Stamped with the current epoch, so replicas take the rewrite of a
    // message an earlier owner wrote.
    msg.stored.epoch = room.epoch;
    put_record(batch, room.key, seq, &msg.stored, false);
    Ok((msg.stored.from.clone(), Some(msg.stored)))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::storage::EngineKind;

    /// A writer over a fresh redb store that commits at once, recording
    /// what it publishes.
    fn writer() -> (tempfile::TempDir, Arc<RoomLog>, LogWriter, Arc<Mutex<Vec<u64>>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::storage::open(EngineKind::Redb, &dir.path().join("rooms.redb")).expect("store");
        let log = Arc::new(RoomLog::new(store));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let published = seen.clone();
        let publish: Publisher = Arc::new(move |p| {
            if let Published::Message { message, .. } = p {
                published.lock().expect("lock").push(message.seq);
            }
        });
        let writer =
            LogWriter::start(log.clone(), Arc::new(CommitAtOnce { log: log.clone(), publish })).expect("writer");
        (dir, log, writer, seen)
    }

    fn record(seq: u64, epoch: u64, body: &str) -> Record {
        let stored = StoredMessage {
            from: "ann".into(),
            body: Some(body.into()),
            ts: seq,
            client_id: format!("{body}-{epoch}"),
            epoch,
        };
        Record { room_key: 7, room: "r".into(), seq, stored, new: true }
    }

    fn bodies(log: &RoomLog) -> Vec<(u64, String, u64)> {
        log.stored_range(7, 1, u64::MAX, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|m| (m.seq, m.stored.body.unwrap_or_default(), m.stored.epoch))
            .collect()
    }

    #[tokio::test]
    async fn a_newer_owner_does_not_build_on_an_older_owners_uncommitted_tail() {
        let (_dir, log, writer, _) = writer();
        writer.store_replicated(vec![record(1, 1, "a"), record(2, 1, "b")]).await.expect("stored");
        log.raise(7, 1);
        // Seq 3 from the owner of epoch 2 would follow seq 2 of epoch 1,
        // which that owner may not have.
        let refused = writer.store_replicated(vec![record(3, 2, "c")]).await;
        assert!(matches!(refused, Err(WriteError::StaleTail { room_key: 7, epoch: 2 })), "{refused:?}");
        writer.drop_tail(7, 2).await.expect("dropped");
        assert_eq!(bodies(&log), vec![(1, "a".into(), 1)]);
        // The dropped record's idempotency entry went with it.
        assert_eq!(log.deduped(7, "ann", "b-1").expect("read"), None);
        let gap = writer.store_replicated(vec![record(3, 2, "c")]).await;
        assert!(matches!(gap, Err(WriteError::Gap { room_key: 7, have: 1 })), "{gap:?}");
        writer.store_replicated(vec![record(2, 2, "b2"), record(3, 2, "c")]).await.expect("stored");
        assert_eq!(bodies(&log), vec![(1, "a".into(), 1), (2, "b2".into(), 2), (3, "c".into(), 2)]);
    }

    #[tokio::test]
    async fn a_differing_copy_from_a_newer_owner_is_refused_until_the_tail_is_dropped() {
        let (_dir, log, writer, _) = writer();
        writer.store_replicated(vec![record(1, 1, "a"), record(2, 1, "b")]).await.expect("stored");
        let refused = writer.store_replicated(vec![record(2, 3, "x")]).await;
        assert!(matches!(refused, Err(WriteError::StaleTail { .. })), "{refused:?}");
        writer.drop_tail(7, 3).await.expect("dropped");
        writer.store_replicated(vec![record(1, 3, "a"), record(2, 3, "x")]).await.expect("stored");
        assert_eq!(bodies(&log), vec![(1, "a".into(), 3), (2, "x".into(), 3)]);
    }

    #[tokio::test]
    async fn committed_records_are_final_and_never_dropped() {
        let (_dir, log, writer, _) = writer();
        writer.store_replicated(vec![record(1, 1, "a"), record(2, 1, "b")]).await.expect("stored");
        log.raise(7, 2);
        // A newer owner's copy of a committed record is skipped, not a conflict.
        writer.store_replicated(vec![record(2, 4, "b")]).await.expect("skipped");
        writer.drop_tail(7, u64::MAX).await.expect("nothing to drop");
        assert_eq!(bodies(&log), vec![(1, "a".into(), 1), (2, "b".into(), 1)]);
    }

    #[tokio::test]
    async fn a_rewrite_of_a_record_not_held_here_leaves_no_hole() {
        let (_dir, log, writer, _) = writer();
        writer.store_replicated(vec![record(1, 1, "a")]).await.expect("stored");
        let mut deleted = record(3, 1, "c");
        deleted.new = false;
        deleted.stored.body = None;
        writer.store_replicated(vec![deleted]).await.expect("skipped");
        assert_eq!(log.stored_last(7).expect("read"), 1);
        let mut deleted = record(1, 1, "a");
        deleted.new = false;
        deleted.stored.body = None;
        writer.store_replicated(vec![deleted]).await.expect("stored");
        assert_eq!(bodies(&log), vec![(1, String::new(), 1)]);
    }

    #[tokio::test]
    async fn restamping_rewrites_the_epoch_and_commits_the_range() {
        let (_dir, log, writer, seen) = writer();
        writer.store_replicated(vec![record(1, 1, "a"), record(2, 1, "b"), record(3, 2, "c")]).await.expect("stored");
        log.raise(7, 1);
        let room = RoomRef { key: 7, id: "r".into(), epoch: 5, owner: 1 };
        writer.restamp(room.clone(), 2, 3).await.expect("restamped");
        assert_eq!(bodies(&log), vec![(1, "a".into(), 1), (2, "b".into(), 5), (3, "c".into(), 5)]);
        assert_eq!(log.last_seq(7).expect("read"), 3);
        assert_eq!(*seen.lock().expect("lock"), vec![2, 3]);
        // A range that is not all here is an error, not a partial rewrite.
        assert!(matches!(writer.restamp(room, 3, 4).await, Err(WriteError::Storage(_))));
        // The idempotency entries still point at the same seqs.
        assert_eq!(log.deduped(7, "ann", "c-2").expect("read"), Some(3));
    }
}
