//! The media-session registry: what the control plane (the room API) and the
//! data-plane workers share about each participant's peer connection.
//!
//! A session is made by `publish` (the HTTP handler parses the offer, we make ICE
//! credentials and the SDP answer) and keyed by *our* ICE ufrag, which every
//! connectivity check of the client carries first in its USERNAME
//! (`<our ufrag>:<its ufrag>`). The data plane finds a session by that ufrag.
//!
//! Sharing, and what is on the per-packet path:
//! - The registry is one `RwLock<HashMap<ufrag, Arc<Session>>>`. Only the control
//!   plane (publish, leave, the sweeps: write or read) and a worker's *cache miss*
//!   (read) take that lock.
//! - Each worker keeps its own cache ([`SessionCache`]) of ufrag → `Arc<Session>`; in
//!   steady state a check costs one map lookup without allocation and the session's own
//!   mutex, which only the worker(s) that see the client's packets ever take (the
//!   control plane takes it once per second in the consent sweep).
//! - Ownership: the kernel hashes a client's 5-tuple to one worker's `SO_REUSEPORT`
//!   socket, so the worker that sees the *nominated* pair's checks is the one that will
//!   see its DTLS and SRTP too. It records itself as the session's `owner`. Checks of
//!   other pairs (a relayed candidate, an IPv6 one) may reach another worker; that worker
//!   answers them under the same per-session mutex, which is correct if rarely taken.
//! - A removed session is marked `closed` (an atomic, read without the lock); workers
//!   drop it from their cache the next time they meet it or in their periodic sweep, so
//!   the `Arc` (and the agent) goes away shortly after.
//!
//! - Media (DTLS, SRTP) is routed by the client's *address*, not by a ufrag: each worker
//!   keeps a second map, client address → `Arc<Session>`, which it fills itself when its
//!   agent answers a valid check from that address. No global lock is on that path, and
//!   media from an address that never sent a valid check is dropped and counted (the
//!   session's agent is asked again under the session lock, so an address the agent has
//!   since forgotten is refused too).
//! - DTLS: each session's [`DtlsSession`] (passive role, pinned to the fingerprint of the
//!   publisher's offer) is made at publish and lives in [`SessionMedia`] beside the agent.
//!   Every DTLS record from a validated address goes to it, also after it connected (a
//!   lost final flight is resent when the client repeats its own). Its output records are
//!   handed to the caller's `send` one datagram each; its retransmission timers live in
//!   the worker's cache ([`SessionCache::run_timers`]) until the handshake is over. On
//!   `Connected` the [`SrtpPair`] is stored in the session, and SRTP/SRTCP from a
//!   validated address is unprotected in place.
//! - A session whose DTLS failed or was closed by the peer is reported by
//!   [`MediaSessions::consent_expired`] like one whose consent ran out, so the control
//!   plane ends the participant.
//!
//! Lock order: registry, then a session; a worker never takes the registry while it
//! holds a session, and nothing takes the room API's lock while holding either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use super::dtls::{DTLS_MTU, DtlsIdentity, DtlsOutput, DtlsSession, SrtpCapacity, SrtpPair};
use super::ice::{IceAgent, IceCredentials, IceVerdict, local_ufrag};
use super::sdp::{LocalTransport, PublishOffer};
use super::srtp::SrtpError;
use crate::metrics::{MediaDrop, SfuMetrics};
use crate::stun::message::Message;

/// Sessions on the node at once (one per publishing participant for now).
pub const MAX_SESSIONS: usize = 20_000;
/// Entries a worker's cache holds before it is cleared and refilled from the registry.
const MAX_CACHED: usize = 4 * MAX_SESSIONS;
/// No owner yet.
const NO_OWNER: usize = usize::MAX;
/// SSRCs a publisher's inbound SRTP context tracks: audio, three simulcast layers with
/// their RTX, and the SSRCs its RTCP reports come from, with room to spare.
const PUBLISHER_SRTP: SrtpCapacity = SrtpCapacity {
    inbound: 64,
    outbound: 16,
};
/// Client addresses a worker's address map holds before it is cleared and refilled by
/// the next checks.
const MAX_ADDRESSES: usize = 4 * MAX_SESSIONS;

/// One peer connection of a participant, as the data plane sees it.
pub struct Session {
    pub room: String,
    pub participant: String,
    /// Set when the session is removed; workers then forget it.
    closed: AtomicBool,
    /// The worker that answered the nominated pair's checks (`NO_OWNER` before that).
    owner: AtomicUsize,
    /// DTLS connected and counted in the `dtls_connected` gauge; cleared (and the gauge
    /// taken down) exactly once, when DTLS or the session ends.
    dtls_connected: AtomicBool,
    /// DTLS failed or the peer closed it: the control plane ends the participant.
    dtls_ended: AtomicBool,
    media: Mutex<SessionMedia>,
}

/// The mutable part of a session, under its own mutex.
#[derive(Debug)]
pub struct SessionMedia {
    pub agent: IceAgent,
    /// The DTLS endpoint (passive role), pinned to the fingerprint of the client's SDP.
    pub dtls: DtlsSession,
    /// Where the client's last DTLS record came from, and the listener it came through
    /// (listener indices are the same in every worker): where retransmissions go.
    pub dtls_peer: Option<(SocketAddr, usize)>,
    /// The SRTP contexts, once DTLS has connected.
    pub srtp: Option<Box<SrtpPair>>,
    // Next: the published tracks.
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("room", &self.room)
            .field("participant", &self.participant)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The worker that owns the session's media, once a pair is nominated.
    pub fn owner(&self) -> Option<usize> {
        match self.owner.load(Ordering::Relaxed) {
            NO_OWNER => None,
            w => Some(w),
        }
    }

    pub fn media(&self) -> MutexGuard<'_, SessionMedia> {
        self.media.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the DTLS handshake completed and the session has SRTP keys.
    pub fn is_dtls_connected(&self) -> bool {
        self.dtls_connected.load(Ordering::Relaxed)
    }

    /// Whether DTLS failed or the peer closed it.
    pub fn is_dtls_ended(&self) -> bool {
        self.dtls_ended.load(Ordering::Relaxed)
    }

    /// Takes the session out of the `dtls_connected` gauge, once.
    fn leave_gauge(&self, metrics: &SfuMetrics) {
        if self.dtls_connected.swap(false, Ordering::SeqCst) {
            metrics.dtls_connected.dec();
        }
    }

    /// Marks the session removed.
    fn close(&self, metrics: &SfuMetrics) {
        self.closed.store(true, Ordering::SeqCst);
        self.leave_gauge(metrics);
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    /// The participant already has a publishing session (HTTP 409).
    AlreadyPublishing,
    /// [`MAX_SESSIONS`] reached (HTTP 503).
    Full,
}

/// What the registry holds, under one lock.
#[derive(Default)]
struct Registry {
    by_ufrag: HashMap<String, Arc<Session>>,
    /// (room, participant) → our ufrag of its publishing session.
    by_participant: HashMap<(String, String), String>,
}

/// Every media session of the node, shared by the room API and the workers.
pub struct MediaSessions {
    /// Read-locked by workers' cache misses, write-locked by the control plane.
    registry: RwLock<Registry>,
    /// Where the monotonic milliseconds of ICE agents count from: the same origin as
    /// the workers' `Clock::mono_ms`.
    epoch: Instant,
    /// Host candidates put into every answer: `node.public_ip` (and IPv6) with the
    /// media port.
    candidates: Vec<SocketAddr>,
    /// The node's DTLS certificate: its fingerprint goes into every answer, and every
    /// session's DTLS endpoint presents it.
    identity: Arc<DtlsIdentity>,
    metrics: SfuMetrics,
}

impl std::fmt::Debug for MediaSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSessions")
            .field("sessions", &self.len())
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

impl MediaSessions {
    pub fn new(
        epoch: Instant,
        candidates: Vec<SocketAddr>,
        identity: Arc<DtlsIdentity>,
        metrics: SfuMetrics,
    ) -> MediaSessions {
        MediaSessions {
            registry: RwLock::new(Registry::default()),
            epoch,
            candidates,
            identity,
            metrics,
        }
    }

    pub fn identity(&self) -> &Arc<DtlsIdentity> {
        &self.identity
    }

    pub fn metrics(&self) -> &SfuMetrics {
        &self.metrics
    }

    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the node's monotonic milliseconds count from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Milliseconds since the shared epoch (the workers' `Clock::mono_ms`).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    pub fn len(&self) -> usize {
        self.read().by_ufrag.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers the publishing session of `participant` for an already parsed `offer`
    /// and returns our SDP answer.
    pub fn publish(
        &self,
        room: &str,
        participant: &str,
        offer: &PublishOffer,
    ) -> Result<String, PublishRefusal> {
        let key = (room.to_owned(), participant.to_owned());
        // Made before the registry lock: dimpl loads the key for every session.
        let dtls = DtlsSession::new(
            &self.identity,
            offer.fingerprint,
            PUBLISHER_SRTP,
            self.epoch,
            self.now_ms(),
        );
        let mut reg = self.write();
        if reg.by_participant.contains_key(&key) {
            return Err(PublishRefusal::AlreadyPublishing);
        }
        if reg.by_ufrag.len() >= MAX_SESSIONS {
            return Err(PublishRefusal::Full);
        }
        // 48 random bits: a collision is rare, and simply drawn again.
        let local = loop {
            let c = IceCredentials::generate();
            if !reg.by_ufrag.contains_key(&c.ufrag) {
                break c;
            }
        };
        let answer = offer.answer(&LocalTransport {
            session_id: session_id(),
            ice: &local,
            fingerprint: self.identity.fingerprint_hex(),
            candidates: &self.candidates,
        });
        let ufrag = local.ufrag.clone();
        let agent = IceAgent::new(local, Some(offer.ice.clone()), self.now_ms());
        let session = Arc::new(Session {
            room: room.to_owned(),
            participant: participant.to_owned(),
            closed: AtomicBool::new(false),
            owner: AtomicUsize::new(NO_OWNER),
            dtls_connected: AtomicBool::new(false),
            dtls_ended: AtomicBool::new(false),
            media: Mutex::new(SessionMedia {
                agent,
                dtls,
                dtls_peer: None,
                srtp: None,
            }),
        });
        reg.by_ufrag.insert(ufrag.clone(), session);
        reg.by_participant.insert(key, ufrag);
        Ok(answer)
    }

    /// The session our ufrag `ufrag` names (a worker's cache miss).
    pub fn lookup(&self, ufrag: &[u8]) -> Option<Arc<Session>> {
        let ufrag = std::str::from_utf8(ufrag).ok()?;
        self.read().by_ufrag.get(ufrag).cloned()
    }

    /// Whether `participant` of `room` has a publishing session.
    pub fn is_publishing(&self, room: &str, participant: &str) -> bool {
        self.read()
            .by_participant
            .contains_key(&(room.to_owned(), participant.to_owned()))
    }

    /// Ends the sessions of a participant (it left or was dropped).
    pub fn remove_participant(&self, room: &str, participant: &str) {
        let mut reg = self.write();
        let key = (room.to_owned(), participant.to_owned());
        if let Some(ufrag) = reg.by_participant.remove(&key)
            && let Some(s) = reg.by_ufrag.remove(&ufrag)
        {
            s.close(&self.metrics);
        }
    }

    /// Ends the sessions of every participant of `room` (deleted or expired).
    pub fn remove_room(&self, room: &str) {
        self.retain(|r, _| r != room);
    }

    /// Keeps the sessions whose (room, participant) `keep` approves, ends the others.
    pub fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        let mut reg = self.write();
        let Registry {
            by_ufrag,
            by_participant,
        } = &mut *reg;
        let metrics = &self.metrics;
        by_ufrag.retain(|_, s| {
            let kept = keep(&s.room, &s.participant);
            if !kept {
                s.close(metrics);
                by_participant.remove(&(s.room.clone(), s.participant.clone()));
            }
            kept
        });
    }

    /// Every (room, participant) with a session, for the control plane to compare with
    /// its rooms.
    pub fn participants(&self) -> Vec<(String, String)> {
        self.read().by_participant.keys().cloned().collect()
    }

    /// The (room, participant) of every session whose consent ran out by `now_ms`
    /// (RFC 7675: no valid check for 30 s), or whose DTLS failed or was closed by the
    /// peer (no media can flow any more). They stay registered; the caller makes the
    /// participant leave and then removes them.
    pub fn consent_expired(&self, now_ms: u64) -> Vec<(String, String)> {
        let reg = self.read();
        reg.by_ufrag
            .values()
            .filter(|s| s.is_dtls_ended() || s.media().agent.consent_expired(now_ms))
            .map(|s| (s.room.clone(), s.participant.clone()))
            .collect()
    }
}

/// A random `o=` session id below 2^63 (JSEP §5.2.1).
fn session_id() -> u64 {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    OsRng.next_u64() >> 1
}

/// What [`SessionCache::answer_check`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckVerdict {
    /// An answer (success or error) of this many bytes is in the buffer; send it back.
    Reply(usize),
    /// No session of ours: not an ICE check for the SFU.
    NotOurs,
    /// Unparsable, a bad FINGERPRINT, or no room to answer in: drop and count.
    Malformed,
}

/// What [`SessionCache::handle_media`] did with a DTLS or SRTP/SRTCP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaVerdict {
    /// A DTLS record, fed to the session's DTLS endpoint; what it answered has gone out
    /// through `send`.
    Dtls,
    /// SRTP unprotected in place: the RTP packet is the first `len` bytes.
    Rtp(usize),
    /// SRTCP unprotected in place: the (compound) RTCP packet is the first `len` bytes.
    Rtcp(usize),
    /// Dropped; count it under this reason.
    Dropped(MediaDrop),
}

/// One worker's view of the registry: ufrag → session, filled on first use; and its
/// own map of the client addresses it validated, which media is routed by.
pub struct SessionCache {
    worker: usize,
    sessions: Arc<MediaSessions>,
    cache: HashMap<Box<[u8]>, Arc<Session>>,
    /// Client address → session, for every address whose valid check this worker
    /// answered.
    by_addr: HashMap<SocketAddr, Arc<Session>>,
    /// Sessions whose DTLS handshake this worker drives, with when their timer is due
    /// (ms on the shared clock).
    timers: Vec<(Arc<Session>, u64)>,
    /// The earliest of `timers`.
    next_timer: Option<u64>,
    /// Where DTLS records are written before they are sent.
    out: Box<[u8]>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("worker", &self.worker)
            .field("cached", &self.cache.len())
            .field("addresses", &self.by_addr.len())
            .field("timers", &self.timers.len())
            .finish_non_exhaustive()
    }
}

impl SessionCache {
    pub fn new(worker: usize, sessions: Arc<MediaSessions>) -> SessionCache {
        SessionCache {
            worker,
            sessions,
            cache: HashMap::new(),
            by_addr: HashMap::new(),
            timers: Vec::new(),
            next_timer: None,
            out: vec![0u8; DTLS_MTU].into_boxed_slice(),
        }
    }

    pub fn sessions(&self) -> &Arc<MediaSessions> {
        &self.sessions
    }

    /// The live session named by `ufrag`: from the cache, else from the registry.
    fn get(&mut self, ufrag: &[u8]) -> Option<Arc<Session>> {
        if let Some(s) = self.cache.get(ufrag) {
            if !s.is_closed() {
                return Some(s.clone());
            }
            // Gone; a new session may hold the ufrag now.
            self.cache.remove(ufrag);
        }
        let s = self.sessions.lookup(ufrag)?;
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(ufrag.into(), s.clone());
        Some(s)
    }

    /// `buf[..len]` is a STUN message from `src` that the plain Binding core left
    /// unanswered; when its USERNAME names one of our sessions, that session's ICE agent
    /// answers it in place.
    pub fn answer_check(
        &mut self,
        buf: &mut [u8],
        len: usize,
        src: SocketAddr,
        now_ms: u64,
    ) -> CheckVerdict {
        let session = {
            let Some(raw) = buf.get(..len) else {
                return CheckVerdict::Malformed;
            };
            let Ok(msg) = Message::parse(raw) else {
                return CheckVerdict::Malformed;
            };
            let Some(ufrag) = local_ufrag(&msg) else {
                return CheckVerdict::NotOurs;
            };
            match self.get(ufrag) {
                Some(s) => s,
                None => return CheckVerdict::NotOurs,
            }
        };
        let verdict = session.media().agent.handle_binding(buf, len, src, now_ms);
        match verdict {
            IceVerdict::Success {
                len,
                newly_selected,
            } => {
                if newly_selected {
                    session.owner.store(self.worker, Ordering::Relaxed);
                }
                self.remember(src, &session);
                CheckVerdict::Reply(len)
            }
            IceVerdict::Error { len, .. } => CheckVerdict::Reply(len),
            IceVerdict::NotMine => CheckVerdict::NotOurs,
            IceVerdict::Malformed => CheckVerdict::Malformed,
        }
    }

    /// Routes media from `addr` to `session` (its agent has just validated `addr`).
    fn remember(&mut self, addr: SocketAddr, session: &Arc<Session>) {
        if self
            .by_addr
            .get(&addr)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            return;
        }
        if self.by_addr.len() >= MAX_ADDRESSES {
            self.by_addr.clear();
        }
        self.by_addr.insert(addr, session.clone());
    }

    /// `pkt` is a whole datagram from `src` (received through listener `listener`) whose
    /// first byte says DTLS (20..=63) or RTP/RTCP (128..=191). From an address one of our
    /// sessions validated, a DTLS record goes to its DTLS endpoint (whose answers go out
    /// through `send(datagram, to, listener)`, one call per record), and SRTP or SRTCP
    /// is unprotected in place with its keys. Anything else is dropped.
    pub fn handle_media(
        &mut self,
        pkt: &mut [u8],
        src: SocketAddr,
        listener: usize,
        now_ms: u64,
        send: &mut impl FnMut(&[u8], SocketAddr, usize),
    ) -> MediaVerdict {
        let session = match self.by_addr.get(&src) {
            Some(s) if !s.is_closed() => s.clone(),
            Some(_) => {
                self.by_addr.remove(&src);
                return MediaVerdict::Dropped(MediaDrop::Unvalidated);
            }
            None => return MediaVerdict::Dropped(MediaDrop::Unvalidated),
        };
        let mut media = session.media();
        if !media.agent.is_validated(src) {
            // The agent forgot the address (it made room for newer ones).
            drop(media);
            self.by_addr.remove(&src);
            return MediaVerdict::Dropped(MediaDrop::Unvalidated);
        }
        match pkt.first() {
            Some(20..=63) => {
                media.dtls_peer = Some((src, listener));
                let fed = media.dtls.handle_datagram(pkt, now_ms);
                let wait = drain(
                    &mut self.out,
                    self.sessions.metrics(),
                    &session,
                    &mut media,
                    send,
                );
                let handshaking = is_handshaking(&media);
                drop(media);
                self.schedule(&session, if handshaking { wait } else { None });
                match fed {
                    Ok(()) => MediaVerdict::Dtls,
                    Err(_) => MediaVerdict::Dropped(MediaDrop::Dtls),
                }
            }
            Some(128..=191) => {
                let Some(srtp) = media.srtp.as_mut() else {
                    return MediaVerdict::Dropped(MediaDrop::NoKeys);
                };
                // RFC 5761 §4: RTCP packet types 192..=223 sit where RTP has M and PT.
                if pkt.get(1).is_some_and(|b| (192..=223).contains(b)) {
                    match srtp.inbound.unprotect_rtcp(pkt) {
                        Ok(n) => MediaVerdict::Rtcp(n),
                        Err(e) => MediaVerdict::Dropped(srtp_drop(e)),
                    }
                } else {
                    match srtp.inbound.unprotect_rtp(pkt) {
                        Ok(n) => MediaVerdict::Rtp(n),
                        Err(e) => MediaVerdict::Dropped(srtp_drop(e)),
                    }
                }
            }
            _ => MediaVerdict::Dropped(MediaDrop::Malformed),
        }
    }

    /// Sets (`Some`) or clears (`None`) the DTLS timer of `session`.
    fn schedule(&mut self, session: &Arc<Session>, due: Option<u64>) {
        let at = self
            .timers
            .iter()
            .position(|(s, _)| Arc::ptr_eq(s, session));
        match (at, due) {
            (Some(i), Some(t)) => self.timers[i].1 = t,
            (Some(i), None) => {
                self.timers.swap_remove(i);
            }
            (None, Some(t)) => self.timers.push((session.clone(), t)),
            (None, None) => return,
        }
        self.next_timer = self.timers.iter().map(|&(_, t)| t).min();
    }

    /// When [`SessionCache::run_timers`] next has work (ms on the shared clock).
    pub fn next_timer(&self) -> Option<u64> {
        self.next_timer
    }

    /// Runs the DTLS timers due by `now_ms`: retransmitted flights go out through `send`
    /// to where the client's last record came from; a handshake past its deadline fails.
    pub fn run_timers(&mut self, now_ms: u64, send: &mut impl FnMut(&[u8], SocketAddr, usize)) {
        if self.next_timer.is_none_or(|t| t > now_ms) {
            return;
        }
        let mut i = 0;
        while i < self.timers.len() {
            let (session, due) = &self.timers[i];
            if session.is_closed() {
                self.timers.swap_remove(i);
                continue;
            }
            if *due > now_ms {
                i += 1;
                continue;
            }
            let session = session.clone();
            let mut media = session.media();
            let _ = media.dtls.handle_timeout(now_ms);
            let wait = drain(
                &mut self.out,
                self.sessions.metrics(),
                &session,
                &mut media,
                send,
            );
            match wait {
                Some(t) if is_handshaking(&media) => {
                    // Never due again at once: the worker would spin on it.
                    self.timers[i].1 = t.max(now_ms + 1);
                    i += 1;
                }
                _ => {
                    self.timers.swap_remove(i);
                }
            }
        }
        self.next_timer = self.timers.iter().map(|&(_, t)| t).min();
    }

    /// Forgets closed sessions (run now and then, off the per-packet path).
    pub fn sweep(&mut self) {
        self.cache.retain(|_, s| !s.is_closed());
        self.by_addr.retain(|_, s| !s.is_closed());
        let before = self.timers.len();
        self.timers.retain(|(s, _)| !s.is_closed());
        if self.timers.len() != before {
            self.next_timer = self.timers.iter().map(|&(_, t)| t).min();
        }
    }
}

fn is_handshaking(media: &SessionMedia) -> bool {
    *media.dtls.state() == super::dtls::DtlsState::Handshaking
}

/// Polls a session's DTLS endpoint dry: sends its records, stores its SRTP keys, notes
/// its end. Returns when its timer is due.
fn drain(
    out: &mut [u8],
    metrics: &SfuMetrics,
    session: &Session,
    media: &mut SessionMedia,
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) -> Option<u64> {
    loop {
        match media.dtls.poll_output(out) {
            DtlsOutput::Transmit(n) => {
                if let (Some((to, via)), Some(record)) = (media.dtls_peer, out.get(..n)) {
                    send(record, to, via);
                }
            }
            DtlsOutput::Connected(pair) => {
                tracing::debug!(
                    room = %session.room,
                    profile = %pair.profile,
                    "media session: DTLS connected"
                );
                media.srtp = Some(pair);
                if !session.dtls_connected.swap(true, Ordering::SeqCst) {
                    metrics.dtls_connected.inc();
                }
                // Closed meanwhile: its `close` may have looked before we counted.
                if session.closed.load(Ordering::SeqCst) {
                    session.leave_gauge(metrics);
                }
            }
            DtlsOutput::Failed(e) => {
                tracing::info!(room = %session.room, "media session: DTLS failed: {e}");
                metrics.dtls_failures.inc();
                end_dtls(metrics, session, media);
            }
            DtlsOutput::Closed => {
                tracing::debug!(room = %session.room, "media session: DTLS closed by the peer");
                end_dtls(metrics, session, media);
            }
            // Cannot happen with DTLS_MTU bytes; nothing is lost by stopping here.
            DtlsOutput::BufferTooSmall(_) => return None,
            DtlsOutput::Wait(at) => return at,
        }
    }
}

fn end_dtls(metrics: &SfuMetrics, session: &Session, media: &mut SessionMedia) {
    media.srtp = None;
    session.dtls_ended.store(true, Ordering::Relaxed);
    session.leave_gauge(metrics);
}

fn srtp_drop(e: SrtpError) -> MediaDrop {
    match e {
        SrtpError::AuthFailed => MediaDrop::AuthFailed,
        SrtpError::Replayed | SrtpError::TooOld => MediaDrop::Replayed,
        _ => MediaDrop::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{Class, Writer, attr, method};
    use std::cell::RefCell;

    const OFFER: &str = "v=0\r\n\
o=- 1 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Clnt\r\n\
a=ice-pwd:clientpassword0123456789\r\n\
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n";

    fn sessions() -> Arc<MediaSessions> {
        Arc::new(MediaSessions::new(
            Instant::now(),
            vec!["192.0.2.1:3478".parse().unwrap()],
            Arc::new(DtlsIdentity::generate().unwrap()),
            SfuMetrics::default(),
        ))
    }

    fn ice_line<'a>(sdp: &'a str, name: &str) -> &'a str {
        sdp.lines()
            .find_map(|l| l.strip_prefix(&format!("a={name}:")))
            .unwrap()
    }

    fn check(buf: &mut [u8], ufrag: &str, pwd: &str) -> usize {
        let mut w = Writer::new(buf, method::BINDING, Class::Request, &[9; 12]).unwrap();
        w.add(attr::USERNAME, format!("{ufrag}:Clnt").as_bytes())
            .unwrap();
        w.add(attr::ICE_CONTROLLING, &[1; 8]).unwrap();
        w.add(attr::USE_CANDIDATE, &[]).unwrap();
        w.add_integrity(pwd.as_bytes()).unwrap();
        w.add_fingerprint().unwrap();
        w.finish()
    }

    #[test]
    fn publish_registers_once_and_checks_are_answered() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        let answer = s.publish("room", "p1", &offer).unwrap();
        assert!(answer.contains("a=ice-lite"));
        assert!(answer.contains("a=setup:passive"));
        let fingerprint = s.identity().fingerprint_hex().to_owned();
        assert!(answer.contains(&format!("a=fingerprint:sha-256 {fingerprint}")));
        assert!(answer.contains("192.0.2.1 3478 typ host"), "{answer}");
        assert_eq!(
            s.publish("room", "p1", &offer),
            Err(PublishRefusal::AlreadyPublishing)
        );
        let ufrag = ice_line(&answer, "ice-ufrag").to_owned();
        let pwd = ice_line(&answer, "ice-pwd").to_owned();

        let mut cache = SessionCache::new(3, s.clone());
        let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let mut buf = [0u8; 1500];
        let n = check(&mut buf, &ufrag, &pwd);
        let CheckVerdict::Reply(len) = cache.answer_check(&mut buf, n, src, s.now_ms()) else {
            panic!("no answer");
        };
        let msg = Message::parse(&buf[..len]).unwrap();
        assert_eq!(msg.class(), Class::Success);
        assert_eq!(msg.verify_integrity(pwd.as_bytes()), Some(true));
        let session = s.lookup(ufrag.as_bytes()).unwrap();
        assert_eq!(session.owner(), Some(3));
        assert_eq!(session.media().agent.selected(), Some(src));

        // Unknown ufrag: not ours, buffer untouched.
        let n = check(&mut buf, "Nope", &pwd);
        assert_eq!(
            cache.answer_check(&mut buf, n, src, 0),
            CheckVerdict::NotOurs
        );

        // Removal closes the session; the cache forgets it.
        s.remove_participant("room", "p1");
        assert!(session.is_closed());
        assert!(s.is_empty());
        let n = check(&mut buf, &ufrag, &pwd);
        assert_eq!(
            cache.answer_check(&mut buf, n, src, 0),
            CheckVerdict::NotOurs
        );
        assert!(s.publish("room", "p1", &offer).is_ok());
        s.remove_room("room");
        assert!(s.is_empty());
        assert!(!s.is_publishing("room", "p1"));
    }

    /// The browser's DTLS side: dimpl as the active end, with its own certificate.
    fn dtls_client(now: Instant) -> (dimpl::Dtls, crate::sfu::sdp::Fingerprint) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let certificate = dimpl::DtlsCertificate {
            certificate: cert.der().to_vec(),
            private_key: key.serialize_der(),
        };
        let fingerprint = crate::sfu::dtls::fingerprint_of(&certificate.certificate);
        let config = dimpl::Config::builder()
            .with_crypto_provider(dimpl::crypto::rust_crypto::default_provider())
            .build()
            .unwrap();
        let mut dtls = dimpl::Dtls::new_12(Arc::new(config), certificate, now);
        dtls.set_active(true);
        // The client speaks first once its clock starts.
        dtls.handle_timeout(now).unwrap();
        (dtls, fingerprint)
    }

    /// Drains the client: its records, and its keying material once it has it.
    fn poll_client(
        dtls: &mut dimpl::Dtls,
        keys: &mut Option<(crate::sfu::srtp::SrtpProfile, Vec<u8>)>,
    ) -> Vec<Vec<u8>> {
        use crate::sfu::srtp::SrtpProfile;
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();
        loop {
            match dtls.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => out.push(p.to_vec()),
                dimpl::Output::Timeout(_) => return out,
                dimpl::Output::KeyingMaterial(km, profile) => {
                    let profile = match profile {
                        dimpl::SrtpProfile::AEAD_AES_128_GCM => SrtpProfile::AeadAes128Gcm,
                        dimpl::SrtpProfile::AEAD_AES_256_GCM => SrtpProfile::AeadAes256Gcm,
                        _ => SrtpProfile::Aes128CmHmacSha1_80,
                    };
                    *keys = Some((profile, km.to_vec()));
                }
                _ => {}
            }
        }
    }

    #[test]
    fn dtls_and_srtp_from_a_validated_address_reach_the_session() {
        use crate::sfu::srtp::{SrtpContext, split_keying_material};
        let s = sessions();
        let (mut client, client_fp) = dtls_client(s.epoch());
        let fixed = "6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:\
                     DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC";
        let offer_sdp = OFFER.replace(fixed, &client_fp.to_string());
        let offer = PublishOffer::parse(offer_sdp.as_bytes()).unwrap();
        assert_eq!(offer.fingerprint, client_fp);
        let answer = s.publish("room", "p1", &offer).unwrap();
        let (ufrag, pwd) = (ice_line(&answer, "ice-ufrag"), ice_line(&answer, "ice-pwd"));
        let session = s.lookup(ufrag.as_bytes()).unwrap();
        let mut cache = SessionCache::new(0, s.clone());
        let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.3:5000".parse().unwrap();
        let sent: RefCell<Vec<(Vec<u8>, SocketAddr, usize)>> = RefCell::default();
        let mut send =
            |d: &[u8], to: SocketAddr, via: usize| sent.borrow_mut().push((d.to_vec(), to, via));
        let now = s.now_ms();

        // Before any check, nothing is accepted from the address.
        let mut rtp = [
            0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4, 0, 0, 0, 0,
        ];
        assert_eq!(
            cache.handle_media(&mut rtp, src, 0, now, &mut send),
            MediaVerdict::Dropped(MediaDrop::Unvalidated)
        );
        let mut buf = [0u8; 1500];
        let n = check(&mut buf, ufrag, pwd);
        assert!(matches!(
            cache.answer_check(&mut buf, n, src, now),
            CheckVerdict::Reply(_)
        ));
        // Validated now, but no keys yet; another address still refused.
        assert_eq!(
            cache.handle_media(&mut rtp, src, 0, now, &mut send),
            MediaVerdict::Dropped(MediaDrop::NoKeys)
        );
        let mut hello = [22u8, 0xFE, 0xFD, 0, 0];
        assert_eq!(
            cache.handle_media(&mut hello, stranger, 0, now, &mut send),
            MediaVerdict::Dropped(MediaDrop::Unvalidated)
        );
        assert!(sent.borrow().is_empty());

        // The handshake, records carried by hand; the first server flight is resent by
        // the worker's timer when it is not answered.
        let mut keys = None;
        let mut retransmitted = false;
        for _ in 0..20 {
            for mut record in poll_client(&mut client, &mut keys) {
                assert_eq!(
                    cache.handle_media(&mut record, src, 1, s.now_ms(), &mut send),
                    MediaVerdict::Dtls
                );
            }
            if !retransmitted && !sent.borrow().is_empty() {
                let due = cache.next_timer().expect("a handshake timer");
                let before = sent.borrow().len();
                cache.run_timers(due, &mut send);
                assert!(sent.borrow().len() > before, "flight not retransmitted");
                sent.borrow_mut().truncate(before);
                retransmitted = true;
            }
            let records: Vec<_> = sent.borrow_mut().drain(..).collect();
            for (record, to, via) in records {
                assert_eq!((to, via), (src, 1), "answered where the client is");
                client.handle_packet(&record).unwrap();
            }
            if session.is_dtls_connected() && keys.is_some() {
                break;
            }
        }
        assert!(retransmitted);
        assert!(session.is_dtls_connected(), "{:?}", session.media().dtls);
        assert_eq!(s.metrics().dtls_connected.get(), 1);
        assert_eq!(cache.next_timer(), None, "no timer once connected");

        // SRTP and SRTCP from the client are unprotected in place.
        let (profile, material) = keys.unwrap();
        let (client_write, _) = split_keying_material(profile, &material).unwrap();
        let mut out = SrtpContext::new(&client_write, 4).unwrap();
        let mut slot = [0u8; 64];
        slot[..20].copy_from_slice(&rtp);
        let n = out.protect_rtp(&mut slot, 20).unwrap();
        let protected = slot[..n].to_vec();
        assert_eq!(
            cache.handle_media(&mut slot[..n], src, 1, s.now_ms(), &mut send),
            MediaVerdict::Rtp(20)
        );
        assert_eq!(slot[..20], rtp);
        let mut again = protected.clone();
        assert_eq!(
            cache.handle_media(&mut again, src, 1, s.now_ms(), &mut send),
            MediaVerdict::Dropped(MediaDrop::Replayed)
        );
        let mut forged = protected;
        forged[3] = 2;
        assert_eq!(
            cache.handle_media(&mut forged, src, 1, s.now_ms(), &mut send),
            MediaVerdict::Dropped(MediaDrop::AuthFailed)
        );
        // An empty receiver report.
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
        slot[..8].copy_from_slice(&rr);
        let n = out.protect_rtcp(&mut slot, 8).unwrap();
        assert_eq!(
            cache.handle_media(&mut slot[..n], src, 1, s.now_ms(), &mut send),
            MediaVerdict::Rtcp(8)
        );
        assert_eq!(slot[..8], rr);
        assert!(sent.borrow().is_empty());

        // Removal takes the session out of the gauge; its media is refused.
        s.remove_participant("room", "p1");
        assert_eq!(s.metrics().dtls_connected.get(), 0);
        slot[..20].copy_from_slice(&rtp);
        slot[3] = 7;
        let n = out.protect_rtp(&mut slot, 20).unwrap();
        assert_eq!(
            cache.handle_media(&mut slot[..n], src, 1, s.now_ms(), &mut send),
            MediaVerdict::Dropped(MediaDrop::Unvalidated)
        );
        cache.sweep();
        assert!(cache.by_addr.is_empty());
    }

    #[test]
    fn a_failed_handshake_ends_the_session() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        let answer = s.publish("r", "a", &offer).unwrap();
        let (ufrag, pwd) = (ice_line(&answer, "ice-ufrag"), ice_line(&answer, "ice-pwd"));
        let mut cache = SessionCache::new(0, s.clone());
        let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let mut buf = [0u8; 1500];
        let n = check(&mut buf, ufrag, pwd);
        cache.answer_check(&mut buf, n, src, s.now_ms());
        // A client whose certificate is not the one its offer names.
        let (mut client, _) = dtls_client(s.epoch());
        let mut keys = None;
        let sent: RefCell<Vec<Vec<u8>>> = RefCell::default();
        let mut send = |d: &[u8], _: SocketAddr, _: usize| sent.borrow_mut().push(d.to_vec());
        for _ in 0..20 {
            for mut record in poll_client(&mut client, &mut keys) {
                cache.handle_media(&mut record, src, 0, s.now_ms(), &mut send);
            }
            let records: Vec<_> = sent.borrow_mut().drain(..).collect();
            for record in records {
                let _ = client.handle_packet(&record);
            }
            if s.lookup(ufrag.as_bytes()).unwrap().is_dtls_ended() {
                break;
            }
        }
        let session = s.lookup(ufrag.as_bytes()).unwrap();
        assert!(session.is_dtls_ended());
        assert!(!session.is_dtls_connected());
        assert_eq!(s.metrics().dtls_failures.get(), 1);
        assert_eq!(s.metrics().dtls_connected.get(), 0);
        // The control plane hears of it at once, as of a lapsed consent.
        assert_eq!(
            s.consent_expired(s.now_ms()),
            vec![("r".to_owned(), "a".to_owned())]
        );
    }

    #[test]
    fn consent_expiry_is_reported() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        s.publish("r", "a", &offer).unwrap();
        let now = s.now_ms();
        assert!(s.consent_expired(now).is_empty());
        assert_eq!(
            s.consent_expired(now + 31_000),
            vec![("r".to_owned(), "a".to_owned())]
        );
        s.retain(|_, p| p != "a");
        assert!(s.is_empty());
    }
}
