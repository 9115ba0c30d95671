// Layer norm backward (see layer_norm.wgsl for the formulas).

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

// Partial sums of dgamma and dbeta over chunks of rows: workgroup (column block, chunk),
// 64 columns x 4 lanes; lane l sums rows chunk_start + l, + 4, ... in order, then the four
// lanes are added in order. dparams[chunk * 2c + j] = dgamma partial, [chunk * 2c + c + j] =
// dbeta partial; reduce.wgsl's sum_to_last adds the chunks (fixed order: deterministic).
// Here `row_stride` holds the rows per chunk.
var<workgroup> lanes_g: array<f32, 256>;
var<workgroup> lanes_b: array<f32, 256>;

@compute @workgroup_size(64, 4, 1)
fn ln_backward_params(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = wg.x * 64u + lid.x;
    let r0 = wg.y * p.row_stride;
    let r1 = min(r0 + p.row_stride, p.rows);
    var dg = 0.0;
    var db = 0.0;
    if (j < p.c) {
        for (var r = r0 + lid.y; r < r1; r = r + 4u) {
            let d = dy[r * p.c + j];
            dg = dg + d * (x[r * p.c + j] - mean_in[r]) * rstd_in[r];
            db = db + d;
        }
    }
    lanes_g[lid.y * 64u + lid.x] = dg;
    lanes_b[lid.y * 64u + lid.x] = db;
    workgroupBarrier();
    if (lid.y == 0u && j < p.c) {
        let x0 = lid.x;
        let o = (p.chunk0 + wg.y) * 2u * p.c;
        dparams[o + j] = lanes_g[x0] + lanes_g[64u + x0] + lanes_g[128u + x0] + lanes_g[192u + x0];
        dparams[o + p.c + j] = lanes_b[x0] + lanes_b[64u + x0] + lanes_b[128u + x0] + lanes_b[192u + x0];
    }
}
