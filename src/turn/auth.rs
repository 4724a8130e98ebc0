//! TURN authentication (RFC 8489 §9.2 long-term credentials, RFC 8656 §7), sans-IO.
//!
//! Two credential sources, as coturn has them:
//! - static users (`turn.users`): key = MD5(username ":" realm ":" password), computed
//!   once at start;
//! - the TURN REST API (coturn's `use-auth-secret`): username `<unix-expiry>:<id>` (or a
//!   bare `<unix-expiry>`, or coturn's other order `<id>:<unix-expiry>`), password =
//!   base64(HMAC-SHA1(secret, username)). Any of several secrets is accepted so they can
//!   be rotated.
//!
//! Nonces are stateless: the issue time and an HMAC over it and the client's transport
//! address, so nothing is stored for a client before it authenticates. Answers to
//! unauthenticated requests (401, 438) go through a fixed-size per-source rate limiter so
//! the node cannot be used to reflect traffic at a spoofed address.
//!
//! Time comes in as arguments (unix seconds, milliseconds for the limiter): no clocks.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::net::client::client_prefix;
use crate::stun::message::{attr, long_term_key};
use crate::stun::{Message, WriteError, Writer};

/// How long a nonce stays valid, in seconds (coturn's default `stale-nonce` is the same).
/// A nonce whose issue time is further than this from `now` in either direction (the
/// clock may step back) is stale; the client gets a 438 and retries with the fresh one.
pub(crate) const NONCE_LIFETIME_SECS: u64 = 600;
/// Length of a nonce on the wire: [`NONCE_RAW_LEN`] bytes, lowercase hex.
pub(crate) const NONCE_LEN: usize = 2 * NONCE_RAW_LEN;
// RFC 8489 §14.10: NONCE is fewer than 128 characters.
const _: () = assert!(NONCE_LEN < 128);
/// Issue time (4 bytes, big-endian unix seconds: good until 2106) and a 12-byte
/// truncated HMAC-SHA256. Short, as it goes into every unauthenticated answer.
const NONCE_RAW_LEN: usize = 4 + NONCE_TAG_LEN;
/// 96 bits of tag: forging a nonce is as hard as guessing a random 96-bit value, online,
/// within the nonce's lifetime.
const NONCE_TAG_LEN: usize = 12;

/// Slots in the per-source limiter of unauthenticated answers (a power of two).
pub(crate) const CHALLENGE_BUCKETS: usize = 4096;
/// Unauthenticated answers a source may get in a burst. Every client's first request
/// is answered with a 401, and a whole office behind one NAT address may join at once,
/// so the bucket is deep; a reflector it still is not, as a 401 is about twice the size
/// of the request and a victim gets at most this many, then `CHALLENGE_PER_SEC`.
pub const CHALLENGE_BURST: u32 = 200;
/// Unauthenticated answers a source may get per second, sustained.
pub const CHALLENGE_PER_SEC: u32 = 100;
/// Token amounts are kept in thousandths so refill works in whole milliseconds.
const MILLI: u32 = 1000;

/// The key an unknown username's integrity is checked against (never matches in
/// practice: it only makes the check cost what a known user's does).
const UNKNOWN_USER_KEY: [u8; 16] = [0x5a; 16];
/// USERNAME is "fewer than 509 bytes" (RFC 8489 §14.3).
const MAX_USERNAME_LEN: usize = 508;
/// Length of base64 of a 20-byte HMAC-SHA1: the REST API password.
const REST_PASSWORD_LEN: usize = 28;

/// What marks a TURN REST username as a room credential of this node's room API:
/// `<expiry>:room:<room>:<participant>`.
const ROOM_MARK: &str = "room:";

/// The (room, participant) of a room credential's username, if it is one.
pub(crate) fn room_credential(username: &str) -> Option<(&str, &str)> {
    let (_, rest) = username.split_once(':')?;
    rest.strip_prefix(ROOM_MARK)?.split_once(':')
}

/// The room API, as TURN asks it whether a room credential's participant is still in
/// its room (a credential is good only while they are).
pub(crate) trait Presence: Send + Sync {
    fn is_present(&self, room: &str, participant: &str) -> bool;
}

/// Where the room API is found once it exists (it starts after the TURN cores).
pub(crate) type PresenceHook = Arc<OnceLock<Weak<dyn Presence>>>;

/// The identity a request authenticated as, and the key its response is signed with.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) username: Box<str>,
    /// MD5(username ":" realm ":" password), RFC 8489 §9.2.2: the key of the response's
    /// MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256).
    pub(crate) key: [u8; 16],
}

impl fmt::Debug for Credentials {
    /// The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a request did not authenticate, and so which error to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// No MESSAGE-INTEGRITY: answer 401 with REALM and NONCE.
    Challenge,
    /// Unknown user, expired REST username or integrity mismatch: 401 with REALM and NONCE.
    WrongCredentials,
    /// A nonce that is expired, bound to another client address, or not ours: 438 with a
    /// fresh NONCE and REALM.
    StaleNonce,
    /// MESSAGE-INTEGRITY without USERNAME, REALM or NONCE: 400.
    BadRequest,
}

impl Reject {
    /// The STUN error code to answer with.
    pub const fn error_code(self) -> u16 {
        match self {
            Reject::Challenge | Reject::WrongCredentials => 401,
            Reject::StaleNonce => 438,
            Reject::BadRequest => 400,
        }
    }

    /// The reason phrase for ERROR-CODE (RFC 8489 §14.8, RFC 8656 §19).
    pub const fn reason(self) -> &'static str {
        match self {
            Reject::Challenge | Reject::WrongCredentials => "Unauthenticated",
            Reject::StaleNonce => "Stale Nonce",
            Reject::BadRequest => "Bad Request",
        }
    }

    /// Whether the answer carries REALM and NONCE ([`Auth::add_challenge`]).
    pub const fn needs_challenge(self) -> bool {
        !matches!(self, Reject::BadRequest)
    }
}

/// One data-plane worker's authenticator: credentials, the nonce key and the limiter of
/// unauthenticated answers. Built once from configuration and cloned per worker; each
/// clone has its own limiter table.
#[derive(Clone)]
pub struct Auth {
    realm: Box<str>,
    /// Static users and REST secrets; shared by every clone (a TCP/TLS connection gets a
    /// clone of its own, so this must not be copied per clone), and replaced as a whole
    /// on SIGHUP ([`Auth::replace_credentials`]).
    known: Arc<RwLock<Arc<Secrets>>>,
    /// HMAC-SHA256 keyed with the nonce secret.
    nonce_mac: Hmac<Sha256>,
    limiter: ChallengeLimiter,
    /// The room API, for room credentials; until it is set they are refused.
    presence: PresenceHook,
}

/// What a request's credentials are checked against.
struct Secrets {
    /// Static users and their precomputed long-term keys.
    users: BTreeMap<Box<str>, [u8; 16]>,
    /// One HMAC-SHA1 state per REST secret, already keyed (saves rehashing the key).
    secrets: Vec<Hmac<Sha1>>,
}

impl Secrets {
    /// `secrets`: empty strings are skipped (an empty HMAC key would let anyone mint
    /// passwords).
    fn new(realm: &str, users: &BTreeMap<String, String>, secrets: &[String]) -> Secrets {
        let users = users
            .iter()
            .map(|(name, password)| {
                let key = long_term_key(name.as_bytes(), realm.as_bytes(), password.as_bytes());
                (Box::from(name.as_str()), key)
            })
            .collect();
        let secrets = secrets
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| Hmac::<Sha1>::new_from_slice(s.as_bytes()).ok())
            .collect();
        Secrets { users, secrets }
    }
}

impl fmt::Debug for Auth {
    /// Counts only: no keys, secrets or user names in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.known();
        f.debug_struct("Auth")
            .field("realm", &self.realm)
            .field("users", &c.users.len())
            .field("secrets", &c.secrets.len())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `users` maps static usernames to passwords; `secrets` are TURN REST API secrets
    /// (empty strings are skipped: an empty HMAC key would let anyone mint passwords);
    /// `nonce_secret` keys the nonces and should be random per process (every worker
    /// must share it, or nonces issued by one are stale at another).
    pub fn new(
        realm: &str,
        users: &BTreeMap<String, String>,
        secrets: &[String],
        nonce_secret: [u8; 32],
    ) -> Auth {
        let known = Secrets::new(realm, users, secrets);
        // Not input-dependent: HMAC takes keys of any length, so this cannot fail.
        let nonce_mac =
            Hmac::<Sha256>::new_from_slice(&nonce_secret).expect("HMAC accepts any key length");
        Auth {
            realm: realm.into(),
            known: Arc::new(RwLock::new(Arc::new(known))),
            nonce_mac,
            limiter: ChallengeLimiter::new(),
            presence: Arc::new(OnceLock::new()),
        }
    }

    /// Replaces the static users and REST secrets of this `Auth` and every clone
    /// (SIGHUP). The realm stays: allocations' keys were made with it. Allocations keep
    /// running; their next refresh is checked against the new credentials.
    pub(crate) fn replace_credentials(&self, users: &BTreeMap<String, String>, secrets: &[String]) {
        let new = Arc::new(Secrets::new(&self.realm, users, secrets));
        *self.known.write().unwrap_or_else(PoisonError::into_inner) = new;
    }

    /// The credentials now in force (a reference count, no copy).
    fn known(&self) -> Arc<Secrets> {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Where to put the room API once it exists; shared by every clone.
    pub(crate) fn presence_hook(&self) -> PresenceHook {
        self.presence.clone()
    }

    /// A clone for one TCP or TLS connection: the same credentials and nonce key, but a
    /// limiter of a single bucket instead of a table of [`CHALLENGE_BUCKETS`]. A
    /// connection has one source, whose address the TCP handshake proved (so no
    /// reflection is possible), and the table would cost 64 KiB per connection.
    pub(crate) fn for_connection(&self) -> Auth {
        Auth {
            realm: self.realm.clone(),
            known: self.known.clone(),
            nonce_mac: self.nonce_mac.clone(),
            limiter: ChallengeLimiter::with_buckets(1),
            presence: self.presence.clone(),
        }
    }

    /// The realm sent in challenges and used in long-term keys.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Checks a request's USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (or
    /// MESSAGE-INTEGRITY-SHA256 under the same key; when both are present both must
    /// match), in the order of RFC 8489 §9.2.4: 400, then 438, then 401.
    ///
    /// The key always follows the MD5 password algorithm: our nonces never start with the
    /// "obMatJos2" cookie, so clients do not negotiate PASSWORD-ALGORITHM (§9.2.3).
    /// USERHASH is not supported (a request with it but no USERNAME gets 400).
    pub(crate) fn check(
        &self,
        msg: &Message<'_>,
        src: SocketAddr,
        now: u64,
    ) -> Result<Credentials, Reject> {
        if msg.integrity_offset().is_none() && msg.integrity_sha256_offset().is_none() {
            return Err(Reject::Challenge);
        }
        let (Some(username), Some(_), Some(nonce)) = (
            msg.get(attr::USERNAME),
            msg.get(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            return Err(Reject::BadRequest);
        };
        if !self.nonce_is_valid(nonce, src, now) {
            return Err(Reject::StaleNonce);
        }
        // REALM itself is not compared: the key is built with our realm, so a request
        // signed for another realm fails the integrity check with 401 as it should.
        let username = std::str::from_utf8(username).map_err(|_| Reject::WrongCredentials)?;
        if username.len() > MAX_USERNAME_LEN {
            return Err(Reject::WrongCredentials);
        }
        let key = self.verified_key(msg, username, now)?;
        Ok(Credentials {
            username: username.into(),
            key,
        })
    }

    /// The long-term key of `username` under which `msg` verifies. A static user wins
    /// over the REST scheme when both are configured.
    fn verified_key(
        &self,
        msg: &Message<'_>,
        username: &str,
        now: u64,
    ) -> Result<[u8; 16], Reject> {
        let known = self.known();
        if let Some(key) = known.users.get(username) {
            return integrity_matches(msg, key)
                .then_some(*key)
                .ok_or(Reject::WrongCredentials);
        }
        let Some(expiry) = rest_expiry(username) else {
            // An unknown name costs the same integrity check as a known one, so the
            // time taken does not tell which static users exist.
            let _ = integrity_matches(msg, &UNKNOWN_USER_KEY);
            return Err(Reject::WrongCredentials);
        };
        if expiry < now {
            return Err(Reject::WrongCredentials);
        }
        // Rotation: whichever secret the username's password was made with.
        let key = known
            .secrets
            .iter()
            .map(|secret| self.rest_key(secret, username))
            .find(|key| integrity_matches(msg, key))
            .ok_or(Reject::WrongCredentials)?;
        // A room credential is good while its participant is in the room.
        if let Some((room, participant)) = room_credential(username) {
            let present = self
                .presence
                .get()
                .and_then(Weak::upgrade)
                .is_some_and(|p| p.is_present(room, participant));
            if !present {
                return Err(Reject::WrongCredentials);
            }
        }
        Ok(key)
    }

    /// MD5(username ":" realm ":" base64(HMAC-SHA1(secret, username))).
    fn rest_key(&self, secret: &Hmac<Sha1>, username: &str) -> [u8; 16] {
        let mut password = [0u8; REST_PASSWORD_LEN];
        let len = rest_password_into(secret, username, &mut password);
        long_term_key(username.as_bytes(), self.realm.as_bytes(), &password[..len])
    }

    /// Appends REALM and a fresh NONCE for `src` to a response being written (after
    /// ERROR-CODE, before any integrity attribute).
    pub(crate) fn add_challenge(
        &self,
        w: &mut Writer<'_>,
        src: SocketAddr,
        now: u64,
    ) -> Result<(), WriteError> {
        w.add(attr::REALM, self.realm.as_bytes())?;
        w.add(attr::NONCE, &self.nonce(src, now))
    }

    /// A nonce issued at `now` to the client at `src`: lowercase hex of the issue time
    /// (4 bytes, big-endian) followed by HMAC-SHA256(nonce secret, time || client IP as
    /// 16 bytes (IPv4 mapped) || client port), truncated to 12 bytes. 32 printable
    /// characters, within RFC 8489's limit of 128 for NONCE.
    pub fn nonce(&self, src: SocketAddr, now: u64) -> [u8; NONCE_LEN] {
        let tag = self.nonce_tag(now, src).finalize().into_bytes();
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..4].copy_from_slice(&(now as u32).to_be_bytes());
        raw[4..].copy_from_slice(&tag[..NONCE_TAG_LEN]);
        hex_encode(&raw)
    }

    /// Whether `nonce` was issued by this node (any worker sharing the nonce secret) to
    /// `src`, within [`NONCE_LIFETIME_SECS`] of `now`.
    fn nonce_is_valid(&self, nonce: &[u8], src: SocketAddr, now: u64) -> bool {
        let Some(raw) = hex_decode::<NONCE_RAW_LEN>(nonce) else {
            return false;
        };
        let (time, tag) = raw.split_at(4);
        let mut issued = [0u8; 4];
        issued.copy_from_slice(time);
        let issued = u64::from(u32::from_be_bytes(issued));
        if now.abs_diff(issued) >= NONCE_LIFETIME_SECS {
            return false;
        }
        // Constant-time comparison of the tag.
        self.nonce_tag(issued, src)
            .verify_truncated_left(tag)
            .is_ok()
    }

    fn nonce_tag(&self, issued: u64, src: SocketAddr) -> Hmac<Sha256> {
        let mut mac = self.nonce_mac.clone();
        mac.update(&(issued as u32).to_be_bytes());
        mac.update(&ip_bytes(src.ip()));
        mac.update(&src.port().to_be_bytes());
        mac
    }

    /// Per-source rate limit on 401/438 answers (so the node is no reflector): true =
    /// may answer. Call it before answering any request that did not authenticate.
    ///
    /// A fixed table of [`CHALLENGE_BUCKETS`] token buckets (burst [`CHALLENGE_BURST`],
    /// [`CHALLENGE_PER_SEC`] per second) indexed by a keyed hash (SipHash with a random
    /// key) of the source: the IPv4 address, or the /64 of an IPv6 one (one subscriber's
    /// LAN, which an attacker could otherwise spread spoofed sources over to multiply
    /// what one victim network receives). No allocation, no growth with the number of
    /// sources; sources that share a bucket share its budget. The table is one for the
    /// node: every worker's clone shares it.
    pub(crate) fn allow_challenge(&mut self, src: IpAddr, now_ms: u64) -> bool {
        self.limiter.allow(src, now_ms)
    }
}

/// Whether every integrity attribute `msg` carries verifies under `key` (and it has one).
fn integrity_matches(msg: &Message<'_>, key: &[u8; 16]) -> bool {
    #[cfg(test)]
    INTEGRITY_CHECKS.with(|n| n.set(n.get() + 1));
    match (msg.verify_integrity(key), msg.verify_integrity_sha256(key)) {
        (None, None) => false,
        (sha1, sha256) => sha1 != Some(false) && sha256 != Some(false),
    }
}

#[cfg(test)]
thread_local! {
    /// Integrity checks made on this thread (tests compare their cost per username).
    static INTEGRITY_CHECKS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The expiry a TURN REST username carries, read as coturn does: `<expiry>:<id>`, a bare
/// `<expiry>`, or else `<id>:<expiry>`. `None` when no part is a plain decimal number.
fn rest_expiry(username: &str) -> Option<u64> {
    match username.split_once(':') {
        None => decimal(username),
        Some((head, tail)) => decimal(head).or_else(|| decimal(tail)),
    }
}

/// Digits only: no sign, no spaces; `None` if empty or above `u64::MAX`.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The TURN REST API password of `username` (the one coturn and every REST issuer
/// compute): base64(HMAC-SHA1(secret, username)). What the room API hands out and
/// [`Auth`] verifies.
pub fn rest_password(secret: &str, username: &str) -> String {
    let mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    let mut out = [0u8; REST_PASSWORD_LEN];
    let len = rest_password_into(&mac, username, &mut out);
    String::from_utf8_lossy(&out[..len]).into_owned()
}

/// [`rest_password`] written into `out` without allocating; returns its length.
fn rest_password_into(
    secret: &Hmac<Sha1>,
    username: &str,
    out: &mut [u8; REST_PASSWORD_LEN],
) -> usize {
    use base64::Engine;
    let mut mac = secret.clone();
    mac.update(username.as_bytes());
    // 20 bytes take exactly 28 digits with padding: the slice always fits.
    base64::engine::general_purpose::STANDARD
        .encode_slice(mac.finalize().into_bytes(), out)
        .unwrap_or(0)
}

/// A client IP as 16 bytes, IPv4 in its mapped form so a dual-stack socket's
/// `::ffff:a.b.c.d` and a plain IPv4 socket's `a.b.c.d` are the same client.
fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn hex_encode<const N: usize, const M: usize>(raw: &[u8; N]) -> [u8; M] {
    let mut out = [0u8; M];
    for (pair, byte) in out.chunks_exact_mut(2).zip(raw) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    out
}

/// Decodes exactly `2 * N` lowercase hex digits (the only form we issue).
pub(crate) fn hex_decode<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The token buckets behind [`Auth::allow_challenge`]: one table for the whole node
/// (clones share it), so a source gets its budget once, not once per worker.
#[derive(Clone)]
struct ChallengeLimiter {
    /// Keyed SipHash: a source cannot aim at another source's bucket without the key.
    hasher: RandomState,
    /// Each bucket packs its tokens (in thousandths, high 32 bits) and the millisecond
    /// of its last refill (low 32 bits, wrapping), updated with compare-and-swap.
    buckets: Arc<[AtomicU64]>,
}

const FULL_BUCKET: u32 = CHALLENGE_BURST * MILLI;

/// Refills a bucket `(milli_tokens, last_ms)` for the time up to `now_ms`, then takes
/// one token if there is one: the new bucket, or `None` when empty.
fn take_token(milli_tokens: u32, last_ms: u32, now_ms: u32) -> Option<(u32, u32)> {
    // A clock that steps back (or a stale bucket) refills nothing.
    let elapsed = now_ms.wrapping_sub(last_ms);
    let (elapsed, last) = if elapsed > u32::MAX / 2 {
        (0, last_ms)
    } else {
        (elapsed, now_ms)
    };
    // `CHALLENGE_PER_SEC` tokens a second are as many thousandths a millisecond.
    let refill = u64::from(elapsed) * u64::from(CHALLENGE_PER_SEC);
    let filled = (u64::from(milli_tokens) + refill).min(u64::from(FULL_BUCKET)) as u32;
    (filled >= MILLI).then(|| (filled - MILLI, last))
}

impl ChallengeLimiter {
    fn new() -> ChallengeLimiter {
        ChallengeLimiter::with_buckets(CHALLENGE_BUCKETS)
    }

    /// `count` must be a power of two (the index is a mask of the hash).
    fn with_buckets(count: usize) -> ChallengeLimiter {
        let full = u64::from(FULL_BUCKET) << 32;
        ChallengeLimiter {
            hasher: RandomState::new(),
            buckets: (0..count).map(|_| AtomicU64::new(full)).collect(),
        }
    }

    fn allow(&self, src: IpAddr, now_ms: u64) -> bool {
        let Some(bucket) = self.buckets.get(self.index(src)) else {
            return false;
        };
        // Milliseconds wrap every 49 days; only differences of them are used.
        let now = now_ms as u32;
        bucket
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let (tokens, last) = ((packed >> 32) as u32, packed as u32);
                take_token(tokens, last, now).map(|(t, l)| (u64::from(t) << 32) | u64::from(l))
            })
            .is_ok()
    }

    fn index(&self, src: IpAddr) -> usize {
        // Truncating the hash is fine: only its low bits pick the bucket.
        self.hasher.hash_one(client_prefix(src)) as usize & (self.buckets.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::Class;
    use crate::stun::message::method;

    use stun::agent::TransactionId;
    use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
    use stun::integrity::MessageIntegrity;
    use stun::message::{CLASS_REQUEST, METHOD_ALLOCATE, Message as Theirs, MessageType, Setter};
    use stun::textattrs::TextAttribute;

    const REALM: &str = "confnode";
    const SECRET: &str = "north";
    const OLD_SECRET: &str = "south";
    /// Some time in 2025.
    const NOW: u64 = 1_750_000_000;
    /// The REST password of "1750003600:conference-42" under SECRET, from Python's
    /// hmac and base64 modules (an implementation we did not write).
    const PYTHON_REST_PASSWORD: &str = "WuqciR20ELKZ6kWZ5PrMjk/Rwh0=";

    fn src() -> SocketAddr {
        "203.0.113.7:50000".parse().expect("addr")
    }

    fn auth() -> Auth {
        let mut users = BTreeMap::new();
        users.insert("alice".to_owned(), "wonderland".to_owned());
        // A static user whose name looks like a REST one: the static password wins.
        users.insert("9999999999:static".to_owned(), "pw".to_owned());
        Auth::new(
            REALM,
            &users,
            &[SECRET.to_owned(), String::new(), OLD_SECRET.to_owned()],
            [7; 32],
        )
    }

    #[test]
    fn rest_password_matches_python() {
        // base64.b64encode(hmac.new(b"north", b"1750003600:conference-42", sha1).digest())
        assert_eq!(
            rest_password(SECRET, "1750003600:conference-42"),
            PYTHON_REST_PASSWORD
        );
    }

    /// An Allocate request built by webrtc-rs `stun`, signed for `username`/`password`.
    fn request(username: &str, password: &str, nonce: &[u8]) -> Vec<u8> {
        let mut m = Theirs::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.into())),
            Box::new(TextAttribute::new(ATTR_REALM, REALM.into())),
            Box::new(TextAttribute::new(
                ATTR_NONCE,
                String::from_utf8(nonce.to_vec()).expect("ascii nonce"),
            )),
            Box::new(MessageIntegrity::new_long_term_integrity(
                username.into(),
                REALM.into(),
                password.into(),
            )),
        ];
        m.build(&setters).expect("build");
        m.raw
    }

    fn check(a: &Auth, raw: &[u8], src: SocketAddr, now: u64) -> Result<Credentials, Reject> {
        a.check(&Message::parse(raw).expect("parse"), src, now)
    }

    #[test]
    fn static_user_right_and_wrong_password() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let ok = check(&a, &request("alice", "wonderland", &nonce), src(), NOW + 1);
        let creds = ok.expect("alice authenticates");
        assert_eq!(&*creds.username, "alice");
        assert_eq!(
            creds.key,
            long_term_key(b"alice", b"confnode", b"wonderland")
        );
        assert_eq!(
            check(&a, &request("alice", "looking-glass", &nonce), src(), NOW),
            Err(Reject::WrongCredentials)
        );
        assert_eq!(
            check(&a, &request("bob", "wonderland", &nonce), src(), NOW),
            Err(Reject::WrongCredentials)
        );
    }

    /// Timing must not tell which static usernames exist: a wrong password for a known
    /// user and any password for an unknown one cost one integrity check each.
    #[test]
    fn known_and_unknown_users_cost_the_same() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let checks = |user: &str| {
            let before = INTEGRITY_CHECKS.with(std::cell::Cell::get);
            let r = check(&a, &request(user, "guess", &nonce), src(), NOW);
            assert_eq!(r, Err(Reject::WrongCredentials));
            INTEGRITY_CHECKS.with(std::cell::Cell::get) - before
        };
        assert_eq!(checks("alice"), 1);
        assert_eq!(checks("mallory"), 1);
    }

    #[test]
    fn rest_usernames_with_each_secret() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let user = format!("{}:conference-42", NOW + 3600);
        let raw = request(&user, PYTHON_REST_PASSWORD, &nonce);
        assert!(check(&a, &raw, src(), NOW).is_ok());
        for secret in [SECRET, OLD_SECRET] {
            let creds = check(
                &a,
                &request(&user, &rest_password(secret, &user), &nonce),
                src(),
                NOW,
            )
            .expect("REST user authenticates");
            assert_eq!(&*creds.username, user);
        }
        assert_eq!(
            check(
                &a,
                &request(&user, &rest_password("east", &user), &nonce),
                src(),
                NOW
            ),
            Err(Reject::WrongCredentials)
        );
        // The empty secret in the list was skipped, not accepted.
        assert_eq!(
            check(
                &a,
                &request(&user, &rest_password("", &user), &nonce),
                src(),
                NOW
            ),
            Err(Reject::WrongCredentials)
        );
    }

    #[test]
    fn rest_username_forms() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let expiry = NOW + 60;
        for user in [
            format!("{expiry}"),
            format!("{expiry}:x"),
            format!("x:{expiry}"),
            format!("{expiry}:a:b"),
        ] {
            let raw = request(&user, &rest_password(SECRET, &user), &nonce);
            assert!(check(&a, &raw, src(), NOW).is_ok(), "{user}");
        }
        // An expiry that is no plain number, and no static user by that name.
        for user in ["x", "x:y", "+1750000060:x", "99999999999999999999999:x", ""] {
            let raw = request(user, &rest_password(SECRET, user), &nonce);
            assert_eq!(
                check(&a, &raw, src(), NOW),
                Err(Reject::WrongCredentials),
                "{user}"
            );
        }
        // A static user with a REST-looking name uses its static password.
        let raw = request("9999999999:static", "pw", &nonce);
        assert!(check(&a, &raw, src(), NOW).is_ok());
        let user = "9999999999:static";
        let raw = request(user, &rest_password(SECRET, user), &nonce);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::WrongCredentials));
    }

    #[test]
    fn expired_rest_username_refused() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let user = format!("{}:old", NOW - 1);
        let raw = request(&user, &rest_password(SECRET, &user), &nonce);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::WrongCredentials));
        // Valid up to and including the expiry second.
        let user = format!("{NOW}:edge");
        let raw = request(&user, &rest_password(SECRET, &user), &nonce);
        assert!(check(&a, &raw, src(), NOW).is_ok());
    }

    #[test]
    fn stale_nonce_after_lifetime() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let raw = request("alice", "wonderland", &nonce);
        assert!(check(&a, &raw, src(), NOW + NONCE_LIFETIME_SECS - 1).is_ok());
        assert_eq!(
            check(&a, &raw, src(), NOW + NONCE_LIFETIME_SECS),
            Err(Reject::StaleNonce)
        );
        // A clock stepping back a little keeps the nonce, a lot does not.
        assert!(check(&a, &raw, src(), NOW - 5).is_ok());
        assert_eq!(
            check(&a, &raw, src(), NOW - NONCE_LIFETIME_SECS),
            Err(Reject::StaleNonce)
        );
        // Stale wins over wrong credentials (RFC 8489 §9.2.4 order).
        let raw = request("alice", "nope", &nonce);
        assert_eq!(
            check(&a, &raw, src(), NOW + NONCE_LIFETIME_SECS),
            Err(Reject::StaleNonce)
        );
    }

    #[test]
    fn nonce_bound_to_client_address() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let raw = request("alice", "wonderland", &nonce);
        for other in [
            "203.0.113.7:50001",
            "203.0.113.8:50000",
            "[2001:db8::7]:50000",
        ] {
            let other: SocketAddr = other.parse().expect("addr");
            assert_eq!(
                check(&a, &raw, other, NOW),
                Err(Reject::StaleNonce),
                "{other}"
            );
        }
        // The mapped spelling of the same client is the same client.
        let mapped: SocketAddr = "[::ffff:203.0.113.7]:50000".parse().expect("addr");
        assert!(check(&a, &raw, mapped, NOW).is_ok());
        // Another node (another nonce secret) did not issue it.
        let mut users = BTreeMap::new();
        users.insert("alice".to_owned(), "wonderland".to_owned());
        let c = Auth::new(REALM, &users, &[], [8; 32]);
        assert_eq!(check(&c, &raw, src(), NOW), Err(Reject::StaleNonce));
    }

    #[test]
    fn garbage_nonces_are_stale() {
        let a = auth();
        let good = a.nonce(src(), NOW);
        let mut flipped = good;
        flipped[NONCE_LEN - 1] = if flipped[NONCE_LEN - 1] == b'0' {
            b'1'
        } else {
            b'0'
        };
        let mut later = good;
        later[15] = if later[15] == b'0' { b'1' } else { b'0' }; // issue time changed
        let upper = good.to_ascii_uppercase();
        let garbage: [&[u8]; 7] = [
            b"",
            b"x",
            b"obMatJos2AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &flipped,
            &later,
            &good[..NONCE_LEN - 2],
            &upper,
        ];
        for nonce in garbage {
            let raw = request("alice", "wonderland", nonce);
            assert_eq!(
                check(&a, &raw, src(), NOW),
                Err(Reject::StaleNonce),
                "{nonce:?}"
            );
        }
        // Non-UTF-8 bytes too (written with our own writer).
        let raw = own_request(&a, Some(b"alice"), Some(&[0xff; 48]), Integrity::Sha1);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::StaleNonce));
    }

    /// The budget of unauthenticated answers is the node's, not each worker's: what
    /// one clone spent, another cannot spend again.
    #[test]
    fn the_challenge_budget_is_shared_by_every_worker() {
        let mut one = auth();
        let mut two = one.clone();
        let victim: IpAddr = "198.51.100.1".parse().expect("ip");
        let mut answered = 0;
        for _ in 0..CHALLENGE_BURST {
            answered += usize::from(one.allow_challenge(victim, 0));
        }
        assert_eq!(answered, CHALLENGE_BURST as usize);
        assert!(
            !two.allow_challenge(victim, 0),
            "a second worker answered again"
        );
        // The budget refills with time, for every worker.
        assert!(two.allow_challenge(victim, 1_000));
    }

    #[test]
    fn nonce_format() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(
            nonce
                .iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(&nonce[..8], format!("{:08x}", NOW as u32).as_bytes());
        assert_eq!(
            NONCE_LEN, 32,
            "short: it goes into every unauthenticated answer"
        );
        // Deterministic per (time, address), different across either.
        assert_eq!(nonce, a.nonce(src(), NOW));
        assert_ne!(nonce, a.nonce(src(), NOW + 1));
        assert_ne!(
            nonce,
            a.nonce("203.0.113.7:50001".parse().expect("addr"), NOW)
        );
    }

    enum Integrity {
        None,
        Sha1,
        Sha256,
        Both,
    }

    /// A request written with our own [`Writer`] (webrtc-rs `stun` has no MI-SHA256).
    fn own_request(
        a: &Auth,
        username: Option<&[u8]>,
        nonce: Option<&[u8]>,
        mi: Integrity,
    ) -> Vec<u8> {
        let mut buf = [0u8; 1024];
        let mut w =
            Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[9; 12]).expect("writer");
        w.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .expect("attr");
        if let Some(username) = username {
            w.add(attr::USERNAME, username).expect("attr");
        }
        w.add(attr::REALM, a.realm().as_bytes()).expect("attr");
        if let Some(nonce) = nonce {
            w.add(attr::NONCE, nonce).expect("attr");
        }
        let key = long_term_key(b"alice", REALM.as_bytes(), b"wonderland");
        match mi {
            Integrity::None => {}
            Integrity::Sha1 => w.add_integrity(&key).expect("mi"),
            Integrity::Sha256 => w.add_integrity_sha256(&key).expect("mi"),
            Integrity::Both => {
                w.add_integrity(&key).expect("mi");
                w.add_integrity_sha256(&key).expect("mi");
            }
        }
        w.add_fingerprint().expect("fingerprint");
        let n = w.finish();
        buf[..n].to_vec()
    }

    #[test]
    fn integrity_sha256_and_both() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        for mi in [Integrity::Sha1, Integrity::Sha256, Integrity::Both] {
            let raw = own_request(&a, Some(b"alice"), Some(&nonce), mi);
            let creds = check(&a, &raw, src(), NOW).expect("authenticates");
            assert_eq!(&*creds.username, "alice");
        }
        // A wrong MI-SHA256 next to a right MI fails the whole request.
        let mut raw = own_request(&a, Some(b"alice"), Some(&nonce), Integrity::Both);
        let msg = Message::parse(&raw).expect("parse");
        let at = msg.integrity_sha256_offset().expect("mi-sha256") + 4;
        raw[at] ^= 1;
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::WrongCredentials));
        // And a wrong MI-SHA256 alone too.
        let mut raw = own_request(&a, Some(b"alice"), Some(&nonce), Integrity::Sha256);
        let at = Message::parse(&raw)
            .expect("parse")
            .integrity_sha256_offset()
            .expect("mi")
            + 10;
        raw[at] ^= 1;
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::WrongCredentials));
    }

    #[test]
    fn missing_attributes() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        // No integrity at all: a challenge, whatever else is there.
        let raw = own_request(&a, Some(b"alice"), Some(&nonce), Integrity::None);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::Challenge));
        let raw = own_request(&a, None, None, Integrity::None);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::Challenge));
        // Integrity without USERNAME or NONCE: 400.
        let raw = own_request(&a, None, Some(&nonce), Integrity::Sha1);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::BadRequest));
        let raw = own_request(&a, Some(b"alice"), None, Integrity::Sha256);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::BadRequest));
        // Not UTF-8, or too long: not a valid username.
        let raw = own_request(&a, Some(&[0xc3, 0x28]), Some(&nonce), Integrity::Sha1);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::WrongCredentials));
        let raw = own_request(&a, Some(&[b'a'; 509]), Some(&nonce), Integrity::Sha1);
        assert_eq!(check(&a, &raw, src(), NOW), Err(Reject::WrongCredentials));
    }

    #[test]
    fn missing_realm_is_bad_request() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[1; 12]).expect("w");
        w.add(attr::USERNAME, b"alice").expect("attr");
        w.add(attr::NONCE, &nonce).expect("attr");
        w.add_integrity(&long_term_key(b"alice", b"confnode", b"wonderland"))
            .expect("mi");
        let n = w.finish();
        assert_eq!(check(&a, &buf[..n], src(), NOW), Err(Reject::BadRequest));
    }

    #[test]
    fn another_realm_fails_integrity() {
        let a = auth();
        let nonce = a.nonce(src(), NOW);
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[1; 12]).expect("w");
        w.add(attr::USERNAME, b"alice").expect("attr");
        w.add(attr::REALM, b"elsewhere").expect("attr");
        w.add(attr::NONCE, &nonce).expect("attr");
        w.add_integrity(&long_term_key(b"alice", b"elsewhere", b"wonderland"))
            .expect("mi");
        let n = w.finish();
        assert_eq!(
            check(&a, &buf[..n], src(), NOW),
            Err(Reject::WrongCredentials)
        );
    }

    #[test]
    fn challenge_is_readable_by_webrtc_stun() {
        let a = auth();
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Error, &[2; 12]).expect("w");
        w.add_error_code(Reject::Challenge.error_code(), Reject::Challenge.reason())
            .expect("error code");
        a.add_challenge(&mut w, src(), NOW).expect("challenge");
        let n = w.finish();
        let mut theirs = Theirs::new();
        theirs.unmarshal_binary(&buf[..n]).expect("they parse it");
        let realm = TextAttribute::get_from_as(&theirs, ATTR_REALM).expect("realm");
        let nonce = TextAttribute::get_from_as(&theirs, ATTR_NONCE).expect("nonce");
        assert_eq!(realm.text, REALM);
        // The nonce they read back authenticates the next request.
        let raw = request("alice", "wonderland", nonce.text.as_bytes());
        assert!(check(&a, &raw, src(), NOW + 2).is_ok());
    }

    #[test]
    fn reject_codes() {
        assert_eq!(Reject::Challenge.error_code(), 401);
        assert_eq!(Reject::WrongCredentials.error_code(), 401);
        assert_eq!(Reject::StaleNonce.error_code(), 438);
        assert_eq!(Reject::BadRequest.error_code(), 400);
        assert!(Reject::StaleNonce.needs_challenge());
        assert!(!Reject::BadRequest.needs_challenge());
    }

    #[test]
    fn debug_hides_secrets() {
        let a = auth();
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("alice") && !shown.contains(SECRET),
            "{shown}"
        );
        let creds = Credentials {
            username: "alice".into(),
            key: [0xab; 16],
        };
        assert!(!format!("{creds:?}").contains("171"));
    }

    #[test]
    fn limiter_burst_refusal_refill() {
        let mut a = auth();
        let ip: IpAddr = "198.51.100.1".parse().expect("ip");
        let t = 5_000_000;
        for i in 0..CHALLENGE_BURST {
            assert!(a.allow_challenge(ip, t), "answer {i} of the burst");
        }
        assert!(!a.allow_challenge(ip, t));
        // One token every 1000 / CHALLENGE_PER_SEC ms.
        let step = u64::from(1000 / CHALLENGE_PER_SEC);
        assert!(!a.allow_challenge(ip, t + step - 1));
        assert!(a.allow_challenge(ip, t + step));
        assert!(!a.allow_challenge(ip, t + step));
        assert!(a.allow_challenge(ip, t + 2 * step));
        // A long pause refills to the burst, no further.
        let later = t + 3_600_000;
        let tries = 2 * CHALLENGE_BURST as usize;
        let granted = (0..tries).filter(|_| a.allow_challenge(ip, later)).count();
        assert_eq!(granted, CHALLENGE_BURST as usize);
        // A clock stepping back refills nothing and does not panic.
        assert!(!a.allow_challenge(ip, 0));
        assert!(a.allow_challenge(ip, later + step));
    }

    #[test]
    fn limiter_sources_are_independent() {
        let mut a = auth();
        let first: IpAddr = "198.51.100.1".parse().expect("ip");
        // A source in another bucket (4096 buckets: found within a few tries).
        let second = (2..=255u8)
            .map(|last| IpAddr::from([198, 51, 100, last]))
            .find(|ip| a.limiter.index(*ip) != a.limiter.index(first))
            .expect("another bucket");
        while a.allow_challenge(first, 1000) {}
        assert!(!a.allow_challenge(first, 1000));
        for _ in 0..CHALLENGE_BURST {
            assert!(a.allow_challenge(second, 1000));
        }
        // A clone (another worker) has its own table.
        let mut b = a.clone();
        b.limiter = ChallengeLimiter::new();
        assert!(b.allow_challenge(first, 1000));
    }

    #[test]
    fn limiter_groups_ipv6_by_slash_64_and_mapped_with_ipv4() {
        let a = auth();
        let l = &a.limiter;
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            l.index(v6("2001:db8:1:2::1")),
            l.index(v6("2001:db8:1:2:ffff::9"))
        );
        assert_eq!(
            l.index(v6("::ffff:198.51.100.1")),
            l.index(v6("198.51.100.1"))
        );
        assert_eq!(client_prefix(v6("2001:db8:1:2::1")), v6("2001:db8:1:2::"));
        assert_eq!(client_prefix(v6("::ffff:198.51.100.1")), v6("198.51.100.1"));
    }

    #[test]
    fn limiter_table_is_fixed() {
        let mut a = auth();
        for i in 0..100_000u32 {
            let _ = a.allow_challenge(IpAddr::from(i.to_be_bytes()), u64::from(i));
        }
        assert_eq!(a.limiter.buckets.len(), CHALLENGE_BUCKETS);
    }
}
