//! Arbitrary bytes as a publisher's SDP offer (`POST .../publish`): parsing never
//! panics, and an accepted offer always gets an answer that names our transport.
//! Run with `cargo fuzz run sdp_offer` in `fuzz/`.
#![no_main]

use std::net::SocketAddr;

use confnode::sfu::ice::IceCredentials;
use confnode::sfu::sdp::{LocalTransport, PublishOffer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = PublishOffer::parse(data) else {
        return;
    };
    let ice = IceCredentials {
        ufrag: "fuzzufrag".to_owned(),
        pwd: "fuzzpasswordfuzzpassword".to_owned(),
    };
    let candidates: [SocketAddr; 2] = [
        SocketAddr::from(([192, 0, 2, 1], 3478)),
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 3478)),
    ];
    let local = LocalTransport {
        session_id: 1,
        ice: &ice,
        fingerprint: "AB:CD",
        candidates: &candidates,
    };
    let answer = offer.answer(&local);
    assert!(answer.starts_with("v=0\r\n"));
    assert!(answer.contains("a=ice-ufrag:fuzzufrag"));
    for _ in offer.tracks() {}
});
