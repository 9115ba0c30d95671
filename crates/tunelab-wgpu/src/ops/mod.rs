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

/// Bytes of one pooled uniform page.
pub(crate) const UNIFORM_PAGE: u64 = 64 << 10;

/// A command encoder together with what its commands need until they are submitted: the
/// dispatches' uniform values, packed at aligned offsets into pooled pages (written with one
/// `write_buffer` per page when submitting, instead of one new buffer per dispatch), pooled
/// scratch buffers, and temporary buffers destroyed after submitting. Derefs to the
/// `wgpu::CommandEncoder`.
///
/// Pages and scratch buffers go back to the context's pools after the submission; whatever
/// the next recorder writes to them is queued after it, so nothing is overwritten before the
/// GPU has read it.
pub struct Recorder {
    encoder: wgpu::CommandEncoder,
    /// The open compute pass: consecutive dispatches share one (each dispatch is its own
    /// usage scope, so it sees the writes of those before it); any other command closes it.
    pass: Option<wgpu::ComputePass<'static>>,
    /// Pages in use and the bytes each will hold.
    pages: Vec<(wgpu::Buffer, Vec<u8>)>,
    temps: Vec<wgpu::Buffer>,
    /// Pooled scratch buffers, returned to the context after submission.
    scratch: Vec<wgpu::Buffer>,
}

impl Recorder {
    pub fn new(ctx: &Context) -> Self {
        Self {
            encoder: ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("tunelab"),
                }),
            pass: None,
            pages: Vec::new(),
            temps: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Places `bytes` (a uniform struct) in a page: `(page, offset, size)` to bind.
    fn uniform(&mut self, ctx: &Context, bytes: &[u8]) -> (wgpu::Buffer, u64, u64) {
        let align = u64::from(ctx.device.limits().min_uniform_buffer_offset_alignment).max(16);
        // WGSL rounds uniform structs up to 16 bytes.
        let size = (bytes.len() as u64).div_ceil(16).max(1) * 16;
        let fits =
            |data: &Vec<u8>| (data.len() as u64).next_multiple_of(align) + size <= UNIFORM_PAGE;
        let (page, mut data) = match self.pages.pop() {
            Some(last) if fits(&last.1) => last,
            full => {
                self.pages.extend(full);
                (ctx.uniform_page(), Vec::new())
            }
        };
        let offset = (data.len() as u64).next_multiple_of(align);
        data.resize(offset as usize, 0);
        data.extend_from_slice(bytes);
        data.resize((offset + size) as usize, 0);
        self.pages.push((page.clone(), data));
        (page, offset, size)
    }

    /// A scratch storage buffer of at least `n` f32 values for these commands only (its
    /// contents are left over from earlier use): pooled by the context, back in the pool
    /// after submission.
    pub(crate) fn scratch(&mut self, ctx: &Context, n: u64) -> wgpu::Buffer {
        let b = ctx.take_scratch(n);
        self.scratch.push(b.clone());
        b
    }

    /// The compute pass to record a dispatch of `label` into: the open one, or a new one
    /// (always a new one while profiling, so that each dispatch gets its own timestamps).
    fn compute_pass(
        &mut self,
        ctx: &Context,
        label: &'static str,
    ) -> &mut wgpu::ComputePass<'static> {
        if ctx.is_profiling() {
            self.pass = None;
        }
        let encoder = &mut self.encoder;
        self.pass
            .get_or_insert_with(|| ctx.begin_pass(encoder, label).forget_lifetime())
    }

    /// Keeps `buffer` alive until the commands are submitted, then destroys it.
    pub(crate) fn keep(&mut self, buffer: wgpu::Buffer) {
        self.temps.push(buffer);
    }

    /// Writes the uniform pages, submits the commands, returns the pages and scratch buffers
    /// to the context's pools and destroys the temporary buffers.
    pub fn submit(mut self, ctx: &Context) {
        self.pass = None;
        for (page, data) in &self.pages {
            if !data.is_empty() {
                ctx.queue.write_buffer(page, 0, data);
            }
        }
        ctx.queue.submit([self.encoder.finish()]);
        ctx.return_uniform_pages(self.pages.into_iter().map(|(page, _)| page));
        ctx.return_scratch(self.scratch);
        for t in self.temps {
            t.destroy();
        }
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("uniform_pages", &self.pages.len())
            .field("temporary_buffers", &self.temps.len())
            .field("scratch_buffers", &self.scratch.len())
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Recorder {
    type Target = wgpu::CommandEncoder;
    fn deref(&self) -> &wgpu::CommandEncoder {
        &self.encoder
    }
}

impl std::ops::DerefMut for Recorder {
    /// The encoder, for commands other than dispatches (copies, clears): the open compute
    /// pass ends first.
    fn deref_mut(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.encoder
    }
}

/// Records one dispatch of `entry` with `uniform` at binding 0 and `buffers` at bindings
/// 1, 2, ... (in order; the entry point must use exactly these).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dispatch(
    ctx: &Context,
    rec: &mut Recorder,
    kernel: &'static str,
    source: &'static str,
    entry: &'static str,
    uniform: &[u8],
    buffers: &[(u32, &wgpu::Buffer)],
    groups: (u32, u32, u32),
) {
    let pipeline = ctx.pipeline(kernel, source, entry);
    let (page, offset, size) = rec.uniform(ctx, uniform);
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &page,
            offset,
            size: wgpu::BufferSize::new(size),
        }),
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
    let pass = rec.compute_pass(ctx, entry);
    pass.set_pipeline(&pipeline);
    pass.set_bind_group(0, &bind, &[]);
    pass.dispatch_workgroups(groups.0, groups.1, groups.2);
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
        &mut Recorder,
    ) -> Result<(Vec<wgpu::Buffer>, Vec<(wgpu::Buffer, usize)>), WgpuError>,
) -> Result<Vec<Vec<f32>>, WgpuError> {
    let outputs = ctx
        .checked(|| -> Result<Vec<(wgpu::Buffer, usize)>, WgpuError> {
            let mut enc = Recorder::new(ctx);
            let (temps, outs) = record(&mut enc)?;
            for t in temps {
                enc.keep(t);
            }
            enc.submit(ctx);
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

    /// Uniform values packed into pooled pages reach the right dispatch, across more
    /// dispatches than one page holds, and again when a second recorder reuses the pages.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn recorder_packs_uniforms_into_reused_pages() {
        use super::elementwise::{Op, encode};
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        let a = super::upload(&ctx, "a", &[1.0, 2.0, 3.0]);
        // Elementwise params take 16 bytes; each sits at the device's uniform alignment.
        let align = u64::from(ctx.device.limits().min_uniform_buffer_offset_alignment).max(16);
        let n = (super::UNIFORM_PAGE / align) as usize + 10;
        let outs: Vec<wgpu::Buffer> = (0..n).map(|_| super::output(&ctx, "out", 3)).collect();
        let mut pages_after_first = 0;
        for round in 0..2 {
            let mut rec = super::Recorder::new(&ctx);
            for (i, out) in outs.iter().enumerate() {
                let alpha = (i + round * n) as f32;
                encode(&ctx, &mut rec, Op::Scale, 3, alpha, 0.0, &a, None, out).unwrap();
            }
            rec.submit(&ctx);
            let checked = (0..n).filter(|i| i % 97 == 0 || *i + 20 >= n);
            for (i, out) in checked.map(|i| (i, &outs[i])) {
                let alpha = (i + round * n) as f32;
                let got = pollster::block_on(ctx.read_f32(out, 3)).unwrap();
                assert_eq!(
                    got,
                    vec![alpha, 2.0 * alpha, 3.0 * alpha],
                    "round {round} #{i}"
                );
            }
            if round == 0 {
                pages_after_first = ctx.pooled_uniform_pages();
                assert_eq!(pages_after_first, 2, "pages for {n} dispatches");
            } else {
                assert_eq!(
                    ctx.pooled_uniform_pages(),
                    pages_after_first,
                    "pages were reused"
                );
            }
        }
    }

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
