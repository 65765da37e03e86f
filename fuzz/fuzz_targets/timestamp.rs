//! Any JSON value as a timestamp or score: see `errand_invariants::timestamp`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| errand_invariants::timestamp(data));
