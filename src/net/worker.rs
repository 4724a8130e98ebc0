//! A data-plane worker: one thread with its own `mio` event loop, its own
//! `SO_REUSEPORT` socket per listen address, and the relay sockets of the TURN
//! allocations it owns. Workers share nothing on the hot path but counters, which they
//! add to once per batch.
//!
//! The kernel hashes a client's address to one of the listener sockets, so every packet
//! of a client reaches the worker that holds its allocation.
//!
//! SFU media is forwarded by the worker that receives it from the publisher: each
//! receiver's copy leaves at once through this worker's listener socket of the same
//! index as the receiver's own (every worker's socket on that local address sends from
//! it), see `sfu::session`.

use crate::metrics::{MediaDrop, TransportCounters, TurnMetrics};
use crate::net::batch::{Batch, HEADROOM};
use crate::net::demux::{self, Class};
use crate::sfu::session::{CheckVerdict, MediaSessions, MediaVerdict, SessionCache};
use crate::stun;
use crate::turn::server::{Action, ClientKey, Clock, DropReason, RelayId, RelayIo, TurnCore};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAKER: Token = Token(usize::MAX);
/// Batches served before the event loop polls again.
const BATCHES_PER_TURN: usize = 64;
/// How often expired allocations, permissions and channels are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Socket buffers of relay sockets: one per allocation, so smaller than a listener's.
const RELAY_BUFFER: usize = 256 << 10;

/// A running worker: wake it to make it look at the shutdown flag.
pub struct WorkerHandle {
    pub waker: Arc<Waker>,
    pub thread: JoinHandle<()>,
}

/// What a worker needs besides its sockets.
pub struct WorkerSetup {
    pub id: usize,
    pub counters: TransportCounters,
    pub turn: TurnCore,
    pub turn_metrics: TurnMetrics,
    pub shutdown: Arc<AtomicBool>,
    /// Where `Clock::mono_ms` counts from, the same for every core of the node.
    pub epoch: Instant,
    /// The SFU's media sessions, which ICE checks on the media port are routed to.
    pub media: Arc<MediaSessions>,
}

/// Starts a worker thread serving the listener `sockets`. It runs until `shutdown` is
/// set and the waker is woken.
pub fn spawn(sockets: Vec<std::net::UdpSocket>, setup: WorkerSetup) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut table = SocketTable {
        registry: poll.registry().try_clone()?,
        sockets: Vec::new(),
        free: Vec::new(),
        listeners: sockets.len(),
    };
    for s in sockets {
        table.insert(UdpSocket::from_std(s))?;
    }
    let id = setup.id;
    let thread = std::thread::Builder::new()
        .name(format!("confnode-worker-{id}"))
        .spawn(move || {
            let sessions = SessionCache::new(id, setup.media.clone());
            let mut worker = Worker {
                poll,
                table,
                ready: Ready::default(),
                batch: Batch::new(),
                setup,
                sessions,
            };
            if let Err(e) = worker.run() {
                tracing::error!("data-plane worker {id} stopped: {e}");
            }
        })?;
    Ok(WorkerHandle { waker, thread })
}

/// The worker's sockets: listeners first (index = listener number), then relay
/// sockets. A socket's index is its mio token and, for relays, its `RelayId`.
struct SocketTable {
    registry: Registry,
    sockets: Vec<Option<UdpSocket>>,
    free: Vec<usize>,
    listeners: usize,
}

impl SocketTable {
    fn insert(&mut self, mut socket: UdpSocket) -> io::Result<usize> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.sockets.push(None);
                self.sockets.len() - 1
            }
        };
        if let Err(e) = self
            .registry
            .register(&mut socket, Token(index), Interest::READABLE)
        {
            self.free.push(index);
            return Err(e);
        }
        self.sockets[index] = Some(socket);
        Ok(index)
    }

    fn fd(&self, index: usize) -> Option<RawFd> {
        self.sockets.get(index)?.as_ref().map(|s| s.as_raw_fd())
    }

    /// Sends one datagram at once through listener `via` (the SFU's DTLS records: rare,
    /// and several per flight, so not through the batch's one reply slot). Returns
    /// whether the kernel took it; a lost record is retransmitted by DTLS.
    fn send_now(&self, data: &[u8], to: SocketAddr, via: usize) -> bool {
        if via >= self.listeners {
            return false;
        }
        match self.sockets.get(via).and_then(Option::as_ref) {
            Some(socket) => socket.send_to(data, to).is_ok(),
            None => false,
        }
    }
}

impl RelayIo for SocketTable {
    fn open(&mut self, addr: SocketAddr) -> io::Result<RelayId> {
        let socket = self.reserve(addr)?;
        self.adopt(socket)
    }

    fn reserve(&mut self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        crate::net::udp::bind_relay(addr, RELAY_BUFFER)
    }

    fn adopt(&mut self, socket: std::net::UdpSocket) -> io::Result<RelayId> {
        self.insert(UdpSocket::from_std(socket))
    }

    fn close(&mut self, id: RelayId) {
        if id < self.listeners {
            return;
        }
        if let Some(mut socket) = self.sockets.get_mut(id).and_then(Option::take) {
            let _ = self.registry.deregister(&mut socket);
            self.free.push(id);
        }
    }
}

struct Worker {
    poll: Poll,
    table: SocketTable,
    ready: Ready,
    batch: Batch,
    setup: WorkerSetup,
    /// This worker's cache of the SFU's sessions, by our ICE ufrag.
    sessions: SessionCache,
}

/// Sockets with datagrams (maybe) waiting, in the order they became ready; each
/// socket is queued once. A socket leaves the queue when it would block.
#[derive(Default)]
struct Ready {
    queue: std::collections::VecDeque<usize>,
    queued: Vec<bool>,
}

impl Ready {
    fn push(&mut self, index: usize) {
        if self.queued.len() <= index {
            self.queued.resize(index + 1, false);
        }
        if !self.queued[index] {
            self.queued[index] = true;
            self.queue.push_back(index);
        }
    }

    fn rotate(&mut self) {
        if let Some(index) = self.queue.pop_front() {
            self.queue.push_back(index);
        }
    }

    fn pop(&mut self) {
        if let Some(index) = self.queue.pop_front()
            && let Some(q) = self.queued.get_mut(index)
        {
            *q = false;
        }
    }
}

/// What a turn of the loop came to, added to the shared counters once.
#[derive(Default)]
struct Tally {
    received: u64,
    answered: u64,
    malformed: u64,
    unhandled: u64,
    send_failed: u64,
    to_peer: (u64, u64),
    to_client: (u64, u64),
    /// SFU media unprotected: (packets, bytes) of RTP and RTCP.
    rtp: (u64, u64),
    rtcp: (u64, u64),
    /// SFU media dropped, by `MediaDrop` (in `media_drop_index` order).
    media_dropped: [u64; 6],
}

fn media_drop_index(reason: MediaDrop) -> usize {
    match reason {
        MediaDrop::Unvalidated => 0,
        MediaDrop::NoKeys => 1,
        MediaDrop::AuthFailed => 2,
        MediaDrop::Replayed => 3,
        MediaDrop::Malformed => 4,
        MediaDrop::Dtls => 5,
    }
}

impl Worker {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            let busy = !self.ready.queue.is_empty();
            // The next DTLS retransmission, if sooner than the sweep.
            let wake = match self.sessions.next_timer() {
                Some(ms) => next_sweep.min(self.setup.epoch + Duration::from_millis(ms)),
                None => next_sweep,
            };
            let timeout = if busy {
                Duration::ZERO
            } else {
                wake.saturating_duration_since(Instant::now())
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let Token(i) = event.token();
                if i == WAKER.0 {
                    continue;
                }
                self.ready.push(i);
            }
            if self.setup.shutdown.load(Ordering::Relaxed) {
                self.setup.turn.close_all(&mut self.table);
                return Ok(());
            }
            self.serve();
            self.run_dtls_timers();
            if Instant::now() >= next_sweep {
                let clock = self.clock();
                self.setup.turn.sweep(clock, &mut self.table);
                self.sessions.sweep();
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
        }
    }

    /// Retransmits the DTLS flights whose timers ran out.
    fn run_dtls_timers(&mut self) {
        let now = self.clock().mono_ms;
        if self.sessions.next_timer().is_none_or(|t| t > now) {
            return;
        }
        let table = &self.table;
        let mut failed = 0u64;
        self.sessions.run_timers(now, &mut |data, to, via| {
            if !table.send_now(data, to, via) {
                failed += 1;
            }
        });
        if failed > 0 {
            self.setup.counters.send_failed.inc_by(failed);
        }
    }

    fn clock(&self) -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Clock {
            mono_ms: self.setup.epoch.elapsed().as_millis() as u64,
            unix,
        }
    }

    /// Fills batches from the ready sockets (several sockets share a batch, so that
    /// what they relay towards one listener leaves in one `sendmmsg`), handles and
    /// flushes them, for up to `BATCHES_PER_TURN` batches.
    fn serve(&mut self) {
        let clock = self.clock();
        for _ in 0..BATCHES_PER_TURN {
            let mut tally = Tally::default();
            self.batch.clear();
            while !self.batch.is_full() {
                let Some(&index) = self.ready.queue.front() else {
                    break;
                };
                let Some(fd) = self.table.fd(index) else {
                    self.ready.pop();
                    continue;
                };
                match self.batch.recv(fd, index) {
                    // It may have more: to the back of the queue, so that one busy
                    // socket cannot starve the others.
                    Ok(_) => self.ready.rotate(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // WouldBlock: drained. Anything else is an ICMP error queued
                        // on the socket for an earlier datagram: nothing to read now
                        // either way.
                        if e.kind() != io::ErrorKind::WouldBlock {
                            tracing::trace!("receive error: {e}");
                        }
                        self.ready.pop();
                    }
                }
            }
            if self.batch.is_empty() {
                break;
            }
            tally.received += self.batch.len() as u64;
            for j in 0..self.batch.len() {
                self.handle(j, clock, &mut tally);
            }
            // Counted before the answers leave, so a client that got its answer finds
            // it counted on /metrics.
            self.count(&tally);
            let table = &self.table;
            let sent = self.batch.flush(|via| table.fd(via));
            if sent.failed > 0 {
                self.setup.counters.send_failed.inc_by(sent.failed as u64);
            }
        }
    }

    /// Lets the right core see datagram `j` of the batch and marks what it answers.
    fn handle(&mut self, j: usize, clock: Clock, tally: &mut Tally) {
        let listeners = self.table.listeners;
        let Some(p) = self.batch.packet(j) else {
            tally.malformed += 1;
            return;
        };
        let (src, len, origin) = (p.src, p.len, p.origin);
        let action = if origin >= listeners {
            self.setup
                .turn
                .handle_peer(clock, origin, src, p.slot, HEADROOM, len)
        } else {
            let data = &mut p.slot[HEADROOM..];
            match demux::classify(&data[..len]) {
                Class::Stun if !TurnCore::is_turn_method(data) => {
                    match stun::answer(data, len, src) {
                        stun::Verdict::Reply(n) => {
                            tally.answered += 1;
                            Action::Reply(n)
                        }
                        stun::Verdict::Indication => Action::Drop(DropReason::Consumed),
                        // An ICE check (a Binding request with MESSAGE-INTEGRITY)
                        // for one of the SFU's sessions, or nothing we answer.
                        stun::Verdict::Unhandled => {
                            match self.sessions.answer_check(data, len, src, clock.mono_ms) {
                                CheckVerdict::Reply(n) => {
                                    tally.answered += 1;
                                    Action::Reply(n)
                                }
                                CheckVerdict::NotOurs => Action::Drop(DropReason::Unhandled),
                                CheckVerdict::Malformed => Action::Drop(DropReason::Malformed),
                            }
                        }
                        stun::Verdict::Malformed => Action::Drop(DropReason::Malformed),
                    }
                }
                Class::Stun | Class::ChannelData => {
                    let client = ClientKey {
                        listener: origin,
                        addr: src,
                    };
                    self.setup
                        .turn
                        .handle_client(clock, client, data, len, &mut self.table)
                }
                // The SFU's DTLS and SRTP, routed by the client's validated address.
                Class::Dtls | Class::Rtp => {
                    let table = &self.table;
                    let verdict = self.sessions.handle_media(
                        &mut data[..len],
                        src,
                        origin,
                        clock.mono_ms,
                        &mut |record, to, via| {
                            if !table.send_now(record, to, via) {
                                tally.send_failed += 1;
                            }
                        },
                    );
                    match verdict {
                        MediaVerdict::Dtls => {}
                        MediaVerdict::Rtp(_) => {
                            tally.rtp.0 += 1;
                            tally.rtp.1 += len as u64;
                        }
                        MediaVerdict::Rtcp(_) => {
                            tally.rtcp.0 += 1;
                            tally.rtcp.1 += len as u64;
                        }
                        MediaVerdict::Dropped(reason) => {
                            tally.media_dropped[media_drop_index(reason)] += 1;
                        }
                    }
                    // RTP from a publisher was forwarded to its receivers inside
                    // `handle_media`; nothing more to send for this datagram.
                    return;
                }
                Class::Unknown => Action::Drop(DropReason::Malformed),
            }
        };
        match action {
            Action::Reply(n) => self.batch.reply(j, n, src),
            Action::ToPeer {
                relay,
                peer,
                start,
                len,
            } => {
                tally.to_peer.0 += 1;
                tally.to_peer.1 += len as u64;
                self.batch.send_from(j, HEADROOM + start, len, peer, relay);
            }
            Action::ToClient { client, start, len } => {
                tally.to_client.0 += 1;
                tally.to_client.1 += len as u64;
                self.batch
                    .send_from(j, start, len, client.addr, client.listener);
            }
            Action::Drop(DropReason::Malformed) => tally.malformed += 1,
            Action::Drop(
                DropReason::Unhandled
                | DropReason::NoRoute
                | DropReason::RateLimited
                | DropReason::Bandwidth,
            ) => tally.unhandled += 1,
            Action::Drop(DropReason::Consumed) => {}
        }
    }

    fn count(&mut self, t: &Tally) {
        let forwarding = self.sessions.take_counts();
        let c = &self.setup.counters;
        let m = &self.setup.turn_metrics;
        let sfu = self.setup.media.metrics();
        let media_drops = [
            &sfu.dropped_unvalidated,
            &sfu.dropped_no_keys,
            &sfu.dropped_auth_failed,
            &sfu.dropped_replayed,
            &sfu.dropped_malformed,
            &sfu.dropped_dtls,
        ];
        for (counter, &n) in media_drops.into_iter().zip(&t.media_dropped) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        for (counter, n) in [
            (&c.received, t.received),
            (&c.stun_answered, t.answered),
            (&c.malformed, t.malformed),
            (&c.unhandled, t.unhandled),
            (&c.send_failed, t.send_failed),
            (&m.relayed_packets_to_peer, t.to_peer.0),
            (&m.relayed_bytes_to_peer, t.to_peer.1),
            (&m.relayed_packets_to_client, t.to_client.0),
            (&m.relayed_bytes_to_client, t.to_client.1),
            (&sfu.received_rtp_packets, t.rtp.0),
            (&sfu.received_rtp_bytes, t.rtp.1),
            (&sfu.received_rtcp_packets, t.rtcp.0),
            (&sfu.received_rtcp_bytes, t.rtcp.1),
            (&sfu.forwarded_rtp_packets, forwarding.forwarded),
            (&sfu.keyframe_requests, forwarding.keyframe_requests),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }
}
