//! Retention: a room's messages older than its `retention_days` (the
//! owner's choice, else the cluster's default; 0 keeps them forever) are
//! removed. The leader of each shard looks at its rooms now and then and
//! writes an `Expire` op to the shard's log, so every replica removes the
//! same messages (and their index entries) as it applies it; the room's
//! audit records what went.

use std::sync::Weak;
use std::time::Duration;

use super::ApiError;
use super::Node;
use super::Session;
use super::rooms::check_room_id;
use super::rooms::room_ref;
use crate::clock::now_ms;
use crate::config::ClusterSection;
use crate::meta::MetaCommand;
use crate::meta::MetaOk;
use crate::meta::MetaState;
use crate::meta::RoomOp;
use crate::rooms::RoomRef;
use crate::shards::types::OpResult;
use crate::shards::types::ShardOp;

/// A day, ms.
pub const DAY_MS: u64 = 86_400_000;
/// Longest retention a room may have, days (100 years).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// How long messages are kept, cluster-wide.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Days a room keeps messages unless its owner set otherwise (0: forever).
    pub default_days: u32,
    /// The length of a day, ms (shorter only in tests and try-outs).
    pub day_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { default_days: 0, day_ms: DAY_MS }
    }
}

impl Retention {
    /// The cluster file's retention settings.
    pub fn of(cluster: &ClusterSection) -> Self {
        Self { default_days: cluster.retention_days, day_ms: cluster.retention_day_ms.max(1) }
    }

    /// How often a shard leader looks for expired messages: a hundredth of
    /// a day, between 100 ms and a minute.
    fn check_every(&self) -> Duration {
        Duration::from_millis((self.day_ms / 100).clamp(100, 60_000))
    }
}

impl Node {
    /// The days room `room` keeps its messages (0: forever).
    pub fn retention_days(&self, meta: &MetaState, room: &str) -> u32 {
        meta.retention.get(room).copied().unwrap_or(self.retention.default_days)
    }

    /// Changes a room's title and/or retention (its owner, or an admin);
    /// answers the room as it is now.
    pub async fn configure_room(
        &self,
        s: &Session,
        room: &str,
        title: Option<String>,
        retention_days: Option<u32>,
    ) -> Result<palaver_protocol::Room, ApiError> {
        check_room_id(room)?;
        if title.is_none() && retention_days.is_none() {
            return Err(ApiError::bad_request("nothing to change: give title and/or retention_days"));
        }
        if let Some(t) = &title {
            super::rooms::check_title(t)?;
        }
        if retention_days.is_some_and(|d| d > MAX_RETENTION_DAYS) {
            return Err(ApiError::bad_request(format!("retention_days is over {MAX_RETENTION_DAYS}")));
        }
        self.room_op(s, room, RoomOp::Configure { title, retention_days }).await?;
        self.get_room(s, room).await
    }

    /// Expires what is due in the rooms of the shards this node leads.
    async fn expire_due(&self) {
        let leading = self.shards().leading();
        if leading.is_empty() {
            return;
        }
        let due: Vec<(RoomRef, u32)> = {
            let meta = self.meta();
            meta.rooms
                .iter()
                .filter_map(|(id, r)| {
                    let days = self.retention_days(&meta, id);
                    let shard = self.shard_of(id).ok()?;
                    (days > 0 && leading.contains(&shard)).then(|| (room_ref(&r.info, id), days))
                })
                .collect()
        };
        let now = now_ms();
        for (room, days) in due {
            let before_ts = now.saturating_sub(u64::from(days).saturating_mul(self.retention.day_ms));
            // Cheap to ask the store first: most rooms have nothing due.
            match self.log.first_stored(room.key) {
                Ok(Some(m)) if m.stored.ts < before_ts => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(room = %room.id, error = %e, "retention: the room's oldest message is unreadable");
                    continue;
                }
            }
            if let Err(e) = self.expire_room(&room, before_ts).await {
                tracing::warn!(room = %room.id, error = %e.message, "retention: expiry failed; trying again later");
            }
        }
    }

    /// Writes one `Expire` op for `room` and audits what it removed.
    async fn expire_room(&self, room: &RoomRef, before_ts: u64) -> Result<(), ApiError> {
        let shards = self.shards();
        let shard = self.shard_of(&room.id)?;
        let raft = shards.led(shard).ok_or_else(|| ApiError::unavailable("no longer the shard's leader"))?;
        let op = ShardOp::Expire { room_key: room.key, room: room.id.to_string(), before_ts };
        match super::shards::answered(shards.enqueue(shard, raft, op).await?).await? {
            OpResult::Expired { count: 0, .. } => Ok(()),
            OpResult::Expired { count, through_seq } => {
                tracing::info!(room = %room.id, count, through_seq, "retention: messages expired");
                let op = RoomOp::AuditExpire { count, through_seq };
                let cmd = MetaCommand::Room { actor: String::new(), room: room.id.to_string(), op };
                match self.propose(cmd).await? {
                    MetaOk::Done => Ok(()),
                    other => Err(ApiError::internal(format!("an expiry audit answered {other:?}"))),
                }
            }
            other => Err(ApiError::internal(format!("an expiry answered {other:?}"))),
        }
    }
}

/// Looks for expired messages now and then while the node lives.
pub(super) async fn run(node: Weak<Node>) {
    let every = match node.upgrade() {
        Some(n) => n.retention.check_every(),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        node.expire_due().await;
    }
}
