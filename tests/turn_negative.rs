//! TURN requests that must fail, each answered with its exact ERROR-CODE, written by
//! hand with the project's own STUN writer and sent over UDP to the real binary; and an
//! unauthenticated Allocate flood that must leave no state behind.

mod common;

use common::turn::{Client, Creds, Reply, UDP, no_attrs, tid, transport};
use common::{Node, unix_now};
use confnode::stun::message::{Class, Writer, attr, method};
use confnode::turn::auth::{CHALLENGE_BURST, CHALLENGE_PER_SEC};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const TCP: u8 = 6;
const FAMILY_V6: u8 = 0x02;

const ALLOCATIONS: &str = "confnode_turn_allocations";
const AUTH_FAILURES: &str = "confnode_turn_auth_failures_total";
const PEERS_REFUSED: &str = "confnode_turn_peers_refused_total";
const QUOTA_REFUSED: &str = "confnode_turn_quota_refused_total";
const RECEIVED: &str = "confnode_received_total{transport=\"udp\"}";
const TO_PEER: &str = "confnode_turn_relayed_packets_total{direction=\"to_peer\"}";

fn start(turn: &str) -> Node {
    Node::start_with_turn(turn, "")
}

const USER: &str = "users = { user = \"pass\" }\n";

#[test]
fn wrong_password_gets_401_and_is_counted() {
    let node = start(USER);
    let c = Client::new(node.stun);
    let nonce = c.nonce();
    let wrong = Creds::new("user", "wrong", &nonce);
    let r = c
        .allocate_with(&transport(UDP), &wrong)
        .expect_error(401, "wrong password");
    // A fresh challenge to retry with, and nothing signed with a key it cannot know.
    r.expect_challenge("wrong password");
    assert_eq!(node.metric(AUTH_FAILURES), 1.0);
    // An unknown user is refused the same way.
    let stranger = Creds::new("nobody", "pass", &nonce);
    c.allocate_with(&transport(UDP), &stranger)
        .expect_error(401, "unknown user");
    assert_eq!(node.metric(AUTH_FAILURES), 2.0);
    assert_eq!(node.metric(ALLOCATIONS), 0.0);
    // The right password then works from the same socket.
    c.allocate(&Creds::new("user", "pass", &nonce));
    assert_eq!(node.metric(ALLOCATIONS), 1.0);
}

#[test]
fn expired_rest_username_gets_401() {
    // Two secrets, as while one is rotated: each makes valid passwords.
    let node = start("auth_secret = [\"n3w\", \"s3cret\"]\n");
    let c = Client::new(node.stun);
    let nonce = c.nonce();
    let now = unix_now();

    let expired = format!("{}:someid", now - 60);
    let creds = Creds::new(
        &expired,
        &confnode::turn::auth::rest_password("s3cret", &expired),
        &nonce,
    );
    c.allocate_with(&transport(UDP), &creds)
        .expect_error(401, "expired REST username")
        .expect_challenge("expired REST username");
    assert_eq!(node.metric(AUTH_FAILURES), 1.0);

    let valid = format!("{}:someid", now + 3600);
    let forged = Creds::new(
        &valid,
        &confnode::turn::auth::rest_password("other", &valid),
        &nonce,
    );
    c.allocate_with(&transport(UDP), &forged)
        .expect_error(401, "REST password from another secret");
    assert_eq!(node.metric(AUTH_FAILURES), 2.0);
    assert_eq!(node.metric(ALLOCATIONS), 0.0);

    // A valid username with either configured secret is let in.
    for secret in ["s3cret", "n3w"] {
        let c = Client::new(node.stun);
        let nonce = c.nonce();
        c.allocate(&Creds::new(
            &valid,
            &confnode::turn::auth::rest_password(secret, &valid),
            &nonce,
        ));
    }
    assert_eq!(node.metric(ALLOCATIONS), 2.0);
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_one() {
    let node = start(USER);
    let a = Client::new(node.stun);
    let b = Client::new(node.stun);
    let nonce_a = a.nonce();

    // A's nonce from B's address (another source port): stale, 438 with a new nonce.
    let creds = Creds::new("user", "pass", &nonce_a);
    let r = b
        .allocate_with(&transport(UDP), &creds)
        .expect_error(438, "nonce of another client address");
    let fresh = r.expect_challenge("438");
    assert_ne!(fresh, nonce_a, "438 carries a new nonce");

    // A nonce of the right form whose issue time is an hour old: stale too.
    let old = format!("{:016x}", unix_now() - 3600);
    let mut expired = nonce_a.clone();
    expired[..16].copy_from_slice(old.as_bytes());
    a.allocate_with(&transport(UDP), &creds.with_nonce(&expired))
        .expect_error(438, "expired nonce");
    // Stale nonces are no credential failures.
    assert_eq!(node.metric(AUTH_FAILURES), 0.0);
    assert_eq!(node.metric(ALLOCATIONS), 0.0);

    // B retries with the nonce from its 438 and gets its allocation.
    b.allocate(&creds.with_nonce(&fresh));
    assert_eq!(node.metric(ALLOCATIONS), 1.0);
}

#[test]
fn third_allocation_over_user_quota_gets_486() {
    let node = start(&format!("{USER}max_allocations_per_user = 2\n"));
    let clients: Vec<Client> = (0..3).map(|_| Client::new(node.stun)).collect();
    let creds: Vec<Creds> = clients
        .iter()
        .map(|c| Creds::new("user", "pass", &c.nonce()))
        .collect();
    clients[0].allocate(&creds[0]);
    clients[1].allocate(&creds[1]);
    clients[2]
        .allocate_with(&transport(UDP), &creds[2])
        .expect_error(486, "third allocation of one user")
        .expect_integrity(&creds[2].key, "486");
    assert_eq!(node.metric(QUOTA_REFUSED), 1.0);
    assert_eq!(node.metric(ALLOCATIONS), 2.0);

    // Deleting one frees its place in the quota.
    clients[0].delete(&creds[0]);
    assert_eq!(node.metric(ALLOCATIONS), 1.0);
    clients[2].allocate(&creds[2]);
    assert_eq!(node.metric(ALLOCATIONS), 2.0);
}

#[test]
fn second_allocate_on_same_five_tuple_gets_437() {
    let node = start(USER);
    let c = Client::new(node.stun);
    let creds = Creds::new("user", "pass", &c.nonce());

    let first_id = tid();
    let first = Client::build(method::ALLOCATE, &first_id, &transport(UDP), Some(&creds));
    let r = c.exchange(&first, &first_id).expect("Allocate answered");
    assert_eq!(r.class(), Class::Success);
    let relayed = r.xor(attr::XOR_RELAYED_ADDRESS).expect("relayed address");

    // A retransmission of the same request (same transaction id) is answered again
    // with the same allocation.
    let again = c
        .exchange(&first, &first_id)
        .expect("retransmission answered");
    assert_eq!(again.class(), Class::Success);
    assert_eq!(again.xor(attr::XOR_RELAYED_ADDRESS), Some(relayed));

    // A new Allocate on the same 5-tuple is a mismatch.
    c.allocate_with(&transport(UDP), &creds)
        .expect_error(437, "second Allocate")
        .expect_integrity(&creds.key, "437");
    assert_eq!(node.metric(ALLOCATIONS), 1.0);
}

/// A node whose own addresses are not 127.0.0.1 and ::1: it listens on 127.0.0.2 only
/// (IPv6 relays on ::1), so loopback peers meet the policy and not the rule that lets
/// the node's own media address through.
fn node_on_127_0_0_2(turn: &str) -> Node {
    Node::start_on(
        &["127.0.0.2"],
        &format!("{USER}relay_ips = [\"127.0.0.2\", \"::1\"]\n{turn}"),
        "[node]\npublic_ip = \"127.0.0.2\"\n",
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// An IPv6 allocation (REQUESTED-ADDRESS-FAMILY IPv6) for `c`.
fn allocate_v6(c: &Client, creds: &Creds) -> SocketAddr {
    let family = |w: &mut Writer<'_>| {
        w.add_u32(attr::REQUESTED_TRANSPORT, u32::from(UDP) << 24)?;
        w.add_u32(attr::REQUESTED_ADDRESS_FAMILY, u32::from(FAMILY_V6) << 24)
    };
    let r = c.allocate_with(&family, creds);
    assert_eq!(r.class(), Class::Success, "{:?}", r.error_code());
    let relayed = r.xor(attr::XOR_RELAYED_ADDRESS).expect("relayed");
    assert!(relayed.is_ipv6(), "IPv6 relay: {relayed}");
    relayed
}

fn send_indication(c: &Client, peer: SocketAddr, data: &[u8]) {
    let mut buf = [0u8; 256];
    let mut w = Writer::new(&mut buf, method::SEND, Class::Indication, &tid()).expect("writer");
    w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        .expect("peer");
    w.add(attr::DATA, data).expect("data");
    let n = w.finish();
    c.sock.send_to(&buf[..n], c.server).expect("send");
}

#[test]
fn private_and_special_peers_are_refused_403() {
    // Two documentation blocks let through, to show the policy is what refuses.
    let node = node_on_127_0_0_2("allowed_peers = [\"192.0.2.0/24\", \"2001:db8:1::/48\"]\n");
    let v4_peers = [
        "127.0.0.1:3480",
        "127.0.0.3:3480",
        "0.0.0.0:3480",
        "10.1.2.3:3480",
        "169.254.169.254:80",
        "192.168.0.1:3480",
        "172.16.0.1:3480",
        "100.64.0.1:3480",
        "224.0.0.1:3480",
        "255.255.255.255:3480",
        "198.51.100.7:3480",
    ];
    let v6_peers = [
        "[::1]:3480",
        "[::ffff:127.0.0.1]:3480",
        "[fe80::1]:3480",
        "[::ffff:10.1.2.3]:3480",
        "[::ffff:169.254.169.254]:80",
        "[::127.0.0.1]:3480",
        "[64:ff9b::a01:203]:3480",
        "[2002:a01:203::1]:3480",
        "[fc00::1]:3480",
        "[ff02::1]:3480",
        "[2001:db8::1]:3480",
        "[::]:3480",
    ];
    let mut refused = 0.0;

    // IPv4 allocation.
    let c4 = Client::new(node.stun);
    let creds4 = Creds::new("user", "pass", &c4.nonce());
    c4.allocate(&creds4);
    for peer in v4_peers {
        c4.create_permission(&[addr(peer)], &creds4)
            .expect_error(403, peer)
            .expect_integrity(&creds4.key, peer);
        refused += 1.0;
    }
    // All or nothing: an allowed peer next to a refused one installs neither.
    c4.create_permission(&[addr("192.0.2.1:9"), addr("10.1.2.3:9")], &creds4)
        .expect_error(403, "allowed and refused together");
    refused += 1.0;
    // ChannelBind is checked too.
    let bind = |w: &mut Writer<'_>| {
        w.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16)?;
        w.add_xor_address(attr::XOR_PEER_ADDRESS, addr("127.0.0.1:3480"))
    };
    c4.request(method::CHANNEL_BIND, &bind, Some(&creds4))
        .expect_error(403, "ChannelBind to 127.0.0.1")
        .expect_integrity(&creds4.key, "ChannelBind 403");
    refused += 1.0;
    assert_eq!(node.metric(PEERS_REFUSED), refused);
    // An allowed peer gets its permission.
    let ok = c4.create_permission(&[addr("192.0.2.1:9")], &creds4);
    assert_eq!(ok.class(), Class::Success, "{:?}", ok.error_code());

    // IPv6 allocation, relayed on ::1.
    let c6 = Client::new(node.stun);
    let creds6 = Creds::new("user", "pass", &c6.nonce());
    allocate_v6(&c6, &creds6);
    for peer in v6_peers {
        c6.create_permission(&[addr(peer)], &creds6)
            .expect_error(403, peer)
            .expect_integrity(&creds6.key, peer);
        refused += 1.0;
    }
    let ok = c6.create_permission(&[addr("[2001:db8:1::7]:9")], &creds6);
    assert_eq!(ok.class(), Class::Success, "{:?}", ok.error_code());
    assert_eq!(node.metric(PEERS_REFUSED), refused);

    // A Send indication to a refused loopback peer (a socket of this test) is dropped.
    let target = UdpSocket::bind("127.0.0.1:0").expect("bind target");
    target
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    send_indication(&c4, target.local_addr().expect("addr"), b"must not arrive");
    let mut got = [0u8; 64];
    assert!(
        target.recv_from(&mut got).is_err(),
        "a Send indication reached a refused peer"
    );
    assert_eq!(node.metric(TO_PEER), 0.0);
}

/// The node's own media address stays reachable through its relay (a browser forced
/// to relay still reaches the SFU), but only that address and port, not the host.
#[test]
fn own_media_address_is_reachable_but_no_other_port_of_it() {
    let node = node_on_127_0_0_2("");
    let c = Client::new(node.stun);
    let creds = Creds::new("user", "pass", &c.nonce());
    c.allocate(&creds);
    // Permissions are per IP address (RFC 8656 §9): the node's own IP gets one.
    let own = node.stun;
    let r = c.create_permission(&[own], &creds);
    assert_eq!(r.class(), Class::Success, "{:?}", r.error_code());
    // A ChannelBind names the port too: another port of the node's IP is refused.
    let bind = |w: &mut Writer<'_>| {
        w.add_u32(attr::CHANNEL_NUMBER, 0x4001 << 16)?;
        w.add_xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new(own.ip(), 9))
    };
    c.request(method::CHANNEL_BIND, &bind, Some(&creds))
        .expect_error(403, "ChannelBind to another port of the node");
    // Data to another port of that IP (a socket of this test) is dropped...
    let other = UdpSocket::bind("127.0.0.2:0").expect("bind on 127.0.0.2");
    other
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    send_indication(&c, other.local_addr().expect("addr"), b"not for this port");
    let mut got = [0u8; 64];
    assert!(
        other.recv_from(&mut got).is_err(),
        "data reached another port of the node's address"
    );
    assert_eq!(node.metric(TO_PEER), 0.0);
    // ...while data to the media port itself is relayed.
    send_indication(&c, own, b"to the node's own media port");
    let relayed = node.wait_metric(TO_PEER, Duration::from_secs(2), |v| v >= 1.0);
    assert_eq!(relayed, 1.0);
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let node = start(USER);
    let c = Client::new(node.stun);
    let unknown = |w: &mut Writer<'_>| {
        w.add_u32(attr::REQUESTED_TRANSPORT, u32::from(UDP) << 24)?;
        w.add_u32(0x7FEE, 1)
    };
    // Authentication comes first (RFC 8489 §6.3): without credentials, a challenge.
    let nonce = c
        .request(method::ALLOCATE, &unknown, None)
        .expect_error(401, "unauthenticated, unknown attribute")
        .expect_challenge("unauthenticated, unknown attribute");
    let creds = Creds::new("user", "pass", &nonce);
    let r = c
        .allocate_with(&unknown, &creds)
        .expect_error(420, "unknown comprehension-required attribute")
        .expect_integrity(&creds.key, "420");
    assert_eq!(
        r.get(attr::UNKNOWN_ATTRIBUTES).as_deref(),
        Some(&[0x7F, 0xEE][..]),
        "UNKNOWN-ATTRIBUTES lists the attribute"
    );
    assert_eq!(node.metric(ALLOCATIONS), 0.0);
    // An unknown comprehension-optional attribute is ignored.
    let optional = |w: &mut Writer<'_>| {
        w.add_u32(attr::REQUESTED_TRANSPORT, u32::from(UDP) << 24)?;
        w.add_u32(0xC0DE, 1)
    };
    let r = c.allocate_with(&optional, &creds);
    assert_eq!(r.class(), Class::Success, "{:?}", r.error_code());
}

#[test]
fn requested_transport_tcp_gets_442_and_none_gets_400() {
    let node = start(USER);
    let c = Client::new(node.stun);
    let creds = Creds::new("user", "pass", &c.nonce());
    c.allocate_with(&transport(TCP), &creds)
        .expect_error(442, "REQUESTED-TRANSPORT TCP")
        .expect_integrity(&creds.key, "442");
    c.allocate_with(&no_attrs, &creds)
        .expect_error(400, "no REQUESTED-TRANSPORT")
        .expect_integrity(&creds.key, "400");
    assert_eq!(node.metric(ALLOCATIONS), 0.0);
    c.allocate(&creds);
    assert_eq!(node.metric(ALLOCATIONS), 1.0);
}

/// 20,000 unauthenticated Allocates from four sockets: no allocation, no memory growth,
/// only a trickle of 401s (a burst, then a few per second per source address and worker);
/// and a client at another address is served normally right after.
#[test]
fn unauthenticated_allocate_flood_creates_no_state_and_is_rate_limited() {
    const REQUESTS: usize = 20_000;
    const SOCKETS: usize = 4;
    const WORKERS: u64 = 2;
    let node = Node::start_with_turn(USER, &format!("[node]\nworkers = {WORKERS}\n"));

    // Warm up (first packets, first answers), then take the baseline.
    let warm = Client::new(node.stun);
    warm.nonce();
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = node.rss_kb();
    let received_before = node.metric(RECEIVED);

    let socks: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    // Without FINGERPRINT, so a new transaction id needs no new CRC.
    let mut request = request_without_fingerprint(&Client::build(
        method::ALLOCATE,
        &tid(),
        &transport(UDP),
        None,
    ));
    let mut buf = [0u8; 1500];
    let mut answers = 0u64;
    let mut drain = |answers: &mut u64| {
        for s in &socks {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                let r = Reply {
                    raw: buf[..n].to_vec(),
                };
                r.expect_error(401, "flood answer")
                    .expect_challenge("flood");
                *answers += 1;
            }
        }
    };
    let started = Instant::now();
    for i in 0..REQUESTS {
        request[8..16].copy_from_slice(&(i as u64).to_be_bytes());
        let s = &socks[i % SOCKETS];
        if s.send_to(&request, node.stun).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if i % 200 == 199 {
            drain(&mut answers);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let flood = started.elapsed();
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        drain(&mut answers);
        std::thread::sleep(Duration::from_millis(10));
    }

    let rss_after = node.rss_kb();
    let received = node.metric(RECEIVED) - received_before;
    eprintln!(
        "flood: {REQUESTS} requests in {flood:?}, {received} received, {answers} answers, \
         RSS {rss_before} kB -> {rss_after} kB"
    );
    // The node did see the flood (the kernel did not just drop it for us).
    assert!(
        received >= REQUESTS as f64 * 0.9,
        "the node received only {received} of {REQUESTS} requests"
    );
    // Per source address and worker: a burst, then a steady trickle per second.
    let seconds = flood.as_secs() + 1;
    let burst = u64::from(CHALLENGE_BURST);
    let bound = WORKERS * (burst + u64::from(CHALLENGE_PER_SEC) * seconds);
    assert!(
        answers >= burst && answers <= bound,
        "{answers} answers to {REQUESTS} requests in {flood:?} (limit {bound})"
    );
    assert_eq!(node.metric(ALLOCATIONS), 0.0);
    assert_eq!(node.metric(AUTH_FAILURES), 0.0);
    assert!(
        rss_after <= rss_before + 4096,
        "RSS grew from {rss_before} kB to {rss_after} kB during the flood"
    );

    // Another address is not locked out.
    let other = Client::bind("127.0.0.2:0", node.stun);
    let creds = Creds::new("user", "pass", &other.nonce());
    other.allocate(&creds);
    assert_eq!(node.metric(ALLOCATIONS), 1.0);
}

/// `raw` with its FINGERPRINT attribute (the last 8 bytes) removed and the length fixed.
fn request_without_fingerprint(raw: &[u8]) -> Vec<u8> {
    let mut out = raw[..raw.len() - 8].to_vec();
    let len = (out.len() - 20) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out
}
