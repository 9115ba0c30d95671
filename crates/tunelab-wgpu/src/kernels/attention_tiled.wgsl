// Fused multi-head attention, forward and backward, for head sizes D of 16, 32 and 64. This
// is a template: `kernels::attention_tiled` sets the `const D` line below and repeats every
// line holding `$e` once per vec4 of a head (e = 0 .. D/4 - 1, `$e` replaced by e), so each
// row's vectors and accumulators are named registers — NVIDIA's Vulkan compiler keeps
// function-scope arrays, even ones indexed only by constant-bounded loops, in local memory.
// Same layouts, masks and results as attention.wgsl (the general kernel, which the host uses
// for other head sizes):
//
// q, k, v, out, dq, dk, dv: (B, T, H*D), element (b, t, h, d) at ((b*T + t)*H + h)*D + d,
// read here as vec4s. lse, rowdot: (B, H, T). key_mask (B, T): 1 for tokens, 0 for padding,
// applied as the additive (1 - m) * f32::MIN that transformers builds; causal adds f32::MIN
// above the diagonal. s_ij = (q_i . k_j) / sqrt(D) + masks; p_ij = exp(s_ij - lse_i).
//
// One thread per query row (forward, dq) or key row (dk, dv), ROWS rows per workgroup. The
// other side's rows stream through workgroup memory in blocks of BJ; the row's own vectors
// and accumulators stay in registers. The forward keeps a running max and rescales its sums
// when it grows (online softmax). Every sum runs in a fixed order: results are deterministic.
//
// attn_forward:     out_i = sum_j p_ij v_j (binding 5), lse_i (binding 6).
// attn_backward_q:  dq_i = scale * sum_j p_ij (dO_i . v_j - rowdot_i) k_j        (binding 5)
// attn_backward_kv: dk_j = scale * sum_i p_ij (dO_i . v_j - rowdot_i) q_i        (binding 5)
//                   dv_j = sum_i p_ij dO_i                                       (binding 6)
// stats (binding 9) holds lse in [0, BHT) and rowdot_i = dO_i . O_i in [BHT, 2 BHT)
// (attention.wgsl's attn_rowdot fills the second half).
// Dispatch: B * H * ceil(T / ROWS) workgroups, split as (row_stride, rows).

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

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> key_mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> aux: array<f32>;
@group(0) @binding(7) var<storage, read> d_out: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> stats: array<f32>;

const D: u32 = 32u;
const DV: u32 = D / 4u;
// Rows of the streamed side per block: two blocks of BJ x D values take 8 KiB.
const BJ: u32 = 1024u / D;
const ROWS: u32 = 32u;
const F32_MIN: f32 = -0x1.fffffep+127f;

var<workgroup> blk_a: array<vec4<f32>, 256>;
var<workgroup> blk_b: array<vec4<f32>, 256>;
var<workgroup> blk_s: array<f32, 64>;
var<workgroup> blk_t: array<f32, 64>;

// The vec4 index of row t of head h in batch b.
fn row4(b: u32, t: u32, h: u32) -> u32 {
    return ((b * p.t + t) * p.heads + h) * DV;
}

// (b, h, first row of the block) of this workgroup; x = B * H when it is past the end.
fn block_of(wg: vec3<u32>) -> vec3<u32> {
    let g = wg.y * p.row_stride + wg.x;
    let blocks = (p.t + ROWS - 1u) / ROWS;
    let bh = g / blocks;
    return vec3<u32>(bh, 0u, (g % blocks) * ROWS);
}

// Stages keys j0 .. j0 + BJ of (b, h): k in blk_a, v in blk_b (zeros past the end) and each
// key's mask bias in blk_s. The caller then waits at a barrier.
fn stage_keys(b: u32, h: u32, j0: u32, lid: u32) {
    for (var x = lid; x < BJ * DV; x = x + ROWS) {
        let j = j0 + x / DV;
        var kv = vec4<f32>(0.0);
        var vv = vec4<f32>(0.0);
        if (j < p.t) {
            let jb = row4(b, j, h) + x % DV;
            kv = k[jb];
            vv = v[jb];
        }
        blk_a[x] = kv;
        blk_b[x] = vv;
    }
    for (var jj = lid; jj < BJ; jj = jj + ROWS) {
        var bias = 0.0;
        if (p.has_mask == 1u && j0 + jj < p.t) {
            bias = (1.0 - key_mask[b * p.t + j0 + jj]) * F32_MIN;
        }
        blk_s[jj] = bias;
    }
}

@compute @workgroup_size(32)
fn attn_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = block_of(wg);
    if (blk.x >= p.batch * p.heads) {
        return;
    }
    let b = blk.x / p.heads;
    let h = blk.x % p.heads;
    let i = blk.z + lid;
    let ic = min(i, p.t - 1u);
    let ib = row4(b, ic, h);
    let q$e = q[ib + $eu];
    var o$e = vec4<f32>(0.0);
    var m = F32_MIN;
    var l = 0.0;
    for (var j0 = 0u; j0 < p.t; j0 = j0 + BJ) {
        stage_keys(b, h, j0, lid);
        workgroupBarrier();
        let n = min(BJ, p.t - j0);
        for (var jj = 0u; jj < n; jj = jj + 1u) {
            let kb = jj * DV;
            var acc = 0.0;
            acc = acc + dot(q$e, blk_a[kb + $eu]);
            var sc = acc * p.scale + blk_s[jj];
            if (p.causal == 1u && j0 + jj > ic) {
                sc = sc + F32_MIN;
            }
            if (sc > m) {
                let corr = exp(m - sc);
                l = l * corr;
                o$e = o$e * corr;
                m = sc;
            }
            let pj = exp(sc - m);
            l = l + pj;
            o$e = o$e + pj * blk_b[kb + $eu];
        }
        workgroupBarrier();
    }
    if (i < p.t) {
        let inv = 1.0 / l;
        out[ib + $eu] = o$e * inv;
        aux[(b * p.heads + h) * p.t + i] = m + log(l);
    }
}

@compute @workgroup_size(32)
fn attn_backward_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = block_of(wg);
    if (blk.x >= p.batch * p.heads) {
        return;
    }
    let b = blk.x / p.heads;
    let h = blk.x % p.heads;
    let i = blk.z + lid;
    let ic = min(i, p.t - 1u);
    let ib = row4(b, ic, h);
    let r = (b * p.heads + h) * p.t + ic;
    let lse = stats[r];
    let rd = stats[p.batch * p.heads * p.t + r];
    let q$e = q[ib + $eu];
    let g$e = d_out[ib + $eu];
    var dq$e = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < p.t; j0 = j0 + BJ) {
        stage_keys(b, h, j0, lid);
        workgroupBarrier();
        let n = min(BJ, p.t - j0);
        for (var jj = 0u; jj < n; jj = jj + 1u) {
            let kb = jj * DV;
            var sacc = 0.0;
            var dp = 0.0;
            sacc = sacc + dot(q$e, blk_a[kb + $eu]);
            dp = dp + dot(g$e, blk_b[kb + $eu]);
            var sc = sacc * p.scale + blk_s[jj];
            if (p.causal == 1u && j0 + jj > ic) {
                sc = sc + F32_MIN;
            }
            let ds = exp(sc - lse) * (dp - rd) * p.scale;
            dq$e = dq$e + ds * blk_a[kb + $eu];
        }
        workgroupBarrier();
    }
    if (i < p.t) {
        out[ib + $eu] = dq$e;
    }
}

// Here the thread's row is a key j; queries stream through workgroup memory.
@compute @workgroup_size(32)
fn attn_backward_kv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = block_of(wg);
    if (blk.x >= p.batch * p.heads) {
        return;
    }
    let b = blk.x / p.heads;
    let h = blk.x % p.heads;
    let j = blk.z + lid;
    let jc = min(j, p.t - 1u);
    let jb = row4(b, jc, h);
    let k$e = k[jb + $eu];
    let v$e = v[jb + $eu];
    var dk$e = vec4<f32>(0.0);
    var dv$e = vec4<f32>(0.0);
    var mask_bias = 0.0;
    if (p.has_mask == 1u) {
        mask_bias = (1.0 - key_mask[b * p.t + jc]) * F32_MIN;
    }
    let bht = p.batch * p.heads * p.t;
    for (var i0 = 0u; i0 < p.t; i0 = i0 + BJ) {
        for (var x = lid; x < BJ * DV; x = x + ROWS) {
            let i = i0 + x / DV;
            var qv = vec4<f32>(0.0);
            var gv = vec4<f32>(0.0);
            if (i < p.t) {
                let ib = row4(b, i, h) + x % DV;
                qv = q[ib];
                gv = d_out[ib];
            }
            blk_a[x] = qv;
            blk_b[x] = gv;
        }
        for (var ii = lid; ii < BJ; ii = ii + ROWS) {
            var lse = 0.0;
            var rd = 0.0;
            if (i0 + ii < p.t) {
                let r = (b * p.heads + h) * p.t + i0 + ii;
                lse = stats[r];
                rd = stats[bht + r];
            }
            blk_s[ii] = lse;
            blk_t[ii] = rd;
        }
        workgroupBarrier();
        let n = min(BJ, p.t - i0);
        for (var ii = 0u; ii < n; ii = ii + 1u) {
            let qb = ii * DV;
            var sacc = 0.0;
            var dp = 0.0;
            sacc = sacc + dot(blk_a[qb + $eu], k$e);
            dp = dp + dot(blk_b[qb + $eu], v$e);
            var sc = sacc * p.scale + mask_bias;
            if (p.causal == 1u && jc > i0 + ii) {
                sc = sc + F32_MIN;
            }
            let pij = exp(sc - blk_s[ii]);
            let ds = pij * (dp - blk_t[ii]) * p.scale;
            dv$e = dv$e + pij * blk_b[qb + $eu];
            dk$e = dk$e + ds * blk_a[qb + $eu];
        }
        workgroupBarrier();
    }
    if (j < p.t) {
        out[jb + $eu] = dk$e;
        aux[(jb + $eu) * 4u] = dv$e.x;
        aux[(jb + $eu) * 4u + 1u] = dv$e.y;
        aux[(jb + $eu) * 4u + 2u] = dv$e.z;
        aux[(jb + $eu) * 4u + 3u] = dv$e.w;
    }
}
