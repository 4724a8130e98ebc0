//! What one client counts as for per-client limits (HTTP connections and joins, TURN
//! quotas and challenge answers).

use std::net::IpAddr;

/// An IPv4 address (also when it arrives IPv4-mapped), or the /64 of an IPv6 address:
/// one subscriber's network, which a client could otherwise spread itself over.
pub(crate) fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_and_ipv6_slash_64() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(client_prefix(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_prefix(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(
            client_prefix(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
    }
}
