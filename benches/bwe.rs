//! Each receiver's downlink estimate, per transport-cc feedback:
//!
//!     cargo bench --bench bwe
//!
//! - `estimator/feedback_{10,50}`: `Estimator::on_feedback` for one feedback packet
//!   reporting 10 or 50 packets (Chrome sends one every 50–100 ms; at 5 Mbit/s that is
//!   about 25–50 packets): the FCI read in place, each packet looked up in the
//!   receiver's `SentPackets`, the delay detector, the rate controller and the loss
//!   bound. Every iteration reports packets it has not seen before (a stream of sends
//!   1 ms apart arriving 1 ms apart), so the work is the steady state's; the sends and
//!   the writing of the feedback are criterion's untimed setup.
//! - `allocation/10_tracks`: one receiver's allocation of 10 tracks (5 cameras in three
//!   layers, 5 voices) under an estimate that fits some of them: `allocate` alone, and
//!   `Allocator::run` (the hysteresis around it) as each feedback runs it.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use confnode::sfu::allocate::{Allocator, Demand, allocate};
use confnode::sfu::bwe::{ArrivalReport, BweConfig, Estimator, SentPackets};
use confnode::sfu::simulcast::LayerCap;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const DELTA_TICK_US: u64 = 250;

/// Writes one transport-cc FCI reporting `n` packets from `base`, received
/// `spacing_us` apart from `reference_us` on: one status vector chunk per 7 packets
/// (two-bit symbols: small deltas), then the deltas.
fn fci(base: u16, n: usize, reference_us: u64, spacing_us: u64) -> Vec<u8> {
    let reference = reference_us / 64_000;
    let mut out = Vec::new();
    out.extend(base.to_be_bytes());
    out.extend((n as u16).to_be_bytes());
    out.extend(&(reference as u32).to_be_bytes()[1..]);
    out.push(0);
    for chunk in 0..n.div_ceil(7) {
        let mut v = 0xC000u16;
        for i in 0..7 {
            if chunk * 7 + i < n {
                v |= 1 << (12 - 2 * i);
            }
        }
        out.extend(v.to_be_bytes());
    }
    let mut position = reference * 64_000;
    for i in 0..n as u64 {
        let arrival = reference_us + i * spacing_us;
        let delta = ((arrival - position) / DELTA_TICK_US).min(255);
        position += delta * DELTA_TICK_US;
        out.push(delta as u8);
    }
    out
}

struct Feed {
    est: Estimator,
    sent: SentPackets,
    now: u64,
    next_seq: u16,
}

impl Feed {
    fn new() -> Feed {
        Feed {
            est: Estimator::new(BweConfig::default()),
            sent: SentPackets::new(),
            now: 1_000_000,
            next_seq: 0,
        }
    }

    /// Sends `n` packets 1 ms apart; returns their feedback.
    fn send(&mut self, n: usize) -> Vec<u8> {
        let first_sent = self.now;
        for _ in 0..n {
            self.sent.stamp(1200, self.now);
            self.now += 1_000;
        }
        let bytes = fci(self.next_seq, n, first_sent + 20_000, 1_000);
        self.next_seq = self.next_seq.wrapping_add(n as u16);
        bytes
    }

    /// Reads one feedback (what is timed).
    fn read(&mut self, bytes: &[u8]) -> u64 {
        let report = ArrivalReport::parse(bytes).expect("a valid report");
        self.est.on_feedback(&report, &self.sent, self.now)
    }
}

fn estimator(c: &mut Criterion) {
    let mut group = c.benchmark_group("estimator");
    for n in [10usize, 50] {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("feedback", n), &n, |b, &n| {
            // The sends are the setup, untimed; the feedback is the routine.
            let feed = RefCell::new(Feed::new());
            for _ in 0..100 {
                let bytes = feed.borrow_mut().send(n);
                feed.borrow_mut().read(&bytes);
            }
            let acked = feed.borrow().est.acked_bps().unwrap_or(0);
            assert!(
                (9_000_000..=10_000_000).contains(&acked),
                "1200 bytes a millisecond got through: {acked} bit/s"
            );
            b.iter_batched(
                || feed.borrow_mut().send(n),
                |bytes| black_box(feed.borrow_mut().read(&bytes)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// Five cameras (150 kbit/s, 500 kbit/s, 1.5 Mbit/s, each in three temporal layers as
/// Chrome sends them) and five voices, the second camera the active speaker's.
fn ten_tracks() -> Vec<Demand> {
    (0..10)
        .map(|i| Demand {
            audio: i % 2 == 1,
            bps: if i % 2 == 1 {
                [40_000, 0, 0]
            } else {
                [150_000, 500_000, 1_500_000]
            },
            thin: if i % 2 == 1 {
                [[0; 2]; 3]
            } else {
                [[40_000, 80_000], [130_000, 260_000], [400_000, 800_000]]
            },
            heights: [180, 360, 720],
            max_height: None,
            speaker: i == 2,
            screen: false,
        })
        .collect()
}

fn allocation(c: &mut Criterion) {
    let demands = ten_tracks();
    // Room for the speaker's top layer and the others' middle ones.
    let estimate = 200_000 + 1_500_000 + 4 * 500_000 + 100_000;
    let mut group = c.benchmark_group("allocation");
    group.throughput(Throughput::Elements(1));
    let mut caps = vec![LayerCap::Any; demands.len()];
    allocate(estimate, &demands, &mut caps);
    assert_eq!(caps[2], LayerCap::Any, "the speaker's top layer");
    assert_eq!(caps[0], LayerCap::UpTo(1), "the others' middle layers");
    group.bench_function("10_tracks", |b| {
        b.iter(|| allocate(black_box(estimate), black_box(&demands), &mut caps));
    });
    let mut allocator = Allocator::new();
    let mut now = 0u64;
    group.bench_function("10_tracks_run", |b| {
        b.iter(|| {
            now += 50_000;
            black_box(
                allocator
                    .run(Some(black_box(estimate)), 0, &demands, now)
                    .len(),
            )
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4));
    targets = estimator, allocation
}
criterion_main!(benches);
