//! Any bytes as a dashboard query string: see `errand_web::params_check` (the `fuzzing`
//! feature).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| errand_web::params_check(data));
