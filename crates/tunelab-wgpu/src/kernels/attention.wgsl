// Fused multi-head scaled dot-product attention, forward and backward.
//
// q, k, v, out, dq, dk, dv: (B, T, H*D), element (b, t, h, d) at ((b*T + t)*H + h)*D + d.
// lse, rowdot: (B, H, T). key_mask (B, T): 1 for tokens, 0 for padding, applied as the
// additive (1 - m) * f32::MIN that transformers builds; causal adds f32::MIN above the
// diagonal. Scores are s_ij = (q_i . k_j) / sqrt(D) + masks; p_ij = exp(s_ij - lse_i).
//
// attn_forward:  one workgroup per (b, h, i); keys in chunks of 64 through workgroup memory:
//                pass 1 max, pass 2 sum of exponentials (lse), pass 3 out_i = sum_j p_ij v_j.
//                Writes out (binding 5) and lse (binding 6).
// attn_rowdot:   one workgroup per (b, h, i): stats[BHT + r] = dO_i . O_i. The host first
//                copies lse into stats[0 .. BHT], so the backward kernels read one buffer.
// attn_backward_q: one workgroup per (b, h, i):
//                dq_i = scale * sum_j p_ij (dO_i . v_j - rowdot_i) k_j          (binding 5)
// attn_backward_kv: one workgroup per (b, h, j), over query chunks:
//                dk_j = scale * sum_i p_ij (dO_i . v_j - rowdot_i) q_i          (binding 5)
//                dv_j = sum_i p_ij dO_i                                        (binding 6)
// At most 8 storage buffers per entry point (WebGPU's default limit). Every sum runs in a
// fixed order: results are deterministic.

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
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> aux: array<f32>;
// backward only
@group(0) @binding(7) var<storage, read> d_out: array<f32>;
@group(0) @binding(8) var<storage, read> fwd_out: array<f32>;
@group(0) @binding(9) var<storage, read_write> stats: array<f32>;

const WG: u32 = 64u;
const F32_MIN: f32 = -0x1.fffffep+127f;

var<workgroup> vec_i: array<f32, 512>;   // q_i or k_j (D <= 512)
var<workgroup> vec_o: array<f32, 512>;   // dO_i or v_j
var<workgroup> probs: array<f32, 64>;
var<workgroup> dsc: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

fn base(b: u32, t: u32, h: u32) -> u32 {
    return ((b * p.t + t) * p.heads + h) * p.d;
}

fn score(b: u32, h: u32, i: u32, j: u32) -> f32 {
    // q_i in vec_i; k_j from global.
    let kb = base(b, j, h);
    var s = 0.0;
    for (var e = 0u; e < p.d; e = e + 1u) {
        s = s + vec_i[e] * k[kb + e];
    }
    s = s * p.scale;
    if (p.has_mask == 1u) {
        s = s + (1.0 - key_mask[b * p.t + j]) * F32_MIN;
    }
    if (p.causal == 1u && j > i) {
        s = s + F32_MIN;
    }
    return s;
}

fn reduce_max(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// (b, h, i) of this workgroup, and whether it is inside the problem.
fn row_of(wg: vec3<u32>) -> vec4<u32> {
    let r = wg.y * p.row_stride + wg.x;
    let i = r % p.t;
    let h = (r / p.t) % p.heads;
    let b = r / (p.t * p.heads);
    return vec4<u32>(b, h, i, u32(r < p.batch * p.heads * p.t));
}

@compute @workgroup_size(64)
fn attn_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wg);
    let b = row.x;
    let h = row.y;
    let i = row.z;
    let valid = row.w == 1u;
    if (valid) {
        for (var e = lid; e < p.d; e = e + WG) {
            vec_i[e] = q[base(b, i, h) + e];
        }
    }
    workgroupBarrier();
    var m = F32_MIN;
    if (valid) {
        for (var j = lid; j < p.t; j = j + WG) {
            m = max(m, score(b, h, i, j));
        }
    }
    let mx = reduce_max(lid, m);
    var s = 0.0;
    if (valid) {
        for (var j = lid; j < p.t; j = j + WG) {
            s = s + exp(score(b, h, i, j) - mx);
        }
    }
    let l = mx + log(reduce_sum(lid, s));
    // out_i[e] for e = lid, lid + 64, ... (at most 8 per thread: D <= 512).
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r = r + 1u) {
        acc[r] = 0.0;
    }
    for (var j0 = 0u; j0 < p.t; j0 = j0 + WG) {
        let j = j0 + lid;
        var pj = 0.0;
        if (valid && j < p.t) {
            pj = exp(score(b, h, i, j) - l);
        }
        probs[lid] = pj;
        workgroupBarrier();
        if (valid) {
            let n = min(WG, p.t - j0);
            for (var jj = 0u; jj < n; jj = jj + 1u) {
                let vb = base(b, j0 + jj, h);
                let pp = probs[jj];
                for (var r = 0u; r < 8u; r = r + 1u) {
                    let e = lid + r * WG;
                    if (e < p.d) {
                        acc[r] = acc[r] + pp * v[vb + e];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (valid) {
        for (var r = 0u; r < 8u; r = r + 1u) {
            let e = lid + r * WG;
            if (e < p.d) {
                out[base(b, i, h) + e] = acc[r];
            }
        }
        if (lid == 0u) {
            aux[(b * p.heads + h) * p.t + i] = l;
        }
    }
}

@compute @workgroup_size(64)
fn attn_rowdot(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wg);
    let valid = row.w == 1u;
    var part = 0.0;
    if (valid) {
        let ib = base(row.x, row.z, row.y);
        for (var e = lid; e < p.d; e = e + WG) {
            part = part + d_out[ib + e] * fwd_out[ib + e];
        }
    }
    let rd = reduce_sum(lid, part);
    if (valid && lid == 0u) {
        stats[p.batch * p.heads * p.t + (row.x * p.heads + row.y) * p.t + row.z] = rd;
    }
}

@compute @workgroup_size(64)
fn attn_backward_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wg);
    let b = row.x;
    let h = row.y;
    let i = row.z;
    let valid = row.w == 1u;
    if (valid) {
        let ib = base(b, i, h);
        for (var e = lid; e < p.d; e = e + WG) {
            vec_i[e] = q[ib + e];
            vec_o[e] = d_out[ib + e];
        }
    }
    workgroupBarrier();
    var l = 0.0;
    var rd = 0.0;
    if (valid) {
        let r = (b * p.heads + h) * p.t + i;
        l = stats[r];
        rd = stats[p.batch * p.heads * p.t + r];
    }
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r = r + 1u) {
        acc[r] = 0.0;
    }
    for (var j0 = 0u; j0 < p.t; j0 = j0 + WG) {
        let j = j0 + lid;
        var ds = 0.0;
        if (valid && j < p.t) {
            let pj = exp(score(b, h, i, j) - l);
            let vb = base(b, j, h);
            var dp = 0.0;
            for (var e = 0u; e < p.d; e = e + 1u) {
                dp = dp + vec_o[e] * v[vb + e];
            }
            ds = pj * (dp - rd) * p.scale;
        }
        dsc[lid] = ds;
        workgroupBarrier();
        if (valid) {
            let n = min(WG, p.t - j0);
            for (var jj = 0u; jj < n; jj = jj + 1u) {
                let kb = base(b, j0 + jj, h);
                let g = dsc[jj];
                for (var r = 0u; r < 8u; r = r + 1u) {
                    let e = lid + r * WG;
                    if (e < p.d) {
                        acc[r] = acc[r] + g * k[kb + e];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (valid) {
        for (var r = 0u; r < 8u; r = r + 1u) {
            let e = lid + r * WG;
            if (e < p.d) {
                out[base(b, i, h) + e] = acc[r];
            }
        }
    }
}

// Here the workgroup's row is a key j.
@compute @workgroup_size(64)
fn attn_backward_kv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wg);
    let b = row.x;
    let h = row.y;
    let j = row.z;
    let valid = row.w == 1u;
    if (valid) {
        let jb = base(b, j, h);
        for (var e = lid; e < p.d; e = e + WG) {
            vec_i[e] = k[jb + e];
            vec_o[e] = v[jb + e];
        }
    }
    workgroupBarrier();
    var mask_bias = 0.0;
    if (valid && p.has_mask == 1u) {
        mask_bias = (1.0 - key_mask[b * p.t + j]) * F32_MIN;
    }
    var acc_k: array<f32, 8>;
    var acc_v: array<f32, 8>;
    for (var r = 0u; r < 8u; r = r + 1u) {
        acc_k[r] = 0.0;
        acc_v[r] = 0.0;
    }
    for (var i0 = 0u; i0 < p.t; i0 = i0 + WG) {
        let i = i0 + lid;
        var pij = 0.0;
        var ds = 0.0;
        if (valid && i < p.t) {
            let ib = base(b, i, h);
            var s = 0.0;
            var dp = 0.0;
            for (var e = 0u; e < p.d; e = e + 1u) {
                s = s + q[ib + e] * vec_i[e];
                dp = dp + d_out[ib + e] * vec_o[e];
            }
            s = s * p.scale + mask_bias;
            if (p.causal == 1u && j > i) {
                s = s + F32_MIN;
            }
            let r = (b * p.heads + h) * p.t + i;
            pij = exp(s - stats[r]);
            ds = pij * (dp - stats[p.batch * p.heads * p.t + r]) * p.scale;
        }
        probs[lid] = pij;
        dsc[lid] = ds;
        workgroupBarrier();
        if (valid) {
            let n = min(WG, p.t - i0);
            for (var ii = 0u; ii < n; ii = ii + 1u) {
                let ib = base(b, i0 + ii, h);
                let pp = probs[ii];
                let g = dsc[ii];
                for (var r = 0u; r < 8u; r = r + 1u) {
                    let e = lid + r * WG;
                    if (e < p.d) {
                        acc_v[r] = acc_v[r] + pp * d_out[ib + e];
                        acc_k[r] = acc_k[r] + g * q[ib + e];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (valid) {
        for (var r = 0u; r < 8u; r = r + 1u) {
            let e = lid + r * WG;
            if (e < p.d) {
                out[base(b, j, h) + e] = acc_k[r];
                aux[base(b, j, h) + e] = acc_v[r];
            }
        }
    }
}
