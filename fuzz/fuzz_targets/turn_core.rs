//! The TURN core with state: a sequence of operations read from the input — raw
//! datagrams from four clients, authenticated requests (Allocate, Refresh,
//! CreatePermission, ChannelBind, Send) built and signed here with fuzzed fields so that
//! the fuzzer gets past MESSAGE-INTEGRITY, datagrams from peers to relays, ChannelData,
//! clock jumps and sweeps. No panics; every reply is well-formed STUN; every packet to
//! send lies inside the buffer. Run with `cargo fuzz run turn_core` in `fuzz/`.
#![no_main]

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use confnode::config::PortRange;
use confnode::metrics::TurnMetrics;
use confnode::stun::message::{Class, Message, Writer, attr, long_term_key, method};
use confnode::turn::auth::Auth;
use confnode::turn::policy::PeerPolicy;
use confnode::turn::server::{
    Action, ClientKey, Clock, HeldPort, Limits, RelayId, RelayIo, Shared, TurnCore,
};
use libfuzzer_sys::fuzz_target;

const REALM: &str = "fuzz";
const USER: &str = "alice";
const PASSWORD: &str = "secret";
/// Room in front of a datagram for the core's framing (as the data plane keeps).
const HEADROOM: usize = 64;

/// Relay "sockets" that are only numbers.
#[derive(Default)]
struct Relays {
    next: RelayId,
}

impl RelayIo for Relays {
    fn open(&mut self, _addr: SocketAddr) -> io::Result<RelayId> {
        if self.next >= 64 {
            return Err(io::Error::other("no more relays in this run"));
        }
        self.next += 1;
        Ok(self.next - 1)
    }
    // Held ports are only their addresses: EVEN-PORT reservations and their adoption
    // are fuzzed too.
    fn reserve(&mut self, addr: SocketAddr) -> io::Result<HeldPort> {
        Ok(HeldPort::new(addr))
    }
    fn adopt(&mut self, held: HeldPort) -> io::Result<RelayId> {
        let addr: SocketAddr = held
            .into_inner()
            .ok_or_else(|| io::Error::other("not a held port of this run"))?;
        self.open(addr)
    }
    fn close(&mut self, _id: RelayId) {}
}

fn client(k: u8) -> ClientKey {
    ClientKey {
        listener: 0,
        addr: SocketAddr::from(([198, 51, 100, k % 4 + 1], 40_000 + u16::from(k % 4))),
    }
}

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
    let limits = Limits {
        max_allocations_per_user: 8,
        max_permissions: 8,
        max_channels: 8,
        bandwidth: if data.first() == Some(&0) { 20_000 } else { 0 },
        ..Limits::default()
    };
    let shared = Arc::new(Shared::new(
        limits,
        PortRange {
            first: 50_000,
            last: 50_100,
        },
        Some([192, 0, 2, 10].into()),
        None,
        [192, 0, 2, 10].into(),
        None,
        PeerPolicy::new(false, &[], &[], &[]),
        TurnMetrics::default(),
    ));
    let mut users = BTreeMap::new();
    users.insert(USER.to_owned(), PASSWORD.to_owned());
    let auth = Auth::new(REALM, &users, &["rest secret".to_owned()], [7; 32]);
    let stream = data.get(1).is_some_and(|b| b & 1 == 1);
    let mut core = TurnCore::new(shared, auth, stream, 1);
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
