//! STUN and TURN over TCP (and, with TLS in front, over TLS) on tokio, framed per
//! RFC 8489 §6.2.2 and RFC 8656 §12.5: a STUN message carries its own length; a
//! ChannelData message carries its length and is padded to four bytes.
//!
//! A connection is one client 5-tuple (RFC 8656 §3.1), so each connection task owns
//! what the UDP data plane shares per worker: its own `TurnCore` (made on the first
//! TURN message, so a STUN-only connection costs nothing of it) and the relay sockets
//! of its allocation, polled beside the stream. Allocations end with their connection.

use crate::metrics::{Metrics, Transport, TransportCounters, TurnMetrics};
use crate::net::batch::{HEADROOM, MAX_DATAGRAM};
use crate::stun;
use crate::turn::auth::Auth;
use crate::turn::server::{
    Action, ClientKey, Clock, DropReason, HeldPort, RelayId, RelayIo, Shared, TurnCore,
};
use crate::turn::stream::{Frame, STUN_HEADER, next_frame};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Binds a non-blocking TCP listener for STUN/TURN over TCP or TLS.
pub(crate) fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A connection without an allocation that sends nothing for this long is closed. One
/// that holds an allocation stays: the allocation's lifetime decides (RFC 8656 §3.1).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A client that takes no data for this long is gone or hostile: the connection ends
/// (rather than holding its permit and relay sockets forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired allocations, permissions and channels are swept, and idleness
/// checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The read buffer's usual size; it grows for a larger frame (up to a 16-bit length
/// plus header) and shrinks back when the connection is quiet.
const READ_SIZE: usize = 4096;
/// Room after a STUN request for its answer, which may be longer than the request.
const ANSWER_ROOM: usize = 1024;
/// An allocation has at most two relays (IPv4 and IPv6), and a connection at most one
/// allocation.
const MAX_RELAYS: usize = 2;
/// Socket buffers of relay sockets, as in the UDP data plane.
const RELAY_BUFFER: usize = 256 << 10;
/// Datagrams taken from one relay socket before the task looks at its other sources.
const PEER_BURST: usize = 64;
/// Bytes queued for the client before they are written out.
const OUT_HIGH: usize = 16 << 10;

/// What every connection of one listener shares.
pub(crate) struct StreamContext {
    /// TCP or TLS.
    pub(crate) transport: Transport,
    /// The counters of `transport`.
    pub(crate) counters: TransportCounters,
    pub(crate) metrics: Arc<Metrics>,
    /// Open connections, TCP and TLS together (`turn.max_tcp_connections`).
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) turn: Arc<Shared>,
    /// The node's authenticator; each connection takes `Auth::for_connection` of it.
    pub(crate) auth: Auth,
    /// Where `Clock::mono_ms` counts from, the same for every core of the node.
    pub(crate) epoch: Instant,
}

/// Accepts connections on `listener` until the task is dropped; each connection holds a
/// permit of `ctx.limit`, and connections over the limit are closed at once.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<StreamContext>) {
    loop {
        let Some((stream, peer, permit)) = accept(&listener, &ctx).await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.metrics.tcp_connections.inc();
            if let Err(e) = handle_connection(stream, peer, &ctx).await {
                tracing::debug!("TCP connection ended: {e}");
            }
            ctx.metrics.tcp_connections.dec();
            drop(permit);
        });
    }
}

/// Accepts one connection and takes a permit for it; `None` when accepting failed or
/// the connection was refused at the limit.
pub(crate) async fn accept(
    listener: &TcpListener,
    ctx: &StreamContext,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let (stream, peer) = match listener.accept().await {
        Ok(c) => c,
        Err(e) => {
            // Out of file descriptors and the like: wait instead of spinning.
            tracing::warn!("accept failed: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return None;
        }
    };
    let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
        ctx.metrics.tcp_refused.inc();
        return None;
    };
    let _ = stream.set_nodelay(true);
    Some((stream, peer, permit))
}

/// Serves one client connection until it closes, breaks its framing, idles without an
/// allocation, or stops taking data.
pub(crate) async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    ctx: &StreamContext,
) -> io::Result<()> {
    let mut conn = Connection::new(ctx, peer);
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Every branch is cancel-safe: a read that loses the race has read nothing,
        // and readiness is only looked at, never consumed.
        let event = tokio::select! {
            r = stream.read(&mut conn.rbuf[conn.filled..]) => Event::Read(r),
            r = readable(&conn.relays.sockets[0]) => Event::Relay(0, r),
            r = readable(&conn.relays.sockets[1]) => Event::Relay(1, r),
            _ = tick.tick() => Event::Tick,
        };
        let mut end = false;
        match event {
            Event::Read(Ok(0)) => return Ok(()),
            Event::Read(Ok(n)) => {
                conn.filled += n;
                // A broken stream still gets the answers to what came before.
                end = conn.frames().is_err();
            }
            Event::Read(Err(e)) => return Err(e),
            Event::Relay(i, Ok(())) => conn.relay_readable(i),
            Event::Relay(i, Err(e)) => {
                tracing::debug!("relay socket failed: {e}");
                conn.close_relay(i);
            }
            Event::Tick => end = conn.tick(),
        }
        if !conn.out.is_empty() {
            let out = &conn.out;
            let write = async {
                if ctx.transport == Transport::Tls {
                    // One TLS record per message: coturn's clients take each record
                    // read as one message (as coturn sends them), so messages
                    // coalesced into one record would be lost on them.
                    let mut start = 0;
                    for &end in &out.ends {
                        stream.write_all(&out.bytes[start..end]).await?;
                        start = end;
                    }
                } else {
                    stream.write_all(&out.bytes).await?;
                }
                stream.flush().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => conn.out.clear(),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
        if end {
            return Ok(());
        }
    }
}

enum Event {
    Read(io::Result<usize>),
    Relay(RelayId, io::Result<()>),
    Tick,
}

/// Waits until the relay socket in `slot` is readable; forever if there is none.
async fn readable(slot: &Option<UdpSocket>) -> io::Result<()> {
    match slot {
        Some(socket) => socket.readable().await,
        None => std::future::pending().await,
    }
}

/// The byte stream is not STUN or ChannelData: the framing is lost.
struct Broken;

/// One connection's state: its TURN core, relay sockets and buffers.
struct Connection<'a> {
    ctx: &'a StreamContext,
    client: ClientKey,
    core: Option<TurnCore>,
    relays: Relays,
    /// Bytes read from the stream: `rbuf[..filled]`, not yet a whole frame.
    rbuf: Vec<u8>,
    filled: usize,
    /// A STUN message, copied out of `rbuf` so that its answer can be written over it.
    work: Vec<u8>,
    /// A datagram from a peer at `HEADROOM`, room for its framing before it; allocated
    /// with the first relay socket.
    pbuf: Vec<u8>,
    /// What is to be written to the client.
    out: Outgoing,
    /// When the last whole frame came; on tokio's clock, so that tests can run the
    /// idle timeout on paused time.
    last_frame: tokio::time::Instant,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        // Allocations end with their connection (RFC 8656 §3.1), however it ends.
        if let Some(core) = &mut self.core {
            core.close_all(&mut self.relays);
        }
    }
}

impl<'a> Connection<'a> {
    fn new(ctx: &'a StreamContext, peer: SocketAddr) -> Connection<'a> {
        Connection {
            ctx,
            client: ClientKey {
                listener: 0,
                addr: peer,
            },
            core: None,
            relays: Relays::default(),
            rbuf: vec![0; READ_SIZE],
            filled: 0,
            work: Vec::new(),
            pbuf: Vec::new(),
            out: Outgoing::default(),
            last_frame: tokio::time::Instant::now(),
        }
    }

    fn clock(&self) -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Clock {
            mono_ms: self.ctx.epoch.elapsed().as_millis() as u64,
            unix,
        }
    }

    /// Handles every whole frame in `rbuf`, keeps the rest, and makes sure there is
    /// room to read more.
    fn frames(&mut self) -> Result<(), Broken> {
        let clock = self.clock();
        let mut pos = 0;
        let mut pending = 0;
        let result = loop {
            let (total, length) = match next_frame(&self.rbuf[pos..self.filled]) {
                Frame::Partial { need } => {
                    pending = need;
                    break Ok(());
                }
                Frame::Stun { total } => (total, total - STUN_HEADER),
                Frame::ChannelData { total, length } => (total, length),
                Frame::Broken => {
                    self.ctx.counters.received.inc();
                    self.ctx.counters.malformed.inc();
                    break Err(Broken);
                }
            };
            self.frame(clock, pos, total, length);
            pos += total;
        };
        self.rbuf.copy_within(pos..self.filled, 0);
        self.filled -= pos;
        if self.rbuf.len() < pending {
            self.rbuf.resize(pending, 0);
        }
        result
    }

    /// One whole frame at `rbuf[pos..pos + total]`; `length` is its length field.
    fn frame(&mut self, clock: Clock, pos: usize, total: usize, length: usize) {
        let counters = &self.ctx.counters;
        counters.received.inc();
        self.last_frame = tokio::time::Instant::now();
        let Connection {
            ctx,
            client,
            core,
            relays,
            rbuf,
            work,
            out,
            ..
        } = self;
        let frame = &mut rbuf[pos..pos + total];
        if frame[0] >= 0x40 {
            // ChannelData: the core only reads it, so it is relayed from where it lies.
            let action = match core {
                Some(core) => core.handle_client(clock, *client, frame, 4 + length, relays),
                None => Action::Drop(DropReason::NoRoute),
            };
            apply(action, frame, relays, out, counters, &ctx.turn.metrics);
            return;
        }
        if work.len() < total + ANSWER_ROOM {
            work.resize(total + ANSWER_ROOM, 0);
        }
        work[..total].copy_from_slice(frame);
        let action = if TurnCore::is_turn_method(work) {
            let core = core.get_or_insert_with(|| {
                TurnCore::with_seed(
                    ctx.turn.clone(),
                    ctx.auth.for_connection(),
                    true,
                    crate::node::random_key(),
                )
            });
            core.handle_client(clock, *client, work, total, relays)
        } else {
            match stun::answer(work, total, client.addr) {
                stun::Verdict::Reply(n) => {
                    counters.stun_answered.inc();
                    Action::Reply(n)
                }
                stun::Verdict::Indication => Action::Drop(DropReason::Consumed),
                stun::Verdict::Unhandled => Action::Drop(DropReason::Unhandled),
                stun::Verdict::Malformed => Action::Drop(DropReason::Malformed),
            }
        };
        apply(action, work, relays, out, counters, &ctx.turn.metrics);
        if self.relays.any() && self.pbuf.is_empty() {
            // Room for the framing before a datagram and the padding after it.
            self.pbuf = vec![0; HEADROOM + MAX_DATAGRAM + 4];
        }
    }

    /// Takes datagrams from relay socket `i` and frames them for the client.
    fn relay_readable(&mut self, i: RelayId) {
        let clock = self.clock();
        let Connection {
            ctx,
            core,
            relays,
            pbuf,
            out,
            ..
        } = self;
        let counters = &ctx.counters;
        for _ in 0..PEER_BURST {
            // Stop early to write out; the socket stays readable, so the loop is back.
            if out.bytes.len() >= OUT_HIGH {
                break;
            }
            let Some(socket) = relays.sockets.get(i).and_then(Option::as_ref) else {
                return;
            };
            let Some(room) = pbuf.get_mut(HEADROOM..HEADROOM + MAX_DATAGRAM) else {
                return;
            };
            let (len, peer) = match recv_datagram(socket, room) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::trace!("relay receive error: {e}");
                    continue;
                }
            };
            counters.received.inc();
            if len > MAX_DATAGRAM {
                // Larger than the UDP data plane takes, too: dropped the same way.
                counters.malformed.inc();
                continue;
            }
            let action = match core {
                Some(core) => core.handle_peer(clock, i, peer, pbuf, HEADROOM, len),
                None => Action::Drop(DropReason::NoRoute),
            };
            apply(action, pbuf, relays, out, counters, &ctx.turn.metrics);
        }
    }

    /// A relay socket whose polling failed is of no more use: the core finds its
    /// allocation without a way to the peer and the client sees its data go nowhere.
    fn close_relay(&mut self, i: RelayId) {
        if let Some(slot) = self.relays.sockets.get_mut(i) {
            *slot = None;
        }
    }

    /// Once a second: expiry, idleness, and returning the memory a burst took. True
    /// when the connection is to end.
    fn tick(&mut self) -> bool {
        let clock = self.clock();
        if let Some(core) = &mut self.core {
            core.sweep(clock, &mut self.relays);
        }
        let holds_allocation = self.core.as_ref().is_some_and(|c| !c.is_empty());
        if !holds_allocation && self.last_frame.elapsed() >= IDLE_TIMEOUT {
            return true;
        }
        if self.filled == 0 && self.rbuf.len() > READ_SIZE {
            self.rbuf = vec![0; READ_SIZE];
        }
        if self.work.len() > READ_SIZE + ANSWER_ROOM {
            self.work = Vec::new();
        }
        if self.out.bytes.capacity() > 4 * OUT_HIGH {
            self.out = Outgoing::default();
        }
        if !self.relays.any() {
            self.pbuf = Vec::new();
        }
        false
    }
}

/// Messages queued for the client, and where each ends.
#[derive(Default)]
struct Outgoing {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Outgoing {
    fn push(&mut self, message: &[u8]) {
        self.bytes.extend_from_slice(message);
        self.ends.push(self.bytes.len());
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// Carries out what the core decided for a packet in `buf`.
fn apply(
    action: Action,
    buf: &[u8],
    relays: &Relays,
    out: &mut Outgoing,
    counters: &TransportCounters,
    turn: &TurnMetrics,
) {
    match action {
        Action::Reply(n) => out.push(&buf[..n]),
        Action::ToPeer {
            relay,
            peer,
            start,
            len,
        } => {
            let Some(data) = buf.get(start..start + len) else {
                counters.malformed.inc();
                return;
            };
            match relays.send(relay, data, peer) {
                Ok(_) => {
                    turn.relayed_packets_to_peer.inc();
                    turn.relayed_bytes_to_peer.inc_by(len as u64);
                }
                // A full socket buffer drops the datagram, as UDP may.
                Err(_) => {
                    counters.send_failed.inc();
                }
            }
        }
        Action::ToClient { start, len, .. } => {
            let Some(data) = buf.get(start..start + len) else {
                counters.malformed.inc();
                return;
            };
            out.push(data);
            turn.relayed_packets_to_client.inc();
            turn.relayed_bytes_to_client.inc_by(len as u64);
        }
        Action::Drop(DropReason::Malformed) => {
            counters.malformed.inc();
        }
        Action::Drop(DropReason::Unhandled) => {
            counters.unhandled.inc();
        }
        Action::Drop(DropReason::NoRoute) => {
            counters.no_route.inc();
        }
        Action::Drop(DropReason::RateLimited) => {
            counters.rate_limited.inc();
        }
        Action::Drop(DropReason::Bandwidth) => {
            counters.bandwidth.inc();
        }
        Action::Drop(DropReason::Replayed) => {
            counters.replayed.inc();
        }
        Action::Drop(DropReason::Consumed) => {}
    }
}

/// Receives one datagram into `buf`; the length returned is the datagram's own, which
/// is more than `buf` holds when it was truncated (MSG_TRUNC), so that case is seen.
fn recv_datagram(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    socket.try_io(Interest::READABLE, || {
        // SAFETY: the bytes are initialised, and recvfrom(2) writes only initialised
        // bytes, so viewing them as possibly-uninitialised for the call is sound.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        let (len, from) =
            socket2::SockRef::from(socket).recv_from_with_flags(uninit, libc::MSG_TRUNC)?;
        let from = from
            .as_socket()
            .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
        Ok((len, from))
    })
}

/// The relay sockets of one connection's allocation; a socket's index is its `RelayId`.
#[derive(Default)]
struct Relays {
    sockets: [Option<UdpSocket>; MAX_RELAYS],
}

impl Relays {
    fn any(&self) -> bool {
        self.sockets.iter().any(Option::is_some)
    }

    fn send(&self, relay: RelayId, data: &[u8], peer: SocketAddr) -> io::Result<usize> {
        match self.sockets.get(relay) {
            Some(Some(socket)) => socket.try_send_to(data, peer),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

impl Relays {
    /// Starts polling `socket` in a free slot of the connection's relays.
    fn add(&mut self, socket: std::net::UdpSocket) -> io::Result<RelayId> {
        let Some(id) = self.sockets.iter().position(Option::is_none) else {
            return Err(io::Error::other("relay table of the connection is full"));
        };
        self.sockets[id] = Some(UdpSocket::from_std(socket)?);
        Ok(id)
    }
}

impl RelayIo for Relays {
    fn open(&mut self, addr: SocketAddr) -> io::Result<RelayId> {
        let socket = crate::net::udp::bind_relay(addr, RELAY_BUFFER)?;
        self.add(socket)
    }

    fn reserve(&mut self, addr: SocketAddr) -> io::Result<HeldPort> {
        crate::net::udp::bind_relay(addr, RELAY_BUFFER).map(HeldPort::new)
    }

    fn adopt(&mut self, held: HeldPort) -> io::Result<RelayId> {
        self.add(crate::net::udp::held_socket(held)?)
    }

    fn close(&mut self, id: RelayId) {
        if let Some(slot) = self.sockets.get_mut(id) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;
    use crate::stun::message::{Class, Message, Writer, attr, long_term_key, method};
    use crate::turn::policy::PeerPolicy;
    use crate::turn::server::Limits;
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    fn context() -> Arc<StreamContext> {
        let metrics = Arc::new(Metrics::new());
        let turn = Arc::new(Shared::new(
            Limits::default(),
            PortRange {
                first: 49152,
                last: 65535,
            },
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            None,
            Ipv4Addr::LOCALHOST,
            None,
            PeerPolicy::new(true, &[], &[], &[]),
            metrics.turn.clone(),
        ));
        let users = BTreeMap::from([("user".to_owned(), "pass".to_owned())]);
        Arc::new(StreamContext {
            transport: Transport::Tcp,
            counters: metrics.transport(Transport::Tcp),
            metrics: metrics.clone(),
            limit: Arc::new(Semaphore::new(1)),
            turn,
            auth: Auth::new("confnode", &users, &[], [7; 32]),
            epoch: std::time::Instant::now(),
        })
    }

    /// A connection task served over an in-memory stream; returns the client's end.
    fn connect(ctx: &Arc<StreamContext>) -> (DuplexStream, JoinHandle<io::Result<()>>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let ctx = ctx.clone();
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let task = tokio::spawn(async move { handle_connection(server, peer, &ctx).await });
        (client, task)
    }

    async fn exchange(client: &mut DuplexStream, request: &[u8]) -> Vec<u8> {
        client.write_all(request).await.unwrap();
        let mut raw = vec![0u8; STUN_HEADER];
        client.read_exact(&mut raw).await.unwrap();
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        raw.resize(STUN_HEADER + len, 0);
        client.read_exact(&mut raw[STUN_HEADER..]).await.unwrap();
        raw
    }

    fn allocate_request(tid: u8, auth: Option<(&[u8], &[u8])>) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[tid; 12]).unwrap();
        w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
        if let Some((realm, nonce)) = auth {
            w.add(attr::USERNAME, b"user").unwrap();
            w.add(attr::REALM, realm).unwrap();
            w.add(attr::NONCE, nonce).unwrap();
            w.add_integrity(&long_term_key(b"user", realm, b"pass"))
                .unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// Allocates over `client`: a 401 first, then the authenticated request. Returns
    /// REALM and NONCE for further requests.
    async fn allocate(client: &mut DuplexStream) -> (Vec<u8>, Vec<u8>) {
        let challenge = exchange(client, &allocate_request(1, None)).await;
        let msg = Message::parse(&challenge).unwrap();
        assert_eq!(msg.class(), Class::Error);
        let realm = msg.get(attr::REALM).unwrap().to_vec();
        let nonce = msg.get(attr::NONCE).unwrap().to_vec();
        let answer = exchange(client, &allocate_request(2, Some((&realm, &nonce)))).await;
        let msg = Message::parse(&answer).unwrap();
        assert_eq!(msg.class(), Class::Success);
        assert!(msg.get(attr::XOR_RELAYED_ADDRESS).is_some());
        (realm, nonce)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_without_an_allocation_is_closed() {
        let ctx = context();
        let (mut client, task) = connect(&ctx);
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(5)).await;
        assert!(!task.is_finished(), "closed before the idle timeout");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(task.is_finished(), "still open after the idle timeout");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_holding_an_allocation_outlives_the_idle_timeout_and_takes_it_along() {
        let ctx = context();
        let (mut client, task) = connect(&ctx);
        allocate(&mut client).await;
        assert_eq!(ctx.turn.allocations(), 1);
        tokio::time::sleep(3 * IDLE_TIMEOUT).await;
        assert!(
            !task.is_finished(),
            "closed for idleness with an allocation"
        );
        assert_eq!(ctx.turn.allocations(), 1);
        // The client goes: so does its allocation.
        drop(client);
        task.await.unwrap().unwrap();
        assert_eq!(ctx.turn.allocations(), 0);
    }

    /// Reads one frame (STUN or padded ChannelData) from the stream.
    async fn read_frame(client: &mut DuplexStream) -> Vec<u8> {
        let mut raw = vec![0u8; 4];
        client.read_exact(&mut raw).await.unwrap();
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        let total = if raw[0] >= 0x40 {
            4 + len.div_ceil(4) * 4
        } else {
            STUN_HEADER + len
        };
        raw.resize(total, 0);
        client.read_exact(&mut raw[4..]).await.unwrap();
        raw
    }

    #[tokio::test]
    async fn channel_data_is_relayed_both_ways_and_padded_towards_the_client() {
        let ctx = context();
        let (mut client, task) = connect(&ctx);
        let (realm, nonce) = allocate(&mut client).await;
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut buf = vec![0u8; 512];
        let mut w = Writer::new(&mut buf, method::CHANNEL_BIND, Class::Request, &[3; 12]).unwrap();
        w.add(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]).unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
            .unwrap();
        w.add(attr::USERNAME, b"user").unwrap();
        w.add(attr::REALM, &realm).unwrap();
        w.add(attr::NONCE, &nonce).unwrap();
        w.add_integrity(&long_term_key(b"user", &realm, b"pass"))
            .unwrap();
        let n = w.finish();
        let answer = exchange(&mut client, &buf[..n]).await;
        assert_eq!(Message::parse(&answer).unwrap().class(), Class::Success);

        // Client to peer: 5 bytes, padded to 8 on the stream, 5 in the datagram.
        client
            .write_all(&[0x40, 0x01, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0])
            .await
            .unwrap();
        let mut got = [0u8; 64];
        let (n, relay) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut got))
            .await
            .expect("the datagram reaches the peer")
            .unwrap();
        assert_eq!(&got[..n], &[1, 2, 3, 4, 5]);

        // Peer to client: 3 bytes come as ChannelData padded to 8.
        peer.send_to(&[7, 8, 9], relay).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut client))
            .await
            .expect("the datagram reaches the client");
        assert_eq!(frame, [0x40, 0x01, 0, 3, 7, 8, 9, 0]);

        drop(client);
        task.await.unwrap().unwrap();
        assert_eq!(ctx.turn.allocations(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_frame_ends_the_connection() {
        let ctx = context();
        let (mut client, task) = connect(&ctx);
        client.write_all(&[0xFF; 8]).await.unwrap();
        task.await.unwrap().unwrap();
        assert_eq!(ctx.counters.malformed.get(), 1);
    }
}
