//! Several nodes sharing rooms through PostgreSQL (`store.url`), against a throwaway
//! cluster of Debian's `postgresql` started by each test: the store's contract holds
//! for the embedded store and the shared one alike; a room created through one node is
//! joined through the other; a node that is killed leaves placement and its rooms are
//! served by another at their next join.

mod common;

use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::{Node, NodeOutput, basic_auth, host_account, http};
use confnode::cluster::Cluster;
use confnode::store::{HostKey, RedbStore, RoomStore, StoredRoom};

const HOST: &str = "dana";
const PASSWORD: &str = "a host password";
/// Every node of a shared store signs and checks TURN credentials with this.
const TURN_SECRET: &str = "a TURN REST secret the nodes share";

/// A room that went idle `ago` seconds before now (a shared store removes rooms idle
/// longer than their time to live).
fn room(id: &str, key: &HostKey, ago: u64) -> StoredRoom {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    StoredRoom {
        id: id.to_owned(),
        host: key.hash(HOST),
        idle_since: now - ago,
        occupied: false,
        locked: false,
    }
}

fn sorted(store: &dyn RoomStore) -> Vec<StoredRoom> {
    let (mut rooms, unreadable) = store.load().expect("load");
    assert_eq!(unreadable, 0);
    rooms.sort_by(|a, b| a.id.cmp(&b.id));
    rooms
}

/// What the room API asks of any store: writes are there when read back, overwrite,
/// and removals remove; nothing else is there.
fn store_contract(store: &dyn RoomStore) {
    let key = HostKey::random();
    assert_eq!(sorted(store), vec![]);
    let a = room("a", &key, 10);
    let mut b = room("b", &key, 20);
    b.locked = true;
    b.occupied = true;
    store
        .write(&[a.clone(), b.clone(), room("c", &key, 30)], &[])
        .expect("write");
    store.write(&[], &["c".to_owned()]).expect("remove");
    assert_eq!(sorted(store), vec![a, b.clone()]);
    b.locked = false;
    b.idle_since -= 5;
    store
        .write(&[b.clone()], &["a".to_owned(), "never-there".to_owned()])
        .expect("overwrite");
    assert_eq!(sorted(store), vec![b]);
}

#[test]
fn the_store_contract_holds_for_the_embedded_and_the_shared_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    store_contract(&RedbStore::open(dir.path()).expect("redb"));
    let pg = Postgres::start();
    let a = Cluster::start(&pg.url, "http://127.0.0.1:1", vec![], 3600).expect("shared store");
    store_contract(&*a);
    // A second node's rooms are its own: it sees none of the first's.
    let b = Cluster::start(&pg.url, "http://127.0.0.1:2", vec![], 3600).expect("shared store");
    let key = HostKey::random();
    a.write(&[room("of-a", &key, 1)], &[]).expect("write");
    assert!(sorted(&*b).is_empty());
    // Nor may it remove them.
    b.write(&[], &["of-a".to_owned()]).expect("remove");
    assert_eq!(sorted(&*a).len(), 2);
}

/// A node on the shared store: its public URL is where it listens.
fn node(pg: &Postgres) -> (Node, NodeOutput) {
    let turn = format!("auth_secret = [\"{TURN_SECRET}\"]");
    let http = format!(
        "public_url = \"http://127.0.0.1:{{HTTP_PORT}}\"\n{}",
        host_account(HOST, PASSWORD)
    );
    // Keys at the start of `extra` land in the generated [store] table.
    let store = format!("url = \"{}\"\n", pg.url);
    Node::start_with_http(&turn, &http, &store)
}

fn public_url(node: &Node) -> String {
    format!("http://{}", node.http)
}

/// Waits until `node` counts `n` live nodes in the shared store.
fn wait_nodes(node: &Node, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if node.metric("confnode_cluster_nodes") == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{}: confnode_cluster_nodes stayed {} (expected {n})",
        public_url(node),
        node.metric("confnode_cluster_nodes")
    );
}

/// `POST /api/rooms` as the host through `node`.
fn post_room(node: &Node) -> common::HttpResponse {
    http(
        node.http,
        "POST",
        "/api/rooms",
        &[("Authorization", &basic_auth(HOST, PASSWORD))],
        b"",
    )
}

fn create(node: &Node) -> String {
    let r = post_room(node);
    assert_eq!(r.status, 201, "create room: {}", r.body);
    let id = r.json()["room"].as_str().expect("room").to_owned();
    assert_eq!(
        r.json()["url"].as_str(),
        Some(format!("{}/r/{id}", public_url(node)).as_str()),
        "the link names the node that was asked"
    );
    id
}

/// Joins `room` through `node`: Ok(participant) when that node serves the room, Err(the
/// node it redirects to) when another does.
fn join(node: &Node, room: &str) -> Result<String, String> {
    let path = format!("/api/rooms/{room}/participants");
    let r = http(
        node.http,
        "POST",
        &path,
        &[("Content-Type", "application/json")],
        br#"{"display_name":"Erin"}"#,
    );
    match r.status {
        201 => Ok(r.json()["participant"]
            .as_str()
            .expect("participant")
            .to_owned()),
        307 => {
            let location = r.header("Location").expect("a redirect names its target");
            let target = location
                .strip_suffix(&path)
                .unwrap_or_else(|| panic!("redirected elsewhere than the same path: {location}"));
            Err(target.to_owned())
        }
        s => panic!("join through {}: {s} {}", public_url(node), r.body),
    }
}

#[test]
fn rooms_created_through_one_node_are_served_by_either_and_move_when_a_node_dies() {
    let pg = Postgres::start();
    let (mut a, _a_log) = node(&pg);
    let (b, _b_log) = node(&pg);
    wait_nodes(&a, 2.0);
    wait_nodes(&b, 2.0);
    // Placement spreads rooms: among a few created through A, some go to B (the node
    // with fewer rooms), and each is joined through either node.
    let rooms: Vec<String> = (0..4).map(|_| create(&a)).collect();
    let mut on_b = Vec::new();
    let mut on_a = Vec::new();
    for r in &rooms {
        match join(&a, r) {
            Ok(_) => on_a.push(r.clone()),
            Err(target) => {
                assert_eq!(target, public_url(&b), "redirected to the other node");
                // Through B itself it is served; through A again, redirected there.
                join(&b, r).expect("the room's node serves it");
                on_b.push(r.clone());
            }
        }
    }
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "A: {on_a:?}, B: {on_b:?}"
    );
    for r in &on_a {
        assert_eq!(join(&b, r), Err(public_url(&a)));
    }
    // The room's state is the node's: B's room shows Erin, asked through B.
    let view = http(b.http, "GET", &format!("/api/rooms/{}", on_b[0]), &[], b"");
    assert_eq!(view.status, 200, "{}", view.body);
    assert_eq!(
        view.json()["participants"].as_array().map(Vec::len),
        Some(1)
    );
    // Through A, the same answer after a redirect.
    let via_a = http(a.http, "GET", &format!("/api/rooms/{}", on_b[0]), &[], b"");
    assert_eq!(via_a.status, 307);
    // A page on A's origin may follow the redirect to B (CORS for the live nodes).
    let preflight = http(
        b.http,
        "OPTIONS",
        &format!("/api/rooms/{}/participants", on_b[0]),
        &[
            ("Origin", &public_url(&a)),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    );
    assert_eq!(
        preflight.header("Access-Control-Allow-Origin").as_deref(),
        Some(public_url(&a).as_str()),
        "{}",
        preflight.head
    );
    let stranger = http(
        b.http,
        "OPTIONS",
        "/api/rooms",
        &[
            ("Origin", "http://stranger.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(stranger.header("Access-Control-Allow-Origin"), None);
    // An unknown room is unknown through every node.
    let missing = http(a.http, "GET", "/api/rooms/AAAAAAAAAAAAAAAAAAAAAA", &[], b"");
    assert_eq!(missing.status, 404, "{}", missing.body);
    // Made-up ids asked of a node, one database look-up each, are limited per source.
    let mut answered = 1;
    let limited = loop {
        let id = format!("{answered:0>22}");
        let r = http(a.http, "GET", &format!("/api/rooms/{id}"), &[], b"");
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 404, "{}", r.body);
        answered += 1;
        assert!(answered <= 200, "no limit on look-ups");
    };
    assert!(answered >= 100, "limited after {answered} look-ups");
    assert!(limited.header("Retry-After").is_some());

    // A is killed: once its heartbeat is old, B alone takes new rooms, and A's rooms
    // are served by B at their next join.
    a.kill();
    wait_nodes(&b, 1.0);
    for _ in 0..3 {
        let r = create(&b);
        join(&b, &r).expect("a new room lands on the live node");
    }
    for r in &on_a {
        join(&b, r).expect("a dead node's room is taken over at its next join");
    }
}

/// A room served by `node` (created and joined through it) and the join's answer.
fn room_served_by(node: &Node, other: &Node) -> (String, serde_json::Value) {
    for _ in 0..8 {
        let room = create(node);
        let r = http(
            node.http,
            "POST",
            &format!("/api/rooms/{room}/participants"),
            &[("Content-Type", "application/json")],
            br#"{"display_name":"Erin"}"#,
        );
        if r.status == 201 {
            return (room, r.json());
        }
        assert_eq!(r.status, 307, "{}", r.body);
        // Placed on the other node: the next one goes here.
        join(other, &room).expect("served by the other node");
    }
    panic!("no room was placed on {}", public_url(node));
}

/// Credentials that node A handed to a participant of one of its rooms are taken by
/// node B's TURN server, whose relay reaches A's media port (a STUN Binding through it
/// is answered by A) and no other port of A's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_one_node_relay_through_the_other_to_its_media_port_only() {
    use std::sync::Arc;
    use turn::client::{Client, ClientConfig};
    use webrtc_util::Conn;

    let pg = Postgres::start();
    let (a, _a_log) = node(&pg);
    let (b, _b_log) = node(&pg);
    wait_nodes(&a, 2.0);
    wait_nodes(&b, 2.0);
    let (_, joined) = room_served_by(&a, &b);
    let server = &joined["ice_servers"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["username"].is_string()))
        .expect("TURN credentials in the join answer");
    let (username, password) = (
        server["username"].as_str().expect("username").to_owned(),
        server["credential"]
            .as_str()
            .expect("credential")
            .to_owned(),
    );
    // B's peer policy learns A's media address from the live set (every second).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = Client::new(ClientConfig {
        stun_serv_addr: b.stun.to_string(),
        turn_serv_addr: b.stun.to_string(),
        username,
        password,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("turn client");
    client.listen().await.expect("listen");
    let relay = tokio::time::timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("allocate in time")
        .expect("B takes A's credentials");

    // A STUN Binding request to A's media port, through B's relay: A answers.
    let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    binding.extend_from_slice(b"cluster-test");
    let mut answered = false;
    for _ in 0..5 {
        relay.send_to(&binding, a.stun).await.expect("send");
        let mut buf = [0u8; 1500];
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(1), relay.recv_from(&mut buf)).await
        {
            assert_eq!(from, a.stun);
            assert!(n >= 20 && buf[..2] == [0x01, 0x01], "a Binding success");
            assert_eq!(&buf[8..20], b"cluster-test");
            answered = true;
            break;
        }
    }
    assert!(answered, "A's media port did not answer through B's relay");

    // Another UDP port on A's address is not reachable through the relay.
    let other = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    other
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let target = other.local_addr().expect("addr");
    for _ in 0..3 {
        let _ = relay.send_to(b"not for this port", target).await;
    }
    let mut buf = [0u8; 100];
    assert!(
        other.recv_from(&mut buf).is_err(),
        "B relayed to a port of A's address other than its media port"
    );
    let _ = relay.close().await;
    let _ = client.close().await;
}

/// The value of `series` with the label `node="{url}"` on `node`'s `/metrics`.
fn node_series(node: &Node, series: &str, url: &str) -> Option<f64> {
    let text = node.metrics();
    let prefix = format!("{series}{{node=\"{url}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `node`'s `series{node="{url}"}` is `want`.
fn wait_series(node: &Node, series: &str, url: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_series(node, series, url) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{series} of {url} is not {want}:\n{}",
            node.metrics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A node that drains (SIGUSR1, while a call on it goes on) leaves placement: the other
/// node's `/metrics` shows it draining, and every new room goes to the other node.
#[test]
fn a_draining_node_gets_no_new_rooms() {
    let pg = Postgres::start();
    let (a, _a_log) = node(&pg);
    let (b, _b_log) = node(&pg);
    wait_nodes(&a, 2.0);
    wait_nodes(&b, 2.0);
    // A call on A keeps it up while it drains.
    room_served_by(&a, &b);
    let a_url = public_url(&a);
    wait_series(&b, "confnode_cluster_node_rooms", &a_url, 1.0);
    assert_eq!(
        node_series(&b, "confnode_cluster_node_draining", &a_url),
        Some(0.0)
    );
    a.signal(10); // SIGUSR1
    wait_series(&b, "confnode_cluster_node_draining", &a_url, 1.0);
    // B now has more rooms than A, yet every new one is B's.
    for _ in 0..4 {
        let room = create(&b);
        join(&b, &room).expect("a new room goes to the node that does not drain");
    }
    // A refuses to make rooms itself while it drains.
    let refused = post_room(&a);
    assert_eq!(refused.status, 503);
}

/// A node whose database cannot be reached does not start, and says which key to fix.
#[test]
fn a_node_without_its_database_does_not_start() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("temp dir");
    // A loopback port nothing listens on.
    let port = common::free_port();
    let config = common::write_file(
        dir.path(),
        "config.toml",
        &format!(
            "[turn]\nlisten = [\"127.0.0.1:{}\"]\nauth_secret = \"{TURN_SECRET}\"\n\
             [http]\nlisten = \"127.0.0.1:{}\"\n\
             [store]\npath = \"{}\"\nurl = \"postgres://confnode@127.0.0.1:{port}/postgres\"\n",
            common::free_port(),
            common::free_port(),
            dir.path().join("data").display()
        ),
    );
    let (status, output) = common::run_with_timeout(
        Command::new(common::BIN).arg("--config").arg(&config),
        Duration::from_secs(30),
    );
    assert!(!status.success(), "started without its database:\n{output}");
    assert!(output.contains("store.url:"), "{output}");
}

/// A host's rooms count on every node together: 100 at most (`MAX_ROOMS_PER_HOST`),
/// made through either node and placed on both.
#[test]
fn a_hosts_rooms_count_on_every_node_together() {
    let pg = Postgres::start();
    let (a, _a_log) = node(&pg);
    let (b, _b_log) = node(&pg);
    wait_nodes(&a, 2.0);
    wait_nodes(&b, 2.0);
    let mut made = 0;
    let refused = loop {
        let through = if made % 2 == 0 { &a } else { &b };
        let r = post_room(through);
        if r.status != 201 {
            break r;
        }
        made += 1;
        assert!(made <= 200, "no limit on a host's rooms");
    };
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(made, 100);
    let a_url = public_url(&a);
    let b_url = public_url(&b);
    std::thread::sleep(Duration::from_secs(3));
    let on = |url: &str| node_series(&a, "confnode_cluster_node_rooms", url).unwrap_or(0.0);
    assert!(
        on(&a_url) > 0.0 && on(&b_url) > 0.0 && on(&a_url) + on(&b_url) == 100.0,
        "rooms on A {}, on B {}",
        on(&a_url),
        on(&b_url)
    );
}

/// While the database is away, the calls a node holds go on and what needs the
/// database is refused with a clear answer; once it is back, the node takes new rooms
/// again by itself.
#[test]
fn calls_go_on_while_the_database_is_away_and_it_is_taken_back() {
    let pg = Postgres::start();
    let (a, _a_log) = node(&pg);
    let (b, _b_log) = node(&pg);
    wait_nodes(&a, 2.0);
    let (room, joined) = room_served_by(&a, &b);
    let participant = joined["participant"].as_str().expect("participant");
    let token = joined["token"].as_str().expect("token");

    pg.stop();
    // A's room and its participant are in A's memory: the participant's calls work.
    let view = http(a.http, "GET", &format!("/api/rooms/{room}"), &[], b"");
    assert_eq!(view.status, 200, "{}", view.body);
    let pref = http(
        a.http,
        "PUT",
        &format!("/api/rooms/{room}/participants/{participant}/preferences"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        br#"{"max_height":360}"#,
    );
    assert_eq!(pref.status, 204, "{}", pref.body);
    // A new room needs the database: refused, with a JSON message, not a hang.
    let started = Instant::now();
    let refused = post_room(&a);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.json()["error"].is_string());
    assert!(started.elapsed() < Duration::from_secs(12));

    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post_room(&a);
        if r.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new room 30 s after the database came back: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_nodes(&a, 2.0);
}
