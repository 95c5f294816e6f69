//! The next step of one shard toward where the layout wants it, decided by
//! its leader. Pure: the caller reads the group's membership and the layout,
//! and carries the step out.
//!
//! A shard moves in this order: its voters become the desired replicas
//! (new ones first catch up as learners; openraft's joint consensus makes
//! the switch safe), every other member is dropped (a node that holds no
//! replica reads and watches the shard's rooms on a replica), the metadata
//! group records the new replica set, then leadership goes to the replica
//! the placement prefers (spreading leaders evenly, and off draining or
//! leaving nodes).

use std::collections::BTreeSet;

use super::placement::NodeId;

/// What a shard's leader does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardStep {
    /// The shard is where it should be.
    Stay,
    /// Add `learners` (each caught up before going on), then make `voters`
    /// the voter set, then drop `remove`.
    ChangeVoters {
        /// Nodes that are not in the group yet.
        learners: Vec<NodeId>,
        /// The voters afterwards.
        voters: BTreeSet<NodeId>,
        /// Members to drop altogether.
        remove: BTreeSet<NodeId>,
    },
    /// Drop these members (learners that are not desired replicas).
    Remove(BTreeSet<NodeId>),
    /// The voters are right: record them as the shard's replicas.
    Record(Vec<NodeId>),
    /// Hand leadership to this replica.
    TransferLeader(NodeId),
}

/// What the leader knows about one shard.
#[derive(Debug, Clone)]
pub struct ShardView<'a> {
    /// This node (the shard's leader).
    pub me: NodeId,
    /// The replicas the metadata group records.
    pub recorded: &'a [NodeId],
    /// The replicas the layout wants now.
    pub desired: &'a [NodeId],
    /// The group's voters now (both sides of a joint configuration).
    pub voters: &'a BTreeSet<NodeId>,
    /// Every member now, voters and learners.
    pub members: &'a BTreeSet<NodeId>,
    /// The replica that should lead, if any may.
    pub preferred: Option<NodeId>,
    /// Replicas that acknowledged recently and hold the whole log.
    pub caught_up: &'a BTreeSet<NodeId>,
}

/// The next step for the shard `view` describes.
pub fn next_step(view: &ShardView<'_>) -> ShardStep {
    let desired: BTreeSet<NodeId> = view.desired.iter().copied().collect();
    if desired.is_empty() {
        // No node may hold it (a layout being set up): leave it alone.
        return ShardStep::Stay;
    }
    let handover = view.preferred.filter(|p| *p != view.me && view.voters.contains(p) && view.caught_up.contains(p));
    if !desired.contains(&view.me)
        && let Some(p) = handover
    {
        // A leader that removed itself would leave the shard without one
        // until an election: hand leadership on first.
        return ShardStep::TransferLeader(p);
    }
    let remove: BTreeSet<NodeId> = view.members.iter().filter(|n| !desired.contains(n)).copied().collect();
    if *view.voters != desired {
        let learners = view.desired.iter().filter(|n| !view.members.contains(n)).copied().collect();
        return ShardStep::ChangeVoters { learners, voters: desired, remove };
    }
    if !remove.is_empty() {
        return ShardStep::Remove(remove);
    }
    if view.recorded != view.desired {
        return ShardStep::Record(view.desired.to_vec());
    }
    handover.map_or(ShardStep::Stay, ShardStep::TransferLeader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn step(recorded: &[NodeId], desired: &[NodeId], voters: &[NodeId], preferred: Option<NodeId>) -> ShardStep {
        let voters = set(voters);
        let caught_up = set(&[1, 2, 3, 4]);
        next_step(&ShardView {
            me: 1,
            recorded,
            desired,
            voters: &voters,
            members: &voters,
            preferred,
            caught_up: &caught_up,
        })
    }

    #[test]
    fn a_shard_in_place_with_its_preferred_leader_stays() {
        assert_eq!(step(&[1, 2, 3], &[1, 2, 3], &[1, 2, 3], Some(1)), ShardStep::Stay);
        assert_eq!(step(&[1, 2, 3], &[1, 2, 3], &[1, 2, 3], None), ShardStep::Stay, "every replica avoided");
        assert_eq!(step(&[], &[], &[1], None), ShardStep::Stay);
    }

    #[test]
    fn a_new_node_is_added_as_learner_and_the_old_one_dropped() {
        assert_eq!(
            step(&[1, 2, 3], &[4, 1, 2], &[1, 2, 3], Some(1)),
            ShardStep::ChangeVoters { learners: vec![4], voters: set(&[1, 2, 4]), remove: set(&[3]) }
        );
    }

    #[test]
    fn members_that_are_not_desired_replicas_are_dropped() {
        let (voters, caught_up) = (set(&[1, 2, 3]), set(&[1, 2, 3]));
        let view = |members: &BTreeSet<NodeId>| {
            next_step(&ShardView {
                me: 1,
                recorded: &[1, 2, 3],
                desired: &[1, 2, 3],
                voters: &voters,
                members: &members.clone(),
                preferred: Some(1),
                caught_up: &caught_up,
            })
        };
        assert_eq!(view(&set(&[1, 2, 3, 4, 5])), ShardStep::Remove(set(&[4, 5])), "learners of a former layout");
        assert_eq!(view(&set(&[1, 2, 3])), ShardStep::Stay);
        let moving = next_step(&ShardView {
            me: 1,
            recorded: &[1, 2, 3],
            desired: &[1, 2, 4],
            voters: &voters,
            members: &set(&[1, 2, 3, 4]),
            preferred: Some(1),
            caught_up: &caught_up,
        });
        assert_eq!(
            moving,
            ShardStep::ChangeVoters { learners: vec![], voters: set(&[1, 2, 4]), remove: set(&[3]) },
            "node 4 is a learner already; node 3 goes"
        );
    }

    #[test]
    fn a_removed_node_is_dropped_without_a_learner() {
        assert_eq!(
            step(&[1, 2, 3], &[1, 3], &[1, 2, 3], Some(1)),
            ShardStep::ChangeVoters { learners: vec![], voters: set(&[1, 3]), remove: set(&[2]) }
        );
    }

    #[test]
    fn a_leader_leaving_the_shard_hands_leadership_on_first() {
        assert_eq!(step(&[1, 2, 3], &[2, 3, 4], &[1, 2, 3], Some(2)), ShardStep::TransferLeader(2));
        assert_eq!(
            step(&[1, 2, 3], &[2, 3, 4], &[1, 2, 3], None),
            ShardStep::ChangeVoters { learners: vec![4], voters: set(&[2, 3, 4]), remove: set(&[1]) },
            "no replica to hand on to: the change itself moves leadership"
        );
    }

    #[test]
    fn voters_already_moved_are_recorded_in_the_desired_order() {
        assert_eq!(step(&[1, 2, 3], &[4, 1, 2], &[1, 2, 4], Some(1)), ShardStep::Record(vec![4, 1, 2]));
    }

    #[test]
    fn leadership_goes_to_the_preferred_replica_only_when_it_is_caught_up() {
        assert_eq!(step(&[1, 2, 3], &[1, 2, 3], &[1, 2, 3], Some(2)), ShardStep::TransferLeader(2));
        let voters = set(&[1, 2, 3]);
        let caught_up = set(&[1, 3]);
        let view = ShardView {
            me: 1,
            recorded: &[1, 2, 3],
            desired: &[1, 2, 3],
            voters: &voters,
            members: &voters,
            preferred: Some(2),
            caught_up: &caught_up,
        };
        assert_eq!(next_step(&view), ShardStep::Stay, "node 2 lags: no transfer");
    }
}
