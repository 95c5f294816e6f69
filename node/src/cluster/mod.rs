//! What a node does with its peers: metadata Raft over QUIC, metadata writes
//! forwarded to the leader, sends and deletes forwarded to a shard's leader,
//! shard RPCs handed to [`crate::shards`], and presence and typing gossip.
//!
//! Everything here rides on [`crate::peer`] (the QUIC transport) and speaks
//! the types of [`wire`]. Room logs are the shards' Raft logs
//! ([`crate::shards`]); this module only carries their calls.

pub mod forward;
pub mod presence;
pub mod raft_net;
pub mod relay;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::Weak;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use palaver_protocol::Role;
use palaver_protocol::ServerEvent;
use parking_lot::Mutex;
use quinn::RecvStream;
use quinn::SendStream;

use self::presence::RemotePresence;
use self::wire::Gossip;
use self::wire::RaftAnswer;
use self::wire::RaftCall;
use self::wire::RoomAnswer;
use self::wire::RoomCall;
use self::wire::decode;
use self::wire::encode;
use crate::clock::now_ms;
use crate::hub::Event;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::PeerHandler;
use crate::peer::frame;
use crate::raft::ConsensusError;
use crate::service::ApiError;
use crate::service::Node;

/// How often presence is gossiped even when nothing changed.
const GOSSIP_EVERY: Duration = Duration::from_secs(1);
/// A node silent this long counts as gone (its users offline).
pub const SILENT_MS: u64 = 3_500;

/// This node's view of and links to the other nodes.
pub struct Cluster {
    /// The QUIC transport.
    pub endpoint: PeerEndpoint,
    /// The other nodes' ids.
    pub peers: Vec<u64>,
    /// Room sends forwarded to shard leaders.
    pub forwarder: forward::Forwarder,
    /// The other nodes' presence.
    pub presence: Mutex<RemotePresence>,
    /// Rooms whose events this node gets relayed from a replica.
    pub watcher: Arc<relay::Watcher>,
}

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
                    use crate::shards::network::ShardRpcs;
                    let call: crate::shards::network::ShardCall = decode(&body)?;
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
                crate::shards::network::serve_snapshot(&*node.shards().host, recv, send).await;
                return;
            }
            if channel != Channel::Rooms {
                tracing::warn!(from, ?channel, "unexpected stream channel");
                return;
            }
            match frame::read_frame(&mut recv, 16).await {
                Ok(Some(kind)) if kind == [forward::STREAM_FORWARD] => forward::serve(node, from, recv, send).await,
                Ok(Some(kind)) if kind == [relay::STREAM_RELAY] => relay::serve(node, from, recv, send).await,
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
        RaftCall::ReadIndex => match node.consensus.read_index(crate::service::LEASE).await {
            Ok(index) => RaftAnswer::ReadIndex(index),
            Err(ConsensusError::NotLeader { leader }) => RaftAnswer::NotLeader(leader.map(|(id, _)| id)),
            Err(e) => refused(&e),
        },
        RaftCall::TransferLeader(req) => match raft.handle_transfer_leader(req).await {
            Ok(Ok(())) => RaftAnswer::Transferred,
            Ok(Err(e)) => refused(&e),
            Err(e) => refused(&e),
        },
        RaftCall::AwaitApplied(index) => {
            match node.consensus.wait_applied(index, crate::service::AWAIT_APPLIED).await {
                Ok(()) => RaftAnswer::Applied,
                Err(e) => refused(&e),
            }
        }
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
    }
}

/// A delete forwarded to this node as the leader of the room's shard: the
/// actor's standing is decided here, where the delete is ordered, against
/// metadata at least as new as the forwarding node's.
async fn delete_here(node: &Arc<Node>, d: wire::ForwardedDelete) -> Result<String, ApiError> {
    if node.consensus.applied_index() < d.applied {
        node.consensus.wait_applied(d.applied, Duration::from_secs(5)).await?;
    }
    let (room, moderator) = {
        let meta = node.meta();
        let r = meta.authorize(&d.actor, &d.room, crate::permissions::Action::DeleteMessage { own: true })?;
        let moderator =
            matches!(r.standing(&d.actor), crate::permissions::Standing::Member(role) if role >= Role::Moderator);
        (crate::service::room_ref(&r.info, &d.room), moderator)
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

impl Cluster {
    /// Wraps the transport and points it at the other nodes.
    pub fn new(
        endpoint: PeerEndpoint,
        peer_addrs: &BTreeMap<u64, SocketAddr>,
        self_id: u64,
        hub: Arc<crate::hub::Hub>,
    ) -> Self {
        let peers: Vec<u64> = peer_addrs.keys().copied().filter(|id| *id != self_id).collect();
        endpoint.set_peers(peer_addrs.iter().filter(|(id, _)| **id != self_id).map(|(k, v)| (*k, *v)).collect());
        Self {
            forwarder: forward::Forwarder::new(endpoint.clone()),
            endpoint,
            peers,
            presence: Mutex::new(RemotePresence::default()),
            watcher: relay::Watcher::new(hub),
        }
    }

    /// Tells every peer something (every node the endpoint can dial, those
    /// added since the start included), not waiting for answers.
    pub fn broadcast(&self, g: &Gossip) {
        self.tell(&self.endpoint.peer_ids(), g);
    }

    /// Tells `peers` something, not waiting for answers.
    pub fn tell(&self, peers: &[u64], g: &Gossip) {
        let bytes = encode(g);
        for peer in peers {
            let endpoint = self.endpoint.clone();
            let bytes = bytes.clone();
            let peer = *peer;
            tokio::spawn(async move {
                if let Err(e) = endpoint.request(peer, Channel::Gossip, bytes, Duration::from_secs(2)).await {
                    tracing::debug!(peer, error = %e, "gossip not delivered");
                }
            });
        }
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
