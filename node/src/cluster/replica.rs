//! The replica side of room replication: store what an owner sends (after
//! checking its epoch), fill gaps from the owner, acknowledge, and publish to
//! local listeners exactly what the owner says is committed.

use std::sync::Arc;
use std::time::Duration;

use quinn::RecvStream;
use quinn::SendStream;

use super::wire::RoomAck;
use super::wire::RoomAnswer;
use super::wire::RoomBatch;
use super::wire::RoomCall;
use super::wire::decode;
use super::wire::encode;
use crate::peer::Channel;
use crate::peer::frame;
use crate::rooms::Published;
use crate::rooms::Record;
use crate::rooms::WriteError;
use crate::service::Node;

/// Records fetched per request when filling a gap.
const FETCH_PAGE: u64 = 1_000;
/// How long a gap fill may wait for the owner.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one replication stream from `owner` until it ends.
pub async fn serve(node: Arc<Node>, owner: u64, mut recv: RecvStream, mut send: SendStream) {
    loop {
        let bytes = match frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                tracing::info!(owner, error = %e, "replication stream ended");
                return;
            }
        };
        let batches: Vec<RoomBatch> = match decode(&bytes) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(owner, error = %e, "dropping a replication stream with a bad frame");
                return;
            }
        };
        // One store (one flush) for the whole frame: the owner puts every
        // batch that queued while the previous frame was in flight into it.
        let ids: Vec<u64> = batches.iter().filter(|b| !b.records.is_empty()).map(|b| b.id).collect();
        let records: Vec<Record> = batches.iter().flat_map(|b| b.records.iter().cloned()).collect();
        let mut acks = Vec::with_capacity(ids.len());
        if !records.is_empty() {
            match store(&node, owner, &records).await {
                Ok(()) => acks.extend(ids.iter().map(|id| RoomAck::Stored(*id))),
                Err(why) => {
                    // Find out which batches are at fault, one at a time.
                    tracing::debug!(owner, %why, "a replicated frame failed whole; storing its batches one by one");
                    for b in batches.iter().filter(|b| !b.records.is_empty()) {
                        acks.push(match store(&node, owner, &b.records).await {
                            Ok(()) => RoomAck::Stored(b.id),
                            Err(why) => {
                                tracing::warn!(owner, batch = b.id, %why, "refusing a replicated batch");
                                RoomAck::Refused(b.id, why)
                            }
                        });
                    }
                }
            }
        }
        let mut raised = Vec::new();
        for b in batches {
            for (room_key, room, seq, epoch) in b.commits {
                raised.extend(commit(&node, owner, room_key, &room, seq, epoch).await.map(|seq| (room_key, seq)));
            }
        }
        if !raised.is_empty() {
            // A lower bound that saves a restart from re-fetching what is final.
            node.writer.persist_committed_now(raised);
        }
        if !acks.is_empty() && frame::write_frame(&mut send, &encode(&acks)).await.is_err() {
            return;
        }
    }
}

/// Refuses records written under an epoch older than the room's current one.
fn check_epochs(node: &Node, records: &[Record]) -> Result<(), String> {
    let meta = node.meta();
    for r in records {
        if let Some(room) = meta.rooms.get(&r.room)
            && room.info.key == r.room_key
            && r.stored.epoch < room.info.epoch
        {
            return Err(format!("record of room {} has epoch {} < {}", r.room, r.stored.epoch, room.info.epoch));
        }
    }
    Ok(())
}

async fn store(node: &Arc<Node>, owner: u64, records: &[Record]) -> Result<(), String> {
    check_epochs(node, records)?;
    for r in records {
        // Fix the committed seq before uncommitted records land behind it.
        node.log.last_seq(r.room_key).map_err(|e| e.to_string())?;
    }
    for _ in 0..3 {
        match node.writer.store_replicated(records.to_vec()).await {
            Ok(()) => {
                for r in records.iter().filter(|r| !r.new && r.stored.body.is_none()) {
                    node.publish(Published::Deleted { room: r.room.as_str().into(), room_key: r.room_key, seq: r.seq });
                }
                return Ok(());
            }
            Err(WriteError::Gap { room_key, .. }) => {
                let Some(first) = records.iter().filter(|r| r.room_key == room_key && r.new).map(|r| r.seq).min()
                else {
                    return Err("gap reported for a room without new records".into());
                };
                let epoch = records.iter().filter(|r| r.room_key == room_key).map(|r| r.stored.epoch).max();
                // What this node holds past its committed seq may be an
                // earlier owner's; the fill must build on the sender's log.
                drop_older_tail(node, room_key, epoch.unwrap_or(0)).await?;
                let have = node.log.stored_last(room_key).map_err(|e| e.to_string())?;
                let room = records.iter().find(|r| r.room_key == room_key).map(|r| r.room.clone()).unwrap_or_default();
                if have + 1 < first {
                    fill(node, owner, room_key, &room, have + 1, first - 1).await?;
                }
            }
            Err(WriteError::StaleTail { room_key, epoch }) => drop_older_tail(node, room_key, epoch).await?,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the gap could not be filled".into())
}

async fn drop_older_tail(node: &Node, room_key: u64, epoch: u64) -> Result<(), String> {
    node.writer.drop_tail(room_key, epoch).await.map_err(|e| format!("dropping a stale tail: {e}"))
}

/// Fetches records `from..=to` of a room from `owner` and stores them.
pub(crate) async fn fill(
    node: &Arc<Node>,
    owner: u64,
    room_key: u64,
    room: &str,
    from: u64,
    to: u64,
) -> Result<(), String> {
    let Some(cluster) = node.cluster.as_ref() else { return Err("not in a cluster".into()) };
    let mut next = from;
    while next <= to {
        let end = to.min(next + FETCH_PAGE - 1);
        let call = RoomCall::Fetch { room_key, room: room.to_string(), from: next, to: end };
        let bytes = cluster
            .endpoint
            .request(owner, Channel::Rooms, encode(&call), FETCH_TIMEOUT)
            .await
            .map_err(|e| format!("fetching from node {owner}: {e}"))?;
        let records = match decode::<RoomAnswer>(&bytes)? {
            RoomAnswer::Records(records) => records,
            other => return Err(format!("node {owner} answered a fetch with {other:?}")),
        };
        let Some(last) = records.last().map(|r| r.seq) else {
            return Err(format!("node {owner} has no records {next}..={end} of room {room}"));
        };
        // No epoch check here: a fill comes from the room's current owner
        // (or, in a recovery, from the most recent log of a majority), and
        // records of earlier epochs are part of that log.
        node.writer.store_replicated(records).await.map_err(|e| e.to_string())?;
        next = last + 1;
    }
    Ok(())
}

/// Makes a room's records up to `seq` visible here and publishes them;
/// answers the room's new committed seq if it rose. A notice from an owner
/// whose epoch is over is ignored: what it committed is what its successor
/// recovered.
async fn commit(node: &Arc<Node>, owner: u64, room_key: u64, room: &str, seq: u64, epoch: u64) -> Option<u64> {
    let current = node.meta().rooms.get(room).filter(|r| r.info.key == room_key).map(|r| r.info.epoch);
    if current.is_some_and(|e| epoch < e) {
        tracing::debug!(room, epoch, ?current, "ignoring a commit notice from an earlier owner");
        return None;
    }
    let (tail, committed) = match (node.log.stored_tail(room_key), node.log.last_seq(room_key)) {
        (Ok(t), Ok(c)) => (t, c),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot read the room log");
            return None;
        }
    };
    let mut stored = tail.as_ref().map_or(0, |m| m.seq);
    // Uncommitted records from an earlier owner are not necessarily the
    // ones this owner committed: drop them and fetch the owner's.
    if stored > committed && tail.is_some_and(|m| m.stored.epoch < epoch) {
        if let Err(e) = drop_older_tail(node, room_key, epoch).await {
            tracing::warn!(room, error = %e, "cannot drop a stale tail yet");
            return None;
        }
        stored = node.log.stored_last(room_key).unwrap_or(committed);
    }
    if seq > stored {
        if let Err(e) = fill(node, owner, room_key, room, stored + 1, seq).await {
            tracing::warn!(room, error = %e, "cannot fetch committed records yet");
        }
        stored = node.log.stored_last(room_key).unwrap_or(stored);
    }
    let Ok(old) = node.log.last_seq(room_key) else { return None };
    let new = seq.min(stored);
    if new <= old {
        return None;
    }
    node.log.raise(room_key, new);
    match node.log.between(room_key, old + 1, new) {
        Ok(messages) => {
            let room: Arc<str> = room.into();
            for message in messages {
                node.publish(Published::Message { room: room.clone(), room_key, message });
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read committed messages to publish"),
    }
    Some(new)
}
