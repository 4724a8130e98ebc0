//! How a receiver's downlink estimate is shared among the streams it receives
//! (sans-IO).
//!
//! - Each published track measures what each of its layers sends ([`LayerMeter`] on
//!   the forwarding path) and shares it without a lock ([`LayerRates`]).
//! - On each of a receiver's transport-cc feedbacks, its [`Allocator`] shares the
//!   estimate out: audio first, then every video's lowest layer (a video that does not
//!   fit even so is paused), then layer by layer up, the active speaker's video first,
//!   each up to the best its `max_height` allows ([`allocate`]). What each stream may
//!   have goes to its forwarder as a [`LayerCap`] through a [`StreamCap`].
//! - Down at once when what is sent exceeds the estimate; up when the estimate has
//!   room for the step with a margin, and not within [`UP_HOLD_US`] of the last step
//!   down. The estimate cannot grow much past what gets through, so a receiver held
//!   below its best asks its path for room: it *probes* (`sfu::bwe::probe`: padding
//!   next to the media, at twice the estimate at most, [`Allocator::take_probe`]), and
//!   a probe that found room raised the estimate, so the allocation goes up at once,
//!   and probes again soon ([`PROBE_AGAIN_US`]); after probes that found none, less
//!   often ([`PROBE_MIN_US`] doubling up to [`PROBE_MAX_US`]). A link that came back
//!   is found within one such wait and a probe per doubling.
//! - A receiver that cannot be probed (no RTX, no transport-wide numbers) *tries* one
//!   step up instead now and then (every [`TRY_MIN_US`], doubling after each try that
//!   ended in congestion, up to [`TRY_MAX_US`]): the media itself probes. A try ends
//!   at the first congestion the estimator reports; one that saw none for
//!   [`TRY_SETTLE_US`] proves its rate ([`Allocator::take_proven`]), which the
//!   estimate then takes.
//! - An estimate that never saw the link at its limit (heavy loss, see
//!   [`crate::sfu::bwe::Estimator::congestion_seen`]) is only a lower bound of the link
//!   (the traffic was too little to find its limit), so until then nothing is capped.

use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, Ordering};

use super::simulcast::{LayerCap, Layers, MAX_LAYERS, select_layer};

/// A layer's rate is measured over windows of this.
pub(crate) const METER_WINDOW_US: u64 = 500_000;
/// Up-steps need the estimate to exceed their cost by this factor.
pub(crate) const UP_MARGIN: f64 = 1.15;
/// No step up within this of the last step down.
pub(crate) const UP_HOLD_US: u64 = 2_000_000;
/// A receiver held below its best tries a step up after this without a change.
pub(crate) const TRY_MIN_US: u64 = 4_000_000;
/// ... and, after failed tries, at most this rarely: a link that came back is used
/// again within about two of these (two steps up).
pub(crate) const TRY_MAX_US: u64 = 8_000_000;
/// A video is paused only when it did not fit even at its lowest layer for this long
/// (until then it keeps that layer): a dip of the estimate does not stop a picture.
pub(crate) const PAUSE_AFTER_US: u64 = 2_000_000;
/// While it holds a stream below its best, an allocation is looked at again at least
/// this often, feedback or not.
pub(crate) const RECHECK_US: u64 = 500_000;
/// A try that caused no congestion within this succeeded: what it sent got through,
/// and the estimate is raised to it.
pub(crate) const TRY_SETTLE_US: u64 = 3_000_000;
/// A receiver whose path can be probed (see `sfu::bwe::probe`) and is held below its
/// best probes again this soon after a probe that found room (which raised the
/// estimate, and the allocation with it): GoogCC too probes on at once, doubling the
/// rate each time, so a link that came back is found in a few round trips...
pub(crate) const PROBE_AGAIN_US: u64 = 250_000;
/// ... and this long after one that found none, doubling after each such probe...
pub(crate) const PROBE_MIN_US: u64 = 1_000_000;
/// ... and, after probes that found none, at most this rarely (GoogCC probes a
/// limited link every 5 s too): a link that came back is used again within about
/// this and a probe per doubling of the rate.
pub(crate) const PROBE_MAX_US: u64 = 5_000_000;
/// A probe aims this far past the rate it is to show room for (with the margin): what
/// it measures is the lower of its send and receive rates, a little under its aim.
pub(crate) const PROBE_BEYOND: f64 = 1.1;

/// Rates of a layer's lower temporal layers (bit/s): TID 0 alone, TIDs 0 and 1; zeros
/// where the layer has no temporal layers.
pub(crate) type Thin = [u32; 2];

/// What each layer of a published track sends (bit/s; 0: not running), and of that its
/// lower temporal layers, and its height, shared by the track's receivers' allocators.
#[derive(Debug, Default)]
pub(crate) struct LayerRates {
    bps: [AtomicU32; MAX_LAYERS],
    thin: [[AtomicU32; 2]; MAX_LAYERS],
    heights: [AtomicU16; MAX_LAYERS],
}

/// What [`LayerRates::read`] gives: each layer's rate, its lower temporal layers'
/// rates, its height.
pub(crate) type Measured = ([u32; MAX_LAYERS], [Thin; MAX_LAYERS], [u16; MAX_LAYERS]);

impl LayerRates {
    fn publish(&self, (bps, thin, heights): Measured) {
        for l in 0..MAX_LAYERS {
            self.bps[l].store(bps[l], Ordering::Relaxed);
            for (cell, v) in self.thin[l].iter().zip(thin[l]) {
                cell.store(v, Ordering::Relaxed);
            }
            self.heights[l].store(heights[l], Ordering::Relaxed);
        }
    }

    /// The rates and heights last measured.
    pub(crate) fn read(&self) -> Measured {
        let mut out: Measured = Default::default();
        for l in 0..MAX_LAYERS {
            out.0[l] = self.bps[l].load(Ordering::Relaxed);
            out.1[l] = self.thin[l].each_ref().map(|c| c.load(Ordering::Relaxed));
            out.2[l] = self.heights[l].load(Ordering::Relaxed);
        }
        out
    }
}

/// Measures a track's layers on the forwarding path: a few additions per packet, a
/// store per layer every [`METER_WINDOW_US`].
#[derive(Debug, Default)]
pub(crate) struct LayerMeter {
    start: Option<u64>,
    /// Bytes per layer and VP8 temporal layer (TID 3 and packets without one together).
    bytes: [[u64; 4]; MAX_LAYERS],
    /// Whether each layer showed a temporal layer above 0 in this window.
    temporal: [bool; MAX_LAYERS],
}

impl LayerMeter {
    /// One packet of `len` bytes of `layer` and temporal layer `tid` at `now` (µs);
    /// `heights` are the track's.
    pub(crate) fn add(
        &mut self,
        (layer, tid): (u8, Option<u8>),
        len: usize,
        now: u64,
        heights: [u16; MAX_LAYERS],
        rates: &LayerRates,
    ) {
        let start = *self.start.get_or_insert(now);
        let l = usize::from(layer);
        if let Some(b) = self.bytes.get_mut(l) {
            b[usize::from(tid.unwrap_or(3).min(3))] += len as u64;
            self.temporal[l] |= tid.is_some_and(|t| t > 0);
        }
        let elapsed = now.saturating_sub(start);
        if elapsed >= METER_WINDOW_US {
            let rate =
                |b: u64| (b.saturating_mul(8_000_000) / elapsed).min(u64::from(u32::MAX)) as u32;
            let bps = self.bytes.map(|b| rate(b.iter().sum()));
            let mut thin = [[0; 2]; MAX_LAYERS];
            for ((t, b), temporal) in thin.iter_mut().zip(self.bytes).zip(self.temporal) {
                if temporal {
                    *t = [rate(b[0]), rate(b[0] + b[1])];
                }
            }
            rates.publish((bps, thin, heights));
            *self = LayerMeter {
                start: Some(now),
                ..LayerMeter::default()
            };
        }
    }
}

/// A stream's [`LayerCap`], written by its receiver's allocator and read by its
/// forwarder (under the publisher's lock) on every packet.
#[derive(Debug)]
pub(crate) struct StreamCap(AtomicU8);

const CAP_ANY: u8 = u8::MAX;
const CAP_PAUSED: u8 = u8::MAX - 1;
/// Marks `Frames { layer, tid }`, stored as this | layer << 2 | tid (layers < 3).
const CAP_FRAMES: u8 = 0x80;

impl Default for StreamCap {
    fn default() -> Self {
        StreamCap(AtomicU8::new(CAP_ANY))
    }
}

impl StreamCap {
    pub(crate) fn set(&self, cap: LayerCap) {
        let layer = |l: u8| l.min(MAX_LAYERS as u8 - 1);
        let v = match cap {
            LayerCap::Any => CAP_ANY,
            LayerCap::Paused => CAP_PAUSED,
            LayerCap::UpTo(l) => layer(l),
            LayerCap::Frames { layer: l, tid } => CAP_FRAMES | layer(l) << 2 | tid.min(3),
        };
        self.0.store(v, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> LayerCap {
        match self.0.load(Ordering::Relaxed) {
            CAP_ANY => LayerCap::Any,
            CAP_PAUSED => LayerCap::Paused,
            v if v & CAP_FRAMES != 0 => LayerCap::Frames {
                layer: (v >> 2) & 0x1F,
                tid: v & 3,
            },
            l => LayerCap::UpTo(l),
        }
    }
}

/// What one stream to the receiver could use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    /// An audio stream: always fully served, before any video.
    pub audio: bool,
    /// Each layer's rate (bit/s; 0: not running), that of its lower temporal layers
    /// (zeros: none), and its height.
    pub bps: [u32; MAX_LAYERS],
    /// Each layer's lower temporal layers: their rates.
    pub thin: [Thin; MAX_LAYERS],
    /// Each layer's frame height (0: not known).
    pub heights: [u16; MAX_LAYERS],
    /// The receiver's `max_height`.
    pub max_height: Option<u16>,
    /// The publisher is the room's active speaker: its video goes up first.
    pub speaker: bool,
    /// A shared screen: it goes up before everything else (slides must stay readable).
    pub screen: bool,
}

/// Videos are served in this many classes of priority (see [`Demand::priority`]).
const PRIORITIES: u8 = 3;

impl Demand {
    /// Its class of priority, 0 first: a shared screen, the active speaker's camera,
    /// the others.
    fn priority(&self) -> u8 {
        match (self.screen, self.speaker) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        }
    }

    fn layers(&self) -> Layers {
        let mut active = 0u8;
        for (l, b) in self.bps.iter().enumerate() {
            if *b > 0 {
                active |= 1 << l;
            }
        }
        Layers {
            count: MAX_LAYERS as u8,
            active,
            heights: self.heights,
            ..Layers::default()
        }
    }

    /// The layer the receiver would like (its `max_height` allows), if any runs.
    fn best(&self) -> Option<u8> {
        select_layer(self.max_height, &self.layers())
    }

    fn running(&self, l: u8) -> bool {
        self.bps.get(usize::from(l)).is_some_and(|b| *b > 0)
    }

    fn lowest(&self) -> Option<u8> {
        (0..MAX_LAYERS as u8).find(|l| self.running(*l))
    }

    /// The cheapest a video plays at: its lowest layer's base temporal layer where it
    /// has temporal layers (a quarter of the frame rate, in Chrome's three), else that
    /// whole layer.
    fn floor(&self) -> LayerCap {
        let Some(low) = self.lowest() else {
            return LayerCap::Any;
        };
        if self.thin[usize::from(low)][0] > 0 {
            LayerCap::Frames { layer: low, tid: 0 }
        } else {
            LayerCap::UpTo(low)
        }
    }

    /// Layer `l` in full: no cap once it is the best.
    fn full(l: u8, best: u8) -> LayerCap {
        if l >= best {
            LayerCap::Any
        } else {
            LayerCap::UpTo(l)
        }
    }

    /// The cap one step above `cap`: a temporal layer more, or the next running layer
    /// up to the best; `None` from no cap or a pause.
    fn next(&self, cap: LayerCap) -> Option<LayerCap> {
        let best = self.best()?;
        match cap {
            LayerCap::Any | LayerCap::Paused => None,
            LayerCap::Frames { layer, tid } => {
                let more = self
                    .thin
                    .get(usize::from(layer))
                    .and_then(|t| t.get(usize::from(tid) + 1))
                    .is_some_and(|b| *b > 0);
                Some(if more {
                    LayerCap::Frames {
                        layer,
                        tid: tid + 1,
                    }
                } else {
                    Demand::full(layer, best)
                })
            }
            LayerCap::UpTo(layer) => {
                let next = (layer + 1..=best).find(|n| self.running(*n));
                Some(next.map_or(LayerCap::Any, |n| Demand::full(n, best)))
            }
        }
    }

    /// What the stream costs under `cap` (bit/s).
    fn cost(&self, cap: LayerCap) -> u64 {
        if self.audio {
            return u64::from(self.bps[0]);
        }
        if cap == LayerCap::Paused {
            return 0;
        }
        let Some(l) = super::simulcast::cap_layer(self.best(), cap, &self.layers()) else {
            return 0;
        };
        let l = usize::from(l);
        let thin = match cap {
            LayerCap::Frames { tid, .. } => self.thin[l].get(usize::from(tid)).copied(),
            _ => None,
        };
        u64::from(thin.filter(|b| *b > 0).unwrap_or(self.bps[l]))
    }
}

/// Ranks caps: paused lowest, no cap highest; a layer's temporal steps below it in full.
fn rank(cap: LayerCap) -> u8 {
    let top = 3 * MAX_LAYERS as u8;
    match cap {
        LayerCap::Paused => 0,
        LayerCap::Frames { layer, tid } => (3 * layer + tid.min(2) + 1).min(top),
        LayerCap::UpTo(l) => (3 * l + 3).min(top),
        LayerCap::Any => top + 1,
    }
}

/// Shares `budget` (bit/s) among `demands` into `caps` (one each; extra entries of
/// either are left alone): audio first, each
/// video's lowest layer in order of priority (what does not fit is paused), then up
/// layer by layer: a shared screen to its best first, then the speaker's video, then
/// the others one step each in turn, so that everyone gets the middle layer before
/// anyone the top one.
pub fn allocate(budget: u64, demands: &[Demand], caps: &mut [LayerCap]) {
    let n = demands.len().min(caps.len());
    let (demands, caps) = (&demands[..n], &mut caps[..n]);
    let mut left = budget;
    for (d, cap) in demands.iter().zip(caps.iter_mut()) {
        *cap = LayerCap::Any;
        if d.audio {
            left = left.saturating_sub(u64::from(d.bps[0]));
        }
    }
    let videos = |priority: u8| {
        demands
            .iter()
            .enumerate()
            .filter(move |(_, d)| !d.audio && d.priority() == priority)
            .map(|(i, _)| i)
    };
    for i in (0..PRIORITIES).flat_map(videos) {
        let d = &demands[i];
        let floor = d.floor();
        if floor == LayerCap::Any {
            continue; // nothing runs: nothing to share
        }
        let cost = d.cost(floor);
        if cost <= left {
            left -= cost;
            caps[i] = floor;
        } else {
            caps[i] = LayerCap::Paused;
        }
    }
    for i in (0..PRIORITIES - 1).flat_map(videos) {
        while step_up(&demands[i], &mut caps[i], &mut left) {}
    }
    loop {
        let mut stepped = false;
        for i in videos(PRIORITIES - 1) {
            stepped |= step_up(&demands[i], &mut caps[i], &mut left);
        }
        if !stepped {
            break;
        }
    }
}

/// Moves `cap` one step up ([`Demand::next`]) if its cost fits `left`; false when it
/// cannot. Reaching the best layer in full leaves no cap.
fn step_up(d: &Demand, cap: &mut LayerCap, left: &mut u64) -> bool {
    let Some(next) = d.next(*cap) else {
        return false;
    };
    let step = d.cost(next).saturating_sub(d.cost(*cap));
    if step > *left {
        return false;
    }
    *left -= step;
    *cap = next;
    true
}

/// One receiver's allocation over time (see the module's notes).
#[derive(Debug)]
pub struct Allocator {
    caps: Vec<LayerCap>,
    down: Vec<LayerCap>,
    up: Vec<LayerCap>,
    last_down: Option<u64>,
    last_change: Option<u64>,
    try_interval: u64,
    trying: Option<Try>,
    /// What a try that held sent (bit/s), for the estimate.
    proven: Option<u64>,
    /// When it last ran.
    ran: Option<u64>,
    /// Since when a video has not fitted even at its lowest layer.
    short_since: Option<u64>,
    /// How a receiver held below its best finds room.
    way_up: WayUp,
    /// A probe to start (bit/s), and whether one is under way.
    probe_ask: Option<u64>,
    /// The last probe found room, and the allocation has not looked since.
    room_shown: bool,
    probing_now: bool,
    /// The last probe found no room: the next asks for the cheapest step up of any
    /// held stream (see [`Allocator::ask_probe`]).
    last_probe_failed: bool,
    /// When the last probe ended, and the wait before the next.
    last_probe: Option<u64>,
    probe_interval: u64,
}

/// How a receiver held below its best finds room (see [`Allocator::set_way_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WayUp {
    /// Its path can be probed (some video to it has RTX and the transport-wide
    /// number): it asks for probes ([`Allocator::take_probe`]) and goes up when one
    /// found room.
    Probe,
    /// It tries the next layer itself.
    Try,
    /// It estimates its link itself (REMB): up when that estimate has room, as it
    /// grows with what gets through.
    Estimate,
}

/// A step up tried beyond the estimate.
#[derive(Debug, Clone, Copy)]
struct Try {
    at: u64,
    /// The estimator's count of decreases when it began: a new one ends it.
    decreases: u32,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator::new()
    }
}

impl Allocator {
    /// An allocator with nothing allocated yet.
    pub fn new() -> Allocator {
        Allocator {
            caps: Vec::new(),
            down: Vec::new(),
            up: Vec::new(),
            last_down: None,
            last_change: None,
            try_interval: TRY_MIN_US,
            trying: None,
            proven: None,
            ran: None,
            short_since: None,
            way_up: WayUp::Try,
            probe_ask: None,
            room_shown: false,
            probing_now: false,
            last_probe_failed: false,
            last_probe: None,
            probe_interval: PROBE_MIN_US,
        }
    }

    /// How a receiver held below its best finds room ([`WayUp`]).
    pub(crate) fn set_way_up(&mut self, way_up: WayUp) {
        self.way_up = way_up;
    }

    /// The rate of a probe to start now (bit/s), once.
    pub(crate) fn take_probe(&mut self) -> Option<u64> {
        self.probe_ask.take()
    }

    /// The probe asked for ended at `now`; `room`: the path delivered all it was sent.
    pub(crate) fn probe_done(&mut self, room: bool, now: u64) {
        self.probing_now = false;
        self.room_shown = room;
        self.last_probe_failed = !room;
        self.last_probe = Some(now);
        self.probe_interval = if room {
            PROBE_AGAIN_US
        } else {
            (self.probe_interval * 2).clamp(PROBE_MIN_US, PROBE_MAX_US)
        };
    }

    /// When to run again without feedback: [`RECHECK_US`] after the last run while a
    /// stream is held below its best; never otherwise.
    pub(crate) fn next_due(&self) -> Option<u64> {
        let held = self.caps.iter().any(|c| *c != LayerCap::Any);
        self.ran.filter(|_| held).map(|t| t + RECHECK_US)
    }

    /// The rate a try that held sent, once (see [`TRY_SETTLE_US`]).
    pub(crate) fn take_proven(&mut self) -> Option<u64> {
        self.proven.take()
    }

    /// Decides the caps for `demands` under `estimate` (bit/s; `None` while it never
    /// saw congestion: no bound) at `now` (µs); `decreases` is the estimator's count of
    /// congestion events. A demand's position is its stream's: when the streams
    /// change, the caller runs again with the new list (a stream that moved position
    /// starts from its old position's cap). Allocates only when the number of streams
    /// grows.
    pub fn run(
        &mut self,
        estimate: Option<u64>,
        decreases: u32,
        demands: &[Demand],
        now: u64,
    ) -> &[LayerCap] {
        self.ran = Some(now);
        let n = demands.len();
        for v in [&mut self.caps, &mut self.down, &mut self.up] {
            v.resize(n, LayerCap::Any);
        }
        let Some(estimate) = estimate else {
            self.caps.fill(LayerCap::Any);
            return &self.caps;
        };
        let cost: u64 = demands
            .iter()
            .zip(&self.caps)
            .map(|(d, c)| d.cost(*c))
            .sum();
        // A try sends more than the estimate by design; only congestion ends it.
        let failed = self.trying.is_some_and(|t| t.decreases != decreases);
        let over = self.trying.is_none() && cost > estimate;
        if failed || over {
            if self.trying.take().is_some() {
                self.try_interval = (self.try_interval * 2).min(TRY_MAX_US);
                self.last_change = Some(now);
            }
            allocate(estimate, demands, &mut self.down);
            self.hold_off_pauses(demands, now);
            let mut lowered = false;
            for (cap, down) in self.caps.iter_mut().zip(&self.down) {
                if rank(*down) < rank(*cap) {
                    *cap = *down;
                    lowered = true;
                }
            }
            if lowered {
                self.last_down = Some(now);
                self.last_change = Some(now);
                return &self.caps;
            }
        } else {
            self.short_since = None; // everything fits again
        }
        if let Some(t) = self.trying {
            if now.saturating_sub(t.at) < TRY_SETTLE_US {
                return &self.caps;
            }
            self.trying = None;
            self.try_interval = TRY_MIN_US;
            self.proven = Some(cost);
        }
        let held = self
            .last_down
            .is_none_or(|t| now.saturating_sub(t) >= UP_HOLD_US);
        // Where the path can be probed, up only just after a probe found room.
        let shown = self.way_up != WayUp::Probe || std::mem::take(&mut self.room_shown);
        if held && shown {
            // What the estimate has room for with the margin, never lowering a stream
            // without congestion: applied if it all still fits.
            let budget = (estimate.max(self.proven.unwrap_or(0)) as f64 / UP_MARGIN) as u64;
            allocate(budget, demands, &mut self.up);
            let mut raised = false;
            for (up, cap) in self.up.iter_mut().zip(&self.caps) {
                if rank(*up) > rank(*cap) {
                    raised = true;
                } else {
                    *up = *cap;
                }
            }
            let cost: u64 = demands.iter().zip(&self.up).map(|(d, c)| d.cost(*c)).sum();
            if raised && cost <= budget {
                self.caps.copy_from_slice(&self.up);
                self.last_change = Some(now);
                return &self.caps;
            }
        }
        if self.way_up == WayUp::Probe {
            if held {
                self.ask_probe(demands, estimate, now);
            }
            return &self.caps;
        }
        let quiet = self
            .last_change
            .is_none_or(|t| now.saturating_sub(t) >= self.try_interval);
        if self.way_up == WayUp::Try && quiet {
            self.try_step(demands, decreases, now);
        }
        &self.caps
    }

    /// Asks for a probe while streams are held below their best: at what the next step
    /// up ([`Allocator::next_step`]) would send, with the margin and [`PROBE_BEYOND`],
    /// but at most twice the
    /// estimate; a probe of a full link then overshoots it by little, which keeps its
    /// queue short and its measurement clear. One probe at a time, spaced by
    /// [`PROBE_AGAIN_US`] after one that found room, from [`PROBE_MIN_US`] up to
    /// [`PROBE_MAX_US`] after ones that found none. After one that found none, the next
    /// asks for the cheapest step of any held stream instead: the first in priority may
    /// have a step the path can never carry (the speaker's next layer on a narrow
    /// link), and probing only for it would keep every other video at its floor.
    fn ask_probe(&mut self, demands: &[Demand], estimate: u64, now: u64) {
        let spaced = self
            .last_probe
            .is_none_or(|t| now.saturating_sub(t) >= self.probe_interval);
        if self.probing_now || !spaced {
            return;
        }
        let step = if self.last_probe_failed {
            self.cheapest_step(demands)
        } else {
            self.next_step(demands)
        };
        let Some((i, cap)) = step else {
            return;
        };
        let cost: u64 = demands
            .iter()
            .zip(&self.caps)
            .enumerate()
            .map(|(j, (d, c))| d.cost(if j == i { cap } else { *c }))
            .sum();
        let rate = (cost as f64 * UP_MARGIN * PROBE_BEYOND) as u64;
        self.probe_ask = Some(rate.min(estimate.saturating_mul(2)));
        self.probing_now = true;
    }

    /// A video the down-allocation pauses keeps its lowest layer until it has not
    /// fitted for [`PAUSE_AFTER_US`].
    fn hold_off_pauses(&mut self, demands: &[Demand], now: u64) {
        let short = self
            .down
            .iter()
            .zip(&self.caps)
            .any(|(down, cap)| *down == LayerCap::Paused && *cap != LayerCap::Paused);
        if !short {
            self.short_since = None;
            return;
        }
        let since = *self.short_since.get_or_insert(now);
        if now.saturating_sub(since) >= PAUSE_AFTER_US {
            return;
        }
        for ((down, cap), d) in self.down.iter_mut().zip(&self.caps).zip(demands) {
            if *down == LayerCap::Paused && *cap != LayerCap::Paused {
                *down = d.floor();
            }
        }
    }

    /// Lifts one stream held below its best by one layer ([`Allocator::next_step`]).
    fn try_step(&mut self, demands: &[Demand], decreases: u32, now: u64) {
        let Some((i, cap)) = self.next_step(demands) else {
            return;
        };
        self.caps[i] = cap;
        self.trying = Some(Try { at: now, decreases });
        self.last_change = Some(now);
    }

    /// The stream to lift next, one layer, and its cap then: of the streams held below
    /// their best, by priority (a screen, the speaker's), else the one furthest below.
    fn next_step(&self, demands: &[Demand]) -> Option<(usize, LayerCap)> {
        let i = self
            .held(demands)
            .min_by_key(|i| (demands[*i].priority(), rank(self.caps[*i])))?;
        Some((i, self.one_up(&demands[i], self.caps[i])))
    }

    /// Of the streams held below their best, the one whose next step costs least (by
    /// priority among equals), and its cap then.
    fn cheapest_step(&self, demands: &[Demand]) -> Option<(usize, LayerCap)> {
        self.held(demands)
            .map(|i| (i, self.one_up(&demands[i], self.caps[i])))
            .min_by_key(|&(i, cap)| {
                let d = &demands[i];
                (
                    d.cost(cap).saturating_sub(d.cost(self.caps[i])),
                    d.priority(),
                )
            })
    }

    /// The videos held below their best.
    fn held<'a>(&'a self, demands: &'a [Demand]) -> impl Iterator<Item = usize> + 'a {
        (0..demands.len()).filter(|&i| {
            let d = &demands[i];
            !d.audio && d.best().is_some() && self.caps[i] != LayerCap::Any
        })
    }

    /// `cap` one step up: a paused video to its floor.
    fn one_up(&self, d: &Demand, cap: LayerCap) -> LayerCap {
        if cap == LayerCap::Paused {
            return d.floor();
        }
        let mut cap = cap;
        let mut unlimited = u64::MAX;
        step_up(d, &mut cap, &mut unlimited);
        cap
    }
}

#[cfg(test)]
mod tests;
