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

mod common;

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Node, http, http_get, metric_value};
use serde_json::json;
use tokio::sync::mpsc;
use webrtc::api::APIBuilder;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
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

/// Joins `room` as `name`: (participant, token).
fn join_room(node: &Node, room: &str, name: &str) -> (String, String) {
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
    (
        v["participant"].as_str().expect("id").to_owned(),
        v["token"].as_str().expect("token").to_owned(),
    )
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
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer)
            .await
            .expect("local description");
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        let offer = pc.local_description().await.expect("offer sdp").sdp;

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
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(state) = rx.recv().await {
                match state {
                    RTCPeerConnectionState::Connected => return Ok(()),
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        return Err(state);
                    }
                    _ => {}
                }
            }
            Err(RTCPeerConnectionState::Unspecified)
        })
        .await;
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(state)) => panic!("peer connection ended in {state}"),
            Err(_) => panic!("peer connection not connected within 10 s"),
        }
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

/// A webrtc-rs API with the default codecs that gathers loopback candidates (the node
/// listens on loopback only). As an answerer it takes the DTLS client role, as browsers
/// do (webrtc-rs would otherwise answer an ICE-lite offerer with `setup:passive`).
fn webrtc_api() -> webrtc::api::API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings
        .set_answering_dtls_role(webrtc::dtls_transport::dtls_role::DTLSRole::Client)
        .expect("DTLS role");
    APIBuilder::new()
        .with_media_engine(media)
        .with_setting_engine(settings)
        .build()
}

/// Waits until `rx` reports `connected`.
async fn wait_connected(rx: &mut mpsc::UnboundedReceiver<RTCPeerConnectionState>, who: &str) {
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(state) = rx.recv().await {
            match state {
                RTCPeerConnectionState::Connected => return Ok(()),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    return Err(state);
                }
                _ => {}
            }
        }
        Err(RTCPeerConnectionState::Unspecified)
    })
    .await;
    match connected {
        Ok(Ok(())) => {}
        Ok(Err(state)) => panic!("{who}: peer connection ended in {state}"),
        Err(_) => panic!("{who}: peer connection not connected within 10 s"),
    }
}

fn state_channel(
    pc: &webrtc::peer_connection::RTCPeerConnection,
) -> mpsc::UnboundedReceiver<RTCPeerConnectionState> {
    let (tx, rx) = mpsc::unbounded_channel();
    pc.on_peer_connection_state_change(Box::new(move |state| {
        let _ = tx.send(state);
        Box::pin(async {})
    }));
    rx
}

/// POSTs an SDP to `path` off the runtime.
async fn post_sdp(
    addr: std::net::SocketAddr,
    path: String,
    token: &str,
    sdp: String,
) -> common::HttpResponse {
    let bearer = format!("Bearer {token}");
    tokio::task::spawn_blocking(move || {
        http(
            addr,
            "POST",
            &path,
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &bearer),
            ],
            sdp.as_bytes(),
        )
    })
    .await
    .expect("POST")
}

/// The VP8 payload of packet `i`: a one-packet key frame (so that any packet is where a
/// receiver may start) carrying `i`.
fn vp8_payload(i: u32) -> Vec<u8> {
    let mut p = vec![
        0x10, // S=1, partition 0, no extensions
        0x10, 0x00, 0x00, // frame tag: key frame, shown
        0x9D, 0x01, 0x2A, // start code
        0x80, 0x02, 0xE0, 0x01, // 640x480
    ];
    p.extend_from_slice(&i.to_be_bytes());
    p.extend((0..300u32).map(|k| (k.wrapping_mul(7) ^ i) as u8));
    p
}

/// The Opus payload of packet `i`.
fn opus_payload(i: u32) -> Vec<u8> {
    let mut p = vec![0xFC];
    p.extend_from_slice(&i.to_be_bytes());
    p.extend((0..60u32).map(|k| (k ^ i.wrapping_mul(3)) as u8));
    p
}

/// The index a payload carries (after the VP8 header, or the Opus TOC byte).
fn index_of(payload: &[u8], video: bool) -> Option<u32> {
    let at = if video { 11 } else { 1 };
    let b = payload.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[test]
fn rtp_from_a_webrtc_rs_publisher_reaches_a_webrtc_rs_subscriber_in_order() {
    use webrtc::rtp::header::Header;
    use webrtc::rtp::packet::Packet;
    use webrtc::track::track_local::TrackLocalWriter;
    use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

    let node = node();
    let (room, publisher, pub_token) = join(&node);
    let (subscriber, sub_token) = join_room(&node, &room, "Subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let http_addr = node.http;
        let api = webrtc_api();

        // The publisher: VP8 and Opus, RTP written as is.
        let pc = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .expect("peer connection"),
        );
        let mut tracks = Vec::new();
        for (mime, id) in [(MIME_TYPE_VP8, "video"), (MIME_TYPE_OPUS, "audio")] {
            let track = Arc::new(TrackLocalStaticRTP::new(
                RTCRtpCodecCapability {
                    mime_type: mime.to_owned(),
                    ..Default::default()
                },
                id.to_owned(),
                "stream".to_owned(),
            ));
            let sender = pc
                .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
                .await
                .expect("add track");
            // Keyframe requests from the node arrive here; they are read and ignored
            // (every VP8 packet of this test is a key frame).
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1500];
                while sender.read(&mut buf).await.is_ok() {}
            });
            tracks.push(track);
        }
        let mut pub_state = state_channel(&pc);
        let offer = pc.create_offer(None).await.expect("offer");
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer).await.expect("local");
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        let offer = pc.local_description().await.expect("offer sdp").sdp;
        let r = post_sdp(
            http_addr,
            format!("/api/rooms/{room}/participants/{publisher}/publish"),
            &pub_token,
            offer,
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        pc.set_remote_description(RTCSessionDescription::answer(r.body).expect("answer"))
            .await
            .expect("remote description");
        wait_connected(&mut pub_state, "publisher").await;

        // The subscriber opens its event stream: the roster, then the node's offer.
        let events = format!("/api/rooms/{room}/participants/{subscriber}/events");
        let bearer = format!("Bearer {sub_token}");
        let (stream, offer) = tokio::task::spawn_blocking(move || {
            let mut stream =
                common::SseStream::open(http_addr, &events, &[("Authorization", &bearer)])
                    .unwrap_or_else(|r| panic!("events: {} {}", r.status, r.body));
            loop {
                let (name, data) = stream.next_event().expect("event stream ended");
                if name == "offer" {
                    let v: serde_json::Value = serde_json::from_str(&data).expect("JSON");
                    assert_eq!(v["type"], "offer");
                    return (stream, v["sdp"].as_str().expect("sdp").to_owned());
                }
            }
        })
        .await
        .expect("offer event");
        assert_eq!(offer.matches("m=video").count(), 1, "{offer}");
        assert_eq!(offer.matches("m=audio").count(), 1, "{offer}");
        assert!(
            offer.contains(&format!("a=msid:{publisher} ")),
            "the publisher's id is the stream id: {offer}"
        );

        let sub = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .expect("peer connection"),
        );
        // (video?, sequence number, payload) of every RTP packet received.
        let (rtp_tx, mut rtp_rx) = mpsc::unbounded_channel::<(bool, u16, Vec<u8>)>();
        sub.on_track(Box::new(move |track, _, _| {
            let tx = rtp_tx.clone();
            let video = track.kind() == webrtc::rtp_transceiver::rtp_codec::RTPCodecType::Video;
            tokio::spawn(async move {
                while let Ok((pkt, _)) = track.read_rtp().await {
                    if tx
                        .send((video, pkt.header.sequence_number, pkt.payload.to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Box::pin(async {})
        }));
        let mut sub_state = state_channel(&sub);
        sub.set_remote_description(RTCSessionDescription::offer(offer.clone()).expect("offer"))
            .await
            .unwrap_or_else(|e| panic!("remote description: {e}\n{offer}"));
        let answer = sub.create_answer(None).await.expect("answer");
        let mut gathered = sub.gathering_complete_promise().await;
        sub.set_local_description(answer).await.expect("local");
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        let answer = sub.local_description().await.expect("answer sdp").sdp;
        let r = post_sdp(
            http_addr,
            format!("/api/rooms/{room}/participants/{subscriber}/subscribe"),
            &sub_token,
            answer,
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.body);
        wait_connected(&mut sub_state, "subscriber").await;

        // Send until the subscriber has 100 video packets (at most 10 s).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (video, audio) = (tracks[0].clone(), tracks[1].clone());
        let sending = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 500 {
                    tick.tick().await;
                    let header = |seq: u32, ts: u32| Header {
                        version: 2,
                        marker: true,
                        sequence_number: (1000 + seq) as u16,
                        timestamp: ts,
                        ..Default::default()
                    };
                    let v = Packet {
                        header: header(i, i * 1800),
                        payload: vp8_payload(i).into(),
                    };
                    let _ = video.write_rtp(&v).await;
                    let a = Packet {
                        header: header(i, i * 960),
                        payload: opus_payload(i).into(),
                    };
                    let _ = audio.write_rtp(&a).await;
                    i += 1;
                }
            })
        };
        let mut got_video: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut got_audio: Vec<(u16, Vec<u8>)> = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((is_video, seq, payload)) = rtp_rx.recv().await {
                if is_video {
                    got_video.push((seq, payload));
                } else {
                    got_audio.push((seq, payload));
                }
                if got_video.len() >= 100 && got_audio.len() >= 50 {
                    return;
                }
            }
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sending.await;
        let forwarded = metric(http_addr, FORWARDED).await;
        assert!(
            forwarded >= (got_video.len() + got_audio.len()) as f64,
            "{forwarded} forwarded, {} + {} received",
            got_video.len(),
            got_audio.len()
        );
        let _ = sub.close().await;
        let _ = pc.close().await;
        drop(stream);

        for (kind, got, min, expected) in [
            ("video", &got_video, 100, vp8_payload as fn(u32) -> Vec<u8>),
            ("audio", &got_audio, 50, opus_payload),
        ] {
            assert!(
                got.len() >= min,
                "{kind}: only {} RTP packets reached the subscriber",
                got.len()
            );
            let mut last: Option<(u32, u16)> = None;
            for (seq, payload) in got.iter() {
                let i = index_of(payload, kind == "video").expect("an index");
                assert_eq!(
                    payload,
                    &expected(i),
                    "{kind} packet {i} changed on the way"
                );
                if let Some((li, lseq)) = last {
                    assert!(i > li, "{kind}: packet {i} after {li}");
                    assert_eq!(
                        seq.wrapping_sub(lseq),
                        (i - li) as u16,
                        "{kind}: sequence numbers not continuous"
                    );
                }
                last = Some((i, *seq));
            }
        }
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

/// Joins `room` as `name`: (participant, token, the `ice_servers` of the answer).
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
    let servers = v["ice_servers"]
        .as_array()
        .expect("ice_servers")
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
    use webrtc::rtp::header::Header;
    use webrtc::rtp::packet::Packet;
    use webrtc::track::track_local::TrackLocalWriter;
    use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

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

        let pc = Arc::new(
            api.new_peer_connection(relay_only(pub_ice))
                .await
                .expect("peer connection"),
        );
        let mut tracks = Vec::new();
        for (mime, id) in [(MIME_TYPE_VP8, "video"), (MIME_TYPE_OPUS, "audio")] {
            let track = Arc::new(TrackLocalStaticRTP::new(
                RTCRtpCodecCapability {
                    mime_type: mime.to_owned(),
                    ..Default::default()
                },
                id.to_owned(),
                "stream".to_owned(),
            ));
            let sender = pc
                .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
                .await
                .expect("add track");
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1500];
                while sender.read(&mut buf).await.is_ok() {}
            });
            tracks.push(track);
        }
        let mut pub_state = state_channel(&pc);
        let offer = pc.create_offer(None).await.expect("offer");
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer).await.expect("local");
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        let offer = pc.local_description().await.expect("offer sdp").sdp;
        assert!(
            offer.contains(" typ relay") && !offer.contains(" typ host"),
            "relay candidates only: {offer}"
        );
        let r = post_sdp(
            http_addr,
            format!("/api/rooms/{room}/participants/{publisher}/publish"),
            &pub_token,
            offer,
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        pc.set_remote_description(RTCSessionDescription::answer(r.body).expect("answer"))
            .await
            .expect("remote description");
        wait_connected(&mut pub_state, "publisher").await;
        assert_relayed(&pc, "publisher").await;

        let events = format!("/api/rooms/{room}/participants/{subscriber}/events");
        let bearer = format!("Bearer {sub_token}");
        let (stream, offer) = tokio::task::spawn_blocking(move || {
            let mut stream =
                common::SseStream::open(http_addr, &events, &[("Authorization", &bearer)])
                    .unwrap_or_else(|r| panic!("events: {} {}", r.status, r.body));
            loop {
                let (name, data) = stream.next_event().expect("event stream ended");
                if name == "offer" {
                    let v: serde_json::Value = serde_json::from_str(&data).expect("JSON");
                    return (stream, v["sdp"].as_str().expect("sdp").to_owned());
                }
            }
        })
        .await
        .expect("offer event");

        let sub = Arc::new(
            api.new_peer_connection(relay_only(sub_ice))
                .await
                .expect("peer connection"),
        );
        let (rtp_tx, mut rtp_rx) = mpsc::unbounded_channel::<(bool, u16, Vec<u8>)>();
        sub.on_track(Box::new(move |track, _, _| {
            let tx = rtp_tx.clone();
            let video = track.kind() == webrtc::rtp_transceiver::rtp_codec::RTPCodecType::Video;
            tokio::spawn(async move {
                while let Ok((pkt, _)) = track.read_rtp().await {
                    if tx
                        .send((video, pkt.header.sequence_number, pkt.payload.to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Box::pin(async {})
        }));
        let mut sub_state = state_channel(&sub);
        sub.set_remote_description(RTCSessionDescription::offer(offer.clone()).expect("offer"))
            .await
            .unwrap_or_else(|e| panic!("remote description: {e}\n{offer}"));
        let answer = sub.create_answer(None).await.expect("answer");
        let mut gathered = sub.gathering_complete_promise().await;
        sub.set_local_description(answer).await.expect("local");
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        let answer = sub.local_description().await.expect("answer sdp").sdp;
        let r = post_sdp(
            http_addr,
            format!("/api/rooms/{room}/participants/{subscriber}/subscribe"),
            &sub_token,
            answer,
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.body);
        wait_connected(&mut sub_state, "subscriber").await;
        assert_relayed(&sub, "subscriber").await;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (video, audio) = (tracks[0].clone(), tracks[1].clone());
        let sending = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 500 {
                    tick.tick().await;
                    let header = |seq: u32, ts: u32| Header {
                        version: 2,
                        marker: true,
                        sequence_number: (1000 + seq) as u16,
                        timestamp: ts,
                        ..Default::default()
                    };
                    let v = Packet {
                        header: header(i, i * 1800),
                        payload: vp8_payload(i).into(),
                    };
                    let _ = video.write_rtp(&v).await;
                    let a = Packet {
                        header: header(i, i * 960),
                        payload: opus_payload(i).into(),
                    };
                    let _ = audio.write_rtp(&a).await;
                    i += 1;
                }
            })
        };
        let mut run = RelayedRun {
            video: Vec::new(),
            audio: Vec::new(),
            metrics: String::new(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((is_video, seq, payload)) = rtp_rx.recv().await {
                if is_video {
                    run.video.push((seq, payload));
                } else {
                    run.audio.push((seq, payload));
                }
                if run.video.len() >= 100 && run.audio.len() >= 50 {
                    return;
                }
            }
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sending.await;
        let _ = sub.close().await;
        let _ = pc.close().await;
        drop(stream);
        // Nothing moves any more: the counters are read at rest.
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.metrics = tokio::task::spawn_blocking(move || {
            let (status, body) = http_get(http_addr, "/metrics").expect("GET /metrics");
            assert_eq!(status, 200);
            body
        })
        .await
        .expect("metrics");
        run
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
    for (kind, got, min, expected) in [
        ("video", &run.video, 100, vp8_payload as fn(u32) -> Vec<u8>),
        ("audio", &run.audio, 50, opus_payload),
    ] {
        assert!(
            got.len() >= min,
            "{kind}: only {} RTP packets reached the subscriber",
            got.len()
        );
        let mut last: Option<(u32, u16)> = None;
        for (seq, payload) in got.iter() {
            let i = index_of(payload, kind == "video").expect("an index");
            assert_eq!(
                payload,
                &expected(i),
                "{kind} packet {i} changed on the way"
            );
            if let Some((li, lseq)) = last {
                assert!(i > li, "{kind}: packet {i} after {li}");
                assert_eq!(
                    seq.wrapping_sub(lseq),
                    (i - li) as u16,
                    "{kind}: sequence numbers not continuous"
                );
            }
            last = Some((i, *seq));
        }
    }
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
    // Four workers: the two allocations may sit on different workers, and then the RTP
    // forwarded by the publisher's worker reaches the subscriber's relay through the
    // kernel. Either way everything arrives, and every packet is accounted for.
    let run = relayed_publisher_to_subscriber(4);
    assert_intact_in_order(&run);
    let m = |series| metric_value(&run.metrics, series);
    let forwarded = m(FORWARDED);
    assert!(m(INTERNAL_TO_PEER) >= m(RTP_RECEIVED), "{}", run.metrics);
    assert_eq!(m(RELAYED_TO_PEER), m(INTERNAL_TO_PEER), "{}", run.metrics);
    assert!(
        m(INTERNAL_TO_CLIENT) + m(HAIRPIN) >= forwarded,
        "{}",
        run.metrics
    );
    assert_eq!(
        m(RELAYED_TO_CLIENT),
        m(INTERNAL_TO_CLIENT) + m(HAIRPIN),
        "{}",
        run.metrics
    );
}
