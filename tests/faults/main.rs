//! The fault suite (issue 5, Jepsen's method): a cluster of three nodes (four
//! while a node added in a round is not yet removed) behind
//! the balancer, resilient clients sending with unique client_ids at a
//! steady rate to a few rooms and reading all of them, and a nemesis that
//! injects faults on a seeded schedule while the load runs:
//!
//! - SIGKILL a random node, then restart it;
//! - SIGKILL the Raft leader (`leader` of `GET /api/cluster`), then restart it;
//! - SIGKILL a room's owner (`rooms[].owner_node`), then restart it;
//! - SIGSTOP a node for longer than the failure timeout, then SIGCONT;
//! - cut a node off from the others (iptables rules dropping UDP to and from
//!   its peer port, tagged `palaver-fault-<pid>`, always removed, also on a
//!   panic), longer than the failure timeout, then heal. Meanwhile two extra
//!   clients talk to the isolated node directly: it must never answer a send;
//! - start a node and add it (`palaver add-node`), and later in the same
//!   round remove a node (`palaver remove-node`, then SIGKILL it);
//! - replace a node: SIGKILL it, start and add a new one, remove the dead one;
//! - move a shard's leadership: `palaver drain` a room's owner, then let it
//!   lead again (`POST /api/cluster/drain`).
//!
//! The node-set steps run the operations CLI as an operator would, and the
//! balancer learns the node set from the cluster (`discover`).
//!
//! After the schedule the load runs alone for a while, then stops, and a
//! checker verifies that every answered send is in history exactly once with
//! its seq, sender and body; that no (sender, client_id) is stored twice;
//! that seq is gapless in every room; that every node holds the same history
//! of every room; that every client saw every room's messages in seq order,
//! without a gap or a duplicate, across all its reconnects; that every send
//! got an answer (the clients retry `unavailable` and reconnects, and give
//! up after 90 s); and that no room stopped taking sends for long unless a
//! fault on its owner explains it. It prints a summary (sends, reconnects,
//! failover times, settings). Each violation names its kind (LOST,
//! DUPLICATE, GAP, DIVERGENCE, MINORITY ANSWERED, CLIENT GAP, CLIENT VIEW,
//! UNAVAILABLE, HANG, SEND FAILED), room, seq and node.
//!
//! Another grows the cluster from three nodes to five and shrinks it to four
//! (`palaver add-node` twice, `palaver remove-node`, SIGTERM) under load:
//! the same checks, clients see only 1012 closes, and shard leadership ends
//! spread (at most one shard more on any node than on another).
//!
//! A second test restarts the nodes one at a time (SIGTERM, wait for the
//! exit, restart, wait healthy) under load: nothing answered is lost and
//! every send is answered. A third pauses a node that owns rooms under
//! load, then kills another so that rooms move to the node that was paused:
//! they must take sends again.
//!
//! Environment (small defaults; all optional):
//! - `PALAVER_FAULT_SEED`: replays a schedule (printed at the start);
//! - `PALAVER_FAULT_CLIENTS` (20), `PALAVER_FAULT_ROOMS` (4),
//!   `PALAVER_FAULT_RATE` (60 sends/s in all), `PALAVER_FAULT_SEEDS` (5:
//!   the seed and the next four each draw a schedule, run one after the
//!   other), `PALAVER_FAULT_ROUNDS` (1 per seed: each fault once per round,
//!   in a seeded order);
//! - `PALAVER_ROLLING_CLIENTS` (9), `PALAVER_ROLLING_RATE` (40),
//!   `PALAVER_ROLLING_PASSES` (2 passes over the three nodes);
//! - `PALAVER_CI`: the partition step is required (it needs root and
//!   `iptables`; without them it is skipped with a message otherwise).
//! - `PALAVER_TEST_LOG=1` streams the nodes' logs live. Every line of each
//!   node's output is kept in `<node>.log`, in `PALAVER_FAULT_LOG_DIR=DIR`
//!   when set (kept after the run), else in a folder of the run's own. Nodes
//!   log every applied shard entry (`RUST_LOG`, unless set, is
//!   `info,openraft=warn,palaver_node::shards::machine=debug`), and a run
//!   whose copies or clients disagree shows, per node, the entries that
//!   answered the first seq where they part.
//!
//! # Layout
//! - `world`: cluster, balancer, users, clients, the book of sends, the load.
//! - `partition`: iptables rules that cut a node off, always undone.
//! - `nemesis`: the seeded schedule of faults and its execution.
//! - `checker`: the properties, a pure function of what was observed, with
//!   unit tests on hand-made histories (`cargo test --test faults checker`).

mod checker;
mod nemesis;
mod partition;
mod world;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use checker::Executed;
use checker::Outcome;
use checker::STALL_LIMIT;
use checker::SendRec;
use checker::check;
use nemesis::Step;
use nemesis::describe;
use nemesis::run_nemesis;
use nemesis::schedule;
use palaver_client::Method;
use partition::Partition;
use partition::partition_unavailable;
use partition::sweep_orphan_rules;
use partition::sweep_rules;
use world::World;
use world::observe;
use world::owners;
use world::start_load;
use world::stop_load;

/// How long the cluster may take to replace a lost leader: a shard's (or
/// the metadata group's) election, its lease of 1.5 s, a pre-vote and a
/// vote (node/src/raft/handle.rs).
const FAILURE_TIMEOUT: Duration = Duration::from_millis(3_000);
/// Balancer health checks in these tests.
const HEALTH_INTERVAL: Duration = Duration::from_millis(200);
/// Failed checks that take a node out of the balancer.
const DOWN_AFTER: u32 = 2;
/// A send unanswered this long fails in the client (its outcome unknown): a
/// liveness failure the checker reports.
const GIVE_UP: Duration = Duration::from_secs(90);
/// Longest wait for the cluster to be healthy again after a fault.
const HEAL_WAIT: Duration = Duration::from_secs(90);
/// Longest wait for histories and clients to converge after the load.
const CONVERGE_WAIT: Duration = Duration::from_secs(60);
/// After a fault (and the cluster healthy again), how long every room may
/// take to answer a send issued after the fault ended.
const ROOM_RECOVERY: Duration = Duration::from_secs(30);
/// Load without faults after the schedule, before the checker.
const FINAL_LOAD: Duration = Duration::from_secs(10);
/// Sends one load client keeps unanswered at most (ticks beyond are skipped).
const OUTSTANDING_CAP: usize = 40;
/// How long one operations command (`add-node`, `remove-node`, `drain`) may
/// wait for its moves.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The fault tests run one at a time (each runs a cluster; two at once on two
/// cores would distort every timing).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A number from the environment, `default` when unset.
fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Time from each fault to the first answered send, issued after it began,
/// to each room its victim owned.
fn failover_times(w: &World, executed: &[Executed]) -> Vec<(String, String, u64, Duration)> {
    let sends = w.book.snapshot();
    let mut out = Vec::new();
    for e in executed {
        if e.label == "partition" && !e.partitioned {
            continue;
        }
        for room in &e.owned {
            let first = sends
                .iter()
                .filter(|s| s.room == *room && s.issued >= e.at)
                .filter_map(|s| match s.outcome {
                    Some(Outcome::Answered { at, .. }) => Some(at),
                    _ => None,
                })
                .min();
            if let Some(at) = first {
                out.push((e.label.clone(), room.clone(), e.victim, at.duration_since(e.at)));
            }
        }
    }
    out
}

/// The `p` quantile of `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One line on the sends, the clients' reconnects and the rooms, for a summary.
fn load_summary(
    report: &checker::Report,
    totals: &palaver_client::ClientStats,
    codes: &BTreeMap<String, usize>,
) -> String {
    format!(
        "sends: {} attempted, {} answered, {} checked, {} failed; clients: {} reconnects, {} resends, {} unavailable \
         answers, {} gaps; close codes {codes:?}; rooms {:?}",
        report.attempted,
        report.answered,
        report.checked,
        report.failed,
        totals.reconnects,
        totals.resent,
        totals.unavailable,
        totals.gaps,
        report.last_seqs
    )
}

/// The load clients' counters, summed.
fn client_totals(w: &World) -> palaver_client::ClientStats {
    let mut t = palaver_client::ClientStats::default();
    for c in &w.clients {
        let s = c.stats();
        t.sessions += s.sessions;
        t.reconnects += s.reconnects;
        t.connect_failures += s.connect_failures;
        t.logins += s.logins;
        t.answered += s.answered;
        t.failed += s.failed;
        t.resent += s.resent;
        t.unavailable += s.unavailable;
        t.rate_limited += s.rate_limited;
        t.duplicates_dropped += s.duplicates_dropped;
        t.gaps += s.gaps;
        t.delivered += s.delivered;
    }
    t
}

/// How often each close code (or none) ended a load client's session.
fn close_codes(w: &World) -> BTreeMap<String, usize> {
    let mut codes = BTreeMap::new();
    for d in &w.delivered {
        for (code, _) in &d.seen().disconnects {
            *codes.entry(code.map_or("none".to_string(), |c| c.to_string())).or_default() += 1;
        }
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_lose_no_answered_message() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let seed = std::env::var("PALAVER_FAULT_SEED")
        .ok()
        .map(|v| v.trim().parse::<u64>().unwrap_or_else(|_| panic!("PALAVER_FAULT_SEED={v:?} is not a number")))
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            (t as u64) % 1_000_000_007
        });
    let clients = env_u64("PALAVER_FAULT_CLIENTS", 20) as usize;
    let rooms = env_u64("PALAVER_FAULT_ROOMS", 4).max(1) as usize;
    let rate = env_u64("PALAVER_FAULT_RATE", 60) as f64;
    let rounds = env_u64("PALAVER_FAULT_ROUNDS", 1);
    let seeds = env_u64("PALAVER_FAULT_SEEDS", 5).max(1);
    let ci = std::env::var_os("PALAVER_CI").is_some();
    let partition_skip = partition_unavailable();
    if let Some(why) = &partition_skip {
        assert!(!ci, "PALAVER_CI is set but the partition step cannot run: {why} (it needs root and iptables)");
        eprintln!("NOTE: the partition step will be SKIPPED: {why} (it needs root and iptables)");
    }
    if partition_skip.is_none() {
        sweep_rules(&Partition::tag());
        sweep_orphan_rules();
    }

    // One schedule per seed, run one after the other on the same cluster.
    let seed_list: Vec<u64> = (0..seeds).map(|k| seed.wrapping_add(k)).collect();
    let steps: Vec<Step> = seed_list.iter().flat_map(|s| schedule(*s, rounds)).collect();
    let mut settings = String::new();
    writeln!(settings, "seed {seed} (replay: PALAVER_FAULT_SEED={seed}); schedules of seeds {seed_list:?}")?;
    writeln!(
        settings,
        "clients {clients}, rooms {rooms}, rate {rate} sends/s in all, {rounds} round(s) per seed; nodes: {} shards, elections \
         within {} ms; balancer: round-robin, health every {HEALTH_INTERVAL:?}, down after {DOWN_AFTER}; \
         clients: stall 4 s, reply timeout 20 s, backoff 50 ms..2 s, give up after {GIVE_UP:?}",
        palaver_testkit::config::test_config().cluster.shards,
        FAILURE_TIMEOUT.as_millis()
    )?;
    writeln!(settings, "schedule:")?;
    for (i, s) in steps.iter().enumerate() {
        writeln!(settings, "  step {i}: {}; then {} ms of load only", describe(&s.fault), s.quiet_ms)?;
    }
    eprintln!("==== fault suite ====\n{settings}");

    let mut w = World::setup("f", clients, rooms, 2).await?;
    let load = start_load(&w, rate);
    // Some load before the first fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let executed = run_nemesis(&mut w, &steps, &partition_skip).await;
    let window = stop_load(&w, load).await?;
    let executed = executed?;
    let report = check(&observe(&w, &executed, window).await?);

    let times = failover_times(&w, &executed);
    let mut sorted: Vec<Duration> = times.iter().map(|t| t.3).collect();
    sorted.sort();
    let totals = client_totals(&w);
    let mut summary = String::new();
    writeln!(summary, "==== fault suite summary ====")?;
    summary.push_str(&settings);
    writeln!(
        summary,
        "sends: {} attempted, {} answered, {} checked in history, {} failed, {} ticks skipped (client at {} \
         outstanding)",
        report.attempted,
        report.answered,
        report.checked,
        report.failed,
        w.book.skipped.load(Ordering::Relaxed),
        OUTSTANDING_CAP
    )?;
    writeln!(summary, "rooms' last seqs: {:?}", report.last_seqs)?;
    let probes: Vec<SendRec> = w.book.snapshot().into_iter().filter(|s| s.probe_of.is_some()).collect();
    let healed_at: HashMap<usize, Instant> = executed.iter().map(|e| (e.step, e.ended)).collect();
    let early = probes
        .iter()
        .filter(|s| {
            matches!(s.outcome, Some(Outcome::Answered { at, .. })
                if s.probe_of.and_then(|p| healed_at.get(&p)).is_some_and(|h| at < *h))
        })
        .count();
    let late = probes.iter().filter(|s| matches!(s.outcome, Some(Outcome::Answered { .. }))).count() - early;
    writeln!(
        summary,
        "partition probes (straight to the isolated node): {} sent, {early} answered before the heal (must be 0), \
         {late} answered after it, {} failed",
        probes.len(),
        probes.iter().filter(|s| matches!(s.outcome, Some(Outcome::Failed { .. }))).count()
    )?;
    writeln!(
        summary,
        "clients: {} reconnects, {} connect failures, {} resends, {} unavailable answers, {} rate limited, {} \
         duplicates dropped, {} gaps, {} messages delivered; close codes seen {:?}",
        totals.reconnects,
        totals.connect_failures,
        totals.resent,
        totals.unavailable,
        totals.rate_limited,
        totals.duplicates_dropped,
        totals.gaps,
        totals.delivered,
        close_codes(&w)
    )?;
    writeln!(summary, "faults:")?;
    for e in &executed {
        let skipped = if e.label == "partition" && !e.partitioned { " (SKIPPED)" } else { "" };
        writeln!(summary, "  {}{skipped}", e.describe(w.start))?;
    }
    writeln!(summary, "failover (fault start -> first answered send, issued after it, to a room the victim owned):")?;
    for (label, room, victim, d) in &times {
        writeln!(summary, "  {label} node {victim}, room {room}: {} ms", d.as_millis())?;
    }
    writeln!(
        summary,
        "  p50 {} ms, max {} ms over {} rooms",
        percentile(&sorted, 0.5).as_millis(),
        sorted.last().copied().unwrap_or_default().as_millis(),
        sorted.len()
    )?;
    writeln!(summary, "stalls explained by a fault on the room's owner or a node-set change (> {STALL_LIMIT:?}):")?;
    for st in &report.stalls {
        writeln!(summary, "  {st}")?;
    }
    writeln!(summary, "wall time {:.1}s", w.secs())?;
    eprintln!("{summary}");
    for c in &w.clients {
        c.close().await;
    }
    let evidence = if report.is_clean() { String::new() } else { w.applied_at(&report.first_differences()) };
    assert!(report.is_clean(), "seed {seed} (replay with PALAVER_FAULT_SEED={seed}); {}{evidence}", report.render());
    assert!(report.answered > 0 && report.checked == report.answered, "nothing was checked");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_fails_no_send() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let clients = env_u64("PALAVER_ROLLING_CLIENTS", 9) as usize;
    let rate = env_u64("PALAVER_ROLLING_RATE", 40) as f64;
    let passes = env_u64("PALAVER_ROLLING_PASSES", 2).max(1);
    eprintln!("==== rolling restart: {clients} clients, 3 rooms, {rate} sends/s, {passes} passes over the nodes ====");
    let mut w = World::setup("g", clients, 3, 0).await?;
    let load = start_load(&w, rate);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut steps = Vec::new();
    let mut result = Ok(());
    let order: Vec<u64> = (0..passes).flat_map(|_| w.c.ids()).collect();
    for (i, id) in order.into_iter().enumerate() {
        let step = async {
            let (_, view) = w.healthy_view(HEAL_WAIT).await.with_context(|| format!("before stopping node {id}"))?;
            let owned: Vec<String> = owners(&view).into_iter().filter(|(_, o)| *o == id).map(|(r, _)| r).collect();
            let at = Instant::now();
            eprintln!("[{:6.1}s] SIGTERM node {id} (owns {owned:?}, leader {:?})", w.secs(), view["leader"].as_u64());
            w.c.stop(id)?;
            let status = w.c.wait_exit(id, Duration::from_secs(30)).await?;
            let Some(status) = status else {
                let finished = w.c.process(id).logged("node stopped");
                bail!(
                    "node {id} did not exit within 30 s of SIGTERM{}",
                    if finished {
                        " although it logged `node stopped` (its process lingers after its own shutdown finished)"
                    } else {
                        " (it never logged `node stopped`)"
                    }
                );
            };
            anyhow::ensure!(status.success(), "node {id} exited with {status} after SIGTERM");
            let exited = at.elapsed();
            w.c.restart(id).await?;
            let healthy = w.wait_healthy(HEAL_WAIT).await.with_context(|| format!("after restarting node {id}"))?;
            eprintln!("[{:6.1}s]   node {id} exited after {exited:?}, restarted, healthy {healthy:?} later", w.secs());
            Ok::<_, anyhow::Error>(Executed {
                step: i,
                label: "sigterm".into(),
                victim: id,
                at,
                ended: Instant::now(),
                owned,
                partitioned: false,
            })
        };
        match step.await {
            Ok(e) => steps.push(e),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let window = stop_load(&w, load).await?;
    result?;
    let report = check(&observe(&w, &steps, window).await?);
    let totals = client_totals(&w);
    let codes = close_codes(&w);
    let times = failover_times(&w, &steps);
    eprintln!(
        "==== rolling restart summary ====\n{}\nhand-over (SIGTERM -> first answered send to a room the node owned): \
         {:?}\nwall time {:.1}s",
        load_summary(&report, &totals, &codes),
        times.iter().map(|t| (t.1.clone(), t.2, t.3.as_millis())).collect::<Vec<_>>(),
        w.secs()
    );
    for c in &w.clients {
        c.close().await;
    }
    assert!(report.is_clean(), "{}", report.render());
    assert!(report.answered > 0 && report.answered == report.attempted, "every send is answered");
    assert!(totals.reconnects >= 1, "no client was moved by the restarts: {totals:?}");
    assert!(codes.contains_key("1012"), "no client was told 1012 by a stopping node: {codes:?}");
    Ok(())
}

/// The shards each live node leads, as each says.
async fn shards_led(w: &World) -> Result<BTreeMap<u64, usize>> {
    let mut led = BTreeMap::new();
    for id in w.live() {
        let r = w.c.http(id).with_token(world::OPS_TOKEN).request(Method::GET, "/api/cluster", None).await?;
        anyhow::ensure!(r.status == 200, "/api/cluster on node {id}: {} {}", r.status, r.text);
        led.insert(id, r.json["shards_led"].as_array().map_or(0, Vec::len));
    }
    Ok(led)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_grows_to_five_nodes_and_shrinks_to_four_while_clients_chat() -> Result<()> {
    let _serial = SERIAL.lock().await;
    eprintln!("==== grow 3 -> 5 -> 4: 20 clients, 4 rooms, 60 sends/s through the balancer ====");
    let mut w = World::setup("k", 20, 4, 0).await?;
    let load = start_load(&w, 60.0);
    let mut steps = Vec::new();
    let result = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for id in [4u64, 5] {
            w.wait_healthy(HEAL_WAIT).await.with_context(|| format!("before adding node {id}"))?;
            let at = Instant::now();
            w.c.spawn_new_node(id)?;
            let added = w.palaver(&["add-node", &id.to_string()]).await?;
            w.c.wait_ready(id).await?;
            eprintln!("[{:6.1}s] added node {id} in {:?}: {}", w.secs(), at.elapsed(), added["moved"]);
            steps.push(Executed {
                step: steps.len(),
                label: "add node".into(),
                victim: id,
                at,
                ended: Instant::now(),
                owned: Vec::new(),
                partitioned: false,
            });
        }
        // Shrink: node 2 leaves; once out it stops (SIGTERM: its clients get 1012).
        let (_, view) = w.healthy_view(HEAL_WAIT).await.context("before removing node 2")?;
        let owned: Vec<String> = owners(&view).into_iter().filter(|(_, o)| *o == 2).map(|(r, _)| r).collect();
        let at = Instant::now();
        let removed = w.palaver(&["remove-node", "2"]).await?;
        eprintln!("[{:6.1}s] removed node 2 in {:?}: {}", w.secs(), at.elapsed(), removed["moved"]);
        w.removed.insert(2);
        w.c.stop(2)?;
        w.c.wait_exit(2, Duration::from_secs(30)).await?.context("node 2 did not exit after SIGTERM")?;
        steps.push(Executed {
            step: steps.len(),
            label: "remove node".into(),
            victim: 2,
            at,
            ended: Instant::now(),
            owned,
            partitioned: false,
        });
        w.wait_healthy(HEAL_WAIT).await.context("after removing node 2")?;
        let spread = palaver_testkit::eventually(
            "shard leaders spread over the four nodes",
            Duration::from_secs(30),
            async || {
                let led = shards_led(&w).await?;
                let (min, max) = (led.values().min().copied(), led.values().max().copied());
                let shards = palaver_testkit::config::test_config().cluster.shards as usize;
                let even = led.values().sum::<usize>() == shards && max.zip(min).is_some_and(|(a, b)| a - b <= 1);
                Ok(even.then_some(led))
            },
        )
        .await?;
        eprintln!("[{:6.1}s] shards led per node: {spread:?}", w.secs());
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let window = stop_load(&w, load).await?;
    result?;
    let report = check(&observe(&w, &steps, window).await?);
    let totals = client_totals(&w);
    let codes = close_codes(&w);
    eprintln!("==== grow summary ====\n{}; wall time {:.1}s", load_summary(&report, &totals, &codes), w.secs());
    for c in &w.clients {
        c.close().await;
    }
    assert!(report.is_clean(), "{}", report.render());
    assert!(report.answered > 0 && report.answered == report.attempted, "every send is answered");
    assert!(
        codes.keys().all(|c| c == "1012"),
        "clients saw only reconnects told by 1012 (the removed node stopping): {codes:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_a_pause_takes_sends_for_rooms_it_gets_later() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Many rooms, so that some of a killed node's rooms move to the node
    // that was paused before (rooms go to live nodes by their key).
    let rooms = 8;
    let mut w = World::setup("h", 6, rooms, 0).await?;
    let load = start_load(&w, 40.0);
    let result = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut executed = Vec::new();
        let (_, view) = w.view_any().await?;
        let own = owners(&view);
        // The paused node: one that owns rooms (so it has batches in flight).
        let paused = *own.values().max_by_key(|n| own.values().filter(|m| m == n).count()).context("an owner")?;
        let owned: Vec<String> = own.iter().filter(|(_, o)| **o == paused).map(|(r, _)| r.clone()).collect();
        eprintln!("[{:6.1}s] SIGSTOP node {paused} (owns {owned:?}) for {:?}", w.secs(), FAILURE_TIMEOUT * 2);
        let at = Instant::now();
        w.c.pause(paused)?;
        tokio::time::sleep(FAILURE_TIMEOUT * 2).await;
        w.c.resume(paused)?;
        executed.push(Executed {
            step: 0,
            label: "pause".into(),
            victim: paused,
            at,
            ended: Instant::now(),
            owned,
            partitioned: false,
        });
        w.wait_healthy(HEAL_WAIT).await.context("after the pause")?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Kill the other node owning the most rooms, long enough for its
        // rooms to move (some to the node that was paused).
        let (_, view) = w.view_any().await?;
        let own = owners(&view);
        let victim =
            w.c.ids()
                .into_iter()
                .filter(|id| *id != paused)
                .max_by_key(|id| own.values().filter(|o| *o == id).count())
                .context("a victim")?;
        let owned: Vec<String> = own.iter().filter(|(_, o)| **o == victim).map(|(r, _)| r.clone()).collect();
        eprintln!(
            "[{:6.1}s] SIGKILL node {victim} (owns {owned:?}), restart after {:?}",
            w.secs(),
            FAILURE_TIMEOUT * 2
        );
        let at = Instant::now();
        w.c.kill(victim);
        tokio::time::sleep(FAILURE_TIMEOUT * 2).await;
        let (_, moved) = w.view_any().await?;
        let to_paused: Vec<String> =
            owners(&moved).into_iter().filter(|(r, o)| *o == paused && owned.contains(r)).map(|(r, _)| r).collect();
        eprintln!("[{:6.1}s] rooms of node {victim} now on node {paused} (the one paused): {to_paused:?}", w.secs());
        w.c.restart(victim).await?;
        executed.push(Executed {
            step: 1,
            label: "kill".into(),
            victim,
            at,
            ended: Instant::now(),
            owned,
            partitioned: false,
        });
        w.wait_healthy(HEAL_WAIT).await.context("after the kill")?;
        tokio::time::sleep(FINAL_LOAD).await;
        Ok::<_, anyhow::Error>((executed, paused, to_paused))
    }
    .await;
    let window = stop_load(&w, load).await?;
    let (executed, paused, to_paused) = result?;
    let report = check(&observe(&w, &executed, window).await?);
    eprintln!(
        "sends: {} attempted, {} answered, {} checked; stalls explained: {:?}",
        report.attempted, report.answered, report.checked, report.stalls
    );
    for c in &w.clients {
        c.close().await;
    }
    assert!(report.is_clean(), "rooms that moved to node {paused}, paused before: {to_paused:?}; {}", report.render());
    if to_paused.is_empty() {
        eprintln!("NOTE: no room moved to the node that was paused; this run did not exercise that path");
    }
    Ok(())
}
