//! `authorization`: see `api::fuzz::authorization`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| api::fuzz::authorization(data));
