//! Attention on the CPU, one sequence and one head at a time.
//!
//! A sequence's `q`, `k`, `v` (and in the backward `d_out`) are copied head-major in one pass
//! along its rows (`H` contiguous `T × D` blocks); each head's products read its blocks and
//! write into scratch buffers of one head (`T × T` scores and probabilities) that the sequence
//! reuses for all of its heads, and its `T × D` results into head-major outputs that are
//! copied into the `(B, T, H*D)` layout once at the end. No scratch of size `B × H × T × T` is
//! allocated (the whole-batch version allocated, zero-filled and walked through memory four
//! such tensors in the backward), and a head's scratch stays in the core's cache between its
//! products and its softmax; the one tensor of that size is the probabilities the forward may
//! save for the backward (written where the head's probabilities would have been). Queries
//! may be fewer than keys (`Tq ≤ T`, not causal). Sequences run in parallel on rayon's
//! threads (in order in a single-threaded wasm build); each is computed the same way on any
//! thread count, so results do not depend on it. Outputs are written once into new buffers'
//! spare capacity; the writes are counted, and an output not written in full is an error.

use super::with_slices;
use super::{ScoreMask, as_slots, exp, lane_dot, lane_max, lane_sum, run_vectorized, tensor};
use crate::sgemm::{CPU_PRODUCT as product, MatRef};
use candle_core::{Result, Tensor};
#[cfg(parallel)]
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A zero tensor of `dims` (an empty attention's results).
fn zeros(dims: &[usize]) -> Result<Tensor> {
    tensor(vec![0.0; dims.iter().product()], dims)
}

/// The shape of one attention call: `b` sequences of `t` keys and `tq` queries, `heads` heads
/// of `d` values.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    tq: usize,
    t: usize,
    heads: usize,
    d: usize,
}

impl Dims {
    /// `q (B, Tq, C)` against `k (B, T, C)`: `Tq ≤ T` queries (all `T` when `causal`).
    fn new(q: &Tensor, k: &Tensor, heads: usize, causal: bool) -> Result<Self> {
        let (b, tq, c) = q.dims3()?;
        let (bk, t, ck) = k.dims3()?;
        if (bk, ck) != (b, c) || tq > t || (causal && tq != t) {
            return Err(candle_core::Error::Msg(format!(
                "attention: q {:?} does not fit k {:?} (the same batch and width, at most as \
                 many queries as keys, as many when causal)",
                q.dims(),
                k.dims()
            )));
        }
        if heads == 0 || !c.is_multiple_of(heads) {
            return Err(candle_core::Error::Msg(format!(
                "attention: hidden size {c} is not divisible by {heads} heads"
            )));
        }
        Ok(Self {
            b,
            tq,
            t,
            heads,
            d: c / heads,
        })
    }

    fn c(&self) -> usize {
        self.heads * self.d
    }

    /// Every head of sequence `seq` of a `(B, T, H*D)` tensor (`t` rows a sequence) into
    /// `to`, head-major: head `h` is the contiguous `t × D` block `h`. gemm reads its operands
    /// where they lie, but with a head's rows `C` apart the attention products took longer
    /// than copies take; and copying all heads in one pass along the rows reads memory in
    /// order, where copying one head at a time read `D` values every `C`.
    fn split_heads(&self, x: &[f32], t: usize, seq: usize, to: &mut [f32]) {
        let (c, d) = (self.c(), self.d);
        for (i, row) in x[seq * t * c..][..t * c].chunks_exact(c).enumerate() {
            for (h, src) in row.chunks_exact(d).enumerate() {
                copy_short(as_slots(&mut to[(h * t + i) * d..][..d]), src);
            }
        }
    }
}

thread_local! {
    /// Each thread's scratch for one sequence's attention, kept between calls instead of
    /// zero-filling fresh buffers for every sequence (~1.4 MB each in the backward at 128
    /// tokens, 12 heads of 32): the LoRA step measured ~2% faster, within this machine's noise.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on scratch buffers of lengths `lens`, whose contents are unspecified: every use
/// writes a buffer before it reads it. The thread's buffer is reused; where it is already in
/// use (a call nested on the same thread by rayon's work stealing), fresh buffers are. New
/// scratch is NaN in builds with debug assertions (the tests), so a read before a write shows.
fn with_scratch<const N: usize, R>(lens: [usize; N], f: impl FnOnce([&mut [f32]; N]) -> R) -> R {
    let total = lens.iter().sum();
    let fill = if cfg!(debug_assertions) {
        f32::NAN
    } else {
        0.0
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < total {
                buf.resize(total, fill);
            }
            f(split_lens(&mut buf[..total], lens))
        }
        Err(_) => f(split_lens(&mut vec![fill; total], lens)),
    })
}

/// `buf` cut into consecutive pieces of lengths `lens` (which sum to at most its length).
fn split_lens<const N: usize>(mut buf: &mut [f32], lens: [usize; N]) -> [&mut [f32]; N] {
    lens.map(|n| {
        let (piece, rest) = std::mem::take(&mut buf).split_at_mut(n);
        buf = rest;
        piece
    })
}

/// Writes head-major `src` (`H` blocks of `t × D`) into one sequence's `t × C` rows `out`
/// (slots of a new output, written once each).
/// Returns how many values it wrote.
fn merge_heads(out: &mut [MaybeUninit<f32>], src: &[f32], t: usize, d: usize, c: usize) -> usize {
    let mut written = 0;
    for (i, row) in out.chunks_exact_mut(c).enumerate() {
        for (h, dst) in row.chunks_exact_mut(d).enumerate() {
            written += copy_short(dst, &src[(h * t + i) * d..][..d]);
        }
    }
    written
}

/// The error for an output whose slots were not all written (a shape the kernel does not
/// cover), which is then dropped unread.
fn unwritten(what: &str, written: usize, len: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "attention: {written} of the {len} values of {what} were written"
    ))
}

/// A row-major `rows × cols` scratch matrix, or its transpose.
fn mat(data: &[f32], cols: usize, transposed: bool) -> MatRef<'_> {
    if transposed {
        MatRef {
            data,
            rs: 1,
            cs: cols,
        }
    } else {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }
}

/// `dst.copy_from_slice(src)` for a head's row (tens of values), as fixed-size 8-value
/// copies that compile to vector moves: a copy of run-time length is a call to `memmove`,
/// which took ~14% of the attention ops' time at head size 32 (one call per 128 bytes).
/// Writes into slots (of a new output, or scratch through `as_slots`); returns how many
/// values it wrote.
#[inline(always)]
fn copy_short(dst: &mut [MaybeUninit<f32>], src: &[f32]) -> usize {
    let n = dst.len().min(src.len());
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in d8.by_ref().zip(s8.by_ref()) {
        if let (Ok(d), Ok(s)) = (
            <&mut [MaybeUninit<f32>; 8]>::try_from(d),
            <&[f32; 8]>::try_from(s),
        ) {
            *d = s.map(MaybeUninit::new);
        }
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        d.write(*s);
    }
    n
}

/// Each of `others` has the shape of `like` (named `name` in the error).
fn same_shape<const N: usize>(
    op: &str,
    (name, like): (&str, &Tensor),
    others: [(&str, &Tensor); N],
) -> Result<()> {
    for (what, x) in others {
        if x.dims() != like.dims() {
            return Err(candle_core::Error::Msg(format!(
                "{op}: {what} has shape {:?}, expected {name}'s {:?}",
                x.dims(),
                like.dims()
            )));
        }
    }
    Ok(())
}

fn wrap(e: crate::sgemm::SgemmError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// Fused attention forward on `k`, `v` `(B, T, H*D)` and `q` `(B, Tq, H*D)` (`Tq ≤ T`, equal
/// when causal): the output `(B, Tq, H*D)` and what the backward needs. With `save_probs`
/// that is the probabilities `(B, H, Tq, T)`, which spares the backward a product and an
/// exponential per score (the Candle backend saves them while they are small); otherwise each
/// row's log-sum-exp `(B, H, Tq)`, from which the backward rebuilds them. `key_mask` is
/// `(B, T)` (1 keeps a key). The per-head products are
/// [`CPU_PRODUCT`](crate::sgemm::CPU_PRODUCT)'s.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    key_mask: Option<&Tensor>,
    causal: bool,
    save_probs: bool,
) -> Result<(Tensor, Tensor)> {
    let dims = Dims::new(q, k, heads, causal)?;
    let Dims { b, tq, t, d, .. } = dims;
    let c = dims.c();
    same_shape("attention", ("k", k), [("v", v)])?;
    let mask = ScoreMask::new(key_mask, causal, b, t)?;
    // Per head, the probabilities (`Tq × T`) or the log-sum-exp (`Tq`).
    let (per_head, saved_dims) = if save_probs {
        (tq * t, vec![b, heads, tq, t])
    } else {
        (tq, vec![b, heads, tq])
    };
    if b * tq * t * c == 0 {
        return Ok((zeros(&[b, tq, c])?, zeros(&saved_dims)?));
    }
    let scale = 1.0 / (d as f32).sqrt();
    let (len_out, len_saved) = (b * tq * c, b * heads * per_head);
    let (out, saved) = with_slices([q, k, v], |[q, k, v]| {
        // Both outputs are written once each into new buffers' spare capacity (nothing is
        // zero-filled), and the writes are counted before the buffers are taken as written.
        let (mut out, mut saved) = (Vec::with_capacity(len_out), Vec::with_capacity(len_saved));
        let written = rows_mut!(out.spare_capacity_mut()[..len_out], tq * c)
            .zip(rows_mut!(
                saved.spare_capacity_mut()[..len_saved],
                heads * per_head
            ))
            .enumerate()
            .map(|(seq, (out, saved))| {
                let (hq, hk) = (heads * tq * d, heads * t * d);
                let scratch_p = if save_probs { 0 } else { tq * t };
                let lens = [tq * t, scratch_p, hq, hq, hk, hk];
                with_scratch(lens, |[s, scratch_p, qa, oa, ka, va]| {
                    dims.split_heads(q, tq, seq, qa);
                    dims.split_heads(k, t, seq, ka);
                    dims.split_heads(v, t, seq, va);
                    let mut saved_written = 0;
                    for (h, saved) in saved.chunks_exact_mut(per_head).enumerate() {
                        let qh = &qa[h * tq * d..][..tq * d];
                        let (kh, vh) = (&ka[h * t * d..][..t * d], &va[h * t * d..][..t * d]);
                        product(tq, t, d, mat(qh, d, false), mat(kh, d, true), s).map_err(wrap)?;
                        let (p, mut lse) = if save_probs {
                            (saved, None)
                        } else {
                            (as_slots(scratch_p), Some(saved))
                        };
                        // Rows written in full, and log-sum-exps written.
                        let (rows_written, lse_written) = vectorized!({
                            let (mut full, mut lses) = (0, 0);
                            let rows = p.chunks_exact_mut(t).zip(s.chunks_exact(t));
                            for (i, (pr, sr)) in rows.enumerate() {
                                let pr = mask.apply(seq, i, sr, scale, 0.0, pr);
                                full += usize::from(pr.len() == t);
                                let max = lane_max(pr);
                                for x in pr.iter_mut() {
                                    *x = exp(*x - max);
                                }
                                let sum = lane_sum(pr);
                                let inv = 1.0 / sum;
                                for x in pr.iter_mut() {
                                    *x *= inv;
                                }
                                if let Some(lse) = lse.as_deref_mut() {
                                    lse[i].write(max + sum.ln());
                                    lses += 1;
                                }
                            }
                            (full, lses)
                        });
                        if rows_written != tq || p.len() != tq * t {
                            return Err(unwritten("the probabilities", rows_written * t, tq * t));
                        }
                        saved_written += if save_probs { tq * t } else { lse_written };
                        // SAFETY: `p` is `tq` rows of `t` slots (checked), and each row was
                        // written in full (`tq` rows counted).
                        #[allow(unsafe_code)]
                        let p: &[f32] = unsafe { p.assume_init_ref() };
                        let o = &mut oa[h * tq * d..][..tq * d];
                        product(tq, d, t, mat(p, t, false), mat(vh, d, false), o).map_err(wrap)?;
                    }
                    Ok((merge_heads(out, oa, tq, d, c), saved_written))
                })
            })
            .collect::<Result<Vec<(usize, usize)>>>()?;
        let (wo, ws) = written
            .iter()
            .fold((0, 0), |(a, b), &(o, s)| (a + o, b + s));
        if wo != len_out {
            return Err(unwritten("the output", wo, len_out));
        }
        if ws != len_saved {
            return Err(unwritten("the saved tensor", ws, len_saved));
        }
        // SAFETY: every slot of both outputs was written once: the writes, counted per
        // sequence and head, add up to the outputs' lengths, and no slot is written twice
        // (each sequence, head, row and value has its own).
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(len_out);
            saved.set_len(len_saved);
        }
        Ok::<_, candle_core::Error>((out, saved))
    })??;
    Ok((tensor(out, &[b, tq, c])?, tensor(saved, &saved_dims)?))
}

/// Fused attention backward: `(dq, dk, dv)` from the inputs, the forward's output and what
/// it saved (see [`attention`]), and the output's gradient. From a saved log-sum-exp the
/// probabilities are recomputed per head from the scores (`p = exp(scale * s + mask - lse)`);
/// then `ds = scale * p * (dp - rowdot(d_out, out))`, `dv = pᵀ d_out`, `dq = ds k`,
/// `dk = dsᵀ q`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    saved: &Tensor,
    d_out: &Tensor,
    heads: usize,
    key_mask: Option<&Tensor>,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = Dims::new(q, k, heads, causal)?;
    let Dims { b, tq, t, d, .. } = dims;
    let c = dims.c();
    same_shape(
        "attention backward",
        ("q", q),
        [("out", out), ("d_out", d_out)],
    )?;
    same_shape("attention backward", ("k", k), [("v", v)])?;
    let probs = saved.rank() == 4;
    let expected = if probs {
        vec![b, heads, tq, t]
    } else {
        vec![b, heads, tq]
    };
    if saved.dims() != expected.as_slice() {
        return Err(candle_core::Error::Msg(format!(
            "attention backward: the saved tensor has shape {:?}, expected the probabilities \
             {:?} or the log-sum-exp {:?}",
            saved.dims(),
            [b, heads, tq, t],
            [b, heads, tq]
        )));
    }
    let mask = ScoreMask::new(key_mask, causal, b, t)?;
    if b * tq * t * c == 0 {
        return Ok((zeros(&[b, tq, c])?, zeros(&[b, t, c])?, zeros(&[b, t, c])?));
    }
    let scale = 1.0 / (d as f32).sqrt();
    let per_head = if probs { tq * t } else { tq };
    let grads = with_slices([q, k, v, out, saved, d_out], |[q, k, v, o, saved, dout]| {
        // The three gradients are written once each into new buffers' spare capacity
        // (nothing is zero-filled), and the writes are counted before they are taken as
        // written.
        let (len_q, len_k) = (b * tq * c, b * t * c);
        let (mut dq, mut dk, mut dv) = (
            Vec::with_capacity(len_q),
            Vec::with_capacity(len_k),
            Vec::with_capacity(len_k),
        );
        let written = rows_mut!(dq.spare_capacity_mut()[..len_q], tq * c)
            .zip(
                rows_mut!(dk.spare_capacity_mut()[..len_k], t * c)
                    .zip(rows_mut!(dv.spare_capacity_mut()[..len_k], t * c)),
            )
            .enumerate()
            .map(|(seq, (dq, (dk, dv)))| {
                let (st, hq, hk) = (tq * t, heads * tq * d, heads * t * d);
                // Scores and probabilities only where they are rebuilt.
                let rebuilt = if probs { 0 } else { st };
                let lens = [rebuilt, st, rebuilt, st, tq, hq, hq, hq, hk, hk, hk, hk];
                with_scratch(
                    lens,
                    |[s, dp, p_buf, ds, row, qa, doa, dqa, ka, va, dka, dva]| {
                        dims.split_heads(q, tq, seq, qa);
                        dims.split_heads(k, t, seq, ka);
                        dims.split_heads(v, t, seq, va);
                        dims.split_heads(dout, tq, seq, doa);
                        for h in 0..heads {
                            let (qh, doh) =
                                (&qa[h * tq * d..][..tq * d], &doa[h * tq * d..][..tq * d]);
                            let (kh, vh) = (&ka[h * t * d..][..t * d], &va[h * t * d..][..t * d]);
                            let (qm, km, dom) =
                                (mat(qh, d, false), mat(kh, d, false), mat(doh, d, false));
                            let saved = &saved[(seq * heads + h) * per_head..][..per_head];
                            let p: &[f32] = if probs {
                                saved
                            } else {
                                product(tq, t, d, qm, mat(kh, d, true), s).map_err(wrap)?;
                                vectorized!({
                                    let rows = p_buf.chunks_exact_mut(t).zip(s.chunks_exact(t));
                                    for (i, (pr, sr)) in rows.enumerate() {
                                        let pr = as_slots(pr);
                                        let pr = mask.apply(seq, i, sr, scale, -saved[i], pr);
                                        for x in pr.iter_mut() {
                                            *x = exp(*x);
                                        }
                                    }
                                });
                                p_buf
                            };
                            product(tq, t, d, dom, mat(vh, d, true), dp).map_err(wrap)?;
                            vectorized!({
                                for (i, r) in row.iter_mut().enumerate() {
                                    let at = seq * tq * c + i * c + h * d;
                                    *r = lane_dot(&dout[at..][..d], &o[at..][..d]);
                                }
                                let rows = ds.chunks_exact_mut(t).zip(p.chunks_exact(t));
                                for ((dsr, pr), (dpr, &r)) in
                                    rows.zip(dp.chunks_exact(t).zip(&*row))
                                {
                                    for ((y, &x), &dv) in dsr.iter_mut().zip(pr).zip(dpr) {
                                        *y = scale * x * (dv - r);
                                    }
                                }
                            });
                            let dvh = &mut dva[h * t * d..][..t * d];
                            product(t, d, tq, mat(p, t, true), dom, dvh).map_err(wrap)?;
                            let dqh = &mut dqa[h * tq * d..][..tq * d];
                            product(tq, d, t, mat(ds, t, false), km, dqh).map_err(wrap)?;
                            let dkh = &mut dka[h * t * d..][..t * d];
                            product(t, d, tq, mat(ds, t, true), qm, dkh).map_err(wrap)?;
                        }
                        Ok([
                            merge_heads(dq, dqa, tq, d, c),
                            merge_heads(dk, dka, t, d, c),
                            merge_heads(dv, dva, t, d, c),
                        ])
                    },
                )
            })
            .collect::<Result<Vec<[usize; 3]>>>()?;
        let sums = written
            .iter()
            .fold([0; 3], |[a, b, c], [x, y, z]| [a + x, b + y, c + z]);
        for ((what, got), len) in ["dq", "dk", "dv"]
            .iter()
            .zip(sums)
            .zip([len_q, len_k, len_k])
        {
            if got != len {
                return Err(unwritten(what, got, len));
            }
        }
        // SAFETY: every slot of the three gradients was written once: the writes, counted
        // per sequence, add up to their lengths, and each sequence, head, row and value has
        // its own slot.
        #[allow(unsafe_code)]
        unsafe {
            dq.set_len(len_q);
            dk.set_len(len_k);
            dv.set_len(len_k);
        }
        Ok::<_, candle_core::Error>([dq, dk, dv])
    })??;
    let [dq, dk, dv] = grads;
    Ok((
        tensor(dq, &[b, tq, c])?,
        tensor(dk, &[b, t, c])?,
        tensor(dv, &[b, t, c])?,
    ))
}
