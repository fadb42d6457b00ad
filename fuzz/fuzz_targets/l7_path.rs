#![no_main]
//! See `palisade_tests::fuzz::l7_path`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::l7_path(data));
