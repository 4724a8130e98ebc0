//! The Binding hot path allocates nothing, and no input makes `answer` panic.
//!
//! A counting global allocator (per thread, so the test harness's own threads do not
//! disturb the count) watches 10,000 answers after a warm-up.

use std::hint::black_box;
use std::net::SocketAddr;

use confnode::stun::message::{attr, method};
use confnode::stun::{Class, Message, Verdict, Writer, answer};

mod alloc_counter;

use alloc_counter::allocations;

/// A Binding request, optionally with FINGERPRINT, optionally with an unknown
/// comprehension-required attribute (the 420 path).
fn request(fingerprint: bool, unknown: bool) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let tid = [0x5a; 12];
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &tid).unwrap();
    if unknown {
        w.add(0x7777, b"????").unwrap();
    }
    w.add(attr::SOFTWARE, b"load").unwrap();
    if fingerprint {
        w.add_fingerprint().unwrap();
    }
    let n = w.finish();
    buf[..n].to_vec()
}

#[test]
fn answering_binding_requests_does_not_allocate() {
    let v4: SocketAddr = "198.51.100.20:50000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::20]:50000".parse().unwrap();
    let mut cases = Vec::new();
    for src in [v4, v6] {
        for fingerprint in [false, true] {
            cases.push((request(fingerprint, false), src));
        }
        cases.push((request(true, true), src));
    }
    let mut slot = [0u8; 1500];
    let mut run = |i: usize| {
        let (req, src) = &cases[i % cases.len()];
        slot[..req.len()].copy_from_slice(req);
        let verdict = answer(black_box(&mut slot), req.len(), black_box(*src));
        assert!(matches!(verdict, Verdict::Reply(_)));
        black_box(verdict);
    };
    for i in 0..100 {
        run(i);
    }
    // The counter is live: one allocation shows.
    let before = allocations();
    black_box(Vec::<u8>::with_capacity(8));
    assert_eq!(allocations() - before, 1);

    let before = allocations();
    for i in 0..10_000 {
        run(i);
    }
    let after = allocations();
    assert_eq!(after - before, 0, "heap allocations while answering");
}

/// xorshift64: a tiny deterministic generator, enough to shake the parser.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next() as u8;
        }
    }
}

/// Attribute types that steer `answer` down its different paths.
const INTERESTING: [u16; 10] = [
    attr::SOFTWARE,
    attr::USERNAME,
    attr::CHANGE_REQUEST,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::FINGERPRINT,
    attr::XOR_MAPPED_ADDRESS,
    attr::PRIORITY,
    0x7001,
    0x8fff,
];

/// A message with a plausible header (right top bits, often the cookie, a length that
/// often matches) and random attributes: deep enough to reach the attribute walk.
fn plausible(rng: &mut Rng, out: &mut [u8]) -> usize {
    rng.fill(&mut out[..20]);
    out[0] &= 0x3f;
    if rng.below(4) != 0 {
        out[..2].copy_from_slice(&[0x00, 0x01]); // mostly Binding requests
    }
    if rng.below(4) != 0 {
        out[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
    }
    let mut len = 20;
    for _ in 0..rng.below(6) {
        let typ = INTERESTING[rng.below(INTERESTING.len())];
        let value_len = match rng.below(3) {
            0 => 4,
            1 => 20,
            _ => rng.below(40),
        };
        let padded = (value_len + 3) & !3;
        if len + 4 + padded > out.len() {
            break;
        }
        out[len..len + 2].copy_from_slice(&typ.to_be_bytes());
        out[len + 2..len + 4].copy_from_slice(&(value_len as u16).to_be_bytes());
        rng.fill(&mut out[len + 4..len + 4 + padded]);
        len += 4 + padded;
    }
    let mut length = (len - 20) as u16;
    if rng.below(8) == 0 {
        length ^= 1 << rng.below(16);
    }
    out[2..4].copy_from_slice(&length.to_be_bytes());
    len
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let sources: [SocketAddr; 3] = [
        "192.0.2.1:1".parse().unwrap(),
        "[2001:db8::1]:65535".parse().unwrap(),
        "[::ffff:192.0.2.1]:3478".parse().unwrap(),
    ];
    let valid = request(true, false);
    let mut seen = [0usize; 4];
    let mut slot = [0u8; 1500];
    for i in 0..300_000 {
        let len = match i % 3 {
            // Pure noise of any length, sometimes claiming more than the slot holds.
            0 => {
                let len = rng.below(1600);
                rng.fill(&mut slot[..len.min(1500)]);
                len
            }
            1 => plausible(&mut rng, &mut slot),
            // A valid request with a few bytes flipped.
            _ => {
                slot[..valid.len()].copy_from_slice(&valid);
                for _ in 0..=rng.below(3) {
                    slot[rng.below(valid.len())] ^= 1 << rng.below(8);
                }
                valid.len()
            }
        };
        // Now and then a slot smaller than promised: still no panic.
        let cap = if i % 97 == 0 { rng.below(1500) } else { 1500 };
        let verdict = answer(&mut slot[..cap], len, sources[i % sources.len()]);
        if let Verdict::Reply(n) = verdict {
            assert!(n <= cap);
            assert!(
                Message::parse(&slot[..n]).is_ok(),
                "a reply must be valid STUN"
            );
        }
        seen[match verdict {
            Verdict::Reply(_) => 0,
            Verdict::Indication => 1,
            Verdict::Unhandled => 2,
            Verdict::Malformed => 3,
        }] += 1;
    }
    // The generator must reach every outcome, or it is not testing much.
    assert!(seen.iter().all(|&n| n > 0), "verdict counts {seen:?}");
}
