//! A real WebRTC peer (the `webrtc` crate, webrtc-rs) publishes to the node: its offer
//! is answered over HTTP, its ICE agent (a full controlling agent) connects to the
//! node's ICE-lite responder on the shared media port, its DTLS client completes the
//! handshake with the node's passive endpoint (peer connection `connected`), and the
//! SRTP it then sends (an Opus and a VP8 track) is unprotected by the node: its count of
//! received RTP packets grows, so the SRTP keys of both sides agree.
//!
//! Then a second webrtc-rs peer subscribes in the same room: it answers the offer the
//! node sends on its event stream, connects, and the RTP payloads the publisher sends
//! (VP8 and Opus) arrive at it intact and in order, with continuous sequence numbers.
//!
//! The RTCP around that media, as the webrtc-rs peers see it: a subscriber's PLI reaches
//! the publisher as a keyframe request, its NACK is answered by the node from its cache
//! (in RTX form), the publisher gets receiver reports and transport-cc feedback, and the
//! subscriber gets sender reports.

mod common;
#[path = "common/peers.rs"]
mod peers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Node, http, http_get, metric_value};
use peers::{
    Rtp, assert_media_intact, collect_media, drain_rtcp, index_of, publish, send_media,
    sender_ssrc, set_local_gathered, subscribe, wait_connected, webrtc_api, webrtc_api_with,
};
use serde_json::json;
use tokio::sync::mpsc;
use webrtc::api::APIBuilder;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::interceptor::mock::mock_builder::MockBuilder;
use webrtc::interceptor::mock::mock_interceptor::{BindRemoteStreamFn, MockInterceptor};
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{Interceptor, InterceptorBuilder, RTPReader};
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;

const HOST: &str = "carol";
const PASSWORD: &str = "correct horse battery";

fn node() -> Node {
    let params = argon2::Params::new(8, 1, 1, None).expect("params");
    let hash = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string();
    let http = format!("[[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{hash}\"\n");
    Node::start_with_http("", &http, "").0
}

/// Creates a room and joins it: (room, participant, token).
fn join(node: &Node) -> (String, String, String) {
    let auth = format!("Basic {}", STANDARD.encode(format!("{HOST}:{PASSWORD}")));
    let r = http(
        node.http,
        "POST",
        "/api/rooms",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let room = r.json()["room"].as_str().expect("room").to_owned();
    let body = json!({ "display_name": "Rusty" }).to_string();
    let r = http(
        node.http,
        "POST",
        &format!("/api/rooms/{room}/participants"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    (
        room,
        v["participant"].as_str().expect("id").to_owned(),
        v["token"].as_str().expect("token").to_owned(),
    )
}

const RTP_RECEIVED: &str = "confnode_sfu_received_packets_total{kind=\"rtp\"}";
const DTLS_CONNECTED: &str = "confnode_sfu_dtls_connected";
const AUTH_FAILED: &str = "confnode_sfu_dropped_total{reason=\"auth_failed\"}";
const FORWARDED: &str = "confnode_sfu_forwarded_packets_total";

/// One series of the node's /metrics, read off the async runtime.
async fn metric(addr: std::net::SocketAddr, series: &'static str) -> f64 {
    tokio::task::spawn_blocking(move || {
        let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        metric_value(&body, series)
    })
    .await
    .expect("metrics")
}

/// Writes samples with dummy payloads to `track` every `every` until `stop` is set.
fn send_samples(
    track: Arc<TrackLocalStaticSample>,
    every: Duration,
    size: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut n = 0u8;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            n = n.wrapping_add(1);
            let sample = Sample {
                data: vec![n; size].into(),
                duration: every,
                ..Default::default()
            };
            let _ = track.write_sample(&sample).await;
        }
    })
}

#[test]
fn a_webrtc_rs_publisher_connects_and_its_srtp_is_received() {
    let node = node();
    let (room, participant, token) = join(&node);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut media = MediaEngine::default();
        media.register_default_codecs().expect("codecs");
        let mut settings = SettingEngine::default();
        // The node listens on loopback only.
        settings.set_include_loopback_candidate(true);
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .build();
        let pc = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .expect("peer connection"),
        );
        let mut tracks = Vec::new();
        for (mime, id) in [(MIME_TYPE_OPUS, "audio"), (MIME_TYPE_VP8, "video")] {
            let track = Arc::new(TrackLocalStaticSample::new(
                RTCRtpCodecCapability {
                    mime_type: mime.to_owned(),
                    ..Default::default()
                },
                id.to_owned(),
                "stream".to_owned(),
            ));
            pc.add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
                .await
                .expect("add track");
            tracks.push(track);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            let _ = tx.send(state);
            Box::pin(async {})
        }));
        let offer = pc.create_offer(None).await.expect("offer");
        let offer = set_local_gathered(&pc, offer).await;

        let http_addr = node.http;
        let path = format!("/api/rooms/{room}/participants/{participant}/publish");
        let bearer = format!("Bearer {token}");
        let r = tokio::task::spawn_blocking(move || {
            http(
                http_addr,
                "POST",
                &path,
                &[
                    ("Content-Type", "application/sdp"),
                    ("Authorization", &bearer),
                ],
                offer.as_bytes(),
            )
        })
        .await
        .expect("publish");
        assert_eq!(r.status, 201, "{}", r.body);
        let answer = RTCSessionDescription::answer(r.body.clone()).expect("answer");
        pc.set_remote_description(answer)
            .await
            .unwrap_or_else(|e| panic!("remote description: {e}\n{}", r.body));

        // ICE and DTLS.
        wait_connected(&mut rx, "publisher").await;
        assert_eq!(metric(http_addr, DTLS_CONNECTED).await, 1.0);
        let before = metric(http_addr, RTP_RECEIVED).await;

        // A few seconds of Opus (20 ms frames) and VP8 (30 fps) with dummy payloads.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let senders = [
            send_samples(
                tracks[0].clone(),
                Duration::from_millis(20),
                80,
                stop.clone(),
            ),
            send_samples(
                tracks[1].clone(),
                Duration::from_millis(33),
                1000,
                stop.clone(),
            ),
        ];
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in senders {
            let _ = s.await;
        }
        // Let the last packets land.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = metric(http_addr, RTP_RECEIVED).await;
        let auth_failed = metric(http_addr, AUTH_FAILED).await;
        let _ = pc.close().await;
        // ~150 audio and ~90 video packets were sent; a loaded machine may lose a few.
        assert!(
            after - before >= 100.0,
            "RTP packets unprotected by the node: {before} before, {after} after"
        );
        assert_eq!(auth_failed, 0.0, "SRTP packets that failed authentication");
    });
}

#[test]
fn rtp_from_a_webrtc_rs_publisher_reaches_a_webrtc_rs_subscriber_in_order() {
    let node = node();
    let (room, publisher, pub_token) = join(&node);
    let common::Joined {
        id: subscriber,
        token: sub_token,
        ..
    } = common::join(&node, &room, "Subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let http_addr = node.http;
        let api = webrtc_api();
        let config = RTCConfiguration::default;

        let p = publish(&api, config(), http_addr, &room, &publisher, &pub_token).await;
        // Keyframe requests from the node arrive at the senders; they are read and
        // ignored (every VP8 packet of this test is a key frame).
        drain_rtcp(&p.senders);

        let mut s = subscribe(&api, config(), http_addr, &room, &subscriber, &sub_token).await;
        assert_eq!(s.offer.matches("m=video").count(), 1, "{}", s.offer);
        assert_eq!(s.offer.matches("m=audio").count(), 1, "{}", s.offer);
        assert!(
            s.offer.contains(&format!("a=msid:{publisher} ")),
            "the publisher's id is the stream id: {}",
            s.offer
        );

        // Send until the subscriber has 100 video packets (at most 10 s).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sending = send_media(p.video.clone(), p.audio.clone(), 500, stop.clone());
        let (video, audio) = collect_media(&mut s.rtp, Duration::from_secs(10)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sending.await;
        let forwarded = metric(http_addr, FORWARDED).await;
        assert!(
            forwarded >= (video.len() + audio.len()) as f64,
            "{forwarded} forwarded, {} + {} received",
            video.len(),
            audio.len()
        );
        let _ = s.pc.close().await;
        let _ = p.pc.close().await;
        drop(s.events);

        assert_media_intact(&video, &audio);
    });
}

// ---- Forced relay: both peers reach the SFU through the node's own TURN ----

const INTERNAL_TO_PEER: &str = "confnode_turn_relay_internal_total{direction=\"to_peer\"}";
const INTERNAL_TO_CLIENT: &str = "confnode_turn_relay_internal_total{direction=\"to_client\"}";
const HAIRPIN: &str = "confnode_turn_relay_hairpin_total";
const RELAYED_TO_PEER: &str = "confnode_turn_relayed_packets_total{direction=\"to_peer\"}";
const RELAYED_TO_CLIENT: &str = "confnode_turn_relayed_packets_total{direction=\"to_client\"}";

/// A node like `node()` with `workers` data-plane workers.
fn node_with_workers(workers: usize) -> Node {
    let params = argon2::Params::new(8, 1, 1, None).expect("params");
    let hash = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string();
    let http = format!("[[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{hash}\"\n");
    Node::start_with_http("", &http, &format!("[node]\nworkers = {workers}\n")).0
}

/// Joins `room` as `name`: (participant, token, the `relay_ice_servers` of the answer,
/// for a peer connection that forces the relay).
fn join_with_ice_servers(
    node: &Node,
    room: &str,
    name: &str,
) -> (
    String,
    String,
    Vec<webrtc::ice_transport::ice_server::RTCIceServer>,
) {
    let body = json!({ "display_name": name }).to_string();
    let r = http(
        node.http,
        "POST",
        &format!("/api/rooms/{room}/participants"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let servers = v["relay_ice_servers"]
        .as_array()
        .expect("relay_ice_servers")
        .iter()
        .map(|s| webrtc::ice_transport::ice_server::RTCIceServer {
            urls: s["urls"]
                .as_array()
                .expect("urls")
                .iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect(),
            username: s["username"].as_str().unwrap_or_default().to_owned(),
            credential: s["credential"].as_str().unwrap_or_default().to_owned(),
        })
        .collect::<Vec<_>>();
    assert!(
        servers
            .iter()
            .flat_map(|s| &s.urls)
            .any(|u| u.starts_with("turn:") && u.ends_with("?transport=udp")),
        "no TURN over UDP in {}",
        r.body
    );
    (
        v["participant"].as_str().expect("id").to_owned(),
        v["token"].as_str().expect("token").to_owned(),
        servers,
    )
}

/// Forced relay (`iceTransportPolicy: "relay"`), as a browser with `relay=1` does.
fn relay_only(
    ice_servers: Vec<webrtc::ice_transport::ice_server::RTCIceServer>,
) -> RTCConfiguration {
    RTCConfiguration {
        ice_servers,
        ice_transport_policy:
            webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy::Relay,
        ..Default::default()
    }
}

/// Asserts that the peer connection's selected candidate pair is relay on our side.
async fn assert_relayed(pc: &webrtc::peer_connection::RTCPeerConnection, who: &str) {
    let pair = pc
        .dtls_transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .unwrap_or_else(|| panic!("{who}: no selected candidate pair"));
    assert_eq!(
        pair.local.typ,
        webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType::Relay,
        "{who}: selected pair {pair}"
    );
}

/// What `relayed_publisher_to_subscriber` saw: the RTP payloads the subscriber got, by
/// kind, as (sequence number, payload); and the node's /metrics after both closed.
struct RelayedRun {
    video: Vec<(u16, Vec<u8>)>,
    audio: Vec<(u16, Vec<u8>)>,
    metrics: String,
}

/// The flow of `rtp_from_a_webrtc_rs_publisher_reaches_a_webrtc_rs_subscriber_in_order`
/// with both peers forced through the node's TURN, on a node with `workers` workers.
fn relayed_publisher_to_subscriber(workers: usize) -> RelayedRun {
    let node = node_with_workers(workers);
    let (room, _, _) = join(&node);
    let (publisher, pub_token, pub_ice) = join_with_ice_servers(&node, &room, "Publisher");
    let (subscriber, sub_token, sub_ice) = join_with_ice_servers(&node, &room, "Subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let http_addr = node.http;
        let api = webrtc_api();

        let p = publish(
            &api,
            relay_only(pub_ice),
            http_addr,
            &room,
            &publisher,
            &pub_token,
        )
        .await;
        drain_rtcp(&p.senders);
        let offer = p.pc.local_description().await.expect("offer sdp").sdp;
        assert!(
            offer.contains(" typ relay") && !offer.contains(" typ host"),
            "relay candidates only: {offer}"
        );
        assert_relayed(&p.pc, "publisher").await;

        let mut s = subscribe(
            &api,
            relay_only(sub_ice),
            http_addr,
            &room,
            &subscriber,
            &sub_token,
        )
        .await;
        assert_relayed(&s.pc, "subscriber").await;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sending = send_media(p.video.clone(), p.audio.clone(), 500, stop.clone());
        let (video, audio) = collect_media(&mut s.rtp, Duration::from_secs(10)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sending.await;
        let _ = s.pc.close().await;
        let _ = p.pc.close().await;
        drop(s.events);
        // Nothing moves any more: the counters are read at rest.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let metrics = tokio::task::spawn_blocking(move || {
            let (status, body) = http_get(http_addr, "/metrics").expect("GET /metrics");
            assert_eq!(status, 200);
            body
        })
        .await
        .expect("metrics");
        RelayedRun {
            video,
            audio,
            metrics,
        }
    })
}

/// The payloads arrived intact, in order, with continuous sequence numbers.
fn assert_intact_in_order(run: &RelayedRun) {
    for line in run
        .metrics
        .lines()
        .filter(|l| l.starts_with("confnode_turn_relay") || l.starts_with("confnode_sfu_forwarded"))
    {
        eprintln!("{line}");
    }
    assert_media_intact(&run.video, &run.audio);
}

#[test]
fn relay_only_peers_reach_the_sfu_through_the_nodes_turn_in_process() {
    // One worker holds both allocations and both sessions: every packet between the
    // relays and the media port is handed over in the process.
    let run = relayed_publisher_to_subscriber(1);
    assert_intact_in_order(&run);
    let m = |series| metric_value(&run.metrics, series);
    let received = (run.video.len() + run.audio.len()) as f64;
    let forwarded = m(FORWARDED);
    assert!(
        forwarded >= received,
        "{forwarded} forwarded, {received} received"
    );
    // The publisher's RTP came in through its relay, the subscriber's copies went out
    // through its relay: all of it handed over, none of it through the kernel.
    assert!(
        m(INTERNAL_TO_PEER) >= m(RTP_RECEIVED),
        "{} handed to the SFU, {} RTP received",
        m(INTERNAL_TO_PEER),
        m(RTP_RECEIVED)
    );
    assert!(
        m(INTERNAL_TO_CLIENT) >= forwarded,
        "{} handed to TURN clients, {forwarded} forwarded",
        m(INTERNAL_TO_CLIENT)
    );
    assert_eq!(m(RELAYED_TO_PEER), m(INTERNAL_TO_PEER), "{}", run.metrics);
    assert_eq!(
        m(RELAYED_TO_CLIENT),
        m(INTERNAL_TO_CLIENT),
        "{}",
        run.metrics
    );
    assert_eq!(m(HAIRPIN), 0.0, "the kernel path was taken");
}

#[test]
fn relay_only_peers_reach_the_sfu_through_the_nodes_turn_across_workers() {
    // Four workers: the kernel hashes each TURN client's address to a worker, so the two
    // allocations sit on different workers in some runs only (about half of them here).
    // Then the RTP forwarded by the publisher's worker is queued for the subscriber's
    // relay's worker, still without the kernel. Runs until one had them apart (seen as
    // cross-worker hand-overs), at most 12 times (all 12 on one worker: < 1 in 4000).
    const CROSS_WORKER: &str = "confnode_turn_relay_cross_worker_total";
    let mut runs = 0;
    let run = loop {
        runs += 1;
        let run = relayed_publisher_to_subscriber(4);
        if metric_value(&run.metrics, CROSS_WORKER) > 0.0 || runs == 12 {
            break run;
        }
        eprintln!(
            "run {runs}: both allocations on one worker ({} hairpin), again",
            metric_value(&run.metrics, HAIRPIN)
        );
    };
    assert_intact_in_order(&run);
    let m = |series| metric_value(&run.metrics, series);
    let forwarded = m(FORWARDED);
    assert!(
        m(CROSS_WORKER) > 0.0,
        "never on different workers: {}",
        run.metrics
    );
    assert!(m(INTERNAL_TO_PEER) >= m(RTP_RECEIVED), "{}", run.metrics);
    assert_eq!(m(RELAYED_TO_PEER), m(INTERNAL_TO_PEER), "{}", run.metrics);
    assert!(m(INTERNAL_TO_CLIENT) >= forwarded, "{}", run.metrics);
    assert_eq!(
        m(RELAYED_TO_CLIENT),
        m(INTERNAL_TO_CLIENT),
        "{}",
        run.metrics
    );
    assert_eq!(
        m(HAIRPIN),
        0.0,
        "the kernel path was taken: {}",
        run.metrics
    );
}

// ---- RTCP: keyframe requests, NACKs, reports and transport-cc feedback ----
//
// What webrtc-rs 0.17 does with RTCP, and so which interceptors these peers run: every
// interceptor of `register_default_interceptors` hands incoming RTCP on to `read_rtcp`
// (the NACK responder and the report interceptors only look at it), so none would hide
// what we assert on. They would add RTCP of their own, though: the NACK generator
// NACKs gaps by itself, and the report interceptors send reports. So the peers run no
// interceptors unless a test needs one, and the only keyframe request or NACK a
// subscriber sends is the test's.

const KEYFRAME_REQUESTS: &str = "confnode_sfu_keyframe_requests_total";
const RETRANSMITTED: &str = "confnode_sfu_retransmitted_packets_total";
const RTCP_SENT: &str = "confnode_sfu_rtcp_sent_total";

/// The SSRC our test peers' own RTCP (PLI, NACK) comes from.
const TEST_RTCP_SSRC: u32 = 0x5EED_0001;

type RtcpPacket = Box<dyn webrtc::rtcp::packet::Packet + Send + Sync>;

/// The RTCP packets a peer's `read_rtcp` returned, one by one, each with when.
type RtcpRx = mpsc::UnboundedReceiver<(Instant, RtcpPacket)>;

/// A multi-threaded runtime for the peers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Reads the RTCP `senders` get, into one channel.
fn read_sender_rtcp(senders: &[Arc<RTCRtpSender>]) -> RtcpRx {
    let (tx, rx) = mpsc::unbounded_channel();
    for sender in senders {
        let (sender, tx) = (sender.clone(), tx.clone());
        tokio::spawn(async move {
            while let Ok((packets, _)) = sender.read_rtcp().await {
                let at = Instant::now();
                for p in packets {
                    if tx.send((at, p)).is_err() {
                        return;
                    }
                }
            }
        });
    }
    rx
}

/// Reads the RTCP `receiver` gets, into `tx`.
fn read_receiver_rtcp(
    receiver: Arc<RTCRtpReceiver>,
    tx: mpsc::UnboundedSender<(Instant, RtcpPacket)>,
) {
    tokio::spawn(async move {
        while let Ok((packets, _)) = receiver.read_rtcp().await {
            let at = Instant::now();
            for p in packets {
                if tx.send((at, p)).is_err() {
                    return;
                }
            }
        }
    });
}

/// `p` as a `T`, if it is one.
fn rtcp_as<T: 'static>(p: &RtcpPacket) -> Option<&T> {
    p.as_any().downcast_ref::<T>()
}

/// Which packets, read at which instant, an [`Expected`] is.
type RtcpMatch<'a> = Box<dyn Fn(Instant, &RtcpPacket) -> bool + 'a>;

/// One RTCP packet a test waits for: what it is (for the failure message) and which
/// packets, read at which instant, are one.
struct Expected<'a> {
    what: &'a str,
    matches: RtcpMatch<'a>,
}

/// Reads `rx` until each of `expected` has been seen, or panics after `within` saying
/// which did not arrive (and what did). Returns every packet read.
async fn expect_rtcp(
    rx: &mut RtcpRx,
    within: Duration,
    expected: &[Expected<'_>],
) -> Vec<(Instant, RtcpPacket)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = vec![false; expected.len()];
    let mut read = Vec::new();
    while !seen.iter().all(|&s| s) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((at, p))) => {
                for (s, e) in seen.iter_mut().zip(expected) {
                    *s |= (e.matches)(at, &p);
                }
                read.push((at, p));
            }
            Ok(None) => panic!("the RTCP reader ended"),
            Err(_) => {
                let missing: Vec<&str> = expected
                    .iter()
                    .zip(&seen)
                    .filter(|&(_, &s)| !s)
                    .map(|(e, _)| e.what)
                    .collect();
                let got: Vec<String> = read.iter().map(|(_, p)| format!("{p:?}")).collect();
                panic!(
                    "within {within:?}, no {}; {} RTCP packets came: {got:#?}",
                    missing.join(", no "),
                    read.len()
                );
            }
        }
    }
    read
}

/// Polls /metrics until `series` satisfies `done`, or panics after `within` saying that
/// `what` did not happen.
async fn wait_metric(
    addr: std::net::SocketAddr,
    series: &'static str,
    within: Duration,
    what: &str,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(addr, series).await;
        if done(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {series} still {v} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `n` video packets at a subscriber: all of them, in arrival order.
async fn wait_video(rtp: &mut mpsc::UnboundedReceiver<Rtp>, n: usize) -> Vec<Rtp> {
    let mut video = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(p) = rtp.recv().await {
            if p.video {
                video.push(p);
                if video.len() >= n {
                    return;
                }
            }
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "only {} of {n} video packets reached the subscriber within 10 s",
        video.len()
    );
    video
}

#[test]
fn a_subscribers_pli_reaches_the_publisher_as_a_keyframe_request() {
    use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

    let node = node();
    let (room, publisher, pub_token) = join(&node);
    let common::Joined {
        id: subscriber,
        token: sub_token,
        ..
    } = common::join(&node, &room, "Subscriber");
    runtime().block_on(async move {
        let http_addr = node.http;
        let api = webrtc_api();
        let config = RTCConfiguration::default;
        let p = publish(&api, config(), http_addr, &room, &publisher, &pub_token).await;
        let video_ssrc = sender_ssrc(&p.senders[0]).await;
        let mut rtcp = read_sender_rtcp(&p.senders);
        let mut s = subscribe(&api, config(), http_addr, &room, &subscriber, &sub_token).await;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sending = send_media(p.video.clone(), p.audio.clone(), 1000, stop.clone());
        let stream = wait_video(&mut s.rtp, 1).await[0].ssrc;
        // Over a second of media: the node's own keyframe requests of the stream's start
        // (if any) are behind us, and so is its throttle (one request per 500 ms).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let mut earlier = 0;
        while let Ok((_, p)) = rtcp.try_recv() {
            earlier += usize::from(rtcp_as::<PictureLossIndication>(&p).is_some());
        }
        let before = metric(http_addr, KEYFRAME_REQUESTS).await;

        let sent_at = Instant::now();
        let pli = PictureLossIndication {
            sender_ssrc: TEST_RTCP_SSRC,
            media_ssrc: stream,
        };
        s.pc.write_rtcp(&[Box::new(pli)]).await.expect("write PLI");
        let read = expect_rtcp(
            &mut rtcp,
            Duration::from_secs(3),
            &[Expected {
                what: "PLI for the publisher's video SSRC after the subscriber's PLI",
                matches: Box::new(|at, p| {
                    at > sent_at
                        && rtcp_as::<PictureLossIndication>(p)
                            .is_some_and(|pli| pli.media_ssrc == video_ssrc)
                }),
            }],
        )
        .await;
        let after = wait_metric(
            http_addr,
            KEYFRAME_REQUESTS,
            Duration::from_secs(3),
            "the subscriber's PLI was not counted as a keyframe request",
            |v| v > before,
        )
        .await;
        eprintln!(
            "{earlier} PLIs before the subscriber's; the publisher's came {:?} after it; \
             keyframe requests {before} -> {after}",
            read.last().expect("the PLI").0 - sent_at
        );

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sending.await;
        let _ = s.pc.close().await;
        let _ = p.pc.close().await;
        drop(s.events);
    });
}

/// Hands the RTP packets of a subscriber's RTX streams to the test: webrtc-rs 0.17
/// reads a repair stream (for its interceptors) but never gives its packets to the
/// application (`RTCRtpReceiver::receive_for_rtx`), so this interceptor sits on it.
fn rtx_spy(tx: mpsc::UnboundedSender<Rtp>) -> Box<dyn InterceptorBuilder + Send + Sync> {
    Box::new(MockBuilder::new(move |_| {
        let tx = tx.clone();
        let bind: BindRemoteStreamFn = Box::new(
            move |info: &StreamInfo,
                  reader: Arc<dyn RTPReader + Send + Sync>|
                  -> Pin<
                Box<dyn Future<Output = Arc<dyn RTPReader + Send + Sync>> + Send + Sync>,
            > {
                // A repair stream is associated with the stream it repairs.
                let repair = info.associated_stream.is_some();
                let tx = tx.clone();
                Box::pin(async move {
                    if repair {
                        Arc::new(RtxSpy { parent: reader, tx }) as Arc<dyn RTPReader + Send + Sync>
                    } else {
                        reader
                    }
                })
            },
        );
        Ok(Arc::new(MockInterceptor {
            bind_remote_stream_fn: Some(bind),
            ..Default::default()
        }) as Arc<dyn Interceptor + Send + Sync>)
    }))
}

/// The reader [`rtx_spy`] puts on a repair stream.
struct RtxSpy {
    parent: Arc<dyn RTPReader + Send + Sync>,
    tx: mpsc::UnboundedSender<Rtp>,
}

// `RTPReader` is an `#[async_trait]` trait; this is what the macro would write
// (`async-trait` is not among our dev-dependencies).
impl RTPReader for RtxSpy {
    fn read<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        buf: &'life1 mut [u8],
        attributes: &'life2 webrtc::interceptor::Attributes,
    ) -> Pin<
        Box<
            dyn Future<
                    Output = Result<
                        (webrtc::rtp::packet::Packet, webrtc::interceptor::Attributes),
                        webrtc::interceptor::Error,
                    >,
                > + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let read = self.parent.read(buf, attributes).await;
            if let Ok((pkt, _)) = &read {
                let _ = self.tx.send(Rtp {
                    video: true,
                    ssrc: pkt.header.ssrc,
                    payload_type: pkt.header.payload_type,
                    seq: pkt.header.sequence_number,
                    payload: pkt.payload.to_vec(),
                });
            }
            read
        })
    }
}

/// The payload type of the RTX of `offer` and the RTX SSRC it pairs with `ssrc`
/// (`a=ssrc-group:FID`).
fn rtx_of(offer: &str, ssrc: u32) -> (u8, u32) {
    let lines = || offer.lines().map(str::trim);
    let pt = lines()
        .find_map(|l| {
            l.strip_prefix("a=rtpmap:")?
                .strip_suffix(" rtx/90000")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no RTX in the offer: {offer}"));
    let rtx = lines()
        .find_map(|l| {
            let mut group = l.strip_prefix("a=ssrc-group:FID ")?.split_whitespace();
            if group.next()?.parse::<u32>().ok()? != ssrc {
                return None;
            }
            group.next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no FID group for {ssrc} in the offer: {offer}"));
    (pt, rtx)
}

#[test]
fn a_subscribers_nack_is_answered_by_the_sfu_from_its_cache() {
    use webrtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

    let node = node();
    let (room, publisher, pub_token) = join(&node);
    let common::Joined {
        id: subscriber,
        token: sub_token,
        ..
    } = common::join(&node, &room, "Subscriber");
    runtime().block_on(async move {
        let http_addr = node.http;
        let config = RTCConfiguration::default;
        let pub_api = webrtc_api();
        let p = publish(&pub_api, config(), http_addr, &room, &publisher, &pub_token).await;
        let video_ssrc = sender_ssrc(&p.senders[0]).await;
        let mut rtcp = read_sender_rtcp(&p.senders);

        // The subscriber takes RTX for VP8, as browsers do (webrtc-rs' default codecs
        // have none), and a spy reports what comes on its RTX stream. No NACK generator:
        // the only NACK is the test's.
        let (rtx_tx, mut rtx_rx) = mpsc::unbounded_channel();
        let sub_api = webrtc_api_with(move |media, mut registry| {
            let rtx = RTCRtpCodecParameters {
                capability: RTCRtpCodecCapability {
                    mime_type: "video/rtx".to_owned(),
                    clock_rate: 90_000,
                    sdp_fmtp_line: "apt=96".to_owned(),
                    ..Default::default()
                },
                payload_type: 97,
                ..Default::default()
            };
            media
                .register_codec(rtx, RTPCodecType::Video)
                .expect("RTX codec");
            registry.add(rtx_spy(rtx_tx));
            registry
        });
        let mut s = subscribe(
            &sub_api,
            config(),
            http_addr,
            &room,
            &subscriber,
            &sub_token,
        )
        .await;
        let answer = s.pc.local_description().await.expect("answer").sdp;
        assert!(
            answer.contains(" rtx/90000"),
            "RTX not negotiated: {answer}"
        );

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sending = send_media(p.video.clone(), p.audio.clone(), 1000, stop.clone());
        // A packet the subscriber has (well within the node's cache) is NACKed.
        let video = wait_video(&mut s.rtp, 30).await;
        let nacked = video[20].clone();
        let (rtx_pt, rtx_ssrc) = rtx_of(&s.offer, nacked.ssrc);
        let index = index_of(&nacked.payload, true).expect("an index");
        let before = metric(http_addr, RETRANSMITTED).await;
        let nack = TransportLayerNack {
            sender_ssrc: TEST_RTCP_SSRC,
            media_ssrc: nacked.ssrc,
            nacks: vec![NackPair {
                packet_id: nacked.seq,
                lost_packets: 0,
            }],
        };
        s.pc.write_rtcp(&[Box::new(nack)])
            .await
            .expect("write NACK");

        let after = wait_metric(
            http_addr,
            RETRANSMITTED,
            Duration::from_secs(3),
            "the NACKed packet was not retransmitted",
            |v| v > before,
        )
        .await;
        // The retransmission, in RTX form (RFC 4588): the original sequence number, then
        // the payload.
        let repair = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(r) = rtx_rx.recv().await {
                if r.ssrc == rtx_ssrc && r.payload.get(..2) == Some(&nacked.seq.to_be_bytes()[..]) {
                    return Some(r);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "no RTX packet (SSRC {rtx_ssrc}) for sequence number {} within 3 s",
                nacked.seq
            )
        });
        assert_eq!(
            repair.payload_type, rtx_pt,
            "the RTX payload type of the offer"
        );
        assert_eq!(
            repair.payload[2..],
            nacked.payload[..],
            "the retransmitted payload"
        );

        // The node answered: the publisher heard of no loss of that packet (it sent it
        // with sequence number 1000 + its index).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let source_seq = (1000 + index) as u16;
        while let Ok((_, p)) = rtcp.try_recv() {
            if let Some(nack) = rtcp_as::<TransportLayerNack>(&p) {
                assert!(
                    nack.media_ssrc != video_ssrc
                        || !nack
                            .nacks
                            .iter()
                            .any(|n| n.packet_list().contains(&source_seq)),
                    "the publisher was asked for packet {source_seq}: {nack:?}"
                );
            }
        }
        eprintln!("retransmitted {before} -> {after}; RTX seq {}", repair.seq);

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sending.await;
        let _ = s.pc.close().await;
        let _ = p.pc.close().await;
        drop(s.events);
    });
}

#[test]
fn the_publisher_gets_receiver_reports_and_transport_cc_feedback() {
    use webrtc::rtcp::receiver_report::ReceiverReport;
    use webrtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

    let node = node();
    let (room, publisher, pub_token) = join(&node);
    runtime().block_on(async move {
        let http_addr = node.http;
        // `configure_twcc`: transport-cc feedback and the transport-wide sequence number
        // extension in the offer, and the interceptor that writes the extension on every
        // packet sent. (`register_default_interceptors` takes the receiver half only:
        // it offers the extension, but its packets would not carry it, and there would
        // be nothing to give feedback on.) Its interceptors pass RTCP on to
        // `read_rtcp`.
        let api = webrtc_api_with(|media, registry| {
            webrtc::api::interceptor_registry::configure_twcc(registry, media).expect("TWCC")
        });
        let p = publish(
            &api,
            RTCConfiguration::default(),
            http_addr,
            &room,
            &publisher,
            &pub_token,
        )
        .await;
        let offer = p.pc.local_description().await.expect("offer").sdp;
        let answer = p.pc.remote_description().await.expect("answer").sdp;
        for (what, sdp) in [("offer", &offer), ("answer", &answer)] {
            assert!(
                sdp.contains("a=rtcp-fb:96 transport-cc")
                    && sdp.contains(webrtc::sdp::extmap::TRANSPORT_CC_URI),
                "transport-cc not in the {what}: {sdp}"
            );
        }
        let video_ssrc = sender_ssrc(&p.senders[0]).await;
        let audio_ssrc = sender_ssrc(&p.senders[1]).await;
        let mut rtcp = read_sender_rtcp(&p.senders);
        let before = metric(http_addr, RTCP_SENT).await;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sending = send_media(p.video.clone(), p.audio.clone(), 1000, stop.clone());
        let report = |ssrc: u32| {
            move |_: Instant, p: &RtcpPacket| {
                rtcp_as::<ReceiverReport>(p).is_some_and(|rr| {
                    rr.reports
                        .iter()
                        .any(|b| b.ssrc == ssrc && b.last_sequence_number > 0)
                })
            }
        };
        let read = expect_rtcp(
            &mut rtcp,
            Duration::from_secs(5),
            &[
                Expected {
                    what: "receiver report about the video SSRC",
                    matches: Box::new(report(video_ssrc)),
                },
                Expected {
                    what: "receiver report about the audio SSRC",
                    matches: Box::new(report(audio_ssrc)),
                },
                Expected {
                    what: "transport-cc feedback with packet statuses",
                    matches: Box::new(|_, p| {
                        rtcp_as::<TransportLayerCc>(p).is_some_and(|cc| {
                            cc.packet_status_count > 0
                                && [video_ssrc, audio_ssrc].contains(&cc.media_ssrc)
                        })
                    }),
                },
            ],
        )
        .await;
        let after = wait_metric(
            http_addr,
            RTCP_SENT,
            Duration::from_secs(3),
            "the reports and feedback were not counted",
            |v| v > before,
        )
        .await;
        eprintln!(
            "{} RTCP packets read by the publisher; rtcp sent {before} -> {after}",
            read.len()
        );

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sending.await;
        let _ = p.pc.close().await;
    });
}

#[test]
fn the_subscriber_gets_sender_reports_for_the_streams_it_receives() {
    use webrtc::rtcp::sender_report::SenderReport;

    let node = node();
    let (room, publisher, pub_token) = join(&node);
    let common::Joined {
        id: subscriber,
        token: sub_token,
        ..
    } = common::join(&node, &room, "Subscriber");
    runtime().block_on(async move {
        let http_addr = node.http;
        let api = webrtc_api();
        let config = RTCConfiguration::default;
        let p = publish(&api, config(), http_addr, &room, &publisher, &pub_token).await;
        drain_rtcp(&p.senders);
        let mut s = subscribe(&api, config(), http_addr, &room, &subscriber, &sub_token).await;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sending = send_media(p.video.clone(), p.audio.clone(), 1000, stop.clone());
        // Each track's receiver, as its first packet arrives.
        let (tx, mut rtcp) = mpsc::unbounded_channel();
        let mut ssrcs = [None, None];
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((video, ssrc, receiver)) = s.receivers.recv().await {
                ssrcs[usize::from(!video)] = Some(ssrc);
                read_receiver_rtcp(receiver, tx.clone());
                if ssrcs.iter().all(Option::is_some) {
                    return;
                }
            }
        })
        .await;
        assert!(started.is_ok(), "tracks started within 10 s: {ssrcs:?}");
        let [Some(video), Some(audio)] = ssrcs else {
            unreachable!()
        };
        let sender_report = |ssrc: u32| {
            move |_: Instant, p: &RtcpPacket| {
                rtcp_as::<SenderReport>(p).is_some_and(|sr| {
                    sr.ssrc == ssrc && sr.packet_count > 0 && sr.octet_count > 0 && sr.ntp_time != 0
                })
            }
        };
        // One a second per stream.
        expect_rtcp(
            &mut rtcp,
            Duration::from_secs(5),
            &[
                Expected {
                    what: "sender report for the video stream",
                    matches: Box::new(sender_report(video)),
                },
                Expected {
                    what: "sender report for the audio stream",
                    matches: Box::new(sender_report(audio)),
                },
            ],
        )
        .await;

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sending.await;
        let _ = s.pc.close().await;
        let _ = p.pc.close().await;
        drop(s.events);
    });
}
