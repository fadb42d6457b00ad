#![no_main]
//! See `palisade_tests::fuzz::audit_export`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::audit_export(data));
