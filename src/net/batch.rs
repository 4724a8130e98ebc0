//! Batched UDP receive and send (`recvmmsg`/`sendmmsg`) over preallocated slots.
//!
//! A datagram is received into a slot and stays there: the protocol core reads it and
//! writes its reply into the same slot, and `sendmmsg` sends straight from the slots.
//! Each slot keeps `HEADROOM` bytes in front of the datagram so that a relay can prepend
//! a header (TURN ChannelData, a Data indication) without moving the payload.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;
/// Bytes kept free in front of each received datagram.
pub const HEADROOM: usize = 64;
/// The largest datagram received whole; longer ones are truncated by the kernel and
/// dropped. Media and TURN traffic stays well under a 1500-byte MTU.
pub(crate) const MAX_DATAGRAM: usize = 2048 - HEADROOM;
const SLOT: usize = HEADROOM + MAX_DATAGRAM;
/// Control-message room per slot, in u64 words (cmsghdr alignment): one
/// `SCM_TIMESTAMPNS` takes 32 bytes, and the kernel truncates (`MSG_CTRUNC`) rather than
/// overflow if a socket ever carried more.
const CONTROL_WORDS: usize = 8;

/// A datagram to send from a slot: `len` bytes starting at `start` within the slot,
/// through the socket the caller knows as `via`.
#[derive(Clone, Copy, Debug)]
struct Out {
    start: usize,
    len: usize,
    dst: SocketAddr,
    via: usize,
}

/// One received datagram, as `Batch::packet` hands it out.
pub(crate) struct Packet<'a> {
    /// The whole slot: `HEADROOM` free bytes, then the datagram, then free space.
    pub(crate) slot: &'a mut [u8],
    pub(crate) len: usize,
    pub(crate) src: SocketAddr,
    /// The `origin` given to `recv`: which socket it came from.
    pub(crate) origin: usize,
    /// When the kernel received it (µs of `CLOCK_REALTIME` since the Unix epoch), for
    /// sockets with `SO_TIMESTAMPNS` on (`net::udp`); see [`RxClock`].
    pub(crate) stamp_us: Option<u64>,
}

/// What one `send` call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) sent: usize,
    pub(crate) failed: usize,
    /// `sendmmsg` system calls made.
    pub(crate) calls: usize,
}

impl Sent {
    pub(crate) fn add(&mut self, other: Sent) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.calls += other.calls;
    }
}

/// Preallocated buffers and system-call descriptors for `BATCH` datagrams.
pub(crate) struct Batch {
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    srcs: [Option<SocketAddr>; BATCH],
    origins: [usize; BATCH],
    stamps: [Option<u64>; BATCH],
    outs: [Option<Out>; BATCH],
    received: usize,
    names: Box<[libc::sockaddr_storage]>,
    controls: Box<[[u64; CONTROL_WORDS]]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    tx: SendMmsg,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub(crate) fn new() -> Batch {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all
        // zero bytes is a valid (empty) value.
        let zeroed = || unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        let iov = || unsafe { MaybeUninit::<libc::iovec>::zeroed().assume_init() };
        let hdr = || unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() };
        Batch {
            bufs: vec![0u8; SLOT * BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            srcs: [None; BATCH],
            origins: [0; BATCH],
            stamps: [None; BATCH],
            outs: [None; BATCH],
            received: 0,
            names: (0..BATCH).map(|_| zeroed()).collect(),
            controls: vec![[0; CONTROL_WORDS]; BATCH].into_boxed_slice(),
            iovs: (0..BATCH).map(|_| iov()).collect(),
            hdrs: (0..BATCH).map(|_| hdr()).collect(),
            tx: SendMmsg::new(BATCH),
        }
    }

    /// Forgets the datagrams held, and what was to be sent.
    pub(crate) fn clear(&mut self) {
        self.received = 0;
        self.outs = [None; BATCH];
    }

    /// Whether every slot holds a datagram.
    pub(crate) fn is_full(&self) -> bool {
        self.received == BATCH
    }

    /// Receives datagrams from a non-blocking socket into the free slots, marking them
    /// with `origin`. Returns how many arrived; `WouldBlock` when none were waiting.
    /// Filling one batch from several sockets lets their replies share one `sendmmsg`.
    pub(crate) fn recv(&mut self, fd: RawFd, origin: usize) -> io::Result<usize> {
        let first = self.received;
        let free = BATCH - first;
        if free == 0 {
            return Ok(0);
        }
        for i in first..BATCH {
            let slot = &mut self.bufs[i * SLOT..(i + 1) * SLOT];
            self.iovs[i] = libc::iovec {
                iov_base: slot[HEADROOM..].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = mem::size_of::<[u64; CONTROL_WORDS]>() as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a live iovec, name buffer, control buffer and
        // slot of this struct, sized as declared; the kernel writes only within them.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs[first..].as_mut_ptr(),
                free as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in first..first + n {
            self.origins[i] = origin;
            let h = &self.hdrs[i];
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = h.msg_len as usize;
            self.stamps[i] = receive_stamp(&h.msg_hdr);
            self.srcs[i] = if truncated {
                None
            } else {
                from_sockaddr(&self.names[i])
            };
        }
        self.received = first + n;
        Ok(n)
    }

    /// Datagrams held from the last `recv`.
    pub(crate) fn len(&self) -> usize {
        self.received
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Datagram `i`: `None` for one that was truncated or came from an unknown address
    /// family.
    pub(crate) fn packet(&mut self, i: usize) -> Option<Packet<'_>> {
        if i >= self.received {
            return None;
        }
        let src = self.srcs[i]?;
        Some(Packet {
            slot: &mut self.bufs[i * SLOT..(i + 1) * SLOT],
            len: self.lens[i],
            src,
            origin: self.origins[i],
            stamp_us: self.stamps[i],
        })
    }

    /// Marks `len` bytes of slot `i` from `start` (counted from the slot's beginning,
    /// headroom included) to be sent to `dst` through socket `via`.
    pub(crate) fn send_from(
        &mut self,
        i: usize,
        start: usize,
        len: usize,
        dst: SocketAddr,
        via: usize,
    ) {
        if i < self.received && start.checked_add(len).is_some_and(|end| end <= SLOT) {
            self.outs[i] = Some(Out {
                start,
                len,
                dst,
                via,
            });
        }
    }

    /// Marks the first `len` bytes after slot `i`'s headroom to go back to where the
    /// datagram came from.
    pub(crate) fn reply(&mut self, i: usize, len: usize, dst: SocketAddr) {
        let via = self.origins[i % BATCH];
        self.send_from(i, HEADROOM, len, dst, via);
    }

    /// Sends every marked datagram, with one `sendmmsg` per socket (`fd_of` maps `via`
    /// to it; `None` drops those datagrams as failed). A datagram the kernel refuses is
    /// counted as failed and skipped; it is never retried, as a relay must not stall on
    /// one bad destination.
    pub(crate) fn flush(&mut self, fd_of: impl Fn(usize) -> Option<RawFd>) -> Sent {
        let mut order = [0usize; BATCH];
        let mut n = 0;
        for i in 0..self.received {
            if self.outs[i].is_some() {
                order[n] = i;
                n += 1;
            }
        }
        let Batch { bufs, outs, tx, .. } = self;
        let (bufs, outs) = (&*bufs, &*outs);
        let via_of = |i: usize| outs[i].map_or(usize::MAX, |o| o.via);
        let mut total = Sent::default();
        by_socket(&mut order[..n], via_of, |via, group| {
            total.add(match fd_of(via) {
                Some(fd) => {
                    let datagrams = group.iter().filter_map(|&i| {
                        let out = outs.get(i).copied().flatten()?;
                        let at = i * SLOT + out.start;
                        Some((bufs.get(at..at + out.len)?, out.dst))
                    });
                    tx.send(fd, datagrams)
                }
                None => Sent {
                    failed: group.len(),
                    ..Sent::default()
                },
            });
        });
        self.outs = [None; BATCH];
        total
    }
}

/// Puts the slot indices `order` in socket order (`via_of` names each one's socket),
/// each socket's slots in the order they had, and calls `each(via, group)` once per
/// socket: one `sendmmsg` per socket, and no stream reordered.
pub(crate) fn by_socket(
    order: &mut [usize],
    via_of: impl Fn(usize) -> usize,
    mut each: impl FnMut(usize, &[usize]),
) {
    order.sort_unstable_by_key(|&i| (via_of(i), i));
    let mut begin = 0;
    while let Some(&first) = order.get(begin) {
        let via = via_of(first);
        let end = order[begin..]
            .iter()
            .position(|&i| via_of(i) != via)
            .map_or(order.len(), |p| begin + p);
        each(via, &order[begin..end]);
        begin = end;
    }
}

/// The descriptors of one `sendmmsg` of up to a fixed number of datagrams, allocated
/// once: the one place this crate sends datagrams in batches (`Batch::flush`, and the
/// SFU's `net::outbox::Outbox`).
pub(crate) struct SendMmsg {
    names: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl SendMmsg {
    /// Room for `capacity` datagrams per system call (at least one).
    pub(crate) fn new(capacity: usize) -> SendMmsg {
        let capacity = capacity.clamp(1, 1024);
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all
        // zero bytes is a valid (empty) value.
        let name = || unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        let iov = || unsafe { MaybeUninit::<libc::iovec>::zeroed().assume_init() };
        let hdr = || unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() };
        SendMmsg {
            names: (0..capacity).map(|_| name()).collect(),
            iovs: (0..capacity).map(|_| iov()).collect(),
            hdrs: (0..capacity).map(|_| hdr()).collect(),
        }
    }

    /// Datagrams per system call.
    pub(crate) fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends every datagram `datagrams` yields (bytes, destination) through the
    /// non-blocking socket `fd`, in order, `capacity` per `sendmmsg`. Never blocks:
    /// - a partial send (the kernel took fewer than asked) goes on from the first
    ///   datagram not taken;
    /// - a datagram the kernel refuses (unreachable or invalid destination) is counted
    ///   as failed and skipped, as a relay must not stall on one bad destination;
    /// - a full socket buffer (`EAGAIN`, `ENOBUFS`) drops the rest of that call's
    ///   datagrams as failed rather than retrying them.
    ///
    /// Each system call takes at least one datagram off, so it ends.
    pub(crate) fn send<'a>(
        &mut self,
        fd: RawFd,
        mut datagrams: impl Iterator<Item = (&'a [u8], SocketAddr)>,
    ) -> Sent {
        let mut total = Sent::default();
        let cap = self.capacity();
        loop {
            let mut count = 0;
            while count < cap {
                let Some((data, dst)) = datagrams.next() else {
                    break;
                };
                self.iovs[count] = libc::iovec {
                    // The kernel only reads through it (sendmmsg).
                    iov_base: data.as_ptr().cast_mut().cast(),
                    iov_len: data.len(),
                };
                let namelen = to_sockaddr(dst, &mut self.names[count]);
                let h = &mut self.hdrs[count].msg_hdr;
                h.msg_name = (&mut self.names[count] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = namelen;
                h.msg_iov = &mut self.iovs[count];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                self.hdrs[count].msg_len = 0;
                count += 1;
            }
            if count == 0 {
                break;
            }
            let mut next = 0;
            while next < count {
                // SAFETY: headers next..count were filled above and point at live
                // iovecs and names of this struct (boxed: they do not move) and at the
                // datagrams borrowed for 'a, which outlive this call; the kernel only
                // reads them, and writes nothing but each header's `msg_len`.
                let n = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.hdrs[next..count].as_mut_ptr(),
                        (count - next) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                total.calls += 1;
                if n > 0 {
                    let n = (n as usize).min(count - next);
                    total.sent += n;
                    next += n;
                    continue;
                }
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN | libc::ENOBUFS) => {
                        total.failed += count - next;
                        next = count;
                    }
                    // Refused (ICMP-reported unreachable, bad address, permission):
                    // that datagram only; the rest may go.
                    _ => {
                        total.failed += 1;
                        next += 1;
                    }
                }
            }
            if count < cap {
                break;
            }
        }
        total
    }
}

/// The kernel's receive time of a datagram (`SCM_TIMESTAMPNS`, µs of `CLOCK_REALTIME`)
/// among the control messages `recvmmsg` wrote into `h`.
fn receive_stamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: `h` is a header the kernel just filled: msg_control points at this
    // batch's control buffer and msg_controllen says how much of it holds control
    // messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay within that length.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(h) };
    while !cmsg.is_null() {
        // SAFETY: a non-null cmsg from CMSG_FIRSTHDR/NXTHDR lies within the buffer.
        let c = unsafe { &*cmsg };
        let len = c.cmsg_len as usize;
        // SAFETY: CMSG_LEN is arithmetic only.
        let want = unsafe { libc::CMSG_LEN(mem::size_of::<libc::timespec>() as u32) } as usize;
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_TIMESTAMPNS && len >= want {
            // SAFETY: the message is as long as a timespec after its header (checked),
            // and the data may be unaligned for timespec, so it is read unaligned.
            let ts =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>()) };
            let secs = u64::try_from(ts.tv_sec).ok()?;
            let nanos = u64::try_from(ts.tv_nsec).ok()?;
            return Some(secs.saturating_mul(1_000_000).saturating_add(nanos / 1000));
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(h, cmsg) };
    }
    None
}

/// Puts the kernel's receive times of datagrams (`CLOCK_REALTIME`, which is what
/// `SO_TIMESTAMPNS` gives) on the node's monotonic clock (µs since its epoch), with
/// both clocks read together once: `arrival = stamp + (mono - real)`. The result is
/// kept within [`RxClock::MAX_SKEW_US`] of the reading, so a step of the wall clock
/// (NTP, an operator) cannot throw an arrival time far off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RxClock {
    /// The monotonic clock at the reading (µs since the node's epoch).
    pub(crate) now_us: u64,
    /// `now_us` minus the wall clock at the reading (µs since the Unix epoch).
    offset_us: i128,
}

impl RxClock {
    /// How far from the reading an arrival time may lie.
    pub(crate) const MAX_SKEW_US: u64 = 1_000_000;

    /// Reads both clocks; `epoch` is where the node's monotonic clock counts from.
    pub(crate) fn read(epoch: std::time::Instant) -> RxClock {
        let now_us = epoch.elapsed().as_micros() as u64;
        let real_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i128)
            .unwrap_or(0);
        RxClock::from_readings(now_us, real_us)
    }

    fn from_readings(now_us: u64, real_us: i128) -> RxClock {
        RxClock {
            now_us,
            offset_us: i128::from(now_us) - real_us,
        }
    }

    /// When a datagram with kernel stamp `stamp_us` arrived, on the monotonic clock;
    /// the reading itself for one without a stamp.
    pub(crate) fn arrival_us(&self, stamp_us: Option<u64>) -> u64 {
        let Some(stamp) = stamp_us else {
            return self.now_us;
        };
        let arrival = i128::from(stamp) + self.offset_us;
        let low = self.now_us.saturating_sub(Self::MAX_SKEW_US);
        let high = self.now_us.saturating_add(Self::MAX_SKEW_US);
        u64::try_from(arrival.max(0))
            .unwrap_or(u64::MAX)
            .clamp(low, high)
    }
}

/// Reads an IPv4 or IPv6 socket address the kernel wrote.
fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in, which is smaller
            // than and alignment-compatible with sockaddr_storage.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `s` for the kernel; returns the length to pass along.
fn to_sockaddr(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in and is alignment-compatible with sockaddr_storage.
            let out =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = a.port().to_be();
            out.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            out.sin_zero = [0; 8];
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let out =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = a.port().to_be();
            out.sin6_flowinfo = a.flowinfo();
            out.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            out.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn echo_roundtrip(bind: &str) {
        let server = std::net::UdpSocket::bind(bind).expect("bind server");
        server.set_nonblocking(true).expect("nonblocking");
        let client = std::net::UdpSocket::bind(bind).expect("bind client");
        let to = server.local_addr().expect("addr");
        for i in 0..40u8 {
            client.send_to(&[i; 100], to).expect("send");
        }
        let mut batch = Batch::new();
        let mut got = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got < 40 && std::time::Instant::now() < deadline {
            batch.clear();
            let n = match batch.recv(server.as_raw_fd(), 7) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("recv: {e}"),
            };
            for i in 0..n {
                let p = batch.packet(i).expect("packet");
                assert_eq!(p.len, 100);
                assert_eq!(p.origin, 7);
                assert_eq!(p.src, client.local_addr().expect("addr"));
                p.slot[HEADROOM] = p.slot[HEADROOM].wrapping_add(1);
                let (len, src) = (p.len, p.src);
                batch.reply(i, len, src);
            }
            let fd = server.as_raw_fd();
            let sent = batch.flush(|via| (via == 7).then_some(fd));
            assert_eq!((sent.sent, sent.failed, sent.calls), (n, 0, 1));
            got += n;
        }
        assert_eq!(got, 40);
        let mut buf = [0u8; 200];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        for i in 0..40u8 {
            let (n, _) = client.recv_from(&mut buf).expect("echo");
            assert_eq!(n, 100);
            assert_eq!(buf[0], i + 1);
        }
    }

    #[test]
    fn receives_and_replies_in_place_ipv4() {
        echo_roundtrip("127.0.0.1:0");
    }

    #[test]
    fn receives_and_replies_in_place_ipv6() {
        echo_roundtrip("[::1]:0");
    }

    /// Datagrams that wait in the socket and are read in one batch keep the times the
    /// kernel received them: two sent 30 ms apart are 30 ms apart on the media clock,
    /// however late the batch is read.
    #[test]
    fn a_batch_keeps_each_datagrams_kernel_arrival_time() {
        let epoch = std::time::Instant::now();
        let server =
            crate::net::udp::bind_shared("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = server.local_addr().expect("addr");
        let mut batch = Batch::new();
        // The kernel turns stamping on a little after the first socket asks for it
        // (until then a datagram is stamped when it is read): wait for that.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            client.send_to(&[0; 40], to).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(20));
            batch.clear();
            assert_eq!(batch.recv(server.as_raw_fd(), 0).expect("recv"), 1);
            let rx = RxClock::read(epoch);
            if rx.arrival_us(batch.packet(0).expect("packet").stamp_us) + 19_000 <= rx.now_us {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "datagrams never stamped"
            );
        }
        batch.clear();
        client.send_to(&[1; 40], to).expect("send");
        std::thread::sleep(std::time::Duration::from_millis(30));
        client.send_to(&[2; 40], to).expect("send");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(batch.recv(server.as_raw_fd(), 0).expect("recv"), 2);
        let rx = RxClock::read(epoch);
        let first = batch.packet(0).expect("packet").stamp_us;
        let second = batch.packet(1).expect("packet").stamp_us;
        let (a, b) = (rx.arrival_us(first), rx.arrival_us(second));
        assert!(
            first.is_some() && second.is_some(),
            "no SO_TIMESTAMPNS stamps"
        );
        assert!(b >= a + 29_000, "{a} then {b}: not 30 ms apart");
        // Both arrived at least 50 ms before the batch was read.
        assert!(b + 49_000 <= rx.now_us, "{b} vs the reading {}", rx.now_us);
    }

    #[test]
    fn arrival_times_stay_near_the_reading() {
        let rx = RxClock::from_readings(5_000_000, 1_700_000_000_000_000);
        // 2 ms before the reading on the wall clock is 2 ms before it on the media clock.
        assert_eq!(rx.arrival_us(Some(1_699_999_999_998_000)), 4_998_000);
        assert_eq!(rx.arrival_us(Some(1_700_000_000_000_500)), 5_000_500);
        assert_eq!(rx.arrival_us(None), 5_000_000);
        // A wall clock that stepped an hour either way is held to a second.
        assert_eq!(rx.arrival_us(Some(1_699_996_400_000_000)), 4_000_000);
        assert_eq!(rx.arrival_us(Some(1_700_003_600_000_000)), 6_000_000);
        assert_eq!(rx.arrival_us(Some(0)), 4_000_000);
        assert_eq!(rx.arrival_us(Some(u64::MAX)), 6_000_000);
        // Early in the node's life the lower bound is its epoch.
        let young = RxClock::from_readings(300, 1_700_000_000_000_000);
        assert_eq!(young.arrival_us(Some(1_699_000_000_000_000)), 0);
    }

    #[test]
    fn empty_socket_would_block() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        let err = Batch::new()
            .recv(s.as_raw_fd(), 0)
            .expect_err("nothing queued");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn oversized_datagram_is_not_handed_out() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .send_to(
                &vec![1u8; MAX_DATAGRAM + 10],
                server.local_addr().expect("addr"),
            )
            .expect("send");
        server
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .expect("timeout");
        // Wait until it is queued, then take it with recvmmsg.
        let mut peek = [0u8; 1];
        let _ = server.peek_from(&mut peek);
        let mut batch = Batch::new();
        assert_eq!(batch.recv(server.as_raw_fd(), 0).expect("recv"), 1);
        assert!(batch.packet(0).is_none());
    }
}
