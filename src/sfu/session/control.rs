//! The control plane of the media sessions: the registry the room API fills
//! (publish, receiving sessions and their renegotiation, answers, removal, the consent
//! sweep) and the workers read on a cache miss.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use rand_chacha::ChaCha12Rng;
use rand_core::{RngCore, SeedableRng};

use crate::metrics::SfuMetrics;
use crate::sfu::allocate::{Allocator, LayerMeter, LayerRates, StreamCap};
use crate::sfu::bwe::{BweConfig, Estimator};
use crate::sfu::codec::Codec;
use crate::sfu::dtls::{DtlsIdentity, DtlsSession, SrtpCapacity};
use crate::sfu::egress::{Egress, ReceiverLink};
use crate::sfu::forward::{ExtensionMap, Forwarder, ForwarderConfig, RtxConfig};
use crate::sfu::ice::{IceAgent, IceCredentials};
use crate::sfu::sdp::{
    CodecName, Fingerprint, LocalTransport, OutTrack, PublishOffer, PublishedTrack, SdpError,
    SubscribeSession,
};
use crate::sfu::sdp::{Extension, Feedback, SUBSCRIBE_EXTENSIONS};
use crate::sfu::speaker::Loudness;
use crate::sfu::track::{LayerConfig, Track, TrackConfig};
use crate::sfu::twcc::TransportFeedback;

use super::{
    ANSWER_DEADLINE_MS, Downstream, Epoch, Feed, MAX_SESSIONS, NO_OWNER, PublishedMedia, Session,
    SessionMedia, Subscription,
};

/// SSRCs a publisher's inbound SRTP context tracks: audio, three simulcast layers with
/// their RTX, and the SSRCs its RTCP reports come from, with room to spare.
const PUBLISHER_SRTP: SrtpCapacity = SrtpCapacity {
    inbound: 64,
    outbound: 16,
};
/// A receiving session hears the receiver's RTCP from a few SSRCs; what it is sent goes
/// through each stream's own context (`sfu::egress`), so its own outbound one holds
/// nothing.
const SUBSCRIBER_SRTP: SrtpCapacity = SrtpCapacity {
    inbound: 16,
    outbound: 1,
};
/// Packets cached per layer of a video track for answering NACKs.
const VIDEO_CACHE_PACKETS: usize = 512;

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    /// The participant already has a publishing session (HTTP 409).
    AlreadyPublishing,
    /// [`MAX_SESSIONS`] reached (HTTP 503).
    Full,
    /// A re-offer for a participant that has no publishing session (HTTP 409).
    NotPublishing,
    /// A re-offer with other ICE credentials: a new connection needs a new publish
    /// (HTTP 400).
    NewTransport,
    /// Over [`REOFFERS_PER_WINDOW`] re-offers in [`REOFFER_WINDOW_MS`] (HTTP 429):
    /// each one that changes the tracks renegotiates every receiver in the room.
    TooManyReoffers,
}

/// Re-offers one publisher may make per window: sharing a screen and stopping it a
/// few times over, not a stream of renegotiations for everyone else.
pub const REOFFERS_PER_WINDOW: u32 = 10;
/// The window, in milliseconds, [`REOFFERS_PER_WINDOW`] counts over.
pub const REOFFER_WINDOW_MS: u64 = 10_000;

/// What the registry holds, under one lock.
#[derive(Default)]
pub(super) struct Registry {
    by_ufrag: HashMap<String, Arc<Session>>,
    /// (room, participant) → our ufrag of its publishing session.
    pub(super) by_participant: HashMap<(String, String), String>,
    /// (room, participant) → our ufrag of its receiving session.
    subscribers: HashMap<(String, String), String>,
}

impl Registry {
    /// The sessions `ufrags` (one of the maps by room and participant) names, only
    /// those of `room` when given.
    fn sessions_in<'a>(
        &'a self,
        ufrags: &'a HashMap<(String, String), String>,
        room: Option<&'a str>,
    ) -> impl Iterator<Item = Arc<Session>> + 'a {
        ufrags
            .iter()
            .filter(move |((r, _), _)| room.is_none_or(|room| r == room))
            .filter_map(|(_, u)| self.by_ufrag.get(u).cloned())
    }
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
    /// Start, floor and ceiling of each receiver's downlink estimate.
    downlink: BweConfig,
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
            downlink: BweConfig::default(),
        }
    }

    /// Receivers' downlink estimates start, stay above and below these (the
    /// `[media]` keys of the configuration).
    pub(crate) fn with_downlink(mut self, downlink: BweConfig) -> MediaSessions {
        self.downlink = downlink;
        self
    }

    /// Our DTLS certificate, shared by every session.
    pub fn identity(&self) -> &Arc<DtlsIdentity> {
        &self.identity
    }

    /// The SFU's counters.
    pub fn metrics(&self) -> &SfuMetrics {
        &self.metrics
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Registry> {
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

    /// The wall-clock time at the epoch (µs since 1970), for RTCP's NTP timestamps.
    pub(crate) fn unix_at_epoch_us(&self) -> u64 {
        self.epoch.unix_us
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

    /// Our host candidates: the media port on the public addresses.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    pub(crate) fn len(&self) -> usize {
        self.read().by_ufrag.len()
    }

    /// Whether no session is on the node.
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
        let session_id = self.session_id();
        let answer = offer.answer(&LocalTransport {
            session_id,
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
            speaking: AtomicBool::new(false),
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
                answered: Some((session_id, 1)),
                reoffers: (now_ms, 0),
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

    /// A re-offer of `participant`'s publishing connection (the same ICE session): a
    /// track it adds is published (`screens`: the mids that carry a shared screen), one
    /// it stopped ends; tracks it keeps go on untouched. Returns our answer; the caller
    /// then brings the room's receivers in line ([`MediaSessions::sync_room`]).
    pub(crate) fn republish(
        &self,
        room: &str,
        participant: &str,
        offer: &PublishOffer,
        screens: &[&str],
        now_ms: u64,
    ) -> Result<String, PublishRefusal> {
        let session = {
            let reg = self.read();
            let ufrag = reg
                .by_participant
                .get(&(room.to_owned(), participant.to_owned()))
                .ok_or(PublishRefusal::NotPublishing)?;
            reg.by_ufrag
                .get(ufrag)
                .cloned()
                .ok_or(PublishRefusal::NotPublishing)?
        };
        let mut media = session.media();
        if media.agent.remote() != Some(&offer.ice) {
            return Err(PublishRefusal::NewTransport);
        }
        let Some((session_id, version)) = media.answered else {
            return Err(PublishRefusal::NotPublishing);
        };
        let (start, count) = &mut media.reoffers;
        if now_ms >= start.saturating_add(REOFFER_WINDOW_MS) {
            (*start, *count) = (now_ms, 0);
        }
        if *count >= REOFFERS_PER_WINDOW {
            return Err(PublishRefusal::TooManyReoffers);
        }
        *count += 1;
        let offered: Vec<(&str, &PublishedTrack)> = offer.tracks().collect();
        for t in media.tracks.iter_mut() {
            t.ended = !offered.iter().any(|(mid, _)| *mid == t.mid);
            if t.ended {
                t.outs.clear();
            }
        }
        for (mid, t) in offered {
            let kept = media.tracks.iter().position(|k| k.mid == mid);
            if kept.is_some_and(|i| !media.tracks[i].ended) {
                continue;
            }
            let Some(mut new) = published_media(mid, t) else {
                continue;
            };
            new.screen = screens.contains(&mid) && new.codec != CodecName::Opus;
            // Its own place if it had one, else the first a stopped track left: the
            // list stays as long as the most tracks live at once (an offer's sections
            // are bounded), however often tracks come and go.
            match kept.or_else(|| media.tracks.iter().position(|t| t.ended)) {
                Some(i) => media.tracks[i] = new,
                None => media.tracks.push(new),
            }
        }
        let answer = offer.answer_as(
            &LocalTransport {
                session_id,
                ice: media.agent.local(),
                fingerprint: self.identity.fingerprint_hex(),
                candidates: &self.candidates,
            },
            version + 1,
        );
        media.answered = Some((session_id, version + 1));
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
            let publishers: Vec<Arc<Session>> =
                reg.sessions_in(&reg.by_participant, Some(room)).collect();
            (subscribers, publishers)
        };
        // What each publisher offers: (participant, mid, codec, a screen).
        let mut published: Vec<(String, String, CodecName, bool)> = Vec::new();
        for p in &publishers {
            let mut media = p.media();
            for t in media.tracks.iter_mut().filter(|t| !t.ended) {
                t.outs.retain(|o| !o.subscriber.is_closed());
                published.push((p.participant.clone(), t.mid.clone(), t.codec, t.screen));
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
                    && published
                        .iter()
                        .any(|(p, m, ..)| p == from && m == from_mid);
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
            for (from, from_mid, codec, screen) in &published {
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
                    (codec.kind() == crate::sfu::sdp::MediaKind::Video).then(|| sub.fresh_ssrc());
                let track = OutTrack {
                    codec: *codec,
                    ssrc,
                    rtx_ssrc,
                    cname: "confnode".to_owned(),
                    stream_id: from.clone(),
                    // The page tells a shared screen by its track id.
                    track_id: if *screen {
                        format!("{from}-screen-{from_mid}")
                    } else {
                        format!("{from}-{from_mid}")
                    },
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
                    let cap = Arc::new(StreamCap::default());
                    // The receiver's lock under the publisher's, as forwarding takes them.
                    if let Some(sub) = a.subscriber.media().subscribe.as_mut() {
                        sub.feeds.push(Feed {
                            mid: a.mid.clone(),
                            audio: t.codec == CodecName::Opus,
                            rates: t.rates.clone(),
                            cap: cap.clone(),
                            ssrc: a.ssrc,
                            publisher: Arc::downgrade(p),
                            track: index,
                            rtx: true,
                            screen: t.screen,
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
                        cap,
                    });
                }
            }
        }
        offers
    }

    /// The receiver `participant` of `room` wants video of at most `max_height` lines:
    /// its forwarders switch layers at the next key frame.
    pub(crate) fn set_max_height(&self, room: &str, participant: &str, max_height: Option<u16>) {
        if let Some(s) = self.subscriber(room, participant)
            && let Some(sub) = s.media().subscribe.as_mut()
        {
            sub.max_height = max_height;
        }
        let publishers: Vec<Arc<Session>> = {
            let reg = self.read();
            reg.sessions_in(&reg.by_participant, Some(room)).collect()
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

    /// The receiver `participant` of `room` wants no video (`audio_only`), or video
    /// again: its video streams are paused at once, or handed back to its allocation,
    /// which resumes them at their next keyframe.
    pub fn set_audio_only(&self, room: &str, participant: &str, audio_only: bool) {
        if let Some(s) = self.subscriber(room, participant)
            && let Some(sub) = s.media().subscribe.as_mut()
        {
            sub.set_audio_only(audio_only);
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
            speaking: AtomicBool::new(false),
            media: Mutex::new(SessionMedia {
                agent: IceAgent::new(local, None, now_ms),
                dtls,
                media_peer: None,
                dtls_from: None,
                srtp: None,
                tracks: Vec::new(),
                answered: None,
                reoffers: (now_ms, 0),
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
                    bwe: Estimator::new(self.downlink),
                    logged_estimate_bps: 0,
                    probe_end: None,
                    audio_only: false,
                    allocator: Allocator::new(),
                    demands: Vec::new(),
                })),
            }),
        });
        reg.by_ufrag.insert(ufrag.clone(), session.clone());
        reg.subscribers.insert(key, ufrag);
        session
    }

    /// The longest answer the receiving session of `participant` accepts now.
    pub(crate) fn max_answer_len(&self, room: &str, participant: &str) -> Option<usize> {
        let s = self.subscriber(room, participant)?;
        let media = s.media();
        media.subscribe.as_ref().map(|sub| sub.sdp.max_answer_len())
    }

    pub(super) fn subscriber(&self, room: &str, participant: &str) -> Option<Arc<Session>> {
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
    pub(crate) fn lookup(&self, ufrag: &[u8]) -> Option<Arc<Session>> {
        let ufrag = std::str::from_utf8(ufrag).ok()?;
        self.read().by_ufrag.get(ufrag).cloned()
    }

    /// Whether `participant` of `room` has a publishing session.
    pub(crate) fn is_publishing(&self, room: &str, participant: &str) -> bool {
        self.read()
            .by_participant
            .contains_key(&(room.to_owned(), participant.to_owned()))
    }

    /// Ends the sessions of a participant (it left or was dropped).
    pub(crate) fn remove_participant(&self, room: &str, participant: &str) {
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
    pub(crate) fn remove_room(&self, room: &str) {
        self.retain(|r, _| r != room);
    }

    /// Keeps the sessions whose (room, participant) `keep` approves, ends the others.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
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
    pub(crate) fn participants(&self) -> Vec<(String, String)> {
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
    pub(crate) fn take_loudness(&self) -> Vec<(String, String, Loudness)> {
        let publishers: Vec<Arc<Session>> = {
            let reg = self.read();
            reg.sessions_in(&reg.by_participant, None).collect()
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

    /// Every video the allocation pauses now: (room, receiving participant, publishing
    /// participant). Each receiving session's lock is taken alone, one after another.
    pub fn paused_videos(&self) -> Vec<(String, String, String)> {
        let receivers: Vec<Arc<Session>> = {
            let reg = self.read();
            reg.sessions_in(&reg.subscribers, None).collect()
        };
        let mut paused = Vec::new();
        for r in receivers {
            let media = r.media();
            let Some(sub) = media.subscribe.as_deref() else {
                continue;
            };
            if sub.audio_only {
                continue; // paused by choice, not for bandwidth
            }
            for f in sub.feeds.iter().filter(|f| !f.audio) {
                if f.cap.get() == crate::sfu::simulcast::LayerCap::Paused
                    && let Some(p) = f.publisher.upgrade()
                {
                    paused.push((r.room.clone(), r.participant.clone(), p.participant.clone()));
                }
            }
        }
        paused
    }

    /// `participant` is the active speaker of `room`: its receivers' allocations raise
    /// its video first (and no longer the previous speaker's).
    pub(crate) fn set_speaker(&self, room: &str, participant: &str) {
        let reg = self.read();
        for ((r, p), ufrag) in &reg.by_participant {
            if r == room
                && let Some(s) = reg.by_ufrag.get(ufrag)
            {
                s.speaking
                    .store(p == participant, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// The (room, participant) of every session whose consent ran out by `now_ms`
    /// (RFC 7675: no valid check for 30 s), whose first offer went unanswered for
    /// [`ANSWER_DEADLINE_MS`], or whose DTLS failed or was closed by the peer (no media
    /// can flow any more). They stay registered; the caller makes the
    /// participant leave and then removes them.
    pub(crate) fn consent_expired(&self, now_ms: u64) -> Vec<(String, String)> {
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
    let video = codec.name.kind() == crate::sfu::sdp::MediaKind::Video;
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
        rid_extension: t.extension_id(crate::sfu::sdp::Extension::Rid),
        repaired_rid_extension: t.extension_id(crate::sfu::sdp::Extension::RepairedRid),
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
            .then(|| t.extension_id(crate::sfu::sdp::Extension::AudioLevel))
            .flatten(),
        loudness: Loudness::default(),
        next_report: 0,
        next_nack: 0,
        meter: LayerMeter::default(),
        rates: Arc::new(LayerRates::default()),
        ended: false,
        screen: false,
    })
}

/// How a receiver gets the header extensions of a publisher's packets: audio level and
/// abs-send-time under the ids of our offers, the mid with the receiver's value. The
/// transport-wide sequence number keeps its place under our id, but its value is the
/// receiver transport's own, written as the packet is sent (the publisher's numbers
/// belong to its transport).
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
            (Extension::TransportCc, Some(to)) => map.set_transport_cc(from, to),
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
        fb.then(|| t.extension_id(crate::sfu::sdp::Extension::TransportCc))
            .flatten()
    })
}
