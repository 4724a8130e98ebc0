//! RTP headers (RFC 3550 §5.1) and header extensions (RFC 8285), read and rewritten in
//! place in the buffer the packet arrived in.
//!
//! Nothing here allocates or copies a packet. [`RtpHeader::parse`] checks the framing
//! once (version, CSRC list, extension block and padding all within the packet) and
//! records where each part lies; the setters then write single fields at fixed offsets.
//! Every access is bounds-checked, so garbage is refused, never a panic.
//!
//! RTX (RFC 4588) lives here too, as two in-place conversions: a retransmission from a
//! publisher is turned back into the original packet, and a packet sent again to a
//! receiver is turned into its RTX form.

use std::ops::Range;

/// Length of the fixed RTP header.
pub(crate) const HEADER_LEN: usize = 12;
/// `defined by profile` of the one-byte extension form (RFC 8285 §4.2).
pub(crate) const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// Upper 12 bits of `defined by profile` in the two-byte form (RFC 8285 §4.3); the low
/// four bits are application bits.
pub(crate) const TWO_BYTE_PROFILE: u16 = 0x1000;

/// Whether `a` is newer than `b` in 16-bit serial-number arithmetic (RFC 1982): less than
/// half the number space ahead of it.
pub(crate) fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// Whether timestamp `a` is newer than `b`, in 32-bit serial-number arithmetic.
pub(crate) fn ts_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// Whether a datagram that starts like RTP (first byte 128–191) is RTCP: with rtcp-mux
/// (RFC 5761 §4) RTCP packet types 192–223 are told from RTP by the second byte, as RTP
/// payload types 64–95 are never used.
pub fn is_rtcp(buf: &[u8]) -> bool {
    matches!(buf.get(1), Some(192..=223))
}

/// Where the header-extension block lies in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExtensionBlock {
    /// The 16-bit `defined by profile` field.
    pub(crate) profile: u16,
    /// Offset of the first element, after the 4-byte block header.
    pub(crate) start: usize,
    /// Length of the elements in bytes (a multiple of 4).
    pub(crate) len: usize,
}

impl ExtensionBlock {
    /// Whether the elements use the one-byte form; `None` for a profile that is neither
    /// RFC 8285 form (its elements cannot be read).
    pub(crate) fn one_byte(&self) -> Option<bool> {
        if self.profile == ONE_BYTE_PROFILE {
            Some(true)
        } else if self.profile & 0xFFF0 == TWO_BYTE_PROFILE {
            Some(false)
        } else {
            None
        }
    }

    /// A cursor over the elements, for reading or rewriting them one at a time.
    pub(crate) fn cursor(&self) -> ExtCursor {
        ExtCursor {
            pos: self.start,
            end: self.start + self.len,
            one_byte: self.one_byte(),
        }
    }
}

/// One header-extension element: its id, where its header byte(s) start and where its
/// value lies, all as offsets into the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtElement {
    pub(crate) id: u8,
    pub(crate) header: usize,
    pub(crate) value: Range<usize>,
    pub(crate) one_byte: bool,
}

/// Walks the elements of an extension block. It borrows the packet only during each
/// `next` call, so the caller may rewrite an element before asking for the next one.
#[derive(Debug, Clone)]
pub(crate) struct ExtCursor {
    pos: usize,
    end: usize,
    one_byte: Option<bool>,
}

impl ExtCursor {
    /// The next element; `None` at the end, at the one-byte form's stop id 15, or where an
    /// element would run past the block (the rest of such a block is not trusted).
    pub(crate) fn next(&mut self, buf: &[u8]) -> Option<ExtElement> {
        let one_byte = self.one_byte?;
        loop {
            if self.pos >= self.end {
                return None;
            }
            let b = *buf.get(self.pos)?;
            if b == 0 {
                // Padding between elements, one byte at a time in both forms.
                self.pos += 1;
                continue;
            }
            let header = self.pos;
            let (id, value_start, len) = if one_byte {
                let id = b >> 4;
                if id == 15 {
                    // RFC 8285 §4.2: stop processing the block here.
                    self.pos = self.end;
                    return None;
                }
                (id, header + 1, usize::from(b & 0x0F) + 1)
            } else {
                let len = *buf.get(header + 1).filter(|_| header + 1 < self.end)?;
                (b, header + 2, usize::from(len))
            };
            let value_end = value_start + len;
            if value_end > self.end {
                self.pos = self.end;
                return None;
            }
            self.pos = value_end;
            return Some(ExtElement {
                id,
                header,
                value: value_start..value_end,
                one_byte,
            });
        }
    }
}

/// The framing of an RTP packet, as offsets into its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub(crate) marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp, in the codec's clock rate.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
    pub(crate) csrc_count: u8,
    pub(crate) extension: Option<ExtensionBlock>,
    /// Where the payload starts.
    pub(crate) payload_offset: usize,
    /// Where the payload ends: the packet's length less its padding.
    pub(crate) payload_end: usize,
    /// Whether the P bit is set (`payload_end` already excludes the padding).
    pub(crate) padding: bool,
}

impl RtpHeader {
    /// Reads the header of `buf` (exactly the packet, no trailing bytes). `None` for
    /// anything that is not well-formed version-2 RTP.
    pub fn parse(buf: &[u8]) -> Option<RtpHeader> {
        let fixed = buf.get(..HEADER_LEN)?;
        let b0 = fixed[0];
        if b0 >> 6 != 2 {
            return None;
        }
        let padding = b0 & 0x20 != 0;
        let has_extension = b0 & 0x10 != 0;
        let csrc_count = b0 & 0x0F;
        let mut offset = HEADER_LEN + 4 * usize::from(csrc_count);
        let extension = if has_extension {
            let head = buf.get(offset..offset + 4)?;
            let profile = u16::from_be_bytes([head[0], head[1]]);
            let len = 4 * usize::from(u16::from_be_bytes([head[2], head[3]]));
            let start = offset + 4;
            offset = start + len;
            Some(ExtensionBlock {
                profile,
                start,
                len,
            })
        } else {
            None
        };
        if offset > buf.len() {
            return None;
        }
        let mut payload_end = buf.len();
        if padding {
            // The last byte counts the padding, itself included (RFC 3550 §5.1).
            let pad = usize::from(*buf.last()?);
            if pad == 0 || pad > payload_end - offset {
                return None;
            }
            payload_end -= pad;
        }
        Some(RtpHeader {
            marker: fixed[1] & 0x80 != 0,
            payload_type: fixed[1] & 0x7F,
            seq: u16::from_be_bytes([fixed[2], fixed[3]]),
            timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
            csrc_count,
            extension,
            payload_offset: offset,
            payload_end,
            padding,
        })
    }

    /// The payload's byte range (empty for a padding-only packet).
    pub fn payload(&self) -> Range<usize> {
        self.payload_offset..self.payload_end
    }

    /// The value of extension element `id`, as a range of the packet.
    pub fn find_extension(&self, buf: &[u8], id: u8) -> Option<Range<usize>> {
        if id == 0 {
            return None;
        }
        let mut cursor = self.extension?.cursor();
        while let Some(e) = cursor.next(buf) {
            if e.id == id {
                return Some(e.value);
            }
        }
        None
    }

    /// The value of extension element `id` as a slice of the packet.
    pub fn extension_value<'a>(&self, buf: &'a [u8], id: u8) -> Option<&'a [u8]> {
        buf.get(self.find_extension(buf, id)?)
    }
}

/// Writes the sequence number. The setters are no-ops on a buffer shorter than the
/// fixed header; callers parse the packet first.
pub fn set_seq(buf: &mut [u8], seq: u16) {
    put(buf, 2, &seq.to_be_bytes());
}

/// Writes the RTP timestamp of the packet in `buf`.
pub fn set_timestamp(buf: &mut [u8], ts: u32) {
    put(buf, 4, &ts.to_be_bytes());
}

pub(crate) fn set_ssrc(buf: &mut [u8], ssrc: u32) {
    put(buf, 8, &ssrc.to_be_bytes());
}

/// Writes the payload type, keeping the marker bit.
pub(crate) fn set_payload_type(buf: &mut [u8], pt: u8) {
    if let Some(b) = buf.get_mut(1) {
        *b = (*b & 0x80) | (pt & 0x7F);
    }
}

/// Sets or clears the marker bit, keeping the payload type.
pub fn set_marker(buf: &mut [u8], marker: bool) {
    if let Some(b) = buf.get_mut(1) {
        *b = (*b & 0x7F) | if marker { 0x80 } else { 0 };
    }
}

/// abs-send-time (6.18 fixed-point seconds, 24 bits).
pub fn read_abs_send_time(value: &[u8]) -> Option<u32> {
    match value {
        [a, b, c] => Some(u32::from_be_bytes([0, *a, *b, *c])),
        _ => None,
    }
}

/// Transport-wide sequence number.
pub(crate) fn read_transport_seq(value: &[u8]) -> Option<u16> {
    match value {
        [a, b] | [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// Client-to-mixer audio level (RFC 6464): the voice-activity flag and the level in -dBov.
pub(crate) fn read_audio_level(value: &[u8]) -> Option<(bool, u8)> {
    value.first().map(|b| (b & 0x80 != 0, b & 0x7F))
}

/// Turns an RTX packet (RFC 4588 §4) back into the packet it repairs, in place: the
/// original sequence number (OSN) from the first two payload bytes, the media SSRC and
/// payload type, the rest of the payload moved two bytes back, padding dropped. Returns
/// the new length; `None` for an RTX packet without an OSN (padding sent for probing).
pub(crate) fn unwrap_rtx(
    buf: &mut [u8],
    header: &RtpHeader,
    media_ssrc: u32,
    media_pt: u8,
) -> Option<usize> {
    let start = header.payload_offset;
    let end = header.payload_end;
    if end < start + 2 || end > buf.len() {
        return None;
    }
    let osn = u16::from_be_bytes([buf[start], buf[start + 1]]);
    buf.copy_within(start + 2..end, start);
    set_seq(buf, osn);
    set_ssrc(buf, media_ssrc);
    set_payload_type(buf, media_pt);
    buf[0] &= !0x20;
    Some(end - 2)
}

/// Turns a packet into its RTX form in place: the current sequence number becomes the
/// OSN in front of the payload, then the RTX SSRC, payload type and sequence number are
/// written; padding is dropped. `buf` needs two bytes of room past the payload. Returns
/// the new length.
pub fn wrap_rtx(
    buf: &mut [u8],
    header: &RtpHeader,
    rtx_ssrc: u32,
    rtx_pt: u8,
    rtx_seq: u16,
) -> Option<usize> {
    let start = header.payload_offset;
    let end = header.payload_end;
    if start > end || end + 2 > buf.len() {
        return None;
    }
    let osn = [buf[2], buf[3]];
    buf.copy_within(start..end, start + 2);
    buf[start..start + 2].copy_from_slice(&osn);
    set_seq(buf, rtx_seq);
    set_ssrc(buf, rtx_ssrc);
    set_payload_type(buf, rtx_pt);
    buf[0] &= !0x20;
    Some(end + 2)
}

/// Most padding one packet carries (its last byte counts it, RFC 3550 §5.1).
pub(crate) const MAX_PADDING: usize = 255;
/// Where [`write_padding`] puts the transport-wide sequence number.
pub(crate) const PADDING_TRANSPORT_SEQ_AT: usize = 17;

/// Writes into `buf` an RTP packet of padding only: `ssrc`, `pt`, `seq`, `timestamp`,
/// a one-byte extension block with the transport-wide sequence number under
/// `transport_cc` (1..=14; its value is left for the sender to fill in at
/// [`PADDING_TRANSPORT_SEQ_AT`]) and `padding` bytes (1..=[`MAX_PADDING`]) of
/// padding. Returns its length; `None` when `buf` is too short or an argument is out
/// of range.
pub(crate) fn write_padding(
    buf: &mut [u8],
    (ssrc, pt, seq, timestamp): (u32, u8, u16, u32),
    transport_cc: u8,
    padding: usize,
) -> Option<usize> {
    if !(1..=14).contains(&transport_cc) || !(1..=MAX_PADDING).contains(&padding) {
        return None;
    }
    let len = 20 + padding;
    let out = buf.get_mut(..len)?;
    out[0] = 0x80 | 0x20 | 0x10; // version 2, padding, extension
    out[1] = pt & 0x7F;
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    out[12..16].copy_from_slice(&[0xBE, 0xDE, 0, 1]);
    out[16..20].copy_from_slice(&[transport_cc << 4 | 1, 0, 0, 0]);
    out[20..].fill(0);
    out[len - 1] = padding as u8;
    Some(len)
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64) for the garbage tests of the SFU.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A number in `0..n` (`n` > 0).
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        pub(crate) fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                *b = self.next() as u8;
            }
        }
    }

    #[test]
    fn padding_packets_parse_as_padding_only_with_their_number_in_place() {
        let mut buf = [0xAAu8; 400];
        let n = write_padding(&mut buf, (0x1234, 97, 7, 900), 5, MAX_PADDING).unwrap();
        assert_eq!(n, 20 + MAX_PADDING);
        let h = RtpHeader::parse(&buf[..n]).unwrap();
        assert_eq!(
            (h.ssrc, h.payload_type, h.seq, h.timestamp),
            (0x1234, 97, 7, 900)
        );
        assert!(h.padding && h.payload().is_empty());
        let at = h.find_extension(&buf[..n], 5).unwrap();
        assert_eq!(at.start, PADDING_TRANSPORT_SEQ_AT);
        assert_eq!(at.len(), 2);
        assert!(
            unwrap_rtx(&mut buf[..n], &h, 1, 96).is_none(),
            "no OSN in it"
        );
        for bad in [(0, 10), (15, 10), (5, 0), (5, MAX_PADDING + 1)] {
            assert_eq!(write_padding(&mut buf, (1, 97, 1, 1), bad.0, bad.1), None);
        }
        assert_eq!(write_padding(&mut buf[..30], (1, 97, 1, 1), 5, 11), None);
    }

    /// Builds an RTP packet: the fixed header, optional one-byte extensions, payload.
    pub(crate) fn packet(
        pt: u8,
        seq: u16,
        ts: u32,
        ssrc: u32,
        exts: &[(u8, &[u8])],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        set_seq(&mut p, seq);
        set_timestamp(&mut p, ts);
        set_ssrc(&mut p, ssrc);
        if !exts.is_empty() {
            p[0] |= 0x10;
            let mut block = Vec::new();
            for (id, v) in exts {
                block.push((id << 4) | (v.len() as u8 - 1));
                block.extend_from_slice(v);
            }
            while block.len() % 4 != 0 {
                block.push(0);
            }
            p.extend_from_slice(&ONE_BYTE_PROFILE.to_be_bytes());
            p.extend_from_slice(&((block.len() / 4) as u16).to_be_bytes());
            p.extend_from_slice(&block);
        }
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parses_and_rewrites_the_fixed_header() {
        let mut p = packet(96, 65535, 0xFFFF_FFF0, 0x1234_5678, &[], b"abc");
        p[1] |= 0x80;
        let h = RtpHeader::parse(&p).unwrap();
        assert!(h.marker);
        assert_eq!(
            (h.payload_type, h.seq, h.timestamp, h.ssrc),
            (96, 65535, 0xFFFF_FFF0, 0x1234_5678)
        );
        assert_eq!(&p[h.payload()], b"abc");
        set_seq(&mut p, 7);
        set_timestamp(&mut p, 9);
        set_ssrc(&mut p, 11);
        set_payload_type(&mut p, 100);
        let h = RtpHeader::parse(&p).unwrap();
        assert!(h.marker, "the marker survives a payload-type change");
        assert_eq!(
            (h.payload_type, h.seq, h.timestamp, h.ssrc),
            (100, 7, 9, 11)
        );
        set_marker(&mut p, false);
        assert!(!RtpHeader::parse(&p).unwrap().marker);
    }

    #[test]
    fn csrcs_and_padding_are_skipped() {
        let mut p = packet(96, 1, 2, 3, &[], b"");
        p[0] |= 0x02 | 0x20;
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(b"xy");
        p.extend_from_slice(&[0, 0, 3]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.csrc_count, 2);
        assert_eq!(&p[h.payload()], b"xy");
        // Padding longer than what follows the header is refused.
        let last = p.len() - 1;
        p[last] = 9;
        assert!(RtpHeader::parse(&p).is_none());
        p[last] = 0;
        assert!(RtpHeader::parse(&p).is_none());
    }

    #[test]
    fn one_byte_extensions_are_found_by_id() {
        let p = packet(
            96,
            1,
            2,
            3,
            &[(3, &[1, 2, 3]), (5, &[0xAB, 0xCD]), (4, b"1")],
            b"payload",
        );
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(
            read_abs_send_time(h.extension_value(&p, 3).unwrap()),
            Some(0x010203)
        );
        assert_eq!(
            read_transport_seq(h.extension_value(&p, 5).unwrap()),
            Some(0xABCD)
        );
        assert_eq!(h.extension_value(&p, 4), Some(&b"1"[..]));
        assert_eq!(h.find_extension(&p, 9), None);
        assert_eq!(h.find_extension(&p, 0), None);
        assert_eq!(&p[h.payload()], b"payload");
    }

    #[test]
    fn two_byte_extensions_and_the_stop_id() {
        // Two-byte form: id 200 with 3 bytes, padding, id 1 with 0 bytes, id 7 with 2.
        let block = [200u8, 3, 9, 8, 7, 0, 1, 0, 7, 2, 0xBE, 0xEF];
        let mut p = packet(96, 1, 2, 3, &[], b"");
        p[0] |= 0x10;
        p.extend_from_slice(&0x1003u16.to_be_bytes());
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(&block);
        p.extend_from_slice(b"z");
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.extension_value(&p, 200), Some(&[9, 8, 7][..]));
        assert_eq!(h.extension_value(&p, 1), Some(&[][..]));
        assert_eq!(h.extension_value(&p, 7), Some(&[0xBE, 0xEF][..]));
        assert_eq!(&p[h.payload()], b"z");

        // One-byte form: id 15 ends the walk.
        let p = packet(96, 1, 2, 3, &[(15, &[0]), (2, &[1])], b"");
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.find_extension(&p, 2), None);

        // An unknown profile has no readable elements.
        let mut p = packet(96, 1, 2, 3, &[(2, &[1])], b"");
        p[12] = 0x12;
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.find_extension(&p, 2), None);
    }

    #[test]
    fn rtx_round_trip() {
        let orig = packet(96, 1000, 5, 0xAAAA, &[(3, &[1, 2, 3])], b"media");
        let mut buf = orig.clone();
        buf.extend_from_slice(&[0, 0]);
        let h = RtpHeader::parse(&orig).unwrap();
        let n = wrap_rtx(&mut buf, &h, 0xBBBB, 97, 42).unwrap();
        assert_eq!(n, orig.len() + 2);
        let rh = RtpHeader::parse(&buf[..n]).unwrap();
        assert_eq!((rh.ssrc, rh.payload_type, rh.seq), (0xBBBB, 97, 42));
        assert_eq!(&buf[rh.payload()], b"\x03\xe8media");
        let back = unwrap_rtx(&mut buf[..n], &rh, 0xAAAA, 96).unwrap();
        assert_eq!(&buf[..back], &orig[..]);
        // Padding-only RTX (probing) has no OSN.
        let mut pad = packet(97, 1, 2, 0xBBBB, &[], &[0, 0, 0, 4]);
        pad[0] |= 0x20;
        let ph = RtpHeader::parse(&pad).unwrap();
        assert_eq!(unwrap_rtx(&mut pad, &ph, 1, 96), None);
        // No room for the OSN.
        let mut tight = orig.clone();
        assert_eq!(wrap_rtx(&mut tight, &h, 1, 97, 1), None);
    }

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(seq_newer(0, 65535));
        assert!(!seq_newer(65535, 0));
        assert!(!seq_newer(5, 5));
        assert!(seq_newer(0x7FFF, 0));
        assert!(!seq_newer(0x8000, 0));
        assert!(ts_newer(1, u32::MAX));
    }

    #[test]
    fn rtcp_is_told_from_rtp() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0x81, 206]));
        assert!(!is_rtcp(&[0x80, 96]));
        assert!(!is_rtcp(&[0x80, 0x80 | 96]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut buf = [0u8; 64];
        for i in 0..200_000 {
            let len = rng.below(64);
            rng.fill(&mut buf[..len]);
            if i % 2 == 0 && len > 0 {
                buf[0] = 0x90 | (buf[0] & 0x2F);
            }
            let p = &mut buf[..len];
            if let Some(h) = RtpHeader::parse(p) {
                assert!(h.payload_offset <= h.payload_end && h.payload_end <= len);
                if let Some(ext) = h.extension {
                    let mut c = ext.cursor();
                    while let Some(e) = c.next(p) {
                        assert!(e.value.end <= ext.start + ext.len);
                    }
                }
                let _ = h.find_extension(p, (i % 16) as u8);
                let _ = unwrap_rtx(p, &h, 1, 2);
            }
        }
    }
}
