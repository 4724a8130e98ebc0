//! Issue 12's overload: a node whose data plane is busier than `node.overload_percent`
//! refuses new work first — Allocate answers 508, joining a room 503 with
//! `Retry-After` — while what it holds goes on: an allocation made before is refreshed
//! and relays, a participant stays in the room. When the load is gone it takes new
//! work again. The limit is set low (2 %) so that a modest, paced flood of Binding
//! requests passes it on any machine; `cargo bench --bench overload`
//! measures the curve at the default 90 % (README, "Overload").

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::turn::{Client, Creds, transport};
use common::{Node, create_room, host_account, http, join};
use confnode::stun::message::{Class, Writer, attr, method};

const HOST: &str = "host";
const PASSWORD: &str = "a password for the overload test";
/// The flood: Binding requests per second, from this many sockets, for at most this
/// long (it stops earlier when the test is done with it).
const FLOOD_PER_SECOND: u64 = 10_000;
const FLOOD_SOCKETS: usize = 8;
const FLOOD_AT_MOST: Duration = Duration::from_secs(40);

/// Paced Binding requests to `server` until `stop` is set or [`FLOOD_AT_MOST`] passed.
fn flood(server: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let sockets: Vec<UdpSocket> = (0..FLOOD_SOCKETS)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind a flood socket"))
            .collect();
        let mut request = [0u8; 20];
        Writer::new(&mut request, method::BINDING, Class::Request, &[9; 12])
            .expect("Binding request")
            .finish();
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_AT_MOST {
            // Ahead of the pace: wait a little rather than spin.
            let due = started.elapsed().as_micros() as u64 * FLOOD_PER_SECOND / 1_000_000;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            let s = &sockets[sent as usize % FLOOD_SOCKETS];
            // A full receive queue on the node's side is part of the load.
            let _ = s.send_to(&request, server);
            sent += 1;
        }
        sent
    })
}

/// Sends `data` over channel 0x4000 of `client` until `peer` gets it (a datagram may
/// be lost to a busy machine, as on any network); whether it arrived in `tries`.
fn relays(client: &Client, server: SocketAddr, peer: &UdpSocket, data: &[u8], tries: u32) -> bool {
    let mut frame = vec![0x40, 0x00, 0x00, data.len() as u8];
    frame.extend_from_slice(data);
    let mut buf = [0u8; 64];
    for _ in 0..tries {
        client
            .sock
            .send_to(&frame, server)
            .expect("send ChannelData");
        while let Ok((n, _)) = peer.recv_from(&mut buf) {
            if &buf[..n] == data {
                return true;
            }
        }
    }
    false
}

fn refresh(client: &Client, creds: &Creds) -> Option<u16> {
    let r = client.request(
        method::REFRESH,
        &|w: &mut Writer<'_>| w.add_u32(attr::LIFETIME, 600),
        Some(creds),
    );
    r.error_code()
}

fn join_status(node: &Node, room: &str) -> common::HttpResponse {
    let body = serde_json::json!({ "display_name": "Late" }).to_string();
    http(
        node.http,
        "POST",
        &format!("/api/rooms/{room}/participants"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

#[test]
fn an_overloaded_node_refuses_new_work_and_keeps_what_it_holds() {
    let http_hosts = host_account(HOST, PASSWORD);
    let (node, _log) = Node::start_with_http(
        "users = { user = \"pass\" }\nallow_loopback_peers = true\n",
        &http_hosts,
        "[node]\noverload_percent = 2\n",
    );
    node.wait_metric("confnode_overloaded", Duration::from_secs(10), |v| v == 0.0);

    // Held before the load: an allocation with a channel to a peer, a participant.
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let to = peer.local_addr().expect("peer address");
    let held = Client::new(node.stun);
    let creds = Creds::new("user", "pass", &held.nonce());
    held.allocate(&creds);
    assert_eq!(
        held.create_permission(&[to], &creds).class(),
        Class::Success
    );
    let r = held.bind_channel(0x4000, to, &creds);
    assert_eq!(
        r.class(),
        Class::Success,
        "ChannelBind: {:?}",
        r.error_code()
    );
    assert!(relays(&held, node.stun, &peer, b"before", 10));
    let room = create_room(&node, HOST, PASSWORD);
    join(&node, &room, "Early");

    let stop = Arc::new(AtomicBool::new(false));
    let flooding = flood(node.stun, stop.clone());
    node.wait_metric("confnode_overloaded", Duration::from_secs(20), |v| v == 1.0);
    eprintln!(
        "overloaded: busiest worker {} %",
        node.metric("confnode_busiest_worker_percent")
    );

    // New work is refused: an allocation with 508, a join with 503 and Retry-After.
    let late = Client::new(node.stun);
    let late_creds = Creds::new("user", "pass", &late.nonce());
    late.allocate_with(&transport(17), &late_creds)
        .expect_error(508, "Allocate while overloaded");
    let r = join_status(&node, &room);
    assert_eq!(r.status, 503, "join while overloaded: {}", r.body);
    assert!(r.header("Retry-After").is_some(), "503 without Retry-After");
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("capacity")),
        "{}",
        r.body
    );
    // What is held goes on.
    assert_eq!(refresh(&held, &creds), None, "Refresh while overloaded");
    assert!(
        relays(&held, node.stun, &peer, b"during", 50),
        "the allocation held relays nothing while overloaded"
    );
    let r = http(node.http, "GET", &format!("/api/rooms/{room}"), &[], b"");
    assert_eq!(r.json()["participants"].as_array().map(Vec::len), Some(1));
    assert!(node.metric("confnode_overload_refused_allocations_total") >= 1.0);
    assert!(node.metric("confnode_overload_refused_joins_total") >= 1.0);

    stop.store(true, Ordering::Relaxed);
    let sent = flooding.join().expect("flood thread");
    eprintln!("flood: {sent} Binding requests");
    node.wait_metric("confnode_overloaded", Duration::from_secs(20), |v| v == 0.0);

    // Calm again: new work is taken.
    let again = Client::new(node.stun);
    let again_creds = Creds::new("user", "pass", &again.nonce());
    again.allocate(&again_creds);
    assert_eq!(join_status(&node, &room).status, 201);
    assert!(relays(&held, node.stun, &peer, b"after", 10));
}
