//! HTTP handlers of docs/protocol.md §2 and §3: parse, call the service, answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use palaver_protocol::Credentials;
use palaver_protocol::EditMessage;
use palaver_protocol::Mute;
use palaver_protocol::NewMessage;
use palaver_protocol::NewRoom;
use palaver_protocol::Page;
use palaver_protocol::ReadMarker;
use palaver_protocol::Registered;
use palaver_protocol::Registration;
use palaver_protocol::RoleChange;
use palaver_protocol::SendAck;
use palaver_protocol::Ticket;
use palaver_protocol::UserTarget;
use serde::Serialize;

use super::extract::Authed;
use super::extract::ClientAddr;
use super::extract::Json;
use super::extract::Path;
use super::extract::Query;
use crate::meta::RoomOp;
use crate::service::ApiError;
use crate::service::NewPost;
use crate::service::Node;

type Answer = Result<Response, ApiError>;

fn ok(value: impl Serialize) -> Answer {
    Ok(axum::Json(value).into_response())
}

fn created(value: impl Serialize) -> Answer {
    Ok((StatusCode::CREATED, axum::Json(value)).into_response())
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn register(
    State(node): State<Arc<Node>>,
    ClientAddr(addr): ClientAddr,
    Json(c): Json<Registration>,
) -> Answer {
    node.register(addr, c.username.clone(), c.password, c.invite).await?;
    created(Registered { username: c.username })
}

pub async fn login(State(node): State<Arc<Node>>, ClientAddr(addr): ClientAddr, Json(c): Json<Credentials>) -> Answer {
    ok(node.login(addr, c.username, c.password).await?)
}

pub async fn logout(State(node): State<Arc<Node>>, Authed(s): Authed) -> Answer {
    node.logout(&s).await?;
    no_content()
}

pub async fn me(State(node): State<Arc<Node>>, Authed(s): Authed) -> Answer {
    ok(node.me(&s).await?)
}

pub async fn ticket(State(node): State<Arc<Node>>, Authed(s): Authed) -> Answer {
    ok(Ticket { ticket: node.ticket(&s).await? })
}

pub async fn list_rooms(State(node): State<Arc<Node>>, Authed(s): Authed) -> Answer {
    ok(node.list_rooms(&s).await?)
}

pub async fn create_room(State(node): State<Arc<Node>>, Authed(s): Authed, Json(r): Json<NewRoom>) -> Answer {
    created(node.create_room(&s, r.room, r.title, r.visibility).await?)
}

pub async fn get_room(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    ok(node.get_room(&s, &room).await?)
}

/// `PATCH /api/rooms/{room}`: the owner's title and retention.
pub async fn configure_room(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(settings): Json<palaver_protocol::RoomSettings>,
) -> Answer {
    ok(node.configure_room(&s, &room, settings.title, settings.retention_days).await?)
}

pub async fn delete_room(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    node.room_op(&s, &room, RoomOp::Delete).await?;
    no_content()
}

pub async fn join(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    ok(node.join(&s, &room).await?)
}

pub async fn leave(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    node.room_op(&s, &room, RoomOp::Leave).await?;
    no_content()
}

pub async fn invite(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<UserTarget>,
) -> Answer {
    node.room_op(&s, &room, RoomOp::Invite(t.username)).await?;
    no_content()
}

pub async fn kick(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<UserTarget>,
) -> Answer {
    node.room_op(&s, &room, RoomOp::Kick(t.username)).await?;
    no_content()
}

pub async fn ban(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<UserTarget>,
) -> Answer {
    node.room_op(&s, &room, RoomOp::Ban(t.username)).await?;
    no_content()
}

pub async fn unban(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<UserTarget>,
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
    Json(m): Json<Mute>,
) -> Answer {
    node.mute(&s, &room, m.username, m.seconds).await?;
    no_content()
}

pub async fn unmute(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(t): Json<UserTarget>,
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
    ok(node.members(&s, &room).await?)
}

pub async fn receipts(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    ok(node.receipts(&s, &room).await?)
}

pub async fn audit(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>) -> Answer {
    ok(node.audit(&s, &room).await?)
}

pub async fn open_direct(State(node): State<Arc<Node>>, Authed(s): Authed, Path(peer): Path<String>) -> Answer {
    ok(node.open_direct(&s, &peer).await?)
}

pub async fn history(State(node): State<Arc<Node>>, Authed(s): Authed, Path(room): Path<String>, q: Query) -> Answer {
    let page = match (q.number("after")?, q.number("before")?) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("use after or before, not both")),
        (Some(a), None) => Page::After(a),
        (None, Some(b)) => Page::Before(b),
        (None, None) => Page::NEWEST,
    };
    let limit = q.number("limit")?.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let page = node.history(&s, &room, page, limit).await?;
    let views: Vec<_> = page.messages.iter().map(|m| crate::protocol::message(&room, m)).collect();
    let mut response = axum::Json(views).into_response();
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

/// `GET /api/rooms/{room}/search?q=&limit=`: one room's messages holding every word of `q`.
pub async fn search_room(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    q: Query,
) -> Answer {
    search(&node, &s, Some(&room), &q).await
}

/// `GET /api/search?q=&limit=`: the same over every room the caller may read.
pub async fn search_all(State(node): State<Arc<Node>>, Authed(s): Authed, q: Query) -> Answer {
    search(&node, &s, None, &q).await
}

async fn search(node: &Node, s: &crate::service::Session, room: Option<&str>, q: &Query) -> Answer {
    let text = q.0.get("q").map(String::as_str).unwrap_or_default();
    let limit = q.number("limit")?.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let found = node.search(s, room, text, limit).await?;
    let views: Vec<_> = found.iter().map(|f| crate::protocol::message(&f.room, &f.message)).collect();
    Ok(axum::Json(views).into_response())
}

pub async fn post_message(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    Json(m): Json<NewMessage>,
) -> Answer {
    let attachments = node.attachment_ids(&room, &m.attachments)?;
    let post = NewPost {
        body: m.body.unwrap_or_default(),
        client_id: m.client_id.unwrap_or_default(),
        reply_to: m.reply_to,
        attachments,
    };
    let appended = node.send(&s, &room, post).await?;
    created(SendAck { seq: appended.seq, ts: appended.ts })
}

fn parse_seq(seq: &str) -> Result<u64, ApiError> {
    seq.parse::<u64>().map_err(|_| ApiError::bad_request("seq must be a positive integer"))
}

pub async fn edit_message(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path((room, seq)): Path<(String, String)>,
    Json(e): Json<EditMessage>,
) -> Answer {
    let message = node.edit_message(&s, &room, parse_seq(&seq)?, e.body).await?;
    ok(crate::protocol::message(&room, &message))
}

pub async fn add_reaction(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path((room, seq, emoji)): Path<(String, String, String)>,
) -> Answer {
    node.set_reaction(&s, &room, parse_seq(&seq)?, &emoji, true).await?;
    no_content()
}

pub async fn remove_reaction(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path((room, seq, emoji)): Path<(String, String, String)>,
) -> Answer {
    node.set_reaction(&s, &room, parse_seq(&seq)?, &emoji, false).await?;
    no_content()
}

pub async fn delete_message(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path((room, seq)): Path<(String, String)>,
) -> Answer {
    node.delete_message(&s, &room, parse_seq(&seq)?).await?;
    no_content()
}

/// `POST /api/rooms/{room}/attachments?name=`: the body is the file.
pub async fn upload(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    Path(room): Path<String>,
    q: Query,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Answer {
    let mime = match headers.get(header::CONTENT_TYPE) {
        Some(v) => Some(v.to_str().map_err(|_| ApiError::bad_request("Content-Type must be plain ASCII"))?),
        None => None,
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let name = q.0.get("name").map(String::as_str);
    created(node.upload(&s, &room, name, mime, declared, body.into_data_stream()).await?)
}

/// `GET /api/attachments/{id}`: the file, as a download (images inline).
pub async fn download(State(node): State<Arc<Node>>, Authed(s): Authed, Path(id): Path<String>) -> Answer {
    let d = node.download(&s, &id).await?;
    let disposition = crate::rooms::attachments::content_disposition(&d.name, &d.mime);
    let value = |v: &str| HeaderValue::from_str(v).map_err(|_| ApiError::internal("an attachment header"));
    let mut response = Response::new(axum::body::Body::from_stream(d.body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, value(&d.mime)?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.size));
    h.insert(header::CONTENT_DISPOSITION, value(&disposition)?);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // A file opened on its own runs nothing and reaches nothing.
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    Ok(response)
}
