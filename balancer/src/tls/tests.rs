//! The handshake and the record layer against rustls' own client, over
//! real sockets: every suite of both versions, data sent with the
//! client's Finished, key updates both ways, a changed byte.

use std::io::Read;
use std::io::Write;
use std::net::TcpStream as StdStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::ClientConnection;
use rustls::ServerConfig;
use rustls::SupportedCipherSuite;
use rustls::crypto::ring::cipher_suite;
use rustls::pki_types::PrivateKeyDer;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

use super::handshake;
use super::relay;
use crate::relay::End;

const WAIT: Duration = Duration::from_secs(60);

/// A server config (secrets extractable, as the balancer's) and a client
/// config that trusts it, both limited to `suite`.
fn configs(suite: SupportedCipherSuite) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).expect("key");
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    });
    let version = match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    server.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

const SUITES: [SupportedCipherSuite; 6] = [
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// A connected pair of loopback sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.expect("connect"), b.expect("accept").0)
}

/// A listener for the client, whose first connection is handshaken and
/// relayed to a node socket; returns the client's address, the node's
/// end and the relay's outcome.
async fn relayed(server: Arc<ServerConfig>) -> (std::net::SocketAddr, TcpStream, tokio::task::JoinHandle<End>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (mut node_side, node) = pair().await;
    let relay = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let session = handshake::accept(server, socket).await.expect("handshake");
        relay::relay(session, &mut node_side, WAIT).await
    });
    (addr, node, relay)
}

fn client(config: Arc<ClientConfig>, addr: std::net::SocketAddr) -> (ClientConnection, StdStream) {
    let conn = ClientConnection::new(config, "localhost".try_into().expect("name")).expect("client");
    let socket = StdStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    (conn, socket)
}

fn pattern(n: usize, modulo: u32) -> Vec<u8> {
    (0..n as u32).map(|i| (i % modulo) as u8).collect()
}

#[tokio::test]
async fn every_suite_carries_bytes_both_ways_and_closes_with_close_notify() {
    for suite in SUITES {
        let (server, config) = configs(suite);
        let (addr, mut node, relay) = relayed(server).await;
        let first = b"sent with the client's Finished".to_vec();
        let payload = pattern(300 * 1024, 251);
        let answer = pattern(200 * 1024, 13);
        let client = {
            let (first, payload) = (first.clone(), payload.clone());
            tokio::task::spawn_blocking(move || {
                let (mut conn, mut socket) = client(config, addr);
                // Queued before the handshake: rustls writes it right
                // after its Finished, often in the same segment.
                conn.writer().write_all(&first).expect("queue");
                let mut tls = rustls::Stream::new(&mut conn, &mut socket);
                tls.write_all(&payload).expect("write");
                tls.conn.send_close_notify();
                tls.flush().expect("flush");
                let mut back = Vec::new();
                tls.read_to_end(&mut back).expect("read until the server's close_notify");
                back
            })
        };
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, node.read_to_end(&mut got)).await.expect("in time").expect("node reads");
        let mut expected = first.clone();
        expected.extend_from_slice(&payload);
        assert!(got == expected, "{suite:?}: {} of {} bytes arrived, or changed", got.len(), expected.len());
        node.write_all(&answer).await.expect("node writes");
        node.shutdown().await.expect("node closes");
        let back = tokio::time::timeout(WAIT, client).await.expect("in time").expect("client");
        assert!(back == answer, "{suite:?}: {} of {} bytes came back, or changed", back.len(), answer.len());
        let end = tokio::time::timeout(WAIT, relay).await.expect("in time").expect("relay");
        assert!(matches!(end, End::Closed), "{suite:?}: {end:?}");
    }
}

#[tokio::test]
async fn key_updates_the_client_asks_for_change_both_directions_keys() {
    for suite in [cipher_suite::TLS13_AES_128_GCM_SHA256, cipher_suite::TLS13_CHACHA20_POLY1305_SHA256] {
        let (server, config) = configs(suite);
        let (addr, mut node, relay) = relayed(server).await;
        let (to_client, mut from_test) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let client = tokio::task::spawn_blocking(move || {
            let (mut conn, mut socket) = client(config, addr);
            let mut tls = rustls::Stream::new(&mut conn, &mut socket);
            for round in 0..3u8 {
                tls.write_all(&[b'a', round]).expect("write");
                // Sends a KeyUpdate that asks the server to update too.
                tls.conn.refresh_traffic_keys().expect("key update");
                tls.write_all(&[b'b', round]).expect("write with the new key");
                let mut got = [0u8; 2];
                tls.read_exact(&mut got).expect("read the server's answer under its new key");
                assert_eq!(got, [b'c', round]);
            }
            drop(to_client);
        });
        for round in 0..3u8 {
            let mut got = [0u8; 4];
            tokio::time::timeout(WAIT, node.read_exact(&mut got)).await.expect("in time").expect("node reads");
            assert_eq!(got, [b'a', round, b'b', round], "{suite:?} round {round}");
            node.write_all(&[b'c', round]).await.expect("node answers");
        }
        assert!(from_test.recv().await.is_none());
        tokio::time::timeout(WAIT, client).await.expect("in time").expect("client saw every answer");
        drop(node);
        let end = tokio::time::timeout(WAIT, relay).await.expect("in time").expect("relay");
        assert!(!matches!(end, End::Idle), "{suite:?}: {end:?}");
    }
}

#[tokio::test]
async fn a_changed_byte_ends_the_connection_with_bad_record_mac() {
    let (server, config) = configs(cipher_suite::TLS13_AES_256_GCM_SHA384);
    let (addr, mut node, relay) = relayed(server).await;
    let client = tokio::task::spawn_blocking(move || {
        let (mut conn, mut socket) = client(config, addr);
        while conn.is_handshaking() {
            conn.complete_io(&mut socket).expect("handshake");
        }
        conn.writer().write_all(b"tampered with").expect("queue");
        let mut record = Vec::new();
        conn.write_tls(&mut record).expect("seal");
        let last = record.len() - 1;
        record[last] ^= 0x80;
        socket.write_all(&record).expect("send");
        // The server's answer: an alert, then the end of the stream.
        loop {
            match conn.read_tls(&mut socket) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => conn.process_new_packets().map(|_| ())?,
            }
        }
    });
    let outcome = tokio::time::timeout(WAIT, client).await.expect("in time").expect("client");
    assert!(
        matches!(outcome, Err(rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac))),
        "{outcome:?}"
    );
    let end = tokio::time::timeout(WAIT, relay).await.expect("in time").expect("relay");
    assert!(matches!(end, End::Failed(_)), "{end:?}");
    let mut got = Vec::new();
    let _ = node.read_to_end(&mut got).await;
    assert!(got.is_empty(), "the node got {} bytes of a forged record", got.len());
}
