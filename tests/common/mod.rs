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
        }
    }
}

/// The one origin the default config allows.
pub const ALLOWED_ORIGIN: &str = "http://allowed.example";

impl Config {
    /// The TOML text of the config file.
    pub fn to_toml(&self) -> String {
        let origins: Vec<String> = self.allowed_origins.iter().map(|o| format!("{o:?}")).collect();
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
             \n\
             [security]\n\
             allowed_origins = [{}]\n\
             token_idle_secs = {}\n\
             token_absolute_secs = {}\n",
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
            origins.join(", "),
            self.token_idle_secs,
            self.token_absolute_secs,
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
