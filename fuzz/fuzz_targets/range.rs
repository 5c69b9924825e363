//! `range`: see `oci::fuzz::range`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci::fuzz::range(data));
