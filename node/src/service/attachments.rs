//! Attachments: an upload is streamed to a temporary file with a running
//! SHA-256 and the size limit (never whole in memory), copied to the
//! replicas of the room's shard (a majority at least) before it is
//! answered, then recorded in the room through the shard's log. A download
//! is checked as a history read is and streamed from this node's copy, or
//! from a replica's when this node holds none.
//!
//! The copies travel on the peers' `Rooms` channel, on streams of their own
//! ([`STREAM_FILE_PUT`], [`STREAM_FILE_GET`]): a frame with the header,
//! the bytes in frames, an empty frame.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use quinn::RecvStream;
use quinn::SendStream;
use sha2::Digest;
use sha2::Sha256;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use super::Node;
use super::Session;
use super::may_send;
use super::reads::ReadAt;
use super::rooms::check_room_id;
use crate::clock::now_ms;
use crate::cluster::wire::FileHeader;
use crate::cluster::wire::ForwardedAttach;
use crate::cluster::wire::RoomAnswer;
use crate::cluster::wire::RoomCall;
use crate::cluster::wire::RoomRead;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::peer::frame;
use crate::rooms::RoomRef;
use crate::rooms::attachments;
use crate::rooms::attachments::AttachmentId;
use crate::rooms::attachments::Sha;
use crate::rooms::attachments::StoredAttachment;
use crate::rooms::files::TempFile;
use crate::shards::types::OpResult;
use crate::shards::types::ShardOp;

/// The first frame of a stream that copies a file to a replica.
pub const STREAM_FILE_PUT: u8 = 4;
/// The first frame of a stream that reads a file from a replica.
pub const STREAM_FILE_GET: u8 = 5;
/// Bytes per frame of a file.
const CHUNK: usize = 256 * 1024;
/// How long copying one file to one replica may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a replica may take to start answering a read of a file.
const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// An uploaded file to record in its room.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    /// Its id in the room.
    pub id: AttachmentId,
    /// The content's SHA-256.
    pub sha: Sha,
    /// File name, cleaned.
    pub name: String,
    /// Media type, checked.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// Who uploaded it.
    pub uploader: String,
}

/// A download: what the answer's headers say, and the bytes.
pub struct Download {
    /// File name.
    pub name: String,
    /// Media type.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// The content, in chunks.
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

/// A send named an attachment that is not one of the room's.
pub(crate) fn no_such_attachment() -> ApiError {
    ApiError::bad_request("an attachment is not a file uploaded to this room")
}

/// The user's attachment quota is spent: `rate_limited` with the wait, or
/// `too_large` for a file larger than the whole quota.
fn over_quota(quota: u64, wait_ms: u64) -> ApiError {
    if wait_ms == u64::MAX {
        return ApiError::too_large(format!("an upload is at most your daily attachment quota of {quota} bytes"));
    }
    let mut e = ApiError::rate_limited(wait_ms);
    e.message = format!("your daily attachment quota of {quota} bytes is used up for now; retry later");
    e
}

fn io_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("attachment file: {e}"))
}

impl Node {
    /// The ids a send names, checked: at most
    /// [`attachments::MAX_PER_MESSAGE`], each of `room`, none twice.
    pub fn attachment_ids(&self, room: &str, ids: &[String]) -> Result<Vec<AttachmentId>, ApiError> {
        if ids.len() > attachments::MAX_PER_MESSAGE {
            return Err(ApiError::bad_request(format!(
                "a message carries at most {} attachments",
                attachments::MAX_PER_MESSAGE
            )));
        }
        let mut out = Vec::with_capacity(ids.len());
        for public in ids {
            match attachments::parse_public_id(public) {
                Some((r, id)) if r == room && !out.contains(&id) => out.push(id),
                _ => return Err(no_such_attachment()),
            }
        }
        Ok(out)
    }

    /// Takes an upload to `room` from a member who may send there: the
    /// bytes go to a temporary file, then to the replicas of the room's
    /// shard, then the attachment is recorded; answers it as clients see it.
    pub async fn upload<S, E>(
        &self,
        s: &Session,
        room: &str,
        name: Option<&str>,
        mime: Option<&str>,
        declared: Option<u64>,
        mut body: S,
    ) -> Result<palaver_protocol::Attachment, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        check_room_id(room)?;
        let name = attachments::clean_name(name);
        let mime = attachments::check_type(mime).map_err(ApiError::bad_request)?;
        let r = self.read(|meta| may_send(meta, &s.username, room)).await?;
        self.quotas.take(super::Usage::Send, &s.username, now_ms())?;
        let limit = self.limits.attachment_bytes;
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::too_large(format!("an attachment is at most {limit} bytes")));
        }
        if let Err(wait) = self.quotas.take_upload(&s.username, 1, now_ms()) {
            return Err(over_quota(self.limits.attachment_quota_bytes, wait));
        }
        self.quotas.uploaded(&s.username, 1, false, now_ms());
        let (tmp, mut file) = self.files.temp().await.map_err(io_error)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let idle = Duration::from_millis(self.limits.handshake_timeout_ms.max(1000));
        loop {
            let chunk = match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => return Err(ApiError::bad_request(format!("the upload broke off: {e}"))),
                Ok(None) => break,
                Err(_) => {
                    return Err(ApiError::timeout(format!("no byte of the upload for {} ms", idle.as_millis())));
                }
            };
            size += chunk.len() as u64;
            if size > limit {
                return Err(ApiError::too_large(format!("an attachment is at most {limit} bytes")));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_error)?;
        }
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        let sha: Sha = hasher.finalize().into();
        if let Err(wait) = self.quotas.take_upload(&s.username, size, now_ms()) {
            return Err(over_quota(self.limits.attachment_quota_bytes, wait));
        }
        let id = attachments::make_id(r.key, &sha, &name, &mime);
        let recorded = async {
            self.replicate(&r, tmp, &sha, size).await?;
            let new = NewAttachment {
                id,
                sha,
                name: name.clone(),
                mime: mime.clone(),
                size,
                uploader: s.username.to_string(),
            };
            self.record_attachment(r.clone(), new).await
        };
        let recorded = recorded.await;
        self.quotas.uploaded(&s.username, size, recorded.is_ok(), now_ms());
        recorded?;
        metrics::counter!("palaver_attachments_total").increment(1);
        Ok(palaver_protocol::Attachment { id: attachments::public_id(room, &id), name, kind: mime, size })
    }

    /// Puts a written file on the replicas of the room's shard (this node's
    /// copy kept first if it is one): answers once a majority has it; the
    /// copies to the others go on in the background (a dead replica does
    /// not hold the upload up; one that misses its copy fetches it when it
    /// applies the row).
    async fn replicate(&self, room: &RoomRef, tmp: TempFile, sha: &Sha, size: u64) -> Result<(), ApiError> {
        let shard = self.shard_of(&room.id)?;
        let replicas: Vec<u64> = match &self.cluster {
            Some(_) => self.meta().layout.replicas(shard).to_vec(),
            None => vec![self.id],
        };
        let need = replicas.len() / 2 + 1;
        let mut copies = 0;
        // Read by the copies to the others: the kept file, or the temporary
        // one, which then lives until the last copy is done.
        let (path, tmp) = if replicas.contains(&self.id) {
            self.files.keep(tmp, sha).await.map_err(io_error)?;
            copies += 1;
            (self.files.path(sha), None)
        } else {
            (tmp.path().to_path_buf(), Some(tmp))
        };
        let mut pushes: futures_util::stream::FuturesUnordered<_> = match &self.cluster {
            Some(cluster) => replicas
                .iter()
                .filter(|r| **r != self.id)
                .map(|peer| push_logged(cluster.endpoint.clone(), *peer, path.clone(), *sha, size))
                .collect(),
            None => futures_util::stream::FuturesUnordered::new(),
        };
        while copies < need {
            match pushes.next().await {
                Some(true) => copies += 1,
                Some(false) => {}
                None => break,
            }
        }
        if !pushes.is_empty() {
            tokio::spawn(async move {
                while pushes.next().await.is_some() {}
                drop(tmp);
            });
        }
        if copies < need {
            return Err(ApiError::unavailable(format!(
                "the file reached {copies} of the room's {} replicas; retry",
                replicas.len()
            )));
        }
        Ok(())
    }

    /// Records an attachment where the room's shard is led.
    async fn record_attachment(&self, room: RoomRef, new: NewAttachment) -> Result<(), ApiError> {
        let shard = self.shard_of(&room.id)?;
        let shards = self.shards();
        if shards.led(shard).is_none() && shards.leader(shard).is_none() {
            shards.wait_for_leader(shard, Duration::from_secs(5)).await;
        }
        let leader = shards
            .leader(shard)
            .or_else(|| shards.led(shard).map(|_| self.id))
            .ok_or_else(|| ApiError::unavailable(format!("shard {shard} has no leader; retry")))?;
        if leader == self.id {
            return self.attach_on_shard(room, new).await;
        }
        let call = RoomCall::Attach(ForwardedAttach {
            uploader: new.uploader,
            room: room.id.to_string(),
            id: new.id,
            sha: new.sha,
            name: new.name,
            mime: new.mime,
            size: new.size,
            applied: self.consensus.applied_index(),
        });
        match self.call_leader(leader, &call).await? {
            RoomAnswer::Attached => Ok(()),
            other => Err(ApiError::internal(format!("an upload answered {other:?}"))),
        }
    }

    /// Records an attachment through its shard's log; this node must lead
    /// the shard.
    pub(crate) async fn attach_on_shard(&self, room: RoomRef, new: NewAttachment) -> Result<(), ApiError> {
        let shards = self.shards();
        let shard = self.shard_of(&room.id)?;
        let raft = shards
            .led(shard)
            .ok_or_else(|| ApiError::unavailable(format!("node {} does not lead shard {shard}; retry", self.id)))?;
        let op = ShardOp::Attach {
            room_key: room.key,
            room: room.id.to_string(),
            id: new.id,
            sha: new.sha,
            name: new.name,
            mime: new.mime,
            size: new.size,
            uploader: new.uploader,
        };
        match super::shards::answered(shards.enqueue(shard, raft, op).await?).await? {
            OpResult::Attached => Ok(()),
            other => Err(ApiError::internal(format!("an upload answered {other:?}"))),
        }
    }

    /// An attachment's row in this node's copy of the room's shard; when
    /// missing, after catching up with the shard's leader (so an upload
    /// answered anywhere is found).
    pub(super) async fn local_attachment(
        &self,
        room: &RoomRef,
        id: &AttachmentId,
    ) -> Result<Option<StoredAttachment>, ApiError> {
        let get = || -> Result<Option<StoredAttachment>, ApiError> {
            let key = attachments::attachment_key(room.key, id);
            match self.log.store().get(attachments::ATTACHMENTS, &key)? {
                Some(bytes) => Ok(Some(attachments::decode(&bytes)?)),
                None => Ok(None),
            }
        };
        if let Some(row) = get()?.filter(StoredAttachment::live) {
            return Ok(Some(row));
        }
        self.catch_up_room(room).await?;
        get()
    }

    /// An attachment's row, read where the room's shard lives, and the
    /// replicas that should hold its file.
    async fn attachment_row(&self, room: &RoomRef, id: &AttachmentId) -> Result<Option<StoredAttachment>, ApiError> {
        let shard = self.shard_of(&room.id)?;
        match self.read_at(shard) {
            ReadAt::Here => self.local_attachment(room, id).await,
            ReadAt::Replicas(replicas) => {
                let read = RoomRead::Attachment { room: room.id.to_string(), room_key: room.key, id: *id };
                match self.read_remote(&replicas, read).await? {
                    RoomAnswer::Attachment(row) => Ok(row),
                    other => Err(ApiError::internal(format!("an attachment read answered {other:?}"))),
                }
            }
        }
    }

    /// A download for whoever may read the attachment's room (`not_found`
    /// otherwise, as for history).
    pub async fn download(&self, s: &Session, public_id: &str) -> Result<Download, ApiError> {
        let (room, id) = attachments::parse_public_id(public_id).ok_or_else(|| ApiError::not_found("attachment"))?;
        let r = self.readable_room(s, room).await?;
        let row = self
            .attachment_row(&r, &id)
            .await?
            .filter(StoredAttachment::live)
            .ok_or_else(|| ApiError::not_found("attachment"))?;
        let body = match self.local_file(&row.sha, row.size).await {
            Some(body) => body,
            None => self.remote_file(&r.id, &row.sha, row.size).await?,
        };
        Ok(Download { name: row.name, mime: row.mime, size: row.size, body })
    }

    /// This node's copy of a content, if it has a whole one.
    async fn local_file(&self, sha: &Sha, size: u64) -> Option<BoxStream<'static, std::io::Result<Bytes>>> {
        let file = tokio::fs::File::open(self.files.path(sha)).await.ok()?;
        if file.metadata().await.ok()?.len() != size {
            return None;
        }
        Some(file_stream(file))
    }

    /// A content streamed from a replica of the room's shard that has it.
    async fn remote_file(
        &self,
        room: &str,
        sha: &Sha,
        size: u64,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, ApiError> {
        let cluster = self.cluster.as_ref().ok_or_else(|| ApiError::internal("the attachment's file is missing"))?;
        let shard = self.shard_of(room)?;
        let replicas: Vec<u64> = self.meta().layout.replicas(shard).iter().copied().filter(|r| *r != self.id).collect();
        let mut last = String::from("no replica to read from");
        for peer in replicas {
            let opened = async {
                let (mut send, mut recv) =
                    cluster.endpoint.open_stream(peer, Channel::Rooms).await.map_err(|e| e.to_string())?;
                frame::write_frame(&mut send, &[STREAM_FILE_GET]).await.map_err(|e| e.to_string())?;
                frame::write_frame(&mut send, &encode(sha)).await.map_err(|e| e.to_string())?;
                let _ = send.finish();
                let first = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no answer")?;
                match decode::<Result<u64, String>>(&first)? {
                    Ok(len) if len == size => Ok(recv),
                    Ok(len) => Err(format!("{len} bytes where {size} were recorded")),
                    Err(e) => Err(e),
                }
            };
            match tokio::time::timeout(GET_TIMEOUT, opened).await {
                Ok(Ok(recv)) => return Ok(peer_stream(recv)),
                Ok(Err(e)) => last = format!("node {peer}: {e}"),
                Err(_) => last = format!("node {peer} did not answer"),
            }
        }
        Err(ApiError::unavailable(format!("no replica could send the attachment ({last}); retry")))
    }
}

/// When a node first looks for files its rows name and it lacks, and how
/// often after.
const SCRUB_FIRST: Duration = Duration::from_secs(5);
const SCRUB_EVERY: Duration = Duration::from_secs(3600);
/// When a node first removes the files no row names, and how often after:
/// late enough that the shards replayed what a crash took from the store.
const SWEEP_FIRST: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Keeps this node's files in line with its rows: fetches the missing
/// ones ([`fetch_wanted`]), removes the ones no row names.
pub(super) async fn maintain(node: std::sync::Weak<Node>) {
    let start = tokio::time::Instant::now();
    let mut scrub = tokio::time::interval_at(start + SCRUB_FIRST, SCRUB_EVERY);
    let mut sweep = tokio::time::interval_at(start + SWEEP_FIRST, SWEEP_EVERY);
    loop {
        let scrubbing = tokio::select! {
            _ = scrub.tick() => true,
            _ = sweep.tick() => false,
        };
        let Some(n) = node.upgrade() else { return };
        let (files, store) = (n.files.clone(), n.log.store().clone());
        let cluster = n.cluster.is_some();
        drop(n);
        let done = tokio::task::spawn_blocking(move || match (scrubbing, cluster) {
            (true, true) => files.scrub(&store),
            (true, false) => Ok(()),
            (false, _) => files.sweep(&store),
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, scrubbing, "attachment files not checked");
        }
    }
}

/// Attempts at fetching a wanted file, and the wait before the first retry
/// (tripled each time).
const FETCH_ATTEMPTS: u32 = 6;
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// Fetches the files this node's rows name and it lacks ([`Files::want`]:
/// a copy that did not arrive with its upload, rows that came with a
/// snapshot) from the replicas of their room's shard, so each file ends up
/// on every replica as the messages do.
///
/// [`Files::want`]: crate::rooms::files::Files::want
pub(super) async fn fetch_wanted(
    node: std::sync::Weak<Node>,
    mut wanted: tokio::sync::mpsc::UnboundedReceiver<crate::rooms::files::Wanted>,
) {
    let busy: Arc<parking_lot::Mutex<std::collections::HashSet<Sha>>> = Arc::default();
    while let Some(w) = wanted.recv().await {
        let Some(n) = node.upgrade() else { return };
        if n.files.has(&w.sha) || !busy.lock().insert(w.sha) {
            continue;
        }
        drop(n);
        let (node, busy) = (node.clone(), busy.clone());
        tokio::spawn(async move {
            let mut wait = FETCH_RETRY;
            for attempt in 1..=FETCH_ATTEMPTS {
                let Some(n) = node.upgrade() else { break };
                match n.fetch_file(&w).await {
                    Ok(()) => {
                        tracing::debug!(sha = %hex::encode(w.sha), "a missing attachment file fetched");
                        break;
                    }
                    Err(e) if attempt == FETCH_ATTEMPTS => {
                        tracing::warn!(sha = %hex::encode(w.sha), error = %e.message, "a missing attachment file could not be fetched");
                    }
                    Err(_) => {}
                }
                drop(n);
                tokio::time::sleep(wait).await;
                wait *= 3;
            }
            busy.lock().remove(&w.sha);
        });
    }
}

impl Node {
    /// Copies a content from a replica of its room's shard to this node.
    async fn fetch_file(&self, w: &crate::rooms::files::Wanted) -> Result<(), ApiError> {
        if self.files.has(&w.sha) {
            return Ok(());
        }
        let mut body = self.remote_file(&w.room, &w.sha, w.size).await?;
        let (tmp, mut file) = self.files.temp().await.map_err(io_error)?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ApiError::unavailable(format!("the copy broke off: {e}")))?;
            received += chunk.len() as u64;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_error)?;
        }
        let sha: Sha = hasher.finalize().into();
        if received != w.size || sha != w.sha {
            return Err(ApiError::internal("a replica's copy differs from its row"));
        }
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        self.files.keep(tmp, &sha).await.map_err(io_error)?;
        // Its row is applied already: the file goes by the rows at once
        // (and now, if a removal came while it was on its way).
        self.files.unpin(&sha);
        let (files, store) = (self.files.clone(), self.log.store().clone());
        let _ = tokio::task::spawn_blocking(move || files.collect(&store, &[sha])).await;
        Ok(())
    }
}

/// Copies a file to one replica, within [`COPY_TIMEOUT`]; answers whether
/// it has it on disk.
async fn push_logged(endpoint: PeerEndpoint, peer: u64, path: PathBuf, sha: Sha, size: u64) -> bool {
    match tokio::time::timeout(COPY_TIMEOUT, push_file(&endpoint, peer, &path, &sha, size)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(peer, error = %e, "an attachment did not reach a replica");
            false
        }
        Err(_) => {
            tracing::warn!(peer, "copying an attachment to a replica timed out");
            false
        }
    }
}

/// Copies a file to one peer; answers once the peer has it on disk.
async fn push_file(
    endpoint: &PeerEndpoint,
    peer: u64,
    path: &std::path::Path,
    sha: &Sha,
    size: u64,
) -> Result<(), String> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = endpoint.open_stream(peer, Channel::Rooms).await.map_err(|e| e.to_string())?;
    let e = |e: frame::FrameError| e.to_string();
    frame::write_frame(&mut send, &[STREAM_FILE_PUT]).await.map_err(e)?;
    frame::write_frame(&mut send, &encode(&FileHeader { sha: *sha, size })).await.map_err(e)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        frame::write_frame(&mut send, &buf[..n]).await.map_err(e)?;
    }
    frame::write_frame(&mut send, &[]).await.map_err(e)?;
    let _ = send.finish();
    let answer = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME)
        .await
        .map_err(e)?
        .ok_or("the replica ended the stream without an answer")?;
    decode::<Result<(), String>>(&answer)?
}

/// A file in chunks.
fn file_stream(file: tokio::fs::File) -> BoxStream<'static, std::io::Result<Bytes>> {
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// The file frames of a get stream, until the empty frame.
fn peer_stream(recv: RecvStream) -> BoxStream<'static, std::io::Result<Bytes>> {
    futures_util::stream::unfold(Some(recv), |recv| async move {
        let mut recv = recv?;
        match frame::read_frame(&mut recv, CHUNK).await {
            Ok(Some(chunk)) if chunk.is_empty() => None,
            Ok(Some(chunk)) => Some((Ok(Bytes::from(chunk)), Some(recv))),
            Ok(None) => Some((Err(std::io::Error::other("the replica's stream ended early")), None)),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    })
    .boxed()
}

/// Receives a copy of a file from a peer: checks its length and hash, keeps
/// it, answers.
pub(super) async fn serve_put(node: Arc<Node>, mut recv: RecvStream, mut send: SendStream) {
    let answer: Result<(), String> = async {
        let header = frame::read_frame(&mut recv, 1024).await.map_err(|e| e.to_string())?.ok_or("no header")?;
        let header: FileHeader = decode(&header)?;
        if header.size > node.limits.attachment_bytes {
            return Err(format!("{} bytes is over this node's attachment limit", header.size));
        }
        let (tmp, mut file) = node.files.temp().await.map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        loop {
            let chunk = frame::read_frame(&mut recv, CHUNK)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the file was cut short")?;
            if chunk.is_empty() {
                break;
            }
            received += chunk.len() as u64;
            if received > header.size {
                return Err(format!("more than the {} bytes announced", header.size));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        let sha: Sha = hasher.finalize().into();
        if received != header.size || sha != header.sha {
            return Err("the file arrived damaged (length or SHA-256 differs)".to_string());
        }
        file.sync_all().await.map_err(|e| e.to_string())?;
        drop(file);
        node.files.keep(tmp, &sha).await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = &answer {
        tracing::warn!(error = %e, "refused an attachment copy");
    }
    if frame::write_frame(&mut send, &encode(&answer)).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

/// Sends a peer this node's copy of a file, if it has a whole one.
pub(super) async fn serve_get(node: Arc<Node>, mut recv: RecvStream, mut send: SendStream) {
    let sha: Result<Sha, String> = match frame::read_frame(&mut recv, 64).await {
        Ok(Some(bytes)) => decode(&bytes),
        Ok(None) => Err("no content named".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let opened = match sha {
        Ok(sha) => match tokio::fs::File::open(node.files.path(&sha)).await {
            Ok(file) => match file.metadata().await {
                Ok(m) => Ok((file, m.len())),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(format!("node {} holds no copy: {e}", node.id)),
        },
        Err(e) => Err(e),
    };
    let (mut file, len) = match opened {
        Ok(found) => found,
        Err(e) => {
            if frame::write_frame(&mut send, &encode(&Err::<u64, String>(e))).await.is_ok() {
                let _ = send.finish();
            }
            return;
        }
    };
    if frame::write_frame(&mut send, &encode(&Ok::<u64, String>(len))).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if frame::write_frame(&mut send, &buf[..n]).await.is_err() {
                    return;
                }
            }
            // Cut short: the reader sees the stream end without the empty frame.
            Err(_) => return,
        }
    }
    if frame::write_frame(&mut send, &[]).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}
