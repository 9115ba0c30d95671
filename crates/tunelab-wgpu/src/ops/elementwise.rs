//! Elementwise ops (`kernels/elementwise.wgsl`): add, mul, axpby, scale, scale-by-a-device
//! scalar, the activations (GELU in its erf and tanh forms, SiLU, ReLU) and tanh with their
//! backward.
//!
//! [`encode`] records one op into a caller's encoder on device buffers; [`run`] and
//! [`axpby`] are host-to-host conveniences (tests, examples).

use super::{Part, Recorder, dispatch, row_chunks, split_dispatch, upload};
use crate::{Context, WgpuError, kernels};

const WORKGROUP: u32 = 256;

/// An elementwise op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `a + b`
    Add,
    /// `a * b`
    Mul,
    /// `alpha * a + beta * b`
    Axpby,
    /// `a * b[0]`
    ScaleBy,
    /// `b * gelu'(a)` (`a` = x, `b` = dy)
    GeluBackward,
    /// `b * (1 - a^2)` (`a` = tanh output, `b` = dy)
    TanhBackward,
    /// `alpha * a`
    Scale,
    /// `gelu(a)`, exact erf form
    Gelu,
    /// `gelu(a)`, tanh form
    GeluTanh,
    /// `b * gelu'(a)`, tanh form
    GeluTanhBackward,
    /// `a * sigmoid(a)`
    Silu,
    /// `b * silu'(a)`
    SiluBackward,
    /// `max(a, 0)`
    Relu,
    /// `b` where `a > 0`, else 0
    ReluBackward,
    /// `tanh(a)`
    Tanh,
}

impl Op {
    fn entry(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Mul => "mul",
            Self::Axpby => "axpby",
            Self::ScaleBy => "scale_by",
            Self::GeluBackward => "gelu_backward",
            Self::TanhBackward => "tanh_backward",
            Self::Scale => "scale",
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_tanh",
            Self::GeluTanhBackward => "gelu_tanh_backward",
            Self::Silu => "silu",
            Self::SiluBackward => "silu_backward",
            Self::Relu => "relu",
            Self::ReluBackward => "relu_backward",
            Self::Tanh => "tanh_fwd",
        }
    }

    /// Whether the op reads a second input.
    pub fn binary(self) -> bool {
        !matches!(
            self,
            Self::Scale | Self::Gelu | Self::GeluTanh | Self::Silu | Self::Relu | Self::Tanh
        )
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    row_stride: u32,
    alpha: f32,
    beta: f32,
}

/// Records `out = op(a, b)` over `n` values into `encoder`, in chunks where the vectors are
/// larger than one binding.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &Context,
    encoder: &mut Recorder,
    op: Op,
    n: u32,
    alpha: f32,
    beta: f32,
    a: &wgpu::Buffer,
    b: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
) -> Result<(), WgpuError> {
    let b = match (op.binary(), b) {
        (true, None) => {
            return Err(WgpuError::Shape(format!(
                "{}: needs a second input",
                op.entry()
            )));
        }
        (binary, b) => b.filter(|_| binary),
    };
    for (first, count) in row_chunks(ctx, op.entry(), n, &[1])? {
        let groups = count.div_ceil(WORKGROUP);
        let (gx, gy) = split_dispatch(
            groups,
            ctx.report().limits.max_compute_workgroups_per_dimension,
        );
        let params = Params {
            n: count,
            row_stride: gx,
            alpha,
            beta,
        };
        let part = |buf| Part::rows(buf, 1, first, count);
        let mut buffers = vec![(1, part(a))];
        if let Some(b) = b {
            // `scale_by`'s second input is one value, bound whole.
            buffers.push((2, if op == Op::ScaleBy { b.into() } else { part(b) }));
        }
        buffers.push((3, part(out)));
        dispatch(
            ctx,
            encoder,
            "elementwise.wgsl",
            kernels::ELEMENTWISE,
            op.entry(),
            bytemuck::bytes_of(&params),
            &buffers,
            (gx, gy, 1),
        );
    }
    Ok(())
}

/// Host-to-host: `op(a, b)` computed on the GPU. Binary ops need `b` of `a`'s length
/// (`ScaleBy`: one value).
pub async fn run(
    ctx: &Context,
    op: Op,
    a: &[f32],
    b: Option<&[f32]>,
    alpha: f32,
    beta: f32,
) -> Result<Vec<f32>, WgpuError> {
    let want_b = match op {
        Op::ScaleBy => Some(1),
        o if o.binary() => Some(a.len()),
        _ => None,
    };
    match (want_b, b.map(<[f32]>::len)) {
        (Some(w), Some(got)) if w != got => {
            return Err(WgpuError::Shape(format!(
                "{}: x has {} elements but y has {got}",
                op.entry(),
                a.len()
            )));
        }
        (Some(_), None) => {
            return Err(WgpuError::Shape(format!(
                "{}: needs a second input",
                op.entry()
            )));
        }
        _ => {}
    }
    let n = u32::try_from(a.len()).map_err(|_| WgpuError::LimitExceeded {
        what: format!("{} vector length", op.entry()),
        requested: a.len() as u64,
        available: u64::from(u32::MAX),
    })?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let out = ctx
        .checked(|| -> Result<wgpu::Buffer, WgpuError> {
            let ab = upload(ctx, "elementwise.a", a);
            let bb = b.map(|b| upload(ctx, "elementwise.b", b));
            let ob = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("elementwise.out"),
                size: u64::from(n) * 4,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = Recorder::new(ctx);
            encode(ctx, &mut enc, op, n, alpha, beta, &ab, bb.as_ref(), &ob)?;
            enc.keep(ab);
            if let Some(bb) = bb {
                enc.keep(bb);
            }
            enc.submit(ctx);
            Ok(ob)
        })
        .await??;
    let v = ctx.read_f32(&out, a.len()).await;
    out.destroy();
    v
}

/// `alpha * x + beta * y` on the GPU.
///
/// Errors: [`WgpuError::Shape`] when the lengths differ, [`WgpuError::LimitExceeded`] when a
/// vector is larger than one buffer may be.
pub async fn axpby(
    ctx: &Context,
    alpha: f32,
    x: &[f32],
    beta: f32,
    y: &[f32],
) -> Result<Vec<f32>, WgpuError> {
    run(ctx, Op::Axpby, x, Some(y), alpha, beta).await
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// The CPU reference.
    fn axpby_ref(alpha: f32, x: &[f32], beta: f32, y: &[f32]) -> Vec<f32> {
        x.iter().zip(y).map(|(x, y)| alpha * x + beta * y).collect()
    }

    #[test]
    fn axpby_matches_the_cpu_reference_on_odd_lengths() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        for n in [1usize, 3, 255, 256, 257, 1000, 70_001] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let got = pollster::block_on(axpby(&ctx, 1.5, &x, -0.25, &y)).unwrap();
            let want = axpby_ref(1.5, &x, -0.25, &y);
            assert_eq!(got.len(), n);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "n={n} i={i}: {g} vs {w}"
                );
            }
        }
        assert_eq!(
            ctx.cached_pipelines(),
            1,
            "the pipeline is built once and reused"
        );
    }

    #[test]
    fn axpby_rejects_mismatched_lengths() {
        let Some(ctx) = crate::context::tests::context() else {
            return;
        };
        let err = pollster::block_on(axpby(&ctx, 1.0, &[1.0, 2.0], 1.0, &[1.0])).unwrap_err();
        assert_eq!(err.to_string(), "axpby: x has 2 elements but y has 1");
    }
}
