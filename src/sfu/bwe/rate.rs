//! The rate a receiver's path takes, moved by what the delay detector says: additive
//! increase near the capacity last seen, multiplicative far from it, multiplicative
//! decrease on overuse (GoogCC's `AimdRateControl`, constants from libwebrtc).

use super::delay::Usage;

/// On overuse the estimate drops to this share of what actually got through.
const BACKOFF: f64 = 0.85;
/// Growth per second far from the capacity last seen.
const MULTIPLICATIVE_PER_S: f64 = 1.08;
/// Least additive growth, bit/s per second.
const MIN_ADDITIVE_BPS: f64 = 4_000.0;
/// The packet size the additive step assumes (one packet per response time).
const PACKET_BITS: f64 = 1_200.0 * 8.0;
/// The estimate does not run ahead of what got through by more than this.
const ACKED_HEADROOM: f64 = 1.5;
const ACKED_HEADROOM_BPS: f64 = 10_000.0;
/// Past the capacity last seen by this factor, it is forgotten: the link changed.
const CAPACITY_RESET: f64 = 1.15;
/// Smoothing of the capacity seen at each overuse.
const CAPACITY_SMOOTHING: f64 = 0.95;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hold,
    Increase,
    Decrease,
}

#[derive(Debug)]
pub(crate) struct RateControl {
    bps: f64,
    min: f64,
    max: f64,
    state: State,
    /// The rate that got through when the queue last grew: the link's capacity.
    capacity: Option<f64>,
    last_change_us: Option<u64>,
    round_trip_us: u64,
}

impl RateControl {
    pub(crate) fn new(start: u64, min: u64, max: u64) -> RateControl {
        let (min, max) = (min as f64, (max as f64).max(min as f64));
        RateControl {
            bps: (start as f64).clamp(min, max),
            min,
            max,
            state: State::Hold,
            capacity: None,
            last_change_us: None,
            round_trip_us: 100_000,
        }
    }

    pub(crate) fn bps(&self) -> u64 {
        self.bps as u64
    }

    pub(crate) fn set_round_trip(&mut self, round_trip_us: u64) {
        self.round_trip_us = round_trip_us.clamp(1_000, 2_000_000);
    }

    /// Moves the estimate on after one feedback: `usage` from the delay detector,
    /// `acked` the rate that got through (bit/s), if measured yet.
    pub(crate) fn update(&mut self, usage: Usage, acked: Option<f64>, now: u64) -> u64 {
        self.state = match (usage, self.state) {
            (Usage::Overuse, _) => State::Decrease,
            (Usage::Underuse, _) => State::Hold,
            (Usage::Normal, State::Hold) => State::Increase,
            (Usage::Normal, s) => s,
        };
        let elapsed = self
            .last_change_us
            .map_or(0, |t| now.saturating_sub(t))
            .min(1_000_000);
        match self.state {
            State::Hold => {}
            State::Increase => self.increase(acked, elapsed as f64 / 1e6),
            State::Decrease => {
                // Once per round trip (within 10..200 ms): the queue needs that long
                // to show the last decrease.
                let spacing = self.round_trip_us.clamp(10_000, 200_000);
                if self.last_change_us.is_none() || elapsed >= spacing {
                    self.decrease(acked);
                    self.state = State::Hold;
                } else {
                    return self.bps();
                }
            }
        }
        self.last_change_us = Some(now);
        self.bps()
    }

    fn increase(&mut self, acked: Option<f64>, seconds: f64) {
        if let Some(a) = acked {
            if self.capacity.is_some_and(|c| a > c * CAPACITY_RESET) {
                self.capacity = None;
            }
            if self.bps > ACKED_HEADROOM * a + ACKED_HEADROOM_BPS {
                return; // what gets through does not show room for more
            }
        }
        let step = match self.capacity {
            Some(_) => {
                let response_s = (self.round_trip_us as f64 + 100_000.0) / 1e6;
                (PACKET_BITS / response_s).max(MIN_ADDITIVE_BPS) * seconds
            }
            None => (self.bps * (MULTIPLICATIVE_PER_S.powf(seconds) - 1.0)).max(1_000.0 * seconds),
        };
        let mut next = self.bps + step;
        if let Some(a) = acked {
            next = next
                .min(ACKED_HEADROOM * a + ACKED_HEADROOM_BPS)
                .max(self.bps);
        }
        self.bps = next.clamp(self.min, self.max);
    }

    fn decrease(&mut self, acked: Option<f64>) {
        let through = acked.unwrap_or(self.bps);
        let next = (BACKOFF * through).min(self.bps);
        // Far below the capacity last seen, the link changed: start the average over.
        self.capacity = Some(match self.capacity {
            Some(c) if through * CAPACITY_RESET >= c => {
                CAPACITY_SMOOTHING * c + (1.0 - CAPACITY_SMOOTHING) * through
            }
            _ => through,
        });
        self.bps = next.clamp(self.min, self.max);
    }

    /// The estimate is at most `bps` (the path carried no more), which is also the
    /// capacity it stays near.
    pub(crate) fn lower_to(&mut self, bps: u64) {
        let bps = (bps as f64).clamp(self.min, self.max);
        self.bps = self.bps.min(bps);
        self.capacity = Some(bps);
    }

    /// The estimate is at least `bps` (traffic at that rate got through).
    pub(crate) fn raise_to(&mut self, bps: u64) {
        let bps = bps as f64;
        if self.capacity.is_some_and(|c| bps > c * CAPACITY_RESET) {
            self.capacity = None; // the link changed: grow multiplicatively again
        }
        self.bps = self.bps.max(bps).clamp(self.min, self.max);
    }
}
