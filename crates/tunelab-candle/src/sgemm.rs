//! Single-precision matrix products for the CPU backend: this crate's kernel for WebAssembly,
//! and natively on x86-64 the `gemm` crate's kernels called directly ([`gemm_product`]).
//!
//! Natively `gemm` (what candle's matmul calls) dispatches to AVX2/AVX-512 kernels and is the
//! faster choice; [`matmul`] calls it without candle's serial zero-fill of the output. In
//! wasm, `gemm`'s SIMD128 kernel keeps 12 accumulators plus its operands
//! live, more than the 16 vector registers the browser's compiler has on x86-64; this product
//! keeps a 4 × 8 register tile (8 accumulators) and measured 1.2–1.3× `gemm`'s throughput at
//! the MiniLM training shapes in V8 (Node 20, a WASI build timing both products on the same
//! operands; the whole wasm step gained ~10%).
//!
//! The loop nest is the classic one: blocks of `NC` columns of `b` and `KC` of the inner
//! dimension are packed into `NR`-wide panels, blocks of `MC` rows of `a` into `MR`-tall
//! panels, and a register-tile kernel multiplies one panel pair. Natively the same loops run
//! with a plain-Rust kernel, so the blocking and packing are tested on every target.

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use std::mem::MaybeUninit;

/// A read-only strided matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Rows of `a` per register tile.
const MR: usize = 4;
/// Columns of `b` per register tile (two SIMD128 vectors).
const NR: usize = 8;
/// Inner-dimension block: an `MR × KC` panel of `a` stays in L1.
const KC: usize = 256;
/// Rows of `a` per packed block.
const MC: usize = 128;
/// Columns of `b` per packed block: a `KC × NC` block (1 MiB) stays in L2.
const NC: usize = 1024;

/// Why a product cannot be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SgemmError {
    #[error("matmul operand `{name}` needs {need} values, it has {len}")]
    OutOfBounds {
        name: &'static str,
        need: usize,
        len: usize,
    },
    #[error("matmul output has {len} values, {m} × {n} expected")]
    Output { len: usize, m: usize, n: usize },
    #[error("matmul stride {0} does not fit in an isize")]
    Stride(usize),
}

/// The largest index a strided `rows × cols` view reads, plus one.
fn extent(rows: usize, cols: usize, m: MatRef) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * m.rs + (cols - 1) * m.cs + 1
    }
}

/// Every element of `a` (`m × k`) and `b` (`k × n`) lies in its slice, and `c` (the output's
/// length) is `m × n`.
fn check(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: usize) -> Result<(), SgemmError> {
    for (name, rows, cols, x) in [("a", m, k, a), ("b", k, n, b)] {
        let need = extent(rows, cols, x);
        if need > x.data.len() {
            return Err(SgemmError::OutOfBounds {
                name,
                need,
                len: x.data.len(),
            });
        }
    }
    if c != m * n {
        return Err(SgemmError::Output { len: c, m, n });
    }
    Ok(())
}

/// A product `c = a @ b` of `m × k` and `k × n` into a row-major, contiguous `m × n`.
pub type Product = fn(usize, usize, usize, MatRef, MatRef, &mut [f32]) -> Result<(), SgemmError>;

/// Products with fewer multiply-adds than this run on one thread: among them attention's
/// per-head products (T × T × D, 1M at 128 tokens and head size 64), which already run in
/// parallel over sequences.
#[cfg(parallel)]
const PAR_MIN_MACS: usize = 1 << 22;

/// `c = a @ b`: `a` is `m × k`, `b` is `k × n`, `c` is `m × n`, row-major and contiguous.
///
/// Where `cfg(parallel)` is set (see build.rs) a large product is split into blocks of rows
/// of `c` (at most `MC`, fewer when that leaves a thread idle), each computed on one of
/// rayon's threads with its own packed panels of `b`; packing `b` once per block costs
/// `1 / (2 · rows)` of the block's arithmetic. Every value of `c` sums its `k` products in
/// the same order however the rows are split, so the result does not depend on the thread
/// count.
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
) -> Result<(), SgemmError> {
    sgemm_into(m, n, k, a, b, c, false)
}

/// [`sgemm`], or with `add` `c += a @ b` (`c` keeps its values: a linear layer's output
/// starts as its bias rows).
pub fn sgemm_into(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    add: bool,
) -> Result<(), SgemmError> {
    check(m, n, k, a, b, c.len())?;
    if k == 0 {
        if !add {
            c.fill(0.0);
        }
        return Ok(());
    }
    #[cfg(parallel)]
    {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads();
        if threads > 1 && m > MR && m * n * k >= PAR_MIN_MACS {
            let rows = MC.min(m.div_ceil(threads).next_multiple_of(MR));
            c.par_chunks_mut(rows * n).enumerate().for_each(|(i, c)| {
                // `i * rows < m`, so the offset is at most the last row's start, which
                // `check` showed lies in `a`.
                let a = MatRef {
                    data: &a.data[i * rows * a.rs..],
                    ..a
                };
                rows_of_product(c.len() / n, n, k, a, b, c, add);
            });
            return Ok(());
        }
    }
    rows_of_product(m, n, k, a, b, c, add);
    Ok(())
}

thread_local! {
    /// Each thread's packed panels of `b` and of `a`, kept between products: allocating and
    /// zeroing them (1 MiB for `b`) for every block of rows took ~2% of the wasm step.
    static PANELS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// [`sgemm_into`]'s loop nest on one thread, for operands `check` has accepted and `k > 0`.
fn rows_of_product(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32], add: bool) {
    PANELS.with_borrow_mut(|(bp, ap)| {
        // Packing writes every value the kernel reads (padding included), so what a buffer
        // held before does not matter.
        let (b_len, a_len) = (
            KC * n.min(NC).div_ceil(NR) * NR,
            KC * m.min(MC).div_ceil(MR) * MR,
        );
        if bp.len() < b_len {
            bp.resize(b_len, 0.0);
        }
        if ap.len() < a_len {
            ap.resize(a_len, 0.0);
        }
        let mut tile = [0f32; MR * NR];
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                pack_b(b, pc, kc, jc, nc, bp);
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    pack_a(a, ic, mc, pc, kc, ap);
                    for jr in (0..nc).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        let b_panel = &bp[(jr / NR) * kc * NR..][..kc * NR];
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let a_panel = &ap[(ir / MR) * kc * MR..][..kc * MR];
                            kernel(kc, a_panel, b_panel, &mut tile);
                            let (i0, j0) = (ic + ir, jc + jr);
                            for (i, t) in tile.chunks_exact(NR).take(mr).enumerate() {
                                let row = &mut c[(i0 + i) * n + j0..][..nr];
                                store_tile_row(row, t, pc == 0 && !add);
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Writes (`first`) or adds one row of a register tile into `c`. A full row is written as a
/// fixed-size array, which the compiler turns into vector stores: a slice copy of a run-time
/// length becomes a call to `memmove` (with bulk memory, V8 calls out of wasm for it);
/// avoiding it raised the wasm product's throughput 1.2–1.4× in Chromium at the MiniLM
/// shapes. (Adding was never a copy call.)
#[inline(always)]
fn store_tile_row(row: &mut [f32], t: &[f32], first: bool) {
    if !first {
        for (r, v) in row.iter_mut().zip(t) {
            *r += v;
        }
    } else if let (Ok(row), Ok(t)) = (
        <&mut [f32; NR]>::try_from(&mut *row),
        <&[f32; NR]>::try_from(t),
    ) {
        *row = *t;
    } else {
        row.copy_from_slice(&t[..row.len()]);
    }
}

/// `c = a @ b` natively through the `gemm` crate's kernels (AVX-512 or AVX2, chosen at run
/// time), the kernels candle's matmul calls. Called here directly for two reasons measured in
/// a profile of the MiniLM LoRA step: candle zero-fills each product's output on the calling
/// thread while the other cores wait (~8% of the step, with the kernels' own outputs), where
/// [`matmul`] writes it without filling it first ([`gemm_fresh`]); and candle asks for the
/// thread count on every product, which reads `/proc/cpuinfo` unless `RAYON_NUM_THREADS` is
/// set, where this asks rayon.
#[cfg(target_arch = "x86_64")]
pub fn gemm_product(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
) -> Result<(), SgemmError> {
    gemm_into(m, n, k, a, b, c, false)
}

/// [`gemm_product`], or with `add` `c += a @ b`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    add: bool,
) -> Result<(), SgemmError> {
    check(m, n, k, a, b, c.len())?;
    // SAFETY: `check` accepted the operands and `c` has m × n values; `c` is initialised, so
    // any read of it (with `add`) is of initialised values.
    unsafe { gemm_raw(m, n, k, a, b, c.as_mut_ptr(), add) }
}

/// `c = a @ b` into an output that need not be initialised (a fresh buffer): with `k > 0`
/// gemm writes every value without reading any, so the output is not zero-filled first (a
/// pass over memory as large as the output: in a profile of the MiniLM LoRA step, zero-filling
/// went from 1.6% to 1.3% of the samples, the rest being attention's and layer norm's
/// outputs); with `k = 0` it is filled with zeros here.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub fn gemm_fresh(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [MaybeUninit<f32>],
) -> Result<(), SgemmError> {
    check(m, n, k, a, b, c.len())?;
    if k == 0 {
        c.fill(MaybeUninit::new(0.0));
        return Ok(());
    }
    // SAFETY: `check` accepted the operands and `c` has m × n slots. Without `add` gemm only
    // writes `c` (`read_dst = false`), so its uninitialised values are never read; with
    // `k > 0` it writes all m × n of them.
    unsafe { gemm_raw(m, n, k, a, b, c.as_mut_ptr().cast::<f32>(), false) }
}

/// The `gemm` call behind [`gemm_into`] and [`gemm_fresh`].
///
/// # Safety
/// `check(m, n, k, a, b, m * n)` has passed, `c` points to `m × n` writable values that no
/// other reference aliases, and with `add` they are initialised.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: *mut f32,
    add: bool,
) -> Result<(), SgemmError> {
    // A stride along a dim of one element is never multiplied by a non-zero index.
    let stride = |s: usize, len: usize| {
        if len > 1 {
            isize::try_from(s).map_err(|_| SgemmError::Stride(s))
        } else {
            Ok(0)
        }
    };
    let (a_rs, a_cs) = (stride(a.rs, m)?, stride(a.cs, k)?);
    let (b_rs, b_cs) = (stride(b.rs, k)?, stride(b.cs, n)?);
    let c_rs = stride(n, m)?;
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: by the caller's contract every element gemm reads, `a[i * a.rs + p * a.cs]` and
    // `b[p * b.rs + j * b.cs]` for i < m, p < k, j < n, lies inside its slice, and `c` has
    // m × n values, which gemm writes at row stride n and column stride 1 (the strides are
    // the slices' own, converted without loss), unaliased. With `read_dst = false` gemm
    // overwrites `c` with 1 · a b (zeros when k = 0) without reading it, with
    // `read_dst = true` it writes 1 · c + 1 · a b, and then `c` is initialised.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs,
            add,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            if add { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// [`sgemm`] into an output that need not be initialised: zero-filled, then the product.
/// (This crate's loop nest takes an initialised output; in wasm the fill is cheap next to
/// the product.)
#[allow(unsafe_code)]
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub fn sgemm_fresh(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [MaybeUninit<f32>],
) -> Result<(), SgemmError> {
    c.fill(MaybeUninit::new(0.0));
    // SAFETY: every value of `c` was written just above.
    let c = unsafe { c.assume_init_mut() };
    sgemm_into(m, n, k, a, b, c, false)
}

/// Packs `b[pc..pc+kc, jc..jc+nc]` into `NR`-wide panels, each `kc × NR` row-major, the last
/// one zero-padded.
fn pack_b(b: MatRef, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [f32]) {
    for (pi, jr) in (0..nc).step_by(NR).enumerate() {
        let nr = NR.min(nc - jr);
        let panel = &mut out[pi * kc * NR..][..kc * NR];
        for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
            let base = (pc + p) * b.rs + (jc + jr) * b.cs;
            if b.cs == 1 {
                let src = &b.data[base..base + nr];
                // A full panel row as a fixed-size copy (vector moves, no `memmove` call).
                if let (Ok(dst), Ok(src)) = (
                    <&mut [f32; NR]>::try_from(&mut *dst),
                    <&[f32; NR]>::try_from(src),
                ) {
                    *dst = *src;
                    continue;
                }
                dst[..nr].copy_from_slice(src);
            } else {
                for (j, d) in dst[..nr].iter_mut().enumerate() {
                    *d = b.data[base + j * b.cs];
                }
            }
            dst[nr..].fill(0.0);
        }
    }
}

/// Packs `a[ic..ic+mc, pc..pc+kc]` into `MR`-tall panels, each `kc × MR` (column of the panel
/// after column), the last one zero-padded.
fn pack_a(a: MatRef, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [f32]) {
    for (pi, ir) in (0..mc).step_by(MR).enumerate() {
        let mr = MR.min(mc - ir);
        let panel = &mut out[pi * kc * MR..][..kc * MR];
        for i in 0..MR {
            if i < mr {
                let base = (ic + ir + i) * a.rs + pc * a.cs;
                for p in 0..kc {
                    panel[p * MR + i] = a.data[base + p * a.cs];
                }
            } else {
                for p in 0..kc {
                    panel[p * MR + i] = 0.0;
                }
            }
        }
    }
}

/// `acc + a * b` on four lanes: one fused multiply-add where the build has relaxed SIMD (the
/// threaded worker's build; V8 emits FMA3's `vfmadd` where the CPU has it, a multiply and an
/// add where not), else a multiply and an add. Fused, the whole product measured ~1.3×
/// faster in Chromium on x86-64 (AVX2).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn madd(
    acc: core::arch::wasm32::v128,
    a: core::arch::wasm32::v128,
    b: core::arch::wasm32::v128,
) -> core::arch::wasm32::v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        core::arch::wasm32::f32x4_relaxed_madd(a, b, acc)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        use core::arch::wasm32::{f32x4_add, f32x4_mul};
        f32x4_add(acc, f32x4_mul(a, b))
    }
}

/// `tile = a_panel @ b_panel` over `kc` steps, in SIMD128 registers. Safe code: the
/// compiler turns the four-lane gathers and extractions into single vector loads and stores.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn kernel(kc: usize, ap: &[f32], bp: &[f32], tile: &mut [f32; MR * NR]) {
    use core::arch::wasm32::{f32x4, f32x4_extract_lane, f32x4_splat};
    let mut acc = [[f32x4_splat(0.0); NR / 4]; MR];
    for (a, b) in ap[..kc * MR]
        .chunks_exact(MR)
        .zip(bp[..kc * NR].chunks_exact(NR))
    {
        let b0 = f32x4(b[0], b[1], b[2], b[3]);
        let b1 = f32x4(b[4], b[5], b[6], b[7]);
        for (row, &ai) in acc.iter_mut().zip(a) {
            let ai = f32x4_splat(ai);
            row[0] = madd(row[0], ai, b0);
            row[1] = madd(row[1], ai, b1);
        }
    }
    for (t, v) in tile.chunks_exact_mut(4).zip(acc.iter().flatten()) {
        t[0] = f32x4_extract_lane::<0>(*v);
        t[1] = f32x4_extract_lane::<1>(*v);
        t[2] = f32x4_extract_lane::<2>(*v);
        t[3] = f32x4_extract_lane::<3>(*v);
    }
}

/// The same product in plain Rust (native builds, where this module is only tested).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn kernel(kc: usize, ap: &[f32], bp: &[f32], tile: &mut [f32; MR * NR]) {
    let mut acc = [0f32; MR * NR];
    for (a, b) in ap[..kc * MR]
        .chunks_exact(MR)
        .zip(bp[..kc * NR].chunks_exact(NR))
    {
        for (i, ai) in a.iter().enumerate() {
            for (c, bj) in acc[i * NR..][..NR].iter_mut().zip(b) {
                *c += ai * bj;
            }
        }
    }
    *tile = acc;
}

/// The one stride that walks `dims` as a single flattened dim, if they collapse (dims of
/// size 1 are skipped).
fn collapsed_stride(dims: &[usize], strides: &[usize]) -> Option<usize> {
    let mut walk = dims.iter().zip(strides).filter(|(d, _)| **d != 1).rev();
    let Some((&d0, &s0)) = walk.next() else {
        return Some(0);
    };
    let mut next = s0 * d0;
    for (&d, &s) in walk {
        if s != next {
            return None;
        }
        next = s * d;
    }
    Some(s0)
}

fn f32_slice(storage: &Storage) -> Option<&[f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v),
        _ => None,
    }
}

/// `c = a @ b`, or with the flag `c += a @ b`: [`sgemm_into`] or [`gemm_into`].
type ProductInto =
    fn(usize, usize, usize, MatRef, MatRef, &mut [f32], bool) -> Result<(), SgemmError>;

/// `c = a @ b` into an output that need not be initialised: [`sgemm_fresh`] or
/// [`gemm_fresh`].
type ProductFresh =
    fn(usize, usize, usize, MatRef, MatRef, &mut [MaybeUninit<f32>]) -> Result<(), SgemmError>;

/// One product's two entry points: onto an output that holds values, and into a fresh one.
#[derive(Clone, Copy)]
struct Kernels {
    into: ProductInto,
    fresh: ProductFresh,
}

/// The CPU backend's product for whole tensors: on x86-64 gemm's kernels called directly
/// ([`gemm_into`]), in wasm this crate's ([`sgemm_into`]). Elsewhere none: candle's matmul
/// (gemm's kernels for that CPU, e.g. NEON) is used, not this crate's plain-Rust kernel.
#[cfg(target_arch = "x86_64")]
const TENSOR_PRODUCT: Option<Kernels> = Some(Kernels {
    into: gemm_into,
    fresh: gemm_fresh,
});
#[cfg(target_arch = "wasm32")]
const TENSOR_PRODUCT: Option<Kernels> = Some(Kernels {
    into: sgemm_into,
    fresh: sgemm_fresh,
});
#[cfg(not(any(target_arch = "x86_64", target_arch = "wasm32")))]
const TENSOR_PRODUCT: Option<Kernels> = None;

/// `a @ b` on CPU f32 tensors with the CPU backend's product (`TENSOR_PRODUCT`): `b` 2-D (a
/// shared weight; `a`'s leading dims fold into rows) or both of one rank with equal batch
/// dims. `Ok(None)` when the tensors are not CPU f32, their strides do not collapse, or this
/// CPU has no such product; the caller then uses candle's matmul.
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    match TENSOR_PRODUCT {
        Some(kernels) => matmul_with(a, b, kernels, Start::Zeros),
        None => Ok(None),
    }
}

/// `x @ w^T + bias` (a linear layer: `x (.., K)`, `w (N, K)`, `bias (N,)`) with the output
/// starting as the bias rows, so the product adds onto them instead of a separate pass
/// adding the bias to the product's output (which also saves zero-filling it). `Ok(None)`
/// when the tensors are not CPU f32 or do not fit, or this CPU has no product of the
/// backend's own (the caller then uses `matmul` and `add_bias`).
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    let (Some(kernels), Some(&k), Ok((n, kw))) = (TENSOR_PRODUCT, x.dims().last(), w.dims2())
    else {
        return Ok(None);
    };
    if k != kw || x.rank() < 2 || bias.is_some_and(|b| b.dims() != [n]) {
        return Ok(None);
    }
    let mut out_dims = x.dims().to_vec();
    let rows = x.elem_count() / k.max(1);
    *out_dims.last_mut().unwrap_or(&mut 0) = n;
    let x2 = x.contiguous()?.reshape((rows, k))?;
    let start = bias.map_or(Start::Zeros, Start::BiasRows);
    let Some(y) = matmul_with(&x2, &w.t()?, kernels, start)? else {
        return Ok(None);
    };
    y.reshape(out_dims).map(Some)
}

/// The CPU backend's product for the fused kernels (attention's per-head products): gemm's
/// kernels on x86-64, this crate's kernel elsewhere (SIMD128 in wasm).
#[cfg(target_arch = "x86_64")]
pub const CPU_PRODUCT: Product = gemm_product;
/// The CPU backend's product for the fused kernels (attention's per-head products): gemm's
/// kernels on x86-64, this crate's kernel elsewhere (SIMD128 in wasm).
#[cfg(not(target_arch = "x86_64"))]
pub const CPU_PRODUCT: Product = sgemm;

/// `c + a @ b` for `c` of the product's shape, with the output starting as a copy of `c` and
/// the product added onto it: a gradient that several products feed (a layer input read by
/// the query, key and value projections, a residual stream) accumulates without a zero-filled
/// output per product and an addition pass over it. `Ok(None)` as for [`matmul`], or when
/// `c` is not a contiguous CPU f32 tensor of the product's shape.
pub fn matmul_onto(c: &Tensor, a: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    match TENSOR_PRODUCT {
        Some(kernels) => matmul_with(a, b, kernels, Start::Copy(c)),
        None => Ok(None),
    }
}

/// What a product's output holds before the product is added onto it.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// Nothing: the product overwrites it.
    Zeros,
    /// The bias `(N,)` in every row (a linear layer).
    BiasRows(&'a Tensor),
    /// A copy of this tensor of the output's shape.
    Copy(&'a Tensor),
}

/// [`matmul`] with `kernels`' product for each 2-D product of the batch, added onto
/// `start`.
#[allow(unsafe_code)]
fn matmul_with(
    a: &Tensor,
    b: &Tensor,
    kernels: Kernels,
    start: Start,
) -> candle_core::Result<Option<Tensor>> {
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 || a.rank() < 2 || b.rank() < 2 {
        return Ok(None);
    }
    let start_storage = match start {
        Start::Zeros => None,
        Start::BiasRows(t) | Start::Copy(t) if t.dtype() != DType::F32 => return Ok(None),
        Start::BiasRows(t) | Start::Copy(t) => Some((t.storage_and_layout(), t.dims())),
    };
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Some(da), Some(db)) = (f32_slice(&sa), f32_slice(&sb)) else {
        return Ok(None);
    };
    let Some(plan) = Plan::new(la, lb) else {
        return Ok(None);
    };
    let len = plan.batch * plan.m * plan.n;
    // The batch's `i`-th operands.
    let operands = |i: usize| {
        let oa = la.start_offset() + i * plan.a_batch;
        let ob = lb.start_offset() + i * plan.b_batch;
        let a = MatRef {
            data: &da[oa.min(da.len())..],
            rs: plan.a_rs,
            cs: plan.a_cs,
        };
        let b = MatRef {
            data: &db[ob.min(db.len())..],
            rs: plan.b_rs,
            cs: plan.b_cs,
        };
        (a, b)
    };
    let Some(((storage, layout), dims)) = &start_storage else {
        // Nothing to start from: each product writes its chunk of a new output's slots.
        let mut out = Vec::with_capacity(len);
        if len > 0 {
            let slots = &mut out.spare_capacity_mut()[..len];
            for (i, c) in slots.chunks_exact_mut(plan.m * plan.n).enumerate() {
                let (a, b) = operands(i);
                (kernels.fresh)(plan.m, plan.n, plan.k, a, b, c)
                    .map_err(candle_core::Error::wrap)?;
            }
            // SAFETY: the chunks cover the first `len` slots (`len` is the batch's number of
            // `m × n` outputs), and a fresh product writes all of its chunk.
            unsafe { out.set_len(len) };
        }
        drop((sa, sb));
        return Tensor::from_vec(out, plan.out_dims, a.device()).map(Some);
    };
    let (want, dims_fit) = match start {
        Start::Copy(_) => (len, *dims == plan.out_dims.as_slice()),
        _ => (plan.n, true),
    };
    let values = f32_slice(storage).and_then(|v| {
        let at = layout.start_offset();
        v.get(at..at + want)
            .filter(|_| layout.is_contiguous() && dims_fit)
    });
    let mut out = match (values, start) {
        (Some(bias), Start::BiasRows(_)) => crate::cpu::repeat_rows(bias, len),
        (Some(c), _) => crate::cpu::copied(c),
        (None, _) => return Ok(None),
    };
    drop(start_storage);
    if out.is_empty() {
        drop((sa, sb));
        return Tensor::from_vec(out, plan.out_dims, a.device()).map(Some);
    }
    for (i, c) in out.chunks_exact_mut(plan.m * plan.n).enumerate() {
        let (a, b) = operands(i);
        (kernels.into)(plan.m, plan.n, plan.k, a, b, c, true).map_err(candle_core::Error::wrap)?;
    }
    drop((sa, sb));
    Tensor::from_vec(out, plan.out_dims, a.device()).map(Some)
}

/// How two layouts map onto a batch of 2-D products.
struct Plan {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a_batch: usize,
    a_rs: usize,
    a_cs: usize,
    b_batch: usize,
    b_rs: usize,
    b_cs: usize,
    out_dims: Vec<usize>,
}

impl Plan {
    fn new(la: &Layout, lb: &Layout) -> Option<Self> {
        let (da, sa) = (la.dims(), la.stride());
        let (dbm, sbm) = (lb.dims(), lb.stride());
        let (ra, rb) = (da.len(), dbm.len());
        let k = da[ra - 1];
        if dbm[rb - 2] != k {
            return None;
        }
        let n = dbm[rb - 1];
        let mut out_dims = da[..ra - 1].to_vec();
        out_dims.push(n);
        if rb == 2 {
            // Every leading dim of `a` is a row.
            let m = da[..ra - 1].iter().product();
            let a_rs = collapsed_stride(&da[..ra - 1], &sa[..ra - 1])?;
            return Some(Plan {
                batch: 1,
                m,
                n,
                k,
                a_batch: 0,
                a_rs,
                a_cs: sa[ra - 1],
                b_batch: 0,
                b_rs: sbm[0],
                b_cs: sbm[1],
                out_dims,
            });
        }
        if ra != rb || da[..ra - 2] != dbm[..rb - 2] {
            return None;
        }
        let batch = da[..ra - 2].iter().product();
        let a_batch = collapsed_stride(&da[..ra - 2], &sa[..ra - 2])?;
        let b_batch = collapsed_stride(&dbm[..rb - 2], &sbm[..rb - 2])?;
        Some(Plan {
            batch,
            m: da[ra - 2],
            n,
            k,
            a_batch,
            a_rs: sa[ra - 2],
            a_cs: sa[ra - 1],
            b_batch,
            b_rs: sbm[rb - 2],
            b_cs: sbm[rb - 1],
            out_dims,
        })
    }
}

/// Deterministic values in [-0.5, 0.5) for the checks.
#[doc(hidden)]
pub fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / 16_777_216.0 - 0.5
        })
        .collect()
}

/// Checks [`sgemm`] against an element-by-element f64 product at sizes around the register
/// tile and every block (`MR`, `NR`, `KC`, `MC`, `NC`, and an empty inner dim), with both
/// storage orders of each operand. Run by the native unit tests (plain-Rust kernel) and by
/// the wasm tests in the browser (the SIMD128 kernel); the error names the first mismatch.
#[doc(hidden)]
pub fn self_check() -> Result<(), String> {
    self_check_with(sgemm)
}

/// [`self_check`] of any [`Product`].
#[doc(hidden)]
pub fn self_check_with(product: Product) -> Result<(), String> {
    let cases = [
        (1, 1, 1),
        (3, 7, 5),
        (4, 8, 256),
        (5, 9, 257),
        (130, 17, 300),
        (9, 1030, 33),
        (2, 3, 0),
        // Above `PAR_MIN_MACS` (where `cfg(parallel)` splits rows over threads), with a
        // row count no block size divides.
        (301, 70, 260),
    ];
    for (m, n, k) in cases {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (av, bv) = (test_values(m * k, 1), test_values(k * n, 2));
            let (ars, acs) = if ta { (1, m) } else { (k, 1) };
            let (brs, bcs) = if tb { (1, k) } else { (n, 1) };
            let a = MatRef {
                data: &av,
                rs: ars,
                cs: acs,
            };
            let b = MatRef {
                data: &bv,
                rs: brs,
                cs: bcs,
            };
            let mut c = vec![f32::NAN; m * n];
            product(m, n, k, a, b, &mut c).map_err(|e| e.to_string())?;
            let tol = 4e-6 * (k as f64).max(1.0);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| {
                            f64::from(av[i * ars + p * acs]) * f64::from(bv[p * brs + j * bcs])
                        })
                        .sum();
                    let got = f64::from(c[i * n + j]);
                    if (got - want).abs() > tol {
                        return Err(format!(
                            "{m}x{n}x{k} ta={ta} tb={tb} ({i},{j}): {got} vs {want}"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        super::test_values(n, seed)
    }

    fn assert_close(got: &[f32], want: &[f32], k: usize) {
        assert_eq!(got.len(), want.len());
        let tol = 4e-6 * (k as f32).max(1.0);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "element {i}: {g} vs {w} (tol {tol})");
        }
    }

    #[test]
    fn matches_the_reference_across_block_edges_and_layouts() {
        self_check().unwrap();
    }

    /// The native product through `gemm`, on an output filled with NaN (so a product that
    /// read it instead of overwriting it would fail).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_gemm_product_matches_the_reference() {
        self_check_with(gemm_product).unwrap();
    }

    /// `fresh` as a [`Product`]: the NaN the check fills the output with stands for memory
    /// that was never written, which a fresh product must overwrite without reading.
    #[allow(unsafe_code)]
    fn as_product(
        fresh: ProductFresh,
        m: usize,
        n: usize,
        k: usize,
        a: MatRef,
        b: MatRef,
        c: &mut [f32],
    ) -> Result<(), SgemmError> {
        // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and a fresh product writes only
        // `f32` values into the slots.
        let slots = unsafe { &mut *(std::ptr::from_mut(c) as *mut [MaybeUninit<f32>]) };
        fresh(m, n, k, a, b, slots)
    }

    /// Both fresh products against the reference, an empty inner dim (zeros) included.
    #[test]
    fn fresh_products_write_every_value() {
        self_check_with(|m, n, k, a, b, c| as_product(sgemm_fresh, m, n, k, a, b, c)).unwrap();
        #[cfg(target_arch = "x86_64")]
        {
            self_check_with(|m, n, k, a, b, c| as_product(gemm_fresh, m, n, k, a, b, c)).unwrap();
            // The output's length is checked before anything is written.
            let (a, b) = (vec![1f32; 6], vec![1f32; 6]);
            let mut short = vec![MaybeUninit::new(0f32); 3];
            let err = gemm_fresh(
                2,
                2,
                3,
                MatRef {
                    data: &a,
                    rs: 3,
                    cs: 1,
                },
                MatRef {
                    data: &b,
                    rs: 2,
                    cs: 1,
                },
                &mut short,
            )
            .unwrap_err();
            assert_eq!(err, SgemmError::Output { len: 3, m: 2, n: 2 });
        }
    }

    /// Operands too short for the product, and an output of the wrong size, are errors of
    /// either product.
    #[test]
    fn bad_operands_are_errors() {
        #[cfg(target_arch = "x86_64")]
        let products: [Product; 2] = [sgemm, gemm_product];
        #[cfg(not(target_arch = "x86_64"))]
        let products: [Product; 1] = [sgemm];
        let a = vec![0f32; 5];
        let b = vec![0f32; 6];
        for product in products {
            let ar = MatRef {
                data: &a,
                rs: 3,
                cs: 1,
            };
            let br = MatRef {
                data: &b,
                rs: 2,
                cs: 1,
            };
            let err = product(2, 2, 3, ar, br, &mut [0.0; 4]).unwrap_err();
            assert_eq!(
                err,
                SgemmError::OutOfBounds {
                    name: "a",
                    need: 6,
                    len: 5
                }
            );
            let ar = MatRef {
                data: &b,
                rs: 3,
                cs: 1,
            };
            let err = product(2, 2, 3, ar, br, &mut [0.0; 3]).unwrap_err();
            assert_eq!(err, SgemmError::Output { len: 3, m: 2, n: 2 });
        }
    }

    /// The product split over one thread and over three is the same to the bit: each value
    /// sums its inner products in one order however the rows are split.
    #[cfg(parallel)]
    #[test]
    fn products_do_not_depend_on_the_thread_count() {
        let (m, n, k) = (301, 70, 260);
        assert!(m * n * k >= PAR_MIN_MACS);
        let (av, bv) = (values(m * k, 9), values(k * n, 10));
        let run = || {
            let a = MatRef {
                data: &av,
                rs: k,
                cs: 1,
            };
            let b = MatRef {
                data: &bv,
                rs: 1,
                cs: k,
            };
            let mut c = vec![f32::NAN; m * n];
            sgemm(m, n, k, a, b, &mut c).unwrap();
            c
        };
        let one = crate::on_pool(1, run).unwrap();
        let three = crate::on_pool(3, run).unwrap();
        assert!(one.iter().all(|v| v.is_finite()));
        assert_eq!(one, three);
    }

    #[test]
    fn tensor_products_match_candle() {
        let dev = Device::Cpu;
        let t = |n: usize, seed: u32, dims: &[usize]| {
            Tensor::from_vec(values(n, seed), dims, &dev).unwrap()
        };
        // Shared weight, transposed as a linear layer reads it, with a batch folded into rows.
        let x = t(2 * 5 * 7, 3, &[2, 5, 7]);
        let w = t(6 * 7, 4, &[6, 7]);
        // Batched products on transposed views (attention's shapes).
        let q = t(2 * 3 * 5 * 4, 5, &[2, 3, 5, 4]);
        let k = t(2 * 3 * 5 * 4, 6, &[2, 3, 5, 4]);
        // A view with an offset: a narrowed tensor.
        let big = t(10 * 7, 7, &[10, 7]);
        let narrowed = big.narrow(0, 3, 4).unwrap();
        let cases = [
            (x.clone(), w.t().unwrap()),
            (x.clone(), w.t().unwrap().contiguous().unwrap()),
            (q.clone(), k.t().unwrap()),
            (q.t().unwrap(), k.clone()),
            (narrowed, w.t().unwrap()),
        ];
        for (a, b) in cases {
            // candle's matmul does not broadcast a 2-D right operand: fold the rows first.
            let want = if b.rank() == 2 && a.rank() > 2 {
                let mut dims = a.dims().to_vec();
                let k = dims.pop().unwrap();
                let rows: usize = dims.iter().product();
                dims.push(b.dims()[1]);
                let a2 = a.contiguous().unwrap().reshape((rows, k)).unwrap();
                a2.matmul(&b).unwrap().reshape(dims).unwrap()
            } else {
                a.matmul(&b).unwrap()
            };
            // The output can start as bias rows that the product adds onto.
            let n = b.dims()[b.rank() - 1];
            let bias = t(n, 9, &[n]);
            let want_biased: Vec<f32> = want
                .broadcast_add(&bias)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want_t = want;
            let want: Vec<f32> = want_t.flatten_all().unwrap().to_vec1().unwrap();
            let ours = Kernels {
                into: sgemm_into,
                fresh: sgemm_fresh,
            };
            #[cfg(target_arch = "x86_64")]
            let products = [
                ours,
                Kernels {
                    into: gemm_into,
                    fresh: gemm_fresh,
                },
            ];
            #[cfg(not(target_arch = "x86_64"))]
            let products = [ours];
            // Or as a copy of a tensor of the output's shape (a gradient accumulated).
            let onto = t(want.len(), 11, want_t.dims());
            let want_onto: Vec<f32> = (&want_t + &onto)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for product in products {
                let biased = matmul_with(&a, &b, product, Start::BiasRows(&bias))
                    .unwrap()
                    .expect("a supported layout");
                let biased: Vec<f32> = biased.flatten_all().unwrap().to_vec1().unwrap();
                assert_close(&biased, &want_biased, 7);
                let summed = matmul_with(&a, &b, product, Start::Copy(&onto))
                    .unwrap()
                    .expect("a supported layout");
                assert_eq!(summed.dims(), want_t.dims());
                let summed: Vec<f32> = summed.flatten_all().unwrap().to_vec1().unwrap();
                assert_close(&summed, &want_onto, 7);
                // An accumulator of another shape is left to the caller.
                let flat = onto.flatten_all().unwrap();
                assert!(
                    matmul_with(&a, &b, product, Start::Copy(&flat))
                        .unwrap()
                        .is_none()
                );
                let got = matmul_with(&a, &b, product, Start::Zeros)
                    .unwrap()
                    .expect("a supported layout");
                let out: Vec<usize> = a.dims()[..a.rank() - 1]
                    .iter()
                    .copied()
                    .chain([b.dims()[b.rank() - 1]])
                    .collect();
                assert_eq!(got.dims(), out);
                let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
                assert_close(&got, &want, 7);
            }
        }
        // Rows that do not collapse into one stride, and batch dims that do not match, are
        // left to candle.
        assert!(
            matmul(&x.transpose(0, 1).unwrap(), &w.t().unwrap())
                .unwrap()
                .is_none()
        );
        let other = t(3 * 4 * 6, 8, &[3, 4, 6]);
        assert!(matmul(&q, &other).unwrap().is_none());

        // A linear layer `x w^T + bias`, with the batch folded into rows.
        let bias = t(6, 10, &[6]);
        let want: Vec<f32> = x
            .reshape((10, 7))
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = linear(&x, &w, Some(&bias)).unwrap().expect("supported");
        assert_eq!(got.dims(), [2, 5, 6]);
        assert_close(&got.flatten_all().unwrap().to_vec1().unwrap(), &want, 7);
        // A bias of the wrong length is left to the caller (which reports the error).
        assert!(linear(&x, &w, Some(&t(5, 11, &[5]))).unwrap().is_none());
    }
}
