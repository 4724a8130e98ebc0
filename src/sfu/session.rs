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
//! Lock order: registry, then a session; a worker never takes the registry while it
//! holds a session, and nothing takes the room API's lock while holding either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use super::ice::{IceAgent, IceCredentials, IceVerdict, local_ufrag};
use super::sdp::{LocalTransport, PublishOffer};
use crate::stun::message::Message;

/// Sessions on the node at once (one per publishing participant for now).
pub const MAX_SESSIONS: usize = 20_000;
/// Entries a worker's cache holds before it is cleared and refilled from the registry.
const MAX_CACHED: usize = 4 * MAX_SESSIONS;
/// No owner yet.
const NO_OWNER: usize = usize::MAX;

/// One peer connection of a participant, as the data plane sees it.
pub struct Session {
    pub room: String,
    pub participant: String,
    /// Set when the session is removed; workers then forget it.
    closed: AtomicBool,
    /// The worker that answered the nominated pair's checks (`NO_OWNER` before that).
    owner: AtomicUsize,
    media: Mutex<SessionMedia>,
}

/// The mutable part of a session, under its own mutex.
#[derive(Debug)]
pub struct SessionMedia {
    pub agent: IceAgent,
    // Next: the DTLS endpoint and SRTP contexts, the published tracks.
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
    /// The SHA-256 fingerprint of the node's DTLS certificate (`AB:CD:...`), put into
    /// every answer (`sfu::dtls::DtlsIdentity::fingerprint_hex`).
    fingerprint: String,
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
    pub fn new(epoch: Instant, candidates: Vec<SocketAddr>, fingerprint: String) -> MediaSessions {
        MediaSessions {
            registry: RwLock::new(Registry::default()),
            epoch,
            candidates,
            fingerprint,
        }
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
            fingerprint: &self.fingerprint,
            candidates: &self.candidates,
        });
        let ufrag = local.ufrag.clone();
        let agent = IceAgent::new(local, Some(offer.ice.clone()), self.now_ms());
        let session = Arc::new(Session {
            room: room.to_owned(),
            participant: participant.to_owned(),
            closed: AtomicBool::new(false),
            owner: AtomicUsize::new(NO_OWNER),
            media: Mutex::new(SessionMedia { agent }),
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
            s.closed.store(true, Ordering::Relaxed);
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
        by_ufrag.retain(|_, s| {
            let kept = keep(&s.room, &s.participant);
            if !kept {
                s.closed.store(true, Ordering::Relaxed);
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
    /// (RFC 7675: no valid check for 30 s). They stay registered; the caller makes the
    /// participant leave and then removes them.
    pub fn consent_expired(&self, now_ms: u64) -> Vec<(String, String)> {
        let reg = self.read();
        reg.by_ufrag
            .values()
            .filter(|s| s.media().agent.consent_expired(now_ms))
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

/// One worker's view of the registry: ufrag → session, filled on first use.
pub struct SessionCache {
    worker: usize,
    sessions: Arc<MediaSessions>,
    cache: HashMap<Box<[u8]>, Arc<Session>>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("worker", &self.worker)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl SessionCache {
    pub fn new(worker: usize, sessions: Arc<MediaSessions>) -> SessionCache {
        SessionCache {
            worker,
            sessions,
            cache: HashMap::new(),
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
                CheckVerdict::Reply(len)
            }
            IceVerdict::Error { len, .. } => CheckVerdict::Reply(len),
            IceVerdict::NotMine => CheckVerdict::NotOurs,
            IceVerdict::Malformed => CheckVerdict::Malformed,
        }
    }

    /// Forgets closed sessions (run now and then, off the per-packet path).
    pub fn sweep(&mut self) {
        self.cache.retain(|_, s| !s.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{Class, Writer, attr, method};

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

    const FINGERPRINT: &str = "6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:\
                               DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC";

    fn sessions() -> Arc<MediaSessions> {
        Arc::new(MediaSessions::new(
            Instant::now(),
            vec!["192.0.2.1:3478".parse().unwrap()],
            FINGERPRINT.to_owned(),
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
        assert!(answer.contains(&format!("a=fingerprint:sha-256 {FINGERPRINT}")));
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
