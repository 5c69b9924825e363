//! `manifest`: see `oci::fuzz::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci::fuzz::manifest(data));
