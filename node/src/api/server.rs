//! The accept loop: HTTP/1.1 with upgrades; the client's real address (a
//! PROXY v2 header from a trusted proxy); caps on connections per node and
//! per client address; a deadline on every phase (the request head and
//! idle keep-alive by hyper, the body in the `Json` extractor, writes in
//! [`ConnIo`]); and a graceful stop that tells live sockets to reconnect
//! elsewhere (1012).

use std::future::Future;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use palaver_protocol::close;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::admission::PerAddress;
use super::admission::Refusal;
use super::admission::RefusalLog;
use super::conn_io::ConnIo;
use super::proxy_protocol;
use super::proxy_protocol::Prefix;
use crate::service::Node;

/// How long open HTTP requests may run on after the stop signal.
const GRACE: Duration = Duration::from_secs(5);
/// Pause between two peeks while the first bytes could still be a PROXY
/// signature (it normally arrives whole, in the proxy's first segment).
const PEEK_PAUSE: Duration = Duration::from_millis(5);

/// Serves clients on `listener` until `shutdown` resolves; over TLS with
/// `tls` (a node serving clients itself, with no balancer in front).
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let tls = tls.map(TlsAcceptor::from);
    let router = super::router(node.clone());
    let permits = Arc::new(Semaphore::new(node.limits.max_connections));
    let per_address = PerAddress::new(node.limits.max_connections_per_address);
    let refusals = Arc::new(RefusalLog::default());
    let head_timeout = Duration::from_millis(node.limits.handshake_timeout_ms);
    let write_timeout = Duration::from_millis(node.limits.write_timeout_ms);
    let trusted: Arc<[IpAddr]> = node.security.trusted_proxies.iter().map(|ip| ip.to_canonical()).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refusals.refused(Refusal::MaxConnections, peer.ip(), "max_connections reached");
            continue;
        };
        let from_proxy = trusted.contains(&peer.ip());
        // A direct client is counted before anything is spawned for it, so
        // one that is over its cap costs nothing beyond the accept.
        let early_slot = if from_proxy {
            None
        } else {
            match per_address.claim(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    refusals.refused(Refusal::PerAddress, peer.ip(), "max_connections_per_address reached");
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = stop_rx.clone();
        let per_address = per_address.clone();
        let refusals = refusals.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let (addr, slot) = match early_slot {
                Some(slot) => (peer, slot),
                None => {
                    let addr = match tokio::time::timeout(head_timeout, client_address(&mut stream, peer)).await {
                        Ok(Ok(Some(addr))) => addr,
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) => {
                            refusals.refused(Refusal::ProxyHeader, peer.ip(), &e.to_string());
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "no request within the handshake timeout");
                            return;
                        }
                    };
                    match per_address.claim(addr.ip()) {
                        Some(slot) => (addr, slot),
                        None => {
                            refusals.refused(Refusal::PerAddress, addr.ip(), "max_connections_per_address reached");
                            return;
                        }
                    }
                }
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
                router.clone().oneshot(req)
            });
            // The places under the caps go with the IO: after a WebSocket
            // upgrade it lives on in the socket, past this task.
            let held = (permit, slot);
            let Some(tls) = tls else {
                let io = ConnIo::new(stream, write_timeout, held);
                return http1(io, service, head_timeout, addr, stop).await;
            };
            match tokio::time::timeout(head_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    http1(ConnIo::new(stream, write_timeout, held), service, head_timeout, addr, stop).await
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "no TLS handshake within the handshake timeout"),
            }
        });
    }
    tracing::info!("stopping: closing client connections");
    let _ = stop_tx.send(true);
    node.hub.close_all(close::RESTARTING);
    let deadline = tokio::time::Instant::now() + GRACE;
    while node.hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it ends, or
/// until the stop signal and a grace period.
async fn http1<T, S>(io: T, service: S, head_timeout: Duration, addr: SocketAddr, mut stop: watch::Receiver<bool>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper's header timeout also runs while a keep-alive connection
    // waits for its next request, so an idle one closes too.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "client connection ended with an error");
            }
        }
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACE, conn).await;
        }
    }
}

/// Why a trusted peer's connection is not served.
#[derive(Debug, thiserror::Error)]
enum HeaderError {
    /// The header is malformed.
    #[error("bad PROXY header: {0}")]
    Proxy(#[from] proxy_protocol::ProxyError),
    /// The socket failed.
    #[error("reading a PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// The client's address on a connection from a trusted proxy: the source a
/// PROXY v2 header names, read off the socket so the request follows it
/// untouched; or the peer itself when the connection starts with anything
/// else (a direct client, the balancer's own health checks) or the header
/// names no address. `None`: the peer closed before sending anything.
async fn client_address(stream: &mut TcpStream, peer: SocketAddr) -> Result<Option<SocketAddr>, HeaderError> {
    let mut first = [0u8; proxy_protocol::SIGNATURE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Ok(None);
        }
        match proxy_protocol::classify(&first[..n]) {
            Prefix::Plain => return Ok(Some(peer)),
            Prefix::Header => break,
            // Peeking again at once would find the same bytes: wait a little.
            Prefix::NeedMore => tokio::time::sleep(PEEK_PAUSE).await,
        }
    }
    let mut header = [0u8; proxy_protocol::FIXED_LEN + proxy_protocol::MAX_ADDRESS_LEN];
    stream.read_exact(&mut header[..proxy_protocol::FIXED_LEN]).await?;
    let len = proxy_protocol::address_len(&header[..proxy_protocol::FIXED_LEN])?;
    let end = proxy_protocol::FIXED_LEN + len;
    stream.read_exact(&mut header[proxy_protocol::FIXED_LEN..end]).await?;
    let source = proxy_protocol::parse(&header[..end])?;
    Ok(Some(source.map(|s| SocketAddr::new(s.ip().to_canonical(), s.port())).unwrap_or(peer)))
}
