//! The Binding method (RFC 8489 §3, §6.3): tells a client the address its request came
//! from. This is the whole of STUN's NAT discovery usage and runs on every datagram
//! the data plane classifies as STUN, so it answers in place and never allocates.
//!
//! Decisions worth knowing:
//! - Responses and error responses that arrive here are well-formed STUN, so not
//!   `Malformed`; but a server never sends requests, so nothing awaits them: they are
//!   `Unhandled` (the data plane counts them with the methods TURN will take over).
//! - A Binding request carrying MESSAGE-INTEGRITY(-SHA256) is an ICE connectivity check
//!   or an authenticated request under credentials this core does not hold (the SFU's
//!   ICE-lite owns short-term credentials): `Unhandled`, because an answer without a
//!   matching MESSAGE-INTEGRITY would be discarded by the client anyway.
//! - CHANGE-REQUEST (RFC 5780 §7.2, RFC 3489 §11.2.4): we have no alternate address or
//!   port to answer from, so a request asking for a change gets 420 with the attribute
//!   listed, as RFC 5780 asks of such a server and as coturn does without
//!   `rfc5780`; `turnutils_stunclient -f` then reports the server lacks RFC 5780 support.
//!   A CHANGE-REQUEST with no flag set asks for nothing we cannot do (classic RFC 3489
//!   clients send one in their first test), so it is answered normally.
//!   RESPONSE-PORT and RFC 3489's RESPONSE-ADDRESS are not understood either: sending
//!   answers anywhere but back to the source would make the node a reflector.
//! - No SOFTWARE attribute: it costs bytes on every answer and tells scanners our version.

use std::net::SocketAddr;

use super::message::{Attribute, Class, Message, WriteError, Writer, attr, method};

/// What [`answer`] did with one STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A reply of this many bytes is in `buf[..n]`; send it back to the source.
    Reply(usize),
    /// A Binding indication (a keepalive): nothing to send.
    Indication,
    /// Well-formed STUN this core does not answer: other methods (TURN, until its core
    /// lands), responses, authenticated Binding requests.
    Unhandled,
    /// Not a well-formed STUN message, or a FINGERPRINT that does not match.
    Malformed,
}

/// Most distinct unknown attributes listed in a 420 answer. A request may carry
/// thousands; listing the first few is enough for the client to see what went wrong.
const MAX_UNKNOWN: usize = 16;

/// `buf[..len]` holds one STUN message that arrived from `src`; `buf` is the whole receive
/// slot (at least 1500 bytes; the caller guarantees that). A reply, if any, is written in
/// place into `buf[..n]` and returned as `Verdict::Reply(n)`.
pub fn answer(buf: &mut [u8], len: usize, src: SocketAddr) -> Verdict {
    let request = match inspect(buf, len) {
        Ok(request) => request,
        Err(verdict) => return verdict,
    };
    match respond(buf, &request, canonical(src)) {
        Ok(n) => Verdict::Reply(n),
        // Only when the caller breaks the size promise: the request was fine, we just
        // could not answer it.
        Err(_) => Verdict::Unhandled,
    }
}

/// What the answer needs from the request, copied out before the buffer is overwritten.
struct Request {
    /// RFC 3489 client (no magic cookie): answered with MAPPED-ADDRESS.
    legacy: bool,
    /// The request carried a (valid) FINGERPRINT, so the answer gets one too (§7.3).
    fingerprint: bool,
    unknown: Unknown,
}

/// The distinct unknown comprehension-required attribute types, in order of appearance.
#[derive(Clone, Copy, Default)]
struct Unknown {
    types: [u16; MAX_UNKNOWN],
    count: usize,
}

impl Unknown {
    fn insert(&mut self, typ: u16) {
        if self.count < MAX_UNKNOWN && !self.as_slice().contains(&typ) {
            self.types[self.count] = typ;
            self.count += 1;
        }
    }

    fn as_slice(&self) -> &[u16] {
        &self.types[..self.count]
    }

    /// RFC 3489 §11.2.9 pads an odd list by repeating an entry; RFC 8489 pads with zeros
    /// (done by the writer). MAX_UNKNOWN is even, so an odd list always has room.
    fn pad_for_rfc3489(&mut self) {
        if self.count % 2 == 1 {
            self.types[self.count] = self.types[0];
            self.count += 1;
        }
    }
}

/// Parses and classifies the request; `Err` carries the verdict when there is no answer.
fn inspect(buf: &[u8], len: usize) -> Result<Request, Verdict> {
    let msg = buf
        .get(..len)
        .and_then(|raw| Message::parse(raw).ok())
        .ok_or(Verdict::Malformed)?;
    if msg.verify_fingerprint() == Some(false) {
        return Err(Verdict::Malformed);
    }
    match (msg.method(), msg.class()) {
        (method::BINDING, Class::Request) => {}
        (method::BINDING, Class::Indication) => return Err(Verdict::Indication),
        _ => return Err(Verdict::Unhandled),
    }
    if msg.integrity_offset().is_some() || msg.integrity_sha256_offset().is_some() {
        return Err(Verdict::Unhandled);
    }
    let mut unknown = Unknown::default();
    for a in msg.attributes() {
        if attr::is_comprehension_required(a.typ) && !understood(&a) {
            unknown.insert(a.typ);
        }
    }
    Ok(Request {
        legacy: !msg.has_magic_cookie(),
        fingerprint: msg.fingerprint_offset().is_some(),
        unknown,
    })
}

/// Comprehension-required attributes a Binding request may carry that we can honour by
/// ignoring them. Credentials are only ever seen here without MESSAGE-INTEGRITY (those
/// requests are `Unhandled`), so USERNAME and friends carry no meaning for the answer.
fn understood(a: &Attribute<'_>) -> bool {
    match a.typ {
        attr::CHANGE_REQUEST => change_request_is_noop(a.value),
        attr::USERNAME
        | attr::USERHASH
        | attr::REALM
        | attr::NONCE
        | attr::PASSWORD_ALGORITHM
        | attr::PRIORITY
        | attr::USE_CANDIDATE => true,
        _ => false,
    }
}

/// A CHANGE-REQUEST with neither "change IP" (0x4) nor "change port" (0x2) set.
fn change_request_is_noop(value: &[u8]) -> bool {
    matches!(value, [_, _, _, flags] if flags & 0x06 == 0)
}

/// Writes the success or 420 answer over the request in `buf`.
fn respond(buf: &mut [u8], request: &Request, src: SocketAddr) -> Result<usize, WriteError> {
    // The header's bytes 4..20 (cookie and transaction id, or RFC 3489's 128-bit id) are
    // the request's and stay: the answer must echo them.
    let mut w = if request.unknown.count == 0 {
        let mut w = Writer::reuse_header(buf, method::BINDING, Class::Success)?;
        if request.legacy {
            w.add_address(attr::MAPPED_ADDRESS, src)?;
        } else {
            w.add_xor_address(attr::XOR_MAPPED_ADDRESS, src)?;
        }
        w
    } else {
        let mut unknown = request.unknown;
        if request.legacy {
            unknown.pad_for_rfc3489();
        }
        let mut w = Writer::reuse_header(buf, method::BINDING, Class::Error)?;
        w.add_error_code(420, "Unknown Attribute")?;
        w.add_unknown_attributes(unknown.as_slice())?;
        w
    };
    if request.fingerprint {
        w.add_fingerprint()?;
    }
    Ok(w.finish())
}

/// An IPv4 client reached through a dual-stack socket shows up as `::ffff:a.b.c.d`; it
/// expects to learn its IPv4 address (and ICE to see the address it checks from).
pub(crate) fn canonical(src: SocketAddr) -> SocketAddr {
    match src {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => src,
        },
        SocketAddr::V4(_) => src,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::tests::hex;

    const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    // What coturn's turnutils_stunclient sends, captured on the wire: a bare Binding
    // request, and with -f (RFC 5780) RESPONSE-PORT plus CHANGE-REQUEST(change IP+port).
    const STUNCLIENT: &str = "00010000 2112a442 66ab5ec9 2266262b fe5853d0";
    const STUNCLIENT_RFC5780: &str = "
        00010010 2112a442 8521f377 4a9d277f dac98da2
        00270004 9eac0000 00030004 00000006";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A receive slot holding a Binding-family message built by `build`.
    fn slot(
        class: Class,
        fingerprint: bool,
        build: impl FnOnce(&mut Writer),
    ) -> ([u8; 1500], usize) {
        let mut buf = [0xAAu8; 1500];
        let mut w = Writer::new(&mut buf, method::BINDING, class, &TID).unwrap();
        build(&mut w);
        if fingerprint {
            w.add_fingerprint().unwrap();
        }
        let n = w.finish();
        (buf, n)
    }

    fn slot_from(bytes: &[u8]) -> ([u8; 1500], usize) {
        let mut buf = [0u8; 1500];
        buf[..bytes.len()].copy_from_slice(bytes);
        (buf, bytes.len())
    }

    fn reply(buf: &mut [u8], len: usize, src: SocketAddr) -> Message<'_> {
        match answer(buf, len, src) {
            Verdict::Reply(n) => Message::parse(&buf[..n]).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn unknown_list(msg: &Message<'_>) -> Vec<u16> {
        let value = msg.get(attr::UNKNOWN_ATTRIBUTES).unwrap();
        value
            .chunks(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect()
    }

    fn assert_420(msg: &Message<'_>) {
        assert_eq!((msg.method(), msg.class()), (method::BINDING, Class::Error));
        let code = msg.get(attr::ERROR_CODE).unwrap();
        assert_eq!(code[..4], [0, 0, 4, 20]);
        assert_eq!(&code[4..], b"Unknown Attribute");
    }

    #[test]
    fn answers_turnutils_stunclient() {
        let request = hex(STUNCLIENT);
        let (mut buf, len) = slot_from(&request);
        let src = addr("198.51.100.7:40000");
        let msg = reply(&mut buf, len, src);
        assert_eq!(
            (msg.method(), msg.class()),
            (method::BINDING, Class::Success)
        );
        assert_eq!(msg.cookie_and_transaction_id()[..], request[4..20]);
        let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
        assert_eq!(types, [attr::XOR_MAPPED_ADDRESS]); // no SOFTWARE, no FINGERPRINT
        assert_eq!(msg.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(src)));
        assert_eq!(msg.as_bytes().len(), 32);
    }

    #[test]
    fn refuses_rfc5780_change_request_with_420() {
        let (mut buf, len) = slot_from(&hex(STUNCLIENT_RFC5780));
        let msg = reply(&mut buf, len, addr("198.51.100.7:40000"));
        assert_420(&msg);
        assert_eq!(
            unknown_list(&msg),
            [attr::RESPONSE_PORT, attr::CHANGE_REQUEST]
        );
        assert_eq!(msg.fingerprint_offset(), None);
    }

    #[test]
    fn change_request_without_flags_is_answered() {
        let (mut buf, len) = slot(Class::Request, false, |w| {
            w.add(attr::CHANGE_REQUEST, &[0, 0, 0, 0]).unwrap();
        });
        let src = addr("198.51.100.7:1");
        let msg = reply(&mut buf, len, src);
        assert_eq!(msg.class(), Class::Success);
        for flags in [2u8, 4, 6] {
            let (mut buf, len) = slot(Class::Request, false, |w| {
                w.add(attr::CHANGE_REQUEST, &[0, 0, 0, flags]).unwrap();
            });
            let msg = reply(&mut buf, len, src);
            assert_420(&msg);
            assert_eq!(unknown_list(&msg), [attr::CHANGE_REQUEST]);
        }
    }

    #[test]
    fn fingerprint_is_checked_and_echoed() {
        for src in ["192.0.2.55:3478", "[2001:db8::55]:3478"] {
            let src = addr(src);
            let (mut buf, len) = slot(Class::Request, true, |_| {});
            let msg = reply(&mut buf, len, src);
            assert_eq!(msg.transaction_id(), &TID);
            assert_eq!(msg.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(src)));
            assert_eq!(msg.verify_fingerprint(), Some(true));
            assert_eq!(
                msg.as_bytes().len(),
                20 + 4 + crate::stun::message::address_len(&src) + 8
            );

            let (mut buf, len) = slot(Class::Request, true, |_| {});
            buf[len - 1] ^= 0x01;
            assert_eq!(answer(&mut buf, len, src), Verdict::Malformed);
        }
    }

    #[test]
    fn ipv6_and_mapped_ipv4_sources() {
        let (mut buf, len) = slot(Class::Request, false, |_| {});
        let v6 = addr("[2001:db8:1:2:3:4:5:6]:65535");
        assert_eq!(
            reply(&mut buf, len, v6).xor_address(attr::XOR_MAPPED_ADDRESS),
            Some(Ok(v6))
        );
        let (mut buf, len) = slot(Class::Request, false, |_| {});
        let mapped = addr("[::ffff:203.0.113.1]:5000");
        let expected = addr("203.0.113.1:5000");
        let msg = reply(&mut buf, len, mapped);
        assert_eq!(
            msg.xor_address(attr::XOR_MAPPED_ADDRESS),
            Some(Ok(expected))
        );
    }

    #[test]
    fn rfc3489_client_gets_mapped_address_and_its_whole_id() {
        let request = hex("00010000 0123456789abcdef fedcba9876543210");
        let (mut buf, len) = slot_from(&request);
        let src = addr("192.0.2.1:1234");
        let msg = reply(&mut buf, len, src);
        assert!(!msg.has_magic_cookie());
        assert_eq!(msg.cookie_and_transaction_id()[..], request[4..20]);
        assert_eq!(msg.address(attr::MAPPED_ADDRESS), Some(Ok(src)));
        assert_eq!(msg.get(attr::XOR_MAPPED_ADDRESS), None);
    }

    #[test]
    fn rfc3489_unknown_list_is_padded_by_repeating() {
        // RESPONSE-ADDRESS: answers elsewhere are refused.
        let request = hex("00010008 0123456789abcdef fedcba9876543210 00020004 00000000");
        let (mut buf, len) = slot_from(&request);
        let msg = reply(&mut buf, len, addr("192.0.2.1:1234"));
        assert_420(&msg);
        assert_eq!(
            unknown_list(&msg),
            [attr::RESPONSE_ADDRESS, attr::RESPONSE_ADDRESS]
        );
    }

    #[test]
    fn unknown_comprehension_required_gets_420() {
        let (mut buf, len) = slot(Class::Request, true, |w| {
            w.add(0x7001, b"x").unwrap();
            w.add(0x8fff, b"optional, ignored").unwrap();
            w.add(0x7002, b"").unwrap();
            w.add(0x7001, b"again").unwrap();
        });
        let msg = reply(&mut buf, len, addr("192.0.2.1:1"));
        assert_420(&msg);
        assert_eq!(msg.transaction_id(), &TID);
        assert_eq!(unknown_list(&msg), [0x7001, 0x7002]);
        assert_eq!(msg.verify_fingerprint(), Some(true));
    }

    #[test]
    fn unknown_list_is_capped() {
        let (mut buf, len) = slot(Class::Request, false, |w| {
            for typ in 0x7000..0x7100 {
                w.add(typ, &[]).unwrap();
            }
        });
        let msg = reply(&mut buf, len, addr("192.0.2.1:1"));
        assert_420(&msg);
        let expected: Vec<u16> = (0x7000..0x7000 + MAX_UNKNOWN as u16).collect();
        assert_eq!(unknown_list(&msg), expected);
    }

    #[test]
    fn optional_and_ice_attributes_are_fine() {
        let (mut buf, len) = slot(Class::Request, true, |w| {
            w.add(attr::SOFTWARE, b"some client").unwrap();
            w.add(attr::USERNAME, b"a:b").unwrap();
            w.add_u32(attr::PRIORITY, 1).unwrap();
            w.add(attr::USE_CANDIDATE, &[]).unwrap();
            w.add(attr::ICE_CONTROLLING, &[0; 8]).unwrap();
        });
        let src = addr("192.0.2.1:1");
        let msg = reply(&mut buf, len, src);
        assert_eq!(msg.class(), Class::Success);
        assert_eq!(msg.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(src)));
    }

    #[test]
    fn verdicts_without_answer() {
        let src = addr("192.0.2.1:1");
        let (mut buf, len) = slot(Class::Indication, true, |_| {});
        assert_eq!(answer(&mut buf, len, src), Verdict::Indication);
        for class in [Class::Success, Class::Error] {
            let (mut buf, len) = slot(class, false, |_| {});
            assert_eq!(answer(&mut buf, len, src), Verdict::Unhandled);
        }
        for m in [
            method::ALLOCATE,
            method::REFRESH,
            method::SEND,
            method::CHANNEL_BIND,
        ] {
            let mut buf = [0u8; 1500];
            let class = if m == method::SEND {
                Class::Indication
            } else {
                Class::Request
            };
            let n = Writer::new(&mut buf, m, class, &TID).unwrap().finish();
            assert_eq!(answer(&mut buf, n, src), Verdict::Unhandled);
        }
        // An ICE check with MESSAGE-INTEGRITY belongs to whoever holds the credentials.
        let (mut buf, len) = slot_from(&hex("00010058 2112a442 b7e7a701 bc34d686 fa87dfae
             80220010 5354554e 20746573 7420636c 69656e74 00240004 6e0001ff
             80290008 932ff9b1 51263b36 00060009 6576746a 3a683676 59202020
             00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2 80280004 e57a3bcf"));
        let before = buf;
        assert_eq!(answer(&mut buf, len, src), Verdict::Unhandled);
        assert_eq!(buf, before, "no answer means the buffer is untouched");
        let (mut buf, len) = slot(Class::Request, false, |w| {
            w.add_integrity_sha256(b"k").unwrap()
        });
        assert_eq!(answer(&mut buf, len, src), Verdict::Unhandled);
    }

    #[test]
    fn malformed_input() {
        let src = addr("192.0.2.1:1");
        let mut buf = [0u8; 1500];
        assert_eq!(answer(&mut buf, 0, src), Verdict::Malformed);
        assert_eq!(answer(&mut buf, 19, src), Verdict::Malformed);
        assert_eq!(answer(&mut buf, 1501, src), Verdict::Malformed);
        assert_eq!(answer(&mut [], 20, src), Verdict::Malformed);
        let (mut buf, len) = slot(Class::Request, false, |w| {
            w.add(attr::SOFTWARE, b"x").unwrap()
        });
        assert_eq!(answer(&mut buf, len - 4, src), Verdict::Malformed); // length field disagrees
        buf[0] = 0x80;
        assert_eq!(answer(&mut buf, len, src), Verdict::Malformed);
        let (mut buf, len) = slot(Class::Request, false, |_| {});
        buf[2..4].copy_from_slice(&8u16.to_be_bytes()); // attribute runs past the end
        buf[20..24].copy_from_slice(&hex("80220008"));
        assert_eq!(answer(&mut buf, len + 8, src), Verdict::Malformed);
    }

    #[test]
    fn too_small_a_slot_is_not_an_answer() {
        // The caller promises 1500 bytes; if it breaks that, no panic and no reply.
        let request = hex(STUNCLIENT);
        let mut buf = request.clone();
        assert_eq!(
            answer(&mut buf, 20, addr("192.0.2.1:1")),
            Verdict::Unhandled
        );
    }

    #[test]
    fn webrtc_stun_reads_our_answer() {
        use stun::message::{Getter, Message as Theirs};
        use stun::xoraddr::XorMappedAddress;
        let (mut buf, len) = slot(Class::Request, true, |_| {});
        let src = addr("[2001:db8::9]:9");
        let Verdict::Reply(n) = answer(&mut buf, len, src) else {
            panic!("no reply");
        };
        let mut theirs = Theirs::new();
        theirs.unmarshal_binary(&buf[..n]).unwrap();
        assert_eq!(theirs.typ.value(), 0x0101);
        assert_eq!(theirs.transaction_id.0, TID);
        let mut xor = XorMappedAddress::default();
        xor.get_from(&theirs).unwrap();
        assert_eq!(SocketAddr::new(xor.ip, xor.port), src);
        stun::fingerprint::FINGERPRINT.check(&theirs).unwrap();
    }
}
