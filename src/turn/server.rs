//! TURN allocations (RFC 8656) as a sans-IO core: one `TurnCore` per data-plane worker
//! (or per TCP/TLS connection), fed packets and the time, answering with actions.
//!
//! Relay sockets are opened and closed through the `RelayIo` trait, so the core never
//! touches a socket; the worker owns them and polls them in its event loop. Packets
//! are relayed in place: the payload of a ChannelData message or Send indication is
//! sent straight from the receive buffer, and data from a peer gets its ChannelData
//! header or Data indication written into the headroom in front of it.
//!
//! No state exists for a client before one of its requests authenticates: 401/438
//! answers come from the stateless nonce of `auth`, rate-limited per source.

use super::auth::{Auth, Credentials, Reject};
use super::policy::PeerPolicy;
use crate::config::PortRange;
use crate::metrics::TurnMetrics;
use crate::stun::message::{Class, HEADER_LEN, Message, WriteError, Writer, attr, method};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Index of a relay socket in the worker's socket table.
pub type RelayId = usize;

/// Opening and closing relay sockets, done by the I/O layer for the core.
pub trait RelayIo {
    /// Binds a UDP socket on `addr` and starts polling it. `AddrInUse` makes the core
    /// try another port.
    fn open(&mut self, addr: SocketAddr) -> io::Result<RelayId>;
    /// Binds a UDP socket on `addr` without polling it: a port held for a later
    /// Allocate (EVEN-PORT with R), which may come to another worker.
    fn reserve(&mut self, addr: SocketAddr) -> io::Result<std::net::UdpSocket>;
    /// Starts polling a socket made by `reserve`.
    fn adopt(&mut self, socket: std::net::UdpSocket) -> io::Result<RelayId>;
    fn close(&mut self, id: RelayId);
}

/// Lifetimes (RFC 8656 §2.2, §9, §12) and bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    pub max_allocations: usize,
    pub max_allocations_per_user: u32,
    pub max_permissions: usize,
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
/// Channel numbers: RFC 8656 narrowed them to 0x4000–0x4FFF, but RFC 5766 clients
/// (coturn's tools among them) still pick from 0x4000–0x7FFF, and nothing else on the
/// media port starts with 0x50–0x7F (RFC 7983), so the old range is kept.
const CHANNEL_FIRST: u16 = 0x4000;
const CHANNEL_LAST: u16 = 0x7FFF;
/// XOR-PEER-ADDRESS attributes taken from one CreatePermission.
const MAX_PEERS_PER_REQUEST: usize = 8;
/// Attempts at a free relay port before answering 508.
const PORT_ATTEMPTS: usize = 64;
const UDP: u8 = 17;
/// ADDITIONAL-ADDRESS-FAMILY as numbered in the draft that coturn implements; RFC 8656
/// moved it to 0x8000. Both are read.
const ADDITIONAL_ADDRESS_FAMILY_DRAFT: u16 = 0x8032;
const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// What every core of the node shares: settings and the allocation quotas.
pub struct Shared {
    pub limits: Limits,
    pub ports: PortRange,
    /// Addresses relay sockets bind to, per family (`None`: no relay of that family).
    pub relay_v4: Option<IpAddr>,
    pub relay_v6: Option<IpAddr>,
    /// What XOR-RELAYED-ADDRESS says (the public side of a 1:1 NAT).
    pub public_v4: Ipv4Addr,
    pub public_v6: Option<Ipv6Addr>,
    pub policy: PeerPolicy,
    pub metrics: TurnMetrics,
    total: AtomicUsize,
    per_user: Mutex<HashMap<Box<str>, u32>>,
    /// Shared, as the Allocate with the token may reach another worker.
    reservations: Mutex<Vec<Reservation>>,
}

impl Shared {
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
            limits,
            ports,
            relay_v4,
            relay_v6,
            public_v4,
            public_v6,
            policy,
            metrics,
            total: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            reservations: Mutex::new(Vec::new()),
        }
    }

    /// Takes one allocation of the quotas; false when a quota is full.
    fn acquire(&self, user: &str) -> bool {
        let Ok(mut per_user) = self.per_user.lock() else {
            return false;
        };
        if self.total.load(Ordering::Relaxed) >= self.limits.max_allocations {
            return false;
        }
        let n = per_user.entry(user.into()).or_insert(0);
        if *n >= self.limits.max_allocations_per_user {
            return false;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        self.metrics.allocations.inc();
        true
    }

    fn release(&self, user: &str) {
        let Ok(mut per_user) = self.per_user.lock() else {
            return;
        };
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
            self.metrics.allocations.dec();
        }
    }

    fn add_reservation(&self, r: Reservation) {
        if let Ok(mut list) = self.reservations.lock() {
            list.push(r);
        }
    }

    /// Takes the reservation of `token` if it is live and of the wanted family.
    fn take_reservation(&self, token: &[u8; 8], now: u64) -> Option<Reservation> {
        let mut list = self.reservations.lock().ok()?;
        let i = list
            .iter()
            .position(|r| &r.token == token && r.expires > now)?;
        Some(list.swap_remove(i))
    }

    /// Closes the sockets of expired reservations.
    fn expire_reservations(&self, now: u64) {
        if let Ok(mut list) = self.reservations.lock() {
            list.retain(|r| r.expires > now);
        }
    }

    /// Allocations held now, over all cores.
    pub fn allocations(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// The time as the core sees it: a monotonic clock for lifetimes, the wall clock for
/// REST usernames and nonces.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub mono_ms: u64,
    pub unix: u64,
}

/// Where a client's packets come from: which listener socket, which address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub listener: usize,
    pub addr: SocketAddr,
}

/// What to do with a packet after the core has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `buf[..n]` back to the sender.
    Reply(usize),
    /// Send `buf[start..start + len]` to `peer` from relay socket `relay`.
    ToPeer {
        relay: RelayId,
        peer: SocketAddr,
        start: usize,
        len: usize,
    },
    /// Send `buf[start..start + len]` to a client through its listener socket.
    ToClient {
        client: ClientKey,
        start: usize,
        len: usize,
    },
    /// Nothing to send; the packet was consumed or dropped for this reason.
    Drop(DropReason),
}

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
    socket: std::net::UdpSocket,
    advertised: SocketAddr,
    expires: u64,
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
    auth: Auth,
    /// Data to a stream client (TCP/TLS) is padded to four bytes (RFC 8656 §12.5).
    stream: bool,
    allocations: Vec<Option<Allocation>>,
    free: Vec<usize>,
    by_client: FxHashMap<ClientKey, usize>,
    /// Allocation index by relay id (`usize::MAX` where none).
    by_relay: Vec<usize>,
    rng: u64,
}

impl TurnCore {
    pub fn new(shared: Arc<Shared>, auth: Auth, stream: bool, seed: u64) -> TurnCore {
        TurnCore {
            shared,
            auth,
            stream,
            allocations: Vec::new(),
            free: Vec::new(),
            by_client: FxHashMap::default(),
            by_relay: Vec::new(),
            rng: seed | 1,
        }
    }

    /// Allocations this core holds.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: tokens and transaction ids need to be unpredictable enough to
        // not collide, not to be secret (they travel in clear).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
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
        let action = match buf.first() {
            Some(0x40..=0x7F) => self.channel_data(clock, client, &buf[..len]),
            Some(0..=3) => self.stun(clock, client, buf, len, relays),
            _ => Action::Drop(DropReason::Malformed),
        };
        match action {
            Action::ToPeer { len, .. } if self.shared.limits.bandwidth > 0 => {
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
        let rate = self.shared.limits.bandwidth;
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
        let Some(alloc) = self.allocation(client) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let now = clock.mono_ms;
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
            Some(p) => !p.own_only || self.shared.policy.permits(peer),
        }
    }

    fn allocation(&self, client: ClientKey) -> Option<&Allocation> {
        let &i = self.by_client.get(&client)?;
        self.allocations.get(i)?.as_ref()
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
        let Some(alloc) = self.allocation(client) else {
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
        if req.unknown_count > 0 {
            let unknown = req.unknown;
            let count = req.unknown_count;
            return self.answer_error(buf, &req, (420, "Unknown Attribute"), None, |w| {
                w.add_unknown_attributes(&unknown[..count])
            });
        }
        let creds = match auth {
            Ok(creds) => creds,
            Err(reject) => return self.reject(clock, client, buf, &req, reject),
        };
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
            Reject::Challenge => (401, "Unauthorized"),
            Reject::WrongCredentials => {
                self.shared.metrics.auth_failures.inc();
                (401, "Unauthorized")
            }
            Reject::StaleNonce => (438, "Stale Nonce"),
            Reject::BadRequest => BAD_REQUEST,
        };
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
                let id = relays.adopt(r.socket).map_err(|_| CAPACITY)?;
                Some(Relay {
                    id,
                    advertised: r.advertised,
                })
            }
            None => None,
        };
        if !self.shared.acquire(&creds.username) {
            if let Some(r) = reserved {
                relays.close(r.id);
            }
            return Err(QUOTA);
        }
        let opened = self.open_relays(clock, want_v4, want_v6, req.even_port, reserved, relays);
        let (v4, v6, token, v6_error) = match opened {
            Ok(x) => x,
            Err(failure) => {
                self.shared.release(&creds.username);
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
            budget: self.shared.limits.bandwidth,
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
        want_v4: bool,
        want_v6: bool,
        even_port: Option<bool>,
        reserved: Option<Relay>,
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
            let (relay, socket, advertised) = self.open_pair(ip, relays)?;
            let token = self.random().to_be_bytes();
            self.shared.add_reservation(Reservation {
                token,
                socket,
                advertised,
                expires: clock.mono_ms + RESERVATION_MS,
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
    ) -> Result<(Relay, std::net::UdpSocket, SocketAddr), Failure> {
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
        let limits = &self.shared.limits;
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
        self.shared.release(&alloc.creds.username);
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
        let policy = &self.shared.policy;
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
        let max = self.shared.limits.max_permissions;
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
        if own_only && !self.shared.policy.permits(peer) {
            return Err(FORBIDDEN);
        }
        let now = clock.mono_ms;
        let max_channels = self.shared.limits.max_channels;
        let max_permissions = self.shared.limits.max_permissions;
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
        if self.shared.limits.bandwidth > 0 && !self.charge(index, len, now) {
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
    pub fn close_all(&mut self, relays: &mut dyn RelayIo) {
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
