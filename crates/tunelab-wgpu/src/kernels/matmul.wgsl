// Tiled matrix multiply: C[b] = op(A[b]) @ op(B[b]) (+ bias), row-major.
//
// op(A) is (M, K): A is stored (M, K), or (K, M) when ta = 1. op(B) is (K, N): B is stored
// (K, N), or (N, K) when tb = 1. Batches are `a_batch`, `b_batch` (0: B shared by every
// batch, a weight) and `c_batch` elements apart. With has_bias = 1, bias[n] is added.
//
// Each workgroup of 16x16 threads computes a 64x64 tile of C, each thread 4x4 outputs spaced
// 16 apart (so neighbouring threads read neighbouring shared-memory words), over K in steps
// of 16 staged through workgroup memory. Tiles load along the contiguous axis of each input
// whichever its transpose flag, so global reads coalesce.
//
// Dispatch: (ceil(N/64), row tiles, batches); `row_tile0` and `batch0` offset the y and z
// workgroup ids when a shape needs more workgroups than one dispatch dimension allows.

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
    batch0: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// [kk][m] and [kk][n]
var<workgroup> a_tile: array<f32, 1024>;
var<workgroup> b_tile: array<f32, 1024>;

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let batch = wg.z + p.batch0;
    let row0 = (wg.y + p.row_tile0) * TM;
    let col0 = wg.x * TN;
    let tid = lid.y * 16u + lid.x;
    let a_base = batch * p.a_batch;
    let b_base = batch * p.b_batch;

    // Four rows of four outputs in registers (no dynamically indexed arrays, which drivers
    // may place in slow local memory).
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.k; k0 = k0 + TK) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = tid + r * 256u;
            // A tile (TM x TK)
            var m: u32;
            var ka: u32;
            if (p.ta == 0u) {
                m = e / TK;
                ka = e % TK;
            } else {
                ka = e / TM;
                m = e % TM;
            }
            let gm = row0 + m;
            let gka = k0 + ka;
            var av = 0.0;
            if (gm < p.m && gka < p.k) {
                if (p.ta == 0u) {
                    av = a[a_base + gm * p.k + gka];
                } else {
                    av = a[a_base + gka * p.m + gm];
                }
            }
            a_tile[ka * TM + m] = av;
            // B tile (TK x TN)
            var n: u32;
            var kb: u32;
            if (p.tb == 0u) {
                kb = e / TN;
                n = e % TN;
            } else {
                n = e / TK;
                kb = e % TK;
            }
            let gn = col0 + n;
            let gkb = k0 + kb;
            var bv = 0.0;
            if (gn < p.n && gkb < p.k) {
                if (p.tb == 0u) {
                    bv = b[b_base + gkb * p.n + gn];
                } else {
                    bv = b[b_base + gn * p.k + gkb];
                }
            }
            b_tile[kb * TN + n] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let ab = kk * TM + lid.y;
            let bb = kk * TN + lid.x;
            let bv = vec4<f32>(b_tile[bb], b_tile[bb + 16u], b_tile[bb + 32u], b_tile[bb + 48u]);
            acc0 = acc0 + a_tile[ab] * bv;
            acc1 = acc1 + a_tile[ab + 16u] * bv;
            acc2 = acc2 + a_tile[ab + 32u] * bv;
            acc3 = acc3 + a_tile[ab + 48u] * bv;
        }
        workgroupBarrier();
    }

    store(batch, row0 + lid.y, col0 + lid.x, acc0);
    store(batch, row0 + lid.y + 16u, col0 + lid.x, acc1);
    store(batch, row0 + lid.y + 32u, col0 + lid.x, acc2);
    store(batch, row0 + lid.y + 48u, col0 + lid.x, acc3);
}

// Writes one thread's four outputs of row `gm`: columns gn, gn+16, gn+32, gn+48.
fn store(batch: u32, gm: u32, gn: u32, v: vec4<f32>) {
    if (gm >= p.m) {
        return;
    }
    let base = batch * p.c_batch + gm * p.n;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let col = gn + 16u * j;
        if (col < p.n) {
            var x = v[j];
            if (p.has_bias == 1u) {
                x = x + bias[col];
            }
            c[base + col] = x;
        }
    }
}

// The same product with 128x128 tiles for shapes with many tiles (big GPUs): 256 threads,
// each computing 8x8 outputs — rows ty*4..ty*4+3 and 64+ty*4.., columns tx*4..tx*4+3 and
// 64+tx*4.. — so every shared-memory read is a vec4 that neighbouring threads take from
// neighbouring words, and each step of kk does 64 multiply-adds for four vec4 reads.
// Dispatch: (ceil(N/128), row tiles of 128, batches).

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;

// [kk][m / 4] and [kk][n / 4]
var<workgroup> a_big: array<vec4<f32>, 256>;
var<workgroup> b_big: array<vec4<f32>, 256>;

@compute @workgroup_size(256, 1, 1)
fn matmul_big(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let batch = wg.z + p.batch0;
    let row0 = (wg.y + p.row_tile0) * BM;
    let col0 = wg.x * BN;
    let tx = tid % 16u;
    let ty = tid / 16u;
    let a_base = batch * p.a_batch;
    let b_base = batch * p.b_batch;

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

    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        // Each thread stages four values of A's 128x8 tile and four of B's 8x128 tile,
        // reading along whichever axis is contiguous in memory.
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = tid + r * 256u;
            var m: u32;
            var ka: u32;
            if (p.ta == 0u) {
                m = e / BK;
                ka = e % BK;
            } else {
                ka = e / BM;
                m = e % BM;
            }
            let gm = row0 + m;
            let gka = k0 + ka;
            var av = 0.0;
            if (gm < p.m && gka < p.k) {
                if (p.ta == 0u) {
                    av = a[a_base + gm * p.k + gka];
                } else {
                    av = a[a_base + gka * p.m + gm];
                }
            }
            a_big[ka * 32u + m / 4u][m % 4u] = av;
            var n: u32;
            var kb: u32;
            if (p.tb == 0u) {
                kb = e / BN;
                n = e % BN;
            } else {
                n = e / BK;
                kb = e % BK;
            }
            let gn = col0 + n;
            let gkb = k0 + kb;
            var bv = 0.0;
            if (gn < p.n && gkb < p.k) {
                if (p.tb == 0u) {
                    bv = b[b_base + gkb * p.n + gn];
                } else {
                    bv = b[b_base + gn * p.k + gkb];
                }
            }
            b_big[kb * 32u + n / 4u][n % 4u] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let a0 = a_big[kk * 32u + ty];
            let a1 = a_big[kk * 32u + 16u + ty];
            let b0 = b_big[kk * 32u + tx];
            let b1 = b_big[kk * 32u + 16u + tx];
            c00 = c00 + a0.x * b0;
            c01 = c01 + a0.x * b1;
            c10 = c10 + a0.y * b0;
            c11 = c11 + a0.y * b1;
            c20 = c20 + a0.z * b0;
            c21 = c21 + a0.z * b1;
            c30 = c30 + a0.w * b0;
            c31 = c31 + a0.w * b1;
            c40 = c40 + a1.x * b0;
            c41 = c41 + a1.x * b1;
            c50 = c50 + a1.y * b0;
            c51 = c51 + a1.y * b1;
            c60 = c60 + a1.z * b0;
            c61 = c61 + a1.z * b1;
            c70 = c70 + a1.w * b0;
            c71 = c71 + a1.w * b1;
        }
        workgroupBarrier();
    }

    let r0 = row0 + ty * 4u;
    let r1 = row0 + 64u + ty * 4u;
    let q0 = col0 + tx * 4u;
    let q1 = col0 + 64u + tx * 4u;
    store4(batch, r0, q0, c00);
    store4(batch, r0, q1, c01);
    store4(batch, r0 + 1u, q0, c10);
    store4(batch, r0 + 1u, q1, c11);
    store4(batch, r0 + 2u, q0, c20);
    store4(batch, r0 + 2u, q1, c21);
    store4(batch, r0 + 3u, q0, c30);
    store4(batch, r0 + 3u, q1, c31);
    store4(batch, r1, q0, c40);
    store4(batch, r1, q1, c41);
    store4(batch, r1 + 1u, q0, c50);
    store4(batch, r1 + 1u, q1, c51);
    store4(batch, r1 + 2u, q0, c60);
    store4(batch, r1 + 2u, q1, c61);
    store4(batch, r1 + 3u, q0, c70);
    store4(batch, r1 + 3u, q1, c71);
}

// Writes four consecutive outputs of row `gm` from column `gn` (those inside C).
fn store4(batch: u32, gm: u32, gn: u32, v: vec4<f32>) {
    if (gm >= p.m) {
        return;
    }
    let base = batch * p.c_batch + gm * p.n;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let col = gn + j;
        if (col < p.n) {
            var x = v[j];
            if (p.has_bias == 1u) {
                x = x + bias[col];
            }
            c[base + col] = x;
        }
    }
}
