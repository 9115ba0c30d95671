// Layer norm over the last dim of x (rows, c): y = (x - mean) * rstd * gamma + beta with
// rstd = 1 / sqrt(var + eps) (biased variance, two passes for accuracy).
//
// ln_forward:     one 256-thread workgroup per row; writes y, mean[row], rstd[row].
// ln_backward_dx: one workgroup per row:
//                 dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.
// ln_backward_params: one thread per column, rows in order (deterministic):
//                 dgamma[c] = sum_r dy * xhat, dbeta[c] = sum_r dy.

struct Params {
    rows: u32,
    c: u32,
    row_stride: u32,
    eps: f32,
    // ln_backward_params: the first chunk's index in dparams (rows larger than one binding
    // are processed in parts, each writing its chunks' partial sums after the last part's).
    chunk0: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;

var<workgroup> red: array<f32, 256>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn ln_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.row_stride + wg.x;
    let valid = row < p.rows;
    let base = row * p.c;
    var s = 0.0;
    if (valid) {
        for (var j = lid; j < p.c; j = j + 256u) {
            s = s + x[base + j];
        }
    }
    let mean = reduce_sum(lid, s) / f32(p.c);
    var q = 0.0;
    if (valid) {
        for (var j = lid; j < p.c; j = j + 256u) {
            let d = x[base + j] - mean;
            q = q + d * d;
        }
    }
    let rstd = inverseSqrt(reduce_sum(lid, q) / f32(p.c) + p.eps);
    if (valid) {
        for (var j = lid; j < p.c; j = j + 256u) {
            y[base + j] = (x[base + j] - mean) * rstd * gamma[j] + beta[j];
        }
        if (lid == 0u) {
            mean_out[row] = mean;
            rstd_out[row] = rstd;
        }
    }
}
