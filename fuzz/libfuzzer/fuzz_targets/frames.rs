#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cliscale_fuzz::frames(data));
