//! The owner side of room replication. Every batch the log writer flushed
//! goes to every other node on one ordered stream per peer; the batch commits
//! (its senders are answered and its messages published) once a majority of
//! nodes, this one included, hold it. Commit notices follow on the same
//! streams so replicas publish exactly what is committed, in order.
//!
//! A peer that is down or slow loses frames rather than slowing the room: it
//! fills the gap from the owner when the next batch or notice arrives.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::inflight::Inflight;
use super::inflight::Settled;
use super::wire::RoomAck;
use super::wire::RoomBatch;
use super::wire::decode;
use super::wire::encode;
use crate::clock::now_ms;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::frame;
use crate::rooms::FlushSink;
use crate::rooms::FlushedBatch;
use crate::rooms::LogWriter;
use crate::rooms::Publisher;
use crate::rooms::RoomLog;
use crate::rooms::WriteError;

/// Frames queued per peer before new ones are dropped (the peer catches up
/// from the owner's store instead).
const PEER_QUEUE: usize = 4_096;
/// Batches sent in one frame at most.
const FRAME_BATCHES: usize = 256;
/// A sender waits this long for a majority before being told to retry.
const ANSWER_WITHIN_MS: u64 = 10_000;
/// Unacknowledged batches kept per peer for resending.
const MAX_UNACKED: usize = 65_536;
/// Pause before re-opening a broken stream.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// First frame of a room stream: what the stream carries.
pub const STREAM_REPLICATION: u8 = 1;
/// First frame of a room stream: forwarded sends.
pub const STREAM_FORWARD: u8 = 2;

/// What the replicator task takes in.
pub enum Input {
    /// A batch the log writer made durable here.
    Flushed(FlushedBatch),
    /// Committed seqs to tell the replicas about: (room key, room id, seq, epoch).
    Announce(Vec<(u64, String, u64, u64)>),
}

/// Hands flushed batches to the replicator task.
pub struct ReplicatingSink {
    tx: mpsc::UnboundedSender<Input>,
}

impl FlushSink for ReplicatingSink {
    fn flushed(&self, batch: FlushedBatch) {
        if let Err(e) = self.tx.send(Input::Flushed(batch))
            && let Input::Flushed(batch) = e.0
        {
            batch.fail(WriteError::Stopped);
        }
    }
}

/// Creates the sink, a sender for announcements, and the receiver the
/// replicator task reads.
pub fn sink() -> (ReplicatingSink, mpsc::UnboundedSender<Input>, mpsc::UnboundedReceiver<Input>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ReplicatingSink { tx: tx.clone() }, tx, rx)
}

/// What the owner side works with.
pub struct Wiring {
    /// The peer transport.
    pub endpoint: PeerEndpoint,
    /// The other nodes.
    pub peers: Vec<u64>,
    /// Acknowledgements a batch needs from peers.
    pub needed: usize,
    /// The room logs.
    pub log: Arc<RoomLog>,
    /// The log writer (to persist committed seqs).
    pub writer: LogWriter,
    /// Local fan-out.
    pub publish: Publisher,
}

/// Runs the owner side until the writer stops; `current_epoch` says a
/// room's epoch as the metadata has it now.
pub async fn run(
    wiring: Wiring,
    current_epoch: impl Fn(u64) -> u64 + Send + 'static,
    mut input: mpsc::UnboundedReceiver<Input>,
) {
    let Wiring { endpoint, peers, needed, log, writer, publish } = wiring;
    let (ack_tx, mut acks) = mpsc::unbounded_channel::<(u64, RoomAck)>();
    let mut links: HashMap<u64, mpsc::Sender<RoomBatch>> = HashMap::new();
    for peer in &peers {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        tokio::spawn(link(endpoint.clone(), *peer, rx, ack_tx.clone()));
        links.insert(*peer, tx);
    }
    let mut inflight: Inflight<FlushedBatch> = Inflight::new(needed, peers.len());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            item = input.recv() => {
                let batch = match item {
                    None => return,
                    Some(Input::Flushed(batch)) => batch,
                    Some(Input::Announce(commits)) => {
                        for tx in links.values() {
                            let _ = tx.try_send(RoomBatch { id: 0, records: Vec::new(), commits: commits.clone() });
                        }
                        continue;
                    }
                };
                let records = batch.records.clone();
                let id = inflight.push(batch, now_ms() + ANSWER_WITHIN_MS, records.is_empty());
                if !records.is_empty() {
                    for tx in links.values() {
                        // A full queue drops the frame: that peer fills the gap later.
                        let _ = tx.try_send(RoomBatch { id, records: records.clone(), commits: Vec::new() });
                    }
                }
            }
            ack = acks.recv() => {
                let Some((peer, ack)) = ack else { return };
                match ack {
                    RoomAck::Stored(id) => inflight.ack(id, peer),
                    RoomAck::Refused(id, why) => {
                        tracing::warn!(peer, id, %why, "a replica refused a batch");
                        inflight.refuse(id, peer);
                    }
                }
            }
            _ = tick.tick() => {
                for id in inflight.overdue(now_ms()) {
                    let Some(batch) = inflight.payload_mut(id) else { continue };
                    tracing::warn!(id, "no majority stored a batch in time; its senders are told to retry");
                    batch.fail_replies(&WriteError::NotReplicated);
                    // Written under an epoch that is over: it can never
                    // commit, and must not hold up the batches behind it.
                    if batch.epochs().any(|(room_key, epoch)| current_epoch(room_key) > epoch) {
                        inflight.abandon(id);
                    }
                }
            }
        }
        let settled = inflight.settled();
        if settled.is_empty() {
            continue;
        }
        let mut commits: HashMap<u64, (String, u64, u64)> = HashMap::new();
        for outcome in settled {
            match outcome {
                Settled::Committed(batch) => {
                    for (room_key, room, seq, epoch) in batch.raised_rooms() {
                        commits.insert(room_key, (room, seq, epoch));
                    }
                    batch.commit(&log, &publish);
                }
                Settled::Dropped(batch) => {
                    // Written here under an epoch that is over: never
                    // visible; the new owner's history replaces it.
                    tracing::warn!("a batch the replicas refused is dropped; its senders retry");
                    batch.fail(WriteError::Moved);
                }
            }
        }
        if commits.is_empty() {
            continue;
        }
        let commits: Vec<(u64, String, u64, u64)> = commits.into_iter().map(|(k, (r, s, e))| (k, r, s, e)).collect();
        writer.persist_committed_now(commits.iter().map(|(k, _, s, _)| (*k, *s)).collect());
        for tx in links.values() {
            let _ = tx.try_send(RoomBatch { id: 0, records: Vec::new(), commits: commits.clone() });
        }
    }
}

/// Keeps one ordered stream to a peer: writes queued batches, reads acks.
/// Batches the peer has not acknowledged are kept (up to a bound) and sent
/// again first whenever the stream is re-opened, so a batch lost with a
/// broken stream cannot hold up the batches behind it; the replica skips
/// what it already stored.
async fn link(
    endpoint: PeerEndpoint,
    peer: u64,
    mut rx: mpsc::Receiver<RoomBatch>,
    acks: mpsc::UnboundedSender<(u64, RoomAck)>,
) {
    let mut unacked: VecDeque<Arc<RoomBatch>> = VecDeque::new();
    loop {
        let (mut send, mut recv) = match endpoint.open_stream(peer, Channel::Rooms).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, error = %e, "room stream to peer not open; retrying");
                if !queue_while_down(&mut rx, &mut unacked).await {
                    return;
                }
                continue;
            }
        };
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<RoomAck>();
        let reader = tokio::spawn(async move {
            while let Ok(Some(bytes)) = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME).await {
                let Ok(list) = decode::<Vec<RoomAck>>(&bytes) else { return };
                for ack in list {
                    if ack_tx.send(ack).is_err() {
                        return;
                    }
                }
            }
        });
        let mut ok = frame::write_frame(&mut send, &[STREAM_REPLICATION]).await.is_ok();
        // Everything not yet acknowledged goes again, oldest first.
        let resend: Vec<Arc<RoomBatch>> = unacked.iter().cloned().collect();
        for chunk in resend.chunks(FRAME_BATCHES) {
            if !ok {
                break;
            }
            let refs: Vec<&RoomBatch> = chunk.iter().map(|b| &**b).collect();
            ok = frame::write_frame(&mut send, &encode(&refs)).await.is_ok();
        }
        while ok {
            tokio::select! {
                ack = ack_rx.recv() => {
                    let Some(ack) = ack else { break };
                    let id = match &ack { RoomAck::Stored(id) | RoomAck::Refused(id, _) => *id };
                    while unacked.front().is_some_and(|b| b.id <= id) {
                        unacked.pop_front();
                    }
                    if acks.send((peer, ack)).is_err() {
                        reader.abort();
                        return;
                    }
                }
                first = rx.recv() => {
                    let Some(first) = first else {
                        reader.abort();
                        return;
                    };
                    let mut frame_batches = vec![Arc::new(first)];
                    while frame_batches.len() < FRAME_BATCHES {
                        match rx.try_recv() {
                            Ok(b) => frame_batches.push(Arc::new(b)),
                            Err(_) => break,
                        }
                    }
                    remember(&mut unacked, &frame_batches);
                    let refs: Vec<&RoomBatch> = frame_batches.iter().map(|b| &**b).collect();
                    ok = frame::write_frame(&mut send, &encode(&refs)).await.is_ok();
                }
            }
        }
        tracing::info!(peer, unacked = unacked.len(), "room stream to peer broke; reopening");
        reader.abort();
        if !queue_while_down(&mut rx, &mut unacked).await {
            return;
        }
    }
}

/// Keeps batches that need an acknowledgement, dropping the oldest past the bound.
fn remember(unacked: &mut VecDeque<Arc<RoomBatch>>, batches: &[Arc<RoomBatch>]) {
    for b in batches.iter().filter(|b| b.id != 0) {
        unacked.push_back(b.clone());
    }
    while unacked.len() > MAX_UNACKED {
        unacked.pop_front();
    }
}

/// Waits before re-opening, keeping what arrives meanwhile; false when the
/// replicator is gone.
async fn queue_while_down(rx: &mut mpsc::Receiver<RoomBatch>, unacked: &mut VecDeque<Arc<RoomBatch>>) -> bool {
    let pause = tokio::time::sleep(RECONNECT_PAUSE);
    tokio::pin!(pause);
    loop {
        tokio::select! {
            _ = &mut pause => return true,
            b = rx.recv() => match b {
                Some(b) => remember(unacked, &[Arc::new(b)]),
                None => return false,
            },
        }
    }
}
