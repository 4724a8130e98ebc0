//! The way from a publisher's track to one receiver, without the receiver's lock.
//!
//! A receiving session is written by the worker that answers its checks and DTLS, and
//! read by the workers of every publisher it receives from. What forwarding needs of it
//! is split off into a [`ReceiverLink`] (as TLS libraries split a connection into a
//! sending and a receiving half): the receiver's outbound SRTP master key, set once when
//! its DTLS connects, and where its media goes, which its ICE may move. Each stream
//! forwarded to the receiver holds an [`Egress`] under its publisher's lock: its own
//! SRTP context for its SSRCs (made on the first packet after the key arrived) and a
//! copy of the address, refreshed when the link's version changes. So forwarding,
//! retransmission and sender reports take no lock of the receiver; the link's address
//! mutex is a leaf, taken only when the address moved, and never while waiting for
//! another lock. The receiver's transport-wide sequence numbers are one atomic counter
//! of the link ([`SentPackets`]), taken as each packet is sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::bwe::{ProbePace, SentPackets};
use super::srtp::{MasterKey, SrtpContext, SrtpError};

/// SSRCs one forwarded stream sends: its own and its RTX.
const STREAM_SSRCS: usize = 2;

/// Where a receiver's media goes: a client address and the listener it leaves through.
pub(crate) type Peer = (SocketAddr, usize);

/// What a receiving session shares with the streams forwarded to it.
///
/// Forwarding reads it once per packet and receiver, and with one audio packet fanned
/// out to a hundred listeners 20 ms apart it is usually cold by then: what every packet
/// reads (whether the receiver takes media, the version of its address, the
/// transport-wide counter and the probe's end) comes first, in the link's first cache
/// line, so that each receiver costs one miss here rather than several.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub(crate) struct ReceiverLink {
    /// Bumped after every change of `peer`.
    version: AtomicU32,
    /// The receiver's DTLS connected and the session is not closed: it takes media.
    receiving: AtomicBool,
    /// The receiver transport's transport-wide sequence numbers and what went out
    /// under them, for reading its transport-cc feedback.
    pub(crate) sent: SentPackets,
    /// The pace of a probe of the receiver's path, when one runs.
    pub(crate) probe: ProbePace,
    peer: Mutex<Option<Peer>>,
    /// Our outbound SRTP master key of the receiver's DTLS (the server's write key).
    key: OnceLock<MasterKey>,
}

impl ReceiverLink {
    pub(crate) fn new() -> ReceiverLink {
        ReceiverLink::default()
    }

    /// The receiver's DTLS connected: streams may encrypt from now on. Only the first
    /// key counts (a session connects once).
    pub(crate) fn set_key(&self, key: MasterKey) {
        let _ = self.key.set(key);
    }

    /// Whether the receiver takes media (see [`Egress::receiving`]).
    pub(crate) fn set_receiving(&self, on: bool) {
        self.receiving.store(on, Ordering::SeqCst);
    }

    /// The receiver's media moved to `peer` (a nomination, or its DTLS connected).
    pub(crate) fn set_peer(&self, peer: Option<Peer>) {
        let mut held = self.peer.lock().unwrap_or_else(PoisonError::into_inner);
        if *held != peer {
            *held = peer;
            self.version.fetch_add(1, Ordering::Release);
        }
    }
}

/// One forwarded stream's way to its receiver.
#[derive(Debug)]
pub(crate) struct Egress {
    link: Arc<ReceiverLink>,
    /// This stream's SRTP state under the receiver's key (its SSRC and RTX SSRC only).
    srtp: Option<Box<SrtpContext>>,
    peer: Option<Peer>,
    /// The link's version `peer` was read at.
    seen: u32,
}

impl Egress {
    pub(crate) fn new(link: Arc<ReceiverLink>) -> Egress {
        let seen = link.version.load(Ordering::Acquire).wrapping_sub(1);
        Egress {
            link,
            srtp: None,
            peer: None,
            seen,
        }
    }

    /// Whether the receiver takes media now: its DTLS connected and its session is not
    /// closed (one load from the link, which the packet reads next anyway).
    pub(crate) fn receiving(&self) -> bool {
        self.link.receiving.load(Ordering::Relaxed)
    }

    /// Reads what sending the next packet of `ssrc` reads first, for a caller that
    /// reads ahead for several receivers (see `Downstream::read_ahead`): the address
    /// held, the slot the transport-wide number goes to, and the SRTP context's state
    /// for `ssrc` ([`SrtpContext::knows`]).
    pub(crate) fn read_ahead(&self, ssrc: u32) {
        std::hint::black_box((
            self.seen,
            self.peer.is_some(),
            self.link.sent.read_ahead(),
            self.srtp.as_ref().is_some_and(|c| c.knows(ssrc)),
        ));
    }

    /// Where to send, once the receiver's DTLS connected and its address is known;
    /// then the stream's SRTP context exists too. Allocates once per stream (the
    /// context), never per packet.
    fn ready(&mut self) -> Option<Peer> {
        let version = self.link.version.load(Ordering::Acquire);
        if version != self.seen {
            self.peer = *self
                .link
                .peer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.seen = version;
        }
        let peer = self.peer?;
        if self.srtp.is_none() {
            let key = self.link.key.get()?;
            self.srtp = Some(Box::new(SrtpContext::new(key, STREAM_SSRCS).ok()?));
        }
        Some(peer)
    }

    /// Protects the RTP packet in `out[..len]` (with room for the tag behind it) and
    /// sends it to the receiver; false when the receiver cannot take it yet. Where the
    /// packet has a transport-wide sequence number (at `transport_seq_at`, from
    /// [`crate::sfu::forward::Forwarder::transport_seq_at`]), it gets the receiver's
    /// next one, and the packet is remembered under it as sent at `now`.
    pub(crate) fn send_rtp(
        &mut self,
        out: &mut [u8],
        len: usize,
        transport_seq_at: Option<usize>,
        now: u64,
        send: &mut impl FnMut(&[u8], SocketAddr, usize),
    ) -> bool {
        let Some(peer) = self.ready() else {
            return false;
        };
        if let Some(at) = transport_seq_at
            && at + 2 <= len
            && let Some(field) = out.get_mut(at..at + 2)
        {
            field.copy_from_slice(&self.link.sent.stamp(len, now).to_be_bytes());
        }
        self.protect_and_send(out, len, peer, SrtpContext::protect_rtp, send)
    }

    /// Bytes of padding a probe of the receiver's path wants sent by `now`.
    pub(crate) fn probe_owed(&self, now: u64) -> u64 {
        self.link.probe.owed(now, &self.link.sent)
    }

    /// The same for RTCP in `out[..len]` (a sender report of this stream).
    pub(crate) fn send_rtcp(
        &mut self,
        out: &mut [u8],
        len: usize,
        send: &mut impl FnMut(&[u8], SocketAddr, usize),
    ) -> bool {
        let Some(peer) = self.ready() else {
            return false;
        };
        self.protect_and_send(out, len, peer, SrtpContext::protect_rtcp, send)
    }

    fn protect_and_send(
        &mut self,
        out: &mut [u8],
        len: usize,
        (to, via): Peer,
        protect: fn(&mut SrtpContext, &mut [u8], usize) -> Result<usize, SrtpError>,
        send: &mut impl FnMut(&[u8], SocketAddr, usize),
    ) -> bool {
        let Some(srtp) = self.srtp.as_deref_mut() else {
            return false;
        };
        match protect(srtp, out, len) {
            Ok(n) => {
                send(&out[..n], to, via);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::srtp::SrtpProfile;

    fn key(seed: u8) -> MasterKey {
        let profile = SrtpProfile::AeadAes128Gcm;
        MasterKey::new(
            profile,
            &[seed; 16][..profile.master_key_len()],
            &[seed; 12][..profile.master_salt_len()],
        )
        .unwrap()
    }

    fn rtp(ssrc: u32, seq: u16) -> [u8; 64] {
        let mut p = [0u8; 64];
        p[0] = 0x80;
        p[1] = 96;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p
    }

    #[test]
    fn sends_once_keyed_and_addressed_and_follows_the_address() {
        let link = Arc::new(ReceiverLink::new());
        let mut egress = Egress::new(link.clone());
        let mut sent: Vec<(Vec<u8>, SocketAddr, usize)> = Vec::new();
        let mut send = |d: &[u8], to: SocketAddr, via: usize| sent.push((d.to_vec(), to, via));
        let mut p = rtp(7, 1);
        assert!(
            !egress.send_rtp(&mut p, 20, None, 0, &mut send),
            "no key, no address"
        );
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        link.set_peer(Some((a, 0)));
        assert!(
            !egress.send_rtp(&mut p, 20, None, 0, &mut send),
            "no key yet"
        );
        link.set_key(key(1));
        link.set_key(key(2)); // ignored: the first key stands
        let mut p = rtp(7, 2);
        assert!(egress.send_rtp(&mut p, 20, None, 0, &mut send));
        let b: SocketAddr = "192.0.2.2:6000".parse().unwrap();
        link.set_peer(Some((b, 1)));
        let mut p = rtp(7, 3);
        assert!(egress.send_rtp(&mut p, 20, None, 0, &mut send));
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[0].1, sent[0].2), (a, 0));
        assert_eq!((sent[1].1, sent[1].2), (b, 1));
        // What went out decrypts under the receiver's key.
        let mut receiver = SrtpContext::new(&key(1), 4).unwrap();
        for (mut d, ..) in sent {
            assert_eq!(receiver.unprotect_rtp(&mut d), Ok(20));
        }
    }

    #[test]
    fn streams_of_one_receiver_share_its_transport_wide_numbers() {
        let link = Arc::new(ReceiverLink::new());
        link.set_peer(Some(("192.0.2.1:5000".parse().unwrap(), 0)));
        link.set_key(key(1));
        let (mut audio, mut video) = (Egress::new(link.clone()), Egress::new(link.clone()));
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut send = |d: &[u8], _: SocketAddr, _: usize| sent.push(d.to_vec());
        // A one-byte extension block with the transport-wide number (id 3) at 17..19.
        let with_ext = |ssrc: u32, seq: u16| {
            let mut p = rtp(ssrc, seq);
            p[0] |= 0x10;
            p[12..16].copy_from_slice(&[0xBE, 0xDE, 0, 1]);
            p[16..20].copy_from_slice(&[0x31, 0xFF, 0xFF, 0]);
            p
        };
        for i in 0..6u16 {
            let (egress, ssrc) = if i % 2 == 0 {
                (&mut audio, 7)
            } else {
                (&mut video, 8)
            };
            let mut p = with_ext(ssrc, 100 + i);
            assert!(egress.send_rtp(&mut p, 40, Some(17), 1_000 + u64::from(i), &mut send));
        }
        // A place past the packet's end: sent without taking a number.
        let mut p = with_ext(7, 200);
        assert!(audio.send_rtp(&mut p, 40, Some(39), 2_000, &mut send));
        let mut receiver = SrtpContext::new(&key(1), 4).unwrap();
        for (i, mut d) in sent.into_iter().take(6).enumerate() {
            assert_eq!(receiver.unprotect_rtp(&mut d), Ok(40));
            assert_eq!(u16::from_be_bytes([d[17], d[18]]), i as u16);
            let packet = link.sent.get(i as u64, 5_000).unwrap();
            assert_eq!((packet.size, packet.at), (40, 1_000 + i as u64));
        }
        assert_eq!(link.sent.get(6, 5_000), None);
    }
}
