//! libFuzzer entry for [`tunelab_fuzz::safetensors`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunelab_fuzz::safetensors(data));
