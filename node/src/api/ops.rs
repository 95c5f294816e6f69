//! Operations endpoints (docs/protocol.md §7): health (open), Prometheus metrics
//! (open unless `metrics_public = false`), the member list (ops token or
//! admin), and the cluster view for admins.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;

use super::extract::Ops;
use super::extract::check_ops;
use crate::meta::LayoutCommand;
use crate::meta::MetaCommand;
use crate::service::ApiError;
use crate::service::Node;

/// 200 while the node serves (it knows a metadata leader); the status says
/// `draining` when the node should get no new clients.
pub async fn healthz(State(node): State<Arc<Node>>) -> Response {
    let m = node.consensus.metrics();
    let draining = node.meta().draining.contains(&node.id);
    let (status, text) = match (m.current_leader.is_some(), draining) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
        (true, true) => (StatusCode::OK, "draining"),
        (true, false) => (StatusCode::OK, "ok"),
    };
    (status, axum::Json(json!({"status": text, "node": node.id}))).into_response()
}

/// `GET /assign` on a node: this node, in the balancer's answer format. A
/// browser asks on the keep-alive connection that loaded the page, which
/// the balancer already relays to the node its strategy picked, so the
/// balancer never sees the request; this node answers for it. 503 while
/// the node takes no new clients (draining, leaving, not yet a member):
/// the client then stays on the relayed path.
pub async fn assign(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let m = node.consensus.metrics();
    let Some(me) = m.members.get(&node.id) else {
        return Err(ApiError::unavailable("this node is not (yet) a cluster member"));
    };
    if node.avoided_nodes().contains(&node.id) {
        return Err(ApiError::unavailable("this node takes no new clients"));
    }
    let addr = &me.client_addr;
    let body = json!({"node": node.id, "url": format!("http://{addr}"), "ws": format!("ws://{addr}/ws")});
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response())
}

/// The nodes clients may be sent to, for the balancer (which sends the ops
/// token) and admins. A draining node, or one leaving the cluster, is
/// listed as `draining`: it gets no new clients. A node that is not in its
/// own member list (new and still catching up, or removed) answers 503: its
/// list may be stale.
pub async fn members(State(node): State<Arc<Node>>, _: Ops) -> Result<Response, ApiError> {
    let m = node.consensus.metrics();
    if !m.members.contains_key(&node.id) {
        return Err(ApiError::unavailable("this node is not (yet) a cluster member; ask another node"));
    }
    let avoid = node.avoided_nodes();
    let connections = node.cluster.as_ref().map(|c| c.presence.lock().connections()).unwrap_or_default();
    let list: Vec<_> = m
        .members
        .iter()
        .map(|(id, peer)| {
            let conns =
                if *id == node.id { Some(node.hub.connection_count() as u64) } else { connections.get(id).copied() };
            json!({
                "id": id,
                "address": peer.client_addr,
                "state": if avoid.contains(id) { "draining" } else { "serving" },
                "connections": conns,
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

/// `{"node","draining"}`.
#[derive(serde::Deserialize)]
pub struct DrainRequest {
    node: u64,
    draining: bool,
}

/// Marks a node draining (no new clients, no shard leadership) or serving
/// again (ops token or admin).
pub async fn drain(
    State(node): State<Arc<Node>>,
    Ops(admin): Ops,
    super::extract::Json(d): super::extract::Json<DrainRequest>,
) -> Result<Response, ApiError> {
    if !node.consensus.metrics().members.contains_key(&d.node) {
        return Err(ApiError::not_found(format!("node {}", d.node)));
    }
    let actor = admin.clone().unwrap_or_else(|| crate::meta::OPS_ACTOR.to_string());
    node.propose(crate::meta::MetaCommand::SetDraining { actor, node: d.node, draining: d.draining }).await?;
    tracing::info!(
        node = d.node,
        draining = d.draining,
        by = admin.as_deref().unwrap_or("ops token"),
        "node drain state changed"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Nodes join and leave clusters, not a node started on its own.
fn on_shards(node: &Node) -> Result<(), ApiError> {
    match node.cluster {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            palaver_protocol::Code::Conflict,
            "this node runs on its own (no cluster file): start it as a cluster's node to add or remove nodes",
        )),
    }
}

/// `{"id","client","peer"}`: a node to add.
#[derive(serde::Deserialize)]
pub struct AddNodeRequest {
    id: u64,
    client: String,
    peer: String,
}

/// Adds a node to the cluster's layout (ops token or admin): it joins the
/// metadata group and the shards placed on it move there (see
/// `service::membership`). Answers at once; `GET /api/cluster` shows the
/// moves still to make.
pub async fn add_node(
    State(node): State<Arc<Node>>,
    Ops(admin): Ops,
    super::extract::Json(a): super::extract::Json<AddNodeRequest>,
) -> Result<Response, ApiError> {
    on_shards(&node)?;
    for (what, addr) in [("client", &a.client), ("peer", &a.peer)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::bad_request(format!(
                "{what} must be an address such as 127.0.0.1:7001, not {addr:?}"
            )));
        }
    }
    let cmd = LayoutCommand::AddNode { id: a.id, client: a.client.clone(), peer: a.peer.clone() };
    node.propose(MetaCommand::Layout { actor: admin.clone(), cmd }).await?;
    tracing::info!(node = a.id, client = %a.client, peer = %a.peer, by = admin.as_deref().unwrap_or("ops token"), "node added to the layout");
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"node": a.id}))).into_response())
}

/// Starts removing a node (ops token or admin): its shards move to the
/// others, then it leaves the metadata group.
pub async fn remove_node(
    State(node): State<Arc<Node>>,
    Ops(admin): Ops,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Result<Response, ApiError> {
    on_shards(&node)?;
    node.propose(MetaCommand::Layout { actor: admin.clone(), cmd: LayoutCommand::RemoveNode { id } }).await?;
    tracing::info!(node = id, by = admin.as_deref().unwrap_or("ops token"), "node leaving the cluster");
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"node": id}))).into_response())
}

/// Prometheus text format; with `metrics_public = false`, for the ops
/// token and admins only.
pub async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !node.security.metrics_public {
        check_ops(&headers, &node).await?;
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.render_metrics()).into_response())
}

/// This node's view of the cluster (ops token or admin): the nodes with
/// their state and Raft role, this node's own role and the shards it
/// leads, the layout (each shard's replicas, the moves still to make), and
/// each room's shard and the node leading it.
pub async fn cluster(State(node): State<Arc<Node>>, _: Ops) -> Result<Response, ApiError> {
    let m = node.consensus.metrics();
    let now = crate::clock::now_ms();
    let (alive, connections) = match &node.cluster {
        Some(c) => {
            let p = c.presence.lock();
            (p.alive(now, crate::cluster::SILENT_MS), p.connections())
        }
        None => (Vec::new(), Default::default()),
    };
    let avoid = node.avoided_nodes();
    let nodes: Vec<_> = m
        .members
        .iter()
        .map(|(id, peer)| {
            let me = *id == node.id;
            let up = me || alive.contains(id);
            let raft_role = match (Some(*id) == m.current_leader, up) {
                (true, _) => "leader",
                (false, true) => "follower",
                (false, false) => "unknown",
            };
            let state = if avoid.contains(id) {
                "draining"
            } else if me {
                "serving"
            } else if up {
                "up"
            } else {
                "down"
            };
            json!({
                "id": id,
                "address": peer.client_addr,
                "peer_address": peer.peer_addr,
                "state": state,
                "connections": if me { Some(node.hub.connection_count() as u64) } else { connections.get(id).copied() },
                "raft_role": raft_role,
            })
        })
        .collect();
    let (rooms, layout) = {
        let meta = node.meta();
        let rooms: Vec<_> = meta
            .rooms
            .values()
            .map(|r| {
                // The node that orders a room's writes is its shard's
                // leader, as this node knows it.
                let shard = meta.layout.shard_of(&r.info.id);
                json!({"room": r.info.id, "shard": shard, "owner_node": node.shards().leader(shard)})
            })
            .collect();
        let l = &meta.layout;
        let layout = l.is_set().then(|| {
            json!({
                "shards": l.shards.len(),
                "replication": l.replication,
                "nodes": l.nodes.iter().map(|(id, n)| json!({
                    "id": id, "address": n.client, "peer_address": n.peer, "leaving": n.leaving,
                })).collect::<Vec<_>>(),
                "replicas": l.shards,
                "pending_moves": l.pending_moves().len(),
            })
        });
        (rooms, layout)
    };
    let shards = node.shards();
    let shards_led: Vec<u32> = shards.host.open_shards().into_iter().filter(|s| shards.led(*s).is_some()).collect();
    let role = format!("{:?}", m.role).to_lowercase();
    Ok(axum::Json(json!({
        "node": node.id,
        "role": role,
        "leader": m.current_leader,
        "term": m.term,
        "last_applied": m.last_applied,
        "connections": node.hub.connection_count(),
        "draining": avoid.contains(&node.id),
        "shards_led": shards_led,
        "shards_open": shards.host.open_shards(),
        "relayed_rooms": node.cluster.as_ref().map_or(0, |c| c.watcher.relayed_rooms()),
        "nodes": nodes,
        "layout": layout,
        "rooms": rooms,
    }))
    .into_response())
}
