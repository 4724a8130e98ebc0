//! STUN hot paths: answering a Binding request in place, and parsing alone.

use std::hint::black_box;
use std::net::SocketAddr;

use confnode::stun::message::{attr, method};
use confnode::stun::{Class, Message, Writer, answer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A Binding request like a browser's: SOFTWARE-less, optionally with FINGERPRINT.
fn request(fingerprint: bool) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[0x42; 12]).unwrap();
    if fingerprint {
        w.add_fingerprint().unwrap();
    }
    let n = w.finish();
    buf[..n].to_vec()
}

fn binding_answer(c: &mut Criterion) {
    let mut group = c.benchmark_group("binding_answer");
    group.throughput(Throughput::Elements(1));
    let v4: SocketAddr = "198.51.100.20:50000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::20]:50000".parse().unwrap();
    for (name, src, fingerprint) in [
        ("ipv4", v4, false),
        ("ipv4_fingerprint", v4, true),
        ("ipv6", v6, false),
        ("ipv6_fingerprint", v6, true),
    ] {
        let req = request(fingerprint);
        let mut slot = [0u8; 1500];
        group.bench_function(name, |b| {
            b.iter(|| {
                // The answer overwrites the request, so each round restores it, as a
                // fresh datagram would arrive in the slot.
                slot[..req.len()].copy_from_slice(&req);
                black_box(answer(black_box(&mut slot), req.len(), black_box(src)))
            })
        });
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    let bare = request(false);
    // An ICE-style check: several attributes, MESSAGE-INTEGRITY and FINGERPRINT.
    let mut buf = [0u8; 256];
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[7; 12]).unwrap();
    w.add(attr::USERNAME, b"abcd:efgh").unwrap();
    w.add_u32(attr::PRIORITY, 0x6e00_01ff).unwrap();
    w.add(attr::ICE_CONTROLLED, &[1; 8]).unwrap();
    w.add_integrity(b"password").unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    let ice = buf[..n].to_vec();
    group.bench_function("bare_request", |b| {
        b.iter(|| black_box(Message::parse(black_box(&bare))))
    });
    group.bench_function("ice_check", |b| {
        b.iter(|| black_box(Message::parse(black_box(&ice))))
    });
    group.bench_function("ice_check_verify_fingerprint", |b| {
        b.iter(|| {
            let msg = Message::parse(black_box(&ice)).ok();
            black_box(msg.and_then(|m| m.verify_fingerprint()))
        })
    });
    group.finish();
}

criterion_group!(benches, binding_answer, parse);
criterion_main!(benches);
