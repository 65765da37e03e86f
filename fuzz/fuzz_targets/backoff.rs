//! Any retry count and custom delay: see `errand_invariants::backoff_input`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| errand_invariants::backoff_input(data));
