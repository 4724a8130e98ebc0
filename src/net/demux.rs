//! RFC 7983 (and RFC 9443) demultiplexing by the first byte of a datagram: STUN, TURN
//! ChannelData, DTLS and RTP/RTCP all share the media port.

/// What a datagram is, judged by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// 0–3: STUN (Binding, TURN methods, ICE checks).
    Stun,
    /// 64–127: TURN ChannelData (RFC 7983 gives 64–79; RFC 5766 channel numbers,
    /// still used by coturn's clients, reach 127).
    ChannelData,
    /// 20–63: DTLS records.
    Dtls,
    /// 128–191: RTP and RTCP.
    Rtp,
    /// Anything else, including an empty datagram: dropped.
    Unknown,
}

pub(crate) fn classify(packet: &[u8]) -> Class {
    match packet.first() {
        Some(0..=3) => Class::Stun,
        Some(20..=63) => Class::Dtls,
        Some(64..=127) => Class::ChannelData,
        Some(128..=191) => Class::Rtp,
        _ => Class::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_rfc_7983() {
        assert_eq!(classify(&[0x00, 0x01]), Class::Stun);
        assert_eq!(classify(&[3]), Class::Stun);
        assert_eq!(classify(&[4]), Class::Unknown);
        assert_eq!(classify(&[22]), Class::Dtls);
        assert_eq!(classify(&[0x40]), Class::ChannelData);
        assert_eq!(classify(&[0x4f]), Class::ChannelData);
        assert_eq!(classify(&[0x7f]), Class::ChannelData);
        assert_eq!(classify(&[0x80]), Class::Rtp);
        assert_eq!(classify(&[0xbf]), Class::Rtp);
        assert_eq!(classify(&[0xc0]), Class::Unknown);
        assert_eq!(classify(&[]), Class::Unknown);
    }
}
