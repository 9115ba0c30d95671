// Reductions and broadcasts over a (rows, cols) matrix, row-major.
//
// add_bias:    out[r, c] = x[r, c] + bias[c]              one thread per element
// sum_to_last: out[c] = sum_r x[r, c]                      one thread per column, rows in order
// sum_squares: partial[w] = sum of x^2 over workgroup w's 256 * 8 values (fixed tree order),
//              then the same entry again over the partials (`square = 0`) until one remains.
// Every sum runs in a fixed order, so results are deterministic.

struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    row_stride: u32,
    square: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (i < p.n) {
        out[i] = x[i] + bias[i % p.cols];
    }
}

@compute @workgroup_size(256)
fn sum_to_last(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (c < p.cols) {
        var s = 0.0;
        for (var r = 0u; r < p.rows; r = r + 1u) {
            s = s + x[r * p.cols + c];
        }
        out[c] = s;
    }
}

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn sum_squares(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = wg.y * p.row_stride + wg.x;
    let base = w * 2048u;
    var s = 0.0;
    for (var j = 0u; j < 8u; j = j + 1u) {
        let i = base + j * 256u + lid;
        if (i < p.n) {
            let v = x[i];
            if (p.square == 1u) {
                s = s + v * v;
            } else {
                s = s + v;
            }
        }
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    // Workgroups past the end (a split dispatch's last row) write nothing; an empty input
    // still writes its zero.
    if (lid == 0u && (base < p.n || w == 0u)) {
        out[w] = partial[0];
    }
}
