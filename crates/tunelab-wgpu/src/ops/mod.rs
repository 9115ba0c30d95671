//! Rust side of each kernel: validation of inputs, bind groups and dispatch.

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod layer_norm;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod reduce;
pub mod sequence;

use crate::{Context, WgpuError};
use wgpu::util::DeviceExt;

/// Records one dispatch of `entry` with `uniform` at binding 0 and `buffers` at bindings
/// 1, 2, ... (in order; the entry point must use exactly these). Returns the uniform buffer
/// (destroy it after submitting).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dispatch(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    kernel: &'static str,
    source: &'static str,
    entry: &'static str,
    uniform: &[u8],
    buffers: &[(u32, &wgpu::Buffer)],
    groups: (u32, u32, u32),
) -> wgpu::Buffer {
    let pipeline = ctx.pipeline(kernel, source, entry);
    let ubuf = ctx
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(entry),
            contents: uniform,
            usage: wgpu::BufferUsages::UNIFORM,
        });
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: ubuf.as_entire_binding(),
    }];
    for (binding, b) in buffers {
        entries.push(wgpu::BindGroupEntry {
            binding: *binding,
            resource: b.as_entire_binding(),
        });
    }
    let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(entry),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    {
        let mut pass = ctx.begin_pass(encoder, entry);
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
    }
    ubuf
}

/// A storage buffer holding `data` (one padding word when empty: bindings cannot be empty).
pub(crate) fn upload(ctx: &Context, label: &str, data: &[f32]) -> wgpu::Buffer {
    let contents: &[u8] = if data.is_empty() {
        &[0; 4]
    } else {
        bytemuck::cast_slice(data)
    };
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

/// A storage buffer holding u32 values (token ids, labels).
pub(crate) fn upload_u32(ctx: &Context, label: &str, data: &[u32]) -> wgpu::Buffer {
    let contents: &[u8] = if data.is_empty() {
        &[0; 4]
    } else {
        bytemuck::cast_slice(data)
    };
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE,
        })
}

/// A storage buffer of `n` f32 values that can be copied from, into and read back.
pub(crate) fn output(ctx: &Context, label: &str, n: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: n.max(1) * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// `(x, y, row_stride)` workgroups for `n` values at 256 per workgroup.
pub(crate) fn groups_for(ctx: &Context, n: u32, per_group: u32) -> (u32, u32) {
    split_dispatch(
        n.div_ceil(per_group),
        ctx.report().limits.max_compute_workgroups_per_dimension,
    )
}

/// Submits `record` (which fills an encoder and returns buffers to destroy afterwards and the
/// outputs), inside a validation error scope, then reads back each output's `len` values.
pub(crate) async fn run_host(
    ctx: &Context,
    record: impl FnOnce(
        &mut wgpu::CommandEncoder,
    ) -> Result<(Vec<wgpu::Buffer>, Vec<(wgpu::Buffer, usize)>), WgpuError>,
) -> Result<Vec<Vec<f32>>, WgpuError> {
    let outputs = ctx
        .checked(|| -> Result<Vec<(wgpu::Buffer, usize)>, WgpuError> {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            let (temps, outs) = record(&mut enc)?;
            ctx.queue.submit([enc.finish()]);
            for t in temps {
                t.destroy();
            }
            Ok(outs)
        })
        .await??;
    let mut values = Vec::new();
    for (buf, len) in outputs {
        values.push(ctx.read_f32(&buf, len).await?);
        buf.destroy();
    }
    Ok(values)
}

/// Workgroup counts `(x, y)` covering `groups` workgroups when one dimension may hold at most
/// `max_per_dim`. Kernels rebuild the flat index as `wg.y * x + wg.x` and bound-check it.
pub fn split_dispatch(groups: u32, max_per_dim: u32) -> (u32, u32) {
    if groups <= max_per_dim {
        (groups.max(1), 1)
    } else {
        let x = max_per_dim;
        (x, groups.div_ceil(x))
    }
}

#[cfg(test)]
mod tests {
    use super::split_dispatch;

    #[test]
    fn split_dispatch_covers_every_group_within_limits() {
        for &(groups, max) in &[
            (0u32, 65535u32),
            (1, 65535),
            (65535, 65535),
            (65536, 65535),
            (200_000, 65535),
            (7, 3),
        ] {
            let (x, y) = split_dispatch(groups, max);
            assert!(x <= max && y <= max, "{groups}/{max} -> ({x}, {y})");
            assert!(u64::from(x) * u64::from(y) >= u64::from(groups));
            // No more than one partial row of idle workgroups.
            assert!(u64::from(x) * u64::from(y) < u64::from(groups) + u64::from(x) + 1);
        }
    }
}
