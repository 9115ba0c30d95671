//! Layer norm forward and backward (`kernels/layer_norm.wgsl`,
//! `kernels/layer_norm_backward.wgsl`).

use super::{
    Part, Recorder, dispatch, narrow_in, narrow_out, narrow_target, output, row_chunks, run_host,
    upload,
};
use crate::{Context, WgpuError, kernels};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    row_stride: u32,
    eps: f32,
    chunk0: u32,
    pad: [u32; 3],
}

/// Parts of rows whose x, y, dy and dx (`c` values per row) each fit one binding: one part
/// unless they are larger than one binding (mean and rstd, one value per row, are then
/// staged through copies: `narrow_in`, `narrow_target`).
fn parts(ctx: &Context, rows: u32, c: u32) -> Result<Vec<(u32, u32)>, WgpuError> {
    row_chunks(ctx, "layer norm rows", rows, &[u64::from(c)])
}

/// The params and workgroups for `rows` rows of `c` values.
fn row_params(rows: u32, c: u32, eps: f32, ctx: &Context) -> (Params, (u32, u32)) {
    let (gx, gy) = super::split_dispatch(
        rows.max(1),
        ctx.report().limits.max_compute_workgroups_per_dimension,
    );
    (
        Params {
            rows,
            c,
            row_stride: gx,
            eps,
            chunk0: 0,
            pad: [0; 3],
        },
        (gx, gy),
    )
}

/// Records `y = layer_norm(x)` and the per-row `mean`, `rstd` (in parts of rows when the
/// tensors are larger than one binding).
#[allow(clippy::too_many_arguments)]
pub fn encode_forward(
    ctx: &Context,
    enc: &mut Recorder,
    rows: u32,
    c: u32,
    eps: f32,
    [x, gamma, beta]: [&wgpu::Buffer; 3],
    [y, mean, rstd]: [&wgpu::Buffer; 3],
) -> Result<(), WgpuError> {
    let c64 = u64::from(c);
    let parts = parts(ctx, rows, c)?;
    let whole = parts.len() == 1;
    for &(first, count) in &parts {
        let (p, (gx, gy)) = row_params(count, c, eps, ctx);
        let wide = |b| Part::rows(b, c64, first, count);
        let [m, r] = [mean, rstd].map(|b| narrow_target(ctx, enc, b, 1, (first, count), whole));
        dispatch(
            ctx,
            enc,
            "layer_norm.wgsl",
            kernels::LAYER_NORM,
            "ln_forward",
            bytemuck::bytes_of(&p),
            &[
                (1, wide(x)),
                (2, gamma.into()),
                (3, beta.into()),
                (4, wide(y)),
                (5, (&m).into()),
                (6, (&r).into()),
            ],
            (gx, gy, 1),
        );
        narrow_out(enc, &m, mean, 1, (first, count), whole);
        narrow_out(enc, &r, rstd, 1, (first, count), whole);
    }
    Ok(())
}

/// Records `dx` and `dparams` (`dgamma` then `dbeta`, `2c` values).
#[allow(clippy::too_many_arguments)]
pub fn encode_backward(
    ctx: &Context,
    enc: &mut Recorder,
    rows: u32,
    c: u32,
    [x, gamma, mean, rstd, dy]: [&wgpu::Buffer; 5],
    dx: &wgpu::Buffer,
    dparams: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    // dx per row; dgamma and dbeta as partial sums over chunks of rows (many workgroups),
    // then the chunks' column sums into dparams. Parts of rows (tensors larger than one
    // binding) write their chunks' partials one after another.
    let c64 = u64::from(c);
    let parts = parts(ctx, rows, c)?;
    let chunking: Vec<(u32, u32)> = parts
        .iter()
        .map(|&(_, count)| {
            let chunk = super::reduce::chunk_rows(ctx, count);
            (chunk, count.div_ceil(chunk).max(1))
        })
        .collect();
    let chunks: u32 = chunking.iter().map(|&(_, n)| n).sum();
    let blocks = super::reduce::column_blocks(ctx, "layer_norm_backward", c)?;
    let cols = c.checked_mul(2).ok_or(WgpuError::LimitExceeded {
        what: "layer_norm_backward columns".into(),
        requested: u64::from(c) * 2,
        available: u64::from(u32::MAX),
    })?;
    let partials = enc.scratch(ctx, u64::from(chunks) * u64::from(cols));
    let mut chunk0 = 0;
    let whole = parts.len() == 1;
    for (&(first, count), &(chunk, n)) in parts.iter().zip(&chunking) {
        let (p, (gx, gy)) = row_params(count, c, 0.0, ctx);
        let wide = |b| Part::rows(b, c64, first, count);
        let [m, r] = [mean, rstd].map(|b| narrow_in(ctx, enc, b, 1, (first, count), whole));
        let (x, mean, rstd, dy) = (wide(x), Part::from(&m), Part::from(&r), wide(dy));
        dispatch(
            ctx,
            enc,
            "layer_norm_backward.wgsl",
            kernels::LAYER_NORM_BACKWARD,
            "ln_backward_dx",
            bytemuck::bytes_of(&p),
            &[
                (1, x),
                (2, gamma.into()),
                (3, mean),
                (4, rstd),
                (5, dy),
                (6, wide(dx)),
            ],
            (gx, gy, 1),
        );
        let pc = Params {
            row_stride: chunk,
            chunk0,
            ..p
        };
        dispatch(
            ctx,
            enc,
            "layer_norm_backward.wgsl",
            kernels::LAYER_NORM_BACKWARD,
            "ln_backward_params",
            bytemuck::bytes_of(&pc),
            &[
                (1, x),
                (3, mean),
                (4, rstd),
                (5, dy),
                (7, (&partials).into()),
            ],
            (blocks, n, 1),
        );
        chunk0 += n;
    }
    super::reduce::encode_column_sums(ctx, enc, chunks, cols, &partials, dparams)
}

/// Host-to-host forward: `(y, mean, rstd)`.
pub async fn forward(
    ctx: &Context,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), WgpuError> {
    let c = gamma.len();
    if c == 0 || beta.len() != c || !x.len().is_multiple_of(c) {
        return Err(WgpuError::Shape(format!(
            "layer_norm: x {} gamma {c} beta {}",
            x.len(),
            beta.len()
        )));
    }
    let rows = x.len() / c;
    let mut out = run_host(ctx, |enc| {
        let ins = [
            upload(ctx, "x", x),
            upload(ctx, "gamma", gamma),
            upload(ctx, "beta", beta),
        ];
        let outs = [
            output(ctx, "y", x.len() as u64),
            output(ctx, "mean", rows as u64),
            output(ctx, "rstd", rows as u64),
        ];
        encode_forward(
            ctx,
            enc,
            rows as u32,
            c as u32,
            eps,
            [&ins[0], &ins[1], &ins[2]],
            [&outs[0], &outs[1], &outs[2]],
        )?;
        let [y, m, r] = outs;
        Ok((Vec::from(ins), vec![(y, x.len()), (m, rows), (r, rows)]))
    })
    .await?;
    let r = out.remove(2);
    let m = out.remove(1);
    Ok((out.remove(0), m, r))
}

/// Host-to-host backward: `(dx, dgamma, dbeta)`.
pub async fn backward(
    ctx: &Context,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), WgpuError> {
    let c = gamma.len();
    let rows = mean.len();
    if c == 0 || x.len() != rows * c || dy.len() != x.len() || rstd.len() != rows {
        return Err(WgpuError::Shape(
            "layer_norm_backward: shapes do not agree".into(),
        ));
    }
    let mut out = run_host(ctx, |enc| {
        let ins = [
            upload(ctx, "x", x),
            upload(ctx, "gamma", gamma),
            upload(ctx, "mean", mean),
            upload(ctx, "rstd", rstd),
            upload(ctx, "dy", dy),
        ];
        let dx = output(ctx, "dx", x.len() as u64);
        let dp = output(ctx, "dparams", 2 * c as u64);
        encode_backward(
            ctx,
            enc,
            rows as u32,
            c as u32,
            [&ins[0], &ins[1], &ins[2], &ins[3], &ins[4]],
            &dx,
            &dp,
        )?;
        Ok((Vec::from(ins), vec![(dx, x.len()), (dp, 2 * c)]))
    })
    .await?;
    let dp = out.remove(1);
    Ok((out.remove(0), dp[..c].to_vec(), dp[c..].to_vec()))
}
