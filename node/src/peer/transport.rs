//! The QUIC endpoint of a node: dials peers, accepts them, and carries
//! requests and long-lived streams. See the module docs of [`crate::peer`]
//! for the wire format.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use parking_lot::RwLock;
use quinn::Connection;
use quinn::Endpoint;
use quinn::RecvStream;
use quinn::SendStream;
use quinn::VarInt;
use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tracing::debug;
use tracing::info;
use tracing::warn;

use super::frame::DEFAULT_MAX_FRAME;
use super::frame::FrameError;
use super::frame::read_frame;
use super::frame::write_frame;
use super::frame::write_frame_parts;
use super::tls;
use super::tls::Material;
use super::tls::NodeIdentity;
use super::tls::TlsError;

/// First bytes of the hello a dialler sends on its first bi-stream.
const HELLO_MAGIC: &[u8; 4] = b"PLVR";
/// Hello version.
const HELLO_VERSION: u8 = 1;
/// Magic, version, node id (u64 big-endian).
const HELLO_LEN: usize = 4 + 1 + 8;
/// The accepter's answer to a hello it accepts.
const HELLO_OK: u8 = 0;
/// Top bit of a stream's first byte: a long-lived stream, not a request.
const STREAM_FLAG: u8 = 0x80;
/// Reply status bytes.
const REPLY_OK: u8 = 0;
const REPLY_ERR: u8 = 1;
/// Longest handler error text sent back.
const MAX_ERROR_TEXT: usize = 16 * 1024;

/// Application error codes on connections and streams.
const CODE_SHUTDOWN: u32 = 0;
const CODE_BAD_HELLO: u32 = 1;
const CODE_IDENTITY: u32 = 2;
const CODE_BAD_STREAM: u32 = 3;
const CODE_REPLACED: u32 = 4;
const CODE_REFUSED: u32 = 5;

/// What a stream carries; the first byte of every stream names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Channel {
    /// Raft RPCs and forwarded metadata writes.
    Raft = 1,
    /// Room replication and forwarded client messages.
    Rooms = 2,
    /// Presence and other gossip.
    Gossip = 3,
    /// The room-log shards' Raft RPCs and snapshot streams.
    Shards = 4,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 4] = [Channel::Raft, Channel::Rooms, Channel::Gossip, Channel::Shards];

    /// The channel with this wire value.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Raft),
            2 => Some(Self::Rooms),
            3 => Some(Self::Gossip),
            4 => Some(Self::Shards),
            _ => None,
        }
    }
}

/// Serves what peers send. Called only for peers that proved, with a
/// certificate from the cluster CA, to be the node id they announced.
pub trait PeerHandler: Send + Sync + 'static {
    /// One request on a new bi-stream; the answer (or the error text) goes
    /// back on it.
    fn request(&self, from: u64, channel: Channel, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>>;

    /// A long-lived ordered stream opened by a peer: frames in order on
    /// `recv` (read them with [`read_frame`]), replies on `send`. The
    /// future may run as long as the stream lives.
    fn stream(&self, from: u64, channel: Channel, recv: RecvStream, send: SendStream) -> BoxFuture<'static, ()>;
}

/// Transport timing and limits.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// Keep-alive interval; must be below `idle_timeout`.
    pub keep_alive: Duration,
    /// A connection silent this long is dead.
    pub idle_timeout: Duration,
    /// Longest a dial (QUIC + TLS handshake and hello) may take.
    pub connect_timeout: Duration,
    /// Largest frame accepted or sent (requests, answers).
    pub max_frame: usize,
    /// Streams a peer may have open to us at once on one connection.
    pub max_streams: u32,
}

impl Default for PeerSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            max_frame: DEFAULT_MAX_FRAME,
            max_streams: 1024,
        }
    }
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No address is known for this node id.
    #[error("unknown peer id {0}")]
    UnknownPeer(u64),
    /// The peer could not be reached or refused us; nothing was delivered.
    #[error("node {peer} is unreachable: {reason}")]
    Unreachable {
        /// The node.
        peer: u64,
        /// Why.
        reason: String,
    },
    /// The connection or stream failed after the request was (partly) sent:
    /// the peer may or may not have handled it.
    #[error("connection to node {peer} lost: {reason}")]
    Lost {
        /// The node.
        peer: u64,
        /// Why.
        reason: String,
    },
    /// No answer within the caller's timeout (the peer may still handle it).
    #[error("node {peer} did not answer within {after:?}")]
    Timeout {
        /// The node.
        peer: u64,
        /// The timeout.
        after: Duration,
    },
    /// The peer's handler answered with an error.
    #[error("remote error: {0}")]
    Remote(String),
    /// A frame was malformed or over the limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer broke the protocol (e.g. an unknown reply status).
    #[error("protocol error from node {peer}: {reason}")]
    Protocol {
        /// The node.
        peer: u64,
        /// What was wrong.
        reason: String,
    },
    /// Certificates or TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Invalid settings.
    #[error("invalid transport settings: {0}")]
    Config(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// This endpoint was closed.
    #[error("the peer endpoint is closed")]
    Closed,
}

/// A node's QUIC endpoint: one UDP socket that accepts peers and dials
/// them. Cheap to clone (the state is shared).
#[derive(Clone)]
pub struct PeerEndpoint {
    inner: Arc<Inner>,
}

impl fmt::Debug for PeerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerEndpoint")
            .field("node_id", &self.inner.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    node_id: u64,
    local_addr: SocketAddr,
    settings: PeerSettings,
    /// Taken out on close so the socket is released.
    endpoint: Mutex<Option<Endpoint>>,
    closed: AtomicBool,
    peers: RwLock<BTreeMap<u64, SocketAddr>>,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    dials: AtomicU64,
    serve: Arc<Serve>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The accept loop holds its own endpoint handle; closing ends it.
        if let Some(endpoint) = self.endpoint.get_mut().take() {
            endpoint.close(VarInt::from_u32(CODE_SHUTDOWN), b"node shutting down");
        }
    }
}

/// The outgoing connection to one peer.
#[derive(Default)]
struct Slot {
    /// Held while dialling, so concurrent first uses share one dial.
    dial: tokio::sync::Mutex<()>,
    /// The connection and the address it went to.
    conn: Mutex<Option<(SocketAddr, Connection)>>,
    /// The last dial failed: the next failure is not logged again, and the
    /// next success says the peer is back.
    unreachable: AtomicBool,
}

impl Slot {
    fn live(&self, addr: SocketAddr) -> Option<Connection> {
        let guard = self.conn.lock();
        match &*guard {
            Some((a, c)) if *a == addr && c.close_reason().is_none() => Some(c.clone()),
            _ => None,
        }
    }
}

/// What the accepting side needs; shared by the accept loop and its tasks
/// (not the whole endpoint, so dropping the endpoint ends them).
struct Serve {
    handler: Arc<dyn PeerHandler>,
    max_frame: usize,
    hello_timeout: Duration,
    accepted: AtomicU64,
    /// Authenticated incoming connections: stable id → (peer, connection).
    incoming: Mutex<HashMap<usize, (u64, Connection)>>,
}

impl PeerEndpoint {
    /// Binds the UDP socket at `addr` (port 0: any) and starts accepting
    /// peers. Must be called inside a Tokio runtime. Checks that
    /// `identity` is a certificate of the cluster CA for `node_id`.
    pub fn bind(
        node_id: u64,
        addr: SocketAddr,
        identity: &NodeIdentity,
        settings: PeerSettings,
        handler: Arc<dyn PeerHandler>,
    ) -> Result<Self, PeerError> {
        Self::bind_inner(node_id, addr, identity, settings, handler, true)
    }

    pub(crate) fn bind_inner(
        node_id: u64,
        addr: SocketAddr,
        identity: &NodeIdentity,
        settings: PeerSettings,
        handler: Arc<dyn PeerHandler>,
        check_identity: bool,
    ) -> Result<Self, PeerError> {
        tls::install_crypto_provider();
        if settings.keep_alive.is_zero() || settings.keep_alive >= settings.idle_timeout {
            return Err(PeerError::Config(format!(
                "keep_alive ({:?}) must be above zero and below idle_timeout ({:?})",
                settings.keep_alive, settings.idle_timeout
            )));
        }
        if settings.max_frame < 1024 || settings.max_frame >= u32::MAX as usize {
            return Err(PeerError::Config(format!("max_frame {} must be in 1 KiB..4 GiB", settings.max_frame)));
        }
        if settings.max_streams == 0 {
            return Err(PeerError::Config("max_streams must be above zero".into()));
        }
        if check_identity {
            tls::verify_identity(identity, node_id)?;
        }
        let material = Material::parse(identity)?;
        let transport = Arc::new(transport_config(&settings)?);

        let mut server = quinn::ServerConfig::with_crypto(Arc::new(material.server_crypto()?));
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(material.client_crypto()?));
        client.transport_config(transport);
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.reset_key(Arc::new(material.reset_key())).cid_generator(|| Box::new(RandomCids));

        let socket = std::net::UdpSocket::bind(addr).map_err(|source| PeerError::Bind { addr, source })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| PeerError::Config("PeerEndpoint::bind needs a Tokio runtime".into()))?;
        let mut endpoint = Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(|source| PeerError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(|source| PeerError::Bind { addr, source })?;

        let serve = Arc::new(Serve {
            handler,
            max_frame: settings.max_frame,
            hello_timeout: settings.connect_timeout,
            accepted: AtomicU64::new(0),
            incoming: Mutex::new(HashMap::new()),
        });
        let accept_task = tokio::spawn(accept_loop(node_id, endpoint.clone(), serve.clone()));
        info!(node = node_id, %local_addr, "peer endpoint listening");
        Ok(Self {
            inner: Arc::new(Inner {
                node_id,
                local_addr,
                settings,
                endpoint: Mutex::new(Some(endpoint)),
                closed: AtomicBool::new(false),
                peers: RwLock::new(BTreeMap::new()),
                slots: Mutex::new(HashMap::new()),
                dials: AtomicU64::new(0),
                serve,
                accept_task: Mutex::new(Some(accept_task)),
            }),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Every node this endpoint knows how to dial.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.inner.peers.read().keys().copied().collect()
    }

    /// Records where to dial `peer` when no address is known for it (a
    /// node added to the cluster while this one runs); an unparsable
    /// address is ignored, and a known one is left as it is.
    pub fn learn_peer(&self, peer: u64, addr: &str) {
        if peer == self.inner.node_id || self.inner.peers.read().contains_key(&peer) {
            return;
        }
        match addr.parse::<SocketAddr>() {
            Ok(addr) => {
                self.inner.peers.write().entry(peer).or_insert(addr);
            }
            Err(e) => tracing::warn!(peer, addr, error = %e, "a peer's address is not a socket address"),
        }
    }

    /// Where to dial each node id. May change at run time: a connection to
    /// a peer whose address changed or that was removed is closed.
    pub fn set_peers(&self, peers: BTreeMap<u64, SocketAddr>) {
        let stale: Vec<Connection> = {
            let mut current = self.inner.peers.write();
            *current = peers;
            let slots = self.inner.slots.lock();
            slots
                .iter()
                .filter_map(|(id, slot)| {
                    let mut conn = slot.conn.lock();
                    match &*conn {
                        Some((addr, _)) if current.get(id) != Some(addr) => conn.take().map(|(_, c)| c),
                        _ => None,
                    }
                })
                .collect()
        };
        for conn in stale {
            conn.close(VarInt::from_u32(CODE_REPLACED), b"peer address changed");
        }
    }

    /// Sends one request and waits for its answer, at most `timeout` in
    /// all (dial included). The handler's error comes back as
    /// [`PeerError::Remote`].
    pub async fn request(
        &self,
        peer: u64,
        channel: Channel,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let max = self.inner.settings.max_frame;
        if body.len() > max {
            return Err(FrameError::TooLarge { len: body.len() as u64, max }.into());
        }
        match tokio::time::timeout(timeout, self.request_inner(peer, channel, &body)).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout { peer, after: timeout }),
        }
    }

    async fn request_inner(&self, peer: u64, channel: Channel, body: &[u8]) -> Result<Vec<u8>, PeerError> {
        let (mut send, mut recv) = self.open_bi(peer).await?;
        let sent = async {
            send.write_all(&[channel as u8]).await.map_err(std::io::Error::from)?;
            write_frame(&mut send, body).await?;
            Ok::<(), FrameError>(())
        }
        .await;
        if let Err(e) = sent {
            // The peer may have refused the request and said why.
            return match read_reply(peer, &mut recv, self.inner.settings.max_frame).await {
                Ok(reply) => reply,
                Err(_) => Err(lost(peer, e)),
            };
        }
        let _ = send.finish();
        read_reply(peer, &mut recv, self.inner.settings.max_frame).await?
    }

    /// Opens a long-lived ordered stream to `peer` on `channel`; the peer's
    /// handler gets its other ends ([`PeerHandler::stream`]). Write frames
    /// with [`write_frame`], `finish()` and wait `stopped()` when done.
    pub async fn open_stream(&self, peer: u64, channel: Channel) -> Result<(SendStream, RecvStream), PeerError> {
        let after = self.inner.settings.connect_timeout;
        let open = async {
            let (mut send, recv) = self.open_bi(peer).await?;
            send.write_all(&[channel as u8 | STREAM_FLAG]).await.map_err(|e| lost(peer, e))?;
            Ok((send, recv))
        };
        tokio::time::timeout(after, open).await.unwrap_or(Err(PeerError::Timeout { peer, after }))
    }

    /// Peers with a live connection, either direction.
    pub fn connected(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .inner
            .slots
            .lock()
            .iter()
            .filter(|(_, slot)| slot.conn.lock().as_ref().is_some_and(|(_, c)| c.close_reason().is_none()))
            .map(|(id, _)| *id)
            .collect();
        ids.extend(
            self.inner.serve.incoming.lock().values().filter(|(_, c)| c.close_reason().is_none()).map(|(id, _)| *id),
        );
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Outgoing connections established so far (a reused connection counts
    /// once).
    pub fn dial_count(&self) -> u64 {
        self.inner.dials.load(Ordering::Relaxed)
    }

    /// Incoming connections that completed the handshake and the hello.
    pub fn accepted_count(&self) -> u64 {
        self.inner.serve.accepted.load(Ordering::Relaxed)
    }

    /// Closes every connection (peers see the close at once), stops
    /// accepting and releases the socket. Later calls fail with
    /// [`PeerError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let endpoint = self.inner.endpoint.lock().take();
        let slots: Vec<Arc<Slot>> = self.inner.slots.lock().drain().map(|(_, s)| s).collect();
        for slot in slots {
            slot.conn.lock().take();
        }
        if let Some(endpoint) = endpoint {
            endpoint.close(VarInt::from_u32(CODE_SHUTDOWN), b"node shutting down");
            // Let the close frames go out (bounded: a peer that vanished
            // does not hold us up).
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        let task = self.inner.accept_task.lock().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        info!(node = self.inner.node_id, "peer endpoint closed");
    }

    /// A connection to `peer`, and a bi-stream on it. A cached connection
    /// found dead on use is replaced once.
    pub(crate) async fn open_bi(&self, peer: u64) -> Result<(SendStream, RecvStream), PeerError> {
        let conn = self.connection(peer).await?;
        match conn.open_bi().await {
            Ok(streams) => Ok(streams),
            Err(e) => {
                debug!(node = self.inner.node_id, peer, error = %e, "cached connection is dead; dialling again");
                let conn = self.connection(peer).await?;
                conn.open_bi().await.map_err(|e| PeerError::Unreachable { peer, reason: e.to_string() })
            }
        }
    }

    /// The live outgoing connection to `peer`, dialled if needed. One dial
    /// at a time per peer: concurrent callers wait for it and share it.
    async fn connection(&self, peer: u64) -> Result<Connection, PeerError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(PeerError::Closed);
        }
        let addr = self.inner.peers.read().get(&peer).copied().ok_or(PeerError::UnknownPeer(peer))?;
        let slot = self.inner.slots.lock().entry(peer).or_default().clone();
        if let Some(conn) = slot.live(addr) {
            return Ok(conn);
        }
        let _dialling = slot.dial.lock().await;
        if let Some(conn) = slot.live(addr) {
            return Ok(conn);
        }
        let conn = match self.dial(peer, addr).await {
            Ok(conn) => {
                if slot.unreachable.swap(false, Ordering::Relaxed) {
                    info!(node = self.inner.node_id, peer, %addr, "peer reachable again");
                }
                conn
            }
            Err(e) => {
                // Once per outage: every Raft group would otherwise report
                // the same dead peer on every heartbeat.
                if !slot.unreachable.swap(true, Ordering::Relaxed) {
                    warn!(node = self.inner.node_id, peer, %addr, error = %e, "peer unreachable");
                }
                return Err(e);
            }
        };
        let old = slot.conn.lock().replace((addr, conn.clone()));
        if let Some((_, old)) = old {
            old.close(VarInt::from_u32(CODE_REPLACED), b"replaced");
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            // close() ran while we dialled: do not leave this one open.
            conn.close(VarInt::from_u32(CODE_SHUTDOWN), b"node shutting down");
            return Err(PeerError::Closed);
        }
        Ok(conn)
    }

    async fn dial(&self, peer: u64, addr: SocketAddr) -> Result<Connection, PeerError> {
        let endpoint = self.inner.endpoint.lock().clone().ok_or(PeerError::Closed)?;
        let after = self.inner.settings.connect_timeout;
        let unreachable = |reason: String| PeerError::Unreachable { peer, reason };
        let connecting = endpoint.connect(addr, &tls::node_name(peer)).map_err(|e| unreachable(e.to_string()))?;
        let node_id = self.inner.node_id;
        let handshake = async {
            let conn = connecting.await.map_err(|e| unreachable(e.to_string()))?;
            let mut hello = Vec::with_capacity(HELLO_LEN);
            hello.extend_from_slice(HELLO_MAGIC);
            hello.push(HELLO_VERSION);
            hello.extend_from_slice(&node_id.to_be_bytes());
            // The first bi-stream: our id, answered once the accepter
            // checked it against our certificate. A refusal (of the
            // certificate or of the id) thus fails the dial, with the
            // reason, instead of the first request.
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
            send.write_all(&hello).await.map_err(|e| unreachable(e.to_string()))?;
            let _ = send.finish();
            let mut answer = [0u8; 1];
            recv.read_exact(&mut answer)
                .await
                .map_err(|e| unreachable(format!("hello refused: {}", read_error(&e))))?;
            if answer != [HELLO_OK] {
                return Err(unreachable(format!("hello refused with status {}", answer[0])));
            }
            Ok::<Connection, PeerError>(conn)
        };
        let conn = tokio::time::timeout(after, handshake)
            .await
            .unwrap_or_else(|_| Err(unreachable(format!("no handshake within {after:?}"))))
            .inspect_err(|e| debug!(node = node_id, peer, %addr, error = %e, "dial failed"))?;
        self.inner.dials.fetch_add(1, Ordering::Relaxed);
        debug!(node = node_id, peer, %addr, "connected");
        Ok(conn)
    }
}

/// Random 8-byte connection ids that any later run accepts as plausible:
/// quinn's default generator keys a checksum with a per-process random key,
/// so a restarted node would drop (not reset) packets of its previous run.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn transport_config(settings: &PeerSettings) -> Result<quinn::TransportConfig, PeerError> {
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout)
        .map_err(|_| PeerError::Config(format!("idle_timeout {:?} is too large", settings.idle_timeout)))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(settings.keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(VarInt::from_u32(settings.max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(transport)
}

/// A read error with the connection's close reason when there is one.
fn read_error(e: &quinn::ReadExactError) -> String {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(reason)) => reason.to_string(),
        other => other.to_string(),
    }
}

fn lost(peer: u64, error: impl fmt::Display) -> PeerError {
    PeerError::Lost { peer, reason: error.to_string() }
}

/// Reads `[status] + bytes`.
async fn read_reply(
    peer: u64,
    recv: &mut RecvStream,
    max_frame: usize,
) -> Result<Result<Vec<u8>, PeerError>, PeerError> {
    let frame = match read_frame(recv, max_frame.saturating_add(1)).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(lost(peer, "stream ended without an answer")),
        Err(FrameError::Io(e)) => return Err(lost(peer, e)),
        Err(e) => return Err(e.into()),
    };
    let Some((&status, rest)) = frame.split_first() else {
        return Err(PeerError::Protocol { peer, reason: "empty answer".into() });
    };
    match status {
        REPLY_OK => {
            let mut frame = frame;
            frame.remove(0);
            Ok(Ok(frame))
        }
        REPLY_ERR => Ok(Err(PeerError::Remote(String::from_utf8_lossy(rest).into_owned()))),
        other => Err(PeerError::Protocol { peer, reason: format!("unknown answer status {other}") }),
    }
}

async fn accept_loop(node_id: u64, endpoint: Endpoint, serve: Arc<Serve>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(node_id, incoming, serve.clone()));
    }
    debug!(node = node_id, "accept loop ended");
}

/// Handshake (the TLS layer verifies the client certificate against the
/// cluster CA), hello, identity check, then every bi-stream in its own task.
async fn serve_connection(node_id: u64, incoming: quinn::Incoming, serve: Arc<Serve>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            warn!(node = node_id, %remote, error = %e, "peer handshake failed");
            return;
        }
    };
    let (from, mut hello_send) = match tokio::time::timeout(serve.hello_timeout, read_hello(&conn)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(reason)) => {
            warn!(node = node_id, %remote, %reason, "bad hello; closing");
            conn.close(VarInt::from_u32(CODE_BAD_HELLO), b"bad hello");
            return;
        }
        Err(_) => {
            warn!(node = node_id, %remote, "no hello in time; closing");
            conn.close(VarInt::from_u32(CODE_BAD_HELLO), b"no hello");
            return;
        }
    };
    if !peer_cert(&conn).is_some_and(|cert| tls::cert_names_node(&cert, from)) {
        warn!(node = node_id, peer = from, %remote, "certificate does not name the node id announced; closing");
        conn.close(VarInt::from_u32(CODE_IDENTITY), b"certificate does not match node id");
        return;
    }
    if hello_send.write_all(&[HELLO_OK]).await.is_err() || hello_send.finish().is_err() {
        debug!(node = node_id, peer = from, %remote, "peer left during the hello");
        return;
    }
    serve.accepted.fetch_add(1, Ordering::Relaxed);
    let key = conn.stable_id();
    serve.incoming.lock().insert(key, (from, conn.clone()));
    debug!(node = node_id, peer = from, %remote, "peer connected");
    let reason = loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(node_id, from, send, recv, serve.clone()));
            }
            Err(e) => break e,
        }
    };
    serve.incoming.lock().remove(&key);
    debug!(node = node_id, peer = from, %reason, "peer connection ended");
}

/// The announced node id, and where to answer the hello.
async fn read_hello(conn: &Connection) -> Result<(u64, SendStream), String> {
    let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let mut hello = [0u8; HELLO_LEN];
    recv.read_exact(&mut hello).await.map_err(|e| e.to_string())?;
    let (magic, rest) = hello.split_at(HELLO_MAGIC.len());
    let (version, id) = rest.split_at(1);
    if magic != HELLO_MAGIC || version != [HELLO_VERSION] {
        return Err("unknown hello".into());
    }
    let id: [u8; 8] = id.try_into().map_err(|_| "short hello".to_string())?;
    Ok((u64::from_be_bytes(id), send))
}

fn peer_cert(conn: &Connection) -> Option<CertificateDer<'static>> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    (*certs).into_iter().next()
}

async fn serve_stream(node_id: u64, from: u64, mut send: SendStream, mut recv: RecvStream, serve: Arc<Serve>) {
    let mut first = [0u8; 1];
    if let Err(e) = recv.read_exact(&mut first).await {
        debug!(node = node_id, peer = from, error = %e, "stream ended before its channel byte");
        return;
    }
    let Some(channel) = Channel::from_u8(first[0] & !STREAM_FLAG) else {
        warn!(node = node_id, peer = from, byte = first[0], "stream names an unknown channel; refused");
        let _ = recv.stop(VarInt::from_u32(CODE_BAD_STREAM));
        let _ = send.reset(VarInt::from_u32(CODE_BAD_STREAM));
        return;
    };
    if first[0] & STREAM_FLAG != 0 {
        debug!(node = node_id, peer = from, ?channel, "stream opened");
        serve.handler.stream(from, channel, recv, send).await;
        return;
    }
    let body = match read_frame(&mut recv, serve.max_frame).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            debug!(node = node_id, peer = from, ?channel, "request stream without a request");
            return;
        }
        Err(e @ FrameError::TooLarge { .. }) => {
            warn!(node = node_id, peer = from, ?channel, error = %e, "request refused");
            let _ = recv.stop(VarInt::from_u32(CODE_REFUSED));
            send_reply(node_id, from, &mut send, REPLY_ERR, e.to_string().as_bytes()).await;
            return;
        }
        Err(e) => {
            debug!(node = node_id, peer = from, ?channel, error = %e, "request not read");
            return;
        }
    };
    match serve.handler.request(from, channel, body).await {
        Ok(answer) if answer.len() <= serve.max_frame => {
            send_reply(node_id, from, &mut send, REPLY_OK, &answer).await;
        }
        Ok(answer) => {
            warn!(node = node_id, peer = from, ?channel, len = answer.len(), "answer over max_frame; sending an error");
            let text = format!("answer of {} bytes exceeds the limit of {} bytes", answer.len(), serve.max_frame);
            send_reply(node_id, from, &mut send, REPLY_ERR, text.as_bytes()).await;
        }
        Err(text) => {
            let mut end = text.len().min(MAX_ERROR_TEXT);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            send_reply(node_id, from, &mut send, REPLY_ERR, &text.as_bytes()[..end]).await;
        }
    }
}

/// Writes the answer, finishes, and waits until the peer has it (dropping
/// a stream early could cut the answer off).
async fn send_reply(node_id: u64, from: u64, send: &mut SendStream, status: u8, payload: &[u8]) {
    if let Err(e) = write_frame_parts(send, &[&[status], payload]).await {
        debug!(node = node_id, peer = from, error = %e, "answer not sent");
        return;
    }
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}
