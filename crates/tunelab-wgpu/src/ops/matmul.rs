//! Tiled matrix multiply (`kernels/matmul.wgsl`): `C = op(A) @ op(B) (+ bias)` with transpose
//! flags, batching (B shared across the batch, as a weight is, or batched) and a fused bias.
//!
//! [`encode`] records the dispatches into a caller's encoder on device buffers (the backend
//! uses it); [`matmul`] is the host-to-host convenience used by tests; [`bench`] times it on
//! device-resident buffers.

use super::{Part, Recorder, dispatch, row_chunks, upload};
use crate::{Context, WgpuError, kernels};

/// Which kernel computes a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiling {
    /// Where M, N and K are multiples of 4, [`Tiling::Vec4`] with the tile and K split of
    /// `vec4_auto` (the largest tile that gives a large GPU enough workgroups and fits the
    /// device's workgroup memory). Otherwise the scalar kernels: 128 × 128 tiles for products
    /// with at least [`BIG_MIN_TILES`] of them, else 64 × 64 tiles with K split when there
    /// are fewer than [`SPLIT_BELOW_TILES`] of them and K is long enough.
    Auto,
    /// 64 × 64 tiles, 4 × 4 outputs per thread, scalar loads (`matmul`).
    Small,
    /// 128 × 128 tiles, 8 × 8 outputs per thread, scalar loads (`matmul_big`).
    Big,
    /// 64 × 64 tiles with K split into this many parts, each written to a partial product,
    /// then summed in order (`matmul_sum_splits`).
    SplitK(u32),
    /// `matmul_vec4.wgsl`: vec4 loads and stores, double-buffered K slices, with K split
    /// into `splits` parts (1: no split). Only for M, N and K multiples of 4.
    Vec4 { tile: Vec4Tile, splits: u32 },
}

/// The tiles of `matmul_vec4.wgsl` (`kernels::MATMUL_VEC4_TILES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vec4Tile {
    /// 64 × 64, 4 × 4 outputs per thread, K slices of 16.
    T64,
    /// 128 × 64, 8 × 4 outputs per thread, K slices of 16.
    T128x64,
    /// 128 × 128, 8 × 8 outputs per thread, K slices of 8.
    T128,
    /// 128 × 128 with K slices of 16 (rows unpadded: 32 KiB of workgroup memory), for long
    /// K with a transposed B.
    T128Deep,
}

impl Vec4Tile {
    pub const ALL: [Vec4Tile; 4] = [
        Vec4Tile::T64,
        Vec4Tile::T128x64,
        Vec4Tile::T128,
        Vec4Tile::T128Deep,
    ];

    fn slot(self) -> usize {
        self as usize
    }

    /// Rows and columns of C per workgroup.
    pub fn rows(self) -> u32 {
        64 * kernels::MATMUL_VEC4_TILES[self.slot()].0
    }

    pub fn cols(self) -> u32 {
        64 * kernels::MATMUL_VEC4_TILES[self.slot()].1
    }

    /// Workgroup memory the kernel declares: two buffers of a K slice of A and of B, rows
    /// padded by the tile's padding.
    pub fn workgroup_bytes(self) -> u32 {
        let (_, _, bk, pad) = kernels::MATMUL_VEC4_TILES[self.slot()];
        2 * bk * (self.rows() / 4 + pad + self.cols() / 4 + pad) * 16
    }
}

/// Products with at least this many 128 × 128 tiles use the big-tile kernel under
/// [`Tiling::Auto`] (fewer would leave many of a large GPU's multiprocessors idle).
pub const BIG_MIN_TILES: u64 = 192;

/// Under [`Tiling::Auto`], products with fewer 64 × 64 tiles than this split K (so that a
/// large GPU gets enough workgroups), when K is long enough.
pub const SPLIT_BELOW_TILES: u64 = 256;

/// The kernel chosen for a product.
struct Kernel {
    name: &'static str,
    source: &'static str,
    entry: &'static str,
    rows: u32,
    cols: u32,
    splits: u32,
}

/// The vec4 kernel's tile and K splits under [`Tiling::Auto`], among the tiles whose
/// workgroup memory fits `workgroup_memory` (None if none does): the largest tile that gives a
/// large GPU about 96 workgroups or more, splitting K where each split stays at least 256
/// deep (64 for the smallest tile). Tuned on an H100 (132 multiprocessors; the measurements
/// are in docs/gpu-benchmarks.md): 2048³ and the MLP's up-projection take 128 × 128 tiles,
/// 1024³ and the weight gradient `dYᵀ X` 128 × 128 with K split in two and three, the
/// attention projections (K = 384) 64 × 64 unsplit. With a transposed B (the weights of
/// `x Wᵀ`) and a long K, split 128 × 128 tiles read K in slices of 16 (`T128Deep`; slices of
/// 8 measured 25% slower than split 128 × 64 tiles on the MLP's down-projection, slices of 16
/// 6% faster); where that does not fit, 128 × 64 tiles split in two.
fn vec4_auto(d: &Dims, workgroup_memory: u32) -> Option<(Vec4Tile, u32)> {
    let fits = |tile: Vec4Tile| tile.workgroup_bytes() <= workgroup_memory;
    let big = d.tiles(128, 128).max(1);
    let big_splits = 96u64.div_ceil(big);
    let big_tile = if d.tb {
        Vec4Tile::T128Deep
    } else {
        Vec4Tile::T128
    };
    let (wide, wide_tiles) = (Vec4Tile::T128x64, d.tiles(128, 64));
    if big >= 96 && fits(Vec4Tile::T128) {
        Some((Vec4Tile::T128, 1))
    } else if big < 96 && u64::from(d.k) / big_splits >= 256 && fits(big_tile) {
        Some((big_tile, big_splits as u32))
    } else if wide_tiles >= 64 && fits(wide) {
        Some((wide, 1))
    } else if wide_tiles >= 40 && d.k >= 512 && fits(wide) {
        Some((wide, 2))
    } else if fits(Vec4Tile::T64) {
        let t = d.tiles(64, 64).max(1);
        let splits = if t < 64 && d.k >= 256 {
            // About 128 workgroups, each split at least 64 deep.
            128u64.div_ceil(t).min(u64::from(d.k / 64)).clamp(1, 32) as u32
        } else {
            1
        };
        Some((Vec4Tile::T64, splits))
    } else {
        None
    }
}

/// Whether `matmul_vec4.wgsl` can compute `d` on `view` with `tile` on this device.
fn vec4_fits(ctx: &Context, d: &Dims, view: &View, tile: Vec4Tile) -> bool {
    [d.m, d.n, d.k, view.lda, view.ldb, view.ldc]
        .into_iter()
        .chain([view.a_off, view.b_off, view.c_off])
        .all(|x| x.is_multiple_of(4))
        && d.k > 0
        && tile.workgroup_bytes() <= ctx.device.limits().max_compute_workgroup_storage_size
}

/// Where the operands of one product lie in their bound buffers: row strides as stored
/// (A is `(m, k)`, or `(k, m)` when transposed; likewise B), first elements, the bias's
/// first value, and whether the product is added to C. Dense matrices, except when a product
/// larger than one binding is processed in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    bias_off: u32,
    accumulate: bool,
}

impl View {
    fn dense(d: &Dims) -> Self {
        View {
            lda: if d.ta { d.m } else { d.k },
            ldb: if d.tb { d.k } else { d.n },
            ldc: d.n,
            a_off: 0,
            b_off: 0,
            c_off: 0,
            bias_off: 0,
            accumulate: false,
        }
    }
}

impl Tiling {
    /// The kernel and K splits for `d` on `view`.
    fn kernel(self, ctx: &Context, d: &Dims, view: &View) -> Result<Kernel, WgpuError> {
        let scalar = |entry, edge, splits| Kernel {
            name: "matmul.wgsl",
            source: kernels::MATMUL,
            entry,
            rows: edge,
            cols: edge,
            splits,
        };
        let vec4 = |tile: Vec4Tile, splits| {
            let (name, source) = kernels::matmul_vec4(tile.slot());
            Kernel {
                name,
                source,
                entry: "matmul_vec4",
                rows: tile.rows(),
                cols: tile.cols(),
                splits,
            }
        };
        Ok(match self {
            Tiling::Small => scalar("matmul", 64, 1),
            Tiling::Big => scalar("matmul_big", 128, 1),
            Tiling::SplitK(n) => scalar("matmul", 64, n.max(1)),
            Tiling::Vec4 { tile, splits } => {
                if !vec4_fits(ctx, d, view, tile) {
                    return Err(WgpuError::Shape(format!(
                        "the vec4 matmul ({tile:?}) needs M, N and K (and the strides and \
                         offsets of blocks) multiples of 4 and {} bytes of workgroup memory; \
                         got {d:?}, {view:?}",
                        tile.workgroup_bytes()
                    )));
                }
                vec4(tile, splits.max(1))
            }
            Tiling::Auto => {
                let memory = ctx.device.limits().max_compute_workgroup_storage_size;
                if let Some((tile, splits)) = vec4_auto(d, memory)
                    && vec4_fits(ctx, d, view, tile)
                {
                    return Ok(vec4(tile, splits));
                }
                let tiles = |edge: u32| d.tiles(edge, edge);
                if tiles(128) >= BIG_MIN_TILES {
                    scalar("matmul_big", 128, 1)
                } else {
                    let small = tiles(64);
                    let splits = if small >= SPLIT_BELOW_TILES || d.k < 128 {
                        1
                    } else {
                        // Enough workgroups for about two rounds of 256, each split at least
                        // 64 deep.
                        (2 * SPLIT_BELOW_TILES)
                            .div_ceil(small.max(1))
                            .min(u64::from(d.k / 64))
                            .clamp(1, 32) as u32
                    };
                    scalar("matmul", 64, splits)
                }
            }
        })
    }
}

/// The problem: `batch` products of `(m, k) @ (k, n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: u32,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// A is stored `(k, m)`.
    pub ta: bool,
    /// B is stored `(n, k)`.
    pub tb: bool,
    /// One B for every batch (a weight).
    pub b_shared: bool,
}

impl Dims {
    pub fn a_len(&self) -> u64 {
        u64::from(self.batch) * u64::from(self.m) * u64::from(self.k)
    }
    pub fn b_len(&self) -> u64 {
        let one = u64::from(self.k) * u64::from(self.n);
        if self.b_shared {
            one
        } else {
            one * u64::from(self.batch)
        }
    }
    pub fn c_len(&self) -> u64 {
        u64::from(self.batch) * u64::from(self.m) * u64::from(self.n)
    }
    /// Workgroups of `rows` × `cols` tiles of C.
    pub fn tiles(&self, rows: u32, cols: u32) -> u64 {
        u64::from(self.batch) * u64::from(self.m.div_ceil(rows)) * u64::from(self.n.div_ceil(cols))
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.c_len() as f64 * f64::from(self.k)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    ta: u32,
    tb: u32,
    has_bias: u32,
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
    row_tile0: u32,
    z0: u32,
    splits: u32,
    k_chunk: u32,
    c_split: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    bias_off: u32,
    accumulate: u32,
    pad: [u32; 2],
}

/// Element counts must fit the kernels' u32 indices.
fn check(d: &Dims) -> Result<(), WgpuError> {
    for (what, len) in [
        ("matmul A", d.a_len()),
        ("matmul B", d.b_len()),
        ("matmul C", d.c_len()),
    ] {
        if len > u64::from(u32::MAX) {
            return Err(WgpuError::LimitExceeded {
                what: format!("{what} ({len} elements)"),
                requested: len,
                available: u64::from(u32::MAX),
            });
        }
    }
    Ok(())
}

/// Records `C = op(A) @ op(B) (+ bias)` into `encoder`. Buffers hold f32; `bias` has `n`
/// values or is None. Shapes that need more than the per-dimension workgroup limit are split
/// into several dispatches.
pub fn encode(
    ctx: &Context,
    encoder: &mut Recorder,
    d: &Dims,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    c: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    encode_tiled(ctx, encoder, d, Tiling::Auto, a, b, bias, c)
}

/// [`encode`] with the kernel chosen by `tiling`.
///
/// A product whose A, B or C is larger than one binding is computed in blocks. Each operand's
/// binding is a range of its stored rows, so each is fitted by splitting one of M, N and K:
/// M for A untransposed and C, K for A transposed and B untransposed, N for B transposed
/// (rows of a PyTorch-layout weight, such as the tied MLM decoder's word embeddings). Blocks
/// read and write their columns through row strides and offsets; the products of K blocks
/// are added to C in order (the first with the bias). Batched products go in parts of the
/// batch; one entry (or a B shared by the batch) larger than one binding is a
/// [`WgpuError::LimitExceeded`].
#[allow(clippy::too_many_arguments)]
pub fn encode_tiled(
    ctx: &Context,
    encoder: &mut Recorder,
    d: &Dims,
    tiling: Tiling,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    c: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    check(d)?;
    if d.c_len() == 0 {
        return Ok(());
    }
    let limit = ctx.binding_limit();
    let fits = |len: u64| len * 4 <= limit;
    let dense = View::dense(d);
    if fits(d.a_len()) && fits(d.b_len()) && fits(d.c_len()) {
        let (a, b, c) = (a.into(), b.into(), c.into());
        return encode_parts(ctx, encoder, d, &dense, tiling, a, b, bias, c);
    }
    let (m, n, k) = (u64::from(d.m), u64::from(d.n), u64::from(d.k));
    if d.batch != 1 {
        // Parts of the batch: each entry's A, C and (when batched) B.
        let mut widths = vec![m * k, m * n];
        if d.b_shared {
            ctx.check_binding("matmul B (shared by a batch)", d.b_len() * 4)?;
        } else {
            widths.push(k * n);
        }
        for (first, count) in row_chunks(ctx, "matmul batch entries", d.batch, &widths)? {
            let part = Dims { batch: count, ..*d };
            let pb = if d.b_shared {
                b.into()
            } else {
                Part::rows(b, k * n, first, count)
            };
            let (pa, pc) = (
                Part::rows(a, m * k, first, count),
                Part::rows(c, m * n, first, count),
            );
            encode_parts(ctx, encoder, &part, &dense, tiling, pa, pb, bias, pc)?;
        }
        return Ok(());
    }
    // Ranges of M, N and K, each fitting the rows of the operands bound along it.
    let ranges = |what: &str, len: u32, widths: &[Option<u64>]| {
        let widths: Vec<u64> = widths.iter().flatten().copied().collect();
        if widths.is_empty() {
            return Ok(vec![(0, len)]);
        }
        row_chunks(ctx, what, len, &widths)
    };
    let ms = ranges("matmul rows of C", d.m, &[(!d.ta).then_some(k), Some(n)])?;
    let ks = ranges("matmul K", d.k, &[d.ta.then_some(m), (!d.tb).then_some(n)])?;
    let ns = ranges("matmul columns of C", d.n, &[d.tb.then_some(k)])?;
    for &(m0, mc) in &ms {
        for &(n0, nc) in &ns {
            for (i, &(k0, kc)) in ks.iter().enumerate() {
                let part = Dims {
                    m: mc,
                    n: nc,
                    k: kc,
                    ..*d
                };
                let (pa, a_off) = if d.ta {
                    (Part::rows(a, m, k0, kc), m0)
                } else {
                    (Part::rows(a, k, m0, mc), k0)
                };
                let (pb, b_off) = if d.tb {
                    (Part::rows(b, k, n0, nc), k0)
                } else {
                    (Part::rows(b, n, k0, kc), n0)
                };
                let view = View {
                    a_off,
                    b_off,
                    c_off: n0,
                    bias_off: n0,
                    accumulate: i > 0,
                    ..dense
                };
                let with_bias = bias.filter(|_| i == 0);
                let pc = Part::rows(c, n, m0, mc);
                encode_parts(ctx, encoder, &part, &view, tiling, pa, pb, with_bias, pc)?;
            }
        }
    }
    Ok(())
}

/// One product on bound parts of buffers that each fit one binding.
#[allow(clippy::too_many_arguments)]
fn encode_parts(
    ctx: &Context,
    encoder: &mut Recorder,
    d: &Dims,
    view: &View,
    tiling: Tiling,
    a: Part<'_>,
    b: Part<'_>,
    bias: Option<&wgpu::Buffer>,
    c: Part<'_>,
) -> Result<(), WgpuError> {
    let kernel = tiling.kernel(ctx, d, view)?;
    let splits = kernel.splits;
    let max = ctx.report().limits.max_compute_workgroups_per_dimension;
    let gx = d.n.div_ceil(kernel.cols);
    if gx > max {
        return Err(WgpuError::LimitExceeded {
            what: format!("matmul with N = {} (workgroups along N)", d.n),
            requested: u64::from(gx),
            available: u64::from(max),
        });
    }
    let row_tiles = d.m.div_ceil(kernel.rows);
    // K per split, whole slices of 16; splits whose partial products would not fit one
    // binding (or one u32 index) fall back to a single pass.
    let c_len = d.c_len();
    let k_chunk = d.k.div_ceil(splits.max(1)).next_multiple_of(16).max(16);
    let mut splits = d.k.div_ceil(k_chunk).max(1);
    if splits > 1
        && (ctx
            .check_binding("matmul partials", c_len * u64::from(splits) * 4)
            .is_err()
            || c_len * u64::from(splits) > u64::from(u32::MAX))
    {
        splits = 1;
    }
    let k_chunk = if splits == 1 { d.k } else { k_chunk };
    let partials = (splits > 1).then(|| encoder.scratch(ctx, c_len * u64::from(splits)));
    let target = partials.as_ref().map_or(c, Part::from);
    // The kernel reads the bias only when has_bias is set.
    let one = ctx.one();
    let bias_buf = Part::from(bias.unwrap_or(&one));
    // The product's pass writes C's view, or dense partial products for the second pass to
    // sum into the view.
    let direct = splits == 1;
    let base = Params {
        m: d.m,
        n: d.n,
        k: d.k,
        ta: u32::from(d.ta),
        tb: u32::from(d.tb),
        has_bias: u32::from(bias.is_some() && direct),
        a_batch: d.m * d.k,
        b_batch: if d.b_shared { 0 } else { d.k * d.n },
        c_batch: d.m * d.n,
        row_tile0: 0,
        z0: 0,
        splits,
        k_chunk,
        c_split: c_len as u32,
        lda: view.lda,
        ldb: view.ldb,
        ldc: if direct { view.ldc } else { d.n },
        a_off: view.a_off,
        b_off: view.b_off,
        c_off: if direct { view.c_off } else { 0 },
        bias_off: view.bias_off,
        accumulate: u32::from(view.accumulate && direct),
        pad: [0; 2],
    };
    let jobs = d.batch * splits;
    let mut z0 = 0;
    while z0 < jobs {
        let nz = (jobs - z0).min(max);
        let mut row0 = 0;
        while row0 < row_tiles {
            let nr = (row_tiles - row0).min(max);
            let params = Params {
                row_tile0: row0,
                z0,
                ..base
            };
            dispatch(
                ctx,
                encoder,
                kernel.name,
                kernel.source,
                kernel.entry,
                bytemuck::bytes_of(&params),
                &[(1, a), (2, b), (3, bias_buf), (4, target)],
                (gx, nr, nz),
            );
            row0 += nr;
        }
        z0 += nz;
    }
    if let Some(partials) = partials {
        let (sx, sy) = super::groups_for(ctx, c_len as u32, 256);
        let params = Params {
            has_bias: u32::from(bias.is_some()),
            row_tile0: sx,
            ldc: view.ldc,
            c_off: view.c_off,
            accumulate: u32::from(view.accumulate),
            ..base
        };
        dispatch(
            ctx,
            encoder,
            "matmul.wgsl",
            kernels::MATMUL,
            "matmul_sum_splits",
            bytemuck::bytes_of(&params),
            &[(1, (&partials).into()), (3, bias_buf), (4, c)],
            (sx, sy, 1),
        );
    }
    Ok(())
}

/// Host-to-host matmul: uploads, computes, reads back.
pub async fn matmul(
    ctx: &Context,
    d: &Dims,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, WgpuError> {
    matmul_tiled(ctx, d, Tiling::Auto, a, b, bias).await
}

/// [`matmul`] with the kernel chosen by `tiling`.
pub async fn matmul_tiled(
    ctx: &Context,
    d: &Dims,
    tiling: Tiling,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, WgpuError> {
    if a.len() as u64 != d.a_len() || b.len() as u64 != d.b_len() {
        return Err(WgpuError::Shape(format!(
            "matmul: {d:?} needs A of {} and B of {} values, got {} and {}",
            d.a_len(),
            d.b_len(),
            a.len(),
            b.len()
        )));
    }
    if let Some(bias) = bias
        && bias.len() != d.n as usize
    {
        return Err(WgpuError::Shape(format!(
            "matmul: bias has {} values but N is {}",
            bias.len(),
            d.n
        )));
    }
    check(d)?;
    let c_len = d.c_len() as usize;
    let c = ctx
        .checked(|| -> Result<wgpu::Buffer, WgpuError> {
            let ab = upload(ctx, "matmul.a", a);
            let bb = upload(ctx, "matmul.b", b);
            let biasb = bias.map(|x| upload(ctx, "matmul.bias", x));
            let cb = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("matmul.c"),
                size: (c_len.max(1) * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = Recorder::new(ctx);
            encode_tiled(ctx, &mut enc, d, tiling, &ab, &bb, biasb.as_ref(), &cb)?;
            enc.keep(ab);
            enc.keep(bb);
            if let Some(x) = biasb {
                enc.keep(x);
            }
            enc.submit(ctx);
            Ok(cb)
        })
        .await??;
    let out = ctx.read_f32(&c, c_len).await;
    c.destroy();
    out
}

/// Seconds per matmul of `d` on device-resident buffers: the median over `iters` timed
/// submissions (after a warm-up), each of enough back-to-back dispatches to take about 20 ms,
/// so the per-submission latency does not count as kernel time. The clock runs from the
/// submission to its completion: recording the commands (bind groups, parameters) is CPU
/// work that a training step pays once per dispatch, not kernel time, and a CUDA library's
/// asynchronous launches overlap theirs with the GPU's work.
#[cfg(not(target_arch = "wasm32"))]
pub fn bench(ctx: &Context, d: &Dims, tiling: Tiling, iters: usize) -> Result<f64, WgpuError> {
    check(d)?;
    let fill = |n: u64| -> Vec<f32> { (0..n).map(|i| ((i % 97) as f32) * 0.01).collect() };
    let ab = upload(ctx, "bench.a", &fill(d.a_len()));
    let bb = upload(ctx, "bench.b", &fill(d.b_len()));
    let cb = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench.c"),
        size: d.c_len().max(1) * 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let run = |reps: usize| -> Result<f64, WgpuError> {
        let mut enc = Recorder::new(ctx);
        for _ in 0..reps {
            encode_tiled(ctx, &mut enc, d, tiling, &ab, &bb, None, &cb)?;
        }
        let start = std::time::Instant::now();
        enc.submit(ctx);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| WgpuError::Device(e.to_string()))?;
        Ok(start.elapsed().as_secs_f64())
    };
    run(1)?;
    let one = run(1)?;
    let reps = ((0.02 / one.max(1e-6)).ceil() as usize).clamp(1, 200);
    let mut times = Vec::new();
    for _ in 0..iters.max(1) {
        times.push(run(reps)? / reps as f64);
    }
    ab.destroy();
    bb.destroy();
    cb.destroy();
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests {
    use super::*;

    /// f64 reference.
    pub(crate) fn reference(d: &Dims, a: &[f32], b: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (m, n, k) = (d.m as usize, d.n as usize, d.k as usize);
        let mut c = vec![0f32; d.c_len() as usize];
        for bt in 0..d.batch as usize {
            let ab = bt * m * k;
            let bb = if d.b_shared { 0 } else { bt * k * n };
            for i in 0..m {
                for j in 0..n {
                    let mut s = bias.map_or(0.0, |x| f64::from(x[j]));
                    for l in 0..k {
                        let av = if d.ta {
                            a[ab + l * m + i]
                        } else {
                            a[ab + i * k + l]
                        };
                        let bv = if d.tb {
                            b[bb + j * k + l]
                        } else {
                            b[bb + l * n + j]
                        };
                        s += f64::from(av) * f64::from(bv);
                    }
                    c[bt * m * n + i * n + j] = s as f32;
                }
            }
        }
        c
    }

    /// Every `tiling` on every shape `(batch, m, n, k)` and layout `(ta, tb, shared B, bias)`
    /// against the f64 reference.
    #[allow(clippy::unwrap_used)] // a test helper: a panic is a failure
    fn check_tilings(
        ctx: &Context,
        shapes: &[(u32, u32, u32, u32)],
        layouts: &[(bool, bool, bool, bool)],
        tilings: &[Tiling],
    ) {
        for &(batch, m, n, k) in shapes {
            for &(ta, tb, shared, with_bias) in layouts {
                let d = Dims {
                    batch,
                    m,
                    n,
                    k,
                    ta,
                    tb,
                    b_shared: shared,
                };
                let a: Vec<f32> = (0..d.a_len())
                    .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.1)
                    .collect();
                let b: Vec<f32> = (0..d.b_len())
                    .map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.1)
                    .collect();
                let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
                let bias = with_bias.then_some(bias.as_slice());
                let want = reference(&d, &a, &b, bias);
                for &tiling in tilings {
                    let got =
                        pollster::block_on(matmul_tiled(ctx, &d, tiling, &a, &b, bias)).unwrap();
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                            "{tiling:?} {d:?} bias={with_bias} at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matches_the_reference_on_awkward_shapes_and_every_transpose() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        let shapes = [
            (1, 1, 1, 1),
            (1, 3, 5, 7),
            (2, 65, 63, 17),
            (3, 1, 130, 33),
            (1, 70, 1, 129),
            // Edges of the 128-tile kernel: one row/column past a tile, K not a multiple of 8.
            (1, 129, 257, 13),
            (2, 127, 128, 8),
        ];
        check_tilings(
            &ctx,
            &shapes,
            &[
                (false, false, false, false),
                (false, true, true, true),
                (true, false, false, true),
                (true, true, true, false),
            ],
            &[
                Tiling::Small,
                Tiling::Big,
                Tiling::Auto,
                Tiling::SplitK(2),
                Tiling::SplitK(5),
            ],
        );
    }

    /// Every tile of the vec4 kernel, with and without split K, on shapes whose M, N and K
    /// are multiples of 4 but not of the tiles (a row and a column group past a tile, K past
    /// a slice), every transpose, shared and batched B, with and without bias.
    #[test]
    fn vec4_kernels_match_the_reference() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        let limit = ctx.device.limits().max_compute_workgroup_storage_size;
        let mut tilings = Vec::new();
        for tile in Vec4Tile::ALL {
            if tile.workgroup_bytes() > limit {
                eprintln!("{tile:?} skipped: needs more workgroup memory than {limit}");
                continue;
            }
            tilings.extend([1, 3].map(|splits| Tiling::Vec4 { tile, splits }));
        }
        check_tilings(
            &ctx,
            &[(1, 4, 4, 4), (2, 132, 68, 20), (1, 68, 136, 44)],
            &[
                (false, false, false, true),
                (false, true, true, false),
                (true, false, true, false),
                (true, true, false, true),
            ],
            &tilings,
        );
        // A shape it cannot take is a typed error, not a wrong result.
        let d = Dims {
            batch: 1,
            m: 4,
            n: 6,
            k: 4,
            ta: false,
            tb: false,
            b_shared: true,
        };
        let tiling = Tiling::Vec4 {
            tile: Vec4Tile::T64,
            splits: 1,
        };
        let e = pollster::block_on(matmul_tiled(&ctx, &d, tiling, &[0.0; 16], &[0.0; 24], None))
            .unwrap_err();
        assert!(matches!(e, WgpuError::Shape(_)), "{e}");
        assert!(e.to_string().contains("multiples of 4"), "{e}");
    }

    /// The automatic choice at the shapes it was tuned on (docs/gpu-benchmarks.md).
    #[test]
    fn vec4_auto_picks_the_measured_best_tiles() {
        let d = |batch, m, n, k, ta, tb| Dims {
            batch,
            m,
            n,
            k,
            ta,
            tb,
            b_shared: batch == 1,
        };
        let (t, big, deep) = (Vec4Tile::T128x64, Vec4Tile::T128, Vec4Tile::T128Deep);
        let down = d(1, 1024, 384, 1536, false, true);
        for (dims, want) in [
            (d(1, 2048, 2048, 2048, false, false), (big, 1)),
            (d(1, 1024, 1536, 384, false, true), (big, 1)),
            (d(96, 128, 128, 32, false, true), (big, 1)),
            (d(1, 1024, 1024, 1024, false, false), (big, 2)),
            (d(1, 384, 1536, 1024, true, false), (big, 3)),
            (down, (deep, 4)),
            (d(1, 1024, 384, 384, false, true), (Vec4Tile::T64, 1)),
            (d(1, 512, 512, 512, false, false), (Vec4Tile::T64, 1)),
            (d(1, 256, 256, 256, false, false), (Vec4Tile::T64, 4)),
        ] {
            assert_eq!(vec4_auto(&dims, 32 << 10), Some(want), "{dims:?}");
        }
        // With less workgroup memory, the next choice that fits: without the 32 KiB of K
        // slices of 16 the down-projection splits 128 x 64 tiles, without room for those it
        // takes 64 x 64 tiles; with room for no tile, None (the scalar kernels serve).
        assert_eq!(vec4_auto(&down, 30 << 10), Some((t, 2)));
        let t64 = Vec4Tile::T64.workgroup_bytes();
        assert_eq!(vec4_auto(&down, t64), Some((Vec4Tile::T64, 1)));
        let least = Vec4Tile::ALL
            .map(Vec4Tile::workgroup_bytes)
            .into_iter()
            .min()
            .unwrap();
        assert_eq!(vec4_auto(&down, least - 1), None);
    }

    #[test]
    fn more_row_tiles_than_one_dispatch_dimension_allows() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        // 65,600 row tiles of 64 would need M = 4.2M rows; instead check the splitting logic
        // on a many-batch problem: batch beyond 65,535 is split over several dispatches.
        let d = Dims {
            batch: 65_537,
            m: 1,
            n: 2,
            k: 3,
            ta: false,
            tb: false,
            b_shared: true,
        };
        let a: Vec<f32> = (0..d.a_len()).map(|i| (i % 5) as f32).collect();
        let b = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let got = pollster::block_on(matmul(&ctx, &d, &a, &b, None)).unwrap();
        let want = reference(&d, &a, &b, None);
        assert_eq!(got, want);
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        let d = Dims {
            batch: 1,
            m: 2,
            n: 2,
            k: 2,
            ta: false,
            tb: false,
            b_shared: false,
        };
        let e = pollster::block_on(matmul(&ctx, &d, &[0.0; 3], &[0.0; 4], None)).unwrap_err();
        assert!(e.to_string().contains("needs A of 4"), "{e}");
        let huge = Dims {
            batch: 1,
            m: 1 << 16,
            n: 1 << 16,
            k: 1,
            ta: false,
            tb: false,
            b_shared: true,
        };
        let e = pollster::block_on(matmul(&ctx, &huge, &[0.0; 1 << 16], &[0.0; 1 << 16], None))
            .unwrap_err();
        assert!(matches!(e, WgpuError::LimitExceeded { .. }), "{e}");
        assert!(e.to_string().contains("matmul C"), "{e}");
    }
}
