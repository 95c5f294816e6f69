//! Operations endpoints (PROTOCOL.md §7): health, Prometheus metrics, and the
//! cluster view for admins.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;

use super::extract::Authed;
use crate::service::ApiError;
use crate::service::Node;

/// 200 while the node serves: it knows a metadata leader.
pub async fn healthz(State(node): State<Arc<Node>>) -> Response {
    let m = node.consensus.metrics();
    let body = json!({"status": if m.current_leader.is_some() { "ok" } else { "no_leader" }, "node": node.id});
    let status = if m.current_leader.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// Prometheus text format.
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.render_metrics()).into_response()
}

/// Nodes, Raft roles and the room → owner assignment (admin only).
pub async fn cluster(State(node): State<Arc<Node>>, Authed(s): Authed) -> Result<Response, ApiError> {
    if !node.meta().is_admin(&s.username) {
        return Err(ApiError::forbidden("the cluster view is for admins"));
    }
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
                "state": if me { "serving" } else if up { "up" } else { "down" },
                "connections": if me { Some(node.hub.connection_count() as u64) } else { connections.get(id).copied() },
                "raft_role": raft_role,
            })
        })
        .collect();
    let rooms: Vec<_> = node
        .meta()
        .rooms
        .values()
        .map(|r| json!({"room": r.info.id, "owner_node": r.info.owner_node, "epoch": r.info.epoch}))
        .collect();
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
