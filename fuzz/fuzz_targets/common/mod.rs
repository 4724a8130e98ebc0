//! What the TURN fuzz targets share: a TURN core with one user, relay "sockets" that
//! are only numbers, and client addresses.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use confnode::config::PortRange;
use confnode::metrics::TurnMetrics;
use confnode::turn::auth::Auth;
use confnode::turn::policy::PeerPolicy;
use confnode::turn::server::{ClientKey, HeldPort, Limits, RelayId, RelayIo, Shared, TurnCore};

pub const REALM: &str = "fuzz";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";

/// A TURN core with small limits and the user [`USER`]; `stream` for one that serves a
/// TCP or TLS connection, `bandwidth` its per-allocation limit (0: none).
pub fn core(stream: bool, bandwidth: u64) -> TurnCore {
    let limits = Limits {
        max_allocations_per_user: 8,
        max_permissions: 8,
        max_channels: 8,
        bandwidth,
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
    TurnCore::new(shared, auth, stream, 1)
}

/// Relay "sockets" that are only numbers.
#[derive(Default)]
pub struct Relays {
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

pub fn client(k: u8) -> ClientKey {
    ClientKey {
        listener: 0,
        addr: SocketAddr::from(([198, 51, 100, k % 4 + 1], 40_000 + u16::from(k % 4))),
    }
}
