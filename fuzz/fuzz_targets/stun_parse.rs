//! Arbitrary bytes into the STUN reader and the Binding answerer: no panics, and every
//! reply is itself well-formed STUN. Run with `cargo fuzz run stun_parse` in `fuzz/`.
#![no_main]

use std::net::SocketAddr;

use confnode::stun::message::attr;
use confnode::stun::{Message, Verdict, answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::parse(data) {
        touch(&msg);
    }

    // The data plane's receive slot: at least 1500 bytes, the message at its start.
    let mut slot = vec![0u8; data.len().max(1500)];
    slot[..data.len()].copy_from_slice(data);
    let src: SocketAddr = match data.first() {
        Some(b) if b & 1 == 1 => "[2001:db8::1]:3478".parse().unwrap(),
        _ => "192.0.2.1:3478".parse().unwrap(),
    };
    if let Verdict::Reply(n) = answer(&mut slot, data.len(), src) {
        let reply = Message::parse(&slot[..n]).expect("replies are well-formed");
        assert_eq!(
            reply.verify_fingerprint(),
            reply.fingerprint_offset().map(|_| true)
        );
    }
});

/// Every accessor on a parsed message, to reach the code behind each.
fn touch(msg: &Message<'_>) {
    for a in msg.attributes() {
        assert!(a.offset + 4 + a.value.len() <= msg.as_bytes().len());
    }
    let _ = msg.transaction_id();
    let _ = msg.has_magic_cookie();
    let _ = msg.verify_fingerprint();
    let _ = msg.verify_integrity(b"key");
    let _ = msg.verify_integrity_sha256(b"key");
    let _ = msg.address(attr::MAPPED_ADDRESS);
    let _ = msg.xor_address(attr::XOR_MAPPED_ADDRESS);
}
