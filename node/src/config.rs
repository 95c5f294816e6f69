//! The cluster file (`cluster.example.toml`) and every tunable with its
//! default. A node runs with no file at all; every section and field is
//! optional. The types serialise back to the same TOML, so tools (the test
//! kit) write cluster files from them instead of by hand.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::api::origin::OriginPolicy;
use crate::storage::EngineKind;

/// The default `[cluster] store_cache_mib`.
const DEFAULT_STORE_CACHE_MIB: u32 = 256;
/// The largest `[cluster] store_cache_mib` (1 TiB).
const MAX_STORE_CACHE_MIB: u32 = 1 << 20;
/// The most shards a cluster may have (each is a Raft group on its nodes).
pub const MAX_SHARDS: u32 = 1024;
/// The most replicas a shard may have.
pub const MAX_REPLICATION: u8 = 7;

/// Everything a node or the launcher reads from the cluster file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Cluster-wide settings.
    pub cluster: ClusterSection,
    /// The nodes of the cluster.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeSection>,
    /// Limits on what clients control.
    pub limits: Limits,
    /// Accounts, tokens and origins.
    pub security: Security,
    /// The balancer (read by `palaver balancer` and `palaver up`).
    pub balancer: Option<toml::Value>,
    /// The public address: TLS (terminated by the balancer).
    pub public: PublicSection,
}

/// `[public]`: what clients connect to. With `tls_cert` and `tls_key` (PEM)
/// the balancer serves TLS, and the nodes answer with HSTS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicSection {
    /// The certificate chain, leaf first.
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Where node N keeps its files: `<data_dir>/node-N`.
    pub data_dir: PathBuf,
    /// The storage engine.
    pub storage: EngineKind,
    /// No longer read: a send is answered once a majority of its shard's
    /// replicas stored it. Accepted so older cluster files still load.
    #[serde(skip_serializing)]
    pub ack: Option<toml::Value>,
    /// No longer read: shards elect a new leader by themselves. Accepted so
    /// older cluster files still load.
    #[serde(skip_serializing)]
    pub failure_timeout_ms: Option<toml::Value>,
    /// Where the cluster CA and node certificates are (`ca.pem`,
    /// `node-N.pem`, `node-N.key`); default `<data_dir>/tls`. `palaver up`
    /// and `palaver certs` create them there when absent.
    pub tls_dir: Option<PathBuf>,
    /// Room logs on this many Raft shards (a room's shard is a hash of its
    /// id modulo this; docs/shards.md). Fixed for the cluster's life.
    pub shards: u32,
    /// Replicas of each shard.
    pub replication: u8,
    /// Memory for the storage engine's page cache, in MiB, shared by the
    /// node's two stores (Raft logs and room logs). The engines' own
    /// default is 1 GiB each, which a laptop running three nodes feels.
    pub store_cache_mib: u32,
    /// Days a room's messages are kept unless its owner says otherwise
    /// (0: forever).
    pub retention_days: u32,
    /// The length of a retention "day" in ms: 86400000 except in tests and
    /// try-outs that want to see expiry happen.
    pub retention_day_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            storage: EngineKind::Redb,
            ack: None,
            failure_timeout_ms: None,
            tls_dir: None,
            shards: 64,
            replication: 3,
            store_cache_mib: DEFAULT_STORE_CACHE_MIB,
            retention_days: 0,
            retention_day_ms: crate::service::DAY_MS,
        }
    }
}

impl ClusterSection {
    /// The page-cache bytes of each of a node's two stores.
    pub fn store_cache_bytes(&self) -> usize {
        usize::try_from(u64::from(self.store_cache_mib) * 1024 * 1024 / 2).unwrap_or(usize::MAX)
    }

    /// The folder of the cluster's certificates.
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir.clone().unwrap_or_else(|| self.data_dir.join("tls"))
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Raft node id, never reused.
    pub id: u64,
    /// Address clients (and the balancer) connect to.
    pub client: SocketAddr,
    /// Address other nodes connect to (QUIC).
    pub peer: SocketAddr,
    /// Weight for the weighted balancing strategy.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Limits on everything a client controls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message or frame, bytes (tungstenite's own default is 64 MiB).
    pub frame_bytes: usize,
    /// Largest HTTP request body, bytes.
    pub body_bytes: usize,
    /// Longest message body, characters.
    pub message_chars: usize,
    /// Rooms one socket may subscribe to.
    pub subscriptions_per_socket: usize,
    /// Events queued for one socket before it is closed as too slow (1013).
    pub outbound_queue: usize,
    /// Bytes queued for one socket (WebSocket, SSE, long poll) before it is
    /// closed as too slow (1013); the socket's own replies wait for room.
    pub outbound_bytes: usize,
    /// Largest history page, bytes of JSON: a longer page is cut short and
    /// says where to continue.
    pub history_page_bytes: usize,
    /// Sends (and typing notices) per second per user, sustained, across all
    /// of the user's connections and nodes.
    pub send_rate_per_sec: f64,
    /// Sends allowed in a burst.
    pub send_burst: f64,
    /// Time allowed for the HTTP request head (and between two requests on
    /// a keep-alive connection), a JSON request body, a PROXY header and
    /// the WebSocket `auth` frame.
    pub handshake_timeout_ms: u64,
    /// A connection whose peer takes no byte of what the node writes for
    /// this long is closed (HTTP answers, SSE streams; WebSockets with
    /// 1013).
    pub write_timeout_ms: u64,
    /// Failed logins per (account, client address) per minute before that
    /// pair gets 429; past as many failures cluster-wide, an account's login
    /// attempts are slowed down (never refused).
    pub login_per_account_per_min: u32,
    /// Failed logins per client address per minute (any account, known or
    /// not) before that address gets 429.
    pub login_per_address_per_min: u32,
    /// Registrations per client address per minute.
    pub register_per_address_per_min: u32,
    /// Tickets (SSE, long poll) one user may take per minute.
    pub tickets_per_user_per_min: u32,
    /// Rooms one user may create per minute.
    pub rooms_per_user_per_min: u32,
    /// Other metadata writes (join, leave, invite, moderation, roles, direct
    /// rooms, deletions) one user may make per minute.
    pub writes_per_user_per_min: u32,
    /// Concurrent client connections per node.
    pub max_connections: usize,
    /// Concurrent client connections per client IP address (behind the
    /// balancer, the client's own, from its PROXY header).
    pub max_connections_per_address: usize,
    /// Longest a long poll may wait, ms.
    pub max_poll_ms: u64,
    /// Password hashes computed at once on this node: one worker thread and
    /// one 19 MiB argon2 buffer each. Default: the number of cores.
    pub password_hash_parallel: usize,
    /// Password checks (login, register) waiting for a worker; beyond that
    /// they get 503 `unavailable` with `retry_after_ms` at once.
    pub password_hash_queue: usize,
    /// Frames one fragmented WebSocket message may span (close 1008 beyond).
    pub max_fragments: usize,
    /// Largest attachment upload, bytes (`too_large` beyond).
    pub attachment_bytes: u64,
    /// Bytes of attachments one user may upload per day, all rooms and
    /// nodes together (a token bucket refilled over a day, shared like the
    /// other per-user limits): `rate_limited` beyond, `too_large` for one
    /// file larger than all of it.
    pub attachment_quota_bytes: u64,
}

/// Most password workers a node may be given: each holds 19 MiB.
const MAX_PASSWORD_HASH_PARALLEL: usize = 256;
/// Longest password queue: each waiting call holds a request and a password.
const MAX_PASSWORD_HASH_QUEUE: usize = 65_536;

impl Default for Limits {
    fn default() -> Self {
        Self {
            frame_bytes: 64 * 1024,
            body_bytes: 64 * 1024,
            message_chars: 4096,
            subscriptions_per_socket: 256,
            outbound_queue: 1024,
            outbound_bytes: 1024 * 1024,
            history_page_bytes: 256 * 1024,
            send_rate_per_sec: 20.0,
            send_burst: 50.0,
            handshake_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            login_per_account_per_min: 10,
            login_per_address_per_min: 60,
            register_per_address_per_min: 30,
            tickets_per_user_per_min: 30,
            rooms_per_user_per_min: 10,
            writes_per_user_per_min: 120,
            max_connections: 100_000,
            max_connections_per_address: 1000,
            max_poll_ms: 60_000,
            password_hash_parallel: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(MAX_PASSWORD_HASH_PARALLEL),
            password_hash_queue: 64,
            max_fragments: 64,
            attachment_bytes: 10 * 1024 * 1024,
            attachment_quota_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Accounts, tokens and origins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// Origins (`scheme://host[:port]`, or `"*"` for any) allowed to open
    /// WebSockets. Requests without `Origin` (non-browser clients) are
    /// always allowed; the `Host` header plays no part.
    pub allowed_origins: Vec<String>,
    /// The URL browsers reach the cluster at (`https://chat.example.com`);
    /// its origin is allowed too.
    pub public_url: Option<String>,
    /// A token unused this long stops working.
    pub token_idle_secs: u64,
    /// A token stops working this long after login, used or not.
    pub token_absolute_secs: u64,
    /// Peers whose PROXY protocol v2 header (the balancer's) is believed:
    /// the client address it names counts for every per-address limit.
    /// From any other peer a header is never honoured.
    pub trusted_proxies: Vec<IpAddr>,
    /// The operations token: `Authorization: Bearer <it>` opens
    /// `/api/cluster/members` (and `/metrics` when not public) as an
    /// admin's token does. `PALAVER_OPS_TOKEN` overrides the file.
    pub ops_token: Option<OpsToken>,
    /// `/metrics` answers without credentials.
    pub metrics_public: bool,
    /// Who may register: `open`, `invite` (an admin's invite code) or
    /// `closed`. When absent: `open` if every address clients reach (the
    /// balancer's and the nodes') is loopback, `invite` otherwise; see
    /// [`Config::registration`].
    pub registration: Option<RegistrationMode>,
    /// Clients reach the cluster over TLS: answers carry HSTS. Set from
    /// `[public]` (or by `palaver up --tls`), never read from `[security]`.
    #[serde(skip)]
    pub hsts: bool,
}

/// Who may register through `POST /api/register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone who can reach the public address.
    Open,
    /// With an invite code made by an admin.
    Invite,
    /// Nobody: admins make accounts.
    Closed,
}

impl RegistrationMode {
    /// The name in the cluster file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMode::Open => "open",
            RegistrationMode::Invite => "invite",
            RegistrationMode::Closed => "closed",
        }
    }
}

impl Default for Security {
    fn default() -> Self {
        Self {
            // The balancer's default address, plain and (`palaver up --tls`) over TLS.
            allowed_origins: vec![
                "http://127.0.0.1:8080".into(),
                "http://localhost:8080".into(),
                "https://127.0.0.1:8080".into(),
                "https://localhost:8080".into(),
            ],
            public_url: None,
            token_idle_secs: 24 * 3600,
            token_absolute_secs: 30 * 24 * 3600,
            trusted_proxies: vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
            ops_token: None,
            metrics_public: true,
            registration: None,
            hsts: false,
        }
    }
}

/// Set (to anything) by `palaver up --tls` for its nodes: the balancer in
/// front of them serves TLS, so their answers carry HSTS.
pub const PUBLIC_TLS_ENV: &str = "PALAVER_PUBLIC_TLS";

/// The environment variable that overrides `[security] ops_token`.
pub const OPS_TOKEN_ENV: &str = "PALAVER_OPS_TOKEN";
/// Shortest operations token accepted.
pub const OPS_TOKEN_MIN_LEN: usize = 16;

/// A shared secret for the operations endpoints. Its `Debug` form does not
/// show it, so a logged config leaks nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct OpsToken(String);

impl OpsToken {
    /// Checks a token: at least [`OPS_TOKEN_MIN_LEN`] visible ASCII
    /// characters (it travels in a header).
    pub fn new(token: impl Into<String>) -> Result<Self, ConfigError> {
        let token = token.into();
        if token.len() < OPS_TOKEN_MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid(format!(
                "ops_token must be at least {OPS_TOKEN_MIN_LEN} visible ASCII characters, without spaces"
            )));
        }
        Ok(Self(token))
    }

    /// The token itself, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time independent of where
    /// they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl TryFrom<String> for OpsToken {
    type Error = ConfigError;

    fn try_from(token: String) -> Result<Self, Self::Error> {
        OpsToken::new(token)
    }
}

impl std::fmt::Debug for OpsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpsToken(<redacted>)")
    }
}

/// Why a cluster file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the cluster file {path} (another can be named with --config)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path} is not a valid cluster file: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// The values contradict each other.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// The registration mode: the file's, else `open` only when every
    /// address clients can reach (the balancer's `listen`, each node's
    /// `client`) is loopback, so a try-out on a laptop needs no invite and
    /// a server on a public address is never open by accident.
    pub fn registration(&self) -> RegistrationMode {
        if let Some(mode) = self.security.registration {
            return mode;
        }
        let balancer_listen = self
            .balancer
            .as_ref()
            .and_then(|b| b.get("listen"))
            .and_then(|l| l.as_str())
            .map(|l| l.parse::<SocketAddr>().map(|a| a.ip().is_loopback()).unwrap_or(false));
        let nodes_loopback = self.nodes.iter().all(|n| n.client.ip().is_loopback());
        if nodes_loopback && balancer_listen.unwrap_or(true) {
            RegistrationMode::Open
        } else {
            RegistrationMode::Invite
        }
    }

    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.into(), source },
            other => other,
        })
    }

    /// The fields this file sets that no longer do anything, for a warning.
    pub fn ignored_fields(&self) -> Vec<&'static str> {
        let mut ignored = Vec::new();
        if self.cluster.ack.is_some() {
            ignored.push("[cluster] ack (sends are answered once a majority of the shard's replicas stored them)");
        }
        if self.cluster.failure_timeout_ms.is_some() {
            ignored.push("[cluster] failure_timeout_ms (a shard elects a new leader by itself)");
        }
        ignored
    }

    /// Parses and checks cluster-file text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::from("<text>"), source: Box::new(e) })?;
        config.validate()?;
        Ok(config)
    }

    /// The node with this id.
    pub fn node(&self, id: u64) -> Option<&NodeSection> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=MAX_STORE_CACHE_MIB).contains(&self.cluster.store_cache_mib) {
            return Err(ConfigError::Invalid(format!(
                "[cluster] store_cache_mib must be from 2 to {MAX_STORE_CACHE_MIB}"
            )));
        }
        if !(1..=MAX_SHARDS).contains(&self.cluster.shards) {
            return Err(ConfigError::Invalid(format!("[cluster] shards must be from 1 to {MAX_SHARDS}")));
        }
        if !(1..=MAX_REPLICATION).contains(&self.cluster.replication) {
            return Err(ConfigError::Invalid(format!("[cluster] replication must be from 1 to {MAX_REPLICATION}")));
        }
        let mut ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid("two [[node]] entries share an id".into()));
        }
        if ids.contains(&0) {
            return Err(ConfigError::Invalid("node ids start at 1".into()));
        }
        let l = &self.limits;
        if l.frame_bytes < 1024 || l.body_bytes < 1024 {
            return Err(ConfigError::Invalid("frame_bytes and body_bytes must be at least 1024".into()));
        }
        if l.message_chars == 0 || l.outbound_queue == 0 || l.subscriptions_per_socket == 0 {
            return Err(ConfigError::Invalid(
                "message_chars, outbound_queue and subscriptions_per_socket must be positive".into(),
            ));
        }
        if l.history_page_bytes < 8 * 1024 || l.outbound_bytes < l.history_page_bytes {
            return Err(ConfigError::Invalid(
                "history_page_bytes must be at least 8192 and outbound_bytes at least history_page_bytes".into(),
            ));
        }
        if l.login_per_account_per_min == 0
            || l.login_per_address_per_min == 0
            || l.register_per_address_per_min == 0
            || l.tickets_per_user_per_min == 0
            || l.rooms_per_user_per_min == 0
            || l.writes_per_user_per_min == 0
        {
            return Err(ConfigError::Invalid("the per-minute limits must be positive".into()));
        }
        if l.send_rate_per_sec <= 0.0 || l.send_burst < 1.0 {
            return Err(ConfigError::Invalid("send_rate_per_sec must be positive and send_burst at least 1".into()));
        }
        if !(1..=MAX_PASSWORD_HASH_PARALLEL).contains(&l.password_hash_parallel) {
            return Err(ConfigError::Invalid(format!(
                "password_hash_parallel must be from 1 to {MAX_PASSWORD_HASH_PARALLEL}"
            )));
        }
        if !(1..=MAX_PASSWORD_HASH_QUEUE).contains(&l.password_hash_queue) {
            return Err(ConfigError::Invalid(format!(
                "password_hash_queue must be from 1 to {MAX_PASSWORD_HASH_QUEUE}"
            )));
        }
        if l.max_fragments == 0 {
            return Err(ConfigError::Invalid("max_fragments must be positive".into()));
        }
        if l.handshake_timeout_ms == 0 || l.write_timeout_ms == 0 {
            return Err(ConfigError::Invalid("handshake_timeout_ms and write_timeout_ms must be positive".into()));
        }
        if l.max_connections == 0 || l.max_connections_per_address == 0 {
            return Err(ConfigError::Invalid(
                "max_connections and max_connections_per_address must be positive".into(),
            ));
        }
        if self.security.token_idle_secs == 0 || self.security.token_absolute_secs == 0 {
            return Err(ConfigError::Invalid("token lifetimes must be positive".into()));
        }
        OriginPolicy::new(&self.security.allowed_origins, self.security.public_url.as_deref())
            .map_err(|e| ConfigError::Invalid(format!("[security] allowed_origins or public_url: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_the_design_before_shards_load_but_are_reported_ignored() {
        let c = Config::parse("[cluster]\nack = \"local\"\nfailure_timeout_ms = 3000\n").expect("an old file loads");
        assert_eq!(c.ignored_fields().len(), 2, "{:?}", c.ignored_fields());
        assert!(Config::parse("").expect("empty config").ignored_fields().is_empty());
        let out = toml::to_string(&c).expect("serialises");
        assert!(!out.contains("ack") && !out.contains("failure_timeout_ms"), "{out}");
    }

    #[test]
    fn registration_is_open_only_on_loopback_unless_the_file_says() {
        let local = "[[node]]\nid = 1\nclient = \"127.0.0.1:7101\"\npeer = \"127.0.0.1:7201\"\n";
        assert_eq!(Config::parse("").expect("empty").registration(), RegistrationMode::Open);
        assert_eq!(Config::parse(local).expect("local").registration(), RegistrationMode::Open);
        let public = local.replace("127.0.0.1:7101", "0.0.0.0:7101");
        assert_eq!(Config::parse(&public).expect("public").registration(), RegistrationMode::Invite);
        let behind = format!("{local}[balancer]\nlisten = \"0.0.0.0:8080\"\n");
        assert_eq!(Config::parse(&behind).expect("balancer").registration(), RegistrationMode::Invite);
        let closed = format!("{public}[security]\nregistration = \"closed\"\n");
        assert_eq!(Config::parse(&closed).expect("closed").registration(), RegistrationMode::Closed);
        assert!(Config::parse("[security]\nregistration = \"maybe\"\n").is_err());
    }

    #[test]
    fn shard_counts_out_of_range_are_refused() {
        assert_eq!(Config::parse("").expect("empty config").cluster.shards, 64);
        for bad in [
            "[cluster]\nshards = 0\n",
            "[cluster]\nshards = 1025\n",
            "[cluster]\nreplication = 0\n",
            "[cluster]\nstore_cache_mib = 1\n",
            "[cluster]\nstore_cache_mib = 1048577\n",
        ] {
            assert!(matches!(Config::parse(bad), Err(ConfigError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let c = Config::parse("").expect("empty config");
        assert_eq!(c.limits.frame_bytes, 65536);
        assert_eq!(c.limits.password_hash_queue, 64);
        assert_eq!(c.limits.max_fragments, 64);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(c.limits.password_hash_parallel, cores.min(MAX_PASSWORD_HASH_PARALLEL));
        assert_eq!(c.security.public_url, None);
        assert_eq!(c.cluster.storage, EngineKind::Redb);
        assert_eq!(c.cluster.store_cache_bytes(), 128 * 1024 * 1024);
        assert!(c.nodes.is_empty());
    }

    #[test]
    fn a_config_written_as_toml_reads_back_the_same() {
        let mut c = Config::default();
        c.cluster.tls_dir = Some(PathBuf::from("/tmp/tls"));
        c.nodes.push(NodeSection {
            id: 2,
            client: "127.0.0.1:7102".parse().expect("addr"),
            peer: "127.0.0.1:7202".parse().expect("addr"),
            weight: 3,
        });
        c.limits.send_burst = 10.0;
        c.security.ops_token = Some(OpsToken::new("0123456789abcdef-secret").expect("token"));
        c.security.trusted_proxies = vec!["10.0.0.5".parse().expect("ip")];
        let text = toml::to_string(&c).expect("serialises");
        let back = Config::parse(&text).expect("reads back");
        assert_eq!(toml::to_string(&back).expect("serialises"), text);
        assert_eq!(back.node(2).map(|n| (n.peer.port(), n.weight)), Some((7202, 3)));
        assert!(back.security.ops_token.is_some_and(|t| t.matches("0123456789abcdef-secret")));
    }

    #[test]
    fn connection_settings_are_read_and_the_token_is_not_shown() {
        let c = Config::default();
        assert_eq!((c.limits.write_timeout_ms, c.limits.max_connections_per_address), (30_000, 1000));
        assert_eq!(
            c.security.trusted_proxies,
            ["127.0.0.1".parse::<IpAddr>().expect("ip"), "::1".parse().expect("ip")]
        );
        assert!(c.security.ops_token.is_none() && c.security.metrics_public);
        let c = Config::parse(
            r#"
            [limits]
            write_timeout_ms = 500
            max_connections_per_address = 7
            [security]
            trusted_proxies = ["10.0.0.5"]
            ops_token = "0123456789abcdef-secret"
            metrics_public = false
            "#,
        )
        .expect("valid config");
        assert_eq!((c.limits.write_timeout_ms, c.limits.max_connections_per_address), (500, 7));
        assert_eq!(c.security.trusted_proxies, ["10.0.0.5".parse::<IpAddr>().expect("ip")]);
        assert!(!c.security.metrics_public);
        let token = c.security.ops_token.clone().expect("a token");
        assert!(token.matches("0123456789abcdef-secret"));
        assert!(!token.matches("0123456789abcdef-secreT") && !token.matches("0123456789abcdef"));
        assert!(!format!("{:?}", c.security).contains("secret"), "Debug shows the token");
    }

    #[test]
    fn the_example_file_parses_and_states_the_defaults() {
        let c = Config::parse(include_str!("../../cluster.example.toml")).expect("the example parses");
        let (l, d) = (&c.limits, Limits::default());
        assert_eq!(
            (l.handshake_timeout_ms, l.write_timeout_ms, l.max_connections, l.max_connections_per_address),
            (d.handshake_timeout_ms, d.write_timeout_ms, d.max_connections, d.max_connections_per_address)
        );
        assert_eq!(
            (l.password_hash_queue, l.max_fragments, l.outbound_bytes, l.history_page_bytes),
            (d.password_hash_queue, d.max_fragments, d.outbound_bytes, d.history_page_bytes)
        );
        assert_eq!(l.password_hash_parallel, d.password_hash_parallel, "left to its default there");
        let (s, d) = (&c.security, Security::default());
        assert_eq!((&s.trusted_proxies, s.metrics_public, s.ops_token.is_none()), (&d.trusted_proxies, true, true));
        assert_eq!((&s.allowed_origins, &s.public_url), (&d.allowed_origins, &None));
    }

    #[test]
    fn nodes_and_engine_are_read() {
        let c = Config::parse(
            r#"
            [cluster]
            storage = "sled"
            [[node]]
            id = 1
            client = "127.0.0.1:7101"
            peer = "127.0.0.1:7201"
            weight = 3
            "#,
        )
        .expect("valid config");
        assert_eq!(c.cluster.storage, EngineKind::Sled);
        assert_eq!(c.node(1).map(|n| n.weight), Some(3));
    }

    #[test]
    fn new_limits_and_origins_are_read() {
        let c = Config::parse(
            r#"
            [limits]
            password_hash_parallel = 3
            password_hash_queue = 10
            max_fragments = 8
            [security]
            allowed_origins = ["*", "HTTPS://Chat.Example.com/"]
            public_url = "https://chat.example.com"
            "#,
        )
        .expect("valid config");
        assert_eq!((c.limits.password_hash_parallel, c.limits.password_hash_queue, c.limits.max_fragments), (3, 10, 8));
        assert_eq!(c.security.public_url.as_deref(), Some("https://chat.example.com"));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("[limits]\nframe_bytes = 10", "frame_bytes"),
            ("[limits]\nno_such = 1", "no_such"),
            ("[cluster]\nstorage = \"rocks\"", "rocks"),
            ("[limits]\npassword_hash_parallel = 0", "password_hash_parallel"),
            ("[limits]\npassword_hash_parallel = 100000", "password_hash_parallel"),
            ("[limits]\npassword_hash_queue = 0", "password_hash_queue"),
            ("[limits]\nmax_fragments = 0", "max_fragments"),
            (
                "[security]\nallowed_origins = [\"https://ok.example\", \"https://chat.example/app\"]",
                "https://chat.example/app",
            ),
            ("[security]\nallowed_origins = [\"null\"]", "\"null\""),
            ("[security]\nallowed_origins = [\"chat.example:8080\"]", "chat.example:8080"),
            ("[security]\npublic_url = \"https://chat.example/\"\nallowed_origins = [\"ftp://x\"]", "ftp://x"),
            ("[security]\npublic_url = \"chat.example\"", "chat.example"),
            ("[limits]\nwrite_timeout_ms = 0", "write_timeout_ms"),
            ("[limits]\nmax_connections_per_address = 0", "max_connections_per_address"),
            ("[security]\nops_token = \"short\"", "ops_token"),
            ("[security]\nops_token = \"has a space in it, see\"", "ops_token"),
            ("[security]\ntrusted_proxies = [\"balancer.local\"]", "trusted_proxies"),
            (
                "[[node]]\nid=1\nclient=\"127.0.0.1:1\"\npeer=\"127.0.0.1:2\"\n[[node]]\nid=1\nclient=\"127.0.0.1:3\"\npeer=\"127.0.0.1:4\"",
                "share an id",
            ),
        ] {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle}");
        }
    }
}
