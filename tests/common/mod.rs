//! Test harness: starts a real `palaver node` process on 127.0.0.1 port 0
//! with a config file written here, and small helpers tests share.
//!
//! The node's stdout and stderr are kept (the last lines) and printed when
//! the node is dropped, which libtest shows only for a failed test;
//! `PALAVER_TEST_LOG=1` forwards them live instead.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io::BufRead;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_client::Http;
use palaver_client::Ws;

/// Generous deadline for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(30);
/// How long a node may take to print its ready line.
const READY: Duration = Duration::from_secs(60);
/// Lines of node output kept for the failure report.
const KEEP_LINES: usize = 400;

/// The node's config file (`[limits]` and `[security]`), written as TOML.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest WebSocket frame or message.
    pub frame_bytes: u64,
    /// Largest HTTP body.
    pub body_bytes: u64,
    /// Longest message body, in characters.
    pub message_chars: u64,
    /// Subscriptions one socket may hold.
    pub subscriptions_per_socket: u64,
    /// Events queued per socket before close 1013.
    pub outbound_queue: u64,
    /// Token bucket refill per connection.
    pub send_rate_per_sec: f64,
    /// Token bucket size per connection.
    pub send_burst: u64,
    /// Time for the request head and the auth frame.
    pub handshake_timeout_ms: u64,
    /// Login attempts per account per minute.
    pub login_per_account_per_min: u64,
    /// Login attempts per client address per minute.
    pub login_per_address_per_min: u64,
    /// Registrations per client address per minute (in the project's
    /// cluster.example.toml; raised so tests can create many users).
    pub register_per_address_per_min: u64,
    /// Browser origins allowed to open WebSockets.
    pub allowed_origins: Vec<String>,
    /// Idle lifetime of a token.
    pub token_idle_secs: u64,
    /// Absolute lifetime of a token.
    pub token_absolute_secs: u64,
    /// `[limits] write_timeout_ms`, when set.
    pub write_timeout_ms: Option<u64>,
    /// `[limits] max_connections_per_address`, when set.
    pub max_connections_per_address: Option<u64>,
    /// `[security] trusted_proxies`, when set.
    pub trusted_proxies: Option<Vec<String>>,
    /// `[security] ops_token`, when set.
    pub ops_token: Option<String>,
    /// `[security] metrics_public`, when set.
    pub metrics_public: Option<bool>,
    /// Per-user quotas per minute: tickets, room creations, other
    /// metadata writes (raised by default so ordinary tests never trip them).
    pub user_quotas_per_min: (u64, u64, u64),
    /// More `[limits]` settings, as `key = value` TOML.
    pub extra_limits: Vec<String>,
    /// `[limits] outbound_bytes` (queued bytes per connection before 1013), when set.
    pub outbound_bytes: Option<u64>,
    /// `[limits] history_page_bytes` (JSON bytes of one history page), when set.
    pub history_page_bytes: Option<u64>,
    /// `[limits] max_fragments` (frames of one fragmented WebSocket message), when set.
    pub max_fragments: Option<u64>,
    /// `[security] public_url` (its origin may open WebSockets), when set.
    pub public_url: Option<String>,
}

impl Default for Config {
    /// Protocol defaults, with rate limits raised so ordinary tests never trip them.
    fn default() -> Self {
        Config {
            frame_bytes: 65536,
            body_bytes: 65536,
            message_chars: 4096,
            subscriptions_per_socket: 256,
            outbound_queue: 1024,
            send_rate_per_sec: 10000.0,
            send_burst: 10000,
            handshake_timeout_ms: 10000,
            login_per_account_per_min: 10000,
            login_per_address_per_min: 10000,
            register_per_address_per_min: 10000,
            allowed_origins: vec![ALLOWED_ORIGIN.to_string()],
            token_idle_secs: 86400,
            token_absolute_secs: 2592000,
            write_timeout_ms: None,
            max_connections_per_address: None,
            trusted_proxies: None,
            ops_token: None,
            metrics_public: None,
            user_quotas_per_min: (1_000_000, 1_000_000, 1_000_000),
            extra_limits: Vec::new(),
            outbound_bytes: None,
            history_page_bytes: None,
            max_fragments: None,
            public_url: None,
        }
    }
}

/// The one origin the default config allows.
pub const ALLOWED_ORIGIN: &str = "http://allowed.example";

impl Config {
    /// The TOML text of the config file.
    pub fn to_toml(&self) -> String {
        let origins: Vec<String> = self.allowed_origins.iter().map(|o| format!("{o:?}")).collect();
        // Optional keys go last in their section; absent ones keep the node's defaults.
        let mut limits = String::new();
        let (tickets, rooms, writes) = self.user_quotas_per_min;
        limits.push_str(&format!(
            "tickets_per_user_per_min = {tickets}\nrooms_per_user_per_min = {rooms}\nwrites_per_user_per_min = {writes}\n"
        ));
        for line in &self.extra_limits {
            limits.push_str(line);
            limits.push('\n');
        }
        if let Some(ms) = self.write_timeout_ms {
            limits.push_str(&format!("write_timeout_ms = {ms}\n"));
        }
        if let Some(n) = self.max_connections_per_address {
            limits.push_str(&format!("max_connections_per_address = {n}\n"));
        }
        if let Some(n) = self.outbound_bytes {
            limits.push_str(&format!("outbound_bytes = {n}\n"));
        }
        if let Some(n) = self.history_page_bytes {
            limits.push_str(&format!("history_page_bytes = {n}\n"));
        }
        if let Some(n) = self.max_fragments {
            limits.push_str(&format!("max_fragments = {n}\n"));
        }
        let mut security = String::new();
        if let Some(list) = &self.trusted_proxies {
            let ips: Vec<String> = list.iter().map(|ip| format!("{ip:?}")).collect();
            security.push_str(&format!("trusted_proxies = [{}]\n", ips.join(", ")));
        }
        if let Some(token) = &self.ops_token {
            security.push_str(&format!("ops_token = {token:?}\n"));
        }
        if let Some(public) = self.metrics_public {
            security.push_str(&format!("metrics_public = {public}\n"));
        }
        if let Some(url) = &self.public_url {
            security.push_str(&format!("public_url = {url:?}\n"));
        }
        format!(
            "[limits]\n\
             frame_bytes = {}\n\
             body_bytes = {}\n\
             message_chars = {}\n\
             subscriptions_per_socket = {}\n\
             outbound_queue = {}\n\
             send_rate_per_sec = {:?}\n\
             send_burst = {}\n\
             handshake_timeout_ms = {}\n\
             login_per_account_per_min = {}\n\
             login_per_address_per_min = {}\n\
             register_per_address_per_min = {}\n\
             {}\
             \n\
             [security]\n\
             allowed_origins = [{}]\n\
             token_idle_secs = {}\n\
             token_absolute_secs = {}\n\
             {}",
            self.frame_bytes,
            self.body_bytes,
            self.message_chars,
            self.subscriptions_per_socket,
            self.outbound_queue,
            self.send_rate_per_sec,
            self.send_burst,
            self.handshake_timeout_ms,
            self.login_per_account_per_min,
            self.login_per_address_per_min,
            self.register_per_address_per_min,
            limits,
            origins.join(", "),
            self.token_idle_secs,
            self.token_absolute_secs,
            security,
        )
    }
}

/// A running `palaver node` process, SIGKILLed when dropped.
pub struct Node {
    child: Option<Child>,
    addr: String,
    config_path: PathBuf,
    data_dir: PathBuf,
    logs: Arc<Mutex<VecDeque<String>>>,
    // Last: removed after the process is gone.
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node with the harness's default config.
    pub async fn start() -> Result<Node> {
        Node::start_with(Config::default()).await
    }

    /// Starts a node with `config`, on a fresh data directory.
    pub async fn start_with(config: Config) -> Result<Node> {
        let dir = tempfile::tempdir().context("creating the temp dir")?;
        let config_path = dir.path().join("palaver.toml");
        let data_dir = dir.path().join("data");
        std::fs::write(&config_path, config.to_toml()).context("writing the config file")?;
        std::fs::create_dir_all(&data_dir).context("creating the data dir")?;
        let mut node = Node {
            child: None,
            addr: String::new(),
            config_path,
            data_dir,
            logs: Arc::new(Mutex::new(VecDeque::new())),
            _dir: dir,
        };
        node.spawn().await?;
        Ok(node)
    }

    /// `127.0.0.1:PORT` of the node's client address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The node process's id, while it runs (to read its /proc entries).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// An HTTP client without a token.
    pub fn http(&self) -> Http {
        Http::new(&self.addr).expect("an HTTP client for 127.0.0.1 can always be built")
    }

    /// Registers `name` and logs in.
    pub async fn user(&self, name: &str) -> Result<User> {
        let http = self.http();
        let password = password_of(name);
        http.register(name, &password).await.with_context(|| format!("registering {name}"))?;
        let login = http.login(name, &password).await.with_context(|| format!("logging in {name}"))?;
        Ok(User { name: name.to_string(), password, token: login.token.clone(), http: http.with_token(login.token) })
    }

    /// Logs an existing user in again (after a restart, say).
    pub async fn login(&self, name: &str) -> Result<User> {
        let http = self.http();
        let password = password_of(name);
        let login = http.login(name, &password).await.with_context(|| format!("logging in {name}"))?;
        Ok(User { name: name.to_string(), password, token: login.token.clone(), http: http.with_token(login.token) })
    }

    /// A WebSocket authenticated as `user` with an `auth` frame.
    pub async fn ws(&self, user: &User) -> Result<Ws> {
        Ws::connect_auth(&self.addr, &user.token).await.with_context(|| format!("websocket for {}", user.name))
    }

    /// SIGKILLs the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the node to stop (SIGTERM), without waiting.
    pub fn terminate(&mut self) -> Result<()> {
        let child = self.child.as_ref().context("the node is not running")?;
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().context("running kill")?;
        anyhow::ensure!(status.success(), "kill -TERM failed: {status}");
        Ok(())
    }

    /// Waits (bounded by `timeout`) for the process to exit; answers whether it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        while let Some(child) = self.child.as_mut() {
            if child.try_wait().context("waiting for the node")?.is_some() {
                self.child = None;
                return Ok(true);
            }
            if start.elapsed() > timeout {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(true)
    }

    /// Kills the node and starts it again on the same data and config (new port).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.log_line("---- harness: restarting the node ----".to_string());
        self.spawn().await
    }

    /// The last lines the node printed.
    pub fn recent_logs(&self) -> String {
        match self.logs.lock() {
            Ok(l) => l.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }

    fn log_line(&self, line: String) {
        push_line(&self.logs, line);
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_palaver"))
            .arg("node")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning palaver node")?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        let live = std::env::var_os("PALAVER_TEST_LOG").is_some();
        if let Some(stdout) = child.stdout.take() {
            let logs = self.logs.clone();
            std::thread::spawn(move || {
                let mut ready_tx = Some(ready_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if live {
                        eprintln!("[node stdout] {line}");
                    }
                    if let Some(rest) = line.split("ready: http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default().to_string();
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    push_line(&logs, format!("[stdout] {line}"));
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let logs = self.logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if live {
                        eprintln!("[node] {line}");
                    }
                    push_line(&logs, line);
                }
            });
        }
        self.child = Some(child);
        let addr = match tokio::time::timeout(READY, ready_rx).await {
            Ok(Ok(addr)) if !addr.is_empty() => addr,
            Ok(_) => {
                self.kill();
                bail!(
                    "the node exited (or printed an empty address) before its ready line; its output:\n{}",
                    self.recent_logs()
                )
            }
            Err(_) => {
                self.kill();
                bail!("no ready line within {READY:?}; the node's output:\n{}", self.recent_logs())
            }
        };
        self.addr = addr;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        // libtest captures this and shows it only for a failed test (a
        // panic or an `Err` return alike).
        if std::env::var_os("PALAVER_TEST_LOG").is_none() {
            eprintln!("---- last lines of the node's output ----\n{}\n----", self.recent_logs());
        }
    }
}

fn push_line(logs: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut l) = logs.lock() {
        if l.len() >= KEEP_LINES {
            l.pop_front();
        }
        l.push_back(line);
    }
}

fn password_of(name: &str) -> String {
    format!("pw-of-{name}-0123")
}

/// A registered, logged-in user.
#[derive(Clone, Debug)]
pub struct User {
    /// Username.
    pub name: String,
    /// Password.
    pub password: String,
    /// Bearer token from login.
    pub token: String,
    /// HTTP client sending that token.
    pub http: Http,
}

/// Polls `f` until it answers `Some`, for at most `timeout`. The pause
/// between tries grows from 20 ms to 250 ms; the count of tries is bounded
/// by the deadline.
pub async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("{what}: not true within {timeout:?}; last error: {e:#}"),
                None => bail!("{what}: not true within {timeout:?}"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Asserts that `r` failed with protocol code `code`; answers the error.
#[track_caller]
pub fn expect_code<T: Debug>(r: palaver_client::Result<T>, code: &str) -> palaver_client::Error {
    match r {
        Ok(v) => panic!("expected error {code}, got success: {v:?}"),
        Err(e) => {
            assert_eq!(e.code(), code, "expected error code {code}, got: {e}");
            e
        }
    }
}

/// Asserts the WebSocket is (or gets) closed with `code`.
pub async fn expect_close(ws: &mut Ws, code: u16) {
    match ws.wait_closed(WAIT).await {
        Ok(got) => assert_eq!(got, Some(code), "expected close code {code}, got {got:?}"),
        Err(e) => panic!("expected close code {code}, got: {e}"),
    }
}

/// Now as Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Clusters: several `palaver node --config FILE --id N` processes.
// ---------------------------------------------------------------------------

/// How long a cluster may take to print every ready line.
pub const CLUSTER_READY: Duration = Duration::from_secs(60);

/// One `[[node]]` entry of a cluster file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node id.
    pub id: u64,
    /// TCP address for clients.
    pub client: std::net::SocketAddr,
    /// UDP (QUIC) address for other nodes.
    pub peer: std::net::SocketAddr,
}

/// Picks free 127.0.0.1 ports for nodes `ids`: binds a TCP listener (client)
/// and a UDP socket (peer) per node on port 0, all held together so no two
/// are the same, and releases them on return. Another process may take one
/// before the node binds it; [`Cluster::start_with`] retries once for that.
pub fn free_node_specs(ids: &[u64]) -> Result<Vec<NodeSpec>> {
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut specs = Vec::new();
    for &id in ids {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free TCP port")?;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a free UDP port")?;
        specs.push(NodeSpec {
            id,
            client: tcp.local_addr().context("TCP local address")?,
            peer: udp.local_addr().context("UDP local address")?,
        });
        held_tcp.push(tcp);
        held_udp.push(udp);
    }
    drop(held_tcp);
    drop(held_udp);
    Ok(specs)
}

/// The text of a cluster file: `[cluster]`, the `[[node]]` list, then the
/// `[limits]` and `[security]` of `config`.
pub fn cluster_toml(
    data_dir: &std::path::Path,
    tls_dir: &std::path::Path,
    nodes: &[NodeSpec],
    config: &Config,
) -> String {
    let mut text = format!(
        "[cluster]\ndata_dir = {:?}\ntls_dir = {:?}\nack = \"majority\"\n\n",
        data_dir.display().to_string(),
        tls_dir.display().to_string()
    );
    for n in nodes {
        text.push_str(&format!("[[node]]\nid = {}\nclient = \"{}\"\npeer = \"{}\"\n\n", n.id, n.client, n.peer));
    }
    text.push_str(&config.to_toml());
    text
}

/// Runs `palaver certs --config FILE`: the CA and node certificates of the
/// file's `tls_dir` (existing files are kept).
pub fn make_certs(config_path: &std::path::Path) -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_palaver"))
        .arg("certs")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .output()
        .context("running palaver certs")?;
    anyhow::ensure!(
        out.status.success(),
        "palaver certs --config {} failed ({}): {}{}",
        config_path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Whether a node process has printed its ready line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// It printed `ready: http://ADDR`.
    Ready(String),
    /// It exited without printing it.
    Exited(String),
    /// Still running, not ready.
    NotYet,
}

/// One `palaver node --config FILE --id N --exit-with-parent` process. Its
/// standard input is a pipe this struct holds, so the node also stops when
/// the test binary exits without dropping it (a shared cluster in a static).
/// SIGKILLed when dropped; its output is kept like [`Node`]'s.
pub struct NodeProcess {
    id: u64,
    config_path: PathBuf,
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    ready: Arc<Mutex<Option<String>>>,
    logs: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl NodeProcess {
    /// Starts node `id` of the cluster file without waiting for it.
    pub fn spawn(config_path: &std::path::Path, id: u64) -> Result<NodeProcess> {
        let mut p = NodeProcess {
            id,
            config_path: config_path.to_path_buf(),
            child: None,
            stdin: None,
            ready: Arc::new(Mutex::new(None)),
            logs: Arc::new(Mutex::new(VecDeque::new())),
            readers: Vec::new(),
        };
        p.launch()?;
        Ok(p)
    }

    fn launch(&mut self) -> Result<()> {
        let id = self.id;
        if let Ok(mut r) = self.ready.lock() {
            *r = None;
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_palaver"))
            .arg("node")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--id")
            .arg(id.to_string())
            .arg("--exit-with-parent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning palaver node {id}"))?;
        let live = std::env::var_os("PALAVER_TEST_LOG").is_some();
        if let Some(stdout) = child.stdout.take() {
            let logs = self.logs.clone();
            let ready = self.ready.clone();
            self.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if live {
                        eprintln!("[node {id} stdout] {line}");
                    }
                    if let Some(rest) = line.split("ready: http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default().to_string();
                        if let Ok(mut r) = ready.lock() {
                            *r = Some(addr);
                        }
                    }
                    push_line(&logs, format!("[stdout] {line}"));
                }
            }));
        }
        if let Some(stderr) = child.stderr.take() {
            let logs = self.logs.clone();
            self.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if live {
                        eprintln!("[node {id}] {line}");
                    }
                    push_line(&logs, line);
                }
            }));
        }
        self.stdin = child.stdin.take();
        self.child = Some(child);
        Ok(())
    }

    /// The node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Ready, exited or neither, right now.
    pub fn readiness(&mut self) -> Readiness {
        if let Some(addr) = self.ready.lock().ok().and_then(|r| r.clone()) {
            return Readiness::Ready(addr);
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            None => Readiness::Exited("killed by the harness".to_string()),
            Some(Ok(Some(status))) => {
                // Its last lines may still be in the pipes (the ready line
                // too): the readers end when the pipes do.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                if let Some(addr) = self.ready.lock().ok().and_then(|r| r.clone()) {
                    return Readiness::Ready(addr);
                }
                Readiness::Exited(status.to_string())
            }
            Some(Ok(None)) => Readiness::NotYet,
            Some(Err(e)) => Readiness::Exited(format!("cannot wait for it: {e}")),
        }
    }

    /// Waits (polling, bounded by `timeout`) until the node is ready or has exited.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Readiness {
        let start = Instant::now();
        loop {
            match self.readiness() {
                Readiness::NotYet if start.elapsed() < timeout => {}
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILLs the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stdin = None;
        // The pipes close with the process: its readers end.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (a `kill -s` name: `TERM`, `STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().with_context(|| format!("node {} is not running", self.id))?;
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -s {signal} {pid} (node {}) failed: {status}", self.id);
        Ok(())
    }

    /// Waits (polling, bounded by `timeout`) for the process to exit on its
    /// own; answers its exit status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let start = Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else { bail!("node {} is not running", self.id) };
            if let Some(status) = child.try_wait().context("waiting for the node")? {
                self.child = None;
                self.stdin = None;
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Ok(Some(status));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills the process (if running) and starts it again on the same file.
    pub fn relaunch(&mut self) -> Result<()> {
        self.kill();
        push_line(&self.logs, "---- harness: restarting the node ----".to_string());
        self.launch()
    }

    /// The last lines the node printed.
    pub fn recent_logs(&self) -> String {
        match self.logs.lock() {
            Ok(l) => l.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }

    /// Whether any kept line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs.lock().map(|l| l.iter().any(|line| line.contains(text))).unwrap_or(false)
    }

    /// Adds a marker line to the kept output.
    pub fn note(&self, line: &str) {
        push_line(&self.logs, format!("---- harness: {line} ----"));
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("PALAVER_TEST_LOG").is_none() {
            eprintln!("---- last lines of node {}'s output ----\n{}\n----", self.id, self.recent_logs());
        }
    }
}

/// A running cluster of `palaver node` processes on 127.0.0.1, node ids
/// 1..=n, every one of them SIGKILLed when dropped. Methods take node ids
/// (1-based), not indexes.
pub struct Cluster {
    specs: Vec<NodeSpec>,
    procs: Vec<NodeProcess>,
    config_path: PathBuf,
    tls_dir: PathBuf,
    root: PathBuf,
    // Last: removed after the processes are gone.
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` nodes with the harness's default limits.
    pub async fn start(n: u64) -> Result<Cluster> {
        Cluster::start_with(n, Config::default()).await
    }

    /// Starts `n` nodes (ids 1..=n) with `config`'s limits and security, in a
    /// fresh temporary folder.
    pub async fn start_with(n: u64, config: Config) -> Result<Cluster> {
        let dir = tempfile::tempdir().context("creating the temp dir")?;
        let root = dir.path().to_path_buf();
        let mut cluster = Cluster::start_in(&root, n, &config).await?;
        cluster._dir = Some(dir);
        Ok(cluster)
    }

    /// Starts `n` nodes in `root` (which the caller removes). A start that
    /// fails because a node could not bind its port (taken between picking
    /// and binding) is retried once, with new ports and fresh folders.
    pub async fn start_in(root: &std::path::Path, n: u64, config: &Config) -> Result<Cluster> {
        match Cluster::attempt(root, "attempt-1", n, config).await {
            Ok(c) => Ok(c),
            Err(e) if is_bind_failure(&format!("{e:#}")) => Cluster::attempt(root, "attempt-2", n, config)
                .await
                .with_context(|| format!("the first start failed to bind a port: {e:#}")),
            Err(e) => Err(e),
        }
    }

    async fn attempt(root: &std::path::Path, name: &str, n: u64, config: &Config) -> Result<Cluster> {
        let base = root.join(name);
        let data_dir = base.join("data");
        let tls_dir = base.join("tls");
        std::fs::create_dir_all(&data_dir).context("creating the data dir")?;
        let ids: Vec<u64> = (1..=n).collect();
        let specs = free_node_specs(&ids)?;
        let config_path = base.join("cluster.toml");
        std::fs::write(&config_path, cluster_toml(&data_dir, &tls_dir, &specs, config))
            .context("writing the cluster file")?;
        make_certs(&config_path)?;
        let mut procs = Vec::new();
        for spec in &specs {
            procs.push(NodeProcess::spawn(&config_path, spec.id)?);
        }
        let mut cluster = Cluster { specs, procs, config_path, tls_dir, root: base, _dir: None };
        cluster.wait_all_ready(CLUSTER_READY).await?;
        Ok(cluster)
    }

    /// Waits until every running node printed its ready line; fails at once
    /// when one exits, and after `timeout`.
    async fn wait_all_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for p in &mut self.procs {
                match p.readiness() {
                    Readiness::Ready(_) => {}
                    Readiness::NotYet => waiting.push(p.id),
                    Readiness::Exited(status) => {
                        bail!("node {} exited ({status}) before its ready line; its output:\n{}", p.id, p.recent_logs())
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("nodes {waiting:?} printed no ready line within {timeout:?}\n{}", self.recent_logs());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.specs.iter().map(|s| s.id).collect()
    }

    /// The `[[node]]` entries of the cluster file.
    pub fn specs(&self) -> &[NodeSpec] {
        &self.specs
    }

    /// The cluster file.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// The folder of the cluster's CA and node certificates.
    pub fn tls_dir(&self) -> &std::path::Path {
        &self.tls_dir
    }

    /// A folder next to the cluster's own (same lifetime) for a test's files.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join("scratch").join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    fn index(&self, id: u64) -> usize {
        self.specs.iter().position(|s| s.id == id).unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// `127.0.0.1:PORT` of node `id`'s client address (the same across restarts).
    pub fn addr(&self, id: u64) -> String {
        self.specs[self.index(id)].client.to_string()
    }

    /// An HTTP client for node `id`, without a token.
    pub fn http(&self, id: u64) -> Http {
        Http::new(&self.addr(id)).expect("an HTTP client for 127.0.0.1 can always be built")
    }

    /// An HTTP client for node `id` sending `user`'s token.
    pub fn http_as(&self, id: u64, user: &User) -> Http {
        self.http(id).with_token(&user.token)
    }

    /// Registers `name` on node `id` and logs in there.
    pub async fn user(&self, id: u64, name: &str) -> Result<User> {
        let http = self.http(id);
        let password = password_of(name);
        http.register(name, &password).await.with_context(|| format!("registering {name} on node {id}"))?;
        self.login(id, name).await
    }

    /// Logs an existing user in on node `id`.
    pub async fn login(&self, id: u64, name: &str) -> Result<User> {
        let http = self.http(id);
        let password = password_of(name);
        let login = http.login(name, &password).await.with_context(|| format!("logging {name} in on node {id}"))?;
        Ok(User { name: name.to_string(), password, token: login.token.clone(), http: http.with_token(login.token) })
    }

    /// A WebSocket to node `id`, authenticated as `user` with an `auth` frame.
    pub async fn ws(&self, id: u64, user: &User) -> Result<Ws> {
        Ws::connect_auth(&self.addr(id), &user.token)
            .await
            .with_context(|| format!("websocket to node {id} for {}", user.name))
    }

    /// SIGKILLs node `id` and waits for it.
    pub fn kill(&mut self, id: u64) {
        let i = self.index(id);
        self.procs[i].note("SIGKILL");
        self.procs[i].kill();
    }

    /// Starts node `id` again (killing it first if it runs) on the same data,
    /// file and ports; waits for its ready line.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        let i = self.index(id);
        self.procs[i].relaunch()?;
        match self.procs[i].wait_ready(CLUSTER_READY).await {
            Readiness::Ready(_) => Ok(()),
            Readiness::Exited(status) => {
                bail!("node {id} exited ({status}) after a restart; its output:\n{}", self.procs[i].recent_logs())
            }
            Readiness::NotYet => bail!(
                "node {id} printed no ready line within {CLUSTER_READY:?} after a restart; its output:\n{}",
                self.procs[i].recent_logs()
            ),
        }
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, ...) to node `id`'s process.
    pub fn signal(&self, id: u64, signal: &str) -> Result<()> {
        let i = self.index(id);
        self.procs[i].note(&format!("SIG{signal}"));
        self.procs[i].signal(signal)
    }

    /// Waits (bounded by `timeout`) for node `id` to exit on its own (after
    /// a SIGTERM, say); answers its exit status, `None` if it still runs.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let i = self.index(id);
        self.procs[i].wait_exit(timeout).await
    }

    /// The process of node `id`, mutably.
    pub fn process_mut(&mut self, id: u64) -> &mut NodeProcess {
        let i = self.index(id);
        &mut self.procs[i]
    }

    /// The process of node `id`.
    pub fn process(&self, id: u64) -> &NodeProcess {
        &self.procs[self.index(id)]
    }

    /// The last lines of every node's output.
    pub fn recent_logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("---- last lines of node {}'s output ----\n{}\n", p.id, p.recent_logs()))
            .collect()
    }

    /// Marks every node's kept output (to find a test's part in a shared cluster).
    pub fn note(&self, line: &str) {
        for p in &self.procs {
            p.note(line);
        }
    }
}

fn is_bind_failure(text: &str) -> bool {
    text.contains("cannot listen on") || text.contains("cannot open the peer address")
}

/// One cluster shared by every test of a test binary that asks for it, with
/// an `admin` account registered first (so it is the admin). Its nodes stop
/// when the test binary exits (their stdin closes); its folder is removed by
/// the next run (folders of processes that are gone).
pub struct SharedCluster {
    /// The cluster.
    pub cluster: Cluster,
    /// The admin's token.
    pub admin_token: String,
}

/// A test's handle on the shared cluster; dropping it prints every node's
/// last lines, which libtest shows only for a failed test.
pub struct SharedGuard {
    shared: &'static SharedCluster,
    test: String,
}

impl std::ops::Deref for SharedGuard {
    type Target = SharedCluster;
    fn deref(&self) -> &SharedCluster {
        self.shared
    }
}

impl Drop for SharedGuard {
    fn drop(&mut self) {
        self.shared.cluster.note(&format!("end of {}", self.test));
        if std::env::var_os("PALAVER_TEST_LOG").is_none() {
            eprintln!("{}", self.shared.cluster.recent_logs());
        }
    }
}

static SHARED: tokio::sync::OnceCell<std::result::Result<SharedCluster, String>> = tokio::sync::OnceCell::const_new();

impl SharedCluster {
    /// The shared three-node cluster, started on first use; `test` names the
    /// caller in the nodes' output.
    pub async fn get(test: &str) -> Result<SharedGuard> {
        let shared = SHARED
            .get_or_init(|| async { SharedCluster::start().await.map_err(|e| format!("{e:#}")) })
            .await
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the shared cluster did not start: {e}"))?;
        shared.cluster.note(&format!("start of {test}"));
        Ok(SharedGuard { shared, test: test.to_string() })
    }

    async fn start() -> Result<SharedCluster> {
        let parent = std::env::temp_dir().join("palaver-shared-clusters");
        sweep_stale(&parent);
        let root = parent.join(format!("pid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let cluster = Cluster::start_in(&root, 3, &Config::default()).await?;
        let admin = cluster.user(1, "admin").await?;
        let me = admin.http.me().await?;
        anyhow::ensure!(me.role == "admin", "the first account is not admin: {me:?}");
        Ok(SharedCluster { cluster, admin_token: admin.token })
    }
}

/// Removes `pid-N` folders under `parent` whose process is gone (Linux
/// only: elsewhere nothing is removed).
fn sweep_stale(parent: &std::path::Path) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pid-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A balancer running in this test process in front of a cluster's nodes
/// (round-robin unless told otherwise), stopped when dropped.
pub struct Balancer {
    /// The public address clients use.
    pub addr: std::net::SocketAddr,
    /// The admin address (`/balancer/nodes`).
    pub admin: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::result::Result<(), palaver_balancer::BalancerError>>>,
}

impl Balancer {
    /// Starts a balancer over `cluster`'s nodes with `strategy`.
    pub async fn start(cluster: &Cluster, strategy: palaver_balancer::Strategy) -> Result<Balancer> {
        let nodes =
            cluster.specs().iter().map(|s| palaver_balancer::Backend { id: s.id, addr: s.client, weight: 1 }).collect();
        let settings = palaver_balancer::BalancerSettings {
            strategy,
            nodes,
            discover: false,
            ..palaver_balancer::BalancerSettings::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (addr, admin_addr) = (listener.local_addr()?, admin.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(palaver_balancer::run(settings, listener, admin, async move {
            let _ = rx.await;
        }));
        Ok(Balancer { addr, admin: admin_addr, stop: Some(tx), task: Some(task) })
    }

    /// An HTTP client of the public address that opens a connection per
    /// request, so consecutive requests reach different nodes.
    pub fn http(&self) -> Http {
        Http::unpooled(&self.addr.to_string()).expect("an HTTP client for 127.0.0.1 can always be built")
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
