// Fused softmax cross-entropy over logits (rows, k) with labels (rows,) as u32; the label
// 0xFFFFFFFF (IGNORE_INDEX) contributes nothing. One 256-thread workgroup per row; the row's
// max and sum of exponentials are reduced in workgroup memory in a fixed order.
//
// ce_rows:     nll[row] = logsumexp(x[row]) - x[row, label]   (0 for ignored rows); the sum
//              over rows is taken by reduce.wgsl's sum pass, so the result is deterministic.
// ce_backward: dx[row, c] = scale * (softmax(x[row])[c] - [c == label])   (0 for ignored rows)

// Logits larger than one binding come in chunks of rows: `x` (and ce_backward's `out`) are
// bound at the chunk, while `labels` (and ce_rows' per-row `out`) are bound whole and read
// from row `row0`.
struct Params {
    rows: u32,
    k: u32,
    row_stride: u32,
    scale: f32,
    row0: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const IGNORE: u32 = 0xFFFFFFFFu;
var<workgroup> red: array<f32, 256>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

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

// The row's log-sum-exp (every thread gets it).
fn row_lse(row: u32, lid: u32, valid: bool) -> f32 {
    var m = -0x1.fffffep+127f;
    if (valid) {
        for (var c = lid; c < p.k; c = c + 256u) {
            m = max(m, x[row * p.k + c]);
        }
    }
    let mx = reduce_max(lid, m);
    var s = 0.0;
    if (valid) {
        for (var c = lid; c < p.k; c = c + 256u) {
            s = s + exp(x[row * p.k + c] - mx);
        }
    }
    let total = reduce_sum(lid, s);
    return mx + log(total);
}

@compute @workgroup_size(256)
fn ce_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.row_stride + wg.x;
    let valid = row < p.rows;
    let lse = row_lse(row, lid, valid);
    if (valid && lid == 0u) {
        let label = labels[p.row0 + row];
        if (label == IGNORE || label >= p.k) {
            out[p.row0 + row] = 0.0;
        } else {
            out[p.row0 + row] = lse - x[row * p.k + label];
        }
    }
}

@compute @workgroup_size(256)
fn ce_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.row_stride + wg.x;
    let valid = row < p.rows;
    let lse = row_lse(row, lid, valid);
    if (valid) {
        let label = labels[p.row0 + row];
        let ignored = label == IGNORE || label >= p.k;
        for (var c = lid; c < p.k; c = c + 256u) {
            var g = 0.0;
            if (!ignored) {
                g = exp(x[row * p.k + c] - lse);
                if (c == label) {
                    g = g - 1.0;
                }
                g = g * p.scale;
            }
            out[row * p.k + c] = g;
        }
    }
}
