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
//!   the worker's cache ([`SessionCache::handle_timeout`]) until the handshake is over. On
//!   `Connected` the [`SrtpPair`] is stored in the session, and SRTP/SRTCP from a
//!   validated address is unprotected in place.
//! - Timers: one queue per worker ([`SessionCache::poll_timeout`],
//!   [`SessionCache::handle_timeout`], µs on the shared clock), one entry per session
//!   whose DTLS handshake or publisher media this worker handled: DTLS flights resent,
//!   and a publisher's receiver reports, NACK repeats, held-back keyframe requests,
//!   its receivers' sender reports and transport-cc feedback, so a muted track keeps
//!   reporting. Each session knows the time its worker holds for it (`timer_due`):
//!   an earlier one is pushed, and the superseded entry is skipped when it comes up.
//!   Consent is the control plane's sweep ([`MediaSessions::consent_expired`]): an
//!   ICE-lite node sends no checks, and what expires ends a participant.
//! - A session whose DTLS failed or was closed by the peer is reported by
//!   [`MediaSessions::consent_expired`] like one whose consent ran out, so the control
//!   plane ends the participant.
//!
//! - Receiving sessions: when a participant opens its event stream (and whenever the
//!   room's published tracks change), [`MediaSessions::sync_room`] makes its receiving
//!   session (our ICE credentials and a DTLS endpoint, passive role), adds or removes
//!   one m-line per track of every *other* publisher (msid stream id = the publisher's
//!   participant id) and returns the server offer to send on the event stream. The
//!   publisher's [`PublishedMedia`] of that track gets a [`Downstream`]: the receiving
//!   session and its [`Forwarder`]. The answer ([`MediaSessions::subscribe_answer`])
//!   brings the client's ICE credentials and DTLS fingerprint; until it arrives the
//!   client's DTLS records are dropped (it repeats them) and its consent does not run.
//!   From then on its checks and DTLS take the same path as a publisher's.
//! - Forwarding: RTP unprotected from a publisher goes through its track's
//!   [`Track::receive`] once; for each receiver with DTLS connected, a copy is rewritten
//!   by its forwarder in the worker's preallocated buffer, SRTP-protected with the
//!   receiver's keys through the stream's [`Egress`] (its own context: no lock of the
//!   receiver's is taken) and handed to `send` (the worker queues it in its outbox,
//!   flushed with `sendmmsg`) for where the receiver's media goes, through the same
//!   listener index in this worker. Keyframe requests (forwarders waiting for a key frame, throttled by the
//!   track) go back to the publisher as SRTCP PLIs; the rest of the RTCP is in
//!   `sfu::feedback`.
//!
//! Lock order: registry, then a session (a publisher's, then a receiver's: only the
//! control plane nests them, wiring forwarders; the data plane takes one session lock
//! at a time); a worker never takes the registry while it holds a session, and nothing
//! takes the room API's lock while holding either. Debug builds check the session part
//! ([`Session::media`]); a receiver link's address mutex is a leaf.

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::Instant;

use rand_chacha::ChaCha12Rng;
use rand_core::{RngCore, SeedableRng};

use super::codec::Codec;
use super::dtls::{
    DTLS_MTU, DtlsError, DtlsIdentity, DtlsOutput, DtlsSession, SrtpCapacity, SrtpPair,
};
use super::egress::{Egress, ReceiverLink};
use super::feedback;
use super::forward::{Action, ExtensionMap, Forwarder, ForwarderConfig, RtxConfig};
use super::ice::{IceAgent, IceCredentials, IceVerdict, local_ufrag};
use super::rtp::RtpHeader;
use super::sdp::{
    CodecName, Fingerprint, LocalTransport, OutTrack, PublishOffer, PublishedTrack, SdpError,
    SubscribeSession,
};
use super::sdp::{Extension, Feedback, SUBSCRIBE_EXTENSIONS};
use super::speaker::Loudness;
use super::srtp::{MAX_RTP_OVERHEAD, SrtpError};
use super::track::{Dropped, LayerConfig, Track, TrackConfig};
use super::twcc::TransportFeedback;
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
/// A receiving session hears the receiver's RTCP from a few SSRCs; what it is sent goes
/// through each stream's own context (`sfu::egress`), so its own outbound one holds
/// nothing.
const SUBSCRIBER_SRTP: SrtpCapacity = SrtpCapacity {
    inbound: 16,
    outbound: 1,
};
/// A receiving session whose participant has not answered our first offer within this
/// ends like one whose consent ran out, and the participant leaves the room: a page
/// answers at once, and a client that never does would hold its place in a full room.
pub const ANSWER_DEADLINE_MS: u64 = 30_000;
/// The SSRC our RTCP to publishers (keyframe requests, reports, feedback) comes from.
pub const RTCP_SENDER_SSRC: u32 = 0x636E_6F64;
/// Packets cached per layer of a video track for answering NACKs.
const VIDEO_CACHE_PACKETS: usize = 512;
/// The soonest a session's timer is due after it was set: work that cannot be done
/// yet is retried no more than a thousand times a second.
const MIN_TIMER_US: u64 = 1_000;
/// Timer entries a worker has room for before its queue grows (on the media path).
const TIMERS_RESERVED: usize = 1024;
/// Where the SFU's forwarded packets are written and encrypted: a whole datagram
/// and the SRTP tag.
const FORWARD_BUFFER: usize = 2048;

/// One peer connection of a participant, as the data plane sees it.
pub struct Session {
    pub room: String,
    pub participant: String,
    /// Set when the session is removed; workers then forget it.
    closed: AtomicBool,
    /// A receiving session's keys and address for the streams forwarded to it, read
    /// without its lock (`None` for a publisher).
    link: Option<Arc<ReceiverLink>>,
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
    /// Where media and RTCP go, and the listener they leave through (listener indices
    /// are the same in every worker): the address the client's ICE nominated, or,
    /// without a nomination, where its completed DTLS handshake came from. A datagram
    /// that merely looks like DTLS never moves it: media would follow anyone able to
    /// send from a validated address.
    pub media_peer: Option<(SocketAddr, usize)>,
    /// Where the client's last DTLS record came from: where DTLS answers and
    /// retransmitted flights go.
    pub dtls_from: Option<(SocketAddr, usize)>,
    /// The SRTP contexts, once DTLS has connected.
    pub srtp: Option<Box<SrtpPair>>,
    /// A publisher's tracks, each with the receivers it is forwarded to.
    pub tracks: Vec<PublishedMedia>,
    /// A receiving session's signalling state (`None` for a publisher).
    pub subscribe: Option<Box<Subscription>>,
    /// A publisher's transport-cc feedback, where its offer negotiated it.
    pub twcc: Option<Box<TransportFeedback>>,
    /// When the DTLS handshake's retransmission timer runs out (µs on the shared clock).
    dtls_due: Option<u64>,
    /// When the worker that drives this session's timer has it due (µs): what its
    /// [`SessionCache`] holds for it; `None` while no worker does.
    timer_due: Option<u64>,
}

impl SessionMedia {
    /// When this session next has work without a packet arriving (µs on the shared
    /// clock): a DTLS retransmission, or for a publisher whose DTLS connected, a report,
    /// a NACK repeat, a held-back keyframe request or transport-cc feedback.
    fn next_timeout(&self) -> Option<u64> {
        let media = if self.srtp.is_some() && self.media_peer.is_some() {
            let tracks = self.tracks.iter().map(PublishedMedia::next_timeout).min();
            let twcc = self.twcc.as_ref().and_then(|t| t.next_due());
            earliest(tracks, twcc)
        } else {
            None
        };
        earliest(self.dtls_due, media)
    }
}

/// The earlier of two optional times.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => a.or(b),
    }
}

/// One track of a publisher as the data plane forwards it.
pub struct PublishedMedia {
    /// The publisher's mid of the track.
    pub mid: String,
    pub codec: CodecName,
    pub track: Track,
    /// The header extensions of the publisher's offer, with its ids.
    pub extensions: Vec<(Extension, u8)>,
    /// Every receiver of the track: its session and its own stream of it.
    pub outs: Vec<Downstream>,
    /// The id of the audio-level extension, on an audio track that has one.
    pub audio_level: Option<u8>,
    /// Speech heard since the control plane last asked ([`MediaSessions::take_loudness`]).
    pub loudness: Loudness,
    /// When reports (µs on the shared clock) and NACKs are next due.
    pub next_report: u64,
    pub next_nack: u64,
}

impl PublishedMedia {
    /// When reports, NACKs (only while packets are missing) or a held-back keyframe
    /// request are next due.
    fn next_timeout(&self) -> u64 {
        let mut due = self.next_report;
        if self.track.has_missing() {
            due = due.min(self.next_nack);
        }
        if let Some(k) = self.track.keyframe_due() {
            due = due.min(k);
        }
        due
    }
}

impl std::fmt::Debug for PublishedMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedMedia")
            .field("mid", &self.mid)
            .field("codec", &self.codec)
            .field("receivers", &self.outs.len())
            .finish_non_exhaustive()
    }
}

/// One receiver's stream of a published track.
pub struct Downstream {
    pub subscriber: Arc<Session>,
    /// The mid of the m-line the receiver gets it on.
    pub mid: String,
    pub forwarder: Forwarder,
    /// The receiver's keys and address, reached without its lock.
    pub egress: Egress,
    /// The receiver's answer refused the m-line or made it inactive: nothing is sent.
    pub paused: bool,
}

/// Where one of a receiver's streams comes from, for routing its feedback back.
#[derive(Debug, Clone)]
pub struct Feed {
    /// The receiver's mid of the stream.
    pub mid: String,
    /// Our SSRC of the stream (what the receiver's PLI and NACK name).
    pub ssrc: u32,
    pub publisher: Weak<Session>,
    /// The track's index in the publisher's tracks (fixed for the session's life).
    pub track: usize,
    /// Whether the receiver's answer kept RTX (until it answers: as offered).
    pub rtx: bool,
}

/// A receiving session's m-lines and what feeds them.
#[derive(Debug)]
pub struct Subscription {
    pub sdp: SubscribeSession,
    /// The `o=` id, the same across renegotiations.
    session_id: u64,
    /// Sub mid → (publishing participant, its mid).
    sources: Vec<(String, String, String)>,
    /// Where each forwarded stream comes from, for the receiver's feedback.
    pub feeds: Vec<Feed>,
    /// The client's answer set the ICE credentials and DTLS fingerprint.
    answered: bool,
    /// When the first offer went out (see [`ANSWER_DEADLINE_MS`]); none while there is
    /// nothing to receive.
    offered_ms: Option<u64>,
    /// The receiver's `max_height` preference, for the simulcast layer its forwarders
    /// choose.
    max_height: Option<u16>,
    /// The next SSRC for a stream to this receiver (see [`Subscription::fresh_ssrc`]).
    next_ssrc: u32,
}

impl Subscription {
    /// An SSRC this receiver has never been sent under its SRTP keys. The SSRCs of
    /// departed streams are forgotten by the SRTP context, and one coming back would
    /// repeat its packet indices (and AES-GCM nonces) under the same key: a Weyl
    /// sequence from a random start with an odd step repeats only after 2^32 streams.
    fn fresh_ssrc(&mut self) -> u32 {
        loop {
            let ssrc = self.next_ssrc;
            self.next_ssrc = ssrc.wrapping_add(0x9E37_79B9);
            if ssrc != 0 && ssrc != RTCP_SENDER_SSRC {
                return ssrc;
            }
        }
    }
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

    /// The session's media state, under its lock. Order: a publisher's before a
    /// receiver's, never two of a kind (checked in debug builds).
    pub fn media(&self) -> MediaGuard<'_> {
        let order = LockOrder::take(self.link.is_some());
        MediaGuard {
            guard: self.media.lock().unwrap_or_else(PoisonError::into_inner),
            _order: order,
        }
    }

    /// Where this session's media goes from now on (a receiving session's streams
    /// learn it through its link).
    fn set_media_peer(&self, media: &mut SessionMedia, peer: (SocketAddr, usize)) {
        media.media_peer = Some(peer);
        if let Some(link) = &self.link {
            link.set_peer(Some(peer));
        }
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

/// Where the data plane's clock starts. Every `now` handed to the SFU counts from
/// `instant` (milliseconds for ICE and DTLS, microseconds for media); `unix_us` is the
/// wall-clock time at that instant (µs since 1970), from which RTCP's NTP timestamps are
/// counted on, so they never step with the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    pub instant: Instant,
    pub unix_us: u64,
}

/// What the registry holds, under one lock.
#[derive(Default)]
struct Registry {
    by_ufrag: HashMap<String, Arc<Session>>,
    /// (room, participant) → our ufrag of its publishing session.
    by_participant: HashMap<(String, String), String>,
    /// (room, participant) → our ufrag of its receiving session.
    subscribers: HashMap<(String, String), String>,
}

/// Every media session of the node, shared by the room API and the workers.
pub struct MediaSessions {
    /// Read-locked by workers' cache misses, write-locked by the control plane.
    registry: RwLock<Registry>,
    /// Where the monotonic milliseconds of ICE agents count from: the same origin as
    /// the workers' `Clock::mono_ms`.
    epoch: Epoch,
    /// ICE credentials, SSRCs, first sequence numbers: seeded by whoever made the
    /// registry. Taken alone, never while waiting for another lock.
    rng: Mutex<ChaCha12Rng>,
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
    /// The registry of a node whose clock starts at `epoch` and whose randomness
    /// comes from `seed` (the node draws it from the OS; tests fix it).
    pub fn new(
        epoch: Epoch,
        candidates: Vec<SocketAddr>,
        identity: Arc<DtlsIdentity>,
        metrics: SfuMetrics,
        seed: [u8; 32],
    ) -> MediaSessions {
        MediaSessions {
            registry: RwLock::new(Registry::default()),
            epoch,
            rng: Mutex::new(ChaCha12Rng::from_seed(seed)),
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

    /// Where the node's monotonic clock counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch.instant
    }

    fn rng(&self) -> MutexGuard<'_, ChaCha12Rng> {
        self.rng.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A random SSRC (also a random start for sequence numbers and timestamps).
    fn random_u32(&self) -> u32 {
        self.rng().next_u32()
    }

    /// Local ICE credentials no session of `reg` has.
    fn fresh_credentials(&self, reg: &Registry) -> IceCredentials {
        // 48 random bits: a collision is rare, and simply drawn again.
        let mut rng = self.rng();
        loop {
            let c = IceCredentials::generate(&mut *rng);
            if !reg.by_ufrag.contains_key(&c.ufrag) {
                return c;
            }
        }
    }

    /// A random `o=` session id below 2^63 (JSEP §5.2.1).
    fn session_id(&self) -> u64 {
        self.rng().next_u64() >> 1
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
    /// and returns our SDP answer. `now_ms` is the time on the shared clock.
    pub fn publish(
        &self,
        room: &str,
        participant: &str,
        offer: &PublishOffer,
        now_ms: u64,
    ) -> Result<String, PublishRefusal> {
        let key = (room.to_owned(), participant.to_owned());
        // Made before the registry lock: dimpl loads the key for every session.
        let dtls = DtlsSession::new(
            &self.identity,
            offer.fingerprint,
            PUBLISHER_SRTP,
            self.epoch.instant,
            now_ms,
        );
        let mut reg = self.write();
        if reg.by_participant.contains_key(&key) {
            return Err(PublishRefusal::AlreadyPublishing);
        }
        if reg.by_ufrag.len() >= MAX_SESSIONS {
            return Err(PublishRefusal::Full);
        }
        let local = self.fresh_credentials(&reg);
        let answer = offer.answer(&LocalTransport {
            session_id: self.session_id(),
            ice: &local,
            fingerprint: self.identity.fingerprint_hex(),
            candidates: &self.candidates,
        });
        let ufrag = local.ufrag.clone();
        let agent = IceAgent::new(local, Some(offer.ice.clone()), now_ms);
        let session = Arc::new(Session {
            room: room.to_owned(),
            participant: participant.to_owned(),
            closed: AtomicBool::new(false),
            link: None,
            owner: AtomicUsize::new(NO_OWNER),
            dtls_connected: AtomicBool::new(false),
            dtls_ended: AtomicBool::new(false),
            media: Mutex::new(SessionMedia {
                agent,
                dtls,
                media_peer: None,
                dtls_from: None,
                srtp: None,
                tracks: offer
                    .tracks()
                    .filter_map(|(mid, t)| published_media(mid, t))
                    .collect(),
                subscribe: None,
                twcc: twcc_extension(offer).map(|ext| Box::new(TransportFeedback::new(ext))),
                dtls_due: None,
                timer_due: None,
            }),
        });
        reg.by_ufrag.insert(ufrag.clone(), session);
        reg.by_participant.insert(key, ufrag);
        Ok(answer)
    }

    /// Brings the receiving sessions of `holders` (participants of `room` with an
    /// open event stream) in line with the tracks the other participants of the room
    /// publish: a receiving session is made for whoever has none, tracks are added and
    /// removed, forwarders set up and taken down. Returns the offers to send, as
    /// (participant, SDP). `now_ms` is the time on the shared clock.
    pub fn sync_room(
        &self,
        room: &str,
        holders: &[(String, Option<u16>)],
        now_ms: u64,
    ) -> Vec<(String, String)> {
        // Receiving sessions (made where missing) and the room's publishers.
        let (subscribers, publishers) = {
            let mut reg = self.write();
            let mut subscribers = Vec::new();
            for (p, max_height) in holders {
                let key = (room.to_owned(), p.clone());
                let existing = reg
                    .subscribers
                    .get(&key)
                    .and_then(|u| reg.by_ufrag.get(u))
                    .cloned();
                let s = match existing {
                    Some(s) => s,
                    None if reg.by_ufrag.len() >= MAX_SESSIONS => continue,
                    None => self.new_subscriber(&mut reg, key, now_ms),
                };
                subscribers.push((s, *max_height));
            }
            let publishers: Vec<Arc<Session>> = reg
                .by_participant
                .iter()
                .filter(|((r, _), _)| r == room)
                .filter_map(|(_, u)| reg.by_ufrag.get(u).cloned())
                .collect();
            (subscribers, publishers)
        };
        // What each publisher offers: (participant, mid, codec).
        let mut published: Vec<(String, String, CodecName)> = Vec::new();
        for p in &publishers {
            let mut media = p.media();
            for t in &mut media.tracks {
                t.outs.retain(|o| !o.subscriber.is_closed());
                published.push((p.participant.clone(), t.mid.clone(), t.codec));
            }
        }
        let mut offers = Vec::new();
        // Forwarders to make.
        let mut added: Vec<Added> = Vec::new();
        // (subscriber, sub mid): forwarders to end.
        let mut removed = Vec::new();
        for (s, max_height) in &subscribers {
            let mut media = s.media();
            let SessionMedia {
                agent, subscribe, ..
            } = &mut *media;
            let Some(sub) = subscribe.as_mut() else {
                continue;
            };
            sub.max_height = *max_height;
            // Gone: tracks no longer published, or now published by the subscriber.
            let mut i = 0;
            while i < sub.sources.len() {
                let (mid, from, from_mid) = &sub.sources[i];
                let live = from != &s.participant
                    && published.iter().any(|(p, m, _)| p == from && m == from_mid);
                if live {
                    i += 1;
                    continue;
                }
                // Its SRTP state goes with its publisher's `Downstream` (`sfu::egress`).
                sub.sdp.remove_track(mid);
                sub.feeds.retain(|f| f.mid != *mid);
                removed.push((s.clone(), mid.clone()));
                sub.sources.swap_remove(i);
            }
            for (from, from_mid, codec) in &published {
                if from == &s.participant
                    || sub
                        .sources
                        .iter()
                        .any(|(_, p, m)| p == from && m == from_mid)
                {
                    continue;
                }
                let ssrc = sub.fresh_ssrc();
                let rtx_ssrc =
                    (codec.kind() == super::sdp::MediaKind::Video).then(|| sub.fresh_ssrc());
                let track = OutTrack {
                    codec: *codec,
                    ssrc,
                    rtx_ssrc,
                    cname: "confnode".to_owned(),
                    stream_id: from.clone(),
                    track_id: format!("{from}-{from_mid}"),
                };
                let Ok(mid) = sub.sdp.add_track(track) else {
                    continue;
                };
                sub.sources
                    .push((mid.clone(), from.clone(), from_mid.clone()));
                let (pt, rtx_pt) = codec.offer_pts();
                added.push(Added {
                    from: from.clone(),
                    from_mid: from_mid.clone(),
                    subscriber: s.clone(),
                    mid,
                    ssrc,
                    rtx: rtx_ssrc.zip(rtx_pt),
                    pt,
                    max_height: *max_height,
                });
            }
            let offer = sub.sdp.offer(&LocalTransport {
                session_id: sub.session_id,
                ice: agent.local(),
                fingerprint: self.identity.fingerprint_hex(),
                candidates: &self.candidates,
            });
            if let Some(offer) = offer {
                if !sub.answered && sub.offered_ms.is_none() {
                    sub.offered_ms = Some(now_ms);
                }
                offers.push((s.participant.clone(), offer));
            }
        }
        for p in &publishers {
            let mut media = p.media();
            for (index, t) in media.tracks.iter_mut().enumerate() {
                t.outs.retain(|o| {
                    !removed
                        .iter()
                        .any(|(s, mid)| Arc::ptr_eq(s, &o.subscriber) && *mid == o.mid)
                });
                for a in &added {
                    if a.from != p.participant || a.from_mid != t.mid {
                        continue;
                    }
                    let forwarder = Forwarder::new(
                        &t.track,
                        ForwarderConfig {
                            ssrc: a.ssrc,
                            payload_type: Some(a.pt),
                            rtx: a
                                .rtx
                                .map(|(ssrc, payload_type)| RtxConfig { ssrc, payload_type }),
                            // Only video has layers to choose from.
                            max_height: a.max_height.filter(|_| t.codec != CodecName::Opus),
                            initial_seq: self.random_u32() as u16,
                            initial_timestamp: self.random_u32(),
                            extensions: receiver_extensions(&t.extensions, &a.mid),
                        },
                    );
                    // The receiver's lock under the publisher's, as forwarding takes them.
                    if let Some(sub) = a.subscriber.media().subscribe.as_mut() {
                        sub.feeds.push(Feed {
                            mid: a.mid.clone(),
                            ssrc: a.ssrc,
                            publisher: Arc::downgrade(p),
                            track: index,
                            rtx: true,
                        });
                    }
                    let Some(link) = a.subscriber.link.clone() else {
                        continue; // a receiving session always has its link
                    };
                    t.outs.push(Downstream {
                        subscriber: a.subscriber.clone(),
                        mid: a.mid.clone(),
                        forwarder,
                        egress: Egress::new(link),
                        paused: false,
                    });
                }
            }
        }
        offers
    }

    /// The receiver `participant` of `room` wants video of at most `max_height` lines:
    /// its forwarders switch layers at the next key frame.
    pub fn set_max_height(&self, room: &str, participant: &str, max_height: Option<u16>) {
        if let Some(s) = self.subscriber(room, participant)
            && let Some(sub) = s.media().subscribe.as_mut()
        {
            sub.max_height = max_height;
        }
        let publishers: Vec<Arc<Session>> = {
            let reg = self.read();
            reg.by_participant
                .iter()
                .filter(|((r, _), _)| r == room)
                .filter_map(|(_, u)| reg.by_ufrag.get(u).cloned())
                .collect()
        };
        for p in publishers {
            let mut media = p.media();
            for t in media
                .tracks
                .iter_mut()
                .filter(|t| t.codec != CodecName::Opus)
            {
                for o in &mut t.outs {
                    if o.subscriber.participant == participant {
                        o.forwarder.set_max_height(max_height);
                    }
                }
            }
        }
    }

    /// A receiving session for `key`, registered (the registry is write-locked).
    fn new_subscriber(
        &self,
        reg: &mut Registry,
        key: (String, String),
        now_ms: u64,
    ) -> Arc<Session> {
        let local = self.fresh_credentials(reg);
        let ufrag = local.ufrag.clone();
        // The client's fingerprint comes with its answer; until then nothing it sends
        // can complete a handshake.
        let dtls = DtlsSession::new(
            &self.identity,
            Fingerprint([0; 32]),
            SUBSCRIBER_SRTP,
            self.epoch.instant,
            now_ms,
        );
        let session = Arc::new(Session {
            room: key.0.clone(),
            participant: key.1.clone(),
            closed: AtomicBool::new(false),
            link: Some(Arc::new(ReceiverLink::new())),
            owner: AtomicUsize::new(NO_OWNER),
            dtls_connected: AtomicBool::new(false),
            dtls_ended: AtomicBool::new(false),
            media: Mutex::new(SessionMedia {
                agent: IceAgent::new(local, None, now_ms),
                dtls,
                media_peer: None,
                dtls_from: None,
                srtp: None,
                tracks: Vec::new(),
                twcc: None,
                dtls_due: None,
                timer_due: None,
                subscribe: Some(Box::new(Subscription {
                    sdp: SubscribeSession::new(),
                    session_id: self.session_id(),
                    sources: Vec::new(),
                    feeds: Vec::new(),
                    answered: false,
                    offered_ms: None,
                    next_ssrc: self.random_u32(),
                    max_height: None,
                })),
            }),
        });
        reg.by_ufrag.insert(ufrag.clone(), session.clone());
        reg.subscribers.insert(key, ufrag);
        session
    }

    /// The longest answer the receiving session of `participant` accepts now.
    pub fn max_answer_len(&self, room: &str, participant: &str) -> Option<usize> {
        let s = self.subscriber(room, participant)?;
        let media = s.media();
        media.subscribe.as_ref().map(|sub| sub.sdp.max_answer_len())
    }

    fn subscriber(&self, room: &str, participant: &str) -> Option<Arc<Session>> {
        let reg = self.read();
        let ufrag = reg
            .subscribers
            .get(&(room.to_owned(), participant.to_owned()))?;
        reg.by_ufrag.get(ufrag).cloned()
    }

    /// Applies the answer of `participant`'s receiving peer connection to our last
    /// offer. The first answer sets the client's ICE credentials and the fingerprint
    /// its DTLS certificate must have. `now_ms` is the time on the shared clock.
    pub fn subscribe_answer(
        &self,
        room: &str,
        participant: &str,
        raw: &[u8],
        now_ms: u64,
    ) -> Result<(), SdpError> {
        let s = self
            .subscriber(room, participant)
            .ok_or(SdpError::NoPendingOffer)?;
        let now = now_ms;
        let mut guard = s.media();
        let media = &mut *guard;
        let sub = media.subscribe.as_mut().ok_or(SdpError::NoPendingOffer)?;
        let answer = sub.sdp.apply_answer(raw)?;
        // Which streams the receiver takes now, set on the publishers' side below.
        let mut wanted = Vec::with_capacity(sub.feeds.len());
        for feed in &mut sub.feeds {
            if answer.without_rtx.contains(&feed.mid) {
                feed.rtx = false;
            }
            let refused =
                answer.rejected.contains(&feed.mid) || answer.inactive.contains(&feed.mid);
            wanted.push((feed.publisher.clone(), feed.track, feed.ssrc, !refused));
        }
        if !sub.answered {
            sub.answered = true;
            // The client may have checked before its answer reached us (Firefox does):
            // the addresses it validated stay, so its DTLS from them is taken at once,
            // and consent counts from the answer.
            media.agent.set_remote(answer.ice);
            media.agent.restart_consent(now);
            media.dtls = DtlsSession::new(
                &self.identity,
                answer.fingerprint,
                SUBSCRIBER_SRTP,
                self.epoch.instant,
                now,
            );
        } else if media.agent.remote() != Some(&answer.ice) {
            // An ICE restart.
            media.agent.set_remote(answer.ice);
        }
        // The publishers' locks are taken with the receiver's let go (forwarding takes
        // them the other way round).
        drop(guard);
        for (publisher, track, ssrc, wanted) in wanted {
            let Some(p) = publisher.upgrade() else {
                continue;
            };
            let mut pm = p.media();
            let Some(t) = pm.tracks.get_mut(track) else {
                continue;
            };
            for o in &mut t.outs {
                if Arc::ptr_eq(&o.subscriber, &s) && o.forwarder.ssrc() == ssrc {
                    o.paused = !wanted;
                }
            }
        }
        Ok(())
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
        if let Some(ufrag) = reg.subscribers.remove(&key)
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
            subscribers,
        } = &mut *reg;
        let metrics = &self.metrics;
        by_ufrag.retain(|_, s| {
            let kept = keep(&s.room, &s.participant);
            if !kept {
                s.close(metrics);
                let key = (s.room.clone(), s.participant.clone());
                by_participant.remove(&key);
                subscribers.remove(&key);
            }
            kept
        });
    }

    /// Every (room, participant) with a session, for the control plane to compare with
    /// its rooms.
    pub fn participants(&self) -> Vec<(String, String)> {
        let reg = self.read();
        let mut all: Vec<(String, String)> = reg.by_participant.keys().cloned().collect();
        all.extend(
            reg.subscribers
                .keys()
                .filter(|k| !reg.by_participant.contains_key(*k))
                .cloned(),
        );
        all
    }

    /// The speech each publisher's audio carried since the last call, by room:
    /// (room, participant, loudness) for every publisher with an audio level to read.
    pub fn take_loudness(&self) -> Vec<(String, String, Loudness)> {
        let publishers: Vec<Arc<Session>> = {
            let reg = self.read();
            reg.by_participant
                .values()
                .filter_map(|u| reg.by_ufrag.get(u).cloned())
                .collect()
        };
        let mut heard = Vec::new();
        for p in publishers {
            let mut media = p.media();
            let mut sum = Loudness::default();
            let mut any = false;
            for t in media.tracks.iter_mut().filter(|t| t.audio_level.is_some()) {
                let l = t.loudness.take();
                sum.packets = sum.packets.saturating_add(l.packets);
                sum.speech = sum.speech.saturating_add(l.speech);
                any = true;
            }
            if any {
                heard.push((p.room.clone(), p.participant.clone(), sum));
            }
        }
        heard
    }

    /// The (room, participant) of every session whose consent ran out by `now_ms`
    /// (RFC 7675: no valid check for 30 s), whose first offer went unanswered for
    /// [`ANSWER_DEADLINE_MS`], or whose DTLS failed or was closed by the peer (no media
    /// can flow any more). They stay registered; the caller makes the
    /// participant leave and then removes them.
    pub fn consent_expired(&self, now_ms: u64) -> Vec<(String, String)> {
        let reg = self.read();
        reg.by_ufrag
            .values()
            .filter(|s| {
                if s.is_dtls_ended() {
                    return true;
                }
                let media = s.media();
                // A receiving session's consent runs from its answer; before that, the
                // answer's deadline from the offer.
                match media.subscribe.as_ref() {
                    Some(sub) if !sub.answered => sub
                        .offered_ms
                        .is_some_and(|t| now_ms >= t.saturating_add(ANSWER_DEADLINE_MS)),
                    _ => media.agent.consent_expired(now_ms),
                }
            })
            .map(|s| (s.room.clone(), s.participant.clone()))
            .collect()
    }
}

/// A forwarder [`MediaSessions::sync_room`] sets up.
struct Added {
    /// The publisher and its mid of the track.
    from: String,
    from_mid: String,
    subscriber: Arc<Session>,
    /// The receiver's mid, SSRC, RTX (SSRC, payload type) and payload type.
    mid: String,
    ssrc: u32,
    rtx: Option<(u32, u8)>,
    pt: u8,
    max_height: Option<u16>,
}

/// The data plane's view of a track the publisher's offer sends; `None` for one the
/// SFU cannot forward.
fn published_media(mid: &str, t: &PublishedTrack) -> Option<PublishedMedia> {
    let codec = t.codecs.first()?;
    let (track_codec, clock_rate) = match codec.name {
        CodecName::Opus => (Codec::Audio, 48_000),
        CodecName::Vp8 => (Codec::Vp8, 90_000),
        CodecName::H264 => (Codec::H264, 90_000),
    };
    let video = codec.name.kind() == super::sdp::MediaKind::Video;
    let layers = if t.rids.is_empty() {
        let ssrc = t
            .ssrcs
            .iter()
            .copied()
            .find(|s| !t.rtx_ssrcs.iter().any(|&(_, rtx)| rtx == *s));
        let rtx_ssrc = ssrc.and_then(|s| {
            t.rtx_ssrcs
                .iter()
                .find(|&&(primary, _)| primary == s)
                .map(|&(_, rtx)| rtx)
        });
        vec![LayerConfig {
            rid: None,
            ssrc,
            rtx_ssrc,
            height: 0,
        }]
    } else {
        t.rids
            .iter()
            .map(|rid| LayerConfig {
                rid: Some(rid.clone()),
                ..LayerConfig::default()
            })
            .collect()
    };
    let track = Track::new(TrackConfig {
        codec: track_codec,
        clock_rate,
        payload_type: codec.pt,
        layers,
        rid_extension: t.extension_id(super::sdp::Extension::Rid),
        repaired_rid_extension: t.extension_id(super::sdp::Extension::RepairedRid),
        cache_packets: if video { VIDEO_CACHE_PACKETS } else { 0 },
        // Losses on the way from the publisher are asked for again where it takes NACKs.
        nack: video && codec.feedback.contains(&Feedback::Nack),
    });
    Some(PublishedMedia {
        mid: mid.to_owned(),
        codec: codec.name,
        track,
        extensions: t.extensions.clone(),
        outs: Vec::new(),
        audio_level: (!video)
            .then(|| t.extension_id(super::sdp::Extension::AudioLevel))
            .flatten(),
        loudness: Loudness::default(),
        next_report: 0,
        next_nack: 0,
    })
}

/// How a receiver gets the header extensions of a publisher's packets: audio level and
/// abs-send-time under the ids of our offers, the mid with the receiver's value. The
/// transport-wide sequence number is blanked: its numbers belong to the publisher's
/// transport, not the receiver's.
fn receiver_extensions(publisher: &[(Extension, u8)], mid: &str) -> ExtensionMap {
    let mut map = ExtensionMap::default();
    let ours = |ext: Extension| {
        SUBSCRIBE_EXTENSIONS
            .iter()
            .find(|(e, _)| *e == ext)
            .map(|&(_, id)| id)
    };
    for &(ext, from) in publisher {
        match (ext, ours(ext)) {
            (Extension::Mid, Some(to)) => {
                map.set_mid(from, to, mid.as_bytes());
            }
            (Extension::AudioLevel | Extension::AbsSendTime, Some(to)) => map.map(from, to),
            _ => {}
        }
    }
    map
}

/// The publisher's id of the transport-wide sequence number extension, where it offered
/// transport-cc feedback (one id for the whole BUNDLE).
fn twcc_extension(offer: &PublishOffer) -> Option<u8> {
    offer.tracks().find_map(|(_, t)| {
        let fb = t.codecs.first()?.feedback.contains(&Feedback::TransportCc);
        fb.then(|| t.extension_id(super::sdp::Extension::TransportCc))
            .flatten()
    })
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
    /// The sessions whose timers this worker drives (DTLS handshakes it answered,
    /// publishers whose media it received), earliest first. An entry whose time is not
    /// its session's `timer_due` any more was superseded by an earlier one and is
    /// skipped.
    timers: BinaryHeap<Timer>,
    /// Where DTLS records are written before they are sent.
    out: Box<[u8]>,
    /// Where forwarded RTP and our RTCP are rewritten and encrypted before they are sent.
    fwd: Box<[u8]>,
    /// Packets forwarded and keyframe requests sent since [`SessionCache::take_counts`].
    counts: ForwardCounts,
}

/// What forwarding did, for the worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardCounts {
    pub forwarded: u64,
    pub keyframe_requests: u64,
    /// Packets sent again to receivers that NACKed them.
    pub retransmitted: u64,
    /// NACKed packets not sent again: no longer held, asked for again within a round
    /// trip, or beyond the receiver's retransmission budget.
    pub resend_not_held: u64,
    pub resend_too_soon: u64,
    pub resend_over_budget: u64,
    /// Reports, NACKs and transport-cc feedback sent.
    pub rtcp_sent: u64,
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
            timers: BinaryHeap::with_capacity(TIMERS_RESERVED),
            out: vec![0u8; DTLS_MTU].into_boxed_slice(),
            fwd: vec![0u8; FORWARD_BUFFER].into_boxed_slice(),
            counts: ForwardCounts::default(),
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
    /// A check that nominates `src` (USE-CANDIDATE) makes it where the session's media
    /// goes, through `listener`.
    pub fn answer_check(
        &mut self,
        buf: &mut [u8],
        len: usize,
        src: SocketAddr,
        listener: usize,
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
        let verdict = {
            let mut media = session.media();
            let verdict = media.agent.handle_binding(buf, len, src, now_ms);
            if let IceVerdict::Success {
                newly_selected: true,
                ..
            } = verdict
            {
                session.set_media_peer(&mut media, (src, listener));
            }
            verdict
        };
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
    ///
    /// `now_us` is when the datagram arrived (µs on the shared clock): the kernel's
    /// receive time where the data plane has it, which transport-cc feedback reports.
    pub fn handle_media(
        &mut self,
        pkt: &mut [u8],
        src: SocketAddr,
        listener: usize,
        now_us: u64,
        send: &mut impl FnMut(&[u8], SocketAddr, usize),
    ) -> MediaVerdict {
        let now_ms = now_us / 1000;
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
                // A receiving peer connection may start DTLS before its answer (with
                // the fingerprint its certificate must have) reached us: its records
                // are dropped until then, and it repeats them.
                if media.subscribe.as_ref().is_some_and(|sub| !sub.answered) {
                    return MediaVerdict::Dropped(MediaDrop::Dtls);
                }
                media.dtls_from = Some((src, listener));
                let fed = media.dtls.handle_datagram(pkt, now_ms);
                let wait = drain(
                    &mut self.out,
                    self.sessions.metrics(),
                    &session,
                    &mut media,
                    send,
                );
                media.dtls_due = dtls_due(&media, wait, now_us);
                self.arm(&session, &mut media, now_us);
                drop(media);
                match fed {
                    Ok(()) => MediaVerdict::Dtls,
                    Err(_) => MediaVerdict::Dropped(MediaDrop::Dtls),
                }
            }
            Some(128..=191) => {
                let now = now_us;
                let m = &mut *media;
                let Some(srtp) = m.srtp.as_mut() else {
                    return MediaVerdict::Dropped(MediaDrop::NoKeys);
                };
                // RFC 5761 §4: RTCP packet types 192..=223 sit where RTP has M and PT.
                if pkt.get(1).is_some_and(|b| (192..=223).contains(b)) {
                    let n = match srtp.inbound.unprotect_rtcp(pkt) {
                        Ok(n) => n,
                        Err(e) => return MediaVerdict::Dropped(srtp_drop(e)),
                    };
                    match m.subscribe.as_deref() {
                        Some(sub) => {
                            let requests = feedback::receiver_requests(sub, &pkt[..n]);
                            drop(media);
                            if !requests.is_empty() {
                                feedback::answer_receiver(
                                    &requests,
                                    &session,
                                    &mut self.fwd,
                                    &mut self.counts,
                                    now,
                                    send,
                                );
                            }
                        }
                        None => feedback::on_publisher_rtcp(&mut m.tracks, &pkt[..n], now),
                    }
                    return MediaVerdict::Rtcp(n);
                }
                let n = match srtp.inbound.unprotect_rtp(pkt) {
                    Ok(n) => n,
                    Err(e) => return MediaVerdict::Dropped(srtp_drop(e)),
                };
                // Read once here for the transport-wide sequence number and the track.
                let Some(header) = pkt.get(..n).and_then(RtpHeader::parse) else {
                    return MediaVerdict::Rtp(n);
                };
                let publisher = (src, listener);
                if !m.tracks.is_empty() {
                    forward_rtp(
                        &mut self.fwd,
                        &mut self.counts,
                        m,
                        pkt,
                        (n, header),
                        publisher,
                        (now, self.sessions.epoch.unix_us),
                        send,
                    );
                }
                if let Some(twcc) = m.twcc.as_mut() {
                    twcc.on_rtp(&pkt[..n], &header, now);
                    feedback::send_transport_feedback(
                        twcc,
                        &mut self.fwd,
                        &mut self.counts,
                        &mut m.srtp,
                        publisher,
                        now,
                        send,
                    );
                }
                // What the packet made due later (feedback, a NACK repeat, the next
                // report) is sent by the timer if no packet comes first.
                self.arm(&session, m, now);
                MediaVerdict::Rtp(n)
            }
            _ => MediaVerdict::Dropped(MediaDrop::Malformed),
        }
    }

    /// Hands this worker the timer of `session` (whose `media` the caller holds) when
    /// it has one earlier than the one a worker already holds. Never due before
    /// `now + 1 ms`, so work that cannot be done yet (no keys, nowhere to send) does
    /// not spin the worker.
    fn arm(&mut self, session: &Arc<Session>, media: &mut SessionMedia, now: u64) {
        let Some(due) = media.next_timeout() else {
            return;
        };
        let due = due.max(now.saturating_add(MIN_TIMER_US));
        if media.timer_due.is_some_and(|held| held <= due) {
            return;
        }
        media.timer_due = Some(due);
        self.timers.push(Timer {
            due,
            session: session.clone(),
        });
    }

    /// When [`SessionCache::handle_timeout`] next has work (µs on the shared clock).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|t| t.due)
    }

    /// Does the timed work due by `now` (µs on the shared clock): DTLS flights resent
    /// (a handshake past its deadline fails); and for publishers, receiver reports and
    /// NACKs to them, sender reports to their receivers, held-back keyframe requests
    /// and transport-cc feedback, also while no packet arrives. What it sends goes out
    /// through `send`.
    pub fn handle_timeout(&mut self, now: u64, send: &mut impl FnMut(&[u8], SocketAddr, usize)) {
        while self.timers.peek().is_some_and(|t| t.due <= now) {
            let Some(Timer { due, session }) = self.timers.pop() else {
                break;
            };
            if session.is_closed() {
                continue;
            }
            let mut guard = session.media();
            let media = &mut *guard;
            if media.timer_due != Some(due) {
                continue; // superseded by an earlier entry
            }
            media.timer_due = None;
            if media.dtls_due.is_some_and(|d| d <= now) {
                let _ = media.dtls.handle_timeout(now / 1000);
                let wait = drain(
                    &mut self.out,
                    self.sessions.metrics(),
                    &session,
                    media,
                    send,
                );
                media.dtls_due = dtls_due(media, wait, now);
            }
            if let (Some(publisher), true) = (media.media_peer, media.srtp.is_some()) {
                let SessionMedia {
                    tracks, srtp, twcc, ..
                } = media;
                let unix_at_epoch_us = self.sessions.epoch.unix_us;
                for t in tracks.iter_mut() {
                    while let Some(req) = t.track.poll_keyframe(now) {
                        feedback::send_pli(&mut self.fwd, srtp, req.ssrc, publisher, send);
                        self.counts.keyframe_requests += 1;
                    }
                    feedback::send_track_due(
                        &mut self.fwd,
                        &mut self.counts,
                        t,
                        srtp,
                        publisher,
                        (now, unix_at_epoch_us),
                        send,
                    );
                }
                if let Some(twcc) = twcc.as_mut() {
                    feedback::send_transport_feedback(
                        twcc,
                        &mut self.fwd,
                        &mut self.counts,
                        srtp,
                        publisher,
                        now,
                        send,
                    );
                }
            }
            self.arm(&session, media, now);
        }
    }

    /// What forwarding did since the last call.
    pub fn take_counts(&mut self) -> ForwardCounts {
        std::mem::take(&mut self.counts)
    }

    /// Forgets closed sessions (run now and then, off the per-packet path).
    pub fn sweep(&mut self) {
        self.cache.retain(|_, s| !s.is_closed());
        self.by_addr.retain(|_, s| !s.is_closed());
        self.timers.retain(|t| !t.session.is_closed());
    }
}

/// Forwards RTP just unprotected from a publisher, `pkt[..len]` with its `header`
/// already read, to every receiver of its track: the track reads it once, then each receiver's forwarder rewrites a copy in
/// `out`, which is encrypted with the receiver's keys and sent where its DTLS came
/// from. Keyframe requests that result go back to the publisher (`publisher`: its
/// address and our listener) as SRTCP PLIs. `now` is in microseconds on the shared
/// clock, which started at `unix_at_epoch_us` on the wall clock.
///
/// The receiver's session lock is taken under the publisher's: receiving sessions never
/// forward, so they never take another session's lock while holding their own.
#[allow(clippy::too_many_arguments)]
fn forward_rtp(
    out: &mut [u8],
    counts: &mut ForwardCounts,
    media: &mut SessionMedia,
    pkt: &mut [u8],
    (len, header): (usize, RtpHeader),
    publisher: (SocketAddr, usize),
    (now, unix_at_epoch_us): (u64, u64),
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) {
    let ssrc = header.ssrc;
    let SessionMedia { tracks, srtp, .. } = media;
    // The track whose layer has the SSRC; else the first that takes the packet (a
    // layer that learns its SSRC from the rid or from its first packet).
    let known = tracks.iter().position(|t| t.track.layer_of(ssrc).is_some());
    let (index, incoming) = match known {
        Some(i) => match tracks[i].track.receive_parsed(pkt, len, header, now) {
            Ok(incoming) => (i, incoming),
            Err(_) => return,
        },
        None => {
            let mut found = None;
            for (i, t) in tracks.iter_mut().enumerate() {
                match t.track.receive_parsed(pkt, len, header, now) {
                    Ok(incoming) => {
                        found = Some((i, incoming));
                        break;
                    }
                    Err(Dropped::UnknownSsrc | Dropped::PayloadType) => {}
                    Err(_) => return,
                }
            }
            match found {
                Some(f) => f,
                None => return,
            }
        }
    };
    let t = &mut tracks[index];
    if let Some(id) = t.audio_level
        && let Some((voice, level)) = header
            .extension_value(pkt, id)
            .and_then(super::rtp::read_audio_level)
    {
        t.loudness.add(voice, level);
    }
    let n = incoming.len;
    if n + MAX_RTP_OVERHEAD > out.len() || n > pkt.len() {
        return;
    }
    for o in &mut t.outs {
        // Nothing is forwarded before the receiver can decrypt it, so that its stream
        // starts at a keyframe it will see.
        if o.paused || o.subscriber.is_closed() || !o.subscriber.is_dtls_connected() {
            continue;
        }
        out[..n].copy_from_slice(&pkt[..n]);
        if let Some(m) = o.forwarder.forward(&mut out[..n], &incoming, now)
            && o.egress.send_rtp(out, m, send)
        {
            counts.forwarded += 1;
        }
        while let Some(Action::NeedKeyframe { layer, .. }) = o.forwarder.poll_action(now) {
            if let Some(req) = t.track.request_keyframe(layer, now) {
                feedback::send_pli(out, srtp, req.ssrc, publisher, send);
                counts.keyframe_requests += 1;
            }
        }
    }
    while let Some(req) = t.track.poll_keyframe(now) {
        feedback::send_pli(out, srtp, req.ssrc, publisher, send);
        counts.keyframe_requests += 1;
    }
    feedback::send_track_due(
        out,
        counts,
        t,
        srtp,
        publisher,
        (now, unix_at_epoch_us),
        send,
    );
}

fn is_handshaking(media: &SessionMedia) -> bool {
    *media.dtls.state() == super::dtls::DtlsState::Handshaking
}

/// When the DTLS timer is due (µs) after the endpoint asked to be woken at `wait` (ms):
/// only while handshaking (a connected endpoint resends its last flight when the
/// client repeats its own). Never at once, which would spin the worker.
fn dtls_due(media: &SessionMedia, wait: Option<u64>, now: u64) -> Option<u64> {
    if !is_handshaking(media) {
        return None;
    }
    wait.map(|ms| {
        ms.saturating_mul(1000)
            .max(now.saturating_add(MIN_TIMER_US))
    })
}

/// A session's media state under its lock (see [`Session::media`]).
pub struct MediaGuard<'a> {
    guard: MutexGuard<'a, SessionMedia>,
    _order: LockOrder,
}

impl std::ops::Deref for MediaGuard<'_> {
    type Target = SessionMedia;
    fn deref(&self) -> &SessionMedia {
        &self.guard
    }
}

impl std::ops::DerefMut for MediaGuard<'_> {
    fn deref_mut(&mut self) -> &mut SessionMedia {
        &mut self.guard
    }
}

/// The session locks a thread holds, for the order check of debug builds: a
/// publisher's lock may be followed by one receiver's (the control plane wiring
/// forwarders), nothing else nests. Forwarding takes none of a receiver's.
struct LockOrder {
    #[cfg(debug_assertions)]
    receiver: bool,
}

#[cfg(debug_assertions)]
thread_local! {
    /// (publisher locks held, receiver locks held) by this thread.
    static HELD: std::cell::Cell<(u8, u8)> = const { std::cell::Cell::new((0, 0)) };
}

impl LockOrder {
    #[cfg(debug_assertions)]
    fn take(receiver: bool) -> LockOrder {
        HELD.with(|held| {
            let (publishers, receivers) = held.get();
            assert!(
                receivers == 0 && (receiver || publishers == 0),
                "session lock order: a {} lock taken while holding {publishers} publisher \
                 and {receivers} receiver lock(s)",
                if receiver { "receiver" } else { "publisher" }
            );
            held.set(if receiver {
                (publishers, receivers + 1)
            } else {
                (publishers + 1, receivers)
            });
        });
        LockOrder { receiver }
    }

    #[cfg(not(debug_assertions))]
    fn take(_receiver: bool) -> LockOrder {
        LockOrder {}
    }
}

#[cfg(debug_assertions)]
impl Drop for LockOrder {
    fn drop(&mut self) {
        HELD.with(|held| {
            let (publishers, receivers) = held.get();
            held.set(if self.receiver {
                (publishers, receivers.saturating_sub(1))
            } else {
                (publishers.saturating_sub(1), receivers)
            });
        });
    }
}

/// One session's place in a worker's timer queue: the earliest due on top.
struct Timer {
    due: u64,
    session: Arc<Session>,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Timer) -> bool {
        self.due == other.due
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Timer) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Timer) -> std::cmp::Ordering {
        other.due.cmp(&self.due) // reversed: BinaryHeap is a max-heap
    }
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
                if let (Some((to, via)), Some(record)) = (media.dtls_from, out.get(..n)) {
                    send(record, to, via);
                }
            }
            DtlsOutput::Connected(pair) => {
                tracing::debug!(
                    room = %session.room,
                    profile = %pair.profile,
                    "media session: DTLS connected"
                );
                if let Some(link) = &session.link {
                    link.set_key(pair.outbound_key.clone());
                }
                media.srtp = Some(pair);
                if let (None, Some(from)) = (media.media_peer, media.dtls_from) {
                    session.set_media_peer(media, from);
                }
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
                if e == DtlsError::Panicked {
                    metrics.dtls_panics.inc();
                }
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
            crate::node::clock_epoch(),
            vec!["192.0.2.1:3478".parse().unwrap()],
            Arc::new(crate::node::dtls_identity().unwrap()),
            SfuMetrics::default(),
            [7; 32],
        ))
    }

    /// Now on the sessions' clock, in ms and in µs (the tests run on real time).
    fn ms(s: &MediaSessions) -> u64 {
        s.epoch().elapsed().as_millis() as u64
    }

    fn us(s: &MediaSessions) -> u64 {
        s.epoch().elapsed().as_micros() as u64
    }

    fn ice_line<'a>(sdp: &'a str, name: &str) -> &'a str {
        sdp.lines()
            .find_map(|l| l.strip_prefix(&format!("a={name}:")))
            .unwrap()
    }

    fn check(buf: &mut [u8], ufrag: &str, pwd: &str) -> usize {
        check_nominating(buf, ufrag, pwd, true)
    }

    fn check_nominating(buf: &mut [u8], ufrag: &str, pwd: &str, nominate: bool) -> usize {
        let mut w = Writer::new(buf, method::BINDING, Class::Request, &[9; 12]).unwrap();
        w.add(attr::USERNAME, format!("{ufrag}:Clnt").as_bytes())
            .unwrap();
        w.add(attr::ICE_CONTROLLING, &[1; 8]).unwrap();
        if nominate {
            w.add(attr::USE_CANDIDATE, &[]).unwrap();
        }
        w.add_integrity(pwd.as_bytes()).unwrap();
        w.add_fingerprint().unwrap();
        w.finish()
    }

    #[test]
    fn publish_registers_once_and_checks_are_answered() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        let answer = s.publish("room", "p1", &offer, ms(&s)).unwrap();
        assert!(answer.contains("a=ice-lite"));
        assert!(answer.contains("a=setup:passive"));
        let fingerprint = s.identity().fingerprint_hex().to_owned();
        assert!(answer.contains(&format!("a=fingerprint:sha-256 {fingerprint}")));
        assert!(answer.contains("192.0.2.1 3478 typ host"), "{answer}");
        assert_eq!(
            s.publish("room", "p1", &offer, ms(&s)),
            Err(PublishRefusal::AlreadyPublishing)
        );
        let ufrag = ice_line(&answer, "ice-ufrag").to_owned();
        let pwd = ice_line(&answer, "ice-pwd").to_owned();

        let mut cache = SessionCache::new(3, s.clone());
        let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let mut buf = [0u8; 1500];
        let n = check(&mut buf, &ufrag, &pwd);
        let CheckVerdict::Reply(len) = cache.answer_check(&mut buf, n, src, 0, ms(&s)) else {
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
            cache.answer_check(&mut buf, n, src, 0, 0),
            CheckVerdict::NotOurs
        );

        // Removal closes the session; the cache forgets it.
        s.remove_participant("room", "p1");
        assert!(session.is_closed());
        assert!(s.is_empty());
        let n = check(&mut buf, &ufrag, &pwd);
        assert_eq!(
            cache.answer_check(&mut buf, n, src, 0, 0),
            CheckVerdict::NotOurs
        );
        assert!(s.publish("room", "p1", &offer, ms(&s)).is_ok());
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
        let answer = s.publish("room", "p1", &offer, ms(&s)).unwrap();
        let (ufrag, pwd) = (ice_line(&answer, "ice-ufrag"), ice_line(&answer, "ice-pwd"));
        let session = s.lookup(ufrag.as_bytes()).unwrap();
        let mut cache = SessionCache::new(0, s.clone());
        let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.3:5000".parse().unwrap();
        let sent: RefCell<Vec<(Vec<u8>, SocketAddr, usize)>> = RefCell::default();
        let mut send =
            |d: &[u8], to: SocketAddr, via: usize| sent.borrow_mut().push((d.to_vec(), to, via));
        let now = ms(&s);

        // Before any check, nothing is accepted from the address.
        let mut rtp = [
            0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4, 0, 0, 0, 0,
        ];
        assert_eq!(
            cache.handle_media(&mut rtp, src, 0, now * 1000, &mut send),
            MediaVerdict::Dropped(MediaDrop::Unvalidated)
        );
        let mut buf = [0u8; 1500];
        let n = check(&mut buf, ufrag, pwd);
        assert!(matches!(
            cache.answer_check(&mut buf, n, src, 0, now),
            CheckVerdict::Reply(_)
        ));
        // Validated now, but no keys yet; another address still refused.
        assert_eq!(
            cache.handle_media(&mut rtp, src, 0, now * 1000, &mut send),
            MediaVerdict::Dropped(MediaDrop::NoKeys)
        );
        let mut hello = [22u8, 0xFE, 0xFD, 0, 0];
        assert_eq!(
            cache.handle_media(&mut hello, stranger, 0, now * 1000, &mut send),
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
                    cache.handle_media(&mut record, src, 1, us(&s), &mut send),
                    MediaVerdict::Dtls
                );
            }
            if !retransmitted && !sent.borrow().is_empty() {
                let due = cache.poll_timeout().expect("a handshake timer");
                let before = sent.borrow().len();
                cache.handle_timeout(due, &mut send);
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
        assert_eq!(
            session.media().dtls_due,
            None,
            "no DTLS timer once connected"
        );

        // Review finding: media went wherever the last DTLS-looking datagram from any
        // validated address came from. It goes where ICE nominated, and moves only
        // with a later nomination.
        assert_eq!(session.media().media_peer, Some((src, 0)));
        let other: SocketAddr = "198.51.100.2:6000".parse().unwrap();
        let n = check_nominating(&mut buf, ufrag, pwd, false);
        assert!(matches!(
            cache.answer_check(&mut buf, n, other, 2, now),
            CheckVerdict::Reply(_)
        ));
        let mut record = [23u8, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 7, 0, 32];
        let _ = cache.handle_media(&mut record, other, 2, us(&s), &mut send);
        assert_eq!(session.media().media_peer, Some((src, 0)));
        let n = check(&mut buf, ufrag, pwd);
        assert!(matches!(
            cache.answer_check(&mut buf, n, other, 2, now),
            CheckVerdict::Reply(_)
        ));
        assert_eq!(session.media().media_peer, Some((other, 2)));
        sent.borrow_mut().clear();

        // SRTP and SRTCP from the client are unprotected in place.
        let (profile, material) = keys.unwrap();
        let (client_write, _) = split_keying_material(profile, &material).unwrap();
        let mut out = SrtpContext::new(&client_write, 4).unwrap();
        let mut slot = [0u8; 64];
        slot[..20].copy_from_slice(&rtp);
        let n = out.protect_rtp(&mut slot, 20).unwrap();
        let protected = slot[..n].to_vec();
        assert_eq!(
            cache.handle_media(&mut slot[..n], src, 1, us(&s), &mut send),
            MediaVerdict::Rtp(20)
        );
        assert_eq!(slot[..20], rtp);
        // The track's first packet brings our first receiver report to the publisher.
        let reports: Vec<_> = sent.borrow_mut().drain(..).collect();
        assert_eq!(reports.len(), 1);
        assert!(
            reports
                .iter()
                .all(|(p, to, via)| (*to, *via) == (src, 1) && p[1] == crate::sfu::rtcp::RR)
        );
        let mut again = protected.clone();
        assert_eq!(
            cache.handle_media(&mut again, src, 1, us(&s), &mut send),
            MediaVerdict::Dropped(MediaDrop::Replayed)
        );
        let mut forged = protected;
        forged[3] = 2;
        assert_eq!(
            cache.handle_media(&mut forged, src, 1, us(&s), &mut send),
            MediaVerdict::Dropped(MediaDrop::AuthFailed)
        );
        // An empty receiver report.
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
        slot[..8].copy_from_slice(&rr);
        let n = out.protect_rtcp(&mut slot, 8).unwrap();
        assert_eq!(
            cache.handle_media(&mut slot[..n], src, 1, us(&s), &mut send),
            MediaVerdict::Rtcp(8)
        );
        assert_eq!(slot[..8], rr);
        assert!(sent.borrow().is_empty());

        // The track goes silent (muted): the worker's timer still sends a receiver
        // report each second, where ICE nominated.
        let start = us(&s);
        assert!(cache.poll_timeout().is_some_and(|t| t <= start + 1_000_000));
        for second in 1..=3 {
            cache.handle_timeout(start + second * 1_000_000 + 1_000, &mut send);
        }
        let reports: Vec<_> = sent.borrow_mut().drain(..).collect();
        assert_eq!(reports.len(), 3, "one report a second");
        let peer = session.media().media_peer;
        assert!(
            reports
                .iter()
                .all(|(p, to, via)| Some((*to, *via)) == peer && p[1] == crate::sfu::rtcp::RR)
        );
        assert!(cache.poll_timeout().is_some_and(|t| t > start + 3_000_000));

        // Removal takes the session out of the gauge; its media is refused.
        s.remove_participant("room", "p1");
        assert_eq!(s.metrics().dtls_connected.get(), 0);
        slot[..20].copy_from_slice(&rtp);
        slot[3] = 7;
        let n = out.protect_rtp(&mut slot, 20).unwrap();
        assert_eq!(
            cache.handle_media(&mut slot[..n], src, 1, us(&s), &mut send),
            MediaVerdict::Dropped(MediaDrop::Unvalidated)
        );
        cache.sweep();
        assert!(cache.by_addr.is_empty());
    }

    #[test]
    fn a_failed_handshake_ends_the_session() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        let answer = s.publish("r", "a", &offer, ms(&s)).unwrap();
        let (ufrag, pwd) = (ice_line(&answer, "ice-ufrag"), ice_line(&answer, "ice-pwd"));
        let mut cache = SessionCache::new(0, s.clone());
        let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let mut buf = [0u8; 1500];
        let n = check(&mut buf, ufrag, pwd);
        cache.answer_check(&mut buf, n, src, 0, ms(&s));
        // A client whose certificate is not the one its offer names.
        let (mut client, _) = dtls_client(s.epoch());
        let mut keys = None;
        let sent: RefCell<Vec<Vec<u8>>> = RefCell::default();
        let mut send = |d: &[u8], _: SocketAddr, _: usize| sent.borrow_mut().push(d.to_vec());
        for _ in 0..20 {
            for mut record in poll_client(&mut client, &mut keys) {
                cache.handle_media(&mut record, src, 0, us(&s), &mut send);
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
            s.consent_expired(ms(&s)),
            vec![("r".to_owned(), "a".to_owned())]
        );
    }

    /// A panic inside the DTLS library (made on purpose here: the records that reached
    /// one are refused before it now) ends that session only: counted, and the
    /// participant is reported gone like one whose consent lapsed.
    #[test]
    fn a_panic_inside_dtls_ends_the_session_and_is_counted() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        let answer = s.publish("r", "a", &offer, ms(&s)).unwrap();
        let (ufrag, pwd) = (ice_line(&answer, "ice-ufrag"), ice_line(&answer, "ice-pwd"));
        let mut cache = SessionCache::new(0, s.clone());
        let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let mut buf = [0u8; 1500];
        let n = check(&mut buf, ufrag, pwd);
        cache.answer_check(&mut buf, n, src, 0, ms(&s));
        let session = s.lookup(ufrag.as_bytes()).unwrap();
        session.media().dtls.panic_inside();
        let mut record = [0x16u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut send = |_: &[u8], _: SocketAddr, _: usize| {};
        let _ = cache.handle_media(&mut record, src, 0, us(&s), &mut send);
        assert!(session.is_dtls_ended());
        assert_eq!(s.metrics().dtls_panics.get(), 1);
        assert_eq!(s.metrics().dtls_failures.get(), 1);
        assert_eq!(
            s.consent_expired(ms(&s)),
            vec![("r".to_owned(), "a".to_owned())]
        );
    }

    #[test]
    fn receivers_get_an_offer_per_change_and_forwarders_follow() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        let answer = s.publish("room", "a", &offer, ms(&s)).unwrap();
        let publisher = s.lookup(ice_line(&answer, "ice-ufrag").as_bytes()).unwrap();
        // Only b has something to receive.
        let offers = s.sync_room(
            "room",
            &[("a".to_owned(), None), ("b".to_owned(), Some(180))],
            ms(&s),
        );
        assert_eq!(offers.len(), 1);
        let (who, sdp) = &offers[0];
        assert_eq!(who, "b");
        assert!(sdp.contains("m=audio"), "{sdp}");
        assert!(sdp.contains("a=msid:a a-0"), "{sdp}");
        assert!(sdp.contains("a=setup:passive") || sdp.contains("a=setup:actpass"));
        assert_eq!(publisher.media().tracks.len(), 1);
        assert_eq!(publisher.media().tracks[0].outs.len(), 1);
        // Nothing changed, and an offer is out: nothing new.
        assert!(
            s.sync_room(
                "room",
                &[("a".to_owned(), None), ("b".to_owned(), Some(180))],
                ms(&s)
            )
            .is_empty()
        );
        assert_eq!(publisher.media().tracks[0].outs.len(), 1);
        // A receiving session that was never answered lapses at its deadline.
        let late = ms(&s) + ANSWER_DEADLINE_MS + 1_000;
        let mut expired = s.consent_expired(late);
        expired.sort();
        assert_eq!(
            expired,
            vec![
                ("room".to_owned(), "a".to_owned()),
                ("room".to_owned(), "b".to_owned())
            ]
        );
        assert!(s.subscribe_answer("room", "b", b"v=0\r\n", ms(&s)).is_err());
        assert_eq!(
            s.subscribe_answer("room", "nobody", b"v=0\r\n", ms(&s)),
            Err(SdpError::NoPendingOffer)
        );
        assert!(s.max_answer_len("room", "b").unwrap() >= crate::sfu::sdp::MAX_SDP_LEN);
        // An answer that makes the m-line inactive pauses its stream.
        let answer = crate::sfu::sdp::tests::browser_answer(sdp, &[]);
        let inactive = answer.replace("a=recvonly", "a=inactive");
        s.subscribe_answer("room", "b", inactive.as_bytes(), ms(&s))
            .unwrap();
        assert!(publisher.media().tracks[0].outs[0].paused);
        // The receiver leaves: its forwarder goes at the next sync.
        s.remove_participant("room", "b");
        assert!(
            s.sync_room("room", &[("a".to_owned(), None)], ms(&s))
                .is_empty()
        );
        assert!(publisher.media().tracks[0].outs.is_empty());
        assert_eq!(s.participants(), vec![("room".to_owned(), "a".to_owned())]);
    }

    /// Firefox checks its receiving connection before it posts its answer. The address
    /// it validated then stays validated through the answer: its DTLS is handled at
    /// once, not dropped until its next consent check seconds later.
    #[test]
    fn an_address_checked_before_the_answer_stays_validated() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        s.publish("room", "a", &offer, ms(&s)).unwrap();
        let offers = s.sync_room(
            "room",
            &[("a".to_owned(), None), ("b".to_owned(), None)],
            ms(&s),
        );
        let (_, sdp) = &offers[0];
        let receiver = s.subscriber("room", "b").unwrap();
        let local = receiver.media().agent.local().clone();
        let mut cache = SessionCache::new(0, s.clone());
        let src: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        let mut buf = [0u8; 1500];
        let n = check(&mut buf, &local.ufrag, &local.pwd);
        assert!(matches!(
            cache.answer_check(&mut buf, n, src, 0, ms(&s)),
            CheckVerdict::Reply(_)
        ));
        let answer = crate::sfu::sdp::tests::browser_answer(sdp, &[]);
        s.subscribe_answer("room", "b", answer.as_bytes(), ms(&s))
            .unwrap();
        assert!(receiver.media().agent.is_validated(src));
        let (mut client, _) = dtls_client(s.epoch());
        let mut keys = None;
        let mut hello = poll_client(&mut client, &mut keys).remove(0);
        let mut send = |_: &[u8], _: SocketAddr, _: usize| {};
        assert_eq!(
            cache.handle_media(&mut hello, src, 0, us(&s), &mut send),
            MediaVerdict::Dtls
        );
    }

    /// Review finding: a receiver's SRTP context tracks a fixed number of SSRCs and never
    /// forgot those of publishers who left, so after about a hundred came and went the
    /// receiver silently got nothing from newcomers. Each stream now has its own context
    /// under the receiver's key (`sfu::egress`). 300 arrivals and departures past one
    /// receiver: the newest publisher's packets still reach it, and it decrypts them.
    #[test]
    fn a_receiver_gets_newcomers_after_300_arrivals_and_departures() {
        use crate::sfu::srtp::{MasterKey, SrtpContext, SrtpProfile};
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        s.sync_room("room", &[("r".to_owned(), None)], ms(&s));
        let receiver = s.subscriber("room", "r").expect("a receiving session");
        let master = MasterKey::new(SrtpProfile::AeadAes128Gcm, &[7; 16], &[9; 12]).unwrap();
        let link = receiver.link.clone().expect("a receiving session's link");
        link.set_key(master.clone());
        let at: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        link.set_peer(Some((at, 0)));
        // The receiving browser's context, which forgets each stream after its test.
        let mut browser = SrtpContext::new(&master, 4).unwrap();
        let mut buf = [0u8; 200];
        for i in 0..300 {
            let p = format!("p{i}");
            s.publish("room", &p, &offer, ms(&s)).unwrap();
            let holders = [("r".to_owned(), None), (p.clone(), None)];
            s.sync_room("room", &holders, ms(&s));
            let ssrc = {
                let media = receiver.media();
                let sub = media.subscribe.as_ref().unwrap();
                assert_eq!(sub.feeds.len(), 1, "one track at a time");
                sub.feeds[0].ssrc
            };
            // What the new track's stream sends the receiver.
            let mut rtp = [0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
            rtp[8..12].copy_from_slice(&ssrc.to_be_bytes());
            buf[..rtp.len()].copy_from_slice(&rtp);
            let publisher = s
                .lookup(s.read().by_participant[&("room".to_owned(), p.clone())].as_bytes())
                .unwrap();
            let mut sent = Vec::new();
            let ok = publisher.media().tracks[0].outs[0].egress.send_rtp(
                &mut buf,
                rtp.len(),
                &mut |d: &[u8], to: SocketAddr, _| sent.push((d.to_vec(), to)),
            );
            assert!(ok, "publisher {i}");
            let (mut packet, to) = sent.pop().expect("sent");
            assert_eq!(to, at);
            assert_eq!(
                browser.unprotect_rtp(&mut packet),
                Ok(rtp.len()),
                "publisher {i}"
            );
            browser.forget_ssrc(ssrc);
            s.remove_participant("room", &p);
            s.sync_room("room", &[("r".to_owned(), None)], ms(&s));
        }
    }

    /// Debug builds refuse a publisher's session lock taken under a receiver's (the
    /// order forwarding once nested the other way round).
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "session lock order")]
    fn a_publisher_lock_under_a_receivers_is_refused_in_debug_builds() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        let answer = s.publish("room", "a", &offer, ms(&s)).unwrap();
        s.sync_room("room", &[("r".to_owned(), None)], ms(&s));
        let receiver = s.subscriber("room", "r").expect("a receiving session");
        let publisher = s.lookup(ice_line(&answer, "ice-ufrag").as_bytes()).unwrap();
        {
            let _publisher = publisher.media();
            let _receiver = receiver.media(); // allowed: the control plane's order
        }
        let _receiver = receiver.media();
        let _publisher = publisher.media();
    }

    /// A participant that holds its event stream but never answers the server's offer
    /// would keep its place in a full room for ever: it leaves at the deadline, while
    /// one that answered is judged by its consent.
    #[test]
    fn an_offer_unanswered_past_its_deadline_ends_the_participant() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        s.publish("room", "a", &offer, ms(&s)).unwrap();
        let everyone = [
            ("a".to_owned(), None),
            ("b".to_owned(), None),
            ("c".to_owned(), None),
        ];
        let offers = s.sync_room("room", &everyone, ms(&s));
        assert_eq!(offers.len(), 2);
        let (_, to_c) = offers.iter().find(|(p, _)| p == "c").unwrap();
        let answer = crate::sfu::sdp::tests::browser_answer(to_c, &[]);
        s.subscribe_answer("room", "c", answer.as_bytes(), ms(&s))
            .unwrap();
        let start = ms(&s);
        let receivers_gone = |now_ms| -> Vec<String> {
            let mut gone: Vec<String> = s
                .consent_expired(now_ms)
                .into_iter()
                .map(|(_, p)| p)
                .filter(|p| p != "a")
                .collect();
            gone.sort();
            gone
        };
        assert!(receivers_gone(start + ANSWER_DEADLINE_MS - 1_000).is_empty());
        assert!(receivers_gone(start + ANSWER_DEADLINE_MS + 500).contains(&"b".to_owned()));
        // One that answered is judged by its consent (30 s from its answer, no checks
        // here); one never offered anything (the publisher's own) is not in question.
        let expired = s.consent_expired(start + 10 * ANSWER_DEADLINE_MS);
        assert_eq!(
            expired.iter().filter(|(_, p)| p == "a").count(),
            1,
            "{expired:?}"
        );
    }

    /// The audio level each publisher's packets carry is counted on the way through,
    /// for the room's active speaker, and the count starts again once taken.
    #[test]
    fn speech_in_a_publishers_audio_is_counted_for_the_speaker() {
        let s = sessions();
        let with_level = OFFER.replace(
            "a=rtpmap:111",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=rtpmap:111",
        );
        let offer = PublishOffer::parse(with_level.as_bytes()).unwrap();
        let answer = s.publish("room", "a", &offer, ms(&s)).unwrap();
        let publisher = s.lookup(ice_line(&answer, "ice-ufrag").as_bytes()).unwrap();
        assert_eq!(publisher.media().tracks[0].audio_level, Some(1));
        let mut out = vec![0u8; 2048];
        let mut counts = ForwardCounts::default();
        for (i, level) in [30u8, 30, 30, 110].into_iter().enumerate() {
            // RTP, one-byte extension block (0xBEDE) with id 1 = audio level.
            let mut pkt = vec![0x90, 111];
            pkt.extend_from_slice(&(i as u16).to_be_bytes());
            pkt.extend_from_slice(&(960 * i as u32).to_be_bytes());
            pkt.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            pkt.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0x80 | level, 0, 0]);
            pkt.extend_from_slice(&[0xAB; 40]);
            let len = pkt.len();
            let header = RtpHeader::parse(&pkt).unwrap();
            let mut media = publisher.media();
            forward_rtp(
                &mut out,
                &mut counts,
                &mut media,
                &mut pkt,
                (len, header),
                ("192.0.2.9:5000".parse().unwrap(), 0),
                (i as u64 * 20_000, 0),
                &mut |_, _, _| {},
            );
        }
        let heard = s.take_loudness();
        assert_eq!(heard.len(), 1);
        assert_eq!((heard[0].0.as_str(), heard[0].1.as_str()), ("room", "a"));
        assert_eq!(
            heard[0].2,
            Loudness {
                packets: 4,
                speech: 3
            }
        );
        assert_eq!(s.take_loudness()[0].2, Loudness::default());
    }

    #[test]
    fn consent_expiry_is_reported() {
        let s = sessions();
        let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
        s.publish("r", "a", &offer, ms(&s)).unwrap();
        let now = ms(&s);
        assert!(s.consent_expired(now).is_empty());
        assert_eq!(
            s.consent_expired(now + 31_000),
            vec![("r".to_owned(), "a".to_owned())]
        );
        s.retain(|_, p| p != "a");
        assert!(s.is_empty());
    }
}
