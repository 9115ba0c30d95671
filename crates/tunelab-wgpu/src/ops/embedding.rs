//! Embedding gather and its deterministic scatter-add gradient (`kernels/embedding.wgsl`).
//!
//! The gradient sums, for each distinct id, the rows of `dy` at its positions in a fixed
//! order. The host sorts the ids once ([`Csr::from_ids`]; ids are uploaded from the host, so
//! they are known there), and the kernel needs no atomics.

use super::{
    Part, Recorder, dispatch, groups_for, output, row_chunks, run_host, upload, upload_u32,
};
use crate::{Context, WgpuError, kernels};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    row_stride: u32,
    value: f32,
    /// The ids whose table rows are bound: `v0 .. v0 + nv`.
    v0: u32,
    nv: u32,
    /// The positions of dy that are bound (scatter): `p0 .. p0 + np`.
    p0: u32,
    np: u32,
}

impl Params {
    /// `n` items of `c` values over workgroups `row_stride` wide; no value, whole ranges.
    fn new(n: u32, c: u32, row_stride: u32) -> Self {
        Params {
            n,
            c,
            row_stride,
            value: 0.0,
            v0: 0,
            nv: 0,
            p0: 0,
            np: 0,
        }
    }
}

const K: &str = "embedding.wgsl";

/// Positions grouped by id: `order[starts[u]..starts[u + 1]]` are the positions of `uniq[u]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    pub order: Vec<u32>,
    pub starts: Vec<u32>,
    pub uniq: Vec<u32>,
}

impl Csr {
    pub fn from_ids(ids: &[u32]) -> Self {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by_key(|&i| (ids[i as usize], i));
        let mut starts = Vec::new();
        let mut uniq = Vec::new();
        for (j, &pos) in order.iter().enumerate() {
            let id = ids[pos as usize];
            if uniq.last() != Some(&id) {
                uniq.push(id);
                starts.push(j as u32);
            }
        }
        starts.push(order.len() as u32);
        Self {
            order,
            starts,
            uniq,
        }
    }
}

fn count(a: u32, b: u32, what: &str) -> Result<u32, WgpuError> {
    a.checked_mul(b).ok_or(WgpuError::LimitExceeded {
        what: what.into(),
        requested: u64::from(a) * u64::from(b),
        available: u64::from(u32::MAX),
    })
}

/// Records `out (n, c) = table[ids]` for a `(vocab, c)` table, bound in parts of rows where
/// it is larger than one binding (and the ids and output in parts of positions where the
/// output is).
#[allow(clippy::too_many_arguments)]
pub fn encode_gather(
    ctx: &Context,
    enc: &mut Recorder,
    n: u32,
    c: u32,
    vocab: u32,
    table: &wgpu::Buffer,
    ids: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    count(n, c, "embedding output values")?;
    let c64 = u64::from(c);
    let tables = row_chunks(ctx, "embedding table", vocab, &[c64])?;
    let positions = row_chunks(ctx, "embedding positions", n, &[c64])?;
    let whole = positions.len() == 1;
    for &(t0, nt) in &positions {
        let (gx, gy) = groups_for(ctx, nt * c, 256);
        let part_ids = super::narrow_in(ctx, enc, ids, 1, (t0, nt), whole);
        for &(v0, nv) in &tables {
            let p = Params {
                v0,
                nv,
                ..Params::new(nt, c, gx)
            };
            dispatch(
                ctx,
                enc,
                K,
                kernels::EMBEDDING,
                "gather",
                bytemuck::bytes_of(&p),
                &[
                    (1, Part::rows(table, c64, v0, nv)),
                    (2, (&part_ids).into()),
                    (3, Part::rows(out, c64, t0, nt)),
                ],
                (gx, gy, 1),
            );
        }
    }
    Ok(())
}

/// Records `out[..n] = value` (in parts where `out` is larger than one binding).
pub fn encode_fill(
    ctx: &Context,
    enc: &mut Recorder,
    n: u32,
    value: f32,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    for (first, count) in row_chunks(ctx, "fill", n, &[1])? {
        let (gx, gy) = groups_for(ctx, count, 256);
        let p = Params {
            value,
            ..Params::new(count, 0, gx)
        };
        dispatch(
            ctx,
            enc,
            K,
            kernels::EMBEDDING,
            "fill",
            bytemuck::bytes_of(&p),
            &[(3, Part::rows(out, 1, first, count))],
            (gx, gy, 1),
        );
    }
    Ok(())
}

/// Records the gradient `out (vocab, c)` for `dy (positions, c)`: zero, then each distinct
/// id's rows of `dy` summed (into parts of rows of `out` where it is larger than one binding,
/// from parts of positions of `dy` where it is, each part's sums added in turn). `csr` holds
/// the device copies of [`Csr`]'s `(order, starts, uniq)`.
#[allow(clippy::too_many_arguments)]
pub fn encode_scatter_add(
    ctx: &Context,
    enc: &mut Recorder,
    vocab: u32,
    c: u32,
    [unique, positions]: [u32; 2],
    dy: &wgpu::Buffer,
    [order, starts, uniq]: [&wgpu::Buffer; 3],
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    let cells = count(vocab, c, "embedding gradient values")?;
    encode_fill(ctx, enc, cells, 0.0, out)?;
    let total = count(unique, c, "embedding gradient values")?;
    let (gx, gy) = groups_for(ctx, total, 256);
    let c64 = u64::from(c);
    let dys = row_chunks(ctx, "embedding gradient positions", positions, &[c64])?;
    for (v0, nv) in row_chunks(ctx, "embedding gradient", vocab, &[c64])? {
        for &(p0, np) in &dys {
            let p = Params {
                v0,
                nv,
                p0,
                np,
                ..Params::new(unique, c, gx)
            };
            dispatch(
                ctx,
                enc,
                K,
                kernels::EMBEDDING,
                "scatter_add",
                bytemuck::bytes_of(&p),
                &[
                    (1, Part::rows(dy, c64, p0, np)),
                    (2, uniq.into()),
                    (3, Part::rows(out, c64, v0, nv)),
                    (4, order.into()),
                    (5, starts.into()),
                ],
                (gx, gy, 1),
            );
        }
    }
    Ok(())
}

/// Host-to-host gather; an id outside the table is an error naming it.
pub async fn gather(
    ctx: &Context,
    table: &[f32],
    c: usize,
    ids: &[u32],
) -> Result<Vec<f32>, WgpuError> {
    let vocab = table.len().checked_div(c).unwrap_or(0);
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(WgpuError::Shape(format!(
            "embedding: token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let n = ids.len();
    let mut out = run_host(ctx, |enc| {
        let (tb, ib) = (upload(ctx, "table", table), upload_u32(ctx, "ids", ids));
        let ob = output(ctx, "rows", (n * c) as u64);
        encode_gather(ctx, enc, n as u32, c as u32, vocab as u32, &tb, &ib, &ob)?;
        Ok((vec![tb, ib], vec![(ob, n * c)]))
    })
    .await?;
    Ok(out.remove(0))
}

/// Host-to-host gradient of the table for `dy (ids.len(), c)`.
pub async fn scatter_add(
    ctx: &Context,
    ids: &[u32],
    dy: &[f32],
    c: usize,
    vocab: usize,
) -> Result<Vec<f32>, WgpuError> {
    if dy.len() != ids.len() * c {
        return Err(WgpuError::Shape(format!(
            "embedding backward: dy has {} values, not {} x {c}",
            dy.len(),
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(WgpuError::Shape(format!(
            "embedding backward: token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let csr = Csr::from_ids(ids);
    let mut out = run_host(ctx, |enc| {
        let d = upload(ctx, "dy", dy);
        let (o, s, u) = (
            upload_u32(ctx, "order", &csr.order),
            upload_u32(ctx, "starts", &csr.starts),
            upload_u32(ctx, "uniq", &csr.uniq),
        );
        let ob = output(ctx, "dtable", (vocab * c) as u64);
        encode_scatter_add(
            ctx,
            enc,
            vocab as u32,
            c as u32,
            [csr.uniq.len() as u32, csr.order.len() as u32],
            &d,
            [&o, &s, &u],
            &ob,
        )?;
        Ok((vec![d, o, s, u], vec![(ob, vocab * c)]))
    })
    .await?;
    Ok(out.remove(0))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn csr_groups_positions_by_id_in_order() {
        let c = Csr::from_ids(&[5, 1, 5, 3, 1]);
        assert_eq!(c.uniq, vec![1, 3, 5]);
        assert_eq!(c.order, vec![1, 4, 3, 0, 2]);
        assert_eq!(c.starts, vec![0, 2, 3, 5]);
    }

    /// The table's gradient is the same bits every time (ids are grouped, not raced);
    /// its values are the conformance suite's to check.
    #[test]
    fn scatter_add_is_deterministic() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        let (vocab, c, n) = (300usize, 7usize, 1000usize);
        let ids: Vec<u32> = (0..n).map(|i| ((i * 7 + i / 3) % vocab) as u32).collect();
        let dy: Vec<f32> = (0..n * c).map(|i| (i as f32 * 0.31).cos()).collect();
        let once = pollster::block_on(scatter_add(&ctx, &ids, &dy, c, vocab)).unwrap();
        assert_eq!(once.len(), vocab * c);
        assert_eq!(
            once,
            pollster::block_on(scatter_add(&ctx, &ids, &dy, c, vocab)).unwrap()
        );
    }
}
