//! A node's links to its peers: the transport wrapped with the node set,
//! gossip to all or some peers, sends forwarded to a shard's leader
//! ([`forward`]), room events relayed from a replica ([`relay`]), metadata
//! Raft's network ([`raft_net`]) and what the other nodes said of presence.
//!
//! Everything here rides on [`crate::peer`] (the QUIC transport) and speaks
//! the types of [`wire`]. It never reaches into the node: what it needs of
//! one is a narrow trait ([`forward::SendTarget`], [`relay::RelayNode`]),
//! and what a node answers its peers is decided in `service`.

pub mod forward;
pub mod presence;
pub mod raft_net;
pub mod relay;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use self::presence::RemotePresence;
use self::wire::Gossip;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::codec::encode;

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
