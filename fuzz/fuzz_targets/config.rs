//! `config`: a configuration file, parsed and checked as `bulwark serve` does; see
//! `crates/server/src/config.rs`, compiled here as it is (the server crate has no library).
#![no_main]

#[path = "../../crates/server/src/config.rs"]
#[expect(dead_code, reason = "only Config::from_toml and fuzz are reached from here")]
mod config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| config::fuzz(data));
