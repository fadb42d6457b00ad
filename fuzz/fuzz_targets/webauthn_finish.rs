#![no_main]
//! See `palisade_tests::fuzz::webauthn_finish`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_tests::fuzz::webauthn_finish(data));
