//! RTCP (RFC 3550 §6, RFC 4585, RFC 5104): walking a compound packet, reading the types
//! an SFU acts on, and writing the ones it sends, all without allocating.
//!
//! [`RtcpIter`] hands out one [`Rtcp`] per packet of a compound datagram, each a view
//! into the caller's buffer; it stops at the first packet whose framing is broken and
//! says so through [`RtcpIter::malformed`]. A known type whose body is too short for its
//! fields comes out as [`Rtcp::Truncated`], so a caller can count it and go on.
//!
//! The `write_*` functions build a packet into a caller's buffer and return its length,
//! or `None` when the buffer is too small; several calls into consecutive parts of one
//! buffer make a compound packet.

pub(crate) const SR: u8 = 200;
pub(crate) const RR: u8 = 201;
/// Packet type of source descriptions (RFC 3550 §6.5).
pub const SDES: u8 = 202;
/// Packet type of a goodbye (RFC 3550 §6.6).
pub const BYE: u8 = 203;
/// Packet type of application-defined packets (RFC 3550 §6.7).
pub const APP: u8 = 204;
/// Transport-layer feedback (RFC 4585 §6.2): generic NACK (FMT 1), transport-wide
/// congestion control (FMT 15).
pub(crate) const RTPFB: u8 = 205;
/// Payload-specific feedback (RFC 4585 §6.3): PLI (FMT 1), FIR (FMT 4, RFC 5104),
/// application layer (FMT 15, REMB among them).
pub(crate) const PSFB: u8 = 206;
/// Packet type of extended reports (RFC 3611).
pub const XR: u8 = 207;

pub(crate) const FMT_NACK: u8 = 1;
pub(crate) const FMT_TWCC: u8 = 15;
pub(crate) const FMT_PLI: u8 = 1;
pub(crate) const FMT_FIR: u8 = 4;
pub(crate) const FMT_AFB: u8 = 15;

const HEADER: usize = 4;
const REPORT_BLOCK: usize = 24;
const SR_INFO: usize = 24;
/// Most report blocks one SR/RR can count (a 5-bit field).
pub(crate) const MAX_REPORT_BLOCKS: usize = 31;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One RTCP packet of a compound datagram: its type, its 5-bit count/FMT field and the
/// bytes after its 4-byte header (padding removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRtcp<'a> {
    pub(crate) pt: u8,
    pub(crate) count: u8,
    pub(crate) body: &'a [u8],
}

/// A reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub(crate) ssrc: u32,
    /// Packets lost since the previous report, as a fraction of 256.
    pub(crate) fraction_lost: u8,
    /// Packets lost in total; 24-bit signed (duplicates can make it negative).
    pub(crate) cumulative_lost: i32,
    pub(crate) highest_seq: u32,
    pub(crate) jitter: u32,
    /// The middle 32 bits of the NTP time of the last SR received, 0 for none.
    pub(crate) last_sr: u32,
    /// Time since that SR, in 1/65536 s.
    pub(crate) delay_since_last_sr: u32,
}

impl ReportBlock {
    fn read(b: &[u8]) -> Option<ReportBlock> {
        let b = b.get(..REPORT_BLOCK)?;
        let lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        // Sign-extend the 24-bit count.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        Some(ReportBlock {
            ssrc: be32(b, 0)?,
            fraction_lost: b[4],
            cumulative_lost,
            highest_seq: be32(b, 8)?,
            jitter: be32(b, 12)?,
            last_sr: be32(b, 16)?,
            delay_since_last_sr: be32(b, 20)?,
        })
    }

    fn write(&self, b: &mut [u8]) {
        let lost = (self.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32) & 0xFF_FFFF;
        b[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        b[4..8].copy_from_slice(&lost.to_be_bytes());
        b[4] = self.fraction_lost;
        b[8..12].copy_from_slice(&self.highest_seq.to_be_bytes());
        b[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        b[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        b[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// The report blocks of an SR or RR: as many as the count says and the body holds.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    rest: &'a [u8],
    left: u8,
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let block = ReportBlock::read(self.rest)?;
        self.rest = &self.rest[REPORT_BLOCK..];
        Some(block)
    }
}

/// A sender report (RFC 3550 §6.4.1): the sender's clocks and counts, then report blocks.
#[derive(Debug, Clone)]
pub struct SenderReport<'a> {
    pub(crate) ssrc: u32,
    /// NTP timestamp, 32.32 fixed point.
    pub(crate) ntp: u64,
    pub(crate) rtp_timestamp: u32,
    /// RTP packets the sender has sent on this SSRC.
    pub packet_count: u32,
    /// RTP payload bytes the sender has sent on this SSRC.
    pub octet_count: u32,
    /// What the sender received, one block per source.
    pub blocks: ReportBlocks<'a>,
}

/// A receiver report (RFC 3550 §6.4.2): report blocks from a receiver that sends no media.
#[derive(Debug, Clone)]
pub struct ReceiverReport<'a> {
    /// The reporting receiver's SSRC.
    pub ssrc: u32,
    pub(crate) blocks: ReportBlocks<'a>,
}

/// A feedback message's SSRCs and its feedback control information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback<'a> {
    pub(crate) sender: u32,
    pub(crate) media: u32,
    /// The feedback control information, after the two SSRCs.
    pub fci: &'a [u8],
}

impl<'a> Feedback<'a> {
    /// The sequence numbers a generic NACK asks for (RFC 4585 §6.2.1): each FCI entry is
    /// a packet id and a bitmask of the 16 following ones.
    pub fn nack_seqs(&self) -> NackSeqs<'a> {
        NackSeqs {
            fci: self.fci,
            pid: 0,
            blp: 0,
            bit: 17,
        }
    }

    /// The (SSRC, sequence number) entries of a FIR (RFC 5104 §4.3.1).
    pub fn fir_entries(&self) -> impl Iterator<Item = (u32, u8)> + 'a {
        self.fci
            .chunks_exact(8)
            .filter_map(|e| Some((be32(e, 0)?, e[4])))
    }
}

/// Sequence numbers of a generic NACK, in the order they are listed.
#[derive(Debug, Clone)]
pub struct NackSeqs<'a> {
    fci: &'a [u8],
    pid: u16,
    blp: u16,
    /// 1..=16: bit `bit - 1` of blp is next; 17: the next entry.
    bit: u8,
}

impl Iterator for NackSeqs<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        loop {
            if self.bit == 17 {
                let e = self.fci.get(..4)?;
                self.pid = u16::from_be_bytes([e[0], e[1]]);
                self.blp = u16::from_be_bytes([e[2], e[3]]);
                self.fci = &self.fci[4..];
                self.bit = 1;
                return Some(self.pid);
            }
            let bit = self.bit;
            self.bit += 1;
            if self.blp & (1 << (bit - 1)) != 0 {
                return Some(self.pid.wrapping_add(u16::from(bit)));
            }
        }
    }
}

/// Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remb<'a> {
    pub(crate) sender: u32,
    /// Bits per second.
    pub(crate) bitrate: u64,
    ssrcs: &'a [u8],
}

impl<'a> Remb<'a> {
    /// The media SSRCs the estimate applies to.
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.ssrcs.chunks_exact(4).filter_map(|c| be32(c, 0))
    }
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone)]
pub enum Rtcp<'a> {
    /// A sender report.
    SenderReport(SenderReport<'a>),
    /// A receiver report.
    ReceiverReport(ReceiverReport<'a>),
    /// Picture loss indication: the receiver wants a keyframe of `media`.
    Pli {
        /// SSRC of the receiver asking.
        sender: u32,
        /// SSRC of the stream it wants a keyframe of.
        media: u32,
    },
    /// Full intra request; `fir_entries` names the SSRCs.
    Fir(Feedback<'a>),
    /// Generic NACK; `nack_seqs` lists the packets.
    Nack(Feedback<'a>),
    /// Receiver estimated maximum bitrate (an application-layer feedback).
    Remb(Remb<'a>),
    /// Transport-wide congestion control feedback, left to the bandwidth estimator.
    TransportCc(Feedback<'a>),
    /// SDES, BYE, APP, XR and feedback types not listed above.
    Other(RawRtcp<'a>),
    /// A known type whose body is too short for its fields.
    Truncated(RawRtcp<'a>),
}

impl<'a> Rtcp<'a> {
    fn classify(raw: RawRtcp<'a>) -> Rtcp<'a> {
        Self::read(raw).unwrap_or(Rtcp::Truncated(raw))
    }

    fn read(raw: RawRtcp<'a>) -> Option<Rtcp<'a>> {
        let b = raw.body;
        let feedback = || -> Option<Feedback<'a>> {
            Some(Feedback {
                sender: be32(b, 0)?,
                media: be32(b, 4)?,
                fci: b.get(8..)?,
            })
        };
        Some(match (raw.pt, raw.count) {
            (SR, count) => Rtcp::SenderReport(SenderReport {
                ssrc: be32(b, 0)?,
                ntp: u64::from(be32(b, 4)?) << 32 | u64::from(be32(b, 8)?),
                rtp_timestamp: be32(b, 12)?,
                packet_count: be32(b, 16)?,
                octet_count: be32(b, 20)?,
                blocks: ReportBlocks {
                    rest: b.get(SR_INFO..)?,
                    left: count,
                },
            }),
            (RR, count) => Rtcp::ReceiverReport(ReceiverReport {
                ssrc: be32(b, 0)?,
                blocks: ReportBlocks {
                    rest: b.get(4..)?,
                    left: count,
                },
            }),
            (RTPFB, FMT_NACK) => Rtcp::Nack(feedback()?),
            (RTPFB, FMT_TWCC) => Rtcp::TransportCc(feedback()?),
            (PSFB, FMT_PLI) => {
                let f = feedback()?;
                Rtcp::Pli {
                    sender: f.sender,
                    media: f.media,
                }
            }
            (PSFB, FMT_FIR) => Rtcp::Fir(feedback()?),
            (PSFB, FMT_AFB) => {
                let f = feedback()?;
                match f.fci.get(..8) {
                    Some([b'R', b'E', b'M', b'B', n, e, m1, m2]) => {
                        let exp = u32::from(e >> 2);
                        let mantissa =
                            u64::from(e & 0x03) << 16 | u64::from(*m1) << 8 | u64::from(*m2);
                        // The mantissa has 18 bits: shifts past 46 would overflow.
                        let bitrate = if mantissa == 0 {
                            0
                        } else if exp > 46 {
                            u64::MAX
                        } else {
                            mantissa << exp
                        };
                        let ssrcs = f.fci.get(8..)?;
                        let n = (usize::from(*n) * 4).min(ssrcs.len());
                        Rtcp::Remb(Remb {
                            sender: f.sender,
                            bitrate,
                            ssrcs: &ssrcs[..n],
                        })
                    }
                    _ => Rtcp::Other(raw),
                }
            }
            _ => Rtcp::Other(raw),
        })
    }
}

/// Walks a compound RTCP datagram.
#[derive(Debug, Clone)]
pub struct RtcpIter<'a> {
    buf: &'a [u8],
    pos: usize,
    malformed: bool,
}

impl<'a> RtcpIter<'a> {
    /// Walks `buf`, one compound datagram already decrypted.
    pub fn new(buf: &'a [u8]) -> RtcpIter<'a> {
        RtcpIter {
            buf,
            pos: 0,
            malformed: false,
        }
    }

    /// Whether the walk stopped at broken framing (bad version, a length past the end,
    /// bad padding) rather than at the end of the datagram.
    pub fn malformed(&self) -> bool {
        self.malformed
    }

    fn fail(&mut self) -> Option<Rtcp<'a>> {
        self.malformed = true;
        self.pos = self.buf.len();
        None
    }
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = Rtcp<'a>;

    fn next(&mut self) -> Option<Rtcp<'a>> {
        let rest = self.buf.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let Some(head) = rest.get(..HEADER) else {
            return self.fail();
        };
        if head[0] >> 6 != 2 {
            return self.fail();
        }
        let size = (usize::from(u16::from_be_bytes([head[2], head[3]])) + 1) * 4;
        let Some(packet) = rest.get(..size) else {
            return self.fail();
        };
        let mut end = size;
        if head[0] & 0x20 != 0 {
            let pad = usize::from(packet[size - 1]);
            if pad == 0 || pad > size - HEADER {
                return self.fail();
            }
            end -= pad;
        }
        self.pos += size;
        Some(Rtcp::classify(RawRtcp {
            pt: head[1],
            count: head[0] & 0x1F,
            body: &packet[HEADER..end],
        }))
    }
}

/// Writes an RTCP header for a packet of `len` bytes (a multiple of 4).
fn header(buf: &mut [u8], count: u8, pt: u8, len: usize) {
    buf[0] = 0x80 | (count & 0x1F);
    buf[1] = pt;
    buf[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
}

/// A sender report: the sender's NTP and RTP time, what it sent so far, and reception
/// report blocks (at most 31).
pub(crate) fn write_sender_report(
    buf: &mut [u8],
    ssrc: u32,
    ntp: u64,
    rtp_timestamp: u32,
    packet_count: u32,
    octet_count: u32,
    blocks: &[ReportBlock],
) -> Option<usize> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return None;
    }
    let len = HEADER + SR_INFO + REPORT_BLOCK * blocks.len();
    let out = buf.get_mut(..len)?;
    header(out, blocks.len() as u8, SR, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8..16].copy_from_slice(&ntp.to_be_bytes());
    out[16..20].copy_from_slice(&rtp_timestamp.to_be_bytes());
    out[20..24].copy_from_slice(&packet_count.to_be_bytes());
    out[24..28].copy_from_slice(&octet_count.to_be_bytes());
    for (block, dst) in blocks.iter().zip(out[28..].chunks_exact_mut(REPORT_BLOCK)) {
        block.write(dst);
    }
    Some(len)
}

/// A receiver report with up to 31 report blocks.
pub(crate) fn write_receiver_report(
    buf: &mut [u8],
    ssrc: u32,
    blocks: &[ReportBlock],
) -> Option<usize> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return None;
    }
    let len = HEADER + 4 + REPORT_BLOCK * blocks.len();
    let out = buf.get_mut(..len)?;
    header(out, blocks.len() as u8, RR, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    for (block, dst) in blocks.iter().zip(out[8..].chunks_exact_mut(REPORT_BLOCK)) {
        block.write(dst);
    }
    Some(len)
}

fn write_feedback(
    buf: &mut [u8],
    pt: u8,
    fmt: u8,
    sender: u32,
    media: u32,
    fci: usize,
) -> Option<&mut [u8]> {
    let len = HEADER + 8 + fci;
    let out = buf.get_mut(..len)?;
    header(out, fmt, pt, len);
    out[4..8].copy_from_slice(&sender.to_be_bytes());
    out[8..12].copy_from_slice(&media.to_be_bytes());
    Some(&mut out[12..])
}

/// A picture loss indication for `media`.
pub fn write_pli(buf: &mut [u8], sender: u32, media: u32) -> Option<usize> {
    write_feedback(buf, PSFB, FMT_PLI, sender, media, 0)?;
    Some(HEADER + 8)
}

/// A full intra request for `media` with the command sequence number `seq`, which the
/// sender increases for every new request (RFC 5104 §4.3.1.1).
pub fn write_fir(buf: &mut [u8], sender: u32, media: u32, seq: u8) -> Option<usize> {
    // The header's media SSRC is unused in a FIR (RFC 5104 §4.3.1.2): the FCI names it.
    let fci = write_feedback(buf, PSFB, FMT_FIR, sender, 0, 8)?;
    fci[0..4].copy_from_slice(&media.to_be_bytes());
    fci[4] = seq;
    fci[5..8].fill(0);
    Some(HEADER + 16)
}

/// A generic NACK for `seqs`, packed into (packet id, bitmask) entries. Sequence numbers
/// within 16 after an entry's packet id share its entry, so an ascending list packs best.
/// `None` for an empty list or a buffer too small for all of them.
pub fn write_nack(buf: &mut [u8], sender: u32, media: u32, seqs: &[u16]) -> Option<usize> {
    let (&first, rest) = seqs.split_first()?;
    let mut entries = 0usize;
    let mut pid = first;
    let mut blp = 0u16;
    let fci = buf.get_mut(HEADER + 8..)?;
    for &s in rest {
        match s.wrapping_sub(pid) {
            0 => {}
            d @ 1..=16 => blp |= 1 << (d - 1),
            _ => {
                put_nack_entry(fci, entries, pid, blp)?;
                entries += 1;
                pid = s;
                blp = 0;
            }
        }
    }
    put_nack_entry(fci, entries, pid, blp)?;
    entries += 1;
    write_feedback(buf, RTPFB, FMT_NACK, sender, media, entries * 4)?;
    Some(HEADER + 8 + entries * 4)
}

fn put_nack_entry(fci: &mut [u8], i: usize, pid: u16, blp: u16) -> Option<()> {
    let e = fci.get_mut(i * 4..i * 4 + 4)?;
    e[0..2].copy_from_slice(&pid.to_be_bytes());
    e[2..4].copy_from_slice(&blp.to_be_bytes());
    Some(())
}

/// A REMB telling a publisher it may send `bitrate` bits per second for `ssrcs`.
pub fn write_remb(buf: &mut [u8], sender: u32, bitrate: u64, ssrcs: &[u32]) -> Option<usize> {
    if ssrcs.len() > 255 {
        return None;
    }
    let mut exp = 0u8;
    let mut mantissa = bitrate;
    while mantissa >= 1 << 18 {
        mantissa >>= 1;
        exp += 1;
    }
    let fci = write_feedback(buf, PSFB, FMT_AFB, sender, 0, 8 + 4 * ssrcs.len())?;
    fci[0..4].copy_from_slice(b"REMB");
    fci[4] = ssrcs.len() as u8;
    fci[5] = (exp << 2) | (mantissa >> 16) as u8;
    fci[6..8].copy_from_slice(&(mantissa as u16).to_be_bytes());
    for (ssrc, dst) in ssrcs.iter().zip(fci[8..].chunks_exact_mut(4)) {
        dst.copy_from_slice(&ssrc.to_be_bytes());
    }
    Some(HEADER + 16 + 4 * ssrcs.len())
}

/// NTP time (32.32 fixed point since 1900) of a Unix time in microseconds.
pub(crate) fn ntp_from_unix_micros(us: u64) -> u64 {
    let secs = us / 1_000_000 + NTP_UNIX_OFFSET;
    let frac = ((us % 1_000_000) << 32) / 1_000_000;
    (secs << 32) | frac
}

/// A duration in microseconds as an NTP (32.32) duration.
pub(crate) fn ntp_duration(us: u64) -> u64 {
    ((u128::from(us) << 32) / 1_000_000) as u64
}

/// The middle 32 bits of an NTP time: what LSR quotes (RFC 3550 §6.4.1).
pub(crate) fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::rtp::tests::Rng;

    fn block(ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 0x0001_0005,
            jitter: 77,
            last_sr: 0xDEAD_BEEF,
            delay_since_last_sr: 65536,
        }
    }

    #[test]
    fn compound_round_trip() {
        let mut buf = [0u8; 512];
        let mut n = 0;
        n += write_sender_report(
            &mut buf[n..],
            1,
            0x1122_3344_5566_7788,
            9,
            10,
            11,
            &[block(5)],
        )
        .unwrap();
        n += write_receiver_report(&mut buf[n..], 2, &[block(6), block(7)]).unwrap();
        n += write_pli(&mut buf[n..], 3, 4).unwrap();
        n += write_fir(&mut buf[n..], 3, 8, 42).unwrap();
        n += write_nack(&mut buf[n..], 3, 9, &[100, 101, 116, 117, 200]).unwrap();
        n += write_remb(&mut buf[n..], 3, 2_500_000, &[10, 11]).unwrap();
        let mut it = RtcpIter::new(&buf[..n]);
        let Some(Rtcp::SenderReport(sr)) = it.next() else {
            panic!("SR")
        };
        assert_eq!(
            (
                sr.ssrc,
                sr.ntp,
                sr.rtp_timestamp,
                sr.packet_count,
                sr.octet_count
            ),
            (1, 0x1122_3344_5566_7788, 9, 10, 11)
        );
        assert_eq!(sr.blocks.collect::<Vec<_>>(), vec![block(5)]);
        let Some(Rtcp::ReceiverReport(rr)) = it.next() else {
            panic!("RR")
        };
        assert_eq!(rr.ssrc, 2);
        assert_eq!(rr.blocks.collect::<Vec<_>>(), vec![block(6), block(7)]);
        assert!(matches!(
            it.next(),
            Some(Rtcp::Pli {
                sender: 3,
                media: 4
            })
        ));
        let Some(Rtcp::Fir(fir)) = it.next() else {
            panic!("FIR")
        };
        assert_eq!(fir.fir_entries().collect::<Vec<_>>(), vec![(8, 42)]);
        let Some(Rtcp::Nack(nack)) = it.next() else {
            panic!("NACK")
        };
        assert_eq!(nack.media, 9);
        assert_eq!(nack.fci.len(), 12, "100..=116 in one entry, 117, 200");
        assert_eq!(
            nack.nack_seqs().collect::<Vec<_>>(),
            vec![100, 101, 116, 117, 200]
        );
        let Some(Rtcp::Remb(remb)) = it.next() else {
            panic!("REMB")
        };
        assert!(remb.bitrate <= 2_500_000 && remb.bitrate > 2_490_000);
        assert_eq!(remb.ssrcs().collect::<Vec<_>>(), vec![10, 11]);
        assert!(it.next().is_none());
        assert!(!it.malformed());
    }

    #[test]
    fn nack_wraps_and_dedups() {
        let mut buf = [0u8; 64];
        let n = write_nack(&mut buf, 1, 2, &[65534, 65535, 0, 0, 3]).unwrap();
        let Some(Rtcp::Nack(f)) = RtcpIter::new(&buf[..n]).next() else {
            panic!()
        };
        assert_eq!(f.nack_seqs().collect::<Vec<_>>(), vec![65534, 65535, 0, 3]);
        assert_eq!(write_nack(&mut buf, 1, 2, &[]), None);
        assert_eq!(write_nack(&mut buf[..15], 1, 2, &[1]), None);
    }

    #[test]
    fn twcc_and_unknown_types_are_recognised() {
        let mut buf = [0u8; 64];
        // TWCC: feedback header plus 8 bytes of FCI.
        buf[0] = 0x80 | FMT_TWCC;
        buf[1] = RTPFB;
        buf[3] = 4;
        buf[4..8].copy_from_slice(&1u32.to_be_bytes());
        buf[8..12].copy_from_slice(&2u32.to_be_bytes());
        // APP packet, then an SR whose body is cut short.
        buf[20] = 0x80;
        buf[21] = APP;
        buf[23] = 1;
        buf[28] = 0x80;
        buf[29] = SR;
        buf[31] = 1;
        let kinds: Vec<_> = RtcpIter::new(&buf[..36]).collect();
        assert!(
            matches!(kinds[0], Rtcp::TransportCc(Feedback { sender: 1, media: 2, fci }) if fci.len() == 8)
        );
        assert!(matches!(kinds[1], Rtcp::Other(RawRtcp { pt: APP, .. })));
        assert!(matches!(kinds[2], Rtcp::Truncated(RawRtcp { pt: SR, .. })));
    }

    #[test]
    fn broken_framing_stops_the_walk() {
        let mut buf = [0u8; 64];
        let n = write_pli(&mut buf, 1, 2).unwrap();
        // Length beyond the datagram.
        let mut bad = buf;
        bad[n] = 0x80;
        bad[n + 1] = PSFB;
        bad[n + 3] = 200;
        let mut it = RtcpIter::new(&bad[..n + 8]);
        assert!(it.next().is_some());
        assert!(it.next().is_none());
        assert!(it.malformed());
        // Wrong version.
        let mut it = RtcpIter::new(&[0x40, 200, 0, 0]);
        assert!(it.next().is_none() && it.malformed());
        // Padding larger than the body.
        let mut it = RtcpIter::new(&[0xA0, 201, 0, 1, 0, 0, 0, 9]);
        assert!(it.next().is_none() && it.malformed());
        // Valid padding is removed from the body.
        let pkt = [0xA0, 204, 0, 2, 1, 2, 3, 4, 0, 0, 0, 4];
        let Some(Rtcp::Other(raw)) = RtcpIter::new(&pkt).next() else {
            panic!()
        };
        assert_eq!(raw.body, &[1, 2, 3, 4]);
    }

    #[test]
    fn report_counts_are_bounded_by_the_body() {
        // An RR claiming 31 blocks with room for one.
        let mut buf = [0u8; 64];
        let n = write_receiver_report(&mut buf, 1, &[block(2)]).unwrap();
        buf[0] |= 0x1F;
        let Some(Rtcp::ReceiverReport(rr)) = RtcpIter::new(&buf[..n]).next() else {
            panic!()
        };
        assert_eq!(rr.blocks.count(), 1);
    }

    #[test]
    fn writers_refuse_small_buffers() {
        let blocks = [block(1); 2];
        for size in 0..80 {
            let mut buf = vec![0u8; size];
            let fits = |need: usize, got: Option<usize>| {
                assert_eq!(got.is_some(), size >= need, "size {size}");
            };
            fits(76, write_sender_report(&mut buf, 1, 2, 3, 4, 5, &blocks));
            fits(56, write_receiver_report(&mut buf, 1, &blocks));
            fits(12, write_pli(&mut buf, 1, 2));
            fits(20, write_fir(&mut buf, 1, 2, 3));
            fits(16, write_nack(&mut buf, 1, 2, &[5]));
            fits(24, write_remb(&mut buf, 1, 1_000_000, &[1]));
        }
        let mut buf = [0u8; 1024];
        assert_eq!(write_receiver_report(&mut buf, 1, &[block(1); 32]), None);
    }

    #[test]
    fn ntp_helpers() {
        let ntp = ntp_from_unix_micros(1_500_000);
        assert_eq!(ntp >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp as u32, 1 << 31);
        assert_eq!(ntp_duration(1_000_000), 1 << 32);
        assert_eq!(ntp_middle(0x1122_3344_5566_7788), 0x3344_5566);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0xDEAD_BEEF_1234_5678);
        let mut buf = [0u8; 96];
        for i in 0..200_000 {
            let len = rng.below(96);
            rng.fill(&mut buf[..len]);
            // Make many of them look like RTCP so the type readers run.
            if i % 2 == 0 && len >= 4 {
                buf[0] = 0x80 | (buf[0] & 0x3F);
                buf[1] = 200 + (buf[1] % 8);
                buf[2] = 0;
                buf[3] %= 24;
            }
            let mut it = RtcpIter::new(&buf[..len]);
            for p in it.by_ref() {
                match p {
                    Rtcp::SenderReport(sr) => drop(sr.blocks.count()),
                    Rtcp::ReceiverReport(rr) => drop(rr.blocks.count()),
                    Rtcp::Nack(f) => drop(f.nack_seqs().count()),
                    Rtcp::Fir(f) => drop(f.fir_entries().count()),
                    Rtcp::Remb(r) => drop(r.ssrcs().count()),
                    _ => {}
                }
            }
        }
    }
}
