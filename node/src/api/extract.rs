//! Request extractors that answer in the protocol's error format: the
//! authenticated caller, operations access, JSON bodies (with a deadline),
//! query strings, the client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::service::ApiError;
use crate::service::Node;
use crate::service::Session;

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller, authenticated by `Authorization: Bearer`.
pub struct Authed(pub Session);

impl FromRequestParts<Arc<Node>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        Ok(Authed(node.authenticate(token).await?))
    }
}

/// Access to the operations endpoints: `Authorization: Bearer` with the
/// cluster's ops token, or with the session token of an admin (named here;
/// `None` for the ops token).
pub struct Ops(pub Option<String>);

impl FromRequestParts<Arc<Node>> for Ops {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, Self::Rejection> {
        check_ops(&parts.headers, node).await.map(Ops)
    }
}

/// Whether `headers` carry operations access (see [`Ops`]): 401 without a
/// token or with one that is neither; 403 for a user who is not an admin.
/// Answers the admin's name, or `None` for the ops token.
pub async fn check_ops(headers: &HeaderMap, node: &Arc<Node>) -> Result<Option<String>, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if node.security.ops_token.as_ref().is_some_and(|t| t.matches(token)) {
        return Ok(None);
    }
    let session = node.authenticate(token).await?;
    node.read(|meta| {
        if meta.is_admin(&session.username) {
            Ok(())
        } else {
            Err(ApiError::forbidden("the operations endpoints are for admins and the ops token"))
        }
    })
    .await?;
    Ok(Some(session.username.to_string()))
}

/// The client's IP address: the TCP peer, or behind a trusted proxy the
/// address its PROXY header names (set by the accept loop).
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientAddr(addr.unwrap_or(IpAddr::from([0, 0, 0, 0]))))
    }
}

/// A JSON body: `bad_request` when malformed, `too_large` past the limit,
/// `timeout` (408, and the connection closes) when it has not fully arrived
/// within `handshake_timeout_ms`, so a client cannot hold a connection by
/// announcing a body it never sends.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, Self::Rejection> {
        let wait = Duration::from_millis(node.limits.handshake_timeout_ms);
        let read = tokio::time::timeout(wait, axum::body::Bytes::from_request(req, node)).await.map_err(|_| {
            ApiError::timeout(format!("the request body did not arrive within {} ms", wait.as_millis()))
        })?;
        let bytes = read.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("request body is too large")
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        // serde would fill a struct from an array too; the protocol's bodies are objects.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        serde_json::from_slice(&bytes).map(Json).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The query string as a map; repeated keys keep the last value.
pub struct Query(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

impl Query {
    /// A number parameter, if present.
    pub fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("{name} must be a non-negative integer")))
            })
            .transpose()
    }
}

/// The path parameters, decoded; `bad_request` when they are not UTF-8.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}
