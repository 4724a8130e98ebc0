//! A real WebRTC peer (the `webrtc` crate, webrtc-rs) publishes to the node: its offer
//! is answered over HTTP and its ICE agent, a full controlling agent, connects to the
//! node's ICE-lite responder on the shared media port. (DTLS comes with the next step,
//! so only the ICE connection state is checked here.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Node, http};
use serde_json::json;
use tokio::sync::mpsc;
use webrtc::api::APIBuilder;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::peer_connection::configuration::RTCConfiguration;
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

#[test]
fn a_webrtc_rs_publisher_connects_over_ice() {
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
        for (mime, id) in [(MIME_TYPE_OPUS, "audio"), (MIME_TYPE_VP8, "video")] {
            let track = Arc::new(TrackLocalStaticSample::new(
                RTCRtpCodecCapability {
                    mime_type: mime.to_owned(),
                    ..Default::default()
                },
                id.to_owned(),
                "stream".to_owned(),
            ));
            pc.add_track(track as Arc<dyn TrackLocal + Send + Sync>)
                .await
                .expect("add track");
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        pc.on_ice_connection_state_change(Box::new(move |state| {
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

        let connected = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(state) = rx.recv().await {
                match state {
                    RTCIceConnectionState::Connected => return Ok(()),
                    RTCIceConnectionState::Failed => return Err(state),
                    _ => {}
                }
            }
            Err(RTCIceConnectionState::Unspecified)
        })
        .await;
        let _ = pc.close().await;
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(state)) => panic!("ICE ended in {state}"),
            Err(_) => panic!("ICE not connected within 15 s"),
        }
    });
}
