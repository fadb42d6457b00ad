#![no_main]
//! See `palisade_tests::fuzz::policy_source`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::policy_source(data));
