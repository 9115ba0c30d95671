// Embedding rows and their gradient.
//
// gather:      out[i, c] = table[ids[i], c]                       one thread per output value
// scatter_add: out[uniq[u], c] += sum over j in starts[u]..starts[u+1] of dy[order[j], c]
//              one thread per (unique id, column); positions are visited in the order the host
//              sorted them (by id, then position), so the sum is deterministic. `out` must be
//              zero beforehand (`fill`).
// fill:        out[i] = value
//
// A table larger than one binding is bound in parts of rows: the gather reads, and the
// scatter writes, only ids in [v0, v0 + nv), the rows of the bound part. Likewise the gather's
// ids and output are bound in parts of positions, and the scatter's dy in parts of positions
// [p0, p0 + np): each part's sums are added to `out` in turn.

struct Params {
    n: u32,       // gather: ids; scatter: unique ids; fill: values
    c: u32,
    row_stride: u32,
    value: f32,
    v0: u32,
    nv: u32,
    p0: u32,
    np: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> order: array<u32>;
@group(0) @binding(5) var<storage, read> starts: array<u32>;

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (i < p.n * p.c) {
        let row = i / p.c;
        let col = i % p.c;
        let id = ids[row];
        if (id >= p.v0 && id - p.v0 < p.nv) {
            out[i] = table[(id - p.v0) * p.c + col];
        }
    }
}

// Here `table` is dy (positions, c) and `ids` the unique ids.
@compute @workgroup_size(256)
fn scatter_add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (i < p.n * p.c) {
        let u = i / p.c;
        let col = i % p.c;
        let id = ids[u];
        if (id < p.v0 || id - p.v0 >= p.nv) {
            return;
        }
        var s = 0.0;
        for (var j = starts[u]; j < starts[u + 1u]; j = j + 1u) {
            let pos = order[j];
            if (pos >= p.p0 && pos - p.p0 < p.np) {
                s = s + table[(pos - p.p0) * p.c + col];
            }
        }
        let at = (id - p.v0) * p.c + col;
        out[at] = out[at] + s;
    }
}

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (i < p.n) {
        out[i] = p.value;
    }
}
