//! Each receiver's downlink estimate (sans-IO), from its transport-cc feedback.
//!
//! The SFU numbers every packet it sends a receiver ([`SentPackets`], shared by the
//! streams forwarded to it) and reads the receiver's feedback ([`ArrivalReport`]). The
//! [`Estimator`] runs GoogCC's parts on it: a delay-based detector of a filling queue
//! ([`delay`]), additive/multiplicative rate control ([`rate`]), a loss-based bound,
//! and the rate that actually got through, which neither may run far ahead of. The
//! estimate is the lower of the delay-based and the loss-based rate, within the
//! configured minimum and maximum.

pub(crate) mod arrivals;
pub(crate) mod delay;
pub(crate) mod probe;
pub(crate) mod rate;
pub(crate) mod sent;

pub use arrivals::ArrivalReport;
pub(crate) use probe::{ProbeOutcome, ProbePace};
pub use sent::SentPackets;

use arrivals::REFERENCE_TICK_US;
use delay::{DelayDetector, Usage};
use probe::{ProbeCluster, Seen};
use rate::RateControl;

/// Loss under this share lets the loss-based bound grow (libwebrtc: 2 %).
const LOW_LOSS: f64 = 0.02;
/// Loss over this share lowers it to (1 - loss / 2) of the estimate (libwebrtc: 10 %),
/// and to at most what got through.
const HIGH_LOSS: f64 = 0.10;
/// Packets a loss share is taken over: libwebrtc takes 20, which at a few hundred
/// packets a second makes 5 % random loss read as over 10 % every few seconds, and
/// each such sample lowers the bound for good (it only grows again under 2 %).
const LOSS_SAMPLE: u32 = 100;
/// Or fewer (but at least 20) when they took this long: a low rate is judged too.
const LOSS_SAMPLE_US: u64 = 1_000_000;
const LOSS_SAMPLE_MIN: u32 = 20;
/// The loss-based bound is lowered at most once per this plus a round trip.
const LOSS_DECREASE_US: u64 = 300_000;
/// Growth of the loss-based bound per second while loss is low.
const LOSS_GROWTH_PER_S: f64 = 1.08;
/// A REMB this much under the last one is congestion (libwebrtc's receiver sends one
/// at once when its estimate fell by 3 %, else once a second).
const REMB_DROP: f64 = 0.03;
/// The rate that got through is measured over windows of this (by arrival time).
const ACKED_WINDOW_US: i64 = 250_000;

/// Start, floor and ceiling of an estimate, bit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BweConfig {
    pub(crate) start_bps: u64,
    pub(crate) min_bps: u64,
    pub(crate) max_bps: u64,
}

impl Default for BweConfig {
    /// Jitsi's start (enough for one camera's middle layer and audio at once), its floor
    /// and its ceiling.
    fn default() -> Self {
        BweConfig {
            start_bps: 2_500_000,
            min_bps: 30_000,
            max_bps: 20_000_000,
        }
    }
}

/// The rate that got through, over windows of arrival time.
#[derive(Debug, Default)]
struct AckedRate {
    window_start: Option<i64>,
    bytes: u64,
    bps: Option<f64>,
}

impl AckedRate {
    fn add(&mut self, arrival: i64, size: u16) {
        let start = *self.window_start.get_or_insert(arrival);
        if arrival >= start + ACKED_WINDOW_US {
            let span = (arrival - start) as f64 / 1e6;
            let sample = self.bytes as f64 * 8.0 / span;
            self.bps = Some(match self.bps {
                // A window may end long after it began (a pause): count it as its span.
                Some(b) => 0.5 * b + 0.5 * sample,
                None => sample,
            });
            self.window_start = Some(arrival);
            self.bytes = 0;
        }
        self.bytes += u64::from(size);
    }
}

/// The loss-based bound.
#[derive(Debug)]
struct LossBound {
    bps: f64,
    received: u32,
    lost: u32,
    updated_us: Option<u64>,
    decreased_us: Option<u64>,
}

impl LossBound {
    fn update(&mut self, estimate: f64, acked: Option<f64>, now: u64, round_trip_us: u64) {
        let total = self.received + self.lost;
        let since = self.updated_us.map_or(0, |t| now.saturating_sub(t));
        if total < LOSS_SAMPLE && (total < LOSS_SAMPLE_MIN || since < LOSS_SAMPLE_US) {
            if self.updated_us.is_none() {
                self.updated_us = Some(now);
            }
            return;
        }
        let loss = f64::from(self.lost) / f64::from(total);
        let seconds = self
            .updated_us
            .map_or(0.0, |t| now.saturating_sub(t).min(1_000_000) as f64 / 1e6);
        if loss < LOW_LOSS {
            self.bps = self.bps.max(estimate) * LOSS_GROWTH_PER_S.powf(seconds) + 1_000.0 * seconds;
        } else if loss > HIGH_LOSS
            && self
                .decreased_us
                .is_none_or(|t| now.saturating_sub(t) >= LOSS_DECREASE_US + round_trip_us)
        {
            // What got through is what the path carries now: heavy loss at a rate
            // above it is a full queue (libwebrtc's (1 - loss / 2) alone takes
            // seconds of halving to get there).
            self.bps = (estimate * (1.0 - 0.5 * loss)).min(acked.unwrap_or(f64::MAX));
            self.decreased_us = Some(now);
        }
        self.received = 0;
        self.lost = 0;
        self.updated_us = Some(now);
    }
}

/// One receiver's downlink estimate.
#[derive(Debug)]
pub struct Estimator {
    config: BweConfig,
    delay: DelayDetector,
    rate: RateControl,
    loss: LossBound,
    acked: AckedRate,
    /// The last feedback's reference time (24 bits) and its unwrapped value.
    reference: Option<(u32, i64)>,
    /// The highest sequence number taken from feedback (each counts once).
    reported: Option<u64>,
    round_trip_us: u64,
    bps: u64,
    /// How often delay or loss lowered the estimate.
    decreases: u32,
    /// The receiver's own estimate of its link (REMB), when it sends one.
    remb: Option<u64>,
    /// The probe under way or waiting for its feedback.
    probe: Option<ProbeCluster>,
    outcome: Option<ProbeOutcome>,
}

impl Estimator {
    /// An estimate starting at `config.start_bps`, kept within its bounds.
    pub fn new(config: BweConfig) -> Estimator {
        let rate = RateControl::new(config.start_bps, config.min_bps, config.max_bps);
        Estimator {
            config,
            delay: DelayDetector::new(),
            loss: LossBound {
                bps: config.max_bps as f64,
                received: 0,
                lost: 0,
                updated_us: None,
                decreased_us: None,
            },
            bps: rate.bps(),
            rate,
            acked: AckedRate::default(),
            reference: None,
            reported: None,
            round_trip_us: 100_000,
            decreases: 0,
            remb: None,
            probe: None,
            outcome: None,
        }
    }

    /// The estimate, bit/s: ours from transport-cc feedback, bounded by the receiver's
    /// own (REMB) where it sends one; a receiver that sends only REMB has only that.
    pub(crate) fn bps(&self) -> u64 {
        match self.remb {
            Some(r) if self.reported.is_none() => r,
            Some(r) => self.bps.min(r),
            None => self.bps,
        }
    }

    /// Whether the receiver sends transport-cc feedback (then its path can be probed).
    pub(crate) fn has_transport_feedback(&self) -> bool {
        self.reported.is_some()
    }

    /// The receiver's own estimate of its link (REMB, draft-alvestrand-rmcat-remb, from
    /// a receiver that estimates its link itself): it bounds ours, and is a real bound
    /// of the link from the start (see [`Estimator::congestion_seen`]). A drop of over
    /// [`REMB_DROP`] counts as congestion.
    pub(crate) fn on_remb(&mut self, bps: u64) {
        let (min, max) = (
            self.config.min_bps,
            self.config.max_bps.max(self.config.min_bps),
        );
        let bps = bps.clamp(min, max);
        if self
            .remb
            .is_some_and(|r| (bps as f64) < (1.0 - REMB_DROP) * r as f64)
        {
            self.decreases = self.decreases.wrapping_add(1);
        }
        self.remb = Some(bps);
    }

    /// Whether the path ever lost heavily (over [`HIGH_LOSS`] of a sample): a link at
    /// its limit. Until then the estimate is only a lower bound of the link (the
    /// traffic was too little to find its limit). A growing delay alone does not count
    /// (yet): on a busy machine it read as congestion where nothing queued — most of it
    /// was the node's own wait before a worker reached a datagram, no longer counted
    /// (see `SessionCache::handle_media_received`), but a receiver busy decoding takes
    /// its arrival times late too.
    pub(crate) fn congestion_seen(&self) -> bool {
        self.loss.decreased_us.is_some() || self.remb.is_some()
    }

    /// How many times delay or loss lowered the estimate so far: a change means the
    /// path showed congestion since it was last looked at.
    pub(crate) fn decreases(&self) -> u32 {
        self.decreases
    }

    /// Traffic at `bps` got through without congestion (a step up that held): the
    /// estimate is at least that.
    pub(crate) fn raise_to(&mut self, bps: u64) {
        let bps = bps.min(self.config.max_bps);
        self.rate.raise_to(bps);
        self.loss.bps = self.loss.bps.max(bps as f64);
        self.bps = self.bps.max(bps);
    }

    /// A probe's packets start at transport-wide number `first` (see [`probe`]); one
    /// still open is dropped.
    pub(crate) fn start_probe(&mut self, first: u64) {
        self.probe = Some(ProbeCluster::new(first));
    }

    /// The probe ended at `now` with number `last`.
    pub(crate) fn end_probe(&mut self, last: u64, now: u64) {
        if let Some(p) = self.probe.as_mut() {
            p.end(last, now);
        }
    }

    /// What the last probe found, once its feedback is in; one whose feedback did not
    /// come in time (by `now`) found nothing. A probe that found more room than the
    /// estimate raised it already, unless the same feedback showed congestion.
    pub(crate) fn take_probe_outcome(&mut self, now: u64) -> Option<ProbeOutcome> {
        // Complete clusters are taken on the feedback that completes them: one that
        // has an outcome here timed out.
        if self
            .probe
            .as_ref()
            .and_then(|p| p.outcome(self.reported, now))
            .is_some()
        {
            self.probe = None;
            self.outcome = Some(ProbeOutcome {
                bps: None,
                room: false,
            });
        }
        self.outcome.take()
    }

    /// The rate that got through, bit/s, once measured.
    pub fn acked_bps(&self) -> Option<u64> {
        self.acked.bps.map(|b| b as u64)
    }

    /// The receiver's round trip (from its reports): spaces decreases.
    pub fn set_round_trip(&mut self, round_trip_us: u64) {
        self.round_trip_us = round_trip_us.min(2_000_000);
        self.rate.set_round_trip(round_trip_us);
    }

    /// Takes one transport-cc feedback of the receiver about what `sent` holds; `now`
    /// in µs on the shared clock. Returns the new estimate.
    pub fn on_feedback(&mut self, report: &ArrivalReport<'_>, sent: &SentPackets, now: u64) -> u64 {
        let offset = self.reference_offset(report.reference);
        let mut any = false;
        for (seq, arrival) in report.packets() {
            let seq = sent.unwrap(seq);
            if self.reported.is_some_and(|r| seq <= r) {
                continue;
            }
            let Some(packet) = sent.get(seq, now) else {
                continue;
            };
            self.reported = Some(seq);
            any = true;
            // A probe's burst is judged by the rate it arrived at, not by the queue it
            // made: the delay detector would read the queue of every probe of a full
            // link as congestion, and lower the estimate for the probe's sake. So it
            // skips the probe's packets, and starts over after them: what follows
            // waits behind the probe's queue, which then drains.
            let arrival = arrival.map(|t| t + offset);
            let seen = self.probe.as_mut().map_or(Seen::Outside, |p| {
                p.add(seq, packet.size, packet.at, arrival)
            });
            if seen == Seen::FirstAfter {
                self.delay.restart();
            }
            match arrival {
                Some(arrival) => {
                    self.loss.received += 1;
                    if seen != Seen::Inside {
                        self.delay.on_packet(packet.at as i64, arrival);
                    }
                    self.acked.add(arrival, packet.size);
                }
                None => self.loss.lost += 1,
            }
        }
        if !any {
            return self.bps();
        }
        let usage = self.delay.usage();
        let acked = self.acked.bps;
        let delay_bps = self.rate.update(usage, acked, now);
        self.loss
            .update(self.bps as f64, self.acked.bps, now, self.round_trip_us);
        let (min, max) = (self.config.min_bps as f64, self.config.max_bps as f64);
        self.loss.bps = self.loss.bps.clamp(min, max.max(min));
        let bps = delay_bps.min(self.loss.bps as u64);
        let congested = usage == Usage::Overuse || self.loss.decreased_us == Some(now);
        if bps < self.bps && congested {
            self.decreases = self.decreases.wrapping_add(1);
        }
        self.bps = bps;
        self.finish_probe(congested, now);
        self.bps()
    }

    /// Takes a probe whose feedback is complete. One the path slowed measured what it
    /// carries: that is the estimate now, up or down (the delay detector skipped the
    /// probe's queue, which would otherwise have lowered it). One that kept its pace
    /// raises the estimate to its rate, unless this feedback showed congestion, which
    /// outranks it (as in GoogCC).
    fn finish_probe(&mut self, congested: bool, now: u64) {
        let Some(mut o) = self
            .probe
            .as_ref()
            .and_then(|p| p.outcome(self.reported, now))
        else {
            return;
        };
        self.probe = None;
        match o.bps {
            Some(bps) if !o.room => self.set_to(bps),
            Some(bps) if !congested => self.raise_to(bps),
            _ => {}
        }
        if congested {
            o.room = false;
        }
        self.outcome = Some(o);
    }

    /// The path carries `bps` (a probe measured it): that is the estimate, up or down.
    fn set_to(&mut self, bps: u64) {
        if bps < self.bps {
            self.rate.lower_to(bps);
            self.bps = self.rate.bps().min(self.loss.bps as u64);
        } else {
            self.raise_to(bps);
        }
    }

    /// What to add to a report's times to put them on one unwrapped receiver clock
    /// (the reference time is 24 bits of 64 ms: it wraps every 12 days).
    fn reference_offset(&mut self, reference: u32) -> i64 {
        let unwrapped = match self.reference {
            None => i64::from(reference),
            Some((last, at)) => {
                let diff = (reference.wrapping_sub(last) << 8) as i32 >> 8;
                at + i64::from(diff)
            }
        };
        self.reference = Some((reference, unwrapped));
        (unwrapped - i64::from(reference)) * REFERENCE_TICK_US
    }
}

#[cfg(test)]
mod tests;
