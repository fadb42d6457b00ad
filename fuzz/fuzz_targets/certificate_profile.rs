#![no_main]
//! See `palisade_tests::fuzz::certificate_profile`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::certificate_profile(data));
