#![no_main]
//! See `palisade_tests::fuzz::policy_cases`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::policy_cases(data));
