//! What the SFU reads from video payloads: where a keyframe starts (the only place a
//! receiver may be switched to another simulcast layer) and, for VP8, the picture id and
//! TL0PICIDX that must stay continuous across such a switch.
//!
//! VP8 follows the payload descriptor of RFC 7741 §4.2 and the frame header of RFC 6386
//! §9.1; H264 the packetisation modes of RFC 6184 §5.6–5.8. Offsets are relative to the
//! start of the RTP payload. Nothing here allocates and garbage yields `None`/`false`.

/// The media of a published track, as far as forwarding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Any audio codec: every packet may start a stream.
    Audio,
    /// VP8: keyframes and temporal layers read from the payload descriptor.
    Vp8,
    /// H.264: keyframes read from the NAL units.
    H264,
    /// A video codec the SFU cannot read (VP9, AV1): every packet counts as a switch
    /// point, so it is only fit for single-layer tracks, whose receivers ask for a
    /// keyframe themselves.
    Video,
}

impl Codec {
    /// Whether the packet with this payload may start a receiver's stream: a keyframe's
    /// first packet for readable video, any packet otherwise.
    pub(crate) fn switch_point(self, payload: &[u8], vp8: Option<&Vp8Descriptor>) -> bool {
        match self {
            Codec::Audio | Codec::Video => true,
            Codec::Vp8 => vp8.is_some_and(|d| d.keyframe),
            Codec::H264 => h264_keyframe(payload),
        }
    }
}

/// The VP8 payload descriptor of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// S: the first packet of a partition.
    pub(crate) start: bool,
    pub(crate) partition: u8,
    /// The picture id (7 or 15 bits), where it lies, and whether it has 15 bits.
    pub picture_id: Option<u16>,
    pub(crate) picture_id_offset: usize,
    pub(crate) long_picture_id: bool,
    pub(crate) tl0picidx: Option<u8>,
    pub(crate) tl0picidx_offset: usize,
    /// Temporal layer index and the layer-sync bit.
    pub tid: Option<u8>,
    pub(crate) layer_sync: bool,
    /// Length of the descriptor: where the VP8 payload begins.
    pub(crate) len: usize,
    /// The first packet of a keyframe.
    pub keyframe: bool,
    /// Width and height from a keyframe's frame header.
    pub(crate) size: Option<(u16, u16)>,
}

impl Vp8Descriptor {
    /// Writes a new picture id in the width the packet already uses (a 15-bit counter
    /// is cut to 7 bits where the sender used 7: players follow the wrap).
    pub(crate) fn write_picture_id(&self, payload: &mut [u8], pid: u16) {
        if self.picture_id.is_none() {
            return;
        }
        let at = self.picture_id_offset;
        if self.long_picture_id {
            if let Some(b) = payload.get_mut(at..at + 2) {
                b[0] = 0x80 | ((pid >> 8) as u8 & 0x7F);
                b[1] = pid as u8;
            }
        } else if let Some(b) = payload.get_mut(at) {
            *b = pid as u8 & 0x7F;
        }
    }

    pub(crate) fn write_tl0picidx(&self, payload: &mut [u8], idx: u8) {
        if self.tl0picidx.is_some()
            && let Some(b) = payload.get_mut(self.tl0picidx_offset)
        {
            *b = idx;
        }
    }

    /// The modulus of the picture id as written: 2^15 or 2^7.
    pub fn picture_id_mask(&self) -> u16 {
        if self.long_picture_id { 0x7FFF } else { 0x7F }
    }
}

/// Reads the VP8 payload descriptor (RFC 7741 §4.2) at the start of `payload`.
pub fn parse_vp8(payload: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *payload.first()?;
    let mut d = Vp8Descriptor {
        start: b0 & 0x10 != 0,
        partition: b0 & 0x07,
        ..Vp8Descriptor::default()
    };
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            let m = *payload.get(at)?;
            d.picture_id_offset = at;
            if m & 0x80 != 0 {
                let low = *payload.get(at + 1)?;
                d.picture_id = Some(u16::from(m & 0x7F) << 8 | u16::from(low));
                d.long_picture_id = true;
                at += 2;
            } else {
                d.picture_id = Some(u16::from(m));
                at += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0picidx = Some(*payload.get(at)?);
            d.tl0picidx_offset = at;
            at += 1;
        }
        if x & 0x30 != 0 {
            let t = *payload.get(at)?;
            if x & 0x20 != 0 {
                d.tid = Some(t >> 6);
                d.layer_sync = t & 0x20 != 0;
            }
            at += 1;
        }
    }
    d.len = at;
    if d.start && d.partition == 0 {
        // RFC 6386 §9.1: the frame tag's lowest bit is 0 for a key frame, which then
        // carries the start code 9d 01 2a and its 14-bit width and height.
        let frame = payload.get(at..)?;
        if frame.first().is_some_and(|tag| tag & 0x01 == 0) {
            d.keyframe = true;
            if let Some([_, _, _, 0x9D, 0x01, 0x2A, w0, w1, h0, h1, ..]) = frame.get(..10) {
                let w = u16::from_le_bytes([*w0, *w1]) & 0x3FFF;
                let h = u16::from_le_bytes([*h0, *h1]) & 0x3FFF;
                d.size = Some((w, h));
            }
        }
    }
    Some(d)
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Whether an H264 payload starts a keyframe: an SPS or IDR slice as a single NAL unit,
/// inside a STAP-A aggregate, or as the first fragment of an FU-A. Chrome sends SPS, PPS
/// and the IDR together at the start of a keyframe, so the SPS marks the switch point.
pub fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    let key = |t: u8| t == NAL_IDR || t == NAL_SPS;
    match b0 & 0x1F {
        NAL_STAP_A => {
            let mut at = 1;
            while let Some(size) = payload.get(at..at + 2) {
                let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
                match payload.get(at + 2) {
                    Some(nal) if size > 0 => {
                        if key(nal & 0x1F) {
                            return true;
                        }
                    }
                    _ => return false,
                }
                at += 2 + size;
            }
            false
        }
        NAL_FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && key(fu & 0x1F)),
        t => key(t),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sfu::rtp::tests::Rng;

    /// A VP8 payload: descriptor with a 15-bit picture id, TL0PICIDX and TID, then a
    /// frame header (a 640x360 keyframe or an interframe) and filler.
    pub(crate) fn vp8_payload(keyframe: bool, start: bool, pid: u16, tl0: u8) -> Vec<u8> {
        vp8_payload_sized(keyframe, start, pid, tl0, 360)
    }

    /// The same with a keyframe of 16:9 frames `height` high.
    pub(crate) fn vp8_payload_sized(
        keyframe: bool,
        start: bool,
        pid: u16,
        tl0: u8,
        height: u16,
    ) -> Vec<u8> {
        let mut p = vec![
            0x80 | if start { 0x10 } else { 0 },
            0xE0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            0x20,
        ];
        if keyframe {
            p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]);
            p.extend_from_slice(&(height / 9 * 16).to_le_bytes());
            p.extend_from_slice(&height.to_le_bytes());
        } else {
            p.extend_from_slice(&[0x11, 0x02, 0x00]);
        }
        p.extend_from_slice(&[0x55; 20]);
        p
    }

    #[test]
    fn vp8_descriptor_fields() {
        let p = vp8_payload(true, true, 0x1234, 7);
        let d = parse_vp8(&p).unwrap();
        assert!(d.start && d.keyframe);
        assert_eq!(d.picture_id, Some(0x1234));
        assert!(d.long_picture_id);
        assert_eq!(d.tl0picidx, Some(7));
        assert_eq!(d.tid, Some(0));
        assert!(d.layer_sync);
        assert_eq!(d.len, 6);
        assert_eq!(d.size, Some((640, 360)));

        let d = parse_vp8(&vp8_payload(false, true, 5, 1)).unwrap();
        assert!(!d.keyframe && d.size.is_none());
        // A keyframe's later packets do not start it.
        let d = parse_vp8(&vp8_payload(true, false, 5, 1)).unwrap();
        assert!(!d.keyframe);
    }

    #[test]
    fn vp8_short_picture_id_and_minimal_descriptor() {
        // X, I with 7-bit id 0x55, no L/T/K; then a keyframe tag without size.
        let p = [0x90, 0x80, 0x55, 0x00];
        let d = parse_vp8(&p).unwrap();
        assert_eq!(d.picture_id, Some(0x55));
        assert!(!d.long_picture_id);
        assert_eq!(d.tl0picidx, None);
        assert!(d.keyframe);
        assert_eq!(d.size, None);
        assert_eq!(d.picture_id_mask(), 0x7F);
        // No extension byte at all.
        let d = parse_vp8(&[0x10, 0x01]).unwrap();
        assert_eq!((d.len, d.picture_id, d.keyframe), (1, None, false));
        // Truncated descriptors.
        assert!(parse_vp8(&[0x80]).is_none());
        assert!(parse_vp8(&[0x80, 0x80, 0x80]).is_none());
        assert!(parse_vp8(&[]).is_none());
    }

    #[test]
    fn vp8_rewrite_keeps_the_width() {
        let mut p = vp8_payload(false, true, 0x7FFF, 255);
        let d = parse_vp8(&p).unwrap();
        d.write_picture_id(&mut p, 0x0102);
        d.write_tl0picidx(&mut p, 3);
        let d2 = parse_vp8(&p).unwrap();
        assert_eq!((d2.picture_id, d2.tl0picidx), (Some(0x0102), Some(3)));
        let mut s = [0x90, 0x80, 0x55, 0x01];
        let d = parse_vp8(&s).unwrap();
        d.write_picture_id(&mut s, 0x1FF);
        assert_eq!(parse_vp8(&s).unwrap().picture_id, Some(0x7F));
    }

    #[test]
    fn h264_keyframes() {
        assert!(h264_keyframe(&[0x65, 1, 2])); // IDR slice
        assert!(h264_keyframe(&[0x67, 1, 2])); // SPS
        assert!(!h264_keyframe(&[0x41, 1, 2])); // non-IDR slice
        // STAP-A: SPS (2 bytes), PPS (2 bytes).
        assert!(h264_keyframe(&[0x78, 0, 2, 0x67, 0, 0, 2, 0x68, 0]));
        // STAP-A of two non-IDR slices, and one whose size runs past the end.
        assert!(!h264_keyframe(&[0x78, 0, 2, 0x41, 0, 0, 2, 0x41, 0]));
        assert!(!h264_keyframe(&[0x78, 0, 9, 0x41]));
        assert!(!h264_keyframe(&[0x78, 0, 0]));
        // FU-A: the start of an IDR, a later fragment, the start of a P slice.
        assert!(h264_keyframe(&[0x7C, 0x85, 0]));
        assert!(!h264_keyframe(&[0x7C, 0x05, 0]));
        assert!(!h264_keyframe(&[0x7C, 0x81, 0]));
        assert!(!h264_keyframe(&[0x7C]));
        assert!(!h264_keyframe(&[]));
    }

    #[test]
    fn switch_points() {
        let key = parse_vp8(&vp8_payload(true, true, 1, 1));
        let delta = parse_vp8(&vp8_payload(false, true, 1, 1));
        assert!(Codec::Vp8.switch_point(&[], key.as_ref()));
        assert!(!Codec::Vp8.switch_point(&[], delta.as_ref()));
        assert!(!Codec::Vp8.switch_point(&[], None));
        assert!(Codec::Audio.switch_point(&[], None));
        assert!(Codec::H264.switch_point(&[0x65], None));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let mut buf = [0u8; 24];
        for _ in 0..200_000 {
            let len = rng.below(24);
            rng.fill(&mut buf[..len]);
            let p = &mut buf[..len];
            let _ = h264_keyframe(p);
            if let Some(d) = parse_vp8(p) {
                assert!(d.len <= len);
                d.write_picture_id(p, 0xFFFF);
                d.write_tl0picidx(p, 1);
            }
        }
    }
}
