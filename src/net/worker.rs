//! A data-plane worker: one thread with its own `mio` event loop, its own
//! `SO_REUSEPORT` socket per listen address, and the relay sockets of the TURN
//! allocations it owns. Workers share nothing on the hot path but counters, which they
//! add to once per batch.
//!
//! The kernel hashes a client's address to one of the listener sockets, so every packet
//! of a client reaches the worker that holds its allocation.
//!
//! SFU media is forwarded by the worker that receives it from the publisher: each
//! receiver's copy leaves through this worker's listener socket of the same index as
//! the receiver's own (every worker's socket on that local address sends from it), see
//! `sfu::session`. What the SFU sends through the kernel is copied into the worker's
//! outbox and leaves in `sendmmsg` batches (`net::outbox`): when the outbox is full,
//! after each receive batch, after the SFU's timers and after the cross-worker inbox,
//! so never later than before the worker waits again.
//!
//! A TURN client that reaches the SFU through this node's own relay (a browser with
//! `iceTransportPolicy: "relay"`) is served without the kernel: what its allocation
//! relays to one of our own media addresses is handed to the SFU right here, as if it
//! had arrived on that listener from the relayed address; what the SFU sends to a
//! relayed address of this worker is handed to the TURN core as if it had arrived on
//! that relay socket from our media address (see `Worker::hand_to_sfu` and `Deliver`).
//! What the SFU sends to a relayed address of another worker's allocation is queued
//! for that worker, which does the same with it (see `net::handoff`).

use crate::load::{BusyMeter, Load};
use crate::metrics::{MediaDrop, TransportCounters, TurnMetrics};
use crate::net::batch::{Batch, HEADROOM, RxClock};
use crate::net::handoff::{Handoff, Ring, SLOT};
use crate::net::liveness::{Liveness, WorkerGuard};
use crate::net::outbox::Outbox;
use crate::router::{Inbound, Outbound, Routes};
use crate::sfu::session::{CheckVerdict, MediaSessions, MediaVerdict, SessionCache};
use crate::stun;
use crate::turn::server::{
    Action, ClientKey, Clock, DropReason, HeldPort, RelayId, RelayIo, TurnCore,
};
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
pub(crate) struct WorkerHandle {
    pub(crate) waker: Arc<Waker>,
    pub(crate) thread: JoinHandle<()>,
}

/// What a worker needs besides its sockets.
pub(crate) struct WorkerSetup {
    pub(crate) id: usize,
    pub(crate) counters: TransportCounters,
    pub(crate) turn: TurnCore,
    pub(crate) turn_metrics: TurnMetrics,
    pub(crate) shutdown: Arc<AtomicBool>,
    /// Where `Clock::mono_ms` counts from, the same for every core of the node.
    pub(crate) epoch: Instant,
    /// The SFU's media sessions, which ICE checks on the media port are routed to.
    pub(crate) media: Arc<MediaSessions>,
    /// Who holds which relay, and every worker's queue of the SFU's datagrams for its
    /// relays (`id` is this worker's index in it).
    pub(crate) handoff: Arc<Handoff>,
    /// Told if this worker ends before `shutdown` is set.
    pub(crate) liveness: Arc<Liveness>,
    /// Where this worker reports how busy it is (see `load`), and its limit.
    pub(crate) load: Arc<Load>,
    pub(crate) overload_percent: u8,
}

/// Microseconds since `epoch`.
fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// Starts a worker thread serving the listener `sockets`. It runs until `shutdown` is
/// set and the waker is woken.
pub(crate) fn spawn(
    sockets: Vec<std::net::UdpSocket>,
    setup: WorkerSetup,
) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut table = SocketTable {
        registry: poll.registry().try_clone()?,
        sockets: Vec::new(),
        free: Vec::new(),
        listeners: sockets.len(),
        routes: Routes::new(setup.id, sockets.len()),
        handoff: setup.handoff.clone(),
        worker: setup.id,
    };
    setup.handoff.set_waker(setup.id, waker.clone());
    for s in sockets {
        table.insert(UdpSocket::from_std(s))?;
    }
    table.routes.set_own_media(setup.turn.public_addresses());
    let id = setup.id;
    let thread = std::thread::Builder::new()
        .name(format!("confnode-worker-{id}"))
        .spawn(move || {
            // Marks the worker gone however its thread ends, a panic included.
            let _guard = WorkerGuard {
                id,
                liveness: setup.liveness.clone(),
                shutdown: setup.shutdown.clone(),
            };
            let sessions = SessionCache::new(id, setup.media.clone());
            let meter = BusyMeter::new(id, setup.overload_percent, micros_since(setup.epoch));
            let mut worker = Worker {
                poll,
                table,
                ready: Ready::default(),
                batch: Batch::new(),
                setup,
                sessions,
                scratch: vec![0u8; SLOT].into_boxed_slice(),
                inbox: Ring::default(),
                outbox: Outbox::new(),
                meter,
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
    /// Addresses and routes of the sockets: which core takes what arrives, where the
    /// SFU's datagrams go.
    routes: Routes,
    /// Where this worker's relays are registered (as worker `worker`) for the other
    /// workers' SFU, and their queues.
    handoff: Arc<Handoff>,
    worker: usize,
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
        if let Some(relayed) = self.routes.add_socket(index, socket.local_addr().ok()) {
            self.handoff.register(relayed, self.worker);
        }
        self.sockets[index] = Some(socket);
        Ok(index)
    }

    /// Sends one datagram at once through any socket of the table (a listener or a
    /// relay), for the rare one too long for the outbox. Returns whether the kernel
    /// took it.
    fn send_any(&self, data: &[u8], to: SocketAddr, via: usize) -> bool {
        match self.sockets.get(via).and_then(Option::as_ref) {
            Some(socket) => socket.send_to(data, to).is_ok(),
            None => false,
        }
    }

    fn fd(&self, index: usize) -> Option<RawFd> {
        self.sockets.get(index)?.as_ref().map(|s| s.as_raw_fd())
    }
}

impl RelayIo for SocketTable {
    fn open(&mut self, addr: SocketAddr) -> io::Result<RelayId> {
        let socket = crate::net::udp::bind_relay(addr, RELAY_BUFFER)?;
        self.insert(UdpSocket::from_std(socket))
    }

    fn reserve(&mut self, addr: SocketAddr) -> io::Result<HeldPort> {
        crate::net::udp::bind_relay(addr, RELAY_BUFFER).map(HeldPort::new)
    }

    fn adopt(&mut self, held: HeldPort) -> io::Result<RelayId> {
        self.insert(UdpSocket::from_std(crate::net::udp::held_socket(held)?))
    }

    fn close(&mut self, id: RelayId) {
        if id < self.listeners {
            return;
        }
        if let Some(mut socket) = self.sockets.get_mut(id).and_then(Option::take) {
            let _ = self.registry.deregister(&mut socket);
            if let Some(addr) = self.routes.remove_relay(id) {
                // Before the socket closes (its port is free to bind after that).
                self.handoff.unregister(addr, self.worker);
            }
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
    /// Where a datagram the SFU sends to a relayed address is framed for the client.
    scratch: Box<[u8]>,
    /// What the other workers' SFU queued for this worker's relays, taken from the
    /// inbox in one swap (an empty ring goes back in its place).
    inbox: Ring,
    /// What the SFU sends through the kernel, sent in `sendmmsg` batches
    /// (`Worker::flush_outbox`, or `Deliver` when it is full).
    outbox: Outbox,
    /// How much of each second this worker spends serving rather than waiting.
    meter: BusyMeter,
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
    unrouted: u64,
    no_route: u64,
    rate_limited: u64,
    bandwidth: u64,
    replayed: u64,
    send_failed: u64,
    to_peer: (u64, u64),
    to_client: (u64, u64),
    /// SFU media unprotected: (packets, bytes) of RTP and RTCP.
    rtp: (u64, u64),
    rtcp: (u64, u64),
    /// SFU media dropped, by `MediaDrop` (in `media_drop_index` order).
    media_dropped: [u64; 6],
    /// Handed over in process: client to SFU, SFU to client.
    internal_to_peer: u64,
    internal_to_client: u64,
    /// From our own media port to a relay socket through the kernel.
    hairpin: u64,
    /// Of `internal_to_client`: handed over by the SFU of another worker.
    cross_worker: u64,
    /// For another worker's relay, through the kernel: its queue was full.
    queue_full: u64,
    /// The SFU's outbox flushed: (`sendmmsg` calls, datagrams the kernel took).
    sfu_send: (u64, u64),
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
            // The SFU's next timer (DTLS retransmissions, reports, feedback), if sooner
            // than the sweep.
            let wake = match self.sessions.poll_timeout() {
                Some(us) => next_sweep.min(self.setup.epoch + Duration::from_micros(us)),
                None => next_sweep,
            };
            let timeout = if busy {
                Duration::ZERO
            } else {
                wake.saturating_duration_since(Instant::now())
            };
            let waiting = Instant::now();
            let polled = self.poll.poll(&mut events, Some(timeout));
            self.meter.waited(waiting.elapsed().as_micros() as u64);
            self.meter
                .tick(micros_since(self.setup.epoch), &self.setup.load);
            match polled {
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
            self.drain_inbox();
            self.serve();
            self.run_sfu_timers();
            if Instant::now() >= next_sweep {
                let clock = self.clock();
                self.setup.turn.sweep(clock, &mut self.table);
                self.sessions.sweep();
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
        }
    }

    /// Runs the SFU's timers that ran out: DTLS flights resent, reports and feedback.
    fn run_sfu_timers(&mut self) {
        let now_us = micros_since(self.setup.epoch);
        if self.sessions.poll_timeout().is_none_or(|t| t > now_us) {
            return;
        }
        let clock = self.clock();
        let mut tally = Tally::default();
        let mut out = Deliver {
            table: &self.table,
            turn: &mut self.setup.turn,
            scratch: &mut self.scratch,
            outbox: &mut self.outbox,
            clock,
            tally: &mut tally,
        };
        self.sessions
            .handle_timeout(now_us, &mut |data, to, via| out.send(data, to, via));
        self.count(&tally);
        self.flush_outbox();
    }

    /// Relays to their clients what the SFU of other workers sent to this worker's
    /// relayed addresses, as `Deliver::send` does with this worker's own SFU's.
    fn drain_inbox(&mut self) {
        if !self.table.handoff.take(self.setup.id, &mut self.inbox) {
            return;
        }
        let clock = self.clock();
        let mut tally = Tally::default();
        for slot in self.inbox.slots_mut() {
            match self.table.routes.relay_at(slot.to) {
                Some(relay) => {
                    if relay_to_client(
                        &self.table,
                        &mut self.setup.turn,
                        &mut self.outbox,
                        clock,
                        &mut tally,
                        relay,
                        slot.via,
                        &mut slot.buf,
                        slot.len,
                    ) {
                        tally.cross_worker += 1;
                    }
                }
                // Closed since it was queued (its port may be another worker's by
                // now): the kernel path, which reaches whoever holds it.
                None => {
                    let data = slot.buf.get(HEADROOM..HEADROOM + slot.len).unwrap_or(&[]);
                    if slot.via < self.table.listeners {
                        to_kernel(
                            &self.table,
                            &mut self.outbox,
                            &mut tally,
                            data,
                            slot.to,
                            slot.via,
                        );
                    } else {
                        tally.send_failed += 1;
                    }
                }
            }
        }
        self.inbox.clear();
        self.count(&tally);
        self.flush_outbox();
    }

    /// Sends what the SFU queued in the outbox, and counts it.
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let mut tally = Tally::default();
        flush(&self.table, &mut self.outbox, &mut tally);
        self.count(&tally);
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
                    // It filled the batch and may have more: to the back of the queue,
                    // so that one busy socket cannot starve the others.
                    Ok(_) if self.batch.is_full() => self.ready.rotate(),
                    // Fewer than asked: it is drained. The poll is edge-triggered (mio),
                    // so the next datagram wakes us again; asking once more only to
                    // hear `WouldBlock` would cost a system call per wake.
                    Ok(_) => self.ready.pop(),
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
            // One reading per batch puts the kernel's receive stamps on the media clock.
            let rx = RxClock::read(self.setup.epoch);
            for j in 0..self.batch.len() {
                self.handle(j, clock, rx, &mut tally);
            }
            // Counted before the answers leave, so a client that got its answer finds
            // it counted on /metrics.
            self.count(&tally);
            let table = &self.table;
            let sent = self.batch.flush(|via| table.fd(via));
            if sent.failed > 0 {
                self.setup.counters.send_failed.inc_by(sent.failed as u64);
            }
            // What the SFU sent while handling the batch, before the next one (or the
            // wait for one).
            self.flush_outbox();
        }
    }

    /// Lets the right core see datagram `j` of the batch and marks what it answers.
    fn handle(&mut self, j: usize, clock: Clock, rx: RxClock, tally: &mut Tally) {
        let Some(p) = self.batch.packet(j) else {
            tally.malformed += 1;
            return;
        };
        let (src, len, origin) = (p.src, p.len, p.origin);
        let arrival_us = rx.arrival_us(p.stamp_us);
        let data = &mut p.slot[HEADROOM..];
        let action = match self.table.routes.inbound(origin, src, &data[..len]) {
            Inbound::Peer {
                relay,
                peer,
                hairpin,
            } => {
                // `hairpin`: the SFU of another worker answering a client whose
                // allocation is ours, through the kernel (our hand-over queue was full:
                // see `Deliver::send`), shown to the client as from the media address
                // it sent to.
                tally.hairpin += u64::from(hairpin);
                self.setup
                    .turn
                    .handle_peer(clock, relay, peer, p.slot, HEADROOM, len)
            }
            Inbound::Stun => {
                answer_stun(&mut self.sessions, data, len, (src, origin), clock, tally)
            }
            Inbound::Turn => {
                let client = ClientKey {
                    listener: origin,
                    addr: src,
                };
                self.setup
                    .turn
                    .handle_client(clock, client, data, len, &mut self.table)
            }
            // The SFU's DTLS and SRTP, routed by the client's validated address. RTP
            // from a publisher is forwarded to its receivers inside `handle_media`;
            // nothing more to send for this datagram.
            Inbound::Media => {
                let mut out = Deliver {
                    table: &self.table,
                    turn: &mut self.setup.turn,
                    scratch: &mut self.scratch,
                    outbox: &mut self.outbox,
                    clock,
                    tally,
                };
                let pkt = &mut data[..len];
                let times = (arrival_us, rx.now_us);
                media(&mut self.sessions, pkt, src, origin, times, &mut out);
                return;
            }
            // Counted apart from garbage.
            Inbound::Unrouted => {
                tally.unrouted += 1;
                return;
            }
            Inbound::Malformed => Action::Drop(DropReason::Malformed),
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
                match self.table.routes.own_listener(peer) {
                    // To our own media port: no need for the kernel.
                    Some(listener) => {
                        let to = (peer, listener);
                        self.hand_to_sfu(
                            j,
                            relay,
                            to,
                            start,
                            len,
                            (clock, (arrival_us, rx.now_us)),
                            tally,
                        )
                    }
                    None => self.batch.send_from(j, HEADROOM + start, len, peer, relay),
                }
            }
            Action::ToClient { client, start, len } => {
                tally.to_client.0 += 1;
                tally.to_client.1 += len as u64;
                self.batch
                    .send_from(j, start, len, client.addr, client.listener);
            }
            Action::Drop(reason) => tally.drop(reason),
        }
    }

    /// Datagram `j` is a TURN client's payload at `HEADROOM + start`, relayed by its
    /// allocation's `relay` to `peer`, our own media address on `listener`: the SFU
    /// sees it as received on that listener from the relayed transport address (`times`:
    /// when the kernel received it from the client, and now), and what it answers
    /// goes back to the client through the TURN core, from `peer`.
    ///
    /// No loop is possible: only the SFU sees a handed-over datagram (never the TURN
    /// core's client side, so TURN through our own relay is refused, as coturn refuses
    /// relaying to its own addresses), and what the SFU answers leaves through the
    /// kernel to the client once the TURN core framed it (`Deliver::send`).
    #[allow(clippy::too_many_arguments)]
    fn hand_to_sfu(
        &mut self,
        j: usize,
        relay: RelayId,
        (peer, listener): (SocketAddr, usize),
        start: usize,
        len: usize,
        (clock, times): (Clock, (u64, u64)),
        tally: &mut Tally,
    ) {
        // The relayed transport address, as the kernel would have shown it.
        let Some(src) = self.table.routes.local(relay) else {
            tally.unhandled += 1;
            return;
        };
        let Some(p) = self.batch.packet(j) else {
            return;
        };
        tally.internal_to_peer += 1;
        self.table.routes.remember_media_peer(relay, listener, peer);
        let at = HEADROOM + start;
        let Some(data) = p.slot.get_mut(at..).filter(|d| d.len() >= len) else {
            tally.malformed += 1;
            return;
        };
        let reply = match Routes::relayed_to_sfu(&data[..len]) {
            Inbound::Stun => {
                answer_stun(&mut self.sessions, data, len, (src, listener), clock, tally)
            }
            Inbound::Media => {
                let mut out = Deliver {
                    table: &self.table,
                    turn: &mut self.setup.turn,
                    scratch: &mut self.scratch,
                    outbox: &mut self.outbox,
                    clock,
                    tally,
                };
                let pkt = &mut data[..len];
                media(&mut self.sessions, pkt, src, listener, times, &mut out);
                return;
            }
            // TURN inside TURN through our own relay, ChannelData, garbage: dropped.
            _ => Action::Drop(DropReason::Unhandled),
        };
        match reply {
            Action::Reply(n) => {
                // The answer is in place at `at`, with the rest of the slot's room in
                // front of it for the TURN core's framing.
                match self
                    .setup
                    .turn
                    .handle_peer(clock, relay, peer, p.slot, at, n)
                {
                    Action::ToClient { client, start, len } => {
                        tally.internal_to_client += 1;
                        tally.to_client.0 += 1;
                        tally.to_client.1 += len as u64;
                        self.batch
                            .send_from(j, start, len, client.addr, client.listener);
                    }
                    Action::Drop(reason) => tally.drop(reason),
                    // `handle_peer` answers nothing else.
                    _ => tally.unhandled += 1,
                }
            }
            Action::Drop(reason) => tally.drop(reason),
            _ => tally.unhandled += 1,
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
        let media_drops = media_drops.into_iter().zip(t.media_dropped);
        for (counter, n) in media_drops.chain([
            (&c.received, t.received),
            (&c.stun_answered, t.answered),
            (&c.malformed, t.malformed),
            (&c.unhandled, t.unhandled),
            (&c.unrouted, t.unrouted),
            (&c.no_route, t.no_route),
            (&c.rate_limited, t.rate_limited),
            (&c.bandwidth, t.bandwidth),
            (&c.replayed, t.replayed),
            (&c.send_failed, t.send_failed),
            (&m.relayed_packets_to_peer, t.to_peer.0),
            (&m.relayed_bytes_to_peer, t.to_peer.1),
            (&m.relayed_packets_to_client, t.to_client.0),
            (&m.relayed_bytes_to_client, t.to_client.1),
            (&m.internal_to_peer, t.internal_to_peer),
            (&m.internal_to_client, t.internal_to_client),
            (&m.hairpin, t.hairpin),
            (&m.cross_worker, t.cross_worker),
            (&m.cross_worker_queue_full, t.queue_full),
            (&sfu.received_rtp_packets, t.rtp.0),
            (&sfu.received_rtp_bytes, t.rtp.1),
            (&sfu.received_rtcp_packets, t.rtcp.0),
            (&sfu.received_rtcp_bytes, t.rtcp.1),
            (&sfu.forwarded_rtp_packets, forwarding.forwarded),
            (&sfu.keyframe_requests, forwarding.keyframe_requests),
            (&sfu.retransmitted_packets, forwarding.retransmitted),
            (&sfu.nack_refused_not_held, forwarding.resend_not_held),
            (&sfu.nack_refused_too_soon, forwarding.resend_too_soon),
            (&sfu.nack_refused_budget, forwarding.resend_over_budget),
            (&sfu.rtcp_sent, forwarding.rtcp_sent),
            (&sfu.downlink_feedback, forwarding.downlink_feedback),
            (&sfu.probe_padding, forwarding.probe_padding),
            (&sfu.send_batches, t.sfu_send.0),
            (&sfu.sent_datagrams, t.sfu_send.1),
        ]) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }
}

impl Tally {
    fn drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::Malformed => self.malformed += 1,
            DropReason::Unhandled => self.unhandled += 1,
            DropReason::NoRoute => self.no_route += 1,
            DropReason::RateLimited => self.rate_limited += 1,
            DropReason::Bandwidth => self.bandwidth += 1,
            DropReason::Replayed => self.replayed += 1,
            DropReason::Consumed => {}
        }
    }
}

/// A STUN message on the media port that is not for TURN: a plain Binding request, or
/// an ICE check for one of the SFU's sessions. Answered in place.
fn answer_stun(
    sessions: &mut SessionCache,
    data: &mut [u8],
    len: usize,
    (src, listener): (SocketAddr, usize),
    clock: Clock,
    tally: &mut Tally,
) -> Action {
    match stun::answer(data, len, src) {
        stun::Verdict::Reply(n) => {
            tally.answered += 1;
            Action::Reply(n)
        }
        stun::Verdict::Indication => Action::Drop(DropReason::Consumed),
        // An ICE check (a Binding request with MESSAGE-INTEGRITY) for one of the SFU's
        // sessions, or nothing we answer.
        stun::Verdict::Unhandled => {
            match sessions.answer_check(data, len, src, listener, clock.mono_ms) {
                CheckVerdict::Reply(n) => {
                    tally.answered += 1;
                    Action::Reply(n)
                }
                CheckVerdict::NotOurs => Action::Drop(DropReason::Unhandled),
                CheckVerdict::Malformed => Action::Drop(DropReason::Malformed),
                CheckVerdict::Replayed => Action::Drop(DropReason::Replayed),
            }
        }
        stun::Verdict::Malformed => Action::Drop(DropReason::Malformed),
    }
}

/// A DTLS or SRTP/SRTCP datagram `pkt` from `src` on `listener` that the kernel received
/// at `arrival_us` and this worker handles at `now_us` (media clock), for the SFU; what
/// it sends goes through `out`.
fn media(
    sessions: &mut SessionCache,
    pkt: &mut [u8],
    src: SocketAddr,
    listener: usize,
    times: (u64, u64),
    out: &mut Deliver<'_>,
) {
    let len = pkt.len() as u64;
    let verdict =
        sessions.handle_media_received(pkt, src, listener, times, &mut |data, to, via| {
            out.send(data, to, via)
        });
    let tally = &mut *out.tally;
    match verdict {
        MediaVerdict::Dtls => {}
        MediaVerdict::Rtp(_) => {
            tally.rtp.0 += 1;
            tally.rtp.1 += len;
        }
        MediaVerdict::Rtcp(_) => {
            tally.rtcp.0 += 1;
            tally.rtcp.1 += len;
        }
        MediaVerdict::Dropped(reason) => {
            tally.media_dropped[media_drop_index(reason)] += 1;
        }
    }
}

/// Where the SFU's datagrams go (`send(datagram, to, listener)` of `SessionCache`):
/// through the kernel, or, to a relayed transport address of one of this worker's
/// allocations, to the TURN core as a datagram from our media address arriving at
/// that relay, and from there to the client; to one of another worker's allocations,
/// into that worker's queue (`net::handoff`). What goes through the kernel is queued in
/// the worker's outbox, sent in `sendmmsg` batches. Allocates nothing.
struct Deliver<'a> {
    table: &'a SocketTable,
    turn: &'a mut TurnCore,
    scratch: &'a mut [u8],
    outbox: &'a mut Outbox,
    clock: Clock,
    tally: &'a mut Tally,
}

impl Deliver<'_> {
    fn send(&mut self, data: &[u8], to: SocketAddr, via: usize) {
        let relay = match self.table.routes.outbound(to, &*self.table.handoff) {
            Outbound::OwnRelay(relay) => Some(relay),
            // A relayed address of an allocation that another worker holds (SO_REUSEPORT
            // spread the clients over the workers): queued for that worker, which
            // relays it to the client (`Worker::drain_inbox`). Its queue full, it goes
            // through the kernel from our listener to that relay socket, whose worker
            // relays it as from any peer (and counts it as `hairpin`): correct, only not
            // free, and the sender never waits.
            Outbound::Worker(owner) => {
                if self.table.handoff.push(owner, data, to, via) {
                    return;
                }
                self.tally.queue_full += 1;
                None
            }
            Outbound::Kernel => None,
        };
        let Some(relay) = relay else {
            if via < self.table.listeners {
                to_kernel(self.table, self.outbox, self.tally, data, to, via);
            } else {
                self.tally.send_failed += 1;
            }
            return;
        };
        let n = data.len();
        let Some(room) = self.scratch.get_mut(HEADROOM..HEADROOM + n) else {
            self.tally.malformed += 1;
            return;
        };
        room.copy_from_slice(data);
        relay_to_client(
            self.table,
            self.turn,
            self.outbox,
            self.clock,
            self.tally,
            relay,
            via,
            self.scratch,
            n,
        );
    }
}

/// Gives the TURN core the datagram at `HEADROOM` in `buf` (`n` bytes) that the SFU
/// sent through listener `via` to the relayed address of this worker's `relay`, as
/// arriving at that relay from our media address, and sends what it frames (in place)
/// to the client (through the outbox). Returns whether it went to the client.
#[allow(clippy::too_many_arguments)]
fn relay_to_client(
    table: &SocketTable,
    turn: &mut TurnCore,
    outbox: &mut Outbox,
    clock: Clock,
    tally: &mut Tally,
    relay: RelayId,
    via: usize,
    buf: &mut [u8],
    n: usize,
) -> bool {
    let Some(peer) = table.routes.media_peer(relay, via) else {
        tally.unhandled += 1;
        return false;
    };
    match turn.handle_peer(clock, relay, peer, buf, HEADROOM, n) {
        Action::ToClient { client, start, len } => {
            tally.internal_to_client += 1;
            tally.to_client.0 += 1;
            tally.to_client.1 += len as u64;
            let framed = buf.get(start..start + len).unwrap_or(&[]);
            to_kernel(table, outbox, tally, framed, client.addr, client.listener);
            true
        }
        Action::Drop(reason) => {
            tally.drop(reason);
            false
        }
        // `handle_peer` answers nothing else.
        _ => {
            tally.unhandled += 1;
            false
        }
    }
}

/// Queues a datagram for the kernel in `outbox`, flushing it first when full. One too
/// long for an outbox slot goes at once, after what is queued (so nothing to the same
/// destination overtakes it).
fn to_kernel(
    table: &SocketTable,
    outbox: &mut Outbox,
    tally: &mut Tally,
    data: &[u8],
    to: SocketAddr,
    via: usize,
) {
    if outbox.is_full() {
        flush(table, outbox, tally);
    }
    if !outbox.push(data, to, via) {
        flush(table, outbox, tally);
        if !table.send_any(data, to, via) {
            tally.send_failed += 1;
        }
    }
}

/// Sends what `outbox` holds, one `sendmmsg` per socket, counting into `tally`.
fn flush(table: &SocketTable, outbox: &mut Outbox, tally: &mut Tally) {
    let sent = outbox.flush(|via| table.fd(via));
    tally.send_failed += sent.failed as u64;
    tally.sfu_send.0 += sent.calls as u64;
    tally.sfu_send.1 += sent.sent as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(listeners: &[&str]) -> (Poll, SocketTable) {
        let poll = Poll::new().expect("poll");
        let mut table = SocketTable {
            registry: poll.registry().try_clone().expect("registry"),
            sockets: Vec::new(),
            free: Vec::new(),
            listeners: listeners.len(),
            routes: Routes::new(0, listeners.len()),
            handoff: Arc::new(Handoff::new(
                1,
                crate::config::PortRange {
                    first: 1,
                    last: 65535,
                },
                Some([127, 0, 0, 1].into()),
                None,
            )),
            worker: 0,
        };
        for l in listeners {
            let s = std::net::UdpSocket::bind(l).expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            table.insert(UdpSocket::from_std(s)).expect("insert");
        }
        (poll, table)
    }

    #[test]
    fn relays_are_registered_for_the_other_workers_until_closed() {
        let (_poll, mut t) = table(&["127.0.0.1:0"]);
        let listener = t.routes.local(0).expect("listener");
        assert_eq!(t.handoff.owner(listener), None, "a listener is no relay");
        let id = t.open("127.0.0.1:0".parse().expect("addr")).expect("open");
        let relayed = t.routes.local(id).expect("relay address");
        assert_eq!(t.handoff.owner(relayed), Some(0));
        assert!(t.handoff.covers(relayed));
        assert_eq!(t.routes.relay_at(relayed), Some(id));
        t.close(id);
        assert_eq!(t.handoff.owner(relayed), None);
        assert_eq!(t.routes.relay_at(relayed), None);
        // The index is reused by the next relay, which remembers nothing of the last.
        let public: SocketAddr = SocketAddr::new([203, 0, 113, 5].into(), listener.port());
        t.routes.remember_media_peer(id, 0, public);
        let again = t.open("127.0.0.1:0".parse().expect("addr")).expect("open");
        assert_eq!(again, id);
        assert_eq!(t.routes.media_peer(again, 0), Some(listener));
    }

    #[test]
    fn each_drop_reason_is_counted_apart() {
        let mut t = Tally::default();
        for reason in [
            DropReason::Malformed,
            DropReason::Unhandled,
            DropReason::NoRoute,
            DropReason::NoRoute,
            DropReason::RateLimited,
            DropReason::Bandwidth,
            DropReason::Replayed,
            // An indication taken as it should be: no drop.
            DropReason::Consumed,
        ] {
            t.drop(reason);
        }
        assert_eq!(
            (
                t.malformed,
                t.unhandled,
                t.no_route,
                t.rate_limited,
                t.bandwidth,
                t.replayed
            ),
            (1, 1, 2, 1, 1, 1)
        );
    }
}
