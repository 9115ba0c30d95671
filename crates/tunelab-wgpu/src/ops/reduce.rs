//! Reductions and broadcasts (`kernels/reduce.wgsl`): bias add, the bias gradient
//! (`sum_to_last`) and the sum of squares for the global gradient norm. Deterministic.

use super::{Part, Recorder, dispatch, groups_for, output, row_chunks, run_host, upload};
use crate::{Context, WgpuError, kernels};

const K: &str = "reduce.wgsl";
/// Values one `sum_squares` workgroup folds.
const PER_GROUP: u32 = 2048;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    row_stride: u32,
    square: u32,
    out_offset: u32,
    pad: [u32; 2],
}

impl Params {
    /// Params for a pass over `n` values (`rows` × `cols` where it matters) dispatched
    /// `row_stride` workgroups wide; no squaring, output from index 0.
    fn new(rows: u32, cols: u32, n: u32, row_stride: u32) -> Self {
        Params {
            rows,
            cols,
            n,
            row_stride,
            square: 0,
            out_offset: 0,
            pad: [0; 2],
        }
    }
}

fn len(rows: u32, cols: u32) -> Result<u32, WgpuError> {
    rows.checked_mul(cols).ok_or(WgpuError::LimitExceeded {
        what: "reduce tensor elements".into(),
        requested: u64::from(rows) * u64::from(cols),
        available: u64::from(u32::MAX),
    })
}

/// Records `out (rows, cols) = x + bias (cols,)`, in chunks of rows where `x` is larger than
/// one binding.
pub fn encode_add_bias(
    ctx: &Context,
    enc: &mut Recorder,
    rows: u32,
    cols: u32,
    x: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    encode_per_feature(ctx, enc, "add_bias", rows, cols, x, bias, out)
}

/// Records `out (rows, cols) = x * scale (cols,)`, feature by feature (IA3's vectors), in
/// chunks of rows where `x` is larger than one binding.
pub fn encode_scale_features(
    ctx: &Context,
    enc: &mut Recorder,
    rows: u32,
    cols: u32,
    x: &wgpu::Buffer,
    scale: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    encode_per_feature(ctx, enc, "scale_features", rows, cols, x, scale, out)
}

/// One `(rows, cols)` by `(cols,)` entry point of the kernel: `add_bias` or `scale_features`.
#[allow(clippy::too_many_arguments)]
fn encode_per_feature(
    ctx: &Context,
    enc: &mut Recorder,
    entry: &'static str,
    rows: u32,
    cols: u32,
    x: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    len(rows, cols)?;
    let w = u64::from(cols);
    for (first, count) in row_chunks(ctx, &format!("{entry} input"), rows, &[w])? {
        let n = len(count, cols)?;
        let (gx, gy) = groups_for(ctx, n, 256);
        let p = Params::new(count, cols, n, gx);
        dispatch(
            ctx,
            enc,
            K,
            kernels::REDUCE,
            entry,
            bytemuck::bytes_of(&p),
            &[
                (1, Part::rows(x, w, first, count)),
                (2, bias.into()),
                (3, Part::rows(out, w, first, count)),
            ],
            (gx, gy, 1),
        );
    }
    Ok(())
}

/// Rows per chunk of the column sums' first pass.
const CHUNK_ROWS: u32 = 64;

/// Rows per chunk for `rows` rows: [`CHUNK_ROWS`], doubled until the chunks fit one dispatch
/// dimension.
pub(crate) fn chunk_rows(ctx: &Context, rows: u32) -> u32 {
    let max = ctx
        .report()
        .limits
        .max_compute_workgroups_per_dimension
        .max(1);
    let mut chunk = CHUNK_ROWS;
    while rows.div_ceil(chunk) > max {
        chunk *= 2;
    }
    chunk
}

/// Column blocks of 64 for the chunked column sums (one dispatch dimension).
pub(crate) fn column_blocks(ctx: &Context, what: &str, cols: u32) -> Result<u32, WgpuError> {
    let blocks = cols.div_ceil(64);
    let max = ctx.report().limits.max_compute_workgroups_per_dimension;
    if blocks > max {
        return Err(WgpuError::LimitExceeded {
            what: format!("{what}: column blocks of 64 for {cols} columns"),
            requested: u64::from(blocks),
            available: u64::from(max),
        });
    }
    Ok(blocks.max(1))
}

/// Records `out (cols,) = sum over rows of x (rows, cols)`: for more than 64 rows, partial
/// sums over chunks of rows (64 columns x 4 lanes per workgroup) then the chunks' sum, so
/// the work spreads over many workgroups. An `x` larger than one binding is read in parts
/// of rows whose partial sums land side by side before the one final sum.
pub fn encode_sum_to_last(
    ctx: &Context,
    enc: &mut Recorder,
    rows: u32,
    cols: u32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    len(rows, cols)?;
    let w = u64::from(cols);
    let parts = row_chunks(ctx, "sum_to_last input", rows, &[w])?;
    if parts.len() == 1 && rows <= CHUNK_ROWS {
        return encode_column_sums(ctx, enc, rows, cols, x, out);
    }
    let chunk = chunk_rows(ctx, rows);
    let blocks = column_blocks(ctx, "sum_to_last", cols)?;
    let total: u32 = parts.iter().map(|&(_, n)| n.div_ceil(chunk)).sum();
    let partials = enc.scratch(ctx, u64::from(total) * w);
    let mut at = 0u32;
    for (first, count) in parts {
        let chunks = count.div_ceil(chunk);
        let p = Params {
            out_offset: len(at, cols)?,
            ..Params::new(count, cols, chunk, 0)
        };
        dispatch(
            ctx,
            enc,
            K,
            kernels::REDUCE,
            "col_partials",
            bytemuck::bytes_of(&p),
            &[(1, Part::rows(x, w, first, count)), (3, (&partials).into())],
            (blocks, chunks, 1),
        );
        at += chunks;
    }
    encode_column_sums(ctx, enc, total, cols, &partials, out)
}

/// Records `out (cols,) = sum over rows of x (rows, cols)` with one thread per column,
/// adding the rows in order (for few rows, and for the chunk partials).
pub(crate) fn encode_column_sums(
    ctx: &Context,
    enc: &mut Recorder,
    rows: u32,
    cols: u32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    let n = len(rows, cols)?;
    let (gx, gy) = groups_for(ctx, cols, 256);
    let p = Params::new(rows, cols, n, gx);
    dispatch(
        ctx,
        enc,
        K,
        kernels::REDUCE,
        "sum_to_last",
        bytemuck::bytes_of(&p),
        &[(1, x), (3, out)],
        (gx, gy, 1),
    );
    Ok(())
}

/// Records `out (1,) = sum(x^2)` over `n` values: one pass of squares into per-workgroup
/// partials, then passes of sums until one value is left.
pub fn encode_sum_squares(
    ctx: &Context,
    enc: &mut Recorder,
    n: u32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    encode_sum_squares_many(ctx, enc, &[(x, n)], out)
}

/// Records `out (1,) = sum of x^2 over every tensor in `xs` (buffer, length)`: each tensor's
/// first pass writes its workgroups' partials side by side into one buffer, which then folds
/// to one value — one pass per tensor plus one or two, instead of a full reduction and an add
/// per tensor. Deterministic.
pub fn encode_sum_squares_many(
    ctx: &Context,
    enc: &mut Recorder,
    xs: &[(&wgpu::Buffer, u32)],
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    // Tensors larger than one binding are read in parts, each folding like a tensor.
    let mut parts = Vec::new();
    for &(x, n) in xs {
        for (first, count) in row_chunks(ctx, "sum input", n, &[1])? {
            parts.push((Part::rows(x, 1, first, count), count));
        }
    }
    let groups: Vec<u32> = parts
        .iter()
        .map(|(_, n)| n.div_ceil(PER_GROUP).max(1))
        .collect();
    let total: u64 = groups.iter().map(|&g| u64::from(g)).sum();
    let total = u32::try_from(total).map_err(|_| WgpuError::LimitExceeded {
        what: "sum of squares partials".into(),
        requested: total,
        available: u64::from(u32::MAX),
    })?;
    let partials = enc.scratch(ctx, u64::from(total.max(1)));
    let mut offset = 0u32;
    for ((x, n), g) in parts.iter().zip(&groups) {
        let (gx, gy) = groups_for(ctx, g * PER_GROUP, PER_GROUP);
        let p = Params {
            square: 1,
            out_offset: offset,
            ..Params::new(0, 0, *n, gx)
        };
        dispatch(
            ctx,
            enc,
            K,
            kernels::REDUCE,
            "sum_squares",
            bytemuck::bytes_of(&p),
            &[(1, *x), (3, (&partials).into())],
            (gx, gy, 1),
        );
        offset += g;
    }
    encode_fold(ctx, enc, total, &partials, out)
}

/// Records `out (1,) = sum(x)` over `n` values (deterministic).
pub fn encode_sum(
    ctx: &Context,
    enc: &mut Recorder,
    n: u32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    encode_fold(ctx, enc, n, x, out)
}

/// Records `out (1,) = sum(x)` over `n` values: passes of per-workgroup sums until one
/// value is left.
fn encode_fold(
    ctx: &Context,
    enc: &mut Recorder,
    n: u32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    ctx.check_binding("sum input", u64::from(n) * 4)?;
    let mut count = n;
    let mut src: Option<wgpu::Buffer> = None;
    loop {
        let groups = count.div_ceil(PER_GROUP).max(1);
        let (gx, gy) = groups_for(ctx, groups * PER_GROUP, PER_GROUP);
        let last = groups == 1;
        let dst = if last {
            None
        } else {
            Some(enc.scratch(ctx, u64::from(groups)))
        };
        let p = Params::new(0, 0, count, gx);
        let input = src.as_ref().unwrap_or(x);
        let target = dst.as_ref().unwrap_or(out);
        dispatch(
            ctx,
            enc,
            K,
            kernels::REDUCE,
            "sum_squares",
            bytemuck::bytes_of(&p),
            &[(1, input), (3, target)],
            (gx, gy, 1),
        );
        match dst {
            None => break,
            Some(d) => src = Some(d),
        }
        count = groups;
    }
    Ok(())
}

/// Host-to-host `x + bias`.
pub async fn add_bias(ctx: &Context, x: &[f32], bias: &[f32]) -> Result<Vec<f32>, WgpuError> {
    let cols = bias.len();
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(WgpuError::Shape(format!(
            "add_bias: bias of {cols} does not divide x of {}",
            x.len()
        )));
    }
    let rows = (x.len() / cols) as u32;
    let mut out = run_host(ctx, |enc| {
        let (xb, bb) = (upload(ctx, "x", x), upload(ctx, "bias", bias));
        let ob = output(ctx, "out", x.len() as u64);
        encode_add_bias(ctx, enc, rows, cols as u32, &xb, &bb, &ob)?;
        Ok((vec![xb, bb], vec![(ob, x.len())]))
    })
    .await?;
    Ok(out.remove(0))
}

/// Host-to-host column sums of `x (rows, cols)`.
pub async fn sum_to_last(ctx: &Context, x: &[f32], cols: usize) -> Result<Vec<f32>, WgpuError> {
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(WgpuError::Shape(format!(
            "sum_to_last: {cols} columns do not divide {}",
            x.len()
        )));
    }
    let rows = (x.len() / cols) as u32;
    let mut out = run_host(ctx, |enc| {
        let xb = upload(ctx, "x", x);
        let ob = output(ctx, "out", cols as u64);
        encode_sum_to_last(ctx, enc, rows, cols as u32, &xb, &ob)?;
        Ok((vec![xb], vec![(ob, cols)]))
    })
    .await?;
    Ok(out.remove(0))
}

/// Host-to-host `sum(x^2)`.
pub async fn sum_squares(ctx: &Context, x: &[f32]) -> Result<f32, WgpuError> {
    let n = u32::try_from(x.len()).map_err(|_| WgpuError::LimitExceeded {
        what: "sum_squares length".into(),
        requested: x.len() as u64,
        available: u64::from(u32::MAX),
    })?;
    let out = run_host(ctx, |enc| {
        let xb = upload(ctx, "x", x);
        let ob = output(ctx, "out", 1);
        encode_sum_squares(ctx, enc, n, &xb, &ob)?;
        Ok((vec![xb], vec![(ob, 1)]))
    })
    .await?;
    Ok(out[0][0])
}

/// Host-to-host sum of squares over several vectors at once.
pub async fn sum_squares_many(ctx: &Context, xs: &[&[f32]]) -> Result<f32, WgpuError> {
    let mut lens = Vec::with_capacity(xs.len());
    for x in xs {
        lens.push(
            u32::try_from(x.len()).map_err(|_| WgpuError::LimitExceeded {
                what: "sum_squares length".into(),
                requested: x.len() as u64,
                available: u64::from(u32::MAX),
            })?,
        );
    }
    let out = run_host(ctx, |enc| {
        let bufs: Vec<wgpu::Buffer> = xs.iter().map(|x| upload(ctx, "x", x)).collect();
        let ob = output(ctx, "out", 1);
        let pairs: Vec<(&wgpu::Buffer, u32)> = bufs.iter().zip(lens.iter().copied()).collect();
        encode_sum_squares_many(ctx, enc, &pairs, &ob)?;
        Ok((bufs, vec![(ob, 1)]))
    })
    .await?;
    Ok(out[0][0])
}
