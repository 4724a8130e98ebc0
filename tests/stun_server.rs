//! STUN against the real binary, with coturn's `turnutils_stunclient` and the `stun`
//! crate, over UDP and TCP, IPv4 and ::1.

mod common;

use common::{Node, require_tool, run_with_timeout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;
use stun::agent::TransactionId;
use stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Getter, Message};
use stun::xoraddr::XorMappedAddress;

fn binding_request(fingerprint: bool) -> Message {
    let mut m = Message::new();
    let mut setters: Vec<Box<dyn stun::message::Setter>> =
        vec![Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)];
    if fingerprint {
        setters.push(Box::new(stun::fingerprint::FINGERPRINT));
    }
    m.build(&setters).expect("build binding request");
    m
}

/// Decodes a Binding success response and returns its XOR-MAPPED-ADDRESS.
fn mapped(request: &Message, raw: &[u8]) -> SocketAddr {
    let mut resp = Message::new();
    resp.raw = raw.to_vec();
    resp.decode().expect("a well-formed STUN response");
    assert_eq!(resp.typ, BINDING_SUCCESS);
    assert_eq!(resp.transaction_id, request.transaction_id);
    let mut xor = XorMappedAddress::default();
    xor.get_from(&resp).expect("XOR-MAPPED-ADDRESS");
    SocketAddr::new(xor.ip, xor.port)
}

fn udp_binding(server: SocketAddr, fingerprint: bool) -> (SocketAddr, SocketAddr, Vec<u8>) {
    let bind = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let sock = UdpSocket::bind(bind).expect("bind client");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let req = binding_request(fingerprint);
    let mut buf = [0u8; 1500];
    // UDP may lose a datagram: retransmit as a STUN client would.
    for _ in 0..10 {
        sock.send_to(&req.raw, server).expect("send");
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let addr = mapped(&req, &buf[..n]);
            return (addr, sock.local_addr().expect("addr"), buf[..n].to_vec());
        }
    }
    panic!("no Binding response from {server}");
}

fn tcp_binding(server: SocketAddr) -> (SocketAddr, SocketAddr) {
    let mut s = TcpStream::connect(server).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = binding_request(true);
    s.write_all(&req.raw).expect("send");
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("response header");
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut raw = head.to_vec();
    raw.resize(20 + len, 0);
    s.read_exact(&mut raw[20..]).expect("response body");
    (mapped(&req, &raw), s.local_addr().expect("addr"))
}

#[test]
fn turnutils_stunclient_gets_its_reflexive_address_ipv4_and_ipv6() {
    require_tool("turnutils_stunclient", "coturn");
    let node = Node::start("");
    for host in ["127.0.0.1", "::1"] {
        let (status, out) = run_with_timeout(
            Command::new("turnutils_stunclient")
                .arg("-p")
                .arg(node.stun.port().to_string())
                .arg(host),
            Duration::from_secs(20),
        );
        assert!(
            status.success(),
            "turnutils_stunclient {host} failed:\n{out}"
        );
        let expect = if host == "::1" {
            "UDP reflexive addr: ::1:"
        } else {
            "UDP reflexive addr: 127.0.0.1:"
        };
        assert!(out.contains(expect), "unexpected output for {host}:\n{out}");
    }
}

#[test]
fn stun_crate_binding_over_udp_ipv4_and_ipv6() {
    let node = Node::start("");
    for server in [node.stun, node.stun6] {
        for fingerprint in [false, true] {
            let (addr, local, raw) = udp_binding(server, fingerprint);
            assert_eq!(
                addr, local,
                "XOR-MAPPED-ADDRESS is the client's own address"
            );
            let mut resp = Message::new();
            resp.raw = raw;
            resp.decode().expect("decode");
            assert_eq!(
                resp.contains(stun::attributes::ATTR_FINGERPRINT),
                fingerprint,
                "FINGERPRINT is added exactly when the request had one"
            );
            assert!(
                !resp.contains(stun::attributes::ATTR_SOFTWARE),
                "SOFTWARE is not sent"
            );
        }
    }
    assert!(node.metric("confnode_stun_answered_total{transport=\"udp\"}") >= 4.0);
}

#[test]
fn stun_crate_binding_over_tcp_ipv4_and_ipv6() {
    let node = Node::start("");
    for server in [node.stun, node.stun6] {
        let (addr, local) = tcp_binding(server);
        assert_eq!(addr, local);
    }
    assert!(node.metric("confnode_stun_answered_total{transport=\"tcp\"}") >= 2.0);
}

#[test]
fn garbage_flood_is_dropped_and_counted_and_binding_still_works() {
    let node = Node::start("");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let valid = binding_request(true).raw;
    for i in 0..5000u32 {
        let packet: Vec<u8> = match i % 3 {
            // Random bytes of random length.
            0 => (0..(next() % 300) as usize).map(|_| next() as u8).collect(),
            // A Binding request cut short.
            1 => valid[..(next() as usize % valid.len())].to_vec(),
            // A STUN header whose length overruns the datagram.
            _ => {
                let mut p = valid.clone();
                p[3] = p[3].wrapping_add(4 + (next() % 60) as u8 * 4);
                p
            }
        };
        let _ = sock.send_to(&packet, node.stun);
        if i % 500 == 0 {
            // Let the node keep up, as a real flood over a network would be paced.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (addr, local, _) = udp_binding(node.stun, true);
    assert_eq!(addr, local);
    let malformed = node.metric("confnode_dropped_total{transport=\"udp\",reason=\"malformed\"}");
    assert!(malformed >= 1000.0, "malformed counter only {malformed}");
    // A protocol the port does not speak (a QUIC long header) is counted as such.
    let before = node.metric("confnode_dropped_total{transport=\"udp\",reason=\"unrouted\"}");
    for _ in 0..10 {
        let _ = sock.send_to(&[0xC3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8], node.stun);
    }
    let (addr, local, _) = udp_binding(node.stun, true);
    assert_eq!(addr, local, "still answering");
    // Another worker may hold the flood's socket: give it the moment a busy one needs.
    let mut unrouted = 0.0;
    for _ in 0..100 {
        unrouted = node.metric("confnode_dropped_total{transport=\"udp\",reason=\"unrouted\"}");
        if unrouted >= before + 10.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        unrouted >= before + 10.0,
        "unrouted counter {before} → {unrouted}"
    );
    // TCP garbage closes that connection only; a new one is served.
    let mut s = TcpStream::connect(node.stun).expect("connect");
    s.write_all(&[0xff; 64]).expect("send garbage");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "connection closed");
    let (addr, local) = tcp_binding(node.stun);
    assert_eq!(addr, local);
    assert!(node.metric("confnode_dropped_total{transport=\"tcp\",reason=\"malformed\"}") >= 1.0);
}

#[test]
fn sigterm_stops_the_node_cleanly() {
    let mut node = Node::start("");
    let _ = udp_binding(node.stun, false);
    let status = node.stop();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}
