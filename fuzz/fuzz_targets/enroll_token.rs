#![no_main]
//! See `palisade_tests::fuzz::enroll_token`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::enroll_token(data));
