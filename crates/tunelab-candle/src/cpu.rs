//! Fused CPU kernels for the candle backend's element-wise and row-wise ops.
//!
//! Built from candle's tensor ops, GELU's backward is eleven passes over the activations and
//! attention's softmax ten, each allocating a tensor; on the CPU (natively and in wasm) these
//! kernels make one or two passes instead. Their loops are branch-free over plain slices so
//! the compiler vectorises them (SSE/AVX natively, SIMD128 in wasm); `exp` and `erf` are
//! polynomial approximations that vectorise with them (relative error ~1e-7, see the tests).
//! Every op here is checked against finite differences and the PyTorch fixtures through the
//! backend's tests, and against candle's composite ops below.

use candle_core::{CpuStorage, Result, Storage, Tensor};
#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

/// Row chunks of a slice, in parallel natively (rayon's pool: `RAYON_NUM_THREADS` threads) and
/// in order in wasm; both iterators have the same `zip`/`enumerate`/`for_each` shape.
#[cfg(not(target_arch = "wasm32"))]
macro_rules! rows {
    ($v:expr, $n:expr) => {
        $v.par_chunks($n).with_min_len(16)
    };
}
#[cfg(not(target_arch = "wasm32"))]
macro_rules! rows_mut {
    ($v:expr, $n:expr) => {
        $v.par_chunks_mut($n).with_min_len(16)
    };
}
#[cfg(target_arch = "wasm32")]
macro_rules! rows {
    ($v:expr, $n:expr) => {
        $v.chunks($n)
    };
}
#[cfg(target_arch = "wasm32")]
macro_rules! rows_mut {
    ($v:expr, $n:expr) => {
        $v.chunks_mut($n)
    };
}

/// Elements are processed in blocks of this many per parallel task.
const BLOCK: usize = 4096;

/// Runs `f` on the row-major values of each of `ts` (made contiguous first).
pub fn with_slices<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Result<R> {
    let ts = ts.map(Tensor::contiguous);
    let mut owned = Vec::with_capacity(N);
    for t in ts {
        owned.push(t?);
    }
    let guards: Vec<_> = owned.iter().map(Tensor::storage_and_layout).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for ((slot, t), (storage, layout)) in slices.iter_mut().zip(&owned).zip(&guards) {
        match &**storage {
            Storage::Cpu(CpuStorage::F32(v)) => {
                let start = layout.start_offset();
                *slot = &v[start..start + t.elem_count()];
            }
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "expected a CPU f32 tensor, found {:?} on {:?}",
                    t.dtype(),
                    t.device().location()
                )));
            }
        }
    }
    Ok(f(slices))
}

fn len_err(op: &str, what: &str, got: usize, want: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {what} has {got} values, expected {want}"))
}

/// A new CPU tensor of `dims` holding `values`.
fn tensor(values: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(values, dims, &candle_core::Device::Cpu)
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so `n * LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this `exp` is under f32's smallest normal number: the result is 0.
const EXP_LOW: f32 = -87.336_54;
const EXP_HIGH: f32 = 88.722_83;

/// `e^x` for f32 (relative error < 2.5e-7 over the normal range; 0 below it), in branch-free
/// arithmetic that vectorises (no `mul_add`: without FMA in the baseline target that would be
/// a library call): `x = n ln 2 + r`, a degree-6 polynomial for `e^r` on
/// `|r| <= ln2/2`, and `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_LOW, EXP_HIGH);
    // Round to nearest with the 1.5 * 2^23 trick (no SSE4.1 `round` needed).
    const MAGIC: f32 = 12_582_912.0;
    let n = (xc * LOG2E + MAGIC) - MAGIC;
    // `n * LN2_HI` is exact: LN2_HI has 11 significant bits and |n| <= 128.
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    for c in [
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = p * r + c;
    }
    let e = p * (r * r) + (r + 1.0);
    let bits = ((n as i32 + 127) as u32) << 23;
    let y = e * f32::from_bits(bits);
    if x < EXP_LOW { 0.0 } else { y }
}

/// `erf(z)` and `e^(-z^2)` (Abramowitz & Stegun 7.1.26: absolute error < 1.5e-7 in exact
/// arithmetic, < 5e-7 in f32; GELU needs the absolute, not the relative, error small).
#[inline(always)]
fn erf_and_gauss(z: f32) -> (f32, f32) {
    let a = z.abs();
    let t = 1.0 / (0.327_591_1 * a + 1.0);
    let mut poly = 1.061_405_4f32;
    for c in [-1.453_152, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        poly = poly * t + c;
    }
    let poly = poly * t;
    let g = exp(-a * a);
    let e = 1.0 - poly * g;
    (e.copysign(z), g)
}

/// GELU (the erf form): `x Φ(x)`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let y = with_slices([x], |[xs]| {
        let mut y = vec![0f32; xs.len()];
        rows_mut!(y, BLOCK)
            .zip(rows!(xs, BLOCK))
            .for_each(|(out, xs)| {
                for (o, &x) in out.iter_mut().zip(xs) {
                    let (e, _) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
                    *o = 0.5 * x * (1.0 + e);
                }
            });
        y
    })?;
    tensor(y, x.dims())
}

/// `dy * gelu'(x)`, `gelu'(x) = Φ(x) + x φ(x)`.
pub fn gelu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let d = with_slices([x, dy], |[xs, dys]| {
        let mut d = vec![0f32; xs.len()];
        rows_mut!(d, BLOCK)
            .zip(rows!(xs, BLOCK).zip(rows!(dys, BLOCK)))
            .for_each(|(out, (xs, dys))| {
                for ((o, &x), &dy) in out.iter_mut().zip(xs).zip(dys) {
                    let (e, g) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
                    *o = dy * (0.5 * (1.0 + e) + x * g * INV_SQRT_2PI);
                }
            });
        d
    })?;
    tensor(d, x.dims())
}

/// Layer norm over the last dim: `(y, mean, rstd)`, the statistics shaped `[.., 1]`.
pub fn layer_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dims().last().copied().unwrap_or(1).max(1);
    let rows = x.elem_count() / c;
    for (what, t) in [("gamma", gamma), ("beta", beta)] {
        if t.elem_count() != c {
            return Err(len_err("layer_norm", what, t.elem_count(), c));
        }
    }
    let (y, mean, rstd) = with_slices([x, gamma, beta], |[xs, g, b]| {
        let mut y = vec![0f32; xs.len()];
        let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
        for (r, (xr, yr)) in xs.chunks_exact(c).zip(y.chunks_exact_mut(c)).enumerate() {
            let mu = xr.iter().sum::<f32>() / c as f32;
            let var = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let rs = 1.0 / (var + eps).sqrt();
            for (((o, &v), &gi), &bi) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                *o = (v - mu) * rs * gi + bi;
            }
            mean[r] = mu;
            rstd[r] = rs;
        }
        (y, mean, rstd)
    })?;
    let mut stat_dims = x.dims().to_vec();
    if let Some(last) = stat_dims.last_mut() {
        *last = 1;
    }
    Ok((
        tensor(y, x.dims())?,
        tensor(mean, &stat_dims)?,
        tensor(rstd, &stat_dims)?,
    ))
}

/// Layer norm's backward: `(dx, dgamma, dbeta)`.
pub fn layer_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dims().last().copied().unwrap_or(1).max(1);
    let rows = x.elem_count() / c;
    for (what, t, want) in [
        ("dy", dy, x.elem_count()),
        ("gamma", gamma, c),
        ("mean", mean, rows),
        ("rstd", rstd, rows),
    ] {
        if t.elem_count() != want {
            return Err(len_err("layer_norm_backward", what, t.elem_count(), want));
        }
    }
    let (dx, dg, db) = with_slices([x, dy, gamma, mean, rstd], |[xs, dys, g, mu, rs]| {
        let mut dx = vec![0f32; xs.len()];
        let (mut dg, mut db) = (vec![0f32; c], vec![0f32; c]);
        let mut xhat = vec![0f32; c];
        let mut dxhat = vec![0f32; c];
        let rows = xs
            .chunks_exact(c)
            .zip(dys.chunks_exact(c))
            .zip(dx.chunks_exact_mut(c));
        for (r, ((xr, dyr), dxr)) in rows.enumerate() {
            let (m, s) = (mu[r], rs[r]);
            let (mut m1, mut m2) = (0f32, 0f32);
            for i in 0..c {
                xhat[i] = (xr[i] - m) * s;
                dxhat[i] = dyr[i] * g[i];
                m1 += dxhat[i];
                m2 += dxhat[i] * xhat[i];
                dg[i] += dyr[i] * xhat[i];
                db[i] += dyr[i];
            }
            let (m1, m2) = (m1 / c as f32, m2 / c as f32);
            for i in 0..c {
                dxr[i] = (dxhat[i] - m1 - xhat[i] * m2) * s;
            }
        }
        (dx, dg, db)
    })?;
    Ok((tensor(dx, x.dims())?, tensor(dg, &[c])?, tensor(db, &[c])?))
}

/// Attention's additive mask: `(1 - m) * f32::MIN` per key, as transformers builds it, plus
/// the causal mask when asked.
struct ScoreMask {
    /// `(B, T)` key biases, or none.
    keys: Option<Vec<f32>>,
    causal: bool,
    t: usize,
}

impl ScoreMask {
    fn new(key_mask: Option<&Tensor>, causal: bool, b: usize, t: usize) -> Result<Self> {
        if let Some(m) = key_mask
            && m.elem_count() != b * t
        {
            return Err(len_err("attention", "key mask", m.elem_count(), b * t));
        }
        let keys = key_mask
            .map(|m| with_slices([m], |[m]| m.iter().map(|v| (1.0 - v) * f32::MIN).collect()))
            .transpose()?;
        Ok(Self { keys, causal, t })
    }

    /// `out[j] = scale * s[j] + bias(j) + shift` for query `i` of sequence `batch`.
    #[inline(always)]
    fn apply(&self, batch: usize, i: usize, s: &[f32], scale: f32, shift: f32, out: &mut [f32]) {
        match &self.keys {
            Some(k) => {
                let k = &k[batch * self.t..][..self.t];
                for ((o, &v), &b) in out.iter_mut().zip(s).zip(k) {
                    *o = v * scale + b + shift;
                }
            }
            None => {
                for (o, &v) in out.iter_mut().zip(s) {
                    *o = v * scale + shift;
                }
            }
        }
        if self.causal {
            for o in out.iter_mut().skip(i + 1) {
                *o += f32::MIN;
            }
        }
    }
}

/// Sum with eight independent lanes (the compiler keeps them in vector registers).
#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Maximum with eight independent lanes.
#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(rest, |m, &v| m.max(v))
}

/// Softmax over the last dim of `scale * scores + mask`, scores `(B, H, T, T)`: the
/// probabilities and each row's log-sum-exp `(B, H, T)`.
pub fn attention_softmax(
    scores: &Tensor,
    scale: f32,
    key_mask: Option<&Tensor>,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    let (b, h, t, t2) = scores.dims4()?;
    let mask = ScoreMask::new(key_mask, causal, b, t2)?;
    let (p, lse) = with_slices([scores], |[s]| {
        let mut p = vec![0f32; s.len()];
        let mut lse = vec![0f32; b * h * t];
        rows_mut!(p, t2)
            .zip(rows_mut!(lse, 1))
            .zip(rows!(s, t2))
            .enumerate()
            .for_each(|(r, ((pr, l), sr))| {
                mask.apply(r / (h * t), r % t, sr, scale, 0.0, pr);
                let max = lane_max(pr);
                for o in pr.iter_mut() {
                    *o = exp(*o - max);
                }
                let sum = lane_sum(pr);
                let inv = 1.0 / sum;
                for o in pr.iter_mut() {
                    *o *= inv;
                }
                l[0] = max + sum.ln();
            });
        (p, lse)
    })?;
    Ok((tensor(p, &[b, h, t, t2])?, tensor(lse, &[b, h, t])?))
}

/// Attention's softmax backward from the recomputed scores: with
/// `p = exp(scale * s + mask - lse)`, returns `(p, ds)`, `ds = scale * p * (dp - rowdot)`.
pub fn attention_softmax_backward(
    scores: &Tensor,
    lse: &Tensor,
    dp: &Tensor,
    rowdot: &Tensor,
    scale: f32,
    key_mask: Option<&Tensor>,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    let (b, h, t, t2) = scores.dims4()?;
    let mask = ScoreMask::new(key_mask, causal, b, t2)?;
    for (what, x, want) in [
        ("lse", lse, b * h * t),
        ("dp", dp, scores.elem_count()),
        ("rowdot", rowdot, b * h * t),
    ] {
        if x.elem_count() != want {
            return Err(len_err("attention backward", what, x.elem_count(), want));
        }
    }
    let (p, ds) = with_slices([scores, dp, lse, rowdot], |[s, dps, lse, rowdot]| {
        let mut p = vec![0f32; s.len()];
        let mut ds = vec![0f32; s.len()];
        rows_mut!(p, t2)
            .zip(rows_mut!(ds, t2))
            .zip(rows!(s, t2).zip(rows!(dps, t2)))
            .enumerate()
            .for_each(|(r, ((pr, dsr), (sr, dpr)))| {
                mask.apply(r / (h * t), r % t, sr, scale, -lse[r], pr);
                let d = rowdot[r];
                for ((o, g), &dv) in pr.iter_mut().zip(dsr.iter_mut()).zip(dpr) {
                    *o = exp(*o);
                    *g = scale * *o * (dv - d);
                }
            });
        (p, ds)
    })?;
    Ok((tensor(p, &[b, h, t, t2])?, tensor(ds, &[b, h, t, t2])?))
}

/// `x + bias` with `bias` `(C)` added to every row of the last dim.
pub fn add_rows(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let c = x.dims().last().copied().unwrap_or(1).max(1);
    if bias.elem_count() != c {
        return Err(len_err("add_bias", "bias", bias.elem_count(), c));
    }
    let y = with_slices([x, bias], |[xs, b]| {
        let mut y = Vec::with_capacity(xs.len());
        for row in xs.chunks_exact(c) {
            y.extend(row.iter().zip(b).map(|(v, bi)| v + bi));
        }
        y
    })?;
    tensor(y, x.dims())
}

/// The sum over every row of the last dim: `(.., C) -> (C)` (a bias's gradient).
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let c = x.dims().last().copied().unwrap_or(1).max(1);
    let out = with_slices([x], |[xs]| {
        let mut acc = vec![0f32; c];
        for row in xs.chunks_exact(c) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        acc
    })?;
    tensor(out, &[c])
}

/// Per-row dot product over the last dim of two same-shaped tensors, shaped `[.., 1]`.
pub fn row_dot(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = a.dims().last().copied().unwrap_or(1).max(1);
    if b.elem_count() != a.elem_count() {
        return Err(len_err("row_dot", "b", b.elem_count(), a.elem_count()));
    }
    let out = with_slices([a, b], |[x, y]| {
        x.chunks_exact(c)
            .zip(y.chunks_exact(c))
            .map(|(u, v)| u.iter().zip(v).map(|(p, q)| p * q).sum())
            .collect::<Vec<f32>>()
    })?;
    let mut dims = a.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = 1;
    }
    tensor(out, &dims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exp_matches_std_to_two_ulp_over_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_matches_a_series_reference() {
        // erf by its Maclaurin series in f64 (converges fast for |z| <= 3).
        fn erf64(z: f64) -> f64 {
            let (mut term, mut sum, mut n) = (z, z, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -z * z / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut z = -3.0f32;
        while z <= 3.0 {
            let (e, g) = erf_and_gauss(z);
            let want = erf64(f64::from(z));
            assert!(
                (f64::from(e) - want).abs() < 5e-7,
                "erf({z}) = {e}, want {want}"
            );
            // Against e^(-z^2) of the f32-rounded square the kernel sees.
            let gw = (-f64::from(z * z)).exp();
            assert!(
                (f64::from(g) - gw).abs() < 3e-7 * gw.max(1e-30) + 1e-38,
                "gauss({z})"
            );
            z += 0.01;
        }
        assert_eq!(erf_and_gauss(10.0).0, 1.0);
        assert_eq!(erf_and_gauss(-10.0).0, -1.0);
    }

    #[test]
    fn mismatched_sizes_are_errors_not_panics() {
        let dev = candle_core::Device::Cpu;
        let t = |dims: &[usize]| Tensor::zeros(dims, candle_core::DType::F32, &dev).unwrap();
        let x = t(&[2, 3, 4]);
        let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert!(msg(add_rows(&x, &t(&[3]))).contains("add_bias: bias has 3 values, expected 4"));
        assert!(msg(row_dot(&x, &t(&[2, 3]))).contains("row_dot: b has 6 values, expected 24"));
        let err = layer_norm_backward(&x, &t(&[5]), &t(&[2, 3, 1]), &t(&[2, 3, 1]), &x)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gamma has 5 values, expected 4"), "{err}");
        let err = layer_norm(&x, &t(&[4]), &t(&[2]), 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("beta has 2 values, expected 4"), "{err}");
        let s = t(&[2, 1, 3, 3]);
        let err = attention_softmax(&s, 1.0, Some(&t(&[2, 2])), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("key mask has 4 values, expected 6"), "{err}");
        let err =
            attention_softmax_backward(&s, &t(&[2, 1, 2]), &s, &t(&[2, 1, 3]), 1.0, None, false)
                .unwrap_err()
                .to_string();
        assert!(err.contains("lse has 4 values, expected 6"), "{err}");
        let u = Tensor::zeros(3, candle_core::DType::U32, &dev).unwrap();
        assert!(msg(gelu(&u)).contains("expected a CPU f32 tensor"));
    }

    #[test]
    fn fused_softmax_matches_candle_ops_with_masks() {
        let dev = candle_core::Device::Cpu;
        let (b, h, t) = (2, 3, 5);
        let s = Tensor::randn(0f32, 2.0, (b, h, t, t), &dev).unwrap();
        let m = Tensor::from_vec(
            vec![1f32, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            (b, t),
            &dev,
        )
        .unwrap();
        for causal in [false, true] {
            let (p, lse) = attention_softmax(&s, 0.5, Some(&m), causal).unwrap();
            let mut bias = m
                .affine(-1.0, 1.0)
                .unwrap()
                .affine(f64::from(f32::MIN), 0.0)
                .unwrap()
                .reshape((b, 1, 1, t))
                .unwrap()
                .broadcast_as((b, h, t, t))
                .unwrap()
                .contiguous()
                .unwrap();
            if causal {
                let c: Vec<f32> = (0..t * t)
                    .map(|k| if k % t > k / t { f32::MIN } else { 0.0 })
                    .collect();
                let c = Tensor::from_vec(c, (1, 1, t, t), &dev).unwrap();
                bias = bias.broadcast_add(&c).unwrap();
            }
            let z = s.affine(0.5, 0.0).unwrap().add(&bias).unwrap();
            let want = candle_core::D::Minus1;
            let e = z
                .broadcast_sub(&z.max_keepdim(want).unwrap())
                .unwrap()
                .exp()
                .unwrap();
            let want_p = e.broadcast_div(&e.sum_keepdim(want).unwrap()).unwrap();
            let got: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
            let want_v: Vec<f32> = want_p.flatten_all().unwrap().to_vec1().unwrap();
            for (g, w) in got.iter().zip(&want_v) {
                assert!((g - w).abs() < 1e-6, "causal={causal}: {g} vs {w}");
            }
            // lse reproduces p: exp(z - lse) = p.
            let back = z
                .broadcast_sub(&lse.unsqueeze(3).unwrap())
                .unwrap()
                .exp()
                .unwrap();
            let back: Vec<f32> = back.flatten_all().unwrap().to_vec1().unwrap();
            for (g, w) in back.iter().zip(&want_v) {
                assert!((g - w).abs() < 1e-6);
            }
        }
    }
}
