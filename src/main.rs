//! `palaver`: run a node, or a whole local cluster, or chat in a terminal.
//!
//! This binary is the edge: it reads flags and the cluster file, sets up
//! logging, and hands everything else to `palaver-node`; `palaver chat` is
//! the terminal client (`chat/`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;

mod accounts;
mod admin;
mod chat;
mod local_ca;
mod password;
mod up;

use anyhow::Context;
use anyhow::Result;
use clap::Parser;
use clap::Subcommand;
use palaver_node::config::Config;
use palaver_node::config::OPS_TOKEN_ENV;
use palaver_node::config::OpsToken;
use palaver_node::config::PUBLIC_TLS_ENV;
use palaver_node::config::RegistrationMode;
use palaver_node::config::Security;
use palaver_node::peer::ensure_cluster_certs;
use palaver_node::peer::load_identity;
use palaver_node::raft::PeerNode;
use palaver_node::service::ClusterSettings;
use palaver_node::service::Node;
use palaver_node::service::NodeSettings;
use palaver_node::storage::EngineKind;

/// The allocator: jemalloc. A node under load allocates and frees small
/// buffers on many threads (frames, Raft entries, store pages), and glibc's
/// malloc spent about 11% of a saturated server core on that; mimalloc
/// was as fast but held 150 MiB more of an idle node's memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Palaver: a clustered chat server.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node. With no flags: a single-node chat server on
    /// 127.0.0.1:8080 keeping its data in ./palaver-data.
    Node(NodeArgs),
    /// Run every node of the cluster file on this machine (creating the
    /// cluster's certificates on first run), print where to connect, stream
    /// their logs; Ctrl-C stops them all.
    Up(UpArgs),
    /// Create the cluster CA and one certificate per node of the cluster
    /// file in its tls_dir (existing files are kept); with --tls also the
    /// public address's local CA and certificate.
    Certs(UpArgs),
    /// Run the balancer: one public address in front of the cluster's nodes
    /// (the `[balancer]` section and `[[node]]` list of the cluster file).
    Balancer(BalancerArgs),
    /// Chat in this terminal: rooms, messages, typing, through the
    /// cluster's public address. Asks for the password (or reads it with
    /// --password-stdin); survives node restarts by reconnecting.
    #[command(after_help = chat::KEYS_HELP)]
    Chat(chat::ChatArgs),
    /// Print the cluster's nodes: address, health, Raft role, shards led,
    /// connections. Exits 0 when every node is up, 1 if not.
    Status(admin::StatusArgs),
    /// Stop sending new clients to node N and move the leadership of its
    /// shards to other replicas; waits until it leads none.
    Drain(admin::NodeOpArgs),
    /// Add node N (its [[node]] entry must be in the cluster file and the
    /// node running: `palaver certs`, then `palaver node --config FILE --id
    /// N`); waits until the shards placed on it have moved there.
    AddNode(admin::NodeOpArgs),
    /// Remove node N: its shards move to the other nodes, then it leaves the
    /// cluster; waits until it has, after which it may be stopped.
    RemoveNode(admin::NodeOpArgs),
    /// Account administration: `create-user NAME [--admin]` (how the first
    /// admin is made), `users`, `disable NAME`, `enable NAME`, `invite`.
    Admin(accounts::AdminArgs),
}

#[derive(clap::Args)]
struct BalancerArgs {
    /// Cluster file.
    #[arg(long, value_name = "FILE", default_value = "cluster.example.toml")]
    config: PathBuf,
    /// How to pick a node for each new client connection: round-robin,
    /// weighted (smooth weighted round-robin by the nodes' `weight`) or
    /// least-connections (default: the file's `[balancer] strategy`).
    #[arg(long, value_name = "STRATEGY")]
    strategy: Option<palaver_balancer::Strategy>,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Cluster file (TOML, see cluster.example.toml) for limits, security
    /// and, with --id, this node's addresses.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id in the cluster file's [[node]] list.
    #[arg(long, value_name = "N")]
    id: Option<u64>,
    /// Address for clients (port 0: any free port; the chosen address is
    /// printed on the ready line).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Folder for this node's files (default: ./palaver-data, or
    /// <data_dir>/node-N with --config and --id).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Storage engine: redb (default) or sled.
    #[arg(long, value_name = "ENGINE")]
    storage: Option<String>,
    /// Stop when standard input closes (used by `palaver up`, so nodes do
    /// not outlive their launcher).
    #[arg(long)]
    exit_with_parent: bool,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Cluster file.
    #[arg(long, value_name = "FILE", default_value = "cluster.example.toml")]
    config: PathBuf,
    /// Serve the public address over TLS with a certificate for localhost
    /// and 127.0.0.1 from a local CA made on first use in
    /// <data_dir>/public-tls (the file's [public] tls_cert and tls_key win
    /// when set); prints how to trust the CA.
    #[arg(long)]
    tls: bool,
}

/// How long a stopping node may spend handing its rooms over.
const HAND_OVER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The address clients use when nothing else is said (docs/protocol.md).
const DEFAULT_PUBLIC: &str = "127.0.0.1:8080";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let command = match cli.command {
        // The chat screen owns the terminal: no log lines on it. Its errors
        // are for a person: one line, no backtrace.
        Command::Chat(args) => {
            if let Err(e) = chat::main(args) {
                eprintln!("palaver chat: {e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
        other => other,
    };
    // openraft warns on every failed RPC of every group: one dead node made
    // 400 lines a second with 64 shards. The peer transport says once when a
    // peer becomes unreachable and when it is back.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        match command {
            Command::Chat(_) => Ok(()),
            Command::Node(args) => run_node(args).await,
            Command::Up(args) => {
                make_certs(&args.config)?;
                let tls = if args.tls { Some(local_ca::for_config(&args.config)?) } else { None };
                up::run(&args.config, ops_token_from_env()?, tls).await
            }
            Command::Certs(args) => {
                make_certs(&args.config)?;
                if args.tls {
                    let public = local_ca::for_config(&args.config)?;
                    println!(
                        "public certificate: {} (key {})",
                        public.files.cert.display(),
                        public.files.key.display()
                    );
                    if let Some(ca) = &public.ca {
                        println!("{}", local_ca::trust_help(ca));
                    }
                }
                Ok(())
            }
            Command::Balancer(args) => run_balancer(args).await,
            Command::Status(args) => {
                if !admin::status(args).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Drain(args) => admin::drain(args).await,
            Command::AddNode(args) => admin::add_node(args).await,
            Command::RemoveNode(args) => admin::remove_node(args).await,
            Command::Admin(args) => accounts::run(args).await,
        }
    })
}

async fn run_node(args: NodeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(token) = ops_token_from_env()? {
        config.security.ops_token = Some(OpsToken::new(token).with_context(|| format!("${OPS_TOKEN_ENV}"))?);
    } else if config.security.ops_token.is_none() && args.id.is_some() {
        // A node started by hand next to `palaver up`'s (one being added,
        // say) uses the token that launcher made, as its siblings do.
        let path = config.cluster.data_dir.join("ops-token");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let token = OpsToken::new(text.trim().to_string()).with_context(|| format!("{}", path.display()))?;
            tracing::info!(file = %path.display(), "using the cluster's ops token");
            config.security.ops_token = Some(token);
        }
    }
    config.security.hsts = config.public.tls_cert.is_some() || std::env::var_os(PUBLIC_TLS_ENV).is_some();
    let storage = match args.storage.as_deref() {
        None => config.cluster.storage,
        Some("redb") => EngineKind::Redb,
        Some("sled") => EngineKind::Sled,
        Some(other) => anyhow::bail!("--storage {other}: expected redb or sled"),
    };
    // A node alone serves its clients itself, over TLS when the file names
    // a certificate; in a cluster the balancer in front terminates TLS.
    let tls = match (&args.id, &config.public.tls_cert, &config.public.tls_key) {
        (None, Some(cert), Some(key)) => {
            let files = palaver_balancer::TlsFiles { cert: cert.clone(), key: key.clone() };
            Some(palaver_balancer::tls::server_config(&files).context("[public] tls_cert and tls_key")?)
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            anyhow::bail!("[public] needs both tls_cert and tls_key, or neither")
        }
        _ => None,
    };
    let (settings, listen) = match args.id {
        Some(id) => {
            let me =
                config.node(id).with_context(|| format!("node {id} is not in the cluster file's [[node]] list"))?;
            let data_dir = args.data_dir.unwrap_or_else(|| config.cluster.data_dir.join(format!("node-{id}")));
            let tls = config.cluster.tls_dir();
            let identity = load_identity(
                &tls.join("ca.pem"),
                &tls.join(format!("node-{id}.pem")),
                &tls.join(format!("node-{id}.key")),
            )
            .with_context(|| {
                format!("loading node {id}'s certificate from {} (`palaver certs` makes them)", tls.display())
            })?;
            let members: BTreeMap<u64, PeerNode> = config
                .nodes
                .iter()
                .map(|n| (n.id, PeerNode { client_addr: n.client.to_string(), peer_addr: n.peer.to_string() }))
                .collect();
            let cluster = ClusterSettings {
                bind: me.peer,
                peers: config.nodes.iter().map(|n| (n.id, n.peer)).collect(),
                identity,
                replication: config.cluster.replication,
            };
            for field in config.ignored_fields() {
                tracing::warn!("the cluster file sets {field}, which is no longer read");
            }
            let settings = NodeSettings {
                id,
                data_dir,
                storage,
                store_cache_bytes: config.cluster.store_cache_bytes(),
                limits: config.limits.clone(),
                security: Security { registration: Some(config.registration()), ..config.security.clone() },
                members,
                cluster: Some(cluster),
                shards: config.cluster.shards,
                retention: palaver_node::service::Retention::of(&config.cluster),
            };
            (settings, args.listen.unwrap_or(me.client))
        }
        None => {
            let listen = match args.listen {
                Some(addr) => addr,
                None => DEFAULT_PUBLIC.parse().context("default address")?,
            };
            let settings = NodeSettings {
                id: 1,
                data_dir: args.data_dir.unwrap_or_else(|| PathBuf::from("palaver-data")),
                storage,
                store_cache_bytes: config.cluster.store_cache_bytes(),
                limits: config.limits.clone(),
                security: Security {
                    registration: Some(config.security.registration.unwrap_or(if listen.ip().is_loopback() {
                        RegistrationMode::Open
                    } else {
                        RegistrationMode::Invite
                    })),
                    ..config.security.clone()
                },
                members: BTreeMap::new(),
                cluster: None,
                shards: config.cluster.shards,
                retention: palaver_node::service::Retention::of(&config.cluster),
            };
            (settings, listen)
        }
    };
    serve(settings, listen, tls, args.exit_with_parent).await
}

async fn run_balancer(args: BalancerArgs) -> Result<()> {
    let mut settings = palaver_balancer::BalancerSettings::load(&args.config, args.strategy)
        .with_context(|| format!("reading the balancer settings from {}", args.config.display()))?;
    if let Some(token) = ops_token_from_env()? {
        settings.ops_token = Some(palaver_balancer::OpsToken::new(token).with_context(|| format!("${OPS_TOKEN_ENV}"))?);
    }
    let (public, admin) = palaver_balancer::bind(&settings).await.context("opening the balancer's addresses")?;
    println!("{}", palaver_balancer::ready::ready_line(public.local_addr()?, admin.local_addr()?, settings.strategy));
    palaver_balancer::run(settings, public, admin, shutdown_signal()).await.context("balancer")?;
    Ok(())
}

/// `PALAVER_OPS_TOKEN`, when set and not empty: it overrides the cluster
/// file's `[security] ops_token` (a secret is easier kept out of a file).
fn ops_token_from_env() -> Result<Option<String>> {
    match std::env::var(OPS_TOKEN_ENV) {
        Ok(t) if t.is_empty() => Ok(None),
        Ok(t) => Ok(Some(t)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("${OPS_TOKEN_ENV}")),
    }
}

fn make_certs(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let ids: Vec<u64> = config.nodes.iter().map(|n| n.id).collect();
    let dir = config.cluster.tls_dir();
    ensure_cluster_certs(&dir, &ids).with_context(|| format!("creating certificates in {}", dir.display()))?;
    Ok(())
}

async fn serve(
    mut settings: NodeSettings,
    listen: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    exit_with_parent: bool,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let id = settings.id;
    if settings.cluster.is_none() {
        let me = PeerNode { client_addr: addr.to_string(), peer_addr: String::new() };
        settings.members = BTreeMap::from([(id, me)]);
    }
    tracing::info!(id, %addr, data = %settings.data_dir.display(), storage = %settings.storage, registration = settings.security.registration.map_or("invite", |m| m.as_str()), "starting node");
    let node = Node::start(settings).await.with_context(|| format!("node {id} failed to start"))?;
    println!("{}", palaver_node::ready::ready_line(id, addr));
    let handing = node.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = parent_gone(exit_with_parent) => tracing::info!("launcher went away"),
        }
        // A planned stop gives no client an error: this node's leaderships
        // move first, then clients are told to reconnect (1012).
        handing.hand_over(HAND_OVER_WITHIN).await;
    };
    if tls.is_some() {
        tracing::info!(%addr, "serving clients over TLS ([public] tls_cert)");
    }
    palaver_node::api::serve(listener, node.clone(), tls, stop).await;
    node.shutdown().await;
    tracing::info!(id, "node stopped");
    Ok(())
}

/// Resolves when standard input reaches its end, if asked to watch it.
///
/// The read runs on a plain thread, not tokio's blocking pool: the runtime
/// waits for its blocking tasks when it shuts down, and a stdin read that
/// never ends would keep a stopped node from exiting.
async fn parent_gone(watch: bool) {
    if !watch {
        return std::future::pending().await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(());
    });
    if spawned.is_err() {
        return std::future::pending().await;
    }
    let _ = rx.await;
}

/// Open files wanted: room for hundreds of thousands of connections.
const WANTED_FILES: u64 = 1 << 20;

/// Every client connection is a file descriptor (two through the balancer):
/// raise the soft limit as far as the system lets this process.
fn raise_file_limit() {
    // Root may raise the hard limit too; everyone may raise the soft one to it.
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, WANTED_FILES, WANTED_FILES);
    match rlimit::increase_nofile_limit(WANTED_FILES) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("stop requested");
}
