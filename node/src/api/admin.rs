//! HTTP handlers of account administration (docs/protocol.md §8
//! "Accounts"): the caller's password, and the admin's routes under
//! `/api/admin`, open to admins and to the cluster's ops token (the
//! operations CLI makes the first admin with it).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use palaver_protocol::Invite;
use palaver_protocol::NewInvite;
use palaver_protocol::NewUser;
use palaver_protocol::PasswordChange;
use palaver_protocol::UserMade;
use palaver_protocol::UserRole;

use super::extract::Authed;
use super::extract::ClientAddr;
use super::extract::Json;
use super::extract::Ops;
use super::extract::Path;
use super::extract::Query;
use crate::service::ApiError;
use crate::service::Node;

type Answer = Result<Response, ApiError>;

/// `POST /api/me/password`: 204; the caller's other sessions end.
pub async fn change_password(
    State(node): State<Arc<Node>>,
    Authed(s): Authed,
    ClientAddr(addr): ClientAddr,
    Json(c): Json<PasswordChange>,
) -> Answer {
    node.change_password(&s, addr, c.old, c.new).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/admin/users?prefix=&limit=`.
pub async fn list_users(State(node): State<Arc<Node>>, Ops(_): Ops, q: Query) -> Answer {
    let prefix = q.0.get("prefix").map(String::as_str).unwrap_or_default();
    let limit = q.number("limit")?.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    Ok(axum::Json(node.list_users(prefix, limit).await?).into_response())
}

/// `POST /api/admin/users` `{"username","password","role"}`: 201.
pub async fn create_user(State(node): State<Arc<Node>>, Ops(admin): Ops, Json(u): Json<NewUser>) -> Answer {
    let role = match u.role.as_deref() {
        None | Some("user") => UserRole::User,
        Some("admin") => UserRole::Admin,
        Some(other) => return Err(ApiError::bad_request(format!("role must be user or admin, not {other:?}"))),
    };
    let role = node.create_user(admin.as_deref(), u.username.clone(), u.password, role).await?;
    Ok((StatusCode::CREATED, axum::Json(UserMade { username: u.username, role })).into_response())
}

/// `POST /api/admin/users/{u}/disable`: 204; every session of the user ends.
pub async fn disable_user(State(node): State<Arc<Node>>, Ops(admin): Ops, Path(u): Path<String>) -> Answer {
    node.set_disabled(admin.as_deref(), &u, true).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/admin/users/{u}/enable`: 204.
pub async fn enable_user(State(node): State<Arc<Node>>, Ops(admin): Ops, Path(u): Path<String>) -> Answer {
    node.set_disabled(admin.as_deref(), &u, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/admin/invites` `{"uses","ttl_secs"}`: 201 `{"code"}`.
pub async fn create_invite(State(node): State<Arc<Node>>, Ops(admin): Ops, Json(b): Json<NewInvite>) -> Answer {
    let NewInvite { uses, ttl_secs } = b;
    let code = node.create_invite(admin.as_deref(), uses, ttl_secs).await?;
    Ok((StatusCode::CREATED, axum::Json(Invite { code })).into_response())
}
