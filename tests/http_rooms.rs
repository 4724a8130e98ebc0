//! The HTTP room API (`src/http/openapi.json`), against the real binary: every route, its success
//! and each of its errors.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{
    BIN, HttpResponse, Joined, Node, NodeOutput, PUBLISH_OFFER, SseStream, basic_auth, cheap_hash,
    free_port, http, http_get, join, run_with_timeout, turn_allocate, unix_now,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

const HOST: &str = "carol";
const PASSWORD: &str = "correct horse battery";
const JWT_SECRET: &str = "jwt-test-secret-of-a-decent-length";
const PUBLIC_URL: &str = "https://meet.example.org";

/// A node with one host account, a JWT secret, and `extra` configuration.
fn node_with(turn: &str, extra: &str) -> (Node, NodeOutput) {
    let http = format!(
        "public_url = \"{PUBLIC_URL}/\"\njwt_secret = \"{JWT_SECRET}\"\n\
         [[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{}\"\n",
        cheap_hash(PASSWORD)
    );
    Node::start_with_http(turn, &http, extra)
}

fn node() -> Node {
    node_with("", "").0
}

fn host_auth() -> String {
    basic_auth(HOST, PASSWORD)
}

/// A JWT with the given header and claims, signed HS256 (or HS512) with `secret`.
fn jwt_with(header: Value, claims: Value, secret: &str, hs512: bool) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let sig = if hs512 {
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(input.as_bytes());
        mac.finalize().into_bytes().to_vec()
    } else {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(input.as_bytes());
        mac.finalize().into_bytes().to_vec()
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn jwt(claims: Value) -> String {
    jwt_with(
        json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        JWT_SECRET,
        false,
    )
}

fn create_room_as(node: &Node, authorization: &str) -> HttpResponse {
    http(
        node.http,
        "POST",
        "/api/rooms",
        &[("Authorization", authorization)],
        b"",
    )
}

fn create_room(node: &Node) -> String {
    let r = create_room_as(node, &host_auth());
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["room"].as_str().expect("room").to_owned()
}

fn join_raw(node: &Node, room: &str, body: &[u8]) -> HttpResponse {
    http(
        node.http,
        "POST",
        &format!("/api/rooms/{room}/participants"),
        &[("Content-Type", "application/json")],
        body,
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn events(node: &Node, room: &str, p: &Joined) -> SseStream {
    SseStream::open(
        node.http,
        &format!("/api/rooms/{room}/participants/{}/events", p.id),
        &[("Authorization", &bearer(&p.token))],
    )
    .unwrap_or_else(|r| panic!("events: {} {}", r.status, r.body))
}

fn get_room(node: &Node, room: &str) -> HttpResponse {
    http(node.http, "GET", &format!("/api/rooms/{room}"), &[], b"")
}

fn assert_error(r: &HttpResponse, status: u16) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{}",
        r.head
    );
    assert!(
        r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        r.body
    );
}

/// RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`) to unix seconds.
fn parse_rfc3339(s: &str) -> u64 {
    assert_eq!(s.len(), 20, "{s}");
    assert!(s.ends_with('Z'), "{s}");
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().expect("digits");
    let (y, m, d) = (n(0, 4) as i32, n(5, 7) as u8, n(8, 10) as u8);
    let days = confnode::date::days_from_civil(y, m, d).expect("a real date");
    (days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)) as u64
}

#[test]
fn health() {
    let node = node();
    let r = http(node.http, "GET", "/api/health", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn create_room_with_basic_login() {
    let node = node();
    let r = create_room_as(&node, &host_auth());
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let room = v["room"].as_str().expect("room");
    // At least 128 random bits: 22 base64url characters.
    let raw = URL_SAFE_NO_PAD.decode(room).expect("base64url");
    assert!(raw.len() >= 16, "{room}");
    assert_eq!(v["url"], format!("{PUBLIC_URL}/r/{room}"));
    let expires = parse_rfc3339(v["expires_at"].as_str().expect("expires_at"));
    let ttl = 24 * 3600;
    assert!(expires.abs_diff(unix_now() + ttl) <= 5, "{v}");
    // Another room has another id.
    assert_ne!(create_room(&node), room);
    // GET shows it, empty.
    let g = get_room(&node, room);
    assert_eq!(g.status, 200);
    assert_eq!(g.json()["room"], room);
    assert_eq!(g.json()["participants"], json!([]));
    assert_eq!(g.json()["expires_at"], v["expires_at"]);
}

#[test]
fn create_room_refuses_missing_and_wrong_basic_login() {
    let node = node();
    let garbage = format!("Basic {}", STANDARD.encode("no colon here"));
    for auth in [
        None,
        Some(basic_auth(HOST, "wrong password")),
        Some(basic_auth("mallory", PASSWORD)),
        Some(basic_auth(HOST, "")),
        Some("Basic %%%".to_owned()),
        Some(garbage),
        Some("Digest username=\"carol\"".to_owned()),
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let r = http(node.http, "POST", "/api/rooms", &headers, b"");
        assert_error(&r, 401);
        let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
    }
}

#[test]
fn create_room_with_jwt() {
    let node = node();
    let token = jwt(json!({ "sub": "sso-user", "exp": unix_now() + 600 }));
    let r = create_room_as(&node, &bearer(&token));
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.json()["room"].is_string());
    // A host token may delete too.
    let room = r.json()["room"].as_str().expect("room").to_owned();
    let d = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}"),
        &[("Authorization", &bearer(&token))],
        b"",
    );
    assert_eq!(d.status, 204, "{}", d.body);
}

#[test]
fn create_room_refuses_bad_expired_and_alg_none_jwt() {
    let node = node();
    let now = unix_now();
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let cases = [
        ("expired", jwt(json!({ "exp": now - 3600 }))),
        // The leeway for clocks apart is 5 s, not a minute.
        ("expired 20 s ago", jwt(json!({ "exp": now - 20 }))),
        (
            "not valid before a minute from now",
            jwt(json!({ "exp": now + 600, "nbf": now + 60 })),
        ),
        ("no exp", jwt(json!({ "sub": "x" }))),
        ("exp not a number", jwt(json!({ "exp": "tomorrow" }))),
        (
            "wrong secret",
            jwt_with(header.clone(), json!({ "exp": now + 600 }), "other", false),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT"})),
                b64(json!({ "exp": now + 600 }))
            ),
        ),
        (
            "HS512",
            jwt_with(
                json!({"alg": "HS512", "typ": "JWT"}),
                json!({ "exp": now + 600 }),
                JWT_SECRET,
                true,
            ),
        ),
        ("not a JWT", "abc.def".to_owned()),
        ("empty", String::new()),
    ];
    for (what, token) in cases {
        let r = create_room_as(&node, &bearer(&token));
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_error(&r, 401);
        let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    }
}

#[test]
fn rooms_per_host_are_bounded() {
    let node = node();
    let as_host = |sub: &str| bearer(&jwt(json!({ "sub": sub, "exp": unix_now() + 600 })));
    let first = as_host("busy");
    let mut rooms = Vec::new();
    for i in 0..100 {
        let r = create_room_as(&node, &first);
        assert_eq!(r.status, 201, "room {i}: {}", r.body);
        rooms.push(r.json()["room"].as_str().expect("room").to_owned());
    }
    assert_error(&create_room_as(&node, &first), 429);
    // Another host is not held back.
    assert_eq!(create_room_as(&node, &as_host("other")).status, 201);
    // Deleting one makes room for one.
    let d = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{}", rooms[0]),
        &[("Authorization", &first)],
        b"",
    );
    assert_eq!(d.status, 204);
    assert_eq!(create_room_as(&node, &first).status, 201);
    assert_error(&create_room_as(&node, &first), 429);
}

#[test]
fn get_room_lists_participants_and_404s_unknown_rooms() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "  Ann  ");
    let b = join(&node, &room, "Bob");
    let v = get_room(&node, &room).json();
    assert_eq!(
        v["participants"],
        json!([
            { "participant": a.id, "display_name": "Ann", "hand_raised": false },
            { "participant": b.id, "display_name": "Bob", "hand_raised": false },
        ])
    );
    // Occupied: the link lives at least another ttl.
    let expires = parse_rfc3339(v["expires_at"].as_str().expect("expires_at"));
    assert!(expires >= unix_now() + 24 * 3600 - 5);
    for unknown in ["AAAAAAAAAAAAAAAAAAAAAA", "x", "%20"] {
        assert_error(&get_room(&node, unknown), 404);
    }
    // Unknown paths and methods answer JSON errors too.
    assert_error(&http(node.http, "GET", "/api/nothing", &[], b""), 404);
    assert_error(
        &http(node.http, "PUT", &format!("/api/rooms/{room}"), &[], b""),
        405,
    );
}

#[test]
fn delete_room_needs_a_host_and_disconnects_everyone() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let mut ea = events(&node, &room, &a);
    let mut eb = events(&node, &room, &b);
    ea.expect("roster");
    eb.expect("roster");
    let path = format!("/api/rooms/{room}");
    // Not without a host login; not with a participant's token.
    let r = http(node.http, "DELETE", &path, &[], b"");
    assert_error(&r, 401);
    assert!(r.header("www-authenticate").is_some());
    let r = http(
        node.http,
        "DELETE",
        &path,
        &[("Authorization", &bearer(&a.token))],
        b"",
    );
    assert_error(&r, 401);
    let r = http(
        node.http,
        "DELETE",
        &path,
        &[("Authorization", &basic_auth(HOST, "nope"))],
        b"",
    );
    assert_error(&r, 401);
    // Unknown room.
    let r = http(
        node.http,
        "DELETE",
        "/api/rooms/AAAAAAAAAAAAAAAAAAAAAA",
        &[("Authorization", &host_auth())],
        b"",
    );
    assert_error(&r, 404);

    let r = http(
        node.http,
        "DELETE",
        &path,
        &[("Authorization", &host_auth())],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(r.body.is_empty());
    // Both streams hear room_closed, then end.
    for s in [&mut ea, &mut eb] {
        assert_eq!(s.expect("room_closed"), json!({}));
        assert_eq!(s.next_event(), None);
    }
    // The room and its tokens are gone.
    assert_error(&get_room(&node, &room), 404);
    let again = SseStream::open(
        node.http,
        &format!("/api/rooms/{room}/participants/{}/events", a.id),
        &[("Authorization", &bearer(&a.token))],
    );
    assert_eq!(again.err().map(|r| r.status), Some(404));
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}/participants/{}", b.id),
        &[("Authorization", &bearer(&b.token))],
        b"",
    );
    assert_error(&r, 404);
    assert_error(&join_raw(&node, &room, br#"{"display_name":"Cy"}"#), 404);
    let r = http(
        node.http,
        "DELETE",
        &path,
        &[("Authorization", &host_auth())],
        b"",
    );
    assert_error(&r, 404);
}

#[test]
fn join_answers_participant_token_and_ice_servers() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    assert!(URL_SAFE_NO_PAD.decode(&a.token).expect("b64").len() >= 16);
    let b = join(&node, &room, "Ann");
    assert_ne!(a.id, b.id, "same name, another participant");
    assert_ne!(a.token, b.token);
    let urls = |list: &str| -> Vec<String> {
        let servers = a.answer[list].as_array().expect(list);
        assert_eq!(servers.len(), 1, "{list}");
        servers[0]["urls"]
            .as_array()
            .expect("urls")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let port = node.stun.port();
    // For a page that lets ICE choose: no TURN over UDP (at the SFU's own media address,
    // Chromium would swallow the SFU's answers to its direct checks), TURN over TCP on
    // the IPv4 address. For a page that forces the relay: TURN over UDP on both
    // addresses first. Fewer than five URLs, from which browsers slow their discovery.
    let tcp = format!("turn:127.0.0.1:{port}?transport=tcp");
    assert_eq!(urls("ice_servers"), std::slice::from_ref(&tcp));
    assert_eq!(
        urls("relay_ice_servers"),
        [
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:[::1]:{port}?transport=udp"),
            tcp,
        ]
    );
    assert_eq!(
        a.answer["ice_servers"][0]["username"], a.answer["relay_ice_servers"][0]["username"],
        "one credential for both lists"
    );
    let servers = a.answer["ice_servers"].as_array().expect("ice_servers");
    // A TURN REST username: <expiry>:<participant>, expiring within a day.
    let username = servers[0]["username"].as_str().expect("username");
    // `<expiry>:room:<room>:<participant>`: good while the participant is in the room.
    let (expiry, id) = username.split_once(':').expect("expiry:id");
    assert_eq!(id, format!("room:{room}:{}", a.id));
    let expiry: u64 = expiry.parse().expect("expiry");
    assert!(expiry > unix_now() + 3600 && expiry <= unix_now() + 24 * 3600);
    assert!(servers[0]["credential"].is_string());
}

#[test]
fn join_refuses_bad_json_bad_names_big_bodies_and_unknown_rooms() {
    let node = node();
    let room = create_room(&node);
    let cases: [(&[u8], &str); 10] = [
        (b"", "empty body"),
        (b"{", "truncated JSON"),
        (b"display_name=Ann", "a form"),
        (br#"{"name":"Ann"}"#, "no display_name"),
        (br#"{"display_name":42}"#, "not a string"),
        (br#"{"display_name":""}"#, "empty"),
        (br#"{"display_name":"   "}"#, "blank"),
        (br#"{"display_name":"Ann\nLee"}"#, "line break"),
        (br#"{"display_name":"Ann\u0007"}"#, "bell"),
        (br#"{"display_name":"a\u202Eb"}"#, "bidi override"),
    ];
    for (body, what) in cases {
        let r = join_raw(&node, &room, body);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_error(&r, 400);
    }
    let long = json!({ "display_name": "é".repeat(65) }).to_string();
    assert_error(&join_raw(&node, &room, long.as_bytes()), 400);
    let max = json!({ "display_name": "é".repeat(64) }).to_string();
    assert_eq!(join_raw(&node, &room, max.as_bytes()).status, 201);
    // JSON over 16 KiB: 413, whatever it holds.
    let mut big = br#"{"display_name":"Ann","pad":""#.to_vec();
    big.resize(16 * 1024 + 1, b'x');
    assert_error(&join_raw(&node, &room, &big), 413);
    // Not declared JSON (a cross-site form posts text/plain or a form type): 415.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let headers: Vec<(&str, &str)> = if content_type.is_empty() {
            Vec::new()
        } else {
            vec![("Content-Type", content_type)]
        };
        let r = http(
            node.http,
            "POST",
            &format!("/api/rooms/{room}/participants"),
            &headers,
            br#"{"display_name":"Ann"}"#,
        );
        assert_error(&r, 415);
    }
    // Unknown room.
    assert_error(
        &join_raw(
            &node,
            "AAAAAAAAAAAAAAAAAAAAAA",
            br#"{"display_name":"Ann"}"#,
        ),
        404,
    );
}

#[test]
fn a_full_room_answers_409() {
    let (node, _) = node_with("", "[rooms]\nmax_participants = 2\n");
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    join(&node, &room, "Bob");
    let r = join_raw(&node, &room, br#"{"display_name":"Cy"}"#);
    assert_error(&r, 409);
    // Someone leaving frees the place.
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}/participants/{}", a.id),
        &[("Authorization", &bearer(&a.token))],
        b"",
    );
    assert_eq!(r.status, 204);
    join(&node, &room, "Cy");
}

fn patch_room(node: &Node, room: &str, authorization: &str, body: &str) -> HttpResponse {
    http(
        node.http,
        "PATCH",
        &format!("/api/rooms/{room}"),
        &[
            ("Authorization", authorization),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// Squatting: the room's host locks it (nobody new joins, who is in stays), another
/// host may not; the host removes a participant, who hears `left` and whose token no
/// longer works.
#[test]
fn a_host_locks_its_room_and_removes_a_participant() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let mut ea = events(&node, &room, &a);
    ea.expect("roster");
    let mut eb = events(&node, &room, &b);
    eb.expect("roster");

    let other_host = bearer(&jwt(json!({ "sub": "eve", "exp": unix_now() + 600 })));
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}"),
        &[("Authorization", &other_host)],
        b"",
    );
    assert_error(&r, 403);
    assert_error(
        &patch_room(&node, &room, &other_host, r#"{"locked":true}"#),
        403,
    );
    assert_error(&patch_room(&node, &room, "", r#"{"locked":true}"#), 401);
    assert_error(
        &patch_room(&node, &room, &host_auth(), r#"{"locked":"yes"}"#),
        400,
    );
    let r = patch_room(&node, &room, &host_auth(), r#"{"locked":true}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(get_room(&node, &room).json()["locked"], json!(true));
    let refused = join_raw(&node, &room, br#"{"display_name":"Mallory"}"#);
    assert_error(&refused, 403);

    // Another host may not remove anyone; the room's host may.
    let path = format!("/api/rooms/{room}/participants/{}", b.id);
    let r = http(
        node.http,
        "DELETE",
        &path,
        &[("Authorization", &other_host)],
        b"",
    );
    assert_error(&r, 403);
    let r = http(
        node.http,
        "DELETE",
        &path,
        &[("Authorization", &host_auth())],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(ea.expect("left"), json!({ "participant": b.id }));
    assert_eq!(eb.expect("left"), json!({ "participant": b.id }));
    let r = http(
        node.http,
        "DELETE",
        &path,
        &[("Authorization", &bearer(&b.token))],
        b"",
    );
    assert_error(&r, 404);

    let r = patch_room(&node, &room, &host_auth(), r#"{"locked":false}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(get_room(&node, &room).json()["locked"], json!(false));
    join(&node, &room, "Bob again");
}

/// One address cannot fill rooms: its 31st join within a minute is refused with 429
/// and `Retry-After`, in any room.
#[test]
fn joins_per_source_address_are_limited() {
    let node = node();
    let rooms = [create_room(&node), create_room(&node)];
    for i in 0..30 {
        join(&node, &rooms[i % 2], &format!("P{i}"));
    }
    for room in &rooms {
        let r = join_raw(&node, room, br#"{"display_name":"One more"}"#);
        assert_error(&r, 429);
        let wait: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=60).contains(&wait), "{wait}");
    }
}

#[test]
fn events_stream_roster_joined_and_left() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let mut ea = events(&node, &room, &a);
    assert_eq!(
        ea.expect("roster"),
        json!({ "participants": [{ "participant": a.id, "display_name": "Ann", "hand_raised": false }] })
    );
    // Bob joins: Ann hears joined, then the new roster.
    let b = join(&node, &room, "Bob");
    assert_eq!(
        ea.expect("joined"),
        json!({ "participant": b.id, "display_name": "Bob", "hand_raised": false })
    );
    let roster = ea.expect("roster");
    assert_eq!(roster["participants"].as_array().map(Vec::len), Some(2));
    // Bob's own stream, with the token in the query (EventSource cannot set headers).
    let mut eb = SseStream::open(
        node.http,
        &format!(
            "/api/rooms/{room}/participants/{}/events?token={}",
            b.id, b.token
        ),
        &[],
    )
    .unwrap_or_else(|r| panic!("{} {}", r.status, r.body));
    assert_eq!(eb.expect("roster"), roster);
    // Bob leaves: Ann hears left and the roster; Bob's stream ends.
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}/participants/{}", b.id),
        &[("Authorization", &bearer(&b.token))],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(ea.expect("left"), json!({ "participant": b.id }));
    assert_eq!(
        ea.expect("roster")["participants"],
        json!([{ "participant": a.id, "display_name": "Ann", "hand_raised": false }])
    );
    assert_eq!(eb.expect("left"), json!({ "participant": b.id }));
    assert_eq!(eb.next_event(), None);
    assert_eq!(
        get_room(&node, &room).json()["participants"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn events_refuse_missing_and_wrong_tokens() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let path = format!("/api/rooms/{room}/participants/{}/events", a.id);
    for (headers, query) in [
        (vec![], ""),
        (vec![("Authorization", bearer(&b.token))], ""),
        (vec![("Authorization", bearer("x"))], ""),
        (vec![("Authorization", host_auth())], ""),
        (vec![], "?token="),
        (vec![], "?token=wrong"),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = SseStream::open(node.http, &format!("{path}{query}"), &headers)
            .err()
            .expect("refused");
        assert_error(&r, 401);
        assert!(r.header("www-authenticate").is_some());
    }
    let unknown = format!("/api/rooms/{room}/participants/nobody/events");
    let r = SseStream::open(node.http, &unknown, &[("Authorization", &bearer(&a.token))]);
    assert_error(&r.err().expect("404"), 404);
    let unknown = format!(
        "/api/rooms/AAAAAAAAAAAAAAAAAAAAAA/participants/{}/events",
        a.id
    );
    let r = SseStream::open(node.http, &unknown, &[("Authorization", &bearer(&a.token))]);
    assert_error(&r.err().expect("404"), 404);
}

#[test]
fn a_third_event_stream_replaces_the_oldest() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let mut first = events(&node, &room, &a);
    first.expect("roster");
    let mut second = events(&node, &room, &a);
    second.expect("roster");
    let mut third = events(&node, &room, &a);
    third.expect("roster");
    assert_eq!(first.next_event(), None, "the oldest stream ends");
    join(&node, &room, "Bob");
    for s in [&mut second, &mut third] {
        s.expect("joined");
        s.expect("roster");
    }
}

#[test]
fn leave_needs_the_participants_own_token() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let path = format!("/api/rooms/{room}/participants/{}", a.id);
    for auth in [
        None,
        Some(bearer(&b.token)),
        Some(bearer("")),
        // The room's host may remove (a_host_locks_its_room_and_removes_a_participant),
        // with its own login only.
        Some(basic_auth(HOST, "not the password")),
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        assert_error(&http(node.http, "DELETE", &path, &headers, b""), 401);
    }
    let own = bearer(&a.token);
    let r = http(node.http, "DELETE", &path, &[("Authorization", &own)], b"");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_error(
        &http(node.http, "DELETE", &path, &[("Authorization", &own)], b""),
        404,
    );
    let unknown = format!("/api/rooms/AAAAAAAAAAAAAAAAAAAAAA/participants/{}", b.id);
    assert_error(
        &http(
            node.http,
            "DELETE",
            &unknown,
            &[("Authorization", &bearer(&b.token))],
            b"",
        ),
        404,
    );
}

const OFFER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";

#[test]
fn publish_and_subscribe_validate_their_sdp_bodies() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let own = bearer(&a.token);
    let other = bearer(&b.token);
    let sdp = ("Content-Type", "application/sdp");
    let mut big = OFFER.to_vec();
    big.resize(1024 * 1024 + 1, b'a');
    // An answer of 100 KB (a large room's) passes the HTTP layer; its own bound is
    // twice the node's offer, and here no offer awaits it.
    let mut large = OFFER.to_vec();
    large.resize(100 * 1024, b'a');
    let subscribe = format!("/api/rooms/{room}/participants/{}/subscribe", a.id);
    let r = http(
        node.http,
        "POST",
        &subscribe,
        &[sdp, ("Authorization", &own)],
        &large,
    );
    assert_error(&r, 409);
    for call in ["publish", "subscribe"] {
        let path = format!("/api/rooms/{room}/participants/{}/{call}", a.id);
        let send =
            |headers: &[(&str, &str)], body: &[u8]| http(node.http, "POST", &path, headers, body);
        assert_error(&send(&[sdp], OFFER), 401);
        assert_error(&send(&[sdp, ("Authorization", &other)], OFFER), 401);
        assert_error(&send(&[sdp, ("Authorization", "Bearer nope")], OFFER), 401);
        assert_error(&send(&[sdp, ("Authorization", &own)], &big), 413);
        assert_error(
            &send(
                &[sdp, ("Authorization", &own)],
                b"o=- 1 1 IN IP4 0.0.0.0\r\n",
            ),
            400,
        );
        assert_error(&send(&[sdp, ("Authorization", &own)], b""), 400);
        assert_error(&send(&[sdp, ("Authorization", &own)], b"v=01\r\n"), 400);
        assert_error(
            &send(
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", &own),
                ],
                OFFER,
            ),
            415,
        );
        let r = send(&[sdp, ("Authorization", &own)], OFFER);
        if call == "publish" {
            // An offer without media is no publish.
            assert_error(&r, 400);
        } else {
            // No event stream was opened, so no offer of the node awaits this answer.
            assert_error(&r, 409);
        }
        let unknown = format!(
            "/api/rooms/AAAAAAAAAAAAAAAAAAAAAA/participants/{}/{call}",
            a.id
        );
        assert_error(
            &http(
                node.http,
                "POST",
                &unknown,
                &[sdp, ("Authorization", &own)],
                OFFER,
            ),
            404,
        );
    }
}

/// The certificate fingerprint of the offers and answers here.
const FINGERPRINT: &str = "6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC";

#[test]
fn publish_answers_sdp_once() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let path = format!("/api/rooms/{room}/participants/{}/publish", a.id);
    let own = bearer(&a.token);
    let headers = [("Content-Type", "application/sdp"), ("Authorization", &own)];
    // A malformed offer (no BUNDLE) is refused with a message, and publishes nothing.
    let unbundled = PUBLISH_OFFER.replace("a=group:BUNDLE 0 1\r\n", "");
    assert_error(
        &http(node.http, "POST", &path, &headers, unbundled.as_bytes()),
        400,
    );
    let r = http(node.http, "POST", &path, &headers, PUBLISH_OFFER.as_bytes());
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/sdp")),
        "{}",
        r.head
    );
    let sdp = &r.body;
    assert!(sdp.starts_with("v=0"), "{sdp}");
    assert!(sdp.contains("a=ice-lite"), "{sdp}");
    assert!(sdp.contains("a=setup:passive"), "{sdp}");
    assert!(!sdp.contains("a=setup:active"), "{sdp}");
    let ufrag = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("our ufrag");
    assert!(ufrag.len() >= 4 && ufrag != "Clnt", "{sdp}");
    assert!(sdp.lines().any(|l| l.starts_with("a=ice-pwd:")), "{sdp}");
    assert!(sdp.contains("a=fingerprint:sha-256 "), "{sdp}");
    let port = node.stun.port();
    assert!(
        sdp.lines()
            .any(|l| l.starts_with("a=candidate:")
                && l.contains(&format!(" 127.0.0.1 {port} typ host"))),
        "{sdp}"
    );
    // A second publish on the same participant is a conflict.
    assert_error(
        &http(node.http, "POST", &path, &headers, PUBLISH_OFFER.as_bytes()),
        409,
    );
    // Another participant publishes on its own.
    let b = join(&node, &room, "Bob");
    let other = bearer(&b.token);
    let r = http(
        node.http,
        "POST",
        &format!("/api/rooms/{room}/participants/{}/publish", b.id),
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &other),
        ],
        PUBLISH_OFFER.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(!r.body.contains(&format!("a=ice-ufrag:{ufrag}\r")));
}

/// The next `offer` on `p`'s `events` whose SDP satisfies `want`; each offer is
/// answered as a browser would (the node offers again only after an answer). Panics
/// when the stream ends first.
fn offer_where(
    node: &Node,
    room: &str,
    p: &Joined,
    events: &mut SseStream,
    want: impl Fn(&str) -> bool,
) -> String {
    loop {
        match events.next_event() {
            Some((name, data)) if name == "offer" => {
                let v: serde_json::Value = serde_json::from_str(&data).expect("JSON");
                let sdp = v["sdp"].as_str().expect("sdp").to_owned();
                let answer = common::sim::answer_as_browser(&sdp, "Rcvr", FINGERPRINT);
                let r = http(
                    node.http,
                    "POST",
                    &format!("/api/rooms/{room}/participants/{}/subscribe", p.id),
                    &[
                        ("Content-Type", "application/sdp"),
                        ("Authorization", &bearer(&p.token)),
                    ],
                    answer.as_bytes(),
                );
                assert_eq!(r.status, 204, "{}", r.body);
                if want(&sdp) {
                    return sdp;
                }
            }
            Some(_) => {}
            None => panic!("the event stream ended before the offer"),
        }
    }
}

/// Issue 14's screen sharing at the API: `PUT .../publish` re-offers the publishing
/// connection with a third section, `?screen=2` naming it a screen; the others get it
/// (its track id says "screen"); a re-offer without it takes it away again. Before a
/// publish, or with other ICE credentials, a re-offer is refused.
#[test]
fn a_publisher_adds_and_stops_a_shared_screen_by_re_offering() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let mut eb = events(&node, &room, &b);
    let path = format!("/api/rooms/{room}/participants/{}/publish", a.id);
    let own = bearer(&a.token);
    let headers = [("Content-Type", "application/sdp"), ("Authorization", &own)];
    let screen_section = PUBLISH_OFFER
        .split("m=video")
        .nth(1)
        .expect("a video section")
        .replace("a=mid:1", "a=mid:2");
    let with_screen =
        PUBLISH_OFFER.replace("BUNDLE 0 1", "BUNDLE 0 1 2") + "m=video" + &screen_section;
    let screen = format!("{path}?screen=2");
    assert_error(
        &http(node.http, "PUT", &screen, &headers, with_screen.as_bytes()),
        409,
    );
    let r = http(node.http, "POST", &path, &headers, PUBLISH_OFFER.as_bytes());
    assert_eq!(r.status, 201, "{}", r.body);
    let first = r.body.clone();
    offer_where(&node, &room, &b, &mut eb, |sdp| {
        sdp.contains(&format!("{}-1", a.id))
    });

    let r = http(node.http, "PUT", &screen, &headers, with_screen.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = &r.body;
    assert_eq!(answer.matches("m=video").count(), 2, "{answer}");
    assert!(answer.contains("a=group:BUNDLE 0 1 2"), "{answer}");
    // The same ICE session, the next version.
    let line = |sdp: &str, prefix: &str| {
        sdp.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    };
    assert_eq!(line(answer, "a=ice-ufrag:"), line(&first, "a=ice-ufrag:"));
    let origin = |sdp: &str| {
        let o = line(sdp, "o=").expect("o=");
        let parts: Vec<String> = o.split(' ').map(str::to_owned).collect();
        (parts[1].clone(), parts[2].clone())
    };
    assert_eq!(origin(answer).0, origin(&first).0);
    assert_eq!(
        (origin(&first).1.as_str(), origin(answer).1.as_str()),
        ("1", "2")
    );
    let screen_track = format!("{}-screen-2", a.id);
    offer_where(&node, &room, &b, &mut eb, |sdp| sdp.contains(&screen_track));

    // Stopped: the section is inactive in the next re-offer.
    let stopped = with_screen.replacen("a=mid:2\r\na=sendonly", "a=mid:2\r\na=inactive", 1);
    assert_ne!(stopped, with_screen);
    let r = http(node.http, "PUT", &path, &headers, stopped.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    offer_where(&node, &room, &b, &mut eb, |sdp| {
        !sdp.contains(&screen_track)
    });

    // A new ICE session is a new publish, not a re-offer.
    let other_ice = with_screen.replace("a=ice-ufrag:Clnt", "a=ice-ufrag:Othr");
    assert_error(
        &http(node.http, "PUT", &screen, &headers, other_ice.as_bytes()),
        400,
    );
    assert_error(&http(node.http, "PUT", &screen, &headers, b"not sdp"), 400);
}

fn chat(node: &Node, room: &str, p: &Joined, text: &str) -> HttpResponse {
    http(
        node.http,
        "POST",
        &format!("/api/rooms/{room}/participants/{}/chat", p.id),
        &[
            ("Authorization", &bearer(&p.token)),
            ("Content-Type", "application/json"),
        ],
        json!({ "text": text }).to_string().as_bytes(),
    )
}

fn hand(node: &Node, room: &str, p: &Joined, body: &[u8]) -> HttpResponse {
    http(
        node.http,
        "PUT",
        &format!("/api/rooms/{room}/participants/{}/hand", p.id),
        &[
            ("Authorization", &bearer(&p.token)),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

/// Chat: every stream in the room, the sender's too, gets the messages in the order
/// the node took them; bad bodies are 400, a stranger's token 401, a flood 429.
/// Raised hands: everyone hears `hand`, and rosters carry it.
#[test]
fn chat_and_raised_hands_reach_the_room() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let mut ea = events(&node, &room, &a);
    let mut eb = events(&node, &room, &b);
    ea.expect("roster");
    eb.expect("roster");
    assert_eq!(chat(&node, &room, &a, "  hello\nall ").status, 204);
    assert_eq!(chat(&node, &room, &b, "hi Ann").status, 204);
    assert_eq!(chat(&node, &room, &a, "<b>not bold</b>").status, 204);
    let expected = [
        json!({ "participant": a.id, "text": "hello\nall" }),
        json!({ "participant": b.id, "text": "hi Ann" }),
        json!({ "participant": a.id, "text": "<b>not bold</b>" }),
    ];
    for e in [&mut ea, &mut eb] {
        for m in &expected {
            assert_eq!(&e.expect("chat"), m);
        }
    }

    let path = format!("/api/rooms/{room}/participants/{}/chat", a.id);
    let post = |auth: &str, mime: &str, body: &[u8]| {
        http(
            node.http,
            "POST",
            &path,
            &[("Authorization", auth), ("Content-Type", mime)],
            body,
        )
    };
    let own = bearer(&a.token);
    let long = json!({ "text": "é".repeat(2001) }).to_string();
    for body in [
        &br#"{"text": ""}"#[..],
        br#"{"text": "   "}"#,
        br#"{"text": 42}"#,
        br#"{"text": null}"#,
        br#"{"message": "hi"}"#,
        br#"{"text": "a\u202Eb"}"#,
        br#"{"text": "a\u0007b"}"#,
        br#"["hi"]"#,
        b"{",
        long.as_bytes(),
    ] {
        let r = post(&own, "application/json", body);
        assert_error(&r, 400);
    }
    assert_error(&post(&own, "text/plain", br#"{"text": "hi"}"#), 415);
    assert_error(
        &post(&bearer(&b.token), "application/json", br#"{"text": "hi"}"#),
        401,
    );
    // Ten messages in ten seconds, then 429 with Retry-After (three sent above).
    let mut refused = None;
    for i in 0..10 {
        let r = chat(&node, &room, &a, &format!("m{i}"));
        if r.status != 204 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a flood is refused");
    assert_error(&r, 429);
    assert!(r.header("retry-after").is_some(), "{}", r.body);

    // Raised hands.
    assert_eq!(hand(&node, &room, &b, br#"{"raised": true}"#).status, 204);
    // Ann's stream has the accepted part of the flood first.
    let raised = loop {
        match ea.next_event() {
            Some((name, data)) if name == "hand" => break data,
            Some((name, _)) => assert_eq!(name, "chat"),
            None => panic!("the stream ended"),
        }
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&raised).expect("JSON"),
        json!({ "participant": b.id, "raised": true })
    );
    let roster = get_room(&node, &room).json();
    assert_eq!(roster["participants"][1]["hand_raised"], true);
    assert_eq!(roster["participants"][0]["hand_raised"], false);
    for body in [&br#"{"raised": "yes"}"#[..], br#"{}"#, b"true"] {
        assert_error(&hand(&node, &room, &b, body), 400);
    }
    assert_eq!(hand(&node, &room, &b, br#"{"raised": false}"#).status, 204);
    let roster = get_room(&node, &room).json();
    assert_eq!(roster["participants"][1]["hand_raised"], false);
}

#[test]
fn preferences_take_a_positive_max_height_audio_only_or_both() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let path = format!("/api/rooms/{room}/participants/{}/preferences", a.id);
    let own = bearer(&a.token);
    let put = |auth: Option<&str>, body: &[u8]| {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        http(node.http, "PUT", &path, &headers, body)
    };
    let r = put(Some(&own), br#"{"max_height": 180}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(put(Some(&own), br#"{"max_height": 1080}"#).status, 204);
    for body in [
        &br#"{"audio_only": true}"#[..],
        br#"{"audio_only": false, "max_height": 360}"#,
        br#"{"audio_only": false, "other": 1}"#,
    ] {
        let r = put(Some(&own), body);
        assert_eq!(
            r.status,
            204,
            "{}: {}",
            String::from_utf8_lossy(body),
            r.body
        );
    }
    for body in [
        &br#"{"audio_only": "yes"}"#[..],
        br#"{"audio_only": 1}"#,
        br#"{"audio_only": null}"#,
        br#"{"audio_only": true, "max_height": 0}"#,
        br#"{}"#,
        br#"[{"audio_only": true}]"#,
        br#"{"max_height": 0}"#,
        br#"{"max_height": -180}"#,
        br#"{"max_height": 180.5}"#,
        br#"{"max_height": "180"}"#,
        br#"{"max_height": 99999999999}"#,
        br#"{"height": 180}"#,
        b"180",
        b"{",
    ] {
        let r = put(Some(&own), body);
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            String::from_utf8_lossy(body),
            r.body
        );
        assert_error(&r, 400);
    }
    assert_error(&put(None, br#"{"max_height": 180}"#), 401);
    assert_error(
        &put(Some(&bearer(&b.token)), br#"{"max_height": 180}"#),
        401,
    );
    let mut big = br#"{"max_height": 180, "pad": ""#.to_vec();
    big.resize(64 * 1024 + 1, b' ');
    assert_error(&put(Some(&own), &big), 413);
    let unknown = format!(
        "/api/rooms/AAAAAAAAAAAAAAAAAAAAAA/participants/{}/preferences",
        a.id
    );
    let r = http(
        node.http,
        "PUT",
        &unknown,
        &[("Authorization", &own)],
        br#"{"max_height": 180}"#,
    );
    assert_error(&r, 404);
}

fn turn_credentials(j: &Joined) -> (String, String) {
    let server = &j.answer["ice_servers"][0];
    (
        server["username"].as_str().expect("username").to_owned(),
        server["credential"]
            .as_str()
            .expect("credential")
            .to_owned(),
    )
}

/// The address of the `turn:HOST:PORT?transport=udp` URL.
fn turn_udp_url(j: &Joined) -> SocketAddr {
    j.answer["relay_ice_servers"][0]["urls"]
        .as_array()
        .expect("urls")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|u| {
            let hostport = u.strip_prefix("turn:")?.strip_suffix("?transport=udp")?;
            hostport.parse().ok()
        })
        .expect("a turn: URL over UDP")
}

#[test]
fn ice_server_credentials_allocate_on_the_nodes_turn() {
    // No turn.auth_secret configured: the node's own random secret signs them.
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let (username, credential) = turn_credentials(&a);
    let server = turn_udp_url(&a);
    assert_eq!(server, node.stun);
    assert!(turn_allocate(server, &username, &credential));
    // Changed credentials do not work.
    assert!(!turn_allocate(
        server,
        &username,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    ));
    let other = format!("1:{}", a.id);
    assert!(!turn_allocate(server, &other, &credential));
}

/// A room's TURN credentials work only while their participant is in the room: after
/// leaving, being removed or the room's deletion an Allocate with them is refused. One
/// participant holds 16 relays at most, and one address `turn.max_allocations_per_ip`.
#[test]
fn room_turn_credentials_end_with_the_participant_and_are_capped() {
    let (node, _) = node_with("max_allocations_per_ip = 18", "");
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let c = join(&node, &room, "Cy");
    let server = turn_udp_url(&a);
    let (ua, pa) = turn_credentials(&a);
    // Each Allocate from its own client socket: 16 for Ann, then her quota is full.
    for i in 0..16 {
        assert!(turn_allocate(server, &ua, &pa), "Ann's relay {i}");
    }
    assert!(!turn_allocate(server, &ua, &pa), "a 17th relay for Ann");
    // Two more from this address (Bob), then the address is at its cap, whoever asks.
    let (ub, pb) = turn_credentials(&b);
    assert!(turn_allocate(server, &ub, &pb));
    assert!(turn_allocate(server, &ub, &pb));
    let (uc, pc) = turn_credentials(&c);
    assert!(!turn_allocate(server, &uc, &pc), "over the address's cap");
    // Bob leaves: his credentials are void, though not expired.
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}/participants/{}", b.id),
        &[("Authorization", &bearer(&b.token))],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(!turn_allocate(server, &ub, &pb), "Bob left");
    // The room is deleted: nobody's credentials of it work any more.
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}"),
        &[("Authorization", &host_auth())],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let other_room = create_room(&node);
    let d = join(&node, &other_room, "Di");
    let (ud, pd) = turn_credentials(&d);
    assert!(!turn_allocate(server, &uc, &pc), "the room is gone");
    assert!(!turn_allocate(server, &ua, &pa), "the room is gone");
    // Di, at the same address, is still refused: the address holds 18 relays.
    assert!(!turn_allocate(server, &ud, &pd));
}

#[test]
fn ice_server_credentials_follow_the_configured_secret() {
    let secret = "rest-api-secret";
    let (node, _) = node_with(&format!("auth_secret = \"{secret}\""), "");
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let (username, credential) = turn_credentials(&a);
    // What any TURN REST API issuer (and coturn) computes.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(username.as_bytes());
    assert_eq!(credential, STANDARD.encode(mac.finalize().into_bytes()));
    assert!(turn_allocate(turn_udp_url(&a), &username, &credential));
}

#[test]
fn display_names_never_reach_logs_or_disk() {
    let (node, log) = node_with("", "[log]\nlevel = \"trace\"\n");
    let room = create_room(&node);
    let name = "Zebediah Quixote-Unique";
    let a = join(&node, &room, name);
    let mut ea = events(&node, &room, &a);
    ea.expect("roster");
    let b = join(&node, &room, name);
    ea.expect("joined");
    ea.expect("roster");
    http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}/participants/{}", b.id),
        &[("Authorization", &bearer(&b.token))],
        b"",
    );
    ea.expect("left");
    ea.expect("roster");
    // Nor does what they say in the chat.
    assert_eq!(chat(&node, &room, &a, "Xylophone-Secret-Plan").status, 204);
    assert_eq!(ea.expect("chat")["text"], "Xylophone-Secret-Plan");
    // A token in the query string (EventSource) stays out of the log too.
    let mut eq = SseStream::open(
        node.http,
        &format!(
            "/api/rooms/{room}/participants/{}/events?token={}",
            a.id, a.token
        ),
        &[],
    )
    .unwrap_or_else(|r| panic!("{} {}", r.status, r.body));
    eq.expect("roster");
    // The room id may be logged (the privacy terms allow it).
    assert!(log.wait_for_line(&room, Duration::from_secs(5)).is_some());
    let text = log.text();
    assert!(
        !text.contains("Zebediah"),
        "a display name in the log:\n{text}"
    );
    assert!(!text.contains(&a.token), "a token in the log");
    assert!(
        !text.contains("Xylophone"),
        "a chat message in the log:\n{text}"
    );
    // Plain lines when stderr is no terminal (journald): no colour escape codes.
    assert!(!text.contains('\x1b'), "escape codes in the log:\n{text}");
    // Nothing written under the node's directory holds it either.
    let mut dirs = vec![node.dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains("Zebediah"), "{}", path.display());
                assert!(!text.contains("Xylophone"), "{}", path.display());
            }
        }
    }
}

/// The privacy terms' logs: with `log.dir`, the day's file holds each request's client
/// IP address and room, never a display name or a token; files dated past
/// `log.retention_days` are gone after start, younger ones and other files stay.
#[test]
fn log_files_hold_ip_and_room_and_are_deleted_after_retention() {
    use confnode::date::rfc3339;
    let logs = tempfile::tempdir().expect("temp dir");
    let day = |days_ago: u64| {
        let date = rfc3339(unix_now() - days_ago * 86_400);
        format!("confnode-{}.log", &date[..10])
    };
    for name in [day(61), day(3650), day(60), day(1), "notes.txt".to_owned()] {
        std::fs::write(logs.path().join(name), "old\n").expect("write");
    }
    let extra = format!(
        "[log]\ndir = \"{}\"\nretention_days = 60\n",
        logs.path().display()
    );
    let (node, log) = node_with("", &extra);
    for gone in [day(61), day(3650)] {
        assert!(!logs.path().join(&gone).exists(), "{gone} is still there");
    }
    for kept in [day(60), day(1), "notes.txt".to_owned()] {
        assert!(logs.path().join(&kept).exists(), "{kept} was deleted");
    }
    let room = create_room(&node);
    let name = "jane.doe@example.org";
    let a = join(&node, &room, name);
    let mut ea = SseStream::open(
        node.http,
        &format!(
            "/api/rooms/{room}/participants/{}/events?token={}",
            a.id, a.token
        ),
        &[],
    )
    .unwrap_or_else(|r| panic!("{} {}", r.status, r.body));
    ea.expect("roster");
    let today = logs.path().join(day(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&today).unwrap_or_default();
        if text.contains("/events") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let join_line = text
        .lines()
        .find(|l| l.contains("POST /api/rooms/{room}/participants 201"))
        .unwrap_or_else(|| panic!("no join in the log:\n{text}"));
    assert!(join_line.contains("127.0.0.1"), "{join_line}");
    assert!(join_line.contains(&room), "{join_line}");
    assert!(text.contains("/events"), "{text}");
    for secret in [name, "jane.doe", &a.token, PASSWORD] {
        assert!(!text.contains(secret), "{secret} in the log file:\n{text}");
    }
    // Nothing goes to stderr but what precedes the logger.
    assert!(!log.text().contains(&room), "{}", log.text());
}

/// Rooms outlive the process: a room created, locked and in use when the node is killed
/// with SIGKILL is there after a restart (empty, still locked, still its host's), an
/// expired one is purged, and the store holds no host name.
#[test]
fn rooms_survive_sigkill_and_expired_ones_are_purged() {
    use confnode::store::{HostKey, RedbStore, RoomStore, StoredRoom};
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let path = dir.path().join("config.toml");
    // Fresh ports for each run: the killed node's may linger.
    let start = || {
        let (turn_port, http_port) = (free_port(), free_port());
        let config = format!(
            "[turn]\nlisten = [\"127.0.0.1:{turn_port}\"]\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\npublic_url = \"{PUBLIC_URL}\"\n\
             jwt_secret = \"{JWT_SECRET}\"\n\
             [[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{}\"\n\
             [store]\npath = \"{}\"\n",
            cheap_hash(PASSWORD),
            data.display()
        );
        std::fs::write(&path, config).expect("config");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start confnode");
        let mut node = Node::attach(child, turn_port, http_port);
        node.wait_until_ready();
        node
    };
    let mut first = start();
    let room = create_room(&first);
    let r = patch_room(&first, &room, &host_auth(), r#"{"locked":false}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    let r = patch_room(&first, &room, &host_auth(), r#"{"locked":true}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    first.kill();

    // While it is down, a room that went idle long ago appears in the store.
    let key = HostKey::load_or_create(&data).expect("host key");
    {
        let store = RedbStore::open(&data).expect("store");
        let old = StoredRoom {
            id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            host: key.hash(HOST),
            idle_since: unix_now() - 400 * 24 * 3600,
            occupied: false,
            locked: false,
        };
        store.write(&[old], &[]).expect("write");
    }

    let mut second = start();
    let v = get_room(&second, &room);
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.json()["locked"], json!(true));
    assert_eq!(v.json()["participants"], json!([]));
    assert_error(&get_room(&second, "AAAAAAAAAAAAAAAAAAAAAA"), 404);
    // Still its host's: another host may not unlock it, its host may.
    let other = bearer(&jwt(json!({ "sub": "eve", "exp": unix_now() + 600 })));
    assert_error(
        &patch_room(&second, &room, &other, r#"{"locked":false}"#),
        403,
    );
    let r = patch_room(&second, &room, &host_auth(), r#"{"locked":false}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    join(&second, &room, "Ann");
    second.kill();

    let store = RedbStore::open(&data).expect("store");
    let (rooms, unreadable) = store.load().expect("load");
    assert_eq!(unreadable, 0);
    let ids: Vec<&str> = rooms.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec![room.as_str()], "the expired room is purged");
    for entry in std::fs::read_dir(&data).expect("read dir").flatten() {
        let bytes = std::fs::read(entry.path()).expect("read");
        assert!(
            !bytes.windows(HOST.len()).any(|w| w == HOST.as_bytes()),
            "{} holds the host name",
            entry.path().display()
        );
    }
}

/// A separate web page on an origin of `http.cors_origins` may call the API from its
/// scripts (preflight answered, `Access-Control-Allow-Origin` on answers); any other
/// origin gets no CORS headers. Every API answer says nosniff, no-referrer, no-store.
#[test]
fn cors_for_the_configured_origins_and_security_headers_everywhere() {
    let page = "https://meet.example.org";
    let http_section = format!(
        "public_url = \"{PUBLIC_URL}\"\njwt_secret = \"{JWT_SECRET}\"\n\
         cors_origins = [\"{page}\"]\n"
    );
    let (node, _log) = Node::start_with_http("", &http_section, "");
    let token = bearer(&jwt(json!({ "sub": "sso", "exp": unix_now() + 600 })));
    let room = create_room_as(&node, &token).json()["room"]
        .as_str()
        .expect("room")
        .to_owned();
    let path = format!("/api/rooms/{room}/participants");
    let preflight = |origin: &str| {
        http(
            node.http,
            "OPTIONS",
            &path,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            b"",
        )
    };
    let ok = preflight(page);
    assert!(ok.status == 200 || ok.status == 204, "{}", ok.head);
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some(page)
    );
    assert!(
        ok.header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")),
        "{}",
        ok.head
    );
    let other = preflight("https://evil.example");
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{}",
        other.head
    );
    let joined = http(
        node.http,
        "POST",
        &path,
        &[("Origin", page), ("Content-Type", "application/json")],
        br#"{"display_name":"Ann"}"#,
    );
    assert_eq!(joined.status, 201, "{}", joined.body);
    assert_eq!(
        joined.header("access-control-allow-origin").as_deref(),
        Some(page)
    );
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(
            joined.header(name).as_deref(),
            Some(value),
            "{}",
            joined.head
        );
    }
    // Without cors_origins, no origin is let in.
    let plain = node_with("", "").0;
    let r = http(
        plain.http,
        "OPTIONS",
        "/api/rooms",
        &[("Origin", page), ("Access-Control-Request-Method", "POST")],
        b"",
    );
    assert_eq!(r.header("access-control-allow-origin"), None, "{}", r.head);
}

/// Drain for an upgrade (SIGUSR1): health says `draining` (503), no new room,
/// participant or allocation, those in a call stay; the node exits 0 once the last one
/// left.
#[test]
fn drain_refuses_newcomers_and_exits_when_the_last_call_ends() {
    let (mut node, _log) = node_with("", "");
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let mut ea = events(&node, &room, &a);
    ea.expect("roster");
    node.signal(libc::SIGUSR1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let health = loop {
        let h = http(node.http, "GET", "/api/health", &[], b"");
        if h.status != 200 || std::time::Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.json()["status"], json!("draining"));
    assert_error(&join_raw(&node, &room, br#"{"display_name":"Bob"}"#), 503);
    assert_error(&create_room_as(&node, &host_auth()), 503);
    let (user, password) = turn_credentials(&a);
    assert!(
        !turn_allocate(turn_udp_url(&a), &user, &password),
        "an allocation while draining"
    );
    // Ann is still in the call.
    assert_eq!(
        get_room(&node, &room).json()["participants"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        node.wait_exit(Duration::from_secs(2)),
        None,
        "left before the call ended"
    );
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}/participants/{}", a.id),
        &[("Authorization", &bearer(&a.token))],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("the node exits");
    assert!(status.success(), "{status}");
}

/// A drain stops at `node.drain_timeout_s` even with a call going on.
#[test]
fn drain_ends_at_its_timeout() {
    let (mut node, _log) = node_with("", "[node]\ndrain_timeout_s = 1\n");
    let room = create_room(&node);
    join(&node, &room, "Ann");
    node.signal(libc::SIGUSR1);
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("the node exits");
    assert!(status.success(), "{status}");
}

/// Reads from `stream` until the node closes it; how long that took, or `None` if it
/// was still open after `limit`.
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    use std::io::Read;
    let start = std::time::Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// A client that trickles its request head one byte a second, or keeps a connection
/// idle, is cut off after the 10 s header timeout; an event stream lives on past it.
#[test]
fn slow_and_idle_http_connections_are_closed_and_event_streams_stay() {
    use std::io::Write;
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let mut ea = events(&node, &room, &a);
    ea.expect("roster");

    let mut idle = std::net::TcpStream::connect(node.http).expect("connect");
    idle.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut trickle = std::net::TcpStream::connect(node.http).expect("connect");
    let trickler = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        for b in b"GET /api/health HTTP/1.1\r\nHost: a-very-slow-client\r\n".iter() {
            if trickle.write_all(&[*b]).is_err() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    });
    // The idle connection got its answer, then is closed within the timeout.
    let idle_closed = closed_within(&mut idle, Duration::from_secs(20));
    assert!(
        idle_closed.is_some_and(|t| t >= Duration::from_secs(8)),
        "idle keep-alive connection: {idle_closed:?}"
    );
    let cut = trickler.join().expect("trickler");
    assert!(
        cut.is_some_and(|t| t <= Duration::from_secs(16)),
        "the trickling client was served for {cut:?}"
    );
    // The event stream still carries events.
    join(&node, &room, "Bob");
    assert_eq!(ea.expect("joined")["display_name"], json!("Bob"));
}

/// Connections per client address are capped (`http.max_connections_per_ip`): one
/// more is closed at once and counted; when one closes, a new one is served. A request
/// head over 16 KiB is refused.
#[test]
fn http_connections_per_address_are_capped_and_heads_bounded() {
    use std::io::Write;
    let http_section = format!(
        "public_url = \"{PUBLIC_URL}\"\nmax_connections_per_ip = 4\n\
         [[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{}\"\n",
        cheap_hash(PASSWORD)
    );
    let (node, _log) = Node::start_with_http("", &http_section, "");
    // Four kept-alive connections, each shown to be served (a connection of the
    // readiness check that the node has not seen closed yet may hold a place for a
    // moment: then try again).
    let served = || {
        use std::io::Read;
        for _ in 0..50 {
            let mut s = std::net::TcpStream::connect(node.http).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ = s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 512];
            if matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200")) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no served connection");
    };
    let held: Vec<std::net::TcpStream> = (0..4).map(|_| served()).collect();
    let mut over = std::net::TcpStream::connect(node.http).expect("connect");
    let closed = closed_within(&mut over, Duration::from_secs(5));
    assert!(closed.is_some(), "a fifth connection stayed open");
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let health = loop {
        let h = http_get(node.http, "/api/health");
        if h.is_some() || std::time::Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health.map(|h| h.0), Some(200));
    assert!(node.metric("confnode_http_refused_total") >= 1.0);
    // A 20 KiB header: no answer but a closed connection (or a 4xx).
    let mut big = std::net::TcpStream::connect(node.http).expect("connect");
    let filler = "x".repeat(20 * 1024);
    let _ =
        big.write_all(format!("GET /api/health HTTP/1.1\r\nX-Big: {filler}\r\n\r\n").as_bytes());
    use std::io::Read;
    big.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
}

/// `POST /api/rooms` with Basic `authorization`, sent from the local address `from`.
fn create_room_from(node: &Node, from: std::net::IpAddr, authorization: &str) -> u16 {
    use std::io::{Read, Write};
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .expect("bind the source address");
    socket.connect(&node.http.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "POST /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// Guessing host passwords: after 10 failed logins in a minute an address gets 429
/// (`Retry-After`) without a verification, even for the right password, while a host
/// at another address logs in.
#[test]
fn failed_host_logins_are_throttled_per_address() {
    let node = node();
    let wrong = basic_auth(HOST, "not the password");
    for _ in 0..10 {
        let r = create_room_as(&node, &wrong);
        assert_error(&r, 401);
    }
    let r = create_room_as(&node, &wrong);
    assert_error(&r, 429);
    assert!(r.header("retry-after").is_some(), "{}", r.head);
    assert_error(&create_room_as(&node, &host_auth()), 429);
    let elsewhere: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    assert_eq!(create_room_from(&node, elsewhere, &host_auth()), 201);
}

#[test]
fn one_time_host_password_on_loopback_without_hosts() {
    // No [[http.hosts]], no jwt_secret, loopback: a password is printed once.
    let (node, log) = Node::start_with_http("", "", "");
    let line = log
        .wait_for_line("one-time host login", Duration::from_secs(10))
        .expect("the one-time login is printed");
    let prefix = "confnode: no [[http.hosts]] configured; one-time host login: host / ";
    let password = line
        .split_once(prefix)
        .map(|(_, p)| p.trim().to_owned())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(password.len() >= 22, "{password}");
    assert_eq!(log.text().matches("one-time host login").count(), 1);
    let r = create_room_as(&node, &basic_auth("host", &password));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_error(&create_room_as(&node, &basic_auth("host", "guess")), 401);
}

#[test]
fn a_public_http_listen_without_hosts_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let path = common::write_file(
        dir.path(),
        "config.toml",
        &format!(
            "[turn]\nlisten = [\"127.0.0.1:{}\"]\n[http]\nlisten = \"0.0.0.0:{port}\"\n",
            free_port()
        ),
    );
    let (status, out) = run_with_timeout(
        Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path())
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert!(!status.success(), "started without hosts: {out}");
    assert!(out.contains("http.hosts"), "{out}");
    // check-config says the same.
    let (status, out) = run_with_timeout(
        Command::new(BIN).arg("check-config").arg(&path),
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(out.contains("http.hosts"), "{out}");
}

#[test]
fn metrics_count_rooms_and_participants() {
    let node = node();
    let room = create_room(&node);
    let _ann = join(&node, &room, "Ann");
    let _ben = join(&node, &room, "Ben");
    let limit = Duration::from_secs(5);
    assert_eq!(node.wait_metric("confnode_rooms", limit, |v| v == 1.0), 1.0);
    assert_eq!(
        node.wait_metric("confnode_participants", limit, |v| v == 2.0),
        2.0
    );
}
