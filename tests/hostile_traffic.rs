//! Issue 12's hostile traffic on a live node. While live sessions run — coturn's
//! `turnutils_uclient` relaying to `turnutils_peer` (one session after another), a TURN
//! client of our own relaying numbered packets over a channel, and a two-party call (two
//! webrtc-rs participants, each publishing VP8 and Opus and receiving the other) — a
//! bounded storm hits the node's media port: malformed, truncated, mutated and replayed
//! STUN and TURN, ChannelData for channels nobody bound, DTLS and SRTP/SRTCP, packets
//! from spoofed 5-tuples of the live sessions (other loopback addresses and ports
//! carrying their ICE checks, TURN requests, ChannelData, DTLS and SRTP, and from the
//! very 5-tuple of each peer connection: its replayed and mutated SRTP, SRTCP and
//! DTLS), and Allocate floods with random usernames from several addresses.
//!
//! Each peer connection of the call reaches the node through a [`Tap`], a UDP hop like a
//! router on its path: the node sees the hop's address as the client's, and the hop
//! keeps copies of what the peer sent, which the storm replays (as someone on the path
//! could) from that address and from others.
//!
//! Afterwards: every uclient session and our own relay lost nothing; the call still
//! decodes both ways (what arrives after the storm is intact and continuous, and no
//! replayed or forged packet ever reached a receiver); the node's resident memory is
//! back within 10 % of what it was before; and every packet of the storm is on
//! `/metrics` under the reason it was dropped for (or was answered, where the node
//! answers). The storm is a fixed list of packets, sent no faster than the node takes
//! them in (at most `WINDOW` ahead of its receive counter), so a busy machine makes it
//! slower, never different.

mod common;
#[path = "common/peers.rs"]
mod peers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::turn::{Client, Creds, UDP, tid, transport};
use common::{
    Node, Peer, create_room, host_account, join, require_tool, run_with_timeout, uclient_totals,
};
use confnode::stun::message::{Class, Message, Writer, attr, fingerprint, method};
use peers::{Published, Rtp, Subscribed};
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::configure_rtcp_reports;
use webrtc::api::media_engine::MediaEngine;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

const HOST: &str = "storm";
const PASSWORD: &str = "a password for the storm";

/// Storm packets sent ahead of what the node's receive counter shows it took in.
const WINDOW: u64 = 256;
/// The most the storm may take, however slow the machine: a node that stops taking
/// packets in fails the test rather than hanging it.
const STORM_LIMIT: Duration = Duration::from_secs(120);

// The series the storm is judged by.
const RECEIVED: &str = "confnode_received_total{transport=\"udp\"}";
const STUN_ANSWERED: &str = "confnode_stun_answered_total{transport=\"udp\"}";
const MALFORMED: &str = "confnode_dropped_total{transport=\"udp\",reason=\"malformed\"}";
const UNROUTED: &str = "confnode_dropped_total{transport=\"udp\",reason=\"unrouted\"}";
const UNHANDLED: &str = "confnode_dropped_total{transport=\"udp\",reason=\"unhandled\"}";
const NO_ROUTE: &str = "confnode_dropped_total{transport=\"udp\",reason=\"no_route\"}";
const RATE_LIMITED: &str = "confnode_dropped_total{transport=\"udp\",reason=\"rate_limited\"}";
const SEND_FAILED: &str = "confnode_dropped_total{transport=\"udp\",reason=\"send_failed\"}";
const STUN_REPLAYED: &str = "confnode_dropped_total{transport=\"udp\",reason=\"replayed\"}";
const AUTH_FAILURES: &str = "confnode_turn_auth_failures_total";
const UNVALIDATED: &str = "confnode_sfu_dropped_total{reason=\"unvalidated\"}";
const NO_KEYS: &str = "confnode_sfu_dropped_total{reason=\"no_keys\"}";
const AUTH_FAILED: &str = "confnode_sfu_dropped_total{reason=\"auth_failed\"}";
const REPLAYED: &str = "confnode_sfu_dropped_total{reason=\"replayed\"}";
const SRTP_MALFORMED: &str = "confnode_sfu_dropped_total{reason=\"malformed\"}";
const DTLS_DROPPED: &str = "confnode_sfu_dropped_total{reason=\"dtls\"}";
const DTLS_CONNECTED: &str = "confnode_sfu_dtls_connected";
const DTLS_FAILURES: &str = "confnode_sfu_dtls_failures_total";
const PARTICIPANTS: &str = "confnode_participants";
const MEDIA_SESSIONS: &str = "confnode_media_sessions";
const PERMISSIONS: &str = "confnode_turn_permissions";
const CHANNELS: &str = "confnode_turn_channels";

/// The drop series that must have grown by exactly what the storm sent for them (the
/// rate-limited unauthenticated answers and the DTLS records are weighed with what was
/// answered instead).
const DROPS: [&str; 11] = [
    MALFORMED,
    UNROUTED,
    UNHANDLED,
    NO_ROUTE,
    STUN_REPLAYED,
    SEND_FAILED,
    UNVALIDATED,
    NO_KEYS,
    AUTH_FAILED,
    REPLAYED,
    SRTP_MALFORMED,
];

#[test]
fn a_storm_of_hostile_packets_leaves_live_sessions_whole_and_is_counted() {
    require_tool("turnutils_uclient", "coturn");
    let http_hosts = host_account(HOST, PASSWORD);
    let (node, _log) = Node::start_with_http(
        "users = { user = \"pass\" }\nallow_loopback_peers = true\n",
        &http_hosts,
        "",
    );
    let peer = Peer::start(&["127.0.0.1"]);

    let call = Call::start(&node);
    let relay = Relay::start(&node);
    let uclients = Uclients::start(&node, peer.port);
    // Everything live before the storm: media both ways, our relay's packets arriving,
    // a uclient session relaying.
    call.wait_for_media(50, Duration::from_secs(20));
    relay.wait_for_packets(20, Duration::from_secs(10));
    uclients.wait_for_a_session(Duration::from_secs(20));
    let before = Snapshot::take(&node);
    let rss_before = node.rss_kb();
    let dtls_answers_before = call.dtls_answers();

    let mut storm = Storm::prepare(&node, &call, &relay);
    let storm_started = Instant::now();
    let sent = storm.run(&node);
    let storm_ended = Instant::now();
    let answers = storm.collect_answers();
    let dtls_answers = call.dtls_answers() - dtls_answers_before;

    // The live sessions after the storm.
    let sessions = uclients.stop();
    let relayed = relay.stop();
    let decoded = call.check_after_storm();
    let after = Snapshot::take(&node);
    // What the live sessions hold once uclient is gone: our relay's permission and
    // channel, the call's sessions.
    let permissions = node.wait_metric(PERMISSIONS, Duration::from_secs(5), |v| v == 1.0);
    let channels = node.wait_metric(CHANNELS, Duration::from_secs(5), |v| v == 1.0);
    // Memory once the storm's answers and the sessions' queues have drained.
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = node.rss_kb();

    // ---- The report ----
    sent.print();
    answers.print();
    let delta = |series: &str| after.get(series) - before.get(series);
    for series in DROPS
        .iter()
        .chain(&[RATE_LIMITED, STUN_ANSWERED, AUTH_FAILURES, RECEIVED])
    {
        eprintln!(
            "{series}: +{} (expected {:?})",
            delta(series),
            sent.expected.get(*series)
        );
    }
    eprintln!(
        "{DTLS_DROPPED}: +{} and {dtls_answers} answered (the storm sent {})",
        delta(DTLS_DROPPED),
        sent.to_dtls
    );
    eprintln!(
        "storm of {} packets in {:.1} s; {} uclient sessions ({} during the storm), our \
         relay {relayed:?}; call {decoded:?}; RSS {rss_before} kB before, {rss_after} kB \
         after",
        sent.total,
        (storm_ended - storm_started).as_secs_f64(),
        sessions.len(),
        sessions
            .iter()
            .filter(|s| s.started < storm_ended && s.ended > storm_started)
            .count(),
    );

    // ---- The live sessions lost nothing ----
    for s in &sessions {
        assert!(s.failure.is_none(), "a uclient session failed: {s:?}");
    }
    assert!(
        sessions
            .iter()
            .any(|s| s.started < storm_ended && s.ended > storm_started),
        "no uclient session ran during the storm: {sessions:?}"
    );
    assert_eq!(
        relayed.arrived, relayed.sent,
        "our relay lost packets: {relayed:?}"
    );
    assert_eq!(relayed.twice, 0, "our relay's peer got packets twice");
    assert_eq!((permissions, channels), (1.0, 1.0), "permissions, channels");
    assert_eq!(after.get(DTLS_CONNECTED), 4.0, "the call's DTLS sessions");
    assert_eq!(after.get(PARTICIPANTS), 2.0, "the call's participants");
    assert_eq!(after.get(MEDIA_SESSIONS), 4.0, "the call's media sessions");
    assert_eq!(delta(DTLS_FAILURES), 0.0, "DTLS failures");

    // ---- Every packet of the storm accounted for ----
    // The live sessions drop nothing, so each drop series grew by what the storm sent
    // for it, exactly.
    // The counters can only add up if every packet reached the node: the kernel dropped
    // none on its sockets (the storm keeps within WINDOW of what the node took in).
    let kernel_drops = kernel_drops(&node);
    for series in DROPS {
        let expected = sent.expected.get(series).copied().unwrap_or(0) as f64;
        assert_eq!(
            delta(series),
            expected,
            "{series}: the storm sent {expected} for it (kernel drops on the node's \
             sockets: {kernel_drops})"
        );
    }
    // Records from a session's own address: answered with its last flight (at most once
    // per retransmission timeout, through the tap), or dropped.
    assert_eq!(
        delta(DTLS_DROPPED) as u64 + dtls_answers,
        sent.to_dtls as u64,
        "DTLS records on the sessions' own 5-tuples: {} dropped, {dtls_answers} answered",
        delta(DTLS_DROPPED)
    );
    answers.assert_as_sent(&sent, delta(RATE_LIMITED));
    assert_eq!(
        delta(AUTH_FAILURES),
        sent.wrong_credentials as f64,
        "Allocates signed with a random username: each an authentication failure"
    );
    assert!(
        delta(STUN_ANSWERED) >= sent.stun_answered as f64,
        "STUN answered: +{}, the storm alone asked for {}",
        delta(STUN_ANSWERED),
        sent.stun_answered
    );

    // ---- Memory ----
    assert!(
        rss_after <= rss_before + rss_before / 10,
        "resident memory {rss_before} kB before the storm, {rss_after} kB after"
    );
}

// ---- /metrics ----

/// Datagrams the kernel dropped on the node's UDP sockets (the drops column of
/// /proc/<pid>/net/udp for its listening port), for the failure messages.
fn kernel_drops(node: &Node) -> u64 {
    let port = format!(":{:04X} ", node.stun.port());
    std::fs::read_to_string(format!("/proc/{}/net/udp", node.pid()))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").ends_with(&port))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Every series of `/metrics` at one moment.
struct Snapshot(HashMap<String, f64>);

impl Snapshot {
    fn take(node: &Node) -> Snapshot {
        Snapshot(
            node.metrics()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("series {series} not in /metrics"))
    }
}

// ---- A hop on the path of each peer connection ----

/// A UDP hop between one webrtc-rs peer connection and the node, as a router on the path
/// would be: the peer's SDP names the hop instead of the node, the hop forwards each
/// datagram of the peer from an upstream socket of its own (so the node sees that
/// socket's address as the client's) and each answer back. It keeps copies of what the
/// peer sent for the storm to replay.
struct Tap {
    front: Arc<UdpSocket>,
    shared: Arc<TapShared>,
    thread: Option<JoinHandle<()>>,
}

struct TapShared {
    node: SocketAddr,
    stop: AtomicBool,
    /// The peer's address and the upstream socket that speaks for it.
    hops: Mutex<Vec<(SocketAddr, Arc<UdpSocket>)>>,
    heard: Mutex<Heard>,
    /// DTLS datagrams the node sent the peer.
    dtls_answers: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Copies of what a peer sent the node, by kind.
#[derive(Clone, Default)]
struct Heard {
    /// ICE checks and DTLS records, the first `KEEP` of each.
    stun: Vec<Vec<u8>>,
    dtls: Vec<Vec<u8>>,
    /// The last `KEEP` SRTP and SRTCP packets.
    srtp: VecDeque<Vec<u8>>,
    srtcp: VecDeque<Vec<u8>>,
}

const KEEP: usize = 64;

impl Heard {
    fn keep(&mut self, d: &[u8]) {
        match d {
            [0..=3, ..] if self.stun.len() < KEEP => self.stun.push(d.to_vec()),
            [20..=63, ..] if self.dtls.len() < KEEP => self.dtls.push(d.to_vec()),
            [128..=191, 192..=223, ..] => ring(&mut self.srtcp, d),
            [128..=191, ..] => ring(&mut self.srtp, d),
            _ => {}
        }
    }
}

fn ring(q: &mut VecDeque<Vec<u8>>, d: &[u8]) {
    if q.len() == KEEP {
        q.pop_front();
    }
    q.push_back(d.to_vec());
}

impl Tap {
    fn start(node: SocketAddr) -> Tap {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind tap"));
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let shared = Arc::new(TapShared {
            node,
            stop: AtomicBool::new(false),
            hops: Mutex::new(Vec::new()),
            heard: Mutex::new(Heard::default()),
            dtls_answers: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let thread = {
            let (front, shared) = (front.clone(), shared.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !shared.stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    let hop = shared.hop_for(from, &front);
                    if let Ok(mut heard) = shared.heard.lock() {
                        heard.keep(&buf[..n]);
                    }
                    let _ = hop.send_to(&buf[..n], shared.node);
                }
            })
        };
        Tap {
            front,
            shared,
            thread: Some(thread),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.front.local_addr().expect("tap address")
    }

    /// The socket the node knows as the peer (its first address, if it had several).
    fn hop(&self) -> Arc<UdpSocket> {
        let hops = self.shared.hops.lock().expect("hops");
        hops.first().expect("the peer reached the tap").1.clone()
    }

    fn dtls_answers(&self) -> u64 {
        self.shared.dtls_answers.load(Ordering::Relaxed)
    }

    fn heard(&self) -> Heard {
        self.shared.heard.lock().expect("heard").clone()
    }

    /// `sdp` of the node with its candidates replaced by the tap's address.
    fn rewrite(&self, sdp: String, node: SocketAddr) -> String {
        let ours = format!(" {} {} typ ", node.ip(), node.port());
        let tap = format!(" {} {} typ ", self.addr().ip(), self.addr().port());
        let mut out = String::new();
        let mut replaced = 0;
        for line in sdp.lines() {
            if line.starts_with("a=candidate:") {
                if !line.contains(&ours) {
                    continue; // the node's other (IPv6) candidate
                }
                out.push_str(&line.replace(&ours, &tap));
                replaced += 1;
            } else {
                out.push_str(line);
            }
            out.push_str("\r\n");
        }
        assert!(
            replaced > 0,
            "no candidate of the node at {node} in:\n{sdp}"
        );
        out
    }
}

impl TapShared {
    /// The upstream socket for the peer at `from`, made (with its thread, which sends
    /// the node's answers back through `front`) the first time it is heard.
    fn hop_for(self: &Arc<Self>, from: SocketAddr, front: &Arc<UdpSocket>) -> Arc<UdpSocket> {
        let mut hops = self.hops.lock().expect("hops");
        if let Some((_, hop)) = hops.iter().find(|(peer, _)| *peer == from) {
            return hop.clone();
        }
        let hop = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind hop"));
        hop.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        hops.push((from, hop.clone()));
        let (up, front, shared) = (hop.clone(), front.clone(), self.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !shared.stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = up.recv_from(&mut buf) {
                    if (20..=63).contains(&buf[0]) {
                        shared.dtls_answers.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = front.send_to(&buf[..n], from);
                }
            }
        });
        if let Ok(mut threads) = self.threads.lock() {
            threads.push(thread);
        }
        hop
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().expect("threads"));
        for t in threads {
            let _ = t.join();
        }
    }
}

// ---- The two-party call ----

/// Two participants, each publishing a VP8 and an Opus track and receiving the other's,
/// each of the four peer connections through a tap of its own.
struct Call {
    runtime: tokio::runtime::Runtime,
    publishers: Vec<Published>,
    receivers: Vec<Receiver>,
    /// A's and B's publishing connection, then A's and B's receiving one.
    taps: Vec<Tap>,
    stop: Arc<AtomicBool>,
}

struct Receiver {
    pc: Arc<webrtc::peer_connection::RTCPeerConnection>,
    _events: common::SseStream,
    /// Every RTP packet it got, and when.
    got: Arc<Mutex<Vec<(Instant, Rtp)>>>,
}

/// What the call's receivers got, as the test saw it.
#[derive(Debug)]
struct Decoded {
    /// RTP packets each receiver got in all.
    received: Vec<usize>,
    /// Of those, after the storm (all intact and continuous).
    after_storm: Vec<usize>,
}

/// The peers' API: webrtc-rs's sender and receiver reports (SRTCP both ways), host
/// candidates on 127.0.0.1 only (one address for each tap to stand in front of).
fn call_api() -> webrtc::api::API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry = configure_rtcp_reports(Registry::new());
    let mut settings = peers::settings();
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ip_filter(Box::new(|ip| ip == IpAddr::V4(Ipv4Addr::LOCALHOST)));
    APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build()
}

impl Call {
    fn start(node: &Node) -> Call {
        let room = create_room(node, HOST, PASSWORD);
        let people = [join(node, &room, "Ann"), join(node, &room, "Bo")];
        let taps: Vec<Tap> = (0..4).map(|_| Tap::start(node.stun)).collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let (media, http_addr) = (node.stun, node.http);
        let (publishers, receivers) = runtime.block_on(async {
            let api = call_api();
            let mut publishers = Vec::new();
            for (p, tap) in people.iter().zip(&taps) {
                let who = (room.as_str(), p.id.as_str(), p.token.as_str());
                let via = |sdp| tap.rewrite(sdp, media);
                let published =
                    peers::publish_via(&api, RTCConfiguration::default(), http_addr, who, &via)
                        .await;
                peers::drain_rtcp(&published.senders);
                publishers.push(published);
            }
            let mut receivers = Vec::new();
            for (p, tap) in people.iter().zip(&taps[2..]) {
                let who = (room.as_str(), p.id.as_str(), p.token.as_str());
                let via = |sdp| tap.rewrite(sdp, media);
                let Subscribed {
                    pc,
                    events,
                    mut rtp,
                    ..
                } = peers::subscribe_via(&api, RTCConfiguration::default(), http_addr, who, &via)
                    .await;
                let got = Arc::new(Mutex::new(Vec::new()));
                let into = got.clone();
                tokio::spawn(async move {
                    while let Some(p) = rtp.recv().await {
                        if let Ok(mut got) = into.lock() {
                            got.push((Instant::now(), p));
                        }
                    }
                });
                receivers.push(Receiver {
                    pc,
                    _events: events,
                    got,
                });
            }
            for p in &publishers {
                peers::send_media(p.video.clone(), p.audio.clone(), 60_000, stop.clone());
            }
            (publishers, receivers)
        });
        Call {
            runtime,
            publishers,
            receivers,
            taps,
            stop,
        }
    }

    /// DTLS datagrams the node sent the peer connections so far.
    fn dtls_answers(&self) -> u64 {
        self.taps.iter().map(Tap::dtls_answers).sum()
    }

    /// Waits until each receiver got `n` video packets.
    fn wait_for_media(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let videos: Vec<usize> = self
                .receivers
                .iter()
                .map(|r| {
                    r.got
                        .lock()
                        .expect("got")
                        .iter()
                        .filter(|(_, p)| p.video)
                        .count()
                })
                .collect();
            if videos.iter().all(|&v| v >= n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the call's media did not flow: video packets received {videos:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The call after the storm: every receiver gets 100 video and 50 audio packets
    /// more, intact and continuous; nothing a receiver got in the whole call was changed
    /// or came twice (a replayed packet that got through would); every peer connection
    /// is still connected.
    fn check_after_storm(&self) -> Decoded {
        let from = Instant::now();
        let deadline = from + Duration::from_secs(30);
        let mut decoded = Decoded {
            received: Vec::new(),
            after_storm: Vec::new(),
        };
        for (i, r) in self.receivers.iter().enumerate() {
            let (video, audio) = loop {
                let got = r.got.lock().expect("got").clone();
                let split = |video: bool| -> Vec<(u16, Vec<u8>)> {
                    got.iter()
                        .filter(|(at, p)| *at >= from && p.video == video)
                        .map(|(_, p)| (p.seq, p.payload.clone()))
                        .collect()
                };
                let (video, audio) = (split(true), split(false));
                if (video.len() >= 100 && audio.len() >= 50) || Instant::now() > deadline {
                    break (video, audio);
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            peers::assert_media_intact(&video, &audio);
            let got = r.got.lock().expect("got").clone();
            for video in [true, false] {
                let mut seen = std::collections::HashSet::new();
                for (_, p) in got.iter().filter(|(_, p)| p.video == video) {
                    let index = peers::index_of(&p.payload, video).expect("an index");
                    let expected = if video {
                        peers::vp8_payload(index)
                    } else {
                        peers::opus_payload(index)
                    };
                    assert_eq!(p.payload, expected, "receiver {i}: packet {index} changed");
                    assert!(
                        seen.insert(index),
                        "receiver {i}: packet {index} (video {video}) arrived twice"
                    );
                }
            }
            decoded.received.push(got.len());
            decoded.after_storm.push(video.len() + audio.len());
        }
        for (who, pc) in self
            .publishers
            .iter()
            .map(|p| &p.pc)
            .chain(self.receivers.iter().map(|r| &r.pc))
            .enumerate()
        {
            assert_eq!(
                pc.connection_state(),
                RTCPeerConnectionState::Connected,
                "peer connection {who}"
            );
        }
        decoded
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let pcs: Vec<_> = self
            .publishers
            .iter()
            .map(|p| p.pc.clone())
            .chain(self.receivers.iter().map(|r| r.pc.clone()))
            .collect();
        self.runtime.block_on(async {
            for pc in pcs {
                let _ = pc.close().await;
            }
        });
    }
}

// ---- Our own relay ----

/// A TURN client of our own on 127.0.0.1: an allocation with a permission and a channel
/// to a peer socket, over which it relays a numbered packet every 5 ms until stopped.
struct Relay {
    client: Arc<Client>,
    /// Its Allocate, CreatePermission, ChannelBind and Refresh as it sent them: signed
    /// requests for the storm to replay.
    requests: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    arrived: Arc<AtomicU64>,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<Vec<u8>>>,
}

/// The channel our relay binds.
const CHANNEL: u16 = 0x4000;

/// What our relay's peer got.
#[derive(Debug)]
struct Relayed {
    sent: u64,
    arrived: u64,
    twice: u64,
}

impl Relay {
    fn start(node: &Node) -> Relay {
        let client = Arc::new(Client::new(node.stun));
        let creds = Creds::new("user", "pass", &client.nonce());
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let to = peer.local_addr().expect("peer address");
        let mut requests = Vec::new();
        let mut request = |m: u16, attrs: common::turn::Attrs<'_>| {
            let id = tid();
            let raw = Client::build(m, &id, attrs, Some(&creds));
            let reply = client
                .exchange(&raw, &id)
                .unwrap_or_else(|| panic!("no answer to method {m:#x}"));
            assert_eq!(
                reply.class(),
                Class::Success,
                "method {m:#x}: {:?}",
                reply.error_code()
            );
            requests.push(raw);
        };
        request(method::ALLOCATE, &transport(UDP));
        request(method::CREATE_PERMISSION, &|w: &mut Writer<'_>| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, to)
        });
        request(method::CHANNEL_BIND, &|w: &mut Writer<'_>| {
            w.add_u32(attr::CHANNEL_NUMBER, u32::from(CHANNEL) << 16)?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, to)
        });
        request(method::REFRESH, &|w: &mut Writer<'_>| {
            w.add_u32(attr::LIFETIME, 600)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, arrived) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let sender = {
            let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let mut frame = vec![(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 8];
                    frame.extend_from_slice(&i.to_be_bytes());
                    frame.extend_from_slice(b"live");
                    client
                        .sock
                        .send_to(&frame, client.server)
                        .expect("send ChannelData");
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let receiver = {
            let (stop, arrived) = (stop.clone(), arrived.clone());
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let mut buf = [0u8; 64];
                let mut quiet_since = Instant::now();
                // After the stop, until nothing came for a second.
                while !stop.load(Ordering::Relaxed)
                    || quiet_since.elapsed() < Duration::from_secs(1)
                {
                    let Ok((n, _)) = peer.recv_from(&mut buf) else {
                        continue;
                    };
                    quiet_since = Instant::now();
                    let Some(i) = buf[..n]
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    else {
                        continue;
                    };
                    if times.len() <= i {
                        times.resize(i + 1, 0u8);
                    }
                    times[i] = times[i].saturating_add(1);
                    arrived.fetch_add(1, Ordering::Relaxed);
                }
                times
            })
        };
        Relay {
            client,
            requests,
            stop,
            sent,
            arrived,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    fn wait_for_packets(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.arrived.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "our relay's packets do not arrive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops sending and counts what arrived.
    fn stop(mut self) -> Relayed {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sender.take() {
            t.join().expect("relay sender");
        }
        let times = self
            .receiver
            .take()
            .map(|t| t.join().expect("relay peer"))
            .unwrap_or_default();
        Relayed {
            sent: self.sent.load(Ordering::Relaxed),
            arrived: times.iter().filter(|&&t| t > 0).count() as u64,
            twice: times.iter().filter(|&&t| t > 1).count() as u64,
        }
    }
}

// ---- coturn's uclient, one session after another ----

/// `turnutils_uclient` sessions back to back until stopped: two clients each, relaying
/// 100 messages of 120 bytes 10 ms apart to `turnutils_peer` over channels.
struct Uclients {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<Vec<UclientSession>>>,
}

#[derive(Debug)]
struct UclientSession {
    started: Instant,
    ended: Instant,
    /// Sent and received messages, lost ones.
    totals: Option<(u64, u64, u64)>,
    failure: Option<String>,
}

impl Uclients {
    fn start(node: &Node, peer_port: u16) -> Uclients {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let port = node.stun.port().to_string();
        let peer_port = peer_port.to_string();
        let thread = {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut sessions = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    sessions.push(uclient_session(&port, &peer_port));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                sessions
            })
        };
        Uclients {
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// Waits until a first session has finished.
    fn wait_for_a_session(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.done.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no uclient session finished");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lets the session under way finish; every session's outcome.
    fn stop(mut self) -> Vec<UclientSession> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("uclient sessions"))
            .unwrap_or_default()
    }
}

fn uclient_session(port: &str, peer_port: &str) -> UclientSession {
    let started = Instant::now();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-n", "100", "-m", "2", "-l", "120", "-z", "10", "-p", port])
        .args([
            "-e",
            "127.0.0.1",
            "-r",
            peer_port,
            "-u",
            "user",
            "-w",
            "pass",
        ])
        .arg("127.0.0.1")
        .stdin(Stdio::null());
    let (status, out) = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let ended = Instant::now();
    let mut session = UclientSession {
        started,
        ended,
        totals: None,
        failure: None,
    };
    if !status.success() {
        session.failure = Some(format!("exit {status}:\n{out}"));
        return session;
    }
    let t = uclient_totals(&out);
    session.totals = Some((t.sent, t.received, t.lost));
    if t.lost != 0 || t.sent < 200 || t.sent != t.received {
        session.failure = Some(format!("{t:?}:\n{out}"));
    }
    session
}

// ---- The storm ----

/// Where a storm packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sender {
    /// One of the storm's own sockets ([`SOURCES`]).
    Spoofed(usize),
    /// A tap's upstream socket: the 5-tuple of a live peer connection.
    Hop(usize),
    /// Our relay's client socket: the 5-tuple of a live allocation.
    Relay,
}

/// What the node is to do with a storm packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    /// Drop it and count it under this series.
    Dropped(&'static str),
    /// Answer it from a session's ICE agent (counted as a STUN answer), to the sender.
    IceAnswer,
    /// Answer it from TURN (a signed request it already answered once), to the sender.
    TurnAnswer,
    /// A 401 or 438 for want of valid credentials: answered, or dropped as rate_limited.
    Challenged,
    /// An Allocate signed for a random username: an authentication failure, then as
    /// `Challenged`.
    WrongCredentials,
    /// A record from a session's own address: for its DTLS endpoint.
    ToDtls,
}

struct Shot {
    category: &'static str,
    from: Sender,
    bytes: Vec<u8>,
    fate: Fate,
}

/// The storm's own sockets, by address; each sends one kind of traffic, so what comes
/// back to it can be told apart. Ports are the kernel's.
const SOURCES: [&str; 12] = [
    // Allocate floods with random usernames.
    "127.0.0.2:0",
    "127.0.0.3:0",
    "127.0.0.4:0",
    "127.0.0.5:0",
    // Our relay's signed requests, replayed from another address.
    "127.0.0.6:0",
    // Malformed, truncated and unanswerable STUN, TURN and ChannelData.
    "127.0.0.7:0",
    // The call's ICE checks, mutated.
    "127.0.0.8:0",
    // The call's ICE checks, replayed from another address.
    "127.0.0.9:0",
    // The call's DTLS and SRTP from an address no check validated.
    "127.0.0.10:0",
    // Other ports of the live sessions' own address: their ChannelData, DTLS, SRTP.
    "127.0.0.1:0",
    "127.0.0.1:0",
    "127.0.0.1:0",
];
const FLOODERS: std::ops::Range<usize> = 0..4;
const TURN_REPLAYER: usize = 4;
const GARBAGE: usize = 5;
const ICE_MUTATOR: usize = 6;
const ICE_REPLAYER: usize = 7;
const MEDIA_SPOOFER: usize = 8;
const SAME_ADDRESS: std::ops::Range<usize> = 9..12;

/// How many times over the storm sends its fixed-count categories (and replays what it
/// captured).
const SCALE: usize = 10;

/// Allocates per flooding address: more than the burst of unauthenticated answers an
/// address gets (200).
const FLOOD: usize = 300 * SCALE;

/// A small generator (xorshift64*) with a fixed seed: the same storm every run, but for
/// what the taps captured.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `min` to `min + more - 1` random bytes.
    fn some_bytes(&mut self, min: usize, more: usize) -> Vec<u8> {
        let n = min + self.below(more);
        self.bytes(n)
    }

    fn word(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
}

/// A STUN message with FINGERPRINT, its attributes written by `attrs`.
fn stun(m: u16, class: Class, attrs: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    let mut w = Writer::new(&mut buf, m, class, &tid()).expect("writer");
    attrs(&mut w);
    w.add_fingerprint().expect("FINGERPRINT");
    let n = w.finish();
    buf[..n].to_vec()
}

fn binding() -> Vec<u8> {
    stun(method::BINDING, Class::Request, |_| {})
}

fn allocate() -> Vec<u8> {
    stun(method::ALLOCATE, Class::Request, |w| {
        w.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .expect("attr")
    })
}

/// Writes FINGERPRINT again after the message (ending in one) was changed.
fn refingerprint(msg: &mut [u8]) {
    let at = msg.len() - 4;
    let crc = fingerprint(&msg[..at - 4]);
    msg[at..].copy_from_slice(&crc.to_be_bytes());
}

/// ChannelData on `channel` with `payload`.
fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = channel.to_be_bytes().to_vec();
    d.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    d.extend_from_slice(payload);
    d
}

/// A captured ICE check: a Binding request with USERNAME and MESSAGE-INTEGRITY.
fn is_check(d: &[u8]) -> bool {
    Message::parse(d).is_ok_and(|m| {
        (m.method(), m.class()) == (method::BINDING, Class::Request)
            && m.get(attr::USERNAME).is_some()
            && m.integrity_offset().is_some()
    })
}

fn nominates(d: &[u8]) -> bool {
    Message::parse(d).is_ok_and(|m| m.get(attr::USE_CANDIDATE).is_some())
}

/// The storm: its packets, its sockets, and what came back to them.
struct Storm {
    node: SocketAddr,
    sockets: Vec<UdpSocket>,
    hops: Vec<Arc<UdpSocket>>,
    relay: Arc<Client>,
    shots: Vec<Shot>,
    answers: BTreeMap<Sender, Vec<Vec<u8>>>,
}

/// What the storm sent, and so what the node is to have counted.
struct Sent {
    total: usize,
    /// Packets by category and fate.
    by_category: BTreeMap<(&'static str, Fate), usize>,
    /// Drops by series.
    expected: HashMap<&'static str, u64>,
    /// Answers due to each sender.
    answers_due: BTreeMap<Sender, usize>,
    /// Packets owed a 401/438 or a rate_limited drop, by sender.
    challenged: BTreeMap<Sender, usize>,
    wrong_credentials: usize,
    /// STUN answers the node's ICE agents owe the storm (to the storm or to peers).
    stun_answered: usize,
    to_dtls: usize,
}

impl Sent {
    fn print(&self) {
        eprintln!("the storm, by category:");
        for ((category, fate), n) in &self.by_category {
            eprintln!("  {n:5}  {category}: {fate:?}");
        }
    }
}

impl Storm {
    fn prepare(node: &Node, call: &Call, relay: &Relay) -> Storm {
        let mut rng = Rng(0x5EED_0F57_0B0B);
        let mut shots = Vec::new();
        let mut sockets = Vec::new();
        let mut nonces = Vec::new();
        for (i, source) in SOURCES.iter().enumerate() {
            let c = Client::bind(source, node.stun);
            if FLOODERS.contains(&i) {
                // The nonce a flooder signs with is the one issued to its own address.
                nonces.push(c.nonce());
            }
            let socket = socket2::Socket::from(c.sock);
            // Room for every answer the storm gets before it reads them.
            let _ = socket.set_recv_buffer_size(4 << 20);
            socket.set_nonblocking(true).expect("nonblocking");
            sockets.push(UdpSocket::from(socket));
        }
        let heard: Vec<Heard> = call.taps.iter().map(Tap::heard).collect();
        let hops = call.taps.iter().map(Tap::hop).collect();

        stun_garbage(&mut shots, &mut rng);
        allocate_flood(&mut shots, &mut rng, &nonces);
        turn_replays(&mut shots, &relay.requests);
        channel_data_without_route(&mut shots, &mut rng);
        ice_checks(&mut shots, &heard);
        media_from_elsewhere(&mut shots, &mut rng, &heard);
        media_on_own_tuple(&mut shots, &mut rng, &heard);
        // Shuffled (Fisher-Yates): categories arrive mixed, as in a real storm.
        for i in (1..shots.len()).rev() {
            shots.swap(i, rng.below(i + 1));
        }
        relay
            .client
            .sock
            .set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        Storm {
            node: node.stun,
            sockets,
            hops,
            relay: relay.client.clone(),
            shots,
            answers: BTreeMap::new(),
        }
    }

    /// Sends every shot, never more than `WINDOW` ahead of the node's receive counter.
    fn run(&mut self, node: &Node) -> Sent {
        let base = node.metric(RECEIVED);
        let deadline = Instant::now() + STORM_LIMIT;
        let mut taken = 0u64;
        let mut sent = Sent {
            total: self.shots.len(),
            by_category: BTreeMap::new(),
            expected: HashMap::new(),
            answers_due: BTreeMap::new(),
            challenged: BTreeMap::new(),
            wrong_credentials: 0,
            stun_answered: 0,
            to_dtls: 0,
        };
        for k in 0..self.shots.len() {
            while k as u64 >= taken + WINDOW {
                self.read_answers();
                taken = (node.metric(RECEIVED) - base) as u64;
                assert!(
                    Instant::now() < deadline,
                    "the node took in {taken} of the storm's first {k} packets in {STORM_LIMIT:?}"
                );
                if (k as u64) >= taken + WINDOW {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let shot = &self.shots[k];
            let socket = match shot.from {
                Sender::Spoofed(i) => &self.sockets[i],
                Sender::Hop(i) => &*self.hops[i],
                Sender::Relay => &self.relay.sock,
            };
            socket
                .send_to(&shot.bytes, self.node)
                .unwrap_or_else(|e| panic!("send {} from {:?}: {e}", shot.category, shot.from));
            sent.note(shot);
        }
        // Until the node took in the whole storm (and more, for the live traffic).
        while ((node.metric(RECEIVED) - base) as usize) < self.shots.len() {
            self.read_answers();
            assert!(
                Instant::now() < deadline,
                "the node stopped taking packets in"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    }

    /// Takes what came back to the storm's sockets and our relay's.
    fn read_answers(&mut self) {
        let mut buf = [0u8; 2048];
        for (i, s) in self.sockets.iter().enumerate() {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                self.answers
                    .entry(Sender::Spoofed(i))
                    .or_default()
                    .push(buf[..n].to_vec());
            }
        }
        while let Ok((n, _)) = self.relay.sock.recv_from(&mut buf) {
            self.answers
                .entry(Sender::Relay)
                .or_default()
                .push(buf[..n].to_vec());
        }
    }

    /// Reads answers until a second passes without one (at most 10 s).
    fn collect_answers(&mut self) -> Answers {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut count = usize::MAX;
        loop {
            self.read_answers();
            let now: usize = self.answers.values().map(Vec::len).sum();
            if now == count || Instant::now() > deadline {
                break;
            }
            count = now;
            std::thread::sleep(Duration::from_secs(1));
        }
        Answers(std::mem::take(&mut self.answers))
    }
}

impl Sent {
    fn note(&mut self, shot: &Shot) {
        *self
            .by_category
            .entry((shot.category, shot.fate))
            .or_default() += 1;
        let answered_here = !matches!(shot.from, Sender::Hop(_));
        match shot.fate {
            Fate::Dropped(series) => *self.expected.entry(series).or_default() += 1,
            Fate::IceAnswer => {
                self.stun_answered += 1;
                if answered_here {
                    *self.answers_due.entry(shot.from).or_default() += 1;
                }
            }
            Fate::TurnAnswer => *self.answers_due.entry(shot.from).or_default() += 1,
            Fate::Challenged => *self.challenged.entry(shot.from).or_default() += 1,
            Fate::WrongCredentials => {
                self.wrong_credentials += 1;
                *self.challenged.entry(shot.from).or_default() += 1;
            }
            Fate::ToDtls => self.to_dtls += 1,
        }
    }
}

/// What came back to the storm's sockets, by sender.
struct Answers(BTreeMap<Sender, Vec<Vec<u8>>>);

impl Answers {
    fn print(&self) {
        for (from, answers) in &self.0 {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for a in answers {
                let kind = match Message::parse(a) {
                    Ok(m) => {
                        let code = m
                            .get(attr::ERROR_CODE)
                            .map(|v| u16::from(v[2] & 7) * 100 + u16::from(v[3]));
                        format!("STUN {:#x} {:?} {code:?}", m.method(), m.class())
                    }
                    Err(_) => format!("not STUN (first byte {})", a.first().unwrap_or(&0)),
                };
                *kinds.entry(kind).or_default() += 1;
            }
            eprintln!("answers to {from:?}: {kinds:?}");
        }
    }

    /// Each sender got the answers due to it and nothing else: STUN only (never media);
    /// the unauthenticated answers together with the rate_limited drops make up every
    /// packet owed one.
    fn assert_as_sent(&self, sent: &Sent, rate_limited: f64) {
        let count = |from: &Sender| self.0.get(from).map_or(0, Vec::len);
        for (from, answers) in &self.0 {
            for a in answers {
                assert!(
                    Message::parse(a).is_ok(),
                    "{from:?} got a datagram that is no STUN answer: {a:?}"
                );
            }
            if !sent.challenged.contains_key(from) {
                assert_eq!(
                    answers.len(),
                    sent.answers_due.get(from).copied().unwrap_or(0),
                    "answers to {from:?}"
                );
            }
        }
        for (from, due) in &sent.answers_due {
            assert_eq!(count(from), *due, "answers to {from:?}");
        }
        let challenged: usize = sent.challenged.values().sum();
        let answered: usize = sent.challenged.keys().map(count).sum();
        assert_eq!(
            answered as f64 + rate_limited,
            challenged as f64,
            "{challenged} requests without valid credentials: {answered} answered, \
             {rate_limited} rate-limited"
        );
    }
}

fn shot(category: &'static str, from: Sender, bytes: Vec<u8>, fate: Fate) -> Shot {
    Shot {
        category,
        from,
        bytes,
        fate,
    }
}

/// Truncated, malformed and unanswerable STUN and TURN, datagrams of no protocol, and
/// Send indications nobody may send: all from an address without an allocation.
fn stun_garbage(shots: &mut Vec<Shot>, rng: &mut Rng) {
    let from = Sender::Spoofed(GARBAGE);
    let malformed = Fate::Dropped(MALFORMED);
    for i in 0..150 * SCALE {
        let whole = if i % 2 == 0 { binding() } else { allocate() };
        let cut = 1 + rng.below(whole.len() - 1);
        shots.push(shot(
            "STUN and TURN truncated",
            from,
            whole[..cut].to_vec(),
            malformed,
        ));
    }
    for i in 0..140 * SCALE {
        let mut m = match i % 7 {
            0 => binding(),
            1 => allocate(),
            // Requests without credentials that no client starts with.
            2 => stun(method::REFRESH, Class::Request, |_| {}),
            3 => stun(method::CREATE_PERMISSION, Class::Request, |_| {}),
            4 => stun(method::CHANNEL_BIND, Class::Request, |_| {}),
            // MESSAGE-INTEGRITY of the wrong length.
            5 => stun(method::BINDING, Class::Request, |w| {
                w.add(attr::MESSAGE_INTEGRITY, &[0; 12]).expect("attr")
            }),
            _ => binding(),
        };
        match i % 7 {
            // A FINGERPRINT that does not match.
            0 | 1 => *m.last_mut().expect("byte") ^= 0x01,
            2..=5 => {}
            // An attribute running past the end.
            _ => {
                m.truncate(20);
                m.extend_from_slice(&[0x80, 0x22, 0x00, 0x40, b'x', b'y', b'z', b'!']);
                m[3] = 8;
            }
        }
        shots.push(shot("STUN and TURN malformed", from, m, malformed));
    }
    for i in 0..60 * SCALE {
        let m = match i % 4 {
            // Answers arriving at the server.
            0 => stun(method::BINDING, Class::Success, |w| {
                w.add_xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:9".parse().expect("a"))
                    .expect("attr")
            }),
            1 => stun(method::BINDING, Class::Error, |w| {
                w.add_error_code(400, "").expect("attr")
            }),
            2 => stun(method::ALLOCATE, Class::Success, |_| {}),
            // A Data indication is for clients.
            _ => stun(method::DATA, Class::Indication, |_| {}),
        };
        shots.push(shot(
            "STUN answers and indications",
            from,
            m,
            Fate::Dropped(UNHANDLED),
        ));
    }
    for _ in 0..100 * SCALE {
        let mut d = rng.some_bytes(1, 200);
        d[0] = match rng.below(2) {
            0 => 4 + rng.below(16) as u8,
            _ => 192 + rng.below(64) as u8,
        };
        shots.push(shot(
            "no protocol of the media port",
            from,
            d,
            Fate::Dropped(UNROUTED),
        ));
    }
    for _ in 0..10 * SCALE {
        shots.push(shot("empty datagrams", from, Vec::new(), malformed));
    }
    for _ in 0..50 * SCALE {
        let m = stun(method::SEND, Class::Indication, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:9".parse().expect("a"))
                .expect("attr");
            w.add(attr::DATA, b"no allocation").expect("attr");
        });
        shots.push(shot(
            "Send indications without an allocation",
            from,
            m,
            Fate::Dropped(NO_ROUTE),
        ));
    }
}

/// Allocates with random usernames from each flooding address: half without
/// credentials, half signed (with the nonce issued to that address) under a random key.
fn allocate_flood(shots: &mut Vec<Shot>, rng: &mut Rng, nonces: &[Vec<u8>]) {
    for (f, nonce) in FLOODERS.zip(nonces) {
        for i in 0..FLOOD {
            let user = {
                let n = 4 + rng.below(28);
                rng.word(n)
            };
            let key = rng.bytes(16);
            let signed = i % 2 == 1;
            let m = stun(method::ALLOCATE, Class::Request, |w| {
                w.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
                    .expect("attr");
                w.add(attr::USERNAME, user.as_bytes()).expect("attr");
                if signed {
                    w.add(attr::REALM, b"confnode").expect("attr");
                    w.add(attr::NONCE, nonce).expect("attr");
                    w.add_integrity(&key).expect("attr");
                }
            });
            let fate = if signed {
                Fate::WrongCredentials
            } else {
                Fate::Challenged
            };
            shots.push(shot(
                "Allocate flood, random usernames",
                Sender::Spoofed(f),
                m,
                fate,
            ));
        }
    }
}

/// Our relay's signed requests, replayed from another address (whose nonce they do not
/// carry) and from the relay's own.
fn turn_replays(shots: &mut Vec<Shot>, requests: &[Vec<u8>]) {
    for r in requests {
        for _ in 0..30 * SCALE {
            shots.push(shot(
                "TURN requests replayed from elsewhere",
                Sender::Spoofed(TURN_REPLAYER),
                r.clone(),
                Fate::Challenged,
            ));
        }
        for _ in 0..5 * SCALE {
            shots.push(shot(
                "TURN requests replayed on their 5-tuple",
                Sender::Relay,
                r.clone(),
                Fate::TurnAnswer,
            ));
        }
    }
}

/// ChannelData nobody bound: on random channels from an address without an allocation
/// and from our relay's (which bound one channel only), on the live channels from other
/// ports of the live sessions' address; truncated ChannelData; Send indications to a
/// peer without a permission.
fn channel_data_without_route(shots: &mut Vec<Shot>, rng: &mut Rng) {
    let no_route = Fate::Dropped(NO_ROUTE);
    let payload = |rng: &mut Rng| rng.some_bytes(4, 200);
    for _ in 0..250 * SCALE {
        let channel = 0x4000 + rng.below(0x4000) as u16;
        let d = channel_data(channel, &payload(rng));
        shots.push(shot(
            "ChannelData, no allocation",
            Sender::Spoofed(GARBAGE),
            d,
            no_route,
        ));
    }
    for _ in 0..150 * SCALE {
        let channel = CHANNEL + 1 + rng.below(0x3FFF) as u16;
        let d = channel_data(channel, &payload(rng));
        shots.push(shot(
            "ChannelData, unbound channel",
            Sender::Relay,
            d,
            no_route,
        ));
    }
    for i in 0..150 * SCALE {
        let channel = CHANNEL + rng.below(16) as u16;
        let d = channel_data(channel, &payload(rng));
        let from = Sender::Spoofed(SAME_ADDRESS.start + i % SAME_ADDRESS.len());
        shots.push(shot("ChannelData, spoofed 5-tuple", from, d, no_route));
    }
    for i in 0..80 * SCALE {
        let mut d = channel_data(CHANNEL, &payload(rng));
        d.truncate(4 + rng.below(d.len() - 4));
        let from = if i % 4 == 0 {
            Sender::Relay
        } else {
            Sender::Spoofed(GARBAGE)
        };
        shots.push(shot(
            "ChannelData truncated",
            from,
            d,
            Fate::Dropped(MALFORMED),
        ));
    }
    for _ in 0..20 * SCALE {
        let d = channel_data(CHANNEL, b"")[..1 + rng.below(3)].to_vec();
        shots.push(shot(
            "ChannelData truncated",
            Sender::Spoofed(GARBAGE),
            d,
            Fate::Dropped(MALFORMED),
        ));
    }
    for i in 0..60 * SCALE {
        let complete = i % 6 != 0;
        let m = stun(method::SEND, Class::Indication, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.2:9".parse().expect("a"))
                .expect("attr");
            if complete {
                w.add(attr::DATA, b"no permission").expect("attr");
            }
        });
        let fate = if complete {
            no_route
        } else {
            Fate::Dropped(MALFORMED)
        };
        shots.push(shot(
            "Send indications, no permission",
            Sender::Relay,
            m,
            fate,
        ));
    }
}

/// The call's ICE checks (USE-CANDIDATE ones among them): mutated, replayed from
/// another address, replayed from their own.
fn ice_checks(shots: &mut Vec<Shot>, heard: &[Heard]) {
    for (t, h) in heard.iter().enumerate() {
        let checks: Vec<&Vec<u8>> = h.stun.iter().filter(|d| is_check(d)).collect();
        assert!(
            checks.iter().any(|c| nominates(c)),
            "tap {t} heard no nominating check"
        );
        for c in checks.iter().take(12) {
            let msg = Message::parse(c).expect("a check");
            let integrity = msg.integrity_offset().expect("MESSAGE-INTEGRITY");
            let username = msg
                .attributes()
                .find(|a| a.typ == attr::USERNAME)
                .expect("USERNAME")
                .offset;
            let mut forged = c.to_vec();
            forged[integrity + 4 + 7] ^= 0x20;
            refingerprint(&mut forged);
            shots.push(shot(
                "ICE checks, integrity forged",
                Sender::Spoofed(ICE_MUTATOR),
                forged,
                Fate::IceAnswer,
            ));
            let mut stranger = c.to_vec();
            stranger[username + 4] ^= 0x01;
            refingerprint(&mut stranger);
            shots.push(shot(
                "ICE checks, unknown ufrag",
                Sender::Spoofed(ICE_MUTATOR),
                stranger,
                Fate::Dropped(UNHANDLED),
            ));
            let mut broken = c.to_vec();
            broken[integrity + 4] ^= 0x80;
            shots.push(shot(
                "ICE checks, bit flipped",
                Sender::Spoofed(ICE_MUTATOR),
                broken,
                Fate::Dropped(MALFORMED),
            ));
            // A copy of a nomination would draw the session's media to the copier;
            // a copy of another check moves nothing and is answered as any valid one.
            let (category, fate) = if nominates(c) {
                (
                    "ICE nominations replayed from elsewhere",
                    Fate::Dropped(STUN_REPLAYED),
                )
            } else {
                ("ICE checks replayed from elsewhere", Fate::IceAnswer)
            };
            for _ in 0..2 * SCALE {
                shots.push(shot(
                    category,
                    Sender::Spoofed(ICE_REPLAYER),
                    c.to_vec(),
                    fate,
                ));
            }
            shots.push(shot(
                "ICE checks replayed on their 5-tuple",
                Sender::Hop(t),
                c.to_vec(),
                Fate::IceAnswer,
            ));
        }
    }
}

/// The call's DTLS records, SRTP and SRTCP (as sent, truncated, mutated) and junk of
/// both kinds, from addresses no ICE check validated.
fn media_from_elsewhere(shots: &mut Vec<Shot>, rng: &mut Rng, heard: &[Heard]) {
    let unvalidated = Fate::Dropped(UNVALIDATED);
    let mut from = {
        let mut k = 0;
        move || {
            k += 1;
            match k % 4 {
                0 => Sender::Spoofed(MEDIA_SPOOFER),
                n => Sender::Spoofed(SAME_ADDRESS.start + n - 1),
            }
        }
    };
    for h in heard {
        for d in h.dtls.iter().chain(&h.srtp).chain(&h.srtcp) {
            let category = if d[0] < 64 {
                "DTLS from an unvalidated 5-tuple"
            } else {
                "SRTP and SRTCP from an unvalidated 5-tuple"
            };
            shots.push(shot(category, from(), d.clone(), unvalidated));
            shots.push(shot(
                category,
                from(),
                d[..1 + d.len() / 2].to_vec(),
                unvalidated,
            ));
            let mut m = d.clone();
            let at = rng.below(m.len());
            m[at.max(1)] ^= 0x40;
            shots.push(shot(category, from(), m, unvalidated));
        }
    }
    for i in 0..100 * SCALE {
        let mut d = rng.some_bytes(13, 300);
        d[0] = if i % 2 == 0 {
            20 + rng.below(44) as u8
        } else {
            128 + rng.below(64) as u8
        };
        shots.push(shot("DTLS and RTP junk", from(), d, unvalidated));
    }
}

/// From each peer connection's own 5-tuple: its SRTP and SRTCP replayed, mutated and
/// truncated, and its DTLS records replayed, mutated and truncated.
fn media_on_own_tuple(shots: &mut Vec<Shot>, rng: &mut Rng, heard: &[Heard]) {
    for (t, h) in heard.iter().enumerate() {
        let from = Sender::Hop(t);
        for d in h.srtp.iter().cycle().take(SCALE * h.srtp.len()) {
            shots.push(shot(
                "SRTP replayed on its 5-tuple",
                from,
                d.clone(),
                Fate::Dropped(REPLAYED),
            ));
        }
        for (j, d) in h.srtp.iter().rev().take(30).enumerate() {
            // Ahead of what the stream will reach in this test, and changed.
            let mut m = d.clone();
            let seq = u16::from_be_bytes([m[2], m[3]]).wrapping_add(3000 + j as u16);
            m[2..4].copy_from_slice(&seq.to_be_bytes());
            let at = 12 + rng.below(m.len() - 12);
            m[at] ^= 0x10;
            shots.push(shot(
                "SRTP mutated on its 5-tuple",
                from,
                m,
                Fate::Dropped(AUTH_FAILED),
            ));
        }
        for d in h.srtp.iter().take(20).chain(h.srtcp.iter().take(20)) {
            let cut = d[..2 + rng.below(8)].to_vec();
            shots.push(shot(
                "SRTP and SRTCP truncated on their 5-tuple",
                from,
                cut,
                Fate::Dropped(SRTP_MALFORMED),
            ));
        }
        for d in h.srtcp.iter().cycle().take(SCALE * h.srtcp.len()) {
            shots.push(shot(
                "SRTCP replayed on its 5-tuple",
                from,
                d.clone(),
                Fate::Dropped(REPLAYED),
            ));
            // Changed, under an index already received: a replay all the same.
            let mut m = d.clone();
            m[9] ^= 0x04;
            shots.push(shot(
                "SRTCP mutated on its 5-tuple",
                from,
                m,
                Fate::Dropped(REPLAYED),
            ));
        }
        for d in h.dtls.iter().cycle().take(SCALE * h.dtls.len()) {
            shots.push(shot(
                "DTLS replayed on its 5-tuple",
                from,
                d.clone(),
                Fate::ToDtls,
            ));
            let mut m = d.clone();
            let last = m.len() - 1;
            m[last] ^= 0x01;
            shots.push(shot("DTLS mutated on its 5-tuple", from, m, Fate::ToDtls));
            shots.push(shot(
                "DTLS truncated on its 5-tuple",
                from,
                d[..d.len() / 2].to_vec(),
                Fate::ToDtls,
            ));
        }
    }
}
