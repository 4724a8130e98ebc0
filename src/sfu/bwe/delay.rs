//! Delay-based detection of a filling queue, after GoogCC (libwebrtc's
//! `InterArrivalDelta`, `TrendlineEstimator`): packets are grouped into the bursts
//! they were sent in; for each group, how much longer it took to arrive than to send
//! (the delay variation) is accumulated and smoothed, and the slope of that delay over
//! the last groups says whether a queue grows (overuse), drains (underuse) or neither.
//! The threshold the slope is held against adapts, so that a link shared with TCP is
//! not given up to it.
//!
//! Constants are libwebrtc's (`trendline_estimator.cc`, `inter_arrival_delta.cc`),
//! which str0m and Jitsi took unchanged: they are what Chrome's own estimator runs, so
//! what works for Chrome's uplink works for our downlink.

/// Packets sent within this of a group's first belong to it (a pacer's burst).
const GROUP_US: i64 = 5_000;
/// A packet arriving within this of the group's last, and not later relative to
/// sending, joins the group (a burst the network delivered at once).
const BURST_US: i64 = 5_000;
/// Groups the slope is fitted over.
const WINDOW: usize = 20;
const SMOOTHING: f64 = 0.9;
const GAIN: f64 = 4.0;
/// Deltas counted at most when scaling the slope (fewer: the slope counts less).
const MAX_DELTAS: u32 = 60;
const THRESHOLD_START_MS: f64 = 12.5;
const THRESHOLD_MIN_MS: f64 = 6.0;
const THRESHOLD_MAX_MS: f64 = 600.0;
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
/// An overuse must last this long (ms of send time) before it is acted on.
const OVERUSE_MS: f64 = 10.0;

/// What the delay says about the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    Normal,
    /// A queue is growing: send less.
    Overuse,
    /// A queue is draining: hold, let it empty.
    Underuse,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    first_send: i64,
    last_send: i64,
    last_arrival: i64,
}

/// The delay-based detector of one receiver's path.
#[derive(Debug)]
pub(crate) struct DelayDetector {
    current: Option<Group>,
    previous: Option<Group>,
    // Trendline.
    first_arrival_ms: Option<f64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    points: [(f64, f64); WINDOW],
    len: usize,
    next: usize,
    deltas: u32,
    trend: f64,
    // Overuse detector.
    threshold_ms: f64,
    threshold_at_ms: Option<f64>,
    overusing_ms: Option<f64>,
    overuse_count: u32,
    usage: Usage,
}

impl Default for DelayDetector {
    fn default() -> Self {
        DelayDetector::new()
    }
}

impl DelayDetector {
    pub(crate) fn new() -> DelayDetector {
        DelayDetector {
            current: None,
            previous: None,
            first_arrival_ms: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            points: [(0.0, 0.0); WINDOW],
            len: 0,
            next: 0,
            deltas: 0,
            trend: 0.0,
            threshold_ms: THRESHOLD_START_MS,
            threshold_at_ms: None,
            overusing_ms: None,
            overuse_count: 0,
            usage: Usage::Normal,
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        self.usage
    }

    /// Forgets the packets so far (keeping the threshold it learned): the delay they
    /// showed is no longer news about the path.
    pub(crate) fn restart(&mut self) {
        *self = DelayDetector {
            threshold_ms: self.threshold_ms,
            ..DelayDetector::new()
        };
    }

    /// One packet that arrived: sent at `send` and received at `arrival` (µs, each on
    /// its own clock), in the order they were sent.
    pub(crate) fn on_packet(&mut self, send: i64, arrival: i64) {
        let Some(mut g) = self.current else {
            self.current = Some(Group {
                first_send: send,
                last_send: send,
                last_arrival: arrival,
            });
            return;
        };
        if send < g.first_send {
            return; // reordered behind its group: its delay says nothing new
        }
        let burst = arrival - g.last_arrival < BURST_US
            && (arrival - g.last_arrival) - (send - g.last_send) < 0;
        if send - g.first_send <= GROUP_US || burst {
            g.last_send = g.last_send.max(send);
            g.last_arrival = g.last_arrival.max(arrival);
            self.current = Some(g);
            return;
        }
        if let Some(p) = self.previous {
            let send_delta = g.last_send - p.last_send;
            let arrival_delta = g.last_arrival - p.last_arrival;
            // A receiver clock that jumped: start over rather than read it as delay.
            if arrival_delta < 0 || arrival_delta - send_delta > 3_000_000 {
                self.restart();
            } else {
                self.on_delta(send_delta, arrival_delta, g.last_arrival);
            }
        }
        self.previous = Some(g);
        self.current = Some(Group {
            first_send: send,
            last_send: send,
            last_arrival: arrival,
        });
    }

    /// One pair of consecutive groups: feeds the trendline and the detector.
    fn on_delta(&mut self, send_delta: i64, arrival_delta: i64, arrival: i64) {
        let send_ms = send_delta as f64 / 1000.0;
        let arrival_ms = arrival as f64 / 1000.0;
        let variation = (arrival_delta - send_delta) as f64 / 1000.0;
        self.deltas = self.deltas.saturating_add(1).min(1000);
        self.accumulated_ms += variation;
        self.smoothed_ms = SMOOTHING * self.smoothed_ms + (1.0 - SMOOTHING) * self.accumulated_ms;
        let first = *self.first_arrival_ms.get_or_insert(arrival_ms);
        self.points[self.next] = (arrival_ms - first, self.smoothed_ms);
        self.next = (self.next + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
        let previous_trend = self.trend;
        if self.len == WINDOW
            && let Some(slope) = slope(&self.points)
        {
            self.trend = slope;
        }
        self.detect(send_ms, previous_trend, arrival_ms);
    }

    fn detect(&mut self, send_ms: f64, previous_trend: f64, now_ms: f64) {
        let modified = f64::from(self.deltas.min(MAX_DELTAS)) * self.trend * GAIN;
        if modified > self.threshold_ms {
            let over = match self.overusing_ms {
                None => send_ms / 2.0,
                Some(t) => t + send_ms,
            };
            self.overusing_ms = Some(over);
            self.overuse_count += 1;
            if over > OVERUSE_MS && self.overuse_count > 1 && self.trend >= previous_trend {
                self.overusing_ms = Some(0.0);
                self.overuse_count = 0;
                self.usage = Usage::Overuse;
            }
        } else {
            self.overusing_ms = None;
            self.overuse_count = 0;
            self.usage = if modified < -self.threshold_ms {
                Usage::Underuse
            } else {
                Usage::Normal
            };
        }
        self.adapt_threshold(modified, now_ms);
    }

    /// The threshold follows the slope slowly upward and faster downward; a spike far
    /// above it is not followed at all.
    fn adapt_threshold(&mut self, modified: f64, now_ms: f64) {
        let last = *self.threshold_at_ms.get_or_insert(now_ms);
        if modified.abs() > self.threshold_ms + 15.0 {
            self.threshold_at_ms = Some(now_ms);
            return;
        }
        let k = if modified.abs() < self.threshold_ms {
            K_DOWN
        } else {
            K_UP
        };
        let elapsed = (now_ms - last).clamp(0.0, 100.0);
        self.threshold_ms += k * (modified.abs() - self.threshold_ms) * elapsed;
        self.threshold_ms = self.threshold_ms.clamp(THRESHOLD_MIN_MS, THRESHOLD_MAX_MS);
        self.threshold_at_ms = Some(now_ms);
    }
}

/// The least-squares slope of `points` (x, y); `None` when every x is the same.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den != 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets every 10 ms; each takes `extra(i)` µs longer than the last to arrive.
    fn run(packets: i64, extra: impl Fn(i64) -> i64) -> Vec<Usage> {
        let mut d = DelayDetector::new();
        let mut delay = 20_000;
        let mut seen = Vec::new();
        for i in 0..packets {
            delay += extra(i);
            let send = 1_000_000 + i * 10_000;
            d.on_packet(send, send + delay);
            seen.push(d.usage());
        }
        seen
    }

    #[test]
    fn steady_delay_is_normal() {
        let seen = run(500, |i| if i % 2 == 0 { 300 } else { -300 });
        assert!(seen.iter().all(|u| *u == Usage::Normal), "{seen:?}");
    }

    #[test]
    fn growing_delay_is_overuse_and_draining_is_underuse() {
        // 2 ms more per 10 ms packet: a queue filling at 20 % over the link's rate.
        let seen = run(100, |_| 2_000);
        assert_eq!(seen.last(), Some(&Usage::Overuse));
        let seen = run(100, |i| if i < 50 { 0 } else { -2_000 });
        assert_eq!(seen.last(), Some(&Usage::Underuse));
    }

    #[test]
    fn a_clock_jump_starts_over() {
        let mut d = DelayDetector::new();
        for i in 0..200i64 {
            let send = i * 10_000;
            let arrival = if i < 100 { send } else { send - 50_000_000 };
            d.on_packet(send, arrival);
        }
        assert_eq!(d.usage(), Usage::Normal);
    }
}
