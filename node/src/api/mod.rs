//! The client-facing transports: HTTP routes, WebSocket, SSE and long
//! polling, plus the accept loop. They translate requests into
//! [`crate::service`] calls and answers back; no rules live here.

mod admin;
mod admission;
mod conn_io;
mod delivery;
mod extract;
mod http;
mod ops;
pub mod origin;
mod poll;
pub mod proxy_protocol;
mod server;
mod sse;
mod web;
mod ws;
pub mod ws_compress;
pub mod ws_guard;
pub mod ws_inflate;
pub mod ws_negotiate;

use std::sync::Arc;

use axum::Router;
use axum::http::Extensions;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::Version;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::routing::put;
use palaver_protocol::Code;
use palaver_protocol::HttpError;
pub use server::serve;
use tower_http::compression::CompressionLayer;
use tower_http::compression::Predicate;
use tower_http::compression::predicate::NotForContentType;
use tower_http::compression::predicate::SizeAbove;

use crate::service::ApiError;
use crate::service::Node;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = axum::http::StatusCode::from_u16(self.code.status())
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::Json(HttpError { error: self.body() });
        let mut response = if let Some(ms) = self.retry_after_ms {
            let secs = ms.div_ceil(1000).to_string();
            (status, [(axum::http::header::RETRY_AFTER, secs)], body).into_response()
        } else {
            (status, body).into_response()
        };
        if self.code == Code::Timeout {
            // The rest of the request may still come, or never: hyper
            // closes the connection after this answer instead of reading on.
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// Every route of the client protocol and the operations endpoints.
pub fn router(node: Arc<Node>) -> Router {
    let body_limit = node.limits.body_bytes;
    Router::new()
        .route("/api/register", post(http::register))
        .route("/api/login", post(http::login))
        .route("/api/logout", post(http::logout))
        .route("/api/me", get(http::me))
        .route("/api/ticket", post(http::ticket))
        .route("/api/me/password", post(admin::change_password))
        .route("/api/admin/users", get(admin::list_users).post(admin::create_user))
        .route("/api/admin/users/{username}/disable", post(admin::disable_user))
        .route("/api/admin/users/{username}/enable", post(admin::enable_user))
        .route("/api/admin/invites", post(admin::create_invite))
        .route("/api/rooms", get(http::list_rooms).post(http::create_room))
        .route("/api/rooms/{room}", get(http::get_room).patch(http::configure_room).delete(http::delete_room))
        .route("/api/rooms/{room}/join", post(http::join))
        .route("/api/rooms/{room}/leave", post(http::leave))
        .route("/api/rooms/{room}/invite", post(http::invite))
        .route("/api/rooms/{room}/kick", post(http::kick))
        .route("/api/rooms/{room}/ban", post(http::ban))
        .route("/api/rooms/{room}/unban", post(http::unban))
        .route("/api/rooms/{room}/role", post(http::role))
        .route("/api/rooms/{room}/mute", post(http::mute))
        .route("/api/rooms/{room}/unmute", post(http::unmute))
        .route("/api/rooms/{room}/read", post(http::read))
        .route("/api/rooms/{room}/members", get(http::members))
        .route("/api/rooms/{room}/audit", get(http::audit))
        .route("/api/rooms/{room}/messages", get(http::history).post(http::post_message))
        .route("/api/rooms/{room}/messages/{seq}", delete(http::delete_message).patch(http::edit_message))
        .route("/api/rooms/{room}/receipts", get(http::receipts))
        .route("/api/rooms/{room}/search", get(http::search_room))
        .route("/api/search", get(http::search_all))
        .route(
            "/api/rooms/{room}/messages/{seq}/reactions/{emoji}",
            put(http::add_reaction).delete(http::remove_reaction),
        )
        .route("/api/rooms/{room}/attachments", post(http::upload))
        .route("/api/attachments/{id}", get(http::download))
        .route("/api/dm/{username}", post(http::open_direct))
        .route("/api/poll", get(poll::poll))
        .route("/api/cluster", get(ops::cluster))
        .route("/api/cluster/members", get(ops::members))
        .route("/api/cluster/drain", post(ops::drain))
        .route("/api/cluster/nodes", post(ops::add_node))
        .route("/api/cluster/nodes/{id}", delete(ops::remove_node))
        .route("/ws", get(ws::upgrade))
        .route("/sse", get(sse::stream))
        .route("/assign", get(ops::assign))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .merge(web::routes())
        .fallback(|| async { ApiError::not_found("path") })
        .method_not_allowed_fallback(|| async {
            let mut e = ApiError::bad_request("method not allowed on this path");
            e.message.push_str(" (see docs/protocol.md)");
            (axum::http::StatusCode::METHOD_NOT_ALLOWED, e.into_response().into_body())
        })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(compression())
        .layer(axum::middleware::map_response_with_state(node.clone(), hsts))
        .with_state(node)
}

/// Browsers that reached the public address over TLS keep to it for a
/// year (RFC 6797; a browser ignores the header on plain HTTP).
async fn hsts(axum::extract::State(node): axum::extract::State<Arc<Node>>, mut response: Response) -> Response {
    if node.security.hsts {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, axum::http::HeaderValue::from_static("max-age=31536000"));
    }
    response
}

/// Answers of at least this many bytes are compressed for a client that
/// sends `Accept-Encoding`; below it the header costs more than it saves.
pub const COMPRESS_FROM_BYTES: u16 = 1024;

/// gzip, br or zstd, as the client prefers, for answers of at least
/// [`COMPRESS_FROM_BYTES`]; never for event streams (each event must leave at
/// once) nor for attachment downloads (files, often compressed already,
/// sent as they are read).
fn compression() -> CompressionLayer<impl Predicate> {
    let not_a_download =
        |_: StatusCode, _: Version, h: &HeaderMap, _: &Extensions| !h.contains_key(header::CONTENT_DISPOSITION);
    let when = SizeAbove::new(COMPRESS_FROM_BYTES).and(NotForContentType::SSE).and(not_a_download);
    CompressionLayer::new().compress_when(when)
}
