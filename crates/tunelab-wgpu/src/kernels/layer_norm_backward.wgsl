// Layer norm backward (see layer_norm.wgsl for the formulas).

struct Params {
    rows: u32,
    c: u32,
    row_stride: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> mean_in: array<f32>;
@group(0) @binding(4) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> dparams: array<f32>;

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
fn ln_backward_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.row_stride + wg.x;
    let valid = row < p.rows;
    let base = row * p.c;
    var mean = 0.0;
    var rstd = 0.0;
    if (valid) {
        mean = mean_in[row];
        rstd = rstd_in[row];
    }
    var sg = 0.0;
    var sgx = 0.0;
    if (valid) {
        for (var j = lid; j < p.c; j = j + 256u) {
            let g = dy[base + j] * gamma[j];
            let xhat = (x[base + j] - mean) * rstd;
            sg = sg + g;
            sgx = sgx + g * xhat;
        }
    }
    let mg = reduce_sum(lid, sg) / f32(p.c);
    let mgx = reduce_sum(lid, sgx) / f32(p.c);
    if (valid) {
        for (var j = lid; j < p.c; j = j + 256u) {
            let g = dy[base + j] * gamma[j];
            let xhat = (x[base + j] - mean) * rstd;
            dx[base + j] = rstd * (g - mg - xhat * mgx);
        }
    }
}

// dparams holds dgamma (c values) then dbeta (c values).
@compute @workgroup_size(256)
fn ln_backward_params(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (j < p.c) {
        var dg = 0.0;
        var db = 0.0;
        for (var r = 0u; r < p.rows; r = r + 1u) {
            let d = dy[r * p.c + j];
            dg = dg + d * (x[r * p.c + j] - mean_in[r]) * rstd_in[r];
            db = db + d;
        }
        dparams[j] = dg;
        dparams[p.c + j] = db;
    }
}
