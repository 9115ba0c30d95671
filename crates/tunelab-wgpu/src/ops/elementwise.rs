//! Elementwise ops (`kernels/elementwise.wgsl`).
//!
//! `axpby`: `y = alpha * x + beta * y` over vectors of equal length `n`.

use super::split_dispatch;
use crate::{Context, WgpuError, kernels};
use wgpu::util::DeviceExt;

const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    row_stride: u32,
    alpha: f32,
    beta: f32,
}

/// Computes `alpha * x + beta * y` on the GPU and returns it.
///
/// Errors: [`WgpuError::Shape`] when the lengths differ, [`WgpuError::LimitExceeded`] when a
/// vector is larger than one storage binding may be.
pub async fn axpby(
    ctx: &Context,
    alpha: f32,
    x: &[f32],
    beta: f32,
    y: &[f32],
) -> Result<Vec<f32>, WgpuError> {
    if x.len() != y.len() {
        return Err(WgpuError::Shape(format!(
            "axpby: x has {} elements but y has {}",
            x.len(),
            y.len()
        )));
    }
    let n = u32::try_from(x.len()).map_err(|_| WgpuError::LimitExceeded {
        what: "axpby vector length".into(),
        requested: x.len() as u64,
        available: u64::from(u32::MAX),
    })?;
    if n == 0 {
        return Ok(Vec::new());
    }
    ctx.check_binding("axpby vector", u64::from(n) * 4)?;

    let groups = n.div_ceil(WORKGROUP);
    let (gx, gy) = split_dispatch(
        groups,
        ctx.report().limits.max_compute_workgroups_per_dimension,
    );
    let params = Params {
        n,
        row_stride: gx,
        alpha,
        beta,
    };
    let device = &ctx.device;
    let pipeline = ctx.pipeline("elementwise.wgsl", kernels::ELEMENTWISE, "axpby");
    let y_buf = ctx
        .checked(|| {
            let params_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("axpby.params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let x_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("axpby.x"),
                contents: bytemuck::cast_slice(x),
                usage: wgpu::BufferUsages::STORAGE,
            });
            let y_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("axpby.y"),
                contents: bytemuck::cast_slice(y),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("axpby"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: params_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: x_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: y_buf.as_entire_binding(),
                    },
                ],
            });
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(gx, gy, 1);
            }
            ctx.queue.submit([encoder.finish()]);
            params_buf.destroy();
            x_buf.destroy();
            y_buf
        })
        .await?;
    let out = ctx.read_f32(&y_buf, x.len()).await;
    y_buf.destroy();
    out
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// The CPU reference.
    fn axpby_ref(alpha: f32, x: &[f32], beta: f32, y: &[f32]) -> Vec<f32> {
        x.iter().zip(y).map(|(x, y)| alpha * x + beta * y).collect()
    }

    #[test]
    fn axpby_matches_the_cpu_reference_on_odd_lengths() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        for n in [1usize, 3, 255, 256, 257, 1000, 70_001] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let got = pollster::block_on(axpby(&ctx, 1.5, &x, -0.25, &y)).unwrap();
            let want = axpby_ref(1.5, &x, -0.25, &y);
            assert_eq!(got.len(), n);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "n={n} i={i}: {g} vs {w}"
                );
            }
        }
        assert_eq!(
            ctx.cached_pipelines(),
            1,
            "the pipeline is built once and reused"
        );
    }

    #[test]
    fn axpby_rejects_mismatched_lengths() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        let err = pollster::block_on(axpby(&ctx, 1.0, &[1.0, 2.0], 1.0, &[1.0])).unwrap_err();
        assert_eq!(err.to_string(), "axpby: x has 2 elements but y has 1");
    }
}
