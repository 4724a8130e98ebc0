//! SRTP master keys for tests and benchmarks that build streams by hand.

use confnode::sfu::srtp::{MasterKey, SrtpProfile};

/// A master key of `profile` of its own for every `seed`.
pub fn master(profile: SrtpProfile, seed: u8) -> MasterKey {
    let key: [u8; 32] = std::array::from_fn(|k| seed.wrapping_mul(41).wrapping_add(k as u8));
    let salt: [u8; 14] = std::array::from_fn(|k| seed ^ (k as u8).wrapping_mul(7));
    MasterKey::new(
        profile,
        &key[..profile.master_key_len()],
        &salt[..profile.master_salt_len()],
    )
    .expect("key and salt lengths")
}
