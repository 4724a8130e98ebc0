//! The SFU core on a simulated network (tests/common/sim.rs): no socket, no sleep,
//! simulated time. A publisher and receivers on two workers, through links with delay,
//! reordering and loss.

mod common;

use common::sim::{Link, Sim};

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
