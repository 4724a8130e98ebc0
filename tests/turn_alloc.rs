//! The TURN relay hot path allocates nothing: ChannelData and Send indications from a
//! client, datagrams from a peer framed as ChannelData or as a Data indication.
//!
//! A counting global allocator (per thread, so the test harness's own threads do not
//! disturb the count) watches 10,000 packets of each kind after a warm-up that sets up
//! the allocation, its channel and its permissions, for a UDP core, a stream (TCP/TLS)
//! core that pads ChannelData, and a core with a bandwidth cap.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use confnode::config::PortRange;
use confnode::metrics::TurnMetrics;
use confnode::net::batch::HEADROOM;
use confnode::stun::message::{attr, long_term_key, method};
use confnode::stun::{Class, Message, Writer};
use confnode::turn::auth::Auth;
use confnode::turn::policy::PeerPolicy;
use confnode::turn::server::{
    Action, ClientKey, Clock, HeldPort, Limits, RelayId, RelayIo, Shared, TurnCore,
};

mod alloc_counter;

use alloc_counter::allocations;

const REALM: &str = "test";
const USER: &str = "user";
const PASS: &str = "pass";
const PACKETS: usize = 10_000;

/// Relay sockets as bare ids.
struct Ids(RelayId);

impl RelayIo for Ids {
    fn open(&mut self, _: SocketAddr) -> io::Result<RelayId> {
        self.0 += 1;
        Ok(self.0)
    }

    fn reserve(&mut self, _: SocketAddr) -> io::Result<HeldPort> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn adopt(&mut self, _: HeldPort) -> io::Result<RelayId> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn close(&mut self, _: RelayId) {}
}

struct Setup {
    core: TurnCore,
    ids: Ids,
    auth: Auth,
    client: ClientKey,
    clock: Clock,
}

impl Setup {
    fn new(stream: bool, bandwidth: u64) -> Setup {
        let shared = Arc::new(Shared::new(
            Limits {
                bandwidth,
                ..Limits::default()
            },
            PortRange {
                first: 50_000,
                last: 59_999,
            },
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            None,
            Ipv4Addr::new(192, 0, 2, 1),
            None,
            PeerPolicy::new(false, &[], &[], &[]),
            TurnMetrics::default(),
        ));
        let mut users = BTreeMap::new();
        users.insert(USER.to_owned(), PASS.to_owned());
        let auth = Auth::new(REALM, &users, &[], [1; 32]);
        Setup {
            core: TurnCore::new(shared, auth.clone(), stream, 42),
            ids: Ids(0),
            auth,
            client: ClientKey {
                listener: 0,
                addr: "198.51.100.1:40000".parse().unwrap(),
            },
            clock: Clock {
                mono_ms: 1_000_000,
                unix: 1_750_000_000,
            },
        }
    }

    /// A signed request, which must succeed.
    fn request(&mut self, method: u16, attrs: impl FnOnce(&mut Writer<'_>)) {
        let mut buf = [0u8; 1024];
        let mut w = Writer::new(&mut buf, method, Class::Request, &[method as u8; 12]).unwrap();
        attrs(&mut w);
        w.add(attr::USERNAME, USER.as_bytes()).unwrap();
        w.add(attr::REALM, REALM.as_bytes()).unwrap();
        w.add(
            attr::NONCE,
            &self.auth.nonce(self.client.addr, self.clock.unix),
        )
        .unwrap();
        let key = long_term_key(USER.as_bytes(), REALM.as_bytes(), PASS.as_bytes());
        w.add_integrity(&key).unwrap();
        w.add_fingerprint().unwrap();
        let len = w.finish();
        let action = self
            .core
            .handle_client(self.clock, self.client, &mut buf, len, &mut self.ids);
        let Action::Reply(n) = action else {
            panic!("no answer: {action:?}")
        };
        let msg = Message::parse(&buf[..n]).unwrap();
        assert_eq!(msg.class(), Class::Success, "method {method:#x}");
    }
}

fn relays_without_allocating(stream: bool, bandwidth: u64) {
    let channel_peer: SocketAddr = "93.184.216.34:5000".parse().unwrap();
    let indication_peer: SocketAddr = "93.184.216.35:5000".parse().unwrap();
    let mut s = Setup::new(stream, bandwidth);
    s.request(method::ALLOCATE, |w| {
        w.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    let relay = s.ids.0;
    s.request(method::CHANNEL_BIND, |w| {
        w.add(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]).unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, channel_peer)
            .unwrap();
    });
    s.request(method::CREATE_PERMISSION, |w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, indication_peer)
            .unwrap()
    });

    let mut channel_data = [0u8; 2048];
    channel_data[..4].copy_from_slice(&[0x40, 0x00, 0, 161]);
    let mut send = [0u8; 2048];
    let mut w = Writer::new(&mut send, method::SEND, Class::Indication, &[7; 12]).unwrap();
    w.add_xor_address(attr::XOR_PEER_ADDRESS, indication_peer)
        .unwrap();
    w.add(attr::DATA, &[0x55; 160]).unwrap();
    let send_len = w.finish();
    let mut slot = [0x55u8; 2048];

    let mut run = |s: &mut Setup, i: usize| {
        s.clock.mono_ms += 1;
        let action = match i % 4 {
            0 => s.core.handle_client(
                s.clock,
                s.client,
                black_box(&mut channel_data),
                4 + 161,
                &mut s.ids,
            ),
            1 => s.core.handle_client(
                s.clock,
                s.client,
                black_box(&mut send),
                send_len,
                &mut s.ids,
            ),
            2 => s.core.handle_peer(
                s.clock,
                relay,
                channel_peer,
                black_box(&mut slot),
                HEADROOM,
                161,
            ),
            _ => s.core.handle_peer(
                s.clock,
                relay,
                indication_peer,
                black_box(&mut slot),
                HEADROOM,
                161,
            ),
        };
        let relayed = match i % 4 {
            0 | 1 => matches!(action, Action::ToPeer { .. }),
            _ => matches!(action, Action::ToClient { .. }),
        };
        assert!(relayed, "packet {i}: {action:?}");
        black_box(action);
    };
    for i in 0..100 {
        run(&mut s, i);
    }
    // The counter is live: one allocation shows.
    let before = allocations();
    black_box(Vec::<u8>::with_capacity(8));
    assert_eq!(allocations() - before, 1);

    let before = allocations();
    for i in 0..4 * PACKETS {
        run(&mut s, i);
    }
    let after = allocations();
    assert_eq!(
        after - before,
        0,
        "heap allocations while relaying (stream {stream}, bandwidth {bandwidth})"
    );
}

#[test]
fn relaying_over_udp_does_not_allocate() {
    relays_without_allocating(false, 0);
}

#[test]
fn relaying_to_a_stream_client_does_not_allocate() {
    relays_without_allocating(true, 0);
}

#[test]
fn relaying_under_a_bandwidth_cap_does_not_allocate() {
    // 100 MB/s: every packet passes, but each is charged.
    relays_without_allocating(false, 100_000_000);
}
