// Tiled matrix multiply on vec4 loads and stores: C[b] = op(A[b]) @ op(B[b]) (+ bias), for
// shapes whose M, N and K, and the views' row strides and offsets, are multiples of 4 (every
// transformer product; the scalar kernels in matmul.wgsl serve the rest). Same transpose
// flags, batching, views, split-K and dispatch as matmul.wgsl.
//
// A template (see kernels::matmul_vec4): the tile has RG x CG groups of 64 x 64 outputs and
// K slices of BK; the blocks marked `for` / `end` below are repeated with their variable
// replaced by 0, 1, ..., so that the K slice's steps, the accumulators and the staging loads
// are straight-line code on named registers and constant workgroup-memory offsets (no loop
// counter, no dynamically indexed vector).
//
// Each of the 256 threads computes RG * 4 rows (ty * 4 .. + 3, 64 apart) by CG * 4 columns
// (tx * 4 .. + 3, 64 apart), reading one vec4 of A and one of B per row and column group and
// step of K from workgroup memory. Slices are double-buffered: the next slice is fetched
// into registers while the current one is multiplied, then staged into the other buffer, so
// each slice costs one barrier.

// Params, the uniform `p` and job() come from matmul_common.wgsl, prepended.

@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;

// Specialised per kernel.
const RG: u32 = 2u;
const CG: u32 = 2u;
const BK: u32 = 8u;
// vec4 loads per thread and slice: BM * BK / 4 / 256 and BN * BK / 4 / 256.
const LA: u32 = 1u;
const LB: u32 = 1u;

const BM: u32 = 64u * RG;
const BN: u32 = 64u * CG;
// Workgroup rows [kk][m / 4] and [kk][n / 4], padded by one vec4: the transposed staging
// stores (A untransposed, B in PyTorch's weight layout) put threads of neighbouring K
// quarters four rows apart, which an unpadded row would map to the same banks.
const PAD: u32 = 1u;
const AROW: u32 = BM / 4u + PAD;
const BROW: u32 = BN / 4u + PAD;

var<workgroup> ash: array<array<array<vec4<f32>, AROW>, BK>, 2>;
var<workgroup> bsh: array<array<array<vec4<f32>, BROW>, BK>, 2>;

// The e-th vec4 of A's slice at K offset k0, along A's contiguous axis (zero outside the
// matrix and past the job's K range). `base` is the batch entry's first vec4.
fn load_a(base: u32, row0: u32, k0: u32, k_hi: u32, e: u32) -> vec4<f32> {
    if (p.ta == 0u) {
        let r = row0 + e / (BK / 4u);
        let kq = k0 + (e % (BK / 4u)) * 4u;
        if (r >= p.m || kq >= k_hi) {
            return vec4<f32>(0.0);
        }
        return a[base + (r * p.lda + kq) / 4u];
    }
    let kk = k0 + e / (BM / 4u);
    let mq = row0 + (e % (BM / 4u)) * 4u;
    if (kk >= k_hi || mq >= p.m) {
        return vec4<f32>(0.0);
    }
    return a[base + (kk * p.lda + mq) / 4u];
}

// The e-th vec4 of B's slice, likewise.
fn load_b(base: u32, col0: u32, k0: u32, k_hi: u32, e: u32) -> vec4<f32> {
    if (p.tb == 0u) {
        let kk = k0 + e / (BN / 4u);
        let nq = col0 + (e % (BN / 4u)) * 4u;
        if (kk >= k_hi || nq >= p.n) {
            return vec4<f32>(0.0);
        }
        return b[base + (kk * p.ldb + nq) / 4u];
    }
    let n = col0 + e / (BK / 4u);
    let kq = k0 + (e % (BK / 4u)) * 4u;
    if (n >= p.n || kq >= k_hi) {
        return vec4<f32>(0.0);
    }
    return b[base + (n * p.ldb + kq) / 4u];
}

// Writes four consecutive outputs of row `gm` from column `gn` (a multiple of 4), adding the
// bias when set and the old value with accumulate.
fn store4(c_base: u32, gm: u32, gn: u32, v: vec4<f32>) {
    if (gm >= p.m || gn >= p.n) {
        return;
    }
    var y = v;
    if (p.has_bias == 1u) {
        let q = p.bias_off + gn;
        y = y + vec4<f32>(bias[q], bias[q + 1u], bias[q + 2u], bias[q + 3u]);
    }
    let at = (c_base + gm * p.ldc + gn) / 4u;
    if (p.accumulate == 1u) {
        y = c[at] + y;
    }
    c[at] = y;
}

@compute @workgroup_size(256, 1, 1)
fn matmul_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let jb = job(wg.z);
    let row0 = (wg.y + p.row_tile0) * BM;
    let col0 = wg.x * BN;
    let tx = tid % 16u;
    let ty = tid / 16u;
    let a_base = (p.a_off + jb.batch * p.a_batch) / 4u;
    let b_base = (p.b_off + jb.batch * p.b_batch) / 4u;

    //# for $r in 0..RG
    //# for $i in 0..4
    //# for $c in 0..CG
    var acc$r$i$c = vec4<f32>(0.0);
    //# end
    //# end
    //# end

    // Stage the first slice into buffer 0.
    var k0 = jb.k_lo;
    //# for $l in 0..LA
    var fa$l = load_a(a_base, row0, k0, jb.k_hi, tid + 256u * $lu);
    //# end
    //# for $l in 0..LB
    var fb$l = load_b(b_base, col0, k0, jb.k_hi, tid + 256u * $lu);
    //# end
    //# for $l in 0..LA
    stage_a0(tid + 256u * $lu, fa$l);
    //# end
    //# for $l in 0..LB
    stage_b0(tid + 256u * $lu, fb$l);
    //# end
    workgroupBarrier();

    loop {
        //# for $s in 0..2
        {
            let next = k0 + BK;
            let more = next < jb.k_hi;
            if (more) {
                //# for $l in 0..LA
                fa$l = load_a(a_base, row0, next, jb.k_hi, tid + 256u * $lu);
                //# end
                //# for $l in 0..LB
                fb$l = load_b(b_base, col0, next, jb.k_hi, tid + 256u * $lu);
                //# end
            }
            //# for $k in 0..BK
            {
                //# for $r in 0..RG
                let av$r = ash[$su][$ku][ty + 16u * $ru];
                //# end
                //# for $c in 0..CG
                let bv$c = bsh[$su][$ku][tx + 16u * $cu];
                //# end
                //# for $r in 0..RG
                //# for $i in 0..4
                //# for $c in 0..CG
                acc$r$i$c = fma(vec4<f32>(av$r[$iu]), bv$c, acc$r$i$c);
                //# end
                //# end
                //# end
            }
            //# end
            if (!more) {
                break;
            }
            //# for $l in 0..LA
            stage_a_other$s(tid + 256u * $lu, fa$l);
            //# end
            //# for $l in 0..LB
            stage_b_other$s(tid + 256u * $lu, fb$l);
            //# end
            workgroupBarrier();
            k0 = next;
        }
        //# end
    }

    //# for $r in 0..RG
    //# for $i in 0..4
    //# for $c in 0..CG
    store4(jb.c_base, row0 + 64u * $ru + ty * 4u + $iu, col0 + 64u * $cu + tx * 4u, acc$r$i$c);
    //# end
    //# end
    //# end
}

// Staging: the e-th vec4 of a slice into buffer s (`stage_a0` / `stage_a1`; the phase that
// reads buffer s stages into the other, `stage_a_other0` = `stage_a1`). A vec4 read along
// the transposed axis is one store; one read along K is four scalar stores, one per row of K.
//# for $s in 0..2
fn stage_a$s(e: u32, v: vec4<f32>) {
    if (p.ta == 0u) {
        let m = e / (BK / 4u);
        let kq = (e % (BK / 4u)) * 4u;
        ash[$su][kq][m / 4u][m % 4u] = v.x;
        ash[$su][kq + 1u][m / 4u][m % 4u] = v.y;
        ash[$su][kq + 2u][m / 4u][m % 4u] = v.z;
        ash[$su][kq + 3u][m / 4u][m % 4u] = v.w;
    } else {
        ash[$su][e / (BM / 4u)][e % (BM / 4u)] = v;
    }
}

fn stage_b$s(e: u32, v: vec4<f32>) {
    if (p.tb == 0u) {
        bsh[$su][e / (BN / 4u)][e % (BN / 4u)] = v;
    } else {
        let n = e / (BK / 4u);
        let kq = (e % (BK / 4u)) * 4u;
        bsh[$su][kq][n / 4u][n % 4u] = v.x;
        bsh[$su][kq + 1u][n / 4u][n % 4u] = v.y;
        bsh[$su][kq + 2u][n / 4u][n % 4u] = v.z;
        bsh[$su][kq + 3u][n / 4u][n % 4u] = v.w;
    }
}
//# end

fn stage_a_other0(e: u32, v: vec4<f32>) {
    stage_a1(e, v);
}

fn stage_a_other1(e: u32, v: vec4<f32>) {
    stage_a0(e, v);
}

fn stage_b_other0(e: u32, v: vec4<f32>) {
    stage_b1(e, v);
}

fn stage_b_other1(e: u32, v: vec4<f32>) {
    stage_b0(e, v);
}
