//! The world of a fault run: a cluster (three nodes to start) behind the
//! balancer, rooms made through different nodes (so their owners spread),
//! users and their resilient clients subscribed to every room, the book of
//! every send, the load, and the reads the nemesis and the checker need
//! (cluster views, histories). It injects no fault and judges nothing.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_balancer::BalancerSettings;
use palaver_balancer::Strategy;
use palaver_client::Http;
use palaver_client::Message;
use palaver_client::ResilientClient;
use palaver_client::ResilientOptions;
use palaver_client::Visibility;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;
use palaver_testkit::Recorder;
use palaver_testkit::User;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::CLI_TIMEOUT;
use crate::CONVERGE_WAIT;
use crate::DOWN_AFTER;
use crate::GIVE_UP;
use crate::HEAL_WAIT;
use crate::HEALTH_INTERVAL;
use crate::OUTSTANDING_CAP;
use crate::ROOM_RECOVERY;
use crate::checker::Executed;
use crate::checker::LoadWindow;
use crate::checker::Observed;
use crate::checker::Outcome;
use crate::checker::SendRec;
use crate::checker::references;

/// Every send of a run, as issued and as it ended.
#[derive(Default)]
pub struct Book {
    sends: Mutex<Vec<SendRec>>,
    /// Load ticks skipped because the client had too many sends unanswered.
    pub skipped: AtomicUsize,
}

impl Book {
    /// Records a send; answers its index.
    pub fn push(&self, rec: SendRec) -> usize {
        let mut s = self.sends.lock().expect("book lock");
        s.push(rec);
        s.len() - 1
    }

    /// Records how send `i` ended.
    pub fn resolve(&self, i: usize, r: palaver_client::Result<palaver_client::Sent>) {
        let now = Instant::now();
        let outcome = match r {
            Ok(sent) => Outcome::Answered { seq: sent.seq, at: now, attempts: sent.attempts },
            Err(e) => Outcome::Failed { error: e.to_string(), at: now },
        };
        if let Some(rec) = self.sends.lock().expect("book lock").get_mut(i) {
            rec.outcome = Some(outcome);
        }
    }

    /// Every send so far.
    pub fn snapshot(&self) -> Vec<SendRec> {
        self.sends.lock().expect("book lock").clone()
    }

    /// Sends without an outcome yet.
    pub fn unresolved(&self) -> usize {
        self.sends.lock().expect("book lock").iter().filter(|r| r.outcome.is_none()).count()
    }
}

/// A three-node cluster behind the balancer, the rooms, the users and
/// their resilient clients, and the book of every send.
pub struct World {
    /// The cluster.
    pub c: Cluster,
    /// The balancer the clients go through.
    pub lb: Balancer,
    admin: String,
    /// The rooms under load.
    pub rooms: Vec<String>,
    /// The load clients' users.
    pub users: Vec<User>,
    /// Users of the partition probes.
    pub probes: Vec<User>,
    /// The load clients.
    pub clients: Vec<ResilientClient>,
    /// What each load client's events showed (same order).
    pub delivered: Vec<Recorder>,
    /// Every send.
    pub book: Arc<Book>,
    http: reqwest::Client,
    /// When the world was set up.
    pub start: Instant,
    /// Violations seen while the faults ran (rooms that did not recover).
    noted: Mutex<Vec<String>>,
    /// Nodes removed from the cluster (stopped; no longer checked).
    pub removed: BTreeSet<u64>,
    /// Where every node's output is kept whole (`<node>.log`).
    log_dir: std::path::PathBuf,
    /// That folder when it is this run's own (removed with the world).
    _own_logs: Option<tempfile::TempDir>,
}

/// The nodes' log filter unless `RUST_LOG` is set: every applied shard
/// entry is logged, so a failure can show what each copy applied where.
const NODE_LOG: &str = "info,openraft=warn,palaver_node::shards::machine=debug,palaver_node::cluster::relay=debug,\
                        palaver_node::api::delivery=debug";
/// Log lines shown per node and seq in a failure report.
const APPLIED_SHOWN: usize = 12;

/// The operations token of the fault cluster (the CLI's and the balancer's).
pub const OPS_TOKEN: &str = palaver_testkit::TEST_OPS_TOKEN;

/// The options of a resilient client of `user` at `addr` in these tests.
pub fn client_options(addr: &str, user: &User) -> ResilientOptions {
    ResilientOptions {
        connect_timeout: Duration::from_secs(3),
        stall_timeout: Duration::from_secs(4),
        reply_timeout: Duration::from_secs(20),
        give_up_after: Some(GIVE_UP),
        ..ResilientOptions::new(addr).token(&user.token).credentials(&user.name, &user.password)
    }
}

impl World {
    /// A new cluster, balancer, `rooms` rooms (names starting with `tag`),
    /// `clients` load clients subscribed to every room from seq 0, and
    /// `probes` users for partition probes.
    pub async fn setup(tag: &str, clients: usize, rooms: usize, probes: usize) -> Result<World> {
        let start = Instant::now();
        // Every line of every node's output, kept whole for a post-mortem:
        // in PALAVER_FAULT_LOG_DIR, or for this run only.
        let (log_dir, own_logs) = match std::env::var_os("PALAVER_FAULT_LOG_DIR") {
            Some(dir) => (std::path::PathBuf::from(dir), None),
            None => {
                let dir = tempfile::tempdir().context("a folder for the nodes' logs")?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        let env = match std::env::var_os("RUST_LOG") {
            Some(_) => Vec::new(),
            None => vec![("RUST_LOG".into(), NODE_LOG.into())],
        };
        let launch = palaver_testkit::Launch { log_dir: Some(log_dir.clone()), env, ..Default::default() };
        // The kit's config carries OPS_TOKEN: the balancer, the CLI and the
        // admin below all use it.
        let c = Cluster::builder(3).launch(launch).start().await?;
        let admin = c.admin(1, "admin").await?;
        let settings = BalancerSettings {
            strategy: Strategy::RoundRobin,
            nodes: c.backends(),
            health_interval: HEALTH_INTERVAL,
            down_after: DOWN_AFTER,
            up_after: 2,
            connect_timeout: Duration::from_secs(1),
            // Nodes added and removed by the nemesis get clients, then none.
            discover: true,
            ops_token: Some(palaver_balancer::OpsToken::new(OPS_TOKEN)?),
            ..BalancerSettings::default()
        };
        let lb = Balancer::start_with_admin_timeout(settings, Duration::from_secs(2)).await?;
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
        let via = lb.addr.to_string();
        let mut world = World {
            c,
            lb,
            admin: admin.token.clone(),
            rooms: Vec::new(),
            users: Vec::new(),
            probes: Vec::new(),
            clients: Vec::new(),
            delivered: Vec::new(),
            book: Arc::new(Book::default()),
            noted: Mutex::new(Vec::new()),
            http,
            start,
            removed: BTreeSet::new(),
            log_dir,
            _own_logs: own_logs,
        };
        world.wait_healthy(HEAL_WAIT).await.context("the new cluster")?;
        // Rooms made through different nodes, so their owners spread.
        for r in 0..rooms {
            let room = format!("{tag}{r}");
            let node = (r as u64 % 3) + 1;
            world.c.http_as(node, &admin).create_room(&room, &room, Visibility::Public).await?;
            world.rooms.push(room);
        }
        let lb_http = Http::new(&via)?;
        for i in 0..clients + probes {
            let name = if i < clients { format!("{tag}u{i:02}") } else { format!("{tag}probe{}", i - clients) };
            let user = User::register(&lb_http, &name).await?;
            for room in &world.rooms {
                user.http.join(room).await.with_context(|| format!("{name} joining {room}"))?;
            }
            if i < clients {
                world.users.push(user);
            } else {
                world.probes.push(user);
            }
        }
        for user in &world.users {
            let (client, events) = ResilientClient::connect(client_options(&via, user)).await?;
            world.delivered.push(Recorder::start(events));
            for room in &world.rooms {
                client.subscribe(room, Some(0)).await.with_context(|| format!("{} subscribing {room}", user.name))?;
            }
            world.clients.push(client);
        }
        let view = world.view_any().await?.1;
        eprintln!(
            "[{:6.1}s] setup done: {} clients, rooms and owners {:?}, Raft leader {:?}",
            world.secs(),
            world.clients.len(),
            owners(&view),
            view["leader"].as_u64()
        );
        Ok(world)
    }

    /// Seconds since the setup began.
    pub fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Seconds from the setup to `t`.
    pub fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64()
    }

    async fn get_json(&self, addr: &str, path: &str) -> Result<Value> {
        let r = self.http.get(format!("http://{addr}{path}")).bearer_auth(&self.admin).send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        anyhow::ensure!(status == 200, "GET {path} on {addr}: {status} {text}");
        Ok(serde_json::from_str(&text)?)
    }

    /// `GET /api/cluster` from node `id`.
    pub async fn view(&self, id: u64) -> Result<Value> {
        self.get_json(&self.c.addr(id), "/api/cluster").await
    }

    /// The cluster view from the first node that answers.
    pub async fn view_any(&self) -> Result<(u64, Value)> {
        let mut errors = Vec::new();
        for id in self.live() {
            match self.view(id).await {
                Ok(v) => return Ok((id, v)),
                Err(e) => errors.push(format!("node {id}: {e:#}")),
            }
        }
        bail!("no node answered /api/cluster: {errors:?}")
    }

    /// What keeps the cluster from counting as healthy now, if anything:
    /// every node answers, all agree on one leader and see every node, and
    /// the balancer routes to all of them.
    async fn unhealthy(&self) -> Option<String> {
        let mut leaders = BTreeSet::new();
        let live = self.live();
        for &id in &live {
            let v = match self.view(id).await {
                Ok(v) => v,
                Err(e) => return Some(format!("node {id}: {e:#}")),
            };
            match v["leader"].as_u64() {
                Some(l) => leaders.insert(l),
                None => return Some(format!("node {id} knows no leader")),
            };
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.len() != live.len() {
                return Some(format!("node {id} lists {} nodes, not {}", nodes.len(), live.len()));
            }
            if let Some(n) = nodes.iter().find(|n| !matches!(n["state"].as_str(), Some("serving" | "up"))) {
                return Some(format!("node {id} sees node {} as {}", n["id"], n["state"]));
            }
            let rooms = owners(&v);
            if let Some((room, _)) = self.rooms.iter().map(|r| (r, rooms.get(r))).find(|(_, o)| o.is_none()) {
                return Some(format!("node {id} knows no owner of {room}"));
            }
        }
        if leaders.len() != 1 {
            return Some(format!("the nodes name different leaders: {leaders:?}"));
        }
        match self.lb.nodes(Some(OPS_TOKEN)).await {
            // A removed node may stay listed (a node of the balancer's own
            // list), but never as up: it gets no clients.
            Ok(h)
                if live.iter().all(|id| h.get(id).is_some_and(|n| n["health"] == "up"))
                    && h.iter().all(|(id, n)| live.contains(id) || n["health"] != "up") =>
            {
                None
            }
            Ok(h) => Some(format!("balancer health {:?}", h.values().map(|n| &n["health"]).collect::<Vec<_>>())),
            Err(e) => Some(format!("balancer: {e:#}")),
        }
    }

    /// The nodes of the cluster now: those started and not removed.
    pub fn live(&self) -> Vec<u64> {
        self.c.ids().into_iter().filter(|id| !self.removed.contains(id)).collect()
    }

    /// Runs `palaver ARGS` (the operations CLI of docs/protocol.md §7.5)
    /// against this cluster and answers its `--json` output.
    pub async fn palaver(&self, args: &[&str]) -> Result<Value> {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_palaver"));
        cmd.args(args)
            .arg("--config")
            .arg(&self.c.file().path)
            .args(["--token", OPS_TOKEN, "--json", "--timeout", &CLI_TIMEOUT.as_secs().to_string()])
            .env_remove("PALAVER_TOKEN")
            .env_remove("PALAVER_OPS_TOKEN")
            .kill_on_drop(true);
        let out = tokio::time::timeout(CLI_TIMEOUT + Duration::from_secs(30), cmd.output())
            .await
            .with_context(|| format!("palaver {args:?} did not finish"))??;
        if !out.status.success() {
            bail!(
                "palaver {args:?} failed ({}): {} {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("palaver {args:?}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Tells the cluster whether node `id` should lead nothing.
    pub async fn set_draining(&self, id: u64, draining: bool) -> Result<()> {
        let body = serde_json::json!({"node": id, "draining": draining});
        for _ in 0..100 {
            for node in self.live() {
                let r = self
                    .http
                    .post(format!("http://{}/api/cluster/drain", self.c.addr(node)))
                    .bearer_auth(OPS_TOKEN)
                    .json(&body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 204 => return Ok(()),
                    // The metadata group may be electing; another node may answer.
                    _ => continue,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("no node took the drain state of node {id}")
    }

    /// For each seq in `seqs`, every node's log lines of the applied shard
    /// entries that answered it (a few per node): which entry, with which
    /// log id, each copy applied there.
    pub fn applied_at(&self, seqs: &BTreeSet<u64>) -> String {
        let mut out = String::new();
        let Ok(dir) = std::fs::read_dir(&self.log_dir) else { return out };
        let mut files: Vec<std::path::PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        // Rare events: log truncations, gaps a connection's delivery filled,
        // relay watches moving; and the replay pages that began near a seq
        // where views part.
        out.push_str("log truncations, delivery gaps, relay watches, nearby replay pages, per node:\n");
        let near = |line: &str| {
            line.contains("replay page")
                && seqs.iter().any(|s| (s.saturating_sub(3)..=*s).any(|f| line.contains(&format!("from={f} "))))
        };
        for path in &files {
            let Ok(text) = std::fs::read_to_string(path) else { continue };
            let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let rare = text.lines().filter(|l| {
                l.contains("log entries truncated")
                    || l.contains("gap before a live message")
                    || l.contains("relay watch")
                    || l.contains("snapshot installed")
                    || l.contains("state machine opened")
                    || l.contains("snapshot install a stop interrupted")
                    || near(l)
            });
            for line in rare.take(APPLIED_SHOWN * 4) {
                out.push_str(&format!("  {name}: {line}\n"));
            }
        }
        for seq in seqs {
            out.push_str(&format!("applied entries answering seq {seq}, per node:\n"));
            let needles = [format!("seq: {seq},"), format!("seq: {seq} }}")];
            for path in &files {
                let Ok(text) = std::fs::read_to_string(path) else { continue };
                let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                // Each matching entry with the entry its copy applied just
                // before it in the same shard: where two copies part, that
                // one says what the other copy made of the entry between.
                let mut before: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
                let mut shown = 0;
                for line in text.lines().filter(|l| l.contains("applied") && l.contains("log_id=")) {
                    let shard = line.split_whitespace().find(|w| w.starts_with("shard=")).unwrap_or("").to_string();
                    let at = needles.iter().find_map(|n| line.find(n.as_str()));
                    if let Some(at) = at
                        && shown < APPLIED_SHOWN
                    {
                        shown += 1;
                        if let Some(prev) = before.get(&shard) {
                            let prev: String = prev.chars().take(300).collect();
                            out.push_str(&format!("  {name}: (before) {prev}\n"));
                        }
                        // The head (time, shard, log id) and the results near the match.
                        let head: String = line.chars().take(160).collect();
                        let near = line.get(at.saturating_sub(120)..(at + 80).min(line.len())).unwrap_or(&line[at..]);
                        out.push_str(&format!("  {name}: {head} … {near}\n"));
                    }
                    before.insert(shard, line);
                }
            }
        }
        out
    }

    /// Polls until healthy (bounded by `timeout`).
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match self.unhealthy().await {
                None => return Ok(start.elapsed()),
                Some(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the cluster was not healthy within {timeout:?}; last: {last}")
    }

    /// Waits until the cluster is healthy and a view of it names an owner
    /// for every room: a shard leadership hand-off (drain, balancing) leaves
    /// a room without one for a moment, even right after a healthy check.
    /// Answers how long that took and the view.
    pub async fn healthy_view(&self, timeout: Duration) -> Result<(Duration, Value)> {
        let start = Instant::now();
        loop {
            self.wait_healthy(timeout.saturating_sub(start.elapsed())).await?;
            let (_, view) = self.view_any().await?;
            let own = owners(&view);
            if self.rooms.iter().all(|room| own.contains_key(room)) {
                return Ok((start.elapsed(), view));
            }
            if start.elapsed() >= timeout {
                bail!("no view within {timeout:?} named an owner of every room; last: {own:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded by [`ROOM_RECOVERY`]) until every room answered a
    /// load send issued at or after `since`; a room that does not is noted
    /// as a violation. Answers whether every room did.
    pub async fn wait_rooms(&self, since: Instant, after: &str) -> bool {
        let start = Instant::now();
        let mut missing: Vec<String> = Vec::new();
        while start.elapsed() < ROOM_RECOVERY {
            let sends = self.book.snapshot();
            missing = self
                .rooms
                .iter()
                .filter(|room| {
                    !sends.iter().any(|s| {
                        s.room == **room
                            && s.probe_of.is_none()
                            && s.issued >= since
                            && matches!(s.outcome, Some(Outcome::Answered { .. }))
                    })
                })
                .cloned()
                .collect();
            if missing.is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let owners = match self.view_any().await {
            Ok((_, v)) => format!("{:?}", owners(&v)),
            Err(e) => format!("unknown ({e:#})"),
        };
        let v = format!(
            "UNAVAILABLE: rooms {missing:?} answered no send issued since t={:.2}s within {ROOM_RECOVERY:?} after \
             {after}, though the cluster was healthy (owners now {owners})",
            self.at(since)
        );
        eprintln!("[{:6.1}s]   {v}", self.secs());
        self.noted.lock().expect("noted lock").push(v);
        false
    }

    /// Every message of `room` stored on node `id`, oldest first.
    async fn history(&self, id: u64, room: &str) -> Result<Vec<Message>> {
        let addr = self.c.addr(id);
        let mut all: Vec<Message> = Vec::new();
        for _ in 0..1000 {
            let after = all.last().map_or(0, |m| m.seq);
            let v = self.get_json(&addr, &format!("/api/rooms/{room}/messages?after={after}&limit=500")).await?;
            let page: Vec<Message> = serde_json::from_value(v).context("a history page")?;
            let done = page.len() < 500;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
        bail!("{room} on node {id}: more than 1000 pages")
    }
}

/// Room → owner node, from a cluster view.
pub fn owners(view: &Value) -> BTreeMap<String, u64> {
    view["rooms"]
        .as_array()
        .map(|rs| {
            rs.iter().filter_map(|r| Some((r["room"].as_str()?.to_string(), r["owner_node"].as_u64()?))).collect()
        })
        .unwrap_or_default()
}

/// The load: each client sends at its share of the rate, to the rooms in turn.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
    /// Sends per second per room.
    per_room_rate: f64,
}

/// Starts `rate` sends per second in all, spread over the clients.
pub fn start_load(w: &World, rate: f64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let n = w.clients.len().max(1);
    let period = Duration::from_secs_f64(n as f64 / rate.max(0.1));
    let mut tasks = Vec::new();
    for (idx, client) in w.clients.iter().enumerate() {
        let client = client.clone();
        let user = w.users[idx].name.clone();
        let rooms = w.rooms.clone();
        let book = w.book.clone();
        let stop = stop.clone();
        let offset = period.mul_f64(idx as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            let outstanding = Arc::new(AtomicUsize::new(0));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut k = 0usize;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if outstanding.load(Ordering::SeqCst) >= OUTSTANDING_CAP {
                    book.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let room = rooms[(idx + k) % rooms.len()].clone();
                let client_id = format!("c{idx}-{k}");
                let body = format!("{client_id} from {user} to {room}");
                k += 1;
                let i = book.push(SendRec {
                    user: user.clone(),
                    room: room.clone(),
                    client_id: client_id.clone(),
                    body: body.clone(),
                    issued: Instant::now(),
                    probe_of: None,
                    outcome: None,
                });
                outstanding.fetch_add(1, Ordering::SeqCst);
                let (client, book, outstanding) = (client.clone(), book.clone(), outstanding.clone());
                tokio::spawn(async move {
                    let r = client.send_with_id(&room, &body, &client_id).await;
                    book.resolve(i, r);
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }));
    }
    Load { stop, tasks, started: Instant::now(), per_room_rate: rate / w.rooms.len().max(1) as f64 }
}

/// Stops issuing sends and waits (bounded) until every send has an outcome.
pub async fn stop_load(w: &World, load: Load) -> Result<LoadWindow> {
    load.stop.store(true, Ordering::SeqCst);
    let window = LoadWindow { started: load.started, stopped: Instant::now(), per_room_rate: load.per_room_rate };
    for t in load.tasks {
        tokio::time::timeout(Duration::from_secs(30), t).await.context("a load task did not stop")??;
    }
    let start = Instant::now();
    let bound = Duration::from_secs(60);
    while w.book.unresolved() > 0 && start.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[{:6.1}s] load stopped; {} sends still unresolved after {:?}",
        w.secs(),
        w.book.unresolved(),
        start.elapsed()
    );
    Ok(window)
}

/// Gathers what the run left: waits (bounded by [`CONVERGE_WAIT`]) until
/// every node holds each room up to its most answered seq and all nodes
/// agree on the length, reads every history, then waits (as long again)
/// until every client saw each room's last message, and takes what they saw.
pub async fn observe(w: &World, executed: &[Executed], window: LoadWindow) -> Result<Observed> {
    let sends = w.book.snapshot();
    let mut max_answered: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &sends {
        if let Some(Outcome::Answered { seq, .. }) = s.outcome {
            let e = max_answered.entry(s.room.as_str()).or_default();
            *e = (*e).max(seq);
        }
    }
    let ids = w.live();
    let started = Instant::now();
    let mut histories: BTreeMap<String, BTreeMap<u64, Vec<Message>>> = BTreeMap::new();
    loop {
        let mut settled = true;
        for room in &w.rooms {
            let mut per_node = BTreeMap::new();
            for &id in &ids {
                per_node.insert(id, w.history(id, room).await.with_context(|| format!("history of {room} on {id}"))?);
            }
            let lens: BTreeSet<usize> = per_node.values().map(Vec::len).collect();
            let want = max_answered.get(room.as_str()).copied().unwrap_or(0) as usize;
            if lens.len() != 1 || lens.iter().any(|l| *l < want) {
                settled = false;
            }
            histories.insert(room.clone(), per_node);
        }
        if settled || started.elapsed() > CONVERGE_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut observed = Observed {
        start: w.start,
        sends,
        histories,
        clients: Vec::new(),
        executed: executed.to_vec(),
        window,
        noted: w.noted.lock().expect("noted lock").clone(),
    };
    let last: BTreeMap<String, u64> =
        references(&observed).into_iter().map(|(room, h)| (room, h.last().map_or(0, |m| m.seq))).collect();
    let started = Instant::now();
    loop {
        let behind = w.delivered.iter().any(|d| {
            let seen = d.seen();
            last.iter().any(|(room, last)| seen.messages.get(room).and_then(|v| v.last()).map_or(0, |m| m.seq) < *last)
        });
        if !behind || started.elapsed() > CONVERGE_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    observed.clients = w.users.iter().zip(&w.delivered).map(|(u, d)| (u.name.clone(), d.seen().clone())).collect();
    Ok(observed)
}
