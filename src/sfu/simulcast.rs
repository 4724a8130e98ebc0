//! Which simulcast layer a receiver gets, and when it may change.
//!
//! A publisher sends up to [`MAX_LAYERS`] encodings of one camera (rids `q`, `h`, `f`
//! in Chrome's order: index 0 is the smallest). Each receiver has a target: the highest
//! running layer its `max_height` preference allows. A receiver is only moved to
//! another layer at a keyframe of that layer (its decoder cannot start anywhere else),
//! so a change of target asks the publisher for one and keeps forwarding the current
//! layer until it comes. A layer that stops (no packet for [`LAYER_TIMEOUT_US`]) stops
//! being a candidate at once: receivers on it are re-targeted to a lower running layer.
//!
//! The receiver's downlink estimate bounds the target too: the allocation across its
//! streams (`sfu::allocate`) gives each a [`LayerCap`], the highest layer it may have,
//! or pauses it.

/// Most simulcast layers of one track.
pub(crate) const MAX_LAYERS: usize = 3;
/// A layer that sent nothing for this long counts as stopped. Chrome stops its upper
/// layers when bandwidth or CPU run short and sends nothing at all on them.
pub(crate) const LAYER_TIMEOUT_US: u64 = 1_000_000;
/// How often a receiver waiting for a keyframe repeats its request (the publisher may
/// have lost the PLI). The publisher-side throttle merges these anyway.
pub(crate) const KEYFRAME_RETRY_US: u64 = 1_000_000;

/// The layers of a published track as the SFU sees them now. Copied into every
/// [`Incoming`](super::track::Incoming), so receivers always decide on current facts;
/// `generation` changes whenever anything else here does, so they re-decide only then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Layers {
    pub(crate) count: u8,
    /// Bit `i`: layer `i` is running.
    pub(crate) active: u8,
    /// Frame height per layer, 0 = not known yet.
    pub(crate) heights: [u16; MAX_LAYERS],
    /// Media SSRC per layer, once known (simulcast by rid learns it from the packets).
    pub(crate) ssrcs: [Option<u32>; MAX_LAYERS],
    pub(crate) generation: u32,
}

impl Layers {
    pub(crate) fn is_active(&self, layer: u8) -> bool {
        usize::from(layer) < MAX_LAYERS && self.active & (1 << layer) != 0
    }

    pub(crate) fn ssrc(&self, layer: u8) -> Option<u32> {
        self.ssrcs.get(usize::from(layer)).copied().flatten()
    }
}

/// The layer a receiver capped at `max_height` (`None`: no cap) should get: the
/// highest running layer whose height is within the cap; the lowest running layer when
/// none is (a receiver always gets something); `None` when nothing runs. A layer whose
/// height is not known yet does not count as within a cap: it is taken when no cap is
/// set or when it is the lowest running layer.
pub(crate) fn select_layer(max_height: Option<u16>, layers: &Layers) -> Option<u8> {
    let count = usize::from(layers.count).min(MAX_LAYERS) as u8;
    let mut lowest = None;
    let mut best = None;
    for l in 0..count {
        if !layers.is_active(l) {
            continue;
        }
        lowest.get_or_insert(l);
        let h = layers.heights[usize::from(l)];
        match max_height {
            None => best = Some(l),
            Some(cap) if h != 0 && h <= cap => best = Some(l),
            Some(_) => {}
        }
    }
    best.or(lowest)
}

/// The highest layer the receiver's bandwidth allows a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCap {
    /// No bound: the estimate has room for the stream's best layer.
    Any,
    /// At most this layer (the lowest running one if none at or below it runs).
    UpTo(u8),
    /// As `UpTo(layer)`, and of its frames only those of VP8 temporal layers up to
    /// `tid`: a lower frame rate, a step finer than a whole layer ([`TemporalFilter`]).
    Frames {
        /// The spatial layer, 0 = lowest.
        layer: u8,
        /// The highest VP8 temporal layer id forwarded.
        tid: u8,
    },
    /// Nothing: not even the lowest layer fits. It resumes at a keyframe.
    Paused,
}

/// The target under a cap: the highest running layer at or below it, else the lowest
/// running one; nothing when paused.
pub(crate) fn cap_layer(target: Option<u8>, cap: LayerCap, layers: &Layers) -> Option<u8> {
    let target = target?;
    let bound = match cap {
        LayerCap::Any => return Some(target),
        LayerCap::Paused => return None,
        LayerCap::UpTo(c) | LayerCap::Frames { layer: c, .. } => c,
    };
    if target <= bound {
        return Some(target);
    }
    let count = layers.count.min(MAX_LAYERS as u8);
    let running = |l: &u8| layers.is_active(*l);
    (0..=bound.min(count.saturating_sub(1)))
        .rev()
        .find(running)
        .or_else(|| (0..count).find(running))
}

/// Every temporal layer: VP8's TID has two bits.
pub(crate) const ALL_TIDS: u8 = 3;

/// One receiver's choice among the VP8 temporal layers of the layer it is forwarded:
/// all of them, or those up to a TID (a lower frame rate). Frames of a higher TID
/// depend on nothing the lower ones need, so they can be left out from any frame on;
/// going up waits for a frame decodable from what was forwarded: one of the next
/// layer up with the layer-sync bit, or a keyframe.
#[derive(Debug, Clone)]
pub(crate) struct TemporalFilter {
    target: u8,
    current: u8,
    /// The frame (its RTP timestamp) last decided on, and whether it passes.
    frame: Option<(u32, bool)>,
}

impl Default for TemporalFilter {
    fn default() -> Self {
        TemporalFilter {
            target: ALL_TIDS,
            current: ALL_TIDS,
            frame: None,
        }
    }
}

impl TemporalFilter {
    /// Temporal layers up to `tid` from now on (`None`: all).
    pub(crate) fn set_target(&mut self, tid: Option<u8>) {
        self.target = tid.unwrap_or(ALL_TIDS).min(ALL_TIDS);
    }

    /// Whether a packet of the frame with RTP timestamp `ts`, of temporal layer `tid`
    /// (`None`: the stream has no temporal layers) with layer-sync bit `sync`, passes;
    /// `keyframe`: the frame is a keyframe (from which any choice may start). Every
    /// packet of a frame gets the decision its first one got.
    pub(crate) fn pass(&mut self, ts: u32, tid: Option<u8>, sync: bool, keyframe: bool) -> bool {
        let Some(tid) = tid else {
            return true;
        };
        if let Some((frame, pass)) = self.frame
            && frame == ts
        {
            return pass;
        }
        if keyframe || self.target < self.current {
            self.current = self.target;
        } else if self.target > self.current && sync && tid == self.current + 1 {
            // One layer at a time: a frame that syncs to the base may still need the
            // layers between, which were left out.
            self.current = if tid >= self.target { self.target } else { tid };
        }
        let pass = tid <= self.current;
        self.frame = Some((ts, pass));
        pass
    }
}

/// What to do with a packet of some layer, for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// It belongs to the layer being forwarded.
    Forward,
    /// It is the keyframe to move to: forward it and everything after it from its layer.
    Switch,
    /// Another layer's packet, or nothing can start here.
    Drop,
}

/// One receiver's layer choice for one published track.
#[derive(Debug, Clone)]
pub struct Selector {
    max_height: Option<u16>,
    cap: LayerCap,
    current: Option<u8>,
    target: Option<u8>,
    /// The `Layers::generation` the target was chosen for; `None` forces a new choice.
    seen: Option<u32>,
    /// When a keyframe of the target was last asked for.
    asked_at: Option<u64>,
    ask_now: bool,
}

impl Selector {
    pub(crate) fn new(max_height: Option<u16>) -> Selector {
        Selector {
            max_height,
            cap: LayerCap::Any,
            current: None,
            target: None,
            seen: None,
            asked_at: None,
            ask_now: false,
        }
    }

    /// A new preference; it takes effect with the next packet.
    pub(crate) fn set_max_height(&mut self, max_height: Option<u16>) {
        self.max_height = max_height;
        self.seen = None;
    }

    /// The receiver's `max_height` preference, if any.
    pub fn max_height(&self) -> Option<u16> {
        self.max_height
    }

    /// A new bound from the receiver's bandwidth; it takes effect with the next packet.
    /// Paused, nothing more is forwarded from now on.
    pub(crate) fn set_cap(&mut self, cap: LayerCap) {
        if cap == self.cap {
            return;
        }
        self.cap = cap;
        self.seen = None;
        if cap == LayerCap::Paused {
            self.current = None;
        }
    }

    /// The layer being forwarded.
    pub(crate) fn current(&self) -> Option<u8> {
        self.current
    }

    /// The layer wanted.
    pub(crate) fn target(&self) -> Option<u8> {
        self.target
    }

    /// The forwarded layer's stream broke off (its SSRC was replaced): nothing flows
    /// until a keyframe, which is asked for at once.
    pub(crate) fn restart(&mut self) {
        self.current = None;
        self.ask_now = self.target.is_some();
    }

    fn retarget(&mut self, layers: &Layers) {
        self.seen = Some(layers.generation);
        let target = cap_layer(select_layer(self.max_height, layers), self.cap, layers);
        if target != self.target {
            self.target = target;
            self.asked_at = None;
            self.ask_now = target.is_some() && target != self.current;
        }
    }

    /// Decides on a packet of `layer`; `switch_point` says whether a receiver may start
    /// there (a keyframe's first packet).
    pub(crate) fn on_packet(&mut self, layer: u8, switch_point: bool, layers: &Layers) -> Gate {
        if self.seen != Some(layers.generation) {
            self.retarget(layers);
        }
        if self.current == Some(layer) {
            return Gate::Forward;
        }
        if !switch_point {
            return Gate::Drop;
        }
        if self.target == Some(layer) {
            self.current = Some(layer);
            self.ask_now = false;
            return Gate::Switch;
        }
        // Nothing flows to this receiver (it just joined, or its layer stopped): a
        // keyframe of a running layer below the target gives it a picture now, and the
        // move up follows at the target's keyframe.
        let idle = self.current.is_none_or(|c| !layers.is_active(c));
        if idle && self.target.is_some_and(|t| layer < t) && layers.is_active(layer) {
            self.current = Some(layer);
            return Gate::Switch;
        }
        Gate::Drop
    }

    /// The layer whose keyframe this receiver waits for, when it is time to ask (at once
    /// after a change of target, then every [`KEYFRAME_RETRY_US`]).
    pub(crate) fn poll_keyframe(&mut self, now: u64) -> Option<u8> {
        let target = self.target?;
        if self.current == Some(target) {
            return None;
        }
        let due = self.ask_now
            || self
                .asked_at
                .is_none_or(|at| now.saturating_sub(at) >= KEYFRAME_RETRY_US);
        if !due {
            return None;
        }
        self.ask_now = false;
        self.asked_at = Some(now);
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(active: u8, heights: [u16; 3], generation: u32) -> Layers {
        Layers {
            count: 3,
            active,
            heights,
            ssrcs: [Some(10), Some(20), Some(30)],
            generation,
        }
    }

    const HEIGHTS: [u16; 3] = [180, 360, 720];

    #[test]
    fn selection_follows_the_cap_and_running_layers() {
        let all = layers(0b111, HEIGHTS, 0);
        assert_eq!(select_layer(None, &all), Some(2));
        assert_eq!(select_layer(Some(720), &all), Some(2));
        assert_eq!(select_layer(Some(500), &all), Some(1));
        assert_eq!(select_layer(Some(180), &all), Some(0));
        assert_eq!(
            select_layer(Some(90), &all),
            Some(0),
            "the lowest rather than nothing"
        );
        let top_stopped = layers(0b011, HEIGHTS, 0);
        assert_eq!(select_layer(None, &top_stopped), Some(1));
        let low_stopped = layers(0b110, HEIGHTS, 0);
        assert_eq!(select_layer(Some(100), &low_stopped), Some(1));
        assert_eq!(select_layer(None, &layers(0, HEIGHTS, 0)), None);
        // Unknown heights: only without a cap, or as the lowest running layer.
        let unknown = layers(0b111, [0, 0, 0], 0);
        assert_eq!(select_layer(None, &unknown), Some(2));
        assert_eq!(select_layer(Some(720), &unknown), Some(0));
        // A count below MAX_LAYERS hides the rest.
        let mut one = all;
        one.count = 1;
        assert_eq!(select_layer(None, &one), Some(0));
    }

    #[test]
    fn temporal_layers_go_down_at_the_next_frame_and_up_at_a_sync_one_at_a_time() {
        // L1T3: TIDs 0 2 1 2 0 2 1 2 ..., one frame per timestamp.
        let pattern = [0u8, 2, 1, 2];
        let mut f = TemporalFilter::default();
        let mut passed = Vec::new();
        let frame = |f: &mut TemporalFilter, i: u32, sync: bool| {
            let tid = pattern[i as usize % 4];
            let first = f.pass(i * 3000, Some(tid), sync, false);
            assert_eq!(
                f.pass(i * 3000, Some(tid), sync, false),
                first,
                "one frame, one choice"
            );
            first
        };
        for i in 0..4 {
            passed.push(frame(&mut f, i, false));
        }
        assert!(passed.iter().all(|p| *p), "all by default");
        f.set_target(Some(0));
        assert!(frame(&mut f, 4, false), "T0");
        assert!(!frame(&mut f, 5, false), "T2 left out at once");
        assert!(!frame(&mut f, 6, false), "T1 too");
        // Up to all: T1 only at a T1 frame with the sync bit, then T2 the same way.
        f.set_target(None);
        assert!(
            !frame(&mut f, 7, true),
            "a T2 sync frame: not two layers at once"
        );
        assert!(frame(&mut f, 8, false));
        assert!(!frame(&mut f, 9, false));
        assert!(frame(&mut f, 10, true), "T1 sync");
        assert!(!frame(&mut f, 11, false), "T2 without sync: not yet");
        assert!(frame(&mut f, 13, true), "T2 sync");
        assert!(frame(&mut f, 14, false) && frame(&mut f, 15, false));
        // A keyframe takes the target at once; a stream without TIDs always passes.
        f.set_target(Some(1));
        assert!(f.pass(16 * 3000, Some(0), false, true));
        assert!(!f.pass(17 * 3000, Some(2), true, false));
        assert!(f.pass(18 * 3000, None, false, false));
    }

    #[test]
    fn switches_only_at_the_targets_keyframe() {
        let l = layers(0b111, HEIGHTS, 1);
        let mut s = Selector::new(Some(360));
        // Not a keyframe: nothing to start with, and a keyframe of layer 1 is wanted.
        assert_eq!(s.on_packet(1, false, &l), Gate::Drop);
        assert_eq!(s.poll_keyframe(0), Some(1));
        assert_eq!(s.poll_keyframe(1), None, "asked already");
        // A keyframe of the top layer is above the cap.
        assert_eq!(s.on_packet(2, true, &l), Gate::Drop);
        assert_eq!(s.on_packet(1, true, &l), Gate::Switch);
        assert_eq!(s.on_packet(1, false, &l), Gate::Forward);
        assert_eq!(s.on_packet(0, true, &l), Gate::Drop);
        assert_eq!(s.poll_keyframe(2), None);

        // Raised cap: layer 1 keeps flowing until layer 2's keyframe.
        s.set_max_height(None);
        assert_eq!(s.on_packet(1, false, &l), Gate::Forward);
        assert_eq!(s.target(), Some(2));
        assert_eq!(s.poll_keyframe(3), Some(2));
        assert_eq!(s.on_packet(2, false, &l), Gate::Drop);
        assert_eq!(s.on_packet(1, false, &l), Gate::Forward);
        assert_eq!(s.poll_keyframe(KEYFRAME_RETRY_US), None);
        assert_eq!(
            s.poll_keyframe(KEYFRAME_RETRY_US + 3),
            Some(2),
            "asked again"
        );
        assert_eq!(s.on_packet(2, true, &l), Gate::Switch);
        assert_eq!(s.on_packet(1, false, &l), Gate::Drop);
        assert_eq!(s.current(), Some(2));
    }

    #[test]
    fn falls_back_when_the_layer_stops() {
        let mut s = Selector::new(None);
        let all = layers(0b111, HEIGHTS, 1);
        assert_eq!(s.on_packet(2, true, &all), Gate::Switch);
        // The top layer stops: the target drops to layer 1 at once and a keyframe is
        // asked for; the first keyframe of layer 1 switches.
        let two = layers(0b011, HEIGHTS, 2);
        assert_eq!(s.on_packet(1, false, &two), Gate::Drop);
        assert_eq!(s.target(), Some(1));
        assert_eq!(s.poll_keyframe(10), Some(1));
        assert_eq!(s.on_packet(1, true, &two), Gate::Switch);
        // It comes back: up again at its keyframe.
        assert_eq!(
            s.on_packet(2, false, &layers(0b111, HEIGHTS, 3)),
            Gate::Drop
        );
        assert_eq!(s.poll_keyframe(20), Some(2));
        assert_eq!(
            s.on_packet(2, true, &layers(0b111, HEIGHTS, 3)),
            Gate::Switch
        );
    }

    #[test]
    fn starts_low_when_nothing_flows() {
        let l = layers(0b111, HEIGHTS, 1);
        let mut s = Selector::new(None);
        // Joining: a keyframe of the lowest layer comes first and is taken...
        assert_eq!(s.on_packet(0, true, &l), Gate::Switch);
        // ...but once something flows, only the target's keyframe moves it.
        assert_eq!(s.on_packet(1, true, &l), Gate::Drop);
        assert_eq!(s.poll_keyframe(0), Some(2));
        assert_eq!(s.on_packet(2, true, &l), Gate::Switch);
        // Waiting for the top layer on the lowest one, which stops: a keyframe of the
        // middle layer is taken without waiting for the target's.
        let mut s = Selector::new(None);
        assert_eq!(s.on_packet(0, true, &l), Gate::Switch);
        let no_low = layers(0b110, HEIGHTS, 2);
        assert_eq!(s.on_packet(1, true, &no_low), Gate::Switch);
        assert_eq!((s.current(), s.target()), (Some(1), Some(2)));
    }

    #[test]
    fn nothing_running_means_no_request() {
        let mut s = Selector::new(None);
        assert_eq!(s.on_packet(0, false, &layers(0, HEIGHTS, 1)), Gate::Drop);
        assert_eq!(s.poll_keyframe(0), None);
    }

    #[test]
    fn a_bandwidth_cap_lowers_the_target_and_a_pause_stops_everything() {
        let all = layers(0b111, HEIGHTS, 0);
        assert_eq!(cap_layer(Some(2), LayerCap::UpTo(1), &all), Some(1));
        assert_eq!(
            cap_layer(Some(1), LayerCap::UpTo(2), &all),
            Some(1),
            "max_height wins"
        );
        assert_eq!(cap_layer(Some(2), LayerCap::Any, &all), Some(2));
        assert_eq!(cap_layer(Some(2), LayerCap::Paused, &all), None);
        let no_low = layers(0b110, HEIGHTS, 0);
        assert_eq!(
            cap_layer(Some(2), LayerCap::UpTo(0), &no_low),
            Some(1),
            "the lowest running layer rather than nothing"
        );
        assert_eq!(cap_layer(None, LayerCap::UpTo(0), &all), None);

        let mut s = Selector::new(None);
        assert_eq!(s.on_packet(2, true, &all), Gate::Switch);
        // Down: the middle layer is asked for, the top one flows until it comes.
        s.set_cap(LayerCap::UpTo(1));
        assert_eq!(s.on_packet(2, false, &all), Gate::Forward);
        assert_eq!(s.target(), Some(1));
        assert_eq!(s.poll_keyframe(0), Some(1));
        assert_eq!(s.on_packet(1, true, &all), Gate::Switch);
        // Paused: nothing, not even a keyframe, until the pause ends.
        s.set_cap(LayerCap::Paused);
        assert_eq!(s.on_packet(1, true, &all), Gate::Drop);
        assert_eq!(s.on_packet(0, true, &all), Gate::Drop);
        assert_eq!(s.poll_keyframe(10), None);
        s.set_cap(LayerCap::UpTo(0));
        assert_eq!(s.on_packet(1, false, &all), Gate::Drop);
        assert_eq!(
            s.poll_keyframe(20),
            Some(0),
            "resumes at a keyframe, asked for"
        );
        assert_eq!(s.on_packet(0, true, &all), Gate::Switch);
    }
}
