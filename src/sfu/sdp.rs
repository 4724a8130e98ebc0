//! The SFU's SDP (RFC 8866 text, JSEP/RFC 8829 rules), parsed and written with the
//! `sdp` crate; what the lines *mean* for us is decided here.
//!
//! Two peer connections per participant:
//! - **Publishing** is WHIP-like: the browser offers its sending peer connection
//!   ([`PublishOffer::parse`]) and we answer ([`PublishOffer::answer`]) as an ICE-lite,
//!   DTLS-passive receiver of its tracks.
//! - **Receiving** is a server offer ([`SubscribeSession::offer`]) with one sendonly
//!   m-line per forwarded track, renegotiated as tracks come and go, and the browser's
//!   answer ([`SubscribeSession::apply_answer`]).
//!
//! Decisions worth knowing:
//! - One transport: BUNDLE and rtcp-mux are required, since the node has one media port
//!   and demultiplexes by the 5-tuple, not by port per m-line.
//! - Codecs: Opus for audio; VP8 for video, H264 kept as well where offered. An SFU
//!   cannot transcode, so the answer keeps one payload type per codec (VP8 first: it is
//!   what Chrome then sends, and every browser decodes it). Other codecs, RED, FEC and
//!   telephone-event are dropped; RTX is kept for the codecs we keep.
//! - Feedback and header extensions in an answer are the intersection of what was
//!   offered and what the SFU implements (an answer may only remove, RFC 4585 §4.2,
//!   RFC 8285 §6), with the client's extension ids. `extmap-allow-mixed` is not echoed,
//!   so the forwarder only sees one-byte header extensions (ids 1..=14).
//! - Server offers use fixed payload types and extension ids for every m-line: bundled
//!   m-lines must agree on them (RFC 8843 §9.1), and the forwarder rewrites payload types
//!   and extensions per receiver anyway.
//! - m-lines are recycled as JSEP §5.2.2 allows: a track that goes away leaves a port-0
//!   m-line that a later track of the same kind reuses under a new mid, so a long
//!   meeting's SDP stays as large as its busiest moment. The first m-line is never set to
//!   port 0 (only inactive): it carries the BUNDLE transport, and closing it makes
//!   browsers tear the transport down (mediasoup keeps it for the same reason).
//! - Input over [`MAX_SDP_LEN`] is refused before it is parsed, with one exception: a
//!   subscriber's answer grows with the room (about 1.4 KB per other participant from
//!   Chrome, ~70 KB with 50 people), so it may be as long as twice our offer
//!   ([`SubscribeSession::max_answer_len`]). Nothing in here panics on
//!   input, and every refusal is an [`SdpError`] whose text says what is wrong.

use std::fmt;
use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use ::sdp::description::common::{Address, Attribute, ConnectionInformation};
use ::sdp::description::media::{MediaDescription, MediaName, RangedPort};
use ::sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};

use super::ice::IceCredentials;

/// Largest SDP accepted (bigger bodies are answered 413).
pub(crate) const MAX_SDP_LEN: usize = 64 * 1024;
/// m-lines in a publisher's offer: camera, microphone, a screen share and its audio fit
/// many times over.
pub(crate) const MAX_PUBLISH_SECTIONS: usize = 16;
/// m-lines in a subscriber's session, live or recycled.
pub(crate) const MAX_SUBSCRIBE_SECTIONS: usize = 256;
/// Simulcast layers received from a publisher; further ones are left out of the answer
/// (RFC 8853 §5.3 lets the answerer drop streams).
pub(crate) const MAX_RIDS: usize = 3;
/// SSRCs signalled on one m-line.
const MAX_SSRCS: usize = 16;
/// Longest mid or rid: both travel in one-byte RTP header extensions (RFC 8285: at
/// most 16 bytes).
const MAX_ID_LEN: usize = 16;
/// Longest cname or msid token we write.
const MAX_TOKEN_LEN: usize = 64;
/// The only transport profile WebRTC media uses (RFC 8827).
const RTP_PROTOS: [&str; 4] = ["UDP", "TLS", "RTP", "SAVPF"];

/// Payload types of server offers (the forwarder rewrites publishers' to these).
pub(crate) mod pt {
    pub(crate) const VP8: u8 = 96;
    pub(crate) const VP8_RTX: u8 = 97;
    pub(crate) const H264: u8 = 102;
    pub(crate) const H264_RTX: u8 = 103;
    pub(crate) const OPUS: u8 = 111;
}

/// The H264 format offered to subscribers: constrained baseline, packetization mode 1,
/// which every browser decodes; publishers' H264 is picked to match (see
/// [`PublishOffer::parse`]).
pub(crate) const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

/// Header extensions of server offers and their fixed ids.
pub(crate) const SUBSCRIBE_EXTENSIONS: [(Extension, u8); 4] = [
    (Extension::AudioLevel, 1),
    (Extension::AbsSendTime, 2),
    (Extension::TransportCc, 3),
    (Extension::Mid, 4),
];

/// Why an SDP was refused. `Display` is the message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdpError {
    /// Over the size limit (HTTP 413): the length and the limit.
    TooLarge(usize, usize),
    /// The body is not UTF-8.
    NotUtf8,
    /// Not SDP the parser understands; the parser's words, shortened.
    Syntax(String),
    /// No audio or video m-line we can receive.
    NoMedia,
    /// More m-lines than a session may have (the count).
    TooManySections(usize),
    /// The m-line at this index (from 0) has no `a=mid`.
    MissingMid(usize),
    /// Two m-lines share this `a=mid`.
    DuplicateMid(String),
    /// No `a=group:BUNDLE`: every m-line must share one transport.
    NoBundle,
    /// This mid is outside the BUNDLE group.
    NotBundled(String),
    /// This mid lacks `a=rtcp-mux` (RTP and RTCP share one port).
    NoRtcpMux(String),
    /// A required attribute is absent.
    Missing {
        /// The attribute's name.
        attribute: &'static str,
        /// The m-line it is missing from; `None` at session level.
        mid: Option<String>,
    },
    /// An attribute's value cannot be used.
    Invalid {
        /// The attribute's name.
        attribute: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Fingerprints were given, none with SHA-256.
    NoSha256Fingerprint,
    /// `a=setup` has a role we cannot take.
    Setup {
        /// The role offered.
        found: String,
        /// The roles accepted.
        expected: &'static str,
    },
    /// An m-line offers no codec we forward.
    NoCodec {
        /// The m-line's mid.
        mid: String,
        /// The codecs we would accept.
        wanted: &'static str,
    },
    /// The simulcast or RID attributes of an m-line do not fit.
    Simulcast {
        /// The m-line's mid.
        mid: String,
        /// What does not fit.
        reason: String,
    },
    /// A subscriber's answer does not fit the offer it answers.
    AnswerMismatch(String),
    /// An answer arrived while no server offer was outstanding (HTTP 409).
    NoPendingOffer,
}

impl SdpError {
    /// The HTTP status the room API answers with.
    pub(crate) fn http_status(&self) -> u16 {
        match self {
            SdpError::TooLarge(..) => 413,
            SdpError::NoPendingOffer => 409,
            _ => 400,
        }
    }

    fn invalid(attribute: &'static str, reason: impl Into<String>) -> SdpError {
        SdpError::Invalid {
            attribute,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SdpError::TooLarge(n, limit) => {
                write!(f, "SDP of {n} bytes is over the {limit}-byte limit")
            }
            SdpError::NotUtf8 => f.write_str("SDP is not UTF-8 text"),
            SdpError::Syntax(e) => write!(f, "malformed SDP: {e}"),
            SdpError::NoMedia => f.write_str("no audio or video m-line to receive"),
            SdpError::TooManySections(n) => write!(f, "too many m-lines ({n})"),
            SdpError::MissingMid(i) => write!(f, "m-line {i} has no a=mid"),
            SdpError::DuplicateMid(mid) => write!(f, "mid {mid:?} is used twice"),
            SdpError::NoBundle => f.write_str("a=group:BUNDLE is required"),
            SdpError::NotBundled(mid) => write!(f, "m-line {mid:?} is not in the BUNDLE group"),
            SdpError::NoRtcpMux(mid) => {
                write!(f, "m-line {mid:?} lacks a=rtcp-mux, which is required")
            }
            SdpError::Missing {
                attribute,
                mid: None,
            } => write!(f, "a={attribute} is missing"),
            SdpError::Missing {
                attribute,
                mid: Some(mid),
            } => write!(f, "a={attribute} is missing on m-line {mid:?}"),
            SdpError::Invalid { attribute, reason } => write!(f, "invalid {attribute}: {reason}"),
            SdpError::NoSha256Fingerprint => f.write_str("a=fingerprint with sha-256 is required"),
            SdpError::Setup { found, expected } => {
                write!(
                    f,
                    "a=setup:{found} is not acceptable here (expected {expected})"
                )
            }
            SdpError::NoCodec { mid, wanted } => {
                write!(
                    f,
                    "m-line {mid:?} offers no codec we can forward (need {wanted})"
                )
            }
            SdpError::Simulcast { mid, reason } => {
                write!(f, "simulcast on m-line {mid:?}: {reason}")
            }
            SdpError::AnswerMismatch(why) => write!(f, "answer does not match the offer: {why}"),
            SdpError::NoPendingOffer => f.write_str("no offer is waiting for an answer"),
        }
    }
}

impl std::error::Error for SdpError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// The codecs the SFU forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CodecName {
    Opus,
    Vp8,
    H264,
}

impl CodecName {
    pub(crate) fn kind(self) -> MediaKind {
        match self {
            CodecName::Opus => MediaKind::Audio,
            CodecName::Vp8 | CodecName::H264 => MediaKind::Video,
        }
    }

    /// The `a=rtpmap` encoding, clock rate and channels.
    fn rtpmap(self) -> &'static str {
        match self {
            CodecName::Opus => "opus/48000/2",
            CodecName::Vp8 => "VP8/90000",
            CodecName::H264 => "H264/90000",
        }
    }

    /// Payload types in server offers: the codec's and its RTX's.
    pub(crate) fn offer_pts(self) -> (u8, Option<u8>) {
        match self {
            CodecName::Opus => (pt::OPUS, None),
            CodecName::Vp8 => (pt::VP8, Some(pt::VP8_RTX)),
            CodecName::H264 => (pt::H264, Some(pt::H264_RTX)),
        }
    }
}

/// RTCP feedback the SFU handles (RFC 4585, RFC 5104, transport-cc, REMB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Feedback {
    GoogRemb,
    TransportCc,
    CcmFir,
    Nack,
    NackPli,
}

impl Feedback {
    /// In the order Chrome writes them.
    pub(crate) const ALL: [Feedback; 5] = [
        Feedback::GoogRemb,
        Feedback::TransportCc,
        Feedback::CcmFir,
        Feedback::Nack,
        Feedback::NackPli,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Feedback::GoogRemb => "goog-remb",
            Feedback::TransportCc => "transport-cc",
            Feedback::CcmFir => "ccm fir",
            Feedback::Nack => "nack",
            Feedback::NackPli => "nack pli",
        }
    }

    fn parse(s: &str) -> Option<Feedback> {
        let mut words = s.split_whitespace();
        let first = words.next()?;
        let second = words.next();
        Feedback::ALL.into_iter().find(|f| {
            let mut ours = f.as_str().split(' ');
            ours.next() == Some(first) && ours.next() == second
        })
    }
}

/// RTP header extensions the SFU reads or writes (RFC 8285 URIs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Extension {
    Mid,
    Rid,
    RepairedRid,
    AbsSendTime,
    TransportCc,
    AudioLevel,
}

impl Extension {
    pub(crate) const ALL: [Extension; 6] = [
        Extension::Mid,
        Extension::Rid,
        Extension::RepairedRid,
        Extension::AbsSendTime,
        Extension::TransportCc,
        Extension::AudioLevel,
    ];

    pub(crate) fn uri(self) -> &'static str {
        match self {
            Extension::Mid => "urn:ietf:params:rtp-hdrext:sdes:mid",
            Extension::Rid => "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            Extension::RepairedRid => "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
            Extension::AbsSendTime => "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            Extension::TransportCc => {
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
            }
            Extension::AudioLevel => "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        }
    }

    pub(crate) fn from_uri(uri: &str) -> Option<Extension> {
        Extension::ALL.into_iter().find(|e| e.uri() == uri)
    }
}

/// A SHA-256 certificate fingerprint (RFC 8122), the only hash we accept: SHA-1 is
/// deprecated for DTLS-SRTP (RFC 8827 §6.5) and every browser offers SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Parses `AB:CD:...` (32 colon-separated hex pairs, any case).
    pub fn from_hex(s: &str) -> Option<Fingerprint> {
        let mut out = [0u8; 32];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(Fingerprint(out))
    }

    /// An `a=fingerprint` value: `Ok(None)` for another hash function.
    fn from_attribute(value: &str) -> Result<Option<Fingerprint>, SdpError> {
        let (algorithm, hex) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| SdpError::invalid("fingerprint", "expected `sha-256 AB:CD:...`"))?;
        if !algorithm.eq_ignore_ascii_case("sha-256") {
            return Ok(None);
        }
        Fingerprint::from_hex(hex.trim())
            .map(Some)
            .ok_or_else(|| SdpError::invalid("fingerprint", "sha-256 needs 32 hex pairs"))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// `a=setup` (RFC 4145, RFC 8842): who starts the DTLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// Starts the handshake (DTLS client).
    Active,
    /// Waits for the handshake (DTLS server).
    Passive,
    /// Either, the answerer chooses (offers only).
    Actpass,
}

impl Setup {
    fn parse(s: &str) -> Option<Setup> {
        match s.trim() {
            "active" => Some(Setup::Active),
            "passive" => Some(Setup::Passive),
            "actpass" => Some(Setup::Actpass),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn of(m: &MediaDescription, session: &SessionDescription) -> Direction {
        let find = |attrs: &[Attribute]| {
            attrs.iter().find_map(|a| match a.key.as_str() {
                "sendrecv" => Some(Direction::SendRecv),
                "sendonly" => Some(Direction::SendOnly),
                "recvonly" => Some(Direction::RecvOnly),
                "inactive" => Some(Direction::Inactive),
                _ => None,
            })
        };
        find(&m.attributes)
            .or_else(|| find(&session.attributes))
            .unwrap_or(Direction::SendRecv)
    }

    fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
}

/// One codec kept from an offer, with the client's payload types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codec {
    pub(crate) name: CodecName,
    pub(crate) pt: u8,
    /// The offer's format parameters, echoed in the answer.
    pub(crate) fmtp: Option<String>,
    /// Payload type of its RTX stream (RFC 4588), when offered.
    pub(crate) rtx_pt: Option<u8>,
    /// Feedback both sides support, in [`Feedback::ALL`] order.
    pub(crate) feedback: Vec<Feedback>,
}

/// `a=msid` (RFC 8830): the stream and track ids of a sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Msid {
    pub(crate) stream: String,
    pub(crate) track: Option<String>,
}

/// A track a publisher sends, as negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTrack {
    pub(crate) kind: MediaKind,
    /// Kept codecs, the preferred first (the order of the answer).
    pub(crate) codecs: Vec<Codec>,
    /// Supported header extensions with the client's ids.
    pub(crate) extensions: Vec<(Extension, u8)>,
    /// Simulcast rids in the offer's order (Chrome lists the lowest layer first); empty
    /// without simulcast.
    pub(crate) rids: Vec<String>,
    pub(crate) msid: Option<Msid>,
    pub(crate) cname: Option<String>,
    /// Media SSRCs from `a=ssrc` lines (browsers leave them out for rid simulcast).
    pub(crate) ssrcs: Vec<u32>,
    /// (media, RTX) SSRC pairs from `a=ssrc-group:FID`.
    pub(crate) rtx_ssrcs: Vec<(u32, u32)>,
    /// The client offered reduced-size RTCP (RFC 5506); it is accepted.
    pub(crate) rtcp_rsize: bool,
}

impl PublishedTrack {
    pub(crate) fn extension_id(&self, ext: Extension) -> Option<u8> {
        self.extensions
            .iter()
            .find(|(e, _)| *e == ext)
            .map(|&(_, id)| id)
    }

    /// The codec a payload type belongs to, and whether it is that codec's RTX.
    pub fn codec_for_pt(&self, pt: u8) -> Option<(&Codec, bool)> {
        self.codecs.iter().find_map(|c| {
            if c.pt == pt {
                Some((c, false))
            } else if c.rtx_pt == Some(pt) {
                Some((c, true))
            } else {
                None
            }
        })
    }
}

/// One m-line of a publisher's offer.
#[derive(Clone, Debug)]
pub(crate) struct PublishSection {
    pub(crate) mid: String,
    /// `None`: refused in the answer (port 0): a data channel, a receive-only
    /// transceiver or a profile other than UDP/TLS/RTP/SAVPF.
    pub(crate) track: Option<PublishedTrack>,
    /// The offered m= line, echoed with port 0 when refused.
    offered: MediaName,
}

/// A publisher's offer for its sending peer connection.
#[derive(Clone, Debug)]
pub struct PublishOffer {
    pub(crate) ice: IceCredentials,
    pub(crate) fingerprint: Fingerprint,
    /// The publisher's DTLS role; the SFU answers the opposite one.
    pub setup: Setup,
    /// In m-line order.
    pub(crate) sections: Vec<PublishSection>,
}

/// What our side of a peer connection puts into its SDP.
#[derive(Clone, Copy, Debug)]
pub struct LocalTransport<'a> {
    /// `o=` session id of this peer connection: random, below 2^63 (JSEP §5.2.1).
    pub session_id: u64,
    /// Our ICE ufrag and password for this peer connection.
    pub ice: &'a IceCredentials,
    /// SHA-256 fingerprint of our DTLS certificate, `AB:CD:...`.
    pub fingerprint: &'a str,
    /// Host candidates: `node.public_ip` (and `public_ipv6`) with the media port; the
    /// first one is preferred.
    pub candidates: &'a [SocketAddr],
}

impl PublishOffer {
    /// Parses and checks a publisher's offer.
    pub fn parse(raw: &[u8]) -> Result<PublishOffer, SdpError> {
        let sd = parse_text(raw, MAX_SDP_LEN)?;
        let media = &sd.media_descriptions;
        if media.is_empty() {
            return Err(SdpError::NoMedia);
        }
        if media.len() > MAX_PUBLISH_SECTIONS {
            return Err(SdpError::TooManySections(media.len()));
        }
        let mids = mids(&sd)?;
        let bundle = bundle_group(&sd).ok_or(SdpError::NoBundle)?;
        let mut sections = Vec::with_capacity(media.len());
        let mut first_accepted = None;
        for (m, mid) in media.iter().zip(mids) {
            let track = if wants_rtp_receiver(m, &sd) {
                if !bundle.contains(&mid.as_str()) {
                    return Err(SdpError::NotBundled(mid));
                }
                if !m.has_attribute("rtcp-mux") {
                    return Err(SdpError::NoRtcpMux(mid));
                }
                first_accepted.get_or_insert(m);
                Some(parse_track(m, &mid)?)
            } else {
                None
            };
            sections.push(PublishSection {
                mid,
                track,
                offered: m.media_name.clone(),
            });
        }
        let first = first_accepted.ok_or(SdpError::NoMedia)?;
        let (ice, fingerprint, setup) = transport(&sd, first)?;
        if setup == Setup::Passive {
            return Err(SdpError::Setup {
                found: "passive".into(),
                expected: "actpass or active",
            });
        }
        Ok(PublishOffer {
            ice,
            fingerprint,
            setup,
            sections,
        })
    }

    /// The accepted tracks with their mids.
    pub fn tracks(&self) -> impl Iterator<Item = (&str, &PublishedTrack)> {
        self.sections
            .iter()
            .filter_map(|s| s.track.as_ref().map(|t| (s.mid.as_str(), t)))
    }

    /// Our answer: ICE-lite, DTLS passive, receiving every accepted track; `o=`
    /// version 1.
    pub fn answer(&self, local: &LocalTransport<'_>) -> String {
        self.answer_as(local, 1)
    }

    /// Our answer with `o=` version `version`: a re-offer of the same connection (a
    /// track added or stopped) is answered under the same session id and the next
    /// version.
    pub(crate) fn answer_as(&self, local: &LocalTransport<'_>, version: u64) -> String {
        let mut sd = session(local, version);
        let accepted: Vec<&str> = self.tracks().map(|(mid, _)| mid).collect();
        sd.attributes
            .push(attribute("group", format!("BUNDLE {}", accepted.join(" "))));
        for section in &self.sections {
            let m = match &section.track {
                Some(track) => answer_section(&section.mid, track, local),
                None => rejected_section(&section.offered, &section.mid),
            };
            sd.media_descriptions.push(m);
        }
        sd.marshal()
    }
}

/// Whether an m-line is one we receive media on: audio or video, not refused by the
/// offerer (port 0 without bundle-only), sending, over DTLS-SRTP.
fn wants_rtp_receiver(m: &MediaDescription, sd: &SessionDescription) -> bool {
    let name = &m.media_name;
    let kind_ok = matches!(name.media.as_str(), "audio" | "video");
    let port_ok = name.port.value != 0 || m.has_attribute("bundle-only");
    let proto_ok = name.protos.iter().map(String::as_str).eq(RTP_PROTOS);
    kind_ok && port_ok && proto_ok && Direction::of(m, sd).sends()
}

fn parse_track(m: &MediaDescription, mid: &str) -> Result<PublishedTrack, SdpError> {
    let kind = match m.media_name.media.as_str() {
        "audio" => MediaKind::Audio,
        _ => MediaKind::Video,
    };
    let maps = rtpmaps(m)?;
    let mut codecs = Vec::new();
    match kind {
        MediaKind::Audio => {
            let opus = maps
                .iter()
                .find(|r| r.is("opus", 48_000) && r.channels == "2")
                .ok_or_else(|| SdpError::NoCodec {
                    mid: mid.into(),
                    wanted: "opus/48000/2",
                })?;
            codecs.push(codec(m, &maps, CodecName::Opus, opus.pt)?);
        }
        MediaKind::Video => {
            if let Some(vp8) = maps.iter().find(|r| r.is("VP8", 90_000)) {
                codecs.push(codec(m, &maps, CodecName::Vp8, vp8.pt)?);
            }
            if let Some(h264) = best_h264(m, &maps) {
                codecs.push(codec(m, &maps, CodecName::H264, h264)?);
            }
            if codecs.is_empty() {
                return Err(SdpError::NoCodec {
                    mid: mid.into(),
                    wanted: "VP8/90000 or H264/90000",
                });
            }
        }
    }
    let (ssrcs, rtx_ssrcs, cname) = ssrcs(m)?;
    Ok(PublishedTrack {
        kind,
        codecs,
        extensions: extensions(m)?,
        rids: simulcast(m, mid)?,
        msid: msid(m),
        cname,
        ssrcs,
        rtx_ssrcs,
        rtcp_rsize: m.has_attribute("rtcp-rsize"),
    })
}

/// One `a=rtpmap:<pt> <name>/<clock>[/<channels>]`.
struct RtpMap<'a> {
    pt: u8,
    name: &'a str,
    clock: u32,
    channels: &'a str,
}

impl RtpMap<'_> {
    fn is(&self, name: &str, clock: u32) -> bool {
        self.name.eq_ignore_ascii_case(name) && self.clock == clock
    }
}

/// The rtpmaps of the payload types on the m= line, in the line's (preference) order.
fn rtpmaps(m: &MediaDescription) -> Result<Vec<RtpMap<'_>>, SdpError> {
    let mut formats = Vec::with_capacity(m.media_name.formats.len());
    for f in &m.media_name.formats {
        let pt: u8 = f
            .parse()
            .ok()
            .filter(|pt| *pt < 128)
            .ok_or_else(|| SdpError::invalid("m= line", format!("payload type {f:?}")))?;
        formats.push(pt);
    }
    let mut maps = Vec::new();
    for value in values(m, "rtpmap") {
        let bad = || SdpError::invalid("rtpmap", format!("{value:?}"));
        let (pt, encoding) = value.split_once(' ').ok_or_else(bad)?;
        let pt: u8 = pt.parse().map_err(|_| bad())?;
        let mut parts = encoding.trim().split('/');
        let name = parts.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
        let clock: u32 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        let channels = parts.next().unwrap_or("1");
        if formats.contains(&pt) {
            maps.push(RtpMap {
                pt,
                name,
                clock,
                channels,
            });
        }
    }
    maps.sort_by_key(|r| formats.iter().position(|&f| f == r.pt));
    Ok(maps)
}

/// The format parameters of payload type `pt`.
fn fmtp(m: &MediaDescription, pt: u8) -> Option<&str> {
    values(m, "fmtp").find_map(|v| {
        let (p, params) = v.split_once(' ')?;
        (p.parse() == Ok(pt)).then(|| params.trim())
    })
}

/// The value of `key` among `;`-separated `key=value` format parameters.
fn fmtp_param<'a>(params: &'a str, key: &str) -> Option<&'a str> {
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Our codec entry for payload type `pt`: its fmtp, RTX and the feedback both support.
fn codec(
    m: &MediaDescription,
    maps: &[RtpMap<'_>],
    name: CodecName,
    pt: u8,
) -> Result<Codec, SdpError> {
    // Browsers retransmit video only; audio is better concealed than resent.
    let rtx_pt = maps
        .iter()
        .filter(|r| name != CodecName::Opus && r.is("rtx", 90_000))
        .find(|r| {
            fmtp(m, r.pt)
                .and_then(|p| fmtp_param(p, "apt"))
                .is_some_and(|apt| apt.parse() == Ok(pt))
        })
        .map(|r| r.pt);
    let offered: Vec<Feedback> = values(m, "rtcp-fb")
        .filter_map(|v| {
            let (p, fb) = v.split_once(' ')?;
            (p == "*" || p.parse() == Ok(pt)).then(|| Feedback::parse(fb))?
        })
        .collect();
    // The fmtp is echoed into the answer: a stray control character (a lone CR survives
    // line splitting) must not reach it.
    let params = fmtp(m, pt);
    if let Some(p) = params.filter(|p| p.bytes().any(|b| b.is_ascii_control())) {
        return Err(SdpError::invalid("fmtp", format!("{p:?}")));
    }
    Ok(Codec {
        name,
        pt,
        fmtp: params.map(str::to_owned),
        rtx_pt,
        feedback: Feedback::ALL
            .into_iter()
            .filter(|f| offered.contains(f))
            .collect(),
    })
}

/// The H264 payload type subscribers are most likely to decode: packetization mode 1
/// and constrained baseline first (what [`H264_FMTP`] promises them), then baseline,
/// then any mode-1 profile, then the first H264 at all.
fn best_h264(m: &MediaDescription, maps: &[RtpMap<'_>]) -> Option<u8> {
    let rank = |pt: u8| {
        let params = fmtp(m, pt).unwrap_or("");
        let mode1 = fmtp_param(params, "packetization-mode") == Some("1");
        let profile = fmtp_param(params, "profile-level-id").unwrap_or("420010");
        let idc = profile
            .get(..2)
            .and_then(|s| u8::from_str_radix(s, 16).ok());
        let constraints = profile
            .get(2..4)
            .and_then(|s| u8::from_str_radix(s, 16).ok());
        // Constrained baseline: profile_idc 66 with constraint_set1 (0x40) set.
        let constrained = idc == Some(0x42) && constraints.is_some_and(|c| c & 0x40 != 0);
        let baseline = idc == Some(0x42);
        match (mode1, constrained, baseline) {
            (true, true, _) => 3,
            (true, false, true) => 2,
            (true, false, false) => 1,
            _ => 0,
        }
    };
    let mut best: Option<(u8, u8)> = None;
    for r in maps.iter().filter(|r| r.is("H264", 90_000)) {
        let score = rank(r.pt);
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((r.pt, score));
        }
    }
    best.map(|(pt, _)| pt)
}

/// Supported `a=extmap` lines the client will send (direction not recvonly/inactive),
/// the first per extension. Ids over 14 need two-byte headers and are left out.
fn extensions(m: &MediaDescription) -> Result<Vec<(Extension, u8)>, SdpError> {
    let mut out: Vec<(Extension, u8)> = Vec::new();
    for value in values(m, "extmap") {
        let bad = || SdpError::invalid("extmap", format!("{value:?}"));
        let mut words = value.split_whitespace();
        let id_dir = words.next().ok_or_else(bad)?;
        let uri = words.next().ok_or_else(bad)?;
        let (id, direction) = match id_dir.split_once('/') {
            Some((id, dir)) => (id, Some(dir)),
            None => (id_dir, None),
        };
        let id: u8 = id.parse().map_err(|_| bad())?;
        // 15 is reserved only in the one-byte form (RFC 8285 §4.2); ids from 15 up are
        // two-byte ones, valid but skipped below.
        if id == 0 {
            return Err(bad());
        }
        if matches!(direction, Some("recvonly" | "inactive")) || id > 14 {
            continue;
        }
        let Some(ext) = Extension::from_uri(uri) else {
            continue;
        };
        if out.iter().any(|&(_, i)| i == id) {
            return Err(SdpError::invalid(
                "extmap",
                format!("id {id} is used twice"),
            ));
        }
        if !out.iter().any(|&(e, _)| e == ext) {
            out.push((ext, id));
        }
    }
    Ok(out)
}

/// The layers of `a=simulcast:send` (RFC 8853) that have `a=rid:<id> send` lines
/// (RFC 8851), at most [`MAX_RIDS`]; empty without simulcast.
fn simulcast(m: &MediaDescription, mid: &str) -> Result<Vec<String>, SdpError> {
    let Some(value) = m.attribute("simulcast").flatten() else {
        return Ok(Vec::new());
    };
    let err = |reason: String| SdpError::Simulcast {
        mid: mid.into(),
        reason,
    };
    let mut words = value.split_whitespace();
    let mut send = None;
    while let Some(direction) = words.next() {
        let list = words
            .next()
            .ok_or_else(|| err(format!("{direction:?} without streams")))?;
        match direction {
            "send" => send = Some(list),
            "recv" => {}
            other => return Err(err(format!("unknown direction {other:?}"))),
        }
    }
    // Receive-only simulcast is about streams we would send: nothing to receive.
    let Some(list) = send else {
        return Ok(Vec::new());
    };
    // Drafts before RFC 8853 (older Firefox) wrote `send rid=a;b;c`.
    let list = list.strip_prefix("rid=").unwrap_or(list);
    let mut rids: Vec<String> = Vec::new();
    for alternatives in list.split(';') {
        // Of `a,b` alternatives the first is the one the sender prefers; `~` marks a
        // stream that starts paused, still a layer to receive.
        let first = alternatives.split(',').next().unwrap_or("");
        let rid = first.strip_prefix('~').unwrap_or(first);
        if !is_id(rid) {
            return Err(err(format!("bad rid {rid:?}")));
        }
        if rids.iter().any(|r| r == rid) {
            return Err(err(format!("rid {rid:?} is listed twice")));
        }
        let declared = values(m, "rid").any(|v| {
            let mut w = v.split_whitespace();
            w.next() == Some(rid) && w.next() == Some("send")
        });
        if !declared {
            return Err(err(format!("rid {rid:?} has no a=rid:{rid} send line")));
        }
        if rids.len() < MAX_RIDS {
            rids.push(rid.to_owned());
        }
    }
    Ok(rids)
}

fn msid(m: &MediaDescription) -> Option<Msid> {
    let value = m.attribute("msid").flatten()?;
    let mut words = value.split_whitespace();
    Some(Msid {
        stream: words.next()?.to_owned(),
        track: words.next().map(str::to_owned),
    })
}

type Ssrcs = (Vec<u32>, Vec<(u32, u32)>, Option<String>);

/// The media SSRCs, FID pairs and cname of `a=ssrc` / `a=ssrc-group:FID` lines.
fn ssrcs(m: &MediaDescription) -> Result<Ssrcs, SdpError> {
    let bad = |v: &str| SdpError::invalid("ssrc", format!("{v:?}"));
    let mut fid = Vec::new();
    for value in values(m, "ssrc-group") {
        let mut words = value.split_whitespace();
        if words.next() != Some("FID") {
            continue;
        }
        let pair: Vec<u32> = words
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| bad(value))?;
        match pair.as_slice() {
            &[media, rtx] => fid.push((media, rtx)),
            _ => return Err(bad(value)),
        }
    }
    let mut all: Vec<u32> = Vec::new();
    let mut cname = None;
    for value in values(m, "ssrc") {
        let (ssrc, rest) = value.split_once(' ').ok_or_else(|| bad(value))?;
        let ssrc: u32 = ssrc.parse().map_err(|_| bad(value))?;
        if !all.contains(&ssrc) {
            if all.len() == MAX_SSRCS {
                return Err(SdpError::invalid(
                    "ssrc",
                    format!("more than {MAX_SSRCS} SSRCs"),
                ));
            }
            all.push(ssrc);
        }
        if let Some(c) = rest.trim().strip_prefix("cname:") {
            cname.get_or_insert_with(|| c.to_owned());
        }
    }
    let media = all
        .into_iter()
        .filter(|s| !fid.iter().any(|&(_, rtx)| rtx == *s))
        .collect();
    Ok((media, fid, cname))
}

/// The mids of all m-lines, checked for presence, syntax and uniqueness.
fn mids(sd: &SessionDescription) -> Result<Vec<String>, SdpError> {
    let mut out: Vec<String> = Vec::with_capacity(sd.media_descriptions.len());
    for (i, m) in sd.media_descriptions.iter().enumerate() {
        let mid = m
            .attribute("mid")
            .flatten()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(SdpError::MissingMid(i))?;
        if !is_id(mid) {
            return Err(SdpError::invalid(
                "mid",
                format!("{mid:?}: 1 to {MAX_ID_LEN} letters, digits, '-' or '_'"),
            ));
        }
        if out.iter().any(|m| m == mid) {
            return Err(SdpError::DuplicateMid(mid.into()));
        }
        out.push(mid.to_owned());
    }
    Ok(out)
}

/// The mids of the first `a=group:BUNDLE`.
fn bundle_group(sd: &SessionDescription) -> Option<Vec<&str>> {
    sd.attributes
        .iter()
        .filter(|a| a.key == "group")
        .filter_map(|a| a.value.as_deref())
        .find_map(|v| {
            let mut words = v.split_whitespace();
            (words.next() == Some("BUNDLE")).then(|| words.collect())
        })
}

/// ICE credentials, SHA-256 fingerprint and setup role of the bundled transport, read
/// from its first m-line with the session level as fallback (Firefox puts the
/// fingerprint there).
fn transport(
    sd: &SessionDescription,
    m: &MediaDescription,
) -> Result<(IceCredentials, Fingerprint, Setup), SdpError> {
    let mid = m.attribute("mid").flatten().map(str::to_owned);
    let get = |key: &'static str| {
        m.attribute(key)
            .flatten()
            .or_else(|| sd.attribute(key).map(String::as_str))
            .ok_or_else(|| SdpError::Missing {
                attribute: key,
                mid: mid.clone(),
            })
    };
    let ice = IceCredentials::parse(get("ice-ufrag")?.trim(), get("ice-pwd")?.trim())
        .map_err(|reason| SdpError::invalid("ICE credentials", reason))?;
    // Media-level fingerprints replace session-level ones (RFC 8122 §5).
    let mut offered: Vec<&str> = values(m, "fingerprint").collect();
    if offered.is_empty() {
        offered = sd
            .attributes
            .iter()
            .filter(|a| a.key == "fingerprint")
            .filter_map(|a| a.value.as_deref())
            .collect();
    }
    if offered.is_empty() {
        return Err(SdpError::Missing {
            attribute: "fingerprint",
            mid,
        });
    }
    let mut fingerprint = None;
    for value in offered {
        if let Some(f) = Fingerprint::from_attribute(value)? {
            fingerprint = Some(f);
            break;
        }
    }
    let fingerprint = fingerprint.ok_or(SdpError::NoSha256Fingerprint)?;
    let setup_value = get("setup")?;
    let setup = Setup::parse(setup_value)
        .ok_or_else(|| SdpError::invalid("setup", format!("{setup_value:?}")))?;
    Ok((ice, fingerprint, setup))
}

/// Values of every `a=<key>:<value>` of an m-line.
fn values<'a>(m: &'a MediaDescription, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    m.attributes
        .iter()
        .filter(move |a| a.key == key)
        .filter_map(|a| a.value.as_deref())
}

/// A mid or rid (RFC 8851 rid-syntax, bounded for one-byte header extensions).
fn is_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A cname or msid token we write into an offer: visible ASCII, no room for a line
/// break or a space that would split the attribute.
fn is_token(s: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Size check, UTF-8 check and the `sdp` crate's parse, with its error kept short.
fn parse_text(raw: &[u8], limit: usize) -> Result<SessionDescription, SdpError> {
    if raw.len() > limit {
        return Err(SdpError::TooLarge(raw.len(), limit));
    }
    if std::str::from_utf8(raw).is_err() {
        return Err(SdpError::NotUtf8);
    }
    SessionDescription::unmarshal(&mut Cursor::new(raw)).map_err(|e| {
        // Some of the crate's errors quote the whole input; the client needs the start.
        let text = e.to_string();
        let cut = (0..=200.min(text.len()))
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        SdpError::Syntax(text[..cut].to_owned())
    })
}

// ---- writing ----

fn attribute(key: &str, value: impl Into<String>) -> Attribute {
    Attribute::new(key.to_owned(), Some(value.into()))
}

fn flag(key: &str) -> Attribute {
    Attribute::new(key.to_owned(), None)
}

/// The session part of our SDP: `v=`, `o=`, `s=`, `t=` and `a=ice-lite`.
fn session(local: &LocalTransport<'_>, version: u64) -> SessionDescription {
    SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".into(),
            session_id: local.session_id & (u64::MAX >> 1),
            session_version: version,
            network_type: "IN".into(),
            address_type: "IP4".into(),
            unicast_address: "0.0.0.0".into(),
        },
        session_name: "-".into(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: None,
        bandwidth: Vec::new(),
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: Vec::new(),
        }],
        time_zones: Vec::new(),
        encryption_key: None,
        attributes: vec![flag("ice-lite")],
        media_descriptions: Vec::new(),
    }
}

fn connection(ip: IpAddr) -> ConnectionInformation {
    ConnectionInformation {
        network_type: "IN".into(),
        address_type: if ip.is_ipv4() { "IP4" } else { "IP6" }.into(),
        address: Some(Address {
            address: ip.to_string(),
            ttl: None,
            range: None,
        }),
    }
}

/// An m-line on our transport: the first candidate's port and address (browsers use
/// candidates, but `c=` and the port must still be well-formed).
fn media(kind: MediaKind, formats: Vec<String>, local: &LocalTransport<'_>) -> MediaDescription {
    let (ip, port) = match local.candidates.first() {
        Some(a) => (a.ip(), a.port()),
        None => (IpAddr::from([0, 0, 0, 0]), 9),
    };
    MediaDescription {
        media_name: MediaName {
            media: kind.as_str().into(),
            port: RangedPort {
                // Lossless: isize has at least 32 bits wherever std runs.
                value: port as isize,
                range: None,
            },
            protos: RTP_PROTOS.iter().map(|p| (*p).to_owned()).collect(),
            formats,
        },
        media_title: None,
        connection_information: Some(connection(ip)),
        bandwidth: Vec::new(),
        encryption_key: None,
        attributes: Vec::new(),
    }
}

/// A port-0 m-line: refused, or recycled and waiting for a new track.
fn closed(media_name: &MediaName, mid: &str) -> MediaDescription {
    MediaDescription {
        media_name: MediaName {
            port: RangedPort {
                value: 0,
                range: None,
            },
            ..media_name.clone()
        },
        media_title: None,
        connection_information: Some(connection(IpAddr::from([0, 0, 0, 0]))),
        bandwidth: Vec::new(),
        encryption_key: None,
        attributes: vec![attribute("mid", mid), flag("inactive")],
    }
}

fn rejected_section(offered: &MediaName, mid: &str) -> MediaDescription {
    closed(offered, mid)
}

/// ICE and DTLS attributes of our transport, repeated on every bundled m-line as
/// browsers do.
fn push_transport(attrs: &mut Vec<Attribute>, local: &LocalTransport<'_>, setup: &str) {
    attrs.push(attribute("ice-ufrag", local.ice.ufrag.as_str()));
    attrs.push(attribute("ice-pwd", local.ice.pwd.as_str()));
    attrs.push(attribute(
        "fingerprint",
        format!("sha-256 {}", local.fingerprint),
    ));
    attrs.push(attribute("setup", setup));
}

/// Host candidates (RFC 8839 §5.1): type preference 126, local preference falling with
/// the list, component 1; then end-of-candidates, since a lite agent has no more.
fn push_candidates(attrs: &mut Vec<Attribute>, local: &LocalTransport<'_>) {
    for (i, addr) in local.candidates.iter().enumerate() {
        let local_pref = 65_535u32.saturating_sub(i as u32);
        let priority = (126u32 << 24) | (local_pref << 8) | 255;
        attrs.push(attribute(
            "candidate",
            format!(
                "{} 1 udp {priority} {} {} typ host",
                i + 1,
                addr.ip(),
                addr.port()
            ),
        ));
    }
    attrs.push(flag("end-of-candidates"));
}

fn push_codec(
    attrs: &mut Vec<Attribute>,
    name: CodecName,
    codec_pt: u8,
    rtx_pt: Option<u8>,
    fmtp: Option<&str>,
    feedback: &[Feedback],
) {
    attrs.push(attribute("rtpmap", format!("{codec_pt} {}", name.rtpmap())));
    for fb in feedback {
        attrs.push(attribute("rtcp-fb", format!("{codec_pt} {}", fb.as_str())));
    }
    if let Some(params) = fmtp {
        attrs.push(attribute("fmtp", format!("{codec_pt} {params}")));
    }
    if let Some(rtx) = rtx_pt {
        attrs.push(attribute("rtpmap", format!("{rtx} rtx/90000")));
        attrs.push(attribute("fmtp", format!("{rtx} apt={codec_pt}")));
    }
}

/// The answer's m-line for an accepted publisher track.
fn answer_section(
    mid: &str,
    track: &PublishedTrack,
    local: &LocalTransport<'_>,
) -> MediaDescription {
    let formats = track
        .codecs
        .iter()
        .flat_map(|c| std::iter::once(c.pt).chain(c.rtx_pt))
        .map(|pt| pt.to_string())
        .collect();
    let mut m = media(track.kind, formats, local);
    let a = &mut m.attributes;
    a.push(attribute("mid", mid));
    push_transport(a, local, "passive");
    for (ext, id) in &track.extensions {
        a.push(attribute("extmap", format!("{id} {}", ext.uri())));
    }
    a.push(flag("recvonly"));
    a.push(flag("rtcp-mux"));
    if track.rtcp_rsize {
        a.push(flag("rtcp-rsize"));
    }
    for c in &track.codecs {
        push_codec(a, c.name, c.pt, c.rtx_pt, c.fmtp.as_deref(), &c.feedback);
    }
    if !track.rids.is_empty() {
        for rid in &track.rids {
            a.push(attribute("rid", format!("{rid} recv")));
        }
        a.push(attribute(
            "simulcast",
            format!("recv {}", track.rids.join(";")),
        ));
    }
    push_candidates(a, local);
    m
}

// ---- subscribing ----

/// A track the SFU forwards to one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTrack {
    pub(crate) codec: CodecName,
    /// The SSRC this receiver sees (its own per forwarded stream).
    pub(crate) ssrc: u32,
    /// Video only: the SSRC of retransmissions, announced with `ssrc-group:FID`.
    pub(crate) rtx_ssrc: Option<u32>,
    pub(crate) cname: String,
    /// `msid` stream id: the publishing participant's id, so the page can label the
    /// `<video data-participant>` from the track event's stream.
    pub(crate) stream_id: String,
    pub(crate) track_id: String,
}

#[derive(Clone, Debug)]
enum SlotState {
    /// Sending a track.
    Active(OutTrack),
    /// The first m-line after its track went: inactive but kept (see module docs).
    Idle,
    /// Its track went; the next offer gives it port 0.
    Closing,
    /// Port 0 in an offer the browser answered: may be recycled.
    Free,
}

#[derive(Clone, Debug)]
struct Slot {
    mid: String,
    codec: CodecName,
    state: SlotState,
    /// Made or recycled after the last offer: the browser has not seen this mid.
    fresh: bool,
}

/// One m-line as the outstanding offer showed it.
#[derive(Clone, Debug)]
struct Offered {
    mid: String,
    kind: MediaKind,
    /// Port ≠ 0 (bundled).
    live: bool,
    /// Sendonly with a track (else inactive).
    sending: bool,
    codec_pt: u8,
    rtx_pt: Option<u8>,
}

/// What a subscriber's answer settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubscribeAnswer {
    pub(crate) ice: IceCredentials,
    pub(crate) fingerprint: Fingerprint,
    /// Tracks the browser refused (port 0): do not forward them.
    pub(crate) rejected: Vec<String>,
    /// Tracks the browser accepted but does not want now (`a=inactive`).
    pub(crate) inactive: Vec<String>,
    /// Tracks whose RTX the browser left out: NACKs are answered without it.
    pub(crate) without_rtx: Vec<String>,
}

/// The m-lines of a subscriber's receiving peer connection across renegotiations.
///
/// Only the server offers; an offer goes out when something changed and no earlier
/// offer awaits its answer, so the browser never sees two offers cross:
/// `add_track`/`remove_track`, then `offer()` (returns `None` while one is pending),
/// then `apply_answer()`, then `offer()` again for what changed meanwhile.
#[derive(Clone, Debug, Default)]
pub struct SubscribeSession {
    slots: Vec<Slot>,
    next_mid: u64,
    version: u64,
    changed: bool,
    pending: Option<Vec<Offered>>,
    /// Length of the last offer, which bounds its answer.
    offer_len: usize,
}

impl SubscribeSession {
    pub(crate) fn new() -> SubscribeSession {
        SubscribeSession::default()
    }

    /// Adds a track to forward and returns its mid. It takes a recycled m-line of the
    /// same kind when there is one, else a new one at the end.
    pub(crate) fn add_track(&mut self, track: OutTrack) -> Result<String, SdpError> {
        for (what, token) in [
            ("cname", &track.cname),
            ("msid stream id", &track.stream_id),
            ("msid track id", &track.track_id),
        ] {
            if !is_token(token) {
                return Err(SdpError::invalid(what, format!("{token:?}")));
            }
        }
        let kind = track.codec.kind();
        let mid = self.next_mid.to_string();
        let recycled = self
            .slots
            .iter()
            .position(|s| matches!(s.state, SlotState::Free) && s.codec.kind() == kind);
        let slot = Slot {
            mid: mid.clone(),
            codec: track.codec,
            state: SlotState::Active(track),
            fresh: true,
        };
        match recycled {
            Some(i) => self.slots[i] = slot,
            None if self.slots.len() >= MAX_SUBSCRIBE_SECTIONS => {
                return Err(SdpError::TooManySections(self.slots.len() + 1));
            }
            None => self.slots.push(slot),
        }
        self.next_mid += 1;
        self.changed = true;
        Ok(mid)
    }

    /// Stops forwarding the track on `mid`; false if no track is there.
    pub(crate) fn remove_track(&mut self, mid: &str) -> bool {
        let offered = self
            .pending
            .as_ref()
            .map_or(0, Vec::len)
            .max(self.offered_len());
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.mid == mid && matches!(s.state, SlotState::Active(_)))
        else {
            return false;
        };
        let slot = &mut self.slots[i];
        if slot.fresh && i >= offered {
            // Never offered and past every offered m-line: it can simply go.
            self.slots.remove(i);
        } else if slot.fresh {
            // A recycled m-line the browser still knows as port 0.
            slot.state = SlotState::Free;
        } else if i == 0 {
            slot.state = SlotState::Idle;
        } else {
            slot.state = SlotState::Closing;
        }
        self.changed = true;
        true
    }

    /// m-lines the browser has seen in some offer (all slots not fresh-and-appended).
    fn offered_len(&self) -> usize {
        self.slots
            .iter()
            .rposition(|s| !s.fresh)
            .map_or(0, |i| i + 1)
    }

    /// The tracks being forwarded, with their mids, in m-line order.
    pub fn tracks(&self) -> impl Iterator<Item = (&str, &OutTrack)> {
        self.slots.iter().filter_map(|s| match &s.state {
            SlotState::Active(t) => Some((s.mid.as_str(), t)),
            _ => None,
        })
    }

    /// An offer is out and its answer has not come.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Something changed that the browser has not been offered yet.
    pub(crate) fn needs_offer(&self) -> bool {
        self.changed && self.pending.is_none() && !self.slots.is_empty()
    }

    /// The next offer, if [`needs_offer`](Self::needs_offer): the m-lines of the last
    /// offer in the same order, then new ones.
    pub(crate) fn offer(&mut self, local: &LocalTransport<'_>) -> Option<String> {
        if !self.needs_offer() {
            return None;
        }
        self.version += 1;
        let mut sd = session(local, self.version);
        let live: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Active(_) | SlotState::Idle))
            .map(|s| s.mid.as_str())
            .collect();
        if !live.is_empty() {
            sd.attributes
                .push(attribute("group", format!("BUNDLE {}", live.join(" "))));
        }
        sd.attributes.push(attribute("msid-semantic", " WMS *"));
        let mut snapshot = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            let (codec_pt, rtx_pt) = slot.codec.offer_pts();
            let formats: Vec<String> = std::iter::once(codec_pt)
                .chain(rtx_pt)
                .map(|p| p.to_string())
                .collect();
            let kind = slot.codec.kind();
            let (m, live, sending) = match &slot.state {
                SlotState::Active(track) => {
                    (offer_section(slot, Some(track), formats, local), true, true)
                }
                SlotState::Idle => (offer_section(slot, None, formats, local), true, false),
                SlotState::Closing | SlotState::Free => {
                    let name = media(kind, formats, local).media_name;
                    (closed(&name, &slot.mid), false, false)
                }
            };
            sd.media_descriptions.push(m);
            snapshot.push(Offered {
                mid: slot.mid.clone(),
                kind,
                live,
                sending,
                codec_pt,
                rtx_pt,
            });
            slot.fresh = false;
        }
        self.pending = Some(snapshot);
        self.changed = false;
        let text = sd.marshal();
        self.offer_len = text.len();
        Some(text)
    }

    /// The longest answer accepted (the HTTP layer's body limit for it): a browser's
    /// answer repeats each m-line's codecs and transport but carries no SSRCs or
    /// candidates, so it stays well below twice our offer; never below
    /// [`MAX_SDP_LEN`].
    pub(crate) fn max_answer_len(&self) -> usize {
        MAX_SDP_LEN.max(self.offer_len.saturating_mul(2))
    }

    /// Checks the browser's answer to the outstanding offer and settles the m-lines.
    /// On error nothing changes and the offer stays outstanding.
    pub(crate) fn apply_answer(&mut self, raw: &[u8]) -> Result<SubscribeAnswer, SdpError> {
        let offered = self.pending.as_ref().ok_or(SdpError::NoPendingOffer)?;
        let sd = parse_text(raw, self.max_answer_len())?;
        let media = &sd.media_descriptions;
        if media.len() != offered.len() {
            return Err(SdpError::AnswerMismatch(format!(
                "{} m-lines answer an offer of {}",
                media.len(),
                offered.len()
            )));
        }
        let bundle = bundle_group(&sd);
        let mut rejected = Vec::new();
        let mut inactive = Vec::new();
        let mut without_rtx = Vec::new();
        let mut first_live = None;
        for (i, (m, o)) in media.iter().zip(offered).enumerate() {
            if m.media_name.media != o.kind.as_str() {
                return Err(SdpError::AnswerMismatch(format!(
                    "m-line {i} is {} but {} was offered",
                    m.media_name.media,
                    o.kind.as_str()
                )));
            }
            let accepted = m.media_name.port.value != 0;
            if !o.live {
                if accepted {
                    return Err(SdpError::AnswerMismatch(format!(
                        "m-line {i} was offered closed but is accepted"
                    )));
                }
                continue;
            }
            let mid = m.attribute("mid").flatten().map(str::trim);
            if accepted && mid != Some(o.mid.as_str()) {
                return Err(SdpError::AnswerMismatch(format!(
                    "m-line {i} has mid {mid:?}, {:?} was offered",
                    o.mid
                )));
            }
            if !accepted {
                rejected.push(i);
                continue;
            }
            if !bundle.as_ref().is_some_and(|b| b.contains(&o.mid.as_str())) {
                return Err(SdpError::NotBundled(o.mid.clone()));
            }
            if !m.has_attribute("rtcp-mux") {
                return Err(SdpError::NoRtcpMux(o.mid.clone()));
            }
            if !m
                .media_name
                .formats
                .iter()
                .any(|f| f.parse() == Ok(o.codec_pt))
            {
                return Err(SdpError::AnswerMismatch(format!(
                    "m-line {:?} dropped payload type {}",
                    o.mid, o.codec_pt
                )));
            }
            if let Some(rtx) = o.rtx_pt
                && !m.media_name.formats.iter().any(|f| f.parse() == Ok(rtx))
            {
                without_rtx.push(o.mid.clone());
            }
            match Direction::of(m, &sd) {
                // RFC 3264 §6.1: a sendonly stream is answered recvonly or inactive.
                Direction::RecvOnly if o.sending => {}
                Direction::Inactive if o.sending => inactive.push(o.mid.clone()),
                Direction::Inactive | Direction::RecvOnly if !o.sending => {}
                other => {
                    return Err(SdpError::AnswerMismatch(format!(
                        "m-line {:?} answers with {other:?}",
                        o.mid
                    )));
                }
            }
            first_live.get_or_insert(m);
        }
        let first = first_live.ok_or(SdpError::NoMedia)?;
        let (ice, fingerprint, setup) = transport(&sd, first)?;
        if setup != Setup::Active {
            return Err(SdpError::Setup {
                found: format!("{setup:?}").to_lowercase(),
                expected: "active (we are the DTLS server)",
            });
        }
        // Valid: settle. Snapshots of closed m-lines free the slots still closing; a
        // slot recycled since the offer is fresh and keeps its new track.
        let offered = self.pending.take().unwrap_or_default();
        let mut refused = Vec::new();
        for (i, (slot, o)) in self.slots.iter_mut().zip(&offered).enumerate() {
            if !o.live {
                if matches!(slot.state, SlotState::Closing) {
                    slot.state = SlotState::Free;
                }
            } else if rejected.contains(&i) && !slot.fresh {
                if matches!(slot.state, SlotState::Active(_)) {
                    refused.push(slot.mid.clone());
                }
                slot.state = SlotState::Free;
            }
        }
        Ok(SubscribeAnswer {
            ice,
            fingerprint,
            rejected: refused,
            inactive,
            without_rtx,
        })
    }
}

/// A live m-line of a server offer: sendonly with the track's SSRCs, or inactive.
fn offer_section(
    slot: &Slot,
    track: Option<&OutTrack>,
    formats: Vec<String>,
    local: &LocalTransport<'_>,
) -> MediaDescription {
    let kind = slot.codec.kind();
    let mut m = media(kind, formats, local);
    let a = &mut m.attributes;
    a.push(attribute("mid", slot.mid.as_str()));
    push_transport(a, local, "actpass");
    for (ext, id) in SUBSCRIBE_EXTENSIONS {
        if ext != Extension::AudioLevel || kind == MediaKind::Audio {
            a.push(attribute("extmap", format!("{id} {}", ext.uri())));
        }
    }
    match track {
        Some(t) => {
            a.push(flag("sendonly"));
            a.push(attribute("msid", format!("{} {}", t.stream_id, t.track_id)));
        }
        None => a.push(flag("inactive")),
    }
    a.push(flag("rtcp-mux"));
    a.push(flag("rtcp-rsize"));
    let (codec_pt, rtx_pt) = slot.codec.offer_pts();
    let (fmtp, feedback): (Option<&str>, &[Feedback]) = match slot.codec {
        CodecName::Opus => (Some(OPUS_FMTP), &[Feedback::TransportCc]),
        CodecName::Vp8 => (None, &Feedback::ALL),
        CodecName::H264 => (Some(H264_FMTP), &Feedback::ALL),
    };
    push_codec(a, slot.codec, codec_pt, rtx_pt, fmtp, feedback);
    if let Some(t) = track {
        let rtx = t.rtx_ssrc.filter(|_| kind == MediaKind::Video);
        if let Some(rtx) = rtx {
            a.push(attribute("ssrc-group", format!("FID {} {rtx}", t.ssrc)));
        }
        for ssrc in std::iter::once(t.ssrc).chain(rtx) {
            a.push(attribute("ssrc", format!("{ssrc} cname:{}", t.cname)));
            a.push(attribute(
                "ssrc",
                format!("{ssrc} msid:{} {}", t.stream_id, t.track_id),
            ));
        }
    }
    push_candidates(a, local);
    m
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // Chrome 120+ (unified plan) publishing camera and microphone with
    // `sendEncodings: [{rid: "q"}, {rid: "h"}, {rid: "f"}]`: VP8 + RTX, H264 in four
    // profiles and two packetization modes, VP9, AV1, RED and ULPFEC, Opus with RED and
    // telephone-event, and the header extensions Chrome negotiates.
    const CHROME_OFFER: &str = "v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS 5b5a3e8c-3f1c-4a25-a5a0-0d7e2d0f7e11
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Hx3u
a=ice-pwd:6yTJ9QGhb4Fn0K3bnJ1W0aJq
a=ice-options:trickle
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:5b5a3e8c-3f1c-4a25-a5a0-0d7e2d0f7e11 0a3c2b19-8ac6-4d3f-9d0e-2c4f7b7e4a10
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:2718281828 cname:f2Yx9wB1kC3vZ0aQ
a=ssrc:2718281828 msid:5b5a3e8c-3f1c-4a25-a5a0-0d7e2d0f7e11 0a3c2b19-8ac6-4d3f-9d0e-2c4f7b7e4a10
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40 45 46 98 99 100 101 112 113 116 117 118
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Hx3u
a=ice-pwd:6yTJ9QGhb4Fn0K3bnJ1W0aJq
a=ice-options:trickle
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC
a=setup:actpass
a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:13 urn:3gpp:video-orientation
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay
a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type
a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing
a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:5b5a3e8c-3f1c-4a25-a5a0-0d7e2d0f7e11 9f1e6d2c-77b4-4c0e-8a3b-5e2d1c0b9a88
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=rtcp-fb:102 goog-remb
a=rtcp-fb:102 transport-cc
a=rtcp-fb:102 ccm fir
a=rtcp-fb:102 nack
a=rtcp-fb:102 nack pli
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
a=rtpmap:104 H264/90000
a=rtcp-fb:104 goog-remb
a=rtcp-fb:104 transport-cc
a=rtcp-fb:104 ccm fir
a=rtcp-fb:104 nack
a=rtcp-fb:104 nack pli
a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f
a=rtpmap:105 rtx/90000
a=fmtp:105 apt=104
a=rtpmap:106 H264/90000
a=rtcp-fb:106 goog-remb
a=rtcp-fb:106 transport-cc
a=rtcp-fb:106 ccm fir
a=rtcp-fb:106 nack
a=rtcp-fb:106 nack pli
a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:107 rtx/90000
a=fmtp:107 apt=106
a=rtpmap:108 H264/90000
a=rtcp-fb:108 goog-remb
a=rtcp-fb:108 transport-cc
a=rtcp-fb:108 ccm fir
a=rtcp-fb:108 nack
a=rtcp-fb:108 nack pli
a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f
a=rtpmap:109 rtx/90000
a=fmtp:109 apt=108
a=rtpmap:127 H264/90000
a=rtcp-fb:127 goog-remb
a=rtcp-fb:127 transport-cc
a=rtcp-fb:127 ccm fir
a=rtcp-fb:127 nack
a=rtcp-fb:127 nack pli
a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f
a=rtpmap:125 rtx/90000
a=fmtp:125 apt=127
a=rtpmap:39 H264/90000
a=rtcp-fb:39 goog-remb
a=rtcp-fb:39 transport-cc
a=rtcp-fb:39 ccm fir
a=rtcp-fb:39 nack
a=rtcp-fb:39 nack pli
a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f
a=rtpmap:40 rtx/90000
a=fmtp:40 apt=39
a=rtpmap:45 AV1/90000
a=rtcp-fb:45 goog-remb
a=rtcp-fb:45 transport-cc
a=rtcp-fb:45 ccm fir
a=rtcp-fb:45 nack
a=rtcp-fb:45 nack pli
a=fmtp:45 level-idx=5;profile=0;tier=0
a=rtpmap:46 rtx/90000
a=fmtp:46 apt=45
a=rtpmap:98 VP9/90000
a=rtcp-fb:98 goog-remb
a=rtcp-fb:98 transport-cc
a=rtcp-fb:98 ccm fir
a=rtcp-fb:98 nack
a=rtcp-fb:98 nack pli
a=fmtp:98 profile-id=0
a=rtpmap:99 rtx/90000
a=fmtp:99 apt=98
a=rtpmap:100 VP9/90000
a=rtcp-fb:100 goog-remb
a=rtcp-fb:100 transport-cc
a=rtcp-fb:100 ccm fir
a=rtcp-fb:100 nack
a=rtcp-fb:100 nack pli
a=fmtp:100 profile-id=2
a=rtpmap:101 rtx/90000
a=fmtp:101 apt=100
a=rtpmap:112 H264/90000
a=rtcp-fb:112 goog-remb
a=rtcp-fb:112 transport-cc
a=rtcp-fb:112 ccm fir
a=rtcp-fb:112 nack
a=rtcp-fb:112 nack pli
a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f
a=rtpmap:113 rtx/90000
a=fmtp:113 apt=112
a=rtpmap:116 red/90000
a=rtpmap:117 rtx/90000
a=fmtp:117 apt=116
a=rtpmap:118 ulpfec/90000
a=rid:q send
a=rid:h send
a=rid:f send
a=simulcast:send q;h;f
";

    // Firefox 120 with addTrack (sendrecv transceivers, no simulcast) and a data
    // channel: session-level fingerprint, SSRCs with an FID group, extmaps with
    // directions, and an m=application line we refuse.
    const FIREFOX_OFFER: &str = "v=0
o=mozilla...THIS_IS_SDPARTA-99.0 6208637931493498736 0 IN IP4 0.0.0.0
s=-
t=0 0
a=fingerprint:sha-256 0F:D7:3E:15:9A:2C:41:B8:77:05:6E:C9:12:8D:F0:3A:5B:64:A1:9C:E2:07:DB:48:36:7F:C1:2E:90:AB:5D:14
a=group:BUNDLE 0 1 2
a=ice-options:trickle
a=msid-semantic:WMS *
m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101
c=IN IP4 0.0.0.0
a=sendrecv
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid
a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1
a=fmtp:101 0-15
a=ice-pwd:c6b6ee8e7b3c0f8f52d6f7bd8b3d0d9e
a=ice-ufrag:3d3b0f0e
a=mid:0
a=msid:{3a2f1c7e-5d4b-4e8a-9c21-0b6e7f8d9a10} {b7c6d5e4-f3a2-4b19-8c07-d6e5f4a3b2c1}
a=rtcp-mux
a=rtpmap:109 opus/48000/2
a=rtpmap:9 G722/8000/1
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=setup:actpass
a=ssrc:1471100123 cname:{5e3c1a2b-0f9d-4c8e-b7a6-952413f0e1d2}
m=video 9 UDP/TLS/RTP/SAVPF 120 124 121 125 126 127 97 98 123 122 119
c=IN IP4 0.0.0.0
a=sendrecv
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:4 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:5 urn:ietf:params:rtp-hdrext:toffset
a=extmap:6/recvonly http://www.webrtc.org/experiments/rtp-hdrext/playout-delay
a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1
a=fmtp:97 profile-level-id=42e01f;level-asymmetry-allowed=1
a=fmtp:120 max-fs=12288;max-fr=60
a=fmtp:124 apt=120
a=fmtp:121 max-fs=12288;max-fr=60
a=fmtp:125 apt=121
a=fmtp:127 apt=126
a=fmtp:98 apt=97
a=fmtp:119 apt=122
a=ice-pwd:c6b6ee8e7b3c0f8f52d6f7bd8b3d0d9e
a=ice-ufrag:3d3b0f0e
a=mid:1
a=msid:{3a2f1c7e-5d4b-4e8a-9c21-0b6e7f8d9a10} {0d1c2b3a-4958-4a76-8b5c-6d7e8f9a0b1c}
a=rtcp-fb:120 nack
a=rtcp-fb:120 nack pli
a=rtcp-fb:120 ccm fir
a=rtcp-fb:120 goog-remb
a=rtcp-fb:120 transport-cc
a=rtcp-fb:121 nack
a=rtcp-fb:121 nack pli
a=rtcp-fb:121 ccm fir
a=rtcp-fb:121 goog-remb
a=rtcp-fb:121 transport-cc
a=rtcp-fb:126 nack
a=rtcp-fb:126 nack pli
a=rtcp-fb:126 ccm fir
a=rtcp-fb:126 goog-remb
a=rtcp-fb:126 transport-cc
a=rtcp-fb:97 nack
a=rtcp-fb:97 nack pli
a=rtcp-fb:97 ccm fir
a=rtcp-fb:97 goog-remb
a=rtcp-fb:97 transport-cc
a=rtcp-fb:123 nack
a=rtcp-fb:123 nack pli
a=rtcp-fb:123 ccm fir
a=rtcp-fb:123 goog-remb
a=rtcp-fb:123 transport-cc
a=rtcp-fb:122 nack
a=rtcp-fb:122 nack pli
a=rtcp-fb:122 ccm fir
a=rtcp-fb:122 goog-remb
a=rtcp-fb:122 transport-cc
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:120 VP8/90000
a=rtpmap:124 rtx/90000
a=rtpmap:121 VP9/90000
a=rtpmap:125 rtx/90000
a=rtpmap:126 H264/90000
a=rtpmap:127 rtx/90000
a=rtpmap:97 H264/90000
a=rtpmap:98 rtx/90000
a=rtpmap:123 ulpfec/90000
a=rtpmap:122 red/90000
a=rtpmap:119 rtx/90000
a=setup:actpass
a=ssrc:3022738271 cname:{5e3c1a2b-0f9d-4c8e-b7a6-952413f0e1d2}
a=ssrc:1295013542 cname:{5e3c1a2b-0f9d-4c8e-b7a6-952413f0e1d2}
a=ssrc-group:FID 3022738271 1295013542
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=sendrecv
a=ice-pwd:c6b6ee8e7b3c0f8f52d6f7bd8b3d0d9e
a=ice-ufrag:3d3b0f0e
a=mid:2
a=setup:actpass
a=sctp-port:5000
a=max-message-size:1073741823
";

    const OUR_FP: &str = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99";

    fn crlf(s: &str) -> String {
        s.replace('\n', "\r\n")
    }

    fn ours() -> IceCredentials {
        IceCredentials::parse("SfuLocal", "sfupassword0123456789abcd").unwrap()
    }

    fn candidates() -> Vec<SocketAddr> {
        vec![
            "203.0.113.10:3478".parse().unwrap(),
            "[2001:db8::10]:3478".parse().unwrap(),
        ]
    }

    fn with_local<T>(f: impl FnOnce(&LocalTransport<'_>) -> T) -> T {
        let ice = ours();
        let candidates = candidates();
        f(&LocalTransport {
            session_id: 0xFEED_FACE_CAFE_BEEF,
            ice: &ice,
            fingerprint: OUR_FP,
            candidates: &candidates,
        })
    }

    fn parse(sdp: &str) -> Result<PublishOffer, SdpError> {
        PublishOffer::parse(crlf(sdp).as_bytes())
    }

    /// The lines of the m-section whose `a=mid` is `mid`.
    fn section<'a>(sdp: &'a str, mid: &str) -> Vec<&'a str> {
        let want = format!("a=mid:{mid}");
        sdp.split("\r\nm=")
            .skip(1)
            .map(|s| {
                s.split("\r\n")
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
            })
            .find(|lines| lines.contains(&want.as_str()))
            .unwrap_or_else(|| panic!("no m-section with mid {mid} in\n{sdp}"))
    }

    fn session_lines(sdp: &str) -> Vec<&str> {
        sdp.split("\r\nm=").next().unwrap().split("\r\n").collect()
    }

    fn assert_has(lines: &[&str], expected: &[&str]) {
        for e in expected {
            assert!(lines.contains(e), "missing {e:?} in {lines:#?}");
        }
    }

    /// Replaces `from` (which must occur) with `to` everywhere.
    fn edit(sdp: &str, from: &str, to: &str) -> String {
        assert!(sdp.contains(from), "{from:?} not in the SDP");
        sdp.replace(from, to)
    }

    /// Drops every line starting with `prefix`.
    fn without(sdp: &str, prefix: &str) -> String {
        assert!(
            sdp.lines().any(|l| l.starts_with(prefix)),
            "{prefix:?} not in the SDP"
        );
        sdp.lines()
            .filter(|l| !l.starts_with(prefix))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn chrome_simulcast_offer_is_understood() {
        let offer = parse(CHROME_OFFER).unwrap();
        assert_eq!(offer.ice.ufrag, "Hx3u");
        assert_eq!(offer.ice.pwd, "6yTJ9QGhb4Fn0K3bnJ1W0aJq");
        assert_eq!(offer.setup, Setup::Actpass);
        assert_eq!(offer.fingerprint.0[..3], [0x6B, 0x8B, 0x5D]);
        assert_eq!(
            offer.fingerprint.to_string(),
            "6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC"
        );
        let tracks: Vec<_> = offer.tracks().collect();
        assert_eq!(tracks.len(), 2);

        let (mid, audio) = tracks[0];
        assert_eq!(mid, "0");
        assert_eq!(audio.kind, MediaKind::Audio);
        assert_eq!(
            audio.codecs,
            [Codec {
                name: CodecName::Opus,
                pt: 111,
                fmtp: Some("minptime=10;useinbandfec=1".into()),
                rtx_pt: None,
                feedback: vec![Feedback::TransportCc],
            }]
        );
        assert_eq!(
            audio.extensions,
            [
                (Extension::AudioLevel, 1),
                (Extension::AbsSendTime, 2),
                (Extension::TransportCc, 3),
                (Extension::Mid, 4)
            ]
        );
        assert!(audio.rids.is_empty());
        assert_eq!(audio.ssrcs, [2_718_281_828]);
        assert_eq!(audio.cname.as_deref(), Some("f2Yx9wB1kC3vZ0aQ"));

        let (mid, video) = tracks[1];
        assert_eq!(mid, "1");
        assert_eq!(video.kind, MediaKind::Video);
        assert_eq!(video.codecs.len(), 2);
        assert_eq!(
            (
                video.codecs[0].name,
                video.codecs[0].pt,
                video.codecs[0].rtx_pt
            ),
            (CodecName::Vp8, 96, Some(97))
        );
        assert_eq!(video.codecs[0].feedback, Feedback::ALL);
        assert_eq!(video.codecs[0].fmtp, None);
        // Constrained baseline, packetization mode 1, over the baseline 102 listed first.
        assert_eq!(
            (
                video.codecs[1].name,
                video.codecs[1].pt,
                video.codecs[1].rtx_pt
            ),
            (CodecName::H264, 106, Some(107))
        );
        assert_eq!(video.extension_id(Extension::Mid), Some(4));
        assert_eq!(video.extension_id(Extension::Rid), Some(10));
        assert_eq!(video.extension_id(Extension::RepairedRid), Some(11));
        assert_eq!(video.extension_id(Extension::AbsSendTime), Some(2));
        assert_eq!(video.extension_id(Extension::TransportCc), Some(3));
        assert_eq!(video.extension_id(Extension::AudioLevel), None);
        assert_eq!(video.rids, ["q", "h", "f"]);
        assert!(video.ssrcs.is_empty(), "rid simulcast signals no SSRCs");
        assert_eq!(
            video.msid,
            Some(Msid {
                stream: "5b5a3e8c-3f1c-4a25-a5a0-0d7e2d0f7e11".into(),
                track: Some("9f1e6d2c-77b4-4c0e-8a3b-5e2d1c0b9a88".into()),
            })
        );
        assert!(video.rtcp_rsize);
        let (vp8, rtx) = video.codec_for_pt(97).unwrap();
        assert_eq!((vp8.name, rtx), (CodecName::Vp8, true));
        assert!(video.codec_for_pt(98).is_none(), "VP9 is not kept");
    }

    #[test]
    fn chrome_answer_lines() {
        let offer = parse(CHROME_OFFER).unwrap();
        let answer = with_local(|l| offer.answer(l));
        assert!(answer.ends_with("\r\n"));
        assert!(answer.len() < 8 * 1024, "{} bytes", answer.len());
        let session = session_lines(&answer);
        assert_has(
            &session,
            &[
                "v=0",
                "o=- 9146242184335245039 1 IN IP4 0.0.0.0",
                "s=-",
                "t=0 0",
                "a=ice-lite",
                "a=group:BUNDLE 0 1",
            ],
        );
        assert!(!answer.contains("extmap-allow-mixed"));

        let transport = [
            "a=ice-ufrag:SfuLocal",
            "a=ice-pwd:sfupassword0123456789abcd",
            "a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99",
            "a=setup:passive",
            "a=recvonly",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "c=IN IP4 203.0.113.10",
            "a=candidate:1 1 udp 2130706431 203.0.113.10 3478 typ host",
            "a=candidate:2 1 udp 2130706175 2001:db8::10 3478 typ host",
            "a=end-of-candidates",
        ];
        let audio = section(&answer, "0");
        assert_eq!(audio[0], "audio 3478 UDP/TLS/RTP/SAVPF 111");
        assert_has(&audio, &transport);
        assert_has(
            &audio,
            &[
                "a=rtpmap:111 opus/48000/2",
                "a=fmtp:111 minptime=10;useinbandfec=1",
                "a=rtcp-fb:111 transport-cc",
                "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
                "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
                "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            ],
        );
        assert!(
            !audio
                .iter()
                .any(|l| l.starts_with("a=rid") || l.starts_with("a=simulcast"))
        );

        let video = section(&answer, "1");
        assert_eq!(video[0], "video 3478 UDP/TLS/RTP/SAVPF 96 97 106 107");
        assert_has(&video, &transport);
        assert_has(
            &video,
            &[
                "a=rtpmap:96 VP8/90000",
                "a=rtcp-fb:96 goog-remb",
                "a=rtcp-fb:96 transport-cc",
                "a=rtcp-fb:96 ccm fir",
                "a=rtcp-fb:96 nack",
                "a=rtcp-fb:96 nack pli",
                "a=rtpmap:97 rtx/90000",
                "a=fmtp:97 apt=96",
                "a=rtpmap:106 H264/90000",
                "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                "a=rtcp-fb:106 nack pli",
                "a=rtpmap:107 rtx/90000",
                "a=fmtp:107 apt=106",
                "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
                "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
                "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
                "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
                "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
                "a=rid:q recv",
                "a=rid:h recv",
                "a=rid:f recv",
                "a=simulcast:recv q;h;f",
            ],
        );
        for gone in [
            "VP9",
            "AV1",
            "red/",
            "ulpfec",
            "toffset",
            "video-orientation",
            "playout-delay",
            "sendonly",
            "a=ssrc",
            "a=msid",
        ] {
            assert!(!answer.contains(gone), "{gone} should not be in the answer");
        }
        // Well-formed for the `sdp` crate too.
        let back = SessionDescription::unmarshal(&mut Cursor::new(answer.as_bytes())).unwrap();
        assert_eq!(back.media_descriptions.len(), 2);
    }

    #[test]
    fn firefox_offer_and_answer() {
        let offer = parse(FIREFOX_OFFER).unwrap();
        assert_eq!(offer.ice.ufrag, "3d3b0f0e");
        assert_eq!(offer.fingerprint.0[0], 0x0F, "session-level fingerprint");
        assert_eq!(offer.sections.len(), 3);
        assert!(offer.sections[2].track.is_none(), "data channel refused");

        let audio = offer.sections[0].track.as_ref().unwrap();
        assert_eq!(audio.codecs[0].pt, 109);
        assert_eq!(
            audio.codecs[0].fmtp.as_deref(),
            Some("maxplaybackrate=48000;stereo=1;useinbandfec=1")
        );
        assert!(audio.codecs[0].feedback.is_empty());
        // csrc-audio-level is recvonly on Firefox's side and unsupported anyway.
        assert_eq!(
            audio.extensions,
            [(Extension::AudioLevel, 1), (Extension::Mid, 3)]
        );

        let video = offer.sections[1].track.as_ref().unwrap();
        let kept: Vec<_> = video
            .codecs
            .iter()
            .map(|c| (c.name, c.pt, c.rtx_pt))
            .collect();
        assert_eq!(
            kept,
            [
                (CodecName::Vp8, 120, Some(124)),
                (CodecName::H264, 126, Some(127))
            ]
        );
        assert_eq!(video.codecs[0].feedback, Feedback::ALL);
        assert_eq!(
            video.extensions,
            [
                (Extension::Mid, 3),
                (Extension::AbsSendTime, 4),
                (Extension::TransportCc, 7)
            ]
        );
        assert_eq!(video.ssrcs, [3_022_738_271]);
        assert_eq!(video.rtx_ssrcs, [(3_022_738_271, 1_295_013_542)]);
        assert_eq!(
            video.cname.as_deref(),
            Some("{5e3c1a2b-0f9d-4c8e-b7a6-952413f0e1d2}")
        );

        let answer = with_local(|l| offer.answer(l));
        assert_has(
            &session_lines(&answer),
            &["a=group:BUNDLE 0 1", "a=ice-lite"],
        );
        let v = section(&answer, "1");
        assert_eq!(v[0], "video 3478 UDP/TLS/RTP/SAVPF 120 124 126 127");
        assert_has(
            &v,
            &[
                "a=fmtp:120 max-fs=12288;max-fr=60",
                "a=fmtp:124 apt=120",
                "a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1",
                "a=recvonly",
                "a=setup:passive",
            ],
        );
        let dc = section(&answer, "2");
        assert_eq!(
            dc,
            [
                "application 0 UDP/DTLS/SCTP webrtc-datachannel",
                "c=IN IP4 0.0.0.0",
                "a=mid:2",
                "a=inactive"
            ]
        );
    }

    #[test]
    fn simulcast_variants() {
        // Pre-RFC syntax, a paused layer, alternatives and a fourth layer we drop.
        let sdp = edit(
            CHROME_OFFER,
            "a=rid:f send\na=simulcast:send q;h;f",
            "a=rid:f send\na=rid:x send\na=rid:y send\na=simulcast:send rid=~q;h,y;f;x recv z",
        );
        let offer = parse(&sdp).unwrap();
        let video = offer.sections[1].track.as_ref().unwrap();
        assert_eq!(video.rids, ["q", "h", "f"]);
        let answer = with_local(|l| offer.answer(l));
        assert!(answer.contains("a=simulcast:recv q;h;f\r\n"));
        assert!(!answer.contains("a=rid:x"));
        // Active setup from the client is fine too.
        let offer = parse(&edit(CHROME_OFFER, "a=setup:actpass", "a=setup:active")).unwrap();
        assert_eq!(offer.setup, Setup::Active);
        // LF-only line ends are read as well.
        assert!(PublishOffer::parse(CHROME_OFFER.as_bytes()).is_ok());
    }

    #[test]
    fn receive_only_and_refused_m_lines() {
        // A recvonly transceiver on the publishing connection is refused, and BUNDLE
        // then lists only what is accepted.
        let sdp = edit(CHROME_OFFER, "a=mid:0\n", "a=mid:0\na=recvonly\n").replace(
            "a=sendonly\na=msid:5b5a3e8c-3f1c-4a25-a5a0-0d7e2d0f7e11 0a3c",
            "a=msid:5b5a3e8c-3f1c-4a25-a5a0-0d7e2d0f7e11 0a3c",
        );
        let offer = parse(&sdp).unwrap();
        assert!(offer.sections[0].track.is_none());
        let answer = with_local(|l| offer.answer(l));
        assert_has(&session_lines(&answer), &["a=group:BUNDLE 1"]);
        assert_eq!(
            section(&answer, "0")[0],
            "audio 0 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"
        );
        // Plain RTP/AVP is refused too, and nothing left to receive is an error.
        let sdp = edit(&sdp, "m=video 9 UDP/TLS/RTP/SAVPF", "m=video 9 RTP/AVP");
        assert_eq!(parse(&sdp).unwrap_err(), SdpError::NoMedia);
    }

    fn err(sdp: &str) -> SdpError {
        parse(sdp).unwrap_err()
    }

    #[test]
    fn size_and_syntax_errors() {
        let big = vec![b'a'; MAX_SDP_LEN + 1];
        let e = PublishOffer::parse(&big).unwrap_err();
        assert_eq!(e, SdpError::TooLarge(MAX_SDP_LEN + 1, MAX_SDP_LEN));
        assert_eq!(e.http_status(), 413);
        assert!(e.to_string().contains("65536"));

        let e = PublishOffer::parse(b"v=0\r\no=\xff\r\n").unwrap_err();
        assert_eq!(e, SdpError::NotUtf8);
        assert_eq!(e.http_status(), 400);

        for bad in [
            "",
            "hello",
            "v=0\r\n",
            "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nm=audio 9 X 0\r\n",
        ] {
            let e = PublishOffer::parse(bad.as_bytes()).unwrap_err();
            assert!(matches!(e, SdpError::Syntax(_)), "{bad:?}: {e:?}");
            assert!(e.to_string().starts_with("malformed SDP"));
        }
        let long_garbage = format!("v=0\r\n{}", "x".repeat(10_000));
        if let SdpError::Syntax(msg) = PublishOffer::parse(long_garbage.as_bytes()).unwrap_err() {
            assert!(msg.len() <= 200);
        }

        let no_media = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE\r\n";
        assert_eq!(
            PublishOffer::parse(no_media.as_bytes()).unwrap_err(),
            SdpError::NoMedia
        );

        let mut many = String::from(CHROME_OFFER);
        for i in 2..=MAX_PUBLISH_SECTIONS {
            many.push_str(&format!(
                "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=mid:{i}\n"
            ));
        }
        assert_eq!(
            err(&many),
            SdpError::TooManySections(MAX_PUBLISH_SECTIONS + 1)
        );
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            err(&without(CHROME_OFFER, "a=mid:1")),
            SdpError::MissingMid(1)
        );
        assert_eq!(
            err(&edit(CHROME_OFFER, "a=mid:1", "a=mid:0")),
            SdpError::DuplicateMid("0".into())
        );
        assert!(matches!(
            err(&edit(CHROME_OFFER, "a=mid:1", "a=mid:a.b")),
            SdpError::Invalid {
                attribute: "mid",
                ..
            }
        ));
        assert_eq!(
            err(&without(CHROME_OFFER, "a=group:BUNDLE")),
            SdpError::NoBundle
        );
        assert_eq!(
            err(&edit(
                CHROME_OFFER,
                "a=group:BUNDLE 0 1",
                "a=group:BUNDLE 0"
            )),
            SdpError::NotBundled("1".into())
        );
        assert_eq!(
            err(&without(CHROME_OFFER, "a=rtcp-mux")),
            SdpError::NoRtcpMux("0".into())
        );
        let e = err(&without(CHROME_OFFER, "a=rtcp-mux"));
        assert_eq!(
            e.to_string(),
            "m-line \"0\" lacks a=rtcp-mux, which is required"
        );
    }

    #[test]
    fn transport_errors() {
        assert_eq!(
            err(&without(CHROME_OFFER, "a=ice-ufrag")),
            SdpError::Missing {
                attribute: "ice-ufrag",
                mid: Some("0".into())
            }
        );
        assert!(matches!(
            err(&without(CHROME_OFFER, "a=ice-pwd")),
            SdpError::Missing {
                attribute: "ice-pwd",
                ..
            }
        ));
        let e = err(&edit(CHROME_OFFER, "a=ice-ufrag:Hx3u", "a=ice-ufrag:Hx"));
        assert!(
            matches!(
                e,
                SdpError::Invalid {
                    attribute: "ICE credentials",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("ice-ufrag"));

        assert!(matches!(
            err(&without(CHROME_OFFER, "a=fingerprint")),
            SdpError::Missing {
                attribute: "fingerprint",
                ..
            }
        ));
        let sha1 =
            "a=fingerprint:sha-1 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5";
        let sdp = without(CHROME_OFFER, "a=fingerprint")
            .replace("a=setup:", &format!("{sha1}\na=setup:"));
        assert_eq!(err(&sdp), SdpError::NoSha256Fingerprint);
        // Several fingerprints: the SHA-256 one is taken.
        let sdp = CHROME_OFFER.replace("a=setup:", &format!("{sha1}\na=setup:"));
        assert!(parse(&sdp).is_ok());
        assert!(matches!(
            err(&edit(CHROME_OFFER, "sha-256 6B:8B:5D:", "sha-256 6B:8B:")),
            SdpError::Invalid {
                attribute: "fingerprint",
                ..
            }
        ));
        assert!(matches!(
            err(&edit(CHROME_OFFER, "sha-256 6B", "sha-256ZZ6B")),
            SdpError::Invalid {
                attribute: "fingerprint",
                ..
            }
        ));

        assert_eq!(
            err(&edit(CHROME_OFFER, "a=setup:actpass", "a=setup:passive")),
            SdpError::Setup {
                found: "passive".into(),
                expected: "actpass or active"
            }
        );
        assert!(matches!(
            err(&without(CHROME_OFFER, "a=setup")),
            SdpError::Missing {
                attribute: "setup",
                ..
            }
        ));
        assert!(matches!(
            err(&edit(CHROME_OFFER, "a=setup:actpass", "a=setup:sometimes")),
            SdpError::Invalid {
                attribute: "setup",
                ..
            }
        ));
    }

    #[test]
    fn codec_errors() {
        let e = err(&edit(
            CHROME_OFFER,
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:111 iLBC/8000",
        ));
        assert_eq!(
            e,
            SdpError::NoCodec {
                mid: "0".into(),
                wanted: "opus/48000/2"
            }
        );
        let sdp = edit(
            &edit(
                CHROME_OFFER,
                "a=rtpmap:96 VP8/90000",
                "a=rtpmap:96 VP9/90000",
            ),
            "H264/90000",
            "H265/90000",
        );
        assert!(matches!(
            err(&sdp),
            SdpError::NoCodec {
                wanted: "VP8/90000 or H264/90000",
                ..
            }
        ));
        // H264 alone is fine (a browser with VP8 disabled).
        let sdp = edit(
            CHROME_OFFER,
            "a=rtpmap:96 VP8/90000",
            "a=rtpmap:96 VP9/90000",
        );
        let offer = parse(&sdp).unwrap();
        let v = offer.sections[1].track.as_ref().unwrap();
        assert_eq!(v.codecs.len(), 1);
        assert_eq!(v.codecs[0].name, CodecName::H264);

        assert!(matches!(
            err(&edit(
                CHROME_OFFER,
                "a=rtpmap:96 VP8/90000",
                "a=rtpmap:96 VP8"
            )),
            SdpError::Invalid {
                attribute: "rtpmap",
                ..
            }
        ));
        assert!(matches!(
            err(&edit(
                CHROME_OFFER,
                "UDP/TLS/RTP/SAVPF 96 97",
                "UDP/TLS/RTP/SAVPF 960 97"
            )),
            SdpError::Invalid {
                attribute: "m= line",
                ..
            }
        ));
        assert!(matches!(
            err(&edit(CHROME_OFFER, "a=extmap:14 urn", "a=extmap:0 urn")),
            SdpError::Invalid {
                attribute: "extmap",
                ..
            }
        ));
        assert!(matches!(
            err(&edit(CHROME_OFFER, "a=extmap:10 urn", "a=extmap:4 urn")),
            SdpError::Invalid {
                attribute: "extmap",
                ..
            }
        ));
        assert!(matches!(
            err(&edit(
                CHROME_OFFER,
                "a=fmtp:111 minptime=10;",
                "a=fmtp:111 minptime=10\r;"
            )),
            SdpError::Invalid {
                attribute: "fmtp",
                ..
            }
        ));
        // A two-byte extension id is valid and left out of the answer.
        let offer = parse(&edit(CHROME_OFFER, "a=extmap:10 urn", "a=extmap:15 urn")).unwrap();
        let video = offer.sections[1].track.as_ref().unwrap();
        assert_eq!(video.extension_id(Extension::Rid), None);
        assert!(matches!(
            err(&edit(
                CHROME_OFFER,
                "a=ssrc:2718281828 cname",
                "a=ssrc:many cname"
            )),
            SdpError::Invalid {
                attribute: "ssrc",
                ..
            }
        ));
    }

    #[test]
    fn simulcast_errors() {
        for (from, to, why) in [
            ("a=rid:h send\n", "", "no a=rid:h send"),
            ("a=rid:h send", "a=rid:h recv", "no a=rid:h send"),
            ("send q;h;f", "send q;q;f", "listed twice"),
            ("send q;h;f", "send q;h!;f", "bad rid"),
            ("send q;h;f", "sideways q;h;f", "unknown direction"),
            ("send q;h;f", "send", "without streams"),
        ] {
            let e = err(&edit(CHROME_OFFER, from, to));
            let SdpError::Simulcast {
                ref mid,
                ref reason,
            } = e
            else {
                panic!("{to:?}: {e:?}");
            };
            assert_eq!(mid, "1");
            assert!(reason.contains(why), "{to:?}: {reason}");
            assert!(e.to_string().starts_with("simulcast on m-line \"1\""));
        }
    }

    #[test]
    fn nothing_panics_on_mangled_offers() {
        for text in [CHROME_OFFER, FIREFOX_OFFER] {
            let text = crlf(text);
            let bytes = text.as_bytes();
            for cut in (0..bytes.len()).step_by(7) {
                let _ = PublishOffer::parse(&bytes[..cut]);
            }
            let lines: Vec<&str> = text.split_inclusive("\r\n").collect();
            for skip in 0..lines.len() {
                let s: String = lines
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != skip)
                    .map(|(_, l)| *l)
                    .collect();
                let _ = PublishOffer::parse(s.as_bytes());
            }
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            for _ in 0..2_000 {
                let mut m = bytes.to_vec();
                for _ in 0..4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let at = (x % m.len() as u64) as usize;
                    m[at] = b" :=/;\r\n0aZ~"[(x >> 32) as usize % 11];
                }
                let _ = PublishOffer::parse(&m);
            }
        }
    }

    // ---- subscriber side ----

    fn track(codec: CodecName, ssrc: u32, publisher: &str) -> OutTrack {
        OutTrack {
            codec,
            ssrc,
            rtx_ssrc: (codec != CodecName::Opus).then_some(ssrc + 1),
            cname: format!("{publisher}-cname"),
            stream_id: publisher.to_owned(),
            track_id: format!("{publisher}-{ssrc}"),
        }
    }

    /// What a browser answers to our offer: each m-line echoed, port 9 unless offered
    /// closed or listed in `refuse`, recvonly for sendonly, setup active.
    pub(crate) fn browser_answer(offer: &str, refuse: &[&str]) -> String {
        let sd = SessionDescription::unmarshal(&mut Cursor::new(offer.as_bytes())).unwrap();
        let mut out = String::from("v=0\r\no=- 77 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        let mut bundle = Vec::new();
        let mut body = String::new();
        for m in &sd.media_descriptions {
            let mid = m.attribute("mid").flatten().unwrap();
            let live = m.media_name.port.value != 0 && !refuse.contains(&mid);
            let port = if live { 9 } else { 0 };
            body.push_str(&format!(
                "m={} {port} UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n",
                m.media_name.media,
                m.media_name.formats.join(" ")
            ));
            if !live {
                continue;
            }
            bundle.push(mid);
            let dir = if m.has_attribute("sendonly") {
                "recvonly"
            } else {
                "inactive"
            };
            body.push_str(&format!(
                "a=ice-ufrag:Brws\r\na=ice-pwd:browserpassword012345678\r\n\
                 a=fingerprint:sha-256 {OUR_FP}\r\na=setup:active\r\na={dir}\r\na=rtcp-mux\r\n"
            ));
            // The rest as Chrome writes it, so sizes are realistic.
            body.push_str("a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-options:trickle\r\na=rtcp-rsize\r\n");
            for a in &m.attributes {
                if matches!(a.key.as_str(), "rtpmap" | "fmtp" | "rtcp-fb" | "extmap") {
                    body.push_str(&format!("a={a}\r\n"));
                }
            }
        }
        if !bundle.is_empty() {
            out.push_str(&format!("a=group:BUNDLE {}\r\n", bundle.join(" ")));
        }
        out + &body
    }

    fn offer(s: &mut SubscribeSession) -> String {
        with_local(|l| s.offer(l)).expect("an offer")
    }

    fn m_lines(sdp: &str) -> Vec<&str> {
        sdp.split("\r\n").filter(|l| l.starts_with("m=")).collect()
    }

    #[test]
    fn an_answer_without_rtx_is_noted_per_track() {
        let mut s = SubscribeSession::new();
        s.add_track(track(CodecName::Vp8, 2000, "alice")).unwrap();
        s.add_track(track(CodecName::H264, 3000, "bob")).unwrap();
        let sdp = offer(&mut s);
        let (vp8, vp8_rtx) = CodecName::Vp8.offer_pts();
        let answer = browser_answer(&sdp, &[]).replacen(
            &format!("SAVPF {vp8} {}", vp8_rtx.unwrap()),
            &format!("SAVPF {vp8}"),
            1,
        );
        let settled = s.apply_answer(answer.as_bytes()).unwrap();
        assert_eq!(settled.without_rtx, ["0"]);
    }

    #[test]
    fn server_offer_lines() {
        let mut s = SubscribeSession::new();
        assert!(!s.needs_offer());
        assert_eq!(with_local(|l| s.offer(l)), None, "nothing to offer yet");
        let a = s.add_track(track(CodecName::Opus, 1000, "alice")).unwrap();
        let v = s.add_track(track(CodecName::Vp8, 2000, "alice")).unwrap();
        let h = s.add_track(track(CodecName::H264, 3000, "bob")).unwrap();
        assert_eq!((a.as_str(), v.as_str(), h.as_str()), ("0", "1", "2"));
        let sdp = offer(&mut s);
        assert_has(
            &session_lines(&sdp),
            &[
                "o=- 9146242184335245039 1 IN IP4 0.0.0.0",
                "a=ice-lite",
                "a=group:BUNDLE 0 1 2",
                "a=msid-semantic: WMS *",
            ],
        );
        assert_eq!(
            m_lines(&sdp),
            [
                "m=audio 3478 UDP/TLS/RTP/SAVPF 111",
                "m=video 3478 UDP/TLS/RTP/SAVPF 96 97",
                "m=video 3478 UDP/TLS/RTP/SAVPF 102 103"
            ]
        );
        let audio = section(&sdp, "0");
        assert_has(
            &audio,
            &[
                "a=sendonly",
                "a=setup:actpass",
                "a=ice-ufrag:SfuLocal",
                "a=rtcp-mux",
                "a=msid:alice alice-1000",
                "a=rtpmap:111 opus/48000/2",
                "a=fmtp:111 minptime=10;useinbandfec=1",
                "a=rtcp-fb:111 transport-cc",
                "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
                "a=ssrc:1000 cname:alice-cname",
                "a=ssrc:1000 msid:alice alice-1000",
                "a=candidate:1 1 udp 2130706431 203.0.113.10 3478 typ host",
            ],
        );
        assert!(!audio.iter().any(|l| l.starts_with("a=ssrc-group")));
        let video = section(&sdp, "1");
        assert_has(
            &video,
            &[
                "a=sendonly",
                "a=rtpmap:96 VP8/90000",
                "a=rtcp-fb:96 nack pli",
                "a=rtcp-fb:96 goog-remb",
                "a=rtpmap:97 rtx/90000",
                "a=fmtp:97 apt=96",
                "a=ssrc-group:FID 2000 2001",
                "a=ssrc:2000 cname:alice-cname",
                "a=ssrc:2001 cname:alice-cname",
                "a=ssrc:2001 msid:alice alice-2000",
            ],
        );
        assert!(!video.iter().any(|l| l.contains("ssrc-audio-level")));
        let h264 = section(&sdp, "2");
        assert_has(
            &h264,
            &[
                &format!("a=fmtp:102 {H264_FMTP}"),
                "a=fmtp:103 apt=102",
                "a=msid:bob bob-3000",
            ],
        );
        assert!(SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes())).is_ok());

        assert!(s.is_pending());
        let answer = s
            .apply_answer(browser_answer(&sdp, &[]).as_bytes())
            .unwrap();
        assert_eq!(answer.ice.ufrag, "Brws");
        assert_eq!(answer.fingerprint.to_string(), OUR_FP);
        assert!(answer.rejected.is_empty() && answer.inactive.is_empty());
        assert!(answer.without_rtx.is_empty());
        assert!(!s.is_pending() && !s.needs_offer());
        assert_eq!(
            s.tracks().map(|(m, _)| m).collect::<Vec<_>>(),
            ["0", "1", "2"]
        );
    }

    #[test]
    fn renegotiation_keeps_order_and_recycles() {
        let mut s = SubscribeSession::new();
        s.add_track(track(CodecName::Opus, 10, "a")).unwrap(); // mid 0
        s.add_track(track(CodecName::Vp8, 20, "a")).unwrap(); // mid 1
        let first = offer(&mut s);
        s.apply_answer(browser_answer(&first, &[]).as_bytes())
            .unwrap();

        // b joins, a's video goes.
        assert_eq!(s.add_track(track(CodecName::Vp8, 30, "b")).unwrap(), "2");
        assert!(s.remove_track("1"));
        assert!(!s.remove_track("1"), "already gone");
        let second = offer(&mut s);
        assert!(
            second.contains("o=- 9146242184335245039 2 IN IP4"),
            "version grows"
        );
        assert_eq!(
            m_lines(&second),
            [
                "m=audio 3478 UDP/TLS/RTP/SAVPF 111",
                "m=video 0 UDP/TLS/RTP/SAVPF 96 97",
                "m=video 3478 UDP/TLS/RTP/SAVPF 96 97"
            ]
        );
        assert_eq!(
            section(&second, "1"),
            [
                "video 0 UDP/TLS/RTP/SAVPF 96 97",
                "c=IN IP4 0.0.0.0",
                "a=mid:1",
                "a=inactive"
            ]
        );
        assert_has(&session_lines(&second), &["a=group:BUNDLE 0 2"]);

        // While that offer is out, c joins: no second offer crosses the first.
        assert_eq!(s.add_track(track(CodecName::Vp8, 40, "c")).unwrap(), "3");
        assert_eq!(with_local(|l| s.offer(l)), None);
        assert!(s.is_pending() && !s.needs_offer());
        s.apply_answer(browser_answer(&second, &[]).as_bytes())
            .unwrap();
        assert!(s.needs_offer());

        // c's video has no free m-line yet (1 was still closing when c came), so it
        // went to the end; d's video recycles 1 under a new mid.
        assert_eq!(s.add_track(track(CodecName::Vp8, 50, "d")).unwrap(), "4");
        let third = offer(&mut s);
        assert_eq!(
            m_lines(&third),
            [
                "m=audio 3478 UDP/TLS/RTP/SAVPF 111",
                "m=video 3478 UDP/TLS/RTP/SAVPF 96 97",
                "m=video 3478 UDP/TLS/RTP/SAVPF 96 97",
                "m=video 3478 UDP/TLS/RTP/SAVPF 96 97"
            ]
        );
        assert_has(&session_lines(&third), &["a=group:BUNDLE 0 4 2 3"]);
        assert_has(&section(&third, "4"), &["a=msid:d d-50", "a=sendonly"]);
        s.apply_answer(browser_answer(&third, &[]).as_bytes())
            .unwrap();

        // The first m-line never closes: it goes inactive and stays in BUNDLE.
        assert!(s.remove_track("0"));
        let fourth = offer(&mut s);
        assert_eq!(m_lines(&fourth)[0], "m=audio 3478 UDP/TLS/RTP/SAVPF 111");
        let first_line = section(&fourth, "0");
        assert_has(&first_line, &["a=inactive", "a=ice-ufrag:SfuLocal"]);
        assert!(
            !first_line
                .iter()
                .any(|l| l.starts_with("a=msid") || l.starts_with("a=ssrc"))
        );
        assert_has(&session_lines(&fourth), &["a=group:BUNDLE 0 4 2 3"]);
        s.apply_answer(browser_answer(&fourth, &[]).as_bytes())
            .unwrap();
        // A new audio track cannot take it: it is appended.
        assert_eq!(s.add_track(track(CodecName::Opus, 60, "e")).unwrap(), "5");
        assert_eq!(m_lines(&offer(&mut s)).len(), 5);
    }

    #[test]
    fn tracks_that_come_and_go_between_offers() {
        let mut s = SubscribeSession::new();
        s.add_track(track(CodecName::Opus, 1, "a")).unwrap();
        let first = offer(&mut s);
        s.apply_answer(browser_answer(&first, &[]).as_bytes())
            .unwrap();
        // Added and removed before any offer: it leaves no trace.
        let mid = s.add_track(track(CodecName::Vp8, 2, "b")).unwrap();
        assert!(s.remove_track(&mid));
        assert_eq!(s.slots.len(), 1);
        // (The session still offers: something changed and changed back.)
        let again = offer(&mut s);
        assert_eq!(m_lines(&again).len(), 1);
        s.apply_answer(browser_answer(&again, &[]).as_bytes())
            .unwrap();
    }

    #[test]
    fn browser_refusal_frees_the_m_line() {
        let mut s = SubscribeSession::new();
        s.add_track(track(CodecName::Opus, 1, "a")).unwrap();
        s.add_track(track(CodecName::H264, 2, "a")).unwrap();
        let sdp = offer(&mut s);
        let answer = s
            .apply_answer(browser_answer(&sdp, &["1"]).as_bytes())
            .unwrap();
        assert_eq!(answer.rejected, ["1"]);
        assert_eq!(s.tracks().count(), 1);
        // Recycled by the next video track.
        assert_eq!(s.add_track(track(CodecName::Vp8, 3, "b")).unwrap(), "2");
        let sdp = offer(&mut s);
        assert_eq!(m_lines(&sdp)[1], "m=video 3478 UDP/TLS/RTP/SAVPF 96 97");
        assert_has(&session_lines(&sdp), &["a=group:BUNDLE 0 2"]);
    }

    #[test]
    fn inactive_answer_is_reported() {
        let mut s = SubscribeSession::new();
        s.add_track(track(CodecName::Opus, 1, "a")).unwrap();
        s.add_track(track(CodecName::Vp8, 2, "a")).unwrap();
        let sdp = offer(&mut s);
        let answer = browser_answer(&sdp, &[]);
        let answer = answer.replacen("a=recvonly", "a=inactive", 2);
        let settled = s.apply_answer(answer.as_bytes()).unwrap();
        assert_eq!(settled.inactive, ["0", "1"]);
    }

    #[test]
    fn subscriber_answer_errors() {
        let mut s = SubscribeSession::new();
        assert_eq!(
            s.apply_answer(b"v=0").unwrap_err(),
            SdpError::NoPendingOffer
        );
        assert_eq!(SdpError::NoPendingOffer.http_status(), 409);
        s.add_track(track(CodecName::Opus, 1, "a")).unwrap();
        s.add_track(track(CodecName::Vp8, 2, "a")).unwrap();
        let sdp = offer(&mut s);
        let good = browser_answer(&sdp, &[]);
        type Case = (String, fn(&SdpError) -> bool);
        let cases: Vec<Case> = vec![
            (good.replace("a=setup:active", "a=setup:passive"), |e| {
                matches!(e, SdpError::Setup { .. })
            }),
            (good.replace("a=setup:active", "a=setup:actpass"), |e| {
                matches!(e, SdpError::Setup { .. })
            }),
            (
                good.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0"),
                |e| *e == SdpError::NotBundled("1".into()),
            ),
            (good.replacen("a=rtcp-mux\r\n", "", 1), |e| {
                *e == SdpError::NoRtcpMux("0".into())
            }),
            (good.replace("a=recvonly", "a=sendrecv"), |e| {
                matches!(e, SdpError::AnswerMismatch(_))
            }),
            (good.replace("a=mid:1", "a=mid:7"), |e| {
                matches!(e, SdpError::AnswerMismatch(_))
            }),
            (
                good.replace("UDP/TLS/RTP/SAVPF 96 97", "UDP/TLS/RTP/SAVPF 97"),
                |e| matches!(e, SdpError::AnswerMismatch(_)),
            ),
            (good.replace("m=audio", "m=video"), |e| {
                matches!(e, SdpError::AnswerMismatch(_))
            }),
            (good.split("m=video").next().unwrap().to_owned(), |e| {
                matches!(e, SdpError::AnswerMismatch(_))
            }),
            (good.replace("a=ice-ufrag:Brws\r\n", ""), |e| {
                matches!(
                    e,
                    SdpError::Missing {
                        attribute: "ice-ufrag",
                        ..
                    }
                )
            }),
            (good.replace("sha-256", "sha-1"), |e| {
                *e == SdpError::NoSha256Fingerprint
            }),
            (good.replace("v=0", "v=zero"), |e| {
                matches!(e, SdpError::Syntax(_))
            }),
            ("x".repeat(s.max_answer_len() + 1), |e| {
                matches!(e, SdpError::TooLarge(..))
            }),
            (browser_answer(&sdp, &["0", "1"]), |e| {
                *e == SdpError::NoMedia
            }),
        ];
        for (answer, check) in cases {
            let e = s.apply_answer(answer.as_bytes()).unwrap_err();
            assert!(check(&e), "{e:?} for\n{answer}");
            assert!(s.is_pending(), "a bad answer leaves the offer outstanding");
        }
        // The good one still works afterwards.
        s.apply_answer(good.as_bytes()).unwrap();
        assert!(!s.is_pending());
        // A closed m-line answered as accepted.
        s.add_track(track(CodecName::Vp8, 3, "b")).unwrap();
        assert!(s.remove_track("1"));
        let sdp = offer(&mut s);
        let bad = browser_answer(&sdp, &[]).replacen("m=video 0 ", "m=video 9 ", 1);
        assert!(matches!(
            s.apply_answer(bad.as_bytes()).unwrap_err(),
            SdpError::AnswerMismatch(_)
        ));
    }

    #[test]
    fn add_track_errors() {
        let mut s = SubscribeSession::new();
        let mut t = track(CodecName::Vp8, 1, "a");
        t.cname = "has space".into();
        assert!(matches!(
            s.add_track(t).unwrap_err(),
            SdpError::Invalid {
                attribute: "cname",
                ..
            }
        ));
        let mut t = track(CodecName::Vp8, 1, "a");
        t.stream_id = "line\r\nbreak".into();
        assert!(matches!(
            s.add_track(t).unwrap_err(),
            SdpError::Invalid { .. }
        ));
        let mut t = track(CodecName::Vp8, 1, "a");
        t.track_id = String::new();
        assert!(s.add_track(t).is_err());
        for i in 0..MAX_SUBSCRIBE_SECTIONS as u32 {
            s.add_track(track(CodecName::Opus, i, "p")).unwrap();
        }
        assert_eq!(
            s.add_track(track(CodecName::Opus, 9999, "p")).unwrap_err(),
            SdpError::TooManySections(MAX_SUBSCRIBE_SECTIONS + 1)
        );
    }

    #[test]
    fn a_full_room_fits_the_size_limit() {
        // 49 other participants with camera and microphone (rooms.max_participants = 50):
        // a Chrome-sized answer passes 64 KiB, and must still be accepted.
        let mut s = SubscribeSession::new();
        for p in 0..49u32 {
            let name = format!("participant-{p:02}-0123456789abcdef");
            s.add_track(track(CodecName::Opus, p * 10, &name)).unwrap();
            s.add_track(track(CodecName::Vp8, p * 10 + 2, &name))
                .unwrap();
        }
        let sdp = offer(&mut s);
        let answer = browser_answer(&sdp, &[]);
        assert!(answer.len() > MAX_SDP_LEN, "the reason for max_answer_len");
        assert!(
            answer.len() < s.max_answer_len(),
            "answer of {} bytes",
            answer.len()
        );
        s.apply_answer(answer.as_bytes()).unwrap();
    }

    #[test]
    fn fingerprint_parsing() {
        let f = Fingerprint::from_hex(OUR_FP).unwrap();
        assert_eq!(f.to_string(), OUR_FP);
        assert_eq!(Fingerprint::from_hex(&OUR_FP.to_lowercase()), Some(f));
        assert_eq!(Fingerprint::from_hex(&OUR_FP[3..]), None);
        assert_eq!(Fingerprint::from_hex(&format!("{OUR_FP}:00")), None);
        assert_eq!(Fingerprint::from_hex(&OUR_FP.replace(':', "")), None);
        assert_eq!(format!("{f:?}"), format!("Fingerprint({OUR_FP})"));
    }
}
