//! The reference page (README, "What works today"): plain HTML, CSS and JavaScript in
//! `src/http/page/`, embedded in the binary, no build step. `GET /` is the host view
//! (log in, create a room, copy its link), `GET /r/{room}` the room view; both are the
//! same document, which picks its view from the path. Nothing is loaded from another
//! host, and the Content-Security-Policy holds the page to that (with a shared store, its
//! API calls may also go to the other live nodes, where rooms are served).
//!
//! Privacy: the page shows display names; nothing here logs a request.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::AppState;

pub(crate) const INDEX_HTML: &str = include_str!("page/index.html");
pub(crate) const APP_JS: &str = include_str!("page/app.js");
pub(crate) const APP_CSS: &str = include_str!("page/app.css");
pub(crate) const ICON_SVG: &str = include_str!("page/icon.svg");
pub(crate) const E2EE_WORKER_JS: &str = include_str!("page/e2ee-worker.js");

/// Everything from this node only; no plugins, no `<base>`, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Camera, microphone and screen sharing for this origin only; nothing else the page
/// does not use.
const PERMISSIONS_POLICY: &str =
    "camera=(self), microphone=(self), display-capture=(self), geolocation=(), payment=(), usb=()";

/// One embedded file with its type and validator.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            body,
            content_type,
            etag: HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a header value"),
        }
    }

    /// The file, or 304 when the browser's copy (`If-None-Match`) is current. Browsers
    /// revalidate every time (`no-cache`), so a new binary's page is seen at once.
    fn respond(&self, request: &HeaderMap) -> Response {
        let current = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/").as_bytes() == self.etag.as_bytes()
            });
        let headers = [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // The room id in the path is the key to the room: never hand it on.
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::HeaderName::from_static("permissions-policy"),
                HeaderValue::from_static(PERMISSIONS_POLICY),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::ETAG, self.etag.clone()),
        ];
        if current {
            (StatusCode::NOT_MODIFIED, headers).into_response()
        } else {
            (headers, self.body).into_response()
        }
    }
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(INDEX_HTML, "text/html; charset=utf-8"));
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(APP_JS, "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_CSS, "text/css; charset=utf-8"));
static ICON: LazyLock<Asset> = LazyLock::new(|| Asset::new(ICON_SVG, "image/svg+xml"));
static E2EE_WORKER: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(E2EE_WORKER_JS, "text/javascript; charset=utf-8"));

/// The page's routes: `/`, `/r/{room}`, `/app.js`, `/app.css`, `/icon.svg` and
/// `/e2ee-worker.js` (the end-to-end encryption of media frames).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/r/{room}", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/icon.svg", get(icon))
        .route("/e2ee-worker.js", get(e2ee_worker))
}

/// The page; with a shared store its scripts may also call the other live nodes, where
/// the room API redirects calls on their rooms (`connect-src`).
async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut response = INDEX.respond(&headers);
    let others = state.rooms.other_node_origins();
    if !others.is_empty() {
        let policy = format!(
            "{CONTENT_SECURITY_POLICY}; connect-src 'self' {}",
            others.join(" ")
        );
        if let Ok(value) = HeaderValue::from_str(&policy) {
            response
                .headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, value);
        }
    }
    response
}

async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

async fn style(headers: HeaderMap) -> Response {
    STYLE.respond(&headers)
}

async fn icon(headers: HeaderMap) -> Response {
    ICON.respond(&headers)
}

async fn e2ee_worker(headers: HeaderMap) -> Response {
    E2EE_WORKER.respond(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_revalidation() {
        let asset = Asset::new("body", "text/plain");
        let fresh = asset.respond(&HeaderMap::new());
        assert_eq!(fresh.status(), StatusCode::OK);
        let tag = fresh.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, tag.clone());
        assert_eq!(asset.respond(&again).status(), StatusCode::NOT_MODIFIED);
        let mut weak = HeaderMap::new();
        weak.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{}", tag.to_str().unwrap())).unwrap(),
        );
        assert_eq!(asset.respond(&weak).status(), StatusCode::NOT_MODIFIED);
        let mut other = HeaderMap::new();
        other.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert_eq!(asset.respond(&other).status(), StatusCode::OK);
    }

    #[test]
    fn the_page_loads_its_own_files() {
        assert!(INDEX_HTML.contains(r#"<script src="/app.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/app.css">"#));
    }
}
