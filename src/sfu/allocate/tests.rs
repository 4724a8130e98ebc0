use super::*;

const AUDIO: Demand = Demand {
    audio: true,
    bps: [40_000, 0, 0],
    thin: [[0; 2]; MAX_LAYERS],
    heights: [0; MAX_LAYERS],
    max_height: None,
    speaker: false,
    screen: false,
};
/// Chrome's three layers of a 720p camera, about.
const VIDEO: Demand = Demand {
    audio: false,
    bps: [150_000, 500_000, 1_500_000],
    thin: [[0; 2]; MAX_LAYERS],
    heights: [180, 360, 720],
    max_height: None,
    speaker: false,
    screen: false,
};

fn run(budget: u64, demands: &[Demand]) -> Vec<LayerCap> {
    let mut caps = vec![LayerCap::Any; demands.len()];
    allocate(budget, demands, &mut caps);
    caps
}

#[test]
fn audio_first_then_lowest_layers_then_up_by_priority() {
    use LayerCap::*;
    let speaker = Demand {
        speaker: true,
        ..VIDEO
    };
    let demands = [VIDEO, AUDIO, speaker, AUDIO];
    assert_eq!(run(10_000_000, &demands), [Any, Any, Any, Any]);
    // Audio, both lowest layers, then the speaker's video as far as it goes.
    assert_eq!(
        run(80_000 + 300_000 + 1_350_000, &demands),
        [UpTo(0), Any, Any, Any]
    );
    assert_eq!(
        run(80_000 + 300_000 + 350_000, &demands),
        [UpTo(0), Any, UpTo(1), Any]
    );
    assert_eq!(
        run(80_000 + 300_000 + 349_999, &demands),
        [UpTo(0), Any, UpTo(0), Any]
    );
    // Room for one lowest layer: the speaker's; the other video is paused.
    assert_eq!(run(80_000 + 200_000, &demands), [Paused, Any, UpTo(0), Any]);
    assert_eq!(run(0, &demands), [Paused, Any, Paused, Any]);
}

/// A shared screen (one layer, as Chrome sends it) goes before the speaker's camera:
/// its floor first, then to its best, then the cameras.
#[test]
fn a_shared_screen_goes_first() {
    use LayerCap::*;
    let speaker = Demand {
        speaker: true,
        ..VIDEO
    };
    let screen = Demand {
        bps: [1_200_000, 0, 0],
        heights: [720, 0, 0],
        screen: true,
        ..VIDEO
    };
    let demands = [VIDEO, speaker, screen, AUDIO];
    assert_eq!(run(10_000_000, &demands), [Any, Any, Any, Any]);
    // Room for one video: the screen; both cameras are paused.
    assert_eq!(
        run(40_000 + 1_200_000, &demands),
        [Paused, Paused, Any, Any]
    );
    // Then the speaker's camera, then the other one.
    assert_eq!(
        run(40_000 + 1_200_000 + 150_000, &demands),
        [Paused, UpTo(0), Any, Any]
    );
    assert_eq!(
        run(40_000 + 1_200_000 + 300_000, &demands),
        [UpTo(0), UpTo(0), Any, Any]
    );
}

#[test]
fn max_height_and_stopped_layers_bound_the_best() {
    use LayerCap::*;
    let small = Demand {
        max_height: Some(360),
        ..VIDEO
    };
    assert_eq!(run(10_000_000, &[small]), [Any]);
    assert_eq!(run(400_000, &[small]), [UpTo(0)]);
    assert_eq!(small.cost(Any), 500_000, "its best is the middle layer");
    let no_middle = Demand {
        bps: [150_000, 0, 1_500_000],
        ..VIDEO
    };
    assert_eq!(run(1_000_000, &[no_middle]), [UpTo(0)]);
    assert_eq!(run(1_500_000, &[no_middle]), [Any]);
    let nothing = Demand {
        bps: [0; MAX_LAYERS],
        ..VIDEO
    };
    assert_eq!(run(0, &[nothing]), [Any], "nothing runs, nothing to pause");
}

#[test]
fn caps_pass_through_the_shared_cell() {
    let cell = StreamCap::default();
    assert_eq!(cell.get(), LayerCap::Any);
    for cap in [
        LayerCap::Paused,
        LayerCap::UpTo(0),
        LayerCap::UpTo(2),
        LayerCap::Frames { layer: 0, tid: 0 },
        LayerCap::Frames { layer: 2, tid: 1 },
        LayerCap::Any,
    ] {
        cell.set(cap);
        assert_eq!(cell.get(), cap);
    }
}

#[test]
fn the_meter_measures_each_layer() {
    let rates = LayerRates::default();
    let mut meter = LayerMeter::default();
    let heights = [180, 360, 720];
    // 100 packets of 1000 bytes a second on layer 2 (no temporal layers), 40 on layer
    // 0 in Chrome's L1T3 (TIDs 0 2 1 2 ...), for 1.2 s.
    for ms in 0..1_200u64 {
        let now = 1_000_000 + ms * 1_000;
        if ms % 10 == 0 {
            meter.add((2, None), 1000, now, heights, &rates);
        }
        if ms % 25 == 0 {
            let tid = [0, 2, 1, 2][(ms / 25 % 4) as usize];
            meter.add((0, Some(tid)), 1000, now, heights, &rates);
        }
    }
    let (bps, thin, h) = rates.read();
    assert!((780_000..=820_000).contains(&bps[2]), "{bps:?}");
    assert!((300_000..=340_000).contains(&bps[0]), "{bps:?}");
    assert_eq!((bps[1], h), (0, heights));
    // A quarter of layer 0's packets are TID 0, half are TID 0 or 1.
    assert!((70_000..=90_000).contains(&thin[0][0]), "{thin:?}");
    assert!((150_000..=170_000).contains(&thin[0][1]), "{thin:?}");
    assert_eq!((thin[1], thin[2]), ([0, 0], [0, 0]), "no temporal layers");
}

const S: u64 = 1_000_000;

/// A receiver of two videos and their audio.
fn two_videos() -> [Demand; 4] {
    [AUDIO, VIDEO, AUDIO, VIDEO]
}

#[test]
fn nothing_is_capped_before_congestion_was_seen() {
    let mut a = Allocator::new();
    assert!(
        a.run(None, 0, &two_videos(), 0)
            .iter()
            .all(|c| *c == LayerCap::Any)
    );
}

#[test]
fn down_at_once_up_after_a_hold_with_a_margin() {
    use LayerCap::*;
    let d = two_videos();
    let mut a = Allocator::new();
    // Everything costs 3.08 Mbit/s; the estimate says 1.5: down at once.
    assert_eq!(
        a.run(Some(1_500_000), 0, &d, 0),
        [Any, UpTo(1), Any, UpTo(1)]
    );
    // Room for the first video's top layer, but only just: no step within the hold,
    // and none without the margin.
    let room = 80_000 + 1_500_000 + 500_000;
    assert_eq!(a.run(Some(room), 0, &d, S), [Any, UpTo(1), Any, UpTo(1)]);
    assert_eq!(
        a.run(Some(room), 0, &d, 3 * S),
        [Any, UpTo(1), Any, UpTo(1)]
    );
    let with_margin = (room as f64 * UP_MARGIN) as u64 + 1;
    assert_eq!(
        a.run(Some(with_margin), 0, &d, 3 * S),
        [Any, Any, Any, UpTo(1)]
    );
}

#[test]
fn held_below_its_best_it_tries_and_backs_off_when_a_try_fails() {
    use LayerCap::*;
    let d = two_videos();
    let mut a = Allocator::new();
    let est = 1_200_000; // both middle layers fit, no top layer
    assert_eq!(a.run(Some(est), 0, &d, 0), [Any, UpTo(1), Any, UpTo(1)]);
    assert_eq!(
        a.run(Some(est), 0, &d, TRY_MIN_US - 1),
        [Any, UpTo(1), Any, UpTo(1)]
    );
    // A try: the first video goes up although the estimate has no room yet.
    let t1 = TRY_MIN_US;
    assert_eq!(a.run(Some(est), 0, &d, t1), [Any, Any, Any, UpTo(1)]);
    assert_eq!(
        a.run(Some(est), 0, &d, t1 + S),
        [Any, Any, Any, UpTo(1)],
        "kept while it settles"
    );
    // Congestion (the estimator lowered its estimate): the try ends, down at once.
    let back = t1 + 2 * S;
    assert_eq!(
        a.run(Some(900_000), 1, &d, back),
        [Any, UpTo(1), Any, UpTo(0)]
    );
    // The next try waits twice as long, and lifts the video furthest below.
    let wait = 2 * TRY_MIN_US;
    assert_eq!(
        a.run(Some(est), 1, &d, back + wait - 1),
        [Any, UpTo(1), Any, UpTo(0)]
    );
    assert_eq!(
        a.run(Some(est), 1, &d, back + wait),
        [Any, UpTo(1), Any, UpTo(1)]
    );
    // This one holds (the estimate grew with what got through): the interval resets.
    let settled = back + wait + TRY_SETTLE_US;
    assert_eq!(
        a.run(Some(1_300_000), 1, &d, settled),
        [Any, UpTo(1), Any, UpTo(1)]
    );
    assert_eq!(a.try_interval, TRY_MIN_US);
}

#[test]
fn a_paused_video_resumes_by_itself() {
    use LayerCap::*;
    let d = two_videos();
    let mut a = Allocator::new();
    // Not even the lowest layer fits: it keeps that for a while, then pauses.
    assert_eq!(a.run(Some(250_000), 0, &d, 0), [Any, UpTo(0), Any, UpTo(0)]);
    assert_eq!(
        a.run(Some(250_000), 0, &d, PAUSE_AFTER_US - 1),
        [Any, UpTo(0), Any, UpTo(0)]
    );
    assert_eq!(
        a.run(Some(250_000), 0, &d, PAUSE_AFTER_US),
        [Any, UpTo(0), Any, Paused]
    );
    let room = ((80_000 + 300_000) as f64 * UP_MARGIN) as u64 + 1;
    assert_eq!(
        a.run(Some(room), 0, &d, PAUSE_AFTER_US + UP_HOLD_US),
        [Any, UpTo(0), Any, UpTo(0)]
    );
}

#[test]
fn a_try_ends_at_the_first_congestion() {
    use LayerCap::*;
    let d = two_videos();
    let mut a = Allocator::new();
    let est = 1_200_000;
    a.run(Some(est), 0, &d, 0);
    assert_eq!(
        a.run(Some(est), 0, &d, TRY_MIN_US),
        [Any, Any, Any, UpTo(1)]
    );
    // The estimate hardly moved, but the estimator saw a queue grow: back down.
    assert_eq!(
        a.run(Some(1_150_000), 1, &d, TRY_MIN_US + 300_000),
        [Any, UpTo(1), Any, UpTo(1)]
    );
    assert_eq!(a.try_interval, 2 * TRY_MIN_US);
    assert_eq!(a.take_proven(), None);
}

/// A narrow link: the speaker's camera has its lowest layer whole, the other camera its
/// base temporal layer; the speaker's next layer can never pass. A probe for it finds no
/// room; the next asks for the cheapest step (the other camera's next temporal layer),
/// and when that finds room the other camera goes up, instead of staying at a quarter
/// of its frame rate while probes for the speaker fail.
#[test]
fn after_a_probe_found_no_room_the_next_asks_for_the_cheapest_step() {
    use LayerCap::*;
    let thin = |d: Demand| Demand {
        thin: [[40_000, 90_000], [0; 2], [0; 2]],
        ..d
    };
    let speaker = Demand {
        speaker: true,
        ..thin(VIDEO)
    };
    let d = [AUDIO, speaker, AUDIO, thin(VIDEO)];
    let base = Frames { layer: 0, tid: 0 };
    let mut a = Allocator::new();
    a.set_way_up(WayUp::Probe);
    let est = 300_000;
    assert_eq!(a.run(Some(est), 0, &d, 0), [Any, UpTo(0), Any, base]);
    // The first probe is for the speaker's next layer: at most twice the estimate.
    a.run(Some(est), 0, &d, UP_HOLD_US);
    assert_eq!(a.take_probe(), Some(2 * est));
    a.probe_done(false, UP_HOLD_US + S);
    // It found no room: the next one is for the other camera's next temporal layer.
    let next = UP_HOLD_US + S + 2 * PROBE_MIN_US;
    a.run(Some(est), 0, &d, next);
    assert_eq!(a.take_probe(), probe_for(80_000 + 150_000 + 90_000));
    // It found room (the estimator raised the estimate with it): the other camera up.
    a.probe_done(true, next + S);
    assert_eq!(
        a.run(Some(390_000), 0, &d, next + S),
        [Any, UpTo(0), Any, Frames { layer: 0, tid: 1 }]
    );
    // And the probe after a success is for the first in priority again.
    a.run(Some(390_000), 0, &d, next + S + PROBE_AGAIN_US);
    assert_eq!(a.take_probe(), Some(2 * 390_000));
}

/// The rate of a probe for a step that needs `bps` in all: with the margin and a little
/// beyond.
fn probe_for(bps: u64) -> Option<u64> {
    Some((bps as f64 * UP_MARGIN * PROBE_BEYOND) as u64)
}

#[test]
fn a_probeable_path_goes_up_only_after_a_probe_found_room() {
    use LayerCap::*;
    let d = two_videos();
    let mut a = Allocator::new();
    a.set_way_up(WayUp::Probe);
    let est = 1_200_000; // both middle layers fit, no top layer
    assert_eq!(a.run(Some(est), 0, &d, 0), [Any, UpTo(1), Any, UpTo(1)]);
    assert_eq!(
        a.take_probe(),
        None,
        "not within the hold after a step down"
    );
    // After the hold: a probe at twice the estimate (all at their best with the
    // margin would be more), and no try of a layer.
    assert_eq!(
        a.run(Some(est), 0, &d, UP_HOLD_US),
        [Any, UpTo(1), Any, UpTo(1)]
    );
    assert_eq!(a.take_probe(), Some(2 * est));
    assert_eq!(a.take_probe(), None, "asked once");
    a.run(Some(est), 0, &d, UP_HOLD_US + S);
    assert_eq!(a.take_probe(), None, "one at a time");
    // It found no room: the next waits PROBE_MIN_US twice over, then longer each time.
    let mut ended = UP_HOLD_US + S;
    a.probe_done(false, ended);
    for wait in [
        2 * PROBE_MIN_US,
        4 * PROBE_MIN_US,
        PROBE_MAX_US,
        PROBE_MAX_US,
    ] {
        a.run(Some(est), 0, &d, ended + wait - 1);
        assert_eq!(a.take_probe(), None);
        a.run(Some(est), 0, &d, ended + wait);
        assert!(a.take_probe().is_some(), "after {wait} µs");
        ended += wait;
        a.probe_done(false, ended);
    }
    // The estimate grew meanwhile, but without a probe that found room, no step up.
    let raised = 2_400_000;
    assert_eq!(
        a.run(Some(raised), 0, &d, ended + 1),
        [Any, UpTo(1), Any, UpTo(1)]
    );
    // One finds room (the estimator raised the estimate with it): up at once, and
    // the next probe follows soon, at what the next step needs (the other video at
    // its best) with the margin and a little beyond.
    a.probe_done(true, ended);
    assert_eq!(a.run(Some(raised), 0, &d, ended), [Any, Any, Any, UpTo(1)]);
    a.run(Some(raised), 0, &d, ended + PROBE_AGAIN_US);
    assert_eq!(a.take_probe(), probe_for(80_000 + 1_500_000 + 1_500_000));
    // With room for everything, nothing is held and nothing probed.
    a.probe_done(true, ended + PROBE_AGAIN_US);
    assert_eq!(
        a.run(Some(4_000_000), 0, &d, ended + 2 * PROBE_AGAIN_US),
        [Any, Any, Any, Any]
    );
    a.run(Some(4_000_000), 0, &d, ended + 3 * PROBE_AGAIN_US);
    assert_eq!(a.take_probe(), None);
}

#[test]
fn a_video_is_paused_only_after_two_seconds_short_in_a_row() {
    use LayerCap::*;
    let d = two_videos();
    let mut a = Allocator::new();
    let one = 80_000 + 150_000 + 10_000; // one lowest layer fits, not two
    assert_eq!(a.run(Some(one), 0, &d, 0), [Any, UpTo(0), Any, UpTo(0)]);
    assert_eq!(
        a.run(Some(one), 0, &d, PAUSE_AFTER_US),
        [Any, UpTo(0), Any, Paused]
    );
    // Both fit again for a while; short again later: the wait starts over.
    let t = 2 * PAUSE_AFTER_US;
    assert_eq!(
        a.run(Some(1_000_000), 0, &d, t),
        [Any, UpTo(1), Any, UpTo(0)]
    );
    let later = t + 5 * PAUSE_AFTER_US;
    assert_eq!(
        a.run(Some(one), 0, &d, later),
        [Any, UpTo(0), Any, UpTo(0)],
        "both keep their lowest layer for a while"
    );
    assert_eq!(
        a.run(Some(one), 0, &d, later + PAUSE_AFTER_US),
        [Any, UpTo(0), Any, Paused]
    );
}

/// Chrome's camera in three temporal layers (7.5, 15 and 30 frames a second).
const TEMPORAL: Demand = Demand {
    thin: [[40_000, 80_000], [130_000, 260_000], [400_000, 800_000]],
    ..VIDEO
};

#[test]
fn temporal_layers_are_finer_steps_below_each_lowest_layer() {
    use LayerCap::*;
    let f = |tid| Frames { layer: 0, tid };
    let d = [AUDIO, TEMPORAL, AUDIO, TEMPORAL];
    // Two lowest layers in full do not fit, two at 15 frames a second do: both play
    // rather than one paused.
    assert_eq!(run(80_000 + 2 * 80_000, &d), [Any, f(1), Any, f(1)]);
    assert_eq!(run(80_000 + 2 * 40_000, &d), [Any, f(0), Any, f(0)]);
    assert_eq!(run(80_000 + 40_000, &d), [Any, f(0), Any, Paused]);
    // Up the ladder in turn: each a frame rate more, then each its lowest layer whole.
    assert_eq!(run(80_000 + 80_000 + 40_000, &d), [Any, f(1), Any, f(0)]);
    assert_eq!(
        run(80_000 + 150_000 + 80_000, &d),
        [Any, UpTo(0), Any, f(1)]
    );
    assert_eq!(run(80_000 + 300_000, &d), [Any, UpTo(0), Any, UpTo(0)]);
    assert_eq!(run(10_000_000, &d), [Any, Any, Any, Any]);
    // The costs behind it.
    assert_eq!(TEMPORAL.cost(f(0)), 40_000);
    assert_eq!(TEMPORAL.cost(Frames { layer: 1, tid: 1 }), 260_000);
    assert_eq!(
        VIDEO.cost(f(0)),
        150_000,
        "no temporal layers: the layer in full"
    );
    assert!(rank(f(0)) > rank(Paused) && rank(f(1)) < rank(UpTo(0)));
}
