//! The room API's requests from anyone: method, path, credentials, content type and
//! body chosen by the fuzzer, sent through the node's own router (axum, its extractors,
//! the JSON and SDP bodies, the validation behind them) to a node with a room and a
//! participant in it. No request may panic the node or answer 500.

#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use confnode::config::Config;
use confnode::http::{AppState, router};
use confnode::metrics::Metrics;
use confnode::net::liveness::Liveness;
use confnode::sfu::session::MediaSessions;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const HOST: &str = "host";
const PASSWORD: &str = "a password for the fuzzer";

/// The node under test: its router, a room, and a participant's id and token.
struct Node {
    runtime: tokio::runtime::Runtime,
    router: Router,
    room: String,
    participant: String,
    token: String,
    basic: String,
    _store: tempfile::TempDir,
}

thread_local! {
    static NODE: RefCell<Option<Node>> = const { RefCell::new(None) };
}

fn node() -> Node {
    use argon2::password_hash::rand_core::OsRng;
    use argon2::password_hash::{PasswordHasher, SaltString};
    use base64::Engine;
    let store = tempfile::tempdir().expect("temp dir");
    let params = argon2::Params::new(8, 1, 1, None).expect("params");
    let hash = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string();
    let toml = format!(
        "[turn]\nauth_secret = [\"a TURN REST secret for the fuzzer\"]\n\
         [store]\npath = \"{}\"\n[[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{hash}\"\n",
        store.path().display()
    );
    let config = Config::from_toml(&toml).expect("config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let media = Arc::new(MediaSessions::new(
        confnode::node::clock_epoch(),
        vec!["127.0.0.1:3478".parse().expect("addr")],
        Arc::new(confnode::node::dtls_identity().expect("identity")),
        Default::default(),
        [5; 32],
    ));
    let state = AppState::new(
        &config,
        Arc::new(Metrics::new()),
        media,
        Arc::new(Liveness::default()),
    )
    .expect("state");
    let router = runtime.block_on(async { router(state) });
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{HOST}:{PASSWORD}"))
    );
    let call = |req: Request<Body>| {
        runtime.block_on(async {
            let response = router.clone().oneshot(req).await.expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).expect("json"),
            )
        })
    };
    let (status, created) = call(
        Request::post("/api/rooms")
            .header("authorization", &basic)
            .body(Body::empty())
            .expect("request"),
    );
    assert_eq!(status, StatusCode::CREATED);
    let room = created["room"].as_str().expect("room").to_owned();
    let (status, joined) = call(
        Request::post(format!("/api/rooms/{room}/participants"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"display_name":"Fuzz"}"#))
            .expect("request"),
    );
    assert_eq!(status, StatusCode::CREATED);
    Node {
        participant: joined["participant"].as_str().expect("id").to_owned(),
        token: joined["token"].as_str().expect("token").to_owned(),
        runtime,
        router,
        room,
        basic,
        _store: store,
    }
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const PATHS: [&str; 11] = [
    "/api/rooms",
    "/api/rooms/{room}",
    "/api/rooms/{room}/participants",
    "/api/rooms/{room}/participants/{p}",
    "/api/rooms/{room}/participants/{p}/publish",
    "/api/rooms/{room}/participants/{p}/subscribe",
    "/api/rooms/{room}/participants/{p}/preferences",
    "/api/health",
    "/metrics",
    "/r/{room}",
    "/api/openapi.json",
];
const TYPES: [&str; 4] = ["application/json", "application/sdp", "text/plain", ""];

fuzz_target!(|data: &[u8]| {
    let [method, path, auth, kind, rest @ ..] = data else {
        return;
    };
    // A path of the fuzzer's own when it asks for one: up to the first newline.
    let (own_path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) if path & 0x80 != 0 => (Some(&rest[..i]), &rest[i + 1..]),
        _ => (None, rest),
    };
    NODE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let node = cell.get_or_insert_with(node);
        let uri = match own_path {
            Some(p) => String::from_utf8_lossy(p).into_owned(),
            None => PATHS[usize::from(*path) % PATHS.len()]
                .replace("{room}", &node.room)
                .replace("{p}", &node.participant),
        };
        let mut request = Request::builder()
            .method(METHODS[usize::from(*method) % METHODS.len()])
            .uri(uri);
        match auth % 4 {
            0 => {}
            1 => request = request.header("authorization", format!("Bearer {}", node.token)),
            2 => request = request.header("authorization", &node.basic),
            _ => request = request.header("authorization", "Bearer not-a-token"),
        }
        let kind = TYPES[usize::from(*kind) % TYPES.len()];
        if !kind.is_empty() {
            request = request.header("content-type", kind);
        }
        // What the http crate refuses (a bad path or header) never reaches the node.
        let Ok(request) = request.body(Body::from(body.to_vec())) else {
            return;
        };
        let status = node.runtime.block_on(async {
            let response = node
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            response.status()
        });
        assert!(
            status != StatusCode::INTERNAL_SERVER_ERROR,
            "500 for {method} {path} {auth} {kind}"
        );
    });
});
