//! The AdamW update (`kernels/optim.wgsl`), PyTorch's semantics.

use super::{Part, Recorder, dispatch, groups_for, output, row_chunks, run_host, upload};
use crate::{Context, WgpuError, kernels};
use tunelab_core::backend::AdamW;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    row_stride: u32,
    grad_scale: f32,
    decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    step_size: f32,
    pad: f32,
}

/// Records one AdamW step over `n` values into new buffers `(param, m, v)_out` (in parts
/// where the parameter is larger than one binding).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &Context,
    enc: &mut Recorder,
    n: u32,
    hp: &AdamW,
    grad_scale: f32,
    inputs: [&wgpu::Buffer; 4],
    outputs: [&wgpu::Buffer; 3],
) -> Result<(), WgpuError> {
    // Constants in f64 first (PyTorch computes them in Python floats), then rounded.
    let t = i32::try_from(hp.step).unwrap_or(i32::MAX);
    let bc1 = 1.0 - hp.beta1.powi(t);
    let bc2 = 1.0 - hp.beta2.powi(t);
    let base = Params {
        n,
        row_stride: 0,
        grad_scale,
        decay: (1.0 - hp.lr * hp.weight_decay) as f32,
        beta1: hp.beta1 as f32,
        one_minus_beta1: (1.0 - hp.beta1) as f32,
        beta2: hp.beta2 as f32,
        one_minus_beta2: (1.0 - hp.beta2) as f32,
        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
        eps: hp.eps as f32,
        step_size: (hp.lr / bc1) as f32,
        pad: 0.0,
    };
    let [param, grad, m, v] = inputs;
    let [po, mo, vo] = outputs;
    for (first, count) in row_chunks(ctx, "adamw parameter", n, &[1])? {
        let (gx, gy) = groups_for(ctx, count, 256);
        let p = Params {
            n: count,
            row_stride: gx,
            ..base
        };
        let part = |b| Part::rows(b, 1, first, count);
        dispatch(
            ctx,
            enc,
            "optim.wgsl",
            kernels::OPTIM,
            "adamw",
            bytemuck::bytes_of(&p),
            &[
                (1, part(param)),
                (2, part(grad)),
                (3, part(m)),
                (4, part(v)),
                (5, part(po)),
                (6, part(mo)),
                (7, part(vo)),
            ],
            (gx, gy, 1),
        );
    }
    Ok(())
}

/// Host-to-host AdamW step: returns `(param, m, v)`.
pub async fn adamw(
    ctx: &Context,
    param: &[f32],
    grad: &[f32],
    m: &[f32],
    v: &[f32],
    grad_scale: f32,
    hp: AdamW,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), WgpuError> {
    let n = param.len();
    if grad.len() != n || m.len() != n || v.len() != n {
        return Err(WgpuError::Shape(format!(
            "adamw: param {n}, grad {}, m {}, v {} values",
            grad.len(),
            m.len(),
            v.len()
        )));
    }
    let n32 = u32::try_from(n).map_err(|_| WgpuError::LimitExceeded {
        what: "adamw length".into(),
        requested: n as u64,
        available: u64::from(u32::MAX),
    })?;
    let mut out = run_host(ctx, |enc| {
        let ins = [
            upload(ctx, "p", param),
            upload(ctx, "g", grad),
            upload(ctx, "m", m),
            upload(ctx, "v", v),
        ];
        let outs = [
            output(ctx, "p'", n as u64),
            output(ctx, "m'", n as u64),
            output(ctx, "v'", n as u64),
        ];
        encode(
            ctx,
            enc,
            n32,
            &hp,
            grad_scale,
            [&ins[0], &ins[1], &ins[2], &ins[3]],
            [&outs[0], &outs[1], &outs[2]],
        )?;
        let [a, b, c] = outs;
        Ok((Vec::from(ins), vec![(a, n), (b, n), (c, n)]))
    })
    .await?;
    let v2 = out.remove(2);
    let m2 = out.remove(1);
    Ok((out.remove(0), m2, v2))
}
