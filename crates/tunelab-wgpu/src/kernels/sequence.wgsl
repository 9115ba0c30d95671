// The sequence axis of (B, T, C) tensors.
//
// concat_seq: out (B, ta + tb, C) = [a (B, ta, C), b (B, tb, C)] along T
// slice_seq:  out (B, len, C) = a[:, start .. start + len, :]
// One thread per output value.

struct Params {
    batch: u32,
    ta: u32,
    tb: u32,     // concat: b's length; slice: the output length
    c: u32,
    start: u32,
    row_stride: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn concat_seq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.row_stride + wg.x) * 256u + lid;
    let t_all = p.ta + p.tb;
    if (i < p.batch * t_all * p.c) {
        let col = i % p.c;
        let t = (i / p.c) % t_all;
        let bt = i / (p.c * t_all);
        if (t < p.ta) {
            out[i] = a[(bt * p.ta + t) * p.c + col];
        } else {
            out[i] = b[(bt * p.tb + (t - p.ta)) * p.c + col];
        }
    }
}

@compute @workgroup_size(256)
fn slice_seq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (i < p.batch * p.tb * p.c) {
        let col = i % p.c;
        let t = (i / p.c) % p.tb;
        let bt = i / (p.c * p.tb);
        out[i] = a[(bt * p.ta + p.start + t) * p.c + col];
    }
}
