#![no_main]
//! See `palisade_tests::fuzz::openai_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::openai_request(data));
