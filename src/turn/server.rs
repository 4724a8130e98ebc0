//! TURN allocations (RFC 8656) as a sans-IO core: one `TurnCore` per data-plane worker
//! (or per TCP/TLS connection), fed packets and the time, answering with actions.
//!
//! Relay sockets are opened and closed through the `RelayIo` trait (a port held for a
//! reservation is an opaque `HeldPort`), so the core never holds or touches a socket;
//! the worker owns them and polls them in its event loop. Packets are relayed in place: the payload of a ChannelData message or Send indication is
//! sent straight from the receive buffer, and data from a peer gets its ChannelData
//! header or Data indication written into the headroom in front of it.
//!
//! No state exists for a client before one of its requests authenticates: 401/438
//! answers come from the stateless nonce of `auth`, rate-limited per source.

use super::auth::{Auth, Credentials, Reject};
use super::policy::PeerPolicy;
use crate::config::PortRange;
use crate::load::Load;
use crate::metrics::TurnMetrics;
use crate::stun::message::{Class, HEADER_LEN, Message, WriteError, Writer, attr, method};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use rand_chacha::ChaCha12Rng;

use crate::net::client::client_prefix;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Index of a relay socket in the worker's socket table.
pub type RelayId = usize;

/// Opening and closing relay sockets, done by the I/O layer for the core.
pub trait RelayIo {
    /// Binds a UDP socket on `addr` and starts polling it. `AddrInUse` makes the core
    /// try another port.
    fn open(&mut self, addr: SocketAddr) -> io::Result<RelayId>;
    /// Binds a UDP socket on `addr` without polling it: a port held for a later
    /// Allocate (EVEN-PORT with R), which may come to another worker.
    fn reserve(&mut self, addr: SocketAddr) -> io::Result<HeldPort>;
    /// Starts polling a port held by `reserve` (of any worker).
    fn adopt(&mut self, held: HeldPort) -> io::Result<RelayId>;
    /// Closes relay socket `id`; the core never names it again.
    fn close(&mut self, id: RelayId);
}

/// A port the I/O layer holds for a reservation: opaque to the core, which only carries
/// it to the Allocate that adopts it, or drops it (which frees the port). So the core
/// holds no socket of the operating system.
pub struct HeldPort(Box<dyn std::any::Any + Send>);

impl HeldPort {
    /// Wraps what the I/O layer holds the port with (a bound socket).
    pub fn new<T: std::any::Any + Send>(held: T) -> HeldPort {
        HeldPort(Box::new(held))
    }

    /// What [`HeldPort::new`] wrapped, if it is a `T`.
    pub fn into_inner<T: std::any::Any>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for HeldPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldPort")
    }
}

/// Lifetimes (RFC 8656 §2.2, §9, §12) and bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Seconds an allocation lives when the request names no LIFETIME.
    pub default_lifetime: u32,
    /// Upper bound, in seconds, on a requested LIFETIME.
    pub max_lifetime: u32,
    /// Allocations on the node at once (all cores together).
    pub max_allocations: usize,
    /// Allocations one username holds at once (486 past it).
    pub max_allocations_per_user: u32,
    /// Allocations (and EVEN-PORT reservations) one client address holds at once; an
    /// IPv6 /64 counts as one address.
    pub max_allocations_per_ip: u32,
    /// Permissions one allocation holds.
    pub max_permissions: usize,
    /// Channel bindings one allocation holds.
    pub max_channels: usize,
    /// Relayed bytes per second one allocation may move, both directions together;
    /// 0 = no cap. One second's worth may come in a burst.
    pub bandwidth: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_lifetime: 600,
            max_lifetime: 3600,
            max_allocations: 100_000,
            max_allocations_per_user: 1_000,
            max_allocations_per_ip: 1024,
            max_permissions: 64,
            max_channels: 64,
            bandwidth: 0,
        }
    }
}

const PERMISSION_LIFETIME_MS: u64 = 300_000;
const CHANNEL_LIFETIME_MS: u64 = 600_000;
/// How long a port reserved by EVEN-PORT's R bit waits for its Allocate (RFC 8656 §7.2).
const RESERVATION_MS: u64 = 30_000;
/// Ports held at once for reservations, over the whole node.
const MAX_RESERVATIONS: usize = 1_000;
/// Channel numbers: RFC 8656 narrowed them to 0x4000–0x4FFF, but RFC 5766 clients
/// (coturn's tools among them) still pick from 0x4000–0x7FFF, and nothing else on the
/// media port starts with 0x50–0x7F (RFC 7983), so the old range is kept.
const CHANNEL_FIRST: u16 = 0x4000;
const CHANNEL_LAST: u16 = 0x7FFF;
/// XOR-PEER-ADDRESS attributes taken from one CreatePermission.
const MAX_PEERS_PER_REQUEST: usize = 8;
/// Relays one participant's room credentials may hold at once. Chromium allocates one
/// per local address and TURN URL on each of a page's two connections (up to 12 with
/// IPv4 and IPv6); with a cap of 4 it was refused some and its receiving connection
/// failed, so the cap leaves room for all of them.
pub(crate) const ROOM_RELAYS_PER_PARTICIPANT: u32 = 16;
/// Attempts at a free relay port before answering 508.
const PORT_ATTEMPTS: usize = 64;
const UDP: u8 = 17;
/// ADDITIONAL-ADDRESS-FAMILY as numbered in the draft that coturn implements; RFC 8656
/// moved it to 0x8000. Both are read.
const ADDITIONAL_ADDRESS_FAMILY_DRAFT: u16 = 0x8032;
const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// What SIGHUP may change while allocations run: the limits and the peer policy.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) limits: Limits,
    pub(crate) policy: PeerPolicy,
}

/// What every core of the node shares: settings and the allocation quotas.
pub struct Shared {
    /// Replaced as a whole by [`Shared::replace_settings`]; each core keeps the `Arc`
    /// it last saw and looks again when `generation` moved (one relaxed load per call,
    /// no lock on the packet path).
    settings: RwLock<Arc<Settings>>,
    generation: AtomicU64,
    pub(crate) ports: PortRange,
    /// Addresses relay sockets bind to, per family (`None`: no relay of that family).
    pub(crate) relay_v4: Option<IpAddr>,
    pub(crate) relay_v6: Option<IpAddr>,
    /// What XOR-RELAYED-ADDRESS says (the public side of a 1:1 NAT).
    pub(crate) public_v4: Ipv4Addr,
    pub(crate) public_v6: Option<Ipv6Addr>,
    pub(crate) metrics: TurnMetrics,
    total: AtomicUsize,
    /// Allocations and reservations held per username and per client address.
    quotas: Mutex<Quotas>,
    /// Shared, as the Allocate with the token may reach another worker.
    reservations: Mutex<Vec<Reservation>>,
    /// Set when the node drains: no new allocations, those held run on.
    draining: AtomicBool,
    /// How busy the data plane is: no new allocations while it is overloaded.
    load: OnceLock<Arc<Load>>,
}

impl Shared {
    /// The shared state of one node: limits and peer policy (replaceable), the relay port range and addresses, the public addresses, the metrics.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        limits: Limits,
        ports: PortRange,
        relay_v4: Option<IpAddr>,
        relay_v6: Option<IpAddr>,
        public_v4: Ipv4Addr,
        public_v6: Option<Ipv6Addr>,
        policy: PeerPolicy,
        metrics: TurnMetrics,
    ) -> Shared {
        Shared {
            settings: RwLock::new(Arc::new(Settings { limits, policy })),
            generation: AtomicU64::new(0),
            ports,
            relay_v4,
            relay_v6,
            public_v4,
            public_v6,
            metrics,
            total: AtomicUsize::new(0),
            quotas: Mutex::new(Quotas::default()),
            reservations: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            load: OnceLock::new(),
        }
    }

    /// The limits and peer policy in force.
    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// New limits and peer policy for every core (SIGHUP). Allocations, permissions
    /// and channels held stay; what the new settings refuse is refused from the next
    /// request or datagram on.
    pub(crate) fn replace_settings(&self, settings: Settings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// From now on Allocate answers 508 while `load` says the node is overloaded.
    pub(crate) fn watch_load(&self, load: Arc<Load>) {
        let _ = self.load.set(load);
    }

    /// From now on Allocate answers 508; allocations held are refreshed as before.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Takes one allocation of the quotas of `user` at client address `ip`; false
    /// when a quota is full. Room credentials (see
    /// [`crate::turn::auth::room_credential`]) get [`ROOM_RELAYS_PER_PARTICIPANT`].
    fn acquire(&self, user: &str, ip: IpAddr) -> bool {
        if self.total.load(Ordering::Relaxed) >= self.settings().limits.max_allocations
            || !self.take_quota(user, ip)
        {
            return false;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        self.metrics.allocations.inc();
        true
    }

    fn release(&self, user: &str, ip: IpAddr) {
        if self.give_back_quota(user, ip) {
            self.total.fetch_sub(1, Ordering::Relaxed);
            self.metrics.allocations.dec();
        }
    }

    /// One place in the per-user and per-address quotas (an allocation's, or an
    /// EVEN-PORT reservation's while it is held).
    fn take_quota(&self, user: &str, ip: IpAddr) -> bool {
        let Ok(mut quotas) = self.quotas.lock() else {
            return false;
        };
        let limits = self.settings().limits;
        let per_user = if crate::turn::auth::room_credential(user).is_some() {
            limits
                .max_allocations_per_user
                .min(ROOM_RELAYS_PER_PARTICIPANT)
        } else {
            limits.max_allocations_per_user
        };
        let ip = client_prefix(ip);
        let Quotas { by_user, by_ip } = &mut *quotas;
        let n = by_user.get(user).copied().unwrap_or(0);
        let m = by_ip.get(&ip).copied().unwrap_or(0);
        if n >= per_user || m >= limits.max_allocations_per_ip {
            return false;
        }
        by_user.insert(user.into(), n + 1);
        by_ip.insert(ip, m + 1);
        true
    }

    /// Gives back a place of [`Shared::take_quota`]; false if `user` held none.
    fn give_back_quota(&self, user: &str, ip: IpAddr) -> bool {
        let Ok(mut quotas) = self.quotas.lock() else {
            return false;
        };
        let Quotas { by_user, by_ip } = &mut *quotas;
        let Some(n) = by_user.get_mut(user) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            by_user.remove(user);
        }
        let ip = client_prefix(ip);
        if let Some(m) = by_ip.get_mut(&ip) {
            *m -= 1;
            if *m == 0 {
                by_ip.remove(&ip);
            }
        }
        true
    }

    fn add_reservation(&self, r: Reservation) {
        if let Ok(mut list) = self.reservations.lock() {
            list.push(r);
        }
    }

    /// Whether another port may be held for EVEN-PORT's R bit: held ports count
    /// against no allocation quota, so their number is bounded on its own.
    fn reservation_room(&self) -> bool {
        self.reservations
            .lock()
            .map(|list| list.len() < MAX_RESERVATIONS)
            .unwrap_or(false)
    }

    /// Takes the reservation of `token` if it is live and of the wanted family; its
    /// place in the quotas is given back (the allocation that adopts it takes its own).
    fn take_reservation(&self, token: &[u8; 8], now: u64) -> Option<Reservation> {
        let r = {
            let mut list = self.reservations.lock().ok()?;
            let i = list
                .iter()
                .position(|r| &r.token == token && r.expires > now)?;
            list.swap_remove(i)
        };
        self.give_back_quota(&r.user, r.ip);
        Some(r)
    }

    /// Closes the sockets of expired reservations and gives back their quota places.
    fn expire_reservations(&self, now: u64) {
        let expired: Vec<Reservation> = match self.reservations.lock() {
            Ok(mut list) => {
                let (gone, live) = std::mem::take(&mut *list)
                    .into_iter()
                    .partition(|r| r.expires <= now);
                *list = live;
                gone
            }
            Err(_) => return,
        };
        for r in expired {
            self.give_back_quota(&r.user, r.ip);
        }
    }

    /// Allocations held now, over all cores.
    pub(crate) fn allocations(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// The time as the core sees it: a monotonic clock for lifetimes, the wall clock for
/// REST usernames and nonces.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic milliseconds (any origin), for lifetimes.
    pub mono_ms: u64,
    /// Wall-clock seconds since the Unix epoch, for REST usernames and nonces.
    pub unix: u64,
}

/// Where a client's packets come from: which listener socket, which address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Index of the listener socket (or stream) the packet came in on.
    pub listener: usize,
    /// The client's transport address as that listener sees it.
    pub addr: SocketAddr,
}

/// What to do with a packet after the core has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `buf[..n]` back to the sender.
    Reply(usize),
    /// Send `buf[start..start + len]` to `peer` from relay socket `relay`.
    ToPeer {
        /// The relay socket to send from.
        relay: RelayId,
        /// The peer to send to.
        peer: SocketAddr,
        /// Offset of the payload in `buf`.
        start: usize,
        /// Length of the payload.
        len: usize,
    },
    /// Send `buf[start..start + len]` to a client through its listener socket.
    ToClient {
        /// The client (listener and address) to send to.
        client: ClientKey,
        /// Offset of the ChannelData or Data indication in `buf`.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Nothing to send; the packet was consumed or dropped for this reason.
    Drop(DropReason),
}

/// Why [`Action::Drop`] sent nothing (a label of the drop counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not well-formed.
    Malformed,
    /// No allocation, channel or permission for it (a stale or spoofed packet).
    NoRoute,
    /// A 401/438 answer held back by the per-source rate limit.
    RateLimited,
    /// Consumed with nothing to answer (an indication).
    Consumed,
    /// Not a TURN message.
    Unhandled,
    /// Over the allocation's bandwidth cap.
    Bandwidth,
    /// On the media port, beside TURN: a copy of an SFU session's nominating ICE check
    /// from another address (`sfu::ice`).
    Replayed,
}

#[derive(Debug, Clone, Copy)]
struct Relay {
    id: RelayId,
    /// What XOR-RELAYED-ADDRESS says.
    advertised: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: u64,
}

struct Allocation {
    client: ClientKey,
    v4: Option<Relay>,
    v6: Option<Relay>,
    expires: u64,
    creds: Credentials,
    /// The Allocate's transaction id, so that a retransmission is answered again.
    allocate_tid: [u8; 12],
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    /// Bytes the allocation may still relay now (with `Limits::bandwidth`).
    budget: u64,
    budget_at: u64,
}

/// A permission for one peer IP address (RFC 8656 §9).
#[derive(Debug, Clone, Copy)]
struct Permission {
    ip: IpAddr,
    expires: u64,
    /// The address is refused by the peer policy and let in only because the node's
    /// own media address is on it: then only that exact address and port may be used.
    own_only: bool,
}

impl Allocation {
    fn relay_for(&self, peer: &SocketAddr) -> Option<&Relay> {
        if peer.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    fn permission(&self, ip: IpAddr, now: u64) -> Option<&Permission> {
        self.permissions
            .iter()
            .find(|p| p.ip == ip && p.expires > now)
    }
}

/// A port held by EVEN-PORT's R bit, for the Allocate that brings its token.
struct Reservation {
    token: [u8; 8],
    port: HeldPort,
    advertised: SocketAddr,
    expires: u64,
    /// Whose quotas it counts against while held.
    user: Box<str>,
    ip: IpAddr,
}

/// Allocations and reservations held, per username and per client address.
#[derive(Default)]
struct Quotas {
    by_user: HashMap<Box<str>, u32>,
    by_ip: HashMap<IpAddr, u32>,
}

/// The fields of a TURN request, read before the reply overwrites the buffer.
#[derive(Default)]
struct Request {
    method: u16,
    tid: [u8; 12],
    fingerprint: bool,
    lifetime: Option<u32>,
    transport: Option<u8>,
    family: Option<u8>,
    additional_family: Option<u8>,
    even_port: Option<bool>,
    reservation: Option<[u8; 8]>,
    channel: Option<u16>,
    peers: [Option<SocketAddr>; MAX_PEERS_PER_REQUEST],
    bad_attribute: bool,
    unknown: [u16; 4],
    unknown_count: usize,
}

/// An error answer: code and reason phrase.
type Failure = (u16, &'static str);

const BAD_REQUEST: Failure = (400, "Bad Request");
const FORBIDDEN: Failure = (403, "Forbidden");
const MISMATCH: Failure = (437, "Allocation Mismatch");
const WRONG_CREDENTIALS: Failure = (441, "Wrong Credentials");
const UNSUPPORTED_TRANSPORT: Failure = (442, "Unsupported Transport Protocol");
const FAMILY_NOT_SUPPORTED: Failure = (440, "Address Family not Supported");
const PEER_FAMILY_MISMATCH: Failure = (443, "Peer Address Family Mismatch");
const QUOTA: Failure = (486, "Allocation Quota Reached");
const CAPACITY: Failure = (508, "Insufficient Capacity");

/// One core's allocations.
pub struct TurnCore {
    shared: Arc<Shared>,
    /// `shared`'s settings as of generation `seen` (see [`TurnCore::refresh`]).
    settings: Arc<Settings>,
    seen: u64,
    auth: Auth,
    /// Data to a stream client (TCP/TLS) is padded to four bytes (RFC 8656 §12.5).
    stream: bool,
    allocations: Vec<Option<Allocation>>,
    free: Vec<usize>,
    by_client: FxHashMap<ClientKey, usize>,
    /// Allocation index by relay id (`usize::MAX` where none).
    by_relay: Vec<usize>,
    /// Transaction ids of Data indications, reservation tokens and relay ports come
    /// from here: one Data indication must not tell what the next token or port is.
    rng: ChaCha12Rng,
}

impl TurnCore {
    /// A core whose randomness comes from `seed` (the node draws it from the OS).
    pub(crate) fn with_seed(
        shared: Arc<Shared>,
        auth: Auth,
        stream: bool,
        seed: [u8; 32],
    ) -> TurnCore {
        let mut core = TurnCore::new(shared, auth, stream, 0);
        core.rng = ChaCha12Rng::from_seed(seed);
        core
    }

    /// A core with a fixed seed (tests and benchmarks: the same run every time).
    pub fn new(shared: Arc<Shared>, auth: Auth, stream: bool, seed: u64) -> TurnCore {
        let seen = shared.generation.load(Ordering::Acquire);
        TurnCore {
            settings: shared.settings(),
            seen,
            shared,
            auth,
            stream,
            allocations: Vec::new(),
            free: Vec::new(),
            by_client: FxHashMap::default(),
            by_relay: Vec::new(),
            rng: ChaCha12Rng::seed_from_u64(seed),
        }
    }

    /// Takes the node's settings again if SIGHUP replaced them since the last look:
    /// before each STUN request and at each sweep (every second), not per relayed
    /// packet, so data follows new settings within a second and the relay path does
    /// not even load the generation.
    #[inline]
    fn look_at_settings(&mut self) {
        let now = self.shared.generation.load(Ordering::Acquire);
        if now != self.seen {
            self.take_settings(now);
        }
    }

    /// Out of line: the packet path keeps only the load and the compare.
    #[cold]
    #[inline(never)]
    fn take_settings(&mut self, generation: u64) {
        self.settings = self.shared.settings();
        self.seen = generation;
    }

    /// Allocations this core holds.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether this core holds no allocation.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// The node's public addresses (`node.public_ip`, `node.public_ipv6`): with a
    /// listener's port, the media address the SFU's candidates name.
    pub(crate) fn public_addresses(&self) -> (Ipv4Addr, Option<Ipv6Addr>) {
        (self.shared.public_v4, self.shared.public_v6)
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Whether a STUN message of this type is for TURN (and not for Binding).
    pub fn is_turn_method(buf: &[u8]) -> bool {
        if buf.len() < 2 {
            return false;
        }
        let typ = u16::from_be_bytes([buf[0], buf[1]]);
        let m = (typ & 0x000F) | ((typ & 0x00E0) >> 1) | ((typ & 0x3E00) >> 2);
        matches!(
            m,
            method::ALLOCATE
                | method::REFRESH
                | method::SEND
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
        )
    }

    /// A packet from a client: a TURN request, a Send indication or ChannelData in
    /// `buf[..len]`. `buf` is the rest of the receive slot (room for the reply).
    pub fn handle_client(
        &mut self,
        clock: Clock,
        client: ClientKey,
        buf: &mut [u8],
        len: usize,
        relays: &mut dyn RelayIo,
    ) -> Action {
        if len > buf.len() {
            return Action::Drop(DropReason::Malformed);
        }
        let action = match buf.first() {
            Some(0x40..=0x7F) => self.channel_data(clock, client, &buf[..len]),
            Some(0..=3) => {
                self.look_at_settings();
                self.stun(clock, client, buf, len, relays)
            }
            _ => Action::Drop(DropReason::Malformed),
        };
        match action {
            Action::ToPeer { len, .. } if self.settings.limits.bandwidth > 0 => {
                let index = self.by_client.get(&client).copied();
                match index {
                    Some(i) if self.charge(i, len, clock.mono_ms) => action,
                    _ => Action::Drop(DropReason::Bandwidth),
                }
            }
            _ => action,
        }
    }

    /// Takes `bytes` from allocation `index`'s bandwidth budget, refilled at
    /// `Limits::bandwidth` per second up to one second's worth.
    fn charge(&mut self, index: usize, bytes: usize, now: u64) -> bool {
        let rate = self.settings.limits.bandwidth;
        let Some(alloc) = self.allocations.get_mut(index).and_then(Option::as_mut) else {
            return false;
        };
        let elapsed = now.saturating_sub(alloc.budget_at);
        alloc.budget = rate.min(
            alloc
                .budget
                .saturating_add(elapsed.saturating_mul(rate) / 1000),
        );
        alloc.budget_at = now;
        let bytes = bytes as u64;
        if alloc.budget < bytes {
            return false;
        }
        alloc.budget -= bytes;
        true
    }

    fn channel_data(&mut self, clock: Clock, client: ClientKey, buf: &[u8]) -> Action {
        if buf.len() < 4 {
            return Action::Drop(DropReason::Malformed);
        }
        let number = u16::from_be_bytes([buf[0], buf[1]]);
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if 4 + len > buf.len() {
            return Action::Drop(DropReason::Malformed);
        }
        let now = clock.mono_ms;
        let Some(alloc) = self.allocation(client, now) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let Some(ch) = alloc
            .channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
        else {
            return Action::Drop(DropReason::NoRoute);
        };
        // The channel's peer passed the policy, port included, when it was bound.
        if alloc.permission(ch.peer.ip(), now).is_none() {
            return Action::Drop(DropReason::NoRoute);
        }
        match alloc.relay_for(&ch.peer) {
            Some(relay) => Action::ToPeer {
                relay: relay.id,
                peer: ch.peer,
                start: 4,
                len,
            },
            None => Action::Drop(DropReason::NoRoute),
        }
    }

    /// Whether data may flow between the allocation and `peer`: a live permission for
    /// its address, and for an address let in only as the node's own, that exact port.
    fn may_exchange(&self, alloc: &Allocation, peer: SocketAddr, now: u64) -> bool {
        match alloc.permission(peer.ip(), now) {
            None => false,
            Some(p) => !p.own_only || self.settings.policy.permits(peer),
        }
    }

    /// The live allocation of a client (one past its lifetime waits for the sweep,
    /// but relays nothing).
    fn allocation(&self, client: ClientKey, now: u64) -> Option<&Allocation> {
        let &i = self.by_client.get(&client)?;
        self.allocations
            .get(i)?
            .as_ref()
            .filter(|a| a.expires > now)
    }

    fn stun(
        &mut self,
        clock: Clock,
        client: ClientKey,
        buf: &mut [u8],
        len: usize,
        relays: &mut dyn RelayIo,
    ) -> Action {
        let Ok(msg) = Message::parse(&buf[..len]) else {
            return Action::Drop(DropReason::Malformed);
        };
        if msg.verify_fingerprint() == Some(false) {
            return Action::Drop(DropReason::Malformed);
        }
        match (msg.method(), msg.class()) {
            (method::SEND, Class::Indication) => self.send_indication(clock, client, &msg),
            (
                method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND,
                Class::Request,
            ) => {
                let req = read_request(&msg);
                let auth = self.auth.check(&msg, client.addr, clock.unix);
                self.request(clock, client, buf, req, auth, relays)
            }
            _ => Action::Drop(DropReason::Unhandled),
        }
    }

    fn send_indication(&mut self, clock: Clock, client: ClientKey, msg: &Message<'_>) -> Action {
        let Some(Ok(peer)) = msg.xor_address(attr::XOR_PEER_ADDRESS) else {
            return Action::Drop(DropReason::Malformed);
        };
        let Some(data) = msg.attributes().find(|a| a.typ == attr::DATA) else {
            return Action::Drop(DropReason::Malformed);
        };
        let Some(alloc) = self.allocation(client, clock.mono_ms) else {
            return Action::Drop(DropReason::NoRoute);
        };
        if !self.may_exchange(alloc, peer, clock.mono_ms) {
            return Action::Drop(DropReason::NoRoute);
        }
        match alloc.relay_for(&peer) {
            Some(relay) => Action::ToPeer {
                relay: relay.id,
                peer,
                start: data.offset + 4,
                len: data.value.len(),
            },
            None => Action::Drop(DropReason::NoRoute),
        }
    }

    fn request(
        &mut self,
        clock: Clock,
        client: ClientKey,
        buf: &mut [u8],
        req: Request,
        auth: Result<Credentials, Reject>,
        relays: &mut dyn RelayIo,
    ) -> Action {
        let creds = match auth {
            Ok(creds) => creds,
            Err(reject) => return self.reject(clock, client, buf, &req, reject),
        };
        // After authentication (RFC 8489 §6.3): an unauthenticated answer goes through
        // the rate limit of `reject`, never out unthrottled to a spoofable source.
        if req.unknown_count > 0 {
            let unknown = req.unknown;
            let count = req.unknown_count;
            let key = Some(&creds.key);
            return self.answer_error(buf, &req, (420, "Unknown Attribute"), key, |w| {
                w.add_unknown_attributes(&unknown[..count])
            });
        }
        if req.bad_attribute {
            return self.answer_error(buf, &req, BAD_REQUEST, Some(&creds.key), |_| Ok(()));
        }
        let result = match req.method {
            method::ALLOCATE => self.allocate(clock, client, buf, &req, &creds, relays),
            _ => {
                let Some(&index) = self.by_client.get(&client) else {
                    return self.answer_error(buf, &req, MISMATCH, Some(&creds.key), |_| Ok(()));
                };
                let same_user = self.allocations[index]
                    .as_ref()
                    .is_some_and(|a| a.creds.username == creds.username);
                if !same_user {
                    return self.answer_error(
                        buf,
                        &req,
                        WRONG_CREDENTIALS,
                        Some(&creds.key),
                        |_| Ok(()),
                    );
                }
                match req.method {
                    method::REFRESH => self.refresh(clock, index, buf, &req, &creds, relays),
                    method::CREATE_PERMISSION => {
                        self.create_permission(clock, index, buf, &req, &creds)
                    }
                    _ => self.channel_bind(clock, index, buf, &req, &creds),
                }
            }
        };
        match result {
            Ok(action) => action,
            Err(failure) => {
                match failure.0 {
                    403 => self.shared.metrics.peers_refused.inc(),
                    486 => self.shared.metrics.quota_refused.inc(),
                    _ => 0,
                };
                self.answer_error(buf, &req, failure, Some(&creds.key), |_| Ok(()))
            }
        }
    }

    /// 401 or 438 with REALM and a fresh NONCE, or 400; rate-limited per source.
    fn reject(
        &mut self,
        clock: Clock,
        client: ClientKey,
        buf: &mut [u8],
        req: &Request,
        reject: Reject,
    ) -> Action {
        let failure = match reject {
            // No reason phrase: this answer goes to anyone who sends 28 bytes, so it
            // carries only what a client needs (RFC 8489 §14.8 allows an empty one).
            Reject::Challenge => (401, ""),
            Reject::WrongCredentials => {
                self.shared.metrics.auth_failures.inc();
                (401, "Unauthorized")
            }
            Reject::StaleNonce => (438, "Stale Nonce"),
            Reject::BadRequest => BAD_REQUEST,
        };
        // A client's first request is an Allocate with REQUESTED-TRANSPORT; anything
        // smaller without credentials (a bare 20-byte header) would get an answer
        // several times its size, so it gets none.
        let plausible = req.method == method::ALLOCATE && req.transport.is_some();
        if reject == Reject::Challenge && !plausible {
            return Action::Drop(DropReason::Malformed);
        }
        if !self.auth.allow_challenge(client.addr.ip(), clock.mono_ms) {
            return Action::Drop(DropReason::RateLimited);
        }
        tracing::debug!(
            method = req.method,
            code = failure.0,
            "TURN request not authenticated"
        );
        let auth = &self.auth;
        let with_challenge = failure.0 != 400;
        answer(buf, req, Class::Error, None, |w| {
            w.add_error_code(failure.0, failure.1)?;
            if with_challenge {
                auth.add_challenge(w, client.addr, clock.unix)?;
            }
            Ok(())
        })
    }

    fn answer_error(
        &self,
        buf: &mut [u8],
        req: &Request,
        failure: Failure,
        key: Option<&[u8; 16]>,
        extra: impl FnOnce(&mut Writer<'_>) -> Result<(), WriteError>,
    ) -> Action {
        tracing::debug!(
            method = req.method,
            code = failure.0,
            "TURN request refused"
        );
        answer(buf, req, Class::Error, key, |w| {
            w.add_error_code(failure.0, failure.1)?;
            extra(w)
        })
    }

    fn allocate(
        &mut self,
        clock: Clock,
        client: ClientKey,
        buf: &mut [u8],
        req: &Request,
        creds: &Credentials,
        relays: &mut dyn RelayIo,
    ) -> Result<Action, Failure> {
        if let Some(&index) = self.by_client.get(&client) {
            // A retransmitted Allocate gets the same success again (RFC 8656 §7.2).
            let alloc = self.allocations[index].as_ref().ok_or(MISMATCH)?;
            if alloc.allocate_tid != req.tid {
                return Err(MISMATCH);
            }
            return Ok(self.allocate_success(clock, index, buf, req, None, None));
        }
        match req.transport {
            None => return Err(BAD_REQUEST),
            Some(UDP) => {}
            Some(_) => return Err(UNSUPPORTED_TRANSPORT),
        }
        // RFC 8656 §7.2 refuses RESERVATION-TOKEN with REQUESTED-ADDRESS-FAMILY, but
        // coturn's clients send both (the family of the reserved port), so a family
        // that matches the reservation is let through.
        if req.reservation.is_some() && (req.even_port.is_some() || req.additional_family.is_some())
        {
            return Err(BAD_REQUEST);
        }
        let (want_v4, want_v6) = match (req.family, req.additional_family) {
            (Some(_), Some(_)) => return Err(BAD_REQUEST),
            (None, Some(FAMILY_V6)) => (true, true),
            (None, Some(_)) => return Err(BAD_REQUEST),
            (None | Some(FAMILY_V4), None) => (true, false),
            (Some(FAMILY_V6), None) => (false, true),
            (Some(_), None) => return Err(FAMILY_NOT_SUPPORTED),
        };
        // A draining node takes no new allocations (see `node`), nor an overloaded
        // one (see `load`).
        if self.shared.draining.load(Ordering::Relaxed)
            || self
                .shared
                .load
                .get()
                .is_some_and(|l| l.refuse_allocation())
        {
            return Err(CAPACITY);
        }
        let reserved = match req.reservation {
            Some(token) => {
                // The reservation decides the family; a REQUESTED-ADDRESS-FAMILY beside
                // it has to agree.
                let r = self
                    .shared
                    .take_reservation(&token, clock.mono_ms)
                    .ok_or(BAD_REQUEST)?;
                if req.family.is_some() && r.advertised.is_ipv6() != (want_v6 && !want_v4) {
                    return Err(BAD_REQUEST);
                }
                let id = relays.adopt(r.port).map_err(|_| CAPACITY)?;
                Some(Relay {
                    id,
                    advertised: r.advertised,
                })
            }
            None => None,
        };
        let ip = client.addr.ip();
        if !self.shared.acquire(&creds.username, ip) {
            if let Some(r) = reserved {
                relays.close(r.id);
            }
            return Err(QUOTA);
        }
        let opened = self.open_relays(
            clock,
            (want_v4, want_v6),
            req.even_port,
            reserved,
            (&creds.username, ip),
            relays,
        );
        let (v4, v6, token, v6_error) = match opened {
            Ok(x) => x,
            Err(failure) => {
                self.shared.release(&creds.username, ip);
                return Err(failure);
            }
        };
        let lifetime = self.lifetime(req.lifetime);
        let alloc = Allocation {
            client,
            v4,
            v6,
            expires: clock.mono_ms + u64::from(lifetime) * 1000,
            creds: creds.clone(),
            allocate_tid: req.tid,
            permissions: Vec::new(),
            channels: Vec::new(),
            budget: self.settings.limits.bandwidth,
            budget_at: clock.mono_ms,
        };
        let index = self.insert(alloc);
        Ok(self.allocate_success(clock, index, buf, req, token, v6_error))
    }

    /// Opens the relay sockets of a new allocation. Returns the relays, a reservation
    /// token (EVEN-PORT with R) and the error of an additional IPv6 relay that failed.
    #[allow(clippy::type_complexity)]
    fn open_relays(
        &mut self,
        clock: Clock,
        (want_v4, want_v6): (bool, bool),
        even_port: Option<bool>,
        reserved: Option<Relay>,
        (user, client_ip): (&str, IpAddr),
        relays: &mut dyn RelayIo,
    ) -> Result<
        (
            Option<Relay>,
            Option<Relay>,
            Option<[u8; 8]>,
            Option<Failure>,
        ),
        Failure,
    > {
        if let Some(r) = reserved {
            return Ok(if r.advertised.is_ipv4() {
                (Some(r), None, None, None)
            } else {
                (None, Some(r), None, None)
            });
        }
        let even = even_port.is_some();
        let reserve = even_port == Some(true);
        let primary_v6 = want_v6 && !want_v4;
        let ip = if primary_v6 {
            self.shared.relay_v6
        } else {
            self.shared.relay_v4
        };
        let ip = ip.ok_or(FAMILY_NOT_SUPPORTED)?;
        let (primary, token) = if reserve {
            if !self.shared.reservation_room() {
                return Err(CAPACITY);
            }
            // The held port counts against the same quotas as an allocation.
            if !self.shared.take_quota(user, client_ip) {
                return Err(QUOTA);
            }
            let (relay, port, advertised) = match self.open_pair(ip, relays) {
                Ok(opened) => opened,
                Err(failure) => {
                    self.shared.give_back_quota(user, client_ip);
                    return Err(failure);
                }
            };
            let token = self.random().to_be_bytes();
            self.shared.add_reservation(Reservation {
                token,
                port,
                advertised,
                expires: clock.mono_ms + RESERVATION_MS,
                user: user.into(),
                ip: client_ip,
            });
            (relay, Some(token))
        } else {
            (self.open_relay(ip, even, relays)?, None)
        };
        if primary_v6 {
            return Ok((None, Some(primary), token, None));
        }
        if !want_v6 {
            return Ok((Some(primary), None, token, None));
        }
        // A dual allocation: the IPv6 relay is extra; its failure is reported in
        // ADDRESS-ERROR-CODE, not as a failure of the whole Allocate (RFC 8656 §7.2).
        let second = match self.shared.relay_v6 {
            Some(ip6) => self.open_relay(ip6, false, relays),
            None => Err(FAMILY_NOT_SUPPORTED),
        };
        Ok(match second {
            Ok(r) => (Some(primary), Some(r), token, None),
            Err(e) => (Some(primary), None, token, Some(e)),
        })
    }

    fn open_relay(
        &mut self,
        ip: IpAddr,
        even: bool,
        relays: &mut dyn RelayIo,
    ) -> Result<Relay, Failure> {
        for _ in 0..PORT_ATTEMPTS {
            let mut port = self.random_port();
            if even {
                port &= !1;
                if port < self.shared.ports.first {
                    continue;
                }
            }
            match self.try_open(ip, port, relays) {
                Ok(r) => return Ok(r),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(_) => return Err(CAPACITY),
            }
        }
        Err(CAPACITY)
    }

    /// An even port and the odd one above it (EVEN-PORT with R, RFC 8656 §14.6).
    fn open_pair(
        &mut self,
        ip: IpAddr,
        relays: &mut dyn RelayIo,
    ) -> Result<(Relay, HeldPort, SocketAddr), Failure> {
        for _ in 0..PORT_ATTEMPTS {
            let port = self.random_port() & !1;
            if port < self.shared.ports.first || port >= self.shared.ports.last {
                continue;
            }
            let Ok(first) = self.try_open(ip, port, relays) else {
                continue;
            };
            match relays.reserve(SocketAddr::new(ip, port + 1)) {
                Ok(second) => {
                    let advertised = SocketAddr::new(first.advertised.ip(), port + 1);
                    return Ok((first, second, advertised));
                }
                Err(_) => relays.close(first.id),
            }
        }
        Err(CAPACITY)
    }

    fn random_port(&mut self) -> u16 {
        let PortRange { first, last } = self.shared.ports;
        let span = u64::from(last - first) + 1;
        first + (self.random() % span) as u16
    }

    fn try_open(&mut self, ip: IpAddr, port: u16, relays: &mut dyn RelayIo) -> io::Result<Relay> {
        let id = relays.open(SocketAddr::new(ip, port))?;
        let public = match ip {
            IpAddr::V4(_) => IpAddr::V4(self.shared.public_v4),
            IpAddr::V6(own) => IpAddr::V6(self.shared.public_v6.unwrap_or(own)),
        };
        Ok(Relay {
            id,
            advertised: SocketAddr::new(public, port),
        })
    }

    fn lifetime(&self, requested: Option<u32>) -> u32 {
        let limits = &self.settings.limits;
        requested
            .unwrap_or(limits.default_lifetime)
            .clamp(limits.default_lifetime, limits.max_lifetime)
    }

    fn insert(&mut self, alloc: Allocation) -> usize {
        let client = alloc.client;
        let ids: Vec<RelayId> = [alloc.v4, alloc.v6]
            .iter()
            .flatten()
            .map(|r| r.id)
            .collect();
        let index = match self.free.pop() {
            Some(i) => {
                self.allocations[i] = Some(alloc);
                i
            }
            None => {
                self.allocations.push(Some(alloc));
                self.allocations.len() - 1
            }
        };
        self.by_client.insert(client, index);
        for id in ids {
            if self.by_relay.len() <= id {
                self.by_relay.resize(id + 1, usize::MAX);
            }
            self.by_relay[id] = index;
        }
        index
    }

    fn remove(&mut self, index: usize, relays: &mut dyn RelayIo) {
        let Some(alloc) = self.allocations.get_mut(index).and_then(Option::take) else {
            return;
        };
        self.by_client.remove(&alloc.client);
        for relay in [alloc.v4, alloc.v6].into_iter().flatten() {
            relays.close(relay.id);
            if let Some(slot) = self.by_relay.get_mut(relay.id) {
                *slot = usize::MAX;
            }
        }
        let m = &self.shared.metrics;
        m.permissions.dec_by(alloc.permissions.len() as i64);
        m.channels.dec_by(alloc.channels.len() as i64);
        self.shared
            .release(&alloc.creds.username, alloc.client.addr.ip());
        self.free.push(index);
    }

    fn allocate_success(
        &self,
        clock: Clock,
        index: usize,
        buf: &mut [u8],
        req: &Request,
        token: Option<[u8; 8]>,
        v6_error: Option<Failure>,
    ) -> Action {
        let Some(alloc) = self.allocations[index].as_ref() else {
            return Action::Drop(DropReason::NoRoute);
        };
        let lifetime = alloc.expires.saturating_sub(clock.mono_ms) / 1000;
        let key = alloc.creds.key;
        let relays = [alloc.v4, alloc.v6];
        let mapped = alloc.client.addr;
        answer(buf, req, Class::Success, Some(&key), |w| {
            for r in relays.iter().flatten() {
                w.add_xor_address(attr::XOR_RELAYED_ADDRESS, r.advertised)?;
            }
            w.add_u32(attr::LIFETIME, lifetime as u32)?;
            if let Some(t) = token {
                w.add(attr::RESERVATION_TOKEN, &t)?;
            }
            if let Some((code, reason)) = v6_error {
                w.add_with(attr::ADDRESS_ERROR_CODE, 4 + reason.len(), |out| {
                    out[0] = FAMILY_V6;
                    out[1] = 0;
                    out[2] = (code / 100) as u8;
                    out[3] = (code % 100) as u8;
                    out[4..].copy_from_slice(reason.as_bytes());
                })?;
            }
            w.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
        })
    }

    fn refresh(
        &mut self,
        clock: Clock,
        index: usize,
        buf: &mut [u8],
        req: &Request,
        creds: &Credentials,
        relays: &mut dyn RelayIo,
    ) -> Result<Action, Failure> {
        if req.lifetime == Some(0) {
            self.remove(index, relays);
            return Ok(answer(buf, req, Class::Success, Some(&creds.key), |w| {
                w.add_u32(attr::LIFETIME, 0)
            }));
        }
        let lifetime = self.lifetime(req.lifetime);
        let alloc = self.allocations[index].as_mut().ok_or(MISMATCH)?;
        if let Some(family) = req.family {
            let has = if family == FAMILY_V6 {
                alloc.v6.is_some()
            } else {
                alloc.v4.is_some()
            };
            if !has {
                return Err(PEER_FAMILY_MISMATCH);
            }
        }
        alloc.expires = clock.mono_ms + u64::from(lifetime) * 1000;
        Ok(answer(buf, req, Class::Success, Some(&creds.key), |w| {
            w.add_u32(attr::LIFETIME, lifetime)
        }))
    }

    /// Checks a peer for a permission or channel: a relay of its family, then the
    /// policy. Permissions are per IP address, the port plays no part (RFC 8656 §9);
    /// an address the policy refuses but that holds the node's own media address is
    /// let in for that address only. Returns whether that is the case.
    fn check_peer(&self, alloc: &Allocation, peer: SocketAddr) -> Result<bool, Failure> {
        if alloc.relay_for(&peer).is_none() {
            return Err(PEER_FAMILY_MISMATCH);
        }
        let policy = &self.settings.policy;
        if policy.permits_ip(peer.ip()) {
            Ok(false)
        } else if policy.is_own_ip(peer.ip()) {
            Ok(true)
        } else {
            Err(FORBIDDEN)
        }
    }

    fn create_permission(
        &mut self,
        clock: Clock,
        index: usize,
        buf: &mut [u8],
        req: &Request,
        creds: &Credentials,
    ) -> Result<Action, Failure> {
        let peers = req.peers.iter().flatten();
        if req.peers[0].is_none() {
            return Err(BAD_REQUEST);
        }
        let alloc = self.allocations[index].as_ref().ok_or(MISMATCH)?;
        // All or nothing (RFC 8656 §10.2): check every peer before installing any.
        let mut own_only = [false; MAX_PEERS_PER_REQUEST];
        for (i, &peer) in peers.clone().enumerate() {
            own_only[i] = self.check_peer(alloc, peer)?;
        }
        let max = self.settings.limits.max_permissions;
        let now = clock.mono_ms;
        let alloc = self.allocations[index].as_mut().ok_or(MISMATCH)?;
        for (i, &peer) in peers.enumerate() {
            install_permission(
                alloc,
                peer.ip(),
                own_only[i],
                now,
                max,
                &self.shared.metrics,
            )?;
        }
        Ok(answer(buf, req, Class::Success, Some(&creds.key), |_| {
            Ok(())
        }))
    }

    fn channel_bind(
        &mut self,
        clock: Clock,
        index: usize,
        buf: &mut [u8],
        req: &Request,
        creds: &Credentials,
    ) -> Result<Action, Failure> {
        let (Some(number), Some(peer)) = (req.channel, req.peers[0]) else {
            return Err(BAD_REQUEST);
        };
        if !(CHANNEL_FIRST..=CHANNEL_LAST).contains(&number) {
            return Err(BAD_REQUEST);
        }
        let alloc = self.allocations[index].as_ref().ok_or(MISMATCH)?;
        let own_only = self.check_peer(alloc, peer)?;
        if own_only && !self.settings.policy.permits(peer) {
            return Err(FORBIDDEN);
        }
        let now = clock.mono_ms;
        let max_channels = self.settings.limits.max_channels;
        let max_permissions = self.settings.limits.max_permissions;
        let metrics = &self.shared.metrics;
        let alloc = self.allocations[index].as_mut().ok_or(MISMATCH)?;
        // A number is bound to one peer and a peer to one number (RFC 8656 §11.2).
        let same_number = alloc.channels.iter().position(|c| c.number == number);
        let same_peer = alloc.channels.iter().position(|c| c.peer == peer);
        match (same_number, same_peer) {
            (Some(a), Some(b)) if a == b => alloc.channels[a].expires = now + CHANNEL_LIFETIME_MS,
            (None, None) => {
                if alloc.channels.len() >= max_channels {
                    return Err(CAPACITY);
                }
                alloc.channels.push(Channel {
                    number,
                    peer,
                    expires: now + CHANNEL_LIFETIME_MS,
                });
                metrics.channels.inc();
            }
            _ => return Err(BAD_REQUEST),
        }
        install_permission(alloc, peer.ip(), own_only, now, max_permissions, metrics)?;
        Ok(answer(buf, req, Class::Success, Some(&creds.key), |_| {
            Ok(())
        }))
    }

    /// A datagram from `peer` on relay socket `relay`, in `buf[start..start + len]`
    /// with free headroom before `start`. Frames it for the client in place.
    pub fn handle_peer(
        &mut self,
        clock: Clock,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        start: usize,
        len: usize,
    ) -> Action {
        let Some(&index) = self.by_relay.get(relay) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let Some(alloc) = self.allocations.get(index).and_then(Option::as_ref) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let now = clock.mono_ms;
        if alloc.expires <= now {
            return Action::Drop(DropReason::NoRoute);
        }
        if !self.may_exchange(alloc, peer, now) {
            return Action::Drop(DropReason::NoRoute);
        }
        if self.settings.limits.bandwidth > 0 && !self.charge(index, len, now) {
            return Action::Drop(DropReason::Bandwidth);
        }
        let Some(alloc) = self.allocations.get(index).and_then(Option::as_ref) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let client = alloc.client;
        if let Some(ch) = alloc
            .channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
        {
            let Ok(len16) = u16::try_from(len) else {
                return Action::Drop(DropReason::Malformed);
            };
            if start < 4 {
                return Action::Drop(DropReason::Malformed);
            }
            buf[start - 4..start - 2].copy_from_slice(&ch.number.to_be_bytes());
            buf[start - 2..start].copy_from_slice(&len16.to_be_bytes());
            let mut total = 4 + len;
            if self.stream {
                let padded = total.div_ceil(4) * 4;
                let Some(pad) = buf.get_mut(start + len..start - 4 + padded) else {
                    return Action::Drop(DropReason::Malformed);
                };
                pad.fill(0);
                total = padded;
            }
            return Action::ToClient {
                client,
                start: start - 4,
                len: total,
            };
        }
        self.data_indication(client, peer, buf, start, len)
    }

    fn data_indication(
        &mut self,
        client: ClientKey,
        peer: SocketAddr,
        buf: &mut [u8],
        start: usize,
        len: usize,
    ) -> Action {
        let addr_len = if peer.is_ipv4() { 8 } else { 20 };
        let header = HEADER_LEN + 4 + addr_len + 4;
        let Some(begin) = start.checked_sub(header) else {
            return Action::Drop(DropReason::Malformed);
        };
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&self.random().to_be_bytes());
        tid[8..].copy_from_slice(&(self.random() as u32).to_be_bytes());
        let written = Writer::new(&mut buf[begin..], method::DATA, Class::Indication, &tid)
            .and_then(|mut w| {
                w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)?;
                // The payload is already in place after this header: leave it be.
                w.add_with(attr::DATA, len, |_| {})?;
                Ok(w.finish())
            });
        match written {
            Ok(n) => Action::ToClient {
                client,
                start: begin,
                len: n,
            },
            Err(_) => Action::Drop(DropReason::Malformed),
        }
    }

    /// Removes what has expired: allocations (closing their relays), permissions,
    /// channels, reservations. Called about once a second.
    pub fn sweep(&mut self, clock: Clock, relays: &mut dyn RelayIo) {
        self.look_at_settings();
        let now = clock.mono_ms;
        let expired: Vec<usize> = self
            .allocations
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().filter(|a| a.expires <= now).map(|_| i))
            .collect();
        for i in expired {
            self.remove(i, relays);
        }
        let metrics = &self.shared.metrics;
        for alloc in self.allocations.iter_mut().flatten() {
            let p = alloc.permissions.len();
            alloc.permissions.retain(|p| p.expires > now);
            metrics
                .permissions
                .dec_by((p - alloc.permissions.len()) as i64);
            let c = alloc.channels.len();
            alloc.channels.retain(|ch| ch.expires > now);
            metrics.channels.dec_by((c - alloc.channels.len()) as i64);
        }
        self.shared.expire_reservations(now);
    }

    /// Drops every allocation (the connection or the node is going away).
    pub(crate) fn close_all(&mut self, relays: &mut dyn RelayIo) {
        for i in 0..self.allocations.len() {
            self.remove(i, relays);
        }
    }
}

fn install_permission(
    alloc: &mut Allocation,
    ip: IpAddr,
    own_only: bool,
    now: u64,
    max: usize,
    metrics: &TurnMetrics,
) -> Result<(), Failure> {
    let expires = now + PERMISSION_LIFETIME_MS;
    if let Some(p) = alloc.permissions.iter_mut().find(|p| p.ip == ip) {
        p.expires = expires;
        p.own_only = own_only;
        return Ok(());
    }
    if alloc.permissions.len() >= max {
        return Err(CAPACITY);
    }
    alloc.permissions.push(Permission {
        ip,
        expires,
        own_only,
    });
    metrics.permissions.inc();
    Ok(())
}

/// Reads what a TURN request asks for; unknown comprehension-required attributes are
/// collected for a 420 answer.
fn read_request(msg: &Message<'_>) -> Request {
    let mut req = Request {
        method: msg.method(),
        tid: *msg.transaction_id(),
        fingerprint: msg.fingerprint_offset().is_some(),
        ..Request::default()
    };
    let mut peers = 0;
    for a in msg.attributes() {
        let v = a.value;
        match a.typ {
            attr::LIFETIME => req.lifetime = be_u32(v),
            attr::REQUESTED_TRANSPORT => {
                req.transport = v.first().copied().filter(|_| v.len() == 4)
            }
            attr::REQUESTED_ADDRESS_FAMILY => req.family = family(v, &mut req.bad_attribute),
            attr::ADDITIONAL_ADDRESS_FAMILY | ADDITIONAL_ADDRESS_FAMILY_DRAFT => {
                req.additional_family = family(v, &mut req.bad_attribute)
            }
            attr::EVEN_PORT => req.even_port = v.first().map(|b| b & 0x80 != 0),
            attr::RESERVATION_TOKEN => req.reservation = v.try_into().ok(),
            attr::CHANNEL_NUMBER => {
                req.channel = (v.len() == 4).then(|| u16::from_be_bytes([v[0], v[1]]))
            }
            attr::XOR_PEER_ADDRESS => {
                match crate::stun::message::decode_xor_address(v, msg.cookie_and_transaction_id()) {
                    Ok(peer) if peers < MAX_PEERS_PER_REQUEST => {
                        req.peers[peers] = Some(peer);
                        peers += 1;
                    }
                    Ok(_) => {}
                    Err(_) => req.bad_attribute = true,
                }
            }
            attr::USERNAME
            | attr::USERHASH
            | attr::MESSAGE_INTEGRITY
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::REALM
            | attr::NONCE
            | attr::PASSWORD_ALGORITHM
            | attr::DONT_FRAGMENT
            | attr::DATA
            | attr::FINGERPRINT => {}
            t if attr::is_comprehension_required(t) && req.unknown_count < req.unknown.len() => {
                req.unknown[req.unknown_count] = t;
                req.unknown_count += 1;
            }
            _ => {}
        }
    }
    req
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

fn family(v: &[u8], bad: &mut bool) -> Option<u8> {
    if v.len() != 4 {
        *bad = true;
        return None;
    }
    Some(v[0])
}

/// Writes a response to `req` over the request in `buf`: the attributes `fill` adds,
/// then MESSAGE-INTEGRITY under `key` and FINGERPRINT when the request had one.
fn answer(
    buf: &mut [u8],
    req: &Request,
    class: Class,
    key: Option<&[u8; 16]>,
    fill: impl FnOnce(&mut Writer<'_>) -> Result<(), WriteError>,
) -> Action {
    let written = Writer::new(buf, req.method, class, &req.tid).and_then(|mut w| {
        fill(&mut w)?;
        if let Some(key) = key {
            w.add_integrity(key)?;
        }
        if req.fingerprint {
            w.add_fingerprint()?;
        }
        Ok(w.finish())
    });
    match written {
        Ok(n) => Action::Reply(n),
        Err(_) => Action::Drop(DropReason::Malformed),
    }
}

#[cfg(test)]
mod tests {
    //! The core driven by hand: a fake `RelayIo` that hands out ids and records what is
    //! opened and closed, a clock that moves only when a test moves it, requests written
    //! with `Writer` and signed with the long-term key.

    use super::*;
    use crate::stun::message::{decode_xor_address, long_term_key};
    use std::collections::BTreeMap;

    const REALM: &str = "confnode.test";
    const ALICE: User = ("alice", "wonderland");
    const BOB: User = ("bob", "builder");
    const RELAY_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    const RELAY_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10));
    const PUBLIC_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    const PUBLIC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);
    const PORTS: PortRange = PortRange {
        first: 50_000,
        last: 50_099,
    };
    /// Headroom in front of a peer's datagram, as the data plane keeps it.
    const HEADROOM: usize = crate::net::batch::HEADROOM;

    type User = (&'static str, &'static str);

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// Peers the default policy lets through.
    fn peer_a() -> SocketAddr {
        addr("93.184.216.34:5000")
    }

    fn peer_b() -> SocketAddr {
        addr("93.184.216.35:6000")
    }

    fn peer_v6() -> SocketAddr {
        addr("[2606:4700:4700::1111]:7000")
    }

    /// The node's own media address: loopback, refused by the policy except here.
    fn own() -> SocketAddr {
        addr("127.0.0.1:3478")
    }

    fn client(n: u16) -> ClientKey {
        ClientKey {
            listener: 0,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 40_000 + n),
        }
    }

    fn key(user: User) -> [u8; 16] {
        long_term_key(user.0.as_bytes(), REALM.as_bytes(), user.1.as_bytes())
    }

    /// Relay sockets as ids: records what the core opens, reserves, adopts and closes.
    #[derive(Default)]
    struct FakeRelays {
        next: RelayId,
        open: Vec<(RelayId, SocketAddr)>,
        closed: Vec<RelayId>,
        /// Ports held for reservations.
        reserved: Vec<SocketAddr>,
        adopted: Vec<RelayId>,
        /// Every bind fails with `AddrInUse`.
        busy: bool,
        opens_tried: usize,
    }

    impl FakeRelays {
        fn new() -> FakeRelays {
            FakeRelays {
                next: 10,
                ..FakeRelays::default()
            }
        }

        fn taken(&self, addr: SocketAddr) -> bool {
            self.busy || self.open.iter().any(|&(_, a)| a == addr) || self.reserved.contains(&addr)
        }

        fn id_of(&self, addr: SocketAddr) -> RelayId {
            self.open
                .iter()
                .find(|&&(_, a)| a == addr)
                .map(|&(id, _)| id)
                .expect("a relay open on that address")
        }

        fn add(&mut self, addr: SocketAddr) -> RelayId {
            let id = self.next;
            self.next += 1;
            self.open.push((id, addr));
            id
        }
    }

    impl RelayIo for FakeRelays {
        fn open(&mut self, addr: SocketAddr) -> io::Result<RelayId> {
            self.opens_tried += 1;
            assert!(addr.port() >= PORTS.first && addr.port() <= PORTS.last);
            if self.taken(addr) {
                return Err(io::ErrorKind::AddrInUse.into());
            }
            Ok(self.add(addr))
        }

        fn reserve(&mut self, addr: SocketAddr) -> io::Result<HeldPort> {
            if self.taken(addr) {
                return Err(io::ErrorKind::AddrInUse.into());
            }
            self.reserved.push(addr);
            Ok(HeldPort::new(addr))
        }

        fn adopt(&mut self, held: HeldPort) -> io::Result<RelayId> {
            let addr: SocketAddr = held.into_inner().ok_or(io::ErrorKind::InvalidInput)?;
            let i = self
                .reserved
                .iter()
                .position(|&a| a == addr)
                .ok_or(io::ErrorKind::NotFound)?;
            self.reserved.swap_remove(i);
            let id = self.add(addr);
            self.adopted.push(id);
            Ok(id)
        }

        fn close(&mut self, id: RelayId) {
            let i = self
                .open
                .iter()
                .position(|&(r, _)| r == id)
                .expect("closing a relay that is open (and only once)");
            self.open.swap_remove(i);
            self.closed.push(id);
        }
    }

    struct Node {
        shared: Arc<Shared>,
        core: TurnCore,
        /// A clone of the core's authenticator, for nonces.
        auth: Auth,
        relays: FakeRelays,
        now: Clock,
        buf: Vec<u8>,
        tids: u32,
    }

    struct Setup {
        limits: Limits,
        v6: bool,
        stream: bool,
        own: Vec<SocketAddr>,
        /// The host's own addresses (see `PeerPolicy::with_host`).
        host: Vec<IpAddr>,
    }

    impl Default for Setup {
        fn default() -> Setup {
            Setup {
                limits: Limits::default(),
                v6: false,
                stream: false,
                own: vec![own()],
                host: Vec::new(),
            }
        }
    }

    fn node() -> Node {
        node_with(Setup::default())
    }

    fn node_with(setup: Setup) -> Node {
        let policy = PeerPolicy::new(false, &[], &[], &setup.own)
            .with_host(&setup.host, (PORTS.first, PORTS.last));
        let shared = Arc::new(Shared::new(
            setup.limits,
            PORTS,
            Some(RELAY_V4),
            setup.v6.then_some(RELAY_V6),
            PUBLIC_V4,
            setup.v6.then_some(PUBLIC_V6),
            policy,
            TurnMetrics::default(),
        ));
        let mut users = BTreeMap::new();
        for (name, password) in [ALICE, BOB] {
            users.insert(name.to_owned(), password.to_owned());
        }
        let auth = Auth::new(REALM, &users, &[], [7; 32]);
        let core = TurnCore::new(shared.clone(), auth.clone(), setup.stream, 0x5eed);
        Node {
            shared,
            core,
            auth,
            relays: FakeRelays::new(),
            now: Clock {
                mono_ms: 5_000_000,
                unix: 1_750_000_000,
            },
            buf: vec![0; 2048],
            tids: 0,
        }
    }

    impl Node {
        fn tid(&mut self) -> [u8; 12] {
            self.tids += 1;
            let mut tid = [0xa5; 12];
            tid[..4].copy_from_slice(&self.tids.to_be_bytes());
            tid
        }

        fn advance(&mut self, secs: u64) {
            self.now.mono_ms += secs * 1000;
            self.now.unix += secs;
        }

        fn sweep(&mut self) {
            self.core.sweep(self.now, &mut self.relays);
        }

        /// A request from `from`: the attributes `attrs` writes, then (with `user`)
        /// USERNAME, REALM, a valid NONCE and MESSAGE-INTEGRITY, then FINGERPRINT.
        fn request(
            &self,
            from: ClientKey,
            method: u16,
            tid: [u8; 12],
            user: Option<User>,
            attrs: impl FnOnce(&mut Writer<'_>),
        ) -> Vec<u8> {
            let mut buf = [0u8; 1024];
            let mut w = Writer::new(&mut buf, method, Class::Request, &tid).expect("writer");
            attrs(&mut w);
            if let Some(user) = user {
                w.add(attr::USERNAME, user.0.as_bytes()).expect("username");
                w.add(attr::REALM, REALM.as_bytes()).expect("realm");
                w.add(attr::NONCE, &self.auth.nonce(from.addr, self.now.unix))
                    .expect("nonce");
                w.add_integrity(&key(user)).expect("integrity");
            }
            w.add_fingerprint().expect("fingerprint");
            let n = w.finish();
            buf[..n].to_vec()
        }

        /// Hands `packet` from `from` to the core in a slot prefilled with 0xEE.
        fn client_sends(&mut self, from: ClientKey, packet: &[u8]) -> Action {
            self.buf.fill(0xEE);
            self.buf[..packet.len()].copy_from_slice(packet);
            self.core.handle_client(
                self.now,
                from,
                &mut self.buf,
                packet.len(),
                &mut self.relays,
            )
        }

        /// Sends a request and returns the response.
        fn ask(&mut self, from: ClientKey, packet: &[u8]) -> Vec<u8> {
            match self.client_sends(from, packet) {
                Action::Reply(n) => self.buf[..n].to_vec(),
                other => panic!("expected a reply, got {other:?}"),
            }
        }

        /// A signed request with a fresh transaction id, answered.
        fn call(
            &mut self,
            from: ClientKey,
            method: u16,
            user: User,
            attrs: impl FnOnce(&mut Writer<'_>),
        ) -> Vec<u8> {
            let tid = self.tid();
            let req = self.request(from, method, tid, Some(user), attrs);
            self.ask(from, &req)
        }

        fn allocate_with(
            &mut self,
            from: ClientKey,
            user: User,
            attrs: impl FnOnce(&mut Writer<'_>),
        ) -> Vec<u8> {
            self.call(from, method::ALLOCATE, user, attrs)
        }

        /// A plain UDP allocation for alice, with `lifetime` if given. Returns the
        /// relay id and the relayed (advertised) address.
        fn allocate(&mut self, from: ClientKey, lifetime: Option<u32>) -> (RelayId, SocketAddr) {
            let res = self.allocate_with(from, ALICE, |w| {
                udp(w);
                if let Some(l) = lifetime {
                    w.add_u32(attr::LIFETIME, l).expect("lifetime");
                }
            });
            assert_success(&res, method::ALLOCATE, ALICE);
            let relayed = xor_addresses(&res, attr::XOR_RELAYED_ADDRESS)[0];
            let id = self.relays.id_of(SocketAddr::new(RELAY_V4, relayed.port()));
            (id, relayed)
        }

        fn refresh(&mut self, from: ClientKey, user: User, lifetime: Option<u32>) -> Vec<u8> {
            self.call(from, method::REFRESH, user, |w| {
                if let Some(l) = lifetime {
                    w.add_u32(attr::LIFETIME, l).expect("lifetime");
                }
            })
        }

        fn permit(&mut self, from: ClientKey, peers: &[SocketAddr]) -> Vec<u8> {
            self.call(from, method::CREATE_PERMISSION, ALICE, |w| {
                for &p in peers {
                    w.add_xor_address(attr::XOR_PEER_ADDRESS, p).expect("peer");
                }
            })
        }

        fn bind(&mut self, from: ClientKey, number: u16, peer: SocketAddr) -> Vec<u8> {
            self.call(from, method::CHANNEL_BIND, ALICE, |w| {
                channel_number(w, number);
                w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .expect("peer");
            })
        }

        /// A datagram from `peer` on `relay`, received after `HEADROOM` free bytes.
        fn peer_sends(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8]) -> Action {
            self.buf.fill(0xEE);
            self.buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
            self.core.handle_peer(
                self.now,
                relay,
                peer,
                &mut self.buf,
                HEADROOM,
                payload.len(),
            )
        }
    }

    fn udp(w: &mut Writer<'_>) {
        w.add_u32(attr::REQUESTED_TRANSPORT, u32::from(UDP) << 24)
            .expect("transport");
    }

    fn channel_number(w: &mut Writer<'_>, number: u16) {
        let [hi, lo] = number.to_be_bytes();
        w.add(attr::CHANNEL_NUMBER, &[hi, lo, 0, 0])
            .expect("channel");
    }

    fn channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = number.to_be_bytes().to_vec();
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn send_indication(peer: Option<SocketAddr>, data: Option<&[u8]>) -> Vec<u8> {
        let mut buf = [0u8; 1024];
        let mut w =
            Writer::new(&mut buf, method::SEND, Class::Indication, &[3; 12]).expect("writer");
        if let Some(p) = peer {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, p).expect("peer");
        }
        if let Some(d) = data {
            w.add(attr::DATA, d).expect("data");
        }
        let n = w.finish();
        buf[..n].to_vec()
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 1) as u8).collect()
    }

    fn parse(raw: &[u8]) -> Message<'_> {
        Message::parse(raw).expect("a well-formed STUN message")
    }

    fn error_code(raw: &[u8]) -> Option<u16> {
        let v = parse(raw).get(attr::ERROR_CODE)?;
        Some(u16::from(v[2] & 7) * 100 + u16::from(v[3]))
    }

    fn lifetime_of(raw: &[u8]) -> Option<u32> {
        be_u32(parse(raw).get(attr::LIFETIME)?)
    }

    fn xor_addresses(raw: &[u8], typ: u16) -> Vec<SocketAddr> {
        let msg = parse(raw);
        msg.attributes()
            .filter(|a| a.typ == typ)
            .map(|a| decode_xor_address(a.value, msg.cookie_and_transaction_id()).expect("addr"))
            .collect()
    }

    fn assert_success(raw: &[u8], method: u16, user: User) {
        let msg = parse(raw);
        assert_eq!(
            (msg.method(), msg.class()),
            (method, Class::Success),
            "error {:?}",
            error_code(raw)
        );
        assert_eq!(msg.verify_integrity(&key(user)), Some(true));
        assert_eq!(msg.verify_fingerprint(), Some(true));
    }

    /// An error answer with `code`, signed for `user` (unsigned when `None`).
    fn assert_error(raw: &[u8], code: u16, user: Option<User>) {
        let msg = parse(raw);
        assert_eq!(msg.class(), Class::Error);
        assert_eq!(error_code(raw), Some(code));
        assert_eq!(msg.verify_fingerprint(), Some(true));
        match user {
            Some(u) => assert_eq!(msg.verify_integrity(&key(u)), Some(true)),
            None => assert_eq!(msg.integrity_offset(), None),
        }
    }

    fn is_drop(action: Action, reason: DropReason) -> bool {
        action == Action::Drop(reason)
    }

    #[test]
    fn challenge_without_credentials_creates_nothing() {
        let mut n = node();
        let tid = n.tid();
        let req = n.request(client(1), method::ALLOCATE, tid, None, udp);
        let res = n.ask(client(1), &req);
        assert_error(&res, 401, None);
        let msg = parse(&res);
        assert_eq!(msg.transaction_id(), &tid);
        assert_eq!(msg.get(attr::REALM), Some(REALM.as_bytes()));
        let nonce = msg.get(attr::NONCE).expect("nonce");
        assert_eq!(nonce, n.auth.nonce(client(1).addr, n.now.unix));
        assert!(n.core.is_empty());
        assert!(n.relays.open.is_empty() && n.relays.opens_tried == 0);
        assert_eq!(n.shared.allocations(), 0);
        // Wrong password: 401 again, counted as an auth failure.
        let res = n.allocate_with(client(1), ("alice", "guess"), udp);
        assert_error(&res, 401, None);
        assert_eq!(n.shared.metrics.auth_failures.get(), 1);
        // A nonce from ten minutes ago: 438 with a fresh one.
        let req = n.request(client(1), method::ALLOCATE, tid, Some(ALICE), udp);
        n.advance(crate::turn::auth::NONCE_LIFETIME_SECS);
        let res = n.ask(client(1), &req);
        assert_error(&res, 438, None);
        let fresh = n.auth.nonce(client(1).addr, n.now.unix);
        assert_eq!(parse(&res).get(attr::NONCE), Some(&fresh[..]));
        assert!(n.core.is_empty());
    }

    #[test]
    fn challenges_are_rate_limited_per_source() {
        let mut n = node();
        let tid = n.tid();
        let req = n.request(client(1), method::ALLOCATE, tid, None, udp);
        for _ in 0..crate::turn::auth::CHALLENGE_BURST {
            assert!(matches!(n.client_sends(client(1), &req), Action::Reply(_)));
        }
        // The same address from another port is the same source.
        assert!(is_drop(
            n.client_sends(client(2), &req),
            DropReason::RateLimited
        ));
        n.now.mono_ms += 100;
        assert!(matches!(n.client_sends(client(1), &req), Action::Reply(_)));
        assert!(n.core.is_empty());
        assert_eq!(n.shared.allocations(), 0);
    }

    #[test]
    fn allocate_success() {
        let mut n = node();
        let res = n.allocate_with(client(1), ALICE, udp);
        assert_success(&res, method::ALLOCATE, ALICE);
        // Signed for alice, not for anyone else.
        assert_eq!(parse(&res).verify_integrity(&key(BOB)), Some(false));
        let [(id, bound)] = n.relays.open[..] else {
            panic!("one relay: {:?}", n.relays.open)
        };
        assert_eq!(bound.ip(), RELAY_V4);
        assert!((PORTS.first..=PORTS.last).contains(&bound.port()));
        assert_eq!(
            xor_addresses(&res, attr::XOR_RELAYED_ADDRESS),
            [SocketAddr::new(IpAddr::V4(PUBLIC_V4), bound.port())]
        );
        assert_eq!(
            xor_addresses(&res, attr::XOR_MAPPED_ADDRESS),
            [client(1).addr]
        );
        assert_eq!(lifetime_of(&res), Some(600));
        assert_eq!(parse(&res).get(attr::RESERVATION_TOKEN), None);
        assert_eq!(n.core.len(), 1);
        assert_eq!(n.shared.allocations(), 1);
        assert_eq!(n.shared.metrics.allocations.get(), 1);
        assert_eq!(n.core.by_relay[id], n.core.by_client[&client(1)]);
    }

    #[test]
    fn allocate_lifetime_is_clamped() {
        let mut n = node();
        let cases = [
            (None, 600),
            (Some(0), 600),
            (Some(1), 600),
            (Some(599), 600),
            (Some(1200), 1200),
            (Some(3600), 3600),
            (Some(3601), 3600),
            (Some(u32::MAX), 3600),
        ];
        for (i, (asked, granted)) in cases.into_iter().enumerate() {
            let res = n.allocate_with(client(i as u16), ALICE, |w| {
                udp(w);
                if let Some(l) = asked {
                    w.add_u32(attr::LIFETIME, l).expect("lifetime");
                }
            });
            assert_success(&res, method::ALLOCATE, ALICE);
            assert_eq!(lifetime_of(&res), Some(granted), "asked {asked:?}");
        }
    }

    #[test]
    fn retransmitted_allocate_is_answered_again_other_tid_is_437() {
        let mut n = node();
        let tid = n.tid();
        let req = n.request(client(1), method::ALLOCATE, tid, Some(ALICE), udp);
        let first = n.ask(client(1), &req);
        assert_success(&first, method::ALLOCATE, ALICE);
        n.advance(2);
        let again = n.ask(client(1), &req);
        assert_success(&again, method::ALLOCATE, ALICE);
        assert_eq!(parse(&again).transaction_id(), &tid);
        assert_eq!(
            xor_addresses(&again, attr::XOR_RELAYED_ADDRESS),
            xor_addresses(&first, attr::XOR_RELAYED_ADDRESS)
        );
        assert_eq!(lifetime_of(&again), Some(598));
        assert_eq!(n.relays.open.len(), 1);
        assert_eq!(n.relays.opens_tried, 1);
        assert_eq!(n.shared.allocations(), 1);
        // Another Allocate on the same 5-tuple.
        let res = n.allocate_with(client(1), ALICE, udp);
        assert_error(&res, 437, Some(ALICE));
        assert_eq!(n.relays.open.len(), 1);
        assert_eq!(n.shared.allocations(), 1);
    }

    #[test]
    fn requested_transport_442_and_400() {
        let mut n = node();
        let res = n.allocate_with(client(1), ALICE, |w| {
            w.add_u32(attr::REQUESTED_TRANSPORT, 6 << 24).expect("tcp");
        });
        assert_error(&res, 442, Some(ALICE));
        let res = n.allocate_with(client(1), ALICE, |_| {});
        assert_error(&res, 400, Some(ALICE));
        // A malformed REQUESTED-TRANSPORT counts as missing.
        let res = n.allocate_with(client(1), ALICE, |w| {
            w.add(attr::REQUESTED_TRANSPORT, &[17]).expect("short");
        });
        assert_error(&res, 400, Some(ALICE));
        assert!(n.core.is_empty());
        assert_eq!(n.relays.opens_tried, 0);
        assert_eq!(n.shared.allocations(), 0);
    }

    #[test]
    fn requests_without_allocation_are_437() {
        let mut n = node();
        let res = n.refresh(client(1), ALICE, None);
        assert_error(&res, 437, Some(ALICE));
        let res = n.permit(client(1), &[peer_a()]);
        assert_error(&res, 437, Some(ALICE));
        let res = n.bind(client(1), 0x4000, peer_a());
        assert_error(&res, 437, Some(ALICE));
        // Another client address (port) of the same user is another 5-tuple.
        n.allocate(client(1), None);
        let res = n.permit(client(2), &[peer_a()]);
        assert_error(&res, 437, Some(ALICE));
    }

    #[test]
    fn refresh_zero_deletes_and_closes_the_relay() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), None);
        n.permit(client(1), &[peer_a()]);
        n.bind(client(1), 0x4000, peer_b());
        let res = n.refresh(client(1), ALICE, Some(0));
        assert_success(&res, method::REFRESH, ALICE);
        assert_eq!(lifetime_of(&res), Some(0));
        assert_eq!(n.relays.closed, [id]);
        assert!(n.relays.open.is_empty());
        assert!(n.core.is_empty());
        assert_eq!(n.shared.allocations(), 0);
        let m = &n.shared.metrics;
        assert_eq!(
            (m.allocations.get(), m.permissions.get(), m.channels.get()),
            (0, 0, 0)
        );
        // Nothing is relayed any more, either way.
        assert!(is_drop(
            n.peer_sends(id, peer_a(), b"x"),
            DropReason::NoRoute
        ));
        let cd = channel_data(0x4000, b"hello");
        assert!(is_drop(n.client_sends(client(1), &cd), DropReason::NoRoute));
        // A second delete (a retransmission) finds no allocation.
        let res = n.refresh(client(1), ALICE, Some(0));
        assert_error(&res, 437, Some(ALICE));
        assert_eq!(n.relays.closed, [id]);
    }

    #[test]
    fn refresh_extends_and_clamps() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), None);
        n.advance(500);
        let res = n.refresh(client(1), ALICE, Some(1800));
        assert_success(&res, method::REFRESH, ALICE);
        assert_eq!(lifetime_of(&res), Some(1800));
        // Past the first lifetime of 600 s: still there.
        n.advance(1799);
        n.sweep();
        assert_eq!(n.core.len(), 1);
        assert!(n.relays.closed.is_empty());
        // Clamped as the Allocate's was.
        let res = n.refresh(client(1), ALICE, None);
        assert_eq!(lifetime_of(&res), Some(600));
        let res = n.refresh(client(1), ALICE, Some(100_000));
        assert_eq!(lifetime_of(&res), Some(3600));
        let res = n.refresh(client(1), ALICE, Some(10));
        assert_eq!(lifetime_of(&res), Some(600));
        n.advance(599);
        n.sweep();
        assert_eq!(n.core.len(), 1);
        n.advance(1);
        n.sweep();
        assert!(n.core.is_empty());
        assert_eq!(n.relays.closed, [id]);
        // Refreshing a family the allocation lacks: 443.
        let mut n = node();
        n.allocate(client(1), None);
        let res = n.call(client(1), method::REFRESH, ALICE, |w| {
            w.add(attr::REQUESTED_ADDRESS_FAMILY, &[FAMILY_V6, 0, 0, 0])
                .expect("family");
        });
        assert_error(&res, 443, Some(ALICE));
    }

    #[test]
    fn expiry_by_sweep_closes_the_relay_and_releases_the_quota() {
        let mut n = node_with(Setup {
            limits: Limits {
                max_allocations_per_user: 1,
                ..Limits::default()
            },
            ..Setup::default()
        });
        let (id, _) = n.allocate(client(1), None);
        let res = n.allocate_with(client(2), ALICE, udp);
        assert_error(&res, 486, Some(ALICE));
        n.advance(590);
        assert_success(
            &n.permit(client(1), &[peer_a()]),
            method::CREATE_PERMISSION,
            ALICE,
        );
        assert!(matches!(
            n.peer_sends(id, peer_a(), b"x"),
            Action::ToClient { .. }
        ));
        n.advance(10);
        // Expired, not yet swept: nothing is relayed already.
        assert!(is_drop(
            n.peer_sends(id, peer_a(), b"x"),
            DropReason::NoRoute
        ));
        assert_eq!(n.core.len(), 1);
        n.sweep();
        assert!(n.core.is_empty());
        assert_eq!(n.relays.closed, [id]);
        assert!(n.relays.open.is_empty());
        assert_eq!(n.shared.allocations(), 0);
        assert_eq!(n.shared.metrics.allocations.get(), 0);
        assert_eq!(n.shared.metrics.permissions.get(), 0);
        let res = n.allocate_with(client(2), ALICE, udp);
        assert_success(&res, method::ALLOCATE, ALICE);
        // The freed slot is reused, and the old relay id leads nowhere.
        assert_eq!(n.core.allocations.len(), 1);
        assert!(is_drop(
            n.peer_sends(id, peer_a(), b"x"),
            DropReason::NoRoute
        ));
        // A second sweep closes nothing twice.
        n.sweep();
        assert_eq!(n.relays.closed, [id]);
    }

    #[test]
    fn create_permission_install_refresh_expire() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), Some(3600));
        assert!(is_drop(
            n.peer_sends(id, peer_a(), b"x"),
            DropReason::NoRoute
        ));
        let res = n.permit(client(1), &[peer_a()]);
        assert_success(&res, method::CREATE_PERMISSION, ALICE);
        assert_eq!(n.shared.metrics.permissions.get(), 1);
        // Per IP address: any port of the peer.
        let other_port = SocketAddr::new(peer_a().ip(), 1);
        for p in [peer_a(), other_port] {
            assert!(matches!(n.peer_sends(id, p, b"x"), Action::ToClient { .. }));
        }
        assert!(is_drop(
            n.peer_sends(id, peer_b(), b"x"),
            DropReason::NoRoute
        ));
        // Refreshed at 200 s: lives until 500 s.
        n.advance(200);
        assert_success(
            &n.permit(client(1), &[peer_a()]),
            method::CREATE_PERMISSION,
            ALICE,
        );
        assert_eq!(n.shared.metrics.permissions.get(), 1);
        n.advance(299);
        assert!(matches!(
            n.peer_sends(id, peer_a(), b"x"),
            Action::ToClient { .. }
        ));
        n.advance(1);
        assert!(is_drop(
            n.peer_sends(id, peer_a(), b"x"),
            DropReason::NoRoute
        ));
        let send = send_indication(Some(peer_a()), Some(b"x"));
        assert!(is_drop(
            n.client_sends(client(1), &send),
            DropReason::NoRoute
        ));
        n.sweep();
        assert_eq!(n.shared.metrics.permissions.get(), 0);
        assert_eq!(n.core.len(), 1);
        // Several peers in one request; none is an error.
        let res = n.permit(client(1), &[peer_a(), peer_b()]);
        assert_success(&res, method::CREATE_PERMISSION, ALICE);
        assert_eq!(n.shared.metrics.permissions.get(), 2);
        let res = n.permit(client(1), &[]);
        assert_error(&res, 400, Some(ALICE));
    }

    #[test]
    fn permission_limit() {
        let mut n = node_with(Setup {
            limits: Limits {
                max_permissions: 2,
                ..Limits::default()
            },
            ..Setup::default()
        });
        n.allocate(client(1), None);
        assert_success(
            &n.permit(client(1), &[peer_a(), peer_b()]),
            method::CREATE_PERMISSION,
            ALICE,
        );
        // Refreshing is no new permission.
        assert_success(
            &n.permit(client(1), &[peer_a()]),
            method::CREATE_PERMISSION,
            ALICE,
        );
        let res = n.permit(client(1), &[addr("93.184.216.36:1")]);
        assert_error(&res, 508, Some(ALICE));
    }

    #[test]
    fn channel_bind_rules() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), Some(3600));
        for number in [0x0000, 0x3FFF, 0x8000, 0xFFFF] {
            let res = n.bind(client(1), number, peer_a());
            assert_error(&res, 400, Some(ALICE));
        }
        assert_success(
            &n.bind(client(1), 0x4000, peer_a()),
            method::CHANNEL_BIND,
            ALICE,
        );
        // RFC 5766's upper end is accepted.
        assert_success(
            &n.bind(client(1), 0x7FFF, peer_b()),
            method::CHANNEL_BIND,
            ALICE,
        );
        assert_eq!(n.shared.metrics.channels.get(), 2);
        // The bind installed the permissions too.
        assert_eq!(n.shared.metrics.permissions.get(), 2);
        // A number bound to another peer, a peer bound to another number.
        assert_error(&n.bind(client(1), 0x4000, peer_b()), 400, Some(ALICE));
        assert_error(&n.bind(client(1), 0x4001, peer_a()), 400, Some(ALICE));
        // Same peer, same number: a refresh, no new channel.
        assert_success(
            &n.bind(client(1), 0x4000, peer_a()),
            method::CHANNEL_BIND,
            ALICE,
        );
        assert_eq!(n.shared.metrics.channels.get(), 2);
        // Missing attributes.
        let res = n.call(client(1), method::CHANNEL_BIND, ALICE, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer_a())
                .expect("peer")
        });
        assert_error(&res, 400, Some(ALICE));
        let res = n.call(client(1), method::CHANNEL_BIND, ALICE, |w| {
            channel_number(w, 0x4002)
        });
        assert_error(&res, 400, Some(ALICE));
        // Refreshed at 550 s, the channel outlives its first 600 s.
        n.advance(550);
        n.bind(client(1), 0x4000, peer_a());
        n.advance(100);
        let cd = channel_data(0x4000, b"ping");
        assert!(matches!(
            n.client_sends(client(1), &cd),
            Action::ToPeer { .. }
        ));
        assert!(matches!(
            n.peer_sends(id, peer_a(), b"pong"),
            Action::ToClient { len: 8, .. }
        ));
        // 0x7FFF, not refreshed, is gone (its permission too).
        let cd = channel_data(0x7FFF, b"ping");
        assert!(is_drop(n.client_sends(client(1), &cd), DropReason::NoRoute));
        n.sweep();
        assert_eq!(n.shared.metrics.channels.get(), 1);
    }

    #[test]
    fn channel_limit() {
        let mut n = node_with(Setup {
            limits: Limits {
                max_channels: 1,
                ..Limits::default()
            },
            ..Setup::default()
        });
        n.allocate(client(1), None);
        n.bind(client(1), 0x4000, peer_a());
        assert_error(&n.bind(client(1), 0x4001, peer_b()), 508, Some(ALICE));
    }

    #[test]
    fn channel_data_to_peer() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), Some(3600));
        n.bind(client(1), 0x4000, peer_a());
        let data = payload(160);
        let cd = channel_data(0x4000, &data);
        assert_eq!(
            n.client_sends(client(1), &cd),
            Action::ToPeer {
                relay: id,
                peer: peer_a(),
                start: 4,
                len: 160,
            }
        );
        assert_eq!(&n.buf[4..164], &data[..]);
        // Padding after the data (a stream client pads) is not sent.
        let mut padded = channel_data(0x4000, &payload(161));
        padded.extend_from_slice(&[0; 3]);
        assert!(matches!(
            n.client_sends(client(1), &padded),
            Action::ToPeer {
                start: 4,
                len: 161,
                ..
            }
        ));
        // Empty data is relayed as an empty datagram.
        let empty = channel_data(0x4000, &[]);
        assert!(matches!(
            n.client_sends(client(1), &empty),
            Action::ToPeer { len: 0, .. }
        ));
        // A length beyond what arrived, or a header cut short.
        let mut short = channel_data(0x4000, &data);
        short.truncate(100);
        assert!(is_drop(
            n.client_sends(client(1), &short),
            DropReason::Malformed
        ));
        for cut in 1..4 {
            assert!(is_drop(
                n.client_sends(client(1), &cd[..cut]),
                DropReason::Malformed
            ));
        }
        // No such channel; no allocation for that client.
        let other = channel_data(0x4001, &data);
        assert!(is_drop(
            n.client_sends(client(1), &other),
            DropReason::NoRoute
        ));
        assert!(is_drop(n.client_sends(client(2), &cd), DropReason::NoRoute));
    }

    #[test]
    fn channel_data_on_an_expired_channel_is_dropped() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), Some(3600));
        n.bind(client(1), 0x4000, peer_a());
        // Keep the permission alive past the channel's 600 s.
        n.advance(250);
        n.permit(client(1), &[peer_a()]);
        n.advance(250);
        n.permit(client(1), &[peer_a()]);
        n.advance(99);
        let cd = channel_data(0x4000, b"ping");
        assert!(matches!(
            n.client_sends(client(1), &cd),
            Action::ToPeer { .. }
        ));
        n.advance(1);
        assert!(is_drop(n.client_sends(client(1), &cd), DropReason::NoRoute));
        // From the peer it now comes as a Data indication.
        let Action::ToClient { start, len, .. } = n.peer_sends(id, peer_a(), b"pong") else {
            panic!("relayed to the client")
        };
        assert_eq!(parse(&n.buf[start..start + len]).method(), method::DATA);
        // A channel whose permission lapsed carries nothing either.
        let mut n = node();
        n.allocate(client(1), Some(3600));
        n.bind(client(1), 0x4000, peer_a());
        n.advance(300);
        assert!(is_drop(n.client_sends(client(1), &cd), DropReason::NoRoute));
    }

    #[test]
    fn send_indication_to_peer() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), None);
        let data = payload(100);
        let send = send_indication(Some(peer_a()), Some(&data));
        // No permission yet.
        assert!(is_drop(
            n.client_sends(client(1), &send),
            DropReason::NoRoute
        ));
        n.permit(client(1), &[peer_a()]);
        let Action::ToPeer {
            relay,
            peer,
            start,
            len,
        } = n.client_sends(client(1), &send)
        else {
            panic!("relayed to the peer")
        };
        assert_eq!((relay, peer, len), (id, peer_a(), 100));
        assert_eq!(start, HEADER_LEN + 4 + 8 + 4);
        assert_eq!(&n.buf[start..start + len], &data[..]);
        // Incomplete indications.
        for bad in [
            send_indication(None, Some(&data)),
            send_indication(Some(peer_a()), None),
        ] {
            assert!(is_drop(
                n.client_sends(client(1), &bad),
                DropReason::Malformed
            ));
        }
        // A peer without permission, a refused peer, a client without allocation.
        for peer in [peer_b(), addr("10.0.0.1:5000")] {
            let send = send_indication(Some(peer), Some(&data));
            assert!(is_drop(
                n.client_sends(client(1), &send),
                DropReason::NoRoute
            ));
        }
        assert!(is_drop(
            n.client_sends(client(2), &send),
            DropReason::NoRoute
        ));
        // No relay of the peer's family.
        let send = send_indication(Some(peer_v6()), Some(&data));
        assert!(is_drop(
            n.client_sends(client(1), &send),
            DropReason::NoRoute
        ));
    }

    #[test]
    fn peer_data_gets_a_channel_data_header() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), None);
        n.bind(client(1), 0x4000, peer_a());
        let data = payload(160);
        assert_eq!(
            n.peer_sends(id, peer_a(), &data),
            Action::ToClient {
                client: client(1),
                start: HEADROOM - 4,
                len: 164,
            }
        );
        assert_eq!(&n.buf[HEADROOM - 4..HEADROOM], &[0x40, 0x00, 0, 160]);
        assert_eq!(&n.buf[HEADROOM..HEADROOM + 160], &data[..]);
        // UDP: no padding.
        assert!(matches!(
            n.peer_sends(id, peer_a(), &payload(161)),
            Action::ToClient { len: 165, .. }
        ));
        // No headroom at all: dropped, not panicking.
        let action = n.core.handle_peer(n.now, id, peer_a(), &mut n.buf, 2, 100);
        assert!(is_drop(action, DropReason::Malformed));
    }

    #[test]
    fn peer_data_to_a_stream_client_is_padded() {
        let mut n = node_with(Setup {
            stream: true,
            ..Setup::default()
        });
        let (id, _) = n.allocate(client(1), None);
        n.bind(client(1), 0x4000, peer_a());
        for (len, framed) in [(160, 164), (161, 168), (162, 168), (163, 168), (0, 4)] {
            let data = payload(len);
            assert_eq!(
                n.peer_sends(id, peer_a(), &data),
                Action::ToClient {
                    client: client(1),
                    start: HEADROOM - 4,
                    len: framed,
                },
                "{len} bytes"
            );
            let [hi, lo] = (len as u16).to_be_bytes();
            assert_eq!(&n.buf[HEADROOM - 4..HEADROOM], &[0x40, 0x00, hi, lo]);
            assert_eq!(&n.buf[HEADROOM..HEADROOM + len], &data[..]);
            // The padding is zeroed (the slot was full of 0xEE).
            assert!(
                n.buf[HEADROOM + len..HEADROOM - 4 + framed]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
        // Padding that does not fit the slot: dropped.
        let end = n.buf.len();
        let action = n
            .core
            .handle_peer(n.now, id, peer_a(), &mut n.buf, end - 5, 5);
        assert!(is_drop(action, DropReason::Malformed));
    }

    #[test]
    fn peer_data_without_channel_is_a_data_indication() {
        let mut n = node_with(Setup {
            v6: true,
            ..Setup::default()
        });
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(attr::ADDITIONAL_ADDRESS_FAMILY, &[FAMILY_V6, 0, 0, 0])
                .expect("family");
        });
        assert_success(&res, method::ALLOCATE, ALICE);
        n.permit(client(1), &[peer_a(), peer_v6()]);
        let relayed = xor_addresses(&res, attr::XOR_RELAYED_ADDRESS);
        let id4 = n.relays.id_of(SocketAddr::new(RELAY_V4, relayed[0].port()));
        let id6 = n.relays.id_of(SocketAddr::new(RELAY_V6, relayed[1].port()));
        for (id, peer, addr_len) in [(id4, peer_a(), 8), (id6, peer_v6(), 20)] {
            for len in [160, 161, 1] {
                let data = payload(len);
                let Action::ToClient {
                    client: to,
                    start,
                    len: total,
                } = n.peer_sends(id, peer, &data)
                else {
                    panic!("relayed to the client")
                };
                assert_eq!(to, client(1));
                let header = HEADER_LEN + 4 + addr_len + 4;
                assert_eq!(start, HEADROOM - header);
                assert_eq!(total, header + len.div_ceil(4) * 4);
                let msg = parse(&n.buf[start..start + total]);
                assert_eq!(
                    (msg.method(), msg.class()),
                    (method::DATA, Class::Indication)
                );
                assert_eq!(msg.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(peer)));
                assert_eq!(msg.get(attr::DATA), Some(&data[..]));
            }
        }
        // Not enough headroom for the header.
        let action = n
            .core
            .handle_peer(n.now, id6, peer_v6(), &mut n.buf, 40, 10);
        assert!(is_drop(action, DropReason::Malformed));
    }

    #[test]
    fn peer_data_without_permission_is_dropped() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), None);
        n.permit(client(1), &[peer_a()]);
        assert!(is_drop(
            n.peer_sends(id, peer_b(), b"x"),
            DropReason::NoRoute
        ));
        // A relay id that is no allocation's.
        assert!(is_drop(
            n.peer_sends(id + 1, peer_a(), b"x"),
            DropReason::NoRoute
        ));
        assert!(is_drop(
            n.peer_sends(usize::MAX, peer_a(), b"x"),
            DropReason::NoRoute
        ));
    }

    #[test]
    fn replaced_settings_apply_to_running_cores_and_keep_what_is_held() {
        let mut n = node();
        n.allocate(client(1), None);
        let ok = n.permit(client(1), &[peer_a()]);
        assert_eq!(Message::parse(&ok).expect("answer").class(), Class::Success);
        // SIGHUP: peer_b's network denied, one allocation per user.
        let denied: crate::config::Cidr = "93.184.216.35/32".parse().expect("cidr");
        let limits = Limits {
            max_allocations_per_user: 1,
            ..Limits::default()
        };
        let policy = PeerPolicy::new(false, &[], &[denied], &[own()]);
        n.shared.replace_settings(Settings { limits, policy });
        assert_error(&n.permit(client(1), &[peer_b()]), 403, Some(ALICE));
        // What was allowed before stays allowed; the allocation held stays.
        let again = n.permit(client(1), &[peer_a()]);
        assert_eq!(
            Message::parse(&again).expect("answer").class(),
            Class::Success
        );
        let res = n.allocate_with(client(2), ALICE, udp);
        assert_error(&res, 486, Some(ALICE));
        assert_eq!(n.core.len(), 1);
    }

    #[test]
    fn refused_peers_get_403() {
        // No own address: nothing is let in as the node's own.
        let mut n = node_with(Setup {
            v6: true,
            own: Vec::new(),
            ..Setup::default()
        });
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(attr::ADDITIONAL_ADDRESS_FAMILY, &[FAMILY_V6, 0, 0, 0])
                .expect("family");
        });
        assert_success(&res, method::ALLOCATE, ALICE);
        let refused = [
            "127.0.0.1:5000",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
            "0.0.0.0:5000",
            "10.1.2.3:5000",
            "169.254.169.254:80",
            "192.168.0.1:5000",
            "[fe80::1]:5000",
            "100.64.0.1:5000",
            "[fc00::1]:5000",
            "[64:ff9b::a01:203]:5000",
            "224.0.0.1:5000",
        ];
        for (i, peer) in refused.iter().enumerate() {
            let peer = addr(peer);
            assert_error(&n.permit(client(1), &[peer]), 403, Some(ALICE));
            assert_error(
                &n.bind(client(1), 0x4000 + i as u16, peer),
                403,
                Some(ALICE),
            );
            let send = send_indication(Some(peer), Some(b"x"));
            assert!(is_drop(
                n.client_sends(client(1), &send),
                DropReason::NoRoute
            ));
        }
        assert_eq!(
            n.shared.metrics.peers_refused.get(),
            2 * refused.len() as u64
        );
        assert_eq!(n.shared.metrics.permissions.get(), 0);
        // All or nothing: the allowed peer beside a refused one is not installed.
        let res = n.permit(client(1), &[peer_a(), addr("10.1.2.3:1")]);
        assert_error(&res, 403, Some(ALICE));
        assert_eq!(n.shared.metrics.permissions.get(), 0);
        let id = n.relays.open[0].0;
        assert!(is_drop(
            n.peer_sends(id, peer_a(), b"x"),
            DropReason::NoRoute
        ));
        // An IPv6 peer on an IPv4-only allocation: 443.
        let mut n = node();
        n.allocate(client(1), None);
        assert_error(&n.permit(client(1), &[peer_v6()]), 443, Some(ALICE));
    }

    #[test]
    fn own_address_only_on_its_exact_port() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), None);
        let other_port = SocketAddr::new(own().ip(), own().port() + 1);
        // A permission for the IP is installed (permissions have no port)...
        assert_success(
            &n.permit(client(1), &[other_port]),
            method::CREATE_PERMISSION,
            ALICE,
        );
        // ...but carries data to and from the own address and port only.
        let send = send_indication(Some(own()), Some(b"x"));
        assert!(matches!(
            n.client_sends(client(1), &send),
            Action::ToPeer { peer, .. } if peer == own()
        ));
        let send = send_indication(Some(other_port), Some(b"x"));
        assert!(is_drop(
            n.client_sends(client(1), &send),
            DropReason::NoRoute
        ));
        assert!(matches!(
            n.peer_sends(id, own(), b"x"),
            Action::ToClient { .. }
        ));
        assert!(is_drop(
            n.peer_sends(id, other_port, b"x"),
            DropReason::NoRoute
        ));
        // A channel to the own address and port, none to another port.
        assert_success(
            &n.bind(client(1), 0x4000, own()),
            method::CHANNEL_BIND,
            ALICE,
        );
        assert_error(&n.bind(client(1), 0x4001, other_port), 403, Some(ALICE));
        let cd = channel_data(0x4000, b"x");
        assert!(matches!(
            n.client_sends(client(1), &cd),
            Action::ToPeer { peer, .. } if peer == own()
        ));
        // Another loopback address is no own address.
        assert_error(
            &n.permit(client(1), &[addr("127.0.0.2:3478")]),
            403,
            Some(ALICE),
        );
    }

    #[test]
    fn even_port() {
        let mut n = node();
        for i in 0..20 {
            let res = n.allocate_with(client(i), ALICE, |w| {
                udp(w);
                w.add(attr::EVEN_PORT, &[0x00]).expect("even port");
            });
            assert_success(&res, method::ALLOCATE, ALICE);
            let relayed = xor_addresses(&res, attr::XOR_RELAYED_ADDRESS)[0];
            assert_eq!(relayed.port() % 2, 0, "{relayed}");
            assert_eq!(parse(&res).get(attr::RESERVATION_TOKEN), None);
        }
        assert!(n.relays.reserved.is_empty());
    }

    /// A port held for EVEN-PORT's R bit counts against its user's and its address's
    /// quotas until it is taken or expires; all of one address's allocations count
    /// together, whoever the user.
    #[test]
    fn reservations_and_addresses_count_against_the_quotas() {
        let mut n = node_with(Setup {
            limits: Limits {
                max_allocations_per_user: 2,
                max_allocations_per_ip: 3,
                ..Limits::default()
            },
            ..Setup::default()
        });
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(attr::EVEN_PORT, &[0x80]).expect("even port");
        });
        assert_success(&res, method::ALLOCATE, ALICE);
        assert_eq!(n.shared.allocations(), 1, "a reservation is no allocation");
        let res = n.allocate_with(client(2), ALICE, udp);
        assert_error(&res, 486, Some(ALICE));
        // Bob at the same address: one more fits (allocation, reservation, this).
        assert_success(&n.allocate_with(client(3), BOB, udp), method::ALLOCATE, BOB);
        assert_error(&n.allocate_with(client(4), BOB, udp), 486, Some(BOB));
        // The reservation expires: its places are free again.
        n.advance(RESERVATION_MS / 1000 + 1);
        n.sweep();
        assert_success(
            &n.allocate_with(client(2), ALICE, udp),
            method::ALLOCATE,
            ALICE,
        );
    }

    /// Unauthenticated answers amplify little: a bare request header gets no answer at
    /// all, and the smallest one answered (an Allocate with REQUESTED-TRANSPORT, 28
    /// bytes) gets a 401 of at most 3.2 times its size.
    #[test]
    fn unauthenticated_answers_are_small() {
        let mut n = node();
        let bare = |method| {
            let mut buf = [0u8; 64];
            let w = Writer::new(&mut buf, method, Class::Request, &[3; 12]).expect("writer");
            let len = w.finish();
            buf[..len].to_vec()
        };
        for method in [method::ALLOCATE, method::REFRESH, method::CREATE_PERMISSION] {
            let request = bare(method);
            assert_eq!(request.len(), 20);
            assert!(matches!(
                n.client_sends(client(1), &request),
                Action::Drop(_)
            ));
        }
        let mut buf = [0u8; 64];
        let mut w =
            Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[4; 12]).expect("writer");
        udp(&mut w);
        let len = w.finish();
        let request = buf[..len].to_vec();
        assert_eq!(request.len(), 28);
        let answer = n.ask(client(1), &request);
        assert_eq!(error_code(&answer), Some(401));
        let factor = answer.len() as f64 / request.len() as f64;
        assert!(factor <= 3.2, "401 of {} bytes: {factor:.2}x", answer.len());
    }

    /// Transaction ids of Data indications (and so reservation tokens and relay ports,
    /// from the same generator) cannot be worked out from one seen on the wire: with
    /// xorshift64*, one output gave the state (the multiplier is invertible) and so
    /// every later one.
    #[test]
    fn one_data_indication_does_not_predict_the_next() {
        const K: u64 = 0x2545_F491_4F6C_DD1D;
        // The inverse of K modulo 2^64 (Newton's iteration).
        let mut inv: u64 = K;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(K.wrapping_mul(inv)));
        }
        let xorshift = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        let mut n = node();
        let (relay, _) = n.allocate(client(1), None);
        n.permit(client(1), &[peer_a()]);
        let mut tid_head = || {
            let Action::ToClient { start, .. } = n.peer_sends(relay, peer_a(), b"media") else {
                panic!("a Data indication")
            };
            u64::from_be_bytes(n.buf[start + 8..start + 16].try_into().expect("8 bytes"))
        };
        let first = tid_head();
        let second = tid_head();
        let state = first.wrapping_mul(inv);
        let predicted = xorshift(xorshift(state)).wrapping_mul(K);
        assert_ne!(second, predicted, "the next transaction id was predictable");
        assert_ne!(first, second);
    }

    /// Through the relay to the host's own services: ChannelBind and CreatePermission
    /// to the node's public address at port 53 are refused (403), while its media port
    /// and a relay port (another client of this node) are let through.
    #[test]
    fn the_hosts_own_services_are_no_peers() {
        let host: IpAddr = "93.184.216.99".parse().expect("ip");
        let mut n = node_with(Setup {
            own: vec![SocketAddr::new(host, 3478)],
            host: vec![host],
            ..Setup::default()
        });
        let (relay, _) = n.allocate(client(1), None);
        let dns = SocketAddr::new(host, 53);
        assert_error(&n.bind(client(1), 0x4000, dns), 403, Some(ALICE));
        assert_success(
            &n.bind(client(1), 0x4001, SocketAddr::new(host, 3478)),
            method::CHANNEL_BIND,
            ALICE,
        );
        assert_success(
            &n.bind(client(1), 0x4002, SocketAddr::new(host, PORTS.first + 10)),
            method::CHANNEL_BIND,
            ALICE,
        );
        // A permission for the address carries nothing from port 53, only from the
        // media port.
        assert_success(
            &n.permit(client(1), &[dns]),
            method::CREATE_PERMISSION,
            ALICE,
        );
        assert!(matches!(n.peer_sends(relay, dns, b"x"), Action::Drop(_)));
        let media = SocketAddr::new(host, 3478);
        assert!(matches!(
            n.peer_sends(relay, media, b"x"),
            Action::ToClient { .. }
        ));
    }

    #[test]
    fn even_port_with_reservation() {
        let mut n = node();
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(attr::EVEN_PORT, &[0x80]).expect("even port");
        });
        assert_success(&res, method::ALLOCATE, ALICE);
        let relayed = xor_addresses(&res, attr::XOR_RELAYED_ADDRESS)[0];
        let port = relayed.port();
        assert_eq!(port % 2, 0);
        let token: [u8; 8] = parse(&res)
            .get(attr::RESERVATION_TOKEN)
            .expect("token")
            .try_into()
            .expect("8 bytes");
        assert_eq!(n.relays.reserved.len(), 1);
        assert_eq!(n.relays.reserved[0], SocketAddr::new(RELAY_V4, port + 1));
        // The token and EVEN-PORT together: 400.
        let res = n.allocate_with(client(2), ALICE, |w| {
            udp(w);
            w.add(attr::EVEN_PORT, &[0x00]).expect("even port");
            w.add(attr::RESERVATION_TOKEN, &token).expect("token");
        });
        assert_error(&res, 400, Some(ALICE));
        // The token alone gets the odd port above.
        let res = n.allocate_with(client(2), BOB, |w| {
            udp(w);
            w.add(attr::RESERVATION_TOKEN, &token).expect("token");
        });
        assert_success(&res, method::ALLOCATE, BOB);
        assert_eq!(
            xor_addresses(&res, attr::XOR_RELAYED_ADDRESS),
            [SocketAddr::new(IpAddr::V4(PUBLIC_V4), port + 1)]
        );
        let [adopted] = n.relays.adopted[..] else {
            panic!("one adopted socket")
        };
        assert_eq!(n.relays.id_of(SocketAddr::new(RELAY_V4, port + 1)), adopted);
        assert!(n.relays.reserved.is_empty());
        assert_eq!(n.shared.allocations(), 2);
        // Used once only; unknown tokens fail alike.
        for t in [token, [9; 8]] {
            let res = n.allocate_with(client(3), ALICE, |w| {
                udp(w);
                w.add(attr::RESERVATION_TOKEN, &t).expect("token");
            });
            assert_error(&res, 400, Some(ALICE));
        }
        // Deleting the second allocation closes the adopted socket.
        n.refresh(client(2), BOB, Some(0));
        assert_eq!(n.relays.closed, [adopted]);
        // A reservation lapses after 30 s.
        let res = n.allocate_with(client(4), ALICE, |w| {
            udp(w);
            w.add(attr::EVEN_PORT, &[0x80]).expect("even port");
        });
        let token = parse(&res)
            .get(attr::RESERVATION_TOKEN)
            .expect("token")
            .to_vec();
        n.advance(30);
        n.sweep();
        let res = n.allocate_with(client(5), ALICE, |w| {
            udp(w);
            w.add(attr::RESERVATION_TOKEN, &token).expect("token");
        });
        assert_error(&res, 400, Some(ALICE));
        assert!(n.shared.reservations.lock().expect("lock").is_empty());
    }

    #[test]
    fn dual_allocation() {
        let mut n = node_with(Setup {
            v6: true,
            ..Setup::default()
        });
        for (from, family_attr) in [
            (client(10), attr::ADDITIONAL_ADDRESS_FAMILY),
            (client(11), ADDITIONAL_ADDRESS_FAMILY_DRAFT),
        ] {
            let res = n.allocate_with(from, ALICE, |w| {
                udp(w);
                w.add(family_attr, &[FAMILY_V6, 0, 0, 0]).expect("family");
            });
            assert_success(&res, method::ALLOCATE, ALICE);
            let relayed = xor_addresses(&res, attr::XOR_RELAYED_ADDRESS);
            let [v4, v6] = relayed[..] else {
                panic!("two relayed addresses: {relayed:?}")
            };
            assert_eq!(v4.ip(), IpAddr::V4(PUBLIC_V4));
            assert_eq!(v6.ip(), IpAddr::V6(PUBLIC_V6));
            n.relays.id_of(SocketAddr::new(RELAY_V4, v4.port()));
            n.relays.id_of(SocketAddr::new(RELAY_V6, v6.port()));
            assert_eq!(parse(&res).get(attr::ADDRESS_ERROR_CODE), None);
            // Deleting it closes both.
            let closed = n.relays.closed.len();
            n.refresh(from, ALICE, Some(0));
            assert_eq!(n.relays.closed.len(), closed + 2);
        }
        assert!(n.relays.open.is_empty());
        // IPv6 alone.
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(attr::REQUESTED_ADDRESS_FAMILY, &[FAMILY_V6, 0, 0, 0])
                .expect("family");
        });
        assert_success(&res, method::ALLOCATE, ALICE);
        let relayed = xor_addresses(&res, attr::XOR_RELAYED_ADDRESS);
        assert!(relayed.len() == 1 && relayed[0].is_ipv6(), "{relayed:?}");
        // Both family attributes, or an additional family that is IPv4: 400.
        for (typ, family) in [
            (attr::REQUESTED_ADDRESS_FAMILY, FAMILY_V4),
            (attr::REQUESTED_ADDRESS_FAMILY, FAMILY_V6),
        ] {
            let res = n.allocate_with(client(2), ALICE, |w| {
                udp(w);
                w.add(typ, &[family, 0, 0, 0]).expect("family");
                w.add(attr::ADDITIONAL_ADDRESS_FAMILY, &[FAMILY_V6, 0, 0, 0])
                    .expect("family");
            });
            assert_error(&res, 400, Some(ALICE));
        }
        let res = n.allocate_with(client(2), ALICE, |w| {
            udp(w);
            w.add(attr::ADDITIONAL_ADDRESS_FAMILY, &[FAMILY_V4, 0, 0, 0])
                .expect("family");
        });
        assert_error(&res, 400, Some(ALICE));
    }

    #[test]
    fn dual_allocation_without_ipv6_relay() {
        let mut n = node();
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(attr::ADDITIONAL_ADDRESS_FAMILY, &[FAMILY_V6, 0, 0, 0])
                .expect("family");
        });
        assert_success(&res, method::ALLOCATE, ALICE);
        let relayed = xor_addresses(&res, attr::XOR_RELAYED_ADDRESS);
        assert!(relayed.len() == 1 && relayed[0].is_ipv4(), "{relayed:?}");
        let error = parse(&res)
            .get(attr::ADDRESS_ERROR_CODE)
            .expect("address error");
        assert_eq!(&error[..4], &[FAMILY_V6, 0, 4, 40]);
        assert_eq!(&error[4..], FAMILY_NOT_SUPPORTED.1.as_bytes());
        assert_eq!(n.relays.open.len(), 1);
        // IPv6 alone is refused outright.
        let res = n.allocate_with(client(2), ALICE, |w| {
            udp(w);
            w.add(attr::REQUESTED_ADDRESS_FAMILY, &[FAMILY_V6, 0, 0, 0])
                .expect("family");
        });
        assert_error(&res, 440, Some(ALICE));
        // An unknown family too; a malformed one is 400.
        let res = n.allocate_with(client(2), ALICE, |w| {
            udp(w);
            w.add(attr::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0])
                .expect("family");
        });
        assert_error(&res, 440, Some(ALICE));
        let res = n.allocate_with(client(2), ALICE, |w| {
            udp(w);
            w.add(attr::REQUESTED_ADDRESS_FAMILY, &[1]).expect("family");
        });
        assert_error(&res, 400, Some(ALICE));
        assert_eq!(n.shared.allocations(), 1);
    }

    #[test]
    fn quota_486() {
        let mut n = node_with(Setup {
            limits: Limits {
                max_allocations_per_user: 2,
                max_allocations: 3,
                ..Limits::default()
            },
            ..Setup::default()
        });
        n.allocate(client(1), None);
        n.allocate(client(2), None);
        assert_error(&n.allocate_with(client(3), ALICE, udp), 486, Some(ALICE));
        // Another user has a quota of its own.
        assert_success(&n.allocate_with(client(4), BOB, udp), method::ALLOCATE, BOB);
        // The node-wide limit.
        assert_error(&n.allocate_with(client(5), BOB, udp), 486, Some(BOB));
        assert_eq!(n.shared.metrics.quota_refused.get(), 2);
        assert_eq!(n.relays.open.len(), 3);
        assert_eq!(n.relays.opens_tried, 3);
        // A deletion makes room.
        n.refresh(client(1), ALICE, Some(0));
        assert_success(
            &n.allocate_with(client(3), ALICE, udp),
            method::ALLOCATE,
            ALICE,
        );
        assert_eq!(n.shared.allocations(), 3);
    }

    #[test]
    fn no_free_port_is_508() {
        let mut n = node();
        n.relays.busy = true;
        let res = n.allocate_with(client(1), ALICE, udp);
        assert_error(&res, 508, Some(ALICE));
        assert_eq!(n.relays.opens_tried, PORT_ATTEMPTS);
        assert!(n.core.is_empty());
        // The quota taken for it was given back.
        assert_eq!(n.shared.allocations(), 0);
        // EVEN-PORT with R needs two ports: 508 as well.
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(attr::EVEN_PORT, &[0x80]).expect("even port");
        });
        assert_error(&res, 508, Some(ALICE));
        assert_eq!(n.shared.allocations(), 0);
        n.relays.busy = false;
        assert_success(
            &n.allocate_with(client(1), ALICE, udp),
            method::ALLOCATE,
            ALICE,
        );
    }

    #[test]
    fn unknown_comprehension_required_attribute_is_420() {
        let mut n = node();
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(0x7777, b"????").expect("unknown");
            w.add(0x0031, b"").expect("unknown");
        });
        assert_error(&res, 420, Some(ALICE));
        assert_eq!(
            parse(&res).get(attr::UNKNOWN_ATTRIBUTES),
            Some(&[0x77, 0x77, 0x00, 0x31][..])
        );
        assert!(n.core.is_empty());
        // Not authenticated: the challenge comes first (rate-limited, no reflection).
        let tid = n.tid();
        let req = n.request(client(1), method::ALLOCATE, tid, None, |w| {
            udp(w);
            w.add(0x7777, b"????").expect("unknown");
        });
        assert_error(&n.ask(client(1), &req), 401, None);
        // A comprehension-optional one is ignored.
        let res = n.allocate_with(client(1), ALICE, |w| {
            udp(w);
            w.add(0xC777, b"????").expect("optional");
        });
        assert_success(&res, method::ALLOCATE, ALICE);
    }

    #[test]
    fn refresh_with_another_users_credentials_is_441() {
        let mut n = node();
        let (id, _) = n.allocate(client(1), None);
        for method in [method::REFRESH, method::CREATE_PERMISSION] {
            let res = n.call(client(1), method, BOB, |w| {
                w.add_u32(attr::LIFETIME, 0).expect("lifetime");
                w.add_xor_address(attr::XOR_PEER_ADDRESS, peer_a())
                    .expect("peer");
            });
            assert_error(&res, 441, Some(BOB));
        }
        assert_eq!(n.core.len(), 1);
        assert!(n.relays.closed.is_empty());
        assert!(is_drop(
            n.peer_sends(id, peer_a(), b"x"),
            DropReason::NoRoute
        ));
    }

    #[test]
    fn bandwidth_cap() {
        let mut n = node_with(Setup {
            limits: Limits {
                bandwidth: 1000,
                ..Limits::default()
            },
            ..Setup::default()
        });
        let (id, _) = n.allocate(client(1), None);
        n.bind(client(1), 0x4000, peer_a());
        let cd = channel_data(0x4000, &payload(160));
        // 1000 bytes a second, both directions together.
        for _ in 0..3 {
            assert!(matches!(
                n.client_sends(client(1), &cd),
                Action::ToPeer { .. }
            ));
            assert!(matches!(
                n.peer_sends(id, peer_a(), &payload(160)),
                Action::ToClient { .. }
            ));
        }
        assert!(is_drop(
            n.client_sends(client(1), &cd),
            DropReason::Bandwidth
        ));
        assert!(is_drop(
            n.peer_sends(id, peer_a(), &payload(160)),
            DropReason::Bandwidth
        ));
        n.now.mono_ms += 200;
        assert!(matches!(
            n.client_sends(client(1), &cd),
            Action::ToPeer { .. }
        ));
    }

    /// xorshift64: deterministic noise.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn fill(&mut self, out: &mut [u8]) {
            for b in out {
                *b = self.next() as u8;
            }
        }
    }

    /// Checks what the core answered stays inside the slot and parses where it should.
    fn check_action(action: Action, slot: &[u8]) {
        match action {
            Action::Reply(n) => {
                assert!(n <= slot.len());
                parse(&slot[..n]);
            }
            Action::ToPeer { start, len, .. } | Action::ToClient { start, len, .. } => {
                assert!(start + len <= slot.len());
            }
            Action::Drop(_) => {}
        }
    }

    /// Attribute types that steer the core down its paths.
    const FUZZ_ATTRIBUTES: [u16; 14] = [
        attr::LIFETIME,
        attr::REQUESTED_TRANSPORT,
        attr::REQUESTED_ADDRESS_FAMILY,
        attr::ADDITIONAL_ADDRESS_FAMILY,
        ADDITIONAL_ADDRESS_FAMILY_DRAFT,
        attr::EVEN_PORT,
        attr::RESERVATION_TOKEN,
        attr::CHANNEL_NUMBER,
        attr::XOR_PEER_ADDRESS,
        attr::DATA,
        attr::DONT_FRAGMENT,
        attr::SOFTWARE,
        0x7777,
        0xC001,
    ];

    /// A STUN message of a TURN-ish method and class with a few random attributes,
    /// their values well-formed half the time, usually signed: deep enough to reach
    /// every request handler with odd input.
    fn random_message(
        n: &Node,
        rng: &mut Rng,
        from: ClientKey,
        peers: &[SocketAddr],
        tokens: &[[u8; 8]],
    ) -> Vec<u8> {
        let methods = [
            method::ALLOCATE,
            method::REFRESH,
            method::CREATE_PERMISSION,
            method::CHANNEL_BIND,
            method::SEND,
            method::DATA,
            method::BINDING,
            0x0FF,
        ];
        let method = methods[rng.below(methods.len())];
        let class = [
            Class::Request,
            Class::Request,
            Class::Indication,
            Class::Success,
        ][rng.below(4)];
        let mut tid = [0u8; 12];
        rng.fill(&mut tid);
        let mut buf = [0u8; 1024];
        let mut w = Writer::new(&mut buf, method, class, &tid).expect("writer");
        for _ in 0..rng.below(7) {
            let typ = FUZZ_ATTRIBUTES[rng.below(FUZZ_ATTRIBUTES.len())];
            let well_formed = rng.below(2) == 0;
            // Errors (a value too long for the buffer) just leave the attribute out.
            let _ = match typ {
                attr::XOR_PEER_ADDRESS if well_formed => {
                    w.add_xor_address(typ, peers[rng.below(peers.len())])
                }
                attr::REQUESTED_TRANSPORT if well_formed => {
                    w.add_u32(typ, [17u32, 6, 0][rng.below(3)] << 24)
                }
                attr::LIFETIME if well_formed => {
                    w.add_u32(typ, [0, 1, 600, 3600, u32::MAX][rng.below(5)])
                }
                attr::CHANNEL_NUMBER if well_formed => {
                    let number = [0x3FFF, 0x4000, 0x4001, 0x4002, 0x7FFF, 0x8000][rng.below(6)];
                    let [hi, lo] = u16::to_be_bytes(number);
                    w.add(typ, &[hi, lo, 0, 0])
                }
                attr::REQUESTED_ADDRESS_FAMILY
                | attr::ADDITIONAL_ADDRESS_FAMILY
                | ADDITIONAL_ADDRESS_FAMILY_DRAFT
                    if well_formed =>
                {
                    w.add(typ, &[1 + rng.below(3) as u8, 0, 0, 0])
                }
                attr::EVEN_PORT if well_formed => w.add(typ, &[[0, 0x80][rng.below(2)]]),
                attr::RESERVATION_TOKEN if well_formed && !tokens.is_empty() => {
                    w.add(typ, &tokens[rng.below(tokens.len())])
                }
                _ => {
                    let mut value = [0u8; 48];
                    let len = rng.below(value.len() + 1);
                    rng.fill(&mut value[..len]);
                    w.add(typ, &value[..len])
                }
            };
        }
        if class == Class::Request && rng.below(4) != 0 {
            let user = if rng.below(8) == 0 { BOB } else { ALICE };
            let _ = w.add(attr::USERNAME, user.0.as_bytes());
            let _ = w.add(attr::REALM, REALM.as_bytes());
            let _ = w.add(attr::NONCE, &n.auth.nonce(from.addr, n.now.unix));
            let _ = w.add_integrity(&key(user));
        }
        if rng.below(2) == 0 {
            let _ = w.add_fingerprint();
        }
        let len = w.finish();
        buf[..len].to_vec()
    }

    #[test]
    fn garbage_never_panics() {
        let mut n = node_with(Setup {
            v6: true,
            ..Setup::default()
        });
        // A live allocation with a channel and permissions, so that the deep paths run.
        let (id, _) = n.allocate(client(1), Some(3600));
        n.bind(client(1), 0x4000, peer_a());
        n.permit(client(1), &[peer_b(), own()]);
        let peers = [
            peer_a(),
            peer_b(),
            peer_v6(),
            own(),
            addr("127.0.0.1:1"),
            addr("10.0.0.1:1"),
        ];
        let mut tokens: Vec<[u8; 8]> = Vec::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut slot = vec![0u8; 2048];
        // Successes, errors, to a peer, to a client, drops.
        let mut seen = [0usize; 5];
        for i in 0..100_000u32 {
            let from = client(1 + (i % 3) as u16);
            let message = random_message(&n, &mut rng, from, &peers, &tokens);
            let len = match i % 5 {
                // Pure noise behind a first byte of each kind: STUN, ChannelData, neither.
                0 => {
                    let len = 1 + rng.below(200);
                    rng.fill(&mut slot[..len]);
                    slot[0] = [0x00, 0x01, 0x40, 0x7f, 0xff][rng.below(5)];
                    len
                }
                // ChannelData on bound and unbound channels, its length field sometimes lying.
                1 => {
                    let data_len = rng.below(300);
                    let number = 0x4000 + rng.below(3) as u16;
                    let claimed = if rng.below(4) == 0 {
                        rng.below(400)
                    } else {
                        data_len
                    };
                    slot[..2].copy_from_slice(&number.to_be_bytes());
                    slot[2..4].copy_from_slice(&(claimed as u16).to_be_bytes());
                    rng.fill(&mut slot[4..4 + data_len]);
                    4 + data_len
                }
                // A generated message as it is, with bits flipped, or cut short.
                2 | 3 => {
                    slot[..message.len()].copy_from_slice(&message);
                    message.len()
                }
                _ => {
                    slot[..message.len()].copy_from_slice(&message);
                    if rng.below(2) == 0 {
                        for _ in 0..=rng.below(4) {
                            slot[rng.below(message.len())] ^= 1 << rng.below(8);
                        }
                        message.len()
                    } else {
                        rng.below(message.len() + 1)
                    }
                }
            };
            // Now and then a slot with no room for more than the packet.
            let cap = if i % 7 == 0 { len } else { slot.len() };
            let action = n
                .core
                .handle_client(n.now, from, &mut slot[..cap], len, &mut n.relays);
            check_action(action, &slot[..cap]);
            if let Action::Reply(len) = action {
                let msg = parse(&slot[..len]);
                if msg.class() == Class::Success {
                    seen[0] += 1;
                    if let Some(t) = msg.get(attr::RESERVATION_TOKEN) {
                        tokens.push(t.try_into().expect("8 bytes"));
                    }
                } else {
                    seen[1] += 1;
                }
            }
            seen[2] += usize::from(matches!(action, Action::ToPeer { .. }));
            // Noise from a peer on a live or a dead relay, at any start and length.
            let start = rng.below(HEADROOM + 1);
            let plen = rng.below(slot.len() - start + 1).min(1500);
            rng.fill(&mut slot[start..start + plen]);
            let relay = match rng.below(3) {
                0 => id,
                1 if !n.relays.open.is_empty() => n.relays.open[rng.below(n.relays.open.len())].0,
                _ => [0, id + 1000, usize::MAX][rng.below(3)],
            };
            let peer = peers[rng.below(peers.len())];
            let action = n
                .core
                .handle_peer(n.now, relay, peer, &mut slot, start, plen);
            check_action(action, &slot);
            if let Action::ToClient { start, len, .. } = action {
                seen[3] += 1;
                // Framed either way: ChannelData or a Data indication.
                if slot[start] < 0x40 {
                    parse(&slot[start..start + len]);
                }
            }
            seen[4] += usize::from(matches!(action, Action::Drop(_)));
            if i % 1000 == 999 {
                n.advance(1);
                n.sweep();
            }
        }
        assert!(seen.iter().all(|&k| k > 0), "outcomes {seen:?}");
        n.core.close_all(&mut n.relays);
        assert!(n.relays.open.is_empty(), "{:?}", n.relays.open);
        assert_eq!(n.shared.allocations(), 0);
    }
}
