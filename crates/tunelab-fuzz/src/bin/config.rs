//! libFuzzer entry for [`tunelab_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunelab_fuzz::config(data));
