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
//!   receivers served per second and time / N is the cost per receiver.
//! - `receive_only`: the per-packet part alone, for telling it from the per-receiver one.
//! - `nack_answer_rtx`: one receiver NACK answered from the cache in RTX form.
//!
//! SRTP decryption (once per packet) and encryption (once per receiver) happen around
//! this in the data plane and are not measured here: with AES-GCM they cost about as
//! much per packet as everything below, so compare like with like.

use std::hint::black_box;
use std::time::Duration;

use confnode::sfu::codec::Codec;
use confnode::sfu::forward::{ExtensionMap, Forwarder, ForwarderConfig, RtxConfig};
use confnode::sfu::rtp::{self, RtpHeader};
use confnode::sfu::track::{LayerConfig, Track, TrackConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

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
    extensions.map(TWCC_EXT, 3);
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

/// A publisher's stream, started with a keyframe that every receiver took.
struct Stream {
    track: Track,
    receivers: Vec<Forwarder>,
    outs: Vec<[u8; SLOT]>,
    twcc: Vec<u16>,
    packet: [u8; SLOT],
    i: u32,
    now: u64,
}

impl Stream {
    fn new(n: usize) -> Stream {
        let mut track = track();
        let mut receivers: Vec<_> = (0..n).map(|i| receiver(&track, i)).collect();
        let mut outs = vec![[0u8; SLOT]; n];
        let mut key = template(true);
        set_packet(&mut key, 0);
        let info = track.receive(&mut key, PACKET_LEN, 0).expect("keyframe");
        for (f, out) in receivers.iter_mut().zip(&mut outs) {
            out[..PACKET_LEN].copy_from_slice(&key[..PACKET_LEN]);
            assert_eq!(f.forward(out, &info, 0), Some(PACKET_LEN));
        }
        Stream {
            track,
            receivers,
            outs,
            twcc: vec![0; n],
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
        let mut sent = 0;
        for ((f, out), twcc) in self
            .receivers
            .iter_mut()
            .zip(&mut self.outs)
            .zip(&mut self.twcc)
        {
            out[..info.len].copy_from_slice(&self.packet[..info.len]);
            if let Some(n) = f.forward(out, &info, self.now) {
                *twcc = twcc.wrapping_add(1);
                rtp::set_extension_u16(out, &info.header, 3, *twcc);
                black_box(&out[..n]);
                sent += 1;
            }
        }
        sent
    }
}

fn forward_to_n(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_to_n");
    for n in [1usize, 10, 50] {
        let mut s = Stream::new(n);
        assert_eq!(s.step(), n);
        // What a receiver gets is well-formed and continues its stream.
        let h = RtpHeader::parse(&s.outs[0][..PACKET_LEN]).expect("RTP");
        assert_eq!((h.ssrc, h.payload_type), (0xA000, 100));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(s.step()))
        });
    }
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
    let mut s = Stream::new(1);
    for _ in 0..300 {
        s.step();
    }
    let last = RtpHeader::parse(&s.outs[0][..PACKET_LEN]).expect("RTP").seq;
    let mut out = [0u8; SLOT];
    let mut k = 0u16;
    let mut now = s.now;
    // RTX form: two bytes (the OSN) longer than the packet.
    assert_eq!(
        s.track.retransmit(&mut s.receivers[0], last, &mut out, now),
        Some(PACKET_LEN + 2)
    );
    c.bench_function("nack_answer_rtx", |b| {
        b.iter(|| {
            // A different packet each time, and time moving on past the resend limit.
            k = (k + 1) % 256;
            now += 100_000;
            let seq = last.wrapping_sub(k);
            black_box(s.track.retransmit(&mut s.receivers[0], seq, &mut out, now))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = forward_to_n, receive_only, nack_answer
}
criterion_main!(benches);
