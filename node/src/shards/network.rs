//! The shards' Raft traffic over the QUIC transport, on the
//! [`Channel::Shards`] channel with the shard's number in each call: a
//! leader's AppendEntries to a follower pipelined on one stream per
//! replication session (many in flight, answered in order), heartbeats,
//! votes and the rest one request per RPC, and snapshots streamed from their
//! file on a stream of their own (so a large snapshot never holds up another
//! shard's heartbeat).
//!
//! This module knows frames and shard numbers, not what a shard holds: the
//! receiving side hands each call to a [`ShardRpcs`] implementation.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures_util::Stream;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use parking_lot::Mutex;
use quinn::RecvStream;
use quinn::SendStream;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use super::placement::ShardId;
use super::quiet::Beacon;
use super::snapshot::SnapshotFile;
use super::types::ShardTypes;
use super::types::SnapshotMeta;
use super::types::Vote;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::PeerError;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::peer::frame;
use crate::raft::PeerNode;

/// A whole snapshot may take this long to cross.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes per snapshot chunk frame.
const CHUNK: usize = 256 * 1024;
/// How often an append stream checks for an answer overdue by
/// [`crate::raft::APPEND_TIMEOUT`].
const STALL_CHECK: Duration = Duration::from_millis(250);

/// A Raft RPC to one shard's group on the receiving node.
#[derive(Debug, Serialize, Deserialize)]
pub enum ShardCall {
    /// AppendEntries.
    Append(ShardId, AppendEntriesRequest<ShardTypes>),
    /// RequestVote.
    Vote(ShardId, VoteRequest<ShardTypes>),
    /// Pre-vote.
    PreVote(ShardId, VoteRequest<ShardTypes>),
    /// The leader's ReadIndex for the shard (a replica about to answer a
    /// read waits until it has applied that far).
    ReadIndex(ShardId),
    /// The leader hands leadership to the node named in the request.
    TransferLeader(ShardId, TransferLeaderRequest<ShardTypes>),
    /// A node's beacon: the shards it leads that may be quiet
    /// ([`super::quiet`]); not about one shard.
    Beacon(Beacon),
}

/// The answer to a [`ShardCall`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ShardAnswer {
    /// To Append.
    Append(AppendEntriesResponse<ShardTypes>),
    /// To Vote or PreVote.
    Vote(VoteResponse<ShardTypes>),
    /// To a snapshot stream.
    Snapshot(SnapshotResponse<ShardTypes>),
    /// To ReadIndex.
    ReadIndex(u64),
    /// To TransferLeader.
    Transferred,
    /// To a beacon: the shards the receiver keeps quiet.
    Quiet(Vec<ShardId>),
    /// The receiving node has no group for that shard (yet, or any more).
    NoGroup(ShardId),
    /// Raft refused the call.
    Refused(String),
}

/// The first frame of a stream on the shards channel: what the stream carries.
#[derive(Debug, Serialize, Deserialize)]
pub enum ShardStream {
    /// A snapshot; the file's bytes follow in frames, then an empty frame.
    Snapshot(SnapshotHeader),
    /// A leader's AppendEntries requests to one shard's group, a frame each,
    /// each answered in order by a [`StreamAnswer`] frame.
    Append(ShardId),
}

/// The answer to one request on an append stream: the group's, or why the
/// node could not take the stream (no group for the shard, the group
/// stopped).
pub type StreamAnswer = Result<StreamAppendResult<ShardTypes>, String>;

/// What a snapshot stream announces before the file's bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The shard.
    pub shard: ShardId,
    /// The leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The file's length in bytes.
    pub len: u64,
}

/// The receiving side: the node's shard groups.
pub trait ShardRpcs: Send + Sync + 'static {
    /// Handles one RPC.
    fn call(&self, call: ShardCall) -> BoxFuture<'static, ShardAnswer>;
    /// Hands a leader's stream of AppendEntries requests to shard `shard`'s
    /// group; its answers, in order, or `None` without a group here.
    fn append_stream(
        &self,
        shard: ShardId,
        requests: BoxStream<'static, AppendEntriesRequest<ShardTypes>>,
    ) -> Option<BoxStream<'static, StreamAnswer>>;
    /// A file to receive shard `shard`'s snapshot into.
    fn snapshot_file(&self, shard: ShardId) -> io::Result<(SnapshotFile, std::fs::File)>;
    /// Installs a received snapshot.
    fn install(&self, header: SnapshotHeader, file: SnapshotFile) -> BoxFuture<'static, ShardAnswer>;
}

/// Makes a client per (shard, target node).
#[derive(Clone)]
pub struct ShardNetwork {
    /// The peer transport (`None` on a node alone, whose groups have no
    /// other member to call).
    pub endpoint: Option<PeerEndpoint>,
    /// The shard this factory serves.
    pub shard: ShardId,
}

/// One shard's Raft RPCs to one node.
pub struct ShardClient {
    endpoint: Option<PeerEndpoint>,
    shard: ShardId,
    target: u64,
}

impl RaftNetworkFactory<ShardTypes> for ShardNetwork {
    type Network = ShardClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        // A replica added while the node runs is dialled where the
        // membership says it is.
        if let Some(endpoint) = &self.endpoint {
            endpoint.learn_peer(target, &node.peer_addr);
        }
        ShardClient { endpoint: self.endpoint.clone(), shard: self.shard, target }
    }
}

fn net_error(e: impl std::fmt::Display) -> NetworkError<ShardTypes> {
    NetworkError::from_string(e.to_string())
}

fn rpc_error(e: PeerError) -> RPCError<ShardTypes> {
    match e {
        PeerError::Remote(msg) => RPCError::Network(net_error(msg)),
        other => RPCError::Unreachable(Unreachable::from_string(other.to_string())),
    }
}

impl ShardClient {
    fn endpoint(&self) -> Result<&PeerEndpoint, String> {
        self.endpoint.as_ref().ok_or_else(|| format!("node {} is not reachable from a node alone", self.target))
    }

    async fn call(&self, call: &ShardCall, timeout: Duration) -> Result<ShardAnswer, RPCError<ShardTypes>> {
        let endpoint = self.endpoint().map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        let bytes = endpoint.request(self.target, Channel::Shards, encode(call), timeout).await.map_err(rpc_error)?;
        decode::<ShardAnswer>(&bytes).map_err(|e| RPCError::Network(net_error(e)))
    }

    async fn send_snapshot(&self, vote: Vote, meta: SnapshotMeta, path: PathBuf) -> Result<ShardAnswer, String> {
        let mut file =
            tokio::fs::File::open(&path).await.map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let len = file.metadata().await.map_err(|e| e.to_string())?.len();
        let (mut send, mut recv) =
            self.endpoint()?.open_stream(self.target, Channel::Shards).await.map_err(|e| e.to_string())?;
        let header = ShardStream::Snapshot(SnapshotHeader { shard: self.shard, vote, meta, len });
        frame::write_frame(&mut send, &encode(&header)).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            frame::write_frame(&mut send, &buf[..n]).await.map_err(|e| e.to_string())?;
        }
        frame::write_frame(&mut send, &[]).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        let answer = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream ended without an answer")?;
        decode::<ShardAnswer>(&answer)
    }
}

fn unexpected(answer: ShardAnswer) -> RPCError<ShardTypes> {
    RPCError::Network(net_error(format!("unexpected shard answer: {answer:?}")))
}

impl RaftNetworkV2<ShardTypes> for ShardClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ShardTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<ShardTypes>, RPCError<ShardTypes>> {
        match self.call(&ShardCall::Append(self.shard, rpc), option.hard_ttl().max(crate::raft::APPEND_TIMEOUT)).await?
        {
            ShardAnswer::Append(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<ShardTypes>, RPCError<ShardTypes>>>, RPCError<ShardTypes>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<ShardTypes>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let endpoint = self.endpoint().map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
            let (mut send, recv) = endpoint.open_stream(self.target, Channel::Shards).await.map_err(rpc_error)?;
            frame::write_frame(&mut send, &encode(&ShardStream::Append(self.shard)))
                .await
                .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e.to_string())))?;
            let sent = Arc::new(Mutex::new(VecDeque::new()));
            let writer = tokio::spawn(write_requests(input, send, sent.clone()));
            let answers = Answers { recv, sent, writer };
            Ok(futures_util::stream::unfold(Some(answers), next_answer).boxed())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ShardTypes>,
        option: RPCOption,
    ) -> Result<VoteResponse<ShardTypes>, RPCError<ShardTypes>> {
        match self.call(&ShardCall::Vote(self.shard, rpc), option.hard_ttl()).await? {
            ShardAnswer::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<ShardTypes>,
        option: RPCOption,
    ) -> Result<VoteResponse<ShardTypes>, RPCError<ShardTypes>> {
        match self.call(&ShardCall::PreVote(self.shard, rpc), option.hard_ttl()).await? {
            ShardAnswer::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<ShardTypes>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<ShardTypes>, RPCError<ShardTypes>> {
        match self.call(&ShardCall::TransferLeader(self.shard, req), option.hard_ttl()).await? {
            ShardAnswer::Transferred => Ok(Ok(())),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<ShardTypes, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<ShardTypes>, StreamingError<ShardTypes>> {
        let path = snapshot.snapshot.path().to_path_buf();
        let sent = tokio::time::timeout(SNAPSHOT_TIMEOUT, self.send_snapshot(vote, snapshot.meta, path));
        let answer = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            answer = sent => answer,
        };
        match answer {
            Ok(Ok(ShardAnswer::Snapshot(r))) => Ok(r),
            Ok(Ok(other)) => Err(StreamingError::Network(net_error(format!("unexpected shard answer: {other:?}")))),
            Ok(Err(e)) => Err(StreamingError::Unreachable(Unreachable::from_string(e))),
            Err(_) => Err(StreamingError::Unreachable(Unreachable::from_string("snapshot transfer timed out"))),
        }
    }
}

/// Writes a replication session's requests to the follower as they come,
/// noting when each left; finishes the stream when the session ends.
async fn write_requests<S>(mut input: S, mut send: SendStream, sent: Arc<Mutex<VecDeque<Instant>>>)
where
    S: Stream<Item = AppendEntriesRequest<ShardTypes>> + Unpin,
{
    while let Some(request) = input.next().await {
        sent.lock().push_back(Instant::now());
        if frame::write_frame(&mut send, &encode(&request)).await.is_err() {
            // The follower or the connection ended the stream: the reading
            // side sees why.
            return;
        }
    }
    let _ = send.finish();
}

/// The reading side of an append stream. Dropping it stops the writer.
struct Answers {
    recv: RecvStream,
    /// When each request not yet answered left, oldest first.
    sent: Arc<Mutex<VecDeque<Instant>>>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Answers {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

impl Answers {
    /// The next answer; `None` once the follower has ended the stream. An
    /// answer overdue by [`crate::raft::APPEND_TIMEOUT`] ends the session
    /// as a timeout, like a request of its own would.
    async fn next(&mut self) -> Result<Option<StreamAppendResult<ShardTypes>>, RPCError<ShardTypes>> {
        let Answers { recv, sent, .. } = self;
        let read = frame::read_frame(recv, frame::DEFAULT_MAX_FRAME);
        tokio::pin!(read);
        let frame = loop {
            tokio::select! {
                frame = &mut read => break frame,
                _ = tokio::time::sleep(STALL_CHECK) => {
                    if sent.lock().front().is_some_and(|t| t.elapsed() > crate::raft::APPEND_TIMEOUT) {
                        let e = format!("no append answer within {:?}", crate::raft::APPEND_TIMEOUT);
                        return Err(RPCError::Unreachable(Unreachable::from_string(e)));
                    }
                }
            }
        };
        let bytes = match frame {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::from_string(e.to_string()))),
        };
        sent.lock().pop_front();
        match decode::<StreamAnswer>(&bytes).map_err(|e| RPCError::Network(net_error(e)))? {
            Ok(answer) => Ok(Some(answer)),
            Err(refused) => Err(RPCError::Network(net_error(refused))),
        }
    }
}

/// One step of the answer stream: an error or a refusal (conflict, higher
/// vote) is the last item, as openraft expects.
async fn next_answer(
    state: Option<Answers>,
) -> Option<(Result<StreamAppendResult<ShardTypes>, RPCError<ShardTypes>>, Option<Answers>)> {
    let mut answers = state?;
    match answers.next().await {
        Ok(Some(answer)) => {
            let more = answer.is_ok();
            Some((Ok(answer), more.then_some(answers)))
        }
        Ok(None) => None,
        Err(e) => Some((Err(e), None)),
    }
}

/// Serves one stream on the shards channel: a snapshot or a leader's
/// append stream, as its first frame says.
pub async fn serve_stream(rpcs: &dyn ShardRpcs, mut recv: RecvStream, mut send: SendStream) {
    let first = match frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME).await {
        Ok(Some(bytes)) => decode::<ShardStream>(&bytes),
        Ok(None) => Err("an empty shard stream".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match first {
        Ok(ShardStream::Snapshot(header)) => serve_snapshot(rpcs, header, recv, send).await,
        Ok(ShardStream::Append(shard)) => serve_appends(rpcs, shard, recv, send).await,
        Err(e) => {
            tracing::debug!(error = %e, "a shard stream that says nothing");
            if frame::write_frame(&mut send, &encode(&ShardAnswer::Refused(e))).await.is_ok() {
                let _ = send.finish();
            }
        }
    }
}

/// Feeds a leader's append requests to the shard's group and writes its
/// answers back in order, until either side ends the stream.
async fn serve_appends(rpcs: &dyn ShardRpcs, shard: ShardId, recv: RecvStream, mut send: SendStream) {
    let requests = futures_util::stream::unfold(recv, |mut recv| async move {
        let bytes = match frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "an append stream broke off");
                return None;
            }
        };
        match decode::<AppendEntriesRequest<ShardTypes>>(&bytes) {
            Ok(request) => Some((request, recv)),
            Err(e) => {
                tracing::warn!(error = %e, "an undecodable append request ends its stream");
                None
            }
        }
    });
    let Some(mut answers) = rpcs.append_stream(shard, requests.boxed()) else {
        let refused: StreamAnswer = Err(format!("no group for shard {shard} here"));
        if frame::write_frame(&mut send, &encode(&refused)).await.is_ok() {
            let _ = send.finish();
        }
        return;
    };
    while let Some(answer) = answers.next().await {
        if frame::write_frame(&mut send, &encode(&answer)).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Receives one snapshot: the file's bytes (never more than the header
/// announced), then hands it to `rpcs` and answers.
async fn serve_snapshot(rpcs: &dyn ShardRpcs, header: SnapshotHeader, mut recv: RecvStream, mut send: SendStream) {
    let answer = match receive(rpcs, &header, &mut recv).await {
        Ok(file) => rpcs.install(header, file).await,
        Err(e) => ShardAnswer::Refused(e),
    };
    if frame::write_frame(&mut send, &encode(&answer)).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

async fn receive(rpcs: &dyn ShardRpcs, header: &SnapshotHeader, recv: &mut RecvStream) -> Result<SnapshotFile, String> {
    let (file, out) = rpcs.snapshot_file(header.shard).map_err(|e| e.to_string())?;
    let mut out = tokio::fs::File::from_std(out);
    let mut received = 0u64;
    loop {
        let chunk =
            frame::read_frame(recv, CHUNK).await.map_err(|e| e.to_string())?.ok_or("the snapshot was cut short")?;
        if chunk.is_empty() {
            break;
        }
        received += chunk.len() as u64;
        if received > header.len {
            return Err(format!("more than the {} bytes announced", header.len));
        }
        out.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    if received != header.len {
        return Err(format!("{received} of {} bytes arrived", header.len));
    }
    out.sync_all().await.map_err(|e| e.to_string())?;
    Ok(file)
}

impl ShardClient {
    /// Sends `target` this node's beacon; answers the shards it keeps quiet.
    pub async fn beacon(
        endpoint: &PeerEndpoint,
        target: u64,
        beacon: &Beacon,
        timeout: Duration,
    ) -> Result<Vec<ShardId>, String> {
        let bytes = endpoint
            .request(target, Channel::Shards, encode(&ShardCall::Beacon(beacon.clone())), timeout)
            .await
            .map_err(|e| e.to_string())?;
        match decode::<ShardAnswer>(&bytes)? {
            ShardAnswer::Quiet(shards) => Ok(shards),
            other => Err(format!("unexpected shard answer: {other:?}")),
        }
    }

    /// Asks `target` (the shard's leader) for its ReadIndex.
    pub async fn read_index(
        endpoint: &PeerEndpoint,
        target: u64,
        shard: ShardId,
        timeout: Duration,
    ) -> Result<u64, String> {
        let client = ShardClient { endpoint: Some(endpoint.clone()), shard, target };
        match client.call(&ShardCall::ReadIndex(shard), timeout).await.map_err(|e| e.to_string())? {
            ShardAnswer::ReadIndex(index) => Ok(index),
            other => Err(format!("unexpected shard answer: {other:?}")),
        }
    }
}
