//! A one-node server on 127.0.0.1 port 0 (`palaver node --listen
//! 127.0.0.1:0`) with a config file and data folder of its own, and the
//! client helpers tests use on it: users, HTTP, WebSockets.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use palaver_client::Http;
use palaver_client::Ws;
use palaver_node::config::Config;

use crate::config::test_config;
use crate::process::Launch;
use crate::process::NodeProcess;
use crate::process::Role;

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

impl User {
    /// The password the kit gives `name`.
    pub fn password_of(name: &str) -> String {
        format!("pw-of-{name}-0123")
    }

    /// Registers `name` through `http` and logs in.
    pub async fn register(http: &Http, name: &str) -> Result<User> {
        http.register(name, &User::password_of(name)).await.with_context(|| format!("registering {name}"))?;
        User::login(http, name).await
    }

    /// Makes `name` an admin account through `http` with the kit's ops
    /// token (as `palaver admin create-user NAME --admin` does) and logs in.
    pub async fn admin(http: &Http, name: &str) -> Result<User> {
        http.with_token(crate::config::TEST_OPS_TOKEN.to_string())
            .create_user(name, &User::password_of(name), true)
            .await
            .with_context(|| format!("making the admin {name}"))?;
        User::login(http, name).await
    }

    /// Logs `name`, registered before, in through `http`.
    pub async fn login(http: &Http, name: &str) -> Result<User> {
        let password = User::password_of(name);
        let login = http.login(name, &password).await.with_context(|| format!("logging {name} in"))?;
        Ok(User { name: name.to_string(), password, token: login.token.clone(), http: http.with_token(login.token) })
    }
}

/// A running one-node server, SIGKILLed when dropped.
pub struct Node {
    process: NodeProcess,
    addr: String,
    // Last: removed after the process is gone.
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node with [`test_config`].
    pub async fn start() -> Result<Node> {
        Node::start_with(test_config()).await
    }

    /// Starts a node with `config`, on a fresh data folder.
    pub async fn start_with(config: Config) -> Result<Node> {
        Node::start_as("node", config, &Launch::default()).await
    }

    /// Starts a node with `config`, run as `launch` says; `name` marks its
    /// output (and names its log file).
    pub async fn start_as(name: &str, config: Config, launch: &Launch) -> Result<Node> {
        let dir = tempfile::tempdir().context("creating the temp dir")?;
        let file = dir.path().join("palaver.toml");
        let data_dir = dir.path().join("data");
        std::fs::write(&file, toml::to_string(&config).context("serialising the config")?)
            .context("writing the config file")?;
        std::fs::create_dir_all(&data_dir).context("creating the data dir")?;
        let mut process = NodeProcess::spawn(name, Role::Alone { file, data_dir }, launch)?;
        let addr = process.ready().await?.to_string();
        Ok(Node { process, addr, _dir: dir })
    }

    /// `127.0.0.1:PORT` of the node's client address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The node's client address.
    pub fn socket_addr(&self) -> Result<SocketAddr> {
        self.addr.parse().context("the node's address")
    }

    /// The node process.
    pub fn process(&self) -> &NodeProcess {
        &self.process
    }

    /// The node process, mutably.
    pub fn process_mut(&mut self) -> &mut NodeProcess {
        &mut self.process
    }

    /// The node process's id, while it runs (to read its /proc entries).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// An HTTP client without a token.
    pub fn http(&self) -> Http {
        Http::new(&self.addr).expect("an HTTP client for 127.0.0.1 can always be built")
    }

    /// Registers `name` and logs in.
    pub async fn user(&self, name: &str) -> Result<User> {
        User::register(&self.http(), name).await
    }

    /// Makes `name` an admin (with the kit's ops token) and logs in.
    pub async fn admin(&self, name: &str) -> Result<User> {
        User::admin(&self.http(), name).await
    }

    /// Logs an existing user in again (after a restart, say).
    pub async fn login(&self, name: &str) -> Result<User> {
        User::login(&self.http(), name).await
    }

    /// A WebSocket authenticated as `user` with an `auth` frame.
    pub async fn ws(&self, user: &User) -> Result<Ws> {
        Ws::connect_auth(&self.addr, &user.token).await.with_context(|| format!("websocket for {}", user.name))
    }

    /// SIGKILLs the process and waits for it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Asks the node to stop (SIGTERM), without waiting.
    pub fn stop(&self) -> Result<()> {
        self.process.stop()
    }

    /// Waits (bounded by `timeout`) for the process to exit; answers its
    /// status, `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.process.wait_exit(timeout).await
    }

    /// Kills the node and starts it again on the same data and config (new port).
    pub async fn restart(&mut self) -> Result<()> {
        self.process.relaunch()?;
        self.addr = self.process.ready().await?.to_string();
        Ok(())
    }
}
