#![no_main]
//! See `palisade_tests::fuzz::stream_header`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::stream_header(data));
