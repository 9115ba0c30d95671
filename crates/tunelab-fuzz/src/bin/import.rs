//! libFuzzer entry for [`tunelab_fuzz::import`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunelab_fuzz::import(data));
