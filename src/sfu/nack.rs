//! Loss repair on both sides of the SFU.
//!
//! - [`PacketCache`]: the last packets of one published source, kept so that NACKs
//!   from receivers are answered by the SFU (the publisher is not bothered, and the
//!   retransmission is one hop short). A fixed ring of preallocated slots indexed by
//!   sequence number: inserting copies one packet, looking up is an index and a compare.
//! - [`NackGenerator`]: the gaps in a publisher's sequence numbers, asked for again with
//!   generic NACKs, each packet a bounded number of times and for a bounded time, so a
//!   lost link is not flooded with requests.
//!
//! Both allocate once, at creation, and never again.

use super::rtp::seq_newer;

/// Packets kept per video source by default: about two seconds of a 2.5 Mbit/s layer,
/// longer than any NACK round trip worth answering.
pub const DEFAULT_CACHE_PACKETS: usize = 512;
/// Bytes per cache slot: a packet over an Ethernet MTU is not media we forward.
pub(crate) const CACHE_SLOT: usize = 1500;

/// The last packets of one source, by sequence number.
pub struct PacketCache {
    data: Box<[u8]>,
    /// Length of the packet in each slot; 0 = empty.
    lens: Box<[u16]>,
    seqs: Box<[u16]>,
    mask: usize,
}

impl PacketCache {
    /// A cache of `packets` slots (rounded up to a power of two, at most 32768, so the
    /// slot of a sequence number stays the same across the 16-bit wrap).
    pub(crate) fn new(packets: usize) -> PacketCache {
        let n = packets.clamp(1, 1 << 15).next_power_of_two();
        PacketCache {
            data: vec![0; n * CACHE_SLOT].into_boxed_slice(),
            lens: vec![0; n].into_boxed_slice(),
            seqs: vec![0; n].into_boxed_slice(),
            mask: n - 1,
        }
    }

    /// Packets the cache holds (a power of two).
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Keeps a copy of `packet` under `seq`, replacing whatever had its slot. A packet
    /// too large for a slot is not kept (and empties the slot, so an older packet of
    /// the same slot is not sent in its place).
    pub(crate) fn insert(&mut self, seq: u16, packet: &[u8]) {
        let i = usize::from(seq) & self.mask;
        if packet.is_empty() || packet.len() > CACHE_SLOT {
            self.lens[i] = 0;
            return;
        }
        self.data[i * CACHE_SLOT..i * CACHE_SLOT + packet.len()].copy_from_slice(packet);
        self.lens[i] = packet.len() as u16;
        self.seqs[i] = seq;
    }

    /// The packet with sequence number `seq`, if still held.
    pub(crate) fn get(&self, seq: u16) -> Option<&[u8]> {
        let i = usize::from(seq) & self.mask;
        let len = usize::from(self.lens[i]);
        if len == 0 || self.seqs[i] != seq {
            return None;
        }
        self.data.get(i * CACHE_SLOT..i * CACHE_SLOT + len)
    }

    pub(crate) fn contains(&self, seq: u16) -> bool {
        let i = usize::from(seq) & self.mask;
        self.lens[i] != 0 && self.seqs[i] == seq
    }

    /// Forgets every packet (the source was replaced).
    pub(crate) fn clear(&mut self) {
        self.lens.fill(0);
    }
}

/// Sequence numbers tracked behind the newest one; a gap larger than this is not
/// repaired packet by packet (a keyframe is cheaper).
pub(crate) const NACK_WINDOW: usize = 512;
/// How many times one packet is asked for.
pub(crate) const MAX_NACK_RETRIES: u8 = 10;
/// How long after it went missing a packet is still asked for: past this, the
/// receivers' jitter buffers have given up on it.
pub(crate) const MAX_NACK_AGE_US: u64 = 1_000_000;
/// Least time between two requests for one packet, whatever the round trip.
pub(crate) const MIN_NACK_INTERVAL_US: u64 = 20_000;

#[derive(Debug, Clone, Copy, Default)]
struct Missing {
    seq: u16,
    valid: bool,
    retries: u8,
    since: u64,
    /// When it was last asked for; 0 = never.
    asked: u64,
}

/// What a received sequence number told the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The next one, or one ahead with the packets between now missing.
    New,
    /// A missing packet arrived (a retransmission or a late one).
    Recovered,
    /// Older than the newest and not missing: a duplicate or one already given up on.
    Old,
    /// So far ahead that the packets between are not asked for: the receivers need a
    /// keyframe instead.
    Jump,
}

/// The missing sequence numbers of one publisher source.
pub(crate) struct NackGenerator {
    missing: Box<[Missing]>,
    newest: Option<u16>,
    outstanding: usize,
}

impl Default for NackGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl NackGenerator {
    pub(crate) fn new() -> NackGenerator {
        NackGenerator {
            missing: vec![Missing::default(); NACK_WINDOW].into_boxed_slice(),
            newest: None,
            outstanding: 0,
        }
    }

    /// Forgets everything (the source was replaced).
    pub(crate) fn reset(&mut self) {
        self.missing.fill(Missing::default());
        self.newest = None;
        self.outstanding = 0;
    }

    /// Packets currently asked for.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn slot(seq: u16) -> usize {
        usize::from(seq) % NACK_WINDOW
    }

    /// Records the arrival of `seq` at `now` (microseconds).
    pub(crate) fn on_packet(&mut self, seq: u16, now: u64) -> Arrival {
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            return Arrival::New;
        };
        if seq_newer(seq, newest) {
            let gap = usize::from(seq.wrapping_sub(newest)) - 1;
            if gap >= NACK_WINDOW {
                self.reset();
                self.newest = Some(seq);
                return Arrival::Jump;
            }
            // Every slot from the old newest on to `seq` held a number now out of the
            // window: those entries go, the gap's numbers come in.
            for k in 1..=gap as u16 + 1 {
                let s = newest.wrapping_add(k);
                let m = &mut self.missing[Self::slot(s)];
                if m.valid {
                    m.valid = false;
                    self.outstanding -= 1;
                }
                if s != seq {
                    *m = Missing {
                        seq: s,
                        valid: true,
                        retries: 0,
                        since: now,
                        asked: 0,
                    };
                    self.outstanding += 1;
                }
            }
            self.newest = Some(seq);
            return Arrival::New;
        }
        if self.forget(seq) {
            Arrival::Recovered
        } else {
            Arrival::Old
        }
    }

    /// Drops the entry of `seq`; whether it was missing.
    fn forget(&mut self, seq: u16) -> bool {
        let m = &mut self.missing[Self::slot(seq)];
        if m.valid && m.seq == seq {
            m.valid = false;
            self.outstanding -= 1;
            true
        } else {
            false
        }
    }

    /// Fills `out` with the sequence numbers to ask for now, oldest first, and counts
    /// each as asked. A packet is asked for again after `rtt` (at least
    /// [`MIN_NACK_INTERVAL_US`]), at most [`MAX_NACK_RETRIES`] times and for at most
    /// [`MAX_NACK_AGE_US`]. Returns how many were written; more may be due when `out`
    /// was filled.
    pub(crate) fn due(&mut self, now: u64, rtt: u64, out: &mut [u16]) -> usize {
        let Some(newest) = self.newest else {
            return 0;
        };
        if self.outstanding == 0 {
            return 0;
        }
        let interval = rtt.max(MIN_NACK_INTERVAL_US);
        let mut n = 0;
        let oldest = newest.wrapping_sub(NACK_WINDOW as u16 - 1);
        for k in 0..NACK_WINDOW as u16 {
            if n == out.len() {
                break;
            }
            let s = oldest.wrapping_add(k);
            let m = &mut self.missing[Self::slot(s)];
            if !m.valid || m.seq != s {
                continue;
            }
            if m.retries >= MAX_NACK_RETRIES || now.saturating_sub(m.since) > MAX_NACK_AGE_US {
                m.valid = false;
                self.outstanding -= 1;
                continue;
            }
            if m.asked != 0 && now.saturating_sub(m.asked) < interval {
                continue;
            }
            // `asked` 0 means never; a clock starting at 0 must not look like that.
            m.asked = now.max(1);
            m.retries += 1;
            out[n] = s;
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_answers_by_sequence_number() {
        let mut c = PacketCache::new(500);
        assert_eq!(c.capacity(), 512);
        c.insert(65535, b"last");
        c.insert(0, b"first");
        assert_eq!(c.get(65535), Some(&b"last"[..]));
        assert_eq!(c.get(0), Some(&b"first"[..]));
        assert!(c.contains(0));
        // 512 later the slot is reused: the old number is gone, the new one is there.
        c.insert(511, b"new");
        assert_eq!(c.get(65535), None);
        assert_eq!(c.get(511), Some(&b"new"[..]));
        assert_eq!(c.get(1), None);
        // Too large: not kept, and the slot's old packet is not handed out instead.
        c.insert(512 + 511, &[0u8; CACHE_SLOT + 1]);
        assert_eq!(c.get(511), None);
        assert_eq!(c.get(512 + 511), None);
        c.clear();
        assert_eq!(c.get(0), None);
    }

    #[test]
    fn gaps_are_asked_for_with_bounded_retries() {
        let mut g = NackGenerator::new();
        let mut out = [0u16; 16];
        assert_eq!(g.on_packet(65533, 1_000), Arrival::New);
        // 65534, 65535, 0 missing (across the wrap).
        assert_eq!(g.on_packet(1, 1_000), Arrival::New);
        assert_eq!(g.outstanding(), 3);
        assert_eq!(g.due(2_000, 50_000, &mut out), 3);
        assert_eq!(&out[..3], &[65534, 65535, 0]);
        // Not again before the round trip.
        assert_eq!(g.due(30_000, 50_000, &mut out), 0);
        assert_eq!(g.on_packet(65535, 40_000), Arrival::Recovered);
        assert_eq!(g.on_packet(65535, 40_000), Arrival::Old);
        assert_eq!(g.due(60_000, 50_000, &mut out), 2);
        assert_eq!(&out[..2], &[65534, 0]);
        // Retries run out.
        let mut asked = 2;
        let mut t = 60_000;
        loop {
            t += 60_000;
            let n = g.due(t, 50_000, &mut out);
            if n == 0 {
                break;
            }
            asked += 1;
        }
        assert_eq!(asked, usize::from(MAX_NACK_RETRIES));
        assert_eq!(g.outstanding(), 0);
    }

    #[test]
    fn old_losses_are_given_up() {
        let mut g = NackGenerator::new();
        let mut out = [0u16; 4];
        g.on_packet(10, 0);
        g.on_packet(12, 0);
        assert_eq!(g.due(MAX_NACK_AGE_US + 1, 0, &mut out), 0);
        assert_eq!(g.outstanding(), 0);
    }

    #[test]
    fn a_jump_resets_and_out_limits_the_answer() {
        let mut g = NackGenerator::new();
        g.on_packet(0, 0);
        assert_eq!(g.on_packet(NACK_WINDOW as u16 + 1, 0), Arrival::Jump);
        assert_eq!(g.outstanding(), 0);
        g.on_packet(NACK_WINDOW as u16 + 10, 0);
        assert_eq!(g.outstanding(), 8);
        let mut out = [0u16; 3];
        assert_eq!(g.due(1, 0, &mut out), 3);
        assert_eq!(g.due(2, 0, &mut out), 3);
        assert_eq!(g.due(3, 0, &mut out), 2);
    }

    #[test]
    fn a_full_window_of_losses_is_tracked() {
        let mut g = NackGenerator::new();
        g.on_packet(100, 0);
        g.on_packet(100 + NACK_WINDOW as u16, 0);
        assert_eq!(g.outstanding(), NACK_WINDOW - 1);
        // Moving on by 10 pushes the 10 oldest out of the window (101..=110 go, the
        // 9 numbers of the new gap come in).
        g.on_packet(110 + NACK_WINDOW as u16, 0);
        assert_eq!(g.outstanding(), NACK_WINDOW - 2);
        let mut out = [0u16; NACK_WINDOW];
        let n = g.due(1, 0, &mut out);
        assert!(out[..n].iter().all(|&s| s > 110));
        assert_eq!(n, NACK_WINDOW - 2);
    }
}
