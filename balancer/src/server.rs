//! The running balancer: the accept loop on the public address (with caps
//! on connections in all and per client address), one task per client
//! connection (sniff, pick, connect with retry, PROXY header, relay), the
//! health supervisor, the admin server, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin;
use crate::assign;
use crate::assign::FirstBytes;
use crate::assign::Sniffed;
use crate::config::BalancerSettings;
use crate::config::ConfigError;
use crate::health::Thresholds;
use crate::health::Transition;
use crate::meters::Meters;
use crate::monitor;
use crate::per_address::PerAddress;
use crate::per_address::Slot;
use crate::proxy;
use crate::relay;
use crate::relay::End;
use crate::table::Pick;
use crate::table::Purpose;
use crate::table::Table;
use crate::tls;
use crate::tls::PublicTls;
use crate::tls::handshake::Session;
use rustls::ServerConfig;

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// The settings are inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// There is no node to send clients to, nor one to learn nodes from.
    #[error("no nodes: the cluster file lists no [[node]]")]
    NoNodes,
    /// The public certificate could not be read.
    #[error("TLS on the public address: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the public and the admin address of `settings`.
pub async fn bind(settings: &BalancerSettings) -> Result<(TcpListener, TcpListener), BalancerError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| BalancerError::Bind { addr, source })
    };
    Ok((bind(settings.listen).await?, bind(settings.admin).await?))
}

/// State every task of one balancer shares.
pub struct Shared {
    /// The settings it runs with.
    pub settings: BalancerSettings,
    /// Nodes, health, counts and the strategy.
    pub table: Mutex<Table>,
    /// Metrics.
    pub meters: Meters,
}

/// Runs a balancer on bound listeners until `shutdown` resolves; then stops
/// accepting, lets relayed connections finish for up to `settings.grace`,
/// closes what is left and returns.
pub async fn run(
    settings: BalancerSettings,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BalancerError> {
    settings.validate()?;
    if settings.nodes.is_empty() {
        return Err(BalancerError::NoNodes);
    }
    let tls = settings.tls.clone().map(PublicTls::load).transpose()?.map(Arc::new);
    let thresholds = Thresholds { down_after: settings.down_after, up_after: settings.up_after };
    let table = Table::new(&settings.nodes, settings.strategy, thresholds);
    let shared = Arc::new(Shared { table: Mutex::new(table), meters: Meters::new(), settings });
    let local = listener.local_addr().ok();
    tracing::info!(
        listen = ?local,
        admin = ?admin.local_addr().ok(),
        strategy = %shared.settings.strategy,
        nodes = shared.settings.nodes.len(),
        tls = tls.is_some(),
        "balancer running"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(false);
    let mut background = JoinSet::new();
    background.spawn(monitor::supervise(shared.clone(), stop_rx));
    background.spawn(admin::serve(admin, shared.clone()));
    if let Some(tls) = &tls {
        background.spawn(reload_on_hangup(tls.clone()));
    }

    let limit = Arc::new(Semaphore::new(shared.settings.max_connections));
    let per_address = PerAddress::new(shared.settings.max_connections_per_address);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.meters.accepted.increment(1);
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        shared.meters.refused_full.increment(1);
                        drop(stream);
                        continue;
                    };
                    let Some(slot) = per_address.claim(peer.ip()) else {
                        shared.meters.refused_per_address.increment(1);
                        drop(stream);
                        continue;
                    };
                    let held = (permit, slot);
                    match &tls {
                        Some(tls) => {
                            conns.spawn(client_tls(shared.clone(), stream, tls.config(), peer, held, close_rx.clone()))
                        }
                        None => conns.spawn(client(shared.clone(), stream, peer, held, close_rx.clone())),
                    };
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a connection task failed");
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = conns.len();
    tracing::info!(open, grace = ?shared.settings.grace, "balancer stopping: no new connections");
    let finished = tokio::time::timeout(shared.settings.grace, async { while conns.join_next().await.is_some() {} });
    if finished.await.is_err() {
        let left = conns.len();
        tracing::info!(left, "grace over: closing the remaining connections");
        shared.meters.grace_closed.increment(left as u64);
        let _ = close_tx.send(true);
        // Each task ends at the signal; the bound only guards a stuck one.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), async { while conns.join_next().await.is_some() {} }).await;
        conns.abort_all();
    }
    background.abort_all();
    tracing::info!("balancer stopped");
    Ok(())
}

/// One plain client connection, from accept to close; `_held` are its
/// places under the connection caps, given back when it ends.
async fn client(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    _held: (OwnedSemaphorePermit, Slot),
    mut close: watch::Receiver<bool>,
) {
    shared.meters.open.increment(1.0);
    tokio::select! {
        () = serve(&shared, &mut stream, peer) => {}
        _ = close.wait_for(|c| *c) => {}
    }
    shared.meters.open.decrement(1.0);
}

/// One TLS client connection, from accept to close. A task of its own
/// kind, so that neither kind's task carries room for the other's state.
async fn client_tls(
    shared: Arc<Shared>,
    stream: TcpStream,
    tls: Arc<ServerConfig>,
    peer: SocketAddr,
    _held: (OwnedSemaphorePermit, Slot),
    mut close: watch::Receiver<bool>,
) {
    shared.meters.open.increment(1.0);
    // The work is made inside the select: an argument moved into it would
    // be held twice by this future.
    tokio::select! {
        () = serve_tls(&shared, tls, stream, peer) => {}
        _ = close.wait_for(|c| *c) => {}
    }
    shared.meters.open.decrement(1.0);
}

/// The PROXY header naming the client's address and the one it connected
/// to, for the node; `Err` when the socket has no local address (gone).
fn proxy_header(
    settings: &BalancerSettings,
    stream: &TcpStream,
    peer: SocketAddr,
) -> Result<Option<proxy::Header>, ()> {
    match (settings.proxy_protocol, stream.local_addr()) {
        (true, Ok(local)) => Ok(Some(proxy::Header::new(peer, local))),
        (true, Err(e)) => {
            tracing::debug!(error = %e, "client socket without a local address");
            Err(())
        }
        (false, _) => Ok(None),
    }
}

/// A client on the TLS address: handshake, then relay the plain bytes.
/// `GET /assign` is not answered here (it names plain `http://` node
/// addresses, which a client that chose TLS should not be sent to): it is
/// relayed, and a node answers 404.
async fn serve_tls(shared: &Shared, tls: Arc<ServerConfig>, stream: TcpStream, peer: SocketAddr) {
    let settings = &shared.settings;
    let _ = stream.set_nodelay(true);
    let Ok(header) = proxy_header(settings, &stream, peer) else { return };
    // Boxed: the handshake's state and buffers are freed once it is done
    // instead of staying in every idle connection's task.
    let Some(session) = Box::pin(handshake(shared, tls, stream, peer)).await else { return };
    let Some((lease, mut node)) = open_node(shared, header.as_ref()).await else {
        let _ = tls::relay::answer_and_close(session, &assign::response(None)).await;
        return;
    };
    let end = tls::relay::relay(session, &mut node, settings.idle_timeout).await;
    ended(shared, lease.pick.id, end);
}

/// The TLS handshake, within the connect timeout; `None` when it failed.
async fn handshake(shared: &Shared, tls: Arc<ServerConfig>, stream: TcpStream, peer: SocketAddr) -> Option<Session> {
    match tokio::time::timeout(shared.settings.connect_timeout, tls::handshake::accept(tls, stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            shared.meters.tls_failed.increment(1);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            shared.meters.tls_failed.increment(1);
            tracing::debug!(%peer, "no TLS handshake within the connect timeout");
            None
        }
    }
}

/// Picks a node and connects to it, trying the others while connects fail;
/// `None` when no node is left.
async fn open_node<'a>(shared: &'a Shared, header: Option<&proxy::Header>) -> Option<(Lease<'a>, TcpStream)> {
    let mut tried: Vec<u64> = Vec::new();
    loop {
        let Some(pick) = shared.table.lock().pick(Purpose::Relay, &tried) else {
            shared.meters.refused_no_node.increment(1);
            tracing::debug!(tried = ?tried, "no node for a client");
            return None;
        };
        let lease = Lease { shared, pick, armed: true };
        match connect(pick.addr, shared.settings.connect_timeout, header).await {
            Ok(node) => {
                shared.table.lock().connected(&pick);
                return Some((lease, node));
            }
            Err(e) => {
                lease.failed(e);
                tried.push(pick.id);
                shared.meters.retries.increment(1);
            }
        }
    }
}

/// Records how a relayed connection ended.
fn ended(shared: &Shared, node: u64, end: End) {
    match end {
        End::Idle => shared.meters.idle_closed.increment(1),
        End::Closed => {}
        End::Failed(e) => tracing::trace!(node, error = %e, "relayed connection failed"),
    }
}

/// Reads the public certificate again on every SIGHUP (a renewal); an
/// unreadable new pair is logged and the one in use stays.
async fn reload_on_hangup(tls: Arc<PublicTls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::SignalKind;
        let Ok(mut hangups) = tokio::signal::unix::signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the public certificate is read only at start");
            return;
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(cert = %tls.files().cert.display(), "public certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "public certificate not reloaded; the old one stays"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

async fn serve(shared: &Shared, stream: &mut TcpStream, peer: SocketAddr) {
    let settings = &shared.settings;
    let _ = stream.set_nodelay(true);
    let Ok(header) = proxy_header(settings, stream, peer) else { return };
    let first = match assign::sniff(stream, settings.connect_timeout).await {
        Ok(FirstBytes::Closed) | Err(_) => return,
        Ok(FirstBytes::Decided(first)) => first,
    };
    if first.sniffed == Sniffed::Assign {
        let pick = shared.table.lock().pick(Purpose::Assign, &[]);
        shared.meters.assigns.increment(1);
        let answer = assign::response(pick.map(|p| (p.id, p.addr)));
        let _ = assign::answer(stream, &answer, settings.connect_timeout).await;
        return;
    }
    let Some((lease, mut node)) = open_node(shared, header.as_ref()).await else {
        if first.http {
            let _ = assign::answer(stream, &assign::response(None), settings.connect_timeout).await;
        }
        return;
    };
    let end = relay::relay(stream, &mut node, settings.idle_timeout).await;
    ended(shared, lease.pick.id, end);
}

/// Connects to a node and writes the PROXY header, if any, before anything
/// of the client's: a node that cannot take even that counts as a failed
/// connect, and the client is tried on another node.
async fn connect(addr: SocketAddr, timeout: Duration, header: Option<&proxy::Header>) -> std::io::Result<TcpStream> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        if let Some(h) = header {
            stream.write_all(h.as_bytes()).await?;
        }
        Ok(stream)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no connect within {timeout:?}")))?
}

/// A relay pick's claim on its node's active count, given back on drop
/// (also when the task is aborted at shutdown).
struct Lease<'a> {
    shared: &'a Shared,
    pick: Pick,
    armed: bool,
}

impl Lease<'_> {
    /// The connect failed: the node becomes suspect instead.
    fn failed(mut self, error: std::io::Error) {
        self.armed = false;
        let flip = self.shared.table.lock().connect_failed(&self.pick, format!("connect: {error}"));
        let (node, addr) = (self.pick.id, self.pick.addr);
        match flip {
            Some(Transition::WentDown) => tracing::warn!(node, %addr, %error, "node down (connects fail)"),
            _ => tracing::info!(node, %addr, %error, "connect failed; node suspect, client retried elsewhere"),
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.table.lock().release(self.pick.id, self.pick.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    /// What one idle relayed connection costs in task state; the sockets'
    /// kernel buffers are not the process's memory.
    #[tokio::test]
    async fn a_client_task_is_small() {
        let settings = BalancerSettings {
            nodes: vec![Backend { id: 1, addr: SocketAddr::from(([127, 0, 0, 1], 1)), weight: 1 }],
            ..BalancerSettings::default()
        };
        let table = Table::new(&settings.nodes, settings.strategy, Thresholds { down_after: 1, up_after: 1 });
        let shared = Arc::new(Shared { table: Mutex::new(table), meters: Meters::new(), settings });
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let stream = TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let peer = stream.local_addr().expect("addr");
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("permit");
        let slot = PerAddress::new(1).claim(peer.ip()).expect("slot");
        let (_tx, rx) = watch::channel(false);
        let task = client(shared, stream, peer, (permit, slot), rx);
        let size = std::mem::size_of_val(&task);
        eprintln!("client task future: {size} bytes");
        assert!(size <= 2048, "a client task takes {size} bytes before any buffer");
    }
}
