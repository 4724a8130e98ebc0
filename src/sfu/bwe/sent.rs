//! What the SFU sent one receiver under each transport-wide sequence number.
//!
//! Every packet to a receiver (audio, video, retransmissions) takes the next number of
//! the receiver's one counter and goes out with it in its transport-wide sequence
//! number extension; the receiver's transport-cc feedback later says when each number
//! arrived. The estimator needs the size and send time behind each number, so they are
//! kept in a fixed ring. The streams of a receiver are forwarded by the workers of
//! different publishers, so the counter and the ring are atomics: one `fetch_add` and
//! one store per packet, no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Packets remembered: 16 KiB per receiver, 4 s at 5 Mbit/s and 1 s at the 20 Mbit/s
/// ceiling, ten times the longest wait for feedback (an interval and a round trip).
pub(crate) const SENT_RING: usize = 2048;

/// Bits of [`SentPackets`]'s counter that count packets (a trillion: never wraps)...
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// ... and the bits above, bytes (16 MiB, wrapping: a probe counts far less).
const BYTES_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

const SEQ_BITS: u32 = 16;
const SIZE_BITS: u32 = 12;
const TIME_BITS: u32 = 64 - SEQ_BITS - SIZE_BITS;
const SIZE_MAX: u64 = (1 << SIZE_BITS) - 1;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// One packet as it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SentPacket {
    /// The unwrapped transport-wide sequence number.
    pub(crate) seq: u64,
    /// Bytes of the RTP packet (capped at 4095).
    pub(crate) size: u16,
    /// When it was sent (µs on the shared clock).
    pub(crate) at: u64,
}

/// A receiver's transport-wide sequence numbers and what was sent under them.
#[derive(Debug)]
pub struct SentPackets {
    /// The next number (low [`COUNT_BITS`] bits) and the bytes sent so far, wrapping
    /// (the bits above: what a probe's pace counts): one atomic addition a packet.
    next: AtomicU64,
    /// seq (16 bits) | size (12 bits) | send time (the low 36 bits of µs, 68 s around).
    /// 0 is empty: no packet has size 0.
    ring: Box<[AtomicU64]>,
}

impl Default for SentPackets {
    fn default() -> Self {
        SentPackets::new()
    }
}

impl SentPackets {
    /// Allocates the ring once.
    pub fn new() -> SentPackets {
        SentPackets {
            next: AtomicU64::new(0),
            ring: (0..SENT_RING).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Takes the next number for a packet of `size` bytes sent at `now` (µs) and
    /// returns it as the extension carries it.
    pub fn stamp(&self, size: usize, now: u64) -> u16 {
        let size = (size as u64).min(BYTES_MASK);
        let seq = self
            .next
            .fetch_add(1 | size << COUNT_BITS, Ordering::Relaxed)
            & COUNT_MASK;
        let packed = (now & TIME_MASK) << (SEQ_BITS + SIZE_BITS)
            | size.clamp(1, SIZE_MAX) << SEQ_BITS
            | (seq & 0xFFFF);
        self.ring[slot(seq)].store(packed, Ordering::Release);
        seq as u16
    }

    /// Reads the slot the next packet will be noted in (see
    /// `Downstream::read_ahead`): a store into a cold line waits for it as a load does.
    pub(crate) fn read_ahead(&self) -> u64 {
        let next = self.next.load(Ordering::Relaxed) & COUNT_MASK;
        self.ring[slot(next)].load(Ordering::Relaxed)
    }

    /// The number the next packet will get (unwrapped).
    pub(crate) fn next_seq(&self) -> u64 {
        self.next.load(Ordering::Acquire) & COUNT_MASK
    }

    /// Bytes sent so far under all numbers, wrapping at [`BYTES_MASK`] (see
    /// [`SentPackets::bytes_since`]).
    pub(crate) fn bytes(&self) -> u64 {
        self.next.load(Ordering::Relaxed) >> COUNT_BITS
    }

    /// Bytes sent since [`SentPackets::bytes`] said `then` (less than 16 MiB ago).
    pub(crate) fn bytes_since(&self, then: u64) -> u64 {
        self.bytes().wrapping_sub(then) & BYTES_MASK
    }

    /// The unwrapped number of `seq` (as feedback reports it): the latest number handed
    /// out that ends in it.
    pub(crate) fn unwrap(&self, seq: u16) -> u64 {
        let next = self.next_seq();
        let behind = u64::from(next.wrapping_sub(1) as u16).wrapping_sub(u64::from(seq)) & 0xFFFF;
        next.wrapping_sub(1).wrapping_sub(behind)
    }

    /// What was sent as `seq` (unwrapped), if the ring still holds it; `now` (µs)
    /// restores the send time's high bits.
    pub(crate) fn get(&self, seq: u64, now: u64) -> Option<SentPacket> {
        let next = self.next_seq();
        if seq >= next || next - seq > SENT_RING as u64 {
            return None;
        }
        let packed = self.ring[slot(seq)].load(Ordering::Acquire);
        if packed == 0 || packed & 0xFFFF != seq & 0xFFFF {
            return None; // not written yet by the worker that took the number
        }
        let size = (packed >> SEQ_BITS) & SIZE_MAX;
        let low = packed >> (SEQ_BITS + SIZE_BITS);
        let age = now.wrapping_sub(low) & TIME_MASK;
        Some(SentPacket {
            seq,
            size: size as u16,
            at: now.saturating_sub(age),
        })
    }
}

fn slot(seq: u64) -> usize {
    (seq % SENT_RING as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_and_packets_are_found() {
        let sent = SentPackets::new();
        let base = 1u64 << 40; // high bits the ring does not keep
        for i in 0..100u64 {
            assert_eq!(sent.stamp(1000 + i as usize, base + i * 10), i as u16);
        }
        let p = sent.get(sent.unwrap(42), base + 5_000).unwrap();
        assert_eq!(
            p,
            SentPacket {
                seq: 42,
                size: 1042,
                at: base + 420
            }
        );
        assert_eq!(sent.get(100, base), None, "not sent yet");
    }

    #[test]
    fn wraps_sixteen_bits_and_forgets_what_fell_out() {
        let sent = SentPackets::new();
        for i in 0..70_000u64 {
            sent.stamp(1200, i);
        }
        // 69_999 is the newest; as the wire says it: 69_999 - 65_536 = 4463.
        assert_eq!(sent.unwrap(4463), 69_999);
        assert_eq!(sent.unwrap(4000), 69_536);
        assert_eq!(sent.unwrap(5000), 5000, "a cycle back");
        assert!(sent.get(69_999 - SENT_RING as u64 + 1, 70_000).is_some());
        assert_eq!(sent.get(69_999 - SENT_RING as u64, 70_000), None);
        assert_eq!(sent.get(u64::MAX, 70_000), None);
    }

    #[test]
    fn bytes_are_counted_in_the_same_addition_and_wrap_cleanly() {
        let sent = SentPackets::new();
        let then = sent.bytes();
        for i in 0..5_000u64 {
            sent.stamp(4_000, i); // 20 MB: the byte count wraps once
        }
        assert_eq!(sent.next_seq(), 5_000);
        assert_eq!(sent.bytes_since(then), (5_000 * 4_000) & BYTES_MASK);
        let mark = sent.bytes();
        sent.stamp(1_200, 5_000);
        sent.stamp(300, 5_001);
        assert_eq!(sent.bytes_since(mark), 1_500);
        assert_eq!(sent.get(5_001, 5_002).map(|p| p.size), Some(300));
    }

    #[test]
    fn sizes_are_capped_and_never_zero() {
        let sent = SentPackets::new();
        sent.stamp(0, 1);
        sent.stamp(100_000, 2);
        assert_eq!(sent.get(0, 3).unwrap().size, 1);
        assert_eq!(sent.get(1, 3).unwrap().size, 4095);
    }
}
