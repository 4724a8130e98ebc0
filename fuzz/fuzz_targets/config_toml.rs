//! Arbitrary text as a configuration file (`--config`, `check-config`, SIGHUP): parsing
//! and checking never panic; errors always name something. Run with
//! `cargo fuzz run config_toml` in `fuzz/`.
#![no_main]

use confnode::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::from_toml(text) {
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert!(!e.to_string().is_empty());
        }
    }
});
