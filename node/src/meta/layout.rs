//! The cluster's nodes and where each shard of room logs lives, as the
//! metadata group records them (issue [4/6]). Pure: the commands change the
//! record; moving shards to match it is the placement driver's job.
//!
//! The record holds each shard's replica set as last confirmed (after the
//! shard's own membership change succeeded), and the nodes with their
//! addresses and whether they are leaving. The set a shard should have is
//! [`Layout::desired`]: the placement over the nodes that are not leaving.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use super::state::MetaError;
use super::state::NodeId;
use crate::shards::placement::Move;
use crate::shards::placement::Placement;
use crate::shards::placement::ShardId;
use crate::shards::placement::shard_of;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Where clients (and the balancer) connect.
    pub client: String,
    /// Where other nodes connect (QUIC).
    pub peer: String,
    /// Its shards are moving away; it is removed once none is left on it.
    pub leaving: bool,
}

/// The nodes and the shards' replica sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Every node, by id.
    pub nodes: BTreeMap<NodeId, ClusterNode>,
    /// Each shard's replicas as last confirmed, best-scored first; empty
    /// until the layout is set up.
    pub shards: Vec<Vec<NodeId>>,
    /// Replicas per shard.
    pub replication: u8,
}

/// A change of the layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayoutCommand {
    /// Sets the layout up once, for a new cluster.
    Init {
        /// How many shards.
        shards: u32,
        /// Replicas per shard.
        replication: u8,
        /// The first nodes: id, client address, peer address.
        nodes: Vec<(NodeId, String, String)>,
    },
    /// A node joins (its shards follow).
    AddNode {
        /// Its id, never used before.
        id: NodeId,
        /// Client address.
        client: String,
        /// Peer address.
        peer: String,
    },
    /// A node leaves (its shards move first).
    RemoveNode {
        /// Which.
        id: NodeId,
    },
    /// A shard's membership changed to these replicas.
    SetReplicas {
        /// Which shard.
        shard: ShardId,
        /// Its replicas now.
        replicas: Vec<NodeId>,
    },
    /// A leaving node holds no shard any more: forget it.
    ForgetNode {
        /// Which.
        id: NodeId,
    },
}

impl Layout {
    /// Whether the layout has been set up.
    pub fn is_set(&self) -> bool {
        !self.shards.is_empty()
    }

    /// The shard of a room.
    pub fn shard_of(&self, room: &str) -> ShardId {
        // Never used before the layout is set: then every room is shard 0.
        shard_of(room, u32::try_from(self.shards.len()).unwrap_or(u32::MAX).max(1))
    }

    /// A shard's replicas as last confirmed.
    pub fn replicas(&self, shard: ShardId) -> &[NodeId] {
        self.shards.get(shard as usize).map_or(&[], Vec::as_slice)
    }

    /// The nodes that are not leaving.
    pub fn active_nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| !n.leaving).map(|(id, _)| *id).collect()
    }

    /// Whether `node` is recorded as a replica of `shard` (a node keeps a
    /// copy of a shard while recorded so, or while the shard moves to it:
    /// see [`Layout::desired`]).
    pub fn hosts(&self, node: NodeId, shard: ShardId) -> bool {
        self.replicas(shard).contains(&node)
    }

    /// Where every shard should live now.
    pub fn desired(&self) -> Placement {
        let count = u32::try_from(self.shards.len()).unwrap_or(u32::MAX);
        Placement::new(count, &self.active_nodes(), usize::from(self.replication))
    }

    /// The moves still to make to reach [`Layout::desired`].
    pub fn pending_moves(&self) -> Vec<Move> {
        crate::shards::placement::moves(&Placement { replicas: self.shards.clone() }, &self.desired())
    }

    /// Applies a change; `admin` tells whether a client's command comes
    /// from the cluster admin (`None`: proposed by the nodes themselves).
    pub fn apply(&mut self, cmd: &LayoutCommand, admin: Option<bool>) -> Result<(), MetaError> {
        let need_admin = |what: &str| match admin {
            Some(false) => Err(MetaError::Forbidden(format!("{what} is for admins"))),
            _ => Ok(()),
        };
        match cmd {
            LayoutCommand::Init { shards, replication, nodes } => {
                if self.is_set() {
                    return Err(MetaError::Conflict("the layout is already set up".into()));
                }
                if *shards == 0 || *replication == 0 || nodes.is_empty() {
                    return Err(MetaError::BadRequest("a layout needs shards, replicas and nodes".into()));
                }
                self.replication = *replication;
                for (id, client, peer) in nodes {
                    self.nodes.insert(*id, ClusterNode { client: client.clone(), peer: peer.clone(), leaving: false });
                }
                self.shards = vec![Vec::new(); *shards as usize];
                self.shards = self.desired().replicas;
                Ok(())
            }
            LayoutCommand::AddNode { id, client, peer } => {
                need_admin("adding a node")?;
                if *id == 0 {
                    return Err(MetaError::BadRequest("node ids start at 1".into()));
                }
                match self.nodes.get(id) {
                    Some(n) if n.client == *client && n.peer == *peer && !n.leaving => Ok(()),
                    Some(_) => {
                        Err(MetaError::Conflict(format!("node {id} exists with other addresses, or is leaving")))
                    }
                    None => {
                        self.nodes
                            .insert(*id, ClusterNode { client: client.clone(), peer: peer.clone(), leaving: false });
                        Ok(())
                    }
                }
            }
            LayoutCommand::RemoveNode { id } => {
                need_admin("removing a node")?;
                let active = self.active_nodes();
                let node = self.nodes.get_mut(id).ok_or_else(|| MetaError::NotFound(format!("node {id}")))?;
                if !node.leaving && active.len() <= 1 {
                    return Err(MetaError::Conflict("the last node cannot leave".into()));
                }
                node.leaving = true;
                Ok(())
            }
            LayoutCommand::SetReplicas { shard, replicas } => {
                let slot = self
                    .shards
                    .get_mut(*shard as usize)
                    .ok_or_else(|| MetaError::NotFound(format!("shard {shard}")))?;
                if let Some(unknown) = replicas.iter().find(|n| !self.nodes.contains_key(n)) {
                    return Err(MetaError::BadRequest(format!("node {unknown} is not in the cluster")));
                }
                *slot = replicas.clone();
                Ok(())
            }
            LayoutCommand::ForgetNode { id } => {
                let holds = self.shards.iter().any(|r| r.contains(id));
                match self.nodes.get(id) {
                    None => Ok(()),
                    Some(n) if n.leaving && !holds => {
                        self.nodes.remove(id);
                        Ok(())
                    }
                    Some(_) => Err(MetaError::Conflict(format!("node {id} still holds shards or is not leaving"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Layout {
        let mut l = Layout::default();
        let nodes = (1..=3).map(|i| (i, format!("c{i}"), format!("p{i}"))).collect();
        l.apply(&LayoutCommand::Init { shards: 8, replication: 3, nodes }, None).expect("init");
        l
    }

    #[test]
    fn init_places_every_shard_once_and_only_once() {
        let mut l = three();
        assert!(l.is_set());
        assert!(l.shards.iter().all(|r| r.len() == 3));
        assert!(l.pending_moves().is_empty(), "what is recorded is what is desired");
        let again = LayoutCommand::Init { shards: 4, replication: 1, nodes: vec![(9, "c".into(), "p".into())] };
        assert!(matches!(l.apply(&again, None), Err(MetaError::Conflict(_))));
        assert_eq!(l.shards.len(), 8);
        assert_eq!(l.shard_of("lobby"), l.shard_of("lobby"));
    }

    #[test]
    fn adding_and_removing_nodes_make_moves_until_replicas_are_set() {
        let mut l = three();
        let add = LayoutCommand::AddNode { id: 4, client: "c4".into(), peer: "p4".into() };
        assert!(matches!(l.apply(&add, Some(false)), Err(MetaError::Forbidden(_))), "admins only");
        l.apply(&add, Some(true)).expect("add");
        l.apply(&add, Some(true)).expect("adding the same node again changes nothing");
        let moves = l.pending_moves();
        assert!(!moves.is_empty() && moves.iter().all(|m| m.add == vec![4]));
        for m in moves {
            let replicas = l.desired().replicas[m.shard as usize].clone();
            l.apply(&LayoutCommand::SetReplicas { shard: m.shard, replicas }, None).expect("set");
        }
        assert!(l.pending_moves().is_empty());

        l.apply(&LayoutCommand::RemoveNode { id: 1 }, Some(true)).expect("remove");
        assert!(!l.active_nodes().contains(&1));
        let forget = LayoutCommand::ForgetNode { id: 1 };
        assert!(matches!(l.apply(&forget, None), Err(MetaError::Conflict(_))), "it still holds shards");
        for m in l.pending_moves() {
            assert_eq!(m.remove, vec![1]);
            let replicas = l.desired().replicas[m.shard as usize].clone();
            l.apply(&LayoutCommand::SetReplicas { shard: m.shard, replicas }, None).expect("set");
        }
        l.apply(&forget, None).expect("forget");
        assert!(!l.nodes.contains_key(&1));
        let bad = LayoutCommand::SetReplicas { shard: 0, replicas: vec![1] };
        assert!(matches!(l.apply(&bad, None), Err(MetaError::BadRequest(_))), "a forgotten node holds nothing");
    }

    #[test]
    fn the_last_node_cannot_leave() {
        let mut l = Layout::default();
        l.apply(&LayoutCommand::Init { shards: 2, replication: 3, nodes: vec![(1, "c".into(), "p".into())] }, None)
            .expect("init");
        assert!(matches!(l.apply(&LayoutCommand::RemoveNode { id: 1 }, Some(true)), Err(MetaError::Conflict(_))));
        assert!(matches!(l.apply(&LayoutCommand::RemoveNode { id: 7 }, Some(true)), Err(MetaError::NotFound(_))));
    }
}
