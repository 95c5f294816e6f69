//! The node table: every node the balancer knows, its health, whether it
//! drains, and its connection counts; and the one strategy that picks
//! among them.
//!
//! Pure code, driven by the I/O around it: probe results, connect
//! outcomes, member lists and connection ends come in as calls, picks and
//! health flips go out as return values. No sockets, no clock, no locks
//! (the server wraps the table in one mutex).
//!
//! A node is *usable* for a new client when it is up, not suspect and not
//! draining. *Suspect* is the passive check: a connect that failed marks
//! the node until its next good health check. When every up node is
//! suspect, picks fall back to suspect ones rather than refuse a client
//! that a node might still serve.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::Backend;
use crate::config::Strategy;
use crate::health::Hysteresis;
use crate::health::Probe;
use crate::health::Thresholds;
use crate::health::Transition;
use crate::select::Candidate;
use crate::select::Select;
use crate::select::selector;

/// What a pick is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A connection the balancer relays: counts as active on the node.
    Relay,
    /// A `GET /assign` answer: the client goes to the node itself, so the
    /// node's own connection count (from the member list) is the load.
    Assign,
}

/// The node chosen for one client. `generation` tells this node apart from
/// an earlier node with the same id that was removed and came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The node's id.
    pub id: u64,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The table entry this pick counts against.
    pub generation: u64,
}

/// A node as the cluster's member list describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Client address.
    pub addr: SocketAddr,
    /// Weight, when the cluster states one.
    pub weight: Option<u32>,
    /// Marked draining in the cluster metadata.
    pub draining: bool,
    /// Client connections the node reports.
    pub connections: Option<u64>,
}

/// What a member list changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembersChange {
    /// Nodes learnt from the list.
    pub added: Vec<u64>,
    /// Discovered nodes the list no longer has.
    pub removed: Vec<u64>,
}

/// A node's health as reported by the admin endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthView {
    /// Up and not suspect.
    Up,
    /// Down by the health checks.
    Down,
    /// Up by the health checks, but a connect failed since the last good check.
    Suspect,
}

impl HealthView {
    /// `up`, `down` or `suspect`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthView::Up => "up",
            HealthView::Down => "down",
            HealthView::Suspect => "suspect",
        }
    }
}

/// A snapshot of one node, for the admin endpoint and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Node id.
    pub id: u64,
    /// Client address.
    pub addr: SocketAddr,
    /// Health.
    pub health: HealthView,
    /// Gets no new clients (by its own health answer or the cluster's list).
    pub draining: bool,
    /// Weight.
    pub weight: u32,
    /// Relayed connections open now.
    pub active: u64,
    /// Relayed connections ever established.
    pub routed: u64,
    /// `GET /assign` answers naming it.
    pub assigned: u64,
    /// Failed health checks and failed connects.
    pub failures: u64,
    /// Learnt from the cluster rather than configured.
    pub discovered: bool,
    /// Connections the node itself reports, if known.
    pub reported: Option<u64>,
    /// The last failure's description.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Entry {
    addr: SocketAddr,
    weight: u32,
    configured: bool,
    generation: u64,
    health: Hysteresis,
    suspect: bool,
    /// Its own `/healthz` said `draining`.
    draining_self: bool,
    /// The member list said `draining`.
    draining_cluster: bool,
    reported: Option<u64>,
    active: u64,
    routed: u64,
    assigned: u64,
    failures: u64,
    last_error: Option<String>,
}

impl Entry {
    fn new(addr: SocketAddr, weight: u32, configured: bool, generation: u64) -> Entry {
        Entry {
            addr,
            weight,
            configured,
            generation,
            // Configured nodes are trusted until checks say otherwise (the
            // passive check covers the first seconds); discovered ones must
            // first pass `up_after` checks.
            health: Hysteresis::new(configured),
            suspect: false,
            draining_self: false,
            draining_cluster: false,
            reported: None,
            active: 0,
            routed: 0,
            assigned: 0,
            failures: 0,
            last_error: None,
        }
    }

    fn draining(&self) -> bool {
        self.draining_self || self.draining_cluster
    }

    fn usable(&self, allow_suspect: bool) -> bool {
        self.health.is_up() && !self.draining() && (allow_suspect || !self.suspect)
    }
}

/// The node table and its strategy.
pub struct Table {
    nodes: BTreeMap<u64, Entry>,
    selector: Box<dyn Select + Send>,
    thresholds: Thresholds,
    next_generation: u64,
    members_turn: Option<u64>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("nodes", &self.nodes).field("thresholds", &self.thresholds).finish()
    }
}

impl Table {
    /// A table of the configured nodes, all up.
    pub fn new(nodes: &[Backend], strategy: Strategy, thresholds: Thresholds) -> Table {
        let mut t = Table {
            nodes: BTreeMap::new(),
            selector: selector(strategy),
            thresholds,
            next_generation: 0,
            members_turn: None,
        };
        for b in nodes {
            let generation = t.generation();
            t.nodes.insert(b.id, Entry::new(b.addr, b.weight, true, generation));
        }
        t
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn entry(&mut self, id: u64, generation: u64) -> Option<&mut Entry> {
        self.nodes.get_mut(&id).filter(|e| e.generation == generation)
    }

    /// Picks a node for a new client, skipping `exclude` (nodes this client
    /// already failed to reach). A relay pick counts as active at once, so
    /// concurrent picks see each other.
    pub fn pick(&mut self, purpose: Purpose, exclude: &[u64]) -> Option<Pick> {
        let candidates = |allow_suspect: bool| -> Vec<Candidate> {
            self.nodes
                .iter()
                .map(|(id, e)| Candidate {
                    id: *id,
                    weight: e.weight,
                    active: match purpose {
                        Purpose::Relay => e.active,
                        Purpose::Assign => e.reported.unwrap_or(e.active),
                    },
                    eligible: e.usable(allow_suspect) && !exclude.contains(id),
                })
                .collect()
        };
        let id = match self.selector.pick(&candidates(false)) {
            Some(id) => id,
            None => self.selector.pick(&candidates(true))?,
        };
        let e = self.nodes.get_mut(&id)?;
        match purpose {
            Purpose::Relay => e.active += 1,
            Purpose::Assign => e.assigned += 1,
        }
        Some(Pick { id, addr: e.addr, generation: e.generation })
    }

    /// The pick's connection to its node is up.
    pub fn connected(&mut self, pick: &Pick) {
        if let Some(e) = self.entry(pick.id, pick.generation) {
            e.routed += 1;
        }
    }

    /// The pick's node refused or did not answer the connect: it is suspect
    /// and the failure counts towards taking it down.
    pub fn connect_failed(&mut self, pick: &Pick, error: String) -> Option<Transition> {
        let t = self.thresholds;
        let e = self.entry(pick.id, pick.generation)?;
        e.active = e.active.saturating_sub(1);
        e.failures += 1;
        e.suspect = true;
        e.last_error = Some(error);
        e.health.observe(false, t)
    }

    /// A relayed connection ended.
    pub fn release(&mut self, id: u64, generation: u64) {
        if let Some(e) = self.entry(id, generation) {
            e.active = e.active.saturating_sub(1);
        }
    }

    /// Records an active health check's result.
    pub fn record_probe(&mut self, id: u64, generation: u64, probe: &Probe) -> Option<Transition> {
        let t = self.thresholds;
        let e = self.entry(id, generation)?;
        match probe {
            Probe::Ok | Probe::Draining => {
                e.suspect = false;
                e.draining_self = *probe == Probe::Draining;
            }
            Probe::Failed(why) => {
                e.failures += 1;
                e.last_error = Some(why.clone());
            }
        }
        e.health.observe(probe.healthy(), t)
    }

    /// Applies the cluster's member list: new nodes join (down until their
    /// checks pass), draining marks follow the list, discovered nodes that
    /// left are dropped. Configured nodes keep their configured address and
    /// weight and are never dropped.
    ///
    /// A list that does not name `source`, the node that sent it, is
    /// ignored (`None`): as far as that node knows it is not (or not yet) a
    /// member, so its list may be stale (a new node still replaying the
    /// metadata log lists an old node set). Applying it could drop every
    /// live node, and with them every source of a better list.
    pub fn apply_members(&mut self, source: u64, members: &[Member]) -> Option<MembersChange> {
        if !members.iter().any(|m| m.id == source) {
            return None;
        }
        let mut change = MembersChange::default();
        for m in members {
            let fresh = |generation| {
                let mut e = Entry::new(m.addr, m.weight.unwrap_or(1), false, generation);
                e.draining_cluster = m.draining;
                e.reported = m.connections;
                e
            };
            match self.nodes.get(&m.id).map(|e| (e.configured, e.addr)) {
                None => {
                    let generation = self.generation();
                    self.nodes.insert(m.id, fresh(generation));
                    change.added.push(m.id);
                }
                // A new address is a new node as far as health goes.
                Some((false, addr)) if addr != m.addr => {
                    let generation = self.generation();
                    self.nodes.insert(m.id, fresh(generation));
                }
                Some((configured, _)) => {
                    if let Some(e) = self.nodes.get_mut(&m.id) {
                        e.draining_cluster = m.draining;
                        e.reported = m.connections;
                        if let (false, Some(w)) = (configured, m.weight) {
                            e.weight = w;
                        }
                    }
                }
            }
        }
        let listed = |id: &u64| members.iter().any(|m| m.id == *id);
        for (id, e) in self.nodes.iter_mut() {
            if e.configured && !listed(id) {
                e.draining_cluster = false;
                e.reported = None;
            }
        }
        change.removed = self.nodes.iter().filter(|(id, e)| !e.configured && !listed(id)).map(|(id, _)| *id).collect();
        for id in &change.removed {
            self.nodes.remove(id);
        }
        Some(change)
    }

    /// Every node to health-check: id, generation, address.
    pub fn probe_targets(&self) -> Vec<(u64, u64, SocketAddr)> {
        self.nodes.iter().map(|(id, e)| (*id, e.generation, e.addr)).collect()
    }

    /// A node to ask for the member list: the next healthy one in turn, or,
    /// when none is healthy, the next one of any health: a node that fails
    /// its checks (overloaded, restarting) may still answer, and with no
    /// list at all the table could never learn where the cluster went.
    pub fn members_source(&mut self) -> Option<(u64, SocketAddr)> {
        let healthy = |e: &Entry| e.health.is_up() && !e.suspect;
        let id = self.next_after_turn(healthy).or_else(|| self.next_after_turn(|_| true))?;
        self.members_turn = Some(id);
        self.nodes.get(&id).map(|e| (id, e.addr))
    }

    /// The first node after `members_turn` (wrapping) that `ok` accepts.
    fn next_after_turn(&self, ok: impl Fn(&Entry) -> bool) -> Option<u64> {
        let after = self.members_turn.and_then(|last| self.nodes.range(last + 1..).find(|(_, e)| ok(e)));
        after.or_else(|| self.nodes.iter().find(|(_, e)| ok(e))).map(|(id, _)| *id)
    }

    /// How many nodes would take a new client now.
    pub fn usable(&self) -> usize {
        self.nodes.values().filter(|e| e.usable(false)).count()
    }

    /// A snapshot of every node, by id.
    pub fn views(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(id, e)| NodeView {
                id: *id,
                addr: e.addr,
                health: match (e.health.is_up(), e.suspect) {
                    (false, _) => HealthView::Down,
                    (true, true) => HealthView::Suspect,
                    (true, false) => HealthView::Up,
                },
                draining: e.draining(),
                weight: e.weight,
                active: e.active,
                routed: e.routed,
                assigned: e.assigned,
                failures: e.failures,
                discovered: !e.configured,
                reported: e.reported,
                last_error: e.last_error.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { down_after: 3, up_after: 2 };

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn table(strategy: Strategy, weights: &[u32]) -> Table {
        let nodes: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend { id: i as u64 + 1, addr: addr(7101 + i as u16), weight: *w })
            .collect();
        Table::new(&nodes, strategy, T)
    }

    fn ids(t: &mut Table, purpose: Purpose, n: usize) -> Vec<u64> {
        (0..n).filter_map(|_| t.pick(purpose, &[]).map(|p| p.id)).collect()
    }

    fn health_of(t: &Table, id: u64) -> HealthView {
        t.views().into_iter().find(|v| v.id == id).expect("node exists").health
    }

    fn gen_of(t: &Table, id: u64) -> u64 {
        t.probe_targets().into_iter().find(|(i, _, _)| *i == id).expect("node exists").1
    }

    #[test]
    fn a_failed_connect_makes_a_node_suspect_until_a_good_check() {
        let mut t = table(Strategy::RoundRobin, &[1, 1, 1]);
        let p = t.pick(Purpose::Relay, &[]).expect("a node");
        assert_eq!(p.id, 1);
        assert_eq!(t.connect_failed(&p, "refused".into()), None);
        assert_eq!(health_of(&t, 1), HealthView::Suspect);
        // The same client tries again, excluding node 1.
        assert_eq!(t.pick(Purpose::Relay, &[1]).map(|p| p.id), Some(2));
        assert_eq!(ids(&mut t, Purpose::Relay, 4), [3, 2, 3, 2]);
        assert_eq!(t.record_probe(1, gen_of(&t, 1), &Probe::Ok), None);
        assert_eq!(health_of(&t, 1), HealthView::Up);
        assert_eq!(ids(&mut t, Purpose::Relay, 3), [3, 1, 2]);
    }

    #[test]
    fn failures_of_both_kinds_take_a_node_down_and_good_checks_bring_it_back() {
        let mut t = table(Strategy::RoundRobin, &[1, 1]);
        let g = gen_of(&t, 2);
        let p = t.pick(Purpose::Relay, &[1]).expect("node 2");
        assert_eq!(t.connect_failed(&p, "refused".into()), None);
        assert_eq!(t.record_probe(2, g, &Probe::Failed("timeout".into())), None);
        assert_eq!(t.record_probe(2, g, &Probe::Failed("timeout".into())), Some(Transition::WentDown));
        assert_eq!(health_of(&t, 2), HealthView::Down);
        assert_eq!(ids(&mut t, Purpose::Relay, 3), [1, 1, 1]);
        assert_eq!(t.record_probe(2, g, &Probe::Ok), None);
        assert_eq!(ids(&mut t, Purpose::Relay, 1), [1], "one good check is not enough");
        assert_eq!(t.record_probe(2, g, &Probe::Ok), Some(Transition::WentUp));
        assert_eq!(ids(&mut t, Purpose::Relay, 2), [2, 1]);
        let v = t.views();
        assert_eq!((v[1].failures, v[1].last_error.as_deref()), (3, Some("timeout")));
    }

    #[test]
    fn when_every_node_is_suspect_picks_still_try_them() {
        let mut t = table(Strategy::RoundRobin, &[1, 1]);
        for _ in 0..2 {
            let p = t.pick(Purpose::Relay, &[]).expect("a node");
            t.connect_failed(&p, "refused".into());
        }
        assert_eq!(t.usable(), 0);
        assert_eq!(t.pick(Purpose::Relay, &[]).map(|p| p.id), Some(1));
        assert_eq!(t.pick(Purpose::Relay, &[1, 2]), None, "a client that tried both gets none");
    }

    #[test]
    fn draining_by_health_or_by_the_cluster_stops_new_clients_only() {
        let mut t = table(Strategy::RoundRobin, &[1, 1]);
        let held = t.pick(Purpose::Relay, &[]).expect("node 1");
        t.connected(&held);
        assert_eq!(t.record_probe(1, gen_of(&t, 1), &Probe::Draining), None);
        assert_eq!(ids(&mut t, Purpose::Relay, 3), [2, 2, 2]);
        assert_eq!(t.views()[0].active, 1, "the open connection stays counted");
        t.record_probe(1, gen_of(&t, 1), &Probe::Ok);
        assert_eq!(ids(&mut t, Purpose::Relay, 2), [1, 2]);
        let list = [
            Member { id: 1, addr: addr(7101), weight: None, draining: true, connections: None },
            Member { id: 2, addr: addr(7102), weight: None, draining: false, connections: None },
        ];
        t.apply_members(1, &list);
        assert!(t.views()[0].draining);
        assert_eq!(ids(&mut t, Purpose::Relay, 2), [2, 2]);
        assert_eq!(t.pick(Purpose::Relay, &[2]), None, "draining nodes are no fallback");
    }

    #[test]
    fn discovered_nodes_join_after_passing_checks_and_leave_with_the_list() {
        let mut t = table(Strategy::RoundRobin, &[1]);
        let member = |id, port, draining| Member { id, addr: addr(port), weight: None, draining, connections: None };
        let change = t.apply_members(1, &[member(1, 9999, false), member(2, 7102, false)]);
        assert_eq!(change, Some(MembersChange { added: vec![2], removed: vec![] }));
        assert_eq!(t.views()[0].addr, addr(7101), "configured addresses win");
        assert_eq!(health_of(&t, 2), HealthView::Down);
        assert_eq!(ids(&mut t, Purpose::Relay, 2), [1, 1]);
        let g = gen_of(&t, 2);
        t.record_probe(2, g, &Probe::Ok);
        assert_eq!(t.record_probe(2, g, &Probe::Ok), Some(Transition::WentUp));
        assert_eq!(ids(&mut t, Purpose::Relay, 3), [2, 1, 2]);
        // Node 2 leaves the cluster while a connection to it is open.
        let open = t.pick(Purpose::Relay, &[1]).expect("node 2");
        let change = t.apply_members(1, &[member(1, 7101, false)]);
        assert_eq!(change, Some(MembersChange { added: vec![], removed: vec![2] }));
        assert_eq!(ids(&mut t, Purpose::Relay, 2), [1, 1]);
        // It comes back: a new entry, which the old connection's end does not touch.
        t.apply_members(1, &[member(1, 7101, false), member(2, 7102, false)]);
        assert_ne!(gen_of(&t, 2), open.generation);
        t.release(open.id, open.generation);
        t.record_probe(open.id, open.generation, &Probe::Ok);
        assert_eq!(health_of(&t, 2), HealthView::Down, "a stale probe result is ignored");
        assert_eq!(t.views()[1].active, 0);
        // A discovered node that moves is checked afresh.
        let g = gen_of(&t, 2);
        t.record_probe(2, g, &Probe::Ok);
        t.record_probe(2, g, &Probe::Ok);
        t.apply_members(2, &[member(1, 7101, false), member(2, 7202, false)]);
        assert_eq!((t.views()[1].addr, health_of(&t, 2)), (addr(7202), HealthView::Down));
    }

    #[test]
    fn least_connections_counts_open_relays() {
        let mut t = table(Strategy::LeastConnections, &[1, 1, 1]);
        let picks: Vec<Pick> = (0..6).filter_map(|_| t.pick(Purpose::Relay, &[])).collect();
        assert_eq!(picks.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2, 3, 1, 2, 3]);
        for p in picks.iter().filter(|p| p.id == 1) {
            t.release(p.id, p.generation);
        }
        t.release(picks[1].id, picks[1].generation);
        // Loads now 0, 1, 2; ties go in turn after the previous pick.
        assert_eq!(ids(&mut t, Purpose::Relay, 5), [1, 2, 1, 2, 3]);
    }

    #[test]
    fn assign_picks_use_the_nodes_reported_counts() {
        let mut t = table(Strategy::LeastConnections, &[1, 1, 1]);
        let member =
            |id, port, connections| Member { id, addr: addr(port), weight: None, draining: false, connections };
        t.apply_members(3, &[member(1, 7101, Some(5)), member(2, 7102, Some(0)), member(3, 7103, None)]);
        // Node 3 reports nothing: the balancer's own count (0) stands in.
        assert_eq!(ids(&mut t, Purpose::Assign, 3), [2, 3, 2]);
        assert_eq!(t.views().iter().map(|v| (v.assigned, v.active)).collect::<Vec<_>>(), [(0, 0), (2, 0), (1, 0)]);
    }

    #[test]
    fn the_member_list_comes_from_healthy_nodes_in_turn() {
        let mut t = table(Strategy::RoundRobin, &[1, 1, 1]);
        let g = gen_of(&t, 2);
        for _ in 0..3 {
            t.record_probe(2, g, &Probe::Failed("down".into()));
        }
        let got: Vec<_> = (0..4).filter_map(|_| t.members_source()).map(|(_, a)| a.port()).collect();
        assert_eq!(got, [7101, 7103, 7101, 7103]);
        // With every node down, every node is asked in turn: never none.
        for id in [1, 3] {
            let g = gen_of(&t, id);
            for _ in 0..3 {
                t.record_probe(id, g, &Probe::Failed("down".into()));
            }
        }
        let got: Vec<_> = (0..4).filter_map(|_| t.members_source()).map(|(id, _)| id).collect();
        assert_eq!(got, [1, 2, 3, 1]);
    }

    #[test]
    fn a_member_list_that_omits_its_sender_is_ignored() {
        let mut t = table(Strategy::RoundRobin, &[1]);
        let member = |id, port| Member { id, addr: addr(port), weight: None, draining: false, connections: None };
        t.apply_members(1, &[member(1, 7101), member(2, 7102), member(3, 7103)]);
        // Node 3, replaying an old metadata log, knows only node 1.
        assert_eq!(t.apply_members(3, &[member(1, 7101)]), None);
        assert_eq!(t.views().iter().map(|v| v.id).collect::<Vec<_>>(), [1, 2, 3], "nothing dropped");
        let change = t.apply_members(2, &[member(1, 7101), member(2, 7102)]);
        assert_eq!(change, Some(MembersChange { added: vec![], removed: vec![3] }));
    }
}
