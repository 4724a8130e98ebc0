//! TURN over UDP against the real binary, driven by coturn's `turnutils_uclient` (with
//! `turnutils_peer` as the peer) and by the `turn` crate's client: every run relays
//! without loss, and `/metrics` shows the relayed packets and the allocations going away.

mod common;

use common::{Node, Peer, Totals, require_tool, run_with_timeout, uclient_totals};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const TURN_KEYS: &str = "users = { user = \"pass\" }\n\
                         auth_secret = \"s3cret\"\n\
                         allow_loopback_peers = true\n";

const ALLOCATIONS: &str = "confnode_turn_allocations";
const PERMISSIONS: &str = "confnode_turn_permissions";
const CHANNELS: &str = "confnode_turn_channels";
const TO_PEER: &str = "confnode_turn_relayed_packets_total{direction=\"to_peer\"}";
const TO_CLIENT: &str = "confnode_turn_relayed_packets_total{direction=\"to_client\"}";
const AUTH_FAILURES: &str = "confnode_turn_auth_failures_total";

/// Clients (`-m`) per uclient run.
const CLIENTS: u32 = 5;
/// Messages (`-n`) per client.
const MESSAGES: u32 = 50;

/// Runs `turnutils_uclient` against `server` (an address of `node`) with modest load and
/// `args`, then checks what a user checks: success, 0 lost, as many received as sent,
/// and on `/metrics` the relayed packets, no failed authentication, and every
/// allocation uclient deletes gone again.
fn uclient(node: &Node, server: &str, args: &[&str]) -> Totals {
    require_tool("turnutils_uclient", "coturn");
    let before_peer = node.metric(TO_PEER);
    let before_client = node.metric(TO_CLIENT);
    let (n, m) = (MESSAGES.to_string(), CLIENTS.to_string());
    let port = node.stun.port().to_string();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-n", &n, "-m", &m, "-l", "120", "-z", "5", "-p", &port])
        .args(args)
        .arg(server)
        .stdin(Stdio::null());
    let (status, out) = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let what = format!("turnutils_uclient {} {server}", args.join(" "));
    assert!(status.success(), "{what} failed ({status}):\n{out}");
    let t = uclient_totals(&out);
    assert_eq!(t.lost, 0, "{what}: lost packets:\n{out}");
    assert!(
        t.sent >= u64::from(CLIENTS * MESSAGES),
        "{what}: sent only {} messages:\n{out}",
        t.sent
    );
    assert_eq!(t.sent, t.received, "{what}: sent != received:\n{out}");

    // Every message went through a relay towards the peer and back to a client.
    let to_peer = node.metric(TO_PEER) - before_peer;
    let to_client = node.metric(TO_CLIENT) - before_client;
    assert!(
        to_peer >= t.sent as f64 && to_client >= t.received as f64,
        "{what}: relayed {to_peer} to peers and {to_client} to clients for {t:?}"
    );
    assert_eq!(node.metric(AUTH_FAILURES), 0.0, "{what}: auth failures");

    // uclient deletes its allocations (Refresh with LIFETIME 0) as it exits, and with
    // them go their permissions and channels. Only the "probe" allocation each uclient
    // session makes first is abandoned without a Refresh, as uclient does with coturn
    // too; it stays until its lifetime ends, so at most one per client remains.
    let limit = Duration::from_secs(3);
    let permissions = node.wait_metric(PERMISSIONS, limit, |v| v == 0.0);
    let channels = node.wait_metric(CHANNELS, limit, |v| v == 0.0);
    let allocations = node.metric(ALLOCATIONS);
    eprintln!(
        "{what}: {t:?}, relayed {to_peer} to peers and {to_client} to clients, \
         {allocations} probe allocations left"
    );
    assert_eq!(
        (permissions, channels),
        (0.0, 0.0),
        "{what}: permissions and channels left after the run"
    );
    assert!(
        allocations <= f64::from(CLIENTS),
        "{what}: {allocations} allocations left after the run (uclient deletes all but \
         one probe per client)"
    );
    t
}

fn node() -> Node {
    Node::start_with_turn(TURN_KEYS, "")
}

#[test]
fn uclient_udp_to_peer() {
    let peer = Peer::start(&["127.0.0.1", "::1"]);
    let node = node();
    let port = peer.port.to_string();
    uclient(
        &node,
        "127.0.0.1",
        &["-e", "127.0.0.1", "-r", &port, "-u", "user", "-w", "pass"],
    );
}

#[test]
fn uclient_client_to_client() {
    let node = node();
    uclient(&node, "127.0.0.1", &["-y", "-u", "user", "-w", "pass"]);
}

#[test]
fn uclient_send_indications() {
    let peer = Peer::start(&["127.0.0.1", "::1"]);
    let node = node();
    let port = peer.port.to_string();
    uclient(
        &node,
        "127.0.0.1",
        &[
            "-s",
            "-e",
            "127.0.0.1",
            "-r",
            &port,
            "-u",
            "user",
            "-w",
            "pass",
        ],
    );
}

#[test]
fn uclient_rest_api_secret() {
    let peer = Peer::start(&["127.0.0.1", "::1"]);
    let node = node();
    let port = peer.port.to_string();
    uclient(
        &node,
        "127.0.0.1",
        &[
            "-e",
            "127.0.0.1",
            "-r",
            &port,
            "-W",
            "s3cret",
            "-u",
            "someid",
        ],
    );
}

#[test]
fn uclient_long_term_user_over_ipv6_relay() {
    let peer = Peer::start(&["127.0.0.1", "::1"]);
    let node = node();
    let port = peer.port.to_string();
    uclient(
        &node,
        "::1",
        &["-x", "-e", "::1", "-r", &port, "-u", "user", "-w", "pass"],
    );
}

#[test]
fn uclient_dual_allocation() {
    let peer = Peer::start(&["127.0.0.1", "::1"]);
    let node = node();
    let port = peer.port.to_string();
    uclient(
        &node,
        "127.0.0.1",
        &[
            "-Z",
            "-e",
            "127.0.0.1",
            "-r",
            &port,
            "-u",
            "user",
            "-w",
            "pass",
        ],
    );
}

// ---- the `turn` crate's client ----

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

/// Allocates with the `turn` crate's client and relays between the relay and a plain
/// UDP socket on 127.0.0.1 (the peer), both ways, payloads checked byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_crate_client_relays_both_ways() {
    let node = node();
    let result = tokio::time::timeout(Duration::from_secs(20), relay_both_ways(&node)).await;
    result.expect("the turn crate's exchange did not finish within 20 s");
    // Closing the relay deleted the allocation (Refresh with LIFETIME 0).
    let left = node.wait_metric(ALLOCATIONS, Duration::from_secs(3), |v| v == 0.0);
    assert_eq!(left, 0.0, "allocation left after the client closed");
    assert!(node.metric(TO_PEER) >= 20.0 && node.metric(TO_CLIENT) >= 20.0);
}

/// A recognisable payload of `len` bytes for message `i`.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

async fn relay_both_ways(node: &Node) {
    let server = node.stun.to_string();
    let conn = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username: "user".into(),
        password: "pass".into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("turn client");
    client.listen().await.expect("listen");
    let relay = client.allocate().await.expect("allocate");
    let relay_addr = relay.local_addr().expect("relayed address");
    eprintln!("turn crate client: relayed address {relay_addr}");
    assert_eq!(
        relay_addr.ip(),
        node.stun.ip(),
        "relayed address {relay_addr}"
    );
    assert_eq!(node.metric(ALLOCATIONS), 1.0);

    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("bind peer");
    let peer_addr = peer.local_addr().expect("peer address");
    let mut buf = vec![0u8; 2048];
    // Sizes from 1 byte to 1200; the first messages go as Send/Data indications, later
    // ones over the channel the client binds in the background.
    for (i, len) in [1usize, 4, 5, 100, 1200, 3, 777, 64, 1000, 2]
        .into_iter()
        .cycle()
        .take(20)
        .enumerate()
    {
        let out = payload(i, len);
        relay
            .send_to(&out, peer_addr)
            .await
            .expect("send via relay");
        let (n, from) = recv(&peer, &mut buf).await;
        assert_eq!(from, relay_addr, "peer got data from the relayed address");
        assert_eq!(&buf[..n], &out[..], "client -> peer payload {i}");

        let back = payload(i + 1000, len);
        peer.send_to(&back, relay_addr)
            .await
            .expect("send to relay");
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
            .await
            .expect("relay -> client within 5 s")
            .expect("recv via relay");
        assert_eq!(from, peer_addr, "client sees the peer's address");
        assert_eq!(&buf[..n], &back[..], "peer -> client payload {i}");
    }
    relay.close().await.expect("close relay");
    client.close().await.expect("close client");
}

async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
    tokio::time::timeout(Duration::from_secs(5), sock.recv_from(buf))
        .await
        .expect("datagram within 5 s")
        .expect("recv")
}
