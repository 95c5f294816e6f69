//! The web client (`node/web/`): plain HTML, CSS and JavaScript modules,
//! embedded in the binary and served by every node at `GET /`.
//!
//! Caching: every file gets a strong ETag from the SHA-256 of its bytes,
//! computed once when the router is built. `index.html` is revalidated on
//! every load (`no-cache`, 304 on `If-None-Match`); it names the other files
//! under `/static/<version>/`, where `<version>` hashes all embedded files,
//! so those may be kept for a year and a new binary changes every URL. The
//! modules import each other by relative path, so they inherit the version
//! without any rewriting.
//!
//! Every answer carries a Content-Security-Policy that allows only this
//! origin's scripts and styles (no inline code) and WebSockets, plus
//! `nosniff`. This module knows nothing of the API the page calls.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use sha2::Digest;
use sha2::Sha256;

use crate::service::ApiError;

/// The page; `{{version}}` is replaced by the assets' version.
const INDEX: &str = include_str!("../../web/index.html");

/// The files under `/static/<version>/`: name, bytes, `Content-Type`.
const ASSETS: &[(&str, &[u8], &str)] = &[
    ("app.css", include_bytes!("../../web/app.css"), "text/css; charset=utf-8"),
    ("api.js", include_bytes!("../../web/api.js"), JS),
    ("connection.js", include_bytes!("../../web/connection.js"), JS),
    ("store.js", include_bytes!("../../web/store.js"), JS),
    ("views.js", include_bytes!("../../web/views.js"), JS),
    ("main.js", include_bytes!("../../web/main.js"), JS),
    ("search.js", include_bytes!("../../web/search.js"), JS),
    ("account.js", include_bytes!("../../web/account.js"), JS),
    ("icon.svg", include_bytes!("../../web/icon.svg"), "image/svg+xml"),
];

const JS: &str = "text/javascript; charset=utf-8";

/// Only this origin's files (images also as `blob:`: attachments are
/// fetched with the token and shown from memory), no inline script or style, WebSockets to any
/// host (the page opens them to its own; `'self'` does not cover `ws:` in
/// every browser), no framing, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A versioned asset may be kept this long.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One file ready to serve.
struct File {
    bytes: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

/// The embedded site, hashed once.
struct Site {
    /// Hash of every embedded file: the `/static/<version>/` segment.
    version: String,
    index: File,
    assets: HashMap<&'static str, File>,
}

/// The site, built (and hashed) on first use; [`routes`] builds it when the
/// router is made, so no request pays for it.
fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let mut all = Sha256::new();
        let mut assets = HashMap::new();
        for &(name, bytes, content_type) in ASSETS {
            all.update(name.as_bytes());
            all.update(bytes);
            assets.insert(name, File { bytes, content_type, etag: etag(bytes) });
        }
        all.update(INDEX.as_bytes());
        let version = hex::encode(&all.finalize()[..8]);
        let page: &'static [u8] = INDEX.replace("{{version}}", &version).into_bytes().leak();
        let index = File { bytes: page, content_type: "text/html; charset=utf-8", etag: etag(page) };
        Site { version, index, assets }
    })
}

/// A strong ETag: the first 16 bytes of the SHA-256, in hex, quoted.
fn etag(bytes: &[u8]) -> HeaderValue {
    let tag = format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..16]));
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// `GET /` and `GET /static/{version}/{file}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    site();
    Router::new().route("/", get(index)).route("/static/{version}/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&site().index, "no-cache", &headers)
}

async fn asset(Path((version, name)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let site = site();
    let Some(file) = site.assets.get(name.as_str()) else {
        return ApiError::not_found("path").into_response();
    };
    // Another version's URL (a page from a node running another binary,
    // during a rolling upgrade): these bytes, but not to be kept under it.
    let cache = if version == site.version { IMMUTABLE } else { "no-cache" };
    serve(file, cache, &headers)
}

fn serve(file: &File, cache: &'static str, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|list| matches_etag(list, &file.etag));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { (StatusCode::OK, file.bytes).into_response() };
    let h = response.headers_mut();
    h.insert(header::ETAG, file.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type));
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `W/` is
/// ignored; `*` matches anything.
fn matches_etag(list: &str, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    list.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_the_versioned_assets_and_nothing_unknown() {
        let site = site();
        let page = std::str::from_utf8(site.index.bytes).expect("utf-8");
        assert!(!page.contains("{{"), "a placeholder is left in index.html");
        let prefix = format!("/static/{}/", site.version);
        let mut named = 0;
        for part in page.split(&prefix).skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(site.assets.contains_key(name), "index.html names {name}, which is not embedded");
            named += 1;
        }
        assert!(named >= 3, "index.html should load the style, the script and the icon");
    }

    #[test]
    fn etags_are_strong_and_match_weakly() {
        let tag = etag(b"abc");
        let text = tag.to_str().expect("ascii").to_string();
        assert!(text.starts_with('"') && text.len() == 34);
        for (header, want) in [
            (text.clone(), true),
            (format!("W/{text}"), true),
            (format!("\"x\", {text}"), true),
            ("*".to_string(), true),
            ("\"other\"".to_string(), false),
            (String::new(), false),
        ] {
            assert_eq!(matches_etag(&header, &tag), want, "{header:?}");
        }
    }

    #[test]
    fn modules_import_only_embedded_siblings() {
        for &(name, bytes, _) in ASSETS.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            let text = std::str::from_utf8(bytes).expect("utf-8");
            for part in text.split(" from './").skip(1) {
                let target = part.split('\'').next().unwrap_or_default();
                assert!(site().assets.contains_key(target), "{name} imports {target}, which is not embedded");
            }
        }
    }
}
