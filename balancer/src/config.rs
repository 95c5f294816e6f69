//! Settings: what the balancer is told, from the cluster file's
//! `[balancer]` section and `[[node]]` list or built directly by a caller.
//!
//! This module only reads and checks values; it opens no sockets.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::tls::TlsFiles;

/// How a node is chosen for each new client connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Each eligible node in turn (`round-robin`).
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin, nginx's algorithm (`weighted`).
    Weighted,
    /// The node with the fewest open relayed connections, ties in turn
    /// (`least-connections`).
    LeastConnections,
}

impl Strategy {
    /// Every strategy, in the order the help text lists them.
    pub const ALL: [Strategy; 3] = [Strategy::RoundRobin, Strategy::Weighted, Strategy::LeastConnections];

    /// The name used on the command line and in the cluster file.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Weighted => "weighted",
            Strategy::LeastConnections => "least-connections",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| ConfigError::UnknownStrategy(s.to_string()))
    }
}

/// One node the balancer may send clients to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The node's id in the cluster.
    pub id: u64,
    /// The node's client address (where clients and health checks go).
    pub addr: SocketAddr,
    /// Share of new clients under the `weighted` strategy; 0 never gets any.
    pub weight: u32,
}

/// Everything the balancer needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct BalancerSettings {
    /// Public address clients connect to (the caller binds it).
    pub listen: SocketAddr,
    /// Address of the operations endpoints (the caller binds it).
    pub admin: SocketAddr,
    /// How nodes are chosen.
    pub strategy: Strategy,
    /// Nodes known from the configuration.
    pub nodes: Vec<Backend>,
    /// Time between two health checks of one node.
    pub health_interval: Duration,
    /// Consecutive failed checks that take a node out.
    pub down_after: u32,
    /// Consecutive good checks that bring a node back.
    pub up_after: u32,
    /// Client connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Longest wait for a node to accept a connection (and for a health
    /// answer, and for a client's first bytes).
    pub connect_timeout: Duration,
    /// A relayed connection with no bytes either way this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long open relayed connections may go on.
    pub grace: Duration,
    /// Learn nodes from the cluster (`GET /api/cluster/members`).
    pub discover: bool,
    /// Write a PROXY protocol v2 header to the node before a relayed
    /// client's bytes, so the node sees the client's address.
    pub proxy_protocol: bool,
    /// Client connections open at once from one IP address; more are
    /// closed on accept.
    pub max_connections_per_address: usize,
    /// The cluster's operations token (`[security] ops_token`): required on
    /// the admin address (except `/healthz`) and sent with member discovery.
    pub ops_token: Option<OpsToken>,
    /// TLS on the public address (`[public] tls_cert`, `tls_key`); plain
    /// TCP when absent.
    pub tls: Option<TlsFiles>,
}

/// The `[public]` section of the cluster file: what clients connect to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct PublicSection {
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// Shortest operations token accepted (as the nodes require).
pub const OPS_TOKEN_MIN_LEN: usize = 16;

/// A shared secret for the operations endpoints. Its `Debug` form does not
/// show it.
#[derive(Clone, PartialEq, Eq)]
pub struct OpsToken(String);

impl OpsToken {
    /// Checks a token: at least [`OPS_TOKEN_MIN_LEN`] visible ASCII characters.
    pub fn new(token: impl Into<String>) -> Result<Self, ConfigError> {
        let token = token.into();
        if token.len() < OPS_TOKEN_MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid {
                field: "ops_token",
                reason: format!("must be at least {OPS_TOKEN_MIN_LEN} visible ASCII characters, without spaces"),
            });
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

impl fmt::Debug for OpsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpsToken(<redacted>)")
    }
}

/// Public address when the cluster file says nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Admin address when the cluster file says nothing.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8081";

impl Default for BalancerSettings {
    /// The documented defaults, with no nodes.
    fn default() -> Self {
        BalancerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 8081)),
            strategy: Strategy::RoundRobin,
            nodes: Vec::new(),
            health_interval: Duration::from_secs(1),
            down_after: 3,
            up_after: 2,
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(300),
            grace: Duration::from_secs(10),
            discover: true,
            proxy_protocol: true,
            max_connections_per_address: 1000,
            ops_token: None,
            tls: None,
        }
    }
}

/// A problem with the balancer's settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cluster file could not be read.
    #[error("cannot read the cluster file {path} (another can be named with --config)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cluster file is not TOML.
    #[error("cannot parse {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A section has a field of the wrong type, an unknown field or a bad address.
    #[error("bad [{section}] section: {source}")]
    Section {
        /// `balancer` or `node`.
        section: &'static str,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A strategy name that is none of `round-robin`, `weighted`, `least-connections`.
    #[error("unknown strategy {0:?} (expected round-robin, weighted or least-connections)")]
    UnknownStrategy(String),
    /// A value that cannot work (zero thresholds, zero durations, duplicate ids).
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// The `[balancer]` section as written (absent fields take the defaults of
/// [`BalancerSettings`]); it serialises back, so tools write it typed.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerSection {
    /// Public address.
    pub listen: Option<SocketAddr>,
    /// Admin address.
    pub admin: Option<SocketAddr>,
    /// Strategy name (`round-robin`, `weighted`, `least-connections`).
    pub strategy: Option<String>,
    /// Time between two health checks of one node, ms.
    pub health_interval_ms: Option<u64>,
    /// Consecutive failed checks that take a node out.
    pub down_after: Option<u32>,
    /// Consecutive good checks that bring a node back.
    pub up_after: Option<u32>,
    /// Client connections open at once.
    pub max_connections: Option<usize>,
    /// Longest wait for a node to accept a connection, ms.
    pub connect_timeout_ms: Option<u64>,
    /// Idle lifetime of a relayed connection, ms.
    pub idle_timeout_ms: Option<u64>,
    /// How long relayed connections may go on after shutdown, ms.
    pub grace_ms: Option<u64>,
    /// Learn nodes from the cluster's member list.
    pub discover: Option<bool>,
    /// Send a PROXY protocol v2 header to the node.
    pub proxy_protocol: Option<bool>,
    /// Client connections open at once from one IP address.
    pub max_connections_per_address: Option<usize>,
}

/// What the balancer reads of the `[security]` section (the rest is the
/// nodes').
#[derive(Deserialize, Default)]
#[serde(default)]
struct SecuritySection {
    ops_token: Option<String>,
}

/// One `[[node]]` entry as the balancer reads it; fields meant for the
/// nodes themselves are ignored.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeEntry {
    /// The node's id.
    pub id: u64,
    /// The node's client address.
    pub client: SocketAddr,
    /// Share of new clients under the `weighted` strategy.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl BalancerSettings {
    /// Reads the `[balancer]` section and the `[[node]]` list of a whole
    /// cluster file; `strategy_override` (the command line) wins over the file.
    pub fn from_toml(value: &toml::Value, strategy_override: Option<Strategy>) -> Result<Self, ConfigError> {
        let section: BalancerSection = match value.get("balancer") {
            Some(v) => {
                v.clone().try_into().map_err(|e| ConfigError::Section { section: "balancer", source: Box::new(e) })?
            }
            None => BalancerSection::default(),
        };
        let entries: Vec<NodeEntry> = match value.get("node") {
            Some(v) => {
                v.clone().try_into().map_err(|e| ConfigError::Section { section: "node", source: Box::new(e) })?
            }
            None => Vec::new(),
        };
        let security: SecuritySection = match value.get("security") {
            Some(v) => {
                v.clone().try_into().map_err(|e| ConfigError::Section { section: "security", source: Box::new(e) })?
            }
            None => SecuritySection::default(),
        };
        let public: PublicSection = match value.get("public") {
            Some(v) => {
                v.clone().try_into().map_err(|e| ConfigError::Section { section: "public", source: Box::new(e) })?
            }
            None => PublicSection::default(),
        };
        let tls = match (public.tls_cert, public.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    field: "tls_cert",
                    reason: "[public] needs both tls_cert and tls_key, or neither".into(),
                });
            }
        };
        let d = BalancerSettings::default();
        let strategy = match (strategy_override, &section.strategy) {
            (Some(s), _) => s,
            (None, Some(name)) => name.parse()?,
            (None, None) => d.strategy,
        };
        let ms = |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
        let settings = BalancerSettings {
            listen: section.listen.unwrap_or(d.listen),
            admin: section.admin.unwrap_or(d.admin),
            strategy,
            nodes: entries.into_iter().map(|n| Backend { id: n.id, addr: n.client, weight: n.weight }).collect(),
            health_interval: ms(section.health_interval_ms, d.health_interval),
            down_after: section.down_after.unwrap_or(d.down_after),
            up_after: section.up_after.unwrap_or(d.up_after),
            max_connections: section.max_connections.unwrap_or(d.max_connections),
            connect_timeout: ms(section.connect_timeout_ms, d.connect_timeout),
            idle_timeout: ms(section.idle_timeout_ms, d.idle_timeout),
            grace: ms(section.grace_ms, d.grace),
            discover: section.discover.unwrap_or(d.discover),
            proxy_protocol: section.proxy_protocol.unwrap_or(d.proxy_protocol),
            max_connections_per_address: section.max_connections_per_address.unwrap_or(d.max_connections_per_address),
            ops_token: security.ops_token.map(OpsToken::new).transpose()?,
            tls,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Reads a cluster file from disk (see [`BalancerSettings::from_toml`]).
    pub fn load(path: &Path, strategy_override: Option<Strategy>) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let value: toml::Value = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })?;
        BalancerSettings::from_toml(&value, strategy_override)
    }

    /// Checks the values that would make the balancer misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.to_string() });
        if self.down_after == 0 {
            return invalid("down_after", "must be at least 1");
        }
        if self.up_after == 0 {
            return invalid("up_after", "must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.max_connections_per_address == 0 {
            return invalid("max_connections_per_address", "must be at least 1");
        }
        for (field, value) in [
            ("health_interval_ms", self.health_interval),
            ("connect_timeout_ms", self.connect_timeout),
            ("idle_timeout_ms", self.idle_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be more than 0");
            }
        }
        let mut ids = BTreeSet::new();
        for n in &self.nodes {
            if !ids.insert(n.id) {
                return Err(ConfigError::Invalid {
                    field: "node.id",
                    reason: format!("node {} is listed twice", n.id),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, over: Option<Strategy>) -> Result<BalancerSettings, ConfigError> {
        let value: toml::Value = toml::from_str(text).expect("test TOML parses");
        BalancerSettings::from_toml(&value, over)
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(parse("", None).expect("valid"), BalancerSettings::default());
    }

    #[test]
    fn every_field_is_read() {
        let s = parse(
            r#"
            [cluster]
            data_dir = "x"
            [balancer]
            listen = "0.0.0.0:9000"
            admin = "127.0.0.1:9001"
            strategy = "weighted"
            health_interval_ms = 250
            down_after = 5
            up_after = 4
            max_connections = 7
            connect_timeout_ms = 300
            idle_timeout_ms = 400
            grace_ms = 500
            discover = false
            proxy_protocol = false
            max_connections_per_address = 9
            [security]
            ops_token = "0123456789abcdef-ops"
            allowed_origins = ["http://x"]
            [public]
            tls_cert = "/etc/p/cert.pem"
            tls_key = "/etc/p/key.pem"
            [[node]]
            id = 1
            client = "127.0.0.1:7101"
            peer = "127.0.0.1:7201"
            [[node]]
            id = 2
            client = "127.0.0.1:7102"
            peer = "127.0.0.1:7202"
            weight = 3
            "#,
            None,
        )
        .expect("valid");
        let expected = BalancerSettings {
            listen: "0.0.0.0:9000".parse().expect("addr"),
            admin: "127.0.0.1:9001".parse().expect("addr"),
            strategy: Strategy::Weighted,
            nodes: vec![
                Backend { id: 1, addr: "127.0.0.1:7101".parse().expect("addr"), weight: 1 },
                Backend { id: 2, addr: "127.0.0.1:7102".parse().expect("addr"), weight: 3 },
            ],
            health_interval: Duration::from_millis(250),
            down_after: 5,
            up_after: 4,
            max_connections: 7,
            connect_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(400),
            grace: Duration::from_millis(500),
            discover: false,
            proxy_protocol: false,
            max_connections_per_address: 9,
            ops_token: Some(OpsToken::new("0123456789abcdef-ops").expect("token")),
            tls: Some(TlsFiles { cert: "/etc/p/cert.pem".into(), key: "/etc/p/key.pem".into() }),
        };
        assert_eq!(s, expected);
        assert!(!format!("{s:?}").contains("abcdef"), "Debug shows the token");
        let token = s.ops_token.expect("token");
        assert!(token.matches("0123456789abcdef-ops") && !token.matches("0123456789abcdef-opS"));
    }

    #[test]
    fn the_example_file_states_the_defaults() {
        let s = parse(include_str!("../../cluster.example.toml"), None).expect("the example parses");
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(BalancerSettings { nodes: Vec::new(), ..s }, BalancerSettings::default());
    }

    #[test]
    fn the_command_line_strategy_wins() {
        let s = parse("[balancer]\nstrategy = \"weighted\"\n", Some(Strategy::LeastConnections)).expect("valid");
        assert_eq!(s.strategy, Strategy::LeastConnections);
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(s.to_string().parse::<Strategy>().expect("own name parses"), s);
        }
        assert!(matches!("fastest".parse::<Strategy>(), Err(ConfigError::UnknownStrategy(n)) if n == "fastest"));
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            ("[balancer]\nstrategy = \"random\"\n", "unknown strategy"),
            ("[balancer]\ndown_after = 0\n", "down_after"),
            ("[balancer]\nup_after = 0\n", "up_after"),
            ("[balancer]\nhealth_interval_ms = 0\n", "health_interval_ms"),
            ("[balancer]\nlisten = \"nowhere\"\n", "[balancer]"),
            ("[balancer]\nlisen = \"127.0.0.1:1\"\n", "[balancer]"),
            ("[[node]]\nid = 1\n", "[node]"),
            ("[balancer]\nmax_connections_per_address = 0\n", "max_connections_per_address"),
            ("[security]\nops_token = \"short\"\n", "ops_token"),
            ("[security]\nops_token = 5\n", "[security]"),
            ("[[node]]\nid = 1\nclient = \"127.0.0.1:1\"\n[[node]]\nid = 1\nclient = \"127.0.0.1:2\"\n", "twice"),
        ];
        for (text, needle) in cases {
            let err = parse(text, None).expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?}: {err:?} should mention {needle:?}");
        }
    }
}
