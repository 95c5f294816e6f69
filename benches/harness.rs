//! Shared code of the load harness (`benches/load.rs`) and of its smoke run
//! (`tests/bench_smoke.rs`): starting the systems under test as processes on
//! 127.0.0.1 (Palaver nodes and clusters through `palaver-testkit`, the
//! balancer, the peers of `benches/peers/`, HAProxy), dialing them, and the
//! load engines (connection ramps, open-loop fan-out with rate steps, idle RSS).
//!
//! Every loop here is bounded in count and in time.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::ffi::OsString;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use futures_util::SinkExt;
use futures_util::StreamExt;
use futures_util::stream::SplitSink;
use hdrhistogram::Histogram;
use palaver_balancer::TlsFiles;
use palaver_balancer::config::BalancerSection;
use palaver_balancer::config::NodeEntry;
use palaver_node::config::Config;
use palaver_protocol::Command as PalaverCommand;
use palaver_protocol::Credentials;
use palaver_protocol::Done;
use palaver_protocol::FrameId;
use palaver_protocol::Login;
use palaver_protocol::NewRoom;
use palaver_protocol::Reply;
use palaver_testkit::Cluster;
use palaver_testkit::Launch;
use palaver_testkit::NodeProcess;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// The folder of the peers (`benches/peers`).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers")
}

/// Where results, charts and server logs go.
pub fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results")
}

// ---------------------------------------------------------------- machine --

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Cores of the machine (not of this process's affinity mask).
pub fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| s.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count())
        .unwrap_or(1)
        .max(1)
}

/// The CPU model, as `/proc/cpuinfo` names it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string())
}

/// The open-files hard limit of this process.
pub fn nofile_hard() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(_, hard)| hard)
}

/// Raises the open-files soft limit to the hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

static PINNED: AtomicBool = AtomicBool::new(false);

/// Pins this process (and every thread and child it makes from now on) to
/// core 1, and makes the servers started from now on run on core 0 alone,
/// when `taskset` is there and the machine has two cores or more. Call it
/// before the runtime starts. Answers whether pinning is on.
pub fn pin_generator() -> bool {
    if machine_cores() < 2 {
        return false;
    }
    let pid = std::process::id().to_string();
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    PINNED.store(ok, Ordering::Relaxed);
    ok
}

/// Whether servers run on core 0 and the load generator on core 1.
pub fn pinned() -> bool {
    PINNED.load(Ordering::Relaxed)
}

/// What a server process runs under: `taskset -c 0` when pinning is on.
fn server_wrapper() -> Vec<OsString> {
    if pinned() { ["taskset", "-c", "0"].map(OsString::from).to_vec() } else { Vec::new() }
}

/// A command for a server process, under [`server_wrapper`].
fn server_command(program: impl AsRef<OsStr>) -> Command {
    match server_wrapper().split_first() {
        Some((wrapper, args)) => {
            let mut c = Command::new(wrapper);
            c.args(args).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Processes of this run (servers and load-generator shards), for the CPU
/// accounting of [`CpuMeter`].
static OURS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register_pid(pid: u32) {
    OURS.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn unregister_pid(pid: u32) {
    OURS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid);
}

/// CPU ticks (user + system) a process has used, threads included.
pub fn process_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0 };
    // After the command name: state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// (busy, total) ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, busy + get(3) + get(4))
}

fn servers_ticks() -> u64 {
    let pids = OURS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    pids.iter().map(|p| process_ticks(&p.to_string())).sum()
}

/// Measures, over an interval, where the CPU went: this load generator, the
/// processes it started (servers, shards), and everything else on the
/// machine. "Other" is the load each figure is reported with (a busy machine
/// skews figures); the first two tell which side saturated.
pub struct CpuMeter {
    busy: u64,
    total: u64,
    me: u64,
    servers: u64,
}

/// Cores busy during a [`CpuMeter`] interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// This process (the load generator).
    pub generator: f64,
    /// The processes it started.
    pub servers: f64,
    /// Everything else.
    pub other: f64,
}

impl CpuMeter {
    /// Starts an interval.
    pub fn start() -> Self {
        let (busy, total) = machine_ticks();
        Self { busy, total, me: process_ticks("self"), servers: servers_ticks() }
    }

    /// Cores busy since `start`, by whom.
    pub fn read(&self) -> Cpu {
        let (busy, total) = machine_ticks();
        let me = process_ticks("self").saturating_sub(self.me) as f64;
        let servers = servers_ticks().saturating_sub(self.servers) as f64;
        let elapsed = total.saturating_sub(self.total) as f64 / machine_cores() as f64;
        if elapsed <= 0.0 {
            return Cpu::default();
        }
        let other = (busy.saturating_sub(self.busy) as f64 - me - servers).max(0.0);
        Cpu { generator: me / elapsed, servers: servers / elapsed, other: other / elapsed }
    }

    /// Cores busy with other work since `start` (0.0 up to the core count).
    pub fn other_cores(&self) -> f64 {
        self.read().other
    }
}

/// Waits (at most `limit`) until the servers this harness started are
/// nearly idle, so one measurement does not pay for the backlog of the one
/// before it on the same servers; answers how long it waited.
pub async fn settle(limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        let meter = CpuMeter::start();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if meter.read().servers < 0.05 {
            break;
        }
    }
    started.elapsed()
}

// -------------------------------------------------------------- processes --

/// A server process for the duration of a measurement; killed on drop.
pub struct Server {
    process: Process,
    pid: u32,
    /// Address clients connect to (`127.0.0.1:PORT`).
    pub addr: String,
    /// The admin address, for a Palaver balancer.
    pub admin: Option<String>,
    /// What it is, for the logs and tables.
    pub label: String,
    _dir: Option<Arc<tempfile::TempDir>>,
}

/// What a [`Server`] runs: Palaver nodes are the test kit's processes.
enum Process {
    /// A one-node server.
    Alone(palaver_testkit::Node),
    /// A node of a cluster.
    Member(NodeProcess),
    /// Any other program.
    Other(Child),
}

impl Drop for Server {
    fn drop(&mut self) {
        unregister_pid(self.pid);
        match &mut self.process {
            Process::Alone(node) => node.kill(),
            Process::Member(p) => p.kill(),
            Process::Other(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Server {
    /// The folder the server's cluster keeps its files in (nodes' data in
    /// `data/node-N`), for a Palaver cluster.
    pub fn root(&self) -> Option<&std::path::Path> {
        self._dir.as_deref().map(|d| d.path())
    }

    fn new(process: Process, pid: u32, addr: String, label: &str, dir: Option<Arc<tempfile::TempDir>>) -> Server {
        register_pid(pid);
        Server { process, pid, addr, admin: None, label: label.into(), _dir: dir }
    }

    /// The process id (the server's own: `taskset` execs it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let running = match &mut self.process {
            Process::Alone(node) => node.process_mut().is_running(),
            Process::Member(p) => p.is_running(),
            Process::Other(child) => child.try_wait()?.is_none(),
        };
        anyhow::ensure!(running, "{} exited (log in {})", self.label, log_path(&self.label).display());
        Ok(())
    }
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

fn log_path(label: &str) -> PathBuf {
    let name: String = label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    results_dir().join("logs").join(format!("{name}.log"))
}

/// Starts `cmd`, sends its stderr to `target/bench-results/logs/LABEL.log`,
/// and waits (at most `within`) for a stdout line with `ready: ADDR`
/// (`http://` dropped). Answers the child and the whole ready line.
fn spawn_ready(mut cmd: Command, label: &str, within: Duration) -> Result<(Child, String)> {
    let log = log_path(label);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let err = std::fs::File::create(&log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {label}: {cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && line.contains("ready: ") {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    match rx.recv_timeout(within) {
        Ok(line) => Ok((child, line)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            bail!("{label} did not get ready within {within:?}; its log ends:\n{}", tail.join("\n"))
        }
    }
}

/// The address after `marker` on a ready line (`http://` dropped).
fn address_after(line: &str, marker: &str) -> Option<String> {
    let rest = line.split(marker).nth(1)?;
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    Some(rest.split(|c: char| c.is_whitespace() || c == ')' || c == ',').next()?.to_string())
}

/// A plain HTTP/1.1 GET, synchronous: (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let sock: SocketAddr = addr.parse()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((status, body))
}

/// Polls `check` every 100 ms until it answers true, at most `within`.
fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not within {within:?}")
}

/// The nodes' config: client limits raised so the harness measures the
/// server, not its limiter.
fn bench_config() -> Config {
    const HIGH: u32 = 1_000_000;
    let mut c = palaver_testkit::config::raised_limits(HIGH, HIGH);
    let l = &mut c.limits;
    l.outbound_queue = 65_536;
    l.outbound_bytes = 64 << 20;
    l.max_connections_per_address = HIGH as usize;
    // PALAVER_TEST_SHARDS=N runs the nodes on N Raft shards (default: the node's).
    if let Some(n) = std::env::var(palaver_testkit::config::SHARDS_ENV).ok().and_then(|v| v.parse().ok()) {
        c.cluster.shards = n;
    }
    c
}

/// How long a Palaver process may take to print its ready line.
const READY: Duration = Duration::from_secs(120);

/// How the harness runs Palaver nodes: warnings only, every line in
/// `target/bench-results/logs/LABEL.log`, under [`server_wrapper`].
fn launch() -> Launch {
    Launch {
        // PALAVER_BENCH_LOG: the nodes' RUST_LOG (logs in target/bench-results/logs).
        env: vec![("RUST_LOG".into(), std::env::var("PALAVER_BENCH_LOG").unwrap_or_else(|_| "warn".into()).into())],
        wrapper: server_wrapper(),
        log_dir: Some(results_dir().join("logs")),
        quiet: true,
        ready_within: Some(READY),
    }
}

/// A single Palaver node (a one-member cluster) on a free port.
pub async fn palaver_node(label: &str) -> Result<Server> {
    let node = palaver_testkit::Node::start_as(label, bench_config(), &launch()).await?;
    let (addr, pid) = (node.addr().to_string(), node.pid().context("the node runs")?);
    let node = Server::new(Process::Alone(node), pid, addr, label, None);
    wait_until("node healthy", Duration::from_secs(30), || http_get(&node.addr, "/healthz").is_ok_and(|r| r.0 == 200))?;
    Ok(node)
}

/// An `n`-node Palaver cluster (majority acks), every node healthy.
pub async fn palaver_cluster(n: u64, label: &str) -> Result<Vec<Server>> {
    let cluster = Cluster::builder(n).config(bench_config()).launch(launch()).name(label).start().await?;
    let addrs: Vec<String> = cluster.ids().into_iter().map(|id| cluster.addr(id)).collect();
    let (processes, dir) = cluster.into_parts();
    let dir = dir.map(Arc::new);
    let mut nodes = Vec::new();
    for (p, addr) in processes.into_iter().zip(addrs) {
        let (pid, name) = (p.pid().context("a node runs")?, p.name().to_string());
        nodes.push(Server::new(Process::Member(p), pid, addr, &name, dir.clone()));
    }
    for node in &nodes {
        wait_until("cluster healthy (a metadata leader)", Duration::from_secs(60), || {
            http_get(&node.addr, "/healthz").is_ok_and(|r| r.0 == 200)
        })?;
    }
    Ok(nodes)
}

/// A Palaver balancer in front of `nodes` (client addresses), with
/// `strategy` (`round-robin`, `weighted`, `least-connections`), every node up.
pub fn palaver_balancer(nodes: &[&str], strategy: &str, label: &str) -> Result<Server> {
    palaver_balancer_with(nodes, strategy, label, None)
}

/// The Palaver balancer in front of `nodes`, terminating TLS with `tls`
/// when given.
pub fn palaver_balancer_with(nodes: &[&str], strategy: &str, label: &str, tls: Option<&TlsFiles>) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("balancer.toml");
    let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let section = BalancerSection {
        listen: Some(any_port),
        admin: Some(any_port),
        discover: Some(false),
        health_interval_ms: Some(500),
        max_connections_per_address: Some(1_000_000),
        ..BalancerSection::default()
    };
    let entries = nodes
        .iter()
        .zip(1..)
        .map(|(n, id)| Ok(NodeEntry { id, client: n.parse()?, weight: 1 }))
        .collect::<Result<Vec<_>>>()?;
    let mut text = palaver_testkit::config::balancer_file(&section, &entries)?;
    if let Some(t) = tls {
        text.push_str(&format!(
            "\n[public]\ntls_cert = {:?}\ntls_key = {:?}\n",
            t.cert.display().to_string(),
            t.key.display().to_string()
        ));
    }
    std::fs::write(&config, text)?;
    let mut cmd = server_command(env!("CARGO_BIN_EXE_palaver"));
    cmd.args(["balancer".as_ref(), "--config".as_ref(), config.as_os_str(), "--strategy".as_ref(), strategy.as_ref()]);
    cmd.env("RUST_LOG", "warn");
    let (child, line) = spawn_ready(cmd, label, READY)?;
    let (addr, admin) = palaver_balancer::ready::parse_ready_line(&line).context("the balancer's ready line")?;
    let pid = child.id();
    let mut b = Server::new(Process::Other(child), pid, addr.to_string(), label, Some(Arc::new(dir)));
    b.admin = Some(admin.to_string());
    wait_until("balancer sees every node up", Duration::from_secs(20), || {
        http_get(&admin.to_string(), "/balancer/nodes")
            .is_ok_and(|(s, body)| s == 200 && body.matches("\"health\":\"up\"").count() == nodes.len())
    })?;
    Ok(b)
}

/// Connections the balancer holds per node, from its admin address.
pub fn balancer_active(balancer: &Server) -> Result<Vec<(String, u64)>> {
    balancer_counts(balancer, |n| n["active"].as_u64().unwrap_or(0))
}

/// Connections the balancer has routed to each node since it started
/// (relayed or named by `/assign`), from its admin address.
pub fn balancer_routed(balancer: &Server) -> Result<Vec<(String, u64)>> {
    balancer_counts(balancer, |n| n["routed"].as_u64().unwrap_or(0) + n["assigned"].as_u64().unwrap_or(0))
}

/// One count per node of the balancer's `/balancer/nodes`, by node address.
fn balancer_counts(balancer: &Server, count: impl Fn(&Value) -> u64) -> Result<Vec<(String, u64)>> {
    let admin = balancer.admin.as_deref().context("not a balancer")?;
    let (_, body) = http_get(admin, "/balancer/nodes")?;
    let v: Value = serde_json::from_str(&body)?;
    Ok(v.as_array()
        .context("node list")?
        .iter()
        .map(|n| (n["address"].as_str().unwrap_or_default().to_string(), count(n)))
        .collect())
}

/// The node address `GET /assign` on `balancer` names (`host:port` of its
/// `ws` URL), read as the client library reads it.
pub fn assigned_node(balancer: &str) -> Result<String> {
    let (status, body) = http_get(balancer, "/assign")?;
    anyhow::ensure!(status == 200, "/assign answered {status}: {body}");
    let v: Value = serde_json::from_str(&body).context("/assign's answer")?;
    palaver_client::assigned_node(balancer, &v)
        .with_context(|| format!("/assign named no ws://…/ws URL on {balancer}'s host: {body}"))
}

/// Why HAProxy cannot run here, if it cannot.
pub fn haproxy_missing() -> Option<String> {
    match Command::new("haproxy").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => None,
        _ => Some("haproxy is not installed (run benches/peers/setup.sh)".into()),
    }
}

/// HAProxy (Debian's package) in front of `nodes`: a config written here,
/// `mode tcp`, `balance roundrobin`, no health checks, foreground.
pub fn haproxy(nodes: &[&str], label: &str) -> Result<Server> {
    if let Some(why) = haproxy_missing() {
        bail!(why);
    }
    let dir = tempfile::tempdir()?;
    let port = palaver_testkit::ports::tcp_addrs(1)?.first().context("a free port")?.port();
    // Two descriptors per relayed connection, within this machine's limit.
    let maxconn = (nofile_hard().saturating_sub(200) / 2).clamp(100, 50_000);
    let mut cfg = format!(
        "global\n  maxconn {maxconn}\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10m\n  timeout server 10m\n\n\
         frontend bench\n  bind 127.0.0.1:{port}\n  maxconn {maxconn}\n  default_backend nodes\n\n\
         backend nodes\n  balance roundrobin\n"
    );
    for (i, n) in nodes.iter().enumerate() {
        cfg.push_str(&format!("  server n{} {n}\n", i + 1));
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let log = log_path(label);
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut cmd = server_command("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(log.with_extension("err.log"))?)
        .spawn()
        .context("starting haproxy")?;
    let (pid, addr) = (child.id(), format!("127.0.0.1:{port}"));
    let mut server = Server::new(Process::Other(child), pid, addr, label, Some(Arc::new(dir)));
    wait_until("haproxy listening", Duration::from_secs(10), || std::net::TcpStream::connect(&server.addr).is_ok())?;
    server.check_alive()?;
    Ok(server)
}

/// Why the Node.js peers cannot run here, if they cannot.
pub fn node_peers_missing() -> Option<String> {
    let ok = Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !ok.is_ok_and(|s| s.success()) {
        return Some("node (Node.js) is not installed".into());
    }
    let modules = peers_dir().join("node_modules");
    if !modules.join("ws").is_dir() || !modules.join("socket.io").is_dir() {
        return Some(format!("{} lacks ws and socket.io (run benches/peers/setup.sh)", modules.display()));
    }
    None
}

/// A peer script of `benches/peers` (`ws-server.js`, `socketio-server.js`)
/// on a free port.
pub fn node_peer(script: &str, label: &str) -> Result<Server> {
    if let Some(why) = node_peers_missing() {
        bail!(why);
    }
    let mut cmd = server_command("node");
    cmd.arg(peers_dir().join(script)).arg("0").current_dir(peers_dir());
    let (child, line) = spawn_ready(cmd, label, Duration::from_secs(20))?;
    let child_pid = child.id();
    let addr = address_after(&line, "ready: ").context("peer ready line")?;
    Ok(Server::new(Process::Other(child), child_pid, addr, label, None))
}

/// The bare tokio-tungstenite server: `exe --serve-bare 0 --read-buffer N`
/// (the load bench binary itself, see `benches/peers/bare.rs`).
pub fn bare_peer(exe: &Path, read_buffer: usize, label: &str) -> Result<Server> {
    let mut cmd = server_command(exe);
    cmd.args(["--serve-bare", "0", "--read-buffer", &read_buffer.to_string()]);
    let (child, line) = spawn_ready(cmd, label, Duration::from_secs(20))?;
    let child_pid = child.id();
    let addr = address_after(&line, "ready: ").context("bare ready line")?;
    Ok(Server::new(Process::Other(child), child_pid, addr, label, None))
}

// ------------------------------------------------------------------ HTTP --

/// The Palaver HTTP calls the scenarios need.
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// An API client for the node or balancer at `addr`.
    pub fn new(addr: &str) -> Arc<Self> {
        Arc::new(Self { http: reqwest::Client::new(), base: format!("http://{addr}") })
    }

    /// POSTs a JSON body (none when `None`); answers the JSON reply
    /// (null when empty).
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<T> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {text}");
        }
        Ok(serde_json::from_str(if text.is_empty() { "null" } else { &text })?)
    }

    /// GETs `path` with a token; answers the JSON reply.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, token: &str) -> Result<T> {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(token).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Uploads `bytes` as a file of `room`; answers the attachment's id.
    pub async fn upload(&self, room: &str, token: &str, bytes: Vec<u8>) -> Result<String> {
        let url = format!("{}/api/rooms/{room}/attachments?name=bench.bin", self.base);
        let resp = self
            .http
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("upload: {status} {text}");
        }
        let v: Value = serde_json::from_str(&text)?;
        v.get("id").and_then(Value::as_str).map(str::to_string).context("an upload answered no id")
    }

    /// Downloads attachment `id`; answers its length.
    pub async fn download(&self, id: &str, token: &str) -> Result<usize> {
        let resp = self.http.get(format!("{}/api/attachments/{id}", self.base)).bearer_auth(token).send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!("download: {status}");
        }
        Ok(bytes.len())
    }

    /// Registers and logs in `n` users (8 at a time); answers their tokens.
    pub async fn users(self: &Arc<Self>, prefix: &str, n: usize) -> Result<Vec<String>> {
        let gate = Arc::new(Semaphore::new(8));
        let mut tasks = Vec::new();
        for i in 0..n {
            let api = self.clone();
            let gate = gate.clone();
            let name = format!("{prefix}{i}");
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let creds = Credentials { username: name.as_str(), password: "bench-password" };
                api.post::<_, Value>("/api/register", None, Some(&creds)).await?;
                let login: Login = api.post("/api/login", None, Some(&creds)).await?;
                anyhow::Ok(login.token)
            }));
        }
        let mut tokens = Vec::with_capacity(n);
        for t in tasks {
            tokens.push(t.await??);
        }
        Ok(tokens)
    }

    /// Creates public `room` owned by `owner`; every other token joins it.
    pub async fn room(&self, room: &str, owner: &str, members: &[String]) -> Result<()> {
        let new = NewRoom { room, title: None, visibility: Some("public") };
        self.post::<_, Value>("/api/rooms", Some(owner), Some(&new)).await?;
        for t in members.iter().filter(|t| t.as_str() != owner) {
            self.post::<(), Value>(&format!("/api/rooms/{room}/join"), Some(t), None).await?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------- WebSockets --

/// How a client socket is made.
#[derive(Clone, Copy, Debug)]
pub struct Dial {
    /// Source address to bind (127.0.0.x), so that more than the ~28k
    /// ephemeral ports of one address can reach one server.
    pub src: Option<Ipv4Addr>,
    /// tungstenite's read buffer, allocated up front per socket (its default
    /// is 128 KiB: far too much for tens of thousands of sockets).
    pub read_buffer: usize,
}

impl Default for Dial {
    fn default() -> Self {
        Self { src: None, read_buffer: 16 * 1024 }
    }
}

/// Opens a WebSocket to `ws://addr{path}`, with a Bearer token if given.
pub async fn dial(addr: &str, path: &str, bearer: Option<&str>, d: Dial) -> Result<Ws> {
    let sock_addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = d.src {
        socket.bind(SocketAddr::new(ip.into(), 0)).with_context(|| format!("binding {ip}"))?;
    }
    let stream = socket.connect(sock_addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    if let Some(token) = bearer {
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    }
    let config = WebSocketConfig::default().read_buffer_size(d.read_buffer);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}

/// A Palaver command frame with the client's `id`.
pub fn palaver_frame(id: u64, cmd: PalaverCommand) -> Message {
    // A frame is strings and numbers: encoding cannot fail.
    Message::Text(serde_json::to_string(&cmd.frame(Some(id))).unwrap_or_default().into())
}

/// Whether a Palaver frame is an `error` reply.
pub fn is_error(text: &str) -> bool {
    matches!(serde_json::from_str::<Reply<Done>>(text), Ok(Reply::Error { .. }))
}

/// Sends a Palaver command and waits for the reply with its id, skipping
/// events (30 s at most).
pub async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    id: u64,
    cmd: PalaverCommand,
) -> Result<Value> {
    ws.send(palaver_frame(id, cmd)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next()).await.context("reply timed out")?;
        // Nodes ping idle sockets every 30 s; tungstenite answers by itself.
        if let Some(Ok(Message::Ping(_) | Message::Pong(_))) = msg {
            continue;
        }
        let Some(Ok(Message::Text(t))) = msg else { bail!("socket ended: {msg:?}") };
        let v: Value = serde_json::from_str(&t)?;
        if FrameId::deserialize(&v).ok().and_then(|f| f.id) == Some(id) {
            if is_error(&t) {
                bail!("error reply: {v}");
            }
            return Ok(v);
        }
    }
}

/// The Engine.IO v4 / Socket.IO opening over a WebSocket: the server's `0{…}`
/// open packet, our `40` (connect the default namespace), its `40{…}`.
pub async fn engine_io_open(ws: &mut Ws) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut opened = false;
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next()).await.context("Engine.IO open timed out")?;
        let Some(Ok(Message::Text(t))) = msg else { bail!("Socket.IO socket ended: {msg:?}") };
        if !opened && t.starts_with('0') {
            opened = true;
            ws.send(Message::Text("40".into())).await?;
        } else if opened && t.starts_with("40") {
            return Ok(());
        } else if t.as_str() == "2" {
            ws.send(Message::Text("3".into())).await?;
        } else if t.starts_with("44") {
            bail!("Socket.IO connect refused: {t}");
        }
    }
}

/// What a system under test speaks.
#[derive(Clone)]
pub enum Proto {
    /// Palaver's protocol: Bearer upgrade on `/ws`, `subscribe`, `send`.
    Palaver {
        /// Tokens receivers use (shared round-robin among sockets).
        receivers: Arc<Vec<String>>,
        /// Tokens senders use: members of every room sent to.
        senders: Arc<Vec<String>>,
    },
    /// A plain broadcast server: every text frame goes to every client.
    Plain,
    /// Socket.IO (Engine.IO v4 over WebSocket), events `42["msg",…]`.
    SocketIo,
}

/// A system under test: its protocol and the addresses sockets are spread over.
#[derive(Clone)]
pub struct Target {
    /// Name in tables (`palaver-cluster`, `ws`, …).
    pub system: String,
    /// What it speaks.
    pub proto: Proto,
    /// Client addresses; socket i goes to `addrs[i % len]`.
    pub addrs: Vec<String>,
}

/// Size of a peer's broadcast frame: about the size of a Palaver `message`
/// event carrying the same body, so the peers move as many bytes.
pub const PEER_FRAME: usize = 128;

impl Target {
    fn addr(&self, i: usize) -> &str {
        &self.addrs[i % self.addrs.len()]
    }

    /// Opens socket `i` and makes it receive `room`'s messages.
    pub async fn open_receiver(&self, i: usize, room: &str, d: Dial) -> Result<Ws> {
        let addr = self.addr(i);
        match &self.proto {
            Proto::Palaver { receivers, .. } => {
                let mut ws = dial(addr, "/ws", Some(&receivers[i % receivers.len()]), d).await?;
                call(&mut ws, 1, PalaverCommand::Subscribe { room: room.to_string(), since: None }).await?;
                Ok(ws)
            }
            Proto::Plain => dial(addr, "/", None, d).await,
            Proto::SocketIo => {
                let mut ws = dial(addr, "/socket.io/?EIO=4&transport=websocket", None, d).await?;
                engine_io_open(&mut ws).await?;
                Ok(ws)
            }
        }
    }

    /// Opens sender socket `j`.
    pub async fn open_sender(&self, j: usize, d: Dial) -> Result<Ws> {
        let addr = self.addr(j);
        match &self.proto {
            Proto::Palaver { senders, .. } => dial(addr, "/ws", Some(&senders[j % senders.len()]), d).await,
            Proto::Plain => dial(addr, "/", None, d).await,
            Proto::SocketIo => {
                let mut ws = dial(addr, "/socket.io/?EIO=4&transport=websocket", None, d).await?;
                engine_io_open(&mut ws).await?;
                Ok(ws)
            }
        }
    }

    /// The frame sender `j` sends as its `n`th message, to `room`, carrying
    /// `stamp` (`@STEP:MICROS;`).
    fn frame(&self, j: usize, n: u64, room: &str, stamp: &str, nonce: &str) -> Message {
        let text = match &self.proto {
            Proto::Palaver { .. } => {
                let (room, body, client_id) = (room.to_string(), stamp.to_string(), format!("{nonce}-{j}-{n}"));
                return palaver_frame(
                    n,
                    PalaverCommand::Send { room, body, client_id, reply_to: None, attachments: Vec::new() },
                );
            }
            Proto::Plain => {
                let head = format!(r#"{{"type":"message","room":"{room}","from":"bench","body":"{stamp}","pad":""#);
                let pad = PEER_FRAME.saturating_sub(head.len() + 2);
                format!("{head}{}\"}}", "x".repeat(pad))
            }
            Proto::SocketIo => {
                let head = format!(r#"42["msg","{stamp}"#);
                let pad = PEER_FRAME.saturating_sub(head.len() + 2);
                format!("{head}{}\"]", "x".repeat(pad))
            }
        };
        Message::Text(text.into())
    }

    fn socket_io(&self) -> bool {
        matches!(self.proto, Proto::SocketIo)
    }
}

/// A string unique to this call in this process and across runs, for
/// `client_id`s: Palaver answers a repeated (sender, `client_id`) with the
/// first send's seq and publishes nothing, which would measure dedup instead.
pub fn nonce() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("{:x}{}", nanos & 0xffff_ffff_ffff, COUNT.fetch_add(1, Ordering::Relaxed))
}

/// Reads `@STEP:MICROS;` out of a delivered frame.
pub fn parse_stamp(text: &str) -> Option<(usize, u64)> {
    let at = text.find('@')?;
    let rest = &text[at + 1..];
    let colon = rest.find(':')?;
    let semi = rest[colon..].find(';')? + colon;
    Some((rest[..colon].parse().ok()?, rest[colon + 1..semi].parse().ok()?))
}

// ----------------------------------------------------------- connections --

/// The outcome of a connection ramp.
pub struct Ramp {
    /// The sockets, held open.
    pub sockets: Vec<Ws>,
    /// Connect (+ handshake, + subscribe for Palaver) times, µs.
    pub times: Histogram<u64>,
    /// Connections that failed.
    pub failed: u64,
    /// First failure, for the report.
    pub first_error: Option<String>,
    /// Seconds the ramp took.
    pub secs: f64,
}

/// Opens `count` receivers of `room` on `target`, started at `rate` per
/// second (open loop, at most 256 in flight), within `limit`.
pub async fn ramp(target: &Target, room: &str, count: usize, rate: f64, d: Dial, limit: Duration) -> Result<Ramp> {
    let gate = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let at = started + Duration::from_secs_f64(i as f64 / rate.max(1.0));
        tokio::time::sleep_until(at.into()).await;
        if Instant::now() > deadline {
            break;
        }
        let permit = gate.clone().acquire_owned().await?;
        let target = target.clone();
        let room = room.to_string();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t = Instant::now();
            let ws = tokio::time::timeout(Duration::from_secs(30), target.open_receiver(i, &room, d))
                .await
                .context("connect timed out")??;
            anyhow::Ok((ws, t.elapsed().as_micros() as u64))
        }));
    }
    let mut out =
        Ramp { sockets: Vec::with_capacity(count), times: histogram(), failed: 0, first_error: None, secs: 0.0 };
    let missing = count - tasks.len();
    for t in tasks {
        match t.await? {
            Ok((ws, us)) => {
                out.times.saturating_record(us.max(1));
                out.sockets.push(ws);
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    out.failed += missing as u64;
    if missing > 0 {
        out.first_error.get_or_insert_with(|| format!("time limit {limit:?} reached"));
    }
    out.secs = started.elapsed().as_secs_f64();
    Ok(out)
}

/// A histogram of µs from 1 µs to 10 minutes, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// A quantile in ms.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 }
}

/// A load-generator shard process: `exe --hold …` holding `count` idle
/// sockets from its own source address (one process has at most the
/// machine's open-files hard limit of sockets).
pub struct Shard {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        unregister_pid(self.child.id());
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a shard reports once its ramp is done.
pub struct ShardReport {
    /// Sockets open.
    pub held: u64,
    /// Sockets that failed.
    pub failed: u64,
    /// Their connect times, µs.
    pub times: Histogram<u64>,
    /// First failure.
    pub first_error: String,
}

impl Shard {
    /// Starts a shard: Palaver receivers of `room` with `token`, spread over
    /// `addrs`, from source `src`, at `rate` per second.
    pub fn start(
        exe: &Path,
        addrs: &[String],
        token: &str,
        room: &str,
        count: usize,
        rate: f64,
        src: Ipv4Addr,
    ) -> Result<Self> {
        let mut child = Command::new(exe)
            .args(["--hold", "--addrs", &addrs.join(","), "--token", token, "--room", room])
            .args(["--count", &count.to_string(), "--conn-rate", &rate.to_string(), "--src", &src.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a load shard")?;
        register_pid(child.id());
        let stdout = child.stdout.take().context("shard stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits (at most `within`) for the shard's report.
    pub fn report(&self, within: Duration) -> Result<ShardReport> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).context("shard did not report in time")?;
            if let Some(rest) = line.strip_prefix("held ") {
                let mut parts = rest.splitn(4, ' ');
                let held = parts.next().unwrap_or("0").parse()?;
                let failed = parts.next().unwrap_or("0").parse()?;
                let mut times = histogram();
                for us in parts.next().unwrap_or("").split(',').filter_map(|v| v.parse::<u64>().ok()) {
                    times.saturating_record(us.max(1));
                }
                let first_error = parts.next().unwrap_or("").to_string();
                return Ok(ShardReport { held, failed, times, first_error });
            }
        }
    }
}

/// The shard side (`--hold`): ramps, prints `held N FAILED µs,µs,… ERROR`,
/// holds the sockets until standard input closes (or 10 minutes), exits.
pub fn hold_main(args: &[String]) -> Result<()> {
    let get = |name: &str| -> Result<String> {
        let i = args.iter().position(|a| a == name).with_context(|| format!("{name} missing"))?;
        args.get(i + 1).cloned().with_context(|| format!("{name} needs a value"))
    };
    let addrs: Vec<String> = get("--addrs")?.split(',').map(str::to_string).collect();
    let token = get("--token")?;
    let room = get("--room")?;
    let count: usize = get("--count")?.parse()?;
    let rate: f64 = get("--conn-rate")?.parse()?;
    let src: Ipv4Addr = get("--src")?.parse()?;
    raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let target = Target {
            system: "shard".into(),
            proto: Proto::Palaver { receivers: Arc::new(vec![token.clone()]), senders: Arc::new(vec![token]) },
            addrs,
        };
        let d = Dial { src: Some(src), read_buffer: 4096 };
        let r = ramp(&target, &room, count, rate, d, Duration::from_secs(300)).await?;
        let mut times = Vec::new();
        for v in r.times.iter_recorded() {
            for _ in 0..v.count_at_value() {
                times.push(v.value_iterated_to().to_string());
            }
        }
        let err = r.first_error.unwrap_or_default().replace(['\n', ' '], "_");
        println!("held {} {} {} {err}", r.sockets.len(), r.failed, times.join(","));
        std::io::stdout().flush()?;
        // Hold until the harness closes our stdin (bounded).
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut buf = [0u8; 64];
            while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        let _ = tokio::time::timeout(Duration::from_secs(600), stdin_closed).await;
        drop(r.sockets);
        anyhow::Ok(())
    })
}

// ---------------------------------------------------------------- fan-out --

/// Rate steps per fan-out run, at most.
pub const MAX_STEPS: usize = 12;
const SHARDS: usize = 8;

/// One fan-out run's shape.
#[derive(Clone, Debug)]
pub struct FanoutSpec {
    /// Rooms (1 for the one-room fan-out).
    pub rooms: usize,
    /// Receiving sockets per room.
    pub members: usize,
    /// Sending sockets (open loop), spread over the rooms.
    pub senders: usize,
    /// Offered sends per second, one entry per step (at most [`MAX_STEPS`]).
    pub rates: Vec<f64>,
    /// Seconds each step sends.
    pub step_secs: f64,
    /// Seconds a step may take after sending stopped to deliver the rest.
    pub drain_secs: f64,
    /// Stop stepping at the first saturated step (`--rate max`).
    pub stop_on_saturation: bool,
    /// Room name (rooms > 1: this name followed by the room's index).
    pub room: String,
    /// Receivers being opened at once, at most.
    pub parallel: usize,
    /// How the receivers dial.
    pub dial: Dial,
}

impl FanoutSpec {
    /// The name of room `r`.
    pub fn room_name(&self, r: usize) -> String {
        if self.rooms <= 1 { self.room.clone() } else { format!("{}{r}", self.room) }
    }
}

/// One rate step's figures.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Offered sends/s.
    pub offered_sends: f64,
    /// Offered deliveries/s (offered sends × members per room).
    pub offered_deliveries: f64,
    /// Sends made.
    pub sent: u64,
    /// Sends/s achieved.
    pub sends_per_sec: f64,
    /// Deliveries owed (sent × members per room).
    pub expected: u64,
    /// Deliveries received while sending, per second: the throughput.
    pub deliveries_per_sec: f64,
    /// Deliveries received by the end of the drain.
    pub delivered: u64,
    /// End-to-end latency (sender clock to receiver clock, one process), ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// 99.9th percentile, ms.
    pub p999: f64,
    /// Largest, ms.
    pub max: f64,
    /// Error replies to sends (Palaver) or send failures.
    pub errors: u64,
    /// Receivers the server closed so far.
    pub closed: u64,
    /// The step fell short of its offered load.
    pub saturated: bool,
    /// Why the step counts as saturated.
    pub why: String,
    /// 1-minute load average at the step's end.
    pub load1: f64,
    /// Cores other processes kept busy during the step.
    pub other_cores: f64,
    /// Cores the load generator used during the step.
    pub generator_cores: f64,
    /// Cores the system under test used during the step.
    pub server_cores: f64,
}

/// A fan-out run on one system.
#[derive(Clone, Debug, Default)]
pub struct FanoutRun {
    /// The system's name.
    pub system: String,
    /// Receivers open.
    pub receivers: usize,
    /// Seconds to open them.
    pub connect_secs: f64,
    /// The steps run.
    pub steps: Vec<Step>,
    /// The first error a sender got, if any.
    pub first_error: Option<String>,
}

impl FanoutRun {
    /// The highest deliveries/s of any step.
    pub fn best(&self) -> f64 {
        self.steps.iter().map(|s| s.deliveries_per_sec).fold(0.0, f64::max)
    }

    /// The step offering `deliveries` per second, if it ran.
    pub fn step_at(&self, deliveries: f64) -> Option<&Step> {
        self.steps.iter().find(|s| (s.offered_deliveries - deliveries).abs() < deliveries * 0.01)
    }
}

struct Shared {
    epoch: Instant,
    counts: Vec<AtomicU64>,
    hists: Vec<Vec<Mutex<Histogram<u64>>>>,
    closed: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    nonce: String,
}

async fn receive(mut ws: Ws, shared: Arc<Shared>, shard: usize, socket_io: bool) {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                if socket_io && t.as_str() == "2" {
                    if ws.send(Message::Text("3".into())).await.is_err() {
                        break;
                    }
                    continue;
                }
                if let Some((step, sent)) = parse_stamp(&t)
                    && step < MAX_STEPS
                {
                    let now = shared.epoch.elapsed().as_micros() as u64;
                    shared.counts[step].fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut h) = shared.hists[step][shard].lock() {
                        h.saturating_record(now.saturating_sub(sent).max(1));
                    }
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    shared.closed.fetch_add(1, Ordering::Relaxed);
}

type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

/// Reads a sender's socket: counts Palaver error replies, answers Engine.IO
/// pings, drops broadcast copies.
async fn drain_sender(mut rx: futures_util::stream::SplitStream<Ws>, sink: Sink, shared: Arc<Shared>, socket_io: bool) {
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(t) = msg else { continue };
        if socket_io && t.as_str() == "2" {
            if sink.lock().await.send(Message::Text("3".into())).await.is_err() {
                break;
            }
        } else if t.contains(r#""type":"error""#) && is_error(&t) {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            let mut first = shared.first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| t.to_string());
        }
    }
}

/// Sends for one step: sender `j` at `rate`/s for `secs`, message numbers from
/// `n`. Answers (next n, sent).
#[allow(clippy::too_many_arguments)]
async fn send_step(
    sink: Sink,
    target: Target,
    spec: Arc<FanoutSpec>,
    shared: Arc<Shared>,
    j: usize,
    mut n: u64,
    step: usize,
    rate: f64,
) -> (u64, u64, Option<String>) {
    let started = Instant::now();
    let length = Duration::from_secs_f64(spec.step_secs);
    let mut sent = 0u64;
    while started.elapsed() < length {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(sent + 2000);
        if due > sent {
            let mut sink = sink.lock().await;
            while sent < due {
                let room = spec.room_name((j + n as usize * spec.senders) % spec.rooms.max(1));
                let stamp = format!("@{step}:{};", shared.epoch.elapsed().as_micros());
                if let Err(e) = sink.feed(target.frame(j, n, &room, &stamp, &shared.nonce)).await {
                    return (n, sent, Some(format!("sender {j}: {e}")));
                }
                sent += 1;
                n += 1;
            }
            if let Err(e) = sink.flush().await {
                return (n, sent, Some(format!("sender {j}: {e}")));
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (n, sent, None)
}

/// Runs a fan-out on `target`: opens `rooms × members` receivers (receiver i
/// in room i / members), `senders` senders, then each rate step in turn.
/// Deliveries are counted at the receivers and timed from the stamp each
/// message carries.
pub async fn fanout(target: &Target, spec: &FanoutSpec) -> Result<FanoutRun> {
    let spec = Arc::new(spec.clone());
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        counts: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
        hists: (0..MAX_STEPS).map(|_| (0..SHARDS).map(|_| Mutex::new(histogram())).collect()).collect(),
        closed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        nonce: nonce(),
    });
    let total = spec.rooms.max(1) * spec.members;
    let started = Instant::now();
    let opened: Vec<Result<(usize, Ws)>> = futures_util::stream::iter(0..total)
        .map(|i| {
            let room = spec.room_name(i / spec.members.max(1));
            let target = target.clone();
            let d = spec.dial;
            async move {
                let ws = tokio::time::timeout(Duration::from_secs(60), target.open_receiver(i, &room, d))
                    .await
                    .context("connect timed out")??;
                anyhow::Ok((i, ws))
            }
        })
        .buffer_unordered(spec.parallel.max(1))
        .collect()
        .await;
    let mut receivers = Vec::with_capacity(total);
    for r in opened {
        let (i, ws) = r.with_context(|| format!("{}: opening receivers", target.system))?;
        receivers.push(tokio::spawn(receive(ws, shared.clone(), i % SHARDS, target.socket_io())));
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let mut sinks = Vec::new();
    let mut drains = Vec::new();
    for j in 0..spec.senders {
        let ws =
            target.open_sender(j, spec.dial).await.with_context(|| format!("{}: opening senders", target.system))?;
        let (tx, rx) = ws.split();
        let sink: Sink = Arc::new(tokio::sync::Mutex::new(tx));
        drains.push(tokio::spawn(drain_sender(rx, sink.clone(), shared.clone(), target.socket_io())));
        sinks.push(sink);
    }
    // Let subscriptions settle before the first step.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut run = FanoutRun { system: target.system.clone(), receivers: total, connect_secs, ..Default::default() };
    let mut numbers = vec![0u64; spec.senders];
    for (s, &rate) in spec.rates.iter().enumerate().take(MAX_STEPS) {
        let meter = CpuMeter::start();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (j, sink) in sinks.iter().enumerate() {
            let per = rate / spec.senders.max(1) as f64;
            tasks.push(tokio::spawn(send_step(
                sink.clone(),
                target.clone(),
                spec.clone(),
                shared.clone(),
                j,
                numbers[j],
                s,
                per,
            )));
        }
        let mut sent = 0u64;
        let mut sender_error = None;
        for (j, t) in tasks.into_iter().enumerate() {
            let (n, count, err) = t.await?;
            numbers[j] = n;
            sent += count;
            if let Some(e) = err {
                sender_error.get_or_insert(e);
            }
        }
        let window = t0.elapsed().as_secs_f64();
        let in_window = shared.counts[s].load(Ordering::Relaxed);
        let expected = sent * spec.members as u64;
        let drain_until = Instant::now() + Duration::from_secs_f64(spec.drain_secs);
        while shared.counts[s].load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delivered = shared.counts[s].load(Ordering::Relaxed);
        let mut h = histogram();
        for shard in &shared.hists[s] {
            if let Ok(part) = shard.lock() {
                h.add(&*part)?;
            }
        }
        let sends_per_sec = sent as f64 / window;
        let deliveries_per_sec = in_window as f64 / window;
        let closed = shared.closed.load(Ordering::Relaxed);
        let mut why = Vec::new();
        if sends_per_sec < 0.9 * rate {
            why.push(format!("sent {sends_per_sec:.0}/s of {rate:.0}/s"));
        }
        if deliveries_per_sec < 0.9 * sends_per_sec * spec.members as f64 {
            why.push("deliveries lag the sends".to_string());
        }
        if delivered < expected * 99 / 100 {
            why.push(format!("{:.1}% delivered after the drain", delivered as f64 * 100.0 / expected.max(1) as f64));
        }
        if closed > 0 {
            why.push(format!("{closed} receivers closed"));
        }
        if let Some(e) = &sender_error {
            why.push(e.clone());
        }
        let cpu = meter.read();
        let step = Step {
            offered_sends: rate,
            offered_deliveries: rate * spec.members as f64,
            sent,
            sends_per_sec,
            expected,
            deliveries_per_sec,
            delivered,
            p50: ms(&h, 0.5),
            p99: ms(&h, 0.99),
            p999: ms(&h, 0.999),
            max: h.max() as f64 / 1000.0,
            errors: shared.errors.load(Ordering::Relaxed),
            closed,
            saturated: !why.is_empty(),
            why: why.join("; "),
            load1: load_average()[0],
            other_cores: cpu.other,
            generator_cores: cpu.generator,
            server_cores: cpu.servers,
        };
        eprintln!(
            "  {:<18} step {s}: offered {:>9.0} deliveries/s, got {:>9.0}/s, p50 {:.2} ms, p99 {:.2} ms, CPU server {:.2} generator {:.2} other {:.2}{}",
            target.system,
            step.offered_deliveries,
            step.deliveries_per_sec,
            step.p50,
            step.p99,
            cpu.servers,
            cpu.generator,
            cpu.other,
            if step.saturated { format!(" (saturated: {})", step.why) } else { String::new() }
        );
        let stop = step.saturated && spec.stop_on_saturation;
        let fatal = sender_error.is_some();
        run.steps.push(step);
        if stop || fatal {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run.first_error = shared.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for t in receivers.iter().chain(drains.iter()) {
        t.abort();
    }
    Ok(run)
}

/// Offered sends/s per step so that the deliveries/s double from `from`
/// up to `to` (inclusive), for `members` receivers per message.
pub fn doubling_rates(from: f64, to: f64, members: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut d = from;
    while d <= to * 1.0001 && out.len() < MAX_STEPS {
        out.push(d / members.max(1) as f64);
        d *= 2.0;
    }
    out
}

// ------------------------------------------------------------- idle RSS --

/// RSS per idle socket of one server.
#[derive(Clone, Debug, Default)]
pub struct Idle {
    /// The system.
    pub system: String,
    /// Sockets held.
    pub sockets: usize,
    /// RSS growth per socket, KiB.
    pub kib_per_socket: f64,
    /// RSS with the sockets open, MiB.
    pub rss_mib: f64,
    /// Connect times, p50 and p99, ms.
    pub connect_p50: f64,
    /// p99, ms.
    pub connect_p99: f64,
    /// Failed connections.
    pub failed: u64,
    /// 1-minute load average.
    pub load1: f64,
    /// Other processes' cores.
    pub other_cores: f64,
}

/// Opens `count` idle receivers of `room` on `target` (one server process,
/// `server`), holds them 2 s, and measures its RSS growth per socket.
pub async fn idle_rss(server: &Server, target: &Target, room: &str, count: usize, rate: f64) -> Result<Idle> {
    let meter = CpuMeter::start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib()?;
    let d = Dial { src: None, read_buffer: 4096 };
    let r = ramp(target, room, count, rate, d, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib()?;
    let held = r.sockets.len();
    let out = Idle {
        system: target.system.clone(),
        sockets: held,
        kib_per_socket: after.saturating_sub(before) as f64 / held.max(1) as f64,
        rss_mib: after as f64 / 1024.0,
        connect_p50: ms(&r.times, 0.5),
        connect_p99: ms(&r.times, 0.99),
        failed: r.failed,
        load1: load_average()[0],
        other_cores: meter.other_cores(),
    };
    if let Some(e) = &r.first_error {
        eprintln!("  {}: {} of {count} connections failed, first: {e}", target.system, r.failed);
    }
    drop(r.sockets);
    Ok(out)
}
