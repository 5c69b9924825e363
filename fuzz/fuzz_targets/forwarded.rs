//! `forwarded`: see `api::fuzz::forwarded`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| api::fuzz::forwarded(data));
