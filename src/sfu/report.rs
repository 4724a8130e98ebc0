//! What a receiver report to a publisher says about one of its sources (RFC 3550 §6.4.1
//! and appendix A): extended highest sequence number, losses in total and since the
//! last report, interarrival jitter, and the last sender report with the delay since,
//! from which the publisher computes its round-trip time.

use super::rtcp::{ReportBlock, ntp_middle};
use super::rtp::seq_newer;

/// The last sender report of a source: its NTP and RTP time, and when (our monotonic
/// microseconds) it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SrInfo {
    pub(crate) ntp: u64,
    pub(crate) rtp_timestamp: u32,
    pub(crate) received_at: u64,
}

/// Reception statistics of one publisher source.
#[derive(Debug, Clone)]
pub(crate) struct ReceiveStats {
    clock_rate: u64,
    started: bool,
    base_seq: u32,
    max_seq: u16,
    /// Sequence-number wraps seen, times 65536.
    cycles: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Interarrival jitter in timestamp units, times 16 (RFC 3550 A.8).
    jitter16: u32,
    last_transit: Option<u32>,
    last_sr: Option<SrInfo>,
}

impl ReceiveStats {
    pub(crate) fn new(clock_rate: u32) -> ReceiveStats {
        ReceiveStats {
            clock_rate: u64::from(clock_rate.max(1)),
            started: false,
            base_seq: 0,
            max_seq: 0,
            cycles: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter16: 0,
            last_transit: None,
            last_sr: None,
        }
    }

    /// Forgets everything (the source was replaced).
    pub(crate) fn reset(&mut self) {
        *self = ReceiveStats::new(self.clock_rate as u32);
    }

    /// Counts a packet arriving at `now` (monotonic microseconds). Jitter is measured
    /// on new in-order packets only: a retransmission's timestamp says nothing of the
    /// path's delay variation.
    pub(crate) fn on_packet(&mut self, seq: u16, timestamp: u32, now: u64, retransmission: bool) {
        self.received = self.received.wrapping_add(1);
        if !self.started {
            self.started = true;
            self.base_seq = u32::from(seq);
            self.max_seq = seq;
        } else if seq_newer(seq, self.max_seq) {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_seq = seq;
        } else {
            return;
        }
        if retransmission {
            return;
        }
        // Arrival time in timestamp units; only differences matter, so it may wrap.
        let arrival = (u128::from(now) * u128::from(self.clock_rate) / 1_000_000) as u32;
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit.wrapping_sub(last) as i32).unsigned_abs();
            // J += (|D| - J) / 16, in units of 1/16 (RFC 3550 A.8).
            self.jitter16 = self
                .jitter16
                .wrapping_add(d)
                .wrapping_sub((self.jitter16 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    pub(crate) fn on_sender_report(&mut self, ntp: u64, rtp_timestamp: u32, now: u64) {
        self.last_sr = Some(SrInfo {
            ntp,
            rtp_timestamp,
            received_at: now,
        });
    }

    pub(crate) fn last_sender_report(&self) -> Option<SrInfo> {
        self.last_sr
    }

    /// Whether any packet was counted.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    pub(crate) fn extended_highest(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Jitter in timestamp units.
    pub(crate) fn jitter(&self) -> u32 {
        self.jitter16 >> 4
    }

    /// The report block for source `ssrc` at `now`; starts a new interval for the
    /// fraction lost.
    pub(crate) fn report(&mut self, ssrc: u32, now: u64) -> ReportBlock {
        let expected = self
            .extended_highest()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1);
        let lost = i64::from(expected) - i64::from(self.received);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some(sr) => (
                ntp_middle(sr.ntp),
                // 1/65536 s units.
                (now.saturating_sub(sr.received_at) * 65_536 / 1_000_000) as u32,
            ),
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.clamp(-0x80_0000, 0x7F_FFFF) as i32,
            highest_seq: self.extended_highest(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_and_wraps() {
        let mut s = ReceiveStats::new(90_000);
        for seq in [65530u16, 65531, 65533, 65534, 65535, 0, 1, 3] {
            s.on_packet(seq, 0, 0, false);
        }
        let r = s.report(7, 0);
        assert_eq!(r.ssrc, 7);
        assert_eq!(r.highest_seq, 65536 + 3);
        assert_eq!(r.cumulative_lost, 2);
        assert_eq!(r.fraction_lost, (2 * 256 / 10) as u8);
        // The late packet arrives: the next interval has no loss, and the total drops.
        s.on_packet(2, 0, 0, true);
        s.on_packet(4, 0, 0, false);
        let r = s.report(7, 0);
        assert_eq!(r.cumulative_lost, 1);
        assert_eq!(r.fraction_lost, 0);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut s = ReceiveStats::new(90_000);
        // Frames every 3000 ticks (1/30 s), every other one arriving 2 ms late.
        for i in 0..300u32 {
            let ideal = u64::from(i) * 100_000 / 3;
            let now = ideal + u64::from(i % 2) * 2_000;
            s.on_packet(i as u16, 1234 + i * 3000, now + 10_000_000, false);
        }
        // |D| is 2 ms = 180 ticks per packet, and J converges to it.
        let j = s.jitter();
        assert!((170..=190).contains(&j), "jitter {j}");
        let r = s.report(1, 0);
        assert_eq!(r.jitter, j);
    }

    #[test]
    fn last_sr_and_delay() {
        let mut s = ReceiveStats::new(48_000);
        s.on_packet(1, 0, 0, false);
        assert_eq!(s.report(1, 0).last_sr, 0);
        s.on_sender_report(0x1122_3344_5566_7788, 9, 1_000_000);
        let r = s.report(1, 1_500_000);
        assert_eq!(r.last_sr, 0x3344_5566);
        assert_eq!(r.delay_since_last_sr, 32_768);
    }
}
