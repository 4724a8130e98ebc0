//! The SFU forwarding path allocates nothing per packet in steady state.
//!
//! A counting global allocator (per thread, so the test harness's own threads do not
//! disturb the count) watches 10,000 frame intervals of a three-layer VP8 simulcast
//! track going to ten receivers after a warm-up, with everything the path does between
//! packets: layer switches (preference changes and a layer that stops and comes back),
//! keyframe requests through the throttle, losses towards the publisher answered by
//! NACKs and RTX retransmissions, receivers' NACKs answered from the cache (plain and
//! RTX), receiver and sender reports, and the RTCP from receivers walked and read.
//!
//! The same run again with SRTP around it, as the data plane has it: every publisher
//! packet (RTX too) protected by the publisher and unprotected in place with our inbound
//! context, every packet to a receiver (forwarded, or resent for its NACK) protected
//! with that receiver's own outbound context (own key; the three profiles among the
//! receivers), and the RTCP we send (PLI, NACK, RR to the publisher, SR to receivers)
//! protected as SRTCP. The RTCP from receivers is read in the clear.

#[path = "common/keys.rs"]
mod keys;
use keys::master;
use std::hint::black_box;

use confnode::sfu::bwe::SentPackets;
use confnode::sfu::codec::Codec;
use confnode::sfu::forward::{Action, ExtensionMap, Forwarder, ForwarderConfig, RtxConfig};
use confnode::sfu::rtcp::{self, Rtcp, RtcpIter};
use confnode::sfu::rtp::{self, RtpHeader};
use confnode::sfu::srtp::{SrtpContext, SrtpProfile};
use confnode::sfu::track::{LayerConfig, Track, TrackConfig};

mod alloc_counter;

use alloc_counter::allocations;

const PT: u8 = 96;
const RTX_PT: u8 = 97;
const RID_EXT: u8 = 10;
const RRID_EXT: u8 = 11;
const ABS_SEND_TIME: u8 = 3;
const MID_EXT: u8 = 4;
const TWCC_EXT: u8 = 5;
const SSRCS: [u32; 3] = [0x1111, 0x2222, 0x3333];
const RTX_SSRCS: [u32; 3] = [0x4111, 0x4222, 0x4333];
const RIDS: [&[u8]; 3] = [b"q", b"h", b"f"];
const HEIGHTS: [u16; 3] = [180, 360, 720];
const RECEIVERS: usize = 10;
const PAYLOAD: usize = 1000;
const SLOT: usize = 1600;

/// Writes a VP8 packet of `layer` into `buf` without allocating: rid, abs-send-time,
/// mid and transport-wide seq extensions, a payload descriptor with a 15-bit picture id
/// and TL0PICIDX, and a keyframe or interframe header. Returns its length.
fn write_packet(buf: &mut [u8], layer: usize, seq: u16, frame: u32, key: bool) -> usize {
    let ts = frame
        .wrapping_mul(3000)
        .wrapping_add(layer as u32 * 1_000_000);
    buf[0] = 0x90;
    buf[1] = PT;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&SSRCS[layer].to_be_bytes());
    // Extension block: 3 words.
    buf[12..16].copy_from_slice(&[0xBE, 0xDE, 0, 3]);
    let ext = [
        RID_EXT << 4,
        RIDS[layer][0],
        (ABS_SEND_TIME << 4) | 2,
        1,
        2,
        3,
        MID_EXT << 4,
        b'0',
        (TWCC_EXT << 4) | 1,
        (seq >> 8) as u8,
        seq as u8,
        0,
    ];
    buf[16..28].copy_from_slice(&ext);
    let pid = (frame & 0x7FFF) as u16;
    let desc = [0x90, 0xC0, 0x80 | (pid >> 8) as u8, pid as u8, frame as u8];
    buf[28..33].copy_from_slice(&desc);
    let mut at = 33;
    if key {
        let h = HEIGHTS[layer];
        let w = h / 9 * 16;
        buf[at..at + 10].copy_from_slice(&[
            0x10,
            0x02,
            0x00,
            0x9D,
            0x01,
            0x2A,
            w as u8,
            (w >> 8) as u8,
            h as u8,
            (h >> 8) as u8,
        ]);
        at += 10;
    } else {
        buf[at..at + 3].copy_from_slice(&[0x11, 0x02, 0x00]);
        at += 3;
    }
    let end = 12 + 16 + PAYLOAD;
    buf[at..end].fill(0x5A);
    end
}

fn track() -> Track {
    let layers = (0..3)
        .map(|l| LayerConfig {
            rid: Some(String::from_utf8_lossy(RIDS[l]).into_owned()),
            ssrc: None,
            rtx_ssrc: Some(RTX_SSRCS[l]),
            height: HEIGHTS[l],
        })
        .collect();
    Track::new(TrackConfig {
        codec: Codec::Vp8,
        clock_rate: 90_000,
        payload_type: PT,
        layers,
        rid_extension: Some(RID_EXT),
        repaired_rid_extension: Some(RRID_EXT),
        cache_packets: 512,
        nack: true,
    })
}

fn receiver(track: &Track, i: usize) -> Forwarder {
    let mut extensions = ExtensionMap::default();
    extensions.map(ABS_SEND_TIME, 2);
    extensions.set_transport_cc(TWCC_EXT, 3);
    extensions.set_mid(MID_EXT, 1, &[b'0' + (i % 10) as u8]);
    Forwarder::new(
        track,
        ForwarderConfig {
            ssrc: 0xA000 + i as u32,
            payload_type: Some(100),
            rtx: i.is_multiple_of(2).then_some(RtxConfig {
                ssrc: 0xB000 + i as u32,
                payload_type: 101,
            }),
            max_height: [None, Some(360), Some(180)][i % 3],
            initial_seq: (i as u16).wrapping_mul(7919),
            initial_timestamp: i as u32 * 12345,
            extensions,
        },
    )
}

/// The publisher's profile: what Chrome gets from our DTLS.
const PUBLISHER_PROFILE: SrtpProfile = SrtpProfile::AeadAes256Gcm;
const PUBLISHER_SEED: u8 = 0xA5;
/// Receiver `i` gets `RECEIVER_PROFILES[(i / 3) % 3]`.
const RECEIVER_PROFILES: [SrtpProfile; 3] = [
    SrtpProfile::AeadAes256Gcm,
    SrtpProfile::AeadAes128Gcm,
    SrtpProfile::Aes128CmHmacSha1_80,
];
/// SSRCs a context tracks: a publisher's three layers and their RTX, or a receiver's
/// stream and its RTX.
const CONTEXT_SSRCS: usize = 8;

/// The SRTP contexts around the SFU core, all made before the run.
struct Srtp {
    /// The publisher's own, which protects what it sends.
    publisher: SrtpContext,
    /// Ours with the publisher: its packets in, our RTCP out.
    inbound: SrtpContext,
    to_publisher: SrtpContext,
    /// Ours with each receiver, each its own key.
    outbound: Vec<SrtpContext>,
    /// Packets protected or unprotected.
    operations: u64,
}

/// SRTP around the forwarding, or nothing (`Crypto(None)`).
struct Crypto(Option<Srtp>);

impl Crypto {
    fn new(srtp: bool) -> Crypto {
        let context = |profile, seed| {
            SrtpContext::new(&master(profile, seed), CONTEXT_SSRCS).expect("SRTP context")
        };
        Crypto(srtp.then(|| {
            Srtp {
                publisher: context(PUBLISHER_PROFILE, PUBLISHER_SEED),
                inbound: context(PUBLISHER_PROFILE, PUBLISHER_SEED),
                to_publisher: context(PUBLISHER_PROFILE, PUBLISHER_SEED.wrapping_add(1)),
                outbound: (0..RECEIVERS)
                    .map(|i| context(RECEIVER_PROFILES[(i / 3) % 3], i as u8))
                    .collect(),
                operations: 0,
            }
        }))
    }

    fn operations(&self) -> u64 {
        self.0.as_ref().map_or(0, |s| s.operations)
    }

    /// The publisher's RTP packet `buf[..len]` as it goes on the wire; returns its length.
    fn publisher_sends(&mut self, buf: &mut [u8], len: usize) -> usize {
        let Some(s) = &mut self.0 else { return len };
        s.operations += 1;
        s.publisher
            .protect_rtp(buf, len)
            .expect("publisher protects")
    }

    /// The publisher's packet `pkt` as we receive it, unprotected in place; returns the
    /// RTP length.
    fn publisher_arrives(&mut self, pkt: &mut [u8]) -> usize {
        let Some(s) = &mut self.0 else {
            return pkt.len();
        };
        s.operations += 1;
        s.inbound.unprotect_rtp(pkt).expect("unprotect")
    }

    /// The RTP packet `buf[..len]` for receiver `r`, protected; returns its length.
    fn rtp_to(&mut self, r: usize, buf: &mut [u8], len: usize) -> usize {
        let Some(s) = &mut self.0 else { return len };
        s.operations += 1;
        s.outbound[r].protect_rtp(buf, len).expect("protect")
    }

    /// Our RTCP packet `buf[..len]` for receiver `to`, or for the publisher (`None`),
    /// protected; returns its length.
    fn rtcp_to(&mut self, to: Option<usize>, buf: &mut [u8], len: usize) -> usize {
        let Some(s) = &mut self.0 else { return len };
        s.operations += 1;
        let ctx = match to {
            Some(r) => &mut s.outbound[r],
            None => &mut s.to_publisher,
        };
        ctx.protect_rtcp(buf, len).expect("protect RTCP")
    }
}

/// Everything between the network and the SFU core, preallocated.
struct Node {
    track: Track,
    receivers: Vec<Forwarder>,
    /// Per receiver: its output slot, transport-wide seq, and the last sequence number
    /// it was sent (for its NACKs).
    out: Vec<[u8; SLOT]>,
    /// Each receiver's transport-wide sequence numbers and what went out under them.
    sent_packets: Vec<SentPackets>,
    last_sent: Vec<Option<u16>>,
    inbuf: [u8; SLOT],
    rtcp: [u8; 512],
    srtp: Crypto,
    seq: [u16; 3],
    frame: [u32; 3],
    /// Layers whose keyframe was asked for: the publisher sends one next.
    want_key: [bool; 3],
    /// A lost packet (layer, seq, frame) the publisher will repair after our NACK.
    lost: Option<(usize, u16, u32)>,
    now: u64,
    sent: u64,
    switches: u64,
    keyframe_requests: u64,
    nacks_answered: u64,
    nacks_to_publisher: u64,
}

impl Node {
    fn new(srtp: bool) -> Node {
        let track = track();
        let receivers = (0..RECEIVERS).map(|i| receiver(&track, i)).collect();
        Node {
            track,
            receivers,
            out: vec![[0; SLOT]; RECEIVERS],
            sent_packets: (0..RECEIVERS).map(|_| SentPackets::new()).collect(),
            last_sent: vec![None; RECEIVERS],
            inbuf: [0; SLOT],
            rtcp: [0; 512],
            srtp: Crypto::new(srtp),
            seq: [100, 20_000, 65_000],
            frame: [0; 3],
            want_key: [false; 3],
            lost: None,
            now: 1_000_000,
            sent: 0,
            switches: 0,
            keyframe_requests: 0,
            nacks_answered: 0,
            nacks_to_publisher: 0,
        }
    }

    /// One packet of `layer` from the publisher, to every receiver; `lose` drops it on
    /// the way in (a gap for the NACK generator), `key` makes it a keyframe.
    fn packet(&mut self, layer: usize, key: bool, lose: bool) {
        let seq = self.seq[layer];
        self.seq[layer] = seq.wrapping_add(1);
        let frame = self.frame[layer];
        self.frame[layer] += 1;
        let len = write_packet(&mut self.inbuf, layer, seq, frame, key);
        let len = self.srtp.publisher_sends(&mut self.inbuf, len);
        if lose {
            return;
        }
        self.deliver(len);
    }

    /// The publisher's packet `inbuf[..len]` as it arrives, to every receiver.
    fn deliver(&mut self, len: usize) {
        let len = self.srtp.publisher_arrives(&mut self.inbuf[..len]);
        let Ok(info) = self.track.receive(&mut self.inbuf, len, self.now) else {
            return;
        };
        for (i, fwd) in self.receivers.iter_mut().enumerate() {
            let before = fwd.current_layer();
            let out = &mut self.out[i];
            out[..info.len].copy_from_slice(&self.inbuf[..info.len]);
            if let Some(n) = fwd.forward(out, &info, self.now) {
                let h = RtpHeader::parse(&out[..n]).expect("forwarded packets parse");
                // As `Egress::send_rtp` does it.
                if let Some(at) = fwd.transport_seq_at() {
                    let seq = self.sent_packets[i].stamp(n, self.now);
                    out[at..at + 2].copy_from_slice(&seq.to_be_bytes());
                }
                self.last_sent[i] = Some(h.seq);
                self.sent += 1;
                let n = self.srtp.rtp_to(i, out, n);
                black_box(&out[..n]);
            }
            if fwd.current_layer() != before {
                self.switches += 1;
            }
            while let Some(Action::NeedKeyframe { layer, .. }) = fwd.poll_action(self.now) {
                if let Some(req) = self.track.request_keyframe(layer, self.now) {
                    self.keyframe_requests += 1;
                    self.want_key[usize::from(req.layer)] = true;
                    let n = rtcp::write_pli(&mut self.rtcp, 1, req.ssrc).expect("fits");
                    black_box(self.srtp.rtcp_to(None, &mut self.rtcp, n));
                }
            }
        }
    }

    /// The publisher answers a NACK with an RTX packet of `seq` of `layer`.
    fn retransmission(&mut self, layer: usize, seq: u16, frame: u32, rtx_seq: u16) {
        let len = write_packet(&mut self.inbuf, layer, seq, frame, false);
        let h = RtpHeader::parse(&self.inbuf[..len]).expect("own packet");
        let Some(n) = rtp::wrap_rtx(&mut self.inbuf, &h, RTX_SSRCS[layer], RTX_PT, rtx_seq) else {
            return;
        };
        let n = self.srtp.publisher_sends(&mut self.inbuf, n);
        self.deliver(n);
    }

    /// RTCP in both directions: a receiver's NACK (and PLI) answered, NACKs and an RR
    /// for the publisher, SRs for the receivers.
    fn rtcp(&mut self, i: usize) {
        let r = i % RECEIVERS;
        if let Some(last) = self.last_sent[r] {
            let fwd = &mut self.receivers[r];
            let lost = [last.wrapping_sub(3), last.wrapping_sub(2), last];
            let n = rtcp::write_nack(&mut self.rtcp, 7, fwd.ssrc(), &lost).expect("fits");
            let m = rtcp::write_pli(&mut self.rtcp[n..], 7, fwd.ssrc()).expect("fits");
            for p in RtcpIter::new(&self.rtcp[..n + m]) {
                match p {
                    Rtcp::Nack(f) => {
                        for seq in f.nack_seqs() {
                            let out = &mut self.out[r];
                            if let Ok(len) = fwd.resend(&self.track, seq, out, self.now) {
                                self.nacks_answered += 1;
                                let len = self.srtp.rtp_to(r, out, len);
                                black_box(&out[..len]);
                            }
                        }
                    }
                    Rtcp::Pli { .. } => {
                        if let Some(layer) = fwd.keyframe_layer()
                            && let Some(req) = self.track.request_keyframe(layer, self.now)
                        {
                            self.want_key[usize::from(req.layer)] = true;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(n) = fwd.write_sender_report(&mut self.rtcp, &self.track, self.now, 42) {
                black_box(self.srtp.rtcp_to(Some(r), &mut self.rtcp, n));
            }
        }
        if let Some(n) = self.track.write_nacks(&mut self.rtcp, 1, self.now, 30_000) {
            self.nacks_to_publisher += 1;
            let n = self.srtp.rtcp_to(None, &mut self.rtcp, n);
            black_box(&self.rtcp[..n]);
            if let Some((layer, seq, frame)) = self.lost.take() {
                self.retransmission(layer, seq, frame, seq);
            }
        }
        if let Some(n) = self
            .track
            .write_receiver_report(&mut self.rtcp, 1, self.now)
        {
            black_box(self.srtp.rtcp_to(None, &mut self.rtcp, n));
        }
        while let Some(req) = self.track.poll_keyframe(self.now) {
            self.keyframe_requests += 1;
            self.want_key[usize::from(req.layer)] = true;
        }
        self.track.poll(self.now);
    }

    /// `frames` frame intervals: each running layer sends one packet per frame (a
    /// keyframe when one was asked for, as a publisher does), a packet of layer 1 is
    /// lost now and then and repaired by RTX after our NACK, preferences change, and
    /// the top layer pauses for ten seconds in every thirty.
    fn run(&mut self, frames: u32, offset: u32) {
        for f in offset..offset + frames {
            self.now += 33_333;
            let top_paused = (f / 300) % 3 == 2;
            for layer in 0..3 {
                if layer == 2 && top_paused {
                    continue;
                }
                let lose = f % 97 == 13 && layer == 1 && self.lost.is_none();
                if lose {
                    self.lost = Some((1, self.seq[1], self.frame[1]));
                }
                let key = std::mem::take(&mut self.want_key[layer]);
                self.packet(layer, key, lose);
            }
            if f % 5 == 0 {
                self.rtcp(f as usize);
            }
            if f % 200 == 100 {
                let r = (f as usize / 200) % RECEIVERS;
                let cap = [None, Some(360), Some(180)][(f as usize / 100) % 3];
                self.receivers[r].set_max_height(cap);
            }
        }
    }
}

/// Warms `srtp` or plain forwarding up, then counts the allocations of 10,000 frames.
fn steady_state(srtp: bool) {
    let mut node = Node::new(srtp);
    node.run(2_000, 0);
    let warm = (
        node.sent,
        node.switches,
        node.nacks_answered,
        node.nacks_to_publisher,
    );
    let operations = node.srtp.operations();
    assert!(
        warm.0 > 0 && warm.1 > 0 && warm.2 > 0 && warm.3 > 0,
        "{warm:?}"
    );

    let before = allocations();
    node.run(10_000, 2_000);
    let allocated = allocations() - before;

    // Every path was taken in the measured run, not only in the warm-up.
    // One packet per frame per receiver.
    assert!(node.sent - warm.0 > 95_000, "sent {}", node.sent - warm.0);
    println!(
        "sent {}, switches {}, NACKed packets resent {}, NACKs to the publisher {}, \
         keyframe requests {}",
        node.sent - warm.0,
        node.switches - warm.1,
        node.nacks_answered - warm.2,
        node.nacks_to_publisher - warm.3,
        node.keyframe_requests
    );
    assert!(
        node.switches - warm.1 > 20,
        "switches {}",
        node.switches - warm.1
    );
    assert!(node.nacks_answered - warm.2 > 1_000);
    assert!(node.nacks_to_publisher - warm.3 > 50);
    assert!(node.keyframe_requests > 0);
    if srtp {
        // Every packet in and every packet out went through SRTP.
        let operations = node.srtp.operations() - operations;
        println!("SRTP operations {operations}");
        assert!(operations > node.sent - warm.0, "{operations}");
    }
    assert_eq!(allocated, 0, "allocations while forwarding");
}

#[test]
fn steady_state_forwarding_does_not_allocate() {
    steady_state(false);
}

#[test]
fn steady_state_forwarding_with_srtp_does_not_allocate() {
    steady_state(true);
}
