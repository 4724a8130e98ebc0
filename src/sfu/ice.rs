//! ICE-lite responder (RFC 8445 §2.5, §7.3) with consent freshness (RFC 7675).
//!
//! The SFU has one public address and never moves, so it is a *lite* agent: it gathers
//! only host candidates (put into its SDP), never sends checks of its own and is always
//! the controlled agent. The browser, a full agent, sends Binding requests whose
//! USERNAME is `<our ufrag>:<its ufrag>`, signed with *our* password; each valid one is
//! answered in place and proves that the address it came from reaches the browser.
//!
//! Decisions worth knowing:
//! - The client's address is whatever `src` a valid check came from: a host, a
//!   peer-reflexive address behind a NAT, or a TURN relay's address (confnode's own or
//!   another's). Lite agents learn addresses from checks; candidates in the client's
//!   SDP are not needed at all.
//! - USE-CANDIDATE nominates the pair the check came on (RFC 8445 §7.3.1.5); a later
//!   nomination from another address moves the selection (a network change on the
//!   client: the controlling agent decides, we follow).
//! - A copy of a nominating check from another address than the one it came from is
//!   refused (`IceVerdict::Replayed`): someone on the path who saw it could otherwise
//!   move the session's media to any address of theirs with it. Checks carry no time,
//!   so the agent remembers the transaction ids of the last `NOMINATIONS`
//!   nominations; a copy of an older one (a client that renominates often, as Chrome
//!   does on every check of its selected pair) would still move the media, until the
//!   client's next nomination takes it back. A copy of a check that nominates nothing
//!   moves nothing, and is answered like any valid check.
//! - Consent (RFC 7675) is per address: only valid checks from the *selected* address
//!   keep the session alive once one is selected. Before any nomination, any valid check
//!   counts, and the clock starts when the agent is made, so a participant whose
//!   browser never connects expires like one whose checks stop.
//! - FINGERPRINT is required: RFC 8445 §7.1.1 puts it on every check, and on the shared
//!   media port it is what tells an ICE check from stray bytes (RFC 7983).
//! - Error answers follow RFC 8489 §9.1.3: 400 and 401 carry no MESSAGE-INTEGRITY (we
//!   cannot or must not sign them), 420 and 487 come after authentication and are
//!   signed. Nothing in the agent changes on any error.
//! - Answering allocates nothing: the agent's state is fixed-size and the reply is
//!   written over the request (proved in `tests/ice_alloc.rs`).

use std::fmt;
use std::net::SocketAddr;

use rand_core::RngCore;

use crate::stun::canonical;

use crate::stun::message::{Class, Message, WriteError, Writer, attr, method};

/// A session whose selected address sends no valid check for this long has lost
/// consent (RFC 7675 §5.1: 30 seconds) and leaves.
pub(crate) const CONSENT_TIMEOUT_MS: u64 = 30_000;
/// Characters in a generated ufrag: 8 of 64 symbols, 48 bits. It only needs to be
/// unique among the node's sessions (the data plane routes checks by it); the caller
/// regenerates on the rare collision.
pub(crate) const UFRAG_LEN: usize = 8;
/// Characters in a generated password: 24 of 64 symbols, 144 bits (RFC 8445 §5.3 asks
/// for at least 128 bits of randomness).
pub(crate) const PWD_LEN: usize = 24;
// Each generated character carries 6 random bits.
const _: () = assert!(PWD_LEN * 6 >= 128 && UFRAG_LEN >= 4 && PWD_LEN <= 32);
/// Client addresses remembered per agent. Chrome checks a handful of pairs (host,
/// server-reflexive, relayed, IPv4 and IPv6); beyond this the least recently seen
/// unselected address is forgotten, so a flood of valid checks cannot grow the state.
const MAX_PATHS: usize = 8;
/// Nominating checks remembered, to refuse copies of them from elsewhere: a client
/// nominates once per selected pair (webrtc-rs, Firefox) or on every check of it
/// (Chrome, about every 2.5 s once connected).
const NOMINATIONS: usize = 8;

/// 64 ICE characters (RFC 8445 §15.1: ALPHA / DIGIT / "+" / "/"): 6 random bits map to
/// one character with no modulo bias.
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// An ICE username fragment and password (RFC 8839 §5.4).
#[derive(Clone, PartialEq, Eq)]
pub struct IceCredentials {
    /// Username fragment: 4 to 256 ICE characters (we make 8).
    pub ufrag: String,
    /// Password: 22 to 256 ICE characters (we make 24).
    pub pwd: String,
}

impl fmt::Debug for IceCredentials {
    // The password is a secret: it never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .finish()
    }
}

impl IceCredentials {
    /// Fresh local credentials from `rng` (the node's is seeded from the OS, tests pass
    /// a fixed seed).
    pub(crate) fn generate(rng: &mut impl RngCore) -> IceCredentials {
        IceCredentials {
            ufrag: random_ice_string(rng, UFRAG_LEN),
            pwd: random_ice_string(rng, PWD_LEN),
        }
    }

    /// Credentials taken from a peer's SDP, checked against RFC 8839 §5.4: a ufrag of
    /// 4 to 256 ICE characters, a password of 22 to 256.
    pub fn parse(ufrag: &str, pwd: &str) -> Result<IceCredentials, &'static str> {
        if !(4..=256).contains(&ufrag.len()) || !is_ice_chars(ufrag) {
            return Err("ice-ufrag must be 4 to 256 ICE characters");
        }
        if !(22..=256).contains(&pwd.len()) || !is_ice_chars(pwd) {
            return Err("ice-pwd must be 22 to 256 ICE characters");
        }
        Ok(IceCredentials {
            ufrag: ufrag.to_owned(),
            pwd: pwd.to_owned(),
        })
    }
}

/// Whether `s` is made of ICE characters only (ALPHA / DIGIT / "+" / "/").
pub(crate) fn is_ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn random_ice_string(rng: &mut impl RngCore, len: usize) -> String {
    let mut bytes = [0u8; 32];
    let bytes = &mut bytes[..len.min(32)];
    rng.fill_bytes(bytes);
    bytes
        .iter()
        .map(|b| char::from(ICE_CHARS[usize::from(b & 0x3F)]))
        .collect()
}

/// The local-ufrag part of a Binding request's USERNAME (`<local>:<remote>`), for the
/// data plane to find the agent with one map lookup and no allocation. `None` for
/// anything but a Binding request whose USERNAME has a colon.
pub fn local_ufrag<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    if (msg.method(), msg.class()) != (method::BINDING, Class::Request) {
        return None;
    }
    split_username(msg.get(attr::USERNAME)?).map(|(local, _)| local)
}

/// `<local>:<remote>` split at the first colon (ICE characters have none).
fn split_username(user: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = user.iter().position(|&b| b == b':')?;
    Some((&user[..colon], &user[colon + 1..]))
}

/// What [`IceAgent::handle_binding`] did with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IceVerdict {
    /// A valid check: the success response is in `buf[..len]`; send it to `src`.
    /// `newly_selected` when this check's USE-CANDIDATE moved the selection to `src`
    /// (the data plane then points the session's media at it).
    Success {
        /// Length of the response in `buf`.
        len: usize,
        /// The check nominated `src` and the selection moved to it.
        newly_selected: bool,
    },
    /// An error response (400, 401, 420 or 487) is in `buf[..len]`; send it to `src`.
    /// The agent's state did not change.
    Error {
        /// Length of the response in `buf`.
        len: usize,
        /// The STUN error code sent.
        code: u16,
    },
    /// Not a Binding request for this agent's ufrag: the buffer is untouched.
    NotMine,
    /// Not well-formed STUN, no valid FINGERPRINT, or a buffer too small to answer in:
    /// drop and count.
    Malformed,
    /// A copy of a check that nominated, from another address than the one it came
    /// from: someone on the path replaying it to draw the session's media to them.
    /// Nothing was answered and nothing changed: drop and count.
    Replayed,
}

/// One client address that sent a valid check.
#[derive(Clone, Copy, Debug)]
struct Path {
    addr: SocketAddr,
    last_check_ms: u64,
}

/// A check that nominated: its transaction id, and where it came from.
#[derive(Clone, Copy, Debug)]
struct Nomination {
    transaction: [u8; 12],
    from: SocketAddr,
}

/// The ICE-lite side of one peer connection.
#[derive(Debug)]
pub struct IceAgent {
    local: IceCredentials,
    remote: Option<IceCredentials>,
    paths: [Option<Path>; MAX_PATHS],
    selected: Option<SocketAddr>,
    /// When the agent was made or last heard a valid check from any address: the
    /// consent clock before a nomination.
    last_any_ms: u64,
    /// The last nominations, oldest overwritten first (at `next_nomination`).
    nominations: [Option<Nomination>; NOMINATIONS],
    next_nomination: usize,
}

/// What a check asks of us, read before the buffer is overwritten with the answer.
struct Check {
    use_candidate: bool,
    controlling: bool,
    controlled: bool,
    unknown: Unknown,
}

/// Comprehension-required attributes an ICE check may not carry; a few are enough to
/// tell the client what went wrong.
#[derive(Clone, Copy, Default)]
struct Unknown {
    types: [u16; 4],
    count: usize,
}

impl Unknown {
    fn insert(&mut self, typ: u16) {
        if self.count < self.types.len() && !self.types[..self.count].contains(&typ) {
            self.types[self.count] = typ;
            self.count += 1;
        }
    }
}

impl IceAgent {
    /// An agent with our `local` credentials, made at `now_ms`. `remote` comes from the
    /// client's SDP: known at once for a publisher (its offer), later for a subscriber
    /// (its answer; checks may arrive before it and are answered all the same).
    pub fn new(local: IceCredentials, remote: Option<IceCredentials>, now_ms: u64) -> IceAgent {
        IceAgent {
            local,
            remote,
            paths: [None; MAX_PATHS],
            selected: None,
            last_any_ms: now_ms,
            nominations: [None; NOMINATIONS],
            next_nomination: 0,
        }
    }

    pub(crate) fn local(&self) -> &IceCredentials {
        &self.local
    }

    pub(crate) fn remote(&self) -> Option<&IceCredentials> {
        self.remote.as_ref()
    }

    /// Records the client's credentials from its SDP answer.
    pub(crate) fn set_remote(&mut self, remote: IceCredentials) {
        self.remote = Some(remote);
    }

    /// Starts the consent clock again, for every address: the client's answer came,
    /// and what it checked before keeps counting from now.
    pub(crate) fn restart_consent(&mut self, now_ms: u64) {
        self.last_any_ms = now_ms;
        for path in self.paths.iter_mut().flatten() {
            path.last_check_ms = path.last_check_ms.max(now_ms);
        }
    }

    /// The address the client nominated, where media goes.
    pub fn selected(&self) -> Option<SocketAddr> {
        self.selected
    }

    /// Whether `addr` sent a valid check: media (DTLS, SRTP) is accepted from it.
    pub(crate) fn is_validated(&self, addr: SocketAddr) -> bool {
        self.path(addr).is_some()
    }

    /// When consent runs out unless another valid check arrives first: the timer the
    /// caller sets.
    pub(crate) fn consent_deadline_ms(&self) -> u64 {
        let last = match self.selected.and_then(|a| self.path(a)) {
            Some(path) => path.last_check_ms,
            None => self.last_any_ms,
        };
        last.saturating_add(CONSENT_TIMEOUT_MS)
    }

    /// Whether no valid check arrived (from the selected address, once there is one)
    /// for [`CONSENT_TIMEOUT_MS`]: the participant has gone.
    pub fn consent_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.consent_deadline_ms()
    }

    fn path(&self, addr: SocketAddr) -> Option<&Path> {
        self.paths.iter().flatten().find(|p| p.addr == addr)
    }

    /// `buf[..len]` is a STUN message from `src`, routed here because its USERNAME
    /// starts with our ufrag (see [`local_ufrag`]); `buf` is the whole receive slot
    /// (a few hundred bytes suffice for any answer). The answer, if any, replaces the
    /// request in `buf`.
    pub fn handle_binding(
        &mut self,
        buf: &mut [u8],
        len: usize,
        src: SocketAddr,
        now_ms: u64,
    ) -> IceVerdict {
        let Some(raw) = buf.get(..len) else {
            return IceVerdict::Malformed;
        };
        let Ok(msg) = Message::parse(raw) else {
            return IceVerdict::Malformed;
        };
        let transaction = *msg.transaction_id();
        if (msg.method(), msg.class()) != (method::BINDING, Class::Request)
            || !msg.has_magic_cookie()
        {
            return IceVerdict::NotMine;
        }
        let Some((lfrag, rfrag)) = msg.get(attr::USERNAME).and_then(split_username) else {
            return IceVerdict::NotMine;
        };
        if lfrag != self.local.ufrag.as_bytes() {
            return IceVerdict::NotMine;
        }
        if msg.verify_fingerprint() != Some(true) {
            return IceVerdict::Malformed;
        }
        let verdict = match msg.verify_integrity(self.local.pwd.as_bytes()) {
            None => Err((400, "Bad Request", false)),
            Some(false) => Err((401, "Unauthenticated", false)),
            // A ufrag from an earlier session of the client (before an ICE restart):
            // the password matched but the pairing is stale.
            Some(true)
                if self
                    .remote
                    .as_ref()
                    .is_some_and(|r| r.ufrag.as_bytes() != rfrag) =>
            {
                Err((401, "Unauthenticated", false))
            }
            Some(true) => Ok(inspect(&msg)),
        };
        let answered = match verdict {
            Err((code, reason, signed)) => self.reject(buf, code, reason, signed, None),
            Ok(check) if check.unknown.count > 0 => {
                self.reject(buf, 420, "Unknown Attribute", true, Some(&check.unknown))
            }
            // We are lite, so always controlled: a client that believes it is
            // controlled too is told to take the controlling role (RFC 8445 §7.3.1.1).
            Ok(check) if check.controlled => self.reject(buf, 487, "Role Conflict", true, None),
            // §7.1.1.2: a check carries the sender's role; without it we cannot tell
            // that the client controls nomination.
            Ok(check) if !check.controlling => self.reject(buf, 400, "Bad Request", true, None),
            Ok(check) if check.use_candidate && self.is_copy(&transaction, src) => {
                return IceVerdict::Replayed;
            }
            Ok(check) => {
                let nomination = check.use_candidate.then_some(Nomination {
                    transaction,
                    from: src,
                });
                return self.accept(buf, src, now_ms, nomination);
            }
        };
        answered.unwrap_or(IceVerdict::Malformed)
    }

    /// Answers a valid check with XOR-MAPPED-ADDRESS, then updates the state; a check
    /// with USE-CANDIDATE brings its `nomination`.
    fn accept(
        &mut self,
        buf: &mut [u8],
        src: SocketAddr,
        now_ms: u64,
        nomination: Option<Nomination>,
    ) -> IceVerdict {
        let len = match self.success(buf, src) {
            Ok(len) => len,
            Err(_) => return IceVerdict::Malformed,
        };
        self.last_any_ms = self.last_any_ms.max(now_ms);
        self.touch(src, now_ms);
        let newly_selected = nomination.is_some() && self.selected != Some(src);
        if let Some(n) = nomination {
            self.selected = Some(src);
            self.remember_nomination(n);
        }
        IceVerdict::Success {
            len,
            newly_selected,
        }
    }

    /// Whether a nominating check with this transaction id came before from another
    /// address than `src` (a retransmission comes from the same one).
    fn is_copy(&self, transaction: &[u8; 12], src: SocketAddr) -> bool {
        self.nominations
            .iter()
            .flatten()
            .any(|n| n.transaction == *transaction && n.from != src)
    }

    fn remember_nomination(&mut self, n: Nomination) {
        let known = self
            .nominations
            .iter()
            .flatten()
            .any(|m| m.transaction == n.transaction);
        if known {
            return; // a retransmission
        }
        if let Some(slot) = self.nominations.get_mut(self.next_nomination) {
            *slot = Some(n);
        }
        self.next_nomination = (self.next_nomination + 1) % NOMINATIONS;
    }

    fn success(&self, buf: &mut [u8], src: SocketAddr) -> Result<usize, WriteError> {
        let mut w = Writer::reuse_header(buf, method::BINDING, Class::Success)?;
        // The mapped address is the client's IPv4 address even when a dual-stack socket
        // reported it as `::ffff:a.b.c.d`; `src` itself stays as the data plane gave
        // it, since that is the form its socket sends to.
        w.add_xor_address(attr::XOR_MAPPED_ADDRESS, canonical(src))?;
        w.add_integrity(self.local.pwd.as_bytes())?;
        w.add_fingerprint()?;
        Ok(w.finish())
    }

    fn reject(
        &self,
        buf: &mut [u8],
        code: u16,
        reason: &str,
        signed: bool,
        unknown: Option<&Unknown>,
    ) -> Option<IceVerdict> {
        let mut w = Writer::reuse_header(buf, method::BINDING, Class::Error).ok()?;
        w.add_error_code(code, reason).ok()?;
        if let Some(u) = unknown {
            w.add_unknown_attributes(&u.types[..u.count]).ok()?;
        }
        if signed {
            w.add_integrity(self.local.pwd.as_bytes()).ok()?;
        }
        w.add_fingerprint().ok()?;
        Some(IceVerdict::Error {
            len: w.finish(),
            code,
        })
    }

    /// Notes a valid check from `addr`, making room by forgetting the least recently
    /// seen address that is not the selected one.
    fn touch(&mut self, addr: SocketAddr, now_ms: u64) {
        if let Some(path) = self.paths.iter_mut().flatten().find(|p| p.addr == addr) {
            path.last_check_ms = path.last_check_ms.max(now_ms);
            return;
        }
        let selected = self.selected;
        let slot = match self.paths.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                let oldest = self
                    .paths
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.map(|p| (i, p)))
                    .filter(|(_, p)| Some(p.addr) != selected)
                    .min_by_key(|(_, p)| p.last_check_ms);
                match oldest {
                    Some((i, _)) => i,
                    None => return,
                }
            }
        };
        self.paths[slot] = Some(Path {
            addr,
            last_check_ms: now_ms,
        });
    }
}

/// Reads what the answer depends on out of an authenticated check.
fn inspect(msg: &Message<'_>) -> Check {
    let mut check = Check {
        use_candidate: false,
        controlling: false,
        controlled: false,
        unknown: Unknown::default(),
    };
    for a in msg.attributes() {
        match a.typ {
            attr::USE_CANDIDATE => check.use_candidate = true,
            attr::ICE_CONTROLLING => check.controlling = true,
            attr::ICE_CONTROLLED => check.controlled = true,
            attr::USERNAME
            | attr::PRIORITY
            | attr::MESSAGE_INTEGRITY
            | attr::MESSAGE_INTEGRITY_SHA256 => {}
            typ if attr::is_comprehension_required(typ) => check.unknown.insert(typ),
            // Comprehension-optional: Chrome's GOOG-NETWORK-INFO, NOMINATION, SOFTWARE...
            _ => {}
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::tests::hex;

    const TID: [u8; 12] = [7; 12];

    fn creds(ufrag: &str, pwd: &str) -> IceCredentials {
        IceCredentials::parse(ufrag, pwd).unwrap()
    }

    fn local() -> IceCredentials {
        creds("SfuA", "serverpassword0123456789")
    }

    fn remote() -> IceCredentials {
        creds("Clnt", "clientpassword0123456789")
    }

    fn agent() -> IceAgent {
        IceAgent::new(local(), Some(remote()), 1_000)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// How a test check is built.
    #[derive(Clone, Copy)]
    struct Req<'a> {
        username: Option<&'a [u8]>,
        key: Option<&'a [u8]>,
        use_candidate: bool,
        controlling: bool,
        controlled: bool,
        extra: Option<u16>,
        fingerprint: bool,
        transaction: [u8; 12],
    }

    const CHECK: Req<'static> = Req {
        username: Some(b"SfuA:Clnt"),
        key: Some(b"serverpassword0123456789"),
        use_candidate: false,
        controlling: true,
        controlled: false,
        extra: None,
        fingerprint: true,
        transaction: TID,
    };

    fn slot(req: Req<'_>) -> ([u8; 1500], usize) {
        let mut buf = [0u8; 1500];
        let mut w =
            Writer::new(&mut buf, method::BINDING, Class::Request, &req.transaction).unwrap();
        if let Some(u) = req.username {
            w.add(attr::USERNAME, u).unwrap();
        }
        w.add_u32(attr::PRIORITY, 0x6e7f_1eff).unwrap();
        if req.use_candidate {
            w.add(attr::USE_CANDIDATE, &[]).unwrap();
        }
        if req.controlling {
            w.add(attr::ICE_CONTROLLING, &[1; 8]).unwrap();
        }
        if req.controlled {
            w.add(attr::ICE_CONTROLLED, &[2; 8]).unwrap();
        }
        if let Some(t) = req.extra {
            w.add(t, b"x").unwrap();
        }
        // Chrome's GOOG-NETWORK-INFO: comprehension-optional, ignored.
        w.add(0xC057, &[0, 1, 0, 0]).unwrap();
        if let Some(k) = req.key {
            w.add_integrity(k).unwrap();
        }
        if req.fingerprint {
            w.add_fingerprint().unwrap();
        }
        let n = w.finish();
        (buf, n)
    }

    fn run(agent: &mut IceAgent, req: Req<'_>, src: SocketAddr, now: u64) -> (IceVerdict, Vec<u8>) {
        let (mut buf, len) = slot(req);
        let v = agent.handle_binding(&mut buf, len, src, now);
        let out = match v {
            IceVerdict::Success { len, .. } | IceVerdict::Error { len, .. } => buf[..len].to_vec(),
            _ => Vec::new(),
        };
        (v, out)
    }

    fn error_code(msg: &Message<'_>) -> u16 {
        let v = msg.get(attr::ERROR_CODE).unwrap();
        u16::from(v[2]) * 100 + u16::from(v[3])
    }

    #[test]
    fn generated_credentials_are_ice_chars_and_long_enough() {
        use rand_chacha::rand_core::SeedableRng;
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(1);
        let a = IceCredentials::generate(&mut rng);
        let b = IceCredentials::generate(&mut rng);
        assert_ne!(a, b);
        for c in [&a, &b] {
            assert_eq!(c.ufrag.len(), UFRAG_LEN);
            assert_eq!(c.pwd.len(), PWD_LEN);
            assert!(IceCredentials::parse(&c.ufrag, &c.pwd).is_ok());
        }
        assert!(!format!("{a:?}").contains(&a.pwd));
    }

    #[test]
    fn credential_syntax() {
        assert!(IceCredentials::parse("abc", "serverpassword0123456789").is_err());
        assert!(IceCredentials::parse("ab:c", "serverpassword0123456789").is_err());
        assert!(IceCredentials::parse("abcd", "short").is_err());
        assert!(IceCredentials::parse("abcd", "has space in it 0123456789").is_err());
        assert!(IceCredentials::parse("a+/d", "0123456789+/0123456789").is_ok());
    }

    #[test]
    fn answers_a_valid_check() {
        let mut a = agent();
        let src = addr("198.51.100.7:50000");
        let (v, out) = run(&mut a, CHECK, src, 2_000);
        assert!(matches!(
            v,
            IceVerdict::Success {
                newly_selected: false,
                ..
            }
        ));
        let msg = Message::parse(&out).unwrap();
        assert_eq!(
            (msg.method(), msg.class()),
            (method::BINDING, Class::Success)
        );
        assert_eq!(msg.transaction_id(), &TID);
        assert_eq!(msg.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(src)));
        assert_eq!(
            msg.verify_integrity(b"serverpassword0123456789"),
            Some(true)
        );
        assert_eq!(msg.verify_fingerprint(), Some(true));
        assert!(a.is_validated(src));
        assert_eq!(a.selected(), None, "no USE-CANDIDATE, no selection");
    }

    #[test]
    fn use_candidate_selects_and_moves() {
        let mut a = agent();
        let first = addr("203.0.113.9:40000"); // e.g. a TURN relay's address
        let req = Req {
            use_candidate: true,
            ..CHECK
        };
        let (v, _) = run(&mut a, req, first, 2_000);
        assert!(matches!(
            v,
            IceVerdict::Success {
                newly_selected: true,
                ..
            }
        ));
        assert_eq!(a.selected(), Some(first));
        let (v, _) = run(&mut a, req, first, 3_000);
        assert!(matches!(
            v,
            IceVerdict::Success {
                newly_selected: false,
                ..
            }
        ));
        // Checks from elsewhere without USE-CANDIDATE do not move media.
        let other = addr("[2001:db8::5]:6000");
        run(&mut a, CHECK, other, 3_500);
        assert_eq!(a.selected(), Some(first));
        assert!(a.is_validated(other));
        // A nomination from the new address does (a new check: a new transaction).
        let again = Req {
            transaction: [8; 12],
            ..req
        };
        let (v, _) = run(&mut a, again, other, 4_000);
        assert!(matches!(
            v,
            IceVerdict::Success {
                newly_selected: true,
                ..
            }
        ));
        assert_eq!(a.selected(), Some(other));
    }

    #[test]
    fn a_copy_of_a_nomination_from_elsewhere_moves_nothing() {
        let mut a = agent();
        let client = addr("198.51.100.7:5000");
        let nominate = Req {
            use_candidate: true,
            ..CHECK
        };
        run(&mut a, nominate, client, 2_000);
        assert_eq!(a.selected(), Some(client));
        // Someone on the path sends it again from an address of theirs: refused, not
        // answered, the address not validated, the media staying where it is.
        let thief = addr("203.0.113.9:4000");
        let (v, out) = run(&mut a, nominate, thief, 2_100);
        assert_eq!(v, IceVerdict::Replayed);
        assert!(out.is_empty());
        assert_eq!(a.selected(), Some(client));
        assert!(!a.is_validated(thief));
        // Also once it is no longer the latest nomination.
        for i in 0..NOMINATIONS as u8 - 1 {
            let later = Req {
                transaction: [100 + i; 12],
                ..nominate
            };
            run(&mut a, later, client, 3_000 + u64::from(i));
        }
        assert_eq!(run(&mut a, nominate, thief, 4_000).0, IceVerdict::Replayed);
        // Its retransmission from the client is answered as before.
        let (v, _) = run(&mut a, nominate, client, 4_100);
        assert!(matches!(
            v,
            IceVerdict::Success {
                newly_selected: false,
                ..
            }
        ));
        // A copy without USE-CANDIDATE of a check that had it still nominates nothing:
        // answered, as any valid check is.
        let (v, _) = run(&mut a, CHECK, thief, 4_200);
        assert!(matches!(
            v,
            IceVerdict::Success {
                newly_selected: false,
                ..
            }
        ));
        assert_eq!(a.selected(), Some(client));
        // A fresh nomination from another address (the client moved) is followed.
        let moved = addr("198.51.100.7:6000");
        let fresh = Req {
            transaction: [9; 12],
            ..nominate
        };
        let (v, _) = run(&mut a, fresh, moved, 5_000);
        assert!(matches!(
            v,
            IceVerdict::Success {
                newly_selected: true,
                ..
            }
        ));
        assert_eq!(a.selected(), Some(moved));
    }

    #[test]
    fn mapped_ipv4_source_gets_its_ipv4_address() {
        let mut a = agent();
        let src = addr("[::ffff:192.0.2.33]:1234");
        let req = Req {
            use_candidate: true,
            ..CHECK
        };
        let (_, out) = run(&mut a, req, src, 2_000);
        let msg = Message::parse(&out).unwrap();
        assert_eq!(
            msg.xor_address(attr::XOR_MAPPED_ADDRESS),
            Some(Ok(addr("192.0.2.33:1234")))
        );
        assert_eq!(a.selected(), Some(src), "kept as the socket reported it");
    }

    #[test]
    fn wrong_password_gets_401_and_changes_nothing() {
        let mut a = agent();
        let src = addr("198.51.100.7:1");
        let req = Req {
            key: Some(b"not the password at all!"),
            use_candidate: true,
            ..CHECK
        };
        let (v, out) = run(&mut a, req, src, 2_000);
        assert!(matches!(v, IceVerdict::Error { code: 401, .. }));
        let msg = Message::parse(&out).unwrap();
        assert_eq!(msg.class(), Class::Error);
        assert_eq!(error_code(&msg), 401);
        assert_eq!(msg.integrity_offset(), None, "401 is not signed");
        assert_eq!(msg.verify_fingerprint(), Some(true));
        assert_eq!(a.selected(), None);
        assert!(!a.is_validated(src));
        assert_eq!(a.consent_deadline_ms(), 1_000 + CONSENT_TIMEOUT_MS);
    }

    #[test]
    fn stale_remote_ufrag_gets_401() {
        let mut a = agent();
        let req = Req {
            username: Some(b"SfuA:Old1"),
            ..CHECK
        };
        let (v, _) = run(&mut a, req, addr("198.51.100.7:1"), 2_000);
        assert!(matches!(v, IceVerdict::Error { code: 401, .. }));
    }

    #[test]
    fn checks_before_the_remote_credentials_are_answered() {
        let mut a = IceAgent::new(local(), None, 0);
        let req = Req {
            username: Some(b"SfuA:anything"),
            use_candidate: true,
            ..CHECK
        };
        let src = addr("198.51.100.7:1");
        let (v, _) = run(&mut a, req, src, 10);
        assert!(matches!(v, IceVerdict::Success { .. }));
        a.set_remote(remote());
        assert_eq!(a.remote(), Some(&remote()));
        assert_eq!(a.selected(), Some(src));
    }

    #[test]
    fn missing_integrity_gets_unsigned_400() {
        let mut a = agent();
        let req = Req { key: None, ..CHECK };
        let (v, out) = run(&mut a, req, addr("198.51.100.7:1"), 2_000);
        assert!(matches!(v, IceVerdict::Error { code: 400, .. }));
        let msg = Message::parse(&out).unwrap();
        assert_eq!(msg.integrity_offset(), None);
    }

    #[test]
    fn role_conflict_and_missing_role() {
        let mut a = agent();
        let src = addr("198.51.100.7:1");
        let req = Req {
            controlling: false,
            controlled: true,
            use_candidate: true,
            ..CHECK
        };
        let (v, out) = run(&mut a, req, src, 2_000);
        assert!(matches!(v, IceVerdict::Error { code: 487, .. }));
        let msg = Message::parse(&out).unwrap();
        assert_eq!(error_code(&msg), 487);
        assert_eq!(
            msg.verify_integrity(b"serverpassword0123456789"),
            Some(true)
        );
        assert_eq!(a.selected(), None);
        assert!(!a.is_validated(src));

        let req = Req {
            controlling: false,
            ..CHECK
        };
        let (v, out) = run(&mut a, req, src, 2_000);
        assert!(matches!(v, IceVerdict::Error { code: 400, .. }));
        let msg = Message::parse(&out).unwrap();
        assert_eq!(
            msg.verify_integrity(b"serverpassword0123456789"),
            Some(true)
        );
        assert!(!a.is_validated(src));
    }

    #[test]
    fn unknown_required_attribute_gets_signed_420() {
        let mut a = agent();
        let req = Req {
            extra: Some(0x7ABC),
            ..CHECK
        };
        let (v, out) = run(&mut a, req, addr("198.51.100.7:1"), 2_000);
        assert!(matches!(v, IceVerdict::Error { code: 420, .. }));
        let msg = Message::parse(&out).unwrap();
        assert_eq!(msg.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x7A, 0xBC][..]));
        assert_eq!(
            msg.verify_integrity(b"serverpassword0123456789"),
            Some(true)
        );
    }

    #[test]
    fn not_mine_leaves_the_buffer_alone() {
        let mut a = agent();
        let src = addr("198.51.100.7:1");
        for req in [
            Req {
                username: Some(b"Othr:Clnt"),
                ..CHECK
            },
            Req {
                username: Some(b"SfuAClnt"),
                ..CHECK
            },
            Req {
                username: None,
                ..CHECK
            },
        ] {
            let (mut buf, len) = slot(req);
            let before = buf;
            assert_eq!(a.handle_binding(&mut buf, len, src, 0), IceVerdict::NotMine);
            assert_eq!(buf, before);
        }
        // A Binding response is no check.
        let mut buf = [0u8; 64];
        let n = Writer::new(&mut buf, method::BINDING, Class::Success, &TID)
            .unwrap()
            .finish();
        assert_eq!(a.handle_binding(&mut buf, n, src, 0), IceVerdict::NotMine);
    }

    #[test]
    fn fingerprint_is_required_and_checked() {
        let mut a = agent();
        let src = addr("198.51.100.7:1");
        let req = Req {
            fingerprint: false,
            ..CHECK
        };
        assert_eq!(run(&mut a, req, src, 0).0, IceVerdict::Malformed);
        let (mut buf, len) = slot(CHECK);
        buf[len - 1] ^= 1;
        assert_eq!(
            a.handle_binding(&mut buf, len, src, 0),
            IceVerdict::Malformed
        );
        assert!(!a.is_validated(src));
    }

    #[test]
    fn malformed_and_short_buffers() {
        let mut a = agent();
        let src = addr("198.51.100.7:1");
        let mut buf = [0u8; 1500];
        assert_eq!(a.handle_binding(&mut buf, 0, src, 0), IceVerdict::Malformed);
        assert_eq!(
            a.handle_binding(&mut buf, 1501, src, 0),
            IceVerdict::Malformed
        );
        let (mut full, len) = slot(Req {
            use_candidate: true,
            ..CHECK
        });
        assert_eq!(
            a.handle_binding(&mut full, len - 4, src, 0),
            IceVerdict::Malformed
        );
        // A valid check is always at least as long as our answer (USERNAME, ICE-CONTROLLING,
        // MESSAGE-INTEGRITY and FINGERPRINT outweigh XOR-MAPPED-ADDRESS), so answering
        // within the request's own bytes works even for an IPv6 source.
        let mut exact = full[..len].to_vec();
        let v = a.handle_binding(&mut exact, len, addr("[2001:db8::1]:1"), 0);
        assert!(matches!(v, IceVerdict::Success { .. }), "{v:?}");
        assert!(a.selected().is_some());
    }

    #[test]
    fn consent_freshness() {
        let a = agent(); // made at 1 000 ms
        assert!(!a.consent_expired(30_999));
        assert!(a.consent_expired(31_000), "never checked: gone after 30 s");

        let mut a = agent();
        let sel = addr("198.51.100.7:1");
        let other = addr("198.51.100.8:1");
        let nominate = Req {
            use_candidate: true,
            ..CHECK
        };
        run(&mut a, nominate, sel, 10_000);
        run(&mut a, CHECK, sel, 20_000); // consent checks need no USE-CANDIDATE
        assert_eq!(a.consent_deadline_ms(), 50_000);
        // Checks from another address keep only that address alive.
        run(&mut a, CHECK, other, 45_000);
        assert!(!a.consent_expired(49_999));
        assert!(a.consent_expired(50_000));
        // A failed check refreshes nothing.
        let bad = Req {
            key: Some(b"wrong password 123456789"),
            ..CHECK
        };
        run(&mut a, bad, sel, 49_000);
        assert!(a.consent_expired(50_000));
        run(&mut a, CHECK, sel, 49_500);
        assert!(!a.consent_expired(79_499));
        assert!(a.consent_expired(79_500));
    }

    #[test]
    fn address_table_is_bounded_and_keeps_the_selection() {
        let mut a = agent();
        let sel = addr("198.51.100.1:1");
        run(
            &mut a,
            Req {
                use_candidate: true,
                ..CHECK
            },
            sel,
            0,
        );
        for port in 2..100u16 {
            let src = SocketAddr::new(addr("198.51.100.1:1").ip(), port);
            run(&mut a, CHECK, src, u64::from(port));
        }
        assert_eq!(a.paths.iter().flatten().count(), MAX_PATHS);
        assert!(a.is_validated(sel));
        assert!(a.is_validated(addr("198.51.100.1:99")));
        assert!(!a.is_validated(addr("198.51.100.1:2")));
    }

    #[test]
    fn local_ufrag_reads_the_first_part() {
        let (buf, len) = slot(CHECK);
        let msg = Message::parse(&buf[..len]).unwrap();
        assert_eq!(local_ufrag(&msg), Some(&b"SfuA"[..]));
        let (buf, len) = slot(Req {
            username: Some(b"nocolon"),
            ..CHECK
        });
        assert_eq!(local_ufrag(&Message::parse(&buf[..len]).unwrap()), None);
        let (buf, len) = slot(Req {
            username: None,
            ..CHECK
        });
        assert_eq!(local_ufrag(&Message::parse(&buf[..len]).unwrap()), None);
    }

    #[test]
    fn rfc5769_sample_request_is_routed_and_answered() {
        // RFC 5769 §2.1: USERNAME "evtj:h6vY", password "VOkJxbRl1RmTxUk/WvJxBt",
        // ICE-CONTROLLED (the sample's sender is controlled): we answer 487, signed.
        let request = hex("00010058 2112a442 b7e7a701 bc34d686 fa87dfae
             80220010 5354554e 20746573 7420636c 69656e74
             00240004 6e0001ff
             80290008 932ff9b1 51263b36
             00060009 6576746a 3a683676 59202020
             00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
             80280004 e57a3bcf");
        let msg = Message::parse(&request).unwrap();
        assert_eq!(local_ufrag(&msg), Some(&b"evtj"[..]));
        let mut a = IceAgent::new(creds("evtj", "VOkJxbRl1RmTxUk/WvJxBt"), None, 0);
        let mut buf = [0u8; 1500];
        buf[..request.len()].copy_from_slice(&request);
        let src = addr("192.0.2.1:32853");
        let v = a.handle_binding(&mut buf, request.len(), src, 0);
        let IceVerdict::Error { len, code: 487 } = v else {
            panic!("expected 487, got {v:?}");
        };
        let out = Message::parse(&buf[..len]).unwrap();
        assert_eq!(out.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"), Some(true));
        assert_eq!(out.transaction_id(), msg.transaction_id());
    }

    #[test]
    fn webrtc_stun_builds_a_check_we_accept() {
        use stun::agent::TransactionId;
        use stun::attributes::ATTR_USERNAME;
        use stun::fingerprint::FINGERPRINT;
        use stun::integrity::MessageIntegrity;
        use stun::message::{BINDING_REQUEST, Message as Theirs, Setter};
        use stun::textattrs::TextAttribute;

        let mut theirs = Theirs::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, "SfuA:Clnt".to_owned())),
            Box::new(RawAttr(attr::ICE_CONTROLLING, vec![0; 8])),
            Box::new(RawAttr(attr::USE_CANDIDATE, vec![])),
            Box::new(MessageIntegrity::new_short_term_integrity(
                "serverpassword0123456789".to_owned(),
            )),
            Box::new(FINGERPRINT),
        ];
        theirs.build(&setters).unwrap();
        let mut a = agent();
        let mut buf = [0u8; 1500];
        let n = theirs.raw.len();
        buf[..n].copy_from_slice(&theirs.raw);
        let src = addr("198.51.100.50:5000");
        let v = a.handle_binding(&mut buf, n, src, 0);
        let IceVerdict::Success {
            len,
            newly_selected: true,
        } = v
        else {
            panic!("expected success, got {v:?}");
        };
        let mut reply = Theirs::new();
        reply.unmarshal_binary(&buf[..len]).unwrap();
        MessageIntegrity::new_short_term_integrity("serverpassword0123456789".to_owned())
            .check(&mut reply)
            .unwrap();
        FINGERPRINT.check(&reply).unwrap();
    }

    /// An attribute the `stun` crate has no type for.
    struct RawAttr(u16, Vec<u8>);

    impl stun::message::Setter for RawAttr {
        fn add_to(&self, m: &mut stun::message::Message) -> Result<(), stun::Error> {
            m.add(stun::attributes::AttrType(self.0), &self.1);
            Ok(())
        }
    }
}
