//! The backend choice (WebGPU or the wasm CPU backend) and a lost WebGPU device.

use crate::{Engine, state};
use std::sync::Arc;
use tunelab_candle::Candle;
use tunelab_web::protocol::BackendInfo;

use crate::run::*;

/// The backend: WebGPU, unless the browser has no adapter, the adapter is a software
/// renderer (SwiftShader, WARP, lavapipe: the wasm CPU backend is much faster; `force_gpu`
/// overrides), or the page asked for the CPU. The WebGPU device is created once and kept.
// In wasm wgpu's types are not Send: the worker's one thread owns the device (Wgpu takes an Arc).
#[allow(clippy::arc_with_non_send_sync)]
pub(crate) async fn engine(force_cpu: bool, force_gpu: bool) -> (Engine, BackendInfo) {
    let st = state();
    // A device lost since it was made cannot be used again: ask for a new one.
    let cached = st
        .gpu
        .borrow()
        .clone()
        .filter(|g| !matches!(g, Ok((w, _)) if w.context().lost().is_some()));
    let gpu = match cached {
        Some(g) => g,
        None => {
            let g = match tunelab_wgpu::Context::new(Default::default()).await {
                Ok(ctx) => {
                    let adapter = ctx.report().clone();
                    Ok((tunelab_wgpu::Wgpu::new(Arc::new(ctx)), adapter))
                }
                Err(e) => Err(match e.to_string() {
                    m if m.contains("no GPU adapter") => {
                        "this browser offers no WebGPU adapter".to_string()
                    }
                    m => m,
                }),
            };
            *st.gpu.borrow_mut() = Some(g.clone());
            g
        }
    };
    let cpu = |reason: String, adapter: Option<tunelab_wgpu::AdapterReport>| {
        (
            Engine::Cpu(Candle::cpu()),
            BackendInfo::Cpu {
                reason,
                adapter,
                threads: crate::cpu_threads(),
            },
        )
    };
    match gpu {
        Err(reason) => cpu(reason, None),
        Ok((_, adapter)) if force_cpu => cpu(
            "the CPU backend was chosen for this run".into(),
            Some(adapter),
        ),
        Ok((_, adapter)) if adapter.device_type == "Cpu" && !force_gpu => cpu(
            format!(
                "the browser's WebGPU adapter ({}) is a software renderer, slower than the CPU backend",
                if adapter.architecture.is_empty() {
                    adapter.vendor.clone()
                } else {
                    adapter.architecture.clone()
                }
            ),
            Some(adapter),
        ),
        Ok((be, adapter)) => (Engine::Gpu(be), BackendInfo::WebGpu { adapter }),
    }
}

/// Destroys the worker's WebGPU device (the page's test hook; see `Request::LoseDevice`).
pub(crate) fn lose_device() {
    if let Some(Ok((gpu, _))) = state().gpu.borrow().as_ref() {
        gpu.context().destroy_device();
    }
}

/// Why the worker's WebGPU device was lost, if it was.
pub(crate) fn device_lost() -> Option<String> {
    match state().gpu.borrow().as_ref() {
        Some(Ok((gpu, _))) => gpu.context().lost(),
        _ => None,
    }
}

/// After a failed run on WebGPU: whether the device was lost. The browser says so through a
/// promise that can settle after the failed operation's own (a readback's mapping fails
/// first), so this waits for it up to two seconds.
pub(crate) async fn wait_for_loss() -> Option<String> {
    if !state().on_gpu.get() {
        return None;
    }
    for _ in 0..20 {
        if let Some(why) = device_lost() {
            return Some(why);
        }
        sleep(100).await;
    }
    None
}
