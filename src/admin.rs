//! The operations CLI (docs/protocol.md, "Operations CLI"): `palaver
//! status`, `drain`, `add-node` and `remove-node`, through any node's
//! admin API. Each command that changes the cluster waits until the
//! cluster says it is done, then prints what moved.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_client::Http;
use palaver_client::Method;
use palaver_node::config::Config;
use palaver_node::config::OPS_TOKEN_ENV;
use serde_json::Value;
use serde_json::json;

/// How long one node may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a waiting command looks again.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A node refused the token (401 or 403): asking another will not help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Denied(String);

/// What every operations command needs: where the cluster is and the token.
#[derive(clap::Args, Clone)]
pub struct OpsArgs {
    /// Cluster file: the nodes' addresses (and, after `palaver up`, the
    /// ops token it made in <data_dir>/ops-token).
    #[arg(long, value_name = "FILE", default_value = "cluster.example.toml")]
    config: PathBuf,
    /// A node's (or the balancer's) client address to ask, e.g.
    /// http://127.0.0.1:8080 (default: the cluster file's nodes).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Admin token: the cluster's ops token or an admin's session token
    /// (default: $PALAVER_TOKEN, then $PALAVER_OPS_TOKEN, then the token
    /// `palaver up` keeps in <data_dir>/ops-token).
    #[arg(long, value_name = "TOKEN", env = "PALAVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
}

impl OpsArgs {
    /// Whether to print JSON.
    pub(crate) fn json(&self) -> bool {
        self.json
    }
}

/// `palaver drain | add-node | remove-node N`.
#[derive(clap::Args)]
pub struct NodeOpArgs {
    /// The node's id (its `[[node]]` entry in the cluster file).
    #[arg(value_name = "N")]
    id: u64,
    #[command(flatten)]
    ops: OpsArgs,
}

/// `palaver status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    ops: OpsArgs,
}

/// Where the cluster is, and how to be let in.
pub(crate) struct Target {
    config: Option<Config>,
    entry: Vec<String>,
    token: String,
    args: OpsArgs,
}

impl Target {
    pub(crate) fn new(args: &OpsArgs) -> Result<Target> {
        let config = if args.config.exists() {
            Some(Config::load(&args.config)?)
        } else if args.url.is_none() {
            bail!("{} does not exist: name the cluster file with --config, or a node with --url", args.config.display())
        } else {
            None
        };
        let token = match (&args.token, std::env::var(OPS_TOKEN_ENV).ok().filter(|t| !t.is_empty())) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t,
            (None, None) => {
                let Some(path) = config.as_ref().map(|c| c.cluster.data_dir.join("ops-token")) else {
                    bail!("no token: give --token (or set PALAVER_TOKEN)");
                };
                read_token(&path)?
            }
        };
        let mut entry: Vec<String> = args.url.iter().cloned().collect();
        if let Some(c) = &config {
            entry.extend(c.nodes.iter().map(|n| n.client.to_string()));
        }
        Ok(Target { config, entry, token, args: args.clone() })
    }

    fn http(&self, addr: &str) -> Result<Http> {
        Ok(Http::new(addr)?.with_token(self.token.clone()))
    }

    /// Asks `addr` once, within [`ASK_TIMEOUT`].
    async fn ask(&self, addr: &str, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let http = self.http(addr)?;
        let raw = tokio::time::timeout(ASK_TIMEOUT, http.request(method, path, body))
            .await
            .with_context(|| format!("{addr} did not answer within {ASK_TIMEOUT:?}"))??;
        match raw.status {
            401 => Err(Denied(format!(
                "{addr} refused the token (401): give the ops token or an admin's token with --token"
            ))
            .into()),
            403 => Err(Denied(format!("{addr}: forbidden (403): the token is not an admin's")).into()),
            _ => Ok((raw.status, raw.json)),
        }
    }

    /// The cluster view of the metadata leader, or else of the first node
    /// that answers.
    async fn view(&self) -> Result<(String, Value)> {
        let mut errors = Vec::new();
        for addr in &self.entry {
            match self.ask(addr, Method::GET, "/api/cluster", None).await {
                Ok((200, v)) => {
                    let leader = v["leader"].as_u64().filter(|l| Some(*l) != v["node"].as_u64());
                    let at = leader.and_then(|l| {
                        v["nodes"].as_array()?.iter().find(|n| n["id"].as_u64() == Some(l))?["address"]
                            .as_str()
                            .map(str::to_string)
                    });
                    if let Some(at) = at
                        && let Ok((200, lv)) = self.ask(&at, Method::GET, "/api/cluster", None).await
                    {
                        return Ok((at, lv));
                    }
                    return Ok((addr.clone(), v));
                }
                Ok((status, v)) => errors.push(format!("{addr}: {status} {v}")),
                Err(e) => {
                    if e.is::<Denied>() {
                        return Err(e);
                    }
                    errors.push(format!("{e:#}"));
                }
            }
        }
        bail!("no node answered: {}", errors.join("; "))
    }

    /// Sends a change to the nodes in turn until one takes it.
    pub(crate) async fn change(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut last = String::new();
            for addr in &self.entry {
                match self.ask(addr, method.clone(), path, body).await {
                    Ok((s, v)) if (200..300).contains(&s) => return Ok(v),
                    Ok((503, v)) => last = format!("{addr}: {v}"),
                    Ok((s, v)) => bail!("{addr} answered {s}: {}", message(&v)),
                    Err(e) if e.is::<Denied>() => return Err(e),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no node took the change: {last}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Reads `path` from the first node that answers it.
    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        let mut errors = Vec::new();
        for addr in &self.entry {
            match self.ask(addr, Method::GET, path, None).await {
                Ok((200, v)) => return Ok(v),
                Ok((s, v)) if s != 503 => bail!("{addr} answered {s}: {}", message(&v)),
                Ok((s, v)) => errors.push(format!("{addr}: {s} {}", message(&v))),
                Err(e) if e.is::<Denied>() => return Err(e),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("no node answered: {}", errors.join("; "))
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(self.args.timeout)
    }
}

fn message(v: &Value) -> String {
    v.pointer("/error/message").and_then(Value::as_str).map_or_else(|| v.to_string(), str::to_string)
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("no token: give --token (or set PALAVER_TOKEN); {} cannot be read", path.display()))?;
    Ok(text.trim().to_string())
}

/// One node as `status` prints it.
struct Row {
    id: u64,
    address: String,
    health: String,
    role: String,
    led: String,
    connections: String,
}

/// Asks every node of the cluster for its own view.
async fn rows(target: &Target, view: &Value) -> Vec<(Row, Option<Value>)> {
    let mut nodes: BTreeMap<u64, (String, bool)> = BTreeMap::new();
    for n in view["nodes"].as_array().into_iter().flatten() {
        if let (Some(id), Some(addr)) = (n["id"].as_u64(), n["address"].as_str()) {
            nodes.insert(id, (addr.to_string(), false));
        }
    }
    for n in view.pointer("/layout/nodes").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(id), Some(addr)) = (n["id"].as_u64(), n["address"].as_str()) {
            nodes.insert(id, (addr.to_string(), n["leaving"].as_bool().unwrap_or(false)));
        }
    }
    let asks = nodes.into_iter().map(|(id, (address, leaving))| async move {
        let own = match target.ask(&address, Method::GET, "/api/cluster", None).await {
            Ok((200, v)) if v["node"].as_u64() == Some(id) => Some(v),
            _ => None,
        };
        let row = match &own {
            None => {
                Row { id, address, health: "down".into(), role: "-".into(), led: "-".into(), connections: "-".into() }
            }
            Some(v) => {
                let health = if leaving {
                    "leaving"
                } else if v["draining"].as_bool() == Some(true) {
                    "draining"
                } else {
                    "up"
                };
                let led = v["shards_led"].as_array().map_or("-".into(), |s| format!("{} shards", s.len()));
                Row {
                    id,
                    address,
                    health: health.into(),
                    role: v["role"].as_str().unwrap_or("-").to_string(),
                    led,
                    connections: v["connections"].as_u64().map_or("-".into(), |c| c.to_string()),
                }
            }
        };
        (row, own)
    });
    futures_util::future::join_all(asks).await
}

/// `palaver status`: exits 0 when every node is up.
pub async fn status(args: StatusArgs) -> Result<bool> {
    let target = Target::new(&args.ops)?;
    let (_, view) = target.view().await?;
    let rows = rows(&target, &view).await;
    let all_up = rows.iter().all(|(r, _)| r.health != "down");
    if target.args.json {
        let nodes: Vec<Value> = rows
            .iter()
            .map(|(r, own)| {
                json!({
                    "id": r.id,
                    "address": r.address,
                    "health": r.health,
                    "role": r.role,
                    "shards_led": own.as_ref().and_then(|v| v.get("shards_led").cloned()),
                    "connections": own.as_ref().and_then(|v| v["connections"].as_u64()),
                })
            })
            .collect();
        let out = json!({
            "nodes": nodes,
            "metadata_leader": view["leader"],
            "shards": view.pointer("/layout/shards"),
            "replication": view.pointer("/layout/replication"),
            "pending_moves": view.pointer("/layout/pending_moves"),
            "all_up": all_up,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(all_up);
    }
    println!("{:<4} {:<22} {:<9} {:<10} {:<10} {:>11}", "ID", "ADDRESS", "HEALTH", "ROLE", "LEADS", "CONNECTIONS");
    for (r, _) in &rows {
        println!("{:<4} {:<22} {:<9} {:<10} {:<10} {:>11}", r.id, r.address, r.health, r.role, r.led, r.connections);
    }
    if let Some(layout) = view.get("layout").filter(|l| !l.is_null()) {
        println!(
            "metadata leader: node {}; {} shards, {} replicas each; moves pending: {}",
            view["leader"], layout["shards"], layout["replication"], layout["pending_moves"]
        );
    } else {
        println!("metadata leader: node {}", view["leader"]);
    }
    Ok(all_up)
}

/// Each shard's replicas, from a cluster view.
fn replicas(view: &Value) -> Vec<Vec<u64>> {
    view.pointer("/layout/replicas")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|r| r.as_array().into_iter().flatten().filter_map(Value::as_u64).collect()).collect())
        .unwrap_or_default()
}

fn ids(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// What moved between two layouts, a line per shard.
fn moved(before: &[Vec<u64>], after: &[Vec<u64>]) -> Vec<(usize, Vec<u64>, Vec<u64>)> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (a, b))| {
            let (mut a, mut b) = ((*a).clone(), (*b).clone());
            a.sort_unstable();
            b.sort_unstable();
            a != b
        })
        .map(|(s, (a, b))| (s, a.clone(), b.clone()))
        .collect()
}

fn print_moves(json: bool, node: u64, what: &str, moves: &[(usize, Vec<u64>, Vec<u64>)]) -> Result<()> {
    if json {
        let list: Vec<Value> = moves.iter().map(|(s, a, b)| json!({"shard": s, "from": a, "to": b})).collect();
        println!("{}", serde_json::to_string_pretty(&json!({"node": node, "done": what, "moved": list}))?);
        return Ok(());
    }
    for (s, a, b) in moves {
        println!("shard {s}: replicas {} -> {}", ids(a), ids(b));
    }
    println!("node {node} {what}; {} shard(s) moved", moves.len());
    Ok(())
}

/// Waits until the layout has no move left and `done` holds.
async fn settle(target: &Target, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = target.deadline();
    let mut said = String::new();
    loop {
        if let Ok((_, view)) = target.view().await {
            if view.pointer("/layout/pending_moves").and_then(Value::as_u64) == Some(0) && done(&view) {
                return Ok(view);
            }
            let pending = view.pointer("/layout/pending_moves").map(Value::to_string).unwrap_or_default();
            let now = format!("{what}: {pending} shard move(s) to go");
            if now != said && !target.args.json {
                eprintln!("{now}");
                said = now;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not done within {} s (see `palaver status`)", target.args.timeout);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn on_shards(view: &Value) -> Result<()> {
    if view.get("layout").is_none_or(Value::is_null) {
        bail!(
            "no shard layout: this node runs on its own (nodes are added to clusters), or the cluster is still starting"
        );
    }
    Ok(())
}

/// `palaver add-node N`.
pub async fn add_node(args: NodeOpArgs) -> Result<()> {
    let target = Target::new(&args.ops)?;
    let Some(entry) = target.config.as_ref().and_then(|c| c.node(args.id)).cloned() else {
        bail!("node {} has no [[node]] entry in {}: add it there first", args.id, target.args.config.display());
    };
    let (_, before) = target.view().await?;
    on_shards(&before)?;
    let body = json!({"id": args.id, "client": entry.client.to_string(), "peer": entry.peer.to_string()});
    target.change(Method::POST, "/api/cluster/nodes", Some(&body)).await?;
    if !target.args.json {
        eprintln!("node {} added to the layout; its shards are moving (start it if it is not running)", args.id);
    }
    let id = args.id;
    let client = entry.client.to_string();
    let after = settle(&target, &format!("adding node {id}"), |v| {
        v["nodes"].as_array().into_iter().flatten().any(|n| n["id"].as_u64() == Some(id))
    })
    .await?;
    // The new node answers for itself once it serves.
    let deadline = target.deadline();
    loop {
        match target.ask(&client, Method::GET, "/api/cluster", None).await {
            Ok((200, _)) => break,
            Err(e) if e.is::<Denied>() => bail!(
                "node {id} joined, but refuses the token: start it with the cluster's ops token \
                 (PALAVER_OPS_TOKEN, [security] ops_token, or the <data_dir>/ops-token of `palaver up`): {e:#}"
            ),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("node {id} joined but does not answer at {client}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    print_moves(target.args.json, id, "added", &moved(&replicas(&before), &replicas(&after)))
}

/// `palaver remove-node N`.
pub async fn remove_node(args: NodeOpArgs) -> Result<()> {
    let target = Target::new(&args.ops)?;
    let (_, before) = target.view().await?;
    on_shards(&before)?;
    let id = args.id;
    target.change(Method::DELETE, &format!("/api/cluster/nodes/{id}"), None).await?;
    let after = settle(&target, &format!("removing node {id}"), |v| {
        let in_layout = v
            .pointer("/layout/nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|n| n["id"].as_u64() == Some(id));
        let member = v["nodes"].as_array().into_iter().flatten().any(|n| n["id"].as_u64() == Some(id));
        !in_layout && !member
    })
    .await?;
    print_moves(target.args.json, id, "removed (it may be stopped now)", &moved(&replicas(&before), &replicas(&after)))
}

/// `palaver drain N`: no new clients for the node, and its shards' leadership
/// moves to other replicas.
pub async fn drain(args: NodeOpArgs) -> Result<()> {
    let target = Target::new(&args.ops)?;
    let (_, view) = target.view().await?;
    let id = args.id;
    let address = view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"].as_u64() == Some(id))
        .and_then(|n| n["address"].as_str())
        .map(str::to_string)
        .with_context(|| format!("node {id} is not a member of the cluster"))?;
    let led_before: Vec<u64> = match target.ask(&address, Method::GET, "/api/cluster", None).await {
        Ok((200, v)) => v["shards_led"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect(),
        _ => Vec::new(),
    };
    target.change(Method::POST, "/api/cluster/drain", Some(&json!({"node": id, "draining": true}))).await?;
    let deadline = target.deadline();
    loop {
        match target.ask(&address, Method::GET, "/api/cluster", None).await {
            Ok((200, v)) if v["shards_led"].as_array().is_none_or(Vec::is_empty) => break,
            Ok(_) => {}
            // A node that is down leads nothing.
            Err(_) => break,
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("node {id} still leads shards after {} s", target.args.timeout);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    // Who leads each shard now, as the other nodes say.
    let (_, view) = target.view().await?;
    let mut now_led: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, own) in rows(&target, &view).await {
        if let Some(v) = own {
            let node = v["node"].as_u64().unwrap_or(0);
            for s in v["shards_led"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
                now_led.insert(s, node);
            }
        }
    }
    if target.args.json {
        let list: Vec<Value> =
            led_before.iter().map(|s| json!({"shard": s, "from": id, "to": now_led.get(s)})).collect();
        println!("{}", serde_json::to_string_pretty(&json!({"node": id, "done": "drained", "moved": list}))?);
        return Ok(());
    }
    for s in &led_before {
        let to = now_led.get(s).map_or("an election in progress".to_string(), |n| format!("node {n}"));
        println!("shard {s}: leader node {id} -> {to}");
    }
    println!("node {id} drained: no new clients, leads no shard; {} leadership(s) moved", led_before.len());
    Ok(())
}
