//! Concatenation and slicing along the sequence axis of `(B, T, C)` (`kernels/sequence.wgsl`).

use super::{Part, Recorder, dispatch, groups_for, output, row_chunks, run_host, upload};
use crate::{Context, WgpuError, kernels};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    ta: u32,
    tb: u32,
    c: u32,
    start: u32,
    row_stride: u32,
    pad: [u32; 2],
}

fn total(batch: u32, t: u32, c: u32) -> Result<u32, WgpuError> {
    batch
        .checked_mul(t)
        .and_then(|x| x.checked_mul(c))
        .ok_or(WgpuError::LimitExceeded {
            what: "sequence tensor values".into(),
            requested: u64::from(batch) * u64::from(t) * u64::from(c),
            available: u64::from(u32::MAX),
        })
}

/// One dispatch of `entry` per part of the batch (parts whose rows of `widths` values fit one
/// binding): `base` with the part's batch, its output of `out_t` rows of `c` per entry, and
/// the bindings `bind(first, count)` gives.
fn per_part<'a>(
    ctx: &Context,
    enc: &mut Recorder,
    entry: &'static str,
    base: Params,
    out_t: u32,
    widths: &[u64],
    bind: impl Fn(u32, u32) -> Vec<(u32, Part<'a>)>,
) -> Result<(), WgpuError> {
    let what = format!("{entry} batch entries");
    for (first, count) in row_chunks(ctx, &what, base.batch, widths)? {
        let (gx, gy) = groups_for(ctx, total(count, out_t, base.c)?, 256);
        let p = Params {
            batch: count,
            row_stride: gx,
            ..base
        };
        dispatch(
            ctx,
            enc,
            "sequence.wgsl",
            kernels::SEQUENCE,
            entry,
            bytemuck::bytes_of(&p),
            &bind(first, count),
            (gx, gy, 1),
        );
    }
    Ok(())
}

/// Records `out (B, ta + tb, C) = [a, b]`, in parts of the batch when the tensors are larger
/// than one binding.
#[allow(clippy::too_many_arguments)]
pub fn encode_concat(
    ctx: &Context,
    enc: &mut Recorder,
    batch: u32,
    ta: u32,
    tb: u32,
    c: u32,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    total(batch, ta + tb, c)?;
    let (wa, wb) = (u64::from(ta) * u64::from(c), u64::from(tb) * u64::from(c));
    let base = Params {
        batch,
        ta,
        tb,
        c,
        start: 0,
        row_stride: 0,
        pad: [0; 2],
    };
    per_part(
        ctx,
        enc,
        "concat_seq",
        base,
        ta + tb,
        &[wa, wb, wa + wb],
        |first, n| {
            vec![
                (1, Part::rows(a, wa, first, n)),
                (2, Part::rows(b, wb, first, n)),
                (3, Part::rows(out, wa + wb, first, n)),
            ]
        },
    )
}

/// Records `out (B, len, C) = x[:, start..start + len, :]` for `x (B, t, C)`, in parts of the
/// batch when the tensors are larger than one binding.
#[allow(clippy::too_many_arguments)]
pub fn encode_slice(
    ctx: &Context,
    enc: &mut Recorder,
    batch: u32,
    t: u32,
    c: u32,
    start: u32,
    len: u32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    if start.checked_add(len).is_none_or(|e| e > t) {
        return Err(WgpuError::Shape(format!(
            "slice_seq: {start}..{start}+{len} is outside a sequence of {t}"
        )));
    }
    total(batch, t, c)?;
    let (wx, wo) = (u64::from(t) * u64::from(c), u64::from(len) * u64::from(c));
    let base = Params {
        batch,
        ta: t,
        tb: len,
        c,
        start,
        row_stride: 0,
        pad: [0; 2],
    };
    per_part(ctx, enc, "slice_seq", base, len, &[wx, wo], |first, n| {
        vec![
            (1, Part::rows(x, wx, first, n)),
            (3, Part::rows(out, wo, first, n)),
        ]
    })
}

/// Host-to-host concat of `(batch, ta, c)` and `(batch, tb, c)`.
pub async fn concat(
    ctx: &Context,
    a: &[f32],
    b: &[f32],
    batch: usize,
    c: usize,
) -> Result<Vec<f32>, WgpuError> {
    let (ta, tb) = (a.len() / (batch * c).max(1), b.len() / (batch * c).max(1));
    if ta * batch * c != a.len() || tb * batch * c != b.len() {
        return Err(WgpuError::Shape(
            "concat_seq: inputs are not (B, T, C)".into(),
        ));
    }
    let n = a.len() + b.len();
    let mut out = run_host(ctx, |enc| {
        let (ab, bb) = (upload(ctx, "a", a), upload(ctx, "b", b));
        let ob = output(ctx, "out", n as u64);
        encode_concat(
            ctx,
            enc,
            batch as u32,
            ta as u32,
            tb as u32,
            c as u32,
            &ab,
            &bb,
            &ob,
        )?;
        Ok((vec![ab, bb], vec![(ob, n)]))
    })
    .await?;
    Ok(out.remove(0))
}

/// Host-to-host slice of `x (batch, t, c)`.
pub async fn slice(
    ctx: &Context,
    x: &[f32],
    batch: usize,
    c: usize,
    start: usize,
    len: usize,
) -> Result<Vec<f32>, WgpuError> {
    let t = x.len() / (batch * c).max(1);
    let n = batch * len * c;
    let mut out = run_host(ctx, |enc| {
        let xb = upload(ctx, "x", x);
        let ob = output(ctx, "out", n as u64);
        encode_slice(
            ctx,
            enc,
            batch as u32,
            t as u32,
            c as u32,
            start as u32,
            len as u32,
            &xb,
            &ob,
        )?;
        Ok((vec![xb], vec![(ob, n)]))
    })
    .await?;
    Ok(out.remove(0))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// The values are the conformance suite's to check; a slice past the end is a typed
    /// error naming the sequence.
    #[test]
    fn a_slice_past_the_end_is_refused() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        let e = pollster::block_on(slice(&ctx, &[0.0; 6], 1, 2, 2, 2)).unwrap_err();
        assert!(e.to_string().contains("outside a sequence of 3"), "{e}");
    }
}
