//! The HTTP side of the node (axum): health, metrics, the room API, and the reference
//! page.

pub(crate) mod auth;
pub(crate) mod limit;
pub(crate) mod page;
pub(crate) mod rooms;
pub(crate) mod serve;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::liveness::Liveness;
use crate::sfu::session::MediaSessions;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post, put};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) rooms: Arc<rooms::RoomsApi>,
    /// Whether every data-plane worker runs (`/api/health`).
    pub(crate) liveness: Arc<Liveness>,
    /// `http.cors_origins`.
    pub(crate) cors_origins: Arc<[String]>,
}

impl AppState {
    /// The HTTP state from configuration. `config.turn.auth_secret` must hold the
    /// node's effective TURN REST secrets (`node::effective_turn_secrets`): the first
    /// signs the TURN credentials handed to participants.
    /// `media` is the SFU's session registry, shared with the data-plane workers.
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        media: Arc<MediaSessions>,
        liveness: Arc<Liveness>,
    ) -> Result<AppState, String> {
        let rooms = rooms::RoomsApi::new(config, &config.turn.auth_secret, media)?;
        Ok(AppState {
            metrics,
            rooms: Arc::new(rooms),
            liveness,
            cors_origins: config.http.cors_origins.clone().into(),
        })
    }
}

/// The HTTP routes. Inside a tokio runtime this also starts the task that sweeps
/// expired rooms and absent participants.
pub fn router(state: AppState) -> Router {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(rooms::RoomsApi::sweep_forever(
            Arc::downgrade(&state.rooms),
            state.metrics.clone(),
        ));
    }
    let participant = "/api/rooms/{room}/participants/{participant}";
    let cors = cors(&state);
    let router = Router::new()
        .route(
            "/api/rooms/{room}",
            get(rooms::get_room)
                .delete(rooms::delete_room)
                .patch(rooms::patch_room),
        )
        .route("/api/rooms/{room}/participants", post(rooms::join))
        .route(participant, axum::routing::delete(rooms::leave))
        .route(&format!("{participant}/events"), get(rooms::events))
        .route(
            &format!("{participant}/publish"),
            post(rooms::publish).put(rooms::republish),
        )
        .route(&format!("{participant}/subscribe"), post(rooms::subscribe))
        .route(&format!("{participant}/chat"), post(rooms::chat))
        .route(&format!("{participant}/hand"), put(rooms::hand))
        .route(
            &format!("{participant}/preferences"),
            put(rooms::preferences),
        )
        // Calls on one room: with a shared store, those of another node's rooms are
        // redirected there.
        .route_layer(middleware::from_fn_with_state(state.clone(), rooms::locate))
        .route("/api/health", get(health))
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/api/rooms", post(rooms::create_room))
        .merge(page::routes())
        .layer(DefaultBodyLimit::max(rooms::MAX_BODY))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(access_log))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the origins of `http.cors_origins` and, with a shared store, for the pages
/// of the live nodes, which the room API's redirects send here (none of either: no
/// CORS headers at all, and browsers keep other sites' scripts away from the API).
/// Bearer tokens and Basic logins travel in `Authorization`, never in cookies, so no
/// credentials mode.
fn cors(state: &AppState) -> Option<CorsLayer> {
    use axum::http::Method;
    if state.cors_origins.is_empty() && !state.rooms.is_clustered() {
        return None;
    }
    let listed: Vec<HeaderValue> = state
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allow = if state.rooms.is_clustered() {
        let rooms = state.rooms.clone();
        AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            listed.contains(origin) || origin.to_str().is_ok_and(|o| rooms.is_node_origin(o))
        })
    } else {
        AllowOrigin::list(listed)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Headers every answer carries unless its handler set its own: no MIME sniffing, no
/// framing, no `Referer` (a room link is its key); API answers are never cached.
async fn security_headers(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    if api && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// One access-log line per request, as the privacy terms describe them: date and time
/// (the logger's), the client's IP address and the room the request is about; besides
/// only the method, the route's template (never the path itself, whose query may carry
/// a token) and the status. No display names, tokens, claims or user agents.
async fn access_log(request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no route)", |m| m.as_str())
        .to_owned();
    let room = room_of(request.uri().path()).unwrap_or("-").to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    tracing::info!(
        ip = ip.as_deref().unwrap_or("-"),
        room = %room,
        "{method} {route} {}",
        response.status().as_u16()
    );
    response
}

/// The room id in `/api/rooms/{room}…` or `/r/{room}`, if it has the shape of one (so
/// that whatever else a client puts there never reaches a log).
fn room_of(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/api/rooms/")
        .or_else(|| path.strip_prefix("/r/"))?;
    let id = rest.split('/').next()?;
    let shaped = id.len() == 22
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    shaped.then_some(id)
}

/// An error answer: `{"error": "..."}` with a fitting status.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// 200 while every data-plane worker runs; 503 once one has ended (the node is about
/// to stop so that it is restarted: `net::liveness`).
async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let version = env!("CARGO_PKG_VERSION");
    if state.liveness.all_alive() && state.rooms.is_draining() {
        // Load balancers send no one new; calls in progress go on.
        let body = json!({ "status": "draining", "version": version });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if state.liveness.all_alive() {
        return Json(json!({ "status": "ok", "version": version })).into_response();
    }
    let body = json!({
        "status": "failing",
        "version": version,
        "error": "a data-plane worker has ended",
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// The OpenAPI 3 document of the API (`src/http/openapi.json`; `tests/openapi.rs` runs
/// schemathesis against a live node with it).
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::liveness::WorkerGuard;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn only_room_shaped_ids_are_logged() {
        let id = "1zVUKYleYqXCkmwTbDf5Bg";
        assert_eq!(room_of(&format!("/api/rooms/{id}")), Some(id));
        assert_eq!(
            room_of(&format!("/api/rooms/{id}/participants/x/events")),
            Some(id)
        );
        assert_eq!(room_of(&format!("/r/{id}")), Some(id));
        assert_eq!(room_of("/api/rooms"), None);
        assert_eq!(room_of("/r/alice@example.org-is-here"), None);
        assert_eq!(room_of("/api/rooms/%0Afake%20line%20here%20xx"), None);
    }

    #[tokio::test]
    async fn health_is_503_once_a_worker_has_ended() {
        let mut config = Config::default();
        config.turn.auth_secret = vec!["a TURN REST secret for the test".to_owned()];
        let store = tempfile::tempdir().expect("temp dir");
        config.store.path = store.path().to_owned();
        let media = Arc::new(MediaSessions::new(
            crate::node::clock_epoch(),
            vec!["127.0.0.1:3478".parse().expect("addr")],
            Arc::new(crate::node::dtls_identity().expect("identity")),
            Default::default(),
            [7; 32],
        ));
        let liveness = Arc::new(Liveness::default());
        let metrics = Arc::new(Metrics::new());
        let state = AppState::new(&config, metrics, media, liveness.clone()).expect("state");
        let status = |r: Response| r.status();
        let ok = health(axum::extract::State(state.clone())).await;
        assert_eq!(status(ok), StatusCode::OK);
        // A worker's thread ends while the node is not shutting down.
        let guard = WorkerGuard {
            id: 1,
            liveness,
            shutdown: Arc::new(AtomicBool::new(false)),
        };
        drop(guard);
        let failing = health(axum::extract::State(state)).await;
        assert_eq!(status(failing), StatusCode::SERVICE_UNAVAILABLE);
    }
}
