//! Whether the node is overloaded, so that it refuses new work before the calls it
//! carries suffer.
//!
//! Each data-plane worker measures how much of every second it spent serving rather
//! than waiting for packets ([`BusyMeter`]). While one of them stays busier than
//! `node.overload_percent`, new work is refused: Allocate answers 508 (Insufficient
//! Capacity), joining a room 503 with `Retry-After`; what is held (allocations,
//! refreshes, permissions, channels, calls) goes on. Refusing starts after two busy
//! seconds in a row and ends after two calm ones (below four fifths of the limit), so
//! a burst does not flap it. Time is passed in: no clock is read here.

use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Seconds in a row above the limit before new work is refused, and below the calm
/// level before it is taken again.
const SECONDS_TO_CHANGE: u8 = 2;
/// One measuring window, in microseconds.
const WINDOW_US: u64 = 1_000_000;

/// What the workers report and the control plane reads: shared by the node.
#[derive(Debug, Default)]
pub(crate) struct Load {
    /// Per worker: busy share of its last full second, in thousandths.
    busy: Vec<AtomicU32>,
    /// Per worker: whether it is past the limit (see [`BusyMeter`]).
    hot: Vec<AtomicBool>,
    /// New allocations and joins refused while overloaded.
    pub(crate) refused_allocations: Counter,
    pub(crate) refused_joins: Counter,
}

impl Load {
    /// The load of `workers` data-plane workers, none busy yet.
    pub(crate) fn new(workers: usize) -> Load {
        Load {
            busy: (0..workers).map(|_| AtomicU32::new(0)).collect(),
            hot: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            ..Load::default()
        }
    }

    /// The same, counting refusals on `allocations` and `joins` (the node's metrics).
    pub(crate) fn counting(self, allocations: Counter, joins: Counter) -> Load {
        Load {
            refused_allocations: allocations,
            refused_joins: joins,
            ..self
        }
    }

    /// Whether new work is refused now: some worker is past the limit.
    pub(crate) fn overloaded(&self) -> bool {
        self.hot.iter().any(|h| h.load(Ordering::Relaxed))
    }

    /// The busiest worker's share of its last second, in percent.
    pub(crate) fn busiest_percent(&self) -> u32 {
        let permille = self.busy.iter().map(|b| b.load(Ordering::Relaxed)).max();
        permille.unwrap_or(0) / 10
    }

    /// Whether a new allocation must be refused; counts it if so.
    pub(crate) fn refuse_allocation(&self) -> bool {
        let refuse = self.overloaded();
        if refuse {
            self.refused_allocations.inc();
        }
        refuse
    }

    /// Whether a new participant must be refused; counts it if so.
    pub(crate) fn refuse_join(&self) -> bool {
        let refuse = self.overloaded();
        if refuse {
            self.refused_joins.inc();
        }
        refuse
    }

    fn report(&self, worker: usize, permille: u32, hot: bool) {
        if let Some(b) = self.busy.get(worker) {
            b.store(permille, Ordering::Relaxed);
        }
        if let Some(h) = self.hot.get(worker) {
            h.store(hot, Ordering::Relaxed);
        }
    }
}

/// One worker's measure of its own load: told how long each wait for packets took,
/// and the time now and then.
#[derive(Debug)]
pub(crate) struct BusyMeter {
    worker: usize,
    /// The limit in thousandths; 0 never refuses.
    limit: u32,
    window_start_us: u64,
    waited_us: u64,
    /// Full seconds in a row above the limit (or, while hot, below the calm level).
    streak: u8,
    hot: bool,
}

impl BusyMeter {
    /// Worker `worker`'s meter: refuses past `limit_percent` (0 = never), starting at
    /// `now_us`.
    pub(crate) fn new(worker: usize, limit_percent: u8, now_us: u64) -> BusyMeter {
        BusyMeter {
            worker,
            limit: u32::from(limit_percent.min(100)) * 10,
            window_start_us: now_us,
            waited_us: 0,
            streak: 0,
            hot: false,
        }
    }

    /// The worker waited `us` for packets or timers.
    pub(crate) fn waited(&mut self, us: u64) {
        self.waited_us = self.waited_us.saturating_add(us);
    }

    /// Closes the window when a second has passed: stores its busy share (in
    /// thousandths, returned) and whether the worker is past the limit in `load`.
    pub(crate) fn tick(&mut self, now_us: u64, load: &Load) -> Option<u32> {
        let elapsed = now_us.checked_sub(self.window_start_us)?;
        if elapsed < WINDOW_US {
            return None;
        }
        let busy = elapsed.saturating_sub(self.waited_us);
        let permille = u32::try_from(busy.saturating_mul(1000) / elapsed).unwrap_or(1000);
        self.window_start_us = now_us;
        self.waited_us = 0;
        self.judge(permille);
        load.report(self.worker, permille, self.hot);
        Some(permille)
    }

    fn judge(&mut self, permille: u32) {
        if self.limit == 0 {
            return;
        }
        // Hot: counting calm seconds; cool: counting busy ones.
        let toward_change = if self.hot {
            permille < self.limit * 4 / 5
        } else {
            permille >= self.limit
        };
        self.streak = if toward_change { self.streak + 1 } else { 0 };
        if self.streak >= SECONDS_TO_CHANGE {
            self.hot = !self.hot;
            self.streak = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one second in which the worker waited `waited_ms`; the busy share.
    fn second(m: &mut BusyMeter, load: &Load, now_us: &mut u64, waited_ms: u64) -> u32 {
        m.waited(waited_ms * 1000);
        *now_us += WINDOW_US;
        m.tick(*now_us, load).expect("a second passed")
    }

    #[test]
    fn busy_share_of_each_second() {
        let load = Load::new(2);
        let mut now = 5_000_000;
        let mut m = BusyMeter::new(1, 90, now);
        assert_eq!(m.tick(now + 999_999, &load), None);
        assert_eq!(second(&mut m, &load, &mut now, 750), 250);
        assert_eq!(load.busiest_percent(), 25);
        assert_eq!(second(&mut m, &load, &mut now, 0), 1000);
        // A wait counted past the window (a long poll) is no negative share.
        assert_eq!(second(&mut m, &load, &mut now, 1500), 0);
        assert!(!load.overloaded());
    }

    #[test]
    fn refuses_after_two_busy_seconds_and_takes_again_after_two_calm_ones() {
        let load = Load::new(2);
        let mut now = 0;
        let mut m = BusyMeter::new(0, 90, now);
        second(&mut m, &load, &mut now, 50); // 95 %
        assert!(!load.overloaded(), "one busy second is a burst");
        second(&mut m, &load, &mut now, 200); // 80 %: the streak breaks
        second(&mut m, &load, &mut now, 0);
        assert!(!load.overloaded());
        second(&mut m, &load, &mut now, 100); // 90 %: at the limit
        assert!(load.overloaded());
        assert!(load.refuse_allocation() && load.refuse_join());
        assert_eq!(load.refused_allocations.get(), 1);
        assert_eq!(load.refused_joins.get(), 1);
        // 75 % is below the limit but not calm (72 %): still refusing.
        for _ in 0..3 {
            second(&mut m, &load, &mut now, 250);
        }
        assert!(load.overloaded());
        second(&mut m, &load, &mut now, 300);
        assert!(load.overloaded(), "one calm second");
        second(&mut m, &load, &mut now, 300);
        assert!(!load.overloaded());
        assert!(!load.refuse_allocation());
        assert_eq!(load.refused_allocations.get(), 1);
    }

    #[test]
    fn one_hot_worker_is_enough_and_a_zero_limit_never_refuses() {
        let load = Load::new(2);
        let mut now = 0;
        let mut calm = BusyMeter::new(0, 90, now);
        let mut hot = BusyMeter::new(1, 90, now);
        let mut off = BusyMeter::new(0, 0, now);
        let off_load = Load::new(1);
        for _ in 0..2 {
            hot.waited(0);
            calm.waited(900_000);
            off.waited(0);
            now += WINDOW_US;
            hot.tick(now, &load);
            calm.tick(now, &load);
            off.tick(now, &off_load);
        }
        assert!(load.overloaded());
        assert_eq!(load.busiest_percent(), 100);
        assert!(!off_load.overloaded());
    }
}
