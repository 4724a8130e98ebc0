//! STUN messages (RFC 8489 §5, §14): a zero-copy reader and an in-place writer.
//!
//! Neither side allocates. [`Message::parse`] validates the framing once and then hands
//! out slices of the caller's buffer; [`Writer`] builds a message into a caller-provided
//! buffer and keeps the header's length field right after every attribute, so
//! MESSAGE-INTEGRITY and FINGERPRINT can be computed at any point.
//!
//! Both are generic over methods and attributes so the TURN core (RFC 8656) builds on
//! them; what a Binding request gets for an answer lives in `binding.rs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Length of the fixed STUN header.
pub(crate) const HEADER_LEN: usize = 20;
/// The magic cookie that tells RFC 5389/8489 messages from RFC 3489 ones.
pub(crate) const MAGIC_COOKIE: u32 = 0x2112_A442;
/// XORed into the CRC-32 of FINGERPRINT so STUN's CRC differs from the application's.
pub(crate) const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Length of a MESSAGE-INTEGRITY value (HMAC-SHA1).
pub(crate) const INTEGRITY_LEN: usize = 20;
/// Length of a full MESSAGE-INTEGRITY-SHA256 value (it may arrive truncated to 16).
pub(crate) const INTEGRITY_SHA256_LEN: usize = 32;

const ATTR_HEADER_LEN: usize = 4;
const FINGERPRINT_LEN: usize = 4;
const COOKIE: [u8; 4] = MAGIC_COOKIE.to_be_bytes();
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// STUN methods (12 bits): Binding from RFC 8489, the rest from TURN (RFC 8656).
pub mod method {
    /// Binding: address discovery and ICE connectivity checks.
    pub const BINDING: u16 = 0x001;
    /// Allocate: asks the server for a relayed transport address.
    pub const ALLOCATE: u16 = 0x003;
    /// Refresh: extends an allocation's lifetime, or ends it with lifetime 0.
    pub const REFRESH: u16 = 0x004;
    /// Send indication: data from the client for a peer.
    pub const SEND: u16 = 0x006;
    /// Data indication: data from a peer for the client.
    pub const DATA: u16 = 0x007;
    /// CreatePermission: lets a peer's IP address send to the allocation.
    pub const CREATE_PERMISSION: u16 = 0x008;
    /// ChannelBind: binds a channel number to a peer address.
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types. Below 0x8000 an agent must understand them (comprehension-required),
/// from 0x8000 up it may ignore them (comprehension-optional).
pub mod attr {
    // RFC 8489
    /// The client's reflexive address, not XORed (RFC 3489 clients).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// The long-term or ICE username.
    pub const USERNAME: u16 = 0x0006;
    /// HMAC-SHA1 over the message up to this attribute.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// Class, number and reason phrase of an error response.
    pub const ERROR_CODE: u16 = 0x0009;
    /// The comprehension-required attributes a 420 response refused.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// The long-term credential realm.
    pub const REALM: u16 = 0x0014;
    /// The server's nonce for long-term credentials.
    pub const NONCE: u16 = 0x0015;
    /// HMAC-SHA256 over the message up to this attribute.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub(crate) const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub(crate) const USERHASH: u16 = 0x001E;
    /// The client's reflexive address, XORed with the magic cookie.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// The password algorithms a server offers.
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// The domain of an alternate server (TLS).
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    /// A description of the sending agent's software.
    pub const SOFTWARE: u16 = 0x8022;
    /// The server a 300 response redirects to.
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    /// CRC-32 of the message XORed with 0x5354554e; always last.
    pub const FINGERPRINT: u16 = 0x8028;
    // RFC 3489 leftovers that old clients still send
    /// RFC 3489: where to send the response.
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    /// RFC 3489/5780: asks for an answer from another address or port.
    pub const CHANGE_REQUEST: u16 = 0x0003;
    // RFC 5780 (NAT behaviour discovery)
    /// RFC 5780: pads a response to probe fragmentation.
    pub const PADDING: u16 = 0x0026;
    /// RFC 5780: the port to answer to.
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// RFC 5780: the address a response was sent from.
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// RFC 5780: the server's alternate address.
    pub const OTHER_ADDRESS: u16 = 0x802C;
    // RFC 8656 (TURN)
    /// The channel (0x4000..=0x4FFF) of a ChannelBind.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// Seconds an allocation should live.
    pub const LIFETIME: u16 = 0x000D;
    /// A peer's transport address, XORed.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// The application data of a Send or Data indication.
    pub const DATA: u16 = 0x0013;
    /// The relayed transport address the server allocated, XORed.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// The address family (IPv4 or IPv6) asked for the relay.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub(crate) const EVEN_PORT: u16 = 0x0018;
    /// The relay protocol asked for (17, UDP, is the only one).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// Asks the server to set DF on relayed datagrams.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub(crate) const RESERVATION_TOKEN: u16 = 0x0022;
    pub(crate) const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub(crate) const ADDRESS_ERROR_CODE: u16 = 0x8001;
    /// An ICMP error a peer's datagram caused (in a Data indication).
    pub const ICMP: u16 = 0x8004;
    // RFC 8445 (ICE)
    /// ICE: the priority a peer-reflexive candidate would get.
    pub const PRIORITY: u16 = 0x0024;
    /// ICE: the controlling agent nominates this pair.
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// ICE: the sender is the controlled agent (with its tie-breaker).
    pub const ICE_CONTROLLED: u16 = 0x8029;
    /// ICE: the sender is the controlling agent (with its tie-breaker).
    pub const ICE_CONTROLLING: u16 = 0x802A;

    /// Whether an agent that does not know `typ` must reject the message (RFC 8489 §15).
    pub(crate) const fn is_comprehension_required(typ: u16) -> bool {
        typ < 0x8000
    }
}

/// The two class bits of the message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Expects a success or error response with the same transaction id.
    Request,
    /// Expects no response.
    Indication,
    /// Success response to a request.
    Success,
    /// Error response to a request (carries ERROR-CODE).
    Error,
}

impl Class {
    /// The class bits (C1 at 0x0100, C0 at 0x0010) inside the message type.
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0x0000,
            Class::Indication => 0x0010,
            Class::Success => 0x0100,
            Class::Error => 0x0110,
        }
    }

    const fn from_type(typ: u16) -> Class {
        match typ & 0x0110 {
            0x0000 => Class::Request,
            0x0010 => Class::Indication,
            0x0100 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// Interleaves a 12-bit method with the class bits (RFC 8489 §5, figure 3).
pub(crate) const fn message_type(method: u16, class: Class) -> u16 {
    let m = method & 0x0FFF;
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | class.bits()
}

/// Splits a message type into its method and class.
pub(crate) const fn split_type(typ: u16) -> (u16, Class) {
    let method = (typ & 0x000F) | ((typ & 0x00E0) >> 1) | ((typ & 0x3E00) >> 2);
    (method, Class::from_type(typ))
}

/// Why bytes are not a well-formed STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the 20-byte header.
    Truncated,
    /// One of the two most significant bits is set: not STUN (RFC 7983 demux).
    NotStun,
    /// The length field is not a multiple of 4 or does not match the bytes given.
    BadLength,
    /// An attribute header or value (with its padding) runs past the end.
    AttributeOverrun,
    /// An attribute whose length its type forbids (MESSAGE-INTEGRITY, -SHA256, FINGERPRINT).
    BadAttribute(u16),
    /// FINGERPRINT is followed by another attribute; RFC 8489 §14.7 makes it the last one.
    FingerprintNotLast,
    /// An address attribute with an unknown family or the wrong length.
    BadAddress,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => f.write_str("shorter than a STUN header"),
            ParseError::NotStun => f.write_str("not a STUN message"),
            ParseError::BadLength => f.write_str("length field does not match the message"),
            ParseError::AttributeOverrun => f.write_str("attribute runs past the message end"),
            ParseError::BadAttribute(t) => write!(f, "attribute 0x{t:04x} has a bad length"),
            ParseError::FingerprintNotLast => f.write_str("FINGERPRINT is not the last attribute"),
            ParseError::BadAddress => f.write_str("malformed address attribute"),
        }
    }
}

impl std::error::Error for ParseError {}

/// One attribute as it sits in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute type, one of [`attr`].
    pub typ: u16,
    /// The value without padding.
    pub value: &'a [u8],
    /// Byte offset of the attribute's header from the start of the message.
    pub offset: usize,
}

/// Which attributes still count while walking (RFC 8489 §14.5, §14.6): after
/// MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT do, after
/// MESSAGE-INTEGRITY-SHA256 only FINGERPRINT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Zone {
    Open,
    AfterIntegrity,
    AfterIntegritySha256,
    Sealed,
}

impl Zone {
    /// Whether an attribute of type `typ` counts here, and the zone after it.
    fn admit(self, typ: u16) -> (bool, Zone) {
        match (self, typ) {
            (Zone::Sealed, _) => (false, Zone::Sealed),
            (_, attr::FINGERPRINT) => (true, Zone::Sealed),
            (Zone::Open | Zone::AfterIntegrity, attr::MESSAGE_INTEGRITY_SHA256) => {
                (true, Zone::AfterIntegritySha256)
            }
            (Zone::Open, attr::MESSAGE_INTEGRITY) => (true, Zone::AfterIntegrity),
            (Zone::Open, _) => (true, Zone::Open),
            (zone, _) => (false, zone),
        }
    }
}

/// Reads the attribute at `offset`, returning it and the offset of the next one.
fn read_attribute(raw: &[u8], offset: usize) -> Result<(Attribute<'_>, usize), ParseError> {
    let head = raw
        .get(offset..offset + ATTR_HEADER_LEN)
        .ok_or(ParseError::AttributeOverrun)?;
    let typ = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let start = offset + ATTR_HEADER_LEN;
    let next = start + padded(len);
    if next > raw.len() {
        return Err(ParseError::AttributeOverrun);
    }
    let value = raw
        .get(start..start + len)
        .ok_or(ParseError::AttributeOverrun)?;
    Ok((Attribute { typ, value, offset }, next))
}

/// Attribute values are padded to a multiple of 4 bytes.
const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// A parsed STUN message borrowing the bytes it was parsed from.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    method: u16,
    class: Class,
    cookie_tid: &'a [u8; 16],
    transaction_id: &'a [u8; 12],
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
}

impl<'a> Message<'a> {
    /// Validates the framing of one whole message and every attribute's bounds.
    ///
    /// A message without the magic cookie parses too (RFC 3489 clients still exist);
    /// [`Message::has_magic_cookie`] tells them apart.
    pub fn parse(raw: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let (header, _) = raw
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(ParseError::Truncated)?;
        if header[0] & 0xC0 != 0 {
            return Err(ParseError::NotStun);
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if length % 4 != 0 || HEADER_LEN + length != raw.len() {
            return Err(ParseError::BadLength);
        }
        let (_, cookie_tid) = header
            .split_last_chunk::<16>()
            .ok_or(ParseError::Truncated)?;
        let (_, transaction_id) = cookie_tid
            .split_last_chunk::<12>()
            .ok_or(ParseError::Truncated)?;
        let (method, class) = split_type(u16::from_be_bytes([header[0], header[1]]));
        let mut msg = Message {
            raw,
            method,
            class,
            cookie_tid,
            transaction_id,
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
        };
        msg.walk()?;
        Ok(msg)
    }

    /// Checks every attribute's bounds and records where the integrity attributes are.
    fn walk(&mut self) -> Result<(), ParseError> {
        let mut offset = HEADER_LEN;
        let mut zone = Zone::Open;
        while offset < self.raw.len() {
            if zone == Zone::Sealed {
                return Err(ParseError::FingerprintNotLast);
            }
            let (attribute, next) = read_attribute(self.raw, offset)?;
            let (counts, after) = zone.admit(attribute.typ);
            if counts {
                self.note(attribute)?;
            }
            zone = after;
            offset = next;
        }
        Ok(())
    }

    fn note(&mut self, a: Attribute<'a>) -> Result<(), ParseError> {
        let len = a.value.len();
        let valid = match a.typ {
            attr::MESSAGE_INTEGRITY => {
                self.integrity = Some(a.offset);
                len == INTEGRITY_LEN
            }
            attr::MESSAGE_INTEGRITY_SHA256 => {
                self.integrity_sha256 = Some(a.offset);
                // §14.6: truncation to no less than 16 bytes, in 4-byte steps.
                (16..=INTEGRITY_SHA256_LEN).contains(&len) && len.is_multiple_of(4)
            }
            attr::FINGERPRINT => {
                self.fingerprint = Some(a.offset);
                len == FINGERPRINT_LEN
            }
            _ => true,
        };
        if valid {
            Ok(())
        } else {
            Err(ParseError::BadAttribute(a.typ))
        }
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// The 12-bit method, one of [`method`].
    pub fn method(&self) -> u16 {
        self.method
    }

    /// Request, indication, success or error.
    pub fn class(&self) -> Class {
        self.class
    }

    /// False for RFC 3489 messages, whose 128-bit transaction id takes the cookie's place.
    pub fn has_magic_cookie(&self) -> bool {
        self.cookie_tid[..4] == COOKIE
    }

    /// The 96-bit transaction id (RFC 5389 and later).
    pub fn transaction_id(&self) -> &'a [u8; 12] {
        self.transaction_id
    }

    /// Header bytes 4..20: the magic cookie and the transaction id, or the whole 128-bit
    /// transaction id of an RFC 3489 message. XOR addresses are keyed with these bytes.
    pub(crate) fn cookie_and_transaction_id(&self) -> &'a [u8; 16] {
        self.cookie_tid
    }

    /// The attributes that count, in order: those after MESSAGE-INTEGRITY other than
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are skipped, as RFC 8489 requires.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            raw: self.raw,
            offset: HEADER_LEN,
            zone: Zone::Open,
        }
    }

    /// The value of the first counting attribute of type `typ`.
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.typ == typ).map(|a| a.value)
    }

    /// Decodes a plain address attribute (MAPPED-ADDRESS, ALTERNATE-SERVER, ...).
    pub fn address(&self, typ: u16) -> Option<Result<SocketAddr, ParseError>> {
        self.get(typ).map(decode_address)
    }

    /// Decodes an XOR address attribute (XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, ...).
    pub fn xor_address(&self, typ: u16) -> Option<Result<SocketAddr, ParseError>> {
        self.get(typ)
            .map(|value| decode_xor_address(value, self.cookie_tid))
    }

    /// Offset of the MESSAGE-INTEGRITY attribute's header, if it counts.
    pub fn integrity_offset(&self) -> Option<usize> {
        self.integrity
    }

    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute's header, if it counts.
    pub(crate) fn integrity_sha256_offset(&self) -> Option<usize> {
        self.integrity_sha256
    }

    /// Offset of the FINGERPRINT attribute's header (always the last attribute).
    pub fn fingerprint_offset(&self) -> Option<usize> {
        self.fingerprint
    }

    /// `None` without FINGERPRINT, else whether its CRC matches (RFC 8489 §14.7).
    pub fn verify_fingerprint(&self) -> Option<bool> {
        let offset = self.fingerprint?;
        let stored = self.raw.get(offset + ATTR_HEADER_LEN..)?;
        // FINGERPRINT is last, so the header length already covers it as §14.7 wants.
        Some(stored == fingerprint(&self.raw[..offset]).to_be_bytes())
    }

    /// `None` without MESSAGE-INTEGRITY, else whether its HMAC-SHA1 under `key` matches.
    /// The key is the password for short-term credentials, [`long_term_key`] otherwise.
    pub fn verify_integrity(&self, key: &[u8]) -> Option<bool> {
        let offset = self.integrity?;
        let tag = self.raw.get(offset + ATTR_HEADER_LEN..offset + 24)?;
        let mac = integrity_mac::<Hmac<Sha1>>(key, self.raw, offset, INTEGRITY_LEN)?;
        Some(mac.verify_slice(tag).is_ok())
    }

    /// `None` without MESSAGE-INTEGRITY-SHA256, else whether its (possibly truncated)
    /// HMAC-SHA256 under `key` matches. The key follows the password algorithm, not the
    /// HMAC: [`long_term_key`] when PASSWORD-ALGORITHM is absent or MD5,
    /// [`long_term_key_sha256`] when it is SHA-256 (RFC 8489 §9.2.2, Appendix B.1).
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> Option<bool> {
        let offset = self.integrity_sha256?;
        let (a, _) = read_attribute(self.raw, offset).ok()?;
        let mac = integrity_mac::<Hmac<Sha256>>(key, self.raw, offset, a.value.len())?;
        Some(mac.verify_truncated_left(a.value).is_ok())
    }
}

/// Iterator over a message's counting attributes; see [`Message::attributes`].
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    raw: &'a [u8],
    offset: usize,
    zone: Zone,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        // The message was validated by `parse`; an error here only ends the walk.
        while self.offset < self.raw.len() {
            let (attribute, next) = read_attribute(self.raw, self.offset).ok()?;
            self.offset = next;
            let (counts, zone) = self.zone.admit(attribute.typ);
            self.zone = zone;
            if counts {
                return Some(attribute);
            }
        }
        None
    }
}

/// CRC-32 of `prefix` XOR 0x5354554e: the FINGERPRINT value of a message whose bytes up
/// to the FINGERPRINT attribute are `prefix` (with its length field already counting it).
pub fn fingerprint(prefix: &[u8]) -> u32 {
    crc32fast::hash(prefix) ^ FINGERPRINT_XOR
}

/// An HMAC keyed with `key` fed with `msg[..offset]`, the header's length field replaced
/// as if the message ended after the `value_len`-byte integrity attribute at `offset`
/// (RFC 8489 §14.5, §14.6). `None` only if `offset` is not inside the message body.
fn integrity_mac<M: Mac + hmac::digest::KeyInit>(
    key: &[u8],
    msg: &[u8],
    offset: usize,
    value_len: usize,
) -> Option<M> {
    let msg_type = msg.get(..2)?;
    let body = msg.get(4..offset)?;
    let length = u16::try_from(offset + ATTR_HEADER_LEN + value_len - HEADER_LEN).ok()?;
    let mut mac = <M as Mac>::new_from_slice(key).ok()?;
    mac.update(msg_type);
    mac.update(&length.to_be_bytes());
    mac.update(body);
    Some(mac)
}

/// The long-term credential key for MESSAGE-INTEGRITY: MD5(username ":" realm ":"
/// password) (RFC 8489 §9.2.2). Inputs are taken as given: OpaqueString/SASLprep
/// processing, if any, is the caller's.
pub fn long_term_key(username: &[u8], realm: &[u8], password: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    for part in [username, b":", realm, b":", password] {
        h.update(part);
    }
    h.finalize().into()
}

/// The long-term key when PASSWORD-ALGORITHM is SHA-256 (used with
/// MESSAGE-INTEGRITY-SHA256): SHA-256(username ":" realm ":" password).
pub fn long_term_key_sha256(username: &[u8], realm: &[u8], password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [username, b":", realm, b":", password] {
        h.update(part);
    }
    h.finalize().into()
}

/// The USERHASH value: SHA-256(username ":" realm) (RFC 8489 §14.4).
pub fn userhash(username: &[u8], realm: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [username, b":", realm] {
        h.update(part);
    }
    h.finalize().into()
}

/// Decodes a MAPPED-ADDRESS style value: reserved byte, family, port, address.
pub(crate) fn decode_address(value: &[u8]) -> Result<SocketAddr, ParseError> {
    decode(value, &[0; 16])
}

/// Decodes an XOR-MAPPED-ADDRESS style value; `cookie_tid` is header bytes 4..20.
pub(crate) fn decode_xor_address(
    value: &[u8],
    cookie_tid: &[u8; 16],
) -> Result<SocketAddr, ParseError> {
    decode(value, cookie_tid)
}

/// Address decoding with `mask` XORed over port and address (all zero for plain ones).
fn decode(value: &[u8], mask: &[u8; 16]) -> Result<SocketAddr, ParseError> {
    let port = u16::from_be_bytes(pair(value, 2)?) ^ u16::from_be_bytes([mask[0], mask[1]]);
    let mut ip = [0u8; 16];
    match (value.get(1), value.len()) {
        (Some(&FAMILY_IPV4), 8) => {
            xor_into(&mut ip[..4], &value[4..], mask);
            let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        (Some(&FAMILY_IPV6), 20) => {
            xor_into(&mut ip, &value[4..], mask);
            Ok(SocketAddr::V6(SocketAddrV6::new(ip.into(), port, 0, 0)))
        }
        _ => Err(ParseError::BadAddress),
    }
}

fn pair(value: &[u8], at: usize) -> Result<[u8; 2], ParseError> {
    match value.get(at..at + 2) {
        Some(&[a, b]) => Ok([a, b]),
        _ => Err(ParseError::BadAddress),
    }
}

fn xor_into(out: &mut [u8], src: &[u8], mask: &[u8]) {
    for ((o, s), m) in out.iter_mut().zip(src).zip(mask) {
        *o = s ^ m;
    }
}

/// Length of an address attribute's value for `addr`: 8 for IPv4, 20 for IPv6.
pub(crate) const fn address_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Writes a MAPPED-ADDRESS style value into `out`, returning its length.
pub(crate) fn encode_address(addr: SocketAddr, out: &mut [u8]) -> Result<usize, WriteError> {
    encode(addr, &[0; 16], out)
}

/// Writes an XOR-MAPPED-ADDRESS style value into `out`, returning its length.
pub(crate) fn encode_xor_address(
    addr: SocketAddr,
    cookie_tid: &[u8; 16],
    out: &mut [u8],
) -> Result<usize, WriteError> {
    encode(addr, cookie_tid, out)
}

fn encode(addr: SocketAddr, mask: &[u8; 16], out: &mut [u8]) -> Result<usize, WriteError> {
    let len = address_len(&addr);
    let out = out.get_mut(..len).ok_or(WriteError::BufferTooSmall)?;
    let (family, ip): (u8, [u8; 16]) = match addr.ip() {
        IpAddr::V4(v4) => {
            let mut ip = [0; 16];
            ip[..4].copy_from_slice(&v4.octets());
            (FAMILY_IPV4, ip)
        }
        IpAddr::V6(v6) => (FAMILY_IPV6, v6.octets()),
    };
    let port = addr.port() ^ u16::from_be_bytes([mask[0], mask[1]]);
    out[0] = 0;
    out[1] = family;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    xor_into(&mut out[4..], &ip, mask);
    Ok(len)
}

/// Why a message could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The caller's buffer cannot hold the message.
    BufferTooSmall,
    /// The message or one value would not fit the 16-bit length fields.
    TooLong,
    /// An attribute after MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT, where a receiver
    /// would ignore it or reject the message.
    Misordered,
    /// A value the attribute cannot carry (an ERROR-CODE outside 300..=699).
    BadValue,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteError::BufferTooSmall => "buffer too small for the STUN message",
            WriteError::TooLong => "STUN message or attribute too long",
            WriteError::Misordered => "attribute after MESSAGE-INTEGRITY or FINGERPRINT",
            WriteError::BadValue => "value out of range for the attribute",
        })
    }
}

impl std::error::Error for WriteError {}

/// Builds one message into a caller-provided buffer, without allocating.
///
/// The header's length field is kept current after every attribute, so the integrity
/// attributes and FINGERPRINT, added last, cover exactly what precedes them.
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
    zone: Zone,
}

impl<'b> Writer<'b> {
    /// Starts a message with the magic cookie and the 96-bit `transaction_id`.
    pub fn new(
        buf: &'b mut [u8],
        method: u16,
        class: Class,
        transaction_id: &[u8; 12],
    ) -> Result<Writer<'b>, WriteError> {
        let mut cookie_tid = [0u8; 16];
        cookie_tid[..4].copy_from_slice(&COOKIE);
        cookie_tid[4..].copy_from_slice(transaction_id);
        Writer::with_cookie_and_transaction_id(buf, method, class, &cookie_tid)
    }

    /// Starts a message whose header bytes 4..20 are `cookie_tid` verbatim: an answer to
    /// an RFC 3489 client echoes its whole 128-bit transaction id.
    pub(crate) fn with_cookie_and_transaction_id(
        buf: &'b mut [u8],
        method: u16,
        class: Class,
        cookie_tid: &[u8; 16],
    ) -> Result<Writer<'b>, WriteError> {
        let header = buf
            .get_mut(4..HEADER_LEN)
            .ok_or(WriteError::BufferTooSmall)?;
        header.copy_from_slice(cookie_tid);
        Writer::reuse_header(buf, method, class)
    }

    /// Starts a message in a buffer whose bytes 4..20 already hold the cookie and
    /// transaction id, typically the request being answered in place.
    pub(crate) fn reuse_header(
        buf: &'b mut [u8],
        method: u16,
        class: Class,
    ) -> Result<Writer<'b>, WriteError> {
        if buf.len() < HEADER_LEN {
            return Err(WriteError::BufferTooSmall);
        }
        buf[..2].copy_from_slice(&message_type(method, class).to_be_bytes());
        let mut w = Writer {
            buf,
            len: HEADER_LEN,
            zone: Zone::Open,
        };
        w.set_length()?;
        Ok(w)
    }

    /// Continues a message whose first `len` bytes (header and attributes, each padded)
    /// are already in `buf`, e.g. to add MESSAGE-INTEGRITY to a prepared message.
    pub fn resume(buf: &'b mut [u8], len: usize) -> Result<Writer<'b>, WriteError> {
        if len < HEADER_LEN || !len.is_multiple_of(4) {
            return Err(WriteError::BadValue);
        }
        if len > buf.len() {
            return Err(WriteError::BufferTooSmall);
        }
        let mut w = Writer {
            buf,
            len,
            zone: Zone::Open,
        };
        w.set_length()?;
        Ok(w)
    }

    /// Bytes written so far (the message is complete after every call).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a message has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Header bytes 4..20, the key of XOR addresses.
    pub(crate) fn cookie_and_transaction_id(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.buf[4..HEADER_LEN]);
        out
    }

    /// Ends writing and returns the message length.
    pub fn finish(self) -> usize {
        self.len
    }

    fn set_length(&mut self) -> Result<(), WriteError> {
        let length = u16::try_from(self.len - HEADER_LEN).map_err(|_| WriteError::TooLong)?;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        Ok(())
    }

    /// Appends an attribute with a `value_len`-byte value that `fill` writes in place;
    /// padding is zeroed. Nothing is written if it does not fit.
    pub(crate) fn add_with(
        &mut self,
        typ: u16,
        value_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), WriteError> {
        let (counts, zone) = self.zone.admit(typ);
        if !counts {
            return Err(WriteError::Misordered);
        }
        let value_len16 = u16::try_from(value_len).map_err(|_| WriteError::TooLong)?;
        let start = self.len + ATTR_HEADER_LEN;
        let end = start + padded(value_len);
        if end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(WriteError::TooLong);
        }
        let slot = self
            .buf
            .get_mut(self.len..end)
            .ok_or(WriteError::BufferTooSmall)?;
        slot[..2].copy_from_slice(&typ.to_be_bytes());
        slot[2..4].copy_from_slice(&value_len16.to_be_bytes());
        let (value, padding) = slot[ATTR_HEADER_LEN..].split_at_mut(value_len);
        padding.fill(0);
        fill(value);
        self.len = end;
        self.zone = zone;
        self.set_length()
    }

    /// Appends an attribute with the given value.
    pub fn add(&mut self, typ: u16, value: &[u8]) -> Result<(), WriteError> {
        self.add_with(typ, value.len(), |out| out.copy_from_slice(value))
    }

    /// Appends a 32-bit attribute (LIFETIME, PRIORITY, ...).
    pub fn add_u32(&mut self, typ: u16, value: u32) -> Result<(), WriteError> {
        self.add(typ, &value.to_be_bytes())
    }

    /// Appends a plain address attribute (MAPPED-ADDRESS, ALTERNATE-SERVER, ...).
    pub(crate) fn add_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), WriteError> {
        self.add_with(typ, address_len(&addr), |out| {
            // Cannot fail: `out` has exactly `address_len` bytes.
            let _ = encode_address(addr, out);
        })
    }

    /// Appends an XOR address attribute (XOR-MAPPED-ADDRESS, XOR-RELAYED-ADDRESS, ...).
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), WriteError> {
        let mask = self.cookie_and_transaction_id();
        self.add_with(typ, address_len(&addr), |out| {
            let _ = encode_xor_address(addr, &mask, out);
        })
    }

    /// Appends ERROR-CODE: `code` in 300..=699 and a reason phrase (RFC 8489 §14.8).
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> Result<(), WriteError> {
        if !(300..=699).contains(&code) {
            return Err(WriteError::BadValue);
        }
        // Hundreds in the low three bits of the third byte, the rest in the fourth.
        let head = [0, 0, (code / 100) as u8, (code % 100) as u8];
        self.add_with(attr::ERROR_CODE, 4 + reason.len(), |out| {
            out[..4].copy_from_slice(&head);
            out[4..].copy_from_slice(reason.as_bytes());
        })
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types` (RFC 8489 §14.9).
    pub(crate) fn add_unknown_attributes(&mut self, types: &[u16]) -> Result<(), WriteError> {
        self.add_with(attr::UNKNOWN_ATTRIBUTES, types.len() * 2, |out| {
            for (slot, typ) in out.chunks_exact_mut(2).zip(types) {
                slot.copy_from_slice(&typ.to_be_bytes());
            }
        })
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 under `key`) over everything written so far.
    pub fn add_integrity(&mut self, key: &[u8]) -> Result<(), WriteError> {
        self.add_mac::<Hmac<Sha1>>(attr::MESSAGE_INTEGRITY, INTEGRITY_LEN, key)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes) over everything written so far.
    pub fn add_integrity_sha256(&mut self, key: &[u8]) -> Result<(), WriteError> {
        self.add_mac::<Hmac<Sha256>>(attr::MESSAGE_INTEGRITY_SHA256, INTEGRITY_SHA256_LEN, key)
    }

    fn add_mac<M: Mac + hmac::digest::KeyInit>(
        &mut self,
        typ: u16,
        len: usize,
        key: &[u8],
    ) -> Result<(), WriteError> {
        let offset = self.len;
        let mac = integrity_mac::<M>(key, self.buf, offset, len).ok_or(WriteError::TooLong)?;
        let tag = mac.finalize().into_bytes();
        self.add(typ, &tag)
    }

    /// Appends FINGERPRINT; nothing can follow it.
    pub fn add_fingerprint(&mut self) -> Result<(), WriteError> {
        let offset = self.len;
        // The CRC covers a header whose length already counts the FINGERPRINT attribute:
        // reserve it with a zero value first, then fill in the CRC of what precedes it.
        self.add(attr::FINGERPRINT, &[0; FINGERPRINT_LEN])?;
        let crc = fingerprint(&self.buf[..offset]);
        self.buf[offset + ATTR_HEADER_LEN..self.len].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::IpAddr;

    /// Hex with any whitespace in between, for readable test vectors.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    // RFC 5769 §2.1: short-term credentials, SOFTWARE padded with spaces.
    const SAMPLE_REQUEST: &str = "
        00010058 2112a442 b7e7a701 bc34d686 fa87dfae
        80220010 5354554e 20746573 7420636c 69656e74
        00240004 6e0001ff
        80290008 932ff9b1 51263b36
        00060009 6576746a 3a683676 59202020
        00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
        80280004 e57a3bcf";
    const SAMPLE_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
    const SAMPLE_TID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];
    // RFC 5769 §2.2 and §2.3.
    const SAMPLE_IPV4_RESPONSE: &str = "
        0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
        8022000b 74657374 20766563 746f7220
        00200008 0001a147 e112a643
        00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
        80280004 c07d4c96";
    const SAMPLE_IPV6_RESPONSE: &str = "
        01010048 2112a442 b7e7a701 bc34d686 fa87dfae
        8022000b 74657374 20766563 746f7220
        00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
        00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
        80280004 c8fb0b4c";
    // RFC 5769 §2.4: long-term credentials.
    const SAMPLE_LONG_TERM: &str = "
        00010060 2112a442 78ad3433 c6ad72c0 29da412e
        00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
        0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
        0014000b 6578616d 706c652e 6f726700
        00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666";
    const MATRIX_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    // RFC 8489 Appendix B.1: USERHASH and MESSAGE-INTEGRITY-SHA256.
    const SAMPLE_SHA256: &str = "
        00010088 2112a442 78ad3433 c6ad72c0 29da412e
        001e0020 4a3cf38f ef6992bd a952c678 0417da0f 24819415 569e60b2 05c46e41 407f1704
        00150029 6f624d61 744a6f73 32414141 43662f2f 3439396b 39353464 364f4c33 346f4c39
                 46535476 79363473 41000000
        0014000b 6578616d 706c652e 6f726700
        001c0020 fd8c2738 60d2e18e bca4c89b 6973befa 7ee8ecc6 9e9642db 326fab65 a0b955ba";

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn message_type_round_trips() {
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(method::BINDING, Class::Indication), 0x0011);
        assert_eq!(message_type(method::ALLOCATE, Class::Request), 0x0003);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
        assert_eq!(message_type(method::CHANNEL_BIND, Class::Error), 0x0119);
        for m in [0u16, 1, 0x0F, 0x7F, 0xABC, 0xFFF] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
    }

    #[test]
    fn rfc5769_sample_request() {
        let raw = hex(SAMPLE_REQUEST);
        let msg = Message::parse(&raw).unwrap();
        assert_eq!(msg.method(), method::BINDING);
        assert_eq!(msg.class(), Class::Request);
        assert!(msg.has_magic_cookie());
        assert_eq!(msg.transaction_id(), &SAMPLE_TID);
        let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
        assert_eq!(
            types,
            [
                attr::SOFTWARE,
                attr::PRIORITY,
                attr::ICE_CONTROLLED,
                attr::USERNAME,
                attr::MESSAGE_INTEGRITY,
                attr::FINGERPRINT
            ]
        );
        assert_eq!(msg.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
        // Padding is spaces here, not zeros: the value must exclude it.
        assert_eq!(msg.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
        assert_eq!(msg.get(attr::PRIORITY), Some(&[0x6e, 0x00, 0x01, 0xff][..]));
        assert_eq!(msg.integrity_offset(), Some(76));
        assert_eq!(msg.fingerprint_offset(), Some(100));
        assert_eq!(msg.verify_fingerprint(), Some(true));
        assert_eq!(msg.verify_integrity(SAMPLE_PASSWORD), Some(true));
        assert_eq!(msg.verify_integrity(b"wrong"), Some(false));
        assert_eq!(msg.verify_integrity_sha256(SAMPLE_PASSWORD), None);
    }

    #[test]
    fn rfc5769_sample_request_detects_corruption() {
        let mut raw = hex(SAMPLE_REQUEST);
        raw[30] ^= 1; // inside SOFTWARE
        let msg = Message::parse(&raw).unwrap();
        assert_eq!(msg.verify_fingerprint(), Some(false));
        assert_eq!(msg.verify_integrity(SAMPLE_PASSWORD), Some(false));
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let raw = hex(SAMPLE_IPV4_RESPONSE);
        let msg = Message::parse(&raw).unwrap();
        assert_eq!(
            (msg.method(), msg.class()),
            (method::BINDING, Class::Success)
        );
        let mapped = msg.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap();
        assert_eq!(mapped, v4("192.0.2.1:32853"));
        assert_eq!(msg.verify_fingerprint(), Some(true));
        assert_eq!(msg.verify_integrity(SAMPLE_PASSWORD), Some(true));
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let raw = hex(SAMPLE_IPV6_RESPONSE);
        let msg = Message::parse(&raw).unwrap();
        let mapped = msg.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap();
        assert_eq!(mapped, v4("[2001:db8:1234:5678:11:2233:4455:6677]:32853"));
        assert_eq!(msg.verify_fingerprint(), Some(true));
        assert_eq!(msg.verify_integrity(SAMPLE_PASSWORD), Some(true));
    }

    #[test]
    fn rfc5769_long_term_request() {
        let raw = hex(SAMPLE_LONG_TERM);
        let msg = Message::parse(&raw).unwrap();
        assert_eq!(msg.get(attr::USERNAME), Some(MATRIX_USER.as_bytes()));
        assert_eq!(msg.get(attr::REALM), Some(&b"example.org"[..]));
        assert_eq!(
            msg.get(attr::NONCE),
            Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..])
        );
        assert_eq!(msg.verify_fingerprint(), None);
        // "The\u{AD}M\u{AA}tr\u{2168}" after SASLprep.
        let key = long_term_key(MATRIX_USER.as_bytes(), b"example.org", b"TheMatrIX");
        assert_eq!(msg.verify_integrity(&key), Some(true));
        let wrong = long_term_key(MATRIX_USER.as_bytes(), b"example.org", b"TheMatrix");
        assert_eq!(msg.verify_integrity(&wrong), Some(false));
    }

    #[test]
    fn rfc8489_userhash_and_sha256_integrity() {
        let raw = hex(SAMPLE_SHA256);
        let msg = Message::parse(&raw).unwrap();
        let hash = userhash(MATRIX_USER.as_bytes(), b"example.org");
        assert_eq!(msg.get(attr::USERHASH), Some(&hash[..]));
        assert_eq!(msg.integrity_sha256_offset(), Some(120));
        // No PASSWORD-ALGORITHM in the request, so the key is the default MD5 one even
        // though the HMAC is SHA-256 (§9.2.2 ties the key to the password algorithm).
        let key = long_term_key(MATRIX_USER.as_bytes(), b"example.org", b"TheMatrIX");
        assert_eq!(msg.verify_integrity_sha256(&key), Some(true));
        let sha_key = long_term_key_sha256(MATRIX_USER.as_bytes(), b"example.org", b"TheMatrIX");
        assert_eq!(msg.verify_integrity_sha256(&sha_key), Some(false));
    }

    #[test]
    fn writer_reproduces_rfc5769_responses() {
        for (vector, mapped) in [
            (SAMPLE_IPV4_RESPONSE, v4("192.0.2.1:32853")),
            (
                SAMPLE_IPV6_RESPONSE,
                v4("[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
            ),
        ] {
            let expected = hex(vector);
            let mut buf = [0u8; 128];
            let mut w =
                Writer::new(&mut buf, method::BINDING, Class::Success, &SAMPLE_TID).unwrap();
            w.add(attr::SOFTWARE, b"test vector").unwrap();
            w.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped).unwrap();
            let prefix = w.finish();
            // The vectors pad SOFTWARE with a space where the writer pads with zero.
            assert_eq!(buf[35], 0);
            buf[35] = b' ';
            assert_eq!(buf[4..prefix], expected[4..prefix]);
            let mut w = Writer::resume(&mut buf, prefix).unwrap();
            w.add_integrity(SAMPLE_PASSWORD).unwrap();
            w.add_fingerprint().unwrap();
            let n = w.finish();
            assert_eq!(buf[..n], expected[..]);
        }
    }

    #[test]
    fn writer_round_trips_sha256_integrity_and_long_term_key() {
        let key = long_term_key_sha256(b"user", b"realm", b"pass");
        let mut buf = [0u8; 200];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[7; 12]).unwrap();
        w.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.add(attr::USERNAME, b"user").unwrap();
        w.add_integrity(&long_term_key(b"user", b"realm", b"pass"))
            .unwrap();
        w.add_integrity_sha256(&key).unwrap();
        w.add_fingerprint().unwrap();
        let n = w.finish();
        let msg = Message::parse(&buf[..n]).unwrap();
        assert_eq!(
            (msg.method(), msg.class()),
            (method::ALLOCATE, Class::Request)
        );
        assert_eq!(msg.transaction_id(), &[7; 12]);
        let md5_key = long_term_key(b"user", b"realm", b"pass");
        assert_eq!(msg.verify_integrity(&md5_key), Some(true));
        assert_eq!(msg.verify_integrity_sha256(&key), Some(true));
        assert_eq!(msg.verify_integrity_sha256(&md5_key), Some(false));
        assert_eq!(msg.verify_fingerprint(), Some(true));
    }

    #[test]
    fn truncated_sha256_integrity_verifies() {
        let key = [9u8; 32];
        let mut buf = [0u8; 100];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[1; 12]).unwrap();
        w.add_integrity_sha256(&key).unwrap();
        let n = w.finish();
        // Cut the 32-byte tag to 16 and fix both length fields.
        let mut short = buf[..n - 16].to_vec();
        short[2..4].copy_from_slice(&20u16.to_be_bytes());
        short[22..24].copy_from_slice(&16u16.to_be_bytes());
        let msg = Message::parse(&short).unwrap();
        assert_eq!(msg.verify_integrity_sha256(&key), Some(false));
        // The HMAC input's length field changes with the truncation, so recompute.
        let mac = integrity_mac::<Hmac<Sha256>>(&key, &short, 20, 16).unwrap();
        short[24..40].copy_from_slice(&mac.finalize().into_bytes()[..16]);
        let msg = Message::parse(&short).unwrap();
        assert_eq!(msg.verify_integrity_sha256(&key), Some(true));
    }

    #[test]
    fn header_errors() {
        let good = hex(SAMPLE_REQUEST);
        assert_eq!(Message::parse(&[]).unwrap_err(), ParseError::Truncated);
        assert_eq!(
            Message::parse(&good[..19]).unwrap_err(),
            ParseError::Truncated
        );
        let mut top_bits = good.clone();
        top_bits[0] |= 0x40;
        assert_eq!(Message::parse(&top_bits).unwrap_err(), ParseError::NotStun);
        // Length not a multiple of 4.
        let mut odd = good.clone();
        odd[3] = 0x57;
        assert_eq!(Message::parse(&odd).unwrap_err(), ParseError::BadLength);
        // Length says more than there is, or less.
        assert_eq!(
            Message::parse(&good[..104]).unwrap_err(),
            ParseError::BadLength
        );
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(Message::parse(&longer).unwrap_err(), ParseError::BadLength);
    }

    #[test]
    fn rfc3489_message_parses_and_is_flagged() {
        let mut raw = hex("00010008 0123456789abcdef0123456789abcdef 00030004 00000000");
        let msg = Message::parse(&raw).unwrap();
        assert!(!msg.has_magic_cookie());
        assert_eq!(
            msg.cookie_and_transaction_id()[..4],
            [0x01, 0x23, 0x45, 0x67]
        );
        assert_eq!(msg.get(attr::CHANGE_REQUEST), Some(&[0u8; 4][..]));
        raw[4..8].copy_from_slice(&COOKIE);
        assert!(Message::parse(&raw).unwrap().has_magic_cookie());
    }

    /// A Binding request header with `body` as its attributes.
    fn with_body(body: &[u8]) -> Vec<u8> {
        let mut raw = hex("0001 0000 2112a442 000102030405060708090a0b");
        raw[2..4].copy_from_slice(&(body.len() as u16).to_be_bytes());
        raw.extend_from_slice(body);
        raw
    }

    #[test]
    fn attribute_errors() {
        // Attribute header cut short (length field is fine, 4-aligned).
        let raw = with_body(&hex("80220010"));
        assert_eq!(
            Message::parse(&raw).unwrap_err(),
            ParseError::AttributeOverrun
        );
        // Value longer than the message.
        let raw = with_body(&hex("80220008 41424344"));
        assert_eq!(
            Message::parse(&raw).unwrap_err(),
            ParseError::AttributeOverrun
        );
        // Value fits but its padding does not: the message length must include it.
        let raw = with_body(&hex("80220005 41424344 00000000 80220001"));
        assert_eq!(
            Message::parse(&raw).unwrap_err(),
            ParseError::AttributeOverrun
        );
        // Wrong lengths for integrity and fingerprint.
        let raw = with_body(&hex("00080004 00000000"));
        assert_eq!(
            Message::parse(&raw).unwrap_err(),
            ParseError::BadAttribute(attr::MESSAGE_INTEGRITY)
        );
        let raw = with_body(&hex("001c000c 00000000 00000000 00000000"));
        assert_eq!(
            Message::parse(&raw).unwrap_err(),
            ParseError::BadAttribute(attr::MESSAGE_INTEGRITY_SHA256)
        );
        let raw = with_body(&hex("80280008 00000000 00000000"));
        assert_eq!(
            Message::parse(&raw).unwrap_err(),
            ParseError::BadAttribute(attr::FINGERPRINT)
        );
        // Something after FINGERPRINT.
        let raw = with_body(&hex("80280004 00000000 80220000"));
        assert_eq!(
            Message::parse(&raw).unwrap_err(),
            ParseError::FingerprintNotLast
        );
        // Zero-length attributes and an empty body are fine.
        assert!(Message::parse(&with_body(&hex("80220000 00250000"))).is_ok());
        assert_eq!(
            Message::parse(&with_body(&[]))
                .unwrap()
                .attributes()
                .count(),
            0
        );
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let mut buf = [0u8; 200];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[3; 12]).unwrap();
        w.add(attr::USERNAME, b"u").unwrap();
        w.add_integrity(b"k").unwrap();
        let n = w.finish();
        // Append by hand what a writer refuses to: SOFTWARE and a second USERNAME after
        // MESSAGE-INTEGRITY, then MI-SHA256 (which counts), then FINGERPRINT.
        let mut raw = buf[..n].to_vec();
        raw.extend_from_slice(&hex("80220004 41424344 00060004 65766521"));
        raw.extend_from_slice(&hex("00080004 00000000")); // second MI, bad length, ignored
        let mi256_at = raw.len();
        raw.extend_from_slice(&hex("001c0010"));
        raw.extend_from_slice(&[0; 16]);
        raw.extend_from_slice(&hex("00060001 78000000")); // after MI-SHA256: ignored
        raw.extend_from_slice(&hex("80280004 00000000"));
        let len = (raw.len() - HEADER_LEN) as u16;
        raw[2..4].copy_from_slice(&len.to_be_bytes());
        let msg = Message::parse(&raw).unwrap();
        let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
        assert_eq!(
            types,
            [
                attr::USERNAME,
                attr::MESSAGE_INTEGRITY,
                attr::MESSAGE_INTEGRITY_SHA256,
                attr::FINGERPRINT
            ]
        );
        assert_eq!(msg.get(attr::USERNAME), Some(&b"u"[..]));
        assert_eq!(msg.get(attr::SOFTWARE), None);
        assert_eq!(msg.integrity_offset(), Some(28));
        assert_eq!(msg.integrity_sha256_offset(), Some(mi256_at));
        // MI stays valid: the header length is adjusted to end right after it.
        assert_eq!(msg.verify_integrity(b"k"), Some(true));
        assert_eq!(msg.verify_fingerprint(), Some(false));
    }

    #[test]
    fn address_codec() {
        let tid = [
            0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        for addr in [
            v4("1.2.3.4:5"),
            v4("255.255.255.255:65535"),
            v4("[::1]:3478"),
            v4("[fe80::1:2:3:4]:0"),
        ] {
            let mut out = [0u8; 20];
            let n = encode_address(addr, &mut out).unwrap();
            assert_eq!(n, address_len(&addr));
            assert_eq!(decode_address(&out[..n]), Ok(addr));
            let n = encode_xor_address(addr, &tid, &mut out).unwrap();
            assert_eq!(decode_xor_address(&out[..n], &tid), Ok(addr));
            assert_eq!(
                encode_address(addr, &mut out[..n - 1]),
                Err(WriteError::BufferTooSmall)
            );
        }
        // Family and length disagree, unknown family, too short.
        assert_eq!(
            decode_address(&hex("0001 0000 00000000 00000000")),
            Err(ParseError::BadAddress)
        );
        assert_eq!(
            decode_address(&hex("0002 0000 00000000")),
            Err(ParseError::BadAddress)
        );
        assert_eq!(
            decode_address(&hex("0003 0000 00000000")),
            Err(ParseError::BadAddress)
        );
        assert_eq!(decode_address(&hex("0001 00")), Err(ParseError::BadAddress));
        assert_eq!(decode_address(&[]), Err(ParseError::BadAddress));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            decode_address(&hex("00010050 c0000201")),
            Ok(SocketAddr::new(ip, 80))
        );
    }

    #[test]
    fn writer_error_code_and_unknown_attributes() {
        let mut buf = [0u8; 100];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Error, &[0; 12]).unwrap();
        assert_eq!(w.add_error_code(299, "x"), Err(WriteError::BadValue));
        assert_eq!(w.add_error_code(700, "x"), Err(WriteError::BadValue));
        w.add_error_code(420, "Unknown Attribute").unwrap();
        w.add_unknown_attributes(&[0x0003, 0x0027, 0x7777]).unwrap();
        let n = w.finish();
        let expected = hex("0111 0028 2112a442 000000000000000000000000
             0009 0015 00000414 556e6b6e 6f776e20 41747472 69627574 65000000
             000a 0006 00030027 77770000");
        assert_eq!(buf[..n], expected[..]);
    }

    #[test]
    fn writer_errors() {
        let mut tiny = [0u8; 19];
        assert_eq!(
            Writer::new(&mut tiny, method::BINDING, Class::Request, &[0; 12]).unwrap_err(),
            WriteError::BufferTooSmall
        );
        let mut buf = [0u8; 40];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[0; 12]).unwrap();
        assert_eq!(
            w.add(attr::SOFTWARE, &[0; 17]),
            Err(WriteError::BufferTooSmall)
        );
        assert_eq!(w.len(), HEADER_LEN); // nothing was written
        w.add(attr::SOFTWARE, &[0; 16]).unwrap();
        assert_eq!(w.add_fingerprint(), Err(WriteError::BufferTooSmall));
        let mut buf = [0u8; 70000];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[0; 12]).unwrap();
        assert_eq!(w.add(attr::DATA, &[0; 65536]), Err(WriteError::TooLong));
        w.add(attr::DATA, &[0; 65500]).unwrap();
        assert_eq!(w.add(attr::DATA, &[0; 32]), Err(WriteError::TooLong));
        // Ordering: nothing but MI-SHA256/FINGERPRINT after MI, nothing after FINGERPRINT.
        let mut buf = [0u8; 200];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[0; 12]).unwrap();
        w.add_integrity(b"k").unwrap();
        assert_eq!(w.add(attr::SOFTWARE, b"x"), Err(WriteError::Misordered));
        assert_eq!(w.add_integrity(b"k"), Err(WriteError::Misordered));
        w.add_fingerprint().unwrap();
        assert_eq!(w.add_fingerprint(), Err(WriteError::Misordered));
        assert_eq!(w.add_integrity_sha256(b"k"), Err(WriteError::Misordered));
        assert_eq!(
            Writer::resume(&mut buf, 22).unwrap_err(),
            WriteError::BadValue
        );
        assert_eq!(
            Writer::resume(&mut buf, 204).unwrap_err(),
            WriteError::BufferTooSmall
        );
    }

    #[test]
    fn writer_zeroes_padding_over_old_bytes() {
        let mut buf = [0xffu8; 64];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[0; 12]).unwrap();
        w.add(attr::USERNAME, b"a").unwrap();
        let n = w.finish();
        assert_eq!(
            buf[..n],
            hex("00010008 2112a442 000000000000000000000000 00060001 61000000")[..]
        );
    }

    mod interop {
        //! Cross-checks with webrtc-rs `stun`, an implementation written elsewhere.
        use super::super::*;
        use stun::agent::TransactionId;
        use stun::attributes::{ATTR_SOFTWARE, ATTR_USERNAME};
        use stun::error_code::{CODE_UNKNOWN_ATTRIBUTE, ErrorCodeAttribute};
        use stun::fingerprint::FINGERPRINT;
        use stun::integrity::MessageIntegrity;
        use stun::message::{BINDING_REQUEST, Getter, Message as Theirs, Setter};
        use stun::textattrs::TextAttribute;
        use stun::uattrs::UnknownAttributes;
        use stun::xoraddr::XorMappedAddress;

        fn decode_theirs(raw: &[u8]) -> Theirs {
            let mut m = Theirs::new();
            m.unmarshal_binary(raw).unwrap();
            m
        }

        #[test]
        fn they_read_what_we_write() {
            for addr in ["203.0.113.9:61000", "[2001:db8::42]:1"] {
                let addr: SocketAddr = addr.parse().unwrap();
                let mut buf = [0u8; 256];
                let mut w =
                    Writer::new(&mut buf, method::BINDING, Class::Success, &[5; 12]).unwrap();
                w.add(attr::SOFTWARE, b"confnode").unwrap();
                w.add_xor_address(attr::XOR_MAPPED_ADDRESS, addr).unwrap();
                w.add_integrity(b"secret").unwrap();
                w.add_fingerprint().unwrap();
                let n = w.finish();
                let mut theirs = decode_theirs(&buf[..n]);
                assert_eq!(theirs.transaction_id.0, [5; 12]);
                assert_eq!(theirs.typ.value(), 0x0101);
                let mut xor = XorMappedAddress::default();
                xor.get_from(&theirs).unwrap();
                assert_eq!(SocketAddr::new(xor.ip, xor.port), addr);
                let software = TextAttribute::get_from_as(&theirs, ATTR_SOFTWARE).unwrap();
                assert_eq!(software.text, "confnode");
                FINGERPRINT.check(&theirs).unwrap();
                MessageIntegrity::new_short_term_integrity("secret".into())
                    .check(&mut theirs)
                    .unwrap();
            }
        }

        #[test]
        fn they_read_our_error_response() {
            let mut buf = [0u8; 256];
            let mut w = Writer::new(&mut buf, method::BINDING, Class::Error, &[6; 12]).unwrap();
            w.add_error_code(420, "Unknown Attribute").unwrap();
            w.add_unknown_attributes(&[0x0003, 0x0027, 0x1234]).unwrap();
            w.add_fingerprint().unwrap();
            let n = w.finish();
            let theirs = decode_theirs(&buf[..n]);
            let mut code = ErrorCodeAttribute::default();
            code.get_from(&theirs).unwrap();
            assert!(code.code == CODE_UNKNOWN_ATTRIBUTE);
            assert_eq!(code.reason, b"Unknown Attribute");
            let mut unknown = UnknownAttributes(Vec::new());
            unknown.get_from(&theirs).unwrap();
            let types: Vec<u16> = unknown.0.iter().map(|t| t.value()).collect();
            assert_eq!(types, [0x0003, 0x0027, 0x1234]);
            FINGERPRINT.check(&theirs).unwrap();
        }

        #[test]
        fn we_read_what_they_write() {
            let mut theirs = Theirs::new();
            let peer: SocketAddr = "[2001:db8::7]:4242".parse().unwrap();
            let setters: Vec<Box<dyn Setter>> = vec![
                Box::new(TransactionId::new()),
                Box::new(BINDING_REQUEST),
                Box::new(TextAttribute::new(ATTR_USERNAME, "alice".into())),
                Box::new(XorMappedAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
                Box::new(MessageIntegrity::new_long_term_integrity(
                    "alice".into(),
                    "confnode".into(),
                    "pw".into(),
                )),
                Box::new(FINGERPRINT),
            ];
            theirs.build(&setters).unwrap();
            let msg = Message::parse(&theirs.raw).unwrap();
            assert_eq!(
                (msg.method(), msg.class()),
                (method::BINDING, Class::Request)
            );
            assert_eq!(msg.transaction_id(), &theirs.transaction_id.0);
            assert_eq!(msg.get(attr::USERNAME), Some(&b"alice"[..]));
            assert_eq!(msg.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(peer)));
            assert_eq!(msg.verify_fingerprint(), Some(true));
            let key = long_term_key(b"alice", b"confnode", b"pw");
            assert_eq!(msg.verify_integrity(&key), Some(true));
        }
    }
}
