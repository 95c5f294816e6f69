//! Reading room logs on any node: from this node's copy when it holds a
//! replica of the room's shard, otherwise from a replica that does (the
//! shard's leader first, as far as this node knows it). A node keeps only
//! the shards placed on it, so most rooms of a large cluster are read
//! remotely.

use std::collections::BTreeMap;
use std::time::Duration;

use palaver_protocol::Code;

use super::ApiError;
use super::Node;
use crate::cluster::relay;
use crate::cluster::relay::WatchGuard;
use crate::cluster::wire::RoomAnswer;
use crate::cluster::wire::RoomCall;
use crate::cluster::wire::RoomRead;
use crate::peer::Channel;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::rooms::Message;
use crate::rooms::RoomRef;
use crate::shards::placement::ShardId;

/// How long one remote read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most rooms one remote `LastSeqs` read names.
pub const MAX_READ_ROOMS: usize = 1_000;

/// Where a room's log is read.
pub(super) enum ReadAt {
    /// This node holds a replica.
    Here,
    /// These nodes do, the likely leader first.
    Replicas(Vec<u64>),
}

impl Node {
    /// Runs a read again, once, when it failed with `unavailable` while
    /// this node opened or closed shard groups: a local read whose group
    /// closed under it (the shard moved away) is then made on a replica.
    async fn moving_shards_retried<T, F, Fut>(&self, read: F) -> Result<T, ApiError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let before = self.shards().host.open_shards();
        match read().await {
            Err(e) if e.code == Code::Unavailable && self.shards().host.open_shards() != before => read().await,
            answer => answer,
        }
    }

    pub(super) fn read_at(&self, shard: ShardId) -> ReadAt {
        let shards = self.shards();
        if self.cluster.is_none() || shards.host.get(shard).is_some() {
            return ReadAt::Here;
        }
        let mut replicas = self.meta().layout.replicas(shard).to_vec();
        if let Some(leader) = shards.leader(shard)
            && let Some(i) = replicas.iter().position(|r| *r == leader)
        {
            replicas[..=i].rotate_right(1);
        }
        ReadAt::Replicas(replicas)
    }

    /// Asks the replicas in turn until one answers.
    pub(super) async fn read_remote(&self, replicas: &[u64], read: RoomRead) -> Result<RoomAnswer, ApiError> {
        let cluster = self.cluster.as_ref().ok_or_else(|| ApiError::internal("no peers to read from"))?;
        let call = encode(&RoomCall::Read(read));
        let mut last = ApiError::unavailable("the room's shard has no replica yet; retry");
        for replica in replicas {
            let answer = cluster.endpoint.request(*replica, Channel::Rooms, call.clone(), READ_TIMEOUT).await;
            match answer.map_err(|e| e.to_string()).and_then(|b| decode::<RoomAnswer>(&b)) {
                Ok(RoomAnswer::Refused(code, message)) => {
                    let e = ApiError::new(Code::parse(&code), message);
                    if e.code != Code::Unavailable {
                        return Err(e);
                    }
                    last = e;
                }
                Ok(answer) => return Ok(answer),
                Err(e) => last = ApiError::unavailable(format!("node {replica} did not answer a read: {e}; retry")),
            }
        }
        Err(last)
    }

    /// The room's last seq as far as this node or the replica asked has
    /// applied; with `fresh`, at least every message answered anywhere
    /// before the call.
    pub async fn last_seq(&self, room: &RoomRef, fresh: bool) -> Result<u64, ApiError> {
        let seqs = self.last_seqs(std::slice::from_ref(room), fresh).await?;
        seqs.first().copied().ok_or_else(|| ApiError::internal("a read answered no seq"))
    }

    /// [`Node::last_seq`] of many rooms: one catch-up per shard held here,
    /// one remote read per shard held elsewhere, those reads at once.
    pub async fn last_seqs(&self, rooms: &[RoomRef], fresh: bool) -> Result<Vec<u64>, ApiError> {
        self.moving_shards_retried(|| self.last_seqs_once(rooms, fresh)).await
    }

    async fn last_seqs_once(&self, rooms: &[RoomRef], fresh: bool) -> Result<Vec<u64>, ApiError> {
        let mut seqs = vec![0; rooms.len()];
        let mut here: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        let mut remote: BTreeMap<ShardId, (Vec<u64>, Vec<usize>)> = BTreeMap::new();
        for (i, room) in rooms.iter().enumerate() {
            let shard = self.shard_of(&room.id)?;
            // Where a shard is read is decided once per shard, not per room.
            if let Some(indexes) = here.get_mut(&shard) {
                indexes.push(i);
            } else if let Some((_, indexes)) = remote.get_mut(&shard) {
                indexes.push(i);
            } else {
                match self.read_at(shard) {
                    ReadAt::Here => {
                        here.insert(shard, vec![i]);
                    }
                    ReadAt::Replicas(replicas) => {
                        remote.insert(shard, (replicas, vec![i]));
                    }
                }
            }
        }
        for indexes in here.values() {
            if fresh {
                self.catch_up_room(&rooms[indexes[0]]).await?;
            }
            for i in indexes {
                seqs[*i] = self.log.last_seq(rooms[*i].key)?;
            }
        }
        let reads = remote.values().flat_map(|(replicas, indexes)| {
            indexes.chunks(MAX_READ_ROOMS).map(move |chunk| async move {
                let asked = chunk.iter().map(|i| (rooms[*i].id.to_string(), rooms[*i].key)).collect();
                match self.read_remote(replicas, RoomRead::LastSeqs { rooms: asked, fresh }).await? {
                    RoomAnswer::LastSeqs(found) if found.len() == chunk.len() => Ok((chunk, found)),
                    other => Err(ApiError::internal(format!("a last-seq read answered {other:?}"))),
                }
            })
        });
        for answer in futures_util::future::join_all(reads).await {
            let (chunk, found) = answer?;
            for (i, seq) in chunk.iter().zip(found) {
                seqs[*i] = seq;
            }
        }
        Ok(seqs)
    }

    /// Up to `limit` messages after `after`. `up_to` is a seq the caller
    /// knows the room has reached (0 if none): a copy that has not applied
    /// it yet catches up first, so the answer never stops short of it.
    pub async fn read_after(
        &self,
        room: &RoomRef,
        after: u64,
        limit: usize,
        up_to: u64,
    ) -> Result<Vec<Message>, ApiError> {
        self.moving_shards_retried(|| self.read_after_once(room, after, limit, up_to)).await
    }

    async fn read_after_once(
        &self,
        room: &RoomRef,
        after: u64,
        limit: usize,
        up_to: u64,
    ) -> Result<Vec<Message>, ApiError> {
        let shard = self.shard_of(&room.id)?;
        match self.read_at(shard) {
            ReadAt::Here => {
                if up_to > 0 && self.log.last_seq(room.key)? < up_to {
                    self.catch_up_room(room).await?;
                }
                Ok(self.log.after(room.key, after, limit)?)
            }
            ReadAt::Replicas(replicas) => {
                let read = RoomRead::After {
                    room: room.id.to_string(),
                    room_key: room.key,
                    after,
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                    up_to,
                    fresh: false,
                };
                messages(self.read_remote(&replicas, read).await?)
            }
        }
    }

    /// A page of history read where the room's shard lives: up to `limit`
    /// messages after or before the cursor, ascending, with every message
    /// answered anywhere before the call (the reader's own included).
    pub async fn read_page(
        &self,
        room: &RoomRef,
        page: palaver_protocol::Page,
        limit: usize,
    ) -> Result<Vec<Message>, ApiError> {
        self.moving_shards_retried(|| self.read_page_once(room, page, limit)).await
    }

    async fn read_page_once(
        &self,
        room: &RoomRef,
        page: palaver_protocol::Page,
        limit: usize,
    ) -> Result<Vec<Message>, ApiError> {
        let shard = self.shard_of(&room.id)?;
        match self.read_at(shard) {
            ReadAt::Here => {
                self.catch_up_room(room).await?;
                Ok(match page {
                    palaver_protocol::Page::After(after) => self.log.after(room.key, after, limit)?,
                    palaver_protocol::Page::Before(before) => self.log.before(room.key, before, limit)?,
                })
            }
            ReadAt::Replicas(replicas) => {
                let limit = u32::try_from(limit).unwrap_or(u32::MAX);
                let (room_id, room_key) = (room.id.to_string(), room.key);
                let read = match page {
                    palaver_protocol::Page::After(after) => {
                        RoomRead::After { room: room_id, room_key, after, limit, up_to: 0, fresh: true }
                    }
                    palaver_protocol::Page::Before(before) => {
                        RoomRead::Before { room: room_id, room_key, before, limit }
                    }
                };
                messages(self.read_remote(&replicas, read).await?)
            }
        }
    }

    /// Starts listening to a room here: answers a guard that keeps its
    /// events coming to this node's hub (relayed by a replica when this
    /// node holds none), and the room's last seq such that every message
    /// after it will be published here.
    pub async fn listen_to_room(&self, room: &RoomRef) -> Result<(Option<WatchGuard>, u64), ApiError> {
        let shard = self.shard_of(&room.id)?;
        let Some(cluster) = &self.cluster else { return Ok((None, self.log.last_seq(room.key)?)) };
        let here = self.shards().host.get(shard).is_some();
        let guard = cluster.watcher.listen(room, shard, here);
        if here {
            return Ok((Some(guard), self.log.last_seq(room.key)?));
        }
        relay::reconcile(self, &cluster.watcher);
        match cluster.watcher.flowing(room.key, relay::CONFIRM_WAIT).await? {
            Some(last) => Ok((Some(guard), last)),
            None => Ok((Some(guard), self.log.last_seq(room.key)?)),
        }
    }

    /// Serves a peer's read of a room this node holds a replica of.
    pub(crate) async fn serve_read(&self, read: RoomRead) -> Result<RoomAnswer, ApiError> {
        let here = |room: &str| -> Result<(), ApiError> {
            let shard = self.shard_of(room)?;
            match self.shards().host.get(shard) {
                Some(_) => Ok(()),
                None => Err(ApiError::unavailable(format!("node {} holds no replica of shard {shard}", self.id))),
            }
        };
        let room_ref = |id: &str, key: u64| RoomRef { key, id: id.into() };
        match read {
            RoomRead::LastSeqs { rooms, fresh } => {
                if rooms.len() > MAX_READ_ROOMS {
                    return Err(ApiError::bad_request("too many rooms in one read"));
                }
                let mut seqs = Vec::with_capacity(rooms.len());
                let mut caught_up = std::collections::BTreeSet::new();
                for (id, key) in &rooms {
                    here(id)?;
                    // The rooms of one read share a shard: one catch-up does.
                    if fresh && caught_up.insert(self.shard_of(id)?) {
                        self.catch_up_room(&room_ref(id, *key)).await?;
                    }
                    seqs.push(self.log.last_seq(*key)?);
                }
                Ok(RoomAnswer::LastSeqs(seqs))
            }
            RoomRead::After { room, room_key, after, limit, up_to, fresh } => {
                here(&room)?;
                if fresh || self.log.last_seq(room_key)? < up_to {
                    self.catch_up_room(&room_ref(&room, room_key)).await?;
                }
                let limit = (limit as usize).min(crate::rooms::MAX_PAGE);
                Ok(RoomAnswer::Messages(self.log.after(room_key, after, limit)?))
            }
            RoomRead::Before { room, room_key, before, limit } => {
                here(&room)?;
                self.catch_up_room(&room_ref(&room, room_key)).await?;
                let limit = (limit as usize).min(crate::rooms::MAX_PAGE);
                Ok(RoomAnswer::Messages(self.log.before(room_key, before, limit)?))
            }
            RoomRead::Attachment { room, room_key, id } => {
                here(&room)?;
                Ok(RoomAnswer::Attachment(self.local_attachment(&room_ref(&room, room_key), &id).await?))
            }
            RoomRead::Search { rooms, words, limit } => self.serve_search(rooms, words, limit).await,
        }
    }
}

fn messages(answer: RoomAnswer) -> Result<Vec<Message>, ApiError> {
    match answer {
        RoomAnswer::Messages(m) => Ok(m),
        other => Err(ApiError::internal(format!("a page read answered {other:?}"))),
    }
}
