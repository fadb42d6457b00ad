#![no_main]
//! See `palisade_tests::fuzz::signed_bundle`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::signed_bundle(data));
