// Elementwise kernels over n values.
//
// Binary:  out = a + b (add), a * b (mul), dy * gelu'(x) (gelu_backward: a = x, b = dy),
//          dy * (1 - y^2) (tanh_backward: a = y, b = dy), a * b[0] (scale_by: b is one value),
//          alpha * a + beta * b (axpby).
//          dy * act'(x) for GELU's tanh form, SiLU and ReLU (a = x, b = dy).
// Unary:   out = alpha * a (scale), gelu(a), gelu_tanh(a), silu(a), relu(a), tanh(a).
// GELU is the exact erf form (transformers' "gelu"); erf uses Abramowitz & Stegun 7.1.26
// (absolute error below 1.5e-7).
// Dispatch: ceil(n / 256) workgroups, split over x and y when that exceeds the per-dimension
// limit; the flat index is rebuilt from both dimensions (`row_stride` workgroups per row).

struct Params {
    n: u32,
    row_stride: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn index(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * params.row_stride + wg.x) * 256u + lid;
}

fn erf_approx(x: f32) -> f32 {
    let s = sign(x);
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-z * z));
}

const INV_SQRT2: f32 = 0.70710678118654752;
const INV_SQRT_2PI: f32 = 0.39894228040143268;

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        out[i] = a[i] + b[i];
    }
}

@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        out[i] = a[i] * b[i];
    }
}

@compute @workgroup_size(256)
fn axpby(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        out[i] = params.alpha * a[i] + params.beta * b[i];
    }
}

@compute @workgroup_size(256)
fn scale_by(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        out[i] = a[i] * b[0];
    }
}

@compute @workgroup_size(256)
fn gelu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        let x = a[i];
        let cdf = 0.5 * (1.0 + erf_approx(x * INV_SQRT2));
        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
        out[i] = b[i] * (cdf + x * pdf);
    }
}

@compute @workgroup_size(256)
fn tanh_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        let y = a[i];
        out[i] = b[i] * (1.0 - y * y);
    }
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        out[i] = params.alpha * a[i];
    }
}

@compute @workgroup_size(256)
fn gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        let x = a[i];
        out[i] = 0.5 * x * (1.0 + erf_approx(x * INV_SQRT2));
    }
}

@compute @workgroup_size(256)
fn tanh_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        out[i] = tanh(clamp(a[i], -15.0, 15.0));
    }
}

const SQRT_2_OVER_PI: f32 = 0.79788456080286536;
const GELU_CUBIC: f32 = 0.044715;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-clamp(x, -80.0, 80.0)));
}

@compute @workgroup_size(256)
fn gelu_tanh(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        let x = a[i];
        let t = tanh(clamp(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x), -15.0, 15.0));
        out[i] = 0.5 * x * (1.0 + t);
    }
}

@compute @workgroup_size(256)
fn gelu_tanh_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        let x = a[i];
        let x2 = x * x;
        let t = tanh(clamp(SQRT_2_OVER_PI * (x + GELU_CUBIC * x2 * x), -15.0, 15.0));
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x2);
        out[i] = b[i] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
    }
}

@compute @workgroup_size(256)
fn silu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        let x = a[i];
        out[i] = x * sigmoid(x);
    }
}

@compute @workgroup_size(256)
fn silu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        let x = a[i];
        let s = sigmoid(x);
        out[i] = b[i] * (s * (1.0 + x * (1.0 - s)));
    }
}

@compute @workgroup_size(256)
fn relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        out[i] = max(a[i], 0.0);
    }
}

@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < params.n) {
        out[i] = select(0.0, b[i], a[i] > 0.0);
    }
}
