//! Who is online on the other nodes, as their gossip last said. Pure: the
//! clock is passed in. A node not heard from for a while counts as having no
//! one online, so a dead node's presence vanishes with it.

use std::collections::BTreeSet;
use std::collections::HashMap;

/// One node's last report.
#[derive(Debug, Default)]
struct Report {
    online: BTreeSet<String>,
    connections: u64,
    heard_ms: u64,
}

/// The other nodes' presence.
#[derive(Debug, Default)]
pub struct RemotePresence {
    nodes: HashMap<u64, Report>,
    /// When each node was last heard from, kept after it goes silent.
    heard: HashMap<u64, u64>,
}

impl RemotePresence {
    /// Whether any other node reports `user` online.
    pub fn online(&self, user: &str) -> bool {
        self.nodes.values().any(|r| r.online.contains(user))
    }

    /// Takes a node's report; answers the users whose remote status changed.
    pub fn update(&mut self, node: u64, online: Vec<String>, connections: u64, now_ms: u64) -> Vec<String> {
        let before: BTreeSet<String> = self.nodes.get(&node).map(|r| r.online.clone()).unwrap_or_default();
        let after: BTreeSet<String> = online.into_iter().collect();
        let touched: Vec<String> = before.symmetric_difference(&after).cloned().collect();
        let was: Vec<bool> = touched.iter().map(|u| self.online(u)).collect();
        self.nodes.insert(node, Report { online: after, connections, heard_ms: now_ms });
        self.heard.insert(node, now_ms);
        touched.into_iter().zip(was).filter(|(u, was)| self.online(u) != *was).map(|(u, _)| u).collect()
    }

    /// Forgets nodes silent for `max_age_ms`; answers the users whose remote status changed.
    pub fn expire(&mut self, now_ms: u64, max_age_ms: u64) -> Vec<String> {
        let silent: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.heard_ms) >= max_age_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut changed = Vec::new();
        for id in silent {
            let heard = self.heard.get(&id).copied();
            changed.extend(self.update(id, Vec::new(), 0, now_ms));
            self.nodes.remove(&id);
            if let Some(h) = heard {
                self.heard.insert(id, h);
            }
        }
        changed
    }

    /// When `node` was last heard from, if ever.
    pub fn last_heard(&self, node: u64) -> Option<u64> {
        self.heard.get(&node).copied()
    }

    /// Open connections each node last reported.
    pub fn connections(&self) -> HashMap<u64, u64> {
        self.nodes.iter().map(|(id, r)| (*id, r.connections)).collect()
    }

    /// Nodes heard from within `max_age_ms`.
    pub fn alive(&self, now_ms: u64, max_age_ms: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.heard_ms) < max_age_ms)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changes_are_reported_only_when_the_union_changes() {
        let mut p = RemotePresence::default();
        assert_eq!(p.update(2, names(&["ann", "bob"]), 2, 0), names(&["ann", "bob"]));
        assert_eq!(p.update(3, names(&["ann"]), 1, 0), Vec::<String>::new());
        assert_eq!(p.update(2, names(&["bob"]), 1, 10), Vec::<String>::new(), "ann is still on node 3");
        assert_eq!(p.update(3, Vec::new(), 0, 10), names(&["ann"]));
        assert!(p.online("bob"));
        assert!(!p.online("ann"));
    }

    #[test]
    fn a_silent_node_takes_its_users_with_it() {
        let mut p = RemotePresence::default();
        p.update(2, names(&["ann"]), 1, 0);
        p.update(3, names(&["bob"]), 1, 2_000);
        assert_eq!(p.expire(2_999, 3_000), Vec::<String>::new());
        assert_eq!(p.expire(3_000, 3_000), names(&["ann"]));
        assert!(p.online("bob"));
        assert_eq!(p.alive(3_000, 3_000), vec![3]);
        assert_eq!(p.last_heard(2), Some(0), "silence does not move the last word");
        assert_eq!(p.last_heard(9), None);
        assert_eq!(p.connections().get(&3), Some(&1));
    }
}
