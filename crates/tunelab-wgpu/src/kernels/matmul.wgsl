// Tiled matrix multiply: C[b] = op(A[b]) @ op(B[b]) (+ bias), row-major.
//
// op(A) is (M, K): A is stored (M, K), or (K, M) when ta = 1. op(B) is (K, N): B is stored
// (K, N), or (N, K) when tb = 1. Batches are `a_batch`, `b_batch` (0: B shared by every
// batch, a weight) and `c_batch` elements apart. With has_bias = 1, bias[n] is added.
//
// Two entry points: `matmul` (64x64 tiles of C) and `matmul_big` (128x128, for products with
// many tiles). Both stage K slices of A and B through workgroup memory, loading along the
// contiguous axis of each input whichever its transpose flag (global reads coalesce), and
// fetch the next slice into registers while multiplying the current one.
//
// Dispatch: (ceil(N/tile), row tiles, batches); `row_tile0` and `batch0` offset the y and z
// workgroup ids when a shape needs more workgroups than one dispatch dimension allows.
//
// Params, the uniform `p` and job() come from matmul_common.wgsl, prepended.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// op(A)[gm, gk] of this batch entry, 0 outside the matrix and past the job's K range.
fn load_a(base: u32, gm: u32, gk: u32, k_hi: u32) -> f32 {
    if (gm >= p.m || gk >= k_hi) {
        return 0.0;
    }
    if (p.ta == 0u) {
        return a[base + gm * p.lda + gk];
    }
    return a[base + gk * p.lda + gm];
}

// op(B)[gk, gn] of this batch entry, likewise.
fn load_b(base: u32, gk: u32, gn: u32, k_hi: u32) -> f32 {
    if (gn >= p.n || gk >= k_hi) {
        return 0.0;
    }
    if (p.tb == 0u) {
        return b[base + gk * p.ldb + gn];
    }
    return b[base + gn * p.ldb + gk];
}

// (m, kk) of element e of an A slice `rows` x `depth`, ordered along A's contiguous axis so
// that neighbouring threads read neighbouring addresses.
fn slot_a(e: u32, rows: u32, depth: u32) -> vec2<u32> {
    if (p.ta == 0u) {
        return vec2<u32>(e / depth, e % depth);
    }
    return vec2<u32>(e % rows, e / rows);
}

// (n, kk) of element e of a B slice `depth` x `cols`, likewise.
fn slot_b(e: u32, cols: u32, depth: u32) -> vec2<u32> {
    if (p.tb == 0u) {
        return vec2<u32>(e % cols, e / cols);
    }
    return vec2<u32>(e / depth, e % depth);
}

// The four values of A's slice at K offset k0 that thread `tid` stages (elements tid,
// tid + 256, tid + 512, tid + 768), as x, y, z, w: no dynamically indexed vector, which a
// driver may keep in local memory.
fn fetch_a(base: u32, row0: u32, k0: u32, k_hi: u32, tid: u32, rows: u32, depth: u32) -> vec4<f32> {
    let s0 = slot_a(tid, rows, depth);
    let s1 = slot_a(tid + 256u, rows, depth);
    let s2 = slot_a(tid + 512u, rows, depth);
    let s3 = slot_a(tid + 768u, rows, depth);
    return vec4<f32>(
        load_a(base, row0 + s0.x, k0 + s0.y, k_hi),
        load_a(base, row0 + s1.x, k0 + s1.y, k_hi),
        load_a(base, row0 + s2.x, k0 + s2.y, k_hi),
        load_a(base, row0 + s3.x, k0 + s3.y, k_hi),
    );
}

// The same for B's slice.
fn fetch_b(base: u32, col0: u32, k0: u32, k_hi: u32, tid: u32, cols: u32, depth: u32) -> vec4<f32> {
    let s0 = slot_b(tid, cols, depth);
    let s1 = slot_b(tid + 256u, cols, depth);
    let s2 = slot_b(tid + 512u, cols, depth);
    let s3 = slot_b(tid + 768u, cols, depth);
    return vec4<f32>(
        load_b(base, k0 + s0.y, col0 + s0.x, k_hi),
        load_b(base, k0 + s1.y, col0 + s1.x, k_hi),
        load_b(base, k0 + s2.y, col0 + s2.x, k_hi),
        load_b(base, k0 + s3.y, col0 + s3.x, k_hi),
    );
}

// [kk][m / 4] and [kk][n / 4] of the current K slice. Rows are padded to 17 vec4s: the
// staging stores of an input read along K (A untransposed, a PyTorch-layout weight as B) put
// neighbouring threads in neighbouring rows, which an unpadded 64-float row would map to the
// same memory bank.
const ROW: u32 = 17u;
var<workgroup> a_tile: array<vec4<f32>, 272>;
var<workgroup> b_tile: array<vec4<f32>, 272>;

// 64x64 tiles, 256 threads, each computing a 4x4 block: rows ty*4..ty*4+3 and columns
// tx*4..tx*4+3, read from workgroup memory as one vec4 of A and one of B per step of kk
// (neighbouring threads read neighbouring words). Each thread stages four values of A's
// 64x16 slice and four of B's 16x64, reading along whichever axis is contiguous in memory,
// and fetches the next slice into registers while the current one is multiplied.
@compute @workgroup_size(256, 1, 1)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let jb = job(wg.z);
    let batch = jb.batch;
    let row0 = (wg.y + p.row_tile0) * TM;
    let col0 = wg.x * TN;
    let tx = tid % 16u;
    let ty = tid / 16u;
    let a_base = p.a_off + batch * p.a_batch;
    let b_base = p.b_off + batch * p.b_batch;

    var ra = fetch_a(a_base, row0, jb.k_lo, jb.k_hi, tid, TM, TK);
    var rb = fetch_b(b_base, col0, jb.k_lo, jb.k_hi, tid, TN, TK);

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = jb.k_lo; k0 < jb.k_hi; k0 = k0 + TK) {
        let sa0 = slot_a(tid, TM, TK);
        a_tile[sa0.y * ROW + sa0.x / 4u][sa0.x % 4u] = ra.x;
        let sb0 = slot_b(tid, TN, TK);
        b_tile[sb0.y * ROW + sb0.x / 4u][sb0.x % 4u] = rb.x;
        let sa1 = slot_a(tid + 256u, TM, TK);
        a_tile[sa1.y * ROW + sa1.x / 4u][sa1.x % 4u] = ra.y;
        let sb1 = slot_b(tid + 256u, TN, TK);
        b_tile[sb1.y * ROW + sb1.x / 4u][sb1.x % 4u] = rb.y;
        let sa2 = slot_a(tid + 512u, TM, TK);
        a_tile[sa2.y * ROW + sa2.x / 4u][sa2.x % 4u] = ra.z;
        let sb2 = slot_b(tid + 512u, TN, TK);
        b_tile[sb2.y * ROW + sb2.x / 4u][sb2.x % 4u] = rb.z;
        let sa3 = slot_a(tid + 768u, TM, TK);
        a_tile[sa3.y * ROW + sa3.x / 4u][sa3.x % 4u] = ra.w;
        let sb3 = slot_b(tid + 768u, TN, TK);
        b_tile[sb3.y * ROW + sb3.x / 4u][sb3.x % 4u] = rb.w;
        workgroupBarrier();
        let next = k0 + TK;
        if (next < jb.k_hi) {
            ra = fetch_a(a_base, row0, next, jb.k_hi, tid, TM, TK);
            rb = fetch_b(b_base, col0, next, jb.k_hi, tid, TN, TK);
        }
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let av = a_tile[kk * ROW + ty];
            let bv = b_tile[kk * ROW + tx];
            acc0 = fma(vec4<f32>(av.x), bv, acc0);
            acc1 = fma(vec4<f32>(av.y), bv, acc1);
            acc2 = fma(vec4<f32>(av.z), bv, acc2);
            acc3 = fma(vec4<f32>(av.w), bv, acc3);
        }
        workgroupBarrier();
    }

    let r0 = row0 + ty * 4u;
    let q0 = col0 + tx * 4u;
    store4(jb.c_base, r0, q0, acc0);
    store4(jb.c_base, r0 + 1u, q0, acc1);
    store4(jb.c_base, r0 + 2u, q0, acc2);
    store4(jb.c_base, r0 + 3u, q0, acc3);
}

// The same product with 128x128 tiles for shapes with many tiles (big GPUs): 256 threads,
// each computing 8x8 outputs — rows ty*4..ty*4+3 and 64+ty*4.., columns tx*4..tx*4+3 and
// 64+tx*4.. — so every shared-memory read is a vec4 that neighbouring threads take from
// neighbouring words, and each step of kk does 64 multiply-adds for four vec4 reads.
// Dispatch: (ceil(N/128), row tiles of 128, batches).

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;

// [kk][m / 4] and [kk][n / 4], rows padded to 33 vec4s (as above).
const ROW_BIG: u32 = 33u;
var<workgroup> a_big: array<vec4<f32>, 264>;
var<workgroup> b_big: array<vec4<f32>, 264>;

@compute @workgroup_size(256, 1, 1)
fn matmul_big(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let jb = job(wg.z);
    let batch = jb.batch;
    let row0 = (wg.y + p.row_tile0) * BM;
    let col0 = wg.x * BN;
    let tx = tid % 16u;
    let ty = tid / 16u;
    let a_base = p.a_off + batch * p.a_batch;
    let b_base = p.b_off + batch * p.b_batch;

    var c00 = vec4<f32>(0.0);
    var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0);
    var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0);
    var c31 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0);
    var c41 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0);
    var c51 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0);
    var c61 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0);
    var c71 = vec4<f32>(0.0);

    var ra = fetch_a(a_base, row0, jb.k_lo, jb.k_hi, tid, BM, BK);
    var rb = fetch_b(b_base, col0, jb.k_lo, jb.k_hi, tid, BN, BK);
    for (var k0 = jb.k_lo; k0 < jb.k_hi; k0 = k0 + BK) {
        // Each thread stages four values of A's 128x8 slice and four of B's 8x128, then
        // fetches the next slice's while this one is multiplied.
        let sa0 = slot_a(tid, BM, BK);
        a_big[sa0.y * ROW_BIG + sa0.x / 4u][sa0.x % 4u] = ra.x;
        let sb0 = slot_b(tid, BN, BK);
        b_big[sb0.y * ROW_BIG + sb0.x / 4u][sb0.x % 4u] = rb.x;
        let sa1 = slot_a(tid + 256u, BM, BK);
        a_big[sa1.y * ROW_BIG + sa1.x / 4u][sa1.x % 4u] = ra.y;
        let sb1 = slot_b(tid + 256u, BN, BK);
        b_big[sb1.y * ROW_BIG + sb1.x / 4u][sb1.x % 4u] = rb.y;
        let sa2 = slot_a(tid + 512u, BM, BK);
        a_big[sa2.y * ROW_BIG + sa2.x / 4u][sa2.x % 4u] = ra.z;
        let sb2 = slot_b(tid + 512u, BN, BK);
        b_big[sb2.y * ROW_BIG + sb2.x / 4u][sb2.x % 4u] = rb.z;
        let sa3 = slot_a(tid + 768u, BM, BK);
        a_big[sa3.y * ROW_BIG + sa3.x / 4u][sa3.x % 4u] = ra.w;
        let sb3 = slot_b(tid + 768u, BN, BK);
        b_big[sb3.y * ROW_BIG + sb3.x / 4u][sb3.x % 4u] = rb.w;
        workgroupBarrier();
        let next = k0 + BK;
        if (next < jb.k_hi) {
            ra = fetch_a(a_base, row0, next, jb.k_hi, tid, BM, BK);
            rb = fetch_b(b_base, col0, next, jb.k_hi, tid, BN, BK);
        }
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let a0 = a_big[kk * ROW_BIG + ty];
            let a1 = a_big[kk * ROW_BIG + 16u + ty];
            let b0 = b_big[kk * ROW_BIG + tx];
            let b1 = b_big[kk * ROW_BIG + 16u + tx];
            c00 = fma(vec4<f32>(a0.x), b0, c00);
            c01 = fma(vec4<f32>(a0.x), b1, c01);
            c10 = fma(vec4<f32>(a0.y), b0, c10);
            c11 = fma(vec4<f32>(a0.y), b1, c11);
            c20 = fma(vec4<f32>(a0.z), b0, c20);
            c21 = fma(vec4<f32>(a0.z), b1, c21);
            c30 = fma(vec4<f32>(a0.w), b0, c30);
            c31 = fma(vec4<f32>(a0.w), b1, c31);
            c40 = fma(vec4<f32>(a1.x), b0, c40);
            c41 = fma(vec4<f32>(a1.x), b1, c41);
            c50 = fma(vec4<f32>(a1.y), b0, c50);
            c51 = fma(vec4<f32>(a1.y), b1, c51);
            c60 = fma(vec4<f32>(a1.z), b0, c60);
            c61 = fma(vec4<f32>(a1.z), b1, c61);
            c70 = fma(vec4<f32>(a1.w), b0, c70);
            c71 = fma(vec4<f32>(a1.w), b1, c71);
        }
        workgroupBarrier();
    }

    let r0 = row0 + ty * 4u;
    let r1 = row0 + 64u + ty * 4u;
    let q0 = col0 + tx * 4u;
    let q1 = col0 + 64u + tx * 4u;
    store4(jb.c_base, r0, q0, c00);
    store4(jb.c_base, r0, q1, c01);
    store4(jb.c_base, r0 + 1u, q0, c10);
    store4(jb.c_base, r0 + 1u, q1, c11);
    store4(jb.c_base, r0 + 2u, q0, c20);
    store4(jb.c_base, r0 + 2u, q1, c21);
    store4(jb.c_base, r0 + 3u, q0, c30);
    store4(jb.c_base, r0 + 3u, q1, c31);
    store4(jb.c_base, r1, q0, c40);
    store4(jb.c_base, r1, q1, c41);
    store4(jb.c_base, r1 + 1u, q0, c50);
    store4(jb.c_base, r1 + 1u, q1, c51);
    store4(jb.c_base, r1 + 2u, q0, c60);
    store4(jb.c_base, r1 + 2u, q1, c61);
    store4(jb.c_base, r1 + 3u, q0, c70);
    store4(jb.c_base, r1 + 3u, q1, c71);
}

// Writes four consecutive outputs of row `gm` from column `gn` (those inside C) of the
// matrix at element `c_base`.
fn store4(c_base: u32, gm: u32, gn: u32, v: vec4<f32>) {
    if (gm >= p.m) {
        return;
    }
    let base = c_base + gm * p.ldc;
    store1(base, gn, v.x);
    store1(base, gn + 1u, v.y);
    store1(base, gn + 2u, v.z);
    store1(base, gn + 3u, v.w);
}

// Writes c[base + col] = x (+ bias, + the old value with accumulate) when the column is
// inside C.
fn store1(base: u32, col: u32, x: f32) {
    if (col < p.n) {
        var y = x;
        if (p.has_bias == 1u) {
            y = y + bias[p.bias_off + col];
        }
        if (p.accumulate == 1u) {
            y = c[base + col] + y;
        }
        c[base + col] = y;
    }
}

// Split-K's second pass: output i of C (row i / n, column i % n of C's view) is the sum over
// splits s of a[s * c_split + i] (in order), plus the bias with has_bias, plus the old value
// with accumulate. One thread per output; `row_tile0` holds the row stride of a dispatch
// split over x and y.
@compute @workgroup_size(256, 1, 1)
fn matmul_sum_splits(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let i = (wg.y * p.row_tile0 + wg.x) * 256u + tid;
    if (i >= p.c_split) {
        return;
    }
    var s = 0.0;
    for (var j = 0u; j < p.splits; j = j + 1u) {
        s = s + a[j * p.c_split + i];
    }
    let col = i % p.n;
    if (p.has_bias == 1u) {
        s = s + bias[p.bias_off + col];
    }
    let at = p.c_off + (i / p.n) * p.ldc + col;
    if (p.accumulate == 1u) {
        s = c[at] + s;
    }
    c[at] = s;
}
