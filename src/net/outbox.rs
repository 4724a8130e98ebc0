//! What a worker's SFU sends through the kernel, batched: forwarded SRTP to each
//! receiver, RTCP, DTLS records, NACK answers, and their TURN-framed copies for clients
//! on our own relays.
//!
//! The SFU hands each datagram over in a scratch buffer it reuses for the next one, so
//! the outbox copies it into the next of its preallocated slots (one `memcpy` instead
//! of one `send_to`), and `flush` sends them all with one `sendmmsg` per socket
//! (`batch::SendMmsg`). The worker flushes when the outbox is full, after each receive
//! batch, after the SFU's timers and after the cross-worker inbox: before it waits
//! again. Each socket's datagrams leave in the order they were queued, so no stream is
//! reordered.

use crate::net::batch::{SendMmsg, Sent, by_socket};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;

/// Datagrams held before the outbox must be flushed.
pub(crate) const OUTBOX: usize = 128;
/// The longest datagram queued: a full `batch::MAX_DATAGRAM`-sized one plus room for
/// TURN framing. A longer one is not queued (`push` says so).
pub(crate) const OUTBOX_SLOT: usize = 2048 + 64;

/// Preallocated slots for `OUTBOX` datagrams, each with its destination and the socket
/// (the worker's socket index) it leaves through.
pub struct Outbox {
    bufs: Box<[u8]>,
    lens: Box<[usize]>,
    dsts: Box<[SocketAddr]>,
    vias: Box<[usize]>,
    queued: usize,
    /// Scratch for `flush`: slot indices grouped by socket.
    order: Box<[usize]>,
    tx: SendMmsg,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        let nowhere = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        Outbox {
            bufs: vec![0u8; OUTBOX * OUTBOX_SLOT].into_boxed_slice(),
            lens: vec![0; OUTBOX].into_boxed_slice(),
            dsts: vec![nowhere; OUTBOX].into_boxed_slice(),
            vias: vec![0; OUTBOX].into_boxed_slice(),
            queued: 0,
            order: vec![0; OUTBOX].into_boxed_slice(),
            tx: SendMmsg::new(OUTBOX),
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether none is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub(crate) fn is_full(&self) -> bool {
        self.queued >= OUTBOX
    }

    /// Queues a copy of `data` for `to` through socket `via`. Returns `false`, queuing
    /// nothing, when the outbox is full (flush it first) or `data` is longer than
    /// `OUTBOX_SLOT` (send it some other way, after flushing, to keep the order).
    pub(crate) fn push(&mut self, data: &[u8], to: SocketAddr, via: usize) -> bool {
        let i = self.queued;
        if i >= OUTBOX || data.len() > OUTBOX_SLOT {
            return false;
        }
        let at = i * OUTBOX_SLOT;
        let Some(slot) = self.bufs.get_mut(at..at + data.len()) else {
            return false;
        };
        slot.copy_from_slice(data);
        self.lens[i] = data.len();
        self.dsts[i] = to;
        self.vias[i] = via;
        self.queued = i + 1;
        true
    }

    /// Sends everything queued, with one `sendmmsg` per socket (`fd_of` maps `via` to
    /// it; `None` drops those datagrams as failed), each socket's in the order queued;
    /// see `SendMmsg::send` for partial sends and refusals. Empties the outbox.
    pub(crate) fn flush(&mut self, fd_of: impl Fn(usize) -> Option<RawFd>) -> Sent {
        let n = self.queued;
        self.queued = 0;
        let mut total = Sent::default();
        if n == 0 {
            return total;
        }
        let Outbox {
            bufs,
            lens,
            dsts,
            vias,
            order,
            tx,
            ..
        } = self;
        for (i, o) in order[..n].iter_mut().enumerate() {
            *o = i;
        }
        let (bufs, lens, dsts) = (&*bufs, &*lens, &*dsts);
        by_socket(
            &mut order[..n],
            |i| vias[i],
            |via, group| match fd_of(via) {
                Some(fd) => {
                    let datagrams = group.iter().filter_map(|&i| {
                        let at = i * OUTBOX_SLOT;
                        Some((bufs.get(at..at + lens[i])?, dsts[i]))
                    });
                    total.add(tx.send(fd, datagrams));
                }
                None => total.failed += group.len(),
            },
        );
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    }

    fn addr(s: &UdpSocket) -> SocketAddr {
        s.local_addr().expect("addr")
    }

    /// Receives `n` datagrams on `s`: (first byte, second byte, sender).
    fn receive(s: &UdpSocket, n: usize) -> Vec<(u8, u8, SocketAddr)> {
        let mut buf = [0u8; 4096];
        (0..n)
            .map(|_| {
                let (len, from) = s.recv_from(&mut buf).expect("datagram");
                assert!(len >= 2);
                (buf[0], buf[1], from)
            })
            .collect()
    }

    fn nothing_more(s: &UdpSocket) {
        s.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 16];
        assert!(s.recv_from(&mut buf).is_err(), "an extra datagram");
    }

    #[test]
    fn fills_then_refuses_until_flushed() {
        let via = socket();
        let to = socket();
        let mut out = Outbox::new();
        let data = [7u8; 1200];
        for i in 0..OUTBOX {
            assert!(!out.is_full());
            assert!(out.push(&data, addr(&to), 0), "slot {i}");
        }
        assert!(out.is_full());
        assert_eq!(out.len(), OUTBOX);
        assert!(!out.push(&data, addr(&to), 0), "full");
        assert!(!Outbox::new().push(&[0u8; OUTBOX_SLOT + 1], addr(&to), 0));
        assert!(Outbox::new().push(&[0u8; OUTBOX_SLOT], addr(&to), 0));
        let fd = via.as_raw_fd();
        // Nothing sent for a socket that is gone: all failed.
        let mut gone = Outbox::new();
        gone.push(&data, addr(&to), 3);
        let sent = gone.flush(|_| None);
        assert_eq!((sent.sent, sent.failed, sent.calls), (0, 1, 0));
        assert!(gone.is_empty());
        // A receive buffer that takes 128 datagrams of 1200 bytes on loopback.
        let _ = socket2::SockRef::from(&to).set_recv_buffer_size(4 << 20);
        let sent = out.flush(|v| (v == 0).then_some(fd));
        assert_eq!((sent.sent, sent.failed, sent.calls), (OUTBOX, 0, 1));
        assert!(out.is_empty());
        assert_eq!(out.flush(|_| Some(fd)), Sent::default(), "empty flush");
    }

    #[test]
    fn flushes_in_order_grouped_per_socket() {
        let (a, b) = (socket(), socket());
        let (x, y) = (socket(), socket());
        let mut out = Outbox::new();
        // Interleaved: socket 0 to x and y, socket 1 to x.
        for seq in 0..30u8 {
            let (via, to) = match seq % 3 {
                0 => (0, &x),
                1 => (1, &x),
                _ => (0, &y),
            };
            assert!(out.push(&[via as u8, seq, 0, 0], addr(to), via));
        }
        let fds = [a.as_raw_fd(), b.as_raw_fd()];
        let sent = out.flush(|v| fds.get(v).copied());
        // One sendmmsg per socket.
        assert_eq!((sent.sent, sent.failed, sent.calls), (30, 0, 2));
        let at_x = receive(&x, 20);
        let at_y = receive(&y, 10);
        nothing_more(&x);
        nothing_more(&y);
        for (via, from) in [(0u8, addr(&a)), (1, addr(&b))] {
            let seqs: Vec<u8> = at_x
                .iter()
                .filter(|&&(v, _, f)| v == via && f == from)
                .map(|&(_, s, _)| s)
                .collect();
            let want: Vec<u8> = (0..30).filter(|s| s % 3 == via).collect();
            assert_eq!(seqs, want, "from socket {via} to x, in order");
        }
        let seqs: Vec<u8> = at_y.iter().map(|&(_, s, _)| s).collect();
        assert_eq!(seqs, (0..30).filter(|s| s % 3 == 2).collect::<Vec<u8>>());
        assert!(at_y.iter().all(|&(v, _, f)| v == 0 && f == addr(&a)));
    }

    #[test]
    fn a_refused_datagram_is_skipped_and_the_rest_sent() {
        // An IPv6 destination through an IPv4 socket: the kernel takes the datagrams
        // before it (a partial sendmmsg), refuses it, then takes those after.
        let via = socket();
        let to = socket();
        let v6: SocketAddr = "[::1]:9".parse().expect("addr");
        let mut out = Outbox::new();
        for seq in 0..10u8 {
            let dst = if seq == 4 || seq == 7 { v6 } else { addr(&to) };
            assert!(out.push(&[0, seq], dst, 0));
        }
        let fd = via.as_raw_fd();
        let sent = out.flush(|_| Some(fd));
        assert_eq!((sent.sent, sent.failed), (8, 2));
        // 0..4, refused 4, 5..7, refused 7, 8..10.
        assert_eq!(sent.calls, 5);
        let seqs: Vec<u8> = receive(&to, 8).iter().map(|&(_, s, _)| s).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 5, 6, 8, 9]);
        nothing_more(&to);
    }

    #[test]
    fn more_than_a_call_holds_goes_in_several_calls() {
        let via = socket();
        let to = socket();
        let _ = socket2::SockRef::from(&to).set_recv_buffer_size(1 << 20);
        let mut tx = SendMmsg::new(4);
        let data: Vec<[u8; 2]> = (0..10u8).map(|i| [0, i]).collect();
        let sent = tx.send(via.as_raw_fd(), data.iter().map(|d| (&d[..], addr(&to))));
        assert_eq!((sent.sent, sent.failed, sent.calls), (10, 0, 3));
        let seqs: Vec<u8> = receive(&to, 10).iter().map(|&(_, s, _)| s).collect();
        assert_eq!(seqs, (0..10).collect::<Vec<u8>>());
    }
}
