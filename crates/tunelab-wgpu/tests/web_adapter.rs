//! Runs in headless Chromium (`cargo xtask test --wasm`): WebGPU through wgpu.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn wgpu_gets_a_webgpu_adapter_in_the_browser() {
    let ctx = tunelab_wgpu::Context::new(Default::default())
        .await
        .expect("WebGPU adapter (is Chromium started with --enable-unsafe-webgpu?)");
    let report = ctx.report();
    assert_eq!(report.backend, "BrowserWebGpu");
    assert!(!report.vendor.is_empty(), "{report:?}");
    // We ask for the adapter's real limits, not WebGPU's 128 MiB default.
    assert!(report.limits.max_storage_buffer_binding_size >= 128 << 20);
}

#[wasm_bindgen_test]
async fn axpby_runs_on_webgpu() {
    let ctx = tunelab_wgpu::Context::new(Default::default())
        .await
        .unwrap();
    let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let y: Vec<f32> = (0..1000).map(|i| 1.0 - i as f32).collect();
    let got = tunelab_wgpu::ops::elementwise::axpby(&ctx, 2.0, &x, 3.0, &y)
        .await
        .unwrap();
    for i in 0..1000 {
        assert_eq!(got[i], 2.0 * x[i] + 3.0 * y[i], "i={i}");
    }
}
