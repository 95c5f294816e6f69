//! The nemesis: a seeded schedule of faults (SIGKILL a random node, the
//! Raft leader or a room's owner, then restart it; SIGSTOP a node, then
//! SIGCONT; cut a node off, then heal) and of changes to the node set
//! through the operations CLI (add a node, remove one, replace a killed
//! one, move a shard's leadership), and its execution against a [`World`]
//! under load, with probes straight to an isolated node.
//! It records what it did ([`Executed`]); judging is the checker's.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use palaver_client::ResilientClient;
use palaver_client::ResilientOptions;

use crate::FAILURE_TIMEOUT;
use crate::FINAL_LOAD;
use crate::GIVE_UP;
use crate::HEAL_WAIT;
use crate::checker::Executed;
use crate::checker::SendRec;
use crate::partition::Partition;
use crate::world::World;
use crate::world::client_options;
use crate::world::owners;

/// A small seeded generator (SplitMix64): the schedule must replay exactly
/// from the printed seed, whatever crate versions are around.
struct Rng(u64);

impl Rng {
    /// The next number.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// `items` in a random order.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// One fault of the schedule (which node it hits is decided when it runs).
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// SIGKILL node `pick` (mod the node count), restart after `down_ms`.
    KillRandom { pick: u64, down_ms: u64 },
    /// SIGKILL the Raft leader, restart after `down_ms`.
    KillLeader { down_ms: u64 },
    /// SIGKILL the owner of room `room_pick` (mod the room count), restart after `down_ms`.
    KillOwner { room_pick: u64, down_ms: u64 },
    /// SIGSTOP node `pick` for `hold_ms`, then SIGCONT.
    Pause { pick: u64, hold_ms: u64 },
    /// Cut node `pick` off from the others for `hold_ms`, then heal.
    Partition { pick: u64, hold_ms: u64 },
    /// Start a new node and `palaver add-node` it.
    AddNode,
    /// `palaver remove-node` node `pick`, then stop it (only above three nodes).
    RemoveNode { pick: u64 },
    /// SIGKILL node `pick`; while it is down, add a new node and
    /// `palaver remove-node` the dead one.
    ReplaceNode { pick: u64 },
    /// `palaver drain` the leader of room `room_pick`'s shard, then let it
    /// lead again: the shard's leadership moves twice.
    MoveLeader { room_pick: u64 },
}

/// A fault and the quiet time after it.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// Load-only time after the fault ended, before the next one.
    pub quiet_ms: u64,
}

/// `rounds` rounds of every fault once, in an order and with timings drawn
/// from `seed`. In each round a node is added before one is removed, so the
/// cluster has three or four nodes.
pub fn schedule(seed: u64, rounds: u64) -> Vec<Step> {
    let mut rng = Rng(seed);
    let timeout = FAILURE_TIMEOUT.as_millis() as u64;
    let mut steps = Vec::new();
    for _ in 0..rounds {
        let mut faults = vec![
            // Down for a moment up to well past the failure timeout, so the
            // rooms sometimes wait for the restart and sometimes move.
            Fault::KillRandom { pick: rng.next(), down_ms: rng.range(300, timeout + 2_500) },
            Fault::KillLeader { down_ms: rng.range(300, timeout + 2_500) },
            Fault::KillOwner { room_pick: rng.next(), down_ms: rng.range(300, timeout + 2_500) },
            Fault::Pause { pick: rng.next(), hold_ms: timeout + rng.range(1_000, 2_500) },
            Fault::Partition { pick: rng.next(), hold_ms: timeout + rng.range(2_000, 4_000) },
            Fault::ReplaceNode { pick: rng.next() },
            Fault::MoveLeader { room_pick: rng.next() },
        ];
        rng.shuffle(&mut faults);
        let add = rng.range(0, faults.len() as u64 / 2) as usize;
        faults.insert(add, Fault::AddNode);
        let remove = rng.range(add as u64 + 1, faults.len() as u64) as usize;
        faults.insert(remove, Fault::RemoveNode { pick: rng.next() });
        for fault in faults {
            steps.push(Step { fault, quiet_ms: rng.range(1_500, 3_000) });
        }
    }
    steps
}

/// What a fault does, for the log.
pub fn describe(f: &Fault) -> String {
    match f {
        Fault::KillRandom { pick, down_ms } => format!("SIGKILL node #{pick} (mod nodes), restart after {down_ms} ms"),
        Fault::KillLeader { down_ms } => format!("SIGKILL the Raft leader, restart after {down_ms} ms"),
        Fault::KillOwner { room_pick, down_ms } => {
            format!("SIGKILL the owner of room #{room_pick} (mod rooms), restart after {down_ms} ms")
        }
        Fault::Pause { pick, hold_ms } => format!("SIGSTOP node #{pick} (mod nodes) for {hold_ms} ms, then SIGCONT"),
        Fault::Partition { pick, hold_ms } => format!("cut node #{pick} (mod nodes) off for {hold_ms} ms, then heal"),
        Fault::AddNode => "start a new node and add it (palaver add-node)".to_string(),
        Fault::RemoveNode { pick } => format!("remove node #{pick} (mod nodes) (palaver remove-node), then stop it"),
        Fault::ReplaceNode { pick } => {
            format!("SIGKILL node #{pick} (mod nodes); add a new node, then remove the dead one")
        }
        Fault::MoveLeader { room_pick } => {
            format!("drain the shard leader of room #{room_pick} (mod rooms) (palaver drain), then undrain it")
        }
    }
}

/// Partition probes: clients straight to the isolated node; any `ok` they get
/// before the heal is a violation, and whatever they got is checked later.
async fn probe_isolated(w: &World, addr: &str, step: usize, until: Instant) -> Vec<ResilientClient> {
    let mut clients = Vec::new();
    for user in &w.probes {
        let opts = ResilientOptions { first_connect_timeout: Duration::from_secs(5), ..client_options(addr, user) };
        match ResilientClient::connect(opts).await {
            Ok((client, _events)) => clients.push((client, user.name.clone())),
            Err(e) => {
                eprintln!("[{:6.1}s]   probe {} could not connect to the isolated node: {e}", w.secs(), user.name)
            }
        }
    }
    let mut k = 0usize;
    while Instant::now() < until {
        for (client, name) in &clients {
            let room = w.rooms[k % w.rooms.len()].clone();
            let client_id = format!("p{step}-{name}-{k}");
            let body = format!("probe {client_id} to the isolated node");
            let i = w.book.push(SendRec {
                user: name.clone(),
                room: room.clone(),
                client_id: client_id.clone(),
                body: body.clone(),
                issued: Instant::now(),
                probe_of: Some(step),
                outcome: None,
            });
            let (client, book) = (client.clone(), w.book.clone());
            tokio::spawn(async move {
                let r = client.send_with_id(&room, &body, &client_id).await;
                book.resolve(i, r);
            });
            k += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    clients.into_iter().map(|(c, _)| c).collect()
}

/// Adds to `owned` the rooms the cluster names `victim` the owner of right
/// after the fault hit it: leadership may have moved to it (the balancing of
/// leaders after a restart or an added node) since the view taken before.
async fn owned_as_hit(w: &World, victim: u64, owned: &mut Vec<String>) {
    // Another node's view: the victim may be frozen, and a peer still names
    // it the leader until it has noticed.
    for id in w.live().into_iter().filter(|id| *id != victim) {
        if let Ok(view) = w.view(id).await {
            for (room, owner) in owners(&view) {
                if owner == victim && !owned.contains(&room) {
                    owned.push(room);
                }
            }
            return;
        }
    }
}

/// Runs `steps` against the world (skipping partitions when
/// `partition_skip` says why), each after the cluster is healthy; stops
/// early when a room does not recover. Answers the faults as executed.
pub async fn run_nemesis(w: &mut World, steps: &[Step], partition_skip: &Option<String>) -> Result<Vec<Executed>> {
    let mut done = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if i == 0 {
            w.wait_healthy(HEAL_WAIT).await.context("before the first step")?;
            w.wait_rooms(w.start, "the setup").await;
        }
        let (took, view) = w.healthy_view(HEAL_WAIT).await.with_context(|| format!("before step {i}"))?;
        let own = owners(&view);
        let ids = w.live();
        let victim = match step.fault {
            Fault::KillRandom { pick, .. }
            | Fault::Pause { pick, .. }
            | Fault::Partition { pick, .. }
            | Fault::RemoveNode { pick }
            | Fault::ReplaceNode { pick } => ids[pick as usize % ids.len()],
            Fault::KillLeader { .. } => view["leader"].as_u64().context("no leader in the view")?,
            Fault::KillOwner { room_pick, .. } | Fault::MoveLeader { room_pick } => {
                let room = &w.rooms[room_pick as usize % w.rooms.len()];
                *own.get(room).with_context(|| format!("no owner of {room}"))?
            }
            Fault::AddNode => {
                ids.iter().max().copied().unwrap_or(0).max(w.removed.iter().max().copied().unwrap_or(0)) + 1
            }
        };
        if matches!(step.fault, Fault::RemoveNode { .. }) && ids.len() <= 3 {
            eprintln!("[{:6.1}s] step {i}: SKIPPED, removing a node would leave fewer than three", w.secs());
            continue;
        }
        let mut owned: Vec<String> = own.iter().filter(|(_, o)| **o == victim).map(|(r, _)| r.clone()).collect();
        eprintln!(
            "[{:6.1}s] step {i}: {} -> victim node {victim} (owns {owned:?}; leader {:?}; healthy after {took:?})",
            w.secs(),
            describe(&step.fault),
            view["leader"].as_u64()
        );
        let at = Instant::now();
        let mut partitioned = false;
        let label;
        match step.fault {
            Fault::KillRandom { down_ms, .. } | Fault::KillLeader { down_ms } | Fault::KillOwner { down_ms, .. } => {
                label = match step.fault {
                    Fault::KillRandom { .. } => "kill random",
                    Fault::KillLeader { .. } => "kill leader",
                    _ => "kill owner",
                };
                w.c.kill(victim);
                owned_as_hit(w, victim, &mut owned).await;
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                w.c.restart(victim).await.with_context(|| format!("restarting node {victim}"))?;
            }
            Fault::AddNode => {
                label = "add node";
                w.c.spawn_new_node(victim).with_context(|| format!("starting node {victim}"))?;
                let added = w.palaver(&["add-node", &victim.to_string()]).await?;
                eprintln!("[{:6.1}s]   added node {victim}: {}", w.secs(), added["moved"]);
                w.c.wait_ready(victim).await?;
            }
            Fault::RemoveNode { .. } => {
                label = "remove node";
                let removed = w.palaver(&["remove-node", &victim.to_string()]).await?;
                eprintln!("[{:6.1}s]   removed node {victim}: {}", w.secs(), removed["moved"]);
                w.removed.insert(victim);
                w.c.kill(victim);
            }
            Fault::ReplaceNode { .. } => {
                label = "replace node";
                w.c.kill(victim);
                owned_as_hit(w, victim, &mut owned).await;
                let new = w.c.ids().into_iter().max().unwrap_or(0) + 1;
                w.c.spawn_new_node(new).with_context(|| format!("starting node {new}"))?;
                let added = w.palaver(&["add-node", &new.to_string()]).await?;
                eprintln!("[{:6.1}s]   added node {new}: {}", w.secs(), added["moved"]);
                w.c.wait_ready(new).await?;
                let removed = w.palaver(&["remove-node", &victim.to_string()]).await?;
                eprintln!("[{:6.1}s]   removed the dead node {victim}: {}", w.secs(), removed["moved"]);
                w.removed.insert(victim);
            }
            Fault::MoveLeader { .. } => {
                label = "move leader";
                let drained = w.palaver(&["drain", &victim.to_string()]).await?;
                eprintln!("[{:6.1}s]   drained node {victim}: {}", w.secs(), drained["moved"]);
                w.set_draining(victim, false).await?;
            }
            Fault::Pause { hold_ms, .. } => {
                label = "pause";
                w.c.pause(victim)?;
                owned_as_hit(w, victim, &mut owned).await;
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                w.c.resume(victim)?;
            }
            Fault::Partition { hold_ms, .. } => {
                label = "partition";
                match partition_skip {
                    Some(why) => eprintln!("[{:6.1}s]   SKIPPING the partition step: {why}", w.secs()),
                    None => {
                        let port =
                            w.c.nodes().iter().find(|n| n.id == victim).context("the victim's entry")?.peer.port();
                        let mut cut = Partition::cut(port)?;
                        owned_as_hit(w, victim, &mut owned).await;
                        partitioned = true;
                        let until = Instant::now() + Duration::from_millis(hold_ms);
                        let probes = probe_isolated(w, &w.c.addr(victim), i, until).await;
                        let left = until.saturating_duration_since(Instant::now());
                        tokio::time::sleep(left).await;
                        cut.heal()?;
                        drop(cut);
                        eprintln!("[{:6.1}s]   healed the partition of node {victim}", w.secs());
                        // The probes keep retrying their sends until answered
                        // (or GIVE_UP); they stop once every one is resolved.
                        let book = w.book.clone();
                        tokio::spawn(async move {
                            let start = Instant::now();
                            while book.unresolved() > 0 && start.elapsed() < GIVE_UP + Duration::from_secs(10) {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            for p in probes {
                                p.close().await;
                            }
                        });
                    }
                }
            }
        }
        let ended = Instant::now();
        done.push(Executed { step: i, label: label.to_string(), victim, at, ended, owned, partitioned });
        tokio::time::sleep(Duration::from_millis(step.quiet_ms)).await;
        w.wait_healthy(HEAL_WAIT).await.with_context(|| format!("after step {i}"))?;
        if !w.wait_rooms(ended, &format!("step {i} ({label} node {victim}) ended")).await {
            eprintln!("[{:6.1}s] stopping the schedule after step {i}: a room did not recover", w.secs());
            break;
        }
    }
    w.wait_healthy(HEAL_WAIT).await.context("after the last step")?;
    // Load only, long enough that a room stuck after the last fault shows
    // as a stall no fault explains.
    eprintln!("[{:6.1}s] healthy; {FINAL_LOAD:?} of load only", w.secs());
    tokio::time::sleep(FINAL_LOAD).await;
    Ok(done)
}
