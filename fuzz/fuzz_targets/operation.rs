//! `operation`: see `api::fuzz::operation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| api::fuzz::operation(data));
