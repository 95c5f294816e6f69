//! The load-test harness: starts real `palaver` processes (release build)
//! and the peers of `benches/peers/` on 127.0.0.1, drives them over
//! WebSocket from this process, and prints a table (also
//! `target/bench-results/load.json` and SVG charts beside it).
//!
//! ```text
//! benches/peers/setup.sh                       # once: npm packages, HAProxy
//! cargo bench --bench load -- [SCENARIO…] [options]
//! ```
//!
//! Scenarios (`all` runs every one marked *):
//! - `connections`*: idle WebSockets through the balancer in front of a
//!   3-node cluster (RSS per connection of every node and of the balancer),
//!   then many more straight to the nodes from load-generator shard
//!   processes, each from its own 127.0.0.x source address.
//! - `fanout`*: one room, `--members` receivers, `--publishers` senders at
//!   each rate step (`--rate max` doubles until saturation), on Palaver (3
//!   nodes behind the balancer, and one node) and on each peer (Node `ws`,
//!   Socket.IO, the bare tokio-tungstenite server): deliveries/s and latency
//!   percentiles per step, ratios Palaver / peer.
//! - `idle`*: RSS per idle socket of a Palaver node and of every peer.
//! - `rooms`*: `--rooms` rooms of `--room-members` receivers on a 3-node
//!   cluster, rate steps as in `fanout`.
//! - `durable`*: a 3-node cluster with majority acks: delivery latency at
//!   `--latency-rate` msg/s, answered sends/s for 1, 100 and 1,000 rooms
//!   (closed loop, then answer latency at `--durable-rate` sends/s), then
//!   100 rooms on five nodes.
//! - `balancer`*: the same traffic straight to the nodes, through the
//!   Palaver balancer under each strategy, and through HAProxy: closed-loop
//!   round trips, the same round trips paced at half the direct path's rate
//!   with each caller alternating straight and through the path (the p99
//!   each path adds at half load, paired in one run), and a fan-out.
//! - `sends`*: answered sends/s on one node with 1 and `--senders` senders.
//! - `relay`, `cluster`: older names (one node behind the balancer; durable).
//! - `search` (not in `all`): `--search-messages` messages in
//!   `--search-rooms` rooms, then search latency (every room, one room) and
//!   the index's size per million messages.
//! - `upload` (not in `all`): 10 MiB files through the balancer, one at a
//!   time and four at once, and one downloaded back.
//!
//! Servers run on core 0 and this generator on core 1 (`taskset`), unless
//! `--no-pin`. Every loop is bounded in count and time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use futures_util::SinkExt;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use palaver_protocol::Code;
use palaver_protocol::Command;
use palaver_protocol::Done;
use palaver_protocol::Reply;
use serde_json::Value;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[path = "peers/bare.rs"]
mod bare;
#[path = "harness.rs"]
mod harness;
#[path = "report.rs"]
mod report;
#[path = "search.rs"]
mod search;
#[path = "upload.rs"]
mod upload;
#[path = "wire.rs"]
mod wire;

use harness::CpuMeter;
use harness::Dial;
use harness::FanoutRun;
use harness::FanoutSpec;
use harness::Idle;
use harness::Proto;
use harness::Server;
use harness::Target;
use harness::call;
use harness::ms;
use report::Row;
use report::num;

const USAGE: &str = "usage: cargo bench --bench load -- [all|connections|fanout|idle|rooms|durable|balancer|sends|wire|relay|cluster]… \
[--rate max|N[,N…]] [--members M] [--publishers P] [--step-secs S] [--drain-secs S] [--systems a,b] \
[--conns C] [--direct-conns D] [--conn-rate R] [--idle N] [--rooms R] [--room-members K] \
[--senders N] [--secs S] [--users U] [--latency-rate R] [--durable-rooms N[,N…]] [--durable-nodes N] [--durable-quick] [--durable-rate R] \
[--search-messages N] [--search-rooms R] [--search-queries Q] [--uploads N] \
[--wire-idle N] [--wire-members M] [--wire-rate R] [--no-pin]";

/// What `--help` prints: the usage and what each option does.
const HELP: &str = "\
Palaver's load-test harness: starts release-build Palaver nodes, clusters and
balancers and the peers (Node ws, Socket.IO, a bare tokio-tungstenite server,
HAProxy) on 127.0.0.1, drives them over WebSocket and prints a table; JSON and
SVG charts go to target/bench-results/. Peers need `benches/peers/setup.sh`
once. See benches/README.md.

scenarios (default: all of the first eight, in this order):
  connections   idle WebSockets through the balancer, then straight to the nodes
  fanout        one room, --members receivers, --publishers senders, rate steps
  idle          RSS per idle socket on a node and on each peer
  rooms         --rooms rooms of --room-members receivers on a 3-node cluster
  durable       majority-acked sends: latency, then answered sends/s (1, 100, 1,000 rooms; 5 nodes)
  balancer      direct vs the Palaver balancer (each strategy) vs HAProxy
  sends         one node: answered sends/s with 1 and --senders senders
  wire          TLS on the balancer (RSS per connection, CPU per round trip) and
                permessage-deflate fan-out (bytes on the wire, deliveries/s, CPU)
  relay         one node, direct vs through the balancer (older)
  cluster       same as durable (older name)
  search        messages loaded into a 3-node cluster, then search latency and index size (not in all)
  upload        10 MiB files through the balancer of a 3-node cluster (not in all)

options:
  --rate max|N[,N...]   sends/s per step, or max: double until saturated (max)
  --members M           fan-out receivers (1000)
  --publishers P        fan-out senders (4)
  --step-secs S         seconds per rate step (3)
  --drain-secs S        seconds to wait for owed deliveries after a step (3)
  --systems a,b         fan-out systems: palaver-cluster,palaver-cluster-assign,palaver-node,ws,socketio,bare
  --conns C             connections through the balancer (9000)
  --direct-conns D      connections straight to the nodes (30000)
  --conn-rate R         connections opened per second (2000)
  --idle N              idle sockets per system (5000)
  --rooms R             rooms in the rooms scenario (1000)
  --room-members K      receivers per room (10)
  --senders N           closed-loop senders (50)
  --secs S              seconds per closed-loop measurement (5)
  --users U             accounts the fan-out receivers log in as (20)
  --latency-rate R      msg/s of the durable latency measurement (500)
  --durable-rooms N,... room counts of the durable sends runs (1,100,1000)
  --durable-nodes N     nodes of the durable cluster (3)
  --durable-quick       durable: only the sends runs on 3 nodes (no latency, no 5 nodes)
  --durable-rate R      durable: sends/s of the paced run after each closed-loop one (10000; 0: none)
  --search-messages N   search: messages loaded (1000000)
  --search-rooms R      search: rooms they go to (1000)
  --search-queries Q    search: timed searches per kind and scope (200)
  --uploads N           upload: files per measurement (20)
  --wire-idle N         wire: idle WebSockets through each balancer (2000)
  --wire-members M      wire: receivers of the compression fan-out (300)
  --wire-rate R         wire: messages/s of the compression fan-out (100)
  --no-pin              do not pin servers to core 0 and the generator to core 1
  -h, --help            this text";

/// Every system of the fan-out comparison.
const SYSTEMS: [&str; 6] = ["palaver-cluster", "palaver-cluster-assign", "palaver-node", "ws", "socketio", "bare"];

/// Options from the command line.
struct Options {
    /// Print the help and stop.
    help: bool,
    scenarios: Vec<String>,
    /// Offered sends/s per step; `None`: `max` (doubling to saturation).
    rate: Option<Vec<f64>>,
    members: usize,
    publishers: usize,
    step_secs: f64,
    drain_secs: f64,
    systems: Vec<String>,
    conns: usize,
    direct_conns: usize,
    conn_rate: f64,
    idle: usize,
    rooms: usize,
    room_members: usize,
    senders: usize,
    secs: u64,
    users: usize,
    latency_rate: u64,
    durable_rooms: Vec<usize>,
    durable_nodes: u64,
    durable_quick: bool,
    durable_rate: u64,
    search_messages: u64,
    search_rooms: usize,
    search_queries: usize,
    uploads: usize,
    wire_idle: usize,
    wire_members: usize,
    wire_rate: f64,
    no_pin: bool,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        help: false,
        scenarios: Vec::new(),
        rate: None,
        members: 1000,
        publishers: 4,
        step_secs: 3.0,
        drain_secs: 3.0,
        systems: SYSTEMS.iter().map(|s| s.to_string()).collect(),
        conns: 9000,
        direct_conns: 30_000,
        conn_rate: 2000.0,
        idle: 5000,
        rooms: 1000,
        room_members: 10,
        senders: 50,
        secs: 5,
        users: 20,
        latency_rate: 500,
        durable_rooms: vec![1, 100, 1_000],
        durable_nodes: 3,
        durable_quick: false,
        durable_rate: 10_000,
        search_messages: 1_000_000,
        search_rooms: 1_000,
        search_queries: 200,
        uploads: 20,
        wire_idle: 2000,
        wire_members: 300,
        wire_rate: 100.0,
        no_pin: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value =
            |name: &str| -> Result<String> { it.next().cloned().with_context(|| format!("{name} needs a value")) };
        let n = |v: String, name: &str| -> Result<usize> { v.parse().with_context(|| format!("{name} {v}")) };
        let f = |v: String, name: &str| -> Result<f64> { v.parse().with_context(|| format!("{name} {v}")) };
        match a.as_str() {
            "--rate" => {
                let v = value(a)?;
                o.rate = if v == "max" {
                    None
                } else {
                    Some(
                        v.split(',')
                            .map(|r| r.parse::<f64>().with_context(|| format!("--rate {r}")))
                            .collect::<Result<_>>()?,
                    )
                };
            }
            "--members" => o.members = n(value(a)?, a)?.max(1),
            "--publishers" => o.publishers = n(value(a)?, a)?.max(1),
            "--step-secs" => o.step_secs = f(value(a)?, a)?.clamp(0.5, 60.0),
            "--drain-secs" => o.drain_secs = f(value(a)?, a)?.clamp(0.0, 60.0),
            "--systems" => o.systems = value(a)?.split(',').map(str::to_string).collect(),
            "--conns" => o.conns = n(value(a)?, a)?,
            "--direct-conns" => o.direct_conns = n(value(a)?, a)?,
            "--conn-rate" => o.conn_rate = f(value(a)?, a)?.max(1.0),
            "--idle" => o.idle = n(value(a)?, a)?.max(1),
            "--rooms" => o.rooms = n(value(a)?, a)?.max(1),
            "--room-members" => o.room_members = n(value(a)?, a)?.max(1),
            "--senders" => o.senders = n(value(a)?, a)?.max(1),
            "--secs" => o.secs = n(value(a)?, a)?.clamp(1, 600) as u64,
            "--users" => o.users = n(value(a)?, a)?.max(1),
            "--latency-rate" => o.latency_rate = n(value(a)?, a)?.max(1) as u64,
            "--durable-rooms" => {
                o.durable_rooms = value(a)?
                    .split(',')
                    .map(|r| r.parse::<usize>().with_context(|| format!("--durable-rooms {r}")).map(|r| r.max(1)))
                    .collect::<Result<_>>()?;
            }
            "--durable-nodes" => o.durable_nodes = n(value(a)?, a)?.clamp(1, 9) as u64,
            "--durable-quick" => o.durable_quick = true,
            "--durable-rate" => o.durable_rate = n(value(a)?, a)? as u64,
            "--search-messages" => o.search_messages = n(value(a)?, a)?.max(1) as u64,
            "--search-rooms" => o.search_rooms = n(value(a)?, a)?.max(1),
            "--search-queries" => o.search_queries = n(value(a)?, a)?.clamp(1, 100_000),
            "--uploads" => o.uploads = n(value(a)?, a)?.clamp(1, 90),
            "--wire-idle" => o.wire_idle = n(value(a)?, a)?.clamp(1, 9_000),
            "--wire-members" => o.wire_members = n(value(a)?, a)?.clamp(1, 9_000),
            "--wire-rate" => o.wire_rate = f(value(a)?, a)?.clamp(1.0, 100_000.0),
            "--no-pin" => o.no_pin = true,
            "-h" | "--help" => o.help = true,
            s if !s.starts_with('-') => o.scenarios.push(s.to_string()),
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    for s in &o.systems {
        anyhow::ensure!(SYSTEMS.contains(&s.as_str()), "unknown system {s} (expected {})", SYSTEMS.join(","));
    }
    if o.scenarios.is_empty() || o.scenarios.iter().any(|s| s == "all") {
        o.scenarios = ["connections", "fanout", "idle", "rooms", "durable", "balancer", "sends", "wire"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    Ok(o)
}

/// Everything measured in this run.
#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    fanout: Vec<FanoutRun>,
    rooms: Option<FanoutRun>,
    idle: Vec<Idle>,
    /// (path, round trips/s, round-trip p99 ms, max deliveries/s, delivery p99 ms at 100k/s)
    balancer: Vec<(String, f64, f64, f64, f64)>,
    /// (process, KiB per connection)
    conn_rss: Vec<(String, f64)>,
    notes: Vec<String>,
}

impl Results {
    fn push(&mut self, scenario: &str, system: &str, figure: &str, value: f64, unit: &'static str, meter: &CpuMeter) {
        self.rows.push(Row {
            scenario: scenario.into(),
            system: system.into(),
            figure: figure.into(),
            value,
            unit,
            load1: harness::load_average()[0],
            other_cores: meter.other_cores(),
        });
    }

    fn note(&mut self, text: String) {
        eprintln!("note: {text}");
        self.notes.push(text);
    }

    fn fanout_rows(&mut self, scenario: &str, run: &FanoutRun) {
        for s in &run.steps {
            let step = format!("{scenario} @{}/s", num(s.offered_deliveries));
            let row = |figure: &str, value: f64, unit: &'static str| Row {
                scenario: step.clone(),
                system: run.system.clone(),
                figure: figure.into(),
                value,
                unit,
                load1: s.load1,
                other_cores: s.other_cores,
            };
            self.rows.push(row("deliveries/s", s.deliveries_per_sec, "/s"));
            self.rows.push(row("sends/s", s.sends_per_sec, "/s"));
            self.rows.push(row("delivered of owed", s.delivered as f64 * 100.0 / s.expected.max(1) as f64, "%"));
            self.rows.push(row("latency p50", s.p50, "ms"));
            self.rows.push(row("latency p99", s.p99, "ms"));
            self.rows.push(row("latency p999", s.p999, "ms"));
            self.rows.push(row("latency max", s.max, "ms"));
            self.rows.push(row("CPU: system under test", s.server_cores, "core"));
            self.rows.push(row("CPU: load generator", s.generator_cores, "core"));
            if s.saturated {
                self.rows.push(row(&format!("saturated: {}", s.why.chars().take(60).collect::<String>()), 1.0, ""));
            }
        }
        let last = run.steps.last();
        self.rows.push(Row {
            scenario: format!("{scenario} best"),
            system: run.system.clone(),
            figure: "max deliveries/s".into(),
            value: run.best(),
            unit: "/s",
            load1: last.map_or(0.0, |s| s.load1),
            other_cores: last.map_or(0.0, |s| s.other_cores),
        });
        if let Some(e) = &run.first_error {
            self.note(format!("{}: first error reply to a send: {e}", run.system));
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.first().map(String::as_str) {
        Some("--serve-bare") => return bare::main(&args),
        Some("--hold") => return harness::hold_main(&args),
        _ => {}
    }
    let o = options(&args)?;
    if o.help {
        println!("{HELP}\n\n{USAGE}");
        return Ok(());
    }
    let nofile = harness::raise_nofile();
    let pinned = !o.no_pin && harness::pin_generator();
    let load_before = harness::load_average();
    eprintln!(
        "machine: {} cores ({}), load average {:.2} {:.2} {:.2}, open-files limit {nofile}; pinning: {}",
        harness::machine_cores(),
        harness::cpu_model(),
        load_before[0],
        load_before[1],
        load_before[2],
        if pinned { "servers on core 0, load generator on core 1" } else { "off" }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut res = Results::default();
    let started = Instant::now();
    runtime.block_on(async {
        for s in o.scenarios.clone() {
            eprintln!("== {s} (load average {:.2})", harness::load_average()[0]);
            match s.as_str() {
                "connections" => connections(&o, &mut res).await?,
                "fanout" => fanout(&o, &mut res).await?,
                "idle" => idle(&o, &mut res).await?,
                "rooms" => rooms(&o, &mut res).await?,
                "durable" | "cluster" => durable(&o, &mut res).await?,
                "balancer" => balancer(&o, &mut res).await?,
                "sends" => sends_scenario(&o, &mut res).await?,
                "relay" => relay(&o, &mut res).await?,
                "upload" => upload::upload(o.uploads, &mut res).await?,
                "wire" => {
                    let w = wire::WireOptions {
                        idle: o.wire_idle,
                        senders: o.senders,
                        secs: o.secs,
                        members: o.wire_members,
                        rate: o.wire_rate,
                    };
                    wire::wire(&w, &mut res).await?
                }
                "search" => {
                    let run = search::SearchRun {
                        messages: o.search_messages,
                        rooms: o.search_rooms,
                        queries: o.search_queries,
                        senders: o.senders,
                    };
                    search::search(&run, &mut res).await?
                }
                other => bail!("unknown scenario {other}\n{USAGE}"),
            }
        }
        anyhow::Ok(())
    })?;
    let comparison = comparison(&res);
    print!("{}", report::table(&res.rows));
    if !comparison.is_empty() {
        println!("\n{comparison}");
    }
    for n in &res.notes {
        println!("note: {n}");
    }
    write_outputs(&o, &res, pinned, load_before, started.elapsed().as_secs_f64())?;
    Ok(())
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the bench binary")
}

// ---------------------------------------------------------------- palaver --

/// A cluster's nodes with its users and rooms made; answers the tokens.
async fn palaver_setup(nodes: &[Server], prefix: &str, users: usize, rooms: &[String]) -> Result<Vec<String>> {
    let api = harness::Api::new(&nodes[0].addr);
    let tokens = api.users(prefix, users).await?;
    let gate = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for room in rooms {
        let (api, gate, room, tokens) = (api.clone(), gate.clone(), room.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            api.room(&room, &tokens[0], &tokens).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Other nodes apply the Raft entries (sessions, rooms) a moment later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(tokens)
}

fn palaver_target(system: &str, tokens: &[String], addrs: Vec<String>) -> Target {
    let tokens = Arc::new(tokens.to_vec());
    Target { system: system.into(), proto: Proto::Palaver { receivers: tokens.clone(), senders: tokens }, addrs }
}

fn node_addrs(nodes: &[Server]) -> Vec<String> {
    nodes.iter().map(|n| n.addr.clone()).collect()
}

// ------------------------------------------------------------ connections --

async fn connections(o: &Options, res: &mut Results) -> Result<()> {
    let hard = harness::nofile_hard();
    // A relayed connection costs the balancer two descriptors.
    let balancer_cap = (hard.saturating_sub(600) / 2) as usize;
    let node_cap = hard.saturating_sub(1000) as usize;
    let conns = o.conns.min(balancer_cap);
    if conns < o.conns {
        res.note(format!(
            "connections through the balancer capped at {conns} (open-files hard limit {hard} per process, 2 per relayed connection)"
        ));
    }
    // Phase 1: through the balancer, RSS of every process.
    {
        let nodes = harness::palaver_cluster(3, "conn-cluster").await?;
        let addrs = node_addrs(&nodes);
        let balancer = harness::palaver_balancer(
            &addrs.iter().map(String::as_str).collect::<Vec<_>>(),
            "round-robin",
            "conn-balancer",
        )?;
        let tokens = palaver_setup(&nodes, "conn", 1, &["idle".to_string()]).await?;
        let target = palaver_target("palaver-cluster", &tokens, vec![balancer.addr.clone()]);
        let meter = CpuMeter::start();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before: Vec<u64> = nodes.iter().chain([&balancer]).map(|s| s.rss_kib()).collect::<Result<_>>()?;
        eprintln!("  {conns} idle connections through the balancer at {}/s", o.conn_rate);
        let d = Dial { src: None, read_buffer: 4096 };
        let r = harness::ramp(&target, "idle", conns, o.conn_rate, d, Duration::from_secs(300)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after: Vec<u64> = nodes.iter().chain([&balancer]).map(|s| s.rss_kib()).collect::<Result<_>>()?;
        let active: HashMap<String, u64> = harness::balancer_active(&balancer)?.into_iter().collect();
        let sc = format!("connections, {} via balancer", r.sockets.len());
        for (i, node) in nodes.iter().enumerate() {
            let held = active.get(&node.addr).copied().unwrap_or(0);
            let per = after[i].saturating_sub(before[i]) as f64 / held.max(1) as f64;
            res.push(&sc, &format!("node {} ({held} conns)", i + 1), "RSS per connection", per, "KiB", &meter);
            res.conn_rss.push((format!("node {} (via balancer)", i + 1), per));
        }
        let held = r.sockets.len() as f64;
        let per = after[3].saturating_sub(before[3]) as f64 / held.max(1.0);
        res.push(&sc, "balancer", "RSS per relayed connection", per, "KiB", &meter);
        res.conn_rss.push(("balancer".into(), per));
        for (i, s) in nodes.iter().chain([&balancer]).enumerate() {
            res.push(&sc, &s.label, "RSS total", after[i] as f64 / 1024.0, "MiB", &meter);
        }
        conn_time_rows(res, &sc, &r.times, held, r.failed, r.secs, &meter);
        if let Some(e) = r.first_error {
            res.note(format!("{sc}: {} failed, first: {e}", r.failed));
        }
        drop(r.sockets);
    }
    // Phase 2: many more, straight to the nodes, from shard processes.
    if o.direct_conns == 0 {
        return Ok(());
    }
    let direct = o.direct_conns.min(3 * node_cap);
    if direct < o.direct_conns {
        res.note(format!(
            "direct connections capped at {direct} (3 nodes × {node_cap}: open-files hard limit {hard} per node)"
        ));
    }
    let per_shard = node_cap.min(15_000);
    let shards = direct.div_ceil(per_shard);
    let nodes = harness::palaver_cluster(3, "conn-direct").await?;
    let tokens = palaver_setup(&nodes, "conn", 1, &["idle".to_string()]).await?;
    let addrs = node_addrs(&nodes);
    let meter = CpuMeter::start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<u64> = nodes.iter().map(|s| s.rss_kib()).collect::<Result<_>>()?;
    eprintln!("  {direct} idle connections straight to the nodes, {shards} shard process(es), sources 127.0.0.2..");
    let exe = exe()?;
    let mut running = Vec::new();
    for k in 0..shards {
        let count = per_shard.min(direct - k * per_shard);
        let src = std::net::Ipv4Addr::new(127, 0, 0, 2 + k as u8);
        running.push(harness::Shard::start(&exe, &addrs, &tokens[0], "idle", count, o.conn_rate / shards as f64, src)?);
    }
    let mut times = harness::histogram();
    let (mut held, mut failed) = (0u64, 0u64);
    let within = Duration::from_secs_f64(direct as f64 / o.conn_rate + 120.0);
    let t0 = Instant::now();
    for s in &running {
        let r = s.report(within)?;
        held += r.held;
        failed += r.failed;
        times.add(&r.times)?;
        if !r.first_error.is_empty() {
            res.note(format!("a shard: {} failed, first: {}", r.failed, r.first_error));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = nodes.iter().map(|s| s.rss_kib()).collect::<Result<_>>()?;
    let sc = format!("connections, {held} direct");
    for (i, node) in nodes.iter().enumerate() {
        let on_node = held / 3;
        let per = after[i].saturating_sub(before[i]) as f64 / on_node.max(1) as f64;
        res.push(&sc, &format!("node {} (~{on_node} conns)", i + 1), "RSS per connection", per, "KiB", &meter);
        res.push(&sc, &node.label, "RSS total", after[i] as f64 / 1024.0, "MiB", &meter);
        res.conn_rss.push((format!("node {} (direct)", i + 1), per));
    }
    res.push(&sc, "load generator", "shards (source addresses)", shards as f64, "", &meter);
    conn_time_rows(res, &sc, &times, held as f64, failed, secs, &meter);
    drop(running);
    Ok(())
}

fn conn_time_rows(
    res: &mut Results,
    sc: &str,
    times: &Histogram<u64>,
    held: f64,
    failed: u64,
    secs: f64,
    m: &CpuMeter,
) {
    res.push(sc, "palaver-cluster", "connect+subscribe p50", ms(times, 0.5), "ms", m);
    res.push(sc, "palaver-cluster", "connect+subscribe p90", ms(times, 0.9), "ms", m);
    res.push(sc, "palaver-cluster", "connect+subscribe p99", ms(times, 0.99), "ms", m);
    res.push(sc, "palaver-cluster", "connect+subscribe max", times.max() as f64 / 1000.0, "ms", m);
    res.push(sc, "palaver-cluster", "connections opened/s", held / secs.max(1e-3), "/s", m);
    res.push(sc, "palaver-cluster", "connections failed", failed as f64, "", m);
}

// ----------------------------------------------------------------- fanout --

/// Starts `system` and answers its target (and the processes to keep alive).
async fn start_system(system: &str, o: &Options, room: &str) -> Result<(Target, Vec<Server>)> {
    Ok(match system {
        "palaver-cluster" | "palaver-cluster-assign" => {
            let nodes = harness::palaver_cluster(3, "fan-cluster").await?;
            let addrs = node_addrs(&nodes);
            let b = harness::palaver_balancer(
                &addrs.iter().map(String::as_str).collect::<Vec<_>>(),
                "round-robin",
                "fan-balancer",
            )?;
            let tokens = palaver_setup(&nodes, "fan", o.users, &[room.to_string()]).await?;
            let addrs = if system == "palaver-cluster" {
                vec![b.addr.clone()]
            } else {
                // Each socket asks `/assign` once and connects to the node it names.
                (0..o.members.max(o.publishers)).map(|_| harness::assigned_node(&b.addr)).collect::<Result<Vec<_>>>()?
            };
            let target = palaver_target(system, &tokens, addrs);
            let mut all = nodes;
            all.push(b);
            (target, all)
        }
        "palaver-node" => {
            let node = harness::palaver_node("fan-node").await?;
            let tokens = palaver_setup(std::slice::from_ref(&node), "fan", o.users, &[room.to_string()]).await?;
            (palaver_target(system, &tokens, vec![node.addr.clone()]), vec![node])
        }
        "ws" => {
            let s = harness::node_peer("ws-server.js", "peer-ws")?;
            (Target { system: system.into(), proto: Proto::Plain, addrs: vec![s.addr.clone()] }, vec![s])
        }
        "socketio" => {
            let s = harness::node_peer("socketio-server.js", "peer-socketio")?;
            (Target { system: system.into(), proto: Proto::SocketIo, addrs: vec![s.addr.clone()] }, vec![s])
        }
        "bare" | "bare-128k" => {
            let buffer = if system == "bare" { 4096 } else { 128 * 1024 };
            let s = harness::bare_peer(&exe()?, buffer, &format!("peer-{system}"))?;
            (Target { system: system.into(), proto: Proto::Plain, addrs: vec![s.addr.clone()] }, vec![s])
        }
        other => bail!("unknown system {other}"),
    })
}

fn peer_unavailable(system: &str) -> Option<String> {
    match system {
        "ws" | "socketio" => harness::node_peers_missing(),
        _ => None,
    }
}

async fn fanout(o: &Options, res: &mut Results) -> Result<()> {
    let rates = o.rate.clone().unwrap_or_else(|| harness::doubling_rates(25_000.0, 3_200_000.0, o.members));
    for system in &o.systems {
        if let Some(why) = peer_unavailable(system) {
            res.note(format!("fanout: {system} skipped: {why}"));
            continue;
        }
        eprintln!("  {system}: {} receivers in one room, {} senders", o.members, o.publishers);
        let (target, servers) = start_system(system, o, "fan").await?;
        let spec = FanoutSpec {
            rooms: 1,
            members: o.members,
            senders: o.publishers,
            rates: rates.clone(),
            step_secs: o.step_secs,
            drain_secs: o.drain_secs,
            stop_on_saturation: o.rate.is_none(),
            room: "fan".into(),
            parallel: 32,
            dial: Dial::default(),
        };
        let run = harness::fanout(&target, &spec).await?;
        res.fanout_rows(&format!("fanout {}", o.members), &run);
        res.fanout.push(run);
        drop(servers);
    }
    Ok(())
}

async fn idle(o: &Options, res: &mut Results) -> Result<()> {
    let mut systems: Vec<String> = o.systems.iter().filter(|s| !s.starts_with("palaver-cluster")).cloned().collect();
    if systems.iter().any(|s| s == "bare") {
        systems.push("bare-128k".into());
    }
    for system in &systems {
        if let Some(why) = peer_unavailable(system) {
            res.note(format!("idle: {system} skipped: {why}"));
            continue;
        }
        let (target, servers) = start_system(system, o, "idle").await?;
        eprintln!("  {system}: {} idle sockets", o.idle);
        let i = harness::idle_rss(&servers[0], &target, "idle", o.idle, o.conn_rate).await?;
        let sc = format!("idle, {} sockets", i.sockets);
        let row = |figure: &str, value: f64, unit: &'static str| Row {
            scenario: sc.clone(),
            system: system.clone(),
            figure: figure.into(),
            value,
            unit,
            load1: i.load1,
            other_cores: i.other_cores,
        };
        res.rows.push(row("RSS per idle socket", i.kib_per_socket, "KiB"));
        res.rows.push(row("RSS total", i.rss_mib, "MiB"));
        res.rows.push(row("connect p50", i.connect_p50, "ms"));
        res.rows.push(row("connect p99", i.connect_p99, "ms"));
        if i.failed > 0 {
            res.rows.push(row("connections failed", i.failed as f64, ""));
        }
        res.idle.push(i);
        drop(servers);
    }
    Ok(())
}

// ------------------------------------------------------------------ rooms --

async fn rooms(o: &Options, res: &mut Results) -> Result<()> {
    let hard = harness::nofile_hard() as usize;
    let mut rooms = o.rooms;
    while rooms * o.room_members + o.publishers > hard.saturating_sub(500) && rooms > 1 {
        rooms -= 1;
    }
    if rooms < o.rooms {
        res.note(format!("rooms: capped at {rooms} rooms (open-files hard limit {hard} for the load generator)"));
    }
    let nodes = harness::palaver_cluster(3, "rooms-cluster").await?;
    let names: Vec<String> = (0..rooms).map(|r| format!("r{r}")).collect();
    eprintln!("  creating {rooms} rooms");
    let tokens = palaver_setup(&nodes, "rm", o.users.min(10), &names).await?;
    // Senders use the owner of every room; receivers straight to the nodes.
    let target = Target {
        system: "palaver-cluster".into(),
        proto: Proto::Palaver { receivers: Arc::new(tokens.clone()), senders: Arc::new(vec![tokens[0].clone()]) },
        addrs: node_addrs(&nodes),
    };
    let rates = o.rate.clone().unwrap_or_else(|| harness::doubling_rates(5_000.0, 320_000.0, o.room_members));
    let spec = FanoutSpec {
        rooms,
        members: o.room_members,
        senders: o.publishers.max(3),
        rates,
        step_secs: o.step_secs,
        drain_secs: o.drain_secs,
        stop_on_saturation: o.rate.is_none(),
        room: "r".into(),
        parallel: 64,
        dial: Dial { src: None, read_buffer: 4096 },
    };
    eprintln!("  {} receivers ({rooms} rooms × {}) straight to the 3 nodes", rooms * o.room_members, o.room_members);
    let run = harness::fanout(&target, &spec).await?;
    res.fanout_rows(&format!("rooms {rooms}x{}", o.room_members), &run);
    res.rooms = Some(run);
    Ok(())
}

// ---------------------------------------------------------------- durable --

async fn durable(o: &Options, res: &mut Results) -> Result<()> {
    let nodes = harness::palaver_cluster(o.durable_nodes, "durable").await?;
    if !o.durable_quick {
        cluster_latency(&nodes, o.latency_rate, o.secs, res).await?;
    }
    for rooms in o.durable_rooms.iter().copied() {
        let set = Arc::new(DurableRooms::set_up(&nodes, rooms, o.senders).await?);
        cluster_sends(&nodes, &set, o.secs, res).await?;
        if o.durable_rate > 0 {
            cluster_paced_sends(&nodes, &set, o.durable_rate, o.secs, res).await?;
        }
    }
    drop(nodes);
    if o.durable_quick {
        return Ok(());
    }
    // Five nodes: each shard still on three of them.
    let nodes = harness::palaver_cluster(5, "durable5").await?;
    let set = Arc::new(DurableRooms::set_up(&nodes, 100, o.senders).await?);
    cluster_sends(&nodes, &set, o.secs, res).await?;
    Ok(())
}

/// Delivery latency at a steady rate, to a receiver on the sender's node and
/// to receivers on the other nodes.
async fn cluster_latency(nodes: &[Server], rate: u64, secs: u64, res: &mut Results) -> Result<()> {
    let tokens = palaver_setup(nodes, "lat", 2, &["latency".to_string()]).await?;
    let epoch = Instant::now();
    let mut receivers = Vec::new();
    for node in nodes {
        let mut ws = harness::dial(&node.addr, "/ws", Some(&tokens[1]), Dial::default()).await?;
        call(&mut ws, 1, Command::Subscribe { room: "latency".into(), since: None }).await?;
        receivers.push(ws);
    }
    let meter = CpuMeter::start();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut ws in receivers {
        tasks.push(tokio::spawn(async move {
            let mut h = harness::histogram();
            while let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout_at((deadline + Duration::from_secs(3)).into(), ws.next()).await
            {
                if let Some((_, sent)) = harness::parse_stamp(&t) {
                    h.saturating_record((epoch.elapsed().as_micros() as u64).saturating_sub(sent).max(1));
                }
            }
            h
        }));
    }
    let sender = harness::dial(&nodes[0].addr, "/ws", Some(&tokens[0]), Dial::default()).await?;
    let (mut tx, mut rx) = sender.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let nonce = harness::nonce();
    let mut n = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        let body = format!("@0:{};", epoch.elapsed().as_micros());
        let send = Command::Send {
            room: "latency".into(),
            body,
            client_id: format!("{nonce}-{n}"),
            reply_to: None,
            attachments: Vec::new(),
        };
        tx.send(harness::palaver_frame(n, send)).await?;
        n += 1;
    }
    let mut hists = Vec::new();
    for t in tasks {
        hists.push(t.await?);
    }
    drain.abort();
    let sc = format!("durable latency @{rate} msg/s");
    let same = &hists[0];
    let mut cross = harness::histogram();
    for h in &hists[1..] {
        cross.add(h)?;
    }
    for (who, h) in [("same node", same), ("other nodes", &cross)] {
        res.push(&sc, "palaver-cluster", &format!("{who} p50"), ms(h, 0.5), "ms", &meter);
        res.push(&sc, "palaver-cluster", &format!("{who} p99"), ms(h, 0.99), "ms", &meter);
        res.push(&sc, "palaver-cluster", &format!("{who} p999"), ms(h, 0.999), "ms", &meter);
    }
    res.push(
        &sc,
        "palaver-cluster",
        "messages received of sent",
        (same.len() + cross.len()) as f64 / (3 * n).max(1) as f64 * 100.0,
        "%",
        &meter,
    );
    Ok(())
}

/// The rooms and senders of the durable sends runs: `senders` accounts over
/// `rooms` rooms. With more rooms than senders, each room has one member,
/// its owner, who alone sends to it (so setting up 1,000 rooms takes 1,000
/// writes, not 50,000 joins).
struct DurableRooms {
    rooms: usize,
    tokens: Vec<String>,
    owned: bool,
}

impl DurableRooms {
    async fn set_up(nodes: &[Server], rooms: usize, senders: usize) -> Result<Self> {
        let names: Vec<String> = (0..rooms).map(|r| format!("cs{rooms}-{r}")).collect();
        let owned = rooms > senders;
        let tokens = palaver_setup(nodes, &format!("cs{rooms}x"), senders, if owned { &[] } else { &names }).await?;
        if owned {
            let api = harness::Api::new(&nodes[0].addr);
            let gate = Arc::new(Semaphore::new(16));
            let mut tasks = Vec::new();
            for (r, room) in names.iter().enumerate() {
                let (api, gate, room, owner) = (api.clone(), gate.clone(), room.clone(), tokens[r % senders].clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire().await?;
                    api.room(&room, &owner, &[]).await
                }));
            }
            for t in tasks {
                t.await??;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(Self { rooms, tokens, owned })
    }

    /// The room of sender `i`'s `n`th send.
    fn room(&self, i: usize, n: u64) -> String {
        let (rooms, senders) = (self.rooms, self.tokens.len());
        let r = if self.owned {
            // Sender i owns rooms i, i + senders, i + 2 × senders, ...
            let own = (rooms - i).div_ceil(senders);
            i + senders * (n as usize % own)
        } else {
            (n as usize + i) % rooms
        };
        format!("cs{rooms}-{r}")
    }

    /// Sender `i`'s `n`th send.
    fn send(&self, nonce: &str, i: usize, n: u64) -> Message {
        let send = Command::Send {
            room: self.room(i, n),
            body: "x".into(),
            client_id: format!("{nonce}-{i}-{n}"),
            reply_to: None,
            attachments: Vec::new(),
        };
        harness::palaver_frame(n, send)
    }

    /// One socket per sender, sender i on `nodes[i % len]`.
    async fn dial(&self, nodes: &[Server]) -> Result<Vec<harness::Ws>> {
        let mut sockets = Vec::with_capacity(self.tokens.len());
        for (i, token) in self.tokens.iter().enumerate() {
            sockets.push(harness::dial(&nodes[i % nodes.len()].addr, "/ws", Some(token), Dial::default()).await?);
        }
        Ok(sockets)
    }
}

/// What a send's answer says, for a sender that counts answers.
enum Answer {
    /// The send with this frame id was answered.
    Sent(Option<u64>),
    /// The send with this frame id is to be sent again after the wait, as
    /// a client does with `unavailable` (a shard electing its leader) and
    /// `rate_limited`; its `client_id` makes the second one safe.
    Retry(u64, Duration),
    /// Another frame (an event): not an answer.
    Other,
}

/// Reads one frame a sender got: an answer to a send, a send to retry, or
/// something else; any other refusal or an ended socket is an error.
fn answer(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Result<Answer> {
    let Some(Ok(Message::Text(t))) = msg else { bail!("socket ended") };
    match serde_json::from_str::<Reply<Done>>(&t) {
        Ok(Reply::Ok { id, .. }) => Ok(Answer::Sent(id)),
        Ok(Reply::Error { id: Some(id), error }) if matches!(error.code, Code::Unavailable | Code::RateLimited) => {
            let wait = Duration::from_millis(error.retry_after_ms.unwrap_or(100).clamp(10, 1_000));
            Ok(Answer::Retry(id, wait))
        }
        Ok(Reply::Error { .. }) => bail!("send failed: {t}"),
        Err(_) => Ok(Answer::Other),
    }
}

/// One sender's sends waiting for their answers, each with the instant
/// its latency counts from.
struct InFlight {
    since: HashMap<u64, Instant>,
    retried: u64,
}

impl InFlight {
    fn new() -> Self {
        Self { since: HashMap::new(), retried: 0 }
    }

    /// Handles one frame sender `i` got: answers the instant an answered
    /// send's latency counts from; a send to retry goes out again after
    /// its wait, keeping that instant.
    async fn take(
        &mut self,
        got: Answer,
        tx: &mut futures_util::stream::SplitSink<harness::Ws, Message>,
        set: &DurableRooms,
        nonce: &str,
        i: usize,
    ) -> Result<Option<Instant>> {
        match got {
            Answer::Sent(id) => Ok(id.and_then(|id| self.since.remove(&id))),
            Answer::Retry(id, wait) if self.since.contains_key(&id) => {
                self.retried += 1;
                tokio::time::sleep(wait).await;
                tx.send(set.send(nonce, i, id)).await?;
                Ok(None)
            }
            Answer::Retry(..) | Answer::Other => Ok(None),
        }
    }
}

/// Answered sends/s with majority acks: every sender keeps 16 sends in
/// flight (closed loop).
async fn cluster_sends(nodes: &[Server], set: &Arc<DurableRooms>, secs: u64, res: &mut Results) -> Result<()> {
    const WINDOW: usize = 16;
    let sockets = set.dial(nodes).await?;
    // Said when the sending starts, so that a profiler can be started then.
    eprintln!("  durable: {} room(s) set up, sending for {secs} s", set.rooms);
    let nonce = harness::nonce();
    let meter = CpuMeter::start();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (set, nonce) = (set.clone(), nonce.clone());
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut sent = 0u64;
            let mut h = harness::histogram();
            let mut waiting = InFlight::new();
            while Instant::now() < deadline || !waiting.since.is_empty() {
                while waiting.since.len() < WINDOW && Instant::now() < deadline {
                    waiting.since.insert(sent, Instant::now());
                    tx.send(set.send(&nonce, i, sent)).await?;
                    sent += 1;
                }
                let msg = tokio::time::timeout(Duration::from_secs(30), rx.next()).await.context("answer timed out")?;
                if let Some(t0) = waiting.take(answer(msg)?, &mut tx, &set, &nonce, i).await? {
                    h.saturating_record(t0.elapsed().as_micros() as u64);
                }
            }
            anyhow::Ok((h, waiting.retried))
        }));
    }
    let started = Instant::now();
    let (mut all, mut retried) = (harness::histogram(), 0);
    for t in tasks {
        let (h, r) = t.await??;
        all.add(h)?;
        retried += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sc = format!("durable sends, {} room(s), {} nodes", set.rooms, nodes.len());
    let senders = set.tokens.len();
    res.push(
        &sc,
        "palaver-cluster",
        &format!("answered sends/s (majority, {senders} senders)"),
        all.len() as f64 / elapsed,
        "/s",
        &meter,
    );
    res.push(&sc, "palaver-cluster", "answer latency p50", ms(&all, 0.5), "ms", &meter);
    res.push(&sc, "palaver-cluster", "answer latency p99", ms(&all, 0.99), "ms", &meter);
    res.push(&sc, "palaver-cluster", "answer latency p999", ms(&all, 0.999), "ms", &meter);
    // Every node's CPU (all replicas, the forwarding node, the relays) over
    // the run, per answered send.
    let server_us = meter.read().servers * elapsed * 1e6 / all.len().max(1) as f64;
    res.push(&sc, "palaver-cluster", "node CPU per answered send (all nodes)", server_us, "µs", &meter);
    res.push(&sc, "palaver-cluster", "sends retried (unavailable, rate_limited)", retried as f64, "", &meter);
    Ok(())
}

/// Majority-acked sends at a steady `rate` in all, open loop: each send
/// goes out when it is due, answered or not, and its answer latency counts
/// from then (no coordinated omission). The run's second half against its
/// first shows a queue that grows.
async fn cluster_paced_sends(
    nodes: &[Server],
    set: &Arc<DurableRooms>,
    rate: u64,
    secs: u64,
    res: &mut Results,
) -> Result<()> {
    let sockets = set.dial(nodes).await?;
    // The closed-loop run before leaves work behind (the search index's
    // backlog, the room store's flush): not this run's.
    let waited = harness::settle(Duration::from_secs(60)).await;
    eprintln!(
        "  durable: {} room(s), {rate} sends/s for {secs} s (servers idle after {:.1} s)",
        set.rooms,
        waited.as_secs_f64()
    );
    let nonce = harness::nonce();
    let meter = CpuMeter::start();
    let senders = sockets.len();
    let every = Duration::from_secs_f64(senders as f64 / rate.max(1) as f64);
    let begin = Instant::now();
    let half = begin + Duration::from_secs(secs) / 2;
    let deadline = begin + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (set, nonce) = (set.clone(), nonce.clone());
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut sent = 0u64;
            let mut halves = [harness::histogram(), harness::histogram()];
            // A send's latency counts from when it was due, a retried one's too.
            let mut waiting = InFlight::new();
            loop {
                // Sender i's sends are due i / senders of an interval late,
                // so that the senders interleave evenly.
                let due = begin + every.mul_f64(sent as f64 + i as f64 / senders as f64);
                let sending = due < deadline && sent < 10_000_000;
                if !sending && waiting.since.is_empty() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()), if sending => {
                        waiting.since.insert(sent, due);
                        tx.send(set.send(&nonce, i, sent)).await?;
                        sent += 1;
                    }
                    msg = tokio::time::timeout(Duration::from_secs(30), rx.next()) => {
                        let got = answer(msg.context("answer timed out")?)?;
                        if let Some(due) = waiting.take(got, &mut tx, &set, &nonce, i).await? {
                            halves[usize::from(due >= half)].saturating_record(due.elapsed().as_micros() as u64);
                        }
                    }
                }
            }
            anyhow::Ok((halves, waiting.retried))
        }));
    }
    let (mut first, mut second, mut retried) = (harness::histogram(), harness::histogram(), 0);
    for t in tasks {
        let ([a, b], r) = t.await??;
        first.add(a)?;
        second.add(b)?;
        retried += r;
    }
    let elapsed = begin.elapsed().as_secs_f64();
    let mut all = first.clone();
    all.add(&second)?;
    let sc = format!("durable sends at {rate}/s, {} room(s), {} nodes", set.rooms, nodes.len());
    res.push(&sc, "palaver-cluster", "answered sends/s", all.len() as f64 / secs as f64, "/s", &meter);
    res.push(&sc, "palaver-cluster", "sends retried (unavailable, rate_limited)", retried as f64, "", &meter);
    res.push(&sc, "palaver-cluster", "answer latency p50", ms(&all, 0.5), "ms", &meter);
    res.push(&sc, "palaver-cluster", "answer latency p99", ms(&all, 0.99), "ms", &meter);
    res.push(&sc, "palaver-cluster", "answer latency p99, first half", ms(&first, 0.99), "ms", &meter);
    res.push(&sc, "palaver-cluster", "answer latency p99, second half", ms(&second, 0.99), "ms", &meter);
    let server_us = meter.read().servers * elapsed * 1e6 / all.len().max(1) as f64;
    res.push(&sc, "palaver-cluster", "node CPU per answered send (all nodes)", server_us, "µs", &meter);
    Ok(())
}

// ---------------------------------------------------------------- sends --

/// Closed loop: `tokens.len()` senders (sender i on `addrs[i % len]`), each
/// waiting for its answer before sending again. `typing` instead of `send`
/// when `typing`: a round trip with little server work (no store, no
/// replication), so a relay's own cost shows.
async fn closed_loop(
    addrs: &[String],
    tokens: &[String],
    room: &str,
    secs: u64,
    typing: bool,
) -> Result<(f64, Histogram<u64>)> {
    round_trips(addrs, tokens, &[room.to_string()], secs, typing, None).await
}

/// Round trips as [`closed_loop`], caller i in `rooms[i % rooms.len()]`;
/// with `pace` (round trips/s in all), each caller starts its calls on a
/// fixed schedule. A paced call's latency counts from when it was due, so
/// a call that waited for a slow one before it counts that wait (no
/// coordinated omission).
async fn round_trips(
    addrs: &[String],
    tokens: &[String],
    rooms: &[String],
    secs: u64,
    typing: bool,
    pace: Option<f64>,
) -> Result<(f64, Histogram<u64>)> {
    let mut sockets = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        sockets.push(harness::dial(&addrs[i % addrs.len()], "/ws", Some(token), Dial::default()).await?);
    }
    // Every socket is open before the clock starts, so a paced run's first
    // calls are not due before their sockets exist.
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(secs);
    let callers = sockets.len();
    // Each caller's interval between calls; caller i starts i / callers of
    // an interval late, so that the calls interleave evenly.
    let interval = pace.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(callers as f64 / r));
    let nonce = harness::nonce();
    let mut tasks = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let room = rooms[i % rooms.len()].clone();
        let nonce = nonce.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = harness::histogram();
            let mut n = 0u64;
            while Instant::now() < deadline && n < 10_000_000 {
                let started = match interval {
                    Some(every) => {
                        let due = begin + every.mul_f64(n as f64 + i as f64 / callers as f64);
                        if due >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let cmd = if typing {
                    Command::Typing { room: room.clone() }
                } else {
                    let client_id = format!("{nonce}-{i}-{n}");
                    Command::Send {
                        room: room.clone(),
                        body: "benchmark message".into(),
                        client_id,
                        reply_to: None,
                        attachments: Vec::new(),
                    }
                };
                call(&mut ws, n, cmd).await?;
                h.saturating_record(started.elapsed().as_micros() as u64);
                n += 1;
            }
            anyhow::Ok(h)
        }));
    }
    let started = Instant::now();
    let mut all = harness::histogram();
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}

/// Where the paired round trips go: straight to the nodes, and the path
/// under test.
struct PairedPaths<'a> {
    direct: &'a [String],
    path: &'a [String],
}

/// Typing round trips paced at `rate` in all, each caller alternating
/// between a socket straight to a node and one through the path; returns
/// the two histograms (straight, through).
async fn paired_round_trips(
    paths: PairedPaths<'_>,
    tokens: &[String],
    rooms: &[String],
    secs: u64,
    rate: f64,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let mut sockets = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        let straight =
            harness::dial(&paths.direct[i % paths.direct.len()], "/ws", Some(token), Dial::default()).await?;
        let through = harness::dial(&paths.path[i % paths.path.len()], "/ws", Some(token), Dial::default()).await?;
        sockets.push([straight, through]);
    }
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(secs);
    let callers = sockets.len();
    let every = Duration::from_secs_f64(callers as f64 / rate.max(1.0));
    let mut tasks = Vec::new();
    for (i, mut pair) in sockets.into_iter().enumerate() {
        let room = rooms[i % rooms.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut h = [harness::histogram(), harness::histogram()];
            let mut n = 0u64;
            while n < 10_000_000 {
                let due = begin + every.mul_f64(n as f64 + i as f64 / callers as f64);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                // Which path goes first alternates with the caller, so
                // neither is always the one right after a sleep.
                let side = ((n + i as u64) % 2) as usize;
                call(&mut pair[side], n, Command::Typing { room: room.clone() }).await?;
                h[side].saturating_record(due.elapsed().as_micros() as u64);
                n += 1;
            }
            anyhow::Ok(h)
        }));
    }
    let (mut straight, mut through) = (harness::histogram(), harness::histogram());
    for t in tasks {
        let [a, b] = t.await??;
        straight.add(a)?;
        through.add(b)?;
    }
    Ok((straight, through))
}

async fn sends_scenario(o: &Options, res: &mut Results) -> Result<()> {
    let node = harness::palaver_node("sends-node").await?;
    let nodes = std::slice::from_ref(&node);
    let tokens = palaver_setup(nodes, "snd", o.senders, &["sends".to_string()]).await?;
    for n in [1, o.senders] {
        let meter = CpuMeter::start();
        let (rate, h) = closed_loop(std::slice::from_ref(&node.addr), &tokens[..n], "sends", o.secs, false).await?;
        let sc = format!("sends, {n} sender(s)");
        res.push(&sc, "palaver-node", "answered sends/s", rate, "/s", &meter);
        res.push(&sc, "palaver-node", "send latency p50", ms(&h, 0.5), "ms", &meter);
        res.push(&sc, "palaver-node", "send latency p99", ms(&h, 0.99), "ms", &meter);
    }
    Ok(())
}

/// One node behind the balancer: closed-loop sends direct and relayed, then
/// the balancer's RSS per idle relayed connection.
async fn relay(o: &Options, res: &mut Results) -> Result<()> {
    let node = harness::palaver_node("relay-node").await?;
    let balancer = harness::palaver_balancer(&[node.addr.as_str()], "round-robin", "relay-balancer")?;
    let tokens = palaver_setup(std::slice::from_ref(&node), "rel", o.senders, &["relay".to_string()]).await?;
    for (label, addr) in [("direct", &node.addr), ("via balancer", &balancer.addr)] {
        let meter = CpuMeter::start();
        let (rate, h) = closed_loop(std::slice::from_ref(addr), &tokens, "relay", o.secs, false).await?;
        let sc = format!("relay, {} senders", o.senders);
        res.push(&sc, label, "answered sends/s", rate, "/s", &meter);
        res.push(&sc, label, "send latency p50", ms(&h, 0.5), "ms", &meter);
        res.push(&sc, label, "send latency p99", ms(&h, 0.99), "ms", &meter);
    }
    let target = palaver_target("palaver-node", &tokens, vec![balancer.addr.clone()]);
    let cap = (harness::nofile_hard().saturating_sub(600) / 2) as usize;
    let i = harness::idle_rss(&balancer, &target, "relay", o.conns.min(cap), o.conn_rate).await?;
    let meter = CpuMeter::start();
    res.push(
        &format!("relay, {} idle", i.sockets),
        "balancer",
        "RSS per relayed connection",
        i.kib_per_socket,
        "KiB",
        &meter,
    );
    Ok(())
}

// --------------------------------------------------------------- balancer --

/// The balancer path whose clients ask `/assign` and connect to the node
/// it names.
const ASSIGN_PATH: &str = "palaver balancer assign (direct to the named node)";

async fn balancer(o: &Options, res: &mut Results) -> Result<()> {
    let nodes = harness::palaver_cluster(3, "bal-cluster").await?;
    let addrs = node_addrs(&nodes);
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let tokens = palaver_setup(&nodes, "bal", o.senders.max(2), &["balfan".to_string()]).await?;
    // Each round-tripper types in a room of its own, so that a round trip
    // is a frame each way through the path, not also a typing event to
    // every other round-tripper (50 round-trippers in one room made each
    // round trip a fan-out of 50, and the relay's latency was lost in it).
    let rtt_rooms: Vec<String> = (0..o.senders).map(|i| format!("balrtt-{i}")).collect();
    let api = harness::Api::new(&nodes[0].addr);
    for (room, owner) in rtt_rooms.iter().zip(&tokens) {
        api.room(room, owner, &[]).await?;
    }
    let members = o.members.min(1000);
    let rates = o.rate.clone().unwrap_or_else(|| harness::doubling_rates(100_000.0, 800_000.0, members));
    let mut paths: Vec<String> = vec!["direct (spread over nodes)".into()];
    for s in ["round-robin", "weighted", "least-connections"] {
        paths.push(format!("palaver balancer {s}"));
    }
    paths.push(ASSIGN_PATH.into());
    paths.push("haproxy roundrobin".into());
    let mut direct = (0.0, 0.0);
    // Half the direct path's rate (the direct path runs first).
    let mut half_rate = 0.0;
    for name in &paths {
        let server = if name == ASSIGN_PATH {
            Some(harness::palaver_balancer(&addr_refs, "round-robin", "bal-assign")?)
        } else if name.starts_with("palaver balancer") {
            let strategy = name.rsplit(' ').next().unwrap_or("round-robin");
            Some(harness::palaver_balancer(&addr_refs, strategy, &format!("bal-{strategy}"))?)
        } else if name.starts_with("haproxy") {
            if let Some(why) = harness::haproxy_missing() {
                res.note(format!("balancer: HAProxy skipped: {why}"));
                continue;
            }
            Some(harness::haproxy(&addr_refs, "bal-haproxy")?)
        } else {
            None
        };
        let path_addrs = match &server {
            // Each socket asks `/assign` once and connects where it is told:
            // the balancer carries no byte of the traffic.
            Some(s) if name == ASSIGN_PATH => (0..o.senders.max(members + o.publishers))
                .map(|_| harness::assigned_node(&s.addr))
                .collect::<Result<Vec<_>>>()?,
            Some(s) => vec![s.addr.clone()],
            None => addrs.clone(),
        };
        let waited = harness::settle(Duration::from_secs(20)).await;
        eprintln!(
            "  {name}: {} closed-loop round trips, then fan-out to {members} (servers idle after {:.1} s)",
            o.senders,
            waited.as_secs_f64()
        );
        let meter = CpuMeter::start();
        let (rate, h) = round_trips(&path_addrs, &tokens[..o.senders], &rtt_rooms, o.secs, true, None).await?;
        let sc = format!("balancer, {} round-trippers", o.senders);
        res.push(&sc, name, "round trips/s (typing)", rate, "/s", &meter);
        res.push(&sc, name, "round trip p50", ms(&h, 0.5), "ms", &meter);
        res.push(&sc, name, "round trip p99", ms(&h, 0.99), "ms", &meter);
        let p99 = ms(&h, 0.99);
        // Half load, paired: every path paced at half the direct path's
        // closed-loop rate, each caller alternating one round trip straight
        // to a node with one through the path, so that both see the same
        // moment's load and the difference is the path's own. (Taken in
        // separate runs, the direct path's p99 alone moved by 2 ms from one
        // run to the next, four times the 0.5 ms target.)
        if server.is_none() {
            half_rate = rate / 2.0;
        } else {
            let meter = CpuMeter::start();
            let pair = PairedPaths { direct: &addrs, path: &path_addrs };
            let (straight, through) =
                paired_round_trips(pair, &tokens[..o.senders], &rtt_rooms, o.secs, half_rate).await?;
            let label = half_label(half_rate);
            res.push(&sc, name, &format!("{label}, straight in the same run"), ms(&straight, 0.99), "ms", &meter);
            res.push(&sc, name, &format!("{label}, through the path"), ms(&through, 0.99), "ms", &meter);
            res.push(
                &sc,
                name,
                "added round-trip p99 at half load (paired)",
                ms(&through, 0.99) - ms(&straight, 0.99),
                "ms",
                &meter,
            );
            res.push(
                &sc,
                name,
                "added round-trip p50 at half load (paired)",
                ms(&through, 0.5) - ms(&straight, 0.5),
                "ms",
                &meter,
            );
        }
        let target = palaver_target(name, &tokens, path_addrs);
        let spec = FanoutSpec {
            rooms: 1,
            members,
            senders: o.publishers,
            rates: rates.clone(),
            step_secs: o.step_secs,
            drain_secs: o.drain_secs,
            stop_on_saturation: o.rate.is_none(),
            room: "balfan".into(),
            parallel: 32,
            dial: Dial::default(),
        };
        let run = harness::fanout(&target, &spec).await?;
        let step = run.step_at(100_000.0).cloned().unwrap_or_default();
        let sc2 = format!("balancer, fan-out {members}");
        let row = |figure: &str, value: f64, unit: &'static str| Row {
            scenario: sc2.clone(),
            system: name.clone(),
            figure: figure.into(),
            value,
            unit,
            load1: step.load1,
            other_cores: step.other_cores,
        };
        res.rows.push(row("max deliveries/s", run.best(), "/s"));
        res.rows.push(row("delivery p50 @100k/s", step.p50, "ms"));
        res.rows.push(row("delivery p99 @100k/s", step.p99, "ms"));
        res.rows.push(row("delivery p999 @100k/s", step.p999, "ms"));
        if server.is_none() {
            direct = (p99, step.p99);
        } else {
            res.push(&sc, name, "added round-trip p99 vs direct", p99 - direct.0, "ms", &meter);
            res.rows.push(row("added delivery p99 vs direct", step.p99 - direct.1, "ms"));
        }
        if let Some(s) = &server {
            res.push(&sc, name, "relay RSS (after)", s.rss_kib()? as f64 / 1024.0, "MiB", &meter);
            if s.admin.is_some() {
                let routed = harness::balancer_routed(s)?;
                let spread: Vec<String> = routed.iter().map(|(a, n)| format!("{a} {n}")).collect();
                res.note(format!("balancer: {name} routed {}", spread.join(", ")));
            }
        }
        res.balancer.push((name.clone(), rate, p99, run.best(), step.p99));
        drop(server);
    }
    Ok(())
}

/// The figure name of a round-trip p99 at half load.
fn half_label(rate: f64) -> String {
    format!("round trip p99 at half load ({} /s)", num(rate))
}

// ------------------------------------------------------------- comparison --

/// A figure of a system, by the system's name.
type Figure<'a> = &'a dyn Fn(&str) -> f64;

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() { format!("{:.2}×", a / b) } else { "-".into() }
}

/// The side-by-side table of the fan-out and idle figures, and ratios.
fn comparison(res: &Results) -> String {
    if res.fanout.is_empty() && res.idle.is_empty() {
        return String::new();
    }
    let common = 100_000.0;
    let p99_at = |sys: &str| {
        res.fanout.iter().find(|r| r.system == sys).and_then(|r| r.step_at(common)).map_or(f64::NAN, |s| s.p99)
    };
    let best = |sys: &str| res.fanout.iter().find(|r| r.system == sys).map_or(f64::NAN, FanoutRun::best);
    let rss = |sys: &str| res.idle.iter().find(|i| i.system == sys).map_or(f64::NAN, |i| i.kib_per_socket);
    let mut systems: Vec<String> = res.fanout.iter().map(|r| r.system.clone()).collect();
    for i in &res.idle {
        if !systems.contains(&i.system) {
            systems.push(i.system.clone());
        }
    }
    let members =
        res.fanout.first().and_then(|r| r.steps.first()).map_or(0, |s| (s.offered_deliveries / s.offered_sends) as u64);
    let mut out = format!(
        "Side by side, same run, same load (fan-out: {} receivers in one room; idle: RSS growth per idle socket)\n{:<24} {:>18} {:>18} {:>18}\n",
        num(members as f64).split('.').next().unwrap_or("0"),
        "system",
        "max deliveries/s",
        "p99 @100k/s (ms)",
        "KiB / idle socket"
    );
    for s in &systems {
        let f = |v: f64| if v.is_finite() { num(v) } else { "-".into() };
        out.push_str(&format!("{s:<24} {:>18} {:>18} {:>18}\n", f(best(s)), f(p99_at(s)), f(rss(s))));
    }
    let peers: Vec<&str> = ["ws", "socketio", "bare"].into_iter().filter(|p| systems.iter().any(|s| s == p)).collect();
    if !peers.is_empty() {
        out.push_str(&format!("\nRatios Palaver / peer\n{:<36}", "figure"));
        for p in &peers {
            out.push_str(&format!(" {:>12}", format!("vs {p}")));
        }
        out.push('\n');
        let lines: [(&str, Figure, &str); 7] = [
            ("max deliveries/s, 3 nodes + balancer", &best, "palaver-cluster"),
            ("max deliveries/s, 3 nodes, /assign", &best, "palaver-cluster-assign"),
            ("max deliveries/s, 1 node", &best, "palaver-node"),
            ("p99 @100k/s, 3 nodes + balancer", &p99_at, "palaver-cluster"),
            ("p99 @100k/s, 3 nodes, /assign", &p99_at, "palaver-cluster-assign"),
            ("p99 @100k/s, 1 node", &p99_at, "palaver-node"),
            ("RSS per idle socket, 1 node", &rss, "palaver-node"),
        ];
        for (label, f, ours) in lines {
            out.push_str(&format!("{label:<36}"));
            for p in &peers {
                out.push_str(&format!(" {:>12}", ratio(f(ours), f(p))));
            }
            out.push('\n');
        }
    }
    out
}

// ----------------------------------------------------------------- output --

fn run_json(r: &FanoutRun) -> Value {
    json!({
        "system": r.system, "receivers": r.receivers, "connect_secs": r.connect_secs,
        "max_deliveries_per_sec": r.best(), "first_error": r.first_error,
        "steps": r.steps.iter().map(|s| json!({
            "offered_sends_per_sec": s.offered_sends, "offered_deliveries_per_sec": s.offered_deliveries,
            "sent": s.sent, "sends_per_sec": s.sends_per_sec, "deliveries_per_sec": s.deliveries_per_sec,
            "expected": s.expected, "delivered": s.delivered,
            "latency_ms": {"p50": s.p50, "p99": s.p99, "p999": s.p999, "max": s.max},
            "errors": s.errors, "receivers_closed": s.closed, "saturated": s.saturated, "why": s.why,
            "load1": s.load1, "other_cores": s.other_cores, "generator_cores": s.generator_cores, "server_cores": s.server_cores,
        })).collect::<Vec<_>>(),
    })
}

fn latency_panels(runs: &[&FanoutRun]) -> Vec<report::Panel> {
    runs.iter()
        .map(|r| report::Panel {
            title: format!("{} (max {} deliveries/s)", r.system, num(r.best())),
            x: r.steps.iter().map(|s| num(s.offered_deliveries)).collect(),
            series: vec![
                ("p50".into(), r.steps.iter().map(|s| s.p50).collect()),
                ("p99".into(), r.steps.iter().map(|s| s.p99).collect()),
                ("p99.9".into(), r.steps.iter().map(|s| s.p999).collect()),
                ("max".into(), r.steps.iter().map(|s| s.max).collect()),
            ],
        })
        .collect()
}

fn write_outputs(o: &Options, res: &Results, pinned: bool, load_before: [f64; 3], secs: f64) -> Result<()> {
    let out = harness::results_dir();
    std::fs::create_dir_all(&out)?;
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let doc = json!({
        "machine": {
            "cores": harness::machine_cores(),
            "cpu": harness::cpu_model(),
            "open_files_hard_limit": harness::nofile_hard(),
            "pinning": if pinned { "servers on core 0, load generator on core 1 (taskset)" } else { "off" },
            "load_average_before": load_before,
            "load_average_after": harness::load_average(),
        },
        "unix_time": unix,
        "run_secs": secs,
        "scenarios": o.scenarios,
        "rows": res.rows.iter().map(Row::json).collect::<Vec<_>>(),
        "fanout": res.fanout.iter().map(run_json).collect::<Vec<_>>(),
        "rooms": res.rooms.as_ref().map(run_json),
        "idle": res.idle.iter().map(|i| json!({"system": i.system, "sockets": i.sockets, "kib_per_socket": i.kib_per_socket,
            "rss_mib": i.rss_mib, "connect_p50_ms": i.connect_p50, "connect_p99_ms": i.connect_p99, "failed": i.failed,
            "load1": i.load1, "other_cores": i.other_cores})).collect::<Vec<_>>(),
        "balancer": res.balancer.iter().map(|b| json!({"path": b.0, "round_trips_per_sec": b.1, "round_trip_p99_ms": b.2,
            "max_deliveries_per_sec": b.3, "delivery_p99_ms_at_100k": b.4})).collect::<Vec<_>>(),
        "comparison": comparison(res),
        "notes": res.notes,
    });
    std::fs::write(out.join("load.json"), serde_json::to_string_pretty(&doc)?)?;
    let mut written = vec!["load.json".to_string()];
    let mut svg = |name: &str, text: String| -> Result<()> {
        std::fs::write(out.join(name), text)?;
        written.push(name.to_string());
        Ok(())
    };
    if !res.fanout.is_empty() {
        let runs: Vec<&FanoutRun> = res.fanout.iter().collect();
        svg(
            "fanout-latency.svg",
            report::line_panels(
                "Fan-out, one room: end-to-end latency per rate step",
                "offered deliveries/s",
                "latency (ms, log)",
                &latency_panels(&runs),
            ),
        )?;
        let items: Vec<(String, f64)> = res.fanout.iter().map(|r| (r.system.clone(), r.best())).collect();
        svg(
            "fanout-throughput.svg",
            report::bar_chart("Fan-out, one room: max deliveries/s per system", "/s", &items),
        )?;
    }
    if let Some(r) = &res.rooms {
        svg(
            "rooms-latency.svg",
            report::line_panels(
                "Many rooms: end-to-end latency per rate step",
                "offered deliveries/s",
                "latency (ms, log)",
                &latency_panels(&[r]),
            ),
        )?;
    }
    if !res.idle.is_empty() {
        let items: Vec<(String, f64)> = res.idle.iter().map(|i| (i.system.clone(), i.kib_per_socket)).collect();
        svg("idle-rss.svg", report::bar_chart("RSS per idle WebSocket", "KiB", &items))?;
    }
    if !res.conn_rss.is_empty() {
        svg(
            "connections-rss.svg",
            report::bar_chart("Palaver cluster: RSS per idle connection", "KiB", &res.conn_rss),
        )?;
    }
    if !res.balancer.is_empty() {
        let trips: Vec<(String, f64)> = res.balancer.iter().map(|b| (b.0.clone(), b.1)).collect();
        svg("balancer-roundtrips.svg", report::bar_chart("Closed-loop typing round trips/s per path", "/s", &trips))?;
        let max: Vec<(String, f64)> = res.balancer.iter().map(|b| (b.0.clone(), b.3)).collect();
        svg("balancer-throughput.svg", report::bar_chart("Fan-out: max deliveries/s per path", "/s", &max))?;
        let p99: Vec<(String, f64)> = res.balancer.iter().map(|b| (b.0.clone(), b.4)).collect();
        svg(
            "balancer-latency.svg",
            report::bar_chart("Fan-out delivery p99 per path (100k deliveries/s)", "ms", &p99),
        )?;
    }
    eprintln!("results written to {}: {}", out.display(), written.join(", "));
    Ok(())
}
