//! Asking a receiver's path whether it carries more than its estimate (sans-IO).
//!
//! Before its allocation raises a stream past the estimate, a receiver's path is
//! probed: for [`PROBE_DURATION_US`] the streams forwarded to it add padding (RTX
//! packets of padding only, which the receiver counts in its transport-cc feedback and
//! then drops) until all it is sent comes to the probe's rate ([`ProbePace`], shared
//! by those streams' forwarders as the transport-wide numbers are). Whatever went out
//! under the probe's numbers, media and padding, is one cluster; the feedback about it
//! tells the rate the path delivered ([`ProbeCluster`], after GoogCC's
//! `ProbeBitrateEstimator`): the lower of the rates it was sent and received at, and
//! when it arrived markedly slower than it was sent (a queue formed), a little under
//! the receive rate.
//!
//! Why padding and not the next layer: a probe costs the path a short burst at most,
//! where switching up means a keyframe, and a picture that degrades and needs another
//! keyframe when the switch was too much.

use std::sync::atomic::{AtomicU64, Ordering};

use super::SentPackets;

/// How long a probe sends at its rate. Long enough for the piggy-backed pacing (a few
/// ms between forwarded packets) to make a measurable train, short enough that a
/// probe at twice a full link's rate adds no more than the link's queue holds
/// (150 ms of its rate; the narrow test's queue holds 200 ms).
pub(crate) const PROBE_DURATION_US: u64 = 150_000;
/// A cluster whose feedback is not complete this long after it ended failed.
const PROBE_TIMEOUT_US: u64 = 1_000_000;
/// Received at under this share of the rate it was sent at: the path slowed it (a
/// queue), so the path is at its limit (libwebrtc: 0.9).
const SLOWED: f64 = 0.9;
/// ... and is taken as carrying this share of the receive rate (libwebrtc: 0.95).
const AT_LIMIT: f64 = 0.95;
/// Sent more than this many times faster than received: nothing to learn (libwebrtc: 2).
const MAX_RATIO: f64 = 2.0;
/// A cluster needs this many packets, and this share of them received (libwebrtc: 5
/// and 80 %).
const MIN_PACKETS: u32 = 5;
const MIN_RECEIVED: f64 = 0.8;

/// A probe's pace: how much padding the streams of a receiver owe at a time. Set by
/// the receiver's allocation, read by the forwarders of its streams on every packet
/// they forward (atomics, no lock).
#[derive(Debug, Default)]
pub(crate) struct ProbePace {
    /// When the probe started and ends (µs on the shared clock); `end` 0: none.
    start_us: AtomicU64,
    end_us: AtomicU64,
    bps: AtomicU64,
    /// The receiver's bytes sent when it started ([`SentPackets::bytes`]).
    base: AtomicU64,
}

impl ProbePace {
    /// Sends at `bps` for [`PROBE_DURATION_US`] from `now`.
    pub(crate) fn start(&self, bps: u64, now: u64, sent: &SentPackets) {
        self.end_us.store(0, Ordering::Release);
        self.start_us.store(now, Ordering::Relaxed);
        self.bps.store(bps, Ordering::Relaxed);
        self.base.store(sent.bytes(), Ordering::Relaxed);
        self.end_us
            .store(now.saturating_add(PROBE_DURATION_US), Ordering::Release);
    }

    /// Bytes of padding due at `now`: what the probe's rate sends by now, less what the
    /// receiver was sent since it started.
    pub(crate) fn owed(&self, now: u64, sent: &SentPackets) -> u64 {
        let end = self.end_us.load(Ordering::Acquire);
        if now >= end {
            return 0;
        }
        let start = self.start_us.load(Ordering::Relaxed);
        let bps = self.bps.load(Ordering::Relaxed);
        let due = u128::from(bps) * u128::from(now.saturating_sub(start)) / 8_000_000;
        let since = sent.bytes_since(self.base.load(Ordering::Relaxed));
        (due as u64).saturating_sub(since)
    }
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProbeOutcome {
    /// The rate the path delivered (bit/s), when the cluster could tell.
    pub(crate) bps: Option<u64>,
    /// The path delivered what it was sent: there may be more room.
    pub(crate) room: bool,
}

/// Where a packet of the feedback lies for a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Sent in the probe.
    Inside,
    /// The first one seen after the probe ended: it and those after it waited behind
    /// the probe's queue.
    FirstAfter,
    /// Before the probe, or after that first one.
    Outside,
}

/// The packets of one probe and what the feedback says of them.
#[derive(Debug)]
pub(crate) struct ProbeCluster {
    /// Its first transport-wide number, and the last once it ended.
    first: u64,
    last: Option<u64>,
    ended_us: u64,
    /// A packet after its end was seen.
    passed: bool,
    packets: u32,
    received: u32,
    sent_bytes: u64,
    /// Earliest and latest send time (µs).
    sent_span: Option<(i64, i64)>,
    received_bytes: u64,
    /// Earliest and latest arrival (the receiver's clock, µs).
    arrival_span: Option<(i64, i64)>,
}

impl ProbeCluster {
    /// A probe whose packets start at `first`.
    pub(crate) fn new(first: u64) -> ProbeCluster {
        ProbeCluster {
            first,
            last: None,
            ended_us: 0,
            passed: false,
            packets: 0,
            received: 0,
            sent_bytes: 0,
            sent_span: None,
            received_bytes: 0,
            arrival_span: None,
        }
    }

    /// It ended at `now`; `last` is the last number sent in it.
    pub(crate) fn end(&mut self, last: u64, now: u64) {
        self.last = Some(last);
        self.ended_us = now;
    }

    /// Whether `seq` was sent in the probe (so far).
    fn contains(&self, seq: u64) -> bool {
        seq >= self.first && self.last.is_none_or(|l| seq <= l)
    }

    /// One packet of the receiver's feedback: `seq`, `size` bytes sent at `sent_at`,
    /// and when it arrived (`None`: lost); counted if it is the probe's. Says where it
    /// lies (see [`Seen`]).
    pub(crate) fn add(&mut self, seq: u64, size: u16, sent_at: u64, arrival: Option<i64>) -> Seen {
        if !self.contains(seq) {
            if self.passed || self.last.is_none_or(|l| seq <= l) {
                return Seen::Outside;
            }
            self.passed = true;
            return Seen::FirstAfter;
        }
        let size = u64::from(size);
        self.packets += 1;
        self.sent_bytes += size;
        self.sent_span = Some(widen(self.sent_span, sent_at as i64));
        if let Some(at) = arrival {
            self.received += 1;
            self.received_bytes += size;
            self.arrival_span = Some(widen(self.arrival_span, at));
        }
        Seen::Inside
    }

    /// The outcome once the feedback reached past its last packet (`reported`: the
    /// highest number the feedback told of) or it timed out at `now`; `None` before.
    pub(crate) fn outcome(&self, reported: Option<u64>, now: u64) -> Option<ProbeOutcome> {
        let last = self.last?;
        let complete = last < self.first || reported.is_some_and(|r| r >= last);
        if !complete && now < self.ended_us.saturating_add(PROBE_TIMEOUT_US) {
            return None;
        }
        let failed = ProbeOutcome {
            bps: None,
            room: false,
        };
        if self.packets < MIN_PACKETS
            || f64::from(self.received) < MIN_RECEIVED * f64::from(self.packets)
        {
            return Some(failed);
        }
        let (Some(sent), Some(received)) = (
            rate(self.sent_bytes, self.packets, self.sent_span),
            rate(self.received_bytes, self.received, self.arrival_span),
        ) else {
            return Some(failed);
        };
        if sent > MAX_RATIO * received {
            return Some(failed);
        }
        let slowed = received < SLOWED * sent;
        let bps = if slowed {
            AT_LIMIT * received
        } else {
            sent.min(received)
        };
        Some(ProbeOutcome {
            bps: Some(bps as u64),
            room: !slowed,
        })
    }
}

fn widen(span: Option<(i64, i64)>, t: i64) -> (i64, i64) {
    match span {
        Some((a, b)) => (a.min(t), b.max(t)),
        None => (t, t),
    }
}

/// Bits per second of `bytes` in `packets` over `span` (µs): one packet's worth is left
/// out, as the first of a train is sent (or arrives) before its span starts counting.
fn rate(bytes: u64, packets: u32, span: Option<(i64, i64)>) -> Option<f64> {
    let (a, b) = span?;
    let micros = b - a;
    if micros <= 0 || packets < 2 {
        return None;
    }
    let counted = bytes as f64 * f64::from(packets - 1) / f64::from(packets);
    Some(counted * 8e6 / micros as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster of `n` packets of 1000 bytes sent every `gap_us` and received every
    /// `arrival_gap_us`, each `lose`-th lost.
    fn cluster(n: u64, gap_us: u64, arrival_gap_us: i64, lose: Option<u64>) -> ProbeCluster {
        let mut c = ProbeCluster::new(100);
        c.add(99, 1000, 0, Some(0)); // before it: not counted
        for i in 0..n {
            let lost = lose.is_some_and(|k| i % k == k - 1);
            let arrival = (!lost).then_some(50_000 + i as i64 * arrival_gap_us);
            c.add(100 + i, 1000, 1_000 + i * gap_us, arrival);
        }
        c.end(100 + n - 1, 200_000);
        c.add(100 + n, 1000, 1_000 + n * gap_us, Some(0)); // after it: not counted
        c
    }

    #[test]
    fn a_path_that_keeps_pace_shows_room_at_the_rate_sent() {
        // 1000 bytes every 4 ms: 2 Mbit/s, received at the same pace.
        let c = cluster(40, 4_000, 4_000, None);
        assert_eq!(
            c.outcome(Some(120), 200_000),
            None,
            "feedback not there yet"
        );
        let o = c.outcome(Some(139), 200_000).unwrap();
        assert!(o.room);
        let bps = o.bps.unwrap();
        assert!((1_950_000..=2_050_000).contains(&bps), "{bps}");
    }

    #[test]
    fn a_path_that_slows_the_train_is_at_its_limit() {
        // Sent at 2 Mbit/s, arriving at 1.33 Mbit/s (6 ms apart): a queue.
        let o = cluster(40, 4_000, 6_000, None)
            .outcome(Some(139), 0)
            .unwrap();
        assert!(!o.room);
        let bps = o.bps.unwrap();
        assert!((1_230_000..=1_300_000).contains(&bps), "{bps}");
        // Slowed to under half: no measurement.
        let o = cluster(40, 4_000, 9_000, None)
            .outcome(Some(139), 0)
            .unwrap();
        assert_eq!(o.bps, None);
    }

    #[test]
    fn heavy_loss_lost_feedback_and_short_trains_fail() {
        let lossy = cluster(40, 4_000, 4_000, Some(4)).outcome(Some(139), 0);
        assert_eq!(lossy.unwrap().bps, None, "a quarter lost");
        let c = cluster(40, 4_000, 4_000, None);
        assert_eq!(c.outcome(None, 1_199_999), None);
        assert_eq!(c.outcome(None, 1_200_000).unwrap().bps, Some(2_000_000));
        let short = cluster(3, 4_000, 4_000, None).outcome(Some(102), 0);
        assert_eq!(short.unwrap().bps, None);
        let mut empty = ProbeCluster::new(100);
        empty.end(99, 0);
        assert_eq!(
            empty.outcome(None, 0).unwrap().bps,
            None,
            "nothing was sent"
        );
    }

    #[test]
    fn the_pace_owes_what_the_rate_sends_less_what_went_out() {
        let sent = SentPackets::new();
        let pace = ProbePace::default();
        assert_eq!(pace.owed(0, &sent), 0, "no probe");
        sent.stamp(500, 0);
        pace.start(800_000, 1_000, &sent); // 100 bytes a ms
        assert_eq!(pace.owed(11_000, &sent), 1_000);
        sent.stamp(600, 11_000);
        assert_eq!(pace.owed(11_000, &sent), 400);
        sent.stamp(1_200, 11_000);
        assert_eq!(pace.owed(11_000, &sent), 0, "media ran ahead");
        assert_eq!(pace.owed(1_000 + PROBE_DURATION_US, &sent), 0, "over");
    }
}
