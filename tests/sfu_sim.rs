//! The SFU core on a simulated network (tests/common/sim.rs): no socket, no sleep,
//! simulated time. A publisher and receivers on two workers, through links with delay,
//! reordering and loss.

mod common;

use common::sim::{Link, Sim};
use confnode::sfu::rtcp::write_remb;

const SSRC: u32 = 0xA0D1_0001;
/// Opus at 50 packets a second.
const FRAME_US: u64 = 20_000;

/// Alice publishes on worker 0; Bob receives on worker 0 over a clean link, Carol on
/// worker 1 over one with 40 ms of delay, 15 ms of jitter and 5 % loss. Ten seconds of
/// audio, then five of silence (a muted microphone).
#[test]
fn audio_reaches_receivers_on_both_workers_through_delay_reordering_and_loss() {
    let mut sim = Sim::new(7);
    let alice = sim.publisher("room", "alice", 0);
    let bob = sim.receiver("room", "bob", 0);
    let carol = sim.receiver("room", "carol", 1);
    sim.clients[carol].down = Link {
        delay_us: 40_000,
        jitter_us: 15_000,
        loss_per_mille: 50,
        ..Link::CLEAN
    };
    sim.run_until(2_000_000);
    for c in [alice, bob, carol] {
        assert!(
            sim.clients[c].connected(),
            "{} has no keys",
            sim.clients[c].name
        );
    }

    let start = sim.now;
    for i in 0..500u64 {
        assert!(sim.send_rtp(alice, SSRC, i as u16, (i * 960) as u32, &[0x55; 80]));
        sim.run_until(start + (i + 1) * FRAME_US);
    }
    sim.run_until(sim.now + 1_000_000);
    let spoken = sim.now;

    // Bob heard every packet, in order, as one stream with continuous numbers.
    let heard = &sim.clients[bob].rtp;
    assert_eq!(heard.len(), 500, "Bob");
    assert!(
        heard
            .iter()
            .all(|r| r.ssrc == heard[0].ssrc && r.payload_type == 111)
    );
    assert!(
        heard
            .windows(2)
            .all(|w| w[1].seq == w[0].seq.wrapping_add(1)
                && w[1].timestamp == w[0].timestamp.wrapping_add(960)),
        "Bob's stream has gaps or jumps"
    );
    // Carol, on the other worker behind the bad link, lost about 5 % and got the rest
    // out of order, within her own stream's 500 numbers (each receiver has its own
    // number space), each once, the timestamps following the numbers.
    let got = &sim.clients[carol].rtp;
    assert!((440..=495).contains(&got.len()), "Carol got {}", got.len());
    assert!(
        got.windows(2).any(|w| w[1].seq != w[0].seq.wrapping_add(1)),
        "no reordering seen"
    );
    let first = got[0];
    let offsets: Vec<i32> = got
        .iter()
        .map(|r| i32::from(r.seq.wrapping_sub(first.seq) as i16))
        .collect();
    let (lo, hi) = (offsets.iter().min().unwrap(), offsets.iter().max().unwrap());
    assert!(hi - lo < 500, "numbers spread over {}", hi - lo);
    let mut unique = offsets.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "duplicates");
    assert!(
        got.iter()
            .zip(&offsets)
            .all(|(r, &o)| r.timestamp == first.timestamp.wrapping_add((o * 960) as u32))
    );

    // Reports flow both ways about once a second, and go on through the silence.
    sim.run_until(spoken + 5_000_000);
    let rr_to_alice = |until: u64| {
        sim.clients[alice]
            .rtcp
            .iter()
            .filter(|&&(t, at)| t == 201 && at <= until)
            .count()
    };
    let sr_to = |c: usize, from: u64| {
        sim.clients[c]
            .rtcp
            .iter()
            .filter(|&&(t, at)| t == 200 && at > from)
            .count()
    };
    assert!(
        rr_to_alice(spoken) >= 9,
        "receiver reports to Alice: {}",
        rr_to_alice(spoken)
    );
    assert!(
        rr_to_alice(u64::MAX) - rr_to_alice(spoken) >= 4,
        "no receiver reports while Alice is silent"
    );
    assert!(
        sr_to(bob, start) >= 9,
        "sender reports to Bob: {}",
        sr_to(bob, start)
    );
    assert!(
        sr_to(carol, start) >= 8,
        "sender reports to Carol: {}",
        sr_to(carol, start)
    );
    assert!(sim.lost > 0);
}

/// What `client` received from `from` (µs) on: the share of its video packets that
/// came from each layer, and the longest gap between two packets.
fn layers_and_gap(sim: &Sim, client: usize, from: u64) -> ([f64; 3], u64) {
    let got: Vec<_> = sim.clients[client]
        .rtp
        .iter()
        .filter(|r| r.at >= from && r.layer.is_some())
        .collect();
    let mut share = [0.0; 3];
    for r in &got {
        if let Some(l) = r.layer {
            share[usize::from(l)] += 1.0 / got.len() as f64;
        }
    }
    let gap = got
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or(u64::MAX);
    (share, gap)
}

/// How long after `since` (µs) `client` first got a packet of `layer`, if it did.
fn first_on_layer(sim: &Sim, client: usize, since: u64, layer: u8) -> Option<u64> {
    sim.clients[client]
        .rtp
        .iter()
        .find(|r| r.at >= since && r.layer == Some(layer))
        .map(|r| r.at - since)
}

/// The stream a receiver got is one stream whatever layer fed it: one SSRC, numbers
/// that only go forward (by one where nothing was lost on the way), timestamps that
/// never go back, and every change of layer at a keyframe of the new layer (where the
/// link lost nothing between: a keyframe's first packet may be what it lost).
fn assert_clean_switches(sim: &Sim, client: usize, lossless: bool) {
    let name = &sim.clients[client].name;
    let got: Vec<_> = sim.clients[client]
        .rtp
        .iter()
        .filter(|r| r.layer.is_some())
        .collect();
    assert!(!got.is_empty(), "{name} got no video");
    for w in got.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(a.ssrc, b.ssrc, "{name}: one SSRC");
        let step = b.seq.wrapping_sub(a.seq);
        assert!(
            (1..0x8000).contains(&step),
            "{name}: {} after {}",
            b.seq,
            a.seq
        );
        if lossless {
            assert_eq!(step, 1, "{name}: {} after {}", b.seq, a.seq);
        }
        assert!(
            b.timestamp.wrapping_sub(a.timestamp) < 0x8000_0000,
            "{name}: timestamp {} after {}",
            b.timestamp,
            a.timestamp
        );
        if a.layer != b.layer && step == 1 {
            assert!(
                b.keyframe,
                "{name}: layer {:?} → {:?} without a keyframe",
                a.layer, b.layer
            );
        }
    }
}

/// Alice's camera sends three simulcast layers (150 kbit/s, 500 kbit/s, 1.5 Mbit/s).
/// Bob receives over a clean link, Carol (on the other worker) behind 400 kbit/s with
/// a 200 ms queue. From Carol's transport-cc feedback the node finds her link's limit
/// and sends her the lowest layer, which flows without a gap of a second (now and
/// then it tries the next one up, briefly), while Bob keeps the top layer. When
/// Carol's link is clear again, she is back on the top layer within 15 s. Every
/// switch is clean.
#[test]
fn each_receiver_gets_the_layer_its_own_link_carries() {
    let mut sim = Sim::new(11);
    let alice = sim.video_publisher("room", "alice", 0);
    let bob = sim.receiver("room", "bob", 0);
    let carol = sim.receiver("room", "carol", 1);
    sim.clients[carol].down = Link {
        rate_bps: 400_000,
        queue_us: 200_000,
        ..Link::CLEAN
    };
    sim.run_until(2_000_000);
    sim.video_for(alice, 20, |_| {});
    let settled = sim.now - 10_000_000;
    let (carol_share, carol_gap) = layers_and_gap(&sim, carol, settled);
    let (bob_share, bob_gap) = layers_and_gap(&sim, bob, settled);
    assert!(
        carol_share[0] >= 0.85 && carol_share[2] == 0.0,
        "Carol's layers over the last 10 s: {carol_share:?}"
    );
    assert!(carol_gap < 1_000_000, "Carol: a gap of {carol_gap} µs");
    assert!(
        bob_share[2] > 0.999,
        "Bob keeps the top layer: {bob_share:?}"
    );
    assert!(bob_gap < 100_000, "Bob: a gap of {bob_gap} µs");

    sim.clients[carol].down = Link::CLEAN;
    let lifted = sim.now;
    sim.video_for(alice, 20, |_| {});
    let back = first_on_layer(&sim, carol, lifted, 2);
    assert!(
        back.is_some_and(|us| us <= 15_000_000),
        "Carol back on the top layer after {back:?} µs"
    );
    let (share, _) = layers_and_gap(&sim, carol, sim.now - 5_000_000);
    assert!(share[2] > 0.999, "and stays there: {share:?}");
    assert_clean_switches(&sim, bob, true);
    assert_clean_switches(&sim, carol, false);
}

/// Bob asks for audio only: Alice's video stops reaching him (Carol keeps it) while
/// Dave's voice still does, and the node does not count it as a video paused for
/// bandwidth. When he wants video again, it comes back, starting at a keyframe.
#[test]
fn a_receiver_that_asks_for_audio_only_gets_voices_and_no_video() {
    let mut sim = Sim::new(13);
    let alice = sim.video_publisher("room", "alice", 0);
    let dave = sim.publisher("room", "dave", 1);
    let bob = sim.receiver("room", "bob", 0);
    let carol = sim.receiver("room", "carol", 1);
    sim.run_until(2_000_000);
    let mut spoken = 0u16;
    let mut media = |sim: &mut Sim, seconds: u64| {
        sim.video_for(alice, seconds, |sim| {
            for _ in 0..2 {
                let ts = u32::from(spoken) * 960;
                assert!(sim.send_rtp(dave, SSRC, spoken, ts, &[0x55; 80]));
                spoken = spoken.wrapping_add(1);
            }
        });
    };
    let video_since = |sim: &Sim, c: usize, t: u64| {
        sim.clients[c]
            .rtp
            .iter()
            .filter(|r| r.at >= t && r.layer.is_some())
            .count()
    };
    let voice_since = |sim: &Sim, c: usize, t: u64| {
        sim.clients[c]
            .rtp
            .iter()
            .filter(|r| r.at >= t && r.payload_type == 111)
            .count()
    };
    media(&mut sim, 3);
    assert!(video_since(&sim, bob, 0) > 0, "Bob sees Alice first");

    sim.sessions.set_audio_only("room", "bob", true);
    let asked = sim.now;
    media(&mut sim, 5);
    let settled = asked + 500_000;
    assert_eq!(video_since(&sim, bob, settled), 0, "no video for Bob");
    assert!(
        voice_since(&sim, bob, settled) >= 200,
        "Bob still hears Dave"
    );
    assert!(video_since(&sim, carol, settled) > 100, "Carol still sees");
    assert!(
        sim.sessions.paused_videos().is_empty(),
        "asked for, not for bandwidth: {:?}",
        sim.sessions.paused_videos()
    );

    sim.sessions.set_audio_only("room", "bob", false);
    let back = sim.now;
    media(&mut sim, 3);
    let first = sim.clients[bob]
        .rtp
        .iter()
        .find(|r| r.at >= back && r.layer.is_some())
        .copied();
    let first = first.expect("video again");
    assert!(first.keyframe, "starting at a keyframe: {first:?}");
    assert!(first.at - back < 1_000_000, "within a second: {first:?}");
}

/// Carol's browser estimates her link itself and says so in REMB only (no transport-cc
/// feedback): at 300 kbit/s she gets Alice's lowest layer, at 5 Mbit/s the top one
/// again within a few seconds; Bob, with transport-cc over a clean link, keeps the top.
#[test]
fn a_receiver_that_sends_only_remb_gets_what_its_remb_says() {
    let mut sim = Sim::new(17);
    let alice = sim.video_publisher("room", "alice", 0);
    let bob = sim.receiver("room", "bob", 0);
    let carol = sim.receiver("room", "carol", 1);
    sim.clients[carol].without_transport_feedback();
    sim.run_until(2_000_000);
    let frames = |sim: &mut Sim, seconds: u64, remb: u64| {
        let mut next_remb = sim.now;
        sim.video_for(alice, seconds, |sim| {
            if sim.now >= next_remb {
                // As Chrome's receive-side estimator does, now and then.
                let mut buf = [0u8; 64];
                let n = write_remb(&mut buf, 0xC0FFEE, remb, &[1]).expect("REMB");
                let data = sim.protect(carol, &buf[..n], true).expect("keys");
                sim.inject(carol, false, data);
                next_remb = sim.now + 500_000;
            }
        });
    };
    frames(&mut sim, 8, 300_000);
    let (carol_share, _) = layers_and_gap(&sim, carol, sim.now - 5_000_000);
    assert!(
        carol_share[0] > 0.999,
        "Carol at 300 kbit/s: {carol_share:?}"
    );
    let lifted = sim.now;
    frames(&mut sim, 8, 5_000_000);
    let back = first_on_layer(&sim, carol, lifted, 2);
    assert!(
        back.is_some_and(|us| us <= 5_000_000),
        "Carol back on the top layer after {back:?} µs"
    );
    let (bob_share, _) = layers_and_gap(&sim, bob, lifted - 5_000_000);
    assert!(
        bob_share[2] > 0.999,
        "Bob keeps the top layer: {bob_share:?}"
    );
    assert_clean_switches(&sim, carol, true);
}

/// Carol's link (120 kbit/s) cannot carry even Alice's lowest layer at its full frame
/// rate (150 kbit/s), but that layer's lower temporal layers fit: she gets it at half
/// the frame rate (TIDs 0 and 1 of Chrome's three) instead of a paused video, as one
/// stream without a gap in its numbers or its picture ids beyond what the link lost.
#[test]
fn a_link_too_thin_for_the_lowest_layer_gets_it_at_a_lower_frame_rate() {
    let mut sim = Sim::new(19);
    let alice = sim.video_publisher("room", "alice", 0);
    let carol = sim.receiver("room", "carol", 1);
    sim.clients[carol].down = Link {
        rate_bps: 120_000,
        queue_us: 200_000,
        ..Link::CLEAN
    };
    sim.run_until(2_000_000);
    sim.video_for(alice, 25, |_| {});
    let from = sim.now - 10_000_000;
    let got: Vec<_> = sim.clients[carol]
        .rtp
        .iter()
        .filter(|r| r.at >= from && r.layer.is_some())
        .copied()
        .collect();
    let mut frames: Vec<u32> = got.iter().map(|r| r.timestamp).collect();
    frames.dedup();
    assert!(
        (100..=200).contains(&frames.len()),
        "about 15 frames a second over the last 10 s: {}",
        frames.len()
    );
    assert!(got.iter().all(|r| r.layer == Some(0) && r.tid <= Some(1)));
    let (_, gap) = layers_and_gap(&sim, carol, from);
    assert!(gap < 1_000_000, "a gap of {gap} µs");
    assert!(sim.sessions.paused_videos().is_empty(), "not paused");
    assert_clean_switches(&sim, carol, false);
    // Picture ids go on by one from frame to frame, as the numbers do where nothing
    // was lost.
    for w in got.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.seq == a.seq.wrapping_add(1) && b.timestamp != a.timestamp {
            let (pa, pb) = (a.picture_id.unwrap_or(0), b.picture_id.unwrap_or(0));
            assert_eq!(pb, (pa + 1) & 0x7FFF, "{a:?} then {b:?}");
        }
    }
}
