//! The checker: a pure function of what a fault run observed ([`Observed`]:
//! every send and its outcome, every node's history of every room, every
//! client's deliveries, the faults as executed) to a [`Report`] of
//! violations. One function per property, each naming its violations by
//! kind (LOST, DUPLICATE, GAP, ...).
//!
//! It does no I/O and keeps no clock: gathering the observations (waiting
//! for histories and clients to converge) is `world::observe`'s job, and
//! times are compared as given.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::time::Duration;
use std::time::Instant;

use palaver_client::Message;
use palaver_testkit::recorder::Seen;

use crate::FAILURE_TIMEOUT;

/// A room that accepted no send for longer than this (or ten of its send
/// intervals) must owe it to a fault on its owner.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);
/// How long a room may still refuse sends after a fault on its owner ended,
/// or after the failure timeout from the fault's start when that comes first
/// (the room moves then): a Raft election when the owner led, the move, the
/// recovery and the clients' backoff (at most 2 s).
pub const RECOVERY_SLACK: Duration = Duration::from_millis(4_500);
/// A change of the node set (a node added, removed or replaced, a shard's
/// leadership moved) re-places replicas and re-spreads leaders of shards
/// other than the victim's, for a while after the command returns: a stall
/// of any room that begins during the change or this long after it...
pub const MOVE_SETTLE: Duration = Duration::from_secs(10);
/// ...is explained if it ends within this long after the change ended.
pub const MOVE_RECOVERY: Duration = Duration::from_secs(20);

/// Whether a step changed the node set or moved leadership on purpose.
fn changes_node_set(label: &str) -> bool {
    matches!(label, "add node" | "remove node" | "replace node" | "move leader")
}

/// How a send ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Answered with `seq` at `at`, after `attempts` tries.
    Answered {
        /// The seq the answer gave.
        seq: u64,
        /// When the answer came.
        at: Instant,
        /// Tries the client made.
        attempts: u32,
    },
    /// Failed for good at `at`.
    Failed {
        /// Why.
        error: String,
        /// When.
        at: Instant,
    },
}

/// One send a client issued.
#[derive(Clone, Debug)]
pub struct SendRec {
    /// The sender.
    pub user: String,
    /// The room.
    pub room: String,
    /// Its idempotency key.
    pub client_id: String,
    /// Its body.
    pub body: String,
    /// When it was issued.
    pub issued: Instant,
    /// For a partition probe: the step of the partition it probes.
    pub probe_of: Option<usize>,
    /// How it ended, if it did.
    pub outcome: Option<Outcome>,
}

/// A fault as executed.
#[derive(Clone, Debug)]
pub struct Executed {
    /// Its step in the schedule.
    pub step: usize,
    /// What it was (`kill leader`, `pause`, `partition`, ...).
    pub label: String,
    /// The node it hit.
    pub victim: u64,
    /// When the fault began.
    pub at: Instant,
    /// When it ended (restart issued, SIGCONT, healed).
    pub ended: Instant,
    /// Rooms the victim owned when the fault began.
    pub owned: Vec<String>,
    /// For a partition: it was really made (not skipped).
    pub partitioned: bool,
}

impl Executed {
    /// `step N LABEL node V t=A..Bs owned [...]`, times in seconds from `start`.
    pub fn describe(&self, start: Instant) -> String {
        let at = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
        format!(
            "step {} {} node {} t={:.1}s..{:.1}s owned {:?}",
            self.step,
            self.label,
            self.victim,
            at(self.at),
            at(self.ended),
            self.owned
        )
    }
}

/// When the load ran, and how dense it was.
#[derive(Clone, Copy, Debug)]
pub struct LoadWindow {
    /// When the first send was due.
    pub started: Instant,
    /// When sends stopped being issued.
    pub stopped: Instant,
    /// Sends per second per room.
    pub per_room_rate: f64,
}

/// Everything a run observed, gathered after the load stopped.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The run's start (times in the report are seconds from it).
    pub start: Instant,
    /// Every send, probes included.
    pub sends: Vec<SendRec>,
    /// By room, by node id: every message the node holds, oldest first.
    pub histories: BTreeMap<String, BTreeMap<u64, Vec<Message>>>,
    /// Each load client's name and what its events showed.
    pub clients: Vec<(String, Seen)>,
    /// The faults, in order.
    pub executed: Vec<Executed>,
    /// The load.
    pub window: LoadWindow,
    /// Violations seen while the faults ran (rooms that did not recover).
    pub noted: Vec<String>,
}

impl Observed {
    /// Seconds from the start to `t`.
    pub fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64()
    }
}

/// Kinds of violation, most serious first (the order of the failure report).
pub const KINDS: [&str; 12] = [
    "LOST",
    "DUPLICATE",
    "GAP",
    "DIVERGENCE",
    "MINORITY ANSWERED",
    "CLIENT GAP",
    "CLIENT VIEW",
    "CLIENT STOPPED",
    "UNAVAILABLE",
    "HANG",
    "SEND FAILED",
    "OTHER",
];
/// Violations of one kind shown in the failure report.
const SHOWN_PER_KIND: usize = 12;

/// What the checker found, and the counts the summary prints.
#[derive(Debug, Default)]
pub struct Report {
    /// By kind (the text before the first `:`).
    pub violations: BTreeMap<String, Vec<String>>,
    /// Sends issued.
    pub attempted: usize,
    /// Sends answered.
    pub answered: usize,
    /// Answered sends found in history as answered.
    pub checked: usize,
    /// Sends that failed for good.
    pub failed: usize,
    /// Each room's last seq (in its longest history).
    pub last_seqs: BTreeMap<String, u64>,
    /// Stalls explained by a fault on the room's owner.
    pub stalls: Vec<String>,
}

impl Report {
    fn violation(&mut self, v: String) {
        let kind = v.split(':').next().filter(|k| KINDS.contains(k)).unwrap_or("OTHER").to_string();
        self.violations.entry(kind).or_default().push(v);
    }

    /// No violation at all.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The seqs at which copies, or a client and the history, first
    /// differ (from DIVERGENCE and CLIENT VIEW).
    pub fn first_differences(&self) -> BTreeSet<u64> {
        let texts = ["DIVERGENCE", "CLIENT VIEW"].into_iter().filter_map(|k| self.violations.get(k)).flatten();
        let mut seqs = BTreeSet::new();
        for v in texts {
            let Some(at) = v.find("first difference") else { continue };
            // Both sides' seqs: "seq N from …" on each.
            for part in v[at..].split("seq ").skip(1) {
                if let Some(n) = part.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()) {
                    seqs.insert(n);
                }
            }
        }
        seqs
    }

    /// Counts per kind, then the first few of each kind, most serious first.
    pub fn render(&self) -> String {
        let counts: Vec<String> =
            KINDS.iter().filter_map(|k| self.violations.get(*k).map(|v| format!("{k} {}", v.len()))).collect();
        let mut out = format!("violations: {}\n", counts.join(", "));
        for k in KINDS {
            let Some(list) = self.violations.get(k) else { continue };
            for v in list.iter().take(SHOWN_PER_KIND) {
                out.push_str(v);
                out.push('\n');
            }
            if list.len() > SHOWN_PER_KIND {
                out.push_str(&format!("... and {} more {k}\n", list.len() - SHOWN_PER_KIND));
            }
        }
        out
    }
}

/// Checks every property of `o`.
pub fn check(o: &Observed) -> Report {
    let mut r = Report { attempted: o.sends.len(), ..Report::default() };
    for v in &o.noted {
        r.violation(v.clone());
    }
    for (room, per_node) in &o.histories {
        gapless(room, per_node, &mut r);
        stored_once(room, per_node, &mut r);
        replicas_identical(room, per_node, &mut r);
    }
    let reference = references(o);
    for (room, h) in &reference {
        r.last_seqs.insert(room.clone(), h.last().map_or(0, |m| m.seq));
    }
    answered_sends_stored(o, &reference, &mut r);
    isolated_node_answers_nothing(o, &mut r);
    every_send_answered(o, &mut r);
    stalls_explained(o, &mut r);
    client_views_are_the_history(o, &reference, &mut r);
    r
}

/// The longest history of each room: the reference for the other checks.
pub fn references(o: &Observed) -> BTreeMap<String, Vec<Message>> {
    o.histories
        .iter()
        .map(|(room, per_node)| (room.clone(), per_node.values().max_by_key(|h| h.len()).cloned().unwrap_or_default()))
        .collect()
}

/// GAP: on every node, position `i` of a room's history holds seq `i + 1`.
fn gapless(room: &str, per_node: &BTreeMap<u64, Vec<Message>>, r: &mut Report) {
    for (id, h) in per_node {
        if let Some((pos, m)) = h.iter().enumerate().find(|(pos, m)| m.seq != *pos as u64 + 1) {
            r.violation(format!(
                "GAP: room {room} on node {id}: position {pos} holds seq {} (expected {}); {} messages, last seq {:?}",
                m.seq,
                pos + 1,
                h.len(),
                h.last().map(|m| m.seq)
            ));
        }
    }
}

/// DUPLICATE: no node stores one (sender, client_id) twice in a room.
fn stored_once(room: &str, per_node: &BTreeMap<u64, Vec<Message>>, r: &mut Report) {
    for (id, h) in per_node {
        let mut seen: HashMap<(&str, &str), u64> = HashMap::new();
        for m in h {
            let key = (m.from.as_str(), m.client_id.as_deref().unwrap_or(""));
            if let Some(first) = seen.insert(key, m.seq) {
                r.violation(format!(
                    "DUPLICATE: room {room} on node {id}: ({}, {}) stored at seq {first} and seq {}",
                    key.0, key.1, m.seq
                ));
            }
        }
    }
}

/// DIVERGENCE: every node holds the same history of a room.
fn replicas_identical(room: &str, per_node: &BTreeMap<u64, Vec<Message>>, r: &mut Report) {
    let Some((first_id, first)) = per_node.iter().next() else { return };
    for (id, h) in per_node.iter().skip(1) {
        if h != first {
            let diff = first_difference(first, h);
            r.violation(format!(
                "DIVERGENCE: room {room}: node {first_id} holds {} messages, node {id} {}; first difference at \
                 position {diff}: node {first_id} {:?} / node {id} {:?}",
                first.len(),
                h.len(),
                first.get(diff).map(brief),
                h.get(diff).map(brief)
            ));
        }
    }
}

/// LOST: every answered send is in history at its seq, with its sender,
/// client_id and body.
fn answered_sends_stored(o: &Observed, reference: &BTreeMap<String, Vec<Message>>, r: &mut Report) {
    for s in &o.sends {
        let Some(Outcome::Answered { seq, at, attempts }) = &s.outcome else { continue };
        r.answered += 1;
        let h = reference.get(&s.room).map(Vec::as_slice).unwrap_or_default();
        let stored = h.get((*seq as usize).wrapping_sub(1));
        let ok = stored.is_some_and(|m| {
            m.seq == *seq
                && m.from == s.user
                && m.client_id.as_deref() == Some(s.client_id.as_str())
                && m.body.as_deref() == Some(s.body.as_str())
        });
        if ok {
            r.checked += 1;
            continue;
        }
        let elsewhere: Vec<u64> = h
            .iter()
            .filter(|m| m.from == s.user && m.client_id.as_deref() == Some(s.client_id.as_str()))
            .map(|m| m.seq)
            .collect();
        r.violation(format!(
            "LOST: {} in room {} by {} was answered seq {seq} at t={:.2}s (attempts {attempts}); history at \
             {seq}: {:?}; that client_id is stored at {elsewhere:?}",
            s.client_id,
            s.room,
            s.user,
            o.at(*at),
            stored.map(brief)
        ));
    }
}

/// MINORITY ANSWERED: a node cut off from the others answers no send
/// before the partition heals.
fn isolated_node_answers_nothing(o: &Observed, r: &mut Report) {
    let healed: HashMap<usize, &Executed> = o.executed.iter().map(|e| (e.step, e)).collect();
    for s in &o.sends {
        if let Some(Outcome::Answered { seq, at, .. }) = &s.outcome
            && let Some(step) = s.probe_of
            && let Some(e) = healed.get(&step)
            && *at < e.ended
        {
            r.violation(format!(
                "MINORITY ANSWERED: the isolated node {} answered probe {} in room {} with seq {seq} at t={:.2}s, \
                 before the heal at t={:.2}s",
                e.victim,
                s.client_id,
                s.room,
                o.at(*at),
                o.at(e.ended)
            ));
        }
    }
}

/// SEND FAILED, HANG: every send was answered (the clients retry until
/// they give up).
fn every_send_answered(o: &Observed, r: &mut Report) {
    for s in &o.sends {
        match &s.outcome {
            Some(Outcome::Answered { .. }) => {}
            Some(Outcome::Failed { error, at }) => {
                r.failed += 1;
                r.violation(format!(
                    "SEND FAILED: {} in room {} by {} (issued t={:.2}s) failed at t={:.2}s: {error}",
                    s.client_id,
                    s.room,
                    s.user,
                    o.at(s.issued),
                    o.at(*at)
                ));
            }
            None => r.violation(format!(
                "HANG: {} in room {} by {} (issued t={:.2}s) never got an outcome",
                s.client_id,
                s.room,
                s.user,
                o.at(s.issued)
            )),
        }
    }
}

/// UNAVAILABLE: a room that accepted no send for long owes it to a fault on
/// its owner, and takes sends again soon after that fault ended; or to a
/// change of the node set, and takes sends again within [`MOVE_RECOVERY`].
fn stalls_explained(o: &Observed, r: &mut Report) {
    let window = o.window;
    let limit = STALL_LIMIT.max(Duration::from_secs_f64(10.0 / window.per_room_rate.max(0.01)));
    let tolerance = Duration::from_secs(2).max(Duration::from_secs_f64(5.0 / window.per_room_rate.max(0.01)));
    for room in o.histories.keys() {
        let mut times: Vec<Instant> = o
            .sends
            .iter()
            .filter(|s| s.room == *room && s.probe_of.is_none())
            .filter_map(|s| match s.outcome {
                Some(Outcome::Answered { at, .. }) => Some(at),
                _ => None,
            })
            .collect();
        times.sort();
        let mut edges = vec![window.started];
        edges.extend(times.iter().copied());
        let end = times.last().copied().unwrap_or(window.stopped).max(window.stopped);
        edges.push(end);
        for pair in edges.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let gap = b.saturating_duration_since(a);
            if gap <= limit {
                continue;
            }
            // The fault that explains a stall hit the room's owner when the
            // stall began (sends are steady, so a stall begins right
            // before its fault) and ended soon enough before the stall did.
            let explained = o.executed.iter().any(|f| {
                f.owned.contains(room)
                    && a + tolerance >= f.at
                    && f.at <= b
                    && b <= f.ended.min(f.at + FAILURE_TIMEOUT) + RECOVERY_SLACK
            });
            let stall = format!(
                "room {room} took no send from t={:.2}s to t={:.2}s ({} ms)",
                o.at(a),
                o.at(b),
                gap.as_millis()
            );
            if explained {
                r.stalls.push(stall);
                continue;
            }
            let moved = o.executed.iter().find(|f| {
                changes_node_set(&f.label)
                    && a + tolerance >= f.at
                    && a <= f.ended + MOVE_SETTLE
                    && b <= f.ended + MOVE_RECOVERY
            });
            if let Some(f) = moved {
                r.stalls.push(format!("{stall}, around the node-set change {}", f.describe(o.start)));
                continue;
            }
            let faults: Vec<String> = o
                .executed
                .iter()
                .filter(|f| f.at <= b && a <= f.ended + FAILURE_TIMEOUT + RECOVERY_SLACK)
                .map(|f| f.describe(o.start))
                .collect();
            r.violation(format!(
                "UNAVAILABLE: {stall}: no fault on its owner explains it (one that began as the stall did, \
                 explaining a stall ending at most {} ms after the fault ended, or after the failure timeout \
                 from its start if sooner); faults around then: {faults:?}",
                RECOVERY_SLACK.as_millis()
            ));
        }
    }
}

/// CLIENT GAP, CLIENT STOPPED, CLIENT VIEW: every client saw every room
/// 1..=N in order, once each, across all its reconnects, and what it saw is
/// the history.
fn client_views_are_the_history(o: &Observed, reference: &BTreeMap<String, Vec<Message>>, r: &mut Report) {
    for (name, seen) in &o.clients {
        for (room, expected, got) in &seen.gaps {
            r.violation(format!("CLIENT GAP: client {name} in room {room}: expected seq {expected}, got {got}"));
        }
        if let Some(why) = &seen.stopped {
            r.violation(format!("CLIENT STOPPED: client {name}: {why}"));
        }
        for (room, h) in reference {
            let got = seen.messages.get(room).map(Vec::as_slice).unwrap_or_default();
            if got != h.as_slice() {
                let diff = first_difference(got, h);
                r.violation(format!(
                    "CLIENT VIEW: client {name} saw {} messages of {room} (last seq {:?}), history has {}; first \
                     difference at position {diff}: saw {:?}, history {:?}",
                    got.len(),
                    got.last().map(|m| m.seq),
                    h.len(),
                    got.get(diff).map(brief),
                    h.get(diff).map(brief)
                ));
            }
        }
    }
}

/// The first position where `a` and `b` differ (0 when they do not).
fn first_difference(a: &[Message], b: &[Message]) -> usize {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)).unwrap_or(0)
}

/// One message, short, for a violation.
pub fn brief(m: &Message) -> String {
    format!(
        "seq {} from {} client_id {:?} body {:?} ts {}{}",
        m.seq,
        m.from,
        m.client_id,
        m.body,
        m.ts,
        if m.deleted { " deleted" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    //! Hand-made histories: a clean one passes, and each kind of damage is
    //! caught by its property.

    use serde_json::json;

    use super::*;

    const ROOM: &str = "r0";

    /// A stored message, built from its wire form.
    fn msg(seq: u64, from: &str, client_id: &str) -> Message {
        serde_json::from_value(json!({
            "room": ROOM, "seq": seq, "from": from, "body": format!("body of {client_id}"),
            "ts": 1_000 + seq, "client_id": client_id,
        }))
        .expect("a message")
    }

    /// A clean run: three answered sends in one room, stored alike on three
    /// nodes and seen in order by two clients, under 1 s of load.
    fn clean() -> Observed {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let history: Vec<Message> = (1..=3).map(|seq| msg(seq, "u0", &format!("c{seq}"))).collect();
        let sends = history
            .iter()
            .map(|m| SendRec {
                user: m.from.clone(),
                room: ROOM.into(),
                client_id: m.client_id.clone().unwrap_or_default(),
                body: m.body.clone().unwrap_or_default(),
                issued: ms(m.seq * 200),
                probe_of: None,
                outcome: Some(Outcome::Answered { seq: m.seq, at: ms(m.seq * 200 + 50), attempts: 1 }),
            })
            .collect();
        let seen = Seen { messages: BTreeMap::from([(ROOM.to_string(), history.clone())]), ..Seen::default() };
        Observed {
            start,
            sends,
            histories: BTreeMap::from([(ROOM.into(), (1..=3).map(|id| (id, history.clone())).collect())]),
            clients: vec![("u0".into(), seen.clone()), ("u1".into(), seen)],
            executed: Vec::new(),
            window: LoadWindow { started: start, stopped: ms(1_000), per_room_rate: 3.0 },
            noted: Vec::new(),
        }
    }

    /// The kinds of violation `o` shows.
    fn kinds(o: &Observed) -> Vec<String> {
        check(o).violations.into_keys().collect()
    }

    /// Every node's history of the room, changed by `f`.
    fn on_every_node(o: &mut Observed, f: impl Fn(&mut Vec<Message>)) {
        for h in o.histories.values_mut().flat_map(BTreeMap::values_mut) {
            f(h);
        }
    }

    /// Every client's view of the room, changed by `f`.
    fn in_every_view(o: &mut Observed, f: impl Fn(&mut Vec<Message>)) {
        for (_, seen) in &mut o.clients {
            f(seen.messages.entry(ROOM.into()).or_default());
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let o = clean();
        let r = check(&o);
        assert!(r.is_clean(), "{}", r.render());
        assert_eq!((r.attempted, r.answered, r.checked, r.failed), (3, 3, 3, 0));
        assert_eq!(r.last_seqs, BTreeMap::from([(ROOM.to_string(), 3)]));
    }

    #[test]
    fn an_answered_send_missing_from_history_is_lost() {
        let mut o = clean();
        // Answered seq 3, but no node kept it (nor did any client see it).
        on_every_node(&mut o, |h| h.truncate(2));
        in_every_view(&mut o, |v| v.truncate(2));
        assert_eq!(kinds(&o), ["LOST"]);
        assert_eq!(check(&o).checked, 2);
    }

    #[test]
    fn an_answered_send_stored_at_another_seq_is_lost() {
        let mut o = clean();
        if let Some(Outcome::Answered { seq, .. }) = &mut o.sends[1].outcome {
            *seq = 3;
        }
        assert_eq!(kinds(&o), ["LOST"]);
    }

    #[test]
    fn an_answered_seq_holding_another_message_is_lost() {
        for change in [
            |s: &mut SendRec| s.body = "what was really sent".into(),
            |s: &mut SendRec| s.user = "u9".into(),
            |s: &mut SendRec| s.client_id = "c9".into(),
        ] {
            let mut o = clean();
            change(&mut o.sends[1]);
            assert_eq!(kinds(&o), ["LOST"], "{:?}", o.sends[1]);
        }
    }

    #[test]
    fn a_send_stored_twice_is_a_duplicate() {
        let mut o = clean();
        let again = msg(4, "u0", "c2");
        on_every_node(&mut o, |h| h.push(again.clone()));
        in_every_view(&mut o, |v| v.push(again.clone()));
        assert_eq!(kinds(&o), ["DUPLICATE"]);
    }

    #[test]
    fn a_missing_seq_is_a_gap() {
        let mut o = clean();
        // Seq 5 stored (by a send nobody recorded) where 3 should follow 2;
        // the send answered seq 3 is left out, so only the gap shows.
        let skipped = msg(5, "ghost", "g1");
        on_every_node(&mut o, |h| h[2] = skipped.clone());
        in_every_view(&mut o, |v| v[2] = skipped.clone());
        o.sends.truncate(2);
        assert_eq!(kinds(&o), ["GAP"]);
    }

    #[test]
    fn a_replica_that_differs_is_a_divergence() {
        let mut o = clean();
        if let Some(h) = o.histories.get_mut(ROOM).and_then(|n| n.get_mut(&3)) {
            h.truncate(2);
        }
        assert_eq!(kinds(&o), ["DIVERGENCE"]);
        let mut o = clean();
        if let Some(h) = o.histories.get_mut(ROOM).and_then(|n| n.get_mut(&1)) {
            h[1].body = Some("rewritten".into());
        }
        assert_eq!(kinds(&o), ["DIVERGENCE"]);
        let seq = o.histories[ROOM][&1][1].seq;
        assert_eq!(check(&o).first_differences(), BTreeSet::from([seq]), "where the copies part, for the report");
    }

    #[test]
    fn a_client_view_out_of_order_or_short_is_caught() {
        let mut o = clean();
        if let Some(v) = o.clients[1].1.messages.get_mut(ROOM) {
            v.swap(1, 2);
        }
        assert_eq!(kinds(&o), ["CLIENT VIEW"]);
        let mut o = clean();
        if let Some(v) = o.clients[0].1.messages.get_mut(ROOM) {
            v.remove(1);
        }
        assert_eq!(kinds(&o), ["CLIENT VIEW"]);
        let mut o = clean();
        if let Some(v) = o.clients[0].1.messages.get_mut(ROOM) {
            let again = v[2].clone();
            v.push(again);
        }
        assert_eq!(kinds(&o), ["CLIENT VIEW"]);
    }

    #[test]
    fn a_client_that_reported_a_gap_or_stopped_is_caught() {
        let mut o = clean();
        o.clients[0].1.gaps.push((ROOM.into(), 2, 3));
        o.clients[1].1.stopped = Some("gave up".into());
        assert_eq!(kinds(&o), ["CLIENT GAP", "CLIENT STOPPED"]);
    }

    #[test]
    fn a_send_answered_by_an_isolated_node_before_the_heal_is_caught() {
        let mut o = clean();
        let (at, ended) = (o.start, o.start + Duration::from_millis(500));
        o.executed.push(Executed {
            step: 0,
            label: "partition".into(),
            victim: 2,
            at,
            ended,
            owned: Vec::new(),
            partitioned: true,
        });
        // c1 was answered at 250 ms, inside the partition; c3 at 650 ms, after it.
        o.sends[0].probe_of = Some(0);
        o.sends[2].probe_of = Some(0);
        assert_eq!(kinds(&o), ["MINORITY ANSWERED"]);
        assert_eq!(check(&o).violations["MINORITY ANSWERED"].len(), 1);
    }

    #[test]
    fn a_failed_or_unanswered_send_is_caught() {
        let mut o = clean();
        o.sends.push(SendRec { outcome: None, client_id: "c4".into(), ..o.sends[0].clone() });
        let failed = Outcome::Failed { error: "gave up".into(), at: o.start + Duration::from_millis(900) };
        o.sends.push(SendRec { outcome: Some(failed), client_id: "c5".into(), ..o.sends[0].clone() });
        assert_eq!(kinds(&o), ["HANG", "SEND FAILED"]);
        assert_eq!(check(&o).failed, 1);
    }

    #[test]
    fn a_stall_is_caught_unless_a_fault_on_the_owner_explains_it() {
        let mut o = clean();
        let start = o.start;
        let s = |n: u64| start + Duration::from_secs(n);
        // Load for 20 s; sends answered at 0.25, 0.45, 0.65 s, then nothing.
        o.window.stopped = s(20);
        assert_eq!(kinds(&o), ["UNAVAILABLE"]);
        // Answers again from 7 s: the stall 0.65..7 s is explained by the
        // owner killed at 1 s and restarted at 3 s (it ends within the
        // recovery slack of the restart).
        let answered_at = [7, 10, 13, 16, 19].map(s);
        for (k, at) in answered_at.into_iter().enumerate() {
            let seq = 4 + k as u64;
            let outcome = Some(Outcome::Answered { seq, at, attempts: 1 });
            o.sends.push(SendRec { outcome, client_id: format!("c{seq}"), issued: at, ..o.sends[0].clone() });
        }
        let more: Vec<Message> = (4..=8).map(|seq| msg(seq, "u0", &format!("c{seq}"))).collect();
        on_every_node(&mut o, |h| h.extend(more.iter().cloned()));
        in_every_view(&mut o, |v| v.extend(more.iter().cloned()));
        for sent in &mut o.sends {
            sent.body = format!("body of {}", sent.client_id);
        }
        assert_eq!(kinds(&o), ["UNAVAILABLE"], "no fault yet");
        o.executed.push(Executed {
            step: 0,
            label: "kill owner".into(),
            victim: 1,
            at: s(1),
            ended: s(3),
            owned: vec![ROOM.into()],
            partitioned: false,
        });
        let r = check(&o);
        assert!(r.is_clean(), "{}", r.render());
        assert_eq!(r.stalls.len(), 1, "{:?}", r.stalls);
        // The same fault on a node that did not own the room explains nothing.
        o.executed[0].owned.clear();
        assert_eq!(kinds(&o), ["UNAVAILABLE"]);
        // A node-set change explains a stall of any room that began during
        // it and ended within the bound after it...
        o.executed[0].label = "add node".into();
        let r = check(&o);
        assert!(r.is_clean(), "{}", r.render());
        assert!(r.stalls[0].contains("node-set change"), "{:?}", r.stalls);
        // ...but not one that began after the change had settled.
        o.executed[0].at = s(7);
        o.executed[0].ended = s(8);
        assert_eq!(kinds(&o), ["UNAVAILABLE"]);
        o.executed[0].at = s(0);
        o.executed[0].ended = s(0) + Duration::from_millis(500);
        assert!(check(&o).is_clean(), "began within the settle time, ended within the bound");
        // A stall that outlasts the bound after the change is not explained.
        o.window.stopped = s(40);
        for sent in o.sends.iter_mut().filter(|x| matches!(x.outcome, Some(Outcome::Answered { seq, .. }) if seq >= 4))
        {
            if let Some(Outcome::Answered { at, .. }) = &mut sent.outcome {
                *at += MOVE_RECOVERY;
            }
        }
        assert_eq!(kinds(&o), ["UNAVAILABLE"]);
    }

    #[test]
    fn violations_noted_during_the_run_are_reported() {
        let mut o = clean();
        o.noted.push("UNAVAILABLE: rooms [\"r0\"] answered no send".into());
        assert_eq!(kinds(&o), ["UNAVAILABLE"]);
    }
}
