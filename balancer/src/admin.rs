//! The operations address: `GET /balancer/nodes` (the node table as JSON),
//! `GET /metrics` (Prometheus text) and `GET /healthz`.
//!
//! Read-only views of the shared state; nothing here changes routing. With
//! an ops token configured, every path but `/healthz` needs
//! `Authorization: Bearer <token>` (401 otherwise): the table names every
//! node's address and load. `/healthz` stays open for liveness checks; it
//! tells only how many nodes are usable.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use hyper::Request;
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::server::Shared;
use crate::table::NodeView;

/// Serves the admin endpoints until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(route(&shared, &req)) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "admin connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let known = ["/balancer/nodes", "/metrics", "/healthz"];
    let path = req.uri().path();
    if req.method() != Method::GET {
        return if known.contains(&path) {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET is served here")
        } else {
            error(StatusCode::NOT_FOUND, "not_found", "path not found")
        };
    }
    if path != "/healthz" && known.contains(&path) && !authorized(shared, req) {
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", "the ops token is required");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    match path {
        "/balancer/nodes" => {
            let views = shared.table.lock().views();
            json_response(StatusCode::OK, Value::Array(views.iter().map(node_json).collect()))
        }
        "/metrics" => {
            let views = shared.table.lock().views();
            let text = shared.meters.render(&views);
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        "/healthz" => {
            let usable = shared.table.lock().usable();
            let (status, text) =
                if usable > 0 { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "no_nodes") };
            json_response(status, json!({"status": text, "nodes_usable": usable}))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "path not found"),
    }
}

/// Whether the request may see the admin views: always without an ops
/// token configured, otherwise only with `Authorization: Bearer <token>`.
fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(token) = &shared.settings.ops_token else { return true };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    presented.is_some_and(|t| token.matches(t))
}

/// One node of `/balancer/nodes`.
fn node_json(v: &NodeView) -> Value {
    json!({
        "id": v.id,
        "address": v.addr.to_string(),
        "health": v.health.as_str(),
        "draining": v.draining,
        "weight": v.weight,
        "active": v.active,
        "routed": v.routed,
        "assigned": v.assigned,
        "failures": v.failures,
        "discovered": v.discovered,
        "reported_connections": v.reported,
        "last_error": v.last_error,
    })
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, json!({"error": {"code": code, "message": message}}))
}
