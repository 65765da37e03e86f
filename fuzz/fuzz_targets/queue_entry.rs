//! Any bytes as a queue entry: see `errand_invariants::queue_entry`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| errand_invariants::queue_entry(data));
