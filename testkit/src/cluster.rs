//! A cluster of `palaver node --config FILE --id N` processes on 127.0.0.1,
//! node ids 1..=n, from a [`Builder`]; and [`SharedCluster`], the one
//! three-node cluster the tests of one binary may share.
//!
//! Methods take node ids (1-based), not indexes. The cluster knows its
//! file and processes; what the nodes agree on (leaders, owners) is the
//! tests' business.

use std::path::Path;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_client::Http;
use palaver_client::Ws;
use palaver_node::config::Config;
use palaver_node::config::NodeSection;

use crate::config::ClusterFile;
use crate::config::test_config;
use crate::node::User;
use crate::process::LIVE_ENV;
use crate::process::Launch;
use crate::process::NodeProcess;
use crate::process::Readiness;
use crate::process::Role;

/// Pause between two looks at starting nodes.
const POLL: Duration = Duration::from_millis(25);

/// How to start a cluster: `Cluster::builder(3).config(c).start().await`.
#[derive(Clone, Debug)]
pub struct Builder {
    nodes: u64,
    config: Config,
    launch: Launch,
    name: String,
}

impl Builder {
    /// The config of every node (limits, security; its `[cluster]` folders
    /// and `[[node]]` list are the kit's).
    pub fn config(mut self, config: Config) -> Builder {
        self.config = config;
        self
    }

    /// How the node processes are run.
    pub fn launch(mut self, launch: Launch) -> Builder {
        self.launch = launch;
        self
    }

    /// What marks the nodes' output: node N is `<name>-nodeN` (default `node-N`).
    pub fn name(mut self, name: &str) -> Builder {
        self.name = name.to_string();
        self
    }

    /// Starts the nodes in a fresh temporary folder and waits for every
    /// ready line.
    pub async fn start(self) -> Result<Cluster> {
        let dir = tempfile::tempdir().context("creating the temp dir")?;
        let mut cluster = self.start_in(dir.path()).await?;
        cluster._dir = Some(dir);
        Ok(cluster)
    }

    /// Starts the nodes in `root` (which the caller removes). A start that
    /// fails because a node could not bind its port (taken between picking
    /// and binding) is retried once, with new ports and fresh folders.
    pub async fn start_in(self, root: &Path) -> Result<Cluster> {
        match self.attempt(root, "attempt-1").await {
            Ok(c) => Ok(c),
            Err(e) if is_bind_failure(&format!("{e:#}")) => self
                .attempt(root, "attempt-2")
                .await
                .with_context(|| format!("the first start failed to bind a port: {e:#}")),
            Err(e) => Err(e),
        }
    }

    fn node_name(&self, id: u64) -> String {
        if self.name.is_empty() { format!("node-{id}") } else { format!("{}-node{id}", self.name) }
    }

    async fn attempt(&self, root: &Path, name: &str) -> Result<Cluster> {
        let base = root.join(name);
        let ids: Vec<u64> = (1..=self.nodes).collect();
        let file = ClusterFile::new(&base, &ids, self.config.clone())?;
        file.write()?;
        let mut procs = Vec::new();
        for &id in &ids {
            let role = Role::Member { file: file.path.clone(), id };
            procs.push(NodeProcess::spawn(&self.node_name(id), role, &self.launch)?);
        }
        let mut cluster = Cluster {
            file,
            procs,
            root: base,
            ready_within: self.launch.ready_within(),
            builder: self.clone(),
            _dir: None,
        };
        cluster.wait_all_ready().await?;
        Ok(cluster)
    }
}

fn is_bind_failure(text: &str) -> bool {
    text.contains("cannot listen on") || text.contains("cannot open the peer address")
}

/// A running cluster, every node SIGKILLed when dropped.
pub struct Cluster {
    file: ClusterFile,
    procs: Vec<NodeProcess>,
    root: PathBuf,
    ready_within: Duration,
    /// How the nodes were started (names, launch), for nodes added later.
    builder: Builder,
    // Last: removed after the processes are gone.
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// How to start `n` nodes; [`test_config`] unless told otherwise.
    pub fn builder(n: u64) -> Builder {
        Builder { nodes: n, config: test_config(), launch: Launch::default(), name: String::new() }
    }

    /// Starts `n` nodes with [`test_config`].
    pub async fn start(n: u64) -> Result<Cluster> {
        Cluster::builder(n).start().await
    }

    /// Starts `n` nodes with `config`.
    pub async fn start_with(n: u64, config: Config) -> Result<Cluster> {
        Cluster::builder(n).config(config).start().await
    }

    /// Waits until every running node printed its ready line; fails at once
    /// when one exits, and after the launch's `ready_within`.
    async fn wait_all_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for p in &mut self.procs {
                match p.readiness() {
                    Readiness::Ready(_) => {}
                    Readiness::NotYet => waiting.push(p.name().to_string()),
                    Readiness::Exited(status) => {
                        bail!("{} exited ({status}) before its ready line; its output:\n{}", p.name(), p.recent_logs())
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if start.elapsed() > self.ready_within {
                bail!("{waiting:?} printed no ready line within {:?}\n{}", self.ready_within, self.recent_logs());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.file.config.nodes.iter().map(|n| n.id).collect()
    }

    /// The `[[node]]` entries of the cluster file.
    pub fn nodes(&self) -> &[NodeSection] {
        &self.file.config.nodes
    }

    /// The cluster file.
    pub fn file(&self) -> &ClusterFile {
        &self.file
    }

    /// The balancer's view of the nodes, each of weight 1.
    pub fn backends(&self) -> Vec<palaver_balancer::Backend> {
        self.nodes().iter().map(|n| palaver_balancer::Backend { id: n.id, addr: n.client, weight: 1 }).collect()
    }

    /// A folder next to the cluster's own (same lifetime) for a test's files.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join("scratch").join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    fn index(&self, id: u64) -> usize {
        self.nodes().iter().position(|n| n.id == id).unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// `127.0.0.1:PORT` of node `id`'s client address (the same across restarts).
    pub fn addr(&self, id: u64) -> String {
        self.nodes()[self.index(id)].client.to_string()
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
        User::register(&self.http(id), name).await.with_context(|| format!("on node {id}"))
    }

    /// Makes `name` an admin on node `id` (with the kit's ops token) and
    /// logs in.
    pub async fn admin(&self, id: u64, name: &str) -> Result<User> {
        User::admin(&self.http(id), name).await.with_context(|| format!("on node {id}"))
    }

    /// Logs an existing user in on node `id`.
    pub async fn login(&self, id: u64, name: &str) -> Result<User> {
        User::login(&self.http(id), name).await.with_context(|| format!("on node {id}"))
    }

    /// A WebSocket to node `id`, authenticated as `user` with an `auth` frame.
    pub async fn ws(&self, id: u64, user: &User) -> Result<Ws> {
        Ws::connect_auth(&self.addr(id), &user.token)
            .await
            .with_context(|| format!("websocket to node {id} for {}", user.name))
    }

    /// Adds node `id` to the cluster file (free ports, its certificate made)
    /// and starts it. A new node waits to be added to the cluster (`palaver
    /// add-node`), so this does not wait for its ready line: see
    /// [`Cluster::wait_ready`].
    pub fn spawn_new_node(&mut self, id: u64) -> Result<()> {
        if self.ids().contains(&id) {
            bail!("node {id} is already in the cluster file");
        }
        let section = crate::ports::node_sections(&[id])?;
        self.file.config.nodes.extend(section);
        self.file.write()?;
        let role = Role::Member { file: self.file.path.clone(), id };
        self.procs.push(NodeProcess::spawn(&self.builder.node_name(id), role, &self.builder.launch)?);
        Ok(())
    }

    /// Waits for node `id`'s ready line (bounded by the launch's wait).
    pub async fn wait_ready(&mut self, id: u64) -> Result<()> {
        self.process_mut(id).ready().await.map(|_| ()).with_context(|| format!("node {id}"))
    }

    /// SIGKILLs node `id` and waits for it.
    pub fn kill(&mut self, id: u64) {
        let p = self.process_mut(id);
        p.note("SIGKILL");
        p.kill();
    }

    /// Asks node `id` to stop (SIGTERM), without waiting.
    pub fn stop(&self, id: u64) -> Result<()> {
        self.process(id).stop()
    }

    /// Freezes node `id` (SIGSTOP).
    pub fn pause(&self, id: u64) -> Result<()> {
        self.process(id).pause()
    }

    /// Lets frozen node `id` go on (SIGCONT).
    pub fn resume(&self, id: u64) -> Result<()> {
        self.process(id).resume()
    }

    /// Starts node `id` again (killing it first if it runs) on the same data,
    /// file and ports; waits for its ready line.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        let p = self.process_mut(id);
        p.relaunch()?;
        p.ready().await.map(|_| ()).with_context(|| format!("node {id} after a restart"))
    }

    /// Starts every node again at once (killing those that run) and waits
    /// for all ready lines: a cluster that lost every node comes back only
    /// with a majority.
    pub async fn restart_all(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.relaunch()?;
        }
        self.wait_all_ready().await
    }

    /// Waits (bounded by `timeout`) for node `id` to exit on its own (after
    /// a SIGTERM, say); answers its exit status, `None` if it still runs.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.process_mut(id).wait_exit(timeout).await
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

    /// Gives up the processes and the folder that holds their files (the
    /// caller keeps the folder as long as the processes).
    pub fn into_parts(mut self) -> (Vec<NodeProcess>, Option<tempfile::TempDir>) {
        (std::mem::take(&mut self.procs), self._dir.take())
    }

    /// The last lines of every node's output.
    pub fn recent_logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("---- last lines of {}'s output ----\n{}\n", p.name(), p.recent_logs()))
            .collect()
    }

    /// Marks every node's kept output (to find a test's part in a shared cluster).
    pub fn note(&self, line: &str) {
        for p in &self.procs {
            p.note(line);
        }
    }
}

/// One cluster shared by every test of a test binary that asks for it, with
/// an `admin` account made with the ops token. Its nodes stop
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
        if std::env::var_os(LIVE_ENV).is_none() {
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
        let cluster = Cluster::builder(3).start_in(&root).await?;
        let admin = cluster.admin(1, "admin").await?;
        let me = admin.http.me().await?;
        anyhow::ensure!(me.role == "admin", "the account made as admin is not one: {me:?}");
        Ok(SharedCluster { cluster, admin_token: admin.token })
    }
}

/// Removes `pid-N` folders under `parent` whose process is gone (Linux
/// only: elsewhere nothing is removed).
fn sweep_stale(parent: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pid-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
