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
    /// Dispatches recorded.
    dispatches: usize,
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
            dispatches: 0,
        }
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches
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
        self.dispatches += 1;
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

/// A storage binding: a whole buffer, or `size` bytes of it from `offset` (a multiple of the
/// device's storage offset alignment) for ops that process a tensor larger than one binding
/// may hold in chunks.
#[derive(Clone, Copy)]
pub(crate) struct Part<'a> {
    pub buf: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: Option<u64>,
}

impl<'a> From<&'a wgpu::Buffer> for Part<'a> {
    fn from(buf: &'a wgpu::Buffer) -> Self {
        Part {
            buf,
            offset: 0,
            size: None,
        }
    }
}

impl<'a> Part<'a> {
    /// Rows `first .. first + count` of a row-major tensor with `width` f32 values per row.
    pub fn rows(buf: &'a wgpu::Buffer, width: u64, first: u32, count: u32) -> Self {
        Part {
            buf,
            offset: u64::from(first) * width * 4,
            size: Some((u64::from(count) * width * 4).max(4)),
        }
    }
}

/// Row ranges `(first, count)` covering `rows` rows of tensors that hold `widths[i]` f32
/// values per row: one range when every tensor fits one binding, else ranges whose rows fit
/// the binding limit in every tensor and start at offsets the device can bind (rows in
/// multiples of what the offset alignment needs). A single aligned block of rows that does
/// not fit is a [`WgpuError::LimitExceeded`] naming `what`.
pub(crate) fn row_chunks(
    ctx: &Context,
    what: &str,
    rows: u32,
    widths: &[u64],
) -> Result<Vec<(u32, u32)>, WgpuError> {
    let limit = ctx.binding_limit();
    let widest = widths.iter().copied().max().unwrap_or(1).max(1);
    if u64::from(rows) * widest * 4 <= limit {
        return Ok(vec![(0, rows)]);
    }
    // Rows per step so that every tensor's chunk starts at an aligned byte offset.
    let align = u64::from(ctx.device.limits().min_storage_buffer_offset_alignment).max(4) / 4;
    let step = widths.iter().fold(1u64, |step, &w| {
        let need = align / gcd(w.max(1), align);
        step / gcd(step, need) * need
    });
    let fit = limit / (widest * 4);
    let per = fit / step * step;
    if per == 0 {
        return Err(WgpuError::LimitExceeded {
            what: format!("{what}: a block of {step} rows of {widest} values"),
            requested: step * widest * 4,
            available: limit,
        });
    }
    let per = u32::try_from(per).unwrap_or(u32::MAX);
    Ok((0..rows.div_ceil(per))
        .map(|i| {
            let first = i * per;
            (first, per.min(rows - first))
        })
        .collect())
}

/// Rows `first .. first + count` of a narrow tensor (`width` values per row: key masks,
/// per-row statistics, ids) for one part of a wide tensor's rows: the buffer itself when the
/// part is every row (`whole`), else a scratch copy of the rows. Their offset need not be
/// bindable, so narrow tensors do not force the wide tensors' parts to align to them (a mask
/// of 15 values per row would otherwise take parts of 64 rows on a 256-byte alignment).
/// Outputs take [`narrow_target`] instead.
pub(crate) fn narrow_in(
    ctx: &Context,
    rec: &mut Recorder,
    buf: &wgpu::Buffer,
    width: u64,
    (first, count): (u32, u32),
    whole: bool,
) -> wgpu::Buffer {
    let copy = narrow_target(ctx, rec, buf, width, (first, count), whole);
    let bytes = u64::from(count) * width * 4;
    if !whole && bytes > 0 {
        rec.copy_buffer_to_buffer(buf, u64::from(first) * width * 4, &copy, 0, bytes);
    }
    copy
}

/// Where a dispatch writes rows `first .. first + count` of a narrow tensor: the buffer
/// itself when the part is every row (`whole`), else scratch (its old rows are not copied in:
/// they are about to be overwritten); [`narrow_out`] copies them to their place.
pub(crate) fn narrow_target(
    ctx: &Context,
    rec: &mut Recorder,
    buf: &wgpu::Buffer,
    width: u64,
    (_, count): (u32, u32),
    whole: bool,
) -> wgpu::Buffer {
    if whole {
        buf.clone()
    } else {
        rec.scratch(ctx, u64::from(count) * width)
    }
}

/// Copies rows written into a [`narrow_target`] back to their place in `buf` (nothing when
/// the part was every row, written in place).
pub(crate) fn narrow_out(
    rec: &mut Recorder,
    copy: &wgpu::Buffer,
    buf: &wgpu::Buffer,
    width: u64,
    (first, count): (u32, u32),
    whole: bool,
) {
    let bytes = u64::from(count) * width * 4;
    if !whole && bytes > 0 {
        rec.copy_buffer_to_buffer(copy, 0, buf, u64::from(first) * width * 4, bytes);
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Records one dispatch of `entry` with `uniform` at binding 0 and `buffers` at bindings
/// 1, 2, ... (in order; the entry point must use exactly these): whole buffers or parts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dispatch<'a, P: Into<Part<'a>> + Copy>(
    ctx: &Context,
    rec: &mut Recorder,
    kernel: &'static str,
    source: &'static str,
    entry: &'static str,
    uniform: &[u8],
    buffers: &[(u32, P)],
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
        let part: Part<'a> = (*b).into();
        entries.push(wgpu::BindGroupEntry {
            binding: *binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: part.buf,
                offset: part.offset,
                size: part.size.and_then(wgpu::BufferSize::new),
            }),
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

/// A storage buffer holding u32 values (token ids, labels), which
/// ops may copy from (`narrow_in`).
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
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
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
    #[cfg(not(target_arch = "wasm32"))]
    use crate::WgpuError;

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

    /// A context whose bindings hold at most `bytes`.
    #[cfg(not(target_arch = "wasm32"))]
    fn small(bytes: u64) -> Option<crate::Context> {
        crate::context::tests::context_with(crate::ContextOptions {
            max_binding: Some(bytes),
            ..Default::default()
        })
    }

    /// Row chunks cover every row once, in order, fit the limit in every tensor and start at
    /// bindable offsets; a block that cannot fit is a typed error naming the tensor.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn row_chunks_cover_fit_and_align() {
        let Some(ctx) = small(4096) else { return };
        let align = u64::from(ctx.device.limits().min_storage_buffer_offset_alignment);
        assert_eq!(ctx.binding_limit(), 4096);
        assert_eq!(
            super::row_chunks(&ctx, "t", 10, &[16, 8]).unwrap(),
            vec![(0, 10)]
        );
        for (rows, widths) in [
            (100u32, vec![16u64, 64]),
            (1100, vec![1]),
            (97, vec![12, 3]),
            (9, vec![256]),
        ] {
            let chunks = super::row_chunks(&ctx, "t", rows, &widths).unwrap();
            assert!(chunks.len() > 1, "{rows} x {widths:?}: {chunks:?}");
            let mut next = 0;
            for &(first, count) in &chunks {
                assert_eq!(first, next, "{chunks:?}");
                assert!(count > 0);
                for &w in &widths {
                    assert!(u64::from(count) * w * 4 <= 4096, "{chunks:?} {w}");
                    assert_eq!(u64::from(first) * w * 4 % align, 0, "{chunks:?} {w}");
                }
                next = first + count;
            }
            assert_eq!(next, rows);
        }
        // One row of 2,000 values (8 KB) cannot fit 4 KiB.
        let e = super::row_chunks(&ctx, "the logits", 3, &[2000]).unwrap_err();
        assert!(
            matches!(e, WgpuError::LimitExceeded { .. }) && e.to_string().contains("the logits"),
            "{e}"
        );
    }

    /// Every op that processes tensors larger than one binding in parts gives what it gives
    /// on a context that binds them whole (and the CPU reference where one is at hand).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn chunked_ops_match_whole_bindings() {
        use super::{elementwise, loss, matmul, reduce};
        let (Some(whole), Some(ctx)) = (crate::context::tests::context(), small(4096)) else {
            return;
        };
        let close = |what: &str, a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{what} at {i}: {x} vs {y}"
                );
            }
        };
        let vals = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7 + seed * 13) % 29) as f32 - 14.0) * 0.07)
                .collect()
        };
        // Elementwise: 3,000 values (12 KB) in parts.
        let (x, y) = (vals(3000, 1), vals(3000, 2));
        let got = pollster::block_on(elementwise::axpby(&ctx, 0.5, &x, -2.0, &y)).unwrap();
        let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| 0.5 * a - 2.0 * b).collect();
        close("axpby", &got, &want);
        // Bias add, column sums, sum of squares over (150, 20) = 12 KB.
        let (rows, cols) = (150usize, 20usize);
        let m = vals(rows * cols, 3);
        let bias = vals(cols, 4);
        close(
            "add_bias",
            &pollster::block_on(reduce::add_bias(&ctx, &m, &bias)).unwrap(),
            &pollster::block_on(reduce::add_bias(&whole, &m, &bias)).unwrap(),
        );
        let sums = pollster::block_on(reduce::sum_to_last(&ctx, &m, cols)).unwrap();
        close(
            "sum_to_last",
            &sums,
            &pollster::block_on(reduce::sum_to_last(&whole, &m, cols)).unwrap(),
        );
        let want: Vec<f32> = (0..cols)
            .map(|c| (0..rows).map(|r| f64::from(m[r * cols + c])).sum::<f64>() as f32)
            .collect();
        close("sum_to_last vs f64", &sums, &want);
        let sq = pollster::block_on(reduce::sum_squares(&ctx, &m)).unwrap();
        let want = m.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() as f32;
        close("sum_squares", &[sq], &[want]);
        let sq = pollster::block_on(reduce::sum_squares_many(&ctx, &[&m, &x])).unwrap();
        let want = want + x.iter().map(|v| v * v).sum::<f32>();
        close("sum_squares_many", &[sq], &[want]);
        // Embedding rows from a (100, 16) table (6.4 KB) and the table's gradient, in parts
        // of the table and of the 150 positions (9.6 KB of rows; ids repeat 100 apart, so an
        // id's gradient adds positions from different parts).
        let (vocab, c) = (100usize, 16usize);
        let table = vals(vocab * c, 11);
        let ids: Vec<u32> = (0..150u32).map(|i| (i * 37 + 5) % 100).collect();
        let rows = pollster::block_on(super::embedding::gather(&ctx, &table, c, &ids)).unwrap();
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| table[i as usize * c..(i as usize + 1) * c].to_vec())
            .collect();
        close("gather", &rows, &want);
        let dy = vals(ids.len() * c, 12);
        close(
            "scatter_add",
            &pollster::block_on(super::embedding::scatter_add(&ctx, &ids, &dy, c, vocab)).unwrap(),
            &pollster::block_on(super::embedding::scatter_add(&whole, &ids, &dy, c, vocab))
                .unwrap(),
        );
        // AdamW over 3,000 values.
        let hp = tunelab_core::backend::AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step: 3,
        };
        let (m1, v1) = (
            vals(3000, 9),
            vals(3000, 10).iter().map(|v| v * v).collect::<Vec<_>>(),
        );
        let parts =
            pollster::block_on(super::optim::adamw(&ctx, &x, &y, &m1, &v1, 0.5, hp)).unwrap();
        let whole_out =
            pollster::block_on(super::optim::adamw(&whole, &x, &y, &m1, &v1, 0.5, hp)).unwrap();
        close("adamw param", &parts.0, &whole_out.0);
        close("adamw m", &parts.1, &whole_out.1);
        close("adamw v", &parts.2, &whole_out.2);
        // Cross-entropy over (40, 64) logits = 10 KB, some rows ignored.
        let (r, k) = (40usize, 64usize);
        let logits = vals(r * k, 5);
        let labels: Vec<u32> = (0..r as u32)
            .map(|i| {
                if i % 5 == 4 {
                    tunelab_core::backend::IGNORE_INDEX
                } else {
                    i % 64
                }
            })
            .collect();
        close(
            "cross_entropy_sum",
            &[pollster::block_on(loss::cross_entropy_sum(&ctx, &logits, &labels, k)).unwrap()],
            &[pollster::block_on(loss::cross_entropy_sum(&whole, &logits, &labels, k)).unwrap()],
        );
        close(
            "cross_entropy_backward",
            &pollster::block_on(loss::cross_entropy_backward(&ctx, &logits, &labels, k, 0.5))
                .unwrap(),
            &pollster::block_on(loss::cross_entropy_backward(
                &whole, &logits, &labels, k, 0.5,
            ))
            .unwrap(),
        );
        // Layer norm over (150, 16) = 9.6 KB in parts of 64 rows (x, y, dy, dx; mean and rstd
        // at their rows' offsets; the parameter gradients' partial sums side by side).
        let (rows, c) = (150usize, 16usize);
        let (x, dy) = (vals(rows * c, 13), vals(rows * c, 14));
        let (gamma, beta) = (vals(c, 15), vals(c, 16));
        let ln = |ctx| {
            let (y, mean, rstd) =
                pollster::block_on(super::layer_norm::forward(ctx, &x, &gamma, &beta, 1e-5))
                    .unwrap();
            let (dx, dg, db) = pollster::block_on(super::layer_norm::backward(
                ctx, &x, &gamma, &mean, &rstd, &dy,
            ))
            .unwrap();
            [y, mean, rstd, dx, dg, db]
        };
        for (what, (got, want)) in ["y", "mean", "rstd", "dx", "dgamma", "dbeta"]
            .iter()
            .zip(ln(&ctx).iter().zip(&ln(&whole)))
        {
            close(&format!("layer norm {what}"), got, want);
        }
        // Attention over 20 sequences of 8 tokens, 2 heads of 8 (q, k, v of 10 KB), with a key
        // mask and causal, in parts of the batch.
        for (causal, masked) in [(false, true), (true, false)] {
            let d = super::attention::Dims {
                batch: 20,
                t: 8,
                heads: 2,
                d: 8,
                causal,
            };
            let n = d.len() as usize;
            let (q, k, v, d_out) = (vals(n, 17), vals(n, 18), vals(n, 19), vals(n, 20));
            let mask: Vec<f32> = (0..20 * 8)
                .map(|i| f32::from(i % 8 < 3 + i / 8 % 5))
                .collect();
            let mask = masked.then_some(&mask[..]);
            let attn = |ctx| {
                let (out, lse) =
                    pollster::block_on(super::attention::forward(ctx, &d, &q, &k, &v, mask))
                        .unwrap();
                let (dq, dk, dv) = pollster::block_on(super::attention::backward(
                    ctx, &d, &q, &k, &v, &out, &lse, &d_out, mask,
                ))
                .unwrap();
                [out, lse, dq, dk, dv]
            };
            for (what, (got, want)) in ["out", "lse", "dq", "dk", "dv"]
                .iter()
                .zip(attn(&ctx).iter().zip(&attn(&whole)))
            {
                close(&format!("attention {what} (causal {causal})"), got, want);
            }
        }
        // Concatenation and slicing along the sequence of (30, 3 + 5, 8) (7.7 KB).
        let (a, b) = (vals(30 * 3 * 8, 21), vals(30 * 5 * 8, 22));
        let cat = pollster::block_on(super::sequence::concat(&ctx, &a, &b, 30, 8)).unwrap();
        close(
            "concat",
            &cat,
            &pollster::block_on(super::sequence::concat(&whole, &a, &b, 30, 8)).unwrap(),
        );
        close(
            "slice",
            &pollster::block_on(super::sequence::slice(&ctx, &cat, 30, 8, 2, 5)).unwrap(),
            &pollster::block_on(super::sequence::slice(&whole, &cat, 30, 8, 2, 5)).unwrap(),
        );
        // Matmuls in blocks: rows of A and C (untransposed A; a vec4 shape and a scalar one,
        // with bias), K (transposed A, as a weight gradient), and with blocks read and written
        // through strides: columns of C from rows of a transposed B too large (the tied MLM
        // decoder), K with an untransposed B too large (its input gradient), rows of C from
        // columns of a transposed A (its weight gradient), both transposed; vec4 shapes whose
        // blocks start at multiples of 4, one whose column blocks do not (k = 96: blocks of
        // 10 columns), and odd ones (scalar kernels). Widths are such that 4 KiB holds a block
        // of rows starting at an aligned offset.
        for (m, n, k, ta, tb) in [
            (96u32, 36u32, 16u32, false, false),
            (67, 33, 5, false, false),
            (36, 16, 96, true, false),
            (20, 13, 150, true, false),
            (37, 144, 16, false, true),
            (40, 128, 16, false, true),
            (8, 40, 96, false, true),
            (37, 16, 144, false, false),
            (40, 16, 128, false, false),
            (144, 16, 37, true, false),
            (128, 16, 40, true, false),
            (30, 48, 64, true, true),
        ] {
            let d = matmul::Dims {
                batch: 1,
                m,
                n,
                k,
                ta,
                tb,
                b_shared: true,
            };
            let a = vals(d.a_len() as usize, 6);
            let b = vals(d.b_len() as usize, 7);
            let bias = vals(n as usize, 8);
            assert!(
                d.a_len().max(d.b_len()).max(d.c_len()) * 4 > 4096,
                "{d:?} must need parts"
            );
            let got = pollster::block_on(matmul::matmul(&ctx, &d, &a, &b, Some(&bias))).unwrap();
            close(
                &format!("matmul {d:?}"),
                &got,
                &pollster::block_on(matmul::matmul(&whole, &d, &a, &b, Some(&bias))).unwrap(),
            );
            let want = matmul::tests::reference(&d, &a, &b, Some(&bias));
            close(&format!("matmul {d:?} vs f64"), &got, &want);
            // Split K inside blocks: partial products summed into C's view (added to it after
            // the first K block).
            let split = matmul::Tiling::SplitK(2);
            let got =
                pollster::block_on(matmul::matmul_tiled(&ctx, &d, split, &a, &b, Some(&bias)));
            close(
                &format!("matmul {d:?} split K vs f64"),
                &got.unwrap(),
                &want,
            );
        }
        // Batched products in parts of the batch: six entries of (16, 20) @ (20, 12), B per
        // entry or shared, transposed or not (A 7.5 KiB, C 4.5 KiB).
        for (ta, tb, b_shared) in [
            (false, false, false),
            (true, true, false),
            (false, true, true),
        ] {
            let d = matmul::Dims {
                batch: 6,
                m: 16,
                n: 12,
                k: 20,
                ta,
                tb,
                b_shared,
            };
            let (a, b) = (vals(d.a_len() as usize, 23), vals(d.b_len() as usize, 24));
            let got = pollster::block_on(matmul::matmul(&ctx, &d, &a, &b, None)).unwrap();
            let want = matmul::tests::reference(&d, &a, &b, None);
            close(&format!("batched matmul {d:?} vs f64"), &got, &want);
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
