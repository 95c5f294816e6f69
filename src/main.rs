//! `palaver`: run a node, or a whole local cluster.
//!
//! This binary is the edge: it reads flags and the cluster file, sets up
//! logging, and hands everything else to `palaver-node`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::Result;
use clap::Parser;
use clap::Subcommand;
use palaver_node::config::Config;
use palaver_node::raft::PeerNode;
use palaver_node::service::Node;
use palaver_node::service::NodeSettings;
use palaver_node::storage::EngineKind;

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
    /// Run the local cluster described by the cluster file (this version:
    /// its first node, serving clients on the public address 127.0.0.1:8080).
    Up(UpArgs),
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
}

#[derive(clap::Args)]
struct UpArgs {
    /// Cluster file.
    #[arg(long, value_name = "FILE", default_value = "cluster.example.toml")]
    config: PathBuf,
}

/// The address clients use when nothing else is said (PROTOCOL.md).
const DEFAULT_PUBLIC: &str = "127.0.0.1:8080";

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(args).await,
            Command::Up(args) => up(args).await,
        }
    })
}

async fn run_node(args: NodeArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let id = args.id.unwrap_or(1);
    let section = match args.id {
        Some(id) => Some(
            config.node(id).with_context(|| format!("node {id} is not in the cluster file's [[node]] list"))?.clone(),
        ),
        None => None,
    };
    let listen = match (args.listen, &section) {
        (Some(addr), _) => addr,
        (None, Some(s)) => s.client,
        (None, None) => DEFAULT_PUBLIC.parse().context("default address")?,
    };
    let data_dir = match (args.data_dir, args.id) {
        (Some(dir), _) => dir,
        (None, Some(id)) => config.cluster.data_dir.join(format!("node-{id}")),
        (None, None) => PathBuf::from("palaver-data"),
    };
    let storage = match args.storage.as_deref() {
        None => config.cluster.storage,
        Some("redb") => EngineKind::Redb,
        Some("sled") => EngineKind::Sled,
        Some(other) => anyhow::bail!("--storage {other}: expected redb or sled"),
    };
    serve(id, listen, data_dir, storage, &config).await
}

async fn up(args: UpArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let first = config.nodes.first().with_context(|| format!("{} lists no [[node]]", args.config.display()))?;
    let data_dir = config.cluster.data_dir.join(format!("node-{}", first.id));
    let public: SocketAddr = DEFAULT_PUBLIC.parse().context("default address")?;
    eprintln!("palaver up: starting node {} (data in {})", first.id, data_dir.display());
    serve(first.id, public, data_dir, config.cluster.storage, &config).await
}

async fn serve(id: u64, listen: SocketAddr, data_dir: PathBuf, storage: EngineKind, config: &Config) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let peer = config.node(id).map(|n| n.peer.to_string()).unwrap_or_default();
    let me = PeerNode { client_addr: addr.to_string(), peer_addr: peer };
    let settings = NodeSettings {
        id,
        data_dir: data_dir.clone(),
        storage,
        limits: config.limits.clone(),
        security: config.security.clone(),
        members: BTreeMap::from([(id, me)]),
    };
    tracing::info!(id, %addr, data = %data_dir.display(), %storage, "starting node");
    let node = Node::start(settings).await.with_context(|| format!("node {id} failed to start"))?;
    println!("palaver node {id} ready: http://{addr} (WebSocket ws://{addr}/ws)");
    palaver_node::api::serve(listener, node.clone(), shutdown_signal()).await;
    node.shutdown().await;
    tracing::info!(id, "node stopped");
    Ok(())
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
