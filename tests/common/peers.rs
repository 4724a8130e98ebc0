//! webrtc-rs peers of the node's SFU, shared by the tests that drive it with them
//! (`sfu_webrtc`, `hostile_traffic`): a publisher of a VP8 and an Opus track, a
//! subscriber answering the node's offer, and the recognisable media they exchange.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use crate::common::{SseStream, http};
use tokio::sync::mpsc;
use webrtc::api::APIBuilder;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

/// A webrtc-rs API with the default codecs that gathers loopback candidates (the node
/// listens on loopback only). As an answerer it takes the DTLS client role, as browsers
/// do (webrtc-rs would otherwise answer an ICE-lite offerer with `setup:passive`). No
/// interceptors: it sends no RTCP of its own, and whatever RTCP the node sends reaches
/// `read_rtcp` as is.
pub fn webrtc_api() -> webrtc::api::API {
    webrtc_api_with(|_, registry| registry)
}

/// [`webrtc_api`] whose media engine and interceptors `configure` adds to (it gets an
/// empty registry and returns the one to use).
pub fn webrtc_api_with(
    configure: impl FnOnce(&mut MediaEngine, Registry) -> Registry,
) -> webrtc::api::API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry = configure(&mut media, Registry::new());
    APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings())
        .build()
}

/// An SDP as it came.
fn unchanged(sdp: String) -> String {
    sdp
}

/// The settings of [`webrtc_api`]: loopback candidates gathered, the DTLS client role
/// when answering.
pub fn settings() -> SettingEngine {
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings
        .set_answering_dtls_role(webrtc::dtls_transport::dtls_role::DTLSRole::Client)
        .expect("DTLS role");
    settings
}

/// Waits until `rx` reports `connected`.
pub async fn wait_connected(rx: &mut mpsc::UnboundedReceiver<RTCPeerConnectionState>, who: &str) {
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

/// Sets `desc` as the local description, waits (up to 5 s) for ICE gathering to
/// complete, and returns the SDP with its candidates (no trickle: the room API takes
/// whole SDPs).
pub async fn set_local_gathered(pc: &RTCPeerConnection, desc: RTCSessionDescription) -> String {
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(desc)
        .await
        .expect("local description");
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    pc.local_description().await.expect("local sdp").sdp
}

pub fn state_channel(
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
pub async fn post_sdp(
    addr: std::net::SocketAddr,
    path: String,
    token: &str,
    sdp: String,
) -> crate::common::HttpResponse {
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
pub fn vp8_payload(i: u32) -> Vec<u8> {
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
pub fn opus_payload(i: u32) -> Vec<u8> {
    let mut p = vec![0xFC];
    p.extend_from_slice(&i.to_be_bytes());
    p.extend((0..60u32).map(|k| (k ^ i.wrapping_mul(3)) as u8));
    p
}

/// The index a payload carries (after the VP8 header, or the Opus TOC byte).
pub fn index_of(payload: &[u8], video: bool) -> Option<u32> {
    let at = if video { 11 } else { 1 };
    let b = payload.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A connected webrtc-rs publisher: a VP8 and an Opus track, RTP written as is.
pub struct Published {
    pub pc: Arc<RTCPeerConnection>,
    pub video: Arc<TrackLocalStaticRTP>,
    pub audio: Arc<TrackLocalStaticRTP>,
    /// The RTP senders of the video and the audio track. Their RTCP is not read: the
    /// caller reads it ([`read_sender_rtcp`]) or drains it ([`drain_rtcp`]).
    pub senders: [Arc<RTCRtpSender>; 2],
}

/// Publishes a VP8 and an Opus track from a peer of `api` as `participant` and waits
/// until it is connected.
pub async fn publish(
    api: &webrtc::api::API,
    config: RTCConfiguration,
    http_addr: std::net::SocketAddr,
    room: &str,
    participant: &str,
    token: &str,
) -> Published {
    publish_via(
        api,
        config,
        http_addr,
        (room, participant, token),
        &unchanged,
    )
    .await
}

/// [`publish`], with the node's answer passed through `rewrite` before the peer takes
/// it (e.g. to put another address in its candidates).
pub async fn publish_via(
    api: &webrtc::api::API,
    config: RTCConfiguration,
    http_addr: std::net::SocketAddr,
    (room, participant, token): (&str, &str, &str),
    rewrite: &(dyn Fn(String) -> String + Sync),
) -> Published {
    let pc = Arc::new(
        api.new_peer_connection(config)
            .await
            .expect("peer connection"),
    );
    let mut tracks = Vec::new();
    let mut senders = Vec::new();
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
        tracks.push(track);
        senders.push(sender);
    }
    let mut state = state_channel(&pc);
    let offer = pc.create_offer(None).await.expect("offer");
    let offer = set_local_gathered(&pc, offer).await;
    let r = post_sdp(
        http_addr,
        format!("/api/rooms/{room}/participants/{participant}/publish"),
        token,
        offer,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let answer = rewrite(r.body);
    pc.set_remote_description(RTCSessionDescription::answer(answer.clone()).expect("answer"))
        .await
        .unwrap_or_else(|e| panic!("remote description: {e}\n{answer}"));
    wait_connected(&mut state, "publisher").await;
    let audio = tracks.pop().expect("audio");
    let video = tracks.pop().expect("video");
    let audio_sender = senders.pop().expect("audio sender");
    let video_sender = senders.pop().expect("video sender");
    Published {
        pc,
        video,
        audio,
        senders: [video_sender, audio_sender],
    }
}

/// Reads and drops the RTCP `senders` get (the node's keyframe requests and reports).
pub fn drain_rtcp(senders: &[Arc<RTCRtpSender>]) {
    for sender in senders {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while sender.read(&mut buf).await.is_ok() {}
        });
    }
}

/// The SSRC a publisher's sender sends with.
pub async fn sender_ssrc(sender: &RTCRtpSender) -> u32 {
    let ssrc = sender
        .get_parameters()
        .await
        .encodings
        .first()
        .expect("an encoding")
        .ssrc;
    assert_ne!(ssrc, 0, "the sender has no SSRC");
    ssrc
}

/// One RTP packet a subscriber got, as its `read_rtp` (or a spy on its RTX stream) saw
/// it.
#[derive(Debug, Clone)]
pub struct Rtp {
    pub video: bool,
    pub ssrc: u32,
    pub payload_type: u8,
    pub seq: u16,
    pub payload: Vec<u8>,
}

/// A connected webrtc-rs subscriber.
pub struct Subscribed {
    pub pc: Arc<RTCPeerConnection>,
    /// The node's offer it answered.
    pub offer: String,
    /// Its event stream, open for as long as it lives.
    pub events: SseStream,
    /// Every RTP packet of the tracks it receives.
    pub rtp: mpsc::UnboundedReceiver<Rtp>,
    /// The receiver of each track as it starts: (video?, SSRC, receiver).
    pub receivers: mpsc::UnboundedReceiver<(bool, u32, Arc<RTCRtpReceiver>)>,
}

/// Subscribes `participant` with a peer of `api`: opens its event stream, answers the
/// node's offer and waits until it is connected.
pub async fn subscribe(
    api: &webrtc::api::API,
    config: RTCConfiguration,
    http_addr: std::net::SocketAddr,
    room: &str,
    participant: &str,
    token: &str,
) -> Subscribed {
    subscribe_via(
        api,
        config,
        http_addr,
        (room, participant, token),
        &unchanged,
    )
    .await
}

/// [`subscribe`], with the node's offer passed through `rewrite` before the peer takes
/// it ([`Subscribed::offer`] is the node's, as sent).
pub async fn subscribe_via(
    api: &webrtc::api::API,
    config: RTCConfiguration,
    http_addr: std::net::SocketAddr,
    (room, participant, token): (&str, &str, &str),
    rewrite: &(dyn Fn(String) -> String + Sync),
) -> Subscribed {
    // The event stream: the roster, then the node's offer.
    let events = format!("/api/rooms/{room}/participants/{participant}/events");
    let bearer = format!("Bearer {token}");
    let (events, offer) = tokio::task::spawn_blocking(move || {
        let mut stream = SseStream::open(http_addr, &events, &[("Authorization", &bearer)])
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

    let pc = Arc::new(
        api.new_peer_connection(config)
            .await
            .expect("peer connection"),
    );
    let (rtp_tx, rtp) = mpsc::unbounded_channel();
    let (receivers_tx, receivers) = mpsc::unbounded_channel();
    pc.on_track(Box::new(move |track, receiver, _| {
        let tx = rtp_tx.clone();
        let video = track.kind() == webrtc::rtp_transceiver::rtp_codec::RTPCodecType::Video;
        let _ = receivers_tx.send((video, track.ssrc(), receiver));
        tokio::spawn(async move {
            while let Ok((pkt, _)) = track.read_rtp().await {
                let rtp = Rtp {
                    video,
                    ssrc: pkt.header.ssrc,
                    payload_type: pkt.header.payload_type,
                    seq: pkt.header.sequence_number,
                    payload: pkt.payload.to_vec(),
                };
                if tx.send(rtp).is_err() {
                    return;
                }
            }
        });
        Box::pin(async {})
    }));
    let mut state = state_channel(&pc);
    let taken = rewrite(offer.clone());
    pc.set_remote_description(RTCSessionDescription::offer(taken.clone()).expect("offer"))
        .await
        .unwrap_or_else(|e| panic!("remote description: {e}\n{taken}"));
    let answer = pc.create_answer(None).await.expect("answer");
    let answer = set_local_gathered(&pc, answer).await;
    let r = post_sdp(
        http_addr,
        format!("/api/rooms/{room}/participants/{participant}/subscribe"),
        token,
        answer,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    wait_connected(&mut state, "subscriber").await;
    Subscribed {
        pc,
        offer,
        events,
        rtp,
        receivers,
    }
}

/// Writes packet `i` of each track every 20 ms, `count` of them at most, until `stop` is
/// set: VP8 key frames ([`vp8_payload`]) and Opus ([`opus_payload`]), sequence numbers
/// from 1000.
pub fn send_media(
    video: Arc<TrackLocalStaticRTP>,
    audio: Arc<TrackLocalStaticRTP>,
    count: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use webrtc::rtp::header::Header;
    use webrtc::rtp::packet::Packet;
    use webrtc::track::track_local::TrackLocalWriter;

    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut i = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < count {
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
}

/// The (sequence number, payload) of the video and audio packets from `rtp` until there
/// are 100 and 50 of them, or `within` passed.
pub async fn collect_media(
    rtp: &mut mpsc::UnboundedReceiver<Rtp>,
    within: Duration,
) -> (Vec<(u16, Vec<u8>)>, Vec<(u16, Vec<u8>)>) {
    let mut video = Vec::new();
    let mut audio = Vec::new();
    let _ = tokio::time::timeout(within, async {
        while let Some(p) = rtp.recv().await {
            if p.video {
                video.push((p.seq, p.payload));
            } else {
                audio.push((p.seq, p.payload));
            }
            if video.len() >= 100 && audio.len() >= 50 {
                return;
            }
        }
    })
    .await;
    (video, audio)
}

/// The payloads arrived intact, in order, with continuous sequence numbers.
pub fn assert_media_intact(video: &[(u16, Vec<u8>)], audio: &[(u16, Vec<u8>)]) {
    for (kind, got, min, expected) in [
        ("video", video, 100, vp8_payload as fn(u32) -> Vec<u8>),
        ("audio", audio, 50, opus_payload),
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
