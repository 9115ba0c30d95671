//! One optimisation step, shared by the CLI, the web app, the benchmark and the tests.

use crate::backend::{Backend, Result};
use crate::models::bert::EncoderInput;
use crate::models::task_model::TaskModel;
use crate::nn::Ctx;
use crate::optim::{Optimizer, clip_coefficient};
use crate::params::ParamStore;
use crate::tape::Tape;

/// What a step reports. Only these scalars are read back from the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The loss of the batch before the update.
    pub loss: f32,
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// The learning rate the update used.
    pub lr: f64,
}

/// Forward, loss (`scale * sum CE`), backward, global-norm clipping at `max_grad_norm`
/// (`<= 0` disables it) and the AdamW update of every trainable parameter.
#[allow(clippy::too_many_arguments)]
pub async fn step<B: Backend>(
    backend: &B,
    model: &TaskModel,
    store: &mut ParamStore<B>,
    opt: &mut Optimizer<B>,
    input: &EncoderInput<B::Tensor>,
    labels: &B::Tensor,
    scale: f32,
    max_grad_norm: f64,
) -> Result<StepStats> {
    let mut tape = Tape::new(backend.clone());
    let bound = store.bind(&mut tape);
    let mut cx = Ctx {
        tape: &mut tape,
        bound: &bound,
        adapters: &model.adapters,
    };
    let logits = model.logits(&mut cx, input)?;
    let loss = model.loss(&mut cx, logits, labels, scale)?;
    let loss_value = backend.download(tape.value(loss)?).await?[0];
    tape.backward(loss)?;
    let grads: Vec<_> = store
        .grads(&mut tape, &bound)
        .into_iter()
        .filter_map(|(id, g)| g.map(|g| (id, g)))
        .collect();
    drop(tape);
    let refs: Vec<&B::Tensor> = grads.iter().map(|(_, g)| g).collect();
    let grad_norm = match ParamStore::<B>::grad_sq_norm(backend, &refs)? {
        Some(sq) => f64::from(backend.download(&sq).await?[0]).sqrt(),
        None => 0.0,
    };
    let lr = opt.lr();
    opt.step(
        backend,
        store,
        &grads,
        clip_coefficient(grad_norm, max_grad_norm),
    )?;
    Ok(StepStats {
        loss: loss_value,
        grad_norm,
        lr,
    })
}
