//! SRTP and SRTCP (RFC 3711; AES-GCM per RFC 7714) protected and unprotected **in place**,
//! one context per direction of a peer connection, keyed by DTLS-SRTP (`sfu::dtls`).
//!
//! Why our own transform on ring (AES-GCM) and RustCrypto (`aes`, `ctr`, `hmac`, `sha1`)
//! rather than `webrtc-srtp`:
//! - `webrtc-srtp`'s `Context::{encrypt,decrypt}_rtp` take `&[u8]` and return a fresh
//!   `Bytes`, after parsing an `rtp::Header` with its own vectors: allocations on every
//!   packet, which the forwarding path (decrypt once, encrypt per receiver) must not have;
//! - its per-SSRC state is a `HashMap` that grows with every SSRC a packet names;
//! - it brings `tokio`, `rtp`, `rtcp` and `webrtc-util` along for its session types.
//!
//! The transforms are short and fully specified, the primitives are crate versions the
//! tree already compiles (ring through rustls and rcgen, the RustCrypto ones through
//! dimpl's provider), and known-answer vectors from RFC 3711, RFC 7714 and libsrtp pin
//! every path down (tests below). Each primitive comes from whichever implementation is
//! faster, measured side by side (`cargo bench --bench crypto`), all of them in place and
//! with CPU features detected at run time:
//! - AES-GCM: ring's (AES-NI/CLMUL, VAES/VPCLMULQDQ where present), 4 to 5 times the
//!   `aes-gcm` crate's speed on a 1200-byte packet; it is most of the forwarding cost.
//! - HMAC-SHA1: the `hmac` and `sha1` crates (SHA-NI where present), several times
//!   ring's, whose SHA-1 is portable code.
//! - AES-CM: the `aes` and `ctr` crates; ring has no public AES-CTR.
//!
//! Decisions worth knowing:
//! - Profiles: AEAD_AES_128_GCM, AES128_CM_HMAC_SHA1_80 and AEAD_AES_256_GCM. The last is
//!   here because dimpl's DTLS server always picks it when the client offers it (Chrome
//!   does by default) and has no setting to prefer another; it costs one more enum arm.
//! - In place: the packet sits at the front of the caller's buffer (a data-plane slot) and
//!   `protect_*` writes the tag (and the SRTCP index) into the tailroom behind it, at most
//!   [`MAX_RTP_OVERHEAD`] / [`MAX_RTCP_OVERHEAD`] bytes; `unprotect_*` leaves the plaintext
//!   at the front and returns its length. Nothing allocates per packet.
//! - Per-SSRC state (rollover counter, replay window, SRTCP index) lives in a small
//!   open-addressing table allocated with the context. A full table refuses new SSRCs
//!   (`TableFull`) instead of evicting: forgetting an inbound SSRC would let its old packets
//!   be replayed, forgetting an outbound one would reuse keystream (and a repeated GCM
//!   nonce gives away the authentication key). [`SrtpContext::forget_ssrc`] is there for
//!   streams that are over for good.
//! - State changes only after a packet authenticates: a forged, corrupted or replayed
//!   packet never moves a rollover counter, a window or the table.
//! - Rollover counters follow RFC 3711 Appendix A's index estimate in both directions;
//!   outbound uses it too, so a retransmission with an older sequence number (a NACK
//!   answered without RTX) is encrypted under its own index. Outbound has no replay check
//!   (libsrtp's `allow_repeat_tx`, which WebRTC sets for the same reason).
//! - The replay window spans 128 packets per SSRC, libsrtp's default (RFC 3711 asks for at
//!   least 64); a packet later than that is useless to a jitter buffer anyway.
//! - SRTCP: we always encrypt (E=1); inbound authenticated-only packets (E=0) are accepted
//!   as RFC 3711 §3.4 allows. Outbound SRTCP indices start at 1 per SSRC, as libsrtp's.
//! - No MKI (DTLS-SRTP negotiates none) and key derivation rate 0: session keys are
//!   derived once, when the context is made.

use std::fmt;

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{InnerIvInit, KeyInit, KeyIvInit, StreamCipher};
use aes::{Aes128, Aes256};
use hmac::{Hmac, Mac};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;
type Aes128Ctr = ctr::Ctr128BE<Aes128>;
type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// The most bytes `protect_rtp` appends (the GCM tag; HMAC-SHA1-80 appends 10).
pub(crate) const MAX_RTP_OVERHEAD: usize = 16;
/// The most bytes `protect_rtcp` appends (GCM tag and the 4-byte E flag + SRTCP index).
pub const MAX_RTCP_OVERHEAD: usize = 20;
/// Upper bound on the SSRCs one context tracks, whatever the caller asks for.
pub(crate) const MAX_SSRCS: usize = 4096;

const RTP_HEADER_LEN: usize = 12;
/// RTCP common header and the sender's SSRC: never encrypted (RFC 3711 §3.4).
const RTCP_HEADER_LEN: usize = 8;
const SRTCP_INDEX_LEN: usize = 4;
/// The largest SRTCP index (31 bits).
const MAX_SRTCP_INDEX: u64 = 0x7FFF_FFFF;
const HMAC_SHA1_80_LEN: usize = 10;
const GCM_TAG_LEN: usize = 16;
/// Packets below the highest index a replay window still remembers.
const WINDOW: u64 = 128;

// RFC 3711 §4.3.1 key derivation labels; SRTCP's are SRTP's plus 3.
const LABEL_ENCRYPTION: u8 = 0x00;
const LABEL_AUTH: u8 = 0x01;
const LABEL_SALT: u8 = 0x02;
const LABEL_RTCP: u8 = 0x03;

/// An SRTP protection profile (RFC 5764 §4.1.2, RFC 7714 §14.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    /// SRTP_AES128_CM_HMAC_SHA1_80: AES-128 counter mode, 80-bit HMAC-SHA1 tag.
    Aes128CmHmacSha1_80,
    /// SRTP_AEAD_AES_128_GCM: AES-128-GCM, 128-bit tag.
    AeadAes128Gcm,
    /// SRTP_AEAD_AES_256_GCM: AES-256-GCM, 128-bit tag.
    AeadAes256Gcm,
}

impl SrtpProfile {
    /// Bytes of the master key.
    pub const fn master_key_len(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 | SrtpProfile::AeadAes128Gcm => 16,
            SrtpProfile::AeadAes256Gcm => 32,
        }
    }

    /// Bytes of the master salt (112 bits for AES-CM, 96 for GCM).
    pub const fn master_salt_len(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => 14,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => 12,
        }
    }

    /// Bytes DTLS exports for this profile: both sides' keys and salts (RFC 5764 §4.2).
    pub(crate) const fn keying_material_len(self) -> usize {
        2 * (self.master_key_len() + self.master_salt_len())
    }

    /// Bytes `protect_rtp` appends: the authentication tag.
    pub const fn rtp_overhead(self) -> usize {
        self.tag_len()
    }

    /// Bytes `protect_rtcp` appends: the tag and the E flag with the SRTCP index.
    pub const fn rtcp_overhead(self) -> usize {
        self.tag_len() + SRTCP_INDEX_LEN
    }

    /// The profile's name in the DTLS `use_srtp` registry.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => "SRTP_AES128_CM_HMAC_SHA1_80",
            SrtpProfile::AeadAes128Gcm => "SRTP_AEAD_AES_128_GCM",
            SrtpProfile::AeadAes256Gcm => "SRTP_AEAD_AES_256_GCM",
        }
    }

    const fn tag_len(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => HMAC_SHA1_80_LEN,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => GCM_TAG_LEN,
        }
    }
}

impl fmt::Display for SrtpProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a packet was not protected or unprotected. The buffer's contents are unspecified
/// after an error; the context's state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrtpError {
    /// A master key or salt of the wrong length for the profile.
    KeyLength,
    /// Shorter than a header and the authentication trailer.
    TooShort,
    /// Not version 2, or a header (CSRCs, extension) longer than the packet.
    Malformed,
    /// `protect_*`: no room behind the packet for the trailer.
    NoRoom,
    /// The tag does not match: forged, corrupted, or protected under other keys.
    AuthFailed,
    /// This index was already received.
    Replayed,
    /// Older than the replay window.
    TooOld,
    /// A new SSRC while the context already tracks as many as it may.
    TableFull,
    /// The SSRC's index space (2^48 SRTP, 2^31 SRTCP packets) is used up: new keys needed.
    Exhausted,
}

impl fmt::Display for SrtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SrtpError::KeyLength => "master key or salt of the wrong length",
            SrtpError::TooShort => "packet too short",
            SrtpError::Malformed => "malformed RTP/RTCP header",
            SrtpError::NoRoom => "no room for the SRTP trailer",
            SrtpError::AuthFailed => "authentication failed",
            SrtpError::Replayed => "replayed packet",
            SrtpError::TooOld => "packet older than the replay window",
            SrtpError::TableFull => "too many SSRCs",
            SrtpError::Exhausted => "SRTP index space exhausted",
        })
    }
}

impl std::error::Error for SrtpError {}

/// One side's SRTP master key and salt.
#[derive(Clone)]
pub struct MasterKey {
    profile: SrtpProfile,
    key: [u8; 32],
    salt: [u8; 14],
}

impl fmt::Debug for MasterKey {
    // Key material never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("profile", &self.profile)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl MasterKey {
    /// A master key and salt of `profile`'s lengths.
    pub fn new(profile: SrtpProfile, key: &[u8], salt: &[u8]) -> Result<MasterKey, SrtpError> {
        if key.len() != profile.master_key_len() || salt.len() != profile.master_salt_len() {
            return Err(SrtpError::KeyLength);
        }
        let mut out = MasterKey {
            profile,
            key: [0; 32],
            salt: [0; 14],
        };
        out.key[..key.len()].copy_from_slice(key);
        out.salt[..salt.len()].copy_from_slice(salt);
        Ok(out)
    }

    /// The profile the key and salt are for.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    fn key(&self) -> &[u8] {
        &self.key[..self.profile.master_key_len()]
    }

    fn salt(&self) -> &[u8] {
        &self.salt[..self.profile.master_salt_len()]
    }
}

/// Splits DTLS-exported keying material (RFC 5764 §4.2: client key, server key, client
/// salt, server salt) into the client's and the server's write keys, in that order.
pub fn split_keying_material(
    profile: SrtpProfile,
    material: &[u8],
) -> Result<(MasterKey, MasterKey), SrtpError> {
    if material.len() != profile.keying_material_len() {
        return Err(SrtpError::KeyLength);
    }
    let (k, s) = (profile.master_key_len(), profile.master_salt_len());
    let client = MasterKey::new(profile, &material[..k], &material[2 * k..2 * k + s])?;
    let server = MasterKey::new(profile, &material[k..2 * k], &material[2 * k + s..])?;
    Ok((client, server))
}

/// AES-CM key derivation (RFC 3711 §4.3.3 with key derivation rate 0): the keystream of
/// the master key at IV = (master salt XOR label << 48) << 16. GCM's 96-bit salts are
/// zero-padded to 112 bits (RFC 7714 §11); AES-256 keys use AES-256-CM (RFC 6188).
fn derive(master: &MasterKey, label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..master.salt().len()].copy_from_slice(master.salt());
    iv[7] ^= label;
    out.fill(0);
    let iv = GenericArray::from_slice(&iv);
    match master.profile.master_key_len() {
        32 => Aes256Ctr::new(GenericArray::from_slice(master.key()), iv).apply_keystream(out),
        _ => Aes128Ctr::new(GenericArray::from_slice(master.key()), iv).apply_keystream(out),
    }
}

/// XORs the AES-128 counter-mode keystream starting at `iv` into `data`.
fn cm_apply(aes: &Aes128, iv: &[u8; 16], data: &mut [u8]) {
    // Cloning the expanded key is a copy, not an allocation; the context keeps its own.
    let core = ctr::CtrCore::<Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
        aes.clone(),
        GenericArray::from_slice(iv),
    );
    let mut ctr = Aes128Ctr::from_core(core);
    ctr.apply_keystream(data);
}

/// RFC 3711 §4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16), for an SRTP
/// packet index or an SRTCP index `i`.
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, i) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= i;
    }
    iv
}

/// RFC 7714 §8.1: IV = (00 00 || SSRC || ROC || SEQ) XOR salt.
fn gcm_rtp_iv(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    xor_into(&mut iv, salt);
    iv
}

/// RFC 7714 §9.1: IV = (00 00 || SSRC || 00 00 || 0 + SRTCP index) XOR salt.
fn gcm_rtcp_iv(salt: &[u8; 12], ssrc: u32, index: u32) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&index.to_be_bytes());
    xor_into(&mut iv, salt);
    iv
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// AES-128-GCM or AES-256-GCM (by the key's length) on ring. The key schedule and the
/// GHASH table are expanded once, when the context is made, and live inline: sealing and
/// opening allocate nothing.
struct Gcm(LessSafeKey);

impl Gcm {
    fn new(key: &[u8]) -> Result<Gcm, SrtpError> {
        let algorithm = match key.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return Err(SrtpError::KeyLength),
        };
        let key = UnboundKey::new(algorithm, key).map_err(|_| SrtpError::KeyLength)?;
        Ok(Gcm(LessSafeKey::new(key)))
    }

    /// Encrypts `data` in place and returns the tag.
    fn seal(&self, iv: &[u8; 12], aad: &[u8], data: &mut [u8]) -> Result<[u8; 16], SrtpError> {
        // SRTP's IVs are unique per key by construction (SSRC and packet index).
        let nonce = Nonce::assume_unique_for_key(*iv);
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::from(aad), data)
            // Only refused for inputs of gigabytes, which no datagram is.
            .map_err(|_| SrtpError::Malformed)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks `tag` and decrypts `data` in place. When the tag is wrong `data` is left
    /// unspecified (ring zeroes it), which `SrtpError` allows.
    fn open(
        &self,
        iv: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), SrtpError> {
        let nonce = Nonce::assume_unique_for_key(*iv);
        self.0
            .open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(*tag), data, 0..)
            .map(|_| ())
            .map_err(|_| SrtpError::AuthFailed)
    }
}

/// Session keys of one of SRTP or SRTCP.
// Made once per context and never moved on the packet path: boxing the bigger variant's
// key schedules would only add a pointer hop to every packet.
#[allow(clippy::large_enum_variant)]
enum Keys {
    Cm {
        aes: Aes128,
        salt: [u8; 14],
        /// Keyed once; cloned per packet (a copy of the inner and outer hash states).
        mac: HmacSha1,
    },
    Gcm {
        aead: Gcm,
        salt: [u8; 12],
    },
}

impl Keys {
    /// The session keys for SRTP (`base` 0) or SRTCP (`base` 3).
    fn derive(master: &MasterKey, base: u8) -> Result<Keys, SrtpError> {
        let mut key = [0u8; 32];
        let key = &mut key[..master.profile.master_key_len()];
        derive(master, base + LABEL_ENCRYPTION, key);
        match master.profile {
            SrtpProfile::Aes128CmHmacSha1_80 => {
                let mut auth = [0u8; 20];
                derive(master, base + LABEL_AUTH, &mut auth);
                let mut salt = [0u8; 14];
                derive(master, base + LABEL_SALT, &mut salt);
                Keys::cm(key, &auth, salt)
            }
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => {
                let mut salt = [0u8; 12];
                derive(master, base + LABEL_SALT, &mut salt);
                Keys::gcm(key, salt)
            }
        }
    }

    fn cm(key: &[u8], auth: &[u8], salt: [u8; 14]) -> Result<Keys, SrtpError> {
        Ok(Keys::Cm {
            aes: Aes128::new_from_slice(key).map_err(|_| SrtpError::KeyLength)?,
            salt,
            mac: <HmacSha1 as Mac>::new_from_slice(auth).map_err(|_| SrtpError::KeyLength)?,
        })
    }

    fn gcm(key: &[u8], salt: [u8; 12]) -> Result<Keys, SrtpError> {
        Ok(Keys::Gcm {
            aead: Gcm::new(key)?,
            salt,
        })
    }
}

/// The highest index seen on one SSRC and which of the `WINDOW` indices below it were.
#[derive(Clone, Copy, Debug)]
struct Window {
    highest: u64,
    /// Bit `d` set: index `highest - d` was accepted.
    seen: u128,
}

impl Window {
    fn new(index: u64) -> Window {
        Window {
            highest: index,
            seen: 1,
        }
    }

    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let behind = self.highest - index;
        if behind >= WINDOW {
            Err(SrtpError::TooOld)
        } else if self.seen >> behind & 1 == 1 {
            Err(SrtpError::Replayed)
        } else {
            Ok(())
        }
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            self.seen = if ahead >= WINDOW {
                0
            } else {
                self.seen << ahead
            };
            self.seen |= 1;
            self.highest = index;
        } else if self.highest - index < WINDOW {
            self.seen |= 1 << (self.highest - index);
        }
    }

    /// RFC 3711 Appendix A: the rollover counter `v` and 48-bit index of sequence number
    /// `seq`, guessed from the highest index so far (its ROC and `s_l`). `None` when the
    /// guess falls below ROC 0 (a packet from before the first one) or past 2^32 - 1.
    fn estimate(&self, seq: u16) -> Option<(u32, u64)> {
        let roc = i64::from((self.highest >> 16) as u32);
        let s_l = i64::from(self.highest as u16);
        let seq_i = i64::from(seq);
        let v = if s_l < 32_768 {
            if seq_i - s_l > 32_768 { roc - 1 } else { roc }
        } else if s_l - 32_768 > seq_i {
            roc + 1
        } else {
            roc
        };
        let v = u32::try_from(v).ok()?;
        Some((v, u64::from(v) << 16 | u64::from(seq)))
    }
}

/// What a context knows about one SSRC.
#[derive(Clone, Copy, Debug)]
struct Stream {
    ssrc: u32,
    /// SRTP packet indices: received (with the replay window) or sent (the highest only).
    rtp: Option<Window>,
    /// SRTCP indices: received, or the last one sent.
    rtcp: Option<Window>,
}

/// A fixed-capacity map from SSRC to [`Stream`]: linear probing in a power-of-two array
/// at most half full, so a lookup touches one or two slots and never allocates.
struct SsrcTable {
    slots: Box<[Option<Stream>]>,
    mask: usize,
    len: usize,
    capacity: usize,
}

impl SsrcTable {
    fn new(capacity: usize) -> SsrcTable {
        let capacity = capacity.clamp(1, MAX_SSRCS);
        let size = (capacity * 2).next_power_of_two();
        SsrcTable {
            slots: vec![None; size].into_boxed_slice(),
            mask: size - 1,
            len: 0,
            capacity,
        }
    }

    fn home(&self, ssrc: u32) -> usize {
        // Fibonacci hashing: the multiply spreads every input bit into the high half.
        (u64::from(ssrc).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask
    }

    /// `Ok(slot)` holding `ssrc`, or `Err(slot)` where it would go. Terminates because at
    /// least half the slots are always empty.
    fn find(&self, ssrc: u32) -> Result<usize, usize> {
        let mut i = self.home(ssrc);
        loop {
            match &self.slots[i] {
                None => return Err(i),
                Some(s) if s.ssrc == ssrc => return Ok(i),
                Some(_) => i = (i + 1) & self.mask,
            }
        }
    }

    fn get(&self, found: Result<usize, usize>) -> Option<&Stream> {
        self.slots[found.ok()?].as_ref()
    }

    /// The stream at a `find` result, inserted there if new (the table must not have
    /// changed since that `find`).
    fn entry(&mut self, found: Result<usize, usize>, ssrc: u32) -> Result<&mut Stream, SrtpError> {
        let i = match found {
            Ok(i) => i,
            Err(i) => {
                if self.len >= self.capacity {
                    return Err(SrtpError::TableFull);
                }
                self.slots[i] = Some(Stream {
                    ssrc,
                    rtp: None,
                    rtcp: None,
                });
                self.len += 1;
                i
            }
        };
        self.slots[i].as_mut().ok_or(SrtpError::TableFull)
    }

    fn has_room(&self, found: Result<usize, usize>) -> bool {
        found.is_ok() || self.len < self.capacity
    }

    /// Removes `ssrc`, shifting later members of its probe run back so that every
    /// remaining key is still reachable from its home slot.
    fn remove(&mut self, ssrc: u32) -> bool {
        let Ok(mut hole) = self.find(ssrc) else {
            return false;
        };
        self.slots[hole] = None;
        self.len -= 1;
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let Some(s) = self.slots[j] else {
                return true;
            };
            let home = self.home(s.ssrc);
            // `s` may move into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
        }
    }
}

/// The RTP header's length (fixed part, CSRCs, extension) if `pkt` holds one whole.
fn rtp_header_len(pkt: &[u8]) -> Result<usize, SrtpError> {
    if pkt.len() < RTP_HEADER_LEN {
        return Err(SrtpError::TooShort);
    }
    if pkt[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = RTP_HEADER_LEN + 4 * usize::from(pkt[0] & 0x0F);
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(len..len + 4).ok_or(SrtpError::Malformed)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if len > pkt.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// One direction's SRTP and SRTCP crypto context of a peer connection: inbound (the
/// peer's keys; unprotect) or outbound (ours; protect). A context only ever does one of
/// the two in practice, but nothing stops a test from using both on one.
pub struct SrtpContext {
    profile: SrtpProfile,
    rtp: Keys,
    rtcp: Keys,
    streams: SsrcTable,
}

impl fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("profile", &self.profile)
            .field("ssrcs", &self.streams.len)
            .field("max_ssrcs", &self.streams.capacity)
            .finish()
    }
}

impl SrtpContext {
    /// A context for `master`'s keys tracking up to `max_ssrcs` SSRCs (clamped to
    /// 1..=[`MAX_SSRCS`]); the only allocation is the SSRC table, made here.
    pub fn new(master: &MasterKey, max_ssrcs: usize) -> Result<SrtpContext, SrtpError> {
        Ok(SrtpContext {
            profile: master.profile,
            rtp: Keys::derive(master, 0)?,
            rtcp: Keys::derive(master, LABEL_RTCP)?,
            streams: SsrcTable::new(max_ssrcs),
        })
    }

    /// The profile this context protects with.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// SSRCs the context currently tracks.
    pub fn ssrc_count(&self) -> usize {
        self.streams.len
    }

    /// Forgets an SSRC's rollover counter, replay window and SRTCP index, making room for
    /// another. Only for a stream that is over for good: an outbound SSRC must never be
    /// sent again under these keys (its indices would repeat), and an inbound one that
    /// comes back starts a fresh window (its old packets could be replayed once).
    pub fn forget_ssrc(&mut self, ssrc: u32) -> bool {
        self.streams.remove(ssrc)
    }

    /// Whether the context keeps state for `ssrc` (has protected or unprotected under
    /// it). It reads what
    /// [`protect_rtp`](Self::protect_rtp) reads first (the profile, the SSRC's slot), so
    /// a caller about to protect one packet under many receivers' contexts can bring
    /// their cold lines in together rather than one after another.
    pub fn knows(&self, ssrc: u32) -> bool {
        self.profile.tag_len() > 0 && self.streams.find(ssrc).is_ok()
    }

    /// Protects the RTP packet in `buf[..len]` in place: encrypts its payload and writes
    /// the tag behind it. `buf` must have [`SrtpProfile::rtp_overhead`] bytes of tailroom;
    /// returns the SRTP packet's length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.profile.tag_len();
        let pkt = buf.get(..len).ok_or(SrtpError::TooShort)?;
        let hdr = rtp_header_len(pkt)?;
        if buf.len() - len < tag_len {
            return Err(SrtpError::NoRoom);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be32(&buf[8..12]);
        let found = self.streams.find(ssrc);
        let (roc, index) = match self.streams.get(found).and_then(|s| s.rtp) {
            Some(w) => w.estimate(seq).ok_or(SrtpError::Exhausted)?,
            // A sender's rollover counter starts at 0 (RFC 3711 §3.3.1).
            None => (0, u64::from(seq)),
        };
        // Take the table slot before any keystream is used, so a full table refuses
        // cleanly.
        let stream = self.streams.entry(found, ssrc)?;
        match &self.rtp {
            Keys::Cm { aes, salt, mac } => {
                cm_apply(aes, &cm_iv(salt, ssrc, index), &mut buf[hdr..len]);
                let mut mac = mac.clone();
                mac.update(&buf[..len]);
                mac.update(&roc.to_be_bytes());
                let tag = mac.finalize().into_bytes();
                buf[len..len + tag_len].copy_from_slice(&tag[..tag_len]);
            }
            Keys::Gcm { aead, salt } => {
                let iv = gcm_rtp_iv(salt, ssrc, roc, seq);
                let (header, rest) = buf.split_at_mut(hdr);
                let tag = aead.seal(&iv, header, &mut rest[..len - hdr])?;
                buf[len..len + tag_len].copy_from_slice(&tag);
            }
        }
        match &mut stream.rtp {
            Some(w) => w.accept(index),
            None => stream.rtp = Some(Window::new(index)),
        }
        Ok(len + tag_len)
    }

    /// Unprotects the SRTP packet that is all of `pkt`, in place: checks its tag and the
    /// replay window, decrypts the payload and returns the RTP packet's length (the tag
    /// is left behind it).
    pub fn unprotect_rtp(&mut self, pkt: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.profile.tag_len();
        let end = pkt.len().checked_sub(tag_len).ok_or(SrtpError::TooShort)?;
        let hdr = rtp_header_len(&pkt[..end])?;
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = be32(&pkt[8..12]);
        let found = self.streams.find(ssrc);
        if !self.streams.has_room(found) {
            return Err(SrtpError::TableFull);
        }
        let window = self.streams.get(found).and_then(|s| s.rtp);
        let (roc, index) = match window {
            Some(w) => {
                let (roc, index) = w.estimate(seq).ok_or(SrtpError::TooOld)?;
                w.check(index)?;
                (roc, index)
            }
            // The first packet of an SSRC sets the receiver's s_l; its ROC is 0 (RFC 3711
            // §3.3.1): both ends start counting with this DTLS session's keys.
            None => (0, u64::from(seq)),
        };
        match &self.rtp {
            Keys::Cm { aes, salt, mac } => {
                let mut mac = mac.clone();
                mac.update(&pkt[..end]);
                mac.update(&roc.to_be_bytes());
                // Constant-time comparison of the leftmost 80 bits.
                mac.verify_truncated_left(&pkt[end..])
                    .map_err(|_| SrtpError::AuthFailed)?;
                cm_apply(aes, &cm_iv(salt, ssrc, index), &mut pkt[hdr..end]);
            }
            Keys::Gcm { aead, salt } => {
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&pkt[end..]);
                let iv = gcm_rtp_iv(salt, ssrc, roc, seq);
                let (header, rest) = pkt.split_at_mut(hdr);
                aead.open(&iv, header, &mut rest[..end - hdr], &tag)?;
            }
        }
        let stream = self.streams.entry(found, ssrc)?;
        match &mut stream.rtp {
            Some(w) => w.accept(index),
            None => stream.rtp = Some(Window::new(index)),
        }
        Ok(end)
    }

    /// Protects the RTCP (compound) packet in `buf[..len]` in place: encrypts all but its
    /// first 8 bytes and writes the E flag, SRTCP index and tag behind it. `buf` must have
    /// [`SrtpProfile::rtcp_overhead`] bytes of tailroom; returns the SRTCP length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.profile.tag_len();
        let pkt = buf.get(..len).ok_or(SrtpError::TooShort)?;
        if pkt.len() < RTCP_HEADER_LEN {
            return Err(SrtpError::TooShort);
        }
        if pkt[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        if buf.len() - len < tag_len + SRTCP_INDEX_LEN {
            return Err(SrtpError::NoRoom);
        }
        let ssrc = be32(&buf[4..8]);
        let found = self.streams.find(ssrc);
        let stream = self.streams.entry(found, ssrc)?;
        let index = stream.rtcp.map_or(1, |w| w.highest + 1);
        if index > MAX_SRTCP_INDEX {
            return Err(SrtpError::Exhausted);
        }
        // The E flag: always encrypted.
        let e_index = (1 << 31 | index as u32).to_be_bytes();
        match &self.rtcp {
            Keys::Cm { aes, salt, mac } => {
                cm_apply(
                    aes,
                    &cm_iv(salt, ssrc, index),
                    &mut buf[RTCP_HEADER_LEN..len],
                );
                buf[len..len + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                let auth_end = len + SRTCP_INDEX_LEN;
                let mut mac = mac.clone();
                mac.update(&buf[..auth_end]);
                let tag = mac.finalize().into_bytes();
                buf[auth_end..auth_end + tag_len].copy_from_slice(&tag[..tag_len]);
            }
            Keys::Gcm { aead, salt } => {
                // RFC 7714 §9.2: the AAD is the first 8 bytes and the E flag with index.
                let mut aad = [0u8; RTCP_HEADER_LEN + SRTCP_INDEX_LEN];
                aad[..RTCP_HEADER_LEN].copy_from_slice(&buf[..RTCP_HEADER_LEN]);
                aad[RTCP_HEADER_LEN..].copy_from_slice(&e_index);
                let iv = gcm_rtcp_iv(salt, ssrc, index as u32);
                let tag = aead.seal(&iv, &aad, &mut buf[RTCP_HEADER_LEN..len])?;
                buf[len..len + tag_len].copy_from_slice(&tag);
                buf[len + tag_len..len + tag_len + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
            }
        }
        stream.rtcp = Some(Window::new(index));
        Ok(len + tag_len + SRTCP_INDEX_LEN)
    }

    /// Unprotects the SRTCP packet that is all of `pkt`, in place, and returns the RTCP
    /// packet's length.
    pub fn unprotect_rtcp(&mut self, pkt: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.profile.tag_len();
        let n = pkt.len();
        if n < RTCP_HEADER_LEN + SRTCP_INDEX_LEN + tag_len {
            return Err(SrtpError::TooShort);
        }
        if pkt[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let ssrc = be32(&pkt[4..8]);
        // AES-CM: packet || E+index || tag. GCM: packet || tag || E+index (RFC 7714 §9.1).
        let (end, trailer_at) = match self.rtcp {
            Keys::Cm { .. } => {
                let at = n - tag_len - SRTCP_INDEX_LEN;
                (at, at)
            }
            Keys::Gcm { .. } => (n - tag_len - SRTCP_INDEX_LEN, n - SRTCP_INDEX_LEN),
        };
        let mut e_index = [0u8; SRTCP_INDEX_LEN];
        e_index.copy_from_slice(&pkt[trailer_at..trailer_at + SRTCP_INDEX_LEN]);
        let encrypted = e_index[0] & 0x80 != 0;
        let index = u64::from(u32::from_be_bytes(e_index) & 0x7FFF_FFFF);
        let found = self.streams.find(ssrc);
        if !self.streams.has_room(found) {
            return Err(SrtpError::TableFull);
        }
        if let Some(w) = self.streams.get(found).and_then(|s| s.rtcp) {
            w.check(index)?;
        }
        match &self.rtcp {
            Keys::Cm { aes, salt, mac } => {
                let mut mac = mac.clone();
                mac.update(&pkt[..n - tag_len]);
                mac.verify_truncated_left(&pkt[n - tag_len..])
                    .map_err(|_| SrtpError::AuthFailed)?;
                if encrypted {
                    cm_apply(
                        aes,
                        &cm_iv(salt, ssrc, index),
                        &mut pkt[RTCP_HEADER_LEN..end],
                    );
                }
            }
            Keys::Gcm { aead, salt } => {
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&pkt[end..end + tag_len]);
                let iv = gcm_rtcp_iv(salt, ssrc, index as u32);
                if encrypted {
                    let mut aad = [0u8; RTCP_HEADER_LEN + SRTCP_INDEX_LEN];
                    aad[..RTCP_HEADER_LEN].copy_from_slice(&pkt[..RTCP_HEADER_LEN]);
                    aad[RTCP_HEADER_LEN..].copy_from_slice(&e_index);
                    aead.open(&iv, &aad, &mut pkt[RTCP_HEADER_LEN..end], &tag)?;
                } else {
                    // Authenticated only: the AAD is the whole packet and the E+index
                    // word. Moving that word over the (saved) tag makes the AAD one
                    // contiguous slice without a copy of the packet.
                    pkt[end..end + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                    aead.open(&iv, &pkt[..end + SRTCP_INDEX_LEN], &mut [], &tag)?;
                }
            }
        }
        let stream = self.streams.entry(found, ssrc)?;
        match &mut stream.rtcp {
            Some(w) => w.accept(index),
            None => stream.rtcp = Some(Window::new(index)),
        }
        Ok(end)
    }

    /// Test hook: makes the next SRTCP index sent on `ssrc` be `next`.
    #[cfg(test)]
    fn set_next_rtcp_index(&mut self, ssrc: u32, next: u64) {
        let found = self.streams.find(ssrc);
        if let Ok(stream) = self.streams.entry(found, ssrc) {
            stream.rtcp = Some(Window::new(next - 1));
        }
    }

    /// Test hook: a context with the given session key and salt for both SRTP and SRTCP,
    /// as RFC 7714's vectors give them (no key derivation).
    #[cfg(test)]
    fn with_session_keys(profile: SrtpProfile, key: &[u8], salt: &[u8]) -> SrtpContext {
        let keys = || {
            let mut s = [0u8; 12];
            s.copy_from_slice(salt);
            Keys::gcm(key, s).unwrap()
        };
        SrtpContext {
            profile,
            rtp: keys(),
            rtcp: keys(),
            streams: SsrcTable::new(8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..clean.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `bytes` in a buffer with `MAX_RTCP_OVERHEAD` bytes of tailroom.
    fn slot(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(bytes.len() + MAX_RTCP_OVERHEAD, 0);
        v
    }

    fn master(profile: SrtpProfile, fill: u8) -> MasterKey {
        let key: Vec<u8> = (0..profile.master_key_len() as u8)
            .map(|i| i ^ fill)
            .collect();
        let salt: Vec<u8> = (0..profile.master_salt_len() as u8)
            .map(|i| i.wrapping_mul(7) ^ fill)
            .collect();
        MasterKey::new(profile, &key, &salt).unwrap()
    }

    fn pair(profile: SrtpProfile) -> (SrtpContext, SrtpContext) {
        let m = master(profile, 0x5A);
        (
            SrtpContext::new(&m, 16).unwrap(),
            SrtpContext::new(&m, 16).unwrap(),
        )
    }

    const PROFILES: [SrtpProfile; 3] = [
        SrtpProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm,
    ];

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&u32::from(seq).wrapping_mul(3000).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// An RTP packet with two CSRCs and a one-byte header extension, which the AES-CM
    /// transform must leave in the clear and GCM must authenticate.
    fn rtp_with_extension(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x92, 0xE0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x10, 0]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xC5, 0xC5, 0xC5, 1, 0xC5, 0xC5, 0xC5, 2]);
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]);
        p.extend_from_slice(b"payload of a video frame");
        p
    }

    fn rtcp_sr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[7u8; 20]);
        p
    }

    fn protect(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
        let mut buf = slot(plain);
        let n = ctx.protect_rtp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn unprotect(ctx: &mut SrtpContext, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = srtp.to_vec();
        let n = ctx.unprotect_rtp(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn protect_rtcp(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
        let mut buf = slot(plain);
        let n = ctx.protect_rtcp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn unprotect_rtcp(ctx: &mut SrtpContext, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = srtcp.to_vec();
        let n = ctx.unprotect_rtcp(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    // RFC 3711 Appendix B.2: the AES-CM keystream for session key 2B7E1516... and
    // IV F0F1...FD0000, around the 16-bit block counter's carry.
    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let aes = Aes128::new_from_slice(&hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap();
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
        let mut ks = [0u8; 48];
        cm_apply(&aes, &iv, &mut ks);
        assert_eq!(
            ks[..],
            hex(
                "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0"
            )[..]
        );
        iv[14..].copy_from_slice(&[0xFE, 0xFF]);
        let mut ks = [0u8; 48];
        cm_apply(&aes, &iv, &mut ks);
        assert_eq!(
            ks[..],
            hex(
                "EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE
                 6A2CC3787889374FBEB4C81B17BA6C44"
            )[..]
        );
    }

    // The same IV from the SRTP formula: session salt F0..FD, SSRC 0, index 0.
    #[test]
    fn rfc3711_b2_iv_layout() {
        let mut salt = [0u8; 14];
        salt.copy_from_slice(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"));
        assert_eq!(
            cm_iv(&salt, 0, 0)[..],
            hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")[..]
        );
        // The SSRC lands in bytes 4..8, the 48-bit index in bytes 8..14.
        let iv = cm_iv(&[0; 14], 0x1122_3344, 0x0000_AABB_CCDD_EEFF);
        assert_eq!(iv[..], hex("00000000 11223344 AABBCCDDEEFF 0000")[..]);
    }

    // RFC 3711 Appendix B.3: key derivation from master key E1F97A0D... .
    #[test]
    fn rfc3711_b3_key_derivation() {
        let m = MasterKey::new(
            SrtpProfile::Aes128CmHmacSha1_80,
            &hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            &hex("0EC675AD498AFEEBB6960B3AABE6"),
        )
        .unwrap();
        let mut key = [0u8; 16];
        derive(&m, LABEL_ENCRYPTION, &mut key);
        assert_eq!(key[..], hex("C61E7A93744F39EE10734AFE3FF7A087")[..]);
        let mut salt = [0u8; 14];
        derive(&m, LABEL_SALT, &mut salt);
        assert_eq!(salt[..], hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
        let mut auth = [0u8; 94];
        derive(&m, LABEL_AUTH, &mut auth);
        assert_eq!(
            auth[..],
            hex(
                "CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
                 E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
                 6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
            )[..]
        );
    }

    const LIBSRTP_RTP: &str = "800F1234 DECAFBAD CAFEBABE ABABABAB ABABABAB ABABABAB ABABABAB";
    const LIBSRTP_RTCP: &str = "81C8000B CAFEBABE ABABABAB ABABABAB ABABABAB ABABABAB";

    // libsrtp's srtp_validate(): AES_CM_128_HMAC_SHA1_80 end to end (key derivation,
    // keystream, tag), master key and salt of RFC 3711 B.3.
    #[test]
    fn libsrtp_aes_cm_known_answer() {
        let m = MasterKey::new(
            SrtpProfile::Aes128CmHmacSha1_80,
            &hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            &hex("0EC675AD498AFEEBB6960B3AABE6"),
        )
        .unwrap();
        let srtp = hex(
            "800F1234 DECAFBAD CAFEBABE 4E55DC4C E79978D8 8CA4D215 949D2402 B78D6ACC 99EA179B 8DBB",
        );
        let srtcp = hex(
            "81C8000B CAFEBABE 7128035B E487B9BD BEF89041 F977A5A8 80000001 993E08CD 54D6C123 0798",
        );
        let mut tx = SrtpContext::new(&m, 4).unwrap();
        assert_eq!(protect(&mut tx, &hex(LIBSRTP_RTP)), srtp);
        assert_eq!(protect_rtcp(&mut tx, &hex(LIBSRTP_RTCP)), srtcp);
        let mut rx = SrtpContext::new(&m, 4).unwrap();
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), hex(LIBSRTP_RTP));
        assert_eq!(unprotect_rtcp(&mut rx, &srtcp).unwrap(), hex(LIBSRTP_RTCP));
    }

    // libsrtp's srtp_validate_gcm(): AEAD_AES_128_GCM end to end, including the key
    // derivation with a 96-bit salt.
    #[test]
    fn libsrtp_aes_gcm_known_answer() {
        let m = MasterKey::new(
            SrtpProfile::AeadAes128Gcm,
            &hex("000102030405060708090A0B0C0D0E0F"),
            &hex("A0A1A2A3A4A5A6A7A8A9AAAB"),
        )
        .unwrap();
        let srtp = hex(
            "800F1234 DECAFBAD CAFEBABE C5002EDE 04CFDD2E B91159E0 880AA06E D2976826 F796B201
             DF3131A1 27E8A392",
        );
        let srtcp = hex(
            "81C8000B CAFEBABE C98B8B5D F0392A55 852B6C21 AC8E7025 C52C6FBE A2B3B446 EA31123B
             A88CE61E 80000001",
        );
        let mut tx = SrtpContext::new(&m, 4).unwrap();
        assert_eq!(protect(&mut tx, &hex(LIBSRTP_RTP)), srtp);
        assert_eq!(protect_rtcp(&mut tx, &hex(LIBSRTP_RTCP)), srtcp);
        let mut rx = SrtpContext::new(&m, 4).unwrap();
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), hex(LIBSRTP_RTP));
        assert_eq!(unprotect_rtcp(&mut rx, &srtcp).unwrap(), hex(LIBSRTP_RTCP));
    }

    // RFC 7714 §16 (SRTP) and §17 (SRTCP) vectors, session key and salt given directly.
    const RFC7714_SALT: &str = "517569642070726f2071756f";
    const RFC7714_RTP: &str = "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f
        6d6e6973 20646976 69736120 696e2070 61727465 73207472 6573";
    const RFC7714_RTCP: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a
        0000e930 4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef";

    fn rfc7714(profile: SrtpProfile, key: &str, srtp: &str, srtcp: &str, srtcp_auth_only: &str) {
        let (key, salt) = (hex(key), hex(RFC7714_SALT));
        let (srtp, srtcp) = (hex(srtp), hex(srtcp));
        // The IV of §16.1.1 (ROC 0, SEQ f17b) and of §17.1.1 (index 0x5d4).
        let mut s = [0u8; 12];
        s.copy_from_slice(&salt);
        assert_eq!(
            gcm_rtp_iv(&s, 0x5501_a0b2, 0, 0xf17b)[..],
            hex("51753c6580c2726f20718414")[..]
        );
        assert_eq!(
            gcm_rtcp_iv(&s, 0x4d61_7273, 0x5d4)[..],
            hex("517524055203726f207170bb")[..]
        );

        let mut tx = SrtpContext::with_session_keys(profile, &key, &salt);
        assert_eq!(protect(&mut tx, &hex(RFC7714_RTP)), srtp);
        tx.set_next_rtcp_index(0x4d61_7273, 0x5d4);
        assert_eq!(protect_rtcp(&mut tx, &hex(RFC7714_RTCP)), srtcp);

        let mut rx = SrtpContext::with_session_keys(profile, &key, &salt);
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), hex(RFC7714_RTP));
        assert_eq!(unprotect_rtcp(&mut rx, &srtcp).unwrap(), hex(RFC7714_RTCP));
        // §17.2: the same packet authenticated only (E = 0), accepted on receipt.
        let mut rx = SrtpContext::with_session_keys(profile, &key, &salt);
        assert_eq!(
            unprotect_rtcp(&mut rx, &hex(srtcp_auth_only)).unwrap(),
            hex(RFC7714_RTCP)
        );
        let mut forged = hex(srtcp_auth_only);
        forged[12] ^= 1;
        let mut rx = SrtpContext::with_session_keys(profile, &key, &salt);
        assert_eq!(unprotect_rtcp(&mut rx, &forged), Err(SrtpError::AuthFailed));
    }

    #[test]
    fn rfc7714_aead_aes_128_gcm() {
        rfc7714(
            SrtpProfile::AeadAes128Gcm,
            "000102030405060708090a0b0c0d0e0f",
            "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca be633bd5
             0d294e6f 42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1 6a9152cf 765ee439 0cce",
            "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7 6c06f32d
             c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872
             45d9eade 800005d4",
            "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61
             deadbeef deadbeef deadbeef deadbeef deadbeef 841dd968 3dd78ec9 2ae58790
             125f62b3 000005d4",
        );
    }

    #[test]
    fn rfc7714_aead_aes_256_gcm() {
        rfc7714(
            SrtpProfile::AeadAes256Gcm,
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "8040f17b 8041f8d3 5501a0b2 32b1de78 a822fe12 ef9f78fa 332e33aa b1801238
             9a58e2f3 b50b2a02 76ffae0f 1ba63799 b87b7aa3 db36dfff d6b0f9bb 7878d7a7 6c13",
            "81c8000d 4d617273 d50ae4d1 f5ce5d30 4ba297e4 7d470c28 2c3ece5d bffe0a50
             a2eaa5c1 110555be 8415f658 c61de047 6f1b6fad 1d1eb30c 4446839f 57ff6f6c
             b26ac3be 800005d4",
            "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61
             deadbeef deadbeef deadbeef deadbeef deadbeef 91db4afb feee5a97 8fab4393
             ed2615fe 000005d4",
        );
    }

    #[test]
    fn keying_material_splits_per_rfc5764() {
        let profile = SrtpProfile::Aes128CmHmacSha1_80;
        let material: Vec<u8> = (0..60).collect();
        let (client, server) = split_keying_material(profile, &material).unwrap();
        assert_eq!(client.key(), &material[..16]);
        assert_eq!(server.key(), &material[16..32]);
        assert_eq!(client.salt(), &material[32..46]);
        assert_eq!(server.salt(), &material[46..60]);
        assert_eq!(
            split_keying_material(profile, &material[..59]).unwrap_err(),
            SrtpError::KeyLength
        );
        let gcm = SrtpProfile::AeadAes256Gcm;
        let material: Vec<u8> = (0..88).collect();
        let (client, server) = split_keying_material(gcm, &material).unwrap();
        assert_eq!(client.salt(), &material[64..76]);
        assert_eq!(server.salt(), &material[76..88]);
        assert!(
            !format!("{client:?}").contains("0, 1, 2"),
            "key material in Debug"
        );
    }

    #[test]
    fn round_trips_every_profile() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            for seq in [1u16, 2, 3, 500] {
                let plain = rtp(seq, 0xDEAD_BEEF, &[seq as u8; 100]);
                let srtp = protect(&mut tx, &plain);
                assert_eq!(srtp.len(), plain.len() + profile.rtp_overhead());
                assert_ne!(
                    srtp[12..plain.len()],
                    plain[12..],
                    "{profile}: not encrypted"
                );
                assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain, "{profile}");
            }
            let plain = rtp_with_extension(501, 0xDEAD_BEEF);
            let srtp = protect(&mut tx, &plain);
            assert_eq!(srtp[..28], plain[..28], "{profile}: header stays clear");
            assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain);
            // An empty payload (padding-free keepalive) still carries a tag.
            let plain = rtp(502, 0xDEAD_BEEF, &[]);
            assert_eq!(
                unprotect(&mut rx, &protect(&mut tx, &plain)).unwrap(),
                plain
            );

            for _ in 0..3 {
                let plain = rtcp_sr(0x1234_5678);
                let srtcp = protect_rtcp(&mut tx, &plain);
                assert_eq!(srtcp.len(), plain.len() + profile.rtcp_overhead());
                assert_eq!(unprotect_rtcp(&mut rx, &srtcp).unwrap(), plain, "{profile}");
            }
        }
    }

    #[test]
    fn other_keys_fail_authentication() {
        for profile in PROFILES {
            let mut tx = SrtpContext::new(&master(profile, 1), 4).unwrap();
            let mut rx = SrtpContext::new(&master(profile, 2), 4).unwrap();
            let srtp = protect(&mut tx, &rtp(1, 7, b"hello"));
            assert_eq!(unprotect(&mut rx, &srtp), Err(SrtpError::AuthFailed));
            let srtcp = protect_rtcp(&mut tx, &rtcp_sr(7));
            assert_eq!(unprotect_rtcp(&mut rx, &srtcp), Err(SrtpError::AuthFailed));
            // Nothing was learned from the forgeries.
            assert_eq!(rx.ssrc_count(), 0);
        }
    }

    #[test]
    fn tampered_packets_are_rejected_and_change_nothing() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let srtp = protect(&mut tx, &rtp_with_extension(100, 42));
            // Every byte matters: header (incl. extension), payload, tag.
            for i in 0..srtp.len() {
                let mut bad = srtp.clone();
                bad[i] ^= 0x01;
                let err = unprotect(&mut rx, &bad).unwrap_err();
                assert!(
                    matches!(err, SrtpError::AuthFailed | SrtpError::Malformed),
                    "{profile}: byte {i} flipped gave {err:?}"
                );
            }
            assert_eq!(rx.ssrc_count(), 0, "{profile}: a forgery created state");
            // The genuine packet still goes through afterwards.
            assert!(unprotect(&mut rx, &srtp).is_ok());

            let srtcp = protect_rtcp(&mut tx, &rtcp_sr(42));
            for i in 0..srtcp.len() {
                let mut bad = srtcp.clone();
                bad[i] ^= 0x80;
                assert!(
                    unprotect_rtcp(&mut rx, &bad).is_err(),
                    "{profile}: RTCP byte {i}"
                );
            }
            assert!(unprotect_rtcp(&mut rx, &srtcp).is_ok());
            // Truncated packets are refused, not read past their end.
            for cut in 0..srtp.len() {
                assert!(unprotect(&mut rx, &srtp[..cut]).is_err());
            }
            for cut in 0..srtcp.len() {
                assert!(unprotect_rtcp(&mut rx, &srtcp[..cut]).is_err());
            }
        }
    }

    #[test]
    fn replays_are_rejected_reordering_is_not() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let packets: Vec<Vec<u8>> = (1000..1200u16)
                .map(|seq| protect(&mut tx, &rtp(seq, 5, &[1, 2, 3])))
                .collect();
            // Out of order within the window: fine.
            for i in [0, 2, 1, 5, 3, 4] {
                assert!(
                    unprotect(&mut rx, &packets[i]).is_ok(),
                    "{profile}: packet {i}"
                );
            }
            assert_eq!(unprotect(&mut rx, &packets[2]), Err(SrtpError::Replayed));
            for p in &packets[6..] {
                assert!(unprotect(&mut rx, p).is_ok());
            }
            // The highest is 1199: 1199 - 127 is the oldest the window remembers.
            assert_eq!(unprotect(&mut rx, &packets[199]), Err(SrtpError::Replayed));
            assert_eq!(
                unprotect(&mut rx, &packets[199 - 127]),
                Err(SrtpError::Replayed)
            );
            assert_eq!(
                unprotect(&mut rx, &packets[199 - 128]),
                Err(SrtpError::TooOld)
            );
            assert_eq!(unprotect(&mut rx, &packets[0]), Err(SrtpError::TooOld));

            let srtcp: Vec<Vec<u8>> = (0..3).map(|_| protect_rtcp(&mut tx, &rtcp_sr(5))).collect();
            assert!(unprotect_rtcp(&mut rx, &srtcp[1]).is_ok());
            assert!(unprotect_rtcp(&mut rx, &srtcp[0]).is_ok());
            assert_eq!(unprotect_rtcp(&mut rx, &srtcp[1]), Err(SrtpError::Replayed));
            assert!(unprotect_rtcp(&mut rx, &srtcp[2]).is_ok());
        }
    }

    #[test]
    fn rollover_counter_follows_sequence_wraparound() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let seqs: Vec<u16> = (65_530..=65_535).chain(0..6).collect();
            let packets: Vec<Vec<u8>> = seqs
                .iter()
                .map(|&s| protect(&mut tx, &rtp(s, 9, &[s as u8; 20])))
                .collect();
            // Delivered with a reorder across the wrap: 0 (ROC 1) before 65535 (ROC 0).
            let order = [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11];
            for i in order {
                let plain = unprotect(&mut rx, &packets[i]).unwrap_or_else(|e| {
                    panic!("{profile}: seq {} failed: {e}", seqs[i]);
                });
                assert_eq!(plain, rtp(seqs[i], 9, &[seqs[i] as u8; 20]));
            }
            let w = rx
                .streams
                .get(rx.streams.find(9))
                .and_then(|s| s.rtp)
                .unwrap();
            assert_eq!(w.highest, 1 << 16 | 5, "{profile}: ROC 1, seq 5");

            // A late packet from before the wrap is still decrypted under ROC 0, and a
            // retransmission of it after the wrap is sent under ROC 0 again.
            let (mut tx2, mut rx2) = pair(profile);
            let before = rtp(65_534, 9, b"before");
            let late = rtp(65_535, 9, b"late");
            let first = protect(&mut tx2, &before);
            let late_srtp = protect(&mut tx2, &late);
            let after: Vec<Vec<u8>> = (0..10u16)
                .map(|s| protect(&mut tx2, &rtp(s, 9, b"x")))
                .collect();
            assert_eq!(
                protect(&mut tx2, &late),
                late_srtp,
                "{profile}: same index, same bytes"
            );
            assert!(unprotect(&mut rx2, &first).is_ok());
            for p in &after {
                assert!(unprotect(&mut rx2, p).is_ok(), "{profile}");
            }
            assert_eq!(unprotect(&mut rx2, &late_srtp).unwrap(), late);
            assert_eq!(unprotect(&mut rx2, &late_srtp), Err(SrtpError::Replayed));
        }
    }

    #[test]
    fn index_estimate_follows_rfc3711_appendix_a() {
        let w = |roc: u64, seq: u16| Window::new(roc << 16 | u64::from(seq));
        assert_eq!(w(0, 10).estimate(11), Some((0, 11)));
        assert_eq!(w(0, 65_000).estimate(3), Some((1, 1 << 16 | 3)));
        assert_eq!(w(1, 3).estimate(65_000), Some((0, 65_000)));
        // s_l = 40000: sequence numbers below s_l - 32768 = 7232 belong to the next ROC.
        assert_eq!(w(5, 40_000).estimate(39_000), Some((5, 5 << 16 | 39_000)));
        assert_eq!(w(5, 40_000).estimate(7_232), Some((5, 5 << 16 | 7_232)));
        assert_eq!(w(5, 40_000).estimate(7_231), Some((6, 6 << 16 | 7_231)));
        // s_l = 100: sequence numbers above s_l + 32768 belong to the previous ROC.
        assert_eq!(w(5, 100).estimate(32_868), Some((5, 5 << 16 | 32_868)));
        assert_eq!(w(5, 100).estimate(32_869), Some((4, 4 << 16 | 32_869)));
        // Before the first packet of ROC 0: no index.
        assert_eq!(w(0, 5).estimate(60_000), None);
        // Past the last rollover counter.
        assert_eq!(w(u64::from(u32::MAX), 65_000).estimate(1), None);
    }

    #[test]
    fn bounds_and_bad_input() {
        let (mut tx, mut rx) = pair(SrtpProfile::AeadAes128Gcm);
        let plain = rtp(1, 1, b"abc");
        // No tailroom.
        let mut tight = plain.clone();
        assert_eq!(
            tx.protect_rtp(&mut tight, plain.len()),
            Err(SrtpError::NoRoom)
        );
        let mut tight = [&plain[..], &[0; 15]].concat();
        assert_eq!(
            tx.protect_rtp(&mut tight, plain.len()),
            Err(SrtpError::NoRoom)
        );
        // `len` past the buffer.
        let mut buf = slot(&plain);
        assert_eq!(tx.protect_rtp(&mut buf, 4096), Err(SrtpError::TooShort));
        // Version 1, a CSRC count past the end, an extension past the end.
        let mut bad = slot(&plain);
        bad[0] = 0x40;
        assert_eq!(
            tx.protect_rtp(&mut bad, plain.len()),
            Err(SrtpError::Malformed)
        );
        bad[0] = 0x8F;
        assert_eq!(
            tx.protect_rtp(&mut bad, plain.len()),
            Err(SrtpError::Malformed)
        );
        bad[0] = 0x90;
        assert_eq!(
            tx.protect_rtp(&mut bad, plain.len()),
            Err(SrtpError::Malformed)
        );
        let mut rtcp = slot(&[0x80, 200, 0, 1]);
        assert_eq!(tx.protect_rtcp(&mut rtcp, 4), Err(SrtpError::TooShort));
        // Garbage of every small length unprotects to an error, never a panic.
        for len in 0..64 {
            let mut junk = vec![0x80u8; len];
            assert!(rx.unprotect_rtp(&mut junk).is_err());
            let mut junk = vec![0x80u8; len];
            assert!(rx.unprotect_rtcp(&mut junk).is_err());
        }
        assert_eq!(
            MasterKey::new(SrtpProfile::AeadAes128Gcm, &[0; 16], &[0; 14]).unwrap_err(),
            SrtpError::KeyLength
        );
    }

    #[test]
    fn ssrc_table_is_bounded_and_forgets() {
        let m = master(SrtpProfile::Aes128CmHmacSha1_80, 3);
        let mut tx = SrtpContext::new(&m, 3).unwrap();
        let mut rx = SrtpContext::new(&m, 3).unwrap();
        let packets: Vec<Vec<u8>> = (1..=4u32)
            .map(|ssrc| protect_or_full(&mut tx, ssrc))
            .collect();
        assert!(packets[3].is_empty(), "a fourth SSRC is refused on send");
        for p in &packets[..3] {
            assert!(unprotect(&mut rx, p).is_ok());
        }
        let mut extra = SrtpContext::new(&m, 4).unwrap();
        let fourth = protect(&mut extra, &rtp(1, 4, b"x"));
        assert_eq!(unprotect(&mut rx, &fourth), Err(SrtpError::TableFull));
        assert!(rx.forget_ssrc(2));
        assert!(!rx.forget_ssrc(2));
        assert!(unprotect(&mut rx, &fourth).is_ok());
        assert_eq!(rx.ssrc_count(), 3);
    }

    fn protect_or_full(ctx: &mut SrtpContext, ssrc: u32) -> Vec<u8> {
        let plain = rtp(1, ssrc, b"x");
        let mut buf = slot(&plain);
        match ctx.protect_rtp(&mut buf, plain.len()) {
            Ok(n) => buf[..n].to_vec(),
            Err(SrtpError::TableFull) => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn ssrc_table_removal_keeps_probe_runs_reachable() {
        let mut t = SsrcTable::new(64);
        let ssrcs: Vec<u32> = (0..64u32)
            .map(|i| i.wrapping_mul(0x0101_0101) ^ 0x55)
            .collect();
        for &s in &ssrcs {
            let found = t.find(s);
            t.entry(found, s).unwrap();
        }
        assert_eq!(t.entry(t.find(1), 1).unwrap_err(), SrtpError::TableFull);
        for (i, &s) in ssrcs.iter().enumerate() {
            if i % 3 == 0 {
                assert!(t.remove(s));
            }
        }
        for (i, &s) in ssrcs.iter().enumerate() {
            assert_eq!(t.find(s).is_ok(), i % 3 != 0, "ssrc {s:#x}");
        }
        assert_eq!(t.len, 64 - 22);
    }

    #[test]
    fn srtcp_index_is_bounded() {
        let (mut tx, _) = pair(SrtpProfile::AeadAes128Gcm);
        tx.set_next_rtcp_index(8, MAX_SRTCP_INDEX);
        assert!(tx.protect_rtcp(&mut slot(&rtcp_sr(8)), 28).is_ok());
        assert_eq!(
            tx.protect_rtcp(&mut slot(&rtcp_sr(8)), 28),
            Err(SrtpError::Exhausted)
        );
    }
}
