//! The balancer running inside the test process (`palaver_balancer::run`
//! on two listeners bound to 127.0.0.1 port 0), stopped when dropped, and
//! reads of its admin address. What it is told (strategy, nodes, health
//! timings) is each test's choice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use palaver_balancer::BalancerError;
use palaver_balancer::BalancerSettings;
use palaver_balancer::Strategy;
use palaver_client::Http;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::wait::WAIT;

/// A balancer running in this process.
pub struct Balancer {
    /// The public address clients use.
    pub addr: SocketAddr,
    /// The admin address (`/balancer/nodes`, `/metrics`, `/healthz`).
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), BalancerError>>>,
    http: reqwest::Client,
}

impl Balancer {
    /// Starts a balancer with `settings` (its `listen` and `admin` are
    /// ignored: both addresses are free ports); admin reads time out after
    /// [`WAIT`].
    pub async fn start(settings: BalancerSettings) -> Result<Balancer> {
        Balancer::start_with_admin_timeout(settings, WAIT).await
    }

    /// Starts a balancer like [`Balancer::start`], its admin reads timing
    /// out after `timeout`.
    pub async fn start_with_admin_timeout(settings: BalancerSettings, timeout: Duration) -> Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let (addr, admin_addr) = (listener.local_addr()?, admin.local_addr()?);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(palaver_balancer::run(settings, listener, admin, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder().no_proxy().timeout(timeout).build()?;
        Ok(Balancer { addr, admin: admin_addr, stop: Some(tx), task: Some(task), http })
    }

    /// Starts a balancer over `cluster`'s nodes with `strategy`, the
    /// default timings and no discovery.
    pub async fn over(cluster: &Cluster, strategy: Strategy) -> Result<Balancer> {
        let settings =
            BalancerSettings { strategy, nodes: cluster.backends(), discover: false, ..BalancerSettings::default() };
        Balancer::start(settings).await
    }

    /// An HTTP client of the public address that opens a connection per
    /// request, so consecutive requests reach different nodes.
    pub fn http(&self) -> Http {
        Http::unpooled(&self.addr.to_string()).expect("an HTTP client for 127.0.0.1 can always be built")
    }

    /// Registers `name` (password `password-of-NAME`) and logs in, through
    /// the balancer as a user would; answers a client with the token.
    pub async fn user(&self, name: &str) -> Result<Http> {
        let lb = self.http();
        let password = format!("password-of-{name}");
        lb.register(name, &password).await.with_context(|| format!("register {name}"))?;
        let login = lb.login(name, &password).await.with_context(|| format!("login {name}"))?;
        Ok(lb.with_token(login.token))
    }

    /// A `GET path` request to the public address (its timeout that of admin reads).
    pub fn public_get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("http://{}{path}", self.addr))
    }

    /// `GET path` on the admin address, with `Authorization: Bearer <token>`
    /// if given: (status, body).
    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> Result<(u16, String)> {
        let mut req = self.http.get(format!("http://{}{path}", self.admin));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let r = req.send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// `GET /balancer/nodes`, by node id.
    pub async fn nodes(&self, token: Option<&str>) -> Result<BTreeMap<u64, Value>> {
        let (status, text) = self.admin_get("/balancer/nodes", token).await?;
        anyhow::ensure!(status == 200, "/balancer/nodes: {status} {text}");
        let list: Vec<Value> = serde_json::from_str(&text)?;
        Ok(list.into_iter().map(|v| (v["id"].as_u64().unwrap_or_default(), v)).collect())
    }

    /// Asks the balancer to stop; answers how long `run` took to return
    /// (bounded by [`WAIT`]) and fails if it returned an error.
    pub async fn stop(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.begin_stop();
        self.wait_stopped().await?;
        Ok(started.elapsed())
    }

    /// Asks the balancer to stop, without waiting: it closes its listeners
    /// and lets open connections go on for its grace.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (bounded by [`WAIT`]) for `run` to return; fails if it returned an error.
    pub async fn wait_stopped(&mut self) -> Result<()> {
        let task = self.task.take().context("already stopped")?;
        tokio::time::timeout(WAIT, task).await.context("run did not return")???;
        Ok(())
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
