//! The estimator against an emulated bottleneck: a FIFO queue that drains at the link's
//! rate, drops what would wait longer than its depth, adds a fixed delay and random
//! loss. The receiver's feedback is written by our own [`TwccRecorder`] (which
//! webrtc-rs parses in `sfu::twcc`'s tests) and read back by [`ArrivalReport`], so the
//! whole loop runs as on the wire.

use std::collections::VecDeque;

use super::*;
use crate::sfu::twcc::TwccRecorder;

const PACKET: usize = 1_200;
/// The receiver's clock is not ours.
const RECEIVER_CLOCK_OFFSET: u64 = 7_777_777;

struct Link {
    bps: f64,
    delay_us: u64,
    loss: f64,
    queue_us: u64,
    busy_until: u64,
    rng: u64,
    /// A busy receiver: every 100 ms it stops taking packets for up to this long, and
    /// stamps what arrived meanwhile when it comes back.
    stall_us: u64,
}

impl Link {
    fn new(bps: f64, delay_us: u64, loss: f64) -> Link {
        Link {
            bps,
            delay_us,
            loss,
            queue_us: 200_000,
            busy_until: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            stall_us: 0,
        }
    }

    /// When a busy receiver stamps a packet that arrived at `at`.
    fn stamped(&self, at: u64) -> u64 {
        const EVERY: u64 = 100_000;
        if self.stall_us == 0 {
            return at;
        }
        let k = at / EVERY;
        let length = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40 & 0xFFFF;
        let end = k * EVERY + self.stall_us * length / 0xFFFF;
        at.max(end)
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: a fixed seed, the same run every time.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When a packet of `size` sent at `now` arrives, or `None` if it is lost.
    fn carry(&mut self, now: u64, size: usize) -> Option<u64> {
        let start = self.busy_until.max(now);
        if start - now > self.queue_us {
            return None; // tail drop
        }
        let done = start + (size as f64 * 8.0 / self.bps * 1e6) as u64;
        self.busy_until = done;
        if self.random() < self.loss {
            return None;
        }
        Some(self.stamped(done + self.delay_us))
    }
}

struct Run {
    est: Estimator,
    sent: SentPackets,
    recorder: TwccRecorder,
    link: Link,
    /// The media's own rate: a sender never sends more than this.
    source_bps: f64,
    now: u64,
    next_send: u64,
    in_flight: VecDeque<(u64, u16)>,
    feedback: VecDeque<(u64, Vec<u8>)>,
    /// A probe's padding, topped up every step as the data plane does per packet.
    pace: ProbePace,
}

impl Run {
    fn new(link: Link, source_bps: f64, start_bps: u64) -> Run {
        Run {
            est: Estimator::new(BweConfig {
                start_bps,
                ..BweConfig::default()
            }),
            sent: SentPackets::new(),
            recorder: TwccRecorder::new(),
            link,
            source_bps,
            now: 1_000_000,
            next_send: 1_000_000,
            in_flight: VecDeque::new(),
            feedback: VecDeque::new(),
            pace: ProbePace::default(),
        }
    }

    /// Probes at `bps` as the SFU does (padding of the largest size next to the media)
    /// and runs until the estimator tells what the probe found.
    fn probe(&mut self, bps: u64) -> ProbeOutcome {
        self.est.start_probe(self.sent.next_seq());
        self.pace.start(bps, self.now, &self.sent);
        self.run_ms(probe::PROBE_DURATION_US / 1_000);
        self.est.end_probe(self.sent.next_seq() - 1, self.now);
        for _ in 0..2_000 {
            if let Some(found) = self.est.take_probe_outcome(self.now) {
                return found;
            }
            self.run_ms(1);
        }
        panic!("no outcome");
    }

    /// Runs the loop for `seconds`, 1 ms a step; the estimate once a second.
    fn run(&mut self, seconds: u64) -> Vec<u64> {
        (0..seconds)
            .map(|_| {
                self.run_ms(1000);
                self.est.bps()
            })
            .collect()
    }

    fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now += 1_000;
            let rate = (self.est.bps() as f64).min(self.source_bps);
            while self.next_send <= self.now {
                let seq = self.sent.stamp(PACKET, self.now);
                if let Some(at) = self.link.carry(self.now, PACKET) {
                    self.in_flight.push_back((at, seq));
                }
                self.next_send += (PACKET as f64 * 8.0 / rate * 1e6) as u64;
            }
            while self.pace.owed(self.now, &self.sent) > 0 {
                let size = 20 + crate::sfu::rtp::MAX_PADDING;
                let seq = self.sent.stamp(size, self.now);
                if let Some(at) = self.link.carry(self.now, size) {
                    self.in_flight.push_back((at, seq));
                }
            }
            while self
                .in_flight
                .front()
                .is_some_and(|&(at, _)| at <= self.now)
            {
                let Some((at, seq)) = self.in_flight.pop_front() else {
                    break;
                };
                self.recorder.on_packet(seq, at + RECEIVER_CLOCK_OFFSET);
            }
            let receiver_now = self.now + RECEIVER_CLOCK_OFFSET;
            let mut buf = [0u8; 1500];
            while self.recorder.due(receiver_now)
                && let Some(n) = self.recorder.write_feedback(&mut buf, 1, 2, receiver_now)
            {
                // Feedback comes back over an uncongested path.
                self.feedback
                    .push_back((self.now + self.link.delay_us, buf[..n].to_vec()));
            }
            while self.feedback.front().is_some_and(|(at, _)| *at <= self.now) {
                let Some((_, fb)) = self.feedback.pop_front() else {
                    break;
                };
                let pad = if fb[0] & 0x20 != 0 {
                    fb[fb.len() - 1]
                } else {
                    0
                };
                let report = ArrivalReport::parse(&fb[12..fb.len() - usize::from(pad)]).unwrap();
                self.est.on_feedback(&report, &self.sent, self.now);
            }
        }
    }
}

fn kbps(trace: &[u64]) -> Vec<u64> {
    trace.iter().map(|b| b / 1000).collect()
}

/// 5 Mbit/s, then 500 kbit/s, then 5 Mbit/s again; the media could use 4 Mbit/s.
#[test]
fn follows_a_rate_drop_and_its_return() {
    let mut run = Run::new(Link::new(5e6, 10_000, 0.0), 4e6, 1_000_000);
    let up = run.run(25);
    assert!(
        up[24] >= 3_500_000,
        "ramps up to the media's rate: {:?}",
        kbps(&up)
    );
    run.link.bps = 500e3;
    let down = run.run(15);
    assert!(down[2] <= 600_000, "down within 3 s: {:?}", kbps(&down));
    assert!(
        down[3..].iter().all(|&b| (200_000..=650_000).contains(&b)),
        "stays near the link: {:?}",
        kbps(&down)
    );
    run.link.bps = 5e6;
    let back = run.run(40);
    let at = back.iter().position(|&b| b >= 3_500_000);
    assert!(
        at.is_some_and(|s| s < 35),
        "back up within 35 s: {:?}",
        kbps(&back)
    );
}

/// 5 % random loss is between the bounds where the loss-based part acts: the estimate
/// rises as on a clean link (1 → 3 Mbit/s in 15 s). A sample of 100 packets now and
/// then shows over 10 % and lowers it a little; under 2 % (which 5 % random loss
/// hardly ever shows) would be needed to raise it again, so it holds there, as
/// libwebrtc's does.
#[test]
fn five_percent_random_loss_does_not_hold_it_down() {
    let mut run = Run::new(Link::new(5e6, 10_000, 0.05), 4e6, 1_000_000);
    let trace = run.run(30);
    assert!(trace[14] >= 3_000_000, "{:?}", kbps(&trace));
    assert!(
        trace[15..].iter().all(|&b| b >= 2_500_000),
        "{:?}",
        kbps(&trace)
    );
}

/// Heavy loss lowers it.
#[test]
fn heavy_loss_lowers_it() {
    let mut run = Run::new(Link::new(5e6, 10_000, 0.25), 4e6, 2_000_000);
    let trace = run.run(10);
    assert!(trace[9] <= 1_000_000, "{:?}", kbps(&trace));
}

/// A long path is not a congested one.
#[test]
fn fifty_ms_of_delay_is_not_congestion() {
    let mut run = Run::new(Link::new(5e6, 50_000, 0.0), 4e6, 1_000_000);
    let trace = run.run(30);
    assert!(trace[29] >= 3_500_000, "{:?}", kbps(&trace));
    let mut run = Run::new(Link::new(1e6, 50_000, 0.0), 4e6, 2_500_000);
    let trace = run.run(20);
    assert!(
        trace[5..].iter().all(|&b| b <= 1_300_000),
        "finds a 1 Mbit/s link behind 50 ms: {:?}",
        kbps(&trace)
    );
}

/// Feedback that names packets never sent, repeats itself or jumps changes nothing.
#[test]
fn feedback_about_nothing_we_sent_changes_nothing() {
    let mut est = Estimator::new(BweConfig::default());
    let sent = SentPackets::new();
    let mut rec = TwccRecorder::new();
    for i in 0..100u16 {
        rec.on_packet(i.wrapping_mul(977), u64::from(i) * 1000);
    }
    let mut buf = [0u8; 1500];
    while let Some(n) = rec.write_feedback(&mut buf, 1, 2, 200_000) {
        if let Some(r) = ArrivalReport::parse(&buf[12..n]) {
            est.on_feedback(&r, &sent, 300_000);
        }
    }
    assert_eq!(est.bps(), BweConfig::default().start_bps);
}

/// A receiver too busy to take packets for up to 40 ms at a time (every 100 ms), which
/// stamps them late and in bursts, is not a congested path: the bursts are grouped, no
/// decrease, the estimate grows to what the media needs.
#[test]
fn a_receiver_that_stamps_late_is_not_congestion() {
    let mut link = Link::new(20e6, 10_000, 0.0);
    link.stall_us = 40_000;
    let mut run = Run::new(link, 3e6, 2_500_000);
    let trace = run.run(20);
    assert_eq!(run.est.decreases(), 0, "{:?}", kbps(&trace));
    assert!(trace[19] >= 3_000_000, "{:?}", kbps(&trace));
}

/// Media of 500 kbit/s on a 5 Mbit/s link cannot show the link's room (the estimate
/// stays within 1.5 times what gets through); a probe at 2 Mbit/s does, and raises the
/// estimate to it. Behind a 600 kbit/s link the same probe is slowed by the queue:
/// no room, and the estimate is not raised past the link.
#[test]
fn a_probe_finds_the_room_the_media_cannot_show() {
    let mut run = Run::new(Link::new(5e6, 20_000, 0.0), 500e3, 500_000);
    let before = run.run(10);
    assert!(before[9] <= 800_000, "{:?}", kbps(&before));
    let found = run.probe(2_000_000);
    assert!(found.room, "{found:?}");
    assert!(
        found
            .bps
            .is_some_and(|b| (1_800_000..=2_200_000).contains(&b)),
        "{found:?}"
    );
    assert!(run.est.bps() >= 1_800_000, "raised: {}", run.est.bps());

    let mut run = Run::new(Link::new(600e3, 20_000, 0.0), 500e3, 500_000);
    run.run(10);
    let found = run.probe(1_000_000);
    assert!(!found.room, "{found:?}");
    let after = run.run(2);
    assert!(after.iter().all(|&b| b <= 700_000), "{:?}", kbps(&after));
}

/// A receiver that estimates its link itself (REMB): without transport-cc its REMB is
/// the estimate, a real bound from the start; with transport-cc it bounds ours; a
/// drop of over 3 % is congestion.
#[test]
fn remb_is_the_receivers_own_estimate() {
    let mut est = Estimator::new(BweConfig::default());
    assert!(!est.congestion_seen());
    est.on_remb(600_000);
    assert_eq!(est.bps(), 600_000);
    assert!(est.congestion_seen());
    assert!(!est.has_transport_feedback());
    est.on_remb(590_000);
    assert_eq!(est.decreases(), 0, "under 3 %: noise");
    est.on_remb(400_000);
    assert_eq!(est.decreases(), 1);
    est.on_remb(u64::MAX);
    assert_eq!(
        est.bps(),
        BweConfig::default().max_bps,
        "within the ceiling"
    );
    // With transport-cc too, the lower of the two.
    let mut run = Run::new(Link::new(5e6, 10_000, 0.0), 4e6, 1_000_000);
    run.run(10);
    assert!(run.est.has_transport_feedback());
    let ours = run.est.bps();
    run.est.on_remb(ours / 2);
    assert_eq!(run.est.bps(), ours / 2);
    run.est.on_remb(ours * 4);
    assert_eq!(run.est.bps(), ours);
}
