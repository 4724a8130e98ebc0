//! Reading a receiver's transport-cc feedback (draft-holmer-rmcat-transport-wide-cc-
//! extensions-01 §3.1): when each of our transport-wide sequence numbers arrived.
//!
//! The feedback comes from the network: every field is checked against the bytes that
//! are there, a report runs out where its chunks or deltas do, and a reserved symbol
//! ends it. Nothing allocates; the packets are walked in place.

/// The unit of the reference time, µs.
pub(crate) const REFERENCE_TICK_US: i64 = 64_000;
/// The unit of receive deltas, µs.
pub(crate) const DELTA_TICK_US: i64 = 250;
/// Packets read from one feedback at most: far more than any receiver reports at once
/// (about 100 ms of packets), so a hostile count cannot buy a long walk.
pub(crate) const MAX_REPORTED: u16 = 2048;

/// One feedback packet's FCI.
#[derive(Debug, Clone, Copy)]
pub struct ArrivalReport<'a> {
    pub(crate) base_seq: u16,
    /// Packets reported (capped at [`MAX_REPORTED`]).
    pub count: u16,
    /// The receiver's clock at the first arrival, in [`REFERENCE_TICK_US`] (24 bits).
    pub(crate) reference: u32,
    /// The feedback's own counter, for spotting lost feedback.
    pub feedback_count: u8,
    chunks: &'a [u8],
    deltas: &'a [u8],
}

impl<'a> ArrivalReport<'a> {
    /// Reads the FCI of a transport-cc feedback; `None` when it is shorter than its
    /// fixed fields or its chunks do not cover its count.
    pub fn parse(fci: &'a [u8]) -> Option<ArrivalReport<'a>> {
        let head = fci.get(..8)?;
        let base_seq = u16::from_be_bytes([head[0], head[1]]);
        let count = u16::from_be_bytes([head[2], head[3]]).min(MAX_REPORTED);
        let reference = u32::from_be_bytes([0, head[4], head[5], head[6]]);
        let rest = &fci[8..];
        // The chunks end where they cover the count; the deltas follow.
        let mut covered = 0usize;
        let mut at = 0;
        while covered < usize::from(count) {
            let chunk = rest.get(at..at + 2)?;
            covered += Chunk::read(chunk).len();
            at += 2;
        }
        Some(ArrivalReport {
            base_seq,
            count,
            reference,
            feedback_count: head[7],
            chunks: &rest[..at],
            deltas: &rest[at..],
        })
    }

    /// Each reported packet in order: its sequence number and, if it arrived, when (µs
    /// after the reference time's zero, which is 2^24 ticks around).
    pub fn packets(&self) -> Packets<'a> {
        Packets {
            chunks: self.chunks,
            chunk: Chunk::Run { symbol: 0, len: 0 },
            in_chunk: 0,
            deltas: self.deltas,
            seq: self.base_seq,
            left: self.count,
            time: i64::from(self.reference) * REFERENCE_TICK_US,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Run {
        symbol: u8,
        len: u16,
    },
    /// 14 one-bit symbols or 7 two-bit ones, first in the high bits.
    Vector {
        bits: u16,
        two_bit: bool,
    },
}

impl Chunk {
    fn read(b: &[u8]) -> Chunk {
        let v = u16::from_be_bytes([b[0], b[1]]);
        if v & 0x8000 == 0 {
            Chunk::Run {
                symbol: ((v >> 13) & 0x3) as u8,
                len: v & 0x1FFF,
            }
        } else {
            Chunk::Vector {
                bits: v & 0x3FFF,
                two_bit: v & 0x4000 != 0,
            }
        }
    }

    fn len(&self) -> usize {
        match *self {
            Chunk::Run { len, .. } => usize::from(len),
            Chunk::Vector { two_bit: true, .. } => 7,
            Chunk::Vector { two_bit: false, .. } => 14,
        }
    }

    fn symbol(&self, i: usize) -> u8 {
        match *self {
            Chunk::Run { symbol, .. } => symbol,
            Chunk::Vector {
                bits,
                two_bit: true,
            } => ((bits >> (12 - 2 * i)) & 0x3) as u8,
            Chunk::Vector {
                bits,
                two_bit: false,
            } => ((bits >> (13 - i)) & 0x1) as u8,
        }
    }
}

/// The packets of one [`ArrivalReport`].
#[derive(Debug, Clone)]
pub struct Packets<'a> {
    chunks: &'a [u8],
    chunk: Chunk,
    in_chunk: usize,
    deltas: &'a [u8],
    seq: u16,
    left: u16,
    time: i64,
}

impl Iterator for Packets<'_> {
    type Item = (u16, Option<i64>);

    fn next(&mut self) -> Option<(u16, Option<i64>)> {
        if self.left == 0 {
            return None;
        }
        while self.in_chunk >= self.chunk.len() {
            let b = self.chunks.get(..2)?;
            self.chunk = Chunk::read(b);
            self.chunks = &self.chunks[2..];
            self.in_chunk = 0;
        }
        let symbol = self.chunk.symbol(self.in_chunk);
        self.in_chunk += 1;
        let delta = match symbol {
            0 => None,
            1 => {
                let b = *self.deltas.first()?;
                self.deltas = &self.deltas[1..];
                Some(i64::from(b))
            }
            2 => {
                let b = self.deltas.get(..2)?;
                self.deltas = &self.deltas[2..];
                Some(i64::from(i16::from_be_bytes([b[0], b[1]])))
            }
            _ => {
                self.left = 0; // reserved: the rest cannot be read
                return None;
            }
        };
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        self.left -= 1;
        Some((
            seq,
            delta.map(|d| {
                self.time += d * DELTA_TICK_US;
                self.time
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::twcc::TwccRecorder;

    /// Our own writer's feedback (which webrtc-rs parses in `sfu::twcc`'s tests) reads
    /// back as what was recorded.
    #[test]
    fn reads_what_the_recorder_wrote() {
        let mut rec = TwccRecorder::new();
        let mut want = Vec::new();
        let mut t = 10_000_000u64;
        for i in 0..300u16 {
            let seq = 65_400u16.wrapping_add(i);
            t += if i % 50 == 0 {
                90_000
            } else {
                1_000 + u64::from(i % 7) * 300
            };
            if i % 13 == 5 {
                want.push((seq, None));
                continue;
            }
            rec.on_packet(seq, t);
            want.push((seq, Some(t)));
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        while let Some(n) = rec.write_feedback(&mut buf, 1, 2, t) {
            let fci = &buf[12..n - usize::from(if buf[0] & 0x20 != 0 { buf[n - 1] } else { 0 })];
            let report = ArrivalReport::parse(fci).unwrap();
            got.extend(report.packets());
        }
        // The recorder reports from the first arrival; the times to 250 µs.
        let first = want.iter().position(|w| w.1.is_some()).unwrap();
        let want = &want[first..];
        assert_eq!(got.len(), want.len());
        for (&(s, g), &(ws, w)) in got.iter().zip(want) {
            assert_eq!(s, ws);
            match (g, w) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!((g - w as i64).abs() <= 250, "{s}: {g} {w}"),
                _ => panic!("{s}: {g:?} vs {w:?}"),
            }
        }
    }

    #[test]
    fn chunk_kinds_and_large_negative_deltas() {
        // base 10, count 5, reference 2, fb count 9.
        let mut fci = vec![0, 10, 0, 5, 0, 0, 2, 9];
        // Run of 2 "small delta" packets, then a 2-bit vector: large, not received,
        // small (and 4 unused symbols).
        fci.extend((0x2000u16 | 2).to_be_bytes());
        fci.extend((0xC000u16 | 0b10_00_01 << 8).to_be_bytes());
        fci.extend([4, 8]); // +1 ms, +2 ms
        fci.extend((-20i16).to_be_bytes()); // -5 ms
        fci.extend([1]); // +0.25 ms
        let r = ArrivalReport::parse(&fci).unwrap();
        assert_eq!(
            (r.base_seq, r.count, r.reference, r.feedback_count),
            (10, 5, 2, 9)
        );
        let base = 2 * REFERENCE_TICK_US;
        let got: Vec<_> = r.packets().collect();
        assert_eq!(
            got,
            [
                (10, Some(base + 1000)),
                (11, Some(base + 3000)),
                (12, Some(base - 2000)),
                (13, None),
                (14, Some(base - 1750)),
            ]
        );
    }

    #[test]
    fn hostile_reports_end_where_their_bytes_do() {
        assert!(ArrivalReport::parse(&[0; 7]).is_none());
        // Claims 100 packets, has one chunk of 14.
        let fci = [0, 0, 0, 100, 0, 0, 0, 0, 0xBF, 0xFF];
        assert!(ArrivalReport::parse(&fci).is_none());
        // A run of 8191 received packets with two deltas: two packets come out.
        let fci = [0, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0x3F, 0xFF, 1, 1];
        let r = ArrivalReport::parse(&fci).unwrap();
        assert_eq!(r.count, MAX_REPORTED);
        assert_eq!(r.packets().count(), 2);
        // A reserved symbol ends the walk.
        let fci = [0, 0, 0, 3, 0, 0, 0, 0, 0x60, 0x03];
        assert_eq!(ArrivalReport::parse(&fci).unwrap().packets().count(), 0);
        // Every byte string of a few lengths: no panic.
        for len in 0..24usize {
            for seed in 0..200u32 {
                let fci: Vec<u8> = (0..len)
                    .map(|i| (seed.wrapping_mul(2_654_435_761).rotate_left(i as u32 * 5)) as u8)
                    .collect();
                if let Some(r) = ArrivalReport::parse(&fci) {
                    assert!(r.packets().count() <= usize::from(r.count));
                }
            }
        }
    }
}
