//! TLS on the public address (docs/protocol.md §8 "Wire"): the balancer
//! terminates it with the certificate `palaver certs --tls` makes, HTTP and
//! WebSocket work over it, a client that does not trust the CA is refused,
//! and a new certificate read on SIGHUP drops no open connection; a node
//! alone serves TLS itself.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use futures_util::SinkExt;
use futures_util::StreamExt;
use palaver_balancer::Backend;
use palaver_balancer::BalancerSettings;
use palaver_balancer::TlsFiles;
use palaver_testkit::Balancer;
use palaver_testkit::Launch;
use palaver_testkit::Node;
use palaver_testkit::WAIT;
use palaver_testkit::eventually;
use palaver_testkit::test_config;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The certificate, key and CA `palaver certs --tls` makes in `dir`.
fn make_public_cert(dir: &Path) -> Result<(TlsFiles, PathBuf)> {
    let made = palaver_testkit::public_cert(dir)?;
    Ok((made.files, made.ca))
}

/// A TLS client trusting only the CA in `ca` (none: trusting nothing).
fn connector(ca: Option<&Path>) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn tls_connect(connector: &TlsConnector, addr: &str, name: &str) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string())?;
    Ok(tokio::time::timeout(WAIT, connector.connect(name, tcp)).await??)
}

/// One HTTP/1.1 request over a fresh TLS connection: (status, headers in
/// lower case, body).
async fn https(
    connector: &TlsConnector,
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, String, Value)> {
    let mut stream = tls_connect(connector, addr, "localhost").await?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    // The server closes after the answer (Connection: close); a TLS close
    // without close_notify still ends the read.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("no answer head in {text:?}"))?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("status of {head}"))?;
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok((status, head.to_ascii_lowercase(), json))
}

/// A WebSocket over TLS, authenticated by its Bearer header.
async fn wss(
    connector: &TlsConnector,
    addr: &str,
    token: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>> {
    let stream = tls_connect(connector, addr, "localhost").await?;
    let mut request =
        format!("wss://localhost:{}/ws", addr.rsplit(':').next().unwrap_or("443")).into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(ws)
}

/// Sends a command and waits for its reply.
async fn call<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, id: u64, cmd: Value) -> Result<Value>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut cmd = cmd;
    cmd["id"] = json!(id);
    ws.send(Message::text(cmd.to_string())).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await?.context("the socket closed")??;
        if let Message::Text(t) = frame {
            let v: Value = serde_json::from_str(&t)?;
            if v["id"] == json!(id) {
                return Ok(v);
            }
        }
    }
}

/// A node (told that its clients come over TLS) behind a TLS balancer.
async fn start(files: TlsFiles) -> Result<(Node, Balancer)> {
    let launch = Launch { env: vec![("PALAVER_PUBLIC_TLS".into(), "1".into())], ..Launch::default() };
    let node = Node::start_as("node", test_config(), &launch).await?;
    let settings = BalancerSettings {
        nodes: vec![Backend { id: 1, addr: node.socket_addr()?, weight: 1 }],
        discover: false,
        tls: Some(files),
        ..BalancerSettings::default()
    };
    let lb = Balancer::start(settings).await?;
    Ok((node, lb))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_serves_https_and_wss_to_clients_that_trust_the_ca_and_no_one_else() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (files, ca) = tokio::task::block_in_place(|| make_public_cert(dir.path()))?;
    let (_node, lb) = start(files).await?;
    let addr = lb.addr.to_string();
    let trusting = connector(Some(&ca))?;

    let (status, head, _) = https(&trusting, &addr, "GET", "/healthz", None, None).await?;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("strict-transport-security: max-age="), "HSTS over TLS: {head}");
    // The certificate names 127.0.0.1 too.
    tls_connect(&trusting, &addr, "127.0.0.1").await?;

    let creds = json!({"username": "tlsuser", "password": "tls-password"});
    assert_eq!(https(&trusting, &addr, "POST", "/api/register", None, Some(&creds)).await?.0, 201);
    let (status, _, login) = https(&trusting, &addr, "POST", "/api/login", None, Some(&creds)).await?;
    assert_eq!(status, 200);
    let token = login["token"].as_str().context("a token")?.to_string();
    let room = json!({"room": "secure", "title": "Secure", "visibility": "public"});
    assert_eq!(https(&trusting, &addr, "POST", "/api/rooms", Some(&token), Some(&room)).await?.0, 201);

    let mut ws = wss(&trusting, &addr, &token).await?;
    let sub = call(&mut ws, 1, json!({"type": "subscribe", "room": "secure"})).await?;
    assert_eq!(sub["type"], "ok", "{sub}");
    let sent =
        call(&mut ws, 2, json!({"type": "send", "room": "secure", "body": "over tls", "client_id": "t1"})).await?;
    assert_eq!(sent["type"], "ok", "{sent}");

    // Without the CA: refused in the handshake, no byte of HTTP exchanged.
    let stranger = connector(None)?;
    match tls_connect(&stranger, &addr, "localhost").await {
        Ok(_) => bail!("a client that does not trust the local CA completed a handshake"),
        Err(e) => assert!(format!("{e:#}").contains("certificate"), "refused for another reason: {e:#}"),
    }
    // Plain HTTP on the TLS address gets no HTTP answer.
    let mut plain = TcpStream::connect(&addr).await?;
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "plain HTTP answered: {got:?}");
    Ok(())
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_read_on_sighup_drops_no_open_connection() -> Result<()> {
    // This process keeps SIGHUP from here on: the signal must never end it.
    let _hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let dir = tempfile::tempdir()?;
    let (files, old_ca) = tokio::task::block_in_place(|| make_public_cert(dir.path()))?;
    let (node, lb) = start(files).await?;
    let addr = lb.addr.to_string();
    let old = connector(Some(&old_ca))?;
    let user = node.user("renewer").await?;
    user.http.create_room("lobby", "Lobby", palaver_client::Visibility::Public).await?;
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut ws = wss(&old, &addr, &user.token).await?;
        assert_eq!(call(&mut ws, 1, json!({"type": "subscribe", "room": "lobby"})).await?["type"], "ok");
        open.push(ws);
    }

    // A new CA and certificate in the same files, then SIGHUP.
    let kept = dir.path().join("old-ca.pem");
    std::fs::copy(&old_ca, &kept)?;
    std::fs::remove_dir_all(dir.path().join("data").join("public-tls"))?;
    let (_, new_ca) = tokio::task::block_in_place(|| make_public_cert(dir.path()))?;
    assert_ne!(std::fs::read(&new_ca)?, std::fs::read(&kept)?, "a new CA was made");
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status()?;
    assert!(status.success());
    let fresh = connector(Some(&new_ca))?;
    eventually("the new certificate to be served", WAIT, async || {
        Ok(tls_connect(&fresh, &addr, "localhost").await.ok().map(drop))
    })
    .await?;
    assert!(tls_connect(&old, &addr, "localhost").await.is_err(), "the old certificate is still served");

    // Every connection opened before the reload still works both ways.
    for (i, ws) in open.iter_mut().enumerate() {
        let id = 10 + i as u64;
        let body = format!("still here {i}");
        let sent =
            call(ws, id, json!({"type": "send", "room": "lobby", "body": body, "client_id": format!("r{i}")})).await?;
        assert_eq!(sent["type"], "ok", "socket {i}: {sent}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_serves_https_and_wss_itself_when_the_file_names_a_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (files, ca) = tokio::task::block_in_place(|| make_public_cert(dir.path()))?;
    let node = Node::start_with(palaver_testkit::config(|c| {
        c.public.tls_cert = Some(files.cert.clone());
        c.public.tls_key = Some(files.key.clone());
    }))
    .await?;
    let addr = node.addr().to_string();
    let trusting = connector(Some(&ca))?;
    let (status, head, _) = https(&trusting, &addr, "GET", "/healthz", None, None).await?;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("strict-transport-security: max-age="), "HSTS: {head}");
    let creds = json!({"username": "alone", "password": "alone-password"});
    assert_eq!(https(&trusting, &addr, "POST", "/api/register", None, Some(&creds)).await?.0, 201);
    let (_, _, login) = https(&trusting, &addr, "POST", "/api/login", None, Some(&creds)).await?;
    let token = login["token"].as_str().context("a token")?.to_string();
    let room = json!({"room": "solo", "title": "Solo", "visibility": "public"});
    assert_eq!(https(&trusting, &addr, "POST", "/api/rooms", Some(&token), Some(&room)).await?.0, 201);
    let mut ws = wss(&trusting, &addr, &token).await?;
    assert_eq!(call(&mut ws, 1, json!({"type": "subscribe", "room": "solo"})).await?["type"], "ok");
    assert!(tls_connect(&connector(None)?, &addr, "localhost").await.is_err(), "a client without the CA got in");
    let mut plain = TcpStream::connect(&addr).await?;
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "plain HTTP answered on a TLS node");
    Ok(())
}
