//! Any JSON value as a timestamp or score: see `errand_core::invariants::timestamp`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| errand_core::invariants::timestamp(data));
