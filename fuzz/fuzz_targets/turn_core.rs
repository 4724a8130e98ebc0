//! The TURN core with state: a sequence of operations read from the input — raw
//! datagrams from four clients, authenticated requests (Allocate, Refresh,
//! CreatePermission, ChannelBind, Send) built and signed here with fuzzed fields so that
//! the fuzzer gets past MESSAGE-INTEGRITY, datagrams from peers to relays, ChannelData,
//! clock jumps and sweeps. No panics; every reply is well-formed STUN; every packet to
//! send lies inside the buffer. Run with `cargo fuzz run turn_core` in `fuzz/`.
#![no_main]

use std::net::SocketAddr;

use confnode::stun::message::{Class, Message, Writer, attr, long_term_key, method};
use confnode::turn::server::{Action, Clock};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{PASSWORD, REALM, Relays, USER, client};

/// Room in front of a datagram for the core's framing (as the data plane keeps).
const HEADROOM: usize = 64;

fn peer(b: u8) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, b % 8], 5_000 + u16::from(b % 3)))
}

/// Checks what the core asks to send, and keeps a NONCE it hands out.
fn check(action: Action, buf: &[u8], nonce: &mut Vec<u8>) {
    match action {
        Action::Reply(n) => {
            let reply = Message::parse(&buf[..n]).expect("replies are well-formed STUN");
            if let Some(v) = reply.get(attr::NONCE) {
                *nonce = v.to_vec();
            }
        }
        Action::ToPeer { start, len, .. } | Action::ToClient { start, len, .. } => {
            assert!(start + len <= buf.len());
        }
        Action::Drop(_) => {}
    }
}

/// An authenticated request of `method` with fields from `f`.
fn request(out: &mut [u8], nonce: &[u8], tid: u8, f: &[u8]) -> Option<usize> {
    let b = |i: usize| f.get(i).copied().unwrap_or(0);
    let m = [
        method::ALLOCATE,
        method::REFRESH,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
        method::SEND,
    ][usize::from(b(0)) % 5];
    let class = if m == method::SEND {
        Class::Indication
    } else {
        Class::Request
    };
    let mut w = Writer::new(out, m, class, &[tid; 12]).ok()?;
    if m == method::ALLOCATE {
        w.add_u32(
            attr::REQUESTED_TRANSPORT,
            u32::from(b(1) % 2 * 11 + 6) << 24,
        )
        .ok()?;
        if b(2) & 1 == 1 {
            w.add(attr::DONT_FRAGMENT, &[]).ok()?;
        }
    }
    if b(2) & 2 == 2 {
        w.add_u32(attr::LIFETIME, u32::from(b(3)) * 60).ok()?;
    }
    if matches!(
        m,
        method::CREATE_PERMISSION | method::CHANNEL_BIND | method::SEND
    ) {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer(b(4))).ok()?;
    }
    if m == method::CHANNEL_BIND {
        let channel = 0x4000 + u32::from(b(5) % 8);
        w.add_u32(attr::CHANNEL_NUMBER, channel << 16).ok()?;
    }
    if m == method::SEND {
        w.add(attr::DATA, f.get(6..).unwrap_or_default()).ok()?;
        return Some(w.finish());
    }
    w.add(attr::USERNAME, USER.as_bytes()).ok()?;
    w.add(attr::REALM, REALM.as_bytes()).ok()?;
    w.add(attr::NONCE, nonce).ok()?;
    let key = long_term_key(USER.as_bytes(), REALM.as_bytes(), PASSWORD.as_bytes());
    w.add_integrity(&key).ok()?;
    w.add_fingerprint().ok()?;
    Some(w.finish())
}

fuzz_target!(|data: &[u8]| {
    let bandwidth = if data.first() == Some(&0) { 20_000 } else { 0 };
    let stream = data.get(1).is_some_and(|b| b & 1 == 1);
    let mut core = common::core(stream, bandwidth);
    let mut relays = Relays::default();
    let mut clock = Clock {
        mono_ms: 10_000_000,
        unix: 1_750_000_000,
    };
    let mut nonce = Vec::new();
    let mut buf = vec![0u8; 2048];
    for (i, op) in data.split(|&b| b == 0xff).enumerate() {
        let Some((&kind, rest)) = op.split_first() else {
            continue;
        };
        let who = client(kind >> 3);
        let tid = i as u8;
        match kind & 7 {
            // Raw bytes from a client (STUN, ChannelData or garbage).
            0 | 1 => {
                let n = rest.len().min(1500);
                buf[..n].copy_from_slice(&rest[..n]);
                let a = core.handle_client(clock, who, &mut buf, n, &mut relays);
                check(a, &buf, &mut nonce);
            }
            // A signed request built from the fields.
            2 | 3 => {
                let Some(n) = request(&mut buf, &nonce, tid, rest) else {
                    continue;
                };
                let a = core.handle_client(clock, who, &mut buf, n, &mut relays);
                check(a, &buf, &mut nonce);
            }
            // A datagram from a peer to a relay.
            4 => {
                let Some((&r, payload)) = rest.split_first() else {
                    continue;
                };
                let n = payload.len().min(1400);
                buf[HEADROOM..HEADROOM + n].copy_from_slice(&payload[..n]);
                let from = peer(r >> 3);
                let a = core.handle_peer(clock, usize::from(r & 7), from, &mut buf, HEADROOM, n);
                check(a, &buf, &mut nonce);
            }
            // Time passes (up to 2 h), sometimes with a sweep.
            5 => {
                let secs = u64::from(rest.first().copied().unwrap_or(1)) * 30;
                clock.mono_ms += secs * 1000;
                clock.unix += secs;
            }
            _ => core.sweep(clock, &mut relays),
        }
    }
});
