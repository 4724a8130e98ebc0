//! A real WebRTC peer (the `webrtc` crate, webrtc-rs) publishes to the node: its offer
//! is answered over HTTP, its ICE agent (a full controlling agent) connects to the
//! node's ICE-lite responder on the shared media port, its DTLS client completes the
//! handshake with the node's passive endpoint (peer connection `connected`), and the
//! SRTP it then sends (an Opus and a VP8 track) is unprotected by the node: its count of
//! received RTP packets grows, so the SRTP keys of both sides agree.

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
