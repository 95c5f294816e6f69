//! What a node does for clients, independent of the transport: accounts,
//! rooms, messages and delivery. HTTP, WebSocket, SSE and long polling all
//! call these operations and only translate their answers.

mod accounts;
mod effects;
mod error;
mod messages;
mod rooms;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;

pub use self::accounts::LoginOk;
pub use self::accounts::Session;
pub use self::error::ApiError;
pub use self::rooms::MemberView;
pub use self::rooms::RoomView;
pub(crate) use self::rooms::check_room_id;
use crate::auth::Passwords;
use crate::config::Limits;
use crate::config::Security;
use crate::hub::Event;
use crate::hub::Hub;
use crate::meta::MetaCommand;
use crate::meta::MetaOk;
use crate::meta::MetaState;
use crate::meta::TokenHash;
use crate::protocol::MessageView;
use crate::protocol::to_json;
use crate::raft::Consensus;
use crate::raft::PeerNode;
use crate::raft::RaftSettings;
use crate::ratelimit::KeyedLimiter;
use crate::rooms::CommitAtOnce;
use crate::rooms::LogWriter;
use crate::rooms::Published;
use crate::rooms::Publisher;
use crate::rooms::RoomLog;
use crate::storage::EngineKind;
use crate::storage::{self};

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Raft node id.
    pub id: u64,
    /// Where this node keeps its files.
    pub data_dir: PathBuf,
    /// Storage engine.
    pub storage: EngineKind,
    /// Client limits.
    pub limits: Limits,
    /// Token and origin settings.
    pub security: Security,
    /// The cluster's initial members (this node alone for a single node).
    pub members: BTreeMap<u64, PeerNode>,
}

/// A running node's shared state.
pub struct Node {
    /// Raft node id.
    pub id: u64,
    /// Client limits.
    pub limits: Limits,
    /// Token and origin settings.
    pub security: Security,
    /// Cluster metadata.
    pub consensus: Arc<Consensus>,
    /// Room logs (reads).
    pub log: Arc<RoomLog>,
    /// Room logs (writes).
    pub writer: LogWriter,
    /// Local listeners.
    pub hub: Arc<Hub>,
    passwords: Passwords,
    login_by_account: KeyedLimiter<String>,
    login_by_address: KeyedLimiter<IpAddr>,
    register_by_address: KeyedLimiter<IpAddr>,
    /// Sends over HTTP, per session (sockets have their own bucket).
    http_sends: KeyedLimiter<TokenHash>,
    /// Tokens whose use was recently recorded through Raft, and when.
    touched: Mutex<HashMap<TokenHash, u64>>,
    metrics: PrometheusHandle,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A store could not be opened.
    #[error("cannot open {path}: {source}")]
    Storage {
        /// Which file.
        path: PathBuf,
        /// The cause.
        source: storage::StorageError,
    },
    /// Raft could not start.
    #[error("metadata consensus failed to start: {0}")]
    Consensus(String),
    /// A thread or hasher could not be made.
    #[error("{0}")]
    Setup(String),
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist when several nodes share a process
            // (tests); this node's figures then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

fn open_store(dir: &std::path::Path, name: &str, kind: EngineKind) -> Result<storage::Store, StartError> {
    let path = match kind {
        EngineKind::Redb => dir.join(format!("{name}.redb")),
        EngineKind::Sled => dir.join(format!("{name}.sled")),
    };
    storage::open(kind, &path).map_err(|source| StartError::Storage { path, source })
}

impl Node {
    /// Opens the stores, starts the log writer and Raft, and waits for a leader.
    pub async fn start(settings: NodeSettings) -> Result<Arc<Node>, StartError> {
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            StartError::Setup(format!("cannot create data folder {}: {e}", settings.data_dir.display()))
        })?;
        let metrics = metrics_handle();
        let raft_store = open_store(&settings.data_dir, "raft", settings.storage)?;
        let rooms_store = open_store(&settings.data_dir, "rooms", settings.storage)?;
        let hub = Arc::new(Hub::new());
        let log = Arc::new(RoomLog::new(rooms_store));
        let publish_hub = hub.clone();
        let publish: Publisher = Arc::new(move |p| publish_committed(&publish_hub, p));
        let writer = LogWriter::start(log.clone(), Arc::new(CommitAtOnce { log: log.clone(), publish }))
            .map_err(|e| StartError::Setup(format!("cannot start the room log writer: {e}")))?;
        let (effects_tx, effects_rx) = tokio::sync::mpsc::unbounded_channel();
        let node_info = settings.members.get(&settings.id).cloned().unwrap_or_default();
        let raft_settings = RaftSettings::new(settings.id, node_info, settings.members.clone());
        let consensus = Consensus::start(
            raft_settings,
            raft_store,
            crate::raft::NoPeers,
            Arc::new(move |effects| {
                // The receiver lives as long as the node; after that nothing listens.
                let _ = effects_tx.send(effects);
            }),
        )
        .await
        .map_err(|e| StartError::Consensus(e.to_string()))?;
        let consensus = Arc::new(consensus);
        consensus
            .wait_for_leader(Duration::from_secs(30))
            .await
            .map_err(|e| StartError::Consensus(format!("no leader: {e}")))?;
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let passwords = Passwords::new(parallel).map_err(|e| StartError::Setup(e.to_string()))?;
        let limits = settings.limits.clone();
        let node = Arc::new(Node {
            id: settings.id,
            login_by_account: KeyedLimiter::per_minute(limits.login_per_account_per_min),
            login_by_address: KeyedLimiter::per_minute(limits.login_per_address_per_min),
            register_by_address: KeyedLimiter::per_minute(limits.register_per_address_per_min),
            http_sends: KeyedLimiter::new(limits.send_rate_per_sec, limits.send_burst),
            limits,
            security: settings.security,
            consensus,
            log,
            writer,
            hub,
            passwords,
            touched: Mutex::new(HashMap::new()),
            metrics,
        });
        tokio::spawn(effects::run(Arc::downgrade(&node), effects_rx));
        tokio::spawn(accounts::sweep_expired(Arc::downgrade(&node)));
        Ok(node)
    }

    /// A read view of the metadata.
    pub fn meta(&self) -> parking_lot::RwLockReadGuard<'_, MetaState> {
        self.consensus.state()
    }

    /// Proposes a metadata command stamped with this node's clock.
    pub async fn propose(&self, cmd: MetaCommand) -> Result<MetaOk, ApiError> {
        Ok(self.consensus.propose(crate::clock::now_ms(), cmd).await??)
    }

    /// The Prometheus text of this process's metrics.
    pub fn render_metrics(&self) -> String {
        metrics::gauge!("palaver_connections_open").set(self.hub.connection_count() as f64);
        self.metrics.render()
    }

    /// Stops Raft; connections must have been closed by the caller.
    pub async fn shutdown(&self) {
        self.consensus.shutdown().await;
    }
}

/// Turns a committed write into the event every local listener gets.
fn publish_committed(hub: &Hub, p: Published) {
    match p {
        Published::Message { room, room_key, message } => {
            let json = to_json(&MessageView::event(&room, &message));
            hub.publish(Event { room_key, seq: message.seq, room, json: json.into(), except: None });
        }
        Published::Deleted { room, room_key, seq } => {
            let json = crate::protocol::deleted_event(&room, seq);
            hub.publish(Event { room_key, seq: 0, room, json: json.into(), except: None });
        }
    }
}
