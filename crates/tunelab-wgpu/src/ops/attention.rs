//! Fused multi-head attention forward and backward (`kernels/attention.wgsl`), with a key
//! padding mask and a causal mask, returning the row log-sum-exp the backward pass uses.

use super::{
    Part, Recorder, dispatch, narrow_in, narrow_out, narrow_target, output, row_chunks, run_host,
    split_dispatch, upload,
};
use crate::{Context, WgpuError, kernels};

/// The problem: `q, k, v` are `(batch, t, heads * d)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: u32,
    pub t: u32,
    pub heads: u32,
    pub d: u32,
    pub causal: bool,
}

impl Dims {
    /// Values in `q` (and `k`, `v`, `out`).
    pub fn len(&self) -> u64 {
        u64::from(self.batch) * u64::from(self.t) * u64::from(self.heads) * u64::from(self.d)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rows of the score matrix: `batch * heads * t` (the length of `lse`).
    pub fn rows(&self) -> u64 {
        u64::from(self.batch) * u64::from(self.heads) * u64::from(self.t)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    t: u32,
    heads: u32,
    d: u32,
    scale: f32,
    has_mask: u32,
    causal: u32,
    row_stride: u32,
}

const K: &str = "attention.wgsl";
const MAX_HEAD_DIM: u32 = 512;

fn params(ctx: &Context, d: &Dims, has_mask: bool) -> Result<(Params, (u32, u32)), WgpuError> {
    if d.d > MAX_HEAD_DIM {
        return Err(WgpuError::LimitExceeded {
            what: "attention head size".into(),
            requested: u64::from(d.d),
            available: u64::from(MAX_HEAD_DIM),
        });
    }
    ctx.check_binding("attention q/k/v", d.len() * 4)?;
    let rows = u32::try_from(d.rows()).map_err(|_| WgpuError::LimitExceeded {
        what: "attention rows (batch x heads x length)".into(),
        requested: d.rows(),
        available: u64::from(u32::MAX),
    })?;
    let (gx, gy) = split_dispatch(
        rows.max(1),
        ctx.report().limits.max_compute_workgroups_per_dimension,
    );
    Ok((
        Params {
            batch: d.batch,
            t: d.t,
            heads: d.heads,
            d: d.d,
            scale: (1.0 / f64::from(d.d.max(1)).sqrt()) as f32,
            has_mask: u32::from(has_mask),
            causal: u32::from(d.causal),
            row_stride: gx,
        },
        (gx, gy),
    ))
}

/// Query (or key) rows per workgroup of `attention_tiled.wgsl`.
const TILED_ROWS: u32 = 32;

/// The kernel for `d`: `attention_tiled.wgsl` compiled for the head size where it has a
/// specialisation (one thread per row), else the general `attention.wgsl` (one workgroup per
/// row) with its `general` params and workgroup counts; for the forward and backward-q/kv
/// passes.
fn kernel(ctx: &Context, d: &Dims, general: (Params, (u32, u32))) -> Result<Kernel, WgpuError> {
    let (mut p, groups) = general;
    match kernels::attention_tiled(d.d) {
        Some((name, source)) if d.t > 0 => {
            let blocks =
                u64::from(d.batch) * u64::from(d.heads) * u64::from(d.t.div_ceil(TILED_ROWS));
            let blocks = u32::try_from(blocks).map_err(|_| WgpuError::LimitExceeded {
                what: "attention row blocks (batch x heads x length / 32)".into(),
                requested: blocks,
                available: u64::from(u32::MAX),
            })?;
            let (gx, gy) = split_dispatch(
                blocks.max(1),
                ctx.report().limits.max_compute_workgroups_per_dimension,
            );
            p.row_stride = gx;
            Ok(Kernel {
                name,
                source,
                params: p,
                groups: (gx, gy),
            })
        }
        _ => Ok(Kernel {
            name: K,
            source: kernels::ATTENTION,
            params: p,
            groups,
        }),
    }
}

/// The attention pipeline chosen for a shape, its params and workgroup counts.
struct Kernel {
    name: &'static str,
    source: &'static str,
    params: Params,
    groups: (u32, u32),
}

/// Parts of the batch whose q, k, v, out and their gradients each fit one binding: one part
/// unless they are larger than one binding (the key mask and lse are then staged through
/// copies: `narrow_in`, `narrow_target`).
fn batch_parts<'a>(ctx: &Context, d: &'a Dims) -> Result<Vec<Slicer<'a>>, WgpuError> {
    let width = u64::from(d.t) * u64::from(d.heads) * u64::from(d.d);
    let parts = row_chunks(ctx, "attention batch entries", d.batch, &[width])?;
    let whole = parts.len() == 1;
    Ok(parts
        .into_iter()
        .map(|(first, count)| Slicer {
            d,
            first,
            count,
            whole,
        })
        .collect())
}

/// One part of the batch: entries `first .. first + count` (`whole`: every entry).
struct Slicer<'a> {
    d: &'a Dims,
    first: u32,
    count: u32,
    whole: bool,
}

impl<'a> Slicer<'a> {
    /// The part of q, k, v, out or a gradient.
    fn seq<'b>(&self, b: &'b wgpu::Buffer) -> Part<'b> {
        let w = u64::from(self.d.t) * u64::from(self.d.heads) * u64::from(self.d.d);
        Part::rows(b, w, self.first, self.count)
    }
    /// The part of the key mask (or a placeholder without one).
    fn mask(&self, ctx: &Context, enc: &mut Recorder, m: Option<&wgpu::Buffer>) -> wgpu::Buffer {
        match m {
            Some(m) => self.narrow(ctx, enc, m, u64::from(self.d.t)),
            None => ctx.one(),
        }
    }
    fn narrow(&self, ctx: &Context, enc: &mut Recorder, b: &wgpu::Buffer, w: u64) -> wgpu::Buffer {
        narrow_in(ctx, enc, b, w, (self.first, self.count), self.whole)
    }
    /// Where the part's lse is written, and copying it to its place.
    fn lse_target(&self, ctx: &Context, enc: &mut Recorder, lse: &wgpu::Buffer) -> wgpu::Buffer {
        let range = (self.first, self.count);
        narrow_target(ctx, enc, lse, self.lse_width(), range, self.whole)
    }
    fn lse_out(&self, enc: &mut Recorder, target: &wgpu::Buffer, lse: &wgpu::Buffer) {
        narrow_out(
            enc,
            target,
            lse,
            self.lse_width(),
            (self.first, self.count),
            self.whole,
        );
    }
    /// Values per batch entry of lse.
    fn lse_width(&self) -> u64 {
        u64::from(self.d.heads) * u64::from(self.d.t)
    }
    fn dims(&self) -> Dims {
        Dims {
            batch: self.count,
            ..*self.d
        }
    }
}

/// Records the forward pass: `out` and `lse (batch, heads, t)`, in parts of the batch when
/// the tensors are larger than one binding.
#[allow(clippy::too_many_arguments)]
pub fn encode_forward(
    ctx: &Context,
    enc: &mut Recorder,
    d: &Dims,
    [q, k, v]: [&wgpu::Buffer; 3],
    key_mask: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
    lse: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    for s in batch_parts(ctx, d)? {
        let pd = s.dims();
        let Kernel {
            name,
            source,
            params: p,
            groups: (gx, gy),
        } = kernel(ctx, &pd, params(ctx, &pd, key_mask.is_some())?)?;
        let m = s.mask(ctx, enc, key_mask);
        let l = s.lse_target(ctx, enc, lse);
        dispatch(
            ctx,
            enc,
            name,
            source,
            "attn_forward",
            bytemuck::bytes_of(&p),
            &[
                (1, s.seq(q)),
                (2, s.seq(k)),
                (3, s.seq(v)),
                (4, (&m).into()),
                (5, s.seq(out)),
                (6, (&l).into()),
            ],
            (gx, gy, 1),
        );
        s.lse_out(enc, &l, lse);
    }
    Ok(())
}

/// Records the backward pass into `dq`, `dk`, `dv`, in parts of the batch when the tensors
/// are larger than one binding.
#[allow(clippy::too_many_arguments)]
pub fn encode_backward(
    ctx: &Context,
    enc: &mut Recorder,
    d: &Dims,
    [q, k, v, out, lse, d_out]: [&wgpu::Buffer; 6],
    key_mask: Option<&wgpu::Buffer>,
    [dq, dk, dv]: [&wgpu::Buffer; 3],
) -> Result<(), WgpuError> {
    for s in batch_parts(ctx, d)? {
        let pd = s.dims();
        let general = params(ctx, &pd, key_mask.is_some())?;
        let (p, (gx, gy)) = general;
        let Kernel {
            name,
            source,
            params: tp,
            groups: (tx, ty),
        } = kernel(ctx, &pd, general)?;
        // The part's lse, then its rows' dO . O.
        let rows = pd.rows();
        let stats = enc.scratch(ctx, 2 * rows);
        let lse_at = u64::from(s.first) * s.lse_width() * 4;
        enc.copy_buffer_to_buffer(lse, lse_at, &stats, 0, rows.max(1) * 4);
        let mask = s.mask(ctx, enc, key_mask);
        let m = Part::from(&mask);
        let stats = Part::from(&stats);
        let (q, k, v, d_out) = (s.seq(q), s.seq(k), s.seq(v), s.seq(d_out));
        dispatch(
            ctx,
            enc,
            K,
            kernels::ATTENTION,
            "attn_rowdot",
            bytemuck::bytes_of(&p),
            &[(7, d_out), (8, s.seq(out)), (9, stats)],
            (gx, gy, 1),
        );
        let u = bytemuck::bytes_of(&tp);
        dispatch(
            ctx,
            enc,
            name,
            source,
            "attn_backward_q",
            u,
            &[
                (1, q),
                (2, k),
                (3, v),
                (4, m),
                (5, s.seq(dq)),
                (7, d_out),
                (9, stats),
            ],
            (tx, ty, 1),
        );
        dispatch(
            ctx,
            enc,
            name,
            source,
            "attn_backward_kv",
            u,
            &[
                (1, q),
                (2, k),
                (3, v),
                (4, m),
                (5, s.seq(dk)),
                (6, s.seq(dv)),
                (7, d_out),
                (9, stats),
            ],
            (tx, ty, 1),
        );
    }
    Ok(())
}

fn check(d: &Dims, q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>) -> Result<(), WgpuError> {
    let n = d.len() as usize;
    if q.len() != n || k.len() != n || v.len() != n {
        return Err(WgpuError::Shape(format!(
            "attention: {d:?} needs {n} values in q, k and v"
        )));
    }
    if let Some(m) = mask
        && m.len() as u64 != u64::from(d.batch) * u64::from(d.t)
    {
        return Err(WgpuError::Shape(format!(
            "attention: key mask has {} values, expected {} x {}",
            m.len(),
            d.batch,
            d.t
        )));
    }
    Ok(())
}

/// Host-to-host forward: `(out, lse)`.
pub async fn forward(
    ctx: &Context,
    d: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<f32>), WgpuError> {
    check(d, q, k, v, mask)?;
    let (n, rows) = (d.len() as usize, d.rows() as usize);
    let mut out = run_host(ctx, |enc| {
        let ins = [
            upload(ctx, "q", q),
            upload(ctx, "k", k),
            upload(ctx, "v", v),
        ];
        let mb = mask.map(|m| upload(ctx, "mask", m));
        let (ob, lb) = (
            output(ctx, "out", n as u64),
            output(ctx, "lse", rows as u64),
        );
        encode_forward(
            ctx,
            enc,
            d,
            [&ins[0], &ins[1], &ins[2]],
            mb.as_ref(),
            &ob,
            &lb,
        )?;
        let mut temps = Vec::from(ins);
        temps.extend(mb);
        Ok((temps, vec![(ob, n), (lb, rows)]))
    })
    .await?;
    let lse = out.remove(1);
    Ok((out.remove(0), lse))
}

/// Host-to-host backward: `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub async fn backward(
    ctx: &Context,
    d: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    mask: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), WgpuError> {
    check(d, q, k, v, mask)?;
    let n = d.len() as usize;
    if out.len() != n || d_out.len() != n || lse.len() as u64 != d.rows() {
        return Err(WgpuError::Shape(
            "attention backward: out, d_out or lse has the wrong size".into(),
        ));
    }
    let mut res = run_host(ctx, |enc| {
        let ins = [
            upload(ctx, "q", q),
            upload(ctx, "k", k),
            upload(ctx, "v", v),
            upload(ctx, "out", out),
            upload(ctx, "lse", lse),
            upload(ctx, "d_out", d_out),
        ];
        let mb = mask.map(|m| upload(ctx, "mask", m));
        let outs = [
            output(ctx, "dq", n as u64),
            output(ctx, "dk", n as u64),
            output(ctx, "dv", n as u64),
        ];
        encode_backward(
            ctx,
            enc,
            d,
            [&ins[0], &ins[1], &ins[2], &ins[3], &ins[4], &ins[5]],
            mb.as_ref(),
            [&outs[0], &outs[1], &outs[2]],
        )?;
        let mut temps = Vec::from(ins);
        temps.extend(mb);
        let [a, b, c] = outs;
        Ok((temps, vec![(a, n), (b, n), (c, n)]))
    })
    .await?;
    let dv = res.remove(2);
    let dk = res.remove(1);
    Ok((res.remove(0), dk, dv))
}
