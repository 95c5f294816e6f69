//! What this node answers its peers: metadata Raft calls, shard calls and
//! snapshots, room reads and deletes, forwarded sends, relay streams and
//! gossip, and the gossip it sends every second. The `cluster` module carries
//! these; the decisions are the node's, so they live here.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::Weak;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use palaver_protocol::Role;
use palaver_protocol::ServerEvent;
use quinn::RecvStream;
use quinn::SendStream;

use super::ApiError;
use super::Node;
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::cluster::SILENT_MS;
use crate::cluster::forward;
use crate::cluster::forward::Pending;
use crate::cluster::forward::SendTarget;
use crate::cluster::relay;
use crate::cluster::relay::RelayNode;
use crate::cluster::wire::ChangeDone;
use crate::cluster::wire::ForwardedAttach;
use crate::cluster::wire::ForwardedChange;
use crate::cluster::wire::ForwardedDelete;
use crate::cluster::wire::ForwardedSend;
use crate::cluster::wire::Gossip;
use crate::cluster::wire::MessageChange;
use crate::cluster::wire::RaftAnswer;
use crate::cluster::wire::RaftCall;
use crate::cluster::wire::RoomAnswer;
use crate::cluster::wire::RoomCall;
use crate::hub::Event;
use crate::hub::Hub;
use crate::peer::Channel;
use crate::peer::PeerHandler;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::peer::frame;
use crate::raft::ConsensusError;
use crate::rooms::RoomLog;
use crate::shards::network::ShardCall;
use crate::shards::network::ShardRpcs;
use crate::shards::network::serve_stream;
use crate::shards::placement::ShardId;

/// How often presence is gossiped even when nothing changed.
const GOSSIP_EVERY: Duration = Duration::from_secs(1);
/// How long a shard leader waits to catch up with the metadata of a node
/// that forwarded it a send or a delete.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The node a handler serves, set once the node is built.
pub type NodeSlot = Arc<OnceLock<Weak<Node>>>;

/// Receives everything peers send and hands it to the node.
pub struct Handler {
    /// The node, once started.
    pub node: NodeSlot,
}

fn node_of(slot: &NodeSlot) -> Result<Arc<Node>, String> {
    slot.get().and_then(Weak::upgrade).ok_or_else(|| "the node is starting or stopping".to_string())
}

/// Waits for a starting node (peers open streams as soon as they start).
async fn wait_node(slot: &NodeSlot) -> Option<Arc<Node>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(w) = slot.get() {
            return w.upgrade();
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl PeerHandler for Handler {
    fn request(&self, from: u64, channel: Channel, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let slot = self.node.clone();
        async move {
            let node = node_of(&slot)?;
            match channel {
                Channel::Raft => Ok(encode(&raft_call(&node, decode(&body)?).await)),
                Channel::Rooms => Ok(encode(&room_call(&node, decode(&body)?).await)),
                Channel::Gossip => {
                    gossip(&node, from, decode(&body)?);
                    Ok(Vec::new())
                }
                Channel::Shards => {
                    let call: ShardCall = decode(&body)?;
                    Ok(encode(&node.shards().host.call(call).await))
                }
            }
        }
        .boxed()
    }

    fn stream(&self, from: u64, channel: Channel, mut recv: RecvStream, send: SendStream) -> BoxFuture<'static, ()> {
        let slot = self.node.clone();
        async move {
            let Some(node) = wait_node(&slot).await else { return };
            if channel == Channel::Shards {
                serve_stream(&node.shards().host, recv, send).await;
                return;
            }
            if channel != Channel::Rooms {
                tracing::warn!(from, ?channel, "unexpected stream channel");
                return;
            }
            match frame::read_frame(&mut recv, 16).await {
                Ok(Some(kind)) if kind == [forward::STREAM_FORWARD] => forward::serve(node, from, recv, send).await,
                Ok(Some(kind)) if kind == [relay::STREAM_RELAY] => relay::serve(node, from, recv, send).await,
                Ok(Some(kind)) if kind == [super::STREAM_FILE_PUT] => {
                    super::attachments::serve_put(node, recv, send).await
                }
                Ok(Some(kind)) if kind == [super::STREAM_FILE_GET] => {
                    super::attachments::serve_get(node, recv, send).await
                }
                other => tracing::warn!(from, ?other, "unknown room stream kind"),
            }
        }
        .boxed()
    }
}

async fn raft_call(node: &Node, call: RaftCall) -> RaftAnswer {
    let raft = node.consensus.raft();
    let refused = |e: &dyn std::fmt::Display| RaftAnswer::Refused(e.to_string());
    match call {
        RaftCall::Append(req) => match raft.append_entries(req).await {
            Ok(answer) => {
                if answer.is_success() {
                    node.consensus.note_leader_contact();
                }
                RaftAnswer::Append(answer)
            }
            Err(e) => refused(&e),
        },
        RaftCall::Vote(req) => raft.vote(req).await.map_or_else(|e| refused(&e), RaftAnswer::Vote),
        RaftCall::PreVote(req) => raft.pre_vote(req).await.map_or_else(|e| refused(&e), RaftAnswer::Vote),
        RaftCall::Snapshot { vote, meta, data } => {
            let snapshot = openraft::storage::Snapshot { meta, snapshot: data };
            raft.install_full_snapshot(vote, snapshot).await.map_or_else(|e| refused(&e), RaftAnswer::Snapshot)
        }
        RaftCall::Forward(req) => match node.consensus.propose_request(req).await {
            Ok((reply, index)) => RaftAnswer::Forwarded { reply, index },
            Err(ConsensusError::NotLeader { leader }) => RaftAnswer::NotLeader(leader.map(|(id, _)| id)),
            Err(e) => refused(&e),
        },
        RaftCall::ReadIndex => match node.consensus.read_index(super::LEASE).await {
            Ok(index) => RaftAnswer::ReadIndex(index),
            Err(ConsensusError::NotLeader { leader }) => RaftAnswer::NotLeader(leader.map(|(id, _)| id)),
            Err(e) => refused(&e),
        },
        RaftCall::TransferLeader(req) => match raft.handle_transfer_leader(req).await {
            Ok(Ok(())) => RaftAnswer::Transferred,
            Ok(Err(e)) => refused(&e),
            Err(e) => refused(&e),
        },
        RaftCall::AwaitApplied(index) => match node.consensus.wait_applied(index, super::AWAIT_APPLIED).await {
            Ok(()) => RaftAnswer::Applied,
            Err(e) => refused(&e),
        },
    }
}

async fn room_call(node: &Arc<Node>, call: RoomCall) -> RoomAnswer {
    let refused = |e: ApiError| RoomAnswer::Refused(e.code.as_str().into(), e.message);
    match call {
        RoomCall::Delete(d) => match delete_here(node, d).await {
            Ok(sender) => RoomAnswer::Deleted(sender),
            Err(e) => refused(e),
        },
        RoomCall::Read(read) => node.serve_read(read).await.unwrap_or_else(refused),
        RoomCall::Change(c) => change_here(node, c).await.map_or_else(refused, RoomAnswer::Changed),
        RoomCall::Attach(a) => match attach_here(node, a).await {
            Ok(()) => RoomAnswer::Attached,
            Err(e) => refused(e),
        },
    }
}

/// A message change forwarded to this node as the leader of the room's
/// shard: the actor's standing is decided here too (see [`delete_here`]).
async fn change_here(node: &Arc<Node>, c: ForwardedChange) -> Result<ChangeDone, ApiError> {
    if node.consensus.applied_index() < c.applied {
        node.consensus.wait_applied(c.applied, CATCH_UP).await?;
    }
    let room = match &c.change {
        MessageChange::Edit { .. } => super::may_send(&node.meta(), &c.actor, &c.room)?,
        MessageChange::React { .. } => super::may_react(&node.meta(), &c.actor, &c.room)?,
    };
    node.change_on_shard(room, c.seq, c.actor, c.change).await
}

/// An upload forwarded to this node as the leader of the room's shard:
/// the uploader's standing is decided here too (see [`delete_here`]).
async fn attach_here(node: &Arc<Node>, a: ForwardedAttach) -> Result<(), ApiError> {
    if node.consensus.applied_index() < a.applied {
        node.consensus.wait_applied(a.applied, CATCH_UP).await?;
    }
    let room = super::may_send(&node.meta(), &a.uploader, &a.room)?;
    let attach = super::attachments::NewAttachment {
        id: a.id,
        sha: a.sha,
        name: a.name,
        mime: a.mime,
        size: a.size,
        uploader: a.uploader,
    };
    node.attach_on_shard(room, attach).await
}

/// A delete forwarded to this node as the leader of the room's shard: the
/// actor's standing is decided here, where the delete is ordered, against
/// metadata at least as new as the forwarding node's.
async fn delete_here(node: &Arc<Node>, d: ForwardedDelete) -> Result<String, ApiError> {
    if node.consensus.applied_index() < d.applied {
        node.consensus.wait_applied(d.applied, CATCH_UP).await?;
    }
    let (room, moderator) = {
        let meta = node.meta();
        let r = meta.authorize(&d.actor, &d.room, crate::permissions::Action::DeleteMessage { own: true })?;
        let moderator =
            matches!(r.standing(&d.actor), crate::permissions::Standing::Member(role) if role >= Role::Moderator);
        (super::room_ref(&r.info, &d.room), moderator)
    };
    node.delete_on_shard(room, d.seq, d.actor, moderator).await
}

fn gossip(node: &Arc<Node>, from: u64, g: Gossip) {
    match g {
        Gossip::Presence { online, connections } => {
            let Some(cluster) = node.cluster.as_ref() else { return };
            let changed = cluster.presence.lock().update(from, online, connections, now_ms());
            for user in changed {
                if !node.hub.is_online(&user) {
                    node.announce_presence_of(&user, cluster.presence.lock().online(&user));
                }
            }
        }
        Gossip::Usage { counts } => node.quotas.charge_remote(&counts, now_ms()),
        Gossip::Typing { room_key, room, username } => {
            let typing = ServerEvent::Typing { room: room.as_str(), username: username.as_str() };
            let event = Event::notice(room_key, &typing, Some(username.as_str().into()));
            // To the room's listeners here, and to nodes watching it here
            // but the one it came from.
            node.hub.publish(Event { relay: crate::hub::Relay::WatchersBut(from), ..event });
        }
        Gossip::Leading { shards } => node.shards().note_leading(from, &shards),
    }
}

/// Gossips this node's presence every second and expires silent nodes.
pub async fn gossip_loop(node: Weak<Node>) {
    let mut tick = tokio::time::interval(GOSSIP_EVERY);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let Some(cluster) = node.cluster.as_ref() else { return };
        cluster.broadcast(&Gossip::Presence {
            online: node.hub.online_users(),
            connections: node.hub.connection_count() as u64,
        });
        cluster.broadcast(&Gossip::Leading { shards: node.shards().leading() });
        let counts = node.quotas.drain_tally();
        if !counts.is_empty() {
            cluster.broadcast(&Gossip::Usage { counts });
        }
        let expired = cluster.presence.lock().expire(now_ms(), SILENT_MS);
        for user in expired {
            if !node.hub.is_online(&user) {
                node.announce_presence_of(&user, false);
            }
        }
    }
}

/// Queues a forwarded send on its shard if this node leads it.
async fn accept(node: &Node, s: ForwardedSend) -> Result<Pending, ApiError> {
    // Checked again where the send is ordered, against metadata at least as
    // new as the forwarding node's: a mute or kick it had not applied yet
    // still stops the send here.
    if node.consensus.applied_index() < s.applied {
        node.consensus.wait_applied(s.applied, CATCH_UP).await?;
    }
    let room = super::may_send(&node.meta(), &s.from, &s.room)?;
    let shard = node.shard_of(&s.room)?;
    if node.shards().led(shard).is_none() {
        // The sender's node had an old idea of the leader. A replica knows
        // the new one and passes the send on, once.
        let leader = node.shards().leader(shard).filter(|l| *l != node.id);
        if s.relayed || node.shards().host.get(shard).is_none() || leader.is_none() {
            return Err(ApiError::unavailable(format!("node {} does not lead shard {shard}; retry", node.id)));
        }
    }
    let post =
        super::NewPost { body: s.body, client_id: s.client_id, reply_to: s.reply_to, attachments: s.attachments };
    Ok(node.submit_to_shard(s.from, room, post, true).await?.boxed())
}

impl SendTarget for Node {
    fn accept(&self, send: ForwardedSend) -> BoxFuture<'_, Result<Pending, ApiError>> {
        accept(self, send).boxed()
    }
}

impl RelayNode for Node {
    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    fn holds(&self, shard: ShardId) -> bool {
        self.shards().host.get(shard).is_some()
    }

    fn shard_of_room(&self, room: &str) -> Option<ShardId> {
        self.shard_of(room).ok()
    }

    fn replicas(&self, shard: ShardId) -> Vec<u64> {
        self.meta().layout.replicas(shard).to_vec()
    }

    fn leader_of(&self, shard: ShardId) -> Option<u64> {
        self.shards().leader(shard)
    }

    fn log(&self) -> &RoomLog {
        &self.log
    }
}
