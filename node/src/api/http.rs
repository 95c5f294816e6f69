//! HTTP handlers of PROTOCOL.md §2 and §3: parse, call the service, answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::extract::Authed;
use super::extract::ClientAddr;
use super::extract::Json;
use super::extract::Path;
use super::extract::Query;
use crate::meta::RoomOp;
use crate::protocol::MessageView;
use crate::protocol::Page;
use crate::service::ApiError;
use crate::service::Node;

type Answer = Result<Response, ApiError>;

fn ok(value: serde_json::Value) -> Answer {
    Ok(axum::Json(value).into_response())
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `{"username","password"}`.
#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

/// `{"username"}` (invite, kick, ban, unban, unmute).
#[derive(Deserialize)]
pub struct Target {
    username: String,
}

/// `{"username","role"}`.
#[derive(Deserialize)]
pub struct RoleChange {
    username: String,
    role: String,
}

/// `{"username","seconds"}`.
#[derive(Deserialize)]
pub struct MuteRequest {
    username: String,
    seconds: u64,
}

/// `{"seq"}`.
#[derive(Deserialize)]
pub struct ReadMarker {
    seq: u64,
}

/// `{"room","title","visibility"}`.
#[derive(Deserialize)]
pub struct NewRoom {
    room: String,
    title: Option<String>,
    visibility: Option<String>,
}

/// `{"body","client_id"}`.
#[derive(Deserialize)]
pub struct NewMessage {
    body: Option<String>,
    client_id: Option<String>,
}

pub async fn register(
    State(node): State<Arc<Node>>,
    ClientAddr(addr): ClientAddr,
    Json(c): Json<Credentials>,
) -> Answer {
    node.register(addr, c.username.clone(), c.password).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"username": c.username}))).into_response())
}

pub async fn login(State(node): State<Arc<Node>>, ClientAddr(addr): ClientAddr, Json(c): Json<Credentials>) -> Answer {
    let answer = node.login(addr, c.username, c.password).await?;
    ok(json!(answer))
}

pub async fn logout(State(node): State<Arc<Node>>, Authed(s): Authed) -> Answer {
    node.logout(&s).await?;
    no_content()
}

pub async fn me(State(node): State<Arc<Node>>, Authed(s): Authed) -> Answer {
    let (username, role) = node.me(&s).await?;
    ok(json!({"username": username, "role": role.as_str()}))
}

pub async fn ticket(State(node): State<Arc<Node>>, Authed(s): Authed) -> Answer {
    let ticket = node.ticket(&s).await?;
    ok(json!({"ticket": ticket}))
}

pub async fn list_rooms(State(node): State<Arc<Node>>, Authed(s): Authed) -> Answer {
    ok(json!(node.list_rooms(&s).await?))
}

pub async fn create_room(State(node): State<Arc<Node>>, Authed(s): Authed, Json(r): Json<NewRoom>) -> Answer {
    let room = node.create_room(&s, r.room, r.title, r.visibility).await?;
    Ok((StatusCode::CREATED, axum::Json(json!(room))).into_response())
}

pub async fn get_room(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    ok(json!(node.get_room(&s, &room).await?))
}

pub async fn delete_room(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    node.room_op(&s, &room, RoomOp::Delete).await?;
    no_content()
}

pub async fn join(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    ok(json!(node.join(&s, &room).await?))
}

pub async fn leave(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    node.room_op(&s, &room, RoomOp::Leave).await?;
    no_content()
}

pub async fn invite(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<Target>,
) -> Answer {
    node.room_op(&s, &room, RoomOp::Invite(t.username)).await?;
    no_content()
}

pub async fn kick(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<Target>,
) -> Answer {
    node.room_op(&s, &room, RoomOp::Kick(t.username)).await?;
    no_content()
}

pub async fn ban(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<Target>,
) -> Answer {
    node.room_op(&s, &room, RoomOp::Ban(t.username)).await?;
    no_content()
}

pub async fn unban(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<Target>,
) -> Answer {
    node.room_op(&s, &room, RoomOp::Unban(t.username)).await?;
    no_content()
}

pub async fn role(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(r): Json<RoleChange>,
) -> Answer {
    node.set_role(&s, &room, r.username, &r.role).await?;
    no_content()
}

pub async fn mute(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(m): Json<MuteRequest>,
) -> Answer {
    node.mute(&s, &room, m.username, m.seconds).await?;
    no_content()
}

pub async fn unmute(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<Target>,
) -> Answer {
    node.room_op(&s, &room, RoomOp::Unmute(t.username)).await?;
    no_content()
}

pub async fn read(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(r): Json<ReadMarker>,
) -> Answer {
    node.mark_read(&s, &room, r.seq).await?;
    no_content()
}

pub async fn members(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    ok(json!(node.members(&s, &room).await?))
}

pub async fn audit(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    let entries = node.audit(&s, &room).await?;
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({"ts": e.ts, "actor": e.actor, "action": e.action, "target": e.target});
            if let Some(d) = &e.detail {
                v["detail"] = d.as_str().into();
            }
            v
        })
        .collect();
    ok(json!(list))
}

pub async fn open_direct(State(node): State<Arc<Node>>, Authed(s): Authed, Path(peer): Path<String>) -> Answer {
    ok(json!(node.open_direct(&s, &peer).await?))
}

pub async fn history(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>, q: Query) -> Answer {
    let page = match (q.number("after")?, q.number("before")?) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("use after or before, not both")),
        (Some(a), None) => Page::After(a),
        (None, Some(b)) => Page::Before(b),
        (None, None) => Page::Before(u64::MAX),
    };
    let limit = q.number("limit")?.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let page = node.history(&s, &room, page, limit).await?;
    let views: Vec<MessageView<'_>> = page.messages.iter().map(|m| MessageView::of(&room, m)).collect();
    let mut response = axum::Json(json!(views)).into_response();
    // A page cut short at the byte cap says where the rest starts.
    let next = match page.next {
        Some(Page::After(n)) => Some(format!("after={n}")),
        Some(Page::Before(n)) => Some(format!("before={n}")),
        None => None,
    };
    if let Some(value) = next.and_then(|v| axum::http::HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert("x-next-page", value);
    }
    Ok(response)
}

pub async fn post_message(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(m): Json<NewMessage>,
) -> Answer {
    let body = m.body.unwrap_or_default();
    let client_id = m.client_id.unwrap_or_default();
    let appended = node.send(&s, &room, body, client_id).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"seq": appended.seq, "ts": appended.ts}))).into_response())
}

pub async fn delete_message(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path((room, seq)): Path<(String, String)>,
) -> Answer {
    let seq = seq.parse::<u64>().map_err(|_| ApiError::bad_request("seq must be a positive integer"))?;
    node.delete_message(&s, &room, seq).await?;
    no_content()
}
