//! Answering ICE connectivity checks allocates nothing: neither the routing lookup
//! (`local_ufrag`) nor `IceAgent::handle_binding` on its success and error paths.
//!
//! A counting global allocator (per thread, so the test harness's own threads do not
//! disturb the count) watches 10,000 checks after a warm-up.

use std::hint::black_box;
use std::net::SocketAddr;

use confnode::sfu::ice::{IceAgent, IceCredentials, IceVerdict, local_ufrag};
use confnode::stun::message::{attr, method};
use confnode::stun::{Class, Message, Writer};

mod alloc_counter;

use alloc_counter::allocations;

const PWD: &[u8] = b"sfupassword0123456789abcd";

/// A check as Chrome sends it; `key` signs it, `nominate` adds USE-CANDIDATE.
fn check(key: &[u8], nominate: bool, controlled: bool) -> Vec<u8> {
    check_as(key, nominate, controlled, 0x3c)
}

/// [`check`] with a transaction id of `transaction` bytes.
fn check_as(key: &[u8], nominate: bool, controlled: bool, transaction: u8) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w = Writer::new(
        &mut buf,
        method::BINDING,
        Class::Request,
        &[transaction; 12],
    )
    .unwrap();
    w.add(attr::USERNAME, b"SfuLocal:Hx3u").unwrap();
    w.add(0xC057, &[0, 1, 0, 10]).unwrap(); // GOOG-NETWORK-INFO
    if controlled {
        w.add(attr::ICE_CONTROLLED, &[9; 8]).unwrap();
    } else {
        w.add(attr::ICE_CONTROLLING, &[9; 8]).unwrap();
    }
    if nominate {
        w.add(attr::USE_CANDIDATE, &[]).unwrap();
    }
    w.add_u32(attr::PRIORITY, 1_853_824_767).unwrap();
    w.add_integrity(key).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

#[test]
fn answering_checks_does_not_allocate() {
    let local = IceCredentials::parse("SfuLocal", std::str::from_utf8(PWD).unwrap()).unwrap();
    let remote = IceCredentials::parse("Hx3u", "6yTJ9QGhb4Fn0K3bnJ1W0aJq").unwrap();
    let mut agent = IceAgent::new(local, Some(remote), 0);
    let sources: [SocketAddr; 3] = [
        "198.51.100.20:50000".parse().unwrap(),
        "[2001:db8::20]:50000".parse().unwrap(),
        "203.0.113.5:61000".parse().unwrap(),
    ];
    // Each address nominates with a check of its own: a copy of one address's
    // nomination from another is refused as a replay.
    let cases: Vec<[Vec<u8>; 4]> = (0..sources.len() as u8)
        .map(|s| {
            [
                check_as(PWD, true, false, s),                    // nomination
                check(PWD, false, false),                         // consent refresh
                check(b"wrong-password-0123456789", true, false), // 401
                check(PWD, false, true),                          // 487
            ]
        })
        .collect();
    let mut slot = [0u8; 1500];
    let mut now = 0u64;
    let mut run = |i: usize| {
        let s = (i / 4) % sources.len();
        let (req, src) = (&cases[s][i % 4], sources[s]);
        slot[..req.len()].copy_from_slice(req);
        // The data plane's routing step: find the agent by the USERNAME's first part.
        let routed = Message::parse(&slot[..req.len()])
            .ok()
            .and_then(|m| local_ufrag(&m).map(|u| u == b"SfuLocal"));
        assert_eq!(routed, Some(true));
        now += 20;
        let verdict = agent.handle_binding(black_box(&mut slot), req.len(), black_box(src), now);
        assert!(matches!(
            verdict,
            IceVerdict::Success { .. } | IceVerdict::Error { .. }
        ));
        black_box(verdict);
    };
    for i in 0..100 {
        run(i);
    }
    // The counter is live: one allocation shows.
    let before = allocations();
    black_box(Vec::<u8>::with_capacity(8));
    assert_eq!(allocations() - before, 1);

    let before = allocations();
    for i in 0..10_000 {
        run(i);
    }
    assert_eq!(
        allocations() - before,
        0,
        "heap allocations while answering checks"
    );
    assert!(agent.selected().is_some());
    assert!(!agent.consent_expired(now));
}

/// The data plane's path for a check: the worker's session cache finds the session by
/// the USERNAME's first part (filled from the registry on the first check), and the
/// session's agent answers. In steady state that allocates nothing either.
#[test]
fn routing_checks_through_the_session_cache_does_not_allocate() {
    use confnode::sfu::sdp::PublishOffer;
    use confnode::sfu::session::{CheckVerdict, MediaSessions, SessionCache};
    use std::sync::Arc;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:Hx3u\r\na=ice-pwd:6yTJ9QGhb4Fn0K3bnJ1W0aJq\r\n\
        a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC\r\n\
        a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";
    let sessions = Arc::new(MediaSessions::new(
        confnode::node::clock_epoch(),
        vec!["192.0.2.1:3478".parse().unwrap()],
        Arc::new(confnode::node::dtls_identity().unwrap()),
        confnode::metrics::SfuMetrics::default(),
        [7; 32],
    ));
    let offer = PublishOffer::parse(OFFER.as_bytes()).unwrap();
    let answer = sessions.publish("room", "p", &offer, 0).unwrap();
    let line = |name: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix(&format!("a={name}:")))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (ufrag, pwd) = (line("ice-ufrag"), line("ice-pwd"));
    let mut cache = SessionCache::new(0, sessions.clone());
    let request = {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[0x3c; 12]).unwrap();
        w.add(attr::USERNAME, format!("{ufrag}:Hx3u").as_bytes())
            .unwrap();
        w.add(attr::ICE_CONTROLLING, &[9; 8]).unwrap();
        w.add(attr::USE_CANDIDATE, &[]).unwrap();
        w.add_integrity(pwd.as_bytes()).unwrap();
        w.add_fingerprint().unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    };
    let src: SocketAddr = "198.51.100.20:50000".parse().unwrap();
    let mut slot = [0u8; 1500];
    let mut run = |now: u64| {
        slot[..request.len()].copy_from_slice(&request);
        let v = cache.answer_check(black_box(&mut slot), request.len(), src, 0, now);
        assert!(matches!(v, CheckVerdict::Reply(_)), "{v:?}");
    };
    for now in 0..10 {
        run(now);
    }
    let before = allocations();
    for now in 10..10_010 {
        run(now);
    }
    assert_eq!(
        allocations() - before,
        0,
        "heap allocations while routing and answering checks"
    );
}
