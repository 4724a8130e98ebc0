//! The data plane of the media sessions: each worker's [`SessionCache`] answers ICE
//! checks, drives DTLS, unprotects SRTP, forwards RTP to receivers and keeps the timers
//! (retransmissions, reports, feedback).

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::metrics::{MediaDrop, SfuMetrics};
use crate::sfu::dtls::{DTLS_MTU, DtlsError, DtlsOutput};
use crate::sfu::feedback;
use crate::sfu::forward::Action;
use crate::sfu::ice::{IceVerdict, local_ufrag};
use crate::sfu::rtp::{MAX_PADDING, RtpHeader};
use crate::sfu::srtp::{MAX_RTP_OVERHEAD, SrtpError};
use crate::sfu::track::Dropped;
use crate::stun::message::Message;

use super::{Downstream, MAX_SESSIONS, MediaSessions, Session, SessionMedia, Subscription};

/// Entries a worker's cache holds before it is cleared and refilled from the registry.
const MAX_CACHED: usize = 4 * MAX_SESSIONS;
/// Client addresses a worker's address map holds before it is cleared and refilled by
/// the next checks.
const MAX_ADDRESSES: usize = 4 * MAX_SESSIONS;
/// The soonest a session's timer is due after it was set: work that cannot be done
/// yet is retried no more than a thousand times a second.
const MIN_TIMER_US: u64 = 1_000;
/// Timer entries a worker has room for before its queue grows (on the media path).
const TIMERS_RESERVED: usize = 1024;
/// Where the SFU's forwarded packets are written and encrypted: a whole datagram
/// and the SRTP tag.
const FORWARD_BUFFER: usize = 2048;

/// What [`SessionCache::answer_check`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckVerdict {
    /// An answer (success or error) of this many bytes is in the buffer; send it back.
    Reply(usize),
    /// No session of ours: not an ICE check for the SFU.
    NotOurs,
    /// Unparsable, a bad FINGERPRINT, or no room to answer in: drop and count.
    Malformed,
    /// A copy of one of the session's nominating checks from another address: drop and
    /// count (see [`IceVerdict::Replayed`]).
    Replayed,
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
    pub(super) by_addr: HashMap<SocketAddr, Arc<Session>>,
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
    pub(crate) forwarded: u64,
    pub(crate) keyframe_requests: u64,
    /// Packets sent again to receivers that NACKed them.
    pub(crate) retransmitted: u64,
    /// NACKed packets not sent again: no longer held, asked for again within a round
    /// trip, or beyond the receiver's retransmission budget.
    pub(crate) resend_not_held: u64,
    pub(crate) resend_too_soon: u64,
    pub(crate) resend_over_budget: u64,
    /// Reports, NACKs and transport-cc feedback sent.
    pub(crate) rtcp_sent: u64,
    /// Transport-cc feedback and REMB read from receivers into their downlink estimates.
    pub(crate) downlink_feedback: u64,
    /// Padding sent to probe receivers' paths.
    pub(crate) probe_padding: u64,
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
    /// The cache of data-plane worker `worker` over the node's sessions.
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

    /// The node's sessions this cache reads from.
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
            IceVerdict::Replayed => CheckVerdict::Replayed,
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
        self.handle_media_received(pkt, src, listener, (now_us, now_us), send)
    }

    /// [`SessionCache::handle_media`] for a datagram the kernel received at
    /// `arrival_us` and the worker handles at `now_us`. Arrival times are what
    /// transport-cc feedback tells publishers; packets made for receivers are taken as
    /// sent at `now_us`, for their downlink estimates: a busy worker reaches a datagram
    /// late, and that wait is the node's, not the receiver's link's (taken as sent at
    /// arrival, it read as a growing queue whenever the machine was busy).
    pub(crate) fn handle_media_received(
        &mut self,
        pkt: &mut [u8],
        src: SocketAddr,
        listener: usize,
        (arrival_us, now_us): (u64, u64),
        send: &mut impl FnMut(&[u8], SocketAddr, usize),
    ) -> MediaVerdict {
        let sent_us = now_us.max(arrival_us);
        let now_us = arrival_us;
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
                let connected = media.dtls.is_connected();
                let fed = media.dtls.handle_datagram(pkt, now_ms);
                let mut answered = false;
                let wait = drain(
                    &mut self.out,
                    self.sessions.metrics(),
                    &session,
                    &mut media,
                    &mut |record: &[u8], to, via| {
                        answered = true;
                        send(record, to, via);
                    },
                );
                // A connected endpoint that neither answers a record nor ends over it
                // threw it away (a copy, a forgery, junk): dropped, and counted so.
                // During the handshake that cannot be told from a piece of a flight
                // still coming together.
                let discarded = connected && media.dtls.is_connected() && !answered;
                media.dtls_due = dtls_due(&media, wait, now_us);
                self.arm(&session, &mut media, now_us);
                drop(media);
                match fed {
                    Ok(()) if discarded => MediaVerdict::Dropped(MediaDrop::Dtls),
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
                    match m.subscribe.as_deref_mut() {
                        Some(sub) => {
                            if let Some(link) = session.link.as_deref() {
                                let read = feedback::estimate_downlink(
                                    &mut sub.bwe,
                                    &link.sent,
                                    &pkt[..n],
                                    now,
                                );
                                if read > 0 {
                                    self.counts.downlink_feedback += read;
                                    note_estimate(&session, sub);
                                    sub.allocate(&session.room, session.link.as_deref(), now);
                                }
                            }
                            let requests = feedback::receiver_requests(sub, &pkt[..n]);
                            // A cap held, a try under way: the allocation is looked at
                            // again even if the feedback stops (a paused video).
                            self.arm(&session, m, now);
                            drop(media);
                            if !requests.is_empty() {
                                feedback::answer_receiver(
                                    &requests,
                                    &session,
                                    &mut self.fwd,
                                    &mut self.counts,
                                    (now, sent_us),
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
                        (now, sent_us, self.sessions.unix_at_epoch_us()),
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
    /// (a handshake past its deadline fails); a receiver's allocation looked at again
    /// while it holds a cap; and for publishers, receiver reports and
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
            if let Some(sub) = media.subscribe.as_deref_mut()
                && sub.allocation_due().is_some_and(|d| d <= now)
            {
                sub.allocate(&session.room, session.link.as_deref(), now);
            }
            if let (Some(publisher), true) = (media.media_peer, media.srtp.is_some()) {
                let SessionMedia {
                    tracks, srtp, twcc, ..
                } = media;
                let unix_at_epoch_us = self.sessions.unix_at_epoch_us();
                for t in tracks.iter_mut() {
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
    pub(crate) fn take_counts(&mut self) -> ForwardCounts {
        std::mem::take(&mut self.counts)
    }

    /// Forgets closed sessions (run now and then, off the per-packet path).
    pub(crate) fn sweep(&mut self) {
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
/// Only the publisher's session lock is held: each receiver is reached through its
/// stream's [`crate::sfu::egress::Egress`].
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_rtp(
    out: &mut [u8],
    counts: &mut ForwardCounts,
    media: &mut SessionMedia,
    pkt: &mut [u8],
    (len, header): (usize, RtpHeader),
    publisher: (SocketAddr, usize),
    (now, sent_us, unix_at_epoch_us): (u64, u64, u64),
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) {
    let ssrc = header.ssrc;
    let SessionMedia { tracks, srtp, .. } = media;
    // The track whose layer has the SSRC; else the first that takes the packet (a
    // layer that learns its SSRC from the rid or from its first packet).
    // A track a re-offer stopped takes nothing.
    let known = tracks
        .iter()
        .position(|t| !t.ended && t.track.layer_of(ssrc).is_some());
    let (index, incoming) = match known {
        Some(i) => match tracks[i].track.receive_parsed(pkt, len, header, now) {
            Ok(incoming) => (i, incoming),
            Err(_) => return,
        },
        None => {
            let mut found = None;
            for (i, t) in tracks.iter_mut().enumerate().filter(|(_, t)| !t.ended) {
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
            .and_then(crate::sfu::rtp::read_audio_level)
    {
        t.loudness.add(voice, level);
    }
    let n = incoming.len;
    let heights = t.track.layers().heights;
    let tid = incoming.vp8.as_ref().and_then(|d| d.tid);
    t.meter
        .add((incoming.layer, tid), n, now, heights, &t.rates);
    if n + MAX_RTP_OVERHEAD > out.len() || n > pkt.len() {
        return;
    }
    for outs in t.outs.chunks_mut(GATHER) {
        // Each receiver's state is cold when an audio packet comes 20 ms after the
        // last: read it for a few receivers first (see `Downstream::read_ahead`).
        let mut caps = [None; GATHER];
        for (cap, o) in caps.iter_mut().zip(outs.iter()) {
            *cap = o.read_ahead();
        }
        for (cap, o) in caps.into_iter().zip(outs.iter_mut()) {
            let Some(cap) = cap else {
                continue;
            };
            out[..n].copy_from_slice(&pkt[..n]);
            o.forwarder.set_layer_cap(cap);
            if let Some(m) = o.forwarder.forward(&mut out[..n], &incoming, now)
                && o.egress
                    .send_rtp(out, m, o.forwarder.transport_seq_at(), sent_us, send)
            {
                counts.forwarded += 1;
            }
            while let Some(Action::NeedKeyframe { layer, .. }) = o.forwarder.poll_action(now) {
                if let Some(req) = t.track.request_keyframe(layer, now) {
                    feedback::send_pli(out, srtp, req.ssrc, publisher, send);
                    counts.keyframe_requests += 1;
                }
            }
            send_probe_padding(out, o, sent_us, counts, send);
        }
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

/// Receivers whose shared state `forward_rtp` reads ahead of forwarding to them.
const GATHER: usize = 16;

/// Padding packets one forwarded packet may bring along: a probe's pace follows the
/// packets forwarded to its receiver, a few ms apart.
const MAX_PADDING_PACKETS: usize = 16;

/// Sends the padding a probe of `o`'s receiver's path owes by `now` (see
/// `sfu::bwe::probe`) on `o`'s RTX stream; nothing when no probe runs (one atomic
/// load) or the stream has no RTX.
fn send_probe_padding(
    out: &mut [u8],
    o: &mut Downstream,
    now: u64,
    counts: &mut ForwardCounts,
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) {
    for _ in 0..MAX_PADDING_PACKETS {
        if o.egress.probe_owed(now) == 0 {
            return;
        }
        let Some(n) = o.forwarder.write_padding(out, MAX_PADDING) else {
            return;
        };
        if !o
            .egress
            .send_rtp(out, n, o.forwarder.transport_seq_at(), now, send)
        {
            return;
        }
        counts.probe_padding += 1;
    }
}

/// Logs (at debug) a receiver's downlink estimate when it moved by a quarter or more
/// since the last one logged, with what got through.
fn note_estimate(session: &Session, sub: &mut Subscription) {
    let bps = sub.bwe.bps();
    let logged = sub.logged_estimate_bps;
    if logged == 0 || bps.abs_diff(logged) * 4 >= logged {
        sub.logged_estimate_bps = bps;
        tracing::debug!(
            room = %session.room,
            estimate_kbps = bps / 1000,
            acked_kbps = sub.bwe.acked_bps().map(|b| b / 1000),
            "media session: downlink estimate"
        );
    }
}

fn is_handshaking(media: &SessionMedia) -> bool {
    *media.dtls.state() == crate::sfu::dtls::DtlsState::Handshaking
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
                session.start_receiving();
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
