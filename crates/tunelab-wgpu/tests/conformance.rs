//! The shared conformance suite (`tunelab-conformance`) on the WebGPU backend, natively on
//! whatever adapter is present (lavapipe without a GPU); skipped without one unless
//! `TUNELAB_REQUIRE_ADAPTER` is set (`cargo xtask test` sets it). The browser's WebGPU runs
//! the same suite in `web_adapter.rs`.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::sync::Arc;
use tunelab_wgpu::{Context, Wgpu};

#[test]
fn the_webgpu_backend_passes_the_conformance_suite() {
    let ctx = match pollster::block_on(Context::new(Default::default())) {
        Ok(ctx) => ctx,
        Err(e) if std::env::var_os("TUNELAB_REQUIRE_ADAPTER").is_none() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("TUNELAB_REQUIRE_ADAPTER is set but: {e}"),
    };
    pollster::block_on(tunelab_conformance::run(&Wgpu::new(Arc::new(ctx))));
}
