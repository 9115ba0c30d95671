//! libFuzzer entry for [`tunelab_fuzz::data`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunelab_fuzz::data(data));
