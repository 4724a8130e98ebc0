//! The SFU forwarding hot path through the sans-IO cores alone, no sockets:
//!
//!     cargo bench --bench forward
//!
//! - `forward_to_n/{1,10,50}`: one 1200-byte VP8 packet from a publisher to N
//!   receivers: `Track::receive` once (header and payload descriptor read, statistics,
//!   NACK bookkeeping, copy into the packet cache), then per receiver a copy into its
//!   output slot (the buffer SRTP would encrypt in place), `Forwarder::forward`
//!   (SSRC, sequence number, timestamp, payload type, VP8 picture id and TL0PICIDX,
//!   header extensions remapped and the mid rewritten) and its transport-wide sequence
//!   number written. Throughput is in receivers, so criterion's elements/s is
//!   receivers served per second and time / N is the cost per receiver. No SRTP.
//! - `forward_to_n_srtp/{1,10,50}`: the whole per-packet path of the data plane
//!   (`session::forward_rtp` and its caller) with SRTP_AEAD_AES_256_GCM, the profile
//!   Chrome gets from our DTLS: the publisher's SRTP packet unprotected once in place
//!   with the inbound context, `Track::receive` once, then per receiver the copy,
//!   `Forwarder::forward`, the transport-wide sequence number and `protect_rtp` with
//!   that receiver's own outbound context (each receiver its own key). Throughput in
//!   receivers, as above. `forward_to_n_srtp/aes128_gcm/10` and
//!   `forward_to_n_srtp/aes128_cm_sha1_80/10` are the same for 10 receivers with the
//!   other two profiles (publisher and receivers alike).
//!
//!   Every iteration unprotects a packet it has not seen before, as the replay window
//!   demands: the publisher's context protects the packets (increasing sequence
//!   numbers) in the setup of `iter_batched_ref`, 64 at a time, and criterion times
//!   only the routine, so the publisher's encryption is not in the figure. The
//!   receiving side's counters are checked after each benchmark: every packet was
//!   unprotected and went to all N receivers.
//! - `forward_to_n_srtp/unprotect_only` and `forward_to_n_srtp/protect_only`: one
//!   1200-byte packet decrypted (fresh, as above) or encrypted with
//!   SRTP_AEAD_AES_256_GCM, the per-packet and the per-receiver crypto alone.
//! - `receive_only`: the per-packet part alone, for telling it from the per-receiver one.
//! - `nack_answer_rtx`: one receiver NACK answered from the cache in RTX form.

#[path = "../tests/common/keys.rs"]
mod keys;
use keys::master;
use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use confnode::sfu::bwe::SentPackets;
use confnode::sfu::codec::Codec;
use confnode::sfu::forward::{ExtensionMap, Forwarder, ForwarderConfig, RtxConfig};
use confnode::sfu::rtp::{self, RtpHeader};
use confnode::sfu::srtp::{SrtpContext, SrtpProfile};
use confnode::sfu::track::{Incoming, LayerConfig, Track, TrackConfig};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const PT: u8 = 96;
const SSRC: u32 = 0x1234;
const ABS_SEND_TIME: u8 = 3;
const MID_EXT: u8 = 4;
const TWCC_EXT: u8 = 5;
const PACKET_LEN: usize = 1200;
const SLOT: usize = 2048;
/// Where the fields that change from packet to packet sit in the template.
const TWCC_AT: usize = 26;
const PID_AT: usize = 30;
const TL0_AT: usize = 32;

/// A VP8 packet as Chrome sends it: abs-send-time, mid and transport-wide seq
/// extensions, a descriptor with a 15-bit picture id and TL0PICIDX.
fn template(key: bool) -> [u8; SLOT] {
    let mut p = [0x5Au8; SLOT];
    p[..12].copy_from_slice(&[0x90, PT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    p[8..12].copy_from_slice(&SSRC.to_be_bytes());
    p[12..16].copy_from_slice(&[0xBE, 0xDE, 0, 3]);
    p[16..28].copy_from_slice(&[
        (ABS_SEND_TIME << 4) | 2,
        1,
        2,
        3,
        MID_EXT << 4,
        b'0',
        0,
        0,
        0,
        (TWCC_EXT << 4) | 1,
        0,
        0,
    ]);
    p[28..34].copy_from_slice(&[0x90, 0xE0, 0x80, 0, 0, 0x20]);
    if key {
        p[34..44].copy_from_slice(&[0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x00, 0x05, 0xD0, 0x02]);
    } else {
        p[34..37].copy_from_slice(&[0x11, 0x02, 0x00]);
    }
    p
}

/// Makes `p` the packet number `i` of the stream (33 ms frames of 8 packets).
fn set_packet(p: &mut [u8], i: u32) {
    let seq = i as u16;
    let frame = i / 8;
    rtp::set_seq(p, seq);
    rtp::set_timestamp(p, frame.wrapping_mul(3000));
    p[TWCC_AT..TWCC_AT + 2].copy_from_slice(&seq.to_be_bytes());
    p[PID_AT..PID_AT + 2].copy_from_slice(&(0x8000 | (frame as u16 & 0x7FFF)).to_be_bytes());
    p[TL0_AT] = frame as u8;
}

fn track() -> Track {
    Track::new(TrackConfig {
        codec: Codec::Vp8,
        clock_rate: 90_000,
        payload_type: PT,
        layers: vec![LayerConfig {
            ssrc: Some(SSRC),
            rtx_ssrc: Some(SSRC + 1),
            height: 720,
            ..LayerConfig::default()
        }],
        rid_extension: None,
        repaired_rid_extension: None,
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
            rtx: Some(RtxConfig {
                ssrc: 0xB000 + i as u32,
                payload_type: 101,
            }),
            max_height: None,
            initial_seq: (i as u16).wrapping_mul(7919),
            initial_timestamp: i as u32 * 12345,
            extensions,
        },
    )
}

/// The receivers of a stream: a forwarder, an output slot and the transport-wide
/// sequence numbers (with what was sent under them) each.
struct Fanout {
    forwarders: Vec<Forwarder>,
    outs: Vec<[u8; SLOT]>,
    sent: Vec<SentPackets>,
}

impl Fanout {
    /// The received `packet` (`info` from `Track::receive`) to every receiver: the copy
    /// into its slot, `Forwarder::forward`, its transport-wide sequence number, then
    /// `seal(receiver, slot, len)` for the length that leaves (SRTP, or nothing).
    /// Returns how many were sent.
    fn send(
        &mut self,
        packet: &[u8],
        info: &Incoming,
        now: u64,
        mut seal: impl FnMut(usize, &mut [u8], usize) -> usize,
    ) -> usize {
        let mut sent = 0;
        for (r, ((f, out), sent_packets)) in self
            .forwarders
            .iter_mut()
            .zip(&mut self.outs)
            .zip(&self.sent)
            .enumerate()
        {
            out[..info.len].copy_from_slice(&packet[..info.len]);
            if let Some(n) = f.forward(out, info, now) {
                // As `Egress::send_rtp` does it.
                if let Some(at) = f.transport_seq_at() {
                    out[at..at + 2].copy_from_slice(&sent_packets.stamp(n, now).to_be_bytes());
                }
                let n = seal(r, out, n);
                black_box(&out[..n]);
                sent += 1;
            }
        }
        sent
    }
}

/// A publisher's stream, started with a keyframe that every receiver took.
struct Stream {
    track: Track,
    rx: Fanout,
    packet: [u8; SLOT],
    i: u32,
    now: u64,
}

impl Stream {
    fn new(n: usize) -> Stream {
        let mut track = track();
        let mut forwarders: Vec<_> = (0..n).map(|i| receiver(&track, i)).collect();
        let mut outs = vec![[0u8; SLOT]; n];
        let mut key = template(true);
        set_packet(&mut key, 0);
        let info = track.receive(&mut key, PACKET_LEN, 0).expect("keyframe");
        for (f, out) in forwarders.iter_mut().zip(&mut outs) {
            out[..PACKET_LEN].copy_from_slice(&key[..PACKET_LEN]);
            assert_eq!(f.forward(out, &info, 0), Some(PACKET_LEN));
        }
        Stream {
            track,
            rx: Fanout {
                forwarders,
                outs,
                sent: (0..n).map(|_| SentPackets::new()).collect(),
            },
            packet: template(false),
            i: 1,
            now: 0,
        }
    }

    /// The next packet to every receiver; returns how many were sent.
    fn step(&mut self) -> usize {
        self.i += 1;
        self.now += 4_000;
        set_packet(&mut self.packet, self.i);
        let Ok(info) = self.track.receive(&mut self.packet, PACKET_LEN, self.now) else {
            return 0;
        };
        self.rx.send(&self.packet, &info, self.now, |_, _, n| n)
    }
}

/// Chrome's profile with our DTLS (see `sfu::srtp`).
const PROFILE: SrtpProfile = SrtpProfile::AeadAes256Gcm;
/// How many packets `iter_batched_ref` has the publisher protect ahead of the routine.
const BATCH: u64 = 64;

const PUBLISHER_SEED: u8 = 0xA5;

/// The publisher's end: the packets of its stream as they come off the network,
/// protected with its own (outbound) context.
struct Publisher {
    packet: [u8; SLOT],
    i: u32,
    srtp: SrtpContext,
}

impl Publisher {
    /// Continues a `Stream::new` stream, whose keyframe was packet 0 and which expects 2.
    fn new(profile: SrtpProfile) -> Publisher {
        Publisher {
            packet: template(false),
            i: 1,
            srtp: SrtpContext::new(&master(profile, PUBLISHER_SEED), 4).expect("context"),
        }
    }

    /// The next SRTP packet and its length.
    fn next(&mut self) -> ([u8; SLOT], usize) {
        self.i += 1;
        set_packet(&mut self.packet, self.i);
        let mut wire = self.packet;
        let len = self
            .srtp
            .protect_rtp(&mut wire, PACKET_LEN)
            .expect("protect");
        (wire, len)
    }
}

/// A stream as the data plane forwards it: decrypted once with the publisher's keys,
/// encrypted for every receiver with that receiver's.
struct SrtpStream {
    stream: Stream,
    inbound: SrtpContext,
    outbound: Vec<SrtpContext>,
    packets: u64,
    sent: u64,
}

impl SrtpStream {
    fn new(n: usize, profile: SrtpProfile) -> SrtpStream {
        SrtpStream {
            stream: Stream::new(n),
            inbound: SrtpContext::new(&master(profile, PUBLISHER_SEED), 4).expect("context"),
            outbound: (0..n)
                .map(|r| SrtpContext::new(&master(profile, r as u8), 4).expect("context"))
                .collect(),
            packets: 0,
            sent: 0,
        }
    }

    /// The SRTP packet `wire[..len]` unprotected in place, received, and forwarded and
    /// protected per receiver; returns how many were sent.
    fn step(&mut self, wire: &mut [u8], len: usize) -> usize {
        let s = &mut self.stream;
        s.now += 4_000;
        let n = self
            .inbound
            .unprotect_rtp(&mut wire[..len])
            .expect("unprotect");
        self.packets += 1;
        let Ok(info) = s.track.receive(wire, n, s.now) else {
            return 0;
        };
        let outbound = &mut self.outbound;
        let sent = s.rx.send(wire, &info, s.now, |r, out, n| {
            outbound[r].protect_rtp(out, n).expect("protect")
        });
        self.sent += sent as u64;
        sent
    }
}

fn forward_to_n(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_to_n");
    for n in [1usize, 10, 50] {
        let mut s = Stream::new(n);
        assert_eq!(s.step(), n);
        // What a receiver gets is well-formed and continues its stream.
        let h = RtpHeader::parse(&s.rx.outs[0][..PACKET_LEN]).expect("RTP");
        assert_eq!((h.ssrc, h.payload_type), (0xA000, 100));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(s.step()))
        });
    }
    group.finish();
}

fn forward_to_n_srtp(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_to_n_srtp");
    let runs = [
        (PROFILE, 1usize, None),
        (PROFILE, 10, None),
        (PROFILE, 50, None),
        (SrtpProfile::AeadAes128Gcm, 10, Some("aes128_gcm")),
        (
            SrtpProfile::Aes128CmHmacSha1_80,
            10,
            Some("aes128_cm_sha1_80"),
        ),
    ];
    for (profile, n, name) in runs {
        let mut publisher = Publisher::new(profile);
        let mut s = SrtpStream::new(n, profile);
        let (mut wire, len) = publisher.next();
        assert_eq!(s.step(&mut wire, len), n);
        // What a receiver gets is its stream under its own keys, and nobody else's.
        let mut first = s.stream.rx.outs[0];
        let m = PACKET_LEN + profile.rtp_overhead();
        let mut check = SrtpContext::new(&master(profile, 0), 4).expect("context");
        assert_eq!(check.unprotect_rtp(&mut first[..m]), Ok(PACKET_LEN));
        let h = RtpHeader::parse(&first[..PACKET_LEN]).expect("RTP");
        assert_eq!((h.ssrc, h.payload_type), (0xA000, 100));
        let mut other = SrtpContext::new(&master(profile, 1), 4).expect("context");
        assert!(other.unprotect_rtp(&mut s.stream.rx.outs[0][..m]).is_err());

        let id = match name {
            Some(name) => BenchmarkId::new(name, n),
            None => BenchmarkId::from_parameter(n),
        };
        let (packets, sent) = (s.packets, s.sent);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(id, |b| {
            b.iter_batched_ref(
                || publisher.next(),
                |(wire, len)| s.step(wire, *len),
                BatchSize::NumIterations(BATCH),
            )
        });
        // Every packet the routine was given was fresh and reached every receiver (no
        // packets when a filter skipped the benchmark).
        assert_eq!(s.sent - sent, (s.packets - packets) * n as u64);
    }

    group.throughput(Throughput::Elements(1));
    let mut publisher = Publisher::new(PROFILE);
    let mut inbound = SrtpContext::new(&master(PROFILE, PUBLISHER_SEED), 4).expect("context");
    group.bench_function("unprotect_only", |b| {
        b.iter_batched_ref(
            || publisher.next(),
            |(wire, len)| inbound.unprotect_rtp(&mut wire[..*len]).expect("unprotect"),
            BatchSize::NumIterations(BATCH),
        )
    });
    let mut out = template(false);
    let mut seq = 0u16;
    let mut outbound = SrtpContext::new(&master(PROFILE, 0), 4).expect("context");
    group.bench_function("protect_only", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            rtp::set_seq(&mut out, seq);
            black_box(outbound.protect_rtp(&mut out, PACKET_LEN).expect("protect"))
        })
    });
    group.finish();
}

fn receive_only(c: &mut Criterion) {
    let mut s = Stream::new(0);
    c.bench_function("receive_only", |b| {
        b.iter(|| {
            s.i += 1;
            s.now += 4_000;
            set_packet(&mut s.packet, s.i);
            black_box(s.track.receive(&mut s.packet, PACKET_LEN, s.now).is_ok())
        })
    });
}

fn nack_answer(c: &mut Criterion) {
    let s = RefCell::new(Stream::new(1));
    for _ in 0..300 {
        s.borrow_mut().step();
    }
    let newest = |s: &Stream| {
        RtpHeader::parse(&s.rx.outs[0][..PACKET_LEN])
            .expect("RTP")
            .seq
    };
    let mut out = [0u8; SLOT];
    {
        let s = &mut *s.borrow_mut();
        let (last, now) = (newest(s), s.now);
        // RTX form: two bytes (the OSN) longer than the packet.
        assert_eq!(
            s.rx.forwarders[0].resend(&s.track, last, &mut out, now),
            Ok(PACKET_LEN + 2)
        );
    }
    c.bench_function("nack_answer_rtx", |b| {
        b.iter_batched_ref(
            || {
                // Untimed: three packets forwarded, which earn the retransmission
                // budget (half their bytes) of the one asked for, 100 packets back.
                let s = &mut *s.borrow_mut();
                for _ in 0..3 {
                    s.step();
                }
                newest(s).wrapping_sub(100)
            },
            |seq| {
                let s = &mut *s.borrow_mut();
                black_box(s.rx.forwarders[0].resend(&s.track, *seq, &mut out, s.now))
            },
            BatchSize::NumIterations(BATCH),
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = forward_to_n, forward_to_n_srtp, receive_only, nack_answer
}
criterion_main!(benches);
