//! ICE-lite on the shared media port, against the real binary: a participant publishes
//! over HTTP, then its connectivity checks (STUN Binding requests with USERNAME
//! `<our ufrag>:<its ufrag>`, signed with our ice-pwd from the answer) are answered by
//! the node on its media port; leaving ends the session, and a session whose checks stop
//! for 30 s makes its participant leave the room.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use common::{Joined, Node, SseStream, basic_auth, cheap_hash, http, join};
use confnode::stun::message::{Class, Message, Writer, attr, method};
use serde_json::json;

const HOST: &str = "carol";
const PASSWORD: &str = "correct horse battery";
const CLIENT_UFRAG: &str = "Clnt";

/// A Chrome-like publisher offer: Opus and VP8 with RTX, bundled, rtcp-mux.
pub const PUBLISH_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS s\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Clnt\r\n\
a=ice-pwd:clientpassword0123456789\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=sendonly\r\n\
a=msid:s a\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=ssrc:1111 cname:c\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Clnt\r\n\
a=ice-pwd:clientpassword0123456789\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=sendonly\r\n\
a=msid:s v\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
a=ssrc-group:FID 2222 3333\r\n\
a=ssrc:2222 cname:c\r\n\
a=ssrc:3333 cname:c\r\n";

fn node() -> Node {
    let http = format!(
        "[[http.hosts]]\nname = \"{HOST}\"\npassword_hash = \"{}\"\n",
        cheap_hash(PASSWORD)
    );
    Node::start_with_http("", &http, "").0
}

fn create_room(node: &Node) -> String {
    let auth = basic_auth(HOST, PASSWORD);
    let r = http(
        node.http,
        "POST",
        "/api/rooms",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["room"].as_str().expect("room").to_owned()
}

/// Our ICE credentials from a publish answer.
struct Answer {
    ufrag: String,
    pwd: String,
    sdp: String,
}

fn publish(node: &Node, room: &str, p: &Joined) -> Answer {
    let r = http(
        node.http,
        "POST",
        &format!("/api/rooms/{room}/participants/{}/publish", p.id),
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &format!("Bearer {}", p.token)),
        ],
        PUBLISH_OFFER.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let line = |name: &str| {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("a={name}:")))
            .unwrap_or_else(|| panic!("no a={name} in the answer:\n{}", r.body))
            .trim()
            .to_owned()
    };
    Answer {
        ufrag: line("ice-ufrag"),
        pwd: line("ice-pwd"),
        sdp: r.body.clone(),
    }
}

/// A connectivity check as Chrome sends it, signed with `key`.
fn check(username: &str, key: &[u8], use_candidate: bool) -> (Vec<u8>, [u8; 12]) {
    let mut tid = [0u8; 12];
    OsRng.fill_bytes(&mut tid);
    let mut buf = [0u8; 512];
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &tid).expect("writer");
    w.add(attr::USERNAME, username.as_bytes())
        .expect("username");
    w.add_u32(attr::PRIORITY, 0x6e7f_1eff).expect("priority");
    w.add(attr::ICE_CONTROLLING, &[7; 8]).expect("controlling");
    if use_candidate {
        w.add(attr::USE_CANDIDATE, &[]).expect("use-candidate");
    }
    w.add_integrity(key).expect("integrity");
    w.add_fingerprint().expect("fingerprint");
    let n = w.finish();
    (buf[..n].to_vec(), tid)
}

/// Sends `request` and waits up to `wait` for an answer with the same transaction id.
fn exchange(sock: &UdpSocket, to: SocketAddr, request: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let tid = &request[8..20];
    sock.send_to(request, to).expect("send");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).expect("timeout");
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return None;
        };
        if n >= 20 && &buf[8..20] == tid {
            return Some(buf[..n].to_vec());
        }
    }
}

fn error_code(msg: &Message<'_>) -> u16 {
    let v = msg.get(attr::ERROR_CODE).expect("ERROR-CODE");
    u16::from(v[2]) * 100 + u16::from(v[3])
}

#[test]
fn publish_then_checks_on_the_media_port_are_answered() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let answer = publish(&node, &room, &a);
    assert!(answer.sdp.contains("a=ice-lite"), "{}", answer.sdp);
    let port = node.stun.port();
    assert!(
        answer.sdp.contains(&format!("127.0.0.1 {port} typ host")),
        "{}",
        answer.sdp
    );

    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let me = client.local_addr().expect("addr");
    let username = format!("{}:{CLIENT_UFRAG}", answer.ufrag);
    let (req, tid) = check(&username, answer.pwd.as_bytes(), true);
    let reply =
        exchange(&client, node.stun, &req, Duration::from_secs(3)).expect("no answer to a check");
    let msg = Message::parse(&reply).expect("STUN answer");
    assert_eq!(
        (msg.method(), msg.class()),
        (method::BINDING, Class::Success)
    );
    assert_eq!(msg.transaction_id(), &tid);
    assert_eq!(msg.verify_integrity(answer.pwd.as_bytes()), Some(true));
    assert_eq!(msg.verify_fingerprint(), Some(true));
    assert_eq!(msg.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(me)));

    // A consent check (no USE-CANDIDATE) is answered the same way.
    let (req, _) = check(&username, answer.pwd.as_bytes(), false);
    let reply = exchange(&client, node.stun, &req, Duration::from_secs(3)).expect("consent");
    let msg = Message::parse(&reply).expect("STUN answer");
    assert_eq!(msg.class(), Class::Success);

    // The wrong password: 401, unsigned.
    let (req, _) = check(&username, b"not our password at all!", true);
    let reply = exchange(&client, node.stun, &req, Duration::from_secs(3)).expect("401");
    let msg = Message::parse(&reply).expect("STUN answer");
    assert_eq!(msg.class(), Class::Error);
    assert_eq!(error_code(&msg), 401);
    assert_eq!(msg.integrity_offset(), None);

    // An unknown ufrag: nobody answers.
    let (req, _) = check(
        &format!("Nobody12:{CLIENT_UFRAG}"),
        answer.pwd.as_bytes(),
        true,
    );
    assert!(exchange(&client, node.stun, &req, Duration::from_millis(500)).is_none());

    // After leaving, the session is gone: checks go unanswered.
    let r = http(
        node.http,
        "DELETE",
        &format!("/api/rooms/{room}/participants/{}", a.id),
        &[("Authorization", &format!("Bearer {}", a.token))],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let (req, _) = check(&username, answer.pwd.as_bytes(), false);
    assert!(exchange(&client, node.stun, &req, Duration::from_millis(500)).is_none());
}

#[test]
fn checks_over_ipv6_are_answered_too() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let answer = publish(&node, &room, &a);
    let port = node.stun6.port();
    assert!(
        answer.sdp.contains(&format!("::1 {port} typ host")),
        "{}",
        answer.sdp
    );
    let client = UdpSocket::bind("[::1]:0").expect("bind ::1");
    let me = client.local_addr().expect("addr");
    let (req, _) = check(
        &format!("{}:{CLIENT_UFRAG}", answer.ufrag),
        answer.pwd.as_bytes(),
        true,
    );
    let reply = exchange(&client, node.stun6, &req, Duration::from_secs(3)).expect("answer");
    let msg = Message::parse(&reply).expect("STUN answer");
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(msg.verify_integrity(answer.pwd.as_bytes()), Some(true));
    assert_eq!(msg.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(me)));
}

/// RFC 7675: checks stop, and 30 s later the participant is out of the room; the
/// others hear `left`.
#[test]
fn a_publisher_whose_checks_stop_leaves_after_30_s() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let b = join(&node, &room, "Bob");
    let answer = publish(&node, &room, &a);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (req, _) = check(
        &format!("{}:{CLIENT_UFRAG}", answer.ufrag),
        answer.pwd.as_bytes(),
        true,
    );
    let started = Instant::now();
    exchange(&client, node.stun, &req, Duration::from_secs(3)).expect("answer");
    // The event stream's reads time out after 10 s without an event, so Bob listens
    // only from shortly before the deadline.
    std::thread::sleep(Duration::from_secs(24));
    let mut eb = SseStream::open(
        node.http,
        &format!("/api/rooms/{room}/participants/{}/events", b.id),
        &[("Authorization", &format!("Bearer {}", b.token))],
    )
    .unwrap_or_else(|r| panic!("events: {} {}", r.status, r.body));
    let roster = eb.expect("roster");
    assert_eq!(
        roster["participants"].as_array().map(Vec::len),
        Some(2),
        "Ann is still in the room before 30 s"
    );
    // Ann publishes, so Bob's stream is offered her tracks.
    let offer = eb.expect("offer");
    assert!(
        offer["sdp"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("a=msid:{} ", a.id))),
        "{offer}"
    );
    assert_eq!(eb.expect("left"), json!({ "participant": a.id }));
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(29) && after < Duration::from_secs(35),
        "left after {after:?}"
    );
    // Ann's token no longer works, and her checks go unanswered.
    let r = http(node.http, "GET", &format!("/api/rooms/{room}"), &[], b"");
    assert_eq!(r.json()["participants"].as_array().map(Vec::len), Some(1));
    let (req, _) = check(
        &format!("{}:{CLIENT_UFRAG}", answer.ufrag),
        answer.pwd.as_bytes(),
        false,
    );
    assert!(exchange(&client, node.stun, &req, Duration::from_millis(500)).is_none());
}

/// The security review's critical finding: a participant who passed one ICE check sends
/// the same early epoch-1 DTLS record twice. The DTLS library asserts on it; before,
/// the panic ended the worker thread (its TURN allocations and media sessions went
/// silent, STUN to it unanswered, health still "ok"). Now the repeat never reaches the
/// library: it is dropped and counted, the session goes on, and both workers answer
/// STUN from any port. (A panic the library might still reach ends only its session:
/// `sfu::session` tests that with a panic made on purpose.)
#[test]
fn a_duplicated_dtls_record_is_dropped_and_every_worker_goes_on() {
    let node = node();
    let room = create_room(&node);
    let a = join(&node, &room, "Ann");
    let answer = publish(&node, &room, &a);
    let r = http(node.http, "GET", &format!("/api/rooms/{room}"), &[], b"");
    assert_eq!(r.json()["participants"].as_array().map(Vec::len), Some(1));
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let username = format!("{}:{CLIENT_UFRAG}", answer.ufrag);
    let (req, _) = check(&username, answer.pwd.as_bytes(), true);
    exchange(&attacker, node.stun, &req, Duration::from_secs(3)).expect("check answered");
    let mut record = vec![0x17, 0xfe, 0xfd, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x00, 0x20];
    record.extend_from_slice(&[0xab; 32]);
    for _ in 0..2 {
        attacker.send_to(&record, node.stun).expect("send");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dropped = node.wait_metric(
        "confnode_sfu_dropped_total{reason=\"dtls\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    assert_eq!(dropped, 1.0, "the repeated record was not dropped");
    assert_eq!(node.metric("confnode_sfu_dtls_panics_total"), 0.0);

    // Every worker still answers: 40 fresh source ports spread over both of them.
    let (status, body) = common::http_get(node.http, "/api/health").expect("health");
    assert_eq!(status, 200, "{body}");
    for i in 0..40 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut tid = [0u8; 12];
        OsRng.fill_bytes(&mut tid);
        let mut buf = [0u8; 64];
        let w = Writer::new(&mut buf, method::BINDING, Class::Request, &tid).expect("writer");
        let n = w.finish();
        assert!(
            exchange(&s, node.stun, &buf[..n], Duration::from_secs(3)).is_some(),
            "Binding request {i} from a fresh port went unanswered"
        );
    }
    // The participant is still in the room.
    let r = http(node.http, "GET", &format!("/api/rooms/{room}"), &[], b"");
    assert_eq!(r.json()["participants"].as_array().map(Vec::len), Some(1));
}
