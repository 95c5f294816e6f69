//! Transport tests on 127.0.0.1 (UDP port 0 unless a test re-binds).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use quinn::RecvStream;
use quinn::SendStream;
use rustls::pki_types::pem::PemObject;

use super::frame::FrameError;
use super::frame::read_frame;
use super::frame::write_frame;
use super::tls;
use super::tls::Material;
use super::tls::NodeIdentity;
use super::*;

const LONG: Duration = Duration::from_secs(20);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// Answers `"<node>:<channel>:<from>:" + body`, or an error for `"fail"`;
/// echoes every frame of a long-lived stream. Counts what it was given.
#[derive(Default)]
struct Echo {
    node: u64,
    requests: AtomicUsize,
    streams: AtomicUsize,
    frames: AtomicUsize,
}

impl Echo {
    fn new(node: u64) -> Arc<Self> {
        Arc::new(Self { node, ..Self::default() })
    }

    fn calls(&self) -> usize {
        self.requests.load(Ordering::SeqCst) + self.streams.load(Ordering::SeqCst) + self.frames.load(Ordering::SeqCst)
    }
}

impl PeerHandler for Echo {
    fn request(&self, from: u64, channel: Channel, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let node = self.node;
        async move {
            if body == b"fail" {
                return Err(format!("node {node} refuses"));
            }
            let mut answer = format!("{node}:{channel:?}:{from}:").into_bytes();
            answer.extend_from_slice(&body);
            Ok(answer)
        }
        .boxed()
    }

    fn stream(
        &self,
        _from: u64,
        _channel: Channel,
        mut recv: RecvStream,
        mut send: SendStream,
    ) -> BoxFuture<'static, ()> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        async move {
            while let Ok(Some(frame)) = read_frame(&mut recv, 1024 * 1024).await {
                if write_frame(&mut send, &frame).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
            let _ = send.stopped().await;
        }
        .boxed()
    }
}

/// A handler that counts frames delivered on streams (for the refusal
/// tests, where any delivered frame is a failure).
struct Counting(Arc<Echo>);

impl PeerHandler for Counting {
    fn request(&self, from: u64, channel: Channel, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        self.0.request(from, channel, body)
    }

    fn stream(&self, _from: u64, _channel: Channel, mut recv: RecvStream, _send: SendStream) -> BoxFuture<'static, ()> {
        self.0.streams.fetch_add(1, Ordering::SeqCst);
        let echo = self.0.clone();
        async move {
            while let Ok(Some(_)) = read_frame(&mut recv, 1024 * 1024).await {
                echo.frames.fetch_add(1, Ordering::SeqCst);
            }
        }
        .boxed()
    }
}

fn identity_of(ids: &[(u64, NodeIdentity)], id: u64) -> &NodeIdentity {
    &ids.iter().find(|(i, _)| *i == id).expect("identity").1
}

fn bind(id: u64, ids: &[(u64, NodeIdentity)], handler: Arc<dyn PeerHandler>) -> PeerEndpoint {
    PeerEndpoint::bind(id, any_port(), identity_of(ids, id), PeerSettings::default(), handler).expect("bind")
}

fn introduce(endpoints: &[&PeerEndpoint]) {
    let map: BTreeMap<u64, SocketAddr> = endpoints.iter().map(|e| (e.node_id(), e.local_addr())).collect();
    for e in endpoints {
        e.set_peers(map.clone());
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Re-binds on `addr`, retrying while the old socket is still being
/// released.
async fn rebind(id: u64, addr: SocketAddr, identity: &NodeIdentity, handler: Arc<dyn PeerHandler>) -> PeerEndpoint {
    let deadline = Instant::now() + LONG;
    loop {
        match PeerEndpoint::bind(id, addr, identity, PeerSettings::default(), handler.clone()) {
            Ok(endpoint) => return endpoint,
            Err(PeerError::Bind { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("re-bind failed: {e}"),
        }
    }
}

#[tokio::test]
async fn requests_both_ways_on_every_channel() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let (ha, hb) = (Echo::new(1), Echo::new(2));
    let a = bind(1, &ids, ha.clone());
    let b = bind(2, &ids, hb.clone());
    introduce(&[&a, &b]);
    for channel in Channel::ALL {
        let answer = a.request(2, channel, b"ping".to_vec(), LONG).await.expect("a→b");
        assert_eq!(answer, format!("2:{channel:?}:1:ping").into_bytes());
        let answer = b.request(1, channel, b"pong".to_vec(), LONG).await.expect("b→a");
        assert_eq!(answer, format!("1:{channel:?}:2:pong").into_bytes());
    }
    // Empty bodies and answers are fine too.
    assert_eq!(a.request(2, Channel::Raft, Vec::new(), LONG).await.expect("empty"), b"2:Raft:1:".to_vec());
    let channels = Channel::ALL.len();
    assert_eq!(ha.requests.load(Ordering::SeqCst), channels);
    assert_eq!(hb.requests.load(Ordering::SeqCst), channels + 1);
    // Each side dialled once and accepted once (one connection per direction).
    assert_eq!((a.dial_count(), a.accepted_count()), (1, 1));
    assert_eq!((b.dial_count(), b.accepted_count()), (1, 1));
    assert_eq!(a.connected(), vec![2]);
    assert_eq!(b.connected(), vec![1]);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn handler_error_comes_back_as_remote() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let a = bind(1, &ids, Echo::new(1));
    let b = bind(2, &ids, Echo::new(2));
    introduce(&[&a, &b]);
    match a.request(2, Channel::Rooms, b"fail".to_vec(), LONG).await {
        Err(PeerError::Remote(text)) => assert_eq!(text, "node 2 refuses"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    // The connection is still good afterwards.
    assert!(a.request(2, Channel::Rooms, b"x".to_vec(), LONG).await.is_ok());
    assert_eq!(a.dial_count(), 1);
}

#[tokio::test]
async fn unknown_peer_is_an_error_not_a_hang() {
    let (_ca, ids) = generate_cluster(&[1]).expect("certs");
    let a = bind(1, &ids, Echo::new(1));
    let started = Instant::now();
    let result = a.request(99, Channel::Raft, b"x".to_vec(), LONG).await;
    assert!(matches!(result, Err(PeerError::UnknownPeer(99))), "{result:?}");
    assert!(matches!(a.open_stream(99, Channel::Raft).await, Err(PeerError::UnknownPeer(99))));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn silent_address_fails_within_the_connect_timeout() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let settings = PeerSettings { connect_timeout: Duration::from_millis(500), ..PeerSettings::default() };
    let a = PeerEndpoint::bind(1, any_port(), identity_of(&ids, 1), settings, Echo::new(1)).expect("bind");
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind(any_port()).expect("udp");
    a.set_peers(BTreeMap::from([(2, silent.local_addr().expect("addr"))]));
    let started = Instant::now();
    let result = a.request(2, Channel::Raft, b"x".to_vec(), LONG).await;
    assert!(matches!(result, Err(PeerError::Unreachable { peer: 2, .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn connection_is_reused_and_concurrent_first_uses_share_one_dial() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let hb = Echo::new(2);
    let a = bind(1, &ids, Echo::new(1));
    let b = bind(2, &ids, hb.clone());
    introduce(&[&a, &b]);
    // 50 concurrent first uses.
    let calls = (0..50u32).map(|i| {
        let a = a.clone();
        async move { a.request(2, Channel::Gossip, i.to_be_bytes().to_vec(), LONG).await }
    });
    for result in futures_util::future::join_all(calls).await {
        result.expect("concurrent request");
    }
    assert_eq!(a.dial_count(), 1);
    for i in 0..100u32 {
        let answer = a.request(2, Channel::Rooms, i.to_be_bytes().to_vec(), LONG).await.expect("request");
        assert!(answer.ends_with(&i.to_be_bytes()));
    }
    assert_eq!(a.dial_count(), 1);
    assert_eq!(b.accepted_count(), 1);
    assert_eq!(hb.requests.load(Ordering::SeqCst), 150);
}

#[tokio::test]
async fn long_lived_stream_carries_10000_frames_in_order() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let hb = Echo::new(2);
    let a = bind(1, &ids, Echo::new(1));
    let b = bind(2, &ids, hb.clone());
    introduce(&[&a, &b]);
    let (mut send, mut recv) = a.open_stream(2, Channel::Rooms).await.expect("open");
    let writer = tokio::spawn(async move {
        for i in 0..10_000u32 {
            let mut frame = i.to_be_bytes().to_vec();
            frame.resize(4 + (i as usize % 300), 0xab);
            write_frame(&mut send, &frame).await.expect("write");
        }
        send.finish().expect("finish");
        let _ = send.stopped().await;
    });
    for i in 0..10_000u32 {
        let frame = read_frame(&mut recv, 1024).await.expect("read").expect("frame");
        assert_eq!(frame[..4], i.to_be_bytes(), "frame {i} out of order");
        assert_eq!(frame.len(), 4 + (i as usize % 300));
    }
    assert!(read_frame(&mut recv, 1024).await.expect("end").is_none(), "clean end after the last frame");
    writer.await.expect("writer");
    assert_eq!(hb.streams.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn oversize_frame_is_refused_before_reading_it() {
    // A reader given a header that announces more than the limit fails at
    // once, without waiting for (or allocating) the body: the writer side
    // is kept open and sends nothing more.
    for announced in [1024 * 1024 + 1, u32::MAX] {
        let (mut writer, mut reader) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut writer, &announced.to_be_bytes()).await.expect("header");
        let result = tokio::time::timeout(LONG, read_frame(&mut reader, 1024 * 1024)).await.expect("no hang");
        match result {
            Err(FrameError::TooLarge { len, max }) => assert_eq!((len, max), (u64::from(announced), 1024 * 1024)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        drop(writer);
    }
    // At the limit is fine; a stream cut inside a frame is an error; a
    // clean end between frames is None.
    let (mut writer, mut reader) = tokio::io::duplex(1 << 16);
    write_frame(&mut writer, &[7u8; 1000]).await.expect("write");
    tokio::io::AsyncWriteExt::write_all(&mut writer, &[0, 0, 0, 9, 1, 2]).await.expect("partial");
    drop(writer);
    assert_eq!(read_frame(&mut reader, 1000).await.expect("frame"), Some(vec![7u8; 1000]));
    assert!(matches!(read_frame(&mut reader, 1000).await, Err(FrameError::Truncated { got: 2, expected: 9 })));
    let (writer, mut reader) = tokio::io::duplex(16);
    drop(writer);
    assert!(read_frame(&mut reader, 1000).await.expect("clean end").is_none());
}

#[tokio::test]
async fn oversize_request_is_refused_by_the_peer_and_locally() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let hb = Echo::new(2);
    let a = bind(1, &ids, Echo::new(1));
    let small = PeerSettings { max_frame: 64 * 1024, ..PeerSettings::default() };
    let b = PeerEndpoint::bind(2, any_port(), identity_of(&ids, 2), small.clone(), hb.clone()).expect("bind");
    introduce(&[&a, &b]);
    // B's limit is 64 KiB: a 1 MiB request never reaches its handler.
    match a.request(2, Channel::Rooms, vec![0; 1024 * 1024], LONG).await {
        Err(PeerError::Remote(text)) => assert!(text.contains("exceeds"), "{text}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(hb.requests.load(Ordering::SeqCst), 0);
    // The connection survives the refusal.
    assert!(a.request(2, Channel::Rooms, vec![0; 1000], LONG).await.is_ok());
    // B refuses to send more than its own limit before touching the network.
    b.set_peers(BTreeMap::from([(1, a.local_addr())]));
    let result = b.request(1, Channel::Rooms, vec![0; 64 * 1024 + 1], LONG).await;
    assert!(matches!(result, Err(PeerError::Frame(FrameError::TooLarge { .. }))), "{result:?}");
    assert_eq!(b.dial_count(), 0);
}

#[tokio::test]
async fn peer_closed_and_rebound_on_the_same_address_is_dialled_again() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let a = bind(1, &ids, Echo::new(1));
    let b = bind(2, &ids, Echo::new(2));
    introduce(&[&a, &b]);
    a.request(2, Channel::Raft, b"before".to_vec(), LONG).await.expect("before");
    let addr = b.local_addr();
    b.close().await;
    assert!(matches!(b.request(1, Channel::Raft, Vec::new(), LONG).await, Err(PeerError::Closed)));
    drop(b);
    // A notices the close (B's endpoint sent it).
    wait_until("a to see b's close", || !a.connected().contains(&2)).await;
    let b2 = rebind(2, addr, identity_of(&ids, 2), Echo::new(2)).await;
    let answer = a.request(2, Channel::Raft, b"after".to_vec(), LONG).await.expect("after re-bind");
    assert_eq!(answer, b"2:Raft:1:after".to_vec());
    assert_eq!(a.dial_count(), 2);
    assert_eq!(b2.accepted_count(), 1);
}

#[tokio::test]
async fn crashed_peer_restarted_is_noticed_before_the_idle_timeout() {
    // B runs on its own runtime; shutting that runtime down kills B without
    // a close frame, like a crash. The restarted B shares the node key and
    // so the stateless reset key: A's stale connection is reset on first
    // use instead of lingering until the idle timeout.
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let settings = PeerSettings { idle_timeout: Duration::from_secs(60), ..PeerSettings::default() };
    let a = PeerEndpoint::bind(1, any_port(), identity_of(&ids, 1), settings.clone(), Echo::new(1)).expect("bind");
    let b_identity = identity_of(&ids, 2).clone();
    let b_settings = settings.clone();
    let (runtime, b) = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let b = runtime
            .block_on(async { PeerEndpoint::bind(2, any_port(), &b_identity, b_settings, Echo::new(2)) })
            .expect("bind b");
        (runtime, b)
    })
    .join()
    .expect("thread");
    let addr = b.local_addr();
    a.set_peers(BTreeMap::from([(2, addr)]));
    a.request(2, Channel::Raft, b"before".to_vec(), LONG).await.expect("before");
    runtime.shutdown_background();
    drop(b);
    let b2 = rebind(2, addr, identity_of(&ids, 2), Echo::new(2)).await;
    let started = Instant::now();
    loop {
        match a.request(2, Channel::Raft, b"after".to_vec(), Duration::from_secs(5)).await {
            Ok(answer) => {
                assert_eq!(answer, b"2:Raft:1:after".to_vec());
                break;
            }
            Err(e) => assert!(started.elapsed() < LONG, "never recovered: {e}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    assert_eq!(a.dial_count(), 2);
    assert_eq!(b2.accepted_count(), 1);
}

#[tokio::test]
async fn another_ca_can_neither_reach_nor_be_reached() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let (_other_ca, others) = generate_cluster(&[2, 3]).expect("other certs");
    let h1 = Echo::new(1);
    let node1 = bind(1, &ids, Arc::new(Counting(h1.clone())));
    // An outsider claiming to be node 2 (a valid node-2 certificate, from
    // the wrong CA), and one under its own id.
    let hx = Echo::new(2);
    let impostor = PeerEndpoint::bind(2, any_port(), identity_of(&others, 2), PeerSettings::default(), hx.clone())
        .expect("bind impostor");
    let hy = Echo::new(3);
    let outsider = PeerEndpoint::bind(3, any_port(), identity_of(&others, 3), PeerSettings::default(), hy.clone())
        .expect("bind outsider");
    for stranger in [&impostor, &outsider] {
        stranger.set_peers(BTreeMap::from([(1, node1.local_addr())]));
        let result = stranger.request(1, Channel::Raft, b"let me in".to_vec(), LONG).await;
        assert!(matches!(result, Err(PeerError::Unreachable { .. })), "a stranger got {result:?}");
        assert_eq!(stranger.dial_count(), 0);
        // A long-lived stream: whatever is written never reaches the handler.
        // (A raw client that pushes frames without waiting for the dial:
        // client_without_certificate_or_from_another_ca_gets_nothing_through.)
        let result = stranger.open_stream(1, Channel::Rooms).await;
        assert!(matches!(result, Err(PeerError::Unreachable { .. })), "{result:?}");
    }
    // And the cluster node refuses them as servers.
    node1.set_peers(BTreeMap::from([(2, impostor.local_addr()), (3, outsider.local_addr())]));
    for peer in [2, 3] {
        let result = node1.request(peer, Channel::Raft, b"hello?".to_vec(), LONG).await;
        assert!(matches!(result, Err(PeerError::Unreachable { .. })), "{result:?}");
    }
    assert_eq!(h1.calls(), 0, "node 1's handler was called by a stranger");
    assert_eq!(hx.calls() + hy.calls(), 0, "a stranger's handler was reached");
    assert_eq!(node1.accepted_count(), 0);
    assert!(node1.connected().is_empty());
}

#[tokio::test]
async fn node_announcing_another_id_is_refused() {
    // A cluster certificate for node 3 used to claim node id 2.
    let (_ca, ids) = generate_cluster(&[1, 2, 3]).expect("certs");
    let h1 = Echo::new(1);
    let node1 = bind(1, &ids, h1.clone());
    // The public bind checks that the identity is node 2's.
    let refused = PeerEndpoint::bind(2, any_port(), identity_of(&ids, 3), PeerSettings::default(), Echo::new(2));
    assert!(matches!(refused, Err(PeerError::Tls(_))), "{refused:?}");
    let liar =
        PeerEndpoint::bind_inner(2, any_port(), identity_of(&ids, 3), PeerSettings::default(), Echo::new(2), false)
            .expect("bind liar");
    liar.set_peers(BTreeMap::from([(1, node1.local_addr())]));
    match liar.request(1, Channel::Raft, b"I am node 2".to_vec(), LONG).await {
        Err(PeerError::Unreachable { reason, .. }) => assert!(reason.contains("does not match"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(h1.calls(), 0);
    assert_eq!(node1.accepted_count(), 0);
}

/// A raw QUIC client (no `PeerEndpoint`, so nothing waits for the hello's
/// answer) that trusts the cluster CA, shows `cert` (or nothing), and pushes
/// a hello, a request and a long-lived stream frame at `target` regardless.
async fn raw_attempt(
    target: SocketAddr,
    cluster: &NodeIdentity,
    cert: Option<&NodeIdentity>,
) -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
    let roots = Material::parse(cluster).expect("material").roots();
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let mut crypto = match cert {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
    };
    crypto.alpn_protocols = vec![tls::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic crypto");
    let mut endpoint = quinn::Endpoint::client(any_port()).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(target, &tls::node_name(1))?.await?;
    let mut hello = b"PLVR\x01".to_vec();
    hello.extend_from_slice(&2u64.to_be_bytes());
    let (mut hello_send, mut hello_recv) = conn.open_bi().await?;
    hello_send.write_all(&hello).await?;
    hello_send.finish()?;
    // A request ...
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[Channel::Raft as u8]).await?;
    write_frame(&mut send, b"anything").await?;
    send.finish()?;
    // ... and a long-lived stream.
    let (mut stream, _) = conn.open_bi().await?;
    stream.write_all(&[Channel::Rooms as u8 | 0x80]).await?;
    write_frame(&mut stream, b"injected").await?;
    stream.finish()?;
    let mut ack = [0u8; 1];
    hello_recv.read_exact(&mut ack).await?;
    Ok(read_frame(&mut recv, 1024).await?)
}

#[tokio::test]
async fn client_without_certificate_or_from_another_ca_gets_nothing_through() {
    let (_ca, ids) = generate_cluster(&[1]).expect("certs");
    let (_other, others) = generate_cluster(&[2]).expect("other certs");
    let h1 = Echo::new(1);
    let node1 = bind(1, &ids, Arc::new(Counting(h1.clone())));
    for cert in [None, Some(identity_of(&others, 2))] {
        let attempt = raw_attempt(node1.local_addr(), identity_of(&ids, 1), cert);
        let result = tokio::time::timeout(LONG, attempt).await.expect("no hang");
        assert!(result.is_err(), "a client with {:?} got {result:?}", cert.map(|_| "a foreign certificate"));
    }
    assert_eq!(h1.calls(), 0);
    assert_eq!(node1.accepted_count(), 0);
    // The same raw client with a proper certificate does get through (so
    // the refusals above are about the certificate).
    let (_ca2, ids2) = generate_cluster(&[1, 2]).expect("certs");
    let h = Echo::new(1);
    let node = bind(1, &ids2, h.clone());
    let answer = raw_attempt(node.local_addr(), identity_of(&ids2, 1), Some(identity_of(&ids2, 2))).await;
    assert_eq!(answer.expect("raw client with a cluster certificate"), Some(b"\x001:Raft:2:anything".to_vec()));
    wait_until("the stream frame", || h.streams.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn certificate_files_are_created_loaded_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    ensure_cluster_certs(&certs, &[1, 2, 3]).expect("create");
    let files =
        ["ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-2.pem", "node-2.key", "node-3.pem", "node-3.key"];
    let read_all = || files.map(|f| std::fs::read(certs.join(f)).expect("file"));
    let before = read_all();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("node-1.key")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    }
    // A second call (and one adding node 4) keeps every existing file.
    ensure_cluster_certs(&certs, &[1, 2, 3]).expect("again");
    ensure_cluster_certs(&certs, &[1, 2, 3, 4]).expect("add node 4");
    assert_eq!(read_all(), before);

    // The files work: node 1 and node 4 (issued later by the reloaded CA)
    // talk to each other.
    let load = |id: u64| {
        let p = cert_paths(&certs, id);
        load_identity(&p.ca, &p.cert, &p.key).expect("load")
    };
    let (i1, i4) = (load(1), load(4));
    let a = PeerEndpoint::bind(1, any_port(), &i1, PeerSettings::default(), Echo::new(1)).expect("bind 1");
    let b = PeerEndpoint::bind(4, any_port(), &i4, PeerSettings::default(), Echo::new(4)).expect("bind 4");
    introduce(&[&a, &b]);
    assert_eq!(a.request(4, Channel::Gossip, b"hi".to_vec(), LONG).await.expect("1→4"), b"4:Gossip:1:hi".to_vec());
    assert_eq!(b.request(1, Channel::Gossip, b"yo".to_vec(), LONG).await.expect("4→1"), b"1:Gossip:4:yo".to_vec());

    // Broken directories are errors, and nothing is replaced.
    std::fs::remove_file(certs.join("node-2.key")).expect("rm");
    assert!(ensure_cluster_certs(&certs, &[2]).is_err());
    assert!(!certs.join("node-2.key").exists());
    let lone = dir.path().join("lone");
    std::fs::create_dir_all(&lone).expect("dir");
    std::fs::write(lone.join("node-1.pem"), "x").expect("write");
    std::fs::write(lone.join("node-1.key"), "x").expect("write");
    assert!(ensure_cluster_certs(&lone, &[1]).is_err());
    assert!(!lone.join("ca.pem").exists());
    // A garbage file does not load.
    let p = cert_paths(&lone, 1);
    assert!(load_identity(&p.ca, &p.cert, &p.key).is_err());
}

#[tokio::test]
async fn identities_and_settings_are_checked_at_bind() {
    let (_ca, ids) = generate_cluster(&[1]).expect("certs");
    let (_other, others) = generate_cluster(&[1]).expect("certs");
    // A node certificate from another CA than the one in the identity.
    let mixed = NodeIdentity { ca_pem: identity_of(&ids, 1).ca_pem.clone(), ..identity_of(&others, 1).clone() };
    let result = PeerEndpoint::bind(1, any_port(), &mixed, PeerSettings::default(), Echo::new(1));
    assert!(matches!(result, Err(PeerError::Tls(_))), "{result:?}");
    let bad = PeerSettings { keep_alive: Duration::from_secs(10), ..PeerSettings::default() };
    let result = PeerEndpoint::bind(1, any_port(), identity_of(&ids, 1), bad, Echo::new(1));
    assert!(matches!(result, Err(PeerError::Config(_))), "{result:?}");
    // The key and certificate names.
    assert!(tls::verify_identity(identity_of(&ids, 1), 1).is_ok());
    assert!(tls::verify_identity(identity_of(&ids, 1), 2).is_err());
    let cert =
        rustls::pki_types::CertificateDer::from_pem_slice(identity_of(&ids, 1).cert_pem.as_bytes()).expect("cert");
    assert!(tls::cert_names_node(&cert, 1));
    assert!(!tls::cert_names_node(&cert, 11));
    assert!(!format!("{:?}", identity_of(&ids, 1)).contains("PRIVATE KEY"));
}

#[tokio::test]
async fn unknown_channel_byte_is_refused_without_calling_the_handler() {
    let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
    let hb = Echo::new(2);
    let a = bind(1, &ids, Echo::new(1));
    let b = bind(2, &ids, hb.clone());
    introduce(&[&a, &b]);
    let (mut send, mut recv) = a.open_bi(2).await.expect("stream");
    send.write_all(&[42]).await.expect("byte");
    write_frame(&mut send, b"x").await.expect("frame");
    let _ = send.finish();
    assert!(read_frame(&mut recv, 1024).await.is_err());
    assert_eq!(hb.calls(), 0);
    // The connection still serves proper requests.
    assert!(a.request(2, Channel::Raft, b"ok".to_vec(), LONG).await.is_ok());
}
