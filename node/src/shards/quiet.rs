//! Quiet shards: a shard that took no write for a while stops its Raft
//! timers on every replica, so an idle cluster spends no CPU on its
//! shards' heartbeats (measured: 470 µs of CPU per heartbeat, half a core
//! for 64 idle shards on three nodes; docs/shards.md).
//!
//! Raft's safety never rests on timers, only its liveness does: a
//! follower whose timer is off cannot notice a dead leader. So the leader
//! of a quiet shard names it in a **beacon** it sends each replica's node
//! every [`QuietSettings::every`] (one message per node pair for all the
//! shards it leads there), and a follower keeps its timer off only while
//! those beacons come:
//!
//! 1. A leader whose shard took no write for [`QuietSettings::after`],
//!    with every replica holding and every replica knowing the whole log
//!    committed, offers the shard in its beacons.
//! 2. A follower that follows that leader at that vote and holds exactly
//!    that log accepts: it stops its timer. The leader stops its own once
//!    every voter accepted.
//! 3. The leader wakes the shard on a write, a change of vote, a refusal,
//!    or a voter that has not answered a beacon for half the grace; it
//!    stops offering, so its next beacon tells the followers to wake.
//! 4. A follower wakes when the leader's beacons stop naming the shard,
//!    when its vote changes, or when no beacon named it for
//!    [`QuietSettings::grace`] (plus a step per rank, so the followers of
//!    a dead leader do not all stand at once). Its election timer has
//!    long run out by then, so it stands at its next tick.
//!
//! A group opened here starts quiet for the grace too: a restarted
//! follower would otherwise stand at once, and replicas whose leader is
//! quiet have no recent contact to refuse it their votes with.
//!
//! This module is the rules only (no I/O, no clock): the host feeds it what
//! each group's metrics say and does what it answers.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use super::placement::ShardId;
use super::types::Vote;

/// When shards go quiet and how their followers watch the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietSettings {
    /// A shard that took no write for this long goes quiet.
    pub after: Duration,
    /// A follower wakes once no beacon named the shard for this long.
    pub grace: Duration,
    /// How often beacons go out and the rules are checked.
    pub every: Duration,
}

impl QuietSettings {
    /// The settings that go with a group's shortest election timeout: a
    /// dead leader's followers wake within it, as they would have stood.
    pub fn for_election(election_min: Duration, heartbeat: Duration) -> Self {
        Self { after: Duration::from_secs(2), grace: election_min, every: heartbeat }
    }
}

/// A leader's offer to quiet one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietOffer {
    /// The shard.
    pub shard: ShardId,
    /// The leader's vote.
    pub vote: Vote,
    /// The index of the leader's last entry, committed.
    pub index: u64,
}

/// A node's beacon to another: the shards it leads that may be quiet there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// The sending node.
    pub from: u64,
    /// Its offers; a shard it offered before and leaves out wakes.
    pub offers: Vec<QuietOffer>,
}

/// What one group's metrics say, as far as these rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// This node's id.
    pub me: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// This node's vote.
    pub vote: Vote,
    /// Index of the last entry in this node's log.
    pub last_log: Option<u64>,
    /// Index of the last entry this node knows committed.
    pub committed: Option<u64>,
    /// The voters (of the joint configuration's last part).
    pub voters: BTreeSet<u64>,
    /// A membership change is under way.
    pub joint: bool,
    /// On a leader: every replica holds the whole log.
    pub all_matched: bool,
}

impl GroupView {
    fn leading(&self) -> bool {
        self.leader == Some(self.me)
    }

    fn followers(&self) -> impl Iterator<Item = u64> + '_ {
        self.voters.iter().copied().filter(|id| *id != self.me)
    }
}

/// What the host is to do after a check.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// Shards whose timer goes on (`true`) or off (`false`).
    pub ticks: Vec<(ShardId, bool)>,
    /// Shards this node leads that woke: a heartbeat goes out at once, so
    /// their followers hear from the leader before they wake.
    pub woken: Vec<ShardId>,
    /// Beacons to send, per node.
    pub beacons: BTreeMap<u64, Beacon>,
}

#[derive(Debug)]
struct Leading {
    vote: Vote,
    index: Option<u64>,
    /// Since when the log and vote are as recorded.
    since: Instant,
    quiet: bool,
    /// Followers that accepted the offer.
    accepted: BTreeSet<u64>,
}

impl Leading {
    /// Not quiet, and not offered again for the idle time from `now`;
    /// answers whether it was quiet.
    fn wake(&mut self, now: Instant) -> bool {
        self.since = now;
        self.accepted.clear();
        std::mem::replace(&mut self.quiet, false)
    }
}

/// Whether `node` answered a beacon less than half the grace ago.
fn answered_recently(answered: &BTreeMap<u64, Instant>, node: u64, now: Instant, grace: Duration) -> bool {
    answered.get(&node).is_some_and(|at| now.saturating_duration_since(*at) < grace / 2)
}

#[derive(Debug)]
struct Following {
    leader: u64,
    vote: Vote,
    /// The timer goes back on at this time unless a beacon names the shard.
    until: Instant,
}

/// The quieting rules' state on one node.
#[derive(Debug)]
pub struct Quieter {
    me: u64,
    settings: QuietSettings,
    leading: BTreeMap<ShardId, Leading>,
    following: BTreeMap<ShardId, Following>,
    /// Groups opened here, quiet until then unless a beacon names them.
    held: BTreeMap<ShardId, Instant>,
    /// When each node last answered a beacon.
    answered: BTreeMap<u64, Instant>,
    /// The nodes offered something at the last check.
    offered_to: BTreeSet<u64>,
    /// Shards this node leads that are not offered before these times
    /// (their leadership is being handed on).
    held_awake: BTreeMap<ShardId, Instant>,
    /// The shards whose timer is off here.
    off: BTreeSet<ShardId>,
}

impl Quieter {
    /// No shard quiet yet.
    pub fn new(me: u64, settings: QuietSettings) -> Self {
        Self {
            me,
            settings,
            leading: BTreeMap::new(),
            following: BTreeMap::new(),
            held: BTreeMap::new(),
            answered: BTreeMap::new(),
            offered_to: BTreeSet::new(),
            held_awake: BTreeMap::new(),
            off: BTreeSet::new(),
        }
    }

    /// How many shards have their timer off here.
    pub fn quiet_count(&self) -> usize {
        self.off.len()
    }

    /// Whether `shard`'s timer is off here.
    pub fn is_quiet(&self, shard: ShardId) -> bool {
        self.off.contains(&shard)
    }

    /// A group was opened here with its timer off: it stays so for the
    /// grace unless a beacon keeps it quiet.
    pub fn opened(&mut self, shard: ShardId, now: Instant) {
        self.held.insert(shard, now + self.settings.grace);
        self.off.insert(shard);
    }

    /// A group here closed.
    pub fn closed(&mut self, shard: ShardId) {
        self.leading.remove(&shard);
        self.following.remove(&shard);
        self.held.remove(&shard);
        self.off.remove(&shard);
    }

    /// On the leader: the followers of quiet `shard` that accepted it and
    /// answered a beacon within half the grace (they hold the whole log:
    /// accepting says so).
    pub fn quiet_followers(&self, shard: ShardId, now: Instant) -> BTreeSet<u64> {
        let Some(rec) = self.leading.get(&shard).filter(|r| r.quiet) else { return BTreeSet::new() };
        rec.accepted.iter().copied().filter(|id| self.recently_answered(*id, now)).collect()
    }

    /// On the leader: wake `shard` now (before handing its leadership on,
    /// for one); it is not offered again for [`QuietSettings::after`].
    pub fn wake(&mut self, shard: ShardId, now: Instant, actions: &mut Actions) {
        if self.leading.get_mut(&shard).is_some_and(|rec| rec.wake(now)) {
            actions.woken.push(shard);
        }
        self.set_tick(shard, true, actions);
    }

    /// On the leader, before handing `shard`'s leadership on: wakes it,
    /// and offers it to no one until `until`. openraft's leader stops its
    /// heartbeats and takes no write once it hands leadership on, and never
    /// resumes; if the new leader never takes over (it died), only the
    /// followers' elections end that, so their timers must run.
    pub fn hold_awake(&mut self, shard: ShardId, until: Instant, now: Instant, actions: &mut Actions) {
        self.held_awake.insert(shard, until);
        self.wake(shard, now, actions);
    }

    fn recently_answered(&self, node: u64, now: Instant) -> bool {
        answered_recently(&self.answered, node, now, self.settings.grace)
    }

    fn set_tick(&mut self, shard: ShardId, on: bool, actions: &mut Actions) {
        let changed = if on { self.off.remove(&shard) } else { self.off.insert(shard) };
        if changed {
            actions.ticks.push((shard, on));
        }
    }

    /// The periodic check over every group open here.
    pub fn check(&mut self, now: Instant, views: &BTreeMap<ShardId, GroupView>) -> Actions {
        let mut actions = Actions::default();
        self.leading.retain(|shard, _| views.contains_key(shard));
        self.following.retain(|shard, _| views.contains_key(shard));
        self.held_awake.retain(|shard, until| views.contains_key(shard) && now < *until);
        let mut offered_to = BTreeSet::new();
        for (&shard, view) in views {
            if view.leading() {
                self.following.remove(&shard);
                self.held.remove(&shard);
                let on = self.check_leader(shard, view, now, &mut actions, &mut offered_to);
                self.set_tick(shard, on, &mut actions);
            } else {
                self.leading.remove(&shard);
                let on = self.check_follower(shard, view, now);
                self.set_tick(shard, on, &mut actions);
            }
        }
        // A node offered something last time hears that it is over.
        for node in std::mem::replace(&mut self.offered_to, offered_to.clone()) {
            actions.beacons.entry(node).or_insert_with(|| Beacon { from: self.me, offers: Vec::new() });
        }
        actions
    }

    /// Whether the leader's timer should run.
    fn check_leader(
        &mut self,
        shard: ShardId,
        view: &GroupView,
        now: Instant,
        actions: &mut Actions,
        offered_to: &mut BTreeSet<u64>,
    ) -> bool {
        let fresh =
            || Leading { vote: view.vote, index: view.last_log, since: now, quiet: false, accepted: BTreeSet::new() };
        let rec = self.leading.entry(shard).or_insert_with(fresh);
        if rec.vote != view.vote || rec.index != view.last_log {
            if rec.quiet {
                actions.woken.push(shard);
            }
            *rec = fresh();
        }
        let answered = &self.answered;
        let grace = self.settings.grace;
        let recent = |id: u64| answered_recently(answered, id, now, grace);
        if rec.quiet && !view.followers().all(|id| rec.accepted.contains(&id) && recent(id)) {
            rec.wake(now);
            actions.woken.push(shard);
        }
        let ready = now.saturating_duration_since(rec.since) >= self.settings.after
            && !self.held_awake.contains_key(&shard)
            && view.all_matched
            && !view.joint
            && view.last_log.is_some()
            && view.committed == view.last_log;
        if !ready {
            return true;
        }
        let offer = QuietOffer { shard, vote: view.vote, index: view.last_log.unwrap_or(0) };
        for id in view.followers() {
            offered_to.insert(id);
            actions
                .beacons
                .entry(id)
                .or_insert_with(|| Beacon { from: self.me, offers: Vec::new() })
                .offers
                .push(offer.clone());
        }
        if !rec.quiet && view.followers().all(|id| rec.accepted.contains(&id)) {
            rec.quiet = true;
        }
        !rec.quiet
    }

    /// Whether a follower's timer should run.
    fn check_follower(&mut self, shard: ShardId, view: &GroupView, now: Instant) -> bool {
        if let Some(f) = self.following.get(&shard) {
            if now < f.until && view.vote == f.vote && view.leader == Some(f.leader) {
                return false;
            }
            self.following.remove(&shard);
            return true;
        }
        match self.held.get(&shard) {
            Some(until) if now < *until => false,
            Some(_) => {
                self.held.remove(&shard);
                true
            }
            None => true,
        }
    }

    /// A beacon from another node: answers the shards accepted; the timers
    /// of those go off, those of shards the sender no longer offers go on.
    pub fn on_beacon(
        &mut self,
        beacon: &Beacon,
        now: Instant,
        views: &BTreeMap<ShardId, GroupView>,
    ) -> (Vec<ShardId>, Actions) {
        let mut actions = Actions::default();
        let mut accepted = Vec::new();
        let offered: BTreeSet<ShardId> = beacon.offers.iter().map(|o| o.shard).collect();
        let dropped: Vec<ShardId> = self
            .following
            .iter()
            .filter(|(shard, f)| f.leader == beacon.from && !offered.contains(shard))
            .map(|(shard, _)| *shard)
            .collect();
        for shard in dropped {
            self.following.remove(&shard);
            self.set_tick(shard, true, &mut actions);
        }
        for offer in &beacon.offers {
            let Some(view) = views.get(&offer.shard) else { continue };
            let agrees = !view.leading()
                && view.leader == Some(beacon.from)
                && view.vote == offer.vote
                && view.last_log == Some(offer.index)
                && view.committed == Some(offer.index)
                && view.voters.contains(&self.me)
                && !view.joint;
            if !agrees {
                if self.following.remove(&offer.shard).is_some() {
                    self.set_tick(offer.shard, true, &mut actions);
                }
                continue;
            }
            // Followers of a dead leader wake one after another, in id
            // order, so the first stands alone and wins.
            let rank = view.voters.iter().filter(|id| **id != beacon.from && **id < self.me).count();
            let until = now + self.settings.grace + self.settings.every * 2 * u32::try_from(rank).unwrap_or(u32::MAX);
            self.following.insert(offer.shard, Following { leader: beacon.from, vote: offer.vote, until });
            self.held.remove(&offer.shard);
            self.set_tick(offer.shard, false, &mut actions);
            accepted.push(offer.shard);
        }
        (accepted, actions)
    }

    /// `node` answered the beacon that offered `offered` by accepting
    /// `accepted`: a quiet shard it refused wakes.
    pub fn on_answer(&mut self, node: u64, offered: &[QuietOffer], accepted: &[ShardId], now: Instant) -> Actions {
        let mut actions = Actions::default();
        self.answered.insert(node, now);
        for offer in offered {
            let Some(rec) = self.leading.get_mut(&offer.shard) else { continue };
            if rec.vote != offer.vote || rec.index != Some(offer.index) {
                continue;
            }
            if accepted.contains(&offer.shard) {
                rec.accepted.insert(node);
            } else {
                rec.accepted.remove(&node);
                if rec.quiet {
                    rec.quiet = false;
                    rec.since = now;
                    actions.woken.push(offer.shard);
                    self.off.remove(&offer.shard);
                    actions.ticks.push((offer.shard, true));
                }
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARD: ShardId = 4;

    fn settings() -> QuietSettings {
        QuietSettings {
            after: Duration::from_secs(2),
            grace: Duration::from_millis(800),
            every: Duration::from_millis(100),
        }
    }

    fn view(me: u64, leader: u64, index: u64) -> GroupView {
        GroupView {
            me,
            leader: Some(leader),
            vote: Vote::new_committed(3, leader),
            last_log: Some(index),
            committed: Some(index),
            voters: [1, 2, 3].into(),
            joint: false,
            all_matched: true,
        }
    }

    fn one(v: GroupView) -> BTreeMap<ShardId, GroupView> {
        [(SHARD, v)].into()
    }

    /// Three nodes over time: node 1 leads; beacons are delivered and
    /// answered at once.
    struct Trio {
        q: BTreeMap<u64, Quieter>,
        views: BTreeMap<u64, GroupView>,
        now: Instant,
    }

    impl Trio {
        fn new(index: u64) -> Self {
            let q = (1..=3).map(|id| (id, Quieter::new(id, settings()))).collect();
            let views = (1..=3).map(|id| (id, view(id, 1, index))).collect();
            Self { q, views, now: Instant::now() }
        }

        /// One check on every node, beacons delivered; answers every node's
        /// tick changes.
        fn step(&mut self, by: Duration) -> BTreeMap<u64, Actions> {
            self.now += by;
            let mut out = BTreeMap::new();
            for id in 1..=3 {
                let views = one(self.views[&id].clone());
                let q = self.q.get_mut(&id).expect("node");
                let mut actions = q.check(self.now, &views);
                for (to, beacon) in std::mem::take(&mut actions.beacons) {
                    let to_views = one(self.views[&to].clone());
                    let (accepted, theirs) = self.q.get_mut(&to).expect("node").on_beacon(&beacon, self.now, &to_views);
                    out.entry(to).or_insert_with(Actions::default).ticks.extend(theirs.ticks);
                    let answer = self.q.get_mut(&id).expect("node").on_answer(to, &beacon.offers, &accepted, self.now);
                    actions.ticks.extend(answer.ticks);
                    actions.woken.extend(answer.woken);
                }
                let entry = out.entry(id).or_insert_with(Actions::default);
                entry.ticks.extend(actions.ticks);
                entry.woken.extend(actions.woken);
            }
            out
        }

        fn quiet(&self, id: u64) -> bool {
            self.q[&id].is_quiet(SHARD)
        }
    }

    #[test]
    fn an_idle_shard_goes_quiet_on_every_replica_and_a_write_wakes_it_everywhere() {
        let mut t = Trio::new(10);
        t.step(Duration::from_millis(100));
        assert!((1..=3).all(|id| !t.quiet(id)), "not idle long enough yet");
        for _ in 0..25 {
            t.step(Duration::from_millis(100));
        }
        assert!((1..=3).all(|id| t.quiet(id)), "idle for 2.6 s: quiet everywhere");
        assert_eq!(t.q[&1].quiet_followers(SHARD, t.now), [2, 3].into());

        // A write: the leader's log grows; it wakes, and says so.
        t.views.get_mut(&1).expect("leader").last_log = Some(11);
        let out = t.step(Duration::from_millis(100));
        assert_eq!(out[&1].woken, vec![SHARD]);
        assert!((1..=3).all(|id| !t.quiet(id)), "the next beacon wakes the followers");
    }

    #[test]
    fn a_follower_with_another_log_refuses_and_the_leader_stays_awake() {
        let mut t = Trio::new(10);
        t.views.get_mut(&3).expect("follower").committed = Some(9);
        for _ in 0..30 {
            t.step(Duration::from_millis(100));
        }
        assert!(!t.quiet(1), "a voter refused: the leader keeps its heartbeats");
        assert!(!t.quiet(3));
        assert!(t.quiet(2), "the follower that agreed holds off while beacons come");
    }

    #[test]
    fn the_followers_of_a_silent_leader_wake_one_after_another() {
        let mut t = Trio::new(10);
        for _ in 0..30 {
            t.step(Duration::from_millis(100));
        }
        assert!(t.quiet(2) && t.quiet(3));
        // The leader is gone: only the followers check.
        let mut woke = BTreeMap::new();
        for step in 1..=30u32 {
            t.now += Duration::from_millis(100);
            for id in [2, 3] {
                let views = one(t.views[&id].clone());
                let q = t.q.get_mut(&id).expect("node");
                let actions = q.check(t.now, &views);
                assert!(actions.beacons.is_empty(), "a follower sends no beacon");
                if actions.ticks.contains(&(SHARD, true)) {
                    woke.insert(id, step);
                }
            }
        }
        let (two, three) = (woke[&2], woke[&3]);
        assert!((8..=9).contains(&two), "node 2 wakes after the grace: step {two}");
        assert_eq!(three, two + 2, "node 3 one rank later");
    }

    #[test]
    fn a_quiet_leader_wakes_when_a_follower_stops_answering() {
        let mut t = Trio::new(10);
        for _ in 0..30 {
            t.step(Duration::from_millis(100));
        }
        assert!(t.quiet(1));
        // Node 3 no longer answers: the leader checks alone, node 2 answers.
        let mut woken_at = None;
        for step in 1..=10u32 {
            t.now += Duration::from_millis(100);
            let views = one(t.views[&1].clone());
            let mut actions = t.q.get_mut(&1).expect("leader").check(t.now, &views);
            if let Some(beacon) = actions.beacons.remove(&2) {
                let (accepted, _) = t.q.get_mut(&2).expect("node").on_beacon(&beacon, t.now, &one(t.views[&2].clone()));
                t.q.get_mut(&1).expect("leader").on_answer(2, &beacon.offers, &accepted, t.now);
            }
            if actions.woken.contains(&SHARD) {
                woken_at = Some(step);
                break;
            }
        }
        let step = woken_at.expect("the leader wakes");
        assert!(step <= 4, "within half the grace: step {step}");
        assert!(!t.quiet(1));
    }

    #[test]
    fn a_new_vote_wakes_a_quiet_follower_and_an_opened_group_waits_the_grace() {
        let mut q = Quieter::new(2, settings());
        let now = Instant::now();
        q.opened(SHARD, now);
        assert!(q.is_quiet(SHARD));
        let beacon =
            Beacon { from: 1, offers: vec![QuietOffer { shard: SHARD, vote: Vote::new_committed(3, 1), index: 10 }] };
        let (accepted, _) = q.on_beacon(&beacon, now, &one(view(2, 1, 10)));
        assert_eq!(accepted, vec![SHARD]);
        // Node 3 won an election: the vote differs, the timer goes on.
        let mut moved = view(2, 3, 10);
        moved.vote = Vote::new_committed(4, 3);
        let actions = q.check(now + Duration::from_millis(100), &one(moved));
        assert_eq!(actions.ticks, vec![(SHARD, true)]);

        let mut fresh = Quieter::new(2, settings());
        fresh.opened(SHARD, now);
        let mut unknown = view(2, 1, 10);
        unknown.leader = None;
        assert!(fresh.check(now + Duration::from_millis(700), &one(unknown.clone())).ticks.is_empty());
        assert_eq!(fresh.check(now + Duration::from_millis(900), &one(unknown)).ticks, vec![(SHARD, true)]);
    }

    #[test]
    fn a_shard_whose_leadership_is_handed_on_wakes_everywhere_and_stays_awake() {
        let mut t = Trio::new(10);
        for _ in 0..30 {
            t.step(Duration::from_millis(100));
        }
        assert!((1..=3).all(|id| t.quiet(id)));
        // The leader hands leadership to a node that dies: nothing changes
        // in its log or vote, yet no one may stay quiet.
        let mut actions = Actions::default();
        let now = t.now;
        t.q.get_mut(&1).expect("leader").hold_awake(SHARD, now + Duration::from_secs(3), now, &mut actions);
        assert_eq!(actions.woken, vec![SHARD]);
        for _ in 0..29 {
            t.step(Duration::from_millis(100));
            assert!((1..=3).all(|id| !t.quiet(id)), "awake while the hand-over may be under way");
        }
        for _ in 0..30 {
            t.step(Duration::from_millis(100));
        }
        assert!((1..=3).all(|id| t.quiet(id)), "offered again once the hold is over");
    }

    #[test]
    fn a_group_alone_goes_quiet_without_beacons() {
        let mut q = Quieter::new(1, settings());
        let mut alone = view(1, 1, 5);
        alone.voters = [1].into();
        let now = Instant::now();
        assert!(q.check(now, &one(alone.clone())).ticks.is_empty());
        let actions = q.check(now + Duration::from_secs(3), &one(alone));
        assert_eq!(actions.ticks, vec![(SHARD, false)]);
        assert!(actions.beacons.is_empty());
    }
}
