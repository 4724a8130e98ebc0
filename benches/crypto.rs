//! SRTP's primitives side by side, one implementation against the other in one process,
//! so that `sfu::srtp` runs on whichever is faster on this machine:
//!
//!     cargo bench --bench crypto
//!
//! - `aead/{aes128_gcm,aes256_gcm}/{seal,open}/{rustcrypto,ring}`: one 1200-byte payload
//!   behind a 12-byte RTP header (the AAD) sealed or opened in place, tag apart, with a
//!   key made once: the `aes-gcm` crate (`AeadInPlace::*_in_place_detached`) against
//!   ring (`LessSafeKey::seal_in_place_separate_tag` / `open_in_place_separate_tag`).
//!   Opening is timed on a fresh copy of the sealed payload each time (the copy is made
//!   in the untimed setup).
//! - `hmac_sha1/{rustcrypto,ring}`: AES-CM's authentication, the 80-bit tag of a
//!   1212-byte packet and its 4-byte rollover counter, from a key set up once: the `hmac`
//!   and `sha1` crates (a keyed `Hmac<Sha1>` cloned per packet) against ring
//!   (`hmac::Context::with_key` on `HMAC_SHA1_FOR_LEGACY_USE_ONLY`).
//! - `aes128_ctr/rustcrypto`: AES-CM's keystream over the same payload, for reference
//!   (ring has no public AES-CTR).
//!
//! Throughput is in bytes, so criterion's GiB/s reads directly against the link rate.

use std::hint::black_box;
use std::time::Duration;

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{KeyIvInit, StreamCipher};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha1::Sha1;

const PAYLOAD: usize = 1200;
const HEADER: [u8; 12] = [0x80, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0x12, 0x34];
const IV: [u8; 12] = [7; 12];

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| i as u8).collect()
}

/// One AEAD seen the way the SRTP code needs it: in place, tag apart.
trait Aead {
    fn seal(&self, data: &mut [u8]) -> [u8; 16];
    fn open(&self, data: &mut [u8], tag: &[u8; 16]) -> bool;
}

struct RustCrypto<C>(C);

impl<C: AeadInPlace> Aead for RustCrypto<C> {
    fn seal(&self, data: &mut [u8]) -> [u8; 16] {
        let tag = self
            .0
            .encrypt_in_place_detached(GenericArray::from_slice(&IV), &HEADER, data)
            .expect("seal");
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag);
        out
    }

    fn open(&self, data: &mut [u8], tag: &[u8; 16]) -> bool {
        let (iv, tag) = (GenericArray::from_slice(&IV), GenericArray::from_slice(tag));
        self.0
            .decrypt_in_place_detached(iv, &HEADER, data, tag)
            .is_ok()
    }
}

struct Ring(LessSafeKey);

impl Aead for Ring {
    fn seal(&self, data: &mut [u8]) -> [u8; 16] {
        let nonce = Nonce::assume_unique_for_key(IV);
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::from(&HEADER), data)
            .expect("seal");
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open(&self, data: &mut [u8], tag: &[u8; 16]) -> bool {
        let nonce = Nonce::assume_unique_for_key(IV);
        self.0
            .open_in_place_separate_tag(nonce, Aad::from(&HEADER), Tag::from(*tag), data, 0..)
            .is_ok()
    }
}

fn ring_key(algorithm: &'static ring::aead::Algorithm, key: &[u8]) -> Ring {
    Ring(LessSafeKey::new(
        UnboundKey::new(algorithm, key).expect("key"),
    ))
}

/// Seal and open with both implementations of one AEAD; checks first that they agree.
fn aead_pair(c: &mut Criterion, name: &str, rustcrypto: &dyn Aead, ring: &dyn Aead) {
    let mut a = payload();
    let mut b = payload();
    let tag = rustcrypto.seal(&mut a);
    assert_eq!(
        (ring.seal(&mut b), &b),
        (tag, &a),
        "{name}: the two disagree"
    );
    let sealed = a;

    let mut group = c.benchmark_group(format!("aead/{name}"));
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (who, aead) in [("rustcrypto", rustcrypto), ("ring", ring)] {
        let mut data = payload();
        group.bench_function(format!("seal/{who}"), |b| {
            b.iter(|| black_box(aead.seal(black_box(&mut data))))
        });
        group.bench_function(format!("open/{who}"), |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |data| assert!(aead.open(black_box(data), &tag)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn aead(c: &mut Criterion) {
    let k16 = [0x11u8; 16];
    let k32 = [0x22u8; 32];
    aead_pair(
        c,
        "aes128_gcm",
        &RustCrypto(Aes128Gcm::new_from_slice(&k16).expect("key")),
        &ring_key(&AES_128_GCM, &k16),
    );
    aead_pair(
        c,
        "aes256_gcm",
        &RustCrypto(Aes256Gcm::new_from_slice(&k32).expect("key")),
        &ring_key(&AES_256_GCM, &k32),
    );
}

fn hmac_sha1(c: &mut Criterion) {
    let key = [0x33u8; 20];
    let mut packet = HEADER.to_vec();
    packet.extend_from_slice(&payload());
    let roc = 0u32.to_be_bytes();

    let rustcrypto = <Hmac<Sha1> as Mac>::new_from_slice(&key).expect("key");
    let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key);
    let tag_rustcrypto = || {
        let mut mac = rustcrypto.clone();
        mac.update(&packet);
        mac.update(&roc);
        let mut tag = [0u8; 10];
        tag.copy_from_slice(&mac.finalize().into_bytes()[..10]);
        tag
    };
    let tag_ring = || {
        let mut mac = ring::hmac::Context::with_key(&ring_key);
        mac.update(&packet);
        mac.update(&roc);
        let mut tag = [0u8; 10];
        tag.copy_from_slice(&mac.sign().as_ref()[..10]);
        tag
    };
    assert_eq!(tag_rustcrypto(), tag_ring(), "HMAC-SHA1: the two disagree");

    let mut group = c.benchmark_group("hmac_sha1");
    group.throughput(Throughput::Bytes(packet.len() as u64));
    group.bench_function("rustcrypto", |b| b.iter(|| black_box(tag_rustcrypto())));
    group.bench_function("ring", |b| b.iter(|| black_box(tag_ring())));
    group.finish();
}

fn aes128_ctr(c: &mut Criterion) {
    let key = [0x44u8; 16];
    let iv = [0x55u8; 16];
    let mut data = payload();
    let mut group = c.benchmark_group("aes128_ctr");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    group.bench_function("rustcrypto", |b| {
        b.iter(|| {
            let mut ctr = ctr::Ctr128BE::<Aes128>::new(&key.into(), &iv.into());
            ctr.apply_keystream(black_box(&mut data));
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = aead, hmac_sha1, aes128_ctr
}
criterion_main!(benches);
