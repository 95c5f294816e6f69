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

use super::extract::Authed;
use super::extract::Ops;
use super::extract::check_ops;
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

/// The nodes clients may be sent to, for the balancer (which sends the ops
/// token) and admins.
pub async fn members(State(node): State<Arc<Node>>, _: Ops) -> Response {
    let m = node.consensus.metrics();
    let draining = node.meta().draining.clone();
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
                "state": if draining.contains(id) { "draining" } else { "serving" },
                "connections": conns,
            })
        })
        .collect();
    axum::Json(list).into_response()
}

/// `{"node","draining"}`.
#[derive(serde::Deserialize)]
pub struct DrainRequest {
    node: u64,
    draining: bool,
}

/// Marks a node draining or serving again (admin only).
pub async fn drain(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    super::extract::Json(d): super::extract::Json<DrainRequest>,
) -> Result<Response, ApiError> {
    if !node.consensus.metrics().members.contains_key(&d.node) {
        return Err(ApiError::not_found(format!("node {}", d.node)));
    }
    node.propose(crate::meta::MetaCommand::SetDraining {
        actor: s.username.to_string(),
        node: d.node,
        draining: d.draining,
    })
    .await?;
    tracing::info!(node = d.node, draining = d.draining, by = %s.username, "node drain state changed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Prometheus text format; with `metrics_public = false`, for the ops
/// token and admins only.
pub async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !node.security.metrics_public {
        check_ops(&headers, &node).await?;
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.render_metrics()).into_response())
}

/// Nodes, Raft roles and the room → owner assignment (admin only).
pub async fn cluster(State(node): State<Arc<Node>>, Authed(s): Authed) -> Result<Response, ApiError> {
    node.read(|meta| {
        if meta.is_admin(&s.username) { Ok(()) } else { Err(ApiError::forbidden("the cluster view is for admins")) }
    })
    .await?;
    let m = node.consensus.metrics();
    let now = crate::clock::now_ms();
    let (alive, connections) = match &node.cluster {
        Some(c) => {
            let p = c.presence.lock();
            (p.alive(now, crate::cluster::SILENT_MS), p.connections())
        }
        None => (Vec::new(), Default::default()),
    };
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
            json!({
                "id": id,
                "address": peer.client_addr,
                "peer_address": peer.peer_addr,
                "state": if node.meta().draining.contains(id) { "draining" } else if me { "serving" } else if up { "up" } else { "down" },
                "connections": if me { Some(node.hub.connection_count() as u64) } else { connections.get(id).copied() },
                "raft_role": raft_role,
            })
        })
        .collect();
    let rooms: Vec<_> = {
        let meta = node.meta();
        meta.rooms
            .values()
            .map(|r| match node.shards() {
                // On shards, the node that orders a room's writes is its
                // shard's leader, as this node knows it.
                Some(shards) => {
                    let shard = meta.layout.shard_of(&r.info.id);
                    json!({"room": r.info.id, "shard": shard, "owner_node": shards.leader(shard)})
                }
                None => json!({"room": r.info.id, "owner_node": r.info.owner_node, "epoch": r.info.epoch}),
            })
            .collect()
    };
    Ok(axum::Json(json!({
        "node": node.id,
        "leader": m.current_leader,
        "term": m.term,
        "last_applied": m.last_applied,
        "nodes": nodes,
        "rooms": rooms,
    }))
    .into_response())
}
