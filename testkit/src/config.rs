//! Node configs for tests, and cluster files.
//!
//! Every file the kit gives a node is `palaver_node::config::Config`
//! serialised: a test changes typed fields ([`config`]), never TOML text,
//! and a field the node adds is there for tests at once. This module also
//! makes the cluster's certificates; it starts no process.

use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::Result;
use palaver_balancer::config::BalancerSection;
use palaver_balancer::config::NodeEntry;
use palaver_node::config::Config;
use palaver_node::config::OpsToken;

use crate::ports;

/// The one origin the test config allows.
pub const ALLOWED_ORIGIN: &str = "http://allowed.example";
/// Per-user quotas of the test config: far above what any test does.
const HIGH_QUOTA: u32 = 1_000_000;
/// Rate limits of the test config: no ordinary test trips them.
const HIGH_RATE: u32 = 10_000;

/// Set to a number, runs room logs on that many shards in every cluster
/// the kit starts (default [`TEST_SHARDS`]).
pub const SHARDS_ENV: &str = "PALAVER_TEST_SHARDS";
/// Shards of a test cluster: enough to spread leaders over every node of a
/// test, few enough that a debug build starts a cluster in a second or two.
pub const TEST_SHARDS: u32 = 8;

/// The ops token of every node the kit configures: tests make admins with
/// it (`POST /api/admin/users`), as `palaver admin create-user` does.
pub const TEST_OPS_TOKEN: &str = "palaver-test-ops-token-0123456789";

/// The node's defaults, with rate limits and quotas raised so ordinary tests
/// never trip them, and [`ALLOWED_ORIGIN`] as the only browser origin.
pub fn test_config() -> Config {
    let mut c = raised_limits(HIGH_RATE, HIGH_QUOTA);
    c.security.allowed_origins = vec![ALLOWED_ORIGIN.to_string()];
    c.security.ops_token = Some(OpsToken::new(TEST_OPS_TOKEN).expect("the test ops token is valid"));
    c.cluster.shards = std::env::var(SHARDS_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(TEST_SHARDS);
    c
}

/// The node's defaults with every client rate limit (sends a second, the
/// burst, logins and registrations a minute) at `rate`, and every per-user
/// quota a minute at `quota`.
pub fn raised_limits(rate: u32, quota: u32) -> Config {
    let mut c = Config::default();
    let l = &mut c.limits;
    l.send_rate_per_sec = f64::from(rate);
    l.send_burst = f64::from(rate);
    l.login_per_account_per_min = rate;
    l.login_per_address_per_min = rate;
    l.register_per_address_per_min = rate;
    l.tickets_per_user_per_min = quota;
    l.rooms_per_user_per_min = quota;
    l.writes_per_user_per_min = quota;
    c
}

/// [`test_config`] changed by `tweak`: `config(|c| c.limits.body_bytes = 4096)`.
pub fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config();
    tweak(&mut c);
    c
}

/// A cluster file on disk: `config` with its `[[node]]` list, written to
/// `path`, with the certificates of its nodes in its `tls_dir`.
#[derive(Clone, Debug)]
pub struct ClusterFile {
    /// Where the file is.
    pub path: PathBuf,
    /// What it says.
    pub config: Config,
}

impl ClusterFile {
    /// A file `cluster.toml` in `dir` for nodes `ids` on free ports, keeping data
    /// in `dir/data` and certificates in `dir/tls`; `config` gives the rest.
    /// Not written yet: change [`ClusterFile::config`], then [`ClusterFile::write`].
    pub fn new(dir: &Path, ids: &[u64], mut config: Config) -> Result<ClusterFile> {
        config.cluster.data_dir = dir.join("data");
        config.cluster.tls_dir = Some(dir.join("tls"));
        config.nodes = ports::node_sections(ids)?;
        Ok(ClusterFile { path: dir.join("cluster.toml"), config })
    }

    /// Writes the file, creates the data folder, and makes the certificates
    /// its nodes lack (a CA already in `tls_dir` is kept).
    pub fn write(&self) -> Result<()> {
        let text = toml::to_string(&self.config).context("serialising the cluster file")?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))?;
        let data = &self.config.cluster.data_dir;
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let ids: Vec<u64> = self.config.nodes.iter().map(|n| n.id).collect();
        let tls = self.tls_dir();
        palaver_node::peer::ensure_cluster_certs(&tls, &ids)
            .with_context(|| format!("making certificates in {}", tls.display()))
    }

    /// The folder of the cluster's CA and node certificates.
    pub fn tls_dir(&self) -> PathBuf {
        self.config.cluster.tls_dir()
    }
}

/// The text of a file for a balancer alone: its `[balancer]` section and a
/// `[[node]]` list of ids and client addresses (what `palaver balancer
/// --config` reads of a cluster file).
pub fn balancer_file(section: &BalancerSection, nodes: &[NodeEntry]) -> Result<String> {
    let mut file = toml::Table::new();
    file.insert("balancer".into(), toml::Value::try_from(section).context("the [balancer] section")?);
    file.insert("node".into(), toml::Value::try_from(nodes).context("the [[node]] list")?);
    toml::to_string(&file).context("serialising the balancer's file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_cluster_file_is_what_a_node_reads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut file = ClusterFile::new(dir.path(), &[1, 2], config(|c| c.limits.body_bytes = 4096)).expect("ports");
        file.config.security.public_url = Some("https://chat.example".into());
        file.write().expect("written");
        let read = Config::load(&file.path).expect("a node reads it");
        assert_eq!(read.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(read.node(2).map(|n| n.client), file.config.node(2).map(|n| n.client));
        assert_eq!((read.limits.body_bytes, read.limits.send_burst), (4096, f64::from(HIGH_RATE)));
        assert_eq!(read.security.allowed_origins, [ALLOWED_ORIGIN]);
        assert_eq!(read.security.public_url.as_deref(), Some("https://chat.example"));
        for name in ["ca.pem", "node-1.pem", "node-2.key"] {
            assert!(file.tls_dir().join(name).exists(), "{name}");
        }
    }

    #[test]
    fn a_balancer_file_is_what_the_balancer_reads() {
        let section = BalancerSection {
            strategy: Some("weighted".into()),
            health_interval_ms: Some(500),
            discover: Some(false),
            ..BalancerSection::default()
        };
        let client = "127.0.0.1:7101".parse().expect("addr");
        let text = balancer_file(&section, &[NodeEntry { id: 4, client, weight: 2 }]).expect("written");
        let value: toml::Value = toml::from_str(&text).expect("TOML");
        let s = palaver_balancer::BalancerSettings::from_toml(&value, None).expect("the balancer reads it");
        assert_eq!(s.nodes, [palaver_balancer::Backend { id: 4, addr: client, weight: 2 }]);
        assert_eq!(
            (s.strategy, s.health_interval.as_millis(), s.discover),
            (palaver_balancer::Strategy::Weighted, 500, false)
        );
    }
}
