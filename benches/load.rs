//! The load-test harness: starts a real `palaver node` (release build) on
//! 127.0.0.1 and drives it over WebSocket.
//!
//! ```text
//! cargo bench --bench load -- [sends|fanout|connections|all] [--senders N] [--secs S]
//!                             [--members M] [--conns C] [--users U] [--rate R]
//! ```
//!
//! Scenarios:
//! - `sends`: answered sends/s with 1 and with `--senders` concurrent
//!   senders (each waits for its answer before sending again), with latency.
//! - `fanout`: one room, `--members` subscribed sockets, one pipelined
//!   sender; deliveries/s and end-to-end latency.
//! - `connections`: `--conns` idle authenticated WebSockets, each subscribed
//!   to one room; the node's RSS per connection.
//! - `relay`: one node behind the balancer: answered sends/s and latency with
//!   `--senders` senders direct and through the balancer, then `--conns`
//!   idle connections through it and the balancer's RSS per connection.
//! - `cluster`: a three-node cluster; delivery latency at `--rate` msg/s to a
//!   receiver on the sender's node and on the other nodes, then answered
//!   sends/s with majority acks for 1 room and for 100 rooms (`--senders`
//!   senders spread over the nodes, 16 sends in flight each).
//!
//! Every loop is bounded in count and time. Results print as a table and go
//! to `target/bench-results/load.json`.

use std::collections::HashMap;
use std::io::BufRead;
use std::io::BufReader;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use futures_util::SinkExt;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::Value;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Options from the command line.
struct Options {
    scenario: String,
    senders: usize,
    secs: u64,
    members: usize,
    conns: usize,
    users: usize,
    rate: u64,
}

fn options() -> Result<Options> {
    let mut o =
        Options { scenario: "all".into(), senders: 50, secs: 10, members: 1000, conns: 10_000, users: 1000, rate: 500 };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<usize> {
            args.next().with_context(|| format!("{name} needs a value"))?.parse().with_context(|| name.to_string())
        };
        match a.as_str() {
            "--senders" => o.senders = value("--senders")?,
            "--secs" => o.secs = value("--secs")? as u64,
            "--members" => o.members = value("--members")?,
            "--conns" => o.conns = value("--conns")?,
            "--users" => o.users = value("--users")?,
            "--rate" => o.rate = value("--rate")? as u64,
            s if !s.starts_with('-') => o.scenario = s.to_string(),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// A node process for the duration of a scenario.
struct NodeProcess {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Client limits raised so the harness measures the server, not its limiter.
const LIMITS: &str = "[limits]\nsend_rate_per_sec = 1000000.0\nsend_burst = 1000000\nlogin_per_account_per_min = 1000000\n\
     login_per_address_per_min = 1000000\nregister_per_address_per_min = 1000000\noutbound_queue = 65536\n";

fn spawn_node(args: &[&std::ffi::OsStr]) -> Result<(Child, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palaver"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting palaver node")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.split("ready: http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                sent = true;
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(120)).context("node did not get ready")?;
    Ok((child, addr))
}

/// A free 127.0.0.1 port for TCP and UDP alike (released before use).
fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

impl NodeProcess {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("bench.toml");
        std::fs::write(&config, LIMITS)?;
        let data = dir.path().join("data");
        let args = [
            "node".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ];
        let (child, addr) = spawn_node(&args)?;
        Ok(Self { child, addr, _dir: dir })
    }

    /// Starts a balancer in front of one node.
    fn start_balancer(node_addr: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("balancer.toml");
        std::fs::write(
            &config,
            format!(
                "[balancer]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndiscover = false\n\
                 [[node]]\nid = 1\nclient = \"{node_addr}\"\npeer = \"127.0.0.1:9\"\n"
            ),
        )?;
        let args = ["balancer".as_ref(), "--config".as_ref(), config.as_os_str()];
        let (child, addr) = spawn_node(&args)?;
        Ok(Self { child, addr, _dir: dir })
    }

    /// Starts an `n`-node cluster; the first process keeps the folder alive.
    fn start_cluster(n: u64) -> Result<Vec<Self>> {
        let dir = tempfile::tempdir()?;
        let mut config =
            format!("[cluster]\ndata_dir = {:?}\ntls_dir = {:?}\n", dir.path().join("data"), dir.path().join("tls"));
        for id in 1..=n {
            config.push_str(&format!(
                "[[node]]\nid = {id}\nclient = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\n",
                free_port()?,
                free_port()?
            ));
        }
        config.push_str(LIMITS);
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, config)?;
        let status = Command::new(env!("CARGO_BIN_EXE_palaver")).arg("certs").arg("--config").arg(&path).status()?;
        anyhow::ensure!(status.success(), "palaver certs failed");
        let mut starting = Vec::new();
        for id in 1..=n {
            let path = path.clone();
            starting.push(std::thread::spawn(move || {
                let id = id.to_string();
                let args = ["node".as_ref(), "--config".as_ref(), path.as_os_str(), "--id".as_ref(), id.as_ref()];
                spawn_node(&args)
            }));
        }
        let mut dir = Some(dir);
        let mut nodes = Vec::new();
        for s in starting {
            let (child, addr) = s.join().map_err(|_| anyhow::anyhow!("starting thread panicked"))??;
            let dir = dir.take().unwrap_or(tempfile::tempdir()?);
            nodes.push(Self { child, addr, _dir: dir });
        }
        Ok(nodes)
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }
}

/// HTTP calls the scenarios need.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    /// Registers and logs in `n` users concurrently; answers their tokens.
    async fn users(self: &Arc<Self>, prefix: &str, n: usize) -> Result<Vec<String>> {
        let gate = Arc::new(Semaphore::new(8));
        let mut tasks = Vec::new();
        for i in 0..n {
            let api = self.clone();
            let gate = gate.clone();
            let name = format!("{prefix}user{i}");
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let creds = json!({"username": name, "password": "bench-password"});
                api.post("/api/register", None, creds.clone()).await?;
                let login = api.post("/api/login", None, creds).await?;
                login["token"].as_str().map(str::to_string).context("no token")
            }));
        }
        let mut tokens = Vec::with_capacity(n);
        for t in tasks {
            tokens.push(t.await??);
        }
        Ok(tokens)
    }
}

async fn connect(addr: &str, token: &str) -> Result<Ws> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

/// Sends a command and waits for the reply with its id, skipping events.
async fn call(ws: &mut Ws, frame: Value) -> Result<Value> {
    let id = frame["id"].clone();
    ws.send(Message::Text(frame.to_string().into())).await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.context("reply timed out")?;
        let Some(Ok(Message::Text(t))) = msg else { bail!("socket ended: {msg:?}") };
        let v: Value = serde_json::from_str(&t)?;
        if v["id"] == id {
            if v["type"] == "error" {
                bail!("error reply: {v}");
            }
            return Ok(v);
        }
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// One result row.
struct Row {
    scenario: String,
    figure: String,
    value: f64,
    unit: &'static str,
}

async fn sends(
    target: &str,
    label: &str,
    api: &Arc<Api>,
    senders: usize,
    secs: u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let tag = label.replace(|c: char| !c.is_ascii_alphanumeric(), "").to_lowercase();
    let tokens = api.users(&format!("s{senders}{tag}x"), senders).await?;
    let room = format!("sends{senders}{tag}");
    api.post("/api/rooms", Some(&tokens[0]), json!({"room": room, "visibility": "public"})).await?;
    for t in &tokens[1..] {
        api.post(&format!("/api/rooms/{room}/join"), Some(t), json!({})).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut ws = connect(target, token).await?;
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut n = 0u64;
            while Instant::now() < deadline && n < 10_000_000 {
                let started = Instant::now();
                let frame = json!({"type": "send", "id": n, "room": room, "body": "benchmark message", "client_id": format!("{i}-{n}")});
                call(&mut ws, frame).await?;
                h.record(started.elapsed().as_micros() as u64)?;
                n += 1;
            }
            anyhow::Ok(h)
        }));
    }
    let started = Instant::now();
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let name = format!("sends{label}, {senders} sender(s)");
    rows.push(Row {
        scenario: name.clone(),
        figure: "answered sends/s".into(),
        value: all.len() as f64 / elapsed,
        unit: "/s",
    });
    rows.push(Row { scenario: name.clone(), figure: "send latency p50".into(), value: pct(&all, 0.5), unit: "ms" });
    rows.push(Row { scenario: name, figure: "send latency p99".into(), value: pct(&all, 0.99), unit: "ms" });
    Ok(())
}

async fn fanout(
    node: &NodeProcess,
    api: &Arc<Api>,
    members: usize,
    users: usize,
    secs: u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let users = users.clamp(1, members);
    let tokens = api.users("f", users).await?;
    let room = "fanout";
    api.post("/api/rooms", Some(&tokens[0]), json!({"room": room, "visibility": "public"})).await?;
    for t in &tokens[1..] {
        api.post(&format!("/api/rooms/{room}/join"), Some(t), json!({})).await?;
    }
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut receivers = Vec::new();
    for i in 0..members {
        let mut ws = connect(&node.addr, &tokens[i % users]).await?;
        call(&mut ws, json!({"type": "subscribe", "id": 1, "room": room})).await?;
        let received = received.clone();
        let stop = stop.clone();
        receivers.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            loop {
                let msg = tokio::select! {
                    _ = stop.notified() => break,
                    msg = ws.next() => msg,
                };
                let Some(Ok(Message::Text(t))) = msg else { break };
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "message" {
                    received.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent) = v["body"].as_str().and_then(|b| b.parse::<u64>().ok()) {
                        let now = epoch.elapsed().as_micros() as u64;
                        h.record(now.saturating_sub(sent))?;
                    }
                }
            }
            anyhow::Ok(h)
        }));
    }
    // One sender, pipelined: at most `WINDOW` sends unanswered at a time.
    const WINDOW: u64 = 64;
    let sender = connect(&node.addr, &tokens[0]).await?;
    let (mut tx, mut rx) = sender.split();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let (mut sent, mut answered) = (0u64, 0u64);
    while Instant::now() < deadline {
        while sent - answered < WINDOW {
            let body = epoch.elapsed().as_micros().to_string();
            let frame =
                json!({"type": "send", "id": sent, "room": room, "body": body, "client_id": format!("f{sent}")});
            tx.send(Message::Text(frame.to_string().into())).await?;
            sent += 1;
        }
        let msg = tokio::time::timeout(Duration::from_secs(30), rx.next()).await.context("sender timed out")?;
        let Some(Ok(Message::Text(t))) = msg else { bail!("sender socket ended") };
        let v: Value = serde_json::from_str(&t)?;
        if v["type"] == "ok" {
            answered += 1;
        } else if v["type"] == "error" {
            bail!("send failed: {v}");
        }
    }
    // Collect the answers still in flight, then let deliveries land; bounded.
    while answered < sent {
        let msg = tokio::time::timeout(Duration::from_secs(30), rx.next()).await.context("sender timed out")?;
        let Some(Ok(Message::Text(t))) = msg else { bail!("sender socket ended") };
        if serde_json::from_str::<Value>(&t)?["type"] == "ok" {
            answered += 1;
        }
    }
    let expected = answered * members as u64;
    let settle = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.notify_waiters();
    let mut all = Histogram::<u64>::new(3)?;
    for r in receivers {
        r.abort();
        if let Ok(Ok(h)) = r.await {
            all.add(h)?;
        }
    }
    let got = received.load(Ordering::Relaxed);
    let name = format!("fanout, {members} members");
    rows.push(Row {
        scenario: name.clone(),
        figure: "answered sends/s".into(),
        value: answered as f64 / elapsed,
        unit: "/s",
    });
    rows.push(Row { scenario: name.clone(), figure: "deliveries/s".into(), value: got as f64 / elapsed, unit: "/s" });
    rows.push(Row {
        scenario: name.clone(),
        figure: "delivered of expected".into(),
        value: got as f64 / expected.max(1) as f64 * 100.0,
        unit: "%",
    });
    rows.push(Row { scenario: name.clone(), figure: "delivery latency p50".into(), value: pct(&all, 0.5), unit: "ms" });
    rows.push(Row { scenario: name, figure: "delivery latency p99".into(), value: pct(&all, 0.99), unit: "ms" });
    Ok(())
}

async fn connections(
    target: &str,
    measured: &NodeProcess,
    label: &str,
    api: &Arc<Api>,
    conns: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let tokens = api.users(&format!("c{}", label.len()), 1).await?;
    let room = format!("idle{}", label.len());
    let _ = api.post("/api/rooms", Some(&tokens[0]), json!({"room": room, "visibility": "public"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = measured.rss_kib()?;
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(conns);
    let mut connect_times = Histogram::<u64>::new(3)?;
    for _ in 0..conns {
        let t = Instant::now();
        let mut ws = connect(target, &tokens[0]).await?;
        call(&mut ws, json!({"type": "subscribe", "id": 1, "room": room})).await?;
        connect_times.record(t.elapsed().as_micros() as u64)?;
        sockets.push(ws);
    }
    let ramp = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = measured.rss_kib()?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / conns as f64;
    let name = format!("connections{label}, {conns} idle");
    rows.push(Row { scenario: name.clone(), figure: "RSS per connection".into(), value: per / 1024.0, unit: "KiB" });
    rows.push(Row { scenario: name.clone(), figure: "RSS total".into(), value: after as f64 / 1024.0, unit: "MiB" });
    rows.push(Row {
        scenario: name.clone(),
        figure: "connect+subscribe p50".into(),
        value: pct(&connect_times, 0.5),
        unit: "ms",
    });
    rows.push(Row {
        scenario: name.clone(),
        figure: "connect+subscribe p99".into(),
        value: pct(&connect_times, 0.99),
        unit: "ms",
    });
    rows.push(Row { scenario: name, figure: "connections opened/s".into(), value: conns as f64 / ramp, unit: "/s" });
    drop(sockets);
    Ok(())
}

/// Delivery latency at a steady rate, to a receiver on the sender's node and
/// to receivers on the other nodes.
async fn cluster_latency(nodes: &[NodeProcess], rate: u64, secs: u64, rows: &mut Vec<Row>) -> Result<()> {
    let api = Arc::new(Api { http: reqwest::Client::new(), base: format!("http://{}", nodes[0].addr) });
    let tokens = api.users("lat", 2).await?;
    api.post("/api/rooms", Some(&tokens[0]), json!({"room": "latency", "visibility": "public"})).await?;
    let epoch = Instant::now();
    let mut receivers = Vec::new();
    for node in nodes {
        let mut ws = connect(&node.addr, &tokens[1]).await?;
        call(&mut ws, json!({"type": "subscribe", "id": 1, "room": "latency"})).await?;
        receivers.push(ws);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut ws in receivers {
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            while let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout_at((deadline + Duration::from_secs(3)).into(), ws.next()).await
            {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "message"
                    && let Some(sent) = v["body"].as_str().and_then(|b| b.parse::<u64>().ok())
                {
                    h.record((epoch.elapsed().as_micros() as u64).saturating_sub(sent))?;
                }
            }
            anyhow::Ok(h)
        }));
    }
    let sender = connect(&nodes[0].addr, &tokens[0]).await?;
    let (mut tx, mut rx) = sender.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut n = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        let body = epoch.elapsed().as_micros().to_string();
        let frame = json!({"type": "send", "id": n, "room": "latency", "body": body, "client_id": format!("l{n}")});
        tx.send(Message::Text(frame.to_string().into())).await?;
        n += 1;
    }
    let mut hists = Vec::new();
    for t in tasks {
        hists.push(t.await??);
    }
    drain.abort();
    let name = format!("cluster latency, {rate} msg/s");
    let same = &hists[0];
    let mut cross = Histogram::<u64>::new(3)?;
    for h in &hists[1..] {
        cross.add(h)?;
    }
    rows.push(Row { scenario: name.clone(), figure: "same-node p50".into(), value: pct(same, 0.5), unit: "ms" });
    rows.push(Row { scenario: name.clone(), figure: "same-node p99".into(), value: pct(same, 0.99), unit: "ms" });
    rows.push(Row { scenario: name.clone(), figure: "cross-node p50".into(), value: pct(&cross, 0.5), unit: "ms" });
    rows.push(Row { scenario: name.clone(), figure: "cross-node p99".into(), value: pct(&cross, 0.99), unit: "ms" });
    rows.push(Row {
        scenario: name,
        figure: "messages received".into(),
        value: (same.len() + cross.len()) as f64,
        unit: "",
    });
    Ok(())
}

/// Answered sends/s with majority acks: `senders` senders spread over the
/// nodes, over `rooms` rooms.
async fn cluster_sends(
    nodes: &[NodeProcess],
    rooms: usize,
    senders: usize,
    secs: u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let api = Arc::new(Api { http: reqwest::Client::new(), base: format!("http://{}", nodes[0].addr) });
    let tokens = api.users(&format!("cs{rooms}x"), senders).await?;
    for r in 0..rooms {
        api.post("/api/rooms", Some(&tokens[0]), json!({"room": format!("cs{rooms}-{r}"), "visibility": "public"}))
            .await?;
    }
    for t in &tokens[1..] {
        for r in 0..rooms {
            api.post(&format!("/api/rooms/cs{rooms}-{r}/join"), Some(t), json!({})).await?;
        }
    }
    const WINDOW: u64 = 16;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let ws = connect(&nodes[i % nodes.len()].addr, token).await?;
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let (mut sent, mut answered) = (0u64, 0u64);
            let mut h = Histogram::<u64>::new(3)?;
            let mut started: HashMap<u64, Instant> = HashMap::new();
            while Instant::now() < deadline || answered < sent {
                while sent - answered < WINDOW && Instant::now() < deadline {
                    let room = format!("cs{rooms}-{}", (sent as usize + i) % rooms);
                    let frame = json!({"type": "send", "id": sent, "room": room, "body": "x", "client_id": format!("{i}-{sent}")});
                    started.insert(sent, Instant::now());
                    tx.send(Message::Text(frame.to_string().into())).await?;
                    sent += 1;
                }
                let msg = tokio::time::timeout(Duration::from_secs(30), rx.next()).await.context("answer timed out")?;
                let Some(Ok(Message::Text(t))) = msg else { bail!("socket ended") };
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "ok" {
                    answered += 1;
                    if let Some(t0) = v["id"].as_u64().and_then(|id| started.remove(&id)) {
                        h.record(t0.elapsed().as_micros() as u64)?;
                    }
                } else if v["type"] == "error" {
                    bail!("send failed: {v}");
                }
            }
            anyhow::Ok(h)
        }));
    }
    let started = Instant::now();
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let name = format!("cluster sends, {rooms} room(s)");
    rows.push(Row {
        scenario: name.clone(),
        figure: "answered sends/s (majority)".into(),
        value: all.len() as f64 / elapsed,
        unit: "/s",
    });
    rows.push(Row { scenario: name.clone(), figure: "answer latency p50".into(), value: pct(&all, 0.5), unit: "ms" });
    rows.push(Row { scenario: name, figure: "answer latency p99".into(), value: pct(&all, 0.99), unit: "ms" });
    Ok(())
}

fn machine_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let o = options()?;
    // Thousands of client sockets: one descriptor each.
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, 1 << 20, 1 << 20);
    let _ = rlimit::increase_nofile_limit(1 << 20);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        let scenarios: Vec<&str> = match o.scenario.as_str() {
            "all" => vec!["sends", "fanout", "connections"],
            s => vec![s],
        };
        for s in scenarios {
            if s == "cluster" {
                let nodes = NodeProcess::start_cluster(3)?;
                eprintln!("running cluster (load average before: {})", machine_load());
                cluster_latency(&nodes, o.rate, o.secs, &mut rows).await?;
                cluster_sends(&nodes, 1, o.senders, o.secs, &mut rows).await?;
                cluster_sends(&nodes, 100, o.senders, o.secs, &mut rows).await?;
                continue;
            }
            let node = NodeProcess::start()?;
            let api = Arc::new(Api { http: reqwest::Client::new(), base: format!("http://{}", node.addr) });
            eprintln!("running {s} (load average before: {})", machine_load());
            match s {
                "sends" => {
                    sends(&node.addr, "", &api, 1, o.secs, &mut rows).await?;
                    sends(&node.addr, "", &api, o.senders, o.secs, &mut rows).await?;
                }
                "relay" => {
                    let balancer = NodeProcess::start_balancer(&node.addr)?;
                    sends(&node.addr, " direct", &api, o.senders, o.secs, &mut rows).await?;
                    sends(&balancer.addr, " via balancer", &api, o.senders, o.secs, &mut rows).await?;
                    connections(&balancer.addr, &balancer, " via balancer (balancer RSS)", &api, o.conns, &mut rows)
                        .await?;
                }
                "fanout" => fanout(&node, &api, o.members, o.users, o.secs, &mut rows).await?,
                "connections" => connections(&node.addr, &node, " (node RSS)", &api, o.conns, &mut rows).await?,
                other => bail!("unknown scenario {other}: sends, fanout, connections, relay, cluster or all"),
            }
        }
        anyhow::Ok(())
    })?;
    println!("{:<32} {:<28} {:>14}", "scenario", "figure", "value");
    for r in &rows {
        println!("{:<32} {:<28} {:>12.2} {}", r.scenario, r.figure, r.value, r.unit);
    }
    let json: Vec<Value> = rows
        .iter()
        .map(|r| json!({"scenario": r.scenario, "figure": r.figure, "value": r.value, "unit": r.unit}))
        .collect();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&out)?;
    let meta: HashMap<&str, Value> = HashMap::from([
        ("load_average_after", json!(machine_load())),
        ("cores", json!(std::thread::available_parallelism().map_or(0, |n| n.get()))),
    ]);
    std::fs::write(out.join("load.json"), serde_json::to_string_pretty(&json!({"rows": json, "machine": meta}))?)?;
    eprintln!("results written to {}", out.join("load.json").display());
    Ok(())
}
