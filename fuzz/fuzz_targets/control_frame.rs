#![no_main]
//! See `palisade_tests::fuzz::control_frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::control_frame(data));
