#![no_main]
//! See `palisade_tests::fuzz::identity_attributes`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::identity_attributes(data));
