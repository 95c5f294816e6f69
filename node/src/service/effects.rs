//! Reacts to applied metadata: closes the sockets of ended sessions, tells
//! rooms about membership changes and ends the subscriptions of users who
//! lost access, closes deleted rooms. Runs on every node for every entry,
//! so a kick or a logout reaches the victim wherever it is connected.

use std::sync::Arc;
use std::sync::Weak;

use palaver_protocol::MemberChange;
use palaver_protocol::Removal;
use palaver_protocol::ServerEvent;
use palaver_protocol::close;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Node;
use crate::hub::Event;
use crate::hub::PresenceChange;
use crate::meta::MetaEffect;
use crate::protocol::to_json;

pub(super) async fn run(node: Weak<Node>, mut rx: UnboundedReceiver<Vec<MetaEffect>>) {
    while let Some(effects) = rx.recv().await {
        let Some(node) = node.upgrade() else { return };
        for effect in effects {
            node.react(effect).await;
        }
    }
}

impl Node {
    async fn react(self: &Arc<Self>, effect: MetaEffect) {
        match effect {
            MetaEffect::SessionEnded { token_hash } => {
                let closed = self.hub.close_token(&token_hash, close::TOKEN_REVOKED);
                if closed > 0 {
                    tracing::info!(closed, "closed the sockets of an ended session");
                }
            }
            MetaEffect::MemberChanged { room, room_key, username, change, role, may_read } => {
                let member = ServerEvent::Member { room: room.as_str(), username: username.as_str(), change, role };
                self.hub.publish(Event::notice(room_key, &member, None));
                if !may_read {
                    let reason = match change {
                        MemberChange::Kicked => Removal::Kicked,
                        MemberChange::Banned => Removal::Banned,
                        _ => Removal::Left,
                    };
                    let removed = to_json(&ServerEvent::Removed { room: room.as_str(), reason });
                    self.hub.remove_user_from_room(&username, room_key, removed.into());
                }
            }
            MetaEffect::RoomDeleted { room, room_key } => {
                self.hub.close_room(room_key, to_json(&ServerEvent::RoomDeleted { room: room.as_str() }).into());
                // The shard's leader writes the drop once for every replica.
                if let Ok(shard) = self.shard_of(&room)
                    && let Some(raft) = self.shards().led(shard)
                {
                    let op = crate::shards::types::ShardOp::Drop { room_key };
                    if let Err(e) = self.shards().enqueue(shard, raft, op).await {
                        tracing::warn!(%room, error = %e.message, "the deleted room's log stays");
                    }
                }
                tracing::info!(%room, "room deleted");
            }
            // Room owners are a record of the design before shards (old logs
            // still apply them); a room's writer is its shard's leader.
            MetaEffect::RoomAssigned { .. } => {}
            // The membership loop reads the layout on its next round.
            MetaEffect::LayoutChanged => {}
            MetaEffect::ReadMoved { room, room_key, username, seq } => {
                let members: Vec<String> =
                    self.meta().rooms.get(&room).map(|r| r.members.keys().cloned().collect()).unwrap_or_default();
                let read = ServerEvent::Read { room: room.as_str(), username: username.as_str(), seq };
                self.hub.publish_to(Event::notice(room_key, &read, None), |user| {
                    members.binary_search_by(|m| m.as_str().cmp(user)).is_ok()
                });
            }
        }
    }

    /// Reacts to a user's first connection opening or last closing on this
    /// node: the rooms hear of it unless another node already has them online.
    pub fn announce_presence(&self, change: PresenceChange) {
        let (user, online) = match change {
            PresenceChange::Online(u) => (u, true),
            PresenceChange::Offline(u) => (u, false),
        };
        if let Some(cluster) = &self.cluster {
            if cluster.presence.lock().online(&user) {
                return;
            }
            cluster.broadcast(&crate::cluster::wire::Gossip::Presence {
                online: self.hub.online_users(),
                connections: self.hub.connection_count() as u64,
            });
        }
        self.announce_presence_of(&user, online);
    }

    /// Tells every room `user` belongs to that they are now online or offline.
    pub fn announce_presence_of(&self, user: &str, online: bool) {
        let rooms: Vec<(String, u64)> = self
            .meta()
            .rooms
            .values()
            .filter(|r| r.members.contains_key(user))
            .map(|r| (r.info.id.clone(), r.info.key))
            .collect();
        for (room, room_key) in rooms {
            let presence = ServerEvent::Presence { room: room.as_str(), username: user, online };
            self.hub.publish(Event::notice(room_key, &presence, None));
        }
    }
}
