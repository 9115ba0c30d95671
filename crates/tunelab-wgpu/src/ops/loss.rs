//! Fused softmax cross-entropy with an ignore index (`kernels/loss.wgsl`); the sum over rows
//! reuses the deterministic sum pass of `reduce.wgsl`.

use super::{Part, Recorder, dispatch, output, reduce, row_chunks, run_host, upload, upload_u32};
use crate::{Context, WgpuError, kernels};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    k: u32,
    row_stride: u32,
    scale: f32,
    row0: u32,
    pad: [u32; 3],
}

/// Params for rows `row0 .. row0 + rows` of a chunk.
fn params(ctx: &Context, row0: u32, rows: u32, k: u32, scale: f32) -> (Params, (u32, u32)) {
    let (gx, gy) = super::split_dispatch(
        rows.max(1),
        ctx.report().limits.max_compute_workgroups_per_dimension,
    );
    (
        Params {
            rows,
            k,
            row_stride: gx,
            scale,
            row0,
            pad: [0; 3],
        },
        (gx, gy),
    )
}

/// Records `out (1,) = sum over rows of CE(logits (rows, k), labels (rows,))`. Logits larger
/// than one binding are processed in chunks of rows.
pub fn encode_sum(
    ctx: &Context,
    enc: &mut Recorder,
    rows: u32,
    k: u32,
    logits: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    let per_row = enc.scratch(ctx, u64::from(rows));
    for (first, n) in row_chunks(ctx, "cross-entropy logits", rows, &[u64::from(k)])? {
        let (p, (gx, gy)) = params(ctx, first, n, k, 1.0);
        dispatch(
            ctx,
            enc,
            "loss.wgsl",
            kernels::LOSS,
            "ce_rows",
            bytemuck::bytes_of(&p),
            &[
                (1, Part::rows(logits, u64::from(k), first, n)),
                (2, labels.into()),
                (3, (&per_row).into()),
            ],
            (gx, gy, 1),
        );
    }
    reduce::encode_sum(ctx, enc, rows, &per_row, out)?;
    Ok(())
}

/// Records `dx = scale * (softmax(logits) - onehot(labels))`, zero on ignored rows (in chunks
/// of rows where the logits are larger than one binding).
#[allow(clippy::too_many_arguments)]
pub fn encode_backward(
    ctx: &Context,
    enc: &mut Recorder,
    rows: u32,
    k: u32,
    scale: f32,
    logits: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    dx: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    let w = u64::from(k);
    for (first, n) in row_chunks(ctx, "cross-entropy logits", rows, &[w])? {
        let (p, (gx, gy)) = params(ctx, first, n, k, scale);
        dispatch(
            ctx,
            enc,
            "loss.wgsl",
            kernels::LOSS,
            "ce_backward",
            bytemuck::bytes_of(&p),
            &[
                (1, Part::rows(logits, w, first, n)),
                (2, labels.into()),
                (3, Part::rows(dx, w, first, n)),
            ],
            (gx, gy, 1),
        );
    }
    Ok(())
}

fn check(logits: &[f32], labels: &[u32], k: usize) -> Result<u32, WgpuError> {
    if k == 0 || logits.len() != labels.len() * k {
        return Err(WgpuError::Shape(format!(
            "cross-entropy: {} logits do not make {} rows of {k}",
            logits.len(),
            labels.len()
        )));
    }
    u32::try_from(labels.len()).map_err(|_| WgpuError::Shape("too many rows".into()))
}

/// Host-to-host summed cross-entropy.
pub async fn cross_entropy_sum(
    ctx: &Context,
    logits: &[f32],
    labels: &[u32],
    k: usize,
) -> Result<f32, WgpuError> {
    let rows = check(logits, labels, k)?;
    let out = run_host(ctx, |enc| {
        let (lb, yb) = (
            upload(ctx, "logits", logits),
            upload_u32(ctx, "labels", labels),
        );
        let ob = output(ctx, "loss", 1);
        encode_sum(ctx, enc, rows, k as u32, &lb, &yb, &ob)?;
        Ok((vec![lb, yb], vec![(ob, 1)]))
    })
    .await?;
    Ok(out[0][0])
}

/// Host-to-host cross-entropy gradient.
pub async fn cross_entropy_backward(
    ctx: &Context,
    logits: &[f32],
    labels: &[u32],
    k: usize,
    scale: f32,
) -> Result<Vec<f32>, WgpuError> {
    let rows = check(logits, labels, k)?;
    let mut out = run_host(ctx, |enc| {
        let (lb, yb) = (
            upload(ctx, "logits", logits),
            upload_u32(ctx, "labels", labels),
        );
        let ob = output(ctx, "dx", logits.len() as u64);
        encode_backward(ctx, enc, rows, k as u32, scale, &lb, &yb, &ob)?;
        Ok((vec![lb, yb], vec![(ob, logits.len())]))
    })
    .await?;
    Ok(out.remove(0))
}
