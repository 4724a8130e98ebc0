//! Tests of the media sessions through both planes.

use std::net::SocketAddr;
use std::sync::Arc;

use super::data::forward_rtp;
use super::*;
use crate::metrics::{MediaDrop, SfuMetrics};
use crate::sfu::rtp::RtpHeader;
use crate::sfu::sdp::{PublishOffer, SdpError};
use crate::stun::message::Message;
use crate::stun::message::{Class, Writer, attr, method};
use std::cell::RefCell;

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

fn sessions() -> Arc<MediaSessions> {
    Arc::new(MediaSessions::new(
        crate::node::clock_epoch(),
        vec!["192.0.2.1:3478".parse().unwrap()],
        Arc::new(crate::node::dtls_identity().unwrap()),
        SfuMetrics::default(),
        [7; 32],
    ))
}

/// Now on the sessions' clock, in ms and in µs (the tests run on real time).
fn ms(s: &MediaSessions) -> u64 {
    s.epoch().elapsed().as_millis() as u64
}

fn us(s: &MediaSessions) -> u64 {
    s.epoch().elapsed().as_micros() as u64
}

fn ice_line<'a>(sdp: &'a str, name: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.strip_prefix(&format!("a={name}:")))
        .unwrap()
}

fn check(buf: &mut [u8], ufrag: &str, pwd: &str) -> usize {
    check_nominating(buf, ufrag, pwd, true)
}

/// A check of its own: a fresh transaction id each (a copy of a nomination from
/// another address would be refused as a replay).
fn check_nominating(buf: &mut [u8], ufrag: &str, pwd: &str, nominate: bool) -> usize {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut transaction = [9; 12];
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    transaction[8..].copy_from_slice(&n.to_be_bytes());
    let mut w = Writer::new(buf, method::BINDING, Class::Request, &transaction).unwrap();
    w.add(attr::USERNAME, format!("{ufrag}:Clnt").as_bytes())
        .unwrap();
    w.add(attr::ICE_CONTROLLING, &[1; 8]).unwrap();
    if nominate {
        w.add(attr::USE_CANDIDATE, &[]).unwrap();
    }
    w.add_integrity(pwd.as_bytes()).unwrap();
    w.add_fingerprint().unwrap();
    w.finish()
}

#[test]
fn publish_registers_once_and_checks_are_answered() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    let answer = s.publish("room", "p1", &offer, ms(&s)).unwrap();
    assert!(answer.contains("a=ice-lite"));
    assert!(answer.contains("a=setup:passive"));
    let fingerprint = s.identity().fingerprint_hex().to_owned();
    assert!(answer.contains(&format!("a=fingerprint:sha-256 {fingerprint}")));
    assert!(answer.contains("192.0.2.1 3478 typ host"), "{answer}");
    assert_eq!(
        s.publish("room", "p1", &offer, ms(&s)),
        Err(PublishRefusal::AlreadyPublishing)
    );
    let ufrag = ice_line(&answer, "ice-ufrag").to_owned();
    let pwd = ice_line(&answer, "ice-pwd").to_owned();

    let mut cache = SessionCache::new(3, s.clone());
    let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
    let mut buf = [0u8; 1500];
    let n = check(&mut buf, &ufrag, &pwd);
    let CheckVerdict::Reply(len) = cache.answer_check(&mut buf, n, src, 0, ms(&s)) else {
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
        cache.answer_check(&mut buf, n, src, 0, 0),
        CheckVerdict::NotOurs
    );

    // Removal closes the session; the cache forgets it.
    s.remove_participant("room", "p1");
    assert!(session.is_closed());
    assert!(s.is_empty());
    let n = check(&mut buf, &ufrag, &pwd);
    assert_eq!(
        cache.answer_check(&mut buf, n, src, 0, 0),
        CheckVerdict::NotOurs
    );
    assert!(s.publish("room", "p1", &offer, ms(&s)).is_ok());
    s.remove_room("room");
    assert!(s.is_empty());
    assert!(!s.is_publishing("room", "p1"));
}

/// The browser's DTLS side: dimpl as the active end, with its own certificate.
fn dtls_client(now: Instant) -> (dimpl::Dtls, crate::sfu::sdp::Fingerprint) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let certificate = dimpl::DtlsCertificate {
        certificate: cert.der().to_vec(),
        private_key: key.serialize_der(),
    };
    let fingerprint = crate::sfu::dtls::fingerprint_of(&certificate.certificate);
    let config = dimpl::Config::builder()
        .with_crypto_provider(dimpl::crypto::rust_crypto::default_provider())
        .build()
        .unwrap();
    let mut dtls = dimpl::Dtls::new_12(Arc::new(config), certificate, now);
    dtls.set_active(true);
    // The client speaks first once its clock starts.
    dtls.handle_timeout(now).unwrap();
    (dtls, fingerprint)
}

/// Drains the client: its records, and its keying material once it has it.
fn poll_client(
    dtls: &mut dimpl::Dtls,
    keys: &mut Option<(crate::sfu::srtp::SrtpProfile, Vec<u8>)>,
) -> Vec<Vec<u8>> {
    use crate::sfu::srtp::SrtpProfile;
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    loop {
        match dtls.poll_output(&mut buf) {
            dimpl::Output::Packet(p) => out.push(p.to_vec()),
            dimpl::Output::Timeout(_) => return out,
            dimpl::Output::KeyingMaterial(km, profile) => {
                let profile = match profile {
                    dimpl::SrtpProfile::AEAD_AES_128_GCM => SrtpProfile::AeadAes128Gcm,
                    dimpl::SrtpProfile::AEAD_AES_256_GCM => SrtpProfile::AeadAes256Gcm,
                    _ => SrtpProfile::Aes128CmHmacSha1_80,
                };
                *keys = Some((profile, km.to_vec()));
            }
            _ => {}
        }
    }
}

#[test]
fn dtls_and_srtp_from_a_validated_address_reach_the_session() {
    use crate::sfu::srtp::{SrtpContext, split_keying_material};
    let s = sessions();
    let (mut client, client_fp) = dtls_client(s.epoch());
    let fixed = "6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:\
                 DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC";
    let offer_sdp = OFFER.replace(fixed, &client_fp.to_string());
    let offer = PublishOffer::parse(offer_sdp.as_bytes()).unwrap();
    assert_eq!(offer.fingerprint, client_fp);
    let answer = s.publish("room", "p1", &offer, ms(&s)).unwrap();
    let (ufrag, pwd) = (ice_line(&answer, "ice-ufrag"), ice_line(&answer, "ice-pwd"));
    let session = s.lookup(ufrag.as_bytes()).unwrap();
    let mut cache = SessionCache::new(0, s.clone());
    let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
    let stranger: SocketAddr = "198.51.100.3:5000".parse().unwrap();
    let sent: RefCell<Vec<(Vec<u8>, SocketAddr, usize)>> = RefCell::default();
    let mut send =
        |d: &[u8], to: SocketAddr, via: usize| sent.borrow_mut().push((d.to_vec(), to, via));
    let now = ms(&s);

    // Before any check, nothing is accepted from the address.
    let mut rtp = [
        0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4, 0, 0, 0, 0,
    ];
    assert_eq!(
        cache.handle_media(&mut rtp, src, 0, now * 1000, &mut send),
        MediaVerdict::Dropped(MediaDrop::Unvalidated)
    );
    let mut buf = [0u8; 1500];
    let n = check(&mut buf, ufrag, pwd);
    assert!(matches!(
        cache.answer_check(&mut buf, n, src, 0, now),
        CheckVerdict::Reply(_)
    ));
    // Validated now, but no keys yet; another address still refused.
    assert_eq!(
        cache.handle_media(&mut rtp, src, 0, now * 1000, &mut send),
        MediaVerdict::Dropped(MediaDrop::NoKeys)
    );
    let mut hello = [22u8, 0xFE, 0xFD, 0, 0];
    assert_eq!(
        cache.handle_media(&mut hello, stranger, 0, now * 1000, &mut send),
        MediaVerdict::Dropped(MediaDrop::Unvalidated)
    );
    assert!(sent.borrow().is_empty());

    // The handshake, records carried by hand; the first server flight is resent by
    // the worker's timer when it is not answered.
    let mut keys = None;
    let mut client_records = Vec::new();
    let mut retransmitted = false;
    for _ in 0..20 {
        for mut record in poll_client(&mut client, &mut keys) {
            client_records.push(record.clone());
            assert_eq!(
                cache.handle_media(&mut record, src, 1, us(&s), &mut send),
                MediaVerdict::Dtls
            );
        }
        if !retransmitted && !sent.borrow().is_empty() {
            let due = cache.poll_timeout().expect("a handshake timer");
            let before = sent.borrow().len();
            cache.handle_timeout(due, &mut send);
            assert!(sent.borrow().len() > before, "flight not retransmitted");
            sent.borrow_mut().truncate(before);
            retransmitted = true;
        }
        let records: Vec<_> = sent.borrow_mut().drain(..).collect();
        for (record, to, via) in records {
            assert_eq!((to, via), (src, 1), "answered where the client is");
            client.handle_packet(&record).unwrap();
        }
        if session.is_dtls_connected() && keys.is_some() {
            break;
        }
    }
    assert!(retransmitted);
    assert!(session.is_dtls_connected(), "{:?}", session.media().dtls);
    assert_eq!(s.metrics().dtls_connected.get(), 1);
    assert_eq!(
        session.media().dtls_due,
        None,
        "no DTLS timer once connected"
    );

    // The hostile-traffic test's finding: records a connected endpoint throws away were
    // counted nowhere. Junk of a later epoch is a drop now; the client's flights again
    // are answered with our last flight (at most once per retransmission timeout, as
    // RFC 6347 §4.2.4 has it) or dropped. The session goes on.
    let mut junk = [23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 9, 0, 4, 1, 2, 3, 4];
    assert_eq!(
        cache.handle_media(&mut junk, src, 1, us(&s), &mut send),
        MediaVerdict::Dropped(MediaDrop::Dtls)
    );
    assert!(sent.borrow().is_empty(), "junk answered");
    for _ in 0..3 {
        for mut record in client_records.iter().cloned() {
            let before = sent.borrow().len();
            let verdict = cache.handle_media(&mut record, src, 1, us(&s), &mut send);
            let answered = sent.borrow().len() > before;
            let expected = if answered {
                MediaVerdict::Dtls
            } else {
                MediaVerdict::Dropped(MediaDrop::Dtls)
            };
            assert_eq!(verdict, expected, "answered: {answered}");
        }
    }
    assert!(sent.borrow().len() < 3, "a flight resent at every copy");
    assert!(session.is_dtls_connected());
    sent.borrow_mut().clear();

    // Review finding: media went wherever the last DTLS-looking datagram from any
    // validated address came from. It goes where ICE nominated, and moves only
    // with a later nomination.
    assert_eq!(session.media().media_peer, Some((src, 0)));
    let other: SocketAddr = "198.51.100.2:6000".parse().unwrap();
    let n = check_nominating(&mut buf, ufrag, pwd, false);
    assert!(matches!(
        cache.answer_check(&mut buf, n, other, 2, now),
        CheckVerdict::Reply(_)
    ));
    let mut record = [23u8, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 7, 0, 32];
    let _ = cache.handle_media(&mut record, other, 2, us(&s), &mut send);
    assert_eq!(session.media().media_peer, Some((src, 0)));
    let n = check(&mut buf, ufrag, pwd);
    let nomination = buf[..n].to_vec();
    assert!(matches!(
        cache.answer_check(&mut buf, n, other, 2, now),
        CheckVerdict::Reply(_)
    ));
    assert_eq!(session.media().media_peer, Some((other, 2)));
    // The hostile-traffic test's finding: a copy of that check, sent from an address of
    // whoever saw it, drew the media there. It is refused, and the media stays.
    let thief: SocketAddr = "203.0.113.66:4000".parse().unwrap();
    buf[..n].copy_from_slice(&nomination);
    assert_eq!(
        cache.answer_check(&mut buf, n, thief, 0, now),
        CheckVerdict::Replayed
    );
    assert_eq!(session.media().media_peer, Some((other, 2)));
    sent.borrow_mut().clear();

    // SRTP and SRTCP from the client are unprotected in place.
    let (profile, material) = keys.unwrap();
    let (client_write, _) = split_keying_material(profile, &material).unwrap();
    let mut out = SrtpContext::new(&client_write, 4).unwrap();
    let mut slot = [0u8; 64];
    slot[..20].copy_from_slice(&rtp);
    let n = out.protect_rtp(&mut slot, 20).unwrap();
    let protected = slot[..n].to_vec();
    assert_eq!(
        cache.handle_media(&mut slot[..n], src, 1, us(&s), &mut send),
        MediaVerdict::Rtp(20)
    );
    assert_eq!(slot[..20], rtp);
    // The track's first packet brings our first receiver report to the publisher.
    let reports: Vec<_> = sent.borrow_mut().drain(..).collect();
    assert_eq!(reports.len(), 1);
    assert!(
        reports
            .iter()
            .all(|(p, to, via)| (*to, *via) == (src, 1) && p[1] == crate::sfu::rtcp::RR)
    );
    let mut again = protected.clone();
    assert_eq!(
        cache.handle_media(&mut again, src, 1, us(&s), &mut send),
        MediaVerdict::Dropped(MediaDrop::Replayed)
    );
    let mut forged = protected;
    forged[3] = 2;
    assert_eq!(
        cache.handle_media(&mut forged, src, 1, us(&s), &mut send),
        MediaVerdict::Dropped(MediaDrop::AuthFailed)
    );
    // An empty receiver report.
    let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
    slot[..8].copy_from_slice(&rr);
    let n = out.protect_rtcp(&mut slot, 8).unwrap();
    assert_eq!(
        cache.handle_media(&mut slot[..n], src, 1, us(&s), &mut send),
        MediaVerdict::Rtcp(8)
    );
    assert_eq!(slot[..8], rr);
    assert!(sent.borrow().is_empty());

    // The track goes silent (muted): the worker's timer still sends a receiver
    // report each second, where ICE nominated.
    let start = us(&s);
    assert!(cache.poll_timeout().is_some_and(|t| t <= start + 1_000_000));
    for second in 1..=3 {
        cache.handle_timeout(start + second * 1_000_000 + 1_000, &mut send);
    }
    let reports: Vec<_> = sent.borrow_mut().drain(..).collect();
    assert_eq!(reports.len(), 3, "one report a second");
    let peer = session.media().media_peer;
    assert!(
        reports
            .iter()
            .all(|(p, to, via)| Some((*to, *via)) == peer && p[1] == crate::sfu::rtcp::RR)
    );
    assert!(cache.poll_timeout().is_some_and(|t| t > start + 3_000_000));

    // Removal takes the session out of the gauge; its media is refused.
    s.remove_participant("room", "p1");
    assert_eq!(s.metrics().dtls_connected.get(), 0);
    slot[..20].copy_from_slice(&rtp);
    slot[3] = 7;
    let n = out.protect_rtp(&mut slot, 20).unwrap();
    assert_eq!(
        cache.handle_media(&mut slot[..n], src, 1, us(&s), &mut send),
        MediaVerdict::Dropped(MediaDrop::Unvalidated)
    );
    cache.sweep();
    assert!(cache.by_addr.is_empty());
}

#[test]
fn a_failed_handshake_ends_the_session() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    let answer = s.publish("r", "a", &offer, ms(&s)).unwrap();
    let (ufrag, pwd) = (ice_line(&answer, "ice-ufrag"), ice_line(&answer, "ice-pwd"));
    let mut cache = SessionCache::new(0, s.clone());
    let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
    let mut buf = [0u8; 1500];
    let n = check(&mut buf, ufrag, pwd);
    cache.answer_check(&mut buf, n, src, 0, ms(&s));
    // A client whose certificate is not the one its offer names.
    let (mut client, _) = dtls_client(s.epoch());
    let mut keys = None;
    let sent: RefCell<Vec<Vec<u8>>> = RefCell::default();
    let mut send = |d: &[u8], _: SocketAddr, _: usize| sent.borrow_mut().push(d.to_vec());
    for _ in 0..20 {
        for mut record in poll_client(&mut client, &mut keys) {
            cache.handle_media(&mut record, src, 0, us(&s), &mut send);
        }
        let records: Vec<_> = sent.borrow_mut().drain(..).collect();
        for record in records {
            let _ = client.handle_packet(&record);
        }
        if s.lookup(ufrag.as_bytes()).unwrap().is_dtls_ended() {
            break;
        }
    }
    let session = s.lookup(ufrag.as_bytes()).unwrap();
    assert!(session.is_dtls_ended());
    assert!(!session.is_dtls_connected());
    assert_eq!(s.metrics().dtls_failures.get(), 1);
    assert_eq!(s.metrics().dtls_connected.get(), 0);
    // The control plane hears of it at once, as of a lapsed consent.
    assert_eq!(
        s.consent_expired(ms(&s)),
        vec![("r".to_owned(), "a".to_owned())]
    );
}

/// A panic inside the DTLS library (made on purpose here: the records that reached
/// one are refused before it now) ends that session only: counted, and the
/// participant is reported gone like one whose consent lapsed.
#[test]
fn a_panic_inside_dtls_ends_the_session_and_is_counted() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    let answer = s.publish("r", "a", &offer, ms(&s)).unwrap();
    let (ufrag, pwd) = (ice_line(&answer, "ice-ufrag"), ice_line(&answer, "ice-pwd"));
    let mut cache = SessionCache::new(0, s.clone());
    let src: SocketAddr = "198.51.100.2:5000".parse().unwrap();
    let mut buf = [0u8; 1500];
    let n = check(&mut buf, ufrag, pwd);
    cache.answer_check(&mut buf, n, src, 0, ms(&s));
    let session = s.lookup(ufrag.as_bytes()).unwrap();
    session.media().dtls.panic_inside();
    let mut record = [0x16u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut send = |_: &[u8], _: SocketAddr, _: usize| {};
    let _ = cache.handle_media(&mut record, src, 0, us(&s), &mut send);
    assert!(session.is_dtls_ended());
    assert_eq!(s.metrics().dtls_panics.get(), 1);
    assert_eq!(s.metrics().dtls_failures.get(), 1);
    assert_eq!(
        s.consent_expired(ms(&s)),
        vec![("r".to_owned(), "a".to_owned())]
    );
}

#[test]
fn receivers_get_an_offer_per_change_and_forwarders_follow() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    let answer = s.publish("room", "a", &offer, ms(&s)).unwrap();
    let publisher = s.lookup(ice_line(&answer, "ice-ufrag").as_bytes()).unwrap();
    // Only b has something to receive.
    let offers = s.sync_room(
        "room",
        &[("a".to_owned(), None), ("b".to_owned(), Some(180))],
        ms(&s),
    );
    assert_eq!(offers.len(), 1);
    let (who, sdp) = &offers[0];
    assert_eq!(who, "b");
    assert!(sdp.contains("m=audio"), "{sdp}");
    assert!(sdp.contains("a=msid:a a-0"), "{sdp}");
    assert!(sdp.contains("a=setup:passive") || sdp.contains("a=setup:actpass"));
    assert_eq!(publisher.media().tracks.len(), 1);
    assert_eq!(publisher.media().tracks[0].outs.len(), 1);
    // Nothing changed, and an offer is out: nothing new.
    assert!(
        s.sync_room(
            "room",
            &[("a".to_owned(), None), ("b".to_owned(), Some(180))],
            ms(&s)
        )
        .is_empty()
    );
    assert_eq!(publisher.media().tracks[0].outs.len(), 1);
    // A receiving session that was never answered lapses at its deadline.
    let late = ms(&s) + ANSWER_DEADLINE_MS + 1_000;
    let mut expired = s.consent_expired(late);
    expired.sort();
    assert_eq!(
        expired,
        vec![
            ("room".to_owned(), "a".to_owned()),
            ("room".to_owned(), "b".to_owned())
        ]
    );
    assert!(s.subscribe_answer("room", "b", b"v=0\r\n", ms(&s)).is_err());
    assert_eq!(
        s.subscribe_answer("room", "nobody", b"v=0\r\n", ms(&s)),
        Err(SdpError::NoPendingOffer)
    );
    assert!(s.max_answer_len("room", "b").unwrap() >= crate::sfu::sdp::MAX_SDP_LEN);
    // An answer that makes the m-line inactive pauses its stream.
    let answer = crate::sfu::sdp::tests::browser_answer(sdp, &[]);
    let inactive = answer.replace("a=recvonly", "a=inactive");
    s.subscribe_answer("room", "b", inactive.as_bytes(), ms(&s))
        .unwrap();
    assert!(publisher.media().tracks[0].outs[0].paused);
    // The receiver leaves: its forwarder goes at the next sync.
    s.remove_participant("room", "b");
    assert!(
        s.sync_room("room", &[("a".to_owned(), None)], ms(&s))
            .is_empty()
    );
    assert!(publisher.media().tracks[0].outs.is_empty());
    assert_eq!(s.participants(), vec![("room".to_owned(), "a".to_owned())]);
}

/// Firefox checks its receiving connection before it posts its answer. The address
/// it validated then stays validated through the answer: its DTLS is handled at
/// once, not dropped until its next consent check seconds later.
#[test]
fn an_address_checked_before_the_answer_stays_validated() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    s.publish("room", "a", &offer, ms(&s)).unwrap();
    let offers = s.sync_room(
        "room",
        &[("a".to_owned(), None), ("b".to_owned(), None)],
        ms(&s),
    );
    let (_, sdp) = &offers[0];
    let receiver = s.subscriber("room", "b").unwrap();
    let local = receiver.media().agent.local().clone();
    let mut cache = SessionCache::new(0, s.clone());
    let src: SocketAddr = "198.51.100.9:5000".parse().unwrap();
    let mut buf = [0u8; 1500];
    let n = check(&mut buf, &local.ufrag, &local.pwd);
    assert!(matches!(
        cache.answer_check(&mut buf, n, src, 0, ms(&s)),
        CheckVerdict::Reply(_)
    ));
    let answer = crate::sfu::sdp::tests::browser_answer(sdp, &[]);
    s.subscribe_answer("room", "b", answer.as_bytes(), ms(&s))
        .unwrap();
    assert!(receiver.media().agent.is_validated(src));
    let (mut client, _) = dtls_client(s.epoch());
    let mut keys = None;
    let mut hello = poll_client(&mut client, &mut keys).remove(0);
    let mut send = |_: &[u8], _: SocketAddr, _: usize| {};
    assert_eq!(
        cache.handle_media(&mut hello, src, 0, us(&s), &mut send),
        MediaVerdict::Dtls
    );
}

/// Review finding: a receiver's SRTP context tracks a fixed number of SSRCs and never
/// forgot those of publishers who left, so after about a hundred came and went the
/// receiver silently got nothing from newcomers. Each stream now has its own context
/// under the receiver's key (`sfu::egress`). 300 arrivals and departures past one
/// receiver: the newest publisher's packets still reach it, and it decrypts them.
#[test]
fn a_receiver_gets_newcomers_after_300_arrivals_and_departures() {
    use crate::sfu::srtp::{MasterKey, SrtpContext, SrtpProfile};
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    s.sync_room("room", &[("r".to_owned(), None)], ms(&s));
    let receiver = s.subscriber("room", "r").expect("a receiving session");
    let master = MasterKey::new(SrtpProfile::AeadAes128Gcm, &[7; 16], &[9; 12]).unwrap();
    let link = receiver.link.clone().expect("a receiving session's link");
    link.set_key(master.clone());
    let at: SocketAddr = "192.0.2.9:5000".parse().unwrap();
    link.set_peer(Some((at, 0)));
    // The receiving browser's context, which forgets each stream after its test.
    let mut browser = SrtpContext::new(&master, 4).unwrap();
    let mut buf = [0u8; 200];
    for i in 0..300 {
        let p = format!("p{i}");
        s.publish("room", &p, &offer, ms(&s)).unwrap();
        let holders = [("r".to_owned(), None), (p.clone(), None)];
        s.sync_room("room", &holders, ms(&s));
        let ssrc = {
            let media = receiver.media();
            let sub = media.subscribe.as_ref().unwrap();
            assert_eq!(sub.feeds.len(), 1, "one track at a time");
            sub.feeds[0].ssrc
        };
        // What the new track's stream sends the receiver.
        let mut rtp = [0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
        rtp[8..12].copy_from_slice(&ssrc.to_be_bytes());
        buf[..rtp.len()].copy_from_slice(&rtp);
        let publisher = s
            .lookup(s.read().by_participant[&("room".to_owned(), p.clone())].as_bytes())
            .unwrap();
        let mut sent = Vec::new();
        let ok = publisher.media().tracks[0].outs[0].egress.send_rtp(
            &mut buf,
            rtp.len(),
            None,
            0,
            &mut |d: &[u8], to: SocketAddr, _| sent.push((d.to_vec(), to)),
        );
        assert!(ok, "publisher {i}");
        let (mut packet, to) = sent.pop().expect("sent");
        assert_eq!(to, at);
        assert_eq!(
            browser.unprotect_rtp(&mut packet),
            Ok(rtp.len()),
            "publisher {i}"
        );
        browser.forget_ssrc(ssrc);
        s.remove_participant("room", &p);
        s.sync_room("room", &[("r".to_owned(), None)], ms(&s));
    }
}

/// Debug builds refuse a publisher's session lock taken under a receiver's (the
/// order forwarding once nested the other way round).
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "session lock order")]
fn a_publisher_lock_under_a_receivers_is_refused_in_debug_builds() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    let answer = s.publish("room", "a", &offer, ms(&s)).unwrap();
    s.sync_room("room", &[("r".to_owned(), None)], ms(&s));
    let receiver = s.subscriber("room", "r").expect("a receiving session");
    let publisher = s.lookup(ice_line(&answer, "ice-ufrag").as_bytes()).unwrap();
    {
        let _publisher = publisher.media();
        let _receiver = receiver.media(); // allowed: the control plane's order
    }
    let _receiver = receiver.media();
    let _publisher = publisher.media();
}

/// A participant that holds its event stream but never answers the server's offer
/// would keep its place in a full room for ever: it leaves at the deadline, while
/// one that answered is judged by its consent.
#[test]
fn an_offer_unanswered_past_its_deadline_ends_the_participant() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    s.publish("room", "a", &offer, ms(&s)).unwrap();
    let everyone = [
        ("a".to_owned(), None),
        ("b".to_owned(), None),
        ("c".to_owned(), None),
    ];
    let offers = s.sync_room("room", &everyone, ms(&s));
    assert_eq!(offers.len(), 2);
    let (_, to_c) = offers.iter().find(|(p, _)| p == "c").unwrap();
    let answer = crate::sfu::sdp::tests::browser_answer(to_c, &[]);
    s.subscribe_answer("room", "c", answer.as_bytes(), ms(&s))
        .unwrap();
    let start = ms(&s);
    let receivers_gone = |now_ms| -> Vec<String> {
        let mut gone: Vec<String> = s
            .consent_expired(now_ms)
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p != "a")
            .collect();
        gone.sort();
        gone
    };
    assert!(receivers_gone(start + ANSWER_DEADLINE_MS - 1_000).is_empty());
    assert!(receivers_gone(start + ANSWER_DEADLINE_MS + 500).contains(&"b".to_owned()));
    // One that answered is judged by its consent (30 s from its answer, no checks
    // here); one never offered anything (the publisher's own) is not in question.
    let expired = s.consent_expired(start + 10 * ANSWER_DEADLINE_MS);
    assert_eq!(
        expired.iter().filter(|(_, p)| p == "a").count(),
        1,
        "{expired:?}"
    );
}

/// The audio level each publisher's packets carry is counted on the way through,
/// for the room's active speaker, and the count starts again once taken.
#[test]
fn speech_in_a_publishers_audio_is_counted_for_the_speaker() {
    let s = sessions();
    let with_level = OFFER.replace(
        "a=rtpmap:111",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=rtpmap:111",
    );
    let offer = PublishOffer::parse(with_level.as_bytes()).unwrap();
    let answer = s.publish("room", "a", &offer, ms(&s)).unwrap();
    let publisher = s.lookup(ice_line(&answer, "ice-ufrag").as_bytes()).unwrap();
    assert_eq!(publisher.media().tracks[0].audio_level, Some(1));
    let mut out = vec![0u8; 2048];
    let mut counts = ForwardCounts::default();
    for (i, level) in [30u8, 30, 30, 110].into_iter().enumerate() {
        // RTP, one-byte extension block (0xBEDE) with id 1 = audio level.
        let mut pkt = vec![0x90, 111];
        pkt.extend_from_slice(&(i as u16).to_be_bytes());
        pkt.extend_from_slice(&(960 * i as u32).to_be_bytes());
        pkt.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        pkt.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0x80 | level, 0, 0]);
        pkt.extend_from_slice(&[0xAB; 40]);
        let len = pkt.len();
        let header = RtpHeader::parse(&pkt).unwrap();
        let mut media = publisher.media();
        forward_rtp(
            &mut out,
            &mut counts,
            &mut media,
            &mut pkt,
            (len, header),
            ("192.0.2.9:5000".parse().unwrap(), 0),
            (i as u64 * 20_000, i as u64 * 20_000, 0),
            &mut |_, _, _| {},
        );
    }
    let heard = s.take_loudness();
    assert_eq!(heard.len(), 1);
    assert_eq!((heard[0].0.as_str(), heard[0].1.as_str()), ("room", "a"));
    assert_eq!(
        heard[0].2,
        Loudness {
            packets: 4,
            speech: 3
        }
    );
    assert_eq!(s.take_loudness()[0].2, Loudness::default());
}

#[test]
fn consent_expiry_is_reported() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    s.publish("r", "a", &offer, ms(&s)).unwrap();
    let now = ms(&s);
    assert!(s.consent_expired(now).is_empty());
    assert_eq!(
        s.consent_expired(now + 31_000),
        vec![("r".to_owned(), "a".to_owned())]
    );
    s.retain(|_, p| p != "a");
    assert!(s.is_empty());
}

/// The videos a receiver's allocation pauses are what the control plane tells it
/// (`video_paused`); its audio never is.
#[test]
fn paused_videos_are_listed_by_receiver_and_publisher() {
    let s = sessions();
    let video = OFFER
        .replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
        )
        .replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:96 VP8/90000");
    let offer = PublishOffer::parse(video.as_bytes()).unwrap();
    s.publish("room", "a", &offer, ms(&s)).unwrap();
    let holders = [("a".to_owned(), None), ("b".to_owned(), None)];
    assert_eq!(s.sync_room("room", &holders, ms(&s)).len(), 1);
    assert!(s.paused_videos().is_empty());
    let b = s.subscriber("room", "b").unwrap();
    let cap = {
        let media = b.media();
        let sub = media.subscribe.as_deref().unwrap();
        assert!(!sub.feeds[0].audio);
        sub.feeds[0].cap.clone()
    };
    cap.set(crate::sfu::simulcast::LayerCap::Paused);
    assert_eq!(
        s.paused_videos(),
        vec![("room".to_owned(), "b".to_owned(), "a".to_owned())]
    );
    cap.set(crate::sfu::simulcast::LayerCap::UpTo(0));
    assert!(s.paused_videos().is_empty());
}

/// `OFFER` with a video section of mid `mid` besides its audio, or without it.
fn reoffer(mid: Option<&str>) -> PublishOffer {
    let mut sdp = OFFER.to_owned();
    if let Some(mid) = mid {
        sdp = sdp.replace("BUNDLE 0", &format!("BUNDLE 0 {mid}"));
        sdp.push_str(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
             c=IN IP4 0.0.0.0\r\n\
             a=mid:{mid}\r\n\
             a=sendonly\r\n\
             a=rtcp-mux\r\n\
             a=rtpmap:96 VP8/90000\r\n"
        ));
    }
    PublishOffer::parse(sdp.as_bytes()).unwrap()
}

/// Re-offers that add and stop tracks under ever new mids keep the publisher's track
/// list as long as the most tracks live at once, and a flood of them is refused.
#[test]
fn reoffers_reuse_stopped_places_and_are_bounded() {
    let s = sessions();
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    let answer = s.publish("room", "p1", &offer, 0).unwrap();
    let session = s.lookup(ice_line(&answer, "ice-ufrag").as_bytes()).unwrap();
    let mut now = 0;
    for i in 1..=6 {
        let mid = format!("v{i}");
        now += REOFFER_WINDOW_MS;
        let answer = s
            .republish("room", "p1", &reoffer(Some(&mid)), &[mid.as_str()], now)
            .unwrap();
        assert!(answer.contains(&format!("a=mid:{mid}")), "{answer}");
        let media = session.media();
        let live: Vec<&str> = media
            .tracks
            .iter()
            .filter(|t| !t.ended)
            .map(|t| t.mid.as_str())
            .collect();
        assert_eq!(live, ["0", mid.as_str()]);
        assert!(media.tracks.iter().any(|t| t.screen && t.mid == mid));
        assert_eq!(
            media.tracks.len(),
            2,
            "a stopped track's place is taken again"
        );
        drop(media);
        s.republish("room", "p1", &reoffer(None), &[], now).unwrap();
        assert!(session.media().tracks.iter().any(|t| t.ended));
    }
    // Ten per window, then 429 until the window turns.
    now += REOFFER_WINDOW_MS;
    for _ in 0..REOFFERS_PER_WINDOW {
        s.republish("room", "p1", &reoffer(None), &[], now).unwrap();
    }
    assert_eq!(
        s.republish("room", "p1", &reoffer(None), &[], now + 1),
        Err(PublishRefusal::TooManyReoffers)
    );
    assert!(
        s.republish("room", "p1", &reoffer(None), &[], now + REOFFER_WINDOW_MS)
            .is_ok()
    );
    // Other ICE credentials, or nobody publishing.
    let other = OFFER.replace("a=ice-ufrag:Clnt", "a=ice-ufrag:Othr");
    let other = PublishOffer::parse(other.as_bytes()).unwrap();
    assert_eq!(
        s.republish("room", "p1", &other, &[], now + REOFFER_WINDOW_MS),
        Err(PublishRefusal::NewTransport)
    );
    assert_eq!(
        s.republish("room", "p2", &offer, &[], now),
        Err(PublishRefusal::NotPublishing)
    );
}
