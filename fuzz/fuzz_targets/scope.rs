//! `scope`: see `auth::fuzz::scope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| auth::fuzz::scope(data));
