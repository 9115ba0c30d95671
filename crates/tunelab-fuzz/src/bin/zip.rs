//! libFuzzer entry for [`tunelab_fuzz::zip`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunelab_fuzz::zip(data));
