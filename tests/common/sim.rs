//! A simulated network for the SFU core, with no socket and no sleep (quinn's `Pair` is
//! the model): the node's media sessions and two workers' [`SessionCache`]s, reached
//! through the [`Routes`] of the data plane, and clients that are browsers in miniature
//! (ICE checks, a dimpl DTLS client, SRTP, RTP and RTCP). Every datagram crosses a
//! [`Link`] with its own delay, jitter (which reorders) and loss, on a simulated clock
//! that jumps from one event to the next: the next datagram on the wire, a worker's
//! timer, a client's DTLS timer, its next consent check or transport-cc feedback. A
//! link may also have a bottleneck: a rate and a queue that drops what would wait
//! longer than its depth. Publishers send Opus, or VP8 in three simulcast layers as
//! Chrome does (rids, transport-wide numbers, keyframes on request); receivers report
//! every packet's arrival (transport-cc feedback, written by the node's own
//! `TwccRecorder`). Runs are the same on every machine: the randomness is seeded.

use std::collections::BinaryHeap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confnode::metrics::SfuMetrics;
use confnode::router::{Inbound, Routes};
use confnode::sfu::codec::parse_vp8;
use confnode::sfu::rtcp::{Rtcp, RtcpIter};
use confnode::sfu::rtp::RtpHeader;
use confnode::sfu::sdp::PublishOffer;
use confnode::sfu::session::{CheckVerdict, Epoch, MediaSessions, SessionCache};
use confnode::sfu::srtp::{SrtpContext, SrtpProfile, split_keying_material};
use confnode::sfu::twcc::TwccRecorder;
use confnode::stun::message::{attr, method};
use confnode::stun::{Class, Writer};
use dimpl::{Config, Dtls, DtlsCertificate, Output};
use sha2::{Digest, Sha256};

/// The node's media address: its host candidate and its one listener.
pub const NODE: &str = "192.0.2.1:3478";
/// How often a client repeats its ICE check (consent freshness wants one in 30 s).
const CHECK_EVERY_US: u64 = 5_000_000;

/// One direction of a client's path to the node.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub delay_us: u64,
    /// Each datagram is delayed by up to this much more, at random: later datagrams
    /// overtake earlier ones.
    pub jitter_us: u64,
    /// Datagrams lost in a thousand.
    pub loss_per_mille: u32,
    /// A bottleneck of this many bit/s (0: none) ...
    pub rate_bps: u64,
    /// ... whose queue drops a datagram that would wait longer than this.
    pub queue_us: u64,
}

impl Link {
    /// 10 ms, no jitter, no loss, no bottleneck.
    pub const CLEAN: Link = Link {
        delay_us: 10_000,
        jitter_us: 0,
        loss_per_mille: 0,
        rate_bps: 0,
        queue_us: 200_000,
    };
}

/// The simulcast layers of a simulated camera: rid, height, bit/s.
pub const VIDEO_LAYERS: [(&str, u16, u64); 3] = [
    ("q", 180, 150_000),
    ("h", 360, 500_000),
    ("f", 720, 1_500_000),
];
/// A simulated camera's frame rate.
pub const VIDEO_FPS: u64 = 30;
/// The header extension ids of the simulated video publisher's offer.
const PUB_TWCC_EXT: u8 = 3;
const PUB_RID_EXT: u8 = 10;
/// The receivers' transport-wide sequence number id (the node's offers fix it).
const SUB_TWCC_EXT: u8 = 3;
/// Where in a video payload the simulated publisher writes its layer: after the VP8
/// descriptor (6 bytes) and a keyframe's header (10 bytes).
const LAYER_TAG_AT: usize = 16;
/// How often receivers send transport-cc feedback.
const FEEDBACK_EVERY_US: u64 = 50_000;

/// A datagram on its way.
struct InFlight {
    at: u64,
    /// Sent order, for datagrams due at the same time.
    order: u64,
    client: usize,
    to_node: bool,
    data: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order)) // earliest first
    }
}

/// An RTP packet a client received and decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    /// Simulated time of arrival (µs).
    pub at: u64,
    /// For video from a simulated publisher: the layer the packet came from, and
    /// whether it starts a keyframe.
    pub layer: Option<u8>,
    pub keyframe: bool,
    /// Its VP8 temporal layer and picture id.
    pub tid: Option<u8>,
    pub picture_id: Option<u16>,
}

/// A browser in miniature.
pub struct Client {
    pub name: String,
    pub addr: SocketAddr,
    /// The worker its 5-tuple is hashed to.
    pub worker: usize,
    pub up: Link,
    pub down: Link,
    /// A receiving peer connection (else a publishing one).
    receives: bool,
    dtls: Dtls,
    /// Its certificate's fingerprint, as SDP writes it.
    fingerprint: String,
    /// The node's ICE credentials of this client's session.
    node_ice: Option<(String, String)>,
    ufrag: String,
    next_check: u64,
    dtls_timeout: Option<Instant>,
    /// (outbound, inbound) once DTLS gave keys.
    srtp: Option<(SrtpContext, SrtpContext)>,
    /// RTP received, in order of arrival.
    pub rtp: Vec<Received>,
    /// RTCP packet types received (200 SR, 201 RR, 205/206 feedback), with the time.
    pub rtcp: Vec<(u8, u64)>,
    /// When each direction's bottleneck is free again (µs): up, down.
    busy: [u64; 2],
    /// A receiver's record of arrivals for its transport-cc feedback, and when it
    /// next sends one.
    twcc: Option<TwccRecorder>,
    next_feedback: u64,
    /// A video publisher's SSRCs by layer, its next numbers, and the layers whose
    /// keyframe the node asked for.
    video: Option<VideoSource>,
}

/// What a simulated camera keeps.
struct VideoSource {
    ssrcs: [u32; 3],
    seqs: [u16; 3],
    frame: u32,
    twcc_seq: u16,
    picture_id: u16,
    /// Each layer's TL0PICIDX: counts its frames of temporal layer 0.
    tl0: [u8; 3],
    keyframe_wanted: [bool; 3],
}

impl Client {
    fn new(name: &str, index: usize, worker: usize, now: Instant) -> Client {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let der = cert.der().to_vec();
        let digest: [u8; 32] = Sha256::digest(&der).into();
        let fingerprint = digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let config = Config::builder()
            .with_crypto_provider(dimpl::crypto::rust_crypto::default_provider())
            .build()
            .expect("dimpl config");
        let certificate = DtlsCertificate {
            certificate: der,
            private_key: key.serialize_der(),
        };
        let mut dtls = Dtls::new_12(Arc::new(config), certificate, now);
        dtls.set_active(true);
        Client {
            name: name.to_owned(),
            addr: SocketAddr::from(([198, 51, 100, 10 + index as u8], 50_000)),
            worker,
            up: Link::CLEAN,
            down: Link::CLEAN,
            receives: false,
            dtls,
            fingerprint,
            node_ice: None,
            ufrag: format!("c{index:03}"),
            next_check: 0,
            dtls_timeout: None,
            srtp: None,
            rtp: Vec::new(),
            rtcp: Vec::new(),
            busy: [0; 2],
            twcc: None,
            next_feedback: 0,
            video: None,
        }
    }

    /// Whether DTLS gave this client its SRTP keys.
    /// A receiver that sends no transport-cc feedback (one that estimates its link
    /// itself and says so in REMB, which the test sends).
    pub fn without_transport_feedback(&mut self) {
        self.twcc = None;
    }

    pub fn connected(&self) -> bool {
        self.srtp.is_some()
    }
}

/// The node and its clients on one simulated network.
pub struct Sim {
    pub sessions: Arc<MediaSessions>,
    workers: Vec<SessionCache>,
    routes: Routes,
    epoch: Instant,
    /// Now, µs since the epoch.
    pub now: u64,
    pub clients: Vec<Client>,
    wire: BinaryHeap<InFlight>,
    order: u64,
    rng: u64,
    /// Datagrams the links lost, both ways.
    pub lost: u64,
}

impl Sim {
    /// A node with two workers; `seed` fixes every random choice of the run.
    pub fn new(seed: u64) -> Sim {
        let epoch = Instant::now();
        let sessions = Arc::new(MediaSessions::new(
            Epoch {
                instant: epoch,
                unix_us: 1_750_000_000_000_000,
            },
            vec![NODE.parse().expect("node address")],
            Arc::new(confnode::node::dtls_identity().expect("node certificate")),
            SfuMetrics::default(),
            [seed as u8; 32],
        ));
        let mut routes = Routes::new(0, 1);
        routes.add_socket(0, Some(NODE.parse().expect("node address")));
        Sim {
            workers: (0..2)
                .map(|w| SessionCache::new(w, sessions.clone()))
                .collect(),
            sessions,
            routes,
            epoch,
            now: 0,
            clients: Vec::new(),
            wire: BinaryHeap::new(),
            order: 0,
            rng: seed | 1,
            lost: 0,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn instant(&self) -> Instant {
        self.epoch + Duration::from_micros(self.now)
    }

    fn now_ms(&self) -> u64 {
        self.now / 1000
    }

    /// Puts `data` on the wire between client `client` and the node.
    fn transmit(&mut self, client: usize, to_node: bool, data: Vec<u8>) {
        let link = if to_node {
            self.clients[client].up
        } else {
            self.clients[client].down
        };
        if (self.random() % 1000) < u64::from(link.loss_per_mille) {
            self.lost += 1;
            return;
        }
        // Through the bottleneck, if any: it queues what comes faster than its rate
        // (the datagram with its IP and UDP headers).
        let bits = (data.len() as u64 + 28) * 8 * 1_000_000;
        let busy = &mut self.clients[client].busy[usize::from(!to_node)];
        let start = (*busy).max(self.now);
        // A link without a rate (or whose rate was lifted) still leaves what its
        // bottleneck queued first: first in, first out.
        let mut leaves = start;
        if let Some(serialise) = bits.checked_div(link.rate_bps) {
            if start - self.now > link.queue_us {
                self.lost += 1;
                return;
            }
            leaves = start + serialise;
            *busy = leaves;
        }
        let jitter = match link.jitter_us {
            0 => 0,
            j => self.random() % (j + 1),
        };
        self.order += 1;
        self.wire.push(InFlight {
            at: leaves + link.delay_us + jitter,
            order: self.order,
            client,
            to_node,
            data,
        });
    }

    /// A client that publishes one Opus track in `room`, on worker `worker`; its ICE
    /// check and DTLS handshake start at once.
    pub fn publisher(&mut self, room: &str, name: &str, worker: usize) -> usize {
        let index = self.clients.len();
        let client = Client::new(name, index, worker, self.instant());
        let offer = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:{}\r\na=ice-pwd:clientpassword0123456789\r\n\
             a=fingerprint:sha-256 {}\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\n\
             a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n",
            client.ufrag, client.fingerprint
        );
        self.publish(room, client, &offer)
    }

    /// Publishes `offer` for `client` in `room` and adds it; returns its index.
    fn publish(&mut self, room: &str, mut client: Client, offer: &str) -> usize {
        let offer = PublishOffer::parse(offer.as_bytes()).expect("offer");
        let answer = self
            .sessions
            .publish(room, &client.name, &offer, self.now_ms())
            .expect("publish");
        client.node_ice = Some(ice_of(&answer));
        self.clients.push(client);
        self.clients.len() - 1
    }

    /// A client that publishes a camera in `room` as Chrome does: VP8 in the three
    /// [`VIDEO_LAYERS`] (rids q, h, f), RTX, transport-cc; on worker `worker`.
    pub fn video_publisher(&mut self, room: &str, name: &str, worker: usize) -> usize {
        let index = self.clients.len();
        let mut client = Client::new(name, index, worker, self.instant());
        let offer = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:{}\r\na=ice-pwd:clientpassword0123456789\r\n\
             a=fingerprint:sha-256 {}\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\n\
             a=extmap:{PUB_TWCC_EXT} http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
             a=extmap:{PUB_RID_EXT} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
             a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n\
             a=rtcp-fb:96 transport-cc\r\na=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\n\
             a=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
             a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
            client.ufrag, client.fingerprint
        );
        let base = 0x5100_0000 + (index as u32) * 16;
        client.video = Some(VideoSource {
            ssrcs: [base, base + 1, base + 2],
            seqs: [1000, 20_000, 40_000],
            frame: 0,
            twcc_seq: 0,
            picture_id: 0,
            tl0: [0; 3],
            keyframe_wanted: [true; 3],
        });
        self.publish(room, client, &offer)
    }

    /// Runs `seconds` of video publisher `client`'s camera, [`VIDEO_FPS`] frames a
    /// second; `also` runs before each frame interval (other media, or feedback the
    /// test sends).
    pub fn video_for(&mut self, client: usize, seconds: u64, mut also: impl FnMut(&mut Sim)) {
        let frame_us = 1_000_000 / VIDEO_FPS;
        let end = self.now + seconds * 1_000_000;
        while self.now < end {
            assert!(self.send_video_frame(client), "the publisher has its keys");
            also(self);
            let next = self.now + frame_us;
            self.run_until(next);
        }
    }

    /// One frame of every layer of video publisher `client`'s camera (once it has
    /// keys): a keyframe where the node asked for one (and the first time), packets of
    /// at most 1200 bytes. False before it has keys.
    pub fn send_video_frame(&mut self, client: usize) -> bool {
        let mut packets = Vec::new();
        {
            let c = &mut self.clients[client];
            let (Some(v), Some((tx, _))) = (c.video.as_mut(), c.srtp.as_mut()) else {
                return false;
            };
            v.frame += 1;
            v.picture_id = (v.picture_id + 1) & 0x7FFF;
            // Chrome's L1T3: TIDs 0 2 1 2; a frame that refers to TID 0 alone has the
            // layer-sync bit; a keyframe is TID 0.
            let at = v.frame as usize % 4;
            for (l, &(rid, height, bps)) in VIDEO_LAYERS.iter().enumerate() {
                let key = std::mem::take(&mut v.keyframe_wanted[l]);
                let tid: u8 = if key { 0 } else { [0, 2, 1, 2][at] };
                let sync = !key && (at == 1 || at == 2);
                if tid == 0 {
                    v.tl0[l] = v.tl0[l].wrapping_add(1);
                }
                let size = (bps / 8 / VIDEO_FPS) as usize * if key { 3 } else { 1 };
                let count = size.div_ceil(1200).max(1);
                for i in 0..count {
                    let mut p = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    p[1] = 96 | if i + 1 == count { 0x80 } else { 0 };
                    p[2..4].copy_from_slice(&v.seqs[l].to_be_bytes());
                    p[4..8].copy_from_slice(&v.frame.wrapping_mul(3000).to_be_bytes());
                    p[8..12].copy_from_slice(&v.ssrcs[l].to_be_bytes());
                    v.seqs[l] = v.seqs[l].wrapping_add(1);
                    // One-byte extensions: the transport-wide number and the rid.
                    let mut ext = vec![PUB_TWCC_EXT << 4 | 1];
                    ext.extend(v.twcc_seq.to_be_bytes());
                    v.twcc_seq = v.twcc_seq.wrapping_add(1);
                    ext.push(PUB_RID_EXT << 4);
                    ext.extend(rid.as_bytes());
                    while ext.len() % 4 != 0 {
                        ext.push(0);
                    }
                    p.extend([0xBE, 0xDE]);
                    p.extend(((ext.len() / 4) as u16).to_be_bytes());
                    p.extend(ext);
                    // VP8 descriptor: X and S on a frame's first packet, a long
                    // picture id, TL0PICIDX, the TID and its sync bit.
                    let start = if i == 0 { 0x10 } else { 0 };
                    p.extend([0x80 | start, 0x80 | 0x40 | 0x20]);
                    p.extend((v.picture_id | 0x8000).to_be_bytes());
                    p.extend([v.tl0[l], tid << 6 | u8::from(sync) << 5]);
                    // A keyframe's tag and header with its size, or a delta frame's
                    // tag; then the layer, then filler.
                    let mut frame = vec![0u8; 10];
                    if key {
                        frame[..3].copy_from_slice(&[0x10, 0x02, 0x00]);
                        frame[3..6].copy_from_slice(&[0x9D, 0x01, 0x2A]);
                        frame[6..8].copy_from_slice(&(height * 16 / 9).to_le_bytes());
                        frame[8..10].copy_from_slice(&height.to_le_bytes());
                    } else {
                        frame[0] = 0x01;
                    }
                    frame.push(l as u8);
                    let body = (size / count).clamp(frame.len(), 1150);
                    frame.resize(body, 0x5A);
                    p.extend(frame);
                    let n = p.len();
                    p.resize(n + 32, 0);
                    let n = tx.protect_rtp(&mut p, n).expect("protect");
                    p.truncate(n);
                    packets.push(p);
                }
            }
        }
        for p in packets {
            self.transmit(client, true, p);
        }
        true
    }

    /// A client that receives in `room` (on worker `worker`): the room's receiving
    /// sessions are brought up to date for every client in it, and this one answers
    /// the offer it gets.
    pub fn receiver(&mut self, room: &str, name: &str, worker: usize) -> usize {
        let index = self.clients.len();
        let mut client = Client::new(name, index, worker, self.instant());
        client.receives = true;
        client.twcc = Some(TwccRecorder::new());
        self.clients.push(client);
        let holders: Vec<(String, Option<u16>)> = self
            .clients
            .iter()
            .filter(|c| c.receives)
            .map(|c| (c.name.clone(), None))
            .collect();
        let offers = self.sessions.sync_room(room, &holders, self.now_ms());
        for (who, sdp) in offers {
            let Some(i) = self
                .clients
                .iter()
                .position(|c| c.receives && c.name == who)
            else {
                continue;
            };
            let answer = browser_answer(&sdp, &self.clients[i]);
            self.sessions
                .subscribe_answer(room, &who, answer.as_bytes(), self.now_ms())
                .expect("subscribe answer");
            self.clients[i].node_ice = Some(ice_of(&sdp));
        }
        index
    }

    /// Sends an RTP packet from client `client` (once it has keys; false before).
    pub fn send_rtp(
        &mut self,
        client: usize,
        ssrc: u32,
        seq: u16,
        ts: u32,
        payload: &[u8],
    ) -> bool {
        let c = &mut self.clients[client];
        let Some((tx, _)) = c.srtp.as_mut() else {
            return false;
        };
        let mut buf = vec![0u8; 12 + payload.len() + 16];
        buf[0] = 0x80;
        buf[1] = 111;
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[4..8].copy_from_slice(&ts.to_be_bytes());
        buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
        buf[12..12 + payload.len()].copy_from_slice(payload);
        let n = tx
            .protect_rtp(&mut buf, 12 + payload.len())
            .expect("protect");
        buf.truncate(n);
        self.transmit(client, true, buf);
        true
    }

    /// Delivers `data` to the node at once as a datagram from client `client` (or,
    /// `spoofed`, from an address no check validated): the entry hostile traffic
    /// takes. What the node answers goes onto the wire as usual.
    pub fn inject(&mut self, client: usize, spoofed: bool, data: Vec<u8>) {
        if spoofed {
            let real = self.clients[client].addr;
            self.clients[client].addr = SocketAddr::from(([203, 0, 113, 66], 40_000));
            self.node_receives_any(client, data);
            self.clients[client].addr = real;
        } else {
            self.node_receives_any(client, data);
        }
    }

    /// `plain` (an RTP packet, or RTCP with `rtcp`) protected with client `client`'s
    /// SRTP keys; `None` before it has keys or when the packet is too short to protect.
    pub fn protect(&mut self, client: usize, plain: &[u8], rtcp: bool) -> Option<Vec<u8>> {
        let (tx, _) = self.clients[client].srtp.as_mut()?;
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + 32, 0);
        let n = if rtcp {
            tx.protect_rtcp(&mut buf, plain.len()).ok()?
        } else {
            tx.protect_rtp(&mut buf, plain.len()).ok()?
        };
        buf.truncate(n);
        Some(buf)
    }

    /// Runs the network until `until` (µs), event by event.
    pub fn run_until(&mut self, until: u64) {
        loop {
            self.client_timers();
            self.node_timers();
            while self.wire.peek().is_some_and(|d| d.at <= self.now) {
                let Some(d) = self.wire.pop() else { break };
                if d.to_node {
                    self.node_receives(d.client, d.data);
                } else {
                    self.client_receives(d.client, d.data);
                }
            }
            if self.now >= until {
                return;
            }
            self.now = self.next_event().min(until);
        }
    }

    /// The time of the next event; always later than now (what is due now has run).
    fn next_event(&self) -> u64 {
        let wire = self.wire.peek().map(|d| d.at);
        let workers = self
            .workers
            .iter()
            .filter_map(SessionCache::poll_timeout)
            .min();
        let clients = self
            .clients
            .iter()
            .map(|c| {
                let dtls = c
                    .dtls_timeout
                    .map(|t| t.saturating_duration_since(self.epoch).as_micros() as u64);
                let check = c.node_ice.as_ref().map(|_| c.next_check);
                let feedback = c
                    .twcc
                    .as_ref()
                    .filter(|_| c.srtp.is_some())
                    .map(|_| c.next_feedback);
                [dtls, check, feedback]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(u64::MAX)
            })
            .min();
        [wire, workers, clients]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u64::MAX)
            .max(self.now + 1)
    }

    /// Consent checks due, DTLS timers run out.
    fn client_timers(&mut self) {
        let now = self.instant();
        for i in 0..self.clients.len() {
            if self.clients[i].node_ice.is_some() && self.clients[i].next_check <= self.now {
                self.clients[i].next_check = self.now + CHECK_EVERY_US;
                let check = ice_check(&self.clients[i], self.order);
                self.transmit(i, true, check);
            }
            if self.clients[i].srtp.is_some()
                && self.clients[i].twcc.is_some()
                && self.clients[i].next_feedback <= self.now
            {
                self.clients[i].next_feedback = self.now + FEEDBACK_EVERY_US;
                self.send_feedback(i);
            }
            let due = self.clients[i].dtls_timeout.is_some_and(|t| t <= now);
            if due || self.clients[i].dtls_timeout.is_none() {
                let _ = self.clients[i].dtls.handle_timeout(now);
                self.poll_dtls(i);
            }
        }
    }

    fn node_timers(&mut self) {
        for w in 0..self.workers.len() {
            if self.workers[w]
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                let mut out = Vec::new();
                self.workers[w].handle_timeout(self.now, &mut |d: &[u8], to: SocketAddr, _| {
                    out.push((d.to_vec(), to))
                });
                self.deliver(out);
            }
        }
    }

    /// What the node sent, onto the wire towards its clients.
    fn deliver(&mut self, out: Vec<(Vec<u8>, SocketAddr)>) {
        for (data, to) in out {
            if let Some(i) = self.clients.iter().position(|c| c.addr == to) {
                self.transmit(i, false, data);
            }
        }
    }

    /// The data plane: the router picks the core, the client's worker runs it.
    fn node_receives(&mut self, client: usize, mut data: Vec<u8>) {
        let (src, w) = (self.clients[client].addr, self.clients[client].worker);
        let mut out = Vec::new();
        match self.routes.inbound(0, src, &data) {
            Inbound::Stun => {
                let len = data.len();
                data.resize(len.max(1500), 0);
                let now_ms = self.now_ms();
                if let CheckVerdict::Reply(n) =
                    self.workers[w].answer_check(&mut data, len, src, 0, now_ms)
                {
                    data.truncate(n);
                    out.push((data, src));
                }
            }
            Inbound::Media => {
                let now = self.now;
                let _ = self.workers[w].handle_media(&mut data, src, 0, now, &mut |d, to, _| {
                    out.push((d.to_vec(), to))
                });
            }
            other => panic!("the node got {other:?} from {src}"),
        }
        self.deliver(out);
    }

    /// [`Sim::node_receives`] for anything at all: what the router sends to TURN or
    /// drops is dropped here (this node has no TURN core).
    fn node_receives_any(&mut self, client: usize, data: Vec<u8>) {
        let src = self.clients[client].addr;
        match self.routes.inbound(0, src, &data) {
            Inbound::Stun | Inbound::Media => self.node_receives(client, data),
            _ => {}
        }
    }

    /// A receiver's transport-cc feedback on what arrived since the last one.
    fn send_feedback(&mut self, client: usize) {
        let now = self.now;
        let mut out = Vec::new();
        {
            let c = &mut self.clients[client];
            let (Some(rec), Some((tx, _))) = (c.twcc.as_mut(), c.srtp.as_mut()) else {
                return;
            };
            let mut buf = vec![0u8; 1500];
            while let Some(n) = rec.write_feedback(&mut buf[..1200], 0x00C1_1E47, 1, now) {
                let mut p = buf[..n].to_vec();
                p.resize(n + 32, 0);
                if let Ok(m) = tx.protect_rtcp(&mut p, n) {
                    p.truncate(m);
                    out.push(p);
                }
            }
        }
        for p in out {
            self.transmit(client, true, p);
        }
    }

    fn client_receives(&mut self, client: usize, mut data: Vec<u8>) {
        let now = self.now;
        match data.first() {
            Some(0..=3) => {} // our check's answer
            Some(20..=63) => {
                let _ = self.clients[client].dtls.handle_packet(&data);
                self.poll_dtls(client);
            }
            Some(128..=191) => {
                let c = &mut self.clients[client];
                let Some((_, rx)) = c.srtp.as_mut() else {
                    return;
                };
                if data.get(1).is_some_and(|b| (192..=223).contains(b)) {
                    if let Ok(n) = rx.unprotect_rtcp(&mut data) {
                        c.rtcp.push((data[1], now));
                        if let Some(v) = c.video.as_mut() {
                            keyframes_asked(v, &data[..n]);
                        }
                    }
                } else if let Ok(n) = rx.unprotect_rtp(&mut data)
                    && let Some(h) = RtpHeader::parse(&data[..n])
                {
                    if let (Some(rec), Some(seq)) =
                        (c.twcc.as_mut(), h.extension_value(&data, SUB_TWCC_EXT))
                        && let [a, b] = seq
                    {
                        rec.on_packet(u16::from_be_bytes([*a, *b]), now);
                    }
                    let payload = data.get(h.payload()).unwrap_or(&[]);
                    let vp8 = (h.payload_type == 96).then(|| parse_vp8(payload)).flatten();
                    c.rtp.push(Received {
                        ssrc: h.ssrc,
                        seq: h.seq,
                        timestamp: h.timestamp,
                        payload_type: h.payload_type,
                        at: now,
                        layer: vp8.and_then(|_| payload.get(LAYER_TAG_AT).copied()),
                        keyframe: vp8.is_some_and(|d| d.keyframe),
                        tid: vp8.and_then(|d| d.tid),
                        picture_id: vp8.and_then(|d| d.picture_id),
                    });
                }
            }
            _ => {}
        }
    }

    /// Sends what the client's DTLS has to send; keeps its keys once it has them.
    fn poll_dtls(&mut self, client: usize) {
        let mut records = Vec::new();
        let mut buf = vec![0u8; 2048];
        let c = &mut self.clients[client];
        loop {
            match c.dtls.poll_output(&mut buf) {
                Output::Packet(p) => records.push(p.to_vec()),
                Output::Timeout(t) => {
                    c.dtls_timeout = Some(t);
                    break;
                }
                Output::KeyingMaterial(km, profile) => {
                    let profile = match profile {
                        dimpl::SrtpProfile::AEAD_AES_128_GCM => SrtpProfile::AeadAes128Gcm,
                        dimpl::SrtpProfile::AEAD_AES_256_GCM => SrtpProfile::AeadAes256Gcm,
                        _ => SrtpProfile::Aes128CmHmacSha1_80,
                    };
                    let (client_write, server_write) =
                        split_keying_material(profile, &km).expect("keying material");
                    c.srtp = Some((
                        SrtpContext::new(&client_write, 16).expect("srtp"),
                        SrtpContext::new(&server_write, 64).expect("srtp"),
                    ));
                }
                Output::BufferTooSmall { needed } => buf.resize(needed, 0),
                _ => {}
            }
        }
        for r in records {
            self.transmit(client, true, r);
        }
    }
}

/// Marks the layers whose keyframe a publisher's RTCP from the node asks for.
fn keyframes_asked(v: &mut VideoSource, rtcp: &[u8]) {
    for packet in RtcpIter::new(rtcp) {
        let media = match packet {
            Rtcp::Pli { media, .. } => media,
            Rtcp::Fir(f) => f.fir_entries().next().map_or(0, |(ssrc, _)| ssrc),
            _ => continue,
        };
        if let Some(l) = v.ssrcs.iter().position(|s| *s == media) {
            v.keyframe_wanted[l] = true;
        }
    }
}

/// The ICE credentials of an SDP.
fn ice_of(sdp: &str) -> (String, String) {
    let line = |name: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix(&format!("a={name}:")))
            .expect("ICE line")
            .trim()
            .to_owned()
    };
    (line("ice-ufrag"), line("ice-pwd"))
}

/// A connectivity check of `c` to the node, nominating (the client is controlling).
fn ice_check(c: &Client, id: u64) -> Vec<u8> {
    let (ufrag, pwd) = c.node_ice.as_ref().expect("node credentials");
    let mut buf = vec![0u8; 512];
    let mut tid = [0u8; 12];
    tid[..8].copy_from_slice(&id.to_be_bytes());
    let n = {
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &tid).expect("writer");
        w.add(attr::USERNAME, format!("{ufrag}:{}", c.ufrag).as_bytes())
            .expect("username");
        w.add(attr::ICE_CONTROLLING, &[9; 8]).expect("controlling");
        w.add(attr::USE_CANDIDATE, &[]).expect("use-candidate");
        w.add_integrity(pwd.as_bytes()).expect("integrity");
        w.add_fingerprint().expect("fingerprint");
        w.finish()
    };
    buf.truncate(n);
    buf
}

/// The answer a browser gives the node's offer: every live m-line received, with the
/// client's ICE credentials and certificate.
fn browser_answer(offer: &str, c: &Client) -> String {
    answer_as_browser(offer, &c.ufrag, &c.fingerprint)
}

/// [`browser_answer`] for a client of ICE ufrag `ufrag` and certificate `fingerprint`.
pub fn answer_as_browser(offer: &str, ufrag: &str, fingerprint: &str) -> String {
    let sd = sdp::SessionDescription::unmarshal(&mut Cursor::new(offer.as_bytes()))
        .expect("the node's offer parses");
    let mut body = String::new();
    let mut bundle = Vec::new();
    for m in &sd.media_descriptions {
        let mid = m.attribute("mid").flatten().expect("mid");
        let live = m.media_name.port.value != 0;
        body.push_str(&format!(
            "m={} {} UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n",
            m.media_name.media,
            if live { 9 } else { 0 },
            m.media_name.formats.join(" ")
        ));
        if !live {
            continue;
        }
        bundle.push(mid.to_owned());
        body.push_str(&format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:clientpassword0123456789\r\n\
             a=fingerprint:sha-256 {}\r\na=setup:active\r\na=recvonly\r\na=rtcp-mux\r\n",
            ufrag, fingerprint
        ));
        for a in &m.attributes {
            if matches!(a.key.as_str(), "rtpmap" | "fmtp" | "rtcp-fb" | "extmap") {
                body.push_str(&format!("a={a}\r\n"));
            }
        }
    }
    let mut out = String::from("v=0\r\no=- 77 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    if !bundle.is_empty() {
        out.push_str(&format!("a=group:BUNDLE {}\r\n", bundle.join(" ")));
    }
    out + &body
}
