//! `palaver up`: the whole cluster of the cluster file on this machine.
//!
//! Each node is this same executable re-run as `palaver node --config FILE
//! --id N`, so what runs locally is exactly what runs in a deployment. The
//! launcher streams every node's output with a `[node N]` prefix, waits for
//! each node's ready line (`palaver_node::ready`), then until each node is
//! healthy and the cluster has a leader, starts the balancer (in
//! this process) on the public address, prints where to connect, and on
//! Ctrl-C stops the balancer and then the nodes (SIGTERM, then SIGKILL after a grace
//! period). Nodes exit on their own if the launcher dies: their stdin is a
//! pipe from it, and `--exit-with-parent` makes them stop when it closes.
//!
//! The cluster's operations token (member list, private metrics, the
//! balancer's admin address) is `PALAVER_OPS_TOKEN`, else the file's
//! `[security] ops_token`, else one made on first run and kept in
//! `<data_dir>/ops-token` (mode 0600); the nodes get it in their
//! environment, the balancer in its settings.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use palaver_balancer::TlsFiles;
use palaver_node::config::Config;
use palaver_node::config::OPS_TOKEN_ENV;
use palaver_node::config::OpsToken;
use palaver_node::config::PUBLIC_TLS_ENV;
use tokio::io::AsyncBufReadExt;
use tokio::io::BufReader;
use tokio::process::Child;
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::local_ca::PublicCert;

/// How long nodes get to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long nodes get to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Launched {
    id: u64,
    child: Child,
    /// The address on the node's ready line, once it prints it.
    ready: Option<oneshot::Receiver<SocketAddr>>,
    /// Held open for the node's life: `Child::wait` would close it, and the
    /// node stops when it closes.
    _stdin: Option<tokio::process::ChildStdin>,
}

/// Starts every node of `config_path`, waits for them, and runs until
/// Ctrl-C. `env_token`: `PALAVER_OPS_TOKEN`, if set.
pub async fn run(config_path: &Path, env_token: Option<String>, tls: Option<PublicCert>) -> Result<()> {
    let config = Config::load(config_path)?;
    anyhow::ensure!(!config.nodes.is_empty(), "{} lists no [[node]]", config_path.display());
    let (ops_token, token_from) = match (env_token, &config.security.ops_token) {
        (Some(t), _) => (OpsToken::new(t).with_context(|| format!("${OPS_TOKEN_ENV}"))?, format!("${OPS_TOKEN_ENV}")),
        (None, Some(t)) => (t.clone(), format!("[security] ops_token in {}", config_path.display())),
        (None, None) => {
            let path = config.cluster.data_dir.join("ops-token");
            (ops_token_file(&path)?, path.display().to_string())
        }
    };
    let exe = std::env::current_exe().context("finding the palaver executable")?;
    let mut nodes = Vec::new();
    for n in &config.nodes {
        let mut child = Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(config_path)
            .arg("--id")
            .arg(n.id.to_string())
            .arg("--exit-with-parent")
            .env(OPS_TOKEN_ENV, ops_token.expose())
            .envs(tls.as_ref().map(|_| (PUBLIC_TLS_ENV, "1")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", n.id))?;
        let ready = Some(forward_output(n.id, &mut child));
        let stdin = child.stdin.take();
        nodes.push(Launched { id: n.id, child, ready, _stdin: stdin });
    }
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let ready = async {
        wait_ready(&mut nodes, deadline).await?;
        wait_healthy(&config, deadline).await
    };
    let started = tokio::select! {
        result = ready => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };
    match started {
        Some(Err(e)) => {
            stop(&mut nodes).await;
            return Err(e);
        }
        None => {
            stop(&mut nodes).await;
            return Ok(());
        }
        Some(Ok(())) => {}
    }
    let balancer = match start_balancer(config_path, &ops_token, tls.as_ref().map(|t| t.files.clone())).await {
        Ok(b) => b,
        Err(e) => {
            stop(&mut nodes).await;
            return Err(e);
        }
    };
    println!();
    println!("Palaver is up: {} node(s), data in {}", nodes.len(), config.cluster.data_dir.display());
    let (http, ws) = if balancer.tls { ("https", "wss") } else { ("http", "ws") };
    println!(
        "  clients connect to {http}://{}  (WebSocket {ws}://{}/ws), balanced {}",
        balancer.public, balancer.public, balancer.strategy
    );
    if let Some(ca) = tls.as_ref().and_then(|t| t.ca.as_ref()) {
        println!("{}", crate::local_ca::trust_help(ca));
    }
    println!("  balancer admin: http://{}/balancer/nodes", balancer.admin);
    println!("  ops token (Authorization: Bearer, for the admin address and /api/cluster/members): {token_from}");
    for n in &config.nodes {
        println!("  node {}: http://{}", n.id, n.client);
    }
    println!(
        "  registration: {} (make an admin with `palaver admin create-user NAME --admin --config {}`)",
        config.registration().as_str(),
        config_path.display()
    );
    println!("Ctrl-C stops the cluster.");
    let web = format!("{http}://{}/", balancer.public);
    let origin = web.trim_end_matches('/');
    let security = &config.security;
    if !palaver_node::api::origin::allowed(
        Some(origin.as_bytes()),
        &security.allowed_origins,
        security.public_url.as_deref(),
    ) {
        println!("  note: {origin} is not in [security] allowed_origins: the web page falls back to SSE");
    }
    // Last, so scripts and people find it without reading the rest.
    println!("Open the web client: {web}");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            exited = first_exit(&mut nodes) => {
                let (id, status) = exited;
                eprintln!("palaver up: node {id} exited ({status}); Ctrl-C stops the others");
                nodes.retain(|n| n.id != id);
                if nodes.is_empty() {
                    return Ok(());
                }
            }
        }
    }
    println!("palaver up: stopping");
    let _ = balancer.stop.send(());
    let _ = balancer.task.await;
    stop(&mut nodes).await;
    Ok(())
}

/// The balancer running inside the launcher.
struct Balancer {
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    strategy: palaver_balancer::Strategy,
    /// The public address serves TLS.
    tls: bool,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the balancer of the cluster file in this process.
async fn start_balancer(config_path: &Path, ops_token: &OpsToken, tls: Option<TlsFiles>) -> Result<Balancer> {
    let mut settings = palaver_balancer::BalancerSettings::load(config_path, None)
        .with_context(|| format!("reading the balancer settings from {}", config_path.display()))?;
    settings.ops_token = Some(palaver_balancer::OpsToken::new(ops_token.expose())?);
    if tls.is_some() {
        settings.tls = tls;
    }
    let serves_tls = settings.tls.is_some();
    let (public, admin) = palaver_balancer::bind(&settings).await.context("opening the balancer's addresses")?;
    let (public_addr, admin_addr) = (public.local_addr()?, admin.local_addr()?);
    let strategy = settings.strategy;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let mut run = std::pin::pin!(palaver_balancer::run(settings, public, admin, shutdown));
        // Polled once before the banner is printed, so the balancer's own
        // start-up log line comes before it and the banner ends the output.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(run.as_mut().poll(cx))).await;
        let _ = started.send(());
        let result = match first {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => run.await,
        };
        if let Err(e) = result {
            eprintln!("palaver up: the balancer stopped: {e}");
        }
    });
    let _ = running.await;
    Ok(Balancer { public: public_addr, admin: admin_addr, strategy, tls: serves_tls, stop, task })
}

/// The token kept in `path`, made (random, 256 bits) and written there
/// with mode 0600 when the file does not exist yet; an existing file that
/// others could read is narrowed to 0600.
fn ops_token_file(path: &Path) -> Result<OpsToken> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => {
            restrict(path)?;
            return OpsToken::new(text.trim()).with_context(|| format!("the ops token in {}", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = palaver_node::auth::random_token();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(OpsToken::new(token)?)
}

/// Makes `path` readable by its owner only.
fn restrict(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {} to its owner", path.display()))?;
        }
    }
    Ok(())
}

/// Copies a node's stdout and stderr to ours, line by line, with a prefix;
/// answers the address on its ready line when it prints one (the sender is
/// dropped if its output ends first).
fn forward_output(id: u64, child: &mut Child) -> oneshot::Receiver<SocketAddr> {
    let (tx, rx) = oneshot::channel();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(async move {
            let mut ready = Some(tx);
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(r) = palaver_node::ready::parse_ready_line(&line)
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(r.addr);
                }
                println!("[node {id}] {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[node {id}] {line}");
            }
        });
    }
    rx
}

/// Waits until every node printed its ready line; fails as soon as one
/// ends its output without it, and at `deadline`.
async fn wait_ready(nodes: &mut [Launched], deadline: tokio::time::Instant) -> Result<()> {
    for n in nodes.iter_mut() {
        let Some(ready) = n.ready.take() else { continue };
        match tokio::time::timeout_at(deadline, ready).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => anyhow::bail!("node {} stopped before its ready line (its output is above)", n.id),
            Err(_) => anyhow::bail!("node {} printed no ready line within {} s", n.id, START_TIMEOUT.as_secs()),
        }
    }
    Ok(())
}

/// Polls every node's `/healthz` until all answer 200 (which needs a leader).
async fn wait_healthy(config: &Config, deadline: tokio::time::Instant) -> Result<()> {
    for n in &config.nodes {
        loop {
            if healthz(&n.client.to_string()).await {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "node {} did not become healthy within {} s",
                n.id,
                START_TIMEOUT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// One `GET /healthz` over a plain TCP connection (no HTTP client needed).
async fn healthz(addr: &str) -> bool {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b"200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten().unwrap_or(false)
}

async fn first_exit(nodes: &mut [Launched]) -> (u64, String) {
    if nodes.is_empty() {
        std::future::pending::<()>().await;
    }
    let waits = nodes.iter_mut().map(|n| {
        let id = n.id;
        Box::pin(async move {
            let status = n.child.wait().await.map_or_else(|e| e.to_string(), |s| s.to_string());
            (id, status)
        })
    });
    futures_util::future::select_all(waits).await.0
}

/// SIGTERM to every node, then SIGKILL to those still running after the grace.
async fn stop(nodes: &mut [Launched]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
    for n in nodes.iter_mut() {
        if tokio::time::timeout(STOP_GRACE, n.child.wait()).await.is_err() {
            eprintln!("palaver up: node {} did not stop in time; killing it", n.id);
            let _ = n.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ops_token_is_made_once_kept_private_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: std::path::PathBuf = dir.path().join("data").join("ops-token");
        let made = ops_token_file(&path).expect("made");
        assert!(made.expose().len() >= 43, "a 256-bit token");
        let again = ops_token_file(&path).expect("read back");
        assert!(again.matches(made.expose()), "the same token on the next run");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            ops_token_file(&path).expect("read back");
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "an existing token file is narrowed");
        }
        std::fs::write(&path, "short\n").expect("write");
        assert!(ops_token_file(&path).is_err(), "a token too short to be safe is refused");
    }
}
