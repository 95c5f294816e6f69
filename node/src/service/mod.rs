//! What a node does for clients, independent of the transport: accounts,
//! rooms, messages and delivery. HTTP, WebSocket, SSE and long polling all
//! call these operations and only translate their answers.

mod accounts;
mod administration;
mod attachments;
mod consistency;
mod effects;
mod membership;
mod messages;
mod peers;
mod quotas;
mod read_markers;
mod reads;
mod retention;
mod rooms;
mod search;
mod shards;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use palaver_protocol::ServerEvent;
use parking_lot::Mutex;

pub use self::accounts::Session;
pub use self::attachments::Download;
pub use self::attachments::STREAM_FILE_GET;
pub use self::attachments::STREAM_FILE_PUT;
pub use self::consistency::AWAIT_APPLIED;
pub use self::consistency::CatchUpReason;
pub use self::consistency::LEASE;
pub use self::consistency::ReadBarrier;
pub use self::messages::HistoryPage;
pub use self::messages::NewPost;
pub(crate) use self::messages::may_react;
pub(crate) use self::messages::may_send;
pub use self::quotas::Quotas;
pub use self::quotas::Usage;
pub use self::retention::DAY_MS;
pub use self::retention::Retention;
pub(crate) use self::rooms::check_room_id;
pub(crate) use self::rooms::room_ref;
pub use self::search::Found;
pub use self::shards::Shards;
use crate::auth::Passwords;
use crate::cluster::Cluster;
use crate::cluster::raft_net::QuicRaftNetwork;
use crate::cluster::wire::RaftAnswer;
use crate::cluster::wire::RaftCall;
use crate::config::Limits;
use crate::config::Security;
pub use crate::error::ApiError;
use crate::hub::Event;
use crate::hub::Hub;
use crate::hub::Relay;
use crate::meta::MetaCommand;
use crate::meta::MetaOk;
use crate::meta::MetaRequest;
use crate::meta::MetaState;
use crate::meta::TokenHash;
use crate::peer::NodeIdentity;
use crate::peer::PeerEndpoint;
use crate::peer::PeerSettings;
use crate::protocol::message_event;
use crate::raft::Consensus;
use crate::raft::ConsensusError;
use crate::raft::PeerNode;
use crate::raft::RaftSettings;
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
    /// The page cache of each of the node's two stores, in bytes.
    pub store_cache_bytes: usize,
    /// Client limits.
    pub limits: Limits,
    /// Token and origin settings.
    pub security: Security,
    /// The cluster's initial members (this node alone for a single node).
    pub members: BTreeMap<u64, PeerNode>,
    /// Peer transport settings; `None` for a node on its own.
    pub cluster: Option<ClusterSettings>,
    /// Room logs on this many shards (a node alone: each with one replica).
    pub shards: u32,
    /// How long messages are kept.
    pub retention: Retention,
}

/// How a node reaches its peers.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// UDP address for QUIC.
    pub bind: SocketAddr,
    /// Every node's peer address, this one included.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// This node's certificate, key and the cluster CA.
    pub identity: NodeIdentity,
    /// Replicas per shard.
    pub replication: u8,
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
    /// Room logs (reads; written by the shards' state machines).
    pub log: Arc<RoomLog>,
    /// Local listeners.
    pub hub: Arc<Hub>,
    passwords: Passwords,
    /// What one user, account or address may make the cluster do.
    pub quotas: Quotas,
    /// Tokens whose use was recently recorded through Raft, and when.
    touched: Mutex<HashMap<TokenHash, u64>>,
    metrics: PrometheusHandle,
    publish: Publisher,
    /// Shares the ReadIndex round trips of catch-ups.
    barrier: ReadBarrier,
    /// Read markers waiting for their (coalesced) write.
    read_markers: Arc<read_markers::ReadMarkers>,
    /// Peers, when this node is part of a cluster.
    pub cluster: Option<Cluster>,
    /// Full-text index of the room logs held here.
    search: Arc<crate::search::SearchIndex>,
    /// How long messages are kept.
    pub retention: Retention,
    /// The room logs' Raft groups (a node alone is a cluster of one).
    shards: Shards,
    /// Attachment files this node holds.
    pub files: Arc<crate::rooms::files::Files>,
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

/// How long a starting node waits for a metadata leader.
const LEADER_WAIT: Duration = Duration::from_secs(60);
/// How often a node waiting to join says so.
const JOIN_NOTICE_EVERY: Duration = Duration::from_secs(15);
/// Hops a metadata write may take looking for the leader.
const FORWARD_ATTEMPTS: usize = 4;
/// How long a forwarded metadata write may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

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

/// How long the room-log store's writes stay in memory before they are
/// committed, all in one transaction ([`storage::MemtableEngine`]): the
/// shards' state machines never ask for a flush (their Raft logs are
/// durable), so this bounds the log a node replays after a crash, and thus
/// how long its shards take to answer again.
const ROOMS_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn open_store(
    dir: &std::path::Path,
    name: &str,
    kind: EngineKind,
    cache_bytes: usize,
) -> Result<storage::Store, StartError> {
    let path = match kind {
        EngineKind::Redb => dir.join(format!("{name}.redb")),
        EngineKind::Sled => dir.join(format!("{name}.sled")),
    };
    storage::open_cached(kind, &path, cache_bytes).map_err(|source| StartError::Storage { path, source })
}

impl Node {
    /// Opens the stores, joins the peers, starts the log writer and Raft,
    /// and waits for a leader.
    pub async fn start(settings: NodeSettings) -> Result<Arc<Node>, StartError> {
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            StartError::Setup(format!("cannot create data folder {}: {e}", settings.data_dir.display()))
        })?;
        let metrics = metrics_handle();
        let raft_store = open_store(&settings.data_dir, "raft", settings.storage, settings.store_cache_bytes)?;
        let rooms_store = open_store(&settings.data_dir, "rooms", settings.storage, settings.store_cache_bytes)?;
        let rooms_store: storage::Store = Arc::new(
            storage::MemtableEngine::start(rooms_store, ROOMS_FLUSH_EVERY)
                .map_err(|e| StartError::Setup(format!("cannot start the room store's flush thread: {e}")))?,
        );
        let hub = Arc::new(Hub::new());
        let log = Arc::new(RoomLog::new(rooms_store));
        log.fill_seen().map_err(|e| StartError::Setup(format!("cannot start the dedup filter's thread: {e}")))?;
        let publish_hub = hub.clone();
        let publish: Publisher = Arc::new(move |p| publish_committed(&publish_hub, p));
        let slot: peers::NodeSlot = Arc::new(OnceLock::new());
        let cluster = match &settings.cluster {
            Some(cs) => {
                let handler = Arc::new(peers::Handler { node: slot.clone() });
                let endpoint = PeerEndpoint::bind(settings.id, cs.bind, &cs.identity, PeerSettings::default(), handler)
                    .map_err(|e| StartError::Setup(format!("cannot open the peer address {}: {e}", cs.bind)))?;
                Some(Cluster::new(endpoint, &cs.peers, settings.id, hub.clone()))
            }
            None => None,
        };
        let (effects_tx, effects_rx) = tokio::sync::mpsc::unbounded_channel();
        let effects: crate::raft::EffectSink = Arc::new(move |effects| {
            // The receiver lives as long as the node; after that nothing listens.
            let _ = effects_tx.send(effects);
        });
        let node_info = settings.members.get(&settings.id).cloned().unwrap_or_default();
        let raft_settings = RaftSettings::new(settings.id, node_info, settings.members.clone());
        let consensus = match &cluster {
            Some(c) => {
                let network = QuicRaftNetwork { endpoint: c.endpoint.clone() };
                Consensus::start(raft_settings, raft_store, network, effects).await
            }
            None => Consensus::start(raft_settings, raft_store, crate::raft::NoPeers, effects).await,
        }
        .map_err(|e| StartError::Consensus(e.to_string()))?;
        let consensus = Arc::new(consensus);
        let passwords = Passwords::new(settings.limits.password_hash_parallel, settings.limits.password_hash_queue)
            .map_err(|e| StartError::Setup(e.to_string()))?;
        let limits = settings.limits.clone();
        let barrier = ReadBarrier::new(consensus.clone(), cluster.as_ref().map(|c| c.endpoint.clone()), settings.id);
        let search_dir = settings.data_dir.join("search");
        let search = crate::search::SearchIndex::open(&search_dir)
            .map_err(|e| StartError::Setup(format!("cannot open the search index: {e}")))?;
        let rooms_writer = storage::WriteThread::start(log.store().clone(), "rooms-store")
            .map_err(|e| StartError::Setup(format!("cannot start the room store's write thread: {e}")))?;
        let files_dir = settings.data_dir.join("attachments");
        let files = crate::rooms::files::Files::open(files_dir.clone())
            .map_err(|e| StartError::Setup(format!("cannot open {}: {e}", files_dir.display())))?;
        // Listened to before any shard applies: rows applied at start name
        // files too.
        let wanted = settings.cluster.is_some().then(|| files.wanted());
        let files = Arc::new(files);
        let shard_settings = crate::shards::host::default_settings();
        let host = crate::shards::host::ShardHost::new(crate::shards::host::HostParts {
            files: Some(files.clone()),
            me: settings.id,
            raft_store: consensus.store(),
            writer: consensus.writer(),
            rooms: log.store().clone(),
            rooms_writer,
            log: log.clone(),
            snapshots: settings.data_dir.join("shard-snapshots"),
            publish: publish.clone(),
            endpoint: cluster.as_ref().map(|c| c.endpoint.clone()),
            settings: shard_settings.clone(),
            quiet: Some(crate::shards::quiet::QuietSettings::for_election(
                shard_settings.election.0,
                shard_settings.heartbeat,
            )),
            shard_count: Some(settings.shards),
            discard_after: crate::shards::host::DISCARD_AFTER,
            search: Some(search.clone()),
        });
        let replication = settings.cluster.as_ref().map_or(1, |c| c.replication);
        let shards = Shards::new(host, settings.shards, replication);
        let node = Arc::new(Node {
            id: settings.id,
            quotas: Quotas::new(&limits, cluster.is_some()),
            limits,
            security: settings.security,
            consensus,
            log: log.clone(),
            hub,
            passwords,
            touched: Mutex::new(HashMap::new()),
            metrics,
            publish: publish.clone(),
            barrier,
            read_markers: Arc::default(),
            cluster,
            shards,
            files,
            search,
            retention: settings.retention,
        });
        let _ = slot.set(Arc::downgrade(&node));
        if node.cluster.is_some() {
            tokio::spawn(peers::gossip_loop(Arc::downgrade(&node)));
            let relay_node: Arc<dyn crate::cluster::relay::RelayNode> = node.clone();
            tokio::spawn(crate::cluster::relay::run(Arc::downgrade(&relay_node)));
        }
        if let Some(wanted) = wanted {
            tokio::spawn(attachments::fetch_wanted(Arc::downgrade(&node), wanted));
        }
        tokio::spawn(attachments::maintain(Arc::downgrade(&node)));
        tokio::spawn(Node::run_shards(Arc::downgrade(&node)));
        tokio::spawn(effects::run(Arc::downgrade(&node), effects_rx));
        tokio::spawn(read_markers::run(node.read_markers.clone(), Arc::downgrade(&node)));
        tokio::spawn(accounts::sweep_expired(Arc::downgrade(&node)));
        tokio::spawn(retention::run(Arc::downgrade(&node)));
        node.wait_for_metadata_leader().await?;
        // Not fatal: a node whose shards are late still serves, and its
        // sends wait for a leader or answer 503.
        if let Err(e) = node.wait_for_shards(LEADER_WAIT).await {
            tracing::warn!(error = %e.message, "starting before every shard group is in place");
        }
        Ok(node)
    }

    /// Waits until the metadata group has a leader. A node whose group was
    /// never initialised here (a new node waiting for `palaver add-node`,
    /// or one of a new cluster's first nodes) waits as long as it takes,
    /// saying so now and then; a node that was part of the cluster gives
    /// up after [`LEADER_WAIT`].
    async fn wait_for_metadata_leader(&self) -> Result<(), StartError> {
        let initialized =
            self.consensus.raft().is_initialized().await.map_err(|e| StartError::Consensus(e.to_string()))?;
        if initialized {
            return self
                .consensus
                .wait_for_leader(LEADER_WAIT)
                .await
                .map(|_| ())
                .map_err(|e| StartError::Consensus(format!("no metadata leader within {LEADER_WAIT:?}: {e}")));
        }
        loop {
            if self.consensus.wait_for_leader(JOIN_NOTICE_EVERY).await.is_ok() {
                return Ok(());
            }
            tracing::info!(
                node = self.id,
                "waiting to join the cluster (a new node joins once an admin runs `palaver add-node {}`)",
                self.id
            );
        }
    }

    /// Hands a committed event to local listeners.
    pub fn publish(&self, p: Published) {
        (self.publish)(p);
    }

    /// A read view of the metadata.
    pub fn meta(&self) -> parking_lot::RwLockReadGuard<'_, MetaState> {
        self.consensus.state()
    }

    /// Proposes a metadata command stamped with this node's clock. On a
    /// follower the command travels to the leader, and the answer waits
    /// until this node has applied it too, so the caller reads its own write.
    /// A command that revokes access is answered only once every node has
    /// applied it (see [`consistency`]).
    pub async fn propose(&self, cmd: MetaCommand) -> Result<MetaOk, ApiError> {
        let revokes = cmd.revokes_access();
        let (reply, index) = self.propose_indexed(cmd).await?;
        if revokes && reply.is_ok() {
            self.await_everywhere(index).await;
        }
        Ok(reply?)
    }

    /// Proposes a command; answers the state machine's reply and the log
    /// index it was applied at (applied here too).
    async fn propose_indexed(&self, cmd: MetaCommand) -> Result<(crate::meta::MetaReply, u64), ApiError> {
        let req = MetaRequest { now: crate::clock::now_ms(), cmd };
        let mut leader = None;
        for _ in 0..FORWARD_ATTEMPTS {
            let target = match leader {
                Some(id) if id != self.id => id,
                _ => match self.consensus.propose_request(req.clone()).await {
                    Ok(answer) => return Ok(answer),
                    Err(ConsensusError::NotLeader { leader: Some((id, _)) }) if id != self.id => id,
                    Err(ConsensusError::NotLeader { .. }) => {
                        leader = self.consensus.wait_for_leader(Duration::from_secs(2)).await.ok();
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            let Some(cluster) = &self.cluster else { return Err(ApiError::unavailable("no metadata leader")) };
            let call = crate::peer::codec::encode(&RaftCall::Forward(req.clone()));
            let bytes = cluster
                .endpoint
                .request(target, crate::peer::Channel::Raft, call, FORWARD_TIMEOUT)
                .await
                .map_err(|e| ApiError::unavailable(format!("metadata leader (node {target}) unreachable: {e}")))?;
            match crate::peer::codec::decode::<RaftAnswer>(&bytes).map_err(ApiError::internal)? {
                RaftAnswer::Forwarded { reply, index } => {
                    self.consensus.wait_applied(index, FORWARD_TIMEOUT).await?;
                    return Ok((reply, index));
                }
                RaftAnswer::NotLeader(next) => leader = next,
                RaftAnswer::Refused(why) => return Err(ApiError::unavailable(why)),
                other => return Err(ApiError::internal(format!("unexpected answer {other:?}"))),
            }
        }
        Err(ApiError::unavailable("the metadata leader keeps changing; retry"))
    }

    /// Whether a user is connected to any node of the cluster.
    pub fn is_online(&self, username: &str) -> bool {
        self.hub.is_online(username) || self.cluster.as_ref().is_some_and(|c| c.presence.lock().online(username))
    }

    /// The Prometheus text of this process's metrics.
    pub fn render_metrics(&self) -> String {
        metrics::gauge!("palaver_connections_open").set(self.hub.connection_count() as f64);
        self.metrics.render()
    }

    /// Stores the read markers still waiting, then stops Raft; connections
    /// must have been closed by the caller.
    pub async fn shutdown(&self) {
        self.read_markers.flush(self).await;
        self.shards.host.shutdown().await;
        self.consensus.shutdown().await;
    }
}

/// Turns a committed write into the event every local listener gets.
fn publish_committed(hub: &Hub, p: Published) {
    // Most replicas of a busy room have no listener of it: the event's
    // JSON would be built for no one.
    if !hub.has_listeners(p.room_key()) {
        return;
    }
    match p {
        Published::Message { room, room_key, message } => {
            let json = message_event(&room, &message);
            hub.publish(Event {
                room_key,
                seq: message.seq,
                room,
                json: json.into(),
                deflated: std::sync::OnceLock::new(),
                except: None,
                relay: Relay::Watchers,
            });
        }
        Published::Deleted { room, room_key, seq } => {
            let event = Event::notice(room_key, &ServerEvent::Deleted { room: &room, seq }, None);
            hub.publish(Event { relay: Relay::Watchers, ..event });
        }
        Published::Edited { room, room_key, seq, body, edited_at } => {
            let edited = ServerEvent::Edited { room: &*room, seq, body: body.as_str(), edited_at };
            hub.publish(Event { relay: Relay::Watchers, ..Event::notice(room_key, &edited, None) });
        }
        Published::Reaction { room, room_key, seq, emoji, username, on } => {
            let reaction =
                ServerEvent::Reaction { room: &*room, seq, emoji: emoji.as_str(), username: username.as_str(), on };
            hub.publish(Event { relay: Relay::Watchers, ..Event::notice(room_key, &reaction, None) });
        }
    }
}
