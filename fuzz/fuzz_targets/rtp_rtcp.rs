//! Arbitrary bytes as a publisher's RTP and RTCP (after SRTP): the header and extension
//! readers, the VP8 and H264 payload readers, the compound RTCP walk with every
//! accessor, transport-cc feedback over the sequence numbers found, and a receiver's
//! transport-cc feedback read into its downlink estimate (the FCI walked, then every
//! transport-cc packet of the compound through the estimator, about packets we sent):
//! no panics, and what is written stays within its buffer. Run with
//! `cargo fuzz run rtp_rtcp`.
#![no_main]

use confnode::sfu::bwe::{ArrivalReport, BweConfig, Estimator, SentPackets};
use confnode::sfu::codec::{h264_keyframe, parse_vp8};
use confnode::sfu::rtcp::{Rtcp, RtcpIter};
use confnode::sfu::rtp::RtpHeader;
use confnode::sfu::twcc::TwccRecorder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = RtpHeader::parse(data) {
        let payload = data.get(header.payload()).unwrap_or_default();
        if let Some(vp8) = parse_vp8(payload) {
            let _ = vp8.picture_id_mask();
        }
        let _ = h264_keyframe(payload);
        for id in 1..=14 {
            if let Some(range) = header.find_extension(data, id) {
                assert!(range.end <= data.len());
            }
            let _ = header.extension_value(data, id);
        }
    }

    let mut walk = RtcpIter::new(data);
    for packet in walk.by_ref() {
        match packet {
            Rtcp::Nack(f) => for _ in f.nack_seqs() {},
            Rtcp::Fir(f) => for _ in f.fir_entries() {},
            Rtcp::Remb(r) => for _ in r.ssrcs() {},
            _ => {}
        }
    }
    let _ = walk.malformed();

    // The bytes as a receiver's transport-cc feedback about 3000 packets we sent it.
    if let Some(report) = ArrivalReport::parse(data) {
        assert!(report.packets().count() <= usize::from(report.count));
    }
    let sent = SentPackets::new();
    for i in 0..3000u64 {
        sent.stamp(1200, 1_000_000 + i * 1_000);
    }
    let mut bwe = Estimator::new(BweConfig::default());
    for packet in RtcpIter::new(data) {
        if let Rtcp::TransportCc(f) = packet
            && let Some(report) = ArrivalReport::parse(f.fci)
        {
            let bps = bwe.on_feedback(&report, &sent, 4_000_000);
            assert!((30_000..=20_000_000).contains(&bps));
        }
    }

    // Transport-wide sequence numbers in any order, with a clock that may jump back.
    let mut twcc = TwccRecorder::new();
    let mut now = 1_000_000u64;
    let mut out = [0u8; 1200];
    for pair in data.chunks_exact(3) {
        let seq = u16::from_be_bytes([pair[0], pair[1]]);
        now = if pair[2] == 0xff {
            now.saturating_sub(5_000)
        } else {
            now + u64::from(pair[2]) * 100
        };
        twcc.on_packet(seq, now);
        while twcc.due(now) {
            match twcc.write_feedback(&mut out, 1, 2, now) {
                Some(n) => assert!(n <= out.len() && n % 4 == 0),
                None => break,
            }
        }
    }
});
