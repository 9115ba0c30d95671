// Elementwise kernels.
//
// axpby: y[i] = alpha * x[i] + beta * y[i] for i < n, in place on y.
// Dispatch: ceil(n / 256) workgroups, split over x and y when that exceeds the per-dimension
// limit; the flat index is rebuilt from both dimensions (`row_stride` workgroups per row).

struct Params {
    n: u32,
    row_stride: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn axpby(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * params.row_stride + wg.x) * 256u + lid;
    if (i < params.n) {
        y[i] = params.alpha * x[i] + params.beta * y[i];
    }
}
