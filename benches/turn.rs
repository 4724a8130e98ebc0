//! The TURN relay hot path through the sans-IO core alone, no sockets: what one relayed
//! packet costs in `TurnCore` (the system calls around it are `turn_load`'s business).
//!
//!     cargo bench --bench turn
//!
//! - `client_to_peer/channel_data`: `handle_client` on a 164-byte ChannelData message
//!   (160 bytes of data) on a bound channel, answered with `Action::ToPeer`;
//! - `client_to_peer/send_indication`: the same 160 bytes in a Send indication;
//! - `peer_to_client/channel_data`: `handle_peer` on 160 bytes from a peer with a
//!   channel, framed as ChannelData in the headroom;
//! - `peer_to_client/data_indication`: the same from a peer with a permission and no
//!   channel, framed as a Data indication.
//!
//! Each iteration is one packet, so criterion's time per iteration is the time per packet.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const REALM: &str = "bench";
const USER: &str = "user";
const PASS: &str = "pass";
const DATA_LEN: usize = 160;
const CHANNEL: u16 = 0x4000;
const CLOCK: Clock = Clock {
    mono_ms: 1_000_000,
    unix: 1_750_000_000,
};

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

/// A core with one allocation: a channel to `channel_peer`, a permission for
/// `indication_peer`.
struct Relay {
    core: TurnCore,
    ids: Ids,
    client: ClientKey,
    relay: RelayId,
    channel_peer: SocketAddr,
    indication_peer: SocketAddr,
}

impl Relay {
    fn new() -> Relay {
        let policy = PeerPolicy::new(false, &[], &[], &[]);
        let shared = Arc::new(Shared::new(
            Limits::default(),
            PortRange {
                first: 50_000,
                last: 59_999,
            },
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            None,
            Ipv4Addr::new(192, 0, 2, 1),
            None,
            policy,
            TurnMetrics::default(),
        ));
        let mut users = BTreeMap::new();
        users.insert(USER.to_owned(), PASS.to_owned());
        let auth = Auth::new(REALM, &users, &[], [1; 32]);
        let mut relay = Relay {
            core: TurnCore::new(shared, auth.clone(), false, 42),
            ids: Ids(0),
            client: ClientKey {
                listener: 0,
                addr: "198.51.100.1:40000".parse().unwrap(),
            },
            relay: 0,
            channel_peer: "93.184.216.34:5000".parse().unwrap(),
            indication_peer: "93.184.216.35:5000".parse().unwrap(),
        };
        let (channel_peer, indication_peer) = (relay.channel_peer, relay.indication_peer);
        relay.request(&auth, method::ALLOCATE, |w| {
            w.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24).unwrap()
        });
        relay.relay = relay.ids.0;
        relay.request(&auth, method::CHANNEL_BIND, |w| {
            w.add(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]).unwrap();
            w.add_xor_address(attr::XOR_PEER_ADDRESS, channel_peer)
                .unwrap();
        });
        relay.request(&auth, method::CREATE_PERMISSION, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, indication_peer)
                .unwrap()
        });
        relay
    }

    /// A signed request, which must succeed.
    fn request(&mut self, auth: &Auth, method: u16, attrs: impl FnOnce(&mut Writer<'_>)) {
        let mut buf = [0u8; 1024];
        let mut w = Writer::new(&mut buf, method, Class::Request, &[method as u8; 12]).unwrap();
        attrs(&mut w);
        w.add(attr::USERNAME, USER.as_bytes()).unwrap();
        w.add(attr::REALM, REALM.as_bytes()).unwrap();
        w.add(attr::NONCE, &auth.nonce(self.client.addr, CLOCK.unix))
            .unwrap();
        w.add_integrity(&long_term_key(
            USER.as_bytes(),
            REALM.as_bytes(),
            PASS.as_bytes(),
        ))
        .unwrap();
        let len = w.finish();
        let action = self
            .core
            .handle_client(CLOCK, self.client, &mut buf, len, &mut self.ids);
        let Action::Reply(n) = action else {
            panic!("no answer: {action:?}")
        };
        let msg = Message::parse(&buf[..n]).unwrap();
        assert_eq!(msg.class(), Class::Success, "method {method:#x}");
    }
}

fn client_to_peer(c: &mut Criterion) {
    let mut relay = Relay::new();
    let mut group = c.benchmark_group("client_to_peer");
    group.throughput(Throughput::Elements(1));

    // The core only reads a ChannelData message or Send indication, so the slot keeps
    // its packet from one iteration to the next.
    let mut slot = [0u8; 2048];
    slot[..2].copy_from_slice(&CHANNEL.to_be_bytes());
    slot[2..4].copy_from_slice(&(DATA_LEN as u16).to_be_bytes());
    let len = 4 + DATA_LEN;
    let Relay {
        core,
        ids,
        client,
        channel_peer,
        indication_peer,
        ..
    } = &mut relay;
    assert!(matches!(
        core.handle_client(CLOCK, *client, &mut slot, len, ids),
        Action::ToPeer { peer, len: DATA_LEN, .. } if peer == *channel_peer
    ));
    group.bench_function("channel_data", |b| {
        b.iter(|| {
            black_box(core.handle_client(CLOCK, black_box(*client), black_box(&mut slot), len, ids))
        })
    });

    let mut send = [0u8; 2048];
    let mut w = Writer::new(&mut send, method::SEND, Class::Indication, &[7; 12]).unwrap();
    w.add_xor_address(attr::XOR_PEER_ADDRESS, *indication_peer)
        .unwrap();
    w.add(attr::DATA, &[0x55; DATA_LEN]).unwrap();
    let len = w.finish();
    assert!(matches!(
        core.handle_client(CLOCK, *client, &mut send, len, ids),
        Action::ToPeer { len: DATA_LEN, .. }
    ));
    group.bench_function("send_indication", |b| {
        b.iter(|| {
            black_box(core.handle_client(CLOCK, black_box(*client), black_box(&mut send), len, ids))
        })
    });
    group.finish();
}

fn peer_to_client(c: &mut Criterion) {
    let mut relay = Relay::new();
    let mut group = c.benchmark_group("peer_to_client");
    group.throughput(Throughput::Elements(1));
    // The framing goes into the headroom and leaves the payload be: the same slot
    // serves every iteration, as a fresh datagram would.
    let mut slot = [0x55u8; 2048];
    let relay_id = relay.relay;
    for (name, peer, framed) in [
        ("channel_data", relay.channel_peer, 4 + DATA_LEN),
        (
            "data_indication",
            relay.indication_peer,
            20 + 12 + 4 + DATA_LEN,
        ),
    ] {
        assert!(matches!(
            relay.core.handle_peer(CLOCK, relay_id, peer, &mut slot, HEADROOM, DATA_LEN),
            Action::ToClient { len, .. } if len == framed
        ));
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(relay.core.handle_peer(
                    CLOCK,
                    relay_id,
                    black_box(peer),
                    black_box(&mut slot),
                    HEADROOM,
                    DATA_LEN,
                ))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = client_to_peer, peer_to_client
}
criterion_main!(benches);
