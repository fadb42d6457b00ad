#![no_main]
//! See `palisade_tests::fuzz::quic::quic_initial`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::quic::quic_initial(data));
