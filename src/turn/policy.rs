//! Which peers a TURN client may reach through this node's relays.
//!
//! RFC 8656 §21.1 warns that an open relay is a proxy into the networks behind it; like
//! eturnal we deny by default: loopback, private, link-local, CGNAT, multicast,
//! reserved, documentation and benchmark ranges are refused unless `turn.allowed_peers`
//! lets them through. Every IPv4-in-IPv6 spelling is turned back into the IPv4 address it
//! stands for before any check ([`canonical`]), so `::ffff:127.0.0.1`, `::127.0.0.1`,
//! `64:ff9b::7f00:1` and `2002:7f00:1::1` are judged as 127.0.0.1.
//!
//! [`PeerPolicy::permits`] is pure and allocation-free: a few dozen mask compares, cheap
//! enough to run on every Send indication.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::config::Cidr;

/// IPv4 blocks refused unless allowed: IANA's IPv4 special-purpose registry entries that
/// are not globally reachable, plus multicast and the limited broadcast.
const RESERVED_V4: &[(Ipv4Addr, u8)] = &[
    // "This network" (RFC 791); Linux delivers packets sent to 0.0.0.0 to the host itself.
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    // Private use (RFC 1918).
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    // Shared address space behind carrier-grade NAT (RFC 6598).
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    // Loopback.
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    // Link-local (RFC 3927), including cloud metadata services at 169.254.169.254.
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    // Private use (RFC 1918).
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    // IETF protocol assignments (RFC 6890); its two anycast addresses are no media peers.
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    // Documentation TEST-NET-1 (RFC 5737).
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    // Deprecated 6to4 relay anycast (RFC 7526).
    (Ipv4Addr::new(192, 88, 99, 0), 24),
    // Private use (RFC 1918).
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    // Benchmarking (RFC 2544).
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    // Documentation TEST-NET-2 and TEST-NET-3 (RFC 5737).
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    // Multicast (RFC 5771): a relay must not become a multicast source.
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    // Reserved for future use (RFC 1112), which includes 255.255.255.255 (broadcast).
    (Ipv4Addr::new(240, 0, 0, 0), 4),
    (Ipv4Addr::new(255, 255, 255, 255), 32),
];

/// IPv6 blocks refused unless allowed (IANA's IPv6 special-purpose registry). Spellings
/// of IPv4 addresses (mapped, compatible, NAT64 64:ff9b::/96, 6to4) never get here: they
/// are judged as the IPv4 address they embed.
const RESERVED_V6: &[(Ipv6Addr, u8)] = &[
    // Unspecified and loopback.
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    // Local-use NAT64 prefix (RFC 8215). Operators may carve any RFC 6052 prefix length
    // out of it, so where the IPv4 address sits is unknowable: reading it at the wrong
    // bits would let a client name any IPv4 host behind that translator. Refused whole.
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    // Discard-only (RFC 6666).
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    // IETF protocol assignments (RFC 2928): Teredo 2001::/32, benchmarking 2001:2::/48,
    // ORCHID and a few anycast services, none of them a media peer.
    //
    // Teredo (RFC 4380) in particular is refused rather than canonicalised: its address
    // carries two IPv4 addresses (the Teredo server's in bits 32..64 and the client's
    // NAT mapping, bit-inverted, in bits 96..128), and where the packet finally goes
    // depends on whichever Teredo relay the route picks, so no single IPv4 address can
    // be checked in its place. Teredo is also all but extinct (public servers are gone),
    // so refusing it costs nothing; `allowed_peers = ["2001::/32"]` re-opens it.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
    // Documentation (RFC 3849, RFC 9637).
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    // Unique local (RFC 4193).
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    // Link-local.
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    // Site-local, deprecated (RFC 3879) but still configured in places.
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    // Multicast.
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// The only IPv6 space IANA hands out for global unicast. Everything outside it is
/// reserved by the IETF or special-purpose (the entries above outside 2000::/3, SRv6 SIDs
/// in 5f00::/16, the dummy prefix 100:0:0:1::/64, unassigned space), so it is refused as
/// a whole: new special ranges there are covered before anyone lists them.
const GLOBAL_UNICAST_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// The media addresses of the other live nodes of a shared store (`cluster`): a relay
/// reaches them as it reaches this node's own, exact address and port only, so a
/// participant may use any node's TURN server for a room on any node. Empty without a
/// shared store; looked at only for a peer that would be refused otherwise.
#[derive(Debug, Default)]
pub struct OtherNodes {
    any: AtomicBool,
    media: RwLock<Box<[SocketAddr]>>,
}

impl OtherNodes {
    /// Replaces the set (with each heartbeat's live nodes).
    pub(crate) fn set(&self, media: &[SocketAddr]) {
        let media: Box<[SocketAddr]> = media
            .iter()
            .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
            .map(|a| SocketAddr::new(canonical(a.ip()), a.port()))
            .collect();
        self.any.store(!media.is_empty(), Ordering::Relaxed);
        *self.media.write().unwrap_or_else(PoisonError::into_inner) = media;
    }

    fn any_where(&self, hit: impl Fn(&SocketAddr) -> bool) -> bool {
        self.any.load(Ordering::Relaxed)
            && self
                .media
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(hit)
    }
}

/// The peers one node's TURN clients may reach; built once from configuration.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    allow_loopback: bool,
    allowed: Box<[Cidr]>,
    denied: Box<[Cidr]>,
    /// The node's own media addresses, canonicalised.
    own: Box<[SocketAddr]>,
    /// Every address of the host itself, canonicalised (see [`PeerPolicy::with_host`]).
    host: Box<[IpAddr]>,
    /// The relay port range: the ports of the host's addresses a client may reach.
    relay_ports: (u16, u16),
    /// The other nodes' media addresses (see [`OtherNodes`]).
    nodes: Arc<OtherNodes>,
}

impl PeerPolicy {
    /// `own` = the node's own media addresses (its `turn.listen` addresses and
    /// `node.public_ip` with the listen ports): always reachable, so a browser forced
    /// through the relay still reaches this node's SFU, which shares the TURN port.
    /// Wildcard (`0.0.0.0`, `::`) and port-0 entries are ignored: they name no
    /// destination, and "0.0.0.0" as a destination is the host itself on any port.
    pub fn new(
        allow_loopback: bool,
        allowed: &[Cidr],
        denied: &[Cidr],
        own: &[SocketAddr],
    ) -> Self {
        let own = own
            .iter()
            .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
            .map(|a| SocketAddr::new(canonical(a.ip()), a.port()))
            .collect();
        PeerPolicy {
            allow_loopback,
            allowed: allowed.into(),
            denied: denied.into(),
            own,
            host: Box::new([]),
            relay_ports: (0, 0),
            nodes: Arc::default(),
        }
    }

    /// Lets the other live nodes' media addresses through like the node's own ones.
    pub(crate) fn with_nodes(mut self, nodes: Arc<OtherNodes>) -> Self {
        self.nodes = nodes;
        self
    }

    /// Refuses every address of the host itself (`node.public_ip`, `public_ipv6`, every
    /// interface address, in every spelling) as a peer, but for the node's own media
    /// addresses and the relay ports (two clients of this node relaying to each other):
    /// with a global address, any other UDP service on the host (DNS, memcached, ...)
    /// would be reachable through the relay. Loopback with `allow_loopback` and what
    /// `allowed` lists stay open: the operator asked for them.
    pub(crate) fn with_host(mut self, host: &[IpAddr], relay_ports: (u16, u16)) -> Self {
        self.host = host.iter().map(|&ip| canonical(ip)).collect();
        self.relay_ports = relay_ports;
        self
    }

    /// Whether a TURN client may talk to `peer` (CreatePermission, ChannelBind, Send).
    ///
    /// In order: port 0 is refused; `denied` always wins, even over the node's own
    /// addresses; then the node's own media addresses (exact address and port) pass;
    /// then `allowed` lets through the built-in deny-list, and so does
    /// `allow_loopback` for loopback; then the built-in deny-list refuses; everything
    /// else is permitted. CIDR lists match the address as given and its canonical form.
    pub(crate) fn permits(&self, peer: SocketAddr) -> bool {
        if peer.port() == 0 {
            return false;
        }
        let raw = peer.ip();
        let ip = canonical(raw);
        if listed(&self.denied, raw, ip) {
            return false;
        }
        if self.own.contains(&SocketAddr::new(ip, peer.port())) {
            return true;
        }
        let opened = if self.is_host(raw, ip) {
            let (first, last) = self.relay_ports;
            (first..=last).contains(&peer.port()) && self.opens(raw, ip)
        } else {
            self.opens(raw, ip)
        };
        let exact = SocketAddr::new(ip, peer.port());
        opened || self.nodes.any_where(|a| *a == exact)
    }

    /// Whether `ip` is an address of the host itself that the operator did not open.
    fn is_host(&self, raw: IpAddr, ip: IpAddr) -> bool {
        self.host.contains(&ip)
            && !listed(&self.allowed, raw, ip)
            && !(self.allow_loopback && is_loopback(raw))
    }

    /// Whether every port of `ip` may be reached: [`PeerPolicy::permits`] without the
    /// port and without the node's own addresses (which are let through for their exact
    /// port only; see [`PeerPolicy::is_own_ip`]). For permissions, which RFC 8656 §9
    /// installs per IP address.
    pub(crate) fn permits_ip(&self, ip: IpAddr) -> bool {
        let canon = canonical(ip);
        !listed(&self.denied, ip, canon) && !self.is_host(ip, canon) && self.opens(ip, canon)
    }

    /// Whether `ip` (in any spelling) is the address of one of the node's own media
    /// addresses, or of the host, and not denied: a permission for it may carry data to
    /// the media addresses and relay ports only, which [`PeerPolicy::permits`] checks
    /// per packet.
    pub(crate) fn is_own_ip(&self, ip: IpAddr) -> bool {
        let canon = canonical(ip);
        !listed(&self.denied, ip, canon)
            && (self.own.iter().any(|own| own.ip() == canon)
                || (self.is_host(ip, canon) && self.opens(ip, canon))
                || self.nodes.any_where(|a| a.ip() == canon))
    }

    /// Past `denied` and the own addresses: `allowed`, loopback if allowed, else the
    /// built-in deny-list.
    fn opens(&self, raw: IpAddr, ip: IpAddr) -> bool {
        listed(&self.allowed, raw, ip)
            || (self.allow_loopback && is_loopback(raw))
            || !is_reserved(ip)
    }
}

/// Whether `raw` or its canonical form `ip` lies in one of `blocks`.
fn listed(blocks: &[Cidr], raw: IpAddr, ip: IpAddr) -> bool {
    blocks.iter().any(|b| b.contains(ip) || b.contains(raw))
}

/// Loopback as the kernel sees it: 127/8, ::1, and 127/8 mapped into IPv6 (a dual-stack
/// socket sends those to loopback). NAT64 or 6to4 spellings of 127.0.0.1 leave the host,
/// towards a translator's own loopback, so they stay refused.
fn is_loopback(raw: IpAddr) -> bool {
    match raw {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether a canonical address is in the built-in deny-list.
fn is_reserved(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => RESERVED_V4.iter().any(|&(net, len)| in_v4(v4, net, len)),
        IpAddr::V6(v6) => {
            !in_v6(v6, GLOBAL_UNICAST_V6.0, GLOBAL_UNICAST_V6.1)
                || RESERVED_V6.iter().any(|&(net, len)| in_v6(v6, net, len))
        }
    }
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The address an IPv6 spelling of an IPv4 address stands for; any other address is
/// returned unchanged.
///
/// Recognised spellings: IPv4-mapped `::ffff:a.b.c.d`, SIIT IPv4-translated
/// `::ffff:0:a.b.c.d` (RFC 2765), IPv4-compatible `::a.b.c.d` (RFC 4291, deprecated;
/// `::` and `::1` are themselves), NAT64 well-known `64:ff9b::a.b.c.d` (RFC 6052) and
/// 6to4 `2002:AABB:CCDD::/48` (RFC 3056). Teredo and the local-use NAT64 prefix are
/// deliberately not decoded: see `RESERVED_V6`.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

/// The IPv4 address embedded in `ip` by one of the spellings [`canonical`] knows.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    const MAPPED: u128 = 0xffff;
    const TRANSLATED: u128 = 0xffff_0000;
    const NAT64_WELL_KNOWN: u128 = 0x0064_ff9b_0000_0000_0000_0000;
    const SIX_TO_FOUR: u128 = 0x2002;
    let bits = u128::from(ip);
    let o = ip.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match bits >> 32 {
        MAPPED | TRANSLATED | NAT64_WELL_KNOWN => return Some(low),
        // IPv4-compatible; `::` and `::1` are the IPv6 unspecified and loopback addresses.
        0 if bits > 1 => return Some(low),
        _ => {}
    }
    (bits >> 112 == SIX_TO_FOUR).then(|| Ipv4Addr::new(o[2], o[3], o[4], o[5]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip address")
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().expect("cidr")).collect()
    }

    fn default_policy() -> PeerPolicy {
        PeerPolicy::new(false, &[], &[], &[])
    }

    /// A peer at `ip` on an ordinary port.
    fn peer(ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, 40000)
    }

    fn permits(p: &PeerPolicy, addr: &str) -> bool {
        p.permits(peer(ip(addr)))
    }

    #[test]
    fn other_nodes_media_addresses_pass_for_their_exact_port_only() {
        let nodes = Arc::new(OtherNodes::default());
        let host = [ip("10.0.0.5")];
        let p = default_policy()
            .with_host(&host, (49152, 65535))
            .with_nodes(nodes.clone());
        assert!(!p.permits(sa("10.0.0.7:3478")));
        nodes.set(&[sa("10.0.0.7:3478"), sa("127.0.0.1:3479")]);
        assert!(p.permits(sa("10.0.0.7:3478")));
        assert!(p.permits(sa("[::ffff:10.0.0.7]:3478")), "in any spelling");
        assert!(!p.permits(sa("10.0.0.7:3479")), "another port of that node");
        assert!(p.permits(sa("127.0.0.1:3479")));
        assert!(!p.permits(sa("127.0.0.1:22")));
        assert!(p.is_own_ip(ip("10.0.0.7")) && !p.permits_ip(ip("10.0.0.7")));
        // Denied wins, and a node that left is refused again.
        let denied =
            PeerPolicy::new(false, &[], &cidrs(&["10.0.0.7/32"]), &[]).with_nodes(nodes.clone());
        assert!(!denied.permits(sa("10.0.0.7:3478")));
        nodes.set(&[]);
        assert!(!p.permits(sa("10.0.0.7:3478")) && !p.is_own_ip(ip("10.0.0.7")));
    }

    #[test]
    fn canonical_decodes_every_ipv4_spelling() {
        let cases = [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:0:127.0.0.1", "127.0.0.1"),
            ("::127.0.0.1", "127.0.0.1"),
            ("64:ff9b::7f00:1", "127.0.0.1"),
            ("2002:7f00:1::", "127.0.0.1"),
            ("2002:7f00:1:abcd:1:2:3:4", "127.0.0.1"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("64:ff9b::a01:203", "10.1.2.3"),
            ("2002:a01:203::1", "10.1.2.3"),
            ("::0.0.0.2", "0.0.0.2"),
            ("::ffff:8.8.8.8", "8.8.8.8"),
        ];
        for (v6, v4) in cases {
            assert_eq!(canonical(ip(v6)), ip(v4), "{v6}");
        }
        // Not spellings of IPv4: unchanged.
        for same in [
            "::",
            "::1",
            "1.2.3.4",
            "2001::1",
            "64:ff9b:1::a01:203",
            "64:ff9b:0:0:1::1",
            "2003::1",
            "fe80::1",
            "::fffe:1.2.3.4",
        ] {
            assert_eq!(canonical(ip(same)), ip(same), "{same}");
        }
    }

    #[test]
    fn issue_list_refused_by_default() {
        let p = default_policy();
        for addr in [
            "127.0.0.1:3480",
            "[::1]:3480",
            "[::ffff:127.0.0.1]:3480",
            "0.0.0.0:3480",
            "10.1.2.3:3480",
            "169.254.169.254:80",
            "192.168.0.1:3480",
            "[fe80::1]:3480",
        ] {
            assert!(!p.permits(sa(addr)), "{addr}");
        }
    }

    #[test]
    fn every_spelling_of_loopback_and_private_refused() {
        let p = default_policy();
        for addr in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:0:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:7f00:1::",
            "2002:7f00:1::1",
            "2002:7f00:1:ffff:ffff:ffff:ffff:ffff",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client 127.0.0.1
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "::ffff:0:10.1.2.3",
            "::10.1.2.3",
            "64:ff9b::a01:203",
            "64:ff9b:1::a01:203",
            "2002:a01:203::1",
            "2001:0:4136:e378:8000:63bf:f5fe:fdfc", // Teredo, client 10.1.2.3
        ] {
            assert!(!permits(&p, addr), "{addr}");
        }
    }

    /// Every built-in block refused at its first and last address, checked against an
    /// independent list (not the constants) so a deleted entry is noticed.
    #[test]
    fn every_reserved_range_refused_at_both_ends() {
        let p = default_policy();
        let blocks = [
            ("0.0.0.0", "0.255.255.255"),
            ("10.0.0.0", "10.255.255.255"),
            ("100.64.0.0", "100.127.255.255"),
            ("127.0.0.0", "127.255.255.255"),
            ("169.254.0.0", "169.254.255.255"),
            ("172.16.0.0", "172.31.255.255"),
            ("192.0.0.0", "192.0.0.255"),
            ("192.0.2.0", "192.0.2.255"),
            ("192.88.99.0", "192.88.99.255"),
            ("192.168.0.0", "192.168.255.255"),
            ("198.18.0.0", "198.19.255.255"),
            ("198.51.100.0", "198.51.100.255"),
            ("203.0.113.0", "203.0.113.255"),
            ("224.0.0.0", "239.255.255.255"),
            ("240.0.0.0", "255.255.255.255"),
            ("::", "::"),
            ("::1", "::1"),
            ("64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff"),
            ("100::", "100::ffff:ffff:ffff:ffff"),
            ("2001::", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            // Outside global unicast 2000::/3.
            ("::2:0:0", "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("4000::", "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ];
        for (first, last) in blocks {
            assert!(!permits(&p, first), "{first}");
            assert!(!permits(&p, last), "{last}");
            // Their mapped spellings too, for IPv4.
            if let IpAddr::V4(v4) = ip(first) {
                assert!(!p.permits(peer(IpAddr::V6(v4.to_ipv6_mapped()))), "{first}");
            }
        }
    }

    #[test]
    fn public_addresses_permitted() {
        let p = default_policy();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:200::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "3ffe:ffff::1",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(permits(&p, addr), "{addr}");
        }
    }

    #[test]
    fn port_zero_refused() {
        let p = PeerPolicy::new(true, &cidrs(&["0.0.0.0/0"]), &[], &[sa("8.8.8.8:0")]);
        assert!(!p.permits(sa("8.8.8.8:0")));
        assert!(!p.permits(sa("127.0.0.1:0")));
        assert!(p.permits(sa("8.8.8.8:1")));
    }

    #[test]
    fn allowed_opens_the_deny_list_in_every_spelling() {
        let p = PeerPolicy::new(false, &cidrs(&["10.0.0.0/8", "2001::/32"]), &[], &[]);
        for addr in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "64:ff9b::a01:203",
            "2002:a01:203::1",
            "2001:0:4136:e378:8000:63bf:f5fe:fdfc",
        ] {
            assert!(permits(&p, addr), "{addr}");
        }
        for addr in ["192.168.0.1", "127.0.0.1", "::1", "172.16.0.1", "2001:2::1"] {
            assert!(!permits(&p, addr), "{addr}");
        }
        // The raw IPv6 form can be allowed too: here every IPv4-mapped address.
        let p = PeerPolicy::new(false, &cidrs(&["::ffff:0:0/96"]), &[], &[]);
        assert!(permits(&p, "::ffff:10.1.2.3"));
        assert!(!permits(&p, "10.1.2.3"));
    }

    #[test]
    fn denied_wins_over_everything() {
        let denied = cidrs(&["8.8.8.0/24", "127.0.0.1/32", "2a00::/16"]);
        let own = [sa("127.0.0.1:3478")];
        let allowed = cidrs(&["0.0.0.0/0", "::/0"]);
        let p = PeerPolicy::new(true, &allowed, &denied, &own);
        for addr in [
            "8.8.8.8:53",
            "[::ffff:8.8.8.8]:53",
            "[64:ff9b::808:808]:53",
            "[2002:808:808::1]:53",
            "127.0.0.1:3478",
            "[::ffff:127.0.0.1]:3478",
            "[2a00:1450::1]:443",
        ] {
            assert!(!p.permits(sa(addr)), "{addr}");
        }
        assert!(p.permits(sa("8.8.4.4:53")));
        assert!(p.permits(sa("127.0.0.2:3478")));
        // Without `allowed`, a denied public address is refused as well.
        let p = PeerPolicy::new(false, &[], &denied, &[]);
        assert!(!permits(&p, "8.8.8.1"));
        assert!(permits(&p, "8.8.9.1"));
    }

    #[test]
    fn own_media_address_reachable_exactly() {
        let own = [sa("127.0.0.1:3478"), sa("[::1]:3478"), sa("10.0.0.5:3478")];
        let p = PeerPolicy::new(false, &[], &[], &own);
        for addr in [
            "127.0.0.1:3478",
            "[::ffff:127.0.0.1]:3478",
            "[::1]:3478",
            "10.0.0.5:3478",
            "[::ffff:10.0.0.5]:3478",
        ] {
            assert!(p.permits(sa(addr)), "{addr}");
        }
        // Another port on the same host, or a neighbour, stays refused.
        for addr in [
            "127.0.0.1:3479",
            "127.0.0.1:22",
            "[::1]:22",
            "10.0.0.6:3478",
        ] {
            assert!(!p.permits(sa(addr)), "{addr}");
        }
    }

    #[test]
    fn ip_level_checks_for_permissions() {
        let own = [sa("127.0.0.1:3478"), sa("10.0.0.5:3478")];
        let p = PeerPolicy::new(
            false,
            &cidrs(&["192.168.0.0/16"]),
            &cidrs(&["10.0.0.5"]),
            &own,
        );
        assert!(p.permits_ip(ip("8.8.8.8")));
        assert!(p.permits_ip(ip("::ffff:192.168.1.1")));
        assert!(!p.permits_ip(ip("127.0.0.1")));
        assert!(!p.permits_ip(ip("10.1.2.3")));
        // The own address is not opened on every port, only recognised...
        assert!(p.is_own_ip(ip("127.0.0.1")));
        assert!(p.is_own_ip(ip("::ffff:127.0.0.1")));
        assert!(!p.is_own_ip(ip("127.0.0.2")));
        assert!(!p.is_own_ip(ip("8.8.8.8")));
        // ...unless denied, which wins.
        assert!(!p.is_own_ip(ip("10.0.0.5")));
        assert!(!p.permits(sa("10.0.0.5:3478")));
        // Port 0 plays no part at the IP level.
        let q = default_policy();
        assert!(q.permits_ip(ip("8.8.8.8")));
        assert!(!q.permits(sa("8.8.8.8:0")));
    }

    #[test]
    fn wildcard_own_addresses_are_ignored() {
        let p = PeerPolicy::new(false, &[], &[], &[sa("0.0.0.0:3478"), sa("[::]:3478")]);
        assert!(!p.permits(sa("0.0.0.0:3478")));
        assert!(!p.permits(sa("[::]:3478")));
    }

    #[test]
    fn allow_loopback_opens_loopback_only() {
        let p = PeerPolicy::new(true, &[], &[], &[]);
        for addr in ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"] {
            assert!(permits(&p, addr), "{addr}");
        }
        // Private ranges stay shut, and so do spellings that leave the host.
        for addr in [
            "10.1.2.3",
            "192.168.0.1",
            "0.0.0.0",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "fe80::1",
        ] {
            assert!(!permits(&p, addr), "{addr}");
        }
    }

    /// With a global `public_ip`, the relay reached every UDP service of the host
    /// (`public_ip:53`, `:11211`): the host's addresses are refused in every spelling,
    /// but for the media port and the relay ports.
    #[test]
    fn the_hosts_own_addresses_are_refused_but_media_and_relay_ports() {
        let host: IpAddr = "93.184.216.34".parse().unwrap();
        let p = PeerPolicy::new(false, &[], &[], &[sa("93.184.216.34:3478")]).with_host(
            &[host, "2606:2800:220:1::1".parse().unwrap()],
            (49152, 65535),
        );
        for refused in [
            "93.184.216.34:53",
            "93.184.216.34:11211",
            "[::ffff:93.184.216.34]:53",
            "[64:ff9b::5db8:d822]:53",
            "[2606:2800:220:1::1]:53",
        ] {
            assert!(!p.permits(sa(refused)), "{refused}");
        }
        assert!(!p.permits_ip(host));
        assert!(p.is_own_ip(host));
        for open in [
            "93.184.216.34:3478",
            "93.184.216.34:50000",
            "93.184.216.35:53",
        ] {
            assert!(p.permits(sa(open)), "{open}");
        }
        // Loopback with allow_loopback, and what `allowed` lists, stay open.
        let lo = PeerPolicy::new(true, &cidrs(&["93.184.216.34/32"]), &[], &[])
            .with_host(&[host, "127.0.0.1".parse().unwrap()], (49152, 65535));
        assert!(lo.permits(sa("127.0.0.1:53")));
        assert!(lo.permits(sa("93.184.216.34:53")));
    }
}
