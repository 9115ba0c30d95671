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
#[cfg(parallel)]
use rayon::prelude::*;

/// Row chunks of a slice, in parallel where `cfg(parallel)` is set (natively: rayon's pool,
/// `RAYON_NUM_THREADS` threads; in the browser's threaded wasm build: its Web Workers, see
/// build.rs) and in order in a single-threaded wasm build; both iterators have the same
/// `zip`/`enumerate`/`map`/`for_each` shape, and `map(..).collect()` keeps the chunks' order
/// in both.
#[cfg(parallel)]
macro_rules! rows {
    ($v:expr, $n:expr) => {
        $v.par_chunks($n).with_min_len(1)
    };
}
#[cfg(parallel)]
macro_rules! rows_mut {
    ($v:expr, $n:expr) => {
        $v.par_chunks_mut($n).with_min_len(1)
    };
}
#[cfg(not(parallel))]
macro_rules! rows {
    ($v:expr, $n:expr) => {
        $v.chunks($n)
    };
}
#[cfg(not(parallel))]
macro_rules! rows_mut {
    ($v:expr, $n:expr) => {
        $v.chunks_mut($n)
    };
}

/// Elements are processed in blocks of about this many per parallel task.
const BLOCK: usize = 4096;

/// Rows of `c` values per parallel task: about [`BLOCK`] values, at least one row.
fn block_rows(c: usize) -> usize {
    (BLOCK / c.max(1)).max(1)
}

/// `vectorized!({ .. })` runs the block with its loops compiled for the widest vector
/// instructions this CPU has (see [`run_vectorized`]). The block becomes a closure marked
/// `#[inline(always)]`: a large closure is otherwise called, not inlined, from the functions
/// compiled for AVX-512/AVX2 and keeps the baseline instructions.
macro_rules! vectorized {
    ($body:block $(,)?) => {
        run_vectorized(
            #[inline(always)]
            || $body,
        )
    };
}

/// Runs `f` with its loops compiled for the widest vector instructions this CPU has.
///
/// Natively the crate is built for the baseline target (SSE2 on x86-64, no FMA); pulp checks
/// the CPU once and runs `f` inlined into a function compiled for AVX-512 or AVX2, so the
/// kernels' plain loops vectorise 8 or 16 lanes wide (measured 2-5x faster per kernel on an
/// AVX-512 Xeon). The arithmetic is the same (the compiler does not fuse `a * b + c` into an
/// FMA without being told), so results do not depend on the CPU. In wasm the whole crate is
/// compiled with SIMD128 and `f` runs as it is.
#[inline(always)]
fn run_vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(not(target_arch = "wasm32"))]
    {
        pulp::Arch::new().dispatch(f)
    }
    #[cfg(target_arch = "wasm32")]
    {
        f()
    }
}

/// Adds `b` into `acc` element by element.
#[inline(always)]
fn add_into(acc: &mut [f32], b: &[f32]) {
    for (a, v) in acc.iter_mut().zip(b) {
        *a += v;
    }
}

/// The element-wise sum of blocks' partial sums, added in block order: a sum made this way
/// does not depend on how the blocks were scheduled (or on the thread count).
fn add_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut sums = vec![0f32; len];
    for p in partials {
        add_into(&mut sums, p);
    }
    sums
}

/// `len` values (a whole number of rows) that repeat the row `row`: a linear layer's output
/// starting as its bias, filled in parallel natively (on the calling thread the other cores
/// would wait: `vec![0.0; n]` outputs zero-filled that way took ~8% of the MiniLM LoRA step
/// in a profile, with candle's matmul).
#[allow(unsafe_code)]
pub(crate) fn repeat_rows(row: &[f32], len: usize) -> Vec<f32> {
    if row.is_empty() {
        return vec![0.0; len];
    }
    let c = row.len();
    let fill = |chunk: &mut [std::mem::MaybeUninit<f32>]| {
        for dst in chunk.chunks_mut(c) {
            for (d, &v) in dst.iter_mut().zip(row) {
                d.write(v);
            }
        }
    };
    let mut v = Vec::with_capacity(len);
    #[cfg(parallel)]
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(block_rows(c) * c)
        .for_each(fill);
    #[cfg(not(parallel))]
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the chunks cover `spare_capacity_mut()[..len]` and split into rows of at most
    // `c` values, each written in full from `row`'s `c` values.
    unsafe { v.set_len(len) };
    v
}

/// `buf` as slots to write (it stays initialised: only values are written through it), for
/// the kernels that write both new outputs and scratch.
#[allow(unsafe_code)]
fn as_slots(buf: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and every write through the slots
    // (`MaybeUninit::write`, `MaybeUninit::new`) stores an initialised `f32`.
    unsafe { &mut *(std::ptr::from_mut(buf) as *mut [std::mem::MaybeUninit<f32>]) }
}

/// A copy of `src` made in parallel like [`repeat_rows`] (`to_vec` copies on the calling
/// thread while the others wait): the start of a product added onto a gradient so far.
pub(crate) fn copied(src: &[f32]) -> Vec<f32> {
    let mut v = Vec::with_capacity(src.len());
    let slots = &mut v.spare_capacity_mut()[..src.len()];
    #[cfg(parallel)]
    slots
        .par_chunks_mut(BLOCK)
        .zip(src.par_chunks(BLOCK))
        .for_each(|(d, s)| {
            d.write_copy_of_slice(s);
        });
    #[cfg(not(parallel))]
    slots.write_copy_of_slice(src);
    // SAFETY: the chunks cover `spare_capacity_mut()[..src.len()]`, each written from `src`.
    #[allow(unsafe_code)]
    unsafe {
        v.set_len(src.len())
    };
    v
}

/// `f` of the values of `a` and `b` pair by pair (the shorter length), each thread writing
/// its own blocks of the output once: nothing is zero-filled first. Give `f` an
/// `#[inline(always)]` where it is more than a line (a closure that is called, not inlined,
/// keeps the baseline instructions: see [`vectorized!`]), and make it `move` where it
/// captures a value (one read through a reference was reloaded for every element: a scale
/// took 0.78 ms instead of 0.56 at 1024 × 1536 on one thread).
#[allow(unsafe_code)]
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let n = a.len().min(b.len());
    #[cfg(parallel)]
    {
        let mut out = Vec::with_capacity(n);
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(BLOCK)
            .zip(a[..n].par_chunks(BLOCK).zip(b[..n].par_chunks(BLOCK)))
            .for_each(|(o, (x, y))| {
                vectorized!({
                    for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                        o.write(f(x, y));
                    }
                })
            });
        // SAFETY: `out[..n]`, `a[..n]` and `b[..n]` split into the same chunks, so each output
        // chunk is paired with input chunks of its own length and the loop wrote every value.
        unsafe { out.set_len(n) };
        out
    }
    #[cfg(not(parallel))]
    {
        a[..n].iter().zip(&b[..n]).map(|(&x, &y)| f(x, y)).collect()
    }
}

/// `f` of each value of `a`, as [`zip_map`] makes it (the same advice on `f` holds).
fn map(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    zip_map(
        a,
        a,
        #[inline(always)]
        move |x, _| f(x),
    )
}

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
    // Round to nearest with the 1.5 * 2^23 trick (no SSE4.1 `round` needed): `shifted`'s
    // low mantissa bits hold `n` as an integer, its float value minus MAGIC is `n`.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
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
    // `2^n` from the integer in `shifted`'s bits (a float-to-int conversion would have to
    // saturate, which does not vectorise well).
    let bits = (shifted
        .to_bits()
        .wrapping_sub(MAGIC.to_bits())
        .wrapping_add(127))
        << 23;
    let y = e * f32::from_bits(bits);
    if x < EXP_LOW { 0.0 } else { y }
}

/// Layer norm over the last dim: `(y, mean, rstd)`, the statistics shaped `[.., 1]`.
#[allow(unsafe_code)]
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
    let n = block_rows(c);
    let (y, mean, rstd) = with_slices([x, gamma, beta], |[xs, g, b]| {
        // Written row by row into the new buffer's spare capacity: nothing is zero-filled.
        let mut y = Vec::with_capacity(xs.len());
        let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
        rows_mut!(y.spare_capacity_mut()[..xs.len()], n * c)
            .zip(rows!(xs, n * c))
            .zip(rows_mut!(mean, n).zip(rows_mut!(rstd, n)))
            .for_each(|((yb, xb), (mb, sb))| {
                vectorized!({
                    let rows = xb.chunks_exact(c).zip(yb.chunks_exact_mut(c));
                    for ((xr, yr), (m, s)) in rows.zip(mb.iter_mut().zip(sb.iter_mut())) {
                        let mu = lane_sum(xr) / c as f32;
                        for (o, &v) in yr.iter_mut().zip(xr) {
                            o.write((v - mu) * (v - mu));
                        }
                        // SAFETY: `yr` and `xr` are both `c` long, so the loop above wrote
                        // every value of `yr`.
                        let yr = unsafe { yr.assume_init_mut() };
                        let rs = 1.0 / (lane_sum(yr) / c as f32 + eps).sqrt();
                        for (((o, &v), &gi), &bi) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                            *o = (v - mu) * rs * gi + bi;
                        }
                        (*m, *s) = (mu, rs);
                    }
                })
            });
        // SAFETY: `xs` holds `rows × c` values (`rows` is its length over `c`); `y`'s first
        // `xs.len()` slots and `xs` split into the same blocks of `n` rows, matched with
        // `n` statistics each (`mean` and `rstd` hold `rows`), so every row of every block
        // was written above.
        unsafe { y.set_len(xs.len()) };
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
#[allow(unsafe_code)]
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
    let n = block_rows(c);
    let (dx, dg, db) = with_slices([x, dy, gamma, mean, rstd], |[xs, dys, g, mu, rs]| {
        // Written row by row into the new buffer's spare capacity: nothing is zero-filled.
        let mut dx = Vec::with_capacity(xs.len());
        // Each block of rows sums its own `dgamma, dbeta`, added in order afterwards.
        let partials: Vec<Vec<f32>> = rows_mut!(dx.spare_capacity_mut()[..xs.len()], n * c)
            .zip(rows!(xs, n * c).zip(rows!(dys, n * c)))
            .zip(rows!(mu, n).zip(rows!(rs, n)))
            .map(|((dxb, (xb, dyb)), (mb, sb))| {
                vectorized!({
                    // `[dgamma | dbeta | xhat | dxhat]` of this block.
                    let mut acc = vec![0f32; 4 * c];
                    let (sums, scratch) = acc.split_at_mut(2 * c);
                    let (dg, db) = sums.split_at_mut(c);
                    let (xhat, dxhat) = scratch.split_at_mut(c);
                    let rows = xb.chunks_exact(c).zip(dyb.chunks_exact(c));
                    let stats = mb.iter().zip(sb);
                    for (((xr, dyr), dxr), (&m, &s)) in rows.zip(dxb.chunks_exact_mut(c)).zip(stats)
                    {
                        for i in 0..c {
                            xhat[i] = (xr[i] - m) * s;
                            dxhat[i] = dyr[i] * g[i];
                            dg[i] += dyr[i] * xhat[i];
                        }
                        add_into(db, dyr);
                        let m1 = lane_sum(dxhat) / c as f32;
                        let m2 = lane_dot(dxhat, xhat) / c as f32;
                        for i in 0..c {
                            dxr[i].write((dxhat[i] - m1 - xhat[i] * m2) * s);
                        }
                    }
                    acc.truncate(2 * c);
                    acc
                })
            })
            .collect();
        // SAFETY: `dx`'s first `xs.len()` slots, `xs` and `dys` (checked to hold `rows × c`
        // values) split into the same blocks of `n` rows, matched with `n` statistics each,
        // and every value of every row was written above.
        unsafe { dx.set_len(xs.len()) };
        let mut sums = add_in_order(&partials, 2 * c);
        let db = sums.split_off(c);
        (dx, sums, db)
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

    /// `out[j] = scale * s[j] + bias(j) + shift` for query `i` of sequence `batch`, into
    /// slots that need not be initialised (a new output's, or scratch through [`as_slots`]).
    /// Returns the values it wrote: `out`'s first `min(s.len(), out.len())` (the mask has a
    /// row's `t` keys).
    #[inline(always)]
    #[allow(unsafe_code)]
    fn apply<'o>(
        &self,
        batch: usize,
        i: usize,
        s: &[f32],
        scale: f32,
        shift: f32,
        out: &'o mut [std::mem::MaybeUninit<f32>],
    ) -> &'o mut [f32] {
        let keys = self.keys.as_ref().map(|k| &k[batch * self.t..][..self.t]);
        let n = s
            .len()
            .min(out.len())
            .min(keys.map_or(usize::MAX, <[f32]>::len));
        let out = &mut out[..n];
        match keys {
            Some(k) => {
                for ((o, &v), &b) in out.iter_mut().zip(s).zip(k) {
                    o.write(v * scale + b + shift);
                }
            }
            None => {
                for (o, &v) in out.iter_mut().zip(s) {
                    o.write(v * scale + shift);
                }
            }
        }
        // SAFETY: `out`, `s` and the mask's row each have at least `n` values, so the loop
        // above wrote all `n` of `out`.
        let out = unsafe { out.assume_init_mut() };
        if self.causal {
            for o in out.iter_mut().skip(i + 1) {
                *o += f32::MIN;
            }
        }
        out
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

/// Dot product with eight independent lanes.
#[inline(always)]
fn lane_dot(xs: &[f32], ys: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (xs.chunks_exact(8), ys.chunks_exact(8));
    let rest: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in xc.zip(yc) {
        for ((a, u), v) in acc.iter_mut().zip(x).zip(y) {
            *a += u * v;
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

/// `x + bias` with `bias` `(C)` added to every row of the last dim.
pub fn add_rows(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    per_feature("add_bias", "bias", x, bias, |v, b| v + b)
}

/// `x * s` with `s` `(C)` multiplied into every row of the last dim (IA3's scaling).
pub fn scale_rows(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    per_feature("scale_features", "scale", x, s, |v, f| v * f)
}

/// `f(x[r, c], v[c])` for every row `r` of the last dim: blocks of rows in parallel, each
/// output value written once (nothing is zero-filled first).
#[allow(unsafe_code)]
fn per_feature(
    op: &'static str,
    what: &'static str,
    x: &Tensor,
    v: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Copy + Send + Sync,
) -> Result<Tensor> {
    let c = x.dims().last().copied().unwrap_or(1).max(1);
    if v.elem_count() != c {
        return Err(len_err(op, what, v.elem_count(), c));
    }
    let y = with_slices([x, v], |[xs, b]| {
        #[cfg(parallel)]
        {
            let n = xs.len();
            let mut y = Vec::with_capacity(n);
            y.spare_capacity_mut()[..n]
                .par_chunks_mut(block_rows(c) * c)
                .zip(xs.par_chunks(block_rows(c) * c))
                .for_each(|(yb, xb)| {
                    vectorized!({
                        for (yr, xr) in yb.chunks_mut(c).zip(xb.chunks(c)) {
                            for ((o, &v), &bi) in yr.iter_mut().zip(xr).zip(b) {
                                o.write(f(v, bi));
                            }
                        }
                    })
                });
            // SAFETY: `y[..n]` and `xs` (n values) split into the same blocks and rows, so
            // each output row is paired with an input row of its length, at most `c`; `b` has
            // `c` values (checked above), so the loop wrote every value of every row.
            unsafe { y.set_len(n) };
            y
        }
        #[cfg(not(parallel))]
        {
            let mut y = Vec::with_capacity(xs.len());
            for row in xs.chunks(c) {
                y.extend(row.iter().zip(b).map(|(&v, &bi)| f(v, bi)));
            }
            y
        }
    })?;
    tensor(y, x.dims())
}

/// `f` of `a` and `b` element by element; both must have one shape.
fn binary(op: &str, a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(candle_core::Error::Msg(format!(
            "{op}: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    let y = with_slices([a, b], |[x, y]| zip_map(x, y, f))?;
    tensor(y, a.dims())
}

/// `a + b` (one shape): residual adds and gradient accumulation. candle's add runs on its own
/// spinning thread pool, which then competes with rayon's threads for the cores.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, |x, y| x + y)
}

/// `a * b` (one shape).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b, |x, y| x * y)
}

/// `s * a` (candle's `affine` runs on one thread).
pub fn scale(a: &Tensor, s: f32) -> Result<Tensor> {
    let y = with_slices([a], |[x]| {
        map(
            x,
            #[inline(always)]
            move |v| v * s,
        )
    })?;
    tensor(y, a.dims())
}

/// The sum of squares of `x`'s values: per block (lane sums), the blocks' sums added in
/// order, so the result does not depend on the thread count.
pub fn sum_squares(x: &Tensor) -> Result<Tensor> {
    let total = with_slices([x], |[xs]| {
        let partials: Vec<f32> = rows!(xs, BLOCK)
            .map(|b| vectorized!({ lane_dot(b, b) }))
            .collect();
        partials.iter().sum::<f32>()
    })?;
    tensor(vec![total], &[1])
}

/// AdamW's per-step coefficients, each rounded to f32 once (as candle's `affine` rounds its
/// multiplier and offset).
#[derive(Debug, Clone, Copy)]
struct Adam {
    grad_scale: f32,
    decay: f32,
    b1: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    step: f32,
}

impl Adam {
    fn new(hp: &tunelab_core::backend::AdamW, grad_scale: f32) -> Self {
        let (b1, b2) = (hp.beta1, hp.beta2);
        let bc1 = 1.0 - b1.powi(hp.step as i32);
        let bc2 = 1.0 - b2.powi(hp.step as i32);
        Self {
            grad_scale,
            decay: (1.0 - hp.lr * hp.weight_decay) as f32,
            b1: b1 as f32,
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: hp.eps as f32,
            step: (hp.lr / bc1) as f32,
        }
    }

    /// The new `(param, m, v)` of one value (inlined into the vectorised loop).
    #[inline(always)]
    fn update(&self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let g = g * self.grad_scale;
        let m = m * self.b1 + g * self.one_minus_b1;
        let v = v * self.b2 + g * g * self.one_minus_b2;
        let denom = v.sqrt() * self.inv_sqrt_bc2 + self.eps;
        (p * self.decay - m / denom * self.step, m, v)
    }
}

/// One AdamW step in one pass: PyTorch's `torch.optim.AdamW` (decoupled decay first, then
/// the Adam update with `denom = sqrt(v) / sqrt(1 - b2^t) + eps` and step `lr / (1 - b1^t)`),
/// with each coefficient rounded to f32 once as candle's `affine` does, so the result is the
/// composite ops' to the bit. Returns the new `(param, m, v)`.
#[allow(unsafe_code)]
pub fn adamw(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad_scale: f32,
    hp: &tunelab_core::backend::AdamW,
) -> Result<(Tensor, Tensor, Tensor)> {
    let n = param.elem_count();
    for (what, t) in [("grad", grad), ("m", m), ("v", v)] {
        if t.elem_count() != n {
            return Err(len_err("adamw", what, t.elem_count(), n));
        }
    }
    let adam = Adam::new(hp, grad_scale);
    let (p2, m2, v2) = with_slices([param, grad, m, v], |[ps, gs, ms, vs]| {
        let mut outs: [Vec<f32>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
        #[cfg(parallel)]
        {
            let [po, mo, vo] = &mut outs;
            let out_chunks = po.spare_capacity_mut()[..n]
                .par_chunks_mut(BLOCK)
                .zip(mo.spare_capacity_mut()[..n].par_chunks_mut(BLOCK))
                .zip(vo.spare_capacity_mut()[..n].par_chunks_mut(BLOCK));
            let in_chunks = ps
                .par_chunks(BLOCK)
                .zip(gs.par_chunks(BLOCK))
                .zip(ms.par_chunks(BLOCK).zip(vs.par_chunks(BLOCK)));
            out_chunks
                .zip(in_chunks)
                .for_each(|(((po, mo), vo), ((p, g), (m, v)))| {
                    vectorized!({
                        let outs = po.iter_mut().zip(mo.iter_mut()).zip(vo.iter_mut());
                        let ins = p.iter().zip(g).zip(m.iter().zip(v));
                        for (((po, mo), vo), ((&p, &g), (&m, &v))) in outs.zip(ins) {
                            let (p, m, v) = adam.update(p, g, m, v);
                            po.write(p);
                            mo.write(m);
                            vo.write(v);
                        }
                    })
                });
            // SAFETY: the three outputs' first `n` values and the four inputs (n values each,
            // checked above) split into the same chunks, so the loop paired every output
            // value with one value of each input and wrote it.
            for o in &mut outs {
                unsafe { o.set_len(n) };
            }
        }
        #[cfg(not(parallel))]
        for (((&p, &g), &m), &v) in ps.iter().zip(gs).zip(ms).zip(vs) {
            let (p, m, v) = adam.update(p, g, m, v);
            outs[0].push(p);
            outs[1].push(m);
            outs[2].push(v);
        }
        let [p, m, v] = outs;
        (p, m, v)
    })?;
    let dims = param.dims();
    Ok((tensor(p2, dims)?, tensor(m2, dims)?, tensor(v2, dims)?))
}

/// The sum over every row of the last dim: `(.., C) -> (C)` (a bias's gradient).
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let c = x.dims().last().copied().unwrap_or(1).max(1);
    // Blocks of at least 32 rows: the partials are added in order on one thread, and with
    // `block_rows`' ~4096 values (2 rows of an MLP's 1536) a bias gradient over 1024 rows
    // had 512 partials, as many values as half its input. The blocks depend on the shape
    // only, so the result does not depend on the thread count.
    let n = block_rows(c).max(32);
    let out = with_slices([x], |[xs]| {
        let partials: Vec<Vec<f32>> = rows!(xs, n * c)
            .map(|xb| {
                vectorized!({
                    let mut acc = vec![0f32; c];
                    for row in xb.chunks_exact(c) {
                        add_into(&mut acc, row);
                    }
                    acc
                })
            })
            .collect();
        add_in_order(&partials, c)
    })?;
    tensor(out, &[c])
}

mod activation;
#[cfg(test)]
use activation::erf_and_gauss;
pub use activation::{activation, activation_backward};
mod attention;
pub use attention::{attention, attention_backward};
#[cfg(all(parallel, not(target_arch = "wasm32")))]
pub mod passes;
#[cfg(all(parallel, not(target_arch = "wasm32")))]
pub mod spin;

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

    /// Values of `t` as f64.
    fn values(t: &Tensor) -> Vec<f64> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f64::from).collect()
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn assert_close(what: &str, got: &Tensor, want: &[f64], tol: f64) {
        let got = values(got);
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Row kernels over many blocks of rows (the last one partial) against f64 references,
    /// and bit-identical on one thread and on three (the per-block sums are added in order).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn row_kernels_over_many_blocks_match_references_on_any_thread_count() {
        let dev = candle_core::Device::Cpu;
        // 4096 / 40 = 102 rows per block: 301 rows are three blocks and a partial one.
        let (rows, c) = (301, 40);
        let rnd = |n: usize, seed: u32| crate::sgemm::test_values(n, seed);
        let t = |v: Vec<f32>, dims: &[usize]| Tensor::from_vec(v, dims, &dev).unwrap();
        let x = t(rnd(rows * c, 1), &[rows, c]);
        let dy = t(rnd(rows * c, 2), &[rows, c]);
        let g = t(rnd(c, 3), &[c]);
        let b = t(rnd(c, 4), &[c]);
        let run = || {
            let (y, mean, rstd) = layer_norm(&x, &g, &b, 1e-5).unwrap();
            let (dx, dg, db) = layer_norm_backward(&x, &g, &mean, &rstd, &dy).unwrap();
            let sums = sum_rows(&dy).unwrap();
            let biased = add_rows(&x, &b).unwrap();
            [y, mean, rstd, dx, dg, db, sums, biased].map(|t| values(&t))
        };
        let got = crate::on_pool(1, run).unwrap();
        assert_eq!(
            got,
            crate::on_pool(3, run).unwrap(),
            "results depend on the thread count"
        );

        let (xv, dyv, gv, bv) = (values(&x), values(&dy), values(&g), values(&b));
        let n = c as f64;
        let (mut y, mut mean, mut rstd, mut dx) = (vec![], vec![], vec![], vec![]);
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        for r in 0..rows {
            let xr = &xv[r * c..][..c];
            let dyr = &dyv[r * c..][..c];
            let mu = xr.iter().sum::<f64>() / n;
            let rs = 1.0 / (xr.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / n + 1e-5).sqrt();
            let xhat: Vec<f64> = xr.iter().map(|v| (v - mu) * rs).collect();
            let dxhat: Vec<f64> = dyr.iter().zip(&gv).map(|(d, g)| d * g).collect();
            let m1 = dxhat.iter().sum::<f64>() / n;
            let m2 = dxhat.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
            for i in 0..c {
                y.push(xhat[i] * gv[i] + bv[i]);
                dx.push((dxhat[i] - m1 - xhat[i] * m2) * rs);
                dg[i] += dyr[i] * xhat[i];
                db[i] += dyr[i];
            }
            mean.push(mu);
            rstd.push(rs);
        }
        let biased: Vec<f64> = (0..rows * c).map(|k| xv[k] + bv[k % c]).collect();
        let want = [&y, &mean, &rstd, &dx, &dg, &db, &db, &biased];
        let names = [
            "y", "mean", "rstd", "dx", "dgamma", "dbeta", "sum_rows", "add_rows",
        ];
        for ((name, got), want) in names.iter().zip(&got).zip(want) {
            let got = t(got.iter().map(|&v| v as f32).collect(), &[got.len()]);
            assert_close(name, &got, want, 2e-5);
        }

        // Wide rows: `sum_rows` takes blocks of 32 rows (here ten, the last one partial).
        let (rows, c) = (301, 1000);
        let wide = t(rnd(rows * c, 5), &[rows, c]);
        let run = || values(&sum_rows(&wide).unwrap());
        let got = crate::on_pool(1, run).unwrap();
        assert_eq!(got, crate::on_pool(3, run).unwrap(), "wide sum_rows");
        let wv = values(&wide);
        let want: Vec<f64> = (0..c)
            .map(|j| (0..rows).map(|r| wv[r * c + j]).sum())
            .collect();
        let got = t(got.iter().map(|&v| v as f32).collect(), &[c]);
        assert_close("wide sum_rows", &got, &want, 2e-5);
    }

    /// The element-wise kernels over several blocks (the last one partial), on a contiguous
    /// and a transposed operand: the same bits as the per-element operation in plain Rust
    /// (candle's add and mul for the two-operand ones), one value per element.
    #[test]
    fn element_wise_kernels_over_many_blocks_match_plain_loops() {
        let dev = candle_core::Device::Cpu;
        // 3 × 4096 + 17 values: three blocks and a partial one.
        let (r, c) = (12305 / 5, 5);
        let a = Tensor::from_vec(crate::sgemm::test_values(r * c, 8), (r, c), &dev).unwrap();
        let b = Tensor::from_vec(crate::sgemm::test_values(c * r, 9), (c, r), &dev)
            .unwrap()
            .t()
            .unwrap();
        let (av, bv) = (values(&a), values(&b.contiguous().unwrap()));
        let bits = |t: &Tensor| -> Vec<u32> {
            assert_eq!(t.dims(), &[r, c]);
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let plain = |f: &dyn Fn(f32, f32) -> f32| -> Vec<u32> {
            av.iter()
                .zip(&bv)
                .map(|(&x, &y)| f(x as f32, y as f32).to_bits())
                .collect()
        };
        assert_eq!(bits(&add(&a, &b).unwrap()), plain(&|x, y| x + y));
        assert_eq!(bits(&add(&a, &b).unwrap()), bits(&a.add(&b).unwrap()));
        assert_eq!(bits(&mul(&a, &b).unwrap()), plain(&|x, y| x * y));
        assert_eq!(bits(&mul(&b, &a).unwrap()), bits(&b.mul(&a).unwrap()));
        assert_eq!(bits(&scale(&b, -1.7).unwrap()), plain(&|_, y| y * -1.7));
        // The blocks are what is new here; the GELU arithmetic is the scalar function's.
        let gelu_plain = |x: f32, _| {
            let (e, _) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
            0.5 * x * (1.0 + e)
        };
        assert_eq!(
            bits(&activation(&a, tunelab_core::backend::Activation::Gelu).unwrap()),
            plain(&gelu_plain)
        );
        let err = add(&a, &a.t().unwrap()).unwrap_err().to_string();
        assert!(
            err.contains("add: shapes [2461, 5] and [5, 2461] differ"),
            "{err}"
        );
        // A copy over several blocks, the last one short.
        let src = crate::sgemm::test_values(3 * BLOCK + 17, 5);
        assert_eq!(copied(&src), src);
    }

    #[test]
    fn mismatched_sizes_are_errors_not_panics() {
        let dev = candle_core::Device::Cpu;
        let t = |dims: &[usize]| Tensor::zeros(dims, candle_core::DType::F32, &dev).unwrap();
        let x = t(&[2, 3, 4]);
        let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert!(msg(add_rows(&x, &t(&[3]))).contains("add_bias: bias has 3 values, expected 4"));
        let err = layer_norm_backward(&x, &t(&[5]), &t(&[2, 3, 1]), &t(&[2, 3, 1]), &x)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gamma has 5 values, expected 4"), "{err}");
        let err = layer_norm(&x, &t(&[4]), &t(&[2]), 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("beta has 2 values, expected 4"), "{err}");
        let q = t(&[2, 3, 4]);
        let err = attention(&q, &q, &q, 3, None, false, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden size 4 is not divisible by 3 heads"),
            "{err}"
        );
        let err = attention(&q, &q, &q, 2, Some(&t(&[2, 2])), false, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("key mask has 4 values, expected 6"), "{err}");
        let err = attention(&q, &t(&[2, 3, 2]), &q, 2, None, false, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("q [2, 3, 4] does not fit k [2, 3, 2]"),
            "{err}"
        );
        let err = attention(&q, &q, &t(&[2, 3, 2]), 2, None, false, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("v has shape [2, 3, 2], expected k's [2, 3, 4]"),
            "{err}"
        );
        let err = attention_backward(
            &q,
            &q,
            &q,
            &t(&[2, 2, 4]),
            &t(&[2, 2, 3]),
            &q,
            2,
            None,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("out has shape [2, 2, 4], expected q's [2, 3, 4]"),
            "{err}"
        );
        let err = attention_backward(&q, &q, &q, &q, &t(&[2, 2, 2]), &q, 2, None, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "the saved tensor has shape [2, 2, 2], expected the probabilities [2, 2, 3, 3] \
                 or the log-sum-exp [2, 2, 3]"
            ),
            "{err}"
        );
        let u = Tensor::zeros(3, candle_core::DType::U32, &dev).unwrap();
        assert!(
            msg(activation(&u, tunelab_core::backend::Activation::Relu))
                .contains("expected a CPU f32 tensor")
        );
    }
}
