//! The SFU's datagram entry with state: a room on the simulated network of the tests
//! (tests/common/sim.rs) where Alice publishes and Bob and Carol receive on two workers,
//! all connected once per process. Each input is a run of datagrams that one of them
//! (or someone spoofing their address) sends the node: raw bytes (STUN checks, DTLS,
//! junk), or RTP and RTCP the fuzzer writes in plain, encrypted with the sender's real
//! SRTP keys so that what follows decryption (track, forwarder, feedback) is reached.
//! Whatever comes in, the node must not panic, and the call goes on.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

#[path = "../../tests/common/sim.rs"]
#[allow(dead_code)]
mod sim;

use sim::Sim;

thread_local! {
    static ROOM: RefCell<Option<(Sim, [usize; 3])>> = const { RefCell::new(None) };
}

fn room() -> (Sim, [usize; 3]) {
    let mut sim = Sim::new(3);
    let alice = sim.publisher("room", "alice", 0);
    let bob = sim.receiver("room", "bob", 0);
    let carol = sim.receiver("room", "carol", 1);
    sim.run_until(2_000_000);
    for c in [alice, bob, carol] {
        assert!(sim.clients[c].connected(), "the fuzz room did not connect");
    }
    (sim, [alice, bob, carol])
}

fuzz_target!(|data: &[u8]| {
    ROOM.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (sim, who) = cell.get_or_insert_with(room);
        let mut rest = data;
        // Records: a selector byte, a length byte, that many bytes.
        while let [selector, len, tail @ ..] = rest {
            let len = usize::from(*len).min(tail.len());
            let (body, next) = tail.split_at(len);
            rest = next;
            let client = who[usize::from(selector & 0b11) % 3];
            let spoofed = selector & 0b100 != 0;
            let datagram = match (selector >> 3) & 0b11 {
                1 => sim.protect(client, body, false),
                2 => sim.protect(client, body, true),
                _ => Some(body.to_vec()),
            };
            if let Some(d) = datagram {
                sim.inject(client, spoofed, d);
            }
            if selector & 0b10_0000 != 0 {
                let later = sim.now + 20_000;
                sim.run_until(later);
            }
        }
        let later = sim.now + 1_000;
        sim.run_until(later);
        // What the clients received is not kept from one input to the next.
        for c in &mut sim.clients {
            c.rtp.clear();
            c.rtcp.clear();
        }
    });
});
