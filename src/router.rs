//! Where a datagram goes between the node's cores, decided without I/O.
//!
//! One media port carries STUN, TURN, DTLS and SRTP, and the SFU is reached both
//! directly and through the node's own TURN relays. A worker's [`Routes`] know its
//! sockets' addresses (listeners first, then relays, by index), the node's own media
//! addresses and which own media address each relay's client reached the SFU at; from
//! those they answer the three questions of the data plane:
//! - [`Routes::inbound`]: which core takes a datagram that arrived on a socket (a
//!   relay's peer traffic for TURN, a client's STUN for the SFU's ICE or for TURN,
//!   DTLS/SRTP for the SFU);
//! - [`Routes::own_listener`]: whether what TURN relays to a peer is for our own SFU
//!   (then it is handed over in process, never through the kernel);
//! - [`Routes::outbound`]: whether what the SFU sends goes to one of this worker's
//!   relays, to another worker's (through its queue), or through the kernel.
//!
//! `net::worker` holds the sockets and does the I/O; these tables are all it asks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rustc_hash::FxHashMap;

use crate::net::demux::{self, Class};
use crate::turn::server::{RelayId, TurnCore};

/// Which core takes a datagram that arrived on one of a worker's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// From a peer to relay `relay`: for the TURN core, as from `peer`. `hairpin` when
    /// it came from our own media port through the kernel (another worker's SFU whose
    /// hand-over queue was full): `peer` is then the media address the relay's client
    /// sent to.
    Peer {
        /// The relay socket it arrived on.
        relay: RelayId,
        /// Its sender, or the client's media address for a hairpin.
        peer: SocketAddr,
        /// It came from our own media port (see above).
        hairpin: bool,
    },
    /// A client's STUN that is no TURN method: a Binding request or an ICE check.
    Stun,
    /// A TURN request or ChannelData for the TURN core.
    Turn,
    /// DTLS or SRTP/SRTCP for the SFU.
    Media,
    /// A protocol the media port does not speak (its first byte is outside RFC 7983's
    /// ranges).
    Unrouted,
    /// Empty.
    Malformed,
}

/// Where a datagram the SFU sends goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// To this worker's relay: to the TURN core, as from our media address, and on to
    /// its client.
    OwnRelay(RelayId),
    /// To a relay another worker holds: into that worker's queue.
    Worker(usize),
    /// Through the kernel.
    Kernel,
}

/// Which worker holds the relay bound to an address (`net::handoff`'s directory).
pub(crate) trait RelayDirectory {
    /// The worker holding the relay bound to `addr`, if it is one of ours.
    fn owner(&self, addr: SocketAddr) -> Option<usize>;
    /// Whether `addr` is in the directory's space, so that [`Self::owner`]'s `None`
    /// is authoritative.
    fn covers(&self, addr: SocketAddr) -> bool;
}

/// One worker's routing tables.
#[derive(Debug)]
pub struct Routes {
    worker: usize,
    listeners: usize,
    /// Each socket's local address, by index.
    local: Vec<Option<SocketAddr>>,
    /// This worker's relays by local address (the relayed transport address the SFU
    /// sees as a client's source).
    relay_by_addr: FxHashMap<SocketAddr, RelayId>,
    /// By relay: the listener and own media address its client last reached the SFU
    /// at, which the SFU's answers then come from.
    media_peer: Vec<Option<(usize, SocketAddr)>>,
    /// The node's own media addresses with their listener: each listener's address,
    /// and `node.public_ip`/`public_ipv6` at its port.
    own_media: Vec<(SocketAddr, usize)>,
}

impl Routes {
    /// The tables of worker `worker`, whose first `listeners` sockets are listeners.
    pub fn new(worker: usize, listeners: usize) -> Routes {
        Routes {
            worker,
            listeners,
            local: Vec::new(),
            relay_by_addr: FxHashMap::default(),
            media_peer: Vec::new(),
            own_media: Vec::new(),
        }
    }

    /// Listener sockets (media port first) the routes know.
    pub fn listeners(&self) -> usize {
        self.listeners
    }

    /// Socket `index` is bound to `local`. Returns the address to register with the
    /// other workers when it is a relay.
    pub fn add_socket(&mut self, index: usize, local: Option<SocketAddr>) -> Option<SocketAddr> {
        if self.local.len() <= index {
            self.local.resize(index + 1, None);
        }
        self.local[index] = local;
        if let Some(p) = self.media_peer.get_mut(index) {
            *p = None;
        }
        let addr = local.filter(|_| index >= self.listeners)?;
        self.relay_by_addr.insert(addr, index);
        Some(addr)
    }

    /// Relay `index` closed. Returns its address, to unregister from the other
    /// workers before the port is free.
    pub(crate) fn remove_relay(&mut self, index: usize) -> Option<SocketAddr> {
        if index < self.listeners {
            return None;
        }
        if let Some(p) = self.media_peer.get_mut(index) {
            *p = None;
        }
        let addr = self.local.get_mut(index).and_then(Option::take)?;
        self.relay_by_addr.remove(&addr);
        Some(addr)
    }

    /// The local address of socket `index` (for a relay: the relayed transport address).
    pub(crate) fn local(&self, index: usize) -> Option<SocketAddr> {
        self.local.get(index).copied().flatten()
    }

    /// Lists the own media addresses: every listener's address, then the public
    /// addresses at the listeners' ports (a listener named first wins a shared port).
    pub(crate) fn set_own_media(&mut self, (public_v4, public_v6): (Ipv4Addr, Option<Ipv6Addr>)) {
        let listeners: Vec<(SocketAddr, usize)> = (0..self.listeners)
            .filter_map(|i| Some((self.local(i)?, i)))
            .collect();
        let mut own = listeners.clone();
        for (addr, i) in listeners {
            let public = match addr.ip() {
                IpAddr::V4(_) => Some(IpAddr::V4(public_v4)),
                IpAddr::V6(_) => public_v6.map(IpAddr::V6),
            };
            if let Some(ip) = public.filter(|ip| !ip.is_unspecified()) {
                let a = SocketAddr::new(ip, addr.port());
                if !own.iter().any(|&(o, _)| same_addr(o, a)) {
                    own.push((a, i));
                }
            }
        }
        self.own_media = own;
    }

    /// The listener whose media address `peer` is (exactly: address and port): what
    /// TURN relays there is for our own SFU.
    pub(crate) fn own_listener(&self, peer: SocketAddr) -> Option<usize> {
        self.own_media
            .iter()
            .find(|&&(a, _)| same_addr(a, peer))
            .map(|&(_, i)| i)
    }

    /// This worker's relay bound to `addr`, if any.
    pub(crate) fn relay_at(&self, addr: SocketAddr) -> Option<RelayId> {
        if self.relay_by_addr.is_empty() {
            return None;
        }
        self.relay_by_addr.get(&addr).copied()
    }

    /// Relay `relay`'s client reached the SFU at `peer` (on `listener`).
    pub(crate) fn remember_media_peer(
        &mut self,
        relay: RelayId,
        listener: usize,
        peer: SocketAddr,
    ) {
        if self.media_peer.len() <= relay {
            self.media_peer.resize(relay + 1, None);
        }
        self.media_peer[relay] = Some((listener, peer));
    }

    /// The own media address the SFU's datagrams through listener `via` to relay
    /// `relay` come from: the one its client sent to, else the listener's own address
    /// (what the kernel would have shown).
    pub(crate) fn media_peer(&self, relay: RelayId, via: usize) -> Option<SocketAddr> {
        match self.media_peer.get(relay).copied().flatten() {
            Some((listener, peer)) if listener == via => Some(peer),
            _ => self.local(via),
        }
    }

    /// Which core takes `data`, which arrived on socket `origin` from `src`.
    pub fn inbound(&self, origin: usize, src: SocketAddr, data: &[u8]) -> Inbound {
        if origin >= self.listeners {
            return match self.own_listener(src) {
                Some(listener) => Inbound::Peer {
                    relay: origin,
                    peer: self.media_peer(origin, listener).unwrap_or(src),
                    hairpin: true,
                },
                None => Inbound::Peer {
                    relay: origin,
                    peer: src,
                    hairpin: false,
                },
            };
        }
        match demux::classify(data) {
            Class::Stun if !TurnCore::is_turn_method(data) => Inbound::Stun,
            Class::Stun | Class::ChannelData => Inbound::Turn,
            Class::Dtls | Class::Rtp => Inbound::Media,
            Class::Unknown if data.is_empty() => Inbound::Malformed,
            Class::Unknown => Inbound::Unrouted,
        }
    }

    /// Which of the SFU's handlers takes `data`, a TURN client's payload its relay
    /// handed to our media port: `Stun` or `Media`; anything else (TURN inside TURN
    /// through our own relay, which coturn refuses too) `Unrouted`.
    pub(crate) fn relayed_to_sfu(data: &[u8]) -> Inbound {
        match demux::classify(data) {
            Class::Stun if !TurnCore::is_turn_method(data) => Inbound::Stun,
            Class::Dtls | Class::Rtp => Inbound::Media,
            _ => Inbound::Unrouted,
        }
    }

    /// Where a datagram the SFU sends to `to` goes. The directory answers for every
    /// address in its range with one atomic load; the worker's own map is read only
    /// for its own relays (and for an address outside the directory's range).
    pub(crate) fn outbound(&self, to: SocketAddr, directory: &impl RelayDirectory) -> Outbound {
        match directory.owner(to) {
            Some(w) if w == self.worker => self
                .relay_at(to)
                .map_or(Outbound::Kernel, Outbound::OwnRelay),
            Some(owner) => Outbound::Worker(owner),
            None if directory.covers(to) => Outbound::Kernel,
            None => self
                .relay_at(to)
                .map_or(Outbound::Kernel, Outbound::OwnRelay),
        }
    }
}

/// Address and port equal (flow info and scope id play no part).
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip() == b.ip()
}

#[cfg(test)]
mod tests {
    use super::*;

    const L4: &str = "192.0.2.1:3478";
    const L6: &str = "[2001:db8::1]:3478";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Two listeners and, at index 2, a relay.
    fn routes(public: Ipv4Addr) -> Routes {
        let mut r = Routes::new(0, 2);
        assert_eq!(
            r.add_socket(0, Some(addr(L4))),
            None,
            "a listener is no relay"
        );
        assert_eq!(r.add_socket(1, Some(addr(L6))), None);
        r.set_own_media((public, None));
        r
    }

    /// The relay directory of a node with three workers, over 192.0.2.1:50000-50099.
    struct Directory(Vec<(SocketAddr, usize)>);

    impl RelayDirectory for Directory {
        fn owner(&self, a: SocketAddr) -> Option<usize> {
            self.0.iter().find(|(x, _)| *x == a).map(|&(_, w)| w)
        }
        fn covers(&self, a: SocketAddr) -> bool {
            a.ip() == addr(L4).ip() && (50_000..50_100).contains(&a.port())
        }
    }

    #[test]
    fn own_media_addresses_are_the_listeners_and_the_public_ip_at_their_ports() {
        let public = Ipv4Addr::new(203, 0, 113, 5);
        let r = routes(public);
        assert_eq!(r.own_listener(addr(L4)), Some(0));
        assert_eq!(r.own_listener(addr(L6)), Some(1));
        assert_eq!(
            r.own_listener(SocketAddr::new(public.into(), 3478)),
            Some(0)
        );
        // Another port of an own address, or another address, is no media address:
        // the TURN policy judges it like any peer, and the kernel carries it.
        assert_eq!(r.own_listener(addr("192.0.2.1:3479")), None);
        assert_eq!(r.own_listener(addr("192.0.2.2:3478")), None);
        assert_eq!(r.own_listener(SocketAddr::new(public.into(), 3479)), None);
    }

    #[test]
    fn relays_are_found_by_address_until_removed_and_remember_their_media_peer() {
        let mut r = routes(Ipv4Addr::UNSPECIFIED);
        let relayed = addr("192.0.2.1:50007");
        assert_eq!(r.relay_at(addr(L4)), None, "a listener is no relay");
        assert_eq!(r.add_socket(2, Some(relayed)), Some(relayed));
        assert_eq!(r.relay_at(relayed), Some(2));
        // Before its client reached the SFU, answers come from the listener's address.
        assert_eq!(r.media_peer(2, 0), Some(addr(L4)));
        let public = addr("203.0.113.5:3478");
        r.remember_media_peer(2, 0, public);
        assert_eq!(r.media_peer(2, 0), Some(public));
        assert_eq!(
            r.media_peer(2, 1),
            Some(addr(L6)),
            "through the other listener"
        );
        assert_eq!(r.remove_relay(2), Some(relayed));
        assert_eq!(r.relay_at(relayed), None);
        assert_eq!(r.remove_relay(0), None, "listeners stay");
        // The index is reused by the next relay, which remembers nothing of the last.
        r.add_socket(2, Some(addr("192.0.2.1:50008")));
        assert_eq!(r.media_peer(2, 0), Some(addr(L4)));
    }

    #[test]
    fn inbound_datagrams_go_to_the_core_of_their_protocol() {
        let mut r = routes(Ipv4Addr::UNSPECIFIED);
        r.add_socket(2, Some(addr("192.0.2.1:50007")));
        let client = addr("198.51.100.7:40000");
        // A Binding request (method 0x001) and an Allocate (0x003).
        let binding = [0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        let allocate = [0x00, 0x03, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        assert_eq!(r.inbound(0, client, &binding), Inbound::Stun);
        assert_eq!(r.inbound(0, client, &allocate), Inbound::Turn);
        assert_eq!(
            r.inbound(0, client, &[0x40, 0, 0, 4]),
            Inbound::Turn,
            "ChannelData"
        );
        assert_eq!(
            r.inbound(1, client, &[22, 0xFE, 0xFD]),
            Inbound::Media,
            "DTLS"
        );
        assert_eq!(r.inbound(0, client, &[0x80, 96]), Inbound::Media, "RTP");
        assert_eq!(r.inbound(0, client, &[0xC3, 0]), Inbound::Unrouted, "QUIC");
        assert_eq!(r.inbound(0, client, &[]), Inbound::Malformed);
        // On a relay, everything is a peer's, whatever it looks like.
        let peer = addr("198.51.100.8:5000");
        assert_eq!(
            r.inbound(2, peer, &binding),
            Inbound::Peer {
                relay: 2,
                peer,
                hairpin: false
            }
        );
        // From our own media port through the kernel: shown as from where the client
        // reached the SFU.
        r.remember_media_peer(2, 0, addr("203.0.113.5:3478"));
        assert_eq!(
            r.inbound(2, addr(L4), &[0x80, 96]),
            Inbound::Peer {
                relay: 2,
                peer: addr("203.0.113.5:3478"),
                hairpin: true
            }
        );
    }

    #[test]
    fn only_stun_and_media_relayed_to_our_own_port_reach_the_sfu() {
        let binding = [0x00, 0x01, 0, 0];
        let allocate = [0x00, 0x03, 0, 0];
        assert_eq!(Routes::relayed_to_sfu(&binding), Inbound::Stun);
        assert_eq!(Routes::relayed_to_sfu(&[23, 0xFE, 0xFD]), Inbound::Media);
        assert_eq!(Routes::relayed_to_sfu(&[0x90, 96]), Inbound::Media);
        assert_eq!(
            Routes::relayed_to_sfu(&allocate),
            Inbound::Unrouted,
            "TURN in TURN"
        );
        assert_eq!(Routes::relayed_to_sfu(&[0x40, 0, 0, 0]), Inbound::Unrouted);
    }

    #[test]
    fn what_the_sfu_sends_to_a_relay_stays_in_process() {
        let mut r = routes(Ipv4Addr::UNSPECIFIED);
        let ours = addr("192.0.2.1:50007");
        let theirs = addr("192.0.2.1:50008");
        r.add_socket(2, Some(ours));
        let dir = Directory(vec![(ours, 0), (theirs, 1)]);
        assert_eq!(r.outbound(ours, &dir), Outbound::OwnRelay(2));
        assert_eq!(r.outbound(theirs, &dir), Outbound::Worker(1));
        // A free port of the range, a client, our own listener: the kernel.
        assert_eq!(r.outbound(addr("192.0.2.1:50009"), &dir), Outbound::Kernel);
        assert_eq!(
            r.outbound(addr("198.51.100.7:40000"), &dir),
            Outbound::Kernel
        );
        assert_eq!(r.outbound(addr(L4), &dir), Outbound::Kernel);
        // The directory names us for a port we no longer hold (stale): the kernel.
        r.remove_relay(2);
        assert_eq!(r.outbound(ours, &dir), Outbound::Kernel);
        // Outside the directory's range our own map still answers.
        let outside = addr("[2001:db8::1]:50007");
        r.add_socket(3, Some(outside));
        assert_eq!(r.outbound(outside, &dir), Outbound::OwnRelay(3));
    }
}
