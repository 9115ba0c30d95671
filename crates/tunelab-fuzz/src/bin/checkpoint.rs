//! libFuzzer entry for [`tunelab_fuzz::checkpoint`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunelab_fuzz::checkpoint(data));
