//! Framing of STUN and TURN over a byte stream (TCP, TLS), sans-IO: RFC 8489 §6.2.2 (a
//! STUN message carries its own length) and RFC 8656 §12.5 (a ChannelData message
//! carries its length and is padded to a multiple of four bytes over a stream).

/// The fixed STUN header: type, length, magic cookie, transaction id.
pub const STUN_HEADER: usize = 20;
/// The longest frame: a STUN message of the longest length a multiple of four allows
/// (a ChannelData message with its padding is 4 + 65536 at most).
pub const MAX_FRAME: usize = STUN_HEADER + 65_532;

/// What the bytes at the start of a stream's buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole frame yet: at least this many bytes are needed (0: not known yet,
    /// under a frame's first four bytes).
    Partial {
        /// Bytes needed in all, 0 if not known yet.
        need: usize,
    },
    /// A STUN message of `total` bytes.
    Stun {
        /// The message's length with its header.
        total: usize,
    },
    /// A ChannelData message of `4 + length` bytes, `total` with its padding.
    ChannelData {
        /// Bytes the frame takes in the stream, padding included.
        total: usize,
        /// The length field: application data bytes.
        length: usize,
    },
    /// Neither: a STUN length that is not a multiple of four, or a first byte that no
    /// frame starts with. The stream can no longer be framed: it ends.
    Broken,
}

/// The frame at the start of `avail`.
pub fn next_frame(avail: &[u8]) -> Frame {
    let [first, _, l0, l1, ..] = *avail else {
        return Frame::Partial { need: 0 };
    };
    let length = usize::from(u16::from_be_bytes([l0, l1]));
    let frame = match first {
        0..=3 if length % 4 == 0 => Frame::Stun {
            total: STUN_HEADER + length,
        },
        0x40..=0x7F => Frame::ChannelData {
            total: 4 + length.div_ceil(4) * 4,
            length,
        },
        _ => return Frame::Broken,
    };
    let total = match frame {
        Frame::Stun { total } | Frame::ChannelData { total, .. } => total,
        _ => 0,
    };
    if avail.len() < total {
        Frame::Partial { need: total }
    } else {
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_stun_and_padded_channel_data_and_refuses_the_rest() {
        assert_eq!(next_frame(&[0x00, 0x01, 0x00]), Frame::Partial { need: 0 });
        let mut stun = vec![0x00, 0x01, 0x00, 0x08];
        stun.resize(28, 0);
        assert_eq!(next_frame(&stun[..27]), Frame::Partial { need: 28 });
        assert_eq!(next_frame(&stun), Frame::Stun { total: 28 });
        // Five bytes of data take eight on the stream.
        let channel = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0, 0xFF];
        assert_eq!(next_frame(&channel[..11]), Frame::Partial { need: 12 });
        assert_eq!(
            next_frame(&channel),
            Frame::ChannelData {
                total: 12,
                length: 5
            }
        );
        assert_eq!(
            next_frame(&[0x7F, 0xFF, 0xFF, 0xFF]),
            Frame::Partial { need: 4 + 65_536 }
        );
        assert_eq!(
            next_frame(&[0x01, 0x01, 0xFF, 0xFC]),
            Frame::Partial { need: MAX_FRAME },
            "the longest frame: found by the stream_framing fuzz target"
        );
        assert_eq!(next_frame(&[0x00, 0x01, 0x00, 0x06]), Frame::Broken);
        assert_eq!(next_frame(&[0x16, 0x03, 0x01, 0x00]), Frame::Broken);
        assert_eq!(next_frame(&[0x80, 0x60, 0x00, 0x00]), Frame::Broken);
    }
}
