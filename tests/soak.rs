//! Issue 12's soak: churn of everything a node holds for a while, then nothing of it
//! left. For `CONFNODE_SOAK_SECS` seconds (20 in the test command; the README's figures
//! come from 600), one thread makes TURN allocations, each with a permission and a
//! channel to a peer it relays a packet to, and deletes them; another creates rooms
//! where two participants join, open their event streams, publish (an SDP offer: a
//! media session each) and leave before the host deletes the room. Afterwards every
//! table the node reports (`/metrics`) is empty again, and open file descriptors,
//! threads are back at what they were after the first round, and resident memory did
//! not grow after the first third of the run.
//!
//! `CONFNODE_SOAK_SECS=600 cargo nextest run --test soak --no-capture` prints the
//! figures.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::turn::{Client, Creds};
use common::{Node, PUBLISH_OFFER, SseStream, basic_auth, create_room, host_account, http, join};
use confnode::stun::message::Class;

const HOST: &str = "soak";
const PASSWORD: &str = "a password for the soak";
/// Every table the node reports.
const TABLES: [&str; 6] = [
    "confnode_turn_allocations",
    "confnode_turn_permissions",
    "confnode_turn_channels",
    "confnode_rooms",
    "confnode_participants",
    "confnode_media_sessions",
];

/// What the node process holds: open file descriptors, threads, resident kB.
#[derive(Debug, Clone, Copy)]
struct Held {
    fds: usize,
    threads: u64,
    rss_kb: u64,
}

fn held(node: &Node) -> Held {
    let pid = node.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads in /proc/<pid>/status");
    Held {
        fds,
        threads,
        rss_kb: node.rss_kb(),
    }
}

/// One TURN round: allocate, permit the peer, bind a channel to it, relay one packet
/// over the channel, delete. Returns whether the peer got the packet.
fn turn_round(server: SocketAddr, peer: &UdpSocket) -> bool {
    let c = Client::new(server);
    let creds = Creds::new("user", "pass", &c.nonce());
    c.allocate(&creds);
    let to = peer.local_addr().expect("peer address");
    let r = c.create_permission(&[to], &creds);
    assert_eq!(
        r.class(),
        Class::Success,
        "CreatePermission: {:?}",
        r.error_code()
    );
    let r = c.bind_channel(0x4000, to, &creds);
    assert_eq!(
        r.class(),
        Class::Success,
        "ChannelBind: {:?}",
        r.error_code()
    );
    let data = b"soak";
    let mut frame = vec![0x40, 0x00, 0x00, data.len() as u8];
    frame.extend_from_slice(data);
    c.sock.send_to(&frame, server).expect("send ChannelData");
    let mut buf = [0u8; 64];
    let got = matches!(peer.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == data);
    c.delete(&creds);
    got
}

/// One room round: the host creates a room, two join, open their event streams and
/// publish, leave, and the host deletes the room.
fn room_round(node: &Node) {
    let host = basic_auth(HOST, PASSWORD);
    let room = create_room(node, HOST, PASSWORD);
    let mut streams = Vec::new();
    let mut people = Vec::new();
    for name in ["Ann", "Bo"] {
        let p = join(node, &room, name);
        let path = format!("/api/rooms/{room}/participants/{}", p.id);
        let auth = format!("Bearer {}", p.token);
        let mut events = SseStream::open(
            node.http,
            &format!("{path}/events"),
            &[("Authorization", &auth)],
        )
        .unwrap_or_else(|r| panic!("events: {} {}", r.status, r.body));
        events.expect("roster");
        streams.push(events);
        let r = http(
            node.http,
            "POST",
            &format!("{path}/publish"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/sdp"),
            ],
            PUBLISH_OFFER.as_bytes(),
        );
        assert_eq!(r.status, 201, "publish: {}", r.body);
        people.push((path, auth));
    }
    for (path, auth) in &people {
        let r = http(node.http, "DELETE", path, &[("Authorization", auth)], b"");
        assert_eq!(r.status, 204, "leave: {}", r.body);
    }
    drop(streams);
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}"),
        &[("Authorization", &host)],
        b"",
    );
    assert_eq!(r.status, 204, "delete room: {}", r.body);
}

/// Waits until every table is empty; panics naming the ones that are not.
fn tables_empty(node: &Node, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<(&str, f64)> = TABLES
            .iter()
            .map(|t| (*t, node.metric(t)))
            .filter(|(_, v)| *v != 0.0)
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left after the churn: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn churn_leaves_nothing_behind() {
    let secs: u64 = std::env::var("CONFNODE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let http_hosts = host_account(HOST, PASSWORD);
    let (node, _log) = Node::start_with_http(
        "users = { user = \"pass\" }\nallow_loopback_peers = true\n",
        &http_hosts,
        "",
    );
    let node = Arc::new(node);
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer socket");
    peer.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");

    // A first round of each, then what the node holds is the baseline.
    assert!(
        turn_round(node.stun, &peer),
        "the first relayed packet did not arrive"
    );
    room_round(&node);
    tables_empty(&node, Duration::from_secs(10));
    let baseline = held(&node);

    let stop = Arc::new(AtomicBool::new(false));
    let (allocations, relayed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let turn = {
        let (node, stop) = (node.clone(), stop.clone());
        let (allocations, relayed) = (allocations.clone(), relayed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let got = turn_round(node.stun, &peer);
                allocations.fetch_add(1, Ordering::Relaxed);
                relayed.fetch_add(u64::from(got), Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    let mut rooms = 0u64;
    let mut third = None;
    // Two joins per room, a room every 5 s: 24 joins a minute, under the limit in any
    // minute's window (the first round's two included).
    let every = Duration::from_secs(5);
    while started.elapsed() < Duration::from_secs(secs) {
        let round = Instant::now();
        room_round(&node);
        rooms += 1;

        if third.is_none() && started.elapsed() >= Duration::from_secs(secs / 3) {
            third = Some(held(&node));
        }
        std::thread::sleep(every.saturating_sub(round.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    turn.join().expect("the TURN churn");
    tables_empty(&node, Duration::from_secs(15));
    // Closed connections and ended threads are given a moment to go.
    std::thread::sleep(Duration::from_secs(2));
    let end = held(&node);
    let (allocations, relayed) = (
        allocations.load(Ordering::Relaxed),
        relayed.load(Ordering::Relaxed),
    );
    println!(
        "soak of {secs} s: {allocations} allocations (each with a permission, a channel and \
         a packet relayed: {relayed} arrived), {rooms} rooms with {} participants publishing; \
         held after the first round {baseline:?}, after a third of the run {third:?}, at the \
         end {end:?}",
        rooms * 2
    );
    assert!(allocations > 0 && rooms > 0, "no churn happened");
    assert_eq!(relayed, allocations, "relayed packets lost");
    assert!(
        end.fds <= baseline.fds,
        "file descriptors: {baseline:?} → {end:?}"
    );
    assert!(
        end.threads <= baseline.threads,
        "threads: {baseline:?} → {end:?}"
    );
    // Memory rises by a few MB while the allocator's arenas and the node's caches warm
    // up (about 45 s of this churn), then stays flat: from a third of the run on it
    // may not grow (a leak of 100 bytes per allocation would add 20 % in 10 minutes).
    let third = third.expect("a third of the run measured");
    assert!(
        end.rss_kb <= third.rss_kb + third.rss_kb * 8 / 100,
        "resident memory grew: {third:?} → {end:?}"
    );
}
