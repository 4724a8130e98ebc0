//! Hand-over between data-plane workers: the SFU of one worker sending to the relayed
//! transport address of a TURN allocation that another worker holds.
//!
//! Allocations are per worker (`SO_REUSEPORT` spreads clients over the workers), and
//! the SFU forwards a publisher's media from the worker that received it, so the copy
//! for a subscriber who reaches the SFU through our own TURN may be for a relay of
//! another worker. Rather than sending it through the kernel from our media port to
//! that relay socket, the sending worker finds the owner in the `RelayDirectory` and
//! queues the datagram in the owner's `Inbox`; the owner drains its inbox in its loop
//! and gives each datagram to its TURN core as arriving on that relay from our media
//! address, as it does with its own SFU's (see `net::worker`).
//!
//! Why a table indexed by port: every relay socket of a family binds to the one relay
//! address of that family (`Shared::relay_v4`/`relay_v6`) at a port of `turn.relay_ports`,
//! and a port is bound once, so the port names the relay. One atomic word per port of
//! the range says which worker holds it: written when a relay socket is registered or
//! closed (rare), read with one relaxed load per datagram the SFU sends to the relay
//! address (no lock, no hashing, nothing to cache and invalidate). Encoding the worker
//! in the port (a slice of the range per worker) would need no table at all, but it
//! would change how the TURN core picks ports (and EVEN-PORT reservations, which one
//! worker makes and another may take), and it would split the range unevenly when the
//! kernel spreads clients unevenly. A stale answer is harmless: the owner checks its
//! own table, and what it does not find there goes through the kernel as before.
//!
//! The queue: per destination worker, a `Mutex` over a ring of preallocated slots,
//! swapped whole with an empty ring by the consumer (so a producer holds the lock for
//! one copy, the consumer for one swap). Slots are allocated the first time the ring
//! grows to them and reused after: no allocation per datagram in steady state, and no
//! memory for nodes that never hand anything over. A full ring refuses the datagram
//! (the caller sends it through the kernel) instead of blocking the sender. The
//! producer that puts the first datagram into an empty ring wakes the owner with its
//! `mio::Waker`, the one it already has for shutdown; a wake only makes the owner's
//! loop turn, so it keeps no worker alive.

use crate::config::PortRange;
use crate::net::batch::HEADROOM;
use mio::Waker;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Room for one datagram the SFU sends to a relayed address, with `HEADROOM` in front
/// for the ChannelData header or Data indication the TURN core writes there. The SFU's
/// buffers hold at most 2048 bytes.
pub(crate) const SLOT: usize = HEADROOM + 2048;
/// Datagrams one worker's inbox holds before senders fall back to the kernel.
pub(crate) const INBOX_CAPACITY: usize = 512;

/// What every worker shares for hand-overs: who holds which relay, and each worker's
/// inbox.
pub(crate) struct Handoff {
    directory: RelayDirectory,
    inboxes: Box<[Inbox]>,
}

impl crate::router::RelayDirectory for Handoff {
    fn owner(&self, addr: SocketAddr) -> Option<usize> {
        Handoff::owner(self, addr)
    }

    fn covers(&self, addr: SocketAddr) -> bool {
        Handoff::covers(self, addr)
    }
}

impl Handoff {
    /// For `workers` workers whose relay sockets bind to `relay_v4`/`relay_v6` at ports
    /// of `ports`.
    pub(crate) fn new(
        workers: usize,
        ports: PortRange,
        relay_v4: Option<IpAddr>,
        relay_v6: Option<IpAddr>,
    ) -> Handoff {
        Handoff {
            directory: RelayDirectory::new(ports, relay_v4, relay_v6),
            inboxes: (0..workers).map(|_| Inbox::default()).collect(),
        }
    }

    /// Gives worker `worker` the waker its inbox wakes it with (once; later calls do
    /// nothing).
    pub(crate) fn set_waker(&self, worker: usize, waker: Arc<Waker>) {
        if let Some(inbox) = self.inboxes.get(worker) {
            let _ = inbox.waker.set(waker);
        }
    }

    /// Notes that worker `worker` holds the relay socket bound to `addr`.
    pub(crate) fn register(&self, addr: SocketAddr, worker: usize) {
        if worker < self.inboxes.len() {
            self.directory.register(addr, worker);
        }
    }

    /// Notes that worker `worker` closed the relay socket bound to `addr`.
    pub(crate) fn unregister(&self, addr: SocketAddr, worker: usize) {
        self.directory.unregister(addr, worker);
    }

    /// The worker holding the relay socket bound to `addr`, if it is one of ours.
    pub(crate) fn owner(&self, addr: SocketAddr) -> Option<usize> {
        self.directory.owner(addr)
    }

    /// Whether `addr` is in the table's space (the relay address and port range), so
    /// that [`Handoff::owner`] answers for it with authority.
    pub(crate) fn covers(&self, addr: SocketAddr) -> bool {
        self.directory.entry(addr).is_some()
    }

    /// Queues `data`, which the SFU sends to `to` through listener `via`, for worker
    /// `worker`, and wakes it if its inbox was empty. Returns false, queuing nothing,
    /// when the inbox is full, the datagram too long, or there is no such worker.
    pub(crate) fn push(&self, worker: usize, data: &[u8], to: SocketAddr, via: usize) -> bool {
        let Some(inbox) = self.inboxes.get(worker) else {
            return false;
        };
        let was_empty = {
            let mut ring = lock(&inbox.ring);
            if !ring.push(data, to, via) {
                return false;
            }
            ring.len == 1
        };
        if was_empty && let Some(waker) = inbox.waker.get() {
            // An error leaves the datagram queued: the owner drains its inbox on every
            // turn of its loop, at the latest at its next sweep.
            let _ = waker.wake();
        }
        true
    }

    /// Takes everything queued for worker `worker`: swaps its inbox with `spare`, which
    /// must be empty (it is cleared first). Returns whether anything was queued.
    pub(crate) fn take(&self, worker: usize, spare: &mut Ring) -> bool {
        spare.len = 0;
        let Some(inbox) = self.inboxes.get(worker) else {
            return false;
        };
        let mut ring = lock(&inbox.ring);
        if ring.len == 0 {
            return false;
        }
        std::mem::swap(&mut *ring, spare);
        true
    }
}

/// A poisoned lock still holds consistent slots (a push or swap cannot panic halfway).
fn lock(m: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct Inbox {
    ring: Mutex<Ring>,
    waker: OnceLock<Arc<Waker>>,
}

/// Queued datagrams: the first `len` of `slots`, oldest first.
#[derive(Default)]
pub struct Ring {
    slots: Vec<Slot>,
    len: usize,
}

/// One queued datagram: `len` bytes at `HEADROOM` in `buf`, for `to`, sent by the SFU
/// through listener `via`.
pub(crate) struct Slot {
    pub(crate) to: SocketAddr,
    pub(crate) via: usize,
    pub(crate) len: usize,
    /// `SLOT` bytes: `HEADROOM` free, then the datagram, then free space.
    pub(crate) buf: Box<[u8]>,
}

impl Ring {
    fn push(&mut self, data: &[u8], to: SocketAddr, via: usize) -> bool {
        if self.len >= INBOX_CAPACITY || data.len() > SLOT - HEADROOM {
            return false;
        }
        if self.len == self.slots.len() {
            // Growing to a size not reached before: allocated once, reused after.
            self.slots.push(Slot {
                to,
                via,
                len: 0,
                buf: vec![0u8; SLOT].into_boxed_slice(),
            });
        }
        let Some(slot) = self.slots.get_mut(self.len) else {
            return false;
        };
        let Some(room) = slot.buf.get_mut(HEADROOM..HEADROOM + data.len()) else {
            return false;
        };
        room.copy_from_slice(data);
        slot.to = to;
        slot.via = via;
        slot.len = data.len();
        self.len += 1;
        true
    }

    /// The queued datagrams, oldest first, to be framed in place.
    pub(crate) fn slots_mut(&mut self) -> &mut [Slot] {
        let len = self.len.min(self.slots.len());
        &mut self.slots[..len]
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the queued datagrams (their slots stay, for reuse).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

/// Which worker holds the relay socket at each port of the relay range, per family:
/// 0 for none, else the worker's index + 1.
struct RelayDirectory {
    ports: PortRange,
    v4: Option<(IpAddr, Box<[AtomicU32]>)>,
    v6: Option<(IpAddr, Box<[AtomicU32]>)>,
}

impl RelayDirectory {
    fn new(ports: PortRange, relay_v4: Option<IpAddr>, relay_v6: Option<IpAddr>) -> Self {
        let size = usize::from(ports.last.saturating_sub(ports.first)) + 1;
        let table = |ip: Option<IpAddr>| {
            // An unspecified relay address names no relayed transport address.
            ip.filter(|ip| !ip.is_unspecified())
                .map(|ip| (ip, (0..size).map(|_| AtomicU32::new(0)).collect()))
        };
        RelayDirectory {
            ports,
            v4: table(relay_v4.filter(IpAddr::is_ipv4)),
            v6: table(relay_v6.filter(IpAddr::is_ipv6)),
        }
    }

    /// The entry for `addr`: its family's relay address, at a port of the range.
    fn entry(&self, addr: SocketAddr) -> Option<&AtomicU32> {
        let (ip, owners) = match addr {
            SocketAddr::V4(_) => self.v4.as_ref()?,
            SocketAddr::V6(_) => self.v6.as_ref()?,
        };
        if addr.ip() != *ip {
            return None;
        }
        let i = addr.port().checked_sub(self.ports.first)?;
        owners.get(usize::from(i))
    }

    fn register(&self, addr: SocketAddr, worker: usize) {
        if let (Some(e), Some(v)) = (self.entry(addr), tag(worker)) {
            e.store(v, Ordering::Relaxed);
        }
    }

    /// Clears the entry if it is still `worker`'s: the port may already be another's
    /// (a closed socket's port is free to bind before its worker gets here).
    fn unregister(&self, addr: SocketAddr, worker: usize) {
        if let (Some(e), Some(v)) = (self.entry(addr), tag(worker)) {
            let _ = e.compare_exchange(v, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn owner(&self, addr: SocketAddr) -> Option<usize> {
        // Relaxed: a stale owner is checked by the owner itself (see the module doc).
        match self.entry(addr)?.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v as usize - 1),
        }
    }
}

/// What the directory stores for worker `worker`.
fn tag(worker: usize) -> Option<u32> {
    worker.checked_add(1).and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff(workers: usize) -> Handoff {
        Handoff::new(
            workers,
            PortRange {
                first: 50000,
                last: 50009,
            },
            Some([127, 0, 0, 1].into()),
            None,
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn the_directory_knows_relays_by_address_and_port_until_closed() {
        let h = handoff(4);
        let relay = addr("127.0.0.1:50003");
        assert_eq!(h.owner(relay), None);
        h.register(relay, 2);
        assert_eq!(h.owner(relay), Some(2));
        // Another address at that port, another family, ports out of range: not ours.
        assert_eq!(h.owner(addr("127.0.0.2:50003")), None);
        assert_eq!(h.owner(addr("[::1]:50003")), None);
        assert_eq!(h.owner(addr("127.0.0.1:49999")), None);
        assert_eq!(h.owner(addr("127.0.0.1:50010")), None);
        h.register(addr("127.0.0.1:50010"), 1);
        assert_eq!(h.owner(addr("127.0.0.1:50010")), None);
        // A worker that is no worker of the node registers nothing.
        h.register(addr("127.0.0.1:50004"), 4);
        assert_eq!(h.owner(addr("127.0.0.1:50004")), None);
        // The port was taken by worker 3 before worker 2 got to unregister it.
        h.register(relay, 3);
        h.unregister(relay, 2);
        assert_eq!(h.owner(relay), Some(3));
        h.unregister(relay, 3);
        assert_eq!(h.owner(relay), None);
        // The whole range, both ends.
        h.register(addr("127.0.0.1:50000"), 0);
        h.register(addr("127.0.0.1:50009"), 1);
        assert_eq!(h.owner(addr("127.0.0.1:50000")), Some(0));
        assert_eq!(h.owner(addr("127.0.0.1:50009")), Some(1));
    }

    #[test]
    fn a_full_range_and_no_relay_family_are_fine() {
        let h = Handoff::new(
            1,
            PortRange {
                first: 1,
                last: 65535,
            },
            None,
            Some("::1".parse().expect("ip")),
        );
        h.register(addr("[::1]:65535"), 0);
        h.register(addr("[::1]:1"), 0);
        assert_eq!(h.owner(addr("[::1]:65535")), Some(0));
        assert_eq!(h.owner(addr("[::1]:1")), Some(0));
        assert_eq!(h.owner(addr("[::1]:0")), None);
        h.register(addr("127.0.0.1:5000"), 0);
        assert_eq!(h.owner(addr("127.0.0.1:5000")), None);
    }

    #[test]
    fn inboxes_queue_in_order_refuse_when_full_and_reuse_their_slots() {
        let h = handoff(2);
        let to = addr("127.0.0.1:50001");
        let mut spare = Ring::default();
        assert!(!h.take(0, &mut spare));
        for i in 0..INBOX_CAPACITY {
            assert!(h.push(0, &(i as u32).to_be_bytes(), to, i % 3));
        }
        assert!(!h.push(0, b"one too many", to, 0), "full");
        assert!(h.push(1, b"another inbox", to, 0));
        assert!(!h.push(2, b"no such worker", to, 0));
        assert!(!h.push(1, &[0u8; 2049], to, 0), "too long");
        assert!(h.push(1, &[7u8; 2048], to, 0));

        assert!(h.take(0, &mut spare));
        assert_eq!(spare.len(), INBOX_CAPACITY);
        for (i, s) in spare.slots_mut().iter().enumerate() {
            assert_eq!(s.to, to);
            assert_eq!(s.via, i % 3);
            assert_eq!(&s.buf[HEADROOM..HEADROOM + s.len], (i as u32).to_be_bytes());
        }
        // Emptied: it takes datagrams again, into the slots of the spare ring.
        assert!(!h.take(0, &mut spare));
        assert!(spare.is_empty());
        assert!(h.push(0, b"again", to, 1));
        assert!(h.take(0, &mut spare));
        assert_eq!(spare.len(), 1);
        let s = &spare.slots_mut()[0];
        assert_eq!(&s.buf[HEADROOM..HEADROOM + s.len], b"again");

        assert!(h.take(1, &mut spare));
        assert_eq!(spare.len(), 2);
        assert_eq!(spare.slots_mut()[1].len, 2048);
    }

    #[test]
    fn a_push_into_an_empty_inbox_wakes_its_worker() {
        let mut poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(7)).expect("waker"));
        let h = handoff(1);
        h.set_waker(0, waker);
        assert!(h.push(0, b"x", addr("127.0.0.1:50001"), 0));
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .expect("poll");
        assert!(events.iter().any(|e| e.token() == mio::Token(7)));
    }
}
