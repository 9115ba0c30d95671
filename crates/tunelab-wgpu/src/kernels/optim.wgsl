// AdamW with PyTorch's semantics (torch.optim.AdamW, foreach=False): decoupled weight decay
// first, then m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
// p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), with g = grad * grad_scale (clipping).
// The host computes every constant in f64 and passes it rounded to f32, as candle does.

struct Params {
    n: u32,
    row_stride: u32,
    grad_scale: f32,
    decay: f32,        // 1 - lr * weight_decay
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_sqrt_bc2: f32, // 1 / sqrt(1 - beta2^t)
    eps: f32,
    step_size: f32,    // lr / (1 - beta1^t)
    pad: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read> m_in: array<f32>;
@group(0) @binding(4) var<storage, read> v_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> param_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> m_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> v_out: array<f32>;

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.row_stride + wg.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * p.grad_scale;
    let w = param[i] * p.decay;
    let m = m_in[i] * p.beta1 + g * p.one_minus_beta1;
    let v = v_in[i] * p.beta2 + (g * g) * p.one_minus_beta2;
    let denom = sqrt(v) * p.inv_sqrt_bc2 + p.eps;
    param_out[i] = w - (m / denom) * p.step_size;
    m_out[i] = m;
    v_out[i] = v;
}
