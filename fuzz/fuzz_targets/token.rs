//! `token`: see `auth::fuzz::token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| auth::fuzz::token(data));
