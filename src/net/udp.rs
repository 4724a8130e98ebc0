//! UDP socket setup: one `SO_REUSEPORT` socket per worker and listen address, so the
//! kernel spreads clients over workers by their address and port.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

use crate::turn::server::HeldPort;

/// Socket buffers large enough to ride out a scheduling hiccup at high packet rates.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a non-blocking UDP socket that other workers can bind to as well.
pub(crate) fn bind_shared(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // An IPv6 listener serves IPv6 only; IPv4 gets its own listen address.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    stamp_arrivals(&socket);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The socket of a port held for a reservation ([`HeldPort`] from `reserve`).
pub(crate) fn held_socket(held: HeldPort) -> io::Result<std::net::UdpSocket> {
    held.into_inner::<std::net::UdpSocket>()
        .ok_or_else(|| io::Error::other("a held port that is no UDP socket"))
}

/// Binds a non-blocking relay socket for one TURN allocation: its own port, shared with
/// nobody (no `SO_REUSEPORT`), so a taken port fails with `AddrInUse`.
pub(crate) fn bind_relay(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    stamp_arrivals(&socket);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Asks the kernel to stamp every datagram with the time it arrived (`SO_TIMESTAMPNS`,
/// read by `net::batch` from `recvmmsg`'s control messages). Transport-cc feedback
/// reports these times: a worker that reaches a packet late (a busy machine, a batch of
/// 32) would otherwise report a probe cluster sent over 10 ms as arriving within one
/// 250 µs tick, and the sender's estimator throws such probes away. Best effort: without
/// stamps the worker's own clock stands in.
fn stamp_arrivals(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(
            "no kernel receive timestamps: {}",
            io::Error::last_os_error()
        );
    }
}

/// The addresses a wildcard UDP listen address stands for: every address of that
/// family on the host's interfaces now. A UDP socket bound to a wildcard answers from
/// whichever address the kernel picks, which on a host with several addresses may not
/// be the one the client sent to; sockets bound to each address answer from it.
pub(crate) fn expand_wildcard(addr: SocketAddr) -> io::Result<Vec<SocketAddr>> {
    if !addr.ip().is_unspecified() {
        return Ok(vec![addr]);
    }
    let mut out = Vec::new();
    for ip in interface_addresses()? {
        let same_family = ip.is_ipv6() == addr.is_ipv6();
        // Link-local IPv6 addresses need a scope id and serve no TURN client.
        let link_local = matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local());
        if same_family && !link_local && !out.contains(&SocketAddr::new(ip, addr.port())) {
            out.push(SocketAddr::new(ip, addr.port()));
        }
    }
    Ok(out)
}

/// Every IPv4 and IPv6 address on the host's interfaces (getifaddrs(3)).
pub(crate) fn interface_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cur };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family tells its real type,
            // and both sockaddr_in and sockaddr_in6 are read only for their family.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                let a = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(std::net::IpAddr::from(
                    u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                let a = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(std::net::IpAddr::from(a.sin6_addr.s6_addr));
            }
        }
        cur = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_expands_to_loopback_among_others() {
        let v4 = expand_wildcard("0.0.0.0:3478".parse().expect("addr")).expect("getifaddrs");
        assert!(
            v4.contains(&"127.0.0.1:3478".parse().expect("addr")),
            "{v4:?}"
        );
        assert!(v4.iter().all(|a| a.is_ipv4() && a.port() == 3478));
        let one = expand_wildcard("127.0.0.1:9".parse().expect("addr")).expect("specific");
        assert_eq!(one, vec!["127.0.0.1:9".parse().expect("addr")]);
    }
}
