//! The shared conformance suite (`tunelab-conformance`) on the WebGPU backend, natively on
//! whatever adapter is present (lavapipe without a GPU); skipped without one unless
//! `TUNELAB_REQUIRE_ADAPTER` is set (`cargo xtask test` sets it). The browser's WebGPU runs
//! the same suite in `web_adapter.rs`.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::sync::Arc;
use tunelab_wgpu::{Context, ContextOptions, Wgpu};

fn context(options: ContextOptions) -> Option<Context> {
    match pollster::block_on(Context::new(options)) {
        Ok(ctx) => Some(ctx),
        Err(e) if std::env::var_os("TUNELAB_REQUIRE_ADAPTER").is_none() => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("TUNELAB_REQUIRE_ADAPTER is set but: {e}"),
    }
}

#[test]
fn the_webgpu_backend_passes_the_conformance_suite() {
    let Some(ctx) = context(Default::default()) else {
        return;
    };
    pollster::block_on(tunelab_conformance::run(&Wgpu::new(Arc::new(ctx))));
}

/// With storage bindings capped at 512 KiB (room for a block of rows of BERT's 30,522-word
/// vocabulary), the large shapes (1.2 to 16 MiB) go through the kernels' binding-chunked
/// paths, which a device with large bindings takes only for tensors of hundreds of MiB.
#[test]
fn the_binding_chunked_paths_pass_the_large_shape_cases() {
    let Some(ctx) = context(ContextOptions {
        max_binding: Some(512 << 10),
        ..Default::default()
    }) else {
        return;
    };
    pollster::block_on(tunelab_conformance::ops_past_one_workgroup(&Wgpu::new(
        Arc::new(ctx),
    )));
}
