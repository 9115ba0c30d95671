//! One conformance suite for every [`Backend`]: each op through the tape, forward against
//! naive f64 loops, backward against central finite differences, on awkward shapes (odd
//! sizes, batch 1, length 1), and the tape's own contract. The candle CPU backend, its
//! composite path (what CUDA runs) and wgpu (lavapipe natively, the browser's WebGPU in the
//! wasm group) all run [`run`]. A new op adds its case here once.
//!
//! The checks panic on a mismatch (they are tests); each case is also public so a backend's
//! test can run one alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a test failure

mod attention;
mod elementwise;
mod large;
mod linear;
mod norm;
mod other;

pub use attention::{attention_backward, attention_forward_matches_naive_with_masks};
pub use elementwise::{elementwise_ops, gelu_forward_is_the_erf_form};
pub use large::ops_past_one_workgroup;
pub use linear::{
    matmul_add_is_the_product_plus_the_accumulator, matmul_forward_matches_loops,
    matmul_linear_and_batched,
};
pub use norm::layer_norm_forward_and_backward;
pub use other::{
    adamw_matches_pytorch_formula, cross_entropy_with_ignore_index,
    embedding_gather_and_scatter_add, sequence_concat_and_slice,
    tape_frees_intermediates_and_skips_frozen_work,
};

use tunelab_core::Shape;
use tunelab_core::backend::{Backend, Result};
use tunelab_core::tape::{Tape, Var};

/// Every case on `be`, in order; the first mismatch panics with the case and element.
pub async fn run<B: Backend>(be: &B) {
    matmul_linear_and_batched(be).await;
    matmul_forward_matches_loops(be).await;
    matmul_add_is_the_product_plus_the_accumulator(be).await;
    elementwise_ops(be).await;
    gelu_forward_is_the_erf_form(be).await;
    layer_norm_forward_and_backward(be).await;
    attention_forward_matches_naive_with_masks(be).await;
    attention_backward(be).await;
    embedding_gather_and_scatter_add(be).await;
    sequence_concat_and_slice(be).await;
    cross_entropy_with_ignore_index(be).await;
    adamw_matches_pytorch_formula(be).await;
    tape_frees_intermediates_and_skips_frozen_work(be).await;
    ops_past_one_workgroup(be).await;
}

pub(crate) async fn host<B: Backend>(be: &B, t: &B::Tensor) -> Vec<f32> {
    be.download(t).await.unwrap()
}

/// Deterministic values in about [-1, 1].
pub(crate) fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[derive(Clone)]
pub(crate) struct Input {
    shape: Shape,
    values: Vec<f32>,
    trainable: bool,
}

pub(crate) fn input(dims: &[usize], seed: u64, trainable: bool) -> Input {
    let shape = Shape::new(dims);
    Input {
        values: data(shape.numel(), seed),
        shape,
        trainable,
    }
}

/// The inputs as the tape's leaves.
fn leaves<B: Backend>(be: &B, tape: &mut Tape<B>, inputs: &[Input]) -> Vec<Var> {
    inputs
        .iter()
        .map(|i| tape.leaf(be.upload(&i.values, &i.shape).unwrap(), i.trainable))
        .collect()
}

/// The seed of the loss's fixed weighting of the output, shared by the tape's loss and its
/// host-side recomputation.
const LOSS_WEIGHTS: u64 = 777;

type Build<'a, B> = dyn Fn(&mut Tape<B>, &[Var]) -> Result<Var> + 'a;

/// Loss = sum of squares of `f`'s output times a fixed random weighting, so every output
/// element gets a distinct upstream gradient.
fn loss_of<B: Backend>(be: &B, inputs: &[Input], f: &Build<'_, B>) -> (Tape<B>, Vec<Var>, Var) {
    let mut tape = Tape::new(be.clone());
    let vars = leaves(be, &mut tape, inputs);
    let y = f(&mut tape, &vars).unwrap();
    let shape = tape.shape(y).unwrap();
    let w = tape.leaf(
        be.upload(&data(shape.numel(), LOSS_WEIGHTS), &shape)
            .unwrap(),
        false,
    );
    let yw = tape.mul(y, w).unwrap();
    let loss = tape.sum_squares(yw).unwrap();
    (tape, vars, loss)
}

async fn loss_value<B: Backend>(be: &B, inputs: &[Input], f: &Build<'_, B>) -> f64 {
    let (tape, _, loss) = loss_of(be, inputs, f);
    f64::from(host(be, tape.value(loss).unwrap()).await[0])
}

/// Each trainable input's gradient after `backward`, by input index, checked for shape; a
/// frozen input must have none.
async fn gradients<B: Backend>(
    be: &B,
    name: &str,
    tape: &Tape<B>,
    vars: &[Var],
    inputs: &[Input],
) -> Vec<(usize, Vec<f32>)> {
    let mut out = Vec::new();
    for (k, var) in vars.iter().enumerate() {
        if !inputs[k].trainable {
            assert!(
                tape.grad(*var).is_none(),
                "{name}: frozen input {k} got a gradient"
            );
            continue;
        }
        let grad = host(
            be,
            tape.grad(*var)
                .unwrap_or_else(|| panic!("{name}: input {k} has no gradient")),
        )
        .await;
        assert_eq!(
            grad.len(),
            inputs[k].values.len(),
            "{name}: gradient shape of input {k}"
        );
        out.push((k, grad));
    }
    out
}

/// Checks every trainable input's gradient (up to 24 elements each) by central differences.
pub(crate) async fn grad_check<B: Backend>(
    be: &B,
    name: &str,
    mut inputs: Vec<Input>,
    f: &Build<'_, B>,
) {
    let (mut tape, vars, loss) = loss_of(be, &inputs, f);
    tape.backward(loss).unwrap();
    let eps = 1e-2f32;
    for (k, analytic) in gradients(be, name, &tape, &vars, &inputs).await {
        let n = analytic.len();
        let stride = (n / 24).max(1);
        for i in (0..n).step_by(stride) {
            let orig = inputs[k].values[i];
            inputs[k].values[i] = orig + eps;
            let up = loss_value(be, &inputs, f).await;
            inputs[k].values[i] = orig - eps;
            let down = loss_value(be, &inputs, f).await;
            inputs[k].values[i] = orig;
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let a = f64::from(analytic[i]);
            let tol = 2e-2 * a.abs().max(numeric.abs()).max(0.05);
            assert!(
                (a - numeric).abs() <= tol,
                "{name}: input {k}[{i}]: analytic {a}, numeric {numeric}"
            );
        }
    }
}

/// The loss of [`loss_of`] computed on the host in f64 from the op's downloaded output.
async fn host_loss<B: Backend>(be: &B, inputs: &[Input], f: &Build<'_, B>) -> f64 {
    let mut tape = Tape::new(be.clone());
    let vars = leaves(be, &mut tape, inputs);
    let y = f(&mut tape, &vars).unwrap();
    let y = host(be, tape.value(y).unwrap()).await;
    let w = data(y.len(), LOSS_WEIGHTS);
    y.iter()
        .zip(&w)
        .map(|(&y, &w)| (f64::from(y) * f64::from(w)).powi(2))
        .sum()
}

/// Checks every trainable input's whole gradient at once, for inputs too large to check
/// element by element: along a random direction `v`, `(L(x + εv) - L(x - εv)) / 2ε` must equal
/// `grad · v`. Two forward passes per input, however large it is.
pub(crate) async fn directional_check<B: Backend>(
    be: &B,
    name: &str,
    inputs: Vec<Input>,
    f: &Build<'_, B>,
) {
    let (mut tape, vars, loss) = loss_of(be, &inputs, f);
    tape.backward(loss).unwrap();
    let eps = 3e-3f32;
    for (k, grad) in gradients(be, name, &tape, &vars, &inputs).await {
        let dir = data(grad.len(), 1000 + k as u64);
        let analytic: f64 = grad
            .iter()
            .zip(&dir)
            .map(|(&g, &d)| f64::from(g) * f64::from(d))
            .sum();
        let shifted = |sign: f32| {
            let mut moved = inputs.clone();
            for (x, d) in moved[k].values.iter_mut().zip(&dir) {
                *x += sign * eps * d;
            }
            moved
        };
        let up = host_loss(be, &shifted(1.0), f).await;
        let down = host_loss(be, &shifted(-1.0), f).await;
        let numeric = (up - down) / (2.0 * f64::from(eps));
        let tol = 1e-2 * analytic.abs().max(numeric.abs()).max(1e-2);
        assert!(
            (analytic - numeric).abs() <= tol,
            "{name}: input {k} along a random direction: analytic {analytic}, numeric {numeric}"
        );
    }
}

/// `got` within `tol` (relative, absolute below 1) of `want`; NaN never passes.
pub(crate) fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= tol * w.abs().max(1.0),
            "{name}[{i}]: {g} vs {w}"
        );
    }
}
