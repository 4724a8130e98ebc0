//! The media-session registry: what the control plane (the room API) and the
//! data-plane workers share about each participant's peer connection.
//!
//! This file holds the shared state (a [`Session`], its [`SessionMedia`] under its lock,
//! the lock order); `control` the registry the room API drives ([`MediaSessions`]);
//! `data` each worker's cache of it and the per-packet path ([`SessionCache`]).
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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use super::allocate::{Allocator, Demand, LayerMeter, LayerRates, StreamCap, WayUp};
use super::bwe::Estimator;
use super::bwe::probe::PROBE_DURATION_US;
use super::dtls::{DtlsSession, SrtpPair};
use super::egress::{Egress, ReceiverLink};
use super::forward::Forwarder;
use super::ice::IceAgent;
use super::sdp::Extension;
use super::sdp::{CodecName, SubscribeSession};
use super::simulcast::LayerCap;
use super::speaker::Loudness;
use super::track::Track;
use super::twcc::TransportFeedback;
use crate::metrics::SfuMetrics;

mod control;
mod data;
#[cfg(test)]
mod tests;

pub use control::{MediaSessions, PublishRefusal, REOFFER_WINDOW_MS, REOFFERS_PER_WINDOW};
pub use data::{CheckVerdict, ForwardCounts, MediaVerdict, SessionCache};

/// Sessions on the node at once (one per publishing participant for now).
pub(crate) const MAX_SESSIONS: usize = 20_000;
/// No owner yet.
const NO_OWNER: usize = usize::MAX;
/// A receiving session whose participant has not answered our first offer within this
/// ends like one whose consent ran out, and the participant leaves the room: a page
/// answers at once, and a client that never does would hold its place in a full room.
pub(crate) const ANSWER_DEADLINE_MS: u64 = 30_000;
/// The SSRC our RTCP to publishers (keyframe requests, reports, feedback) comes from.
pub(crate) const RTCP_SENDER_SSRC: u32 = 0x636E_6F64;

/// One peer connection of a participant, as the data plane sees it.
pub struct Session {
    pub(crate) room: String,
    pub(crate) participant: String,
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
    /// A publisher that is its room's active speaker: its video is the first its
    /// receivers' allocations raise.
    speaking: AtomicBool,
    media: Mutex<SessionMedia>,
}

/// The mutable part of a session, under its own mutex.
#[derive(Debug)]
pub(crate) struct SessionMedia {
    pub(crate) agent: IceAgent,
    /// The DTLS endpoint (passive role), pinned to the fingerprint of the client's SDP.
    pub(crate) dtls: DtlsSession,
    /// Where media and RTCP go, and the listener they leave through (listener indices
    /// are the same in every worker): the address the client's ICE nominated, or,
    /// without a nomination, where its completed DTLS handshake came from. A datagram
    /// that merely looks like DTLS never moves it: media would follow anyone able to
    /// send from a validated address.
    pub(crate) media_peer: Option<(SocketAddr, usize)>,
    /// Where the client's last DTLS record came from: where DTLS answers and
    /// retransmitted flights go.
    pub(crate) dtls_from: Option<(SocketAddr, usize)>,
    /// The SRTP contexts, once DTLS has connected.
    pub(crate) srtp: Option<Box<SrtpPair>>,
    /// A publisher's tracks, each with the receivers it is forwarded to.
    pub(crate) tracks: Vec<PublishedMedia>,
    /// A publisher's SDP session: the `o=` id of our answers and the version of the
    /// last one (each answer to a re-offer takes the next).
    pub(crate) answered: Option<(u64, u64)>,
    /// A publisher's re-offers: when its window began (ms on the shared clock) and how
    /// many it made in it.
    pub(crate) reoffers: (u64, u32),
    /// A receiving session's signalling state (`None` for a publisher).
    pub(crate) subscribe: Option<Box<Subscription>>,
    /// A publisher's transport-cc feedback, where its offer negotiated it.
    pub(crate) twcc: Option<Box<TransportFeedback>>,
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
            let allocation = self.subscribe.as_ref().and_then(|s| s.allocation_due());
            earliest(earliest(tracks, twcc), allocation)
        } else {
            None
        };
        earliest(self.dtls_due, media)
    }
}

/// What feed `f` of a receiver gets where its allocation gives it `cap`: nothing for a
/// video of a receiver that wants audio only.
fn wanted(audio_only: bool, f: &Feed, cap: LayerCap) -> LayerCap {
    if audio_only && !f.audio {
        LayerCap::Paused
    } else {
        cap
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
pub(crate) struct PublishedMedia {
    /// The publisher's mid of the track.
    pub(crate) mid: String,
    pub(crate) codec: CodecName,
    pub(crate) track: Track,
    /// The header extensions of the publisher's offer, with its ids.
    pub(crate) extensions: Vec<(Extension, u8)>,
    /// Every receiver of the track: its session and its own stream of it.
    pub(crate) outs: Vec<Downstream>,
    /// The id of the audio-level extension, on an audio track that has one.
    pub(crate) audio_level: Option<u8>,
    /// Speech heard since the control plane last asked ([`MediaSessions::take_loudness`]).
    pub(crate) loudness: Loudness,
    /// When reports (µs on the shared clock) and NACKs are next due.
    pub(crate) next_report: u64,
    pub(crate) next_nack: u64,
    /// What each layer sends, measured on the forwarding path, for the receivers'
    /// allocations.
    pub(crate) meter: LayerMeter,
    pub(crate) rates: Arc<LayerRates>,
    /// A re-offer of the publisher stopped the track: it is forwarded to nobody and
    /// takes no packets. Kept in its place, since receivers' feeds name tracks by index
    /// (a track that comes back under its mid takes the place again).
    pub(crate) ended: bool,
    /// A shared screen (its publisher said so): named so to receivers, and first in
    /// their allocations.
    pub(crate) screen: bool,
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
pub(crate) struct Downstream {
    pub(crate) subscriber: Arc<Session>,
    /// The mid of the m-line the receiver gets it on.
    pub(crate) mid: String,
    pub(crate) forwarder: Forwarder,
    /// The receiver's keys and address, reached without its lock.
    pub(crate) egress: Egress,
    /// The receiver's answer refused the m-line or made it inactive: nothing is sent.
    pub(crate) paused: bool,
    /// The layer cap the receiver's allocation gives the stream.
    pub(crate) cap: Arc<StreamCap>,
}

impl Downstream {
    /// Whether the stream is sent now: the receiver's answer kept it and the receiver
    /// can decrypt it (its DTLS connected, its session not closed). Nothing is forwarded
    /// before that, so that the stream starts at a keyframe the receiver will see.
    pub(crate) fn is_sending(&self) -> bool {
        !self.paused && self.egress.receiving()
    }

    /// The layer cap of a stream that is sent now, after reading what forwarding the
    /// next packet to it reads first (its forwarder, its egress and SRTP context, its
    /// receiver's link). With one audio packet fanned out to a hundred listeners 20 ms
    /// apart all of it is cold; `forward_rtp` calls this for several receivers in a
    /// row, a loop of independent loads the CPU overlaps, rather than meeting each
    /// miss on its own in the loop that forwards (an iteration there, with its
    /// encryption, is too long for the CPU to reach the next one's loads).
    pub(crate) fn read_ahead(&self) -> Option<LayerCap> {
        if !self.is_sending() {
            return None;
        }
        self.forwarder.read_ahead();
        self.egress.read_ahead(self.forwarder.ssrc());
        Some(self.cap.get())
    }
}

/// Where one of a receiver's streams comes from, for routing its feedback back.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    /// The receiver's mid of the stream.
    pub(crate) mid: String,
    pub(crate) audio: bool,
    /// What the track's layers send, and the cap the receiver's allocation gives the
    /// stream (read by its forwarder).
    pub(crate) rates: Arc<LayerRates>,
    pub(crate) cap: Arc<StreamCap>,
    /// Our SSRC of the stream (what the receiver's PLI and NACK name).
    pub(crate) ssrc: u32,
    pub(crate) publisher: Weak<Session>,
    /// The track's index in the publisher's tracks (fixed for the session's life: a
    /// stopped track keeps its place).
    pub(crate) track: usize,
    /// Whether the receiver's answer kept RTX (until it answers: as offered).
    pub(crate) rtx: bool,
    /// A shared screen (first in the allocation).
    pub(crate) screen: bool,
}

/// A receiving session's m-lines and what feeds them.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) sdp: SubscribeSession,
    /// The `o=` id, the same across renegotiations.
    session_id: u64,
    /// Sub mid → (publishing participant, its mid).
    sources: Vec<(String, String, String)>,
    /// Where each forwarded stream comes from, for the receiver's feedback.
    pub(crate) feeds: Vec<Feed>,
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
    /// The receiver's downlink estimate, from its transport-cc feedback.
    pub(crate) bwe: Estimator,
    /// How the estimate is shared among the streams (one demand per feed).
    allocator: Allocator,
    demands: Vec<Demand>,
    /// The estimate last logged (moves under a quarter are not).
    logged_estimate_bps: u64,
    /// When the probe of the receiver's path that runs ends.
    probe_end: Option<u64>,
    /// The receiver wants no video: every video stream is paused, whatever the
    /// allocation says.
    audio_only: bool,
}

impl Subscription {
    /// No video for this receiver, or video again (see [`Subscription::audio_only`]).
    pub(crate) fn set_audio_only(&mut self, audio_only: bool) {
        self.audio_only = audio_only;
        for f in &self.feeds {
            f.cap.set(wanted(audio_only, f, LayerCap::Any));
        }
    }

    /// When the allocation is to be looked at again without feedback: while it holds
    /// a stream below its best (a paused video sends no feedback).
    pub(crate) fn allocation_due(&self) -> Option<u64> {
        earliest(self.allocator.next_due(), self.probe_end)
    }

    /// Shares the receiver's downlink estimate among its streams (`sfu::allocate`)
    /// and hands each forwarder its cap; starts and ends the probes of its path
    /// (`link`) the allocation asks for. Run after each of its transport-cc feedbacks;
    /// allocates only when the receiver has more streams than ever before.
    pub(crate) fn allocate(&mut self, room: &str, link: Option<&ReceiverLink>, now: u64) {
        self.end_probe(room, link, now);
        self.demands.clear();
        for f in &self.feeds {
            let (mut bps, mut thin, heights) = f.rates.read();
            if self.audio_only && !f.audio {
                // Not wanted: nothing to share out or probe for.
                (bps, thin) = Default::default();
            }
            self.demands.push(Demand {
                audio: f.audio,
                bps,
                thin,
                heights,
                max_height: self.max_height,
                speaker: f.publisher.upgrade().is_some_and(|p| p.is_speaking()),
                screen: f.screen,
            });
        }
        let estimate = self.bwe.congestion_seen().then(|| self.bwe.bps());
        let decreases = self.bwe.decreases();
        let caps = self.allocator.run(estimate, decreases, &self.demands, now);
        let mut changed = false;
        for (f, cap) in self.feeds.iter().zip(caps) {
            let cap = wanted(self.audio_only, f, *cap);
            changed |= f.cap.get() != cap;
            f.cap.set(cap);
        }
        if changed {
            tracing::debug!(
                room,
                estimate_kbps = estimate.map(|b| b / 1000),
                caps = ?caps,
                rates = ?self.demands.iter().map(|d| d.bps).collect::<Vec<_>>(),
                "media session: layers allocated"
            );
        }
        if let Some(proven) = self.allocator.take_proven() {
            self.bwe.raise_to(proven);
        }
        if let (Some(bps), Some(link)) = (self.allocator.take_probe(), link) {
            self.bwe.start_probe(link.sent.next_seq());
            link.probe.start(bps, now, &link.sent);
            self.probe_end = Some(now.saturating_add(PROBE_DURATION_US));
            tracing::debug!(room, probe_kbps = bps / 1000, "media session: probing");
        }
    }

    /// Ends the probe whose time is up, and tells the allocation what a finished one
    /// found.
    fn end_probe(&mut self, room: &str, link: Option<&ReceiverLink>, now: u64) {
        if let (Some(end), Some(link)) = (self.probe_end, link)
            && now >= end
        {
            self.bwe
                .end_probe(link.sent.next_seq().wrapping_sub(1), now);
            self.probe_end = None;
        }
        if let Some(found) = self.bwe.take_probe_outcome(now) {
            self.allocator.probe_done(found.room, now);
            tracing::debug!(
                room,
                found_kbps = found.bps.map(|b| b / 1000),
                room_left = found.room,
                estimate_kbps = self.bwe.bps() / 1000,
                "media session: probe done"
            );
        }
        // A receiver that sends only REMB estimates its link itself: neither probes
        // (nothing would tell their outcome) nor tries (its estimate is the judge).
        let way_up = if !self.bwe.has_transport_feedback() {
            WayUp::Estimate
        } else if link.is_some() && self.feeds.iter().any(|f| !f.audio && f.rtx) {
            WayUp::Probe
        } else {
            WayUp::Try
        };
        self.allocator.set_way_up(way_up);
    }

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
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Whether this publisher is its room's active speaker.
    pub(crate) fn is_speaking(&self) -> bool {
        self.speaking.load(Ordering::Relaxed)
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
    pub(crate) fn media(&self) -> MediaGuard<'_> {
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
    #[cfg(test)]
    pub(crate) fn is_dtls_connected(&self) -> bool {
        self.dtls_connected.load(Ordering::Relaxed)
    }

    /// Whether DTLS failed or the peer closed it.
    pub(crate) fn is_dtls_ended(&self) -> bool {
        self.dtls_ended.load(Ordering::Relaxed)
    }

    /// A receiving session's streams may be forwarded from now on (its DTLS connected).
    fn start_receiving(&self) {
        if let Some(link) = &self.link {
            link.set_receiving(true);
        }
    }

    /// Takes the session out of the `dtls_connected` gauge, once, and stops what is
    /// forwarded to it (every time: a `start_receiving` racing with `close` is undone by
    /// the caller's look at `closed` after it).
    fn leave_gauge(&self, metrics: &SfuMetrics) {
        if let Some(link) = &self.link {
            link.set_receiving(false);
        }
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

/// Where the data plane's clock starts. Every `now` handed to the SFU counts from
/// `instant` (milliseconds for ICE and DTLS, microseconds for media); `unix_us` is the
/// wall-clock time at that instant (µs since 1970), from which RTCP's NTP timestamps are
/// counted on, so they never step with the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    /// The monotonic instant every `now` counts from.
    pub instant: Instant,
    /// Wall-clock time at `instant`, µs since 1970.
    pub unix_us: u64,
}

/// A session's media state under its lock (see [`Session::media`]).
pub(crate) struct MediaGuard<'a> {
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
