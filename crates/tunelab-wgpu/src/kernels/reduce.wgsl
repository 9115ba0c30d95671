// Reductions and broadcasts over a (rows, cols) matrix, row-major.
//
// add_bias:    out[r, c] = x[r, c] + bias[c]              one thread per element
// scale_features: out[r, c] = x[r, c] * bias[c]           one thread per element
// sum_to_last: out[c] = sum_r x[r, c]                      one thread per column, rows in order
// col_partials: out[chunk, c] = sum of x[r, c] over the chunk's `n` rows: workgroup (column
//              block, chunk), 64 columns x 4 lanes, lane l summing rows start + l, + 4, ...
//              in order, then the lanes in order; sum_to_last then adds the chunks.
// sum_squares: partial[w] = sum of x^2 over workgroup w's 256 * 8 values (fixed tree order),
//              written at out_offset + w, then the same entry again over the partials
//              (`square = 0`) until one remains. Several tensors' first passes can write
//              side by side into one buffer and fold together (the global gradient norm).
// Every sum runs in a fixed order, so results are deterministic.

struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    row_stride: u32,
    square: u32,
    // sum_squares writes its workgroups' partials from here (several tensors' partials
    // side by side in one buffer).
    out_offset: u32,
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
fn scale_features(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (i < p.n) {
        out[i] = x[i] * bias[i % p.cols];
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

var<workgroup> lanes: array<f32, 256>;

@compute @workgroup_size(64, 4, 1)
fn col_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wg.x * 64u + lid.x;
    let r0 = wg.y * p.n;
    let r1 = min(r0 + p.n, p.rows);
    var s = 0.0;
    if (c < p.cols) {
        for (var r = r0 + lid.y; r < r1; r = r + 4u) {
            s = s + x[r * p.cols + c];
        }
    }
    lanes[lid.y * 64u + lid.x] = s;
    workgroupBarrier();
    if (lid.y == 0u && c < p.cols) {
        let i = lid.x;
        out[p.out_offset + wg.y * p.cols + c] = lanes[i] + lanes[64u + i] + lanes[128u + i] + lanes[192u + i];
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
        out[p.out_offset + w] = partial[0];
    }
}
