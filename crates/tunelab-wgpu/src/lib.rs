//! Tunelab's WebGPU backend.
//!
//! One [`Context`] holds the wgpu instance, adapter, device and queue for the life of the
//! program, natively (Vulkan, Metal, DX12; Mesa's lavapipe on machines without a GPU) and in
//! the browser (WebGPU). Kernels are WGSL files under `src/kernels/`, listed in
//! [`kernels::ALL`] and each paired with a Rust file under `src/ops/` that binds and
//! dispatches it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tunelab_wgpu::WgpuError> {
//! let ctx = tunelab_wgpu::Context::new(Default::default()).await?;
//! println!("{}", ctx.report().name);
//! let y = tunelab_wgpu::ops::elementwise::axpby(&ctx, 2.0, &[1.0, 2.0], 1.0, &[10.0, 20.0]).await?;
//! assert_eq!(y, vec![12.0, 24.0]);
//! # Ok(()) }
//! ```

mod backend;
mod context;
mod error;
pub mod kernels;
pub mod ops;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use backend::{FLUSH_EVERY, PoolStats, WTensor, Wgpu};
pub use context::{AdapterReport, Context, ContextOptions, KernelTime, LimitsReport};
pub use error::WgpuError;
