#![no_main]
//! See `palisade_tests::fuzz::csr`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::csr(data));
