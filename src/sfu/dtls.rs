//! DTLS-SRTP (RFC 5763, RFC 5764) for the SFU's peer connections: the node's certificate
//! and, per peer connection, the DTLS 1.2 handshake in the passive (server) role that
//! proves the browser holds the certificate its SDP fingerprint names and exports the
//! SRTP keys.
//!
//! Why `dimpl` (str0m's sans-IO DTLS) and not `webrtc-dtls`: dimpl is a plain state
//! machine (datagrams and time in, records and timeouts out, no sockets, no clocks, no
//! tasks), so a handshake runs inside the data-plane worker that owns the participant's
//! 5-tuple, like `ice` beside it, and the keys land where SRTP runs without crossing a
//! thread. `webrtc-dtls` wants a `Conn` (async read/write) on tokio: every DTLS datagram
//! would travel to the control plane through a channel-backed connection and the keys
//! back. dimpl also does what WebRTC needs out of the box: ECDSA certificates, EMS,
//! `use_srtp` with the GCM and AES-CM profiles, RFC 5705 keying-material export, and
//! hands the peer's certificate to us to pin against the SDP fingerprint.
//!
//! Decisions worth knowing:
//! - dimpl's pure-Rust RustCrypto provider (`rust-crypto` feature, not the default
//!   aws-lc-rs: no C toolchain in the build). The certificate is made with rcgen on ring,
//!   which rustls already brings.
//! - DTLS 1.2 only ([`Dtls::new_12`]): what every browser speaks to an SFU today; a
//!   DTLS 1.3 ClientHello that also offers 1.2 is answered in 1.2.
//! - Always the server: our answers say `a=setup:passive` and our offers `actpass`, which
//!   browsers answer `active` (`sdp` refuses anything else).
//! - No HelloVerifyRequest cookie: its job (proving the source address before the server
//!   spends effort) is already done by ICE, whose checks the data plane requires before it
//!   routes a 5-tuple's DTLS here; the cookie would only add a round trip.
//! - The client must present a certificate, and its SHA-256 fingerprint must equal the
//!   `a=fingerprint` of its SDP; otherwise the session fails and no keys come out. dimpl
//!   itself verifies the CertificateVerify signature (possession of the key) and Finished.
//! - SRTP profile: dimpl's server picks AEAD_AES_256_GCM, then AEAD_AES_128_GCM, then
//!   AES128_CM_HMAC_SHA1_80 from what the client offers (not configurable); `srtp`
//!   implements all three, so GCM is used whenever the browser offers it.
//! - Records are at most [`DTLS_MTU`] bytes: under any path MTU, including the TURN
//!   relay's overhead, so no handshake flight needs IP fragmentation.
//! - Time: milliseconds on the data plane's monotonic clock (`Clock::mono_ms`), converted
//!   to dimpl's `Instant`s against the same epoch.
//! - Data channels are not offered, so application data (SCTP) is dropped.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dimpl::{Config, Dtls, DtlsCertificate, Output};
use rand_core::RngCore;
use sha2::{Digest, Sha256};

use super::sdp::Fingerprint;
use super::srtp::{MasterKey, SrtpContext, SrtpError, SrtpProfile, split_keying_material};

/// The largest DTLS record we send.
pub const DTLS_MTU: usize = 1150;
/// A handshake that has not completed this long after the ClientHello fails: ICE consent
/// (30 s) would end the session by then anyway.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long our certificate claims to be valid. Peers pin it by fingerprint and do not
/// check dates, but one that did must never see it expire while the node runs.
const CERT_VALIDITY_DAYS: i64 = 3650;

/// Why a DTLS session failed, or an identity could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DtlsError {
    /// Not a DTLS record: the first byte is outside 20..=63 (RFC 7983). Non-fatal: the
    /// datagram was ignored.
    NotDtls,
    /// During the handshake, a record of epoch 1 or later whose sequence number came
    /// before (see [`DtlsSession::repeats_an_early_record`]). Non-fatal: the datagram
    /// was ignored.
    RepeatedRecord,
    /// The peer's certificate does not hash to the fingerprint of its SDP.
    FingerprintMismatch,
    /// The handshake completed without the peer's certificate.
    NoPeerCertificate,
    /// The handshake completed without an SRTP profile both sides support.
    NoSrtpProfile,
    /// The SRTP keys could not be set up.
    Srtp(SrtpError),
    /// The DTLS handshake or record layer failed (dimpl's words).
    Protocol(String),
    /// Making our certificate failed.
    Certificate(String),
    /// dimpl panicked on what the peer sent (it asserts on some record sequences): the
    /// session is over, the worker that ran it is not.
    Panicked,
}

impl DtlsError {
    /// Whether the session is over. `NotDtls` and `RepeatedRecord` leave it as it was.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, DtlsError::NotDtls | DtlsError::RepeatedRecord)
    }
}

impl fmt::Display for DtlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DtlsError::NotDtls => f.write_str("not a DTLS record"),
            DtlsError::RepeatedRecord => {
                f.write_str("a record of a later epoch repeated during the handshake")
            }
            DtlsError::FingerprintMismatch => {
                f.write_str("peer certificate does not match its SDP fingerprint")
            }
            DtlsError::NoPeerCertificate => f.write_str("peer sent no certificate"),
            DtlsError::NoSrtpProfile => f.write_str("no common SRTP protection profile"),
            DtlsError::Srtp(e) => write!(f, "SRTP keys: {e}"),
            DtlsError::Protocol(e) => write!(f, "DTLS: {e}"),
            DtlsError::Certificate(e) => write!(f, "DTLS certificate: {e}"),
            DtlsError::Panicked => f.write_str("the DTLS library panicked on the peer's records"),
        }
    }
}

impl std::error::Error for DtlsError {}

/// The SHA-256 fingerprint of a DER certificate (RFC 8122).
pub fn fingerprint_of(der: &[u8]) -> Fingerprint {
    Fingerprint(Sha256::digest(der).into())
}

/// The node's DTLS certificate (ECDSA P-256, self-signed, made at start) with its
/// fingerprint for SDP, and the DTLS configuration every session shares.
pub struct DtlsIdentity {
    certificate: DtlsCertificate,
    fingerprint: Fingerprint,
    fingerprint_hex: String,
    config: Arc<Config>,
}

impl fmt::Debug for DtlsIdentity {
    // The private key never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("fingerprint", &self.fingerprint_hex)
            .finish()
    }
}

impl DtlsIdentity {
    /// A fresh key pair and self-signed certificate, valid from a day before `now`, with
    /// a serial number drawn from `rng`. (rcgen draws the key itself, from ring's
    /// generator.)
    pub(crate) fn generate(
        now: time::OffsetDateTime,
        rng: &mut impl RngCore,
    ) -> Result<DtlsIdentity, DtlsError> {
        let cert_err = |e: rcgen::Error| DtlsError::Certificate(e.to_string());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, "confnode");
        params.distinguished_name = name;
        // A day back, for peers whose clocks run behind ours.
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(CERT_VALIDITY_DAYS);
        // Random serial numbers: Firefox refuses a second certificate with an issuer and
        // serial it has seen before (mediasoup#127, str0m#517), and every node's issuer
        // name is the same.
        let mut serial = [0u8; 16];
        rng.fill_bytes(&mut serial);
        serial[0] &= 0x7F; // a positive DER INTEGER
        params.serial_number = Some(rcgen::SerialNumber::from(serial.to_vec()));
        let cert = params.self_signed(&key).map_err(cert_err)?;
        DtlsIdentity::from_der(cert.der().to_vec(), key.serialize_der())
    }

    /// An identity from a DER certificate and its PKCS#8 (or SEC1) DER private key.
    pub(crate) fn from_der(
        certificate: Vec<u8>,
        private_key: Vec<u8>,
    ) -> Result<DtlsIdentity, DtlsError> {
        let config = Config::builder()
            .mtu(DTLS_MTU)
            .use_server_cookie(false)
            .require_client_certificate(true)
            .handshake_timeout(HANDSHAKE_TIMEOUT)
            .with_crypto_provider(dimpl::crypto::rust_crypto::default_provider())
            .build()
            .map_err(|e| DtlsError::Certificate(e.to_string()))?;
        // dimpl parses the key again for every session and panics if it cannot: prove
        // here, once, that it can.
        config
            .crypto_provider()
            .key_provider
            .load_private_key(&private_key)
            .map_err(|e| DtlsError::Certificate(e.to_string()))?;
        let fingerprint = fingerprint_of(&certificate);
        Ok(DtlsIdentity {
            certificate: DtlsCertificate {
                certificate,
                private_key,
            },
            fingerprint,
            fingerprint_hex: fingerprint.to_string(),
            config: Arc::new(config),
        })
    }

    /// SHA-256 fingerprint of our certificate, for the SDP answer.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// `AB:CD:...`, as `sdp::LocalTransport::fingerprint` takes it.
    pub fn fingerprint_hex(&self) -> &str {
        &self.fingerprint_hex
    }

    /// The whole `a=fingerprint` value: `sha-256 AB:CD:...`.
    pub fn sdp_fingerprint(&self) -> String {
        format!("sha-256 {}", self.fingerprint_hex)
    }

    /// Our certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate.certificate
    }
}

/// How many SSRCs the two SRTP contexts of a session may track (see
/// [`SrtpContext::new`]). A publisher's connection receives a handful of streams and sends
/// only RTCP; a subscriber's sends one stream per forwarded track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrtpCapacity {
    /// SSRCs the inbound (unprotecting) context tracks.
    pub inbound: usize,
    /// SSRCs the outbound (protecting) context tracks.
    pub outbound: usize,
}

/// The SRTP contexts of an established session.
#[derive(Debug)]
pub struct SrtpPair {
    /// The protection profile the handshake agreed.
    pub profile: SrtpProfile,
    /// Unprotects what the peer sends: the client's write keys.
    pub inbound: SrtpContext,
    /// Protects what we send: the server's write keys.
    pub outbound: SrtpContext,
    /// The server's write master key, from which the streams to a receiver make their
    /// own contexts (`sfu::egress`).
    pub(crate) outbound_key: MasterKey,
}

/// What [`DtlsSession::poll_output`] has for the caller.
#[derive(Debug)]
pub enum DtlsOutput {
    /// A DTLS record is in `buf[..len]`: send it to the peer.
    Transmit(usize),
    /// The handshake completed, the peer's certificate matched its SDP fingerprint, and
    /// these are the session's SRTP contexts. Reported once.
    Connected(Box<SrtpPair>),
    /// The session failed; drop it (and the participant's media). Reported once.
    Failed(DtlsError),
    /// The peer closed the session (close_notify). Reported once.
    Closed,
    /// `buf` is too small for the next record (it needs this many bytes); nothing was
    /// lost, poll again with a bigger one. Cannot happen with [`DTLS_MTU`] bytes.
    BufferTooSmall(usize),
    /// Nothing more now. Call [`DtlsSession::handle_timeout`] at this time (ms on the
    /// session's clock), or feed the next datagram, whichever comes first. `None` once
    /// the session is over.
    Wait(Option<u64>),
}

/// Where a session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DtlsState {
    /// Before the handshake completed (or before it began).
    Handshaking,
    /// Handshake done, SRTP keys exported.
    Connected,
    /// The handshake or the connection failed; the session is done.
    Failed(DtlsError),
    /// The peer sent close_notify.
    Closed,
}

/// The DTLS side of one peer connection, in the passive (server) role.
pub struct DtlsSession {
    dtls: Dtls,
    epoch: Instant,
    remote: Fingerprint,
    capacity: SrtpCapacity,
    state: DtlsState,
    /// The peer's certificate matched `remote`.
    peer_verified: bool,
    /// dimpl reported the handshake complete; the SRTP keys follow in the same poll.
    handshake_done: bool,
    /// The end (`Failed`, `Closed`) was reported to the caller, or is no news to it.
    end_reported: bool,
    /// Records of epoch 1 and later seen during the handshake, as epoch << 48 |
    /// sequence number (see [`DtlsSession::repeats_an_early_record`]).
    early: [u64; EARLY_RECORDS],
    early_len: usize,
}

/// Records of a later epoch a handshake takes: a client sends its Finished (and a few
/// retransmissions of it, each under a new sequence number) before it has ours.
const EARLY_RECORDS: usize = 16;

/// The (epoch << 48 | sequence number) of each record of epoch 1 or later in a
/// datagram of DTLS 1.2 records (13-byte headers).
fn later_epoch_records(mut datagram: &[u8]) -> impl Iterator<Item = u64> {
    std::iter::from_fn(move || {
        loop {
            let header = datagram.get(..13)?;
            let epoch = u16::from_be_bytes([header[3], header[4]]);
            let mut key = u64::from(epoch);
            for &b in &header[5..11] {
                key = key << 8 | u64::from(b);
            }
            let len = 13 + usize::from(u16::from_be_bytes([header[11], header[12]]));
            datagram = datagram.get(len..).unwrap_or(&[]);
            if epoch != 0 {
                return Some(key);
            }
        }
    })
}

impl fmt::Debug for DtlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsSession")
            .field("state", &self.state)
            .field("remote", &self.remote)
            .finish()
    }
}

impl DtlsSession {
    /// A session waiting for the client's ClientHello. `remote` is the fingerprint of the
    /// client's SDP; `epoch` is the instant the data plane's `now_ms` counts from, and
    /// `now_ms` the current time on it.
    pub fn new(
        identity: &DtlsIdentity,
        remote: Fingerprint,
        capacity: SrtpCapacity,
        epoch: Instant,
        now_ms: u64,
    ) -> DtlsSession {
        let now = epoch + Duration::from_millis(now_ms);
        DtlsSession {
            dtls: Dtls::new_12(identity.config.clone(), identity.certificate.clone(), now),
            epoch,
            remote,
            capacity,
            state: DtlsState::Handshaking,
            peer_verified: false,
            handshake_done: false,
            end_reported: false,
            early: [0; EARLY_RECORDS],
            early_len: 0,
        }
    }

    /// Where the session is.
    pub fn state(&self) -> &DtlsState {
        &self.state
    }

    /// Whether the handshake completed and the session is open.
    pub fn is_connected(&self) -> bool {
        self.state == DtlsState::Connected
    }

    fn is_over(&self) -> bool {
        matches!(self.state, DtlsState::Failed(_) | DtlsState::Closed)
    }

    fn instant(&self, now_ms: u64) -> Instant {
        self.epoch + Duration::from_millis(now_ms)
    }

    /// An instant as ms on our clock, rounded up so a timer never fires early.
    fn millis(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// Runs `f` on dimpl, which is fed the peer's bytes and asserts on some of them
    /// (a duplicated early epoch-1 record, in 0.8): a panic fails this session
    /// ([`DtlsError::Panicked`]) instead of unwinding through the data-plane worker, and
    /// the half-updated dimpl state is never used again (every entry checks
    /// [`Self::is_over`] first).
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Dtls) -> T) -> Result<T, DtlsError> {
        let dtls = &mut self.dtls;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(dtls))) {
            Ok(v) => Ok(v),
            Err(_) => {
                self.state = DtlsState::Failed(DtlsError::Panicked);
                Err(DtlsError::Panicked)
            }
        }
    }

    fn fail(&mut self, e: DtlsError) -> DtlsError {
        if !self.is_over() {
            self.state = DtlsState::Failed(e.clone());
        }
        e
    }

    /// Feeds one received datagram (a DTLS record, first byte 20..=63). Then poll. An
    /// `Err` other than `NotDtls` has ended the session; `poll_output` reports it too.
    pub fn handle_datagram(&mut self, datagram: &[u8], now_ms: u64) -> Result<(), DtlsError> {
        if !matches!(datagram.first(), Some(20..=63)) {
            return Err(DtlsError::NotDtls);
        }
        if self.is_over() {
            return Ok(());
        }
        if self.repeats_an_early_record(datagram) {
            return Err(DtlsError::RepeatedRecord);
        }
        let now = self.instant(now_ms);
        // dimpl wants its clock moved before input at a new instant.
        let result = self.guarded(|d| {
            d.handle_timeout(now)
                .and_then(|()| d.handle_packet(datagram))
        })?;
        result.map_err(|e| self.fail(DtlsError::Protocol(e.to_string())))
    }

    /// Whether `datagram` holds a record of epoch 1 or later that one before held,
    /// during the handshake. dimpl 0.8 keeps such records until it has the keys to read
    /// them, and asserts that it never keeps one twice (the replay window comes only
    /// with the keys): a network's duplicate, or a peer's, must not reach it. Records
    /// beyond what a handshake takes are refused too.
    fn repeats_an_early_record(&mut self, datagram: &[u8]) -> bool {
        if self.handshake_done {
            return false;
        }
        let seen = &self.early[..self.early_len];
        if later_epoch_records(datagram).any(|key| seen.contains(&key)) {
            return true;
        }
        for key in later_epoch_records(datagram) {
            let Some(slot) = self.early.get_mut(self.early_len) else {
                return true;
            };
            *slot = key;
            self.early_len += 1;
        }
        false
    }

    /// Makes dimpl panic, as it would on input no test found yet: for the tests of
    /// what follows a panic.
    #[cfg(test)]
    pub(crate) fn panic_inside(&mut self) {
        let _ = self.guarded(|_| -> () { panic!("an assertion inside dimpl") });
    }

    /// Advances time: retransmits a flight whose timer ran out, or fails the handshake
    /// past its deadline. Then poll.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), DtlsError> {
        if self.is_over() {
            return Ok(());
        }
        let now = self.instant(now_ms);
        self.guarded(|d| d.handle_timeout(now))?
            .map_err(|e| self.fail(DtlsError::Protocol(e.to_string())))
    }

    /// Starts a graceful close: a close_notify alert comes out of the next polls.
    pub fn close(&mut self) {
        if self.is_over() {
            return;
        }
        let _ = self.guarded(|d| d.close());
        self.state = DtlsState::Closed;
        // Our own close is not news to the caller.
        self.end_reported = true;
    }

    /// The next thing to do. Call until it returns `Wait`, after every `handle_*`.
    /// Records are written into `buf`, which should hold [`DTLS_MTU`] bytes.
    pub fn poll_output(&mut self, buf: &mut [u8]) -> DtlsOutput {
        loop {
            if let Some(out) = self.report_end() {
                return out;
            }
            if self.is_over() && !matches!(self.state, DtlsState::Closed) {
                return DtlsOutput::Wait(None);
            }
            let out = &mut *buf;
            let Ok(output) = self.guarded(move |d| d.poll_output(out)) else {
                // Failed: reported at the top of the loop.
                continue;
            };
            let step = match output {
                Output::Packet(p) => return DtlsOutput::Transmit(p.len()),
                Output::BufferTooSmall { needed } => return DtlsOutput::BufferTooSmall(needed),
                Output::Timeout(at) => {
                    if self.handshake_done && self.state == DtlsState::Handshaking {
                        // Connected but no keys: the client offered no profile we share.
                        self.fail(DtlsError::NoSrtpProfile);
                        continue;
                    }
                    if self.state == DtlsState::Closed {
                        return DtlsOutput::Wait(None);
                    }
                    return DtlsOutput::Wait(Some(self.millis(at)));
                }
                Output::PeerCert(der) => {
                    if fingerprint_of(der) == self.remote {
                        self.peer_verified = true;
                    } else {
                        self.fail(DtlsError::FingerprintMismatch);
                    }
                    None
                }
                Output::Connected => {
                    self.handshake_done = true;
                    None
                }
                Output::KeyingMaterial(material, profile) => self.keys(&material, profile),
                Output::CloseNotify => {
                    self.state = DtlsState::Closed;
                    self.end_reported = true;
                    // What remains to send is our reciprocal close_notify.
                    Some(DtlsOutput::Closed)
                }
                // Data channels are not negotiated: nothing legitimate arrives here.
                Output::ApplicationData(_) => None,
                _ => None,
            };
            if let Some(out) = step {
                return out;
            }
        }
    }

    /// `Failed` once, when the session has failed and it has not been said yet.
    fn report_end(&mut self) -> Option<DtlsOutput> {
        match &self.state {
            DtlsState::Failed(e) if !self.end_reported => {
                self.end_reported = true;
                Some(DtlsOutput::Failed(e.clone()))
            }
            _ => None,
        }
    }

    /// The SRTP contexts from the exported keying material, if the peer proved its
    /// fingerprint.
    fn keys(&mut self, material: &[u8], profile: dimpl::SrtpProfile) -> Option<DtlsOutput> {
        if self.state != DtlsState::Handshaking {
            return None;
        }
        if !self.handshake_done || !self.peer_verified {
            self.fail(DtlsError::NoPeerCertificate);
            return None;
        }
        let profile = match profile {
            dimpl::SrtpProfile::AEAD_AES_128_GCM => SrtpProfile::AeadAes128Gcm,
            dimpl::SrtpProfile::AEAD_AES_256_GCM => SrtpProfile::AeadAes256Gcm,
            dimpl::SrtpProfile::AES128_CM_SHA1_80 => SrtpProfile::Aes128CmHmacSha1_80,
            _ => {
                self.fail(DtlsError::NoSrtpProfile);
                return None;
            }
        };
        let pair = split_keying_material(profile, material).and_then(|(client, server)| {
            Ok(SrtpPair {
                profile,
                inbound: SrtpContext::new(&client, self.capacity.inbound)?,
                outbound: SrtpContext::new(&server, self.capacity.outbound)?,
                outbound_key: server,
            })
        });
        match pair {
            Ok(pair) => {
                self.state = DtlsState::Connected;
                Some(DtlsOutput::Connected(Box::new(pair)))
            }
            Err(e) => {
                self.fail(DtlsError::Srtp(e));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: SrtpCapacity = SrtpCapacity {
        inbound: 8,
        outbound: 8,
    };

    #[test]
    fn identity_fingerprint_is_the_certificates_sha256() {
        let id = crate::node::dtls_identity().unwrap();
        let fp = id.fingerprint();
        assert_eq!(fp, fingerprint_of(id.certificate_der()));
        let hex = id.fingerprint_hex();
        assert_eq!(hex.len(), 32 * 3 - 1);
        assert_eq!(Fingerprint::from_hex(hex), Some(fp));
        assert_eq!(id.sdp_fingerprint(), format!("sha-256 {hex}"));
        assert!(
            hex.bytes()
                .all(|b| b == b':' || b.is_ascii_digit() || b.is_ascii_uppercase())
        );
        // Two nodes (or restarts) never share a certificate.
        let other = crate::node::dtls_identity().unwrap();
        assert_ne!(other.fingerprint(), fp);
        assert!(!format!("{id:?}").contains("private"));
    }

    #[test]
    fn identity_refuses_a_key_dimpl_cannot_load() {
        let id = crate::node::dtls_identity().unwrap();
        let err = DtlsIdentity::from_der(id.certificate_der().to_vec(), vec![1, 2, 3]).unwrap_err();
        assert!(matches!(err, DtlsError::Certificate(_)), "{err:?}");
    }

    #[test]
    fn idle_session_waits_and_ignores_what_is_not_dtls() {
        let id = crate::node::dtls_identity().unwrap();
        let epoch = Instant::now();
        let mut s = DtlsSession::new(&id, Fingerprint([7; 32]), CAP, epoch, 0);
        let mut buf = [0u8; DTLS_MTU];
        // The passive side says nothing before the ClientHello.
        assert!(matches!(s.poll_output(&mut buf), DtlsOutput::Wait(Some(_))));
        for first in [0u8, 3, 19, 64, 128, 255] {
            assert_eq!(
                s.handle_datagram(&[first, 1, 2, 3], 10),
                Err(DtlsError::NotDtls)
            );
        }
        assert_eq!(s.handle_datagram(&[], 10), Err(DtlsError::NotDtls));
        assert_eq!(s.state(), &DtlsState::Handshaking);
    }

    #[test]
    fn garbage_records_never_panic() {
        let id = crate::node::dtls_identity().unwrap();
        let mut s = DtlsSession::new(&id, Fingerprint([7; 32]), CAP, Instant::now(), 0);
        let mut buf = [0u8; DTLS_MTU];
        let mut seed = 0x1234_5678u32;
        for len in 1..400usize {
            let mut d = vec![0u8; len];
            for b in &mut d {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (seed >> 24) as u8;
            }
            // A DTLS 1.2 record header around random bodies, and random headers.
            d[0] = 20 + (len % 4) as u8;
            if len > 13 && len % 2 == 0 {
                d[1..3].copy_from_slice(&[0xFE, 0xFD]);
                d[11..13].copy_from_slice(&((len - 13) as u16).to_be_bytes());
            }
            let _ = s.handle_datagram(&d, len as u64);
            for _ in 0..16 {
                if let DtlsOutput::Wait(_) = s.poll_output(&mut buf) {
                    break;
                }
            }
        }
        assert!(!s.is_connected());
    }

    /// The record of the security review: an epoch-1 record (`17 fefd 0001 …`, 45
    /// bytes) twice before the handshake completed hit an assertion inside dimpl. The
    /// repeat is refused before dimpl sees it; the session goes on.
    #[test]
    fn a_duplicated_early_epoch_1_record_is_refused_before_dimpl() {
        let id = crate::node::dtls_identity().unwrap();
        let mut s = DtlsSession::new(&id, Fingerprint([7; 32]), CAP, Instant::now(), 0);
        let mut record = vec![0x17, 0xfe, 0xfd, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x00, 0x20];
        record.extend_from_slice(&[0xab; 32]);
        assert_eq!(record.len(), 45);
        let mut buf = [0u8; DTLS_MTU];
        assert_eq!(s.handle_datagram(&record, 1), Ok(()));
        // The same sequence number behind an epoch-0 record, too.
        let mut behind = vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0];
        behind.extend_from_slice(&record);
        for (at, datagram) in [(2, &record), (3, &behind)] {
            assert_eq!(
                s.handle_datagram(datagram, at),
                Err(DtlsError::RepeatedRecord)
            );
            while !matches!(s.poll_output(&mut buf), DtlsOutput::Wait(_)) {}
        }
        assert_eq!(s.state(), &DtlsState::Handshaking);
        assert!(!DtlsError::RepeatedRecord.is_fatal());
        // A handshake's worth of later-epoch records, then no more.
        for seq in 1..EARLY_RECORDS as u8 {
            record[10] = seq;
            assert_eq!(s.handle_datagram(&record, 4), Ok(()), "record {seq}");
        }
        record[10] = 0xEE;
        assert_eq!(
            s.handle_datagram(&record, 5),
            Err(DtlsError::RepeatedRecord)
        );
        assert_eq!(s.state(), &DtlsState::Handshaking);
    }

    /// Should dimpl panic anyway (on input no test found yet), the session fails and
    /// the caller carries on; nothing reaches dimpl afterwards.
    #[test]
    fn a_panic_inside_dimpl_fails_the_session_not_the_caller() {
        let id = crate::node::dtls_identity().unwrap();
        let mut s = DtlsSession::new(&id, Fingerprint([7; 32]), CAP, Instant::now(), 0);
        s.panic_inside();
        let got: Result<(), _> = Err(DtlsError::Panicked);
        assert_eq!(got, Err(DtlsError::Panicked));
        let mut buf = [0u8; DTLS_MTU];
        assert!(matches!(
            s.poll_output(&mut buf),
            DtlsOutput::Failed(DtlsError::Panicked)
        ));
        assert_eq!(s.state(), &DtlsState::Failed(DtlsError::Panicked));
        let record = [0x17, 0xfe, 0xfd, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x00, 0x00];
        // Nothing reaches dimpl any more.
        assert_eq!(s.handle_datagram(&record, 3), Ok(()));
        assert_eq!(s.handle_timeout(4), Ok(()));
        s.close();
        assert!(matches!(s.poll_output(&mut buf), DtlsOutput::Wait(None)));
    }

    #[test]
    fn timestamps_round_up_to_the_millisecond() {
        let id = crate::node::dtls_identity().unwrap();
        let epoch = Instant::now();
        let s = DtlsSession::new(&id, Fingerprint([0; 32]), CAP, epoch, 0);
        assert_eq!(s.millis(epoch), 0);
        assert_eq!(s.millis(epoch + Duration::from_micros(1)), 1);
        assert_eq!(s.millis(epoch + Duration::from_millis(1500)), 1500);
        assert_eq!(s.instant(250), epoch + Duration::from_millis(250));
    }
}
