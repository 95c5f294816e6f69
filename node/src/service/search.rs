//! Search: the messages of the rooms a user may read that hold every word
//! of a query, newest first. Each shard's rooms are searched where the
//! shard has a replica (this node's index when it holds one), after that
//! replica has applied everything answered before the search began, so a
//! search sees the caller's own messages like a history read does.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use super::ApiError;
use super::Node;
use super::Session;
use crate::cluster::wire::RoomAnswer;
use crate::cluster::wire::RoomRead;
use crate::permissions::Action;
use crate::rooms::Message;
use crate::rooms::RoomRef;
use crate::search::Hit;
use crate::shards::placement::ShardId;

use super::reads::MAX_READ_ROOMS;
use super::reads::ReadAt;
use super::rooms::room_ref;

/// Results a search answers when the client names no limit.
pub const DEFAULT_RESULTS: usize = 20;
/// Most results one search answers.
pub const MAX_RESULTS: usize = 100;
/// Most rooms a search of every readable room looks in.
pub const MAX_SEARCH_ROOMS: usize = 10_000;

/// A message found, with its room.
#[derive(Debug, Clone)]
pub struct Found {
    /// The room's id.
    pub room: Arc<str>,
    /// The message as it is now.
    pub message: Message,
}

impl Node {
    /// Searches one room (`Some`) or every room the caller may read.
    pub async fn search(
        &self,
        s: &Session,
        room: Option<&str>,
        q: &str,
        limit: Option<usize>,
    ) -> Result<Vec<Found>, ApiError> {
        let words = self.search.words(q).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let limit = limit.unwrap_or(DEFAULT_RESULTS).clamp(1, MAX_RESULTS);
        let rooms = match room {
            Some(room) => vec![self.readable_room(s, room).await?],
            None => self.readable_rooms(s).await?,
        };
        let found = self.search_rooms(&rooms, &words, limit).await?;
        let ids: HashMap<u64, Arc<str>> = rooms.into_iter().map(|r| (r.key, r.id)).collect();
        Ok(found
            .into_iter()
            .filter_map(|(room_key, message)| ids.get(&room_key).map(|room| Found { room: room.clone(), message }))
            .collect())
    }

    /// The rooms the caller may read: the rooms they are a member of, then
    /// public ones, [`MAX_SEARCH_ROOMS`] at most.
    async fn readable_rooms(&self, s: &Session) -> Result<Vec<RoomRef>, ApiError> {
        self.read(|meta| {
            let (mut mine, mut public) = (Vec::new(), Vec::new());
            for (id, r) in &meta.rooms {
                if r.members.contains_key(&*s.username) {
                    mine.push(room_ref(&r.info, id));
                } else if meta.authorize(&s.username, id, Action::Read).is_ok() {
                    public.push(room_ref(&r.info, id));
                }
            }
            mine.extend(public);
            mine.truncate(MAX_SEARCH_ROOMS);
            Ok(mine)
        })
        .await
    }

    /// Searches `rooms` shard by shard, here or on a replica; answers
    /// (room key, message) newest first.
    async fn search_rooms(
        &self,
        rooms: &[RoomRef],
        words: &[String],
        limit: usize,
    ) -> Result<Vec<(u64, Message)>, ApiError> {
        let mut by_shard: BTreeMap<ShardId, Vec<&RoomRef>> = BTreeMap::new();
        for room in rooms {
            by_shard.entry(self.shard_of(&room.id)?).or_default().push(room);
        }
        let (mut here, mut remote) = (Vec::new(), Vec::new());
        for (shard, rooms) in by_shard {
            match self.read_at(shard) {
                ReadAt::Here => here.push(rooms),
                ReadAt::Replicas(replicas) => remote.push((replicas, rooms)),
            }
        }
        let local = async {
            // One catch-up per shard, all at once, then one index search.
            let caught_up = here.iter().map(|rooms| self.catch_up_room(rooms[0]));
            for done in futures_util::future::join_all(caught_up).await {
                done?;
            }
            let keys: Vec<u64> = here.iter().flat_map(|rooms| rooms.iter().map(|r| r.key)).collect();
            self.search_here(keys, words.to_vec(), limit).await
        };
        let elsewhere = remote.iter().flat_map(|(replicas, rooms)| {
            rooms.chunks(MAX_READ_ROOMS).map(move |chunk| async move {
                let read = RoomRead::Search {
                    rooms: chunk.iter().map(|r| (r.id.to_string(), r.key)).collect(),
                    words: words.to_vec(),
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                };
                match self.read_remote(replicas, read).await? {
                    RoomAnswer::Found(found) => Ok(found),
                    other => Err(ApiError::internal(format!("a search answered {other:?}"))),
                }
            })
        });
        let (local, elsewhere) = futures_util::join!(local, futures_util::future::join_all(elsewhere));
        let mut all = local?;
        for found in elsewhere {
            all.extend(found?);
        }
        all.sort_by_key(|(_, m)| std::cmp::Reverse((m.stored.ts, m.seq)));
        all.truncate(limit);
        Ok(all)
    }

    /// Searches this node's index for `keys` once every change applied here
    /// is in it, and reads each message found as it is now.
    async fn search_here(
        &self,
        keys: Vec<u64>,
        words: Vec<String>,
        limit: usize,
    ) -> Result<Vec<(u64, Message)>, ApiError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.search.refresh().await.map_err(|e| ApiError::unavailable(format!("{e}; retry")))?;
        let (index, log) = (self.search.clone(), self.log.clone());
        let found = tokio::task::spawn_blocking(move || -> Result<Vec<(u64, Message)>, ApiError> {
            let hits = index.search(&keys, &words, limit).map_err(|e| ApiError::internal(e.to_string()))?;
            let mut found = Vec::with_capacity(hits.len());
            for Hit { room_key, seq, .. } in hits {
                // Deleted or expired since it was indexed: not an answer.
                if let Some(m) = log.get_stored(room_key, seq)?
                    && m.stored.body.is_some()
                {
                    found.push((room_key, m));
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| ApiError::internal(format!("search task: {e}")))??;
        Ok(found)
    }

    /// Serves a peer's search of rooms on one shard held here.
    pub(crate) async fn serve_search(
        &self,
        rooms: Vec<(String, u64)>,
        words: Vec<String>,
        limit: u32,
    ) -> Result<RoomAnswer, ApiError> {
        if rooms.len() > MAX_READ_ROOMS {
            return Err(ApiError::bad_request("too many rooms in one search"));
        }
        if words.is_empty() || words.len() > crate::search::MAX_QUERY_WORDS {
            return Err(ApiError::bad_request("a search names 1 to 16 words"));
        }
        let mut caught_up = std::collections::BTreeSet::new();
        for (id, key) in &rooms {
            let shard = self.shard_of(id)?;
            if !matches!(self.read_at(shard), ReadAt::Here) {
                return Err(ApiError::unavailable(format!("node {} holds no replica of shard {shard}", self.id)));
            }
            if caught_up.insert(shard) {
                self.catch_up_room(&RoomRef { key: *key, id: id.as_str().into() }).await?;
            }
        }
        let keys = rooms.iter().map(|(_, key)| *key).collect();
        let limit = (limit as usize).min(MAX_RESULTS);
        Ok(RoomAnswer::Found(self.search_here(keys, words, limit).await?))
    }
}
