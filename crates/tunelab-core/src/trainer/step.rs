//! One optimisation step, shared by the CLI, the web app, the benchmark and the tests.

use crate::backend::{Backend, BackendError};
use crate::models::EncoderInput;
use crate::models::task_model::TaskModel;
use crate::nn::Ctx;
use crate::optim::{Optimizer, clip_coefficient};
use crate::params::{ParamId, ParamStore};
use crate::tape::Tape;
use std::collections::BTreeMap;

/// What a step reports. Only these scalars are read back from the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The loss of the batch before the update (the sum over micro-batches of
    /// `scale * sum CE`: with `scale = 1 / loss tokens`, the mean per loss token).
    pub loss: f32,
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// The learning rate the update used.
    pub lr: f64,
}

/// Why a step did not update the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The loss or the gradients are NaN or infinite; the parameters were not touched.
    #[error(
        "the loss is {loss} and the gradient norm {grad_norm}: training diverged (try a lower learning rate); the model was not updated"
    )]
    NonFinite { loss: f32, grad_norm: f64 },
    /// The update itself made a trainable parameter NaN, infinite or so large that its
    /// square overflows (beyond ~1.8e19): the model is unusable and is not saved.
    #[error(
        "the update made the weights non-finite (`{param}`): training diverged (try a lower learning rate); nothing was saved from this step"
    )]
    NonFiniteWeights { param: String },
}

/// The largest weight magnitude taken as finite: beyond it the weight's square overflows f32
/// (the device's sums of squares, and so the next step's loss, would be infinite).
pub const MAX_WEIGHT: f32 = 1.8e19;

/// The first name in `tensors` holding a value that is NaN, infinite or beyond
/// [`MAX_WEIGHT`] in magnitude.
pub fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [f32])>,
) -> Option<&'a str> {
    tensors
        .into_iter()
        .find(|(_, d)| d.iter().any(|v| v.is_nan() || v.abs() > MAX_WEIGHT))
        .map(|(n, _)| n)
}

/// Checks on the device that every trainable parameter is finite (one sum of squares, read
/// back); on failure, reads them to name the first bad one.
pub async fn check_weights<B: Backend>(
    backend: &B,
    store: &ParamStore<B>,
) -> Result<(), StepError> {
    let ids = store.trainable();
    let values: Vec<&B::Tensor> = ids.iter().map(|&id| &store.get(id).value).collect();
    let Some(sq) = ParamStore::<B>::grad_sq_norm(backend, &values)? else {
        return Ok(());
    };
    if backend.download(&sq).await?[0].is_finite() {
        return Ok(());
    }
    for &id in &ids {
        let p = store.get(id);
        let data = backend.download(&p.value).await?;
        if first_non_finite([(p.name.as_str(), data.as_slice())]).is_some() {
            return Err(StepError::NonFiniteWeights {
                param: p.name.clone(),
            });
        }
    }
    // The sum overflowed although no single weight is too large: still diverged.
    Err(StepError::NonFiniteWeights {
        param: "(their sum of squares)".into(),
    })
}

/// One micro-batch on the device: encoder inputs and labels.
#[derive(Debug, Clone)]
pub struct Micro<T> {
    pub input: EncoderInput<T>,
    pub labels: T,
    /// Seeds this micro-batch's dropout masks; `None` trains without dropout.
    pub dropout_seed: Option<u64>,
}

/// Forward, loss (`scale * sum CE`), backward, global-norm clipping at `max_grad_norm`
/// (`<= 0` disables it) and the AdamW update of every trainable parameter.
#[allow(clippy::too_many_arguments)]
pub async fn step<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &mut ParamStore<B>,
    opt: &mut Optimizer<B>,
    input: &EncoderInput<B::Tensor>,
    labels: &B::Tensor,
    scale: f32,
    max_grad_norm: f64,
) -> Result<StepStats, StepError> {
    let micro = [Micro {
        input: input.clone(),
        labels: labels.clone(),
        dropout_seed: None,
    }];
    step_accumulated(backend, model, store, opt, &micro, scale, max_grad_norm).await
}

/// One pass's loss (on the device) and the trainable parameters' gradients.
type Pass<B> = (
    <B as Backend>::Tensor,
    Vec<(ParamId, Option<<B as Backend>::Tensor>)>,
);

/// Forward, loss (`scale * sum CE`) and backward of one micro-batch on its own tape.
fn forward_backward<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    m: &Micro<B::Tensor>,
    scale: f32,
) -> Result<Pass<B>, BackendError> {
    let mut tape = Tape::new(backend.clone());
    let bound = store.bind(&mut tape);
    let mut rng = m.dropout_seed.map(crate::rng::Rng::new);
    let mut cx = Ctx {
        tape: &mut tape,
        bound: &bound,
        adapters: &model.adapters,
        dropout: rng.as_mut(),
    };
    let logits = model.logits(&mut cx, &m.input)?;
    let loss = model.loss(&mut cx, logits, &m.labels, scale)?;
    let loss_value = tape.value(loss)?.clone();
    backend.flush();
    tape.backward(loss)?;
    Ok((loss_value, store.grads(&mut tape, &bound)))
}

/// One optimiser step over several micro-batches (gradient accumulation): each contributes
/// `scale * sum CE` and the gradients add up, so with `scale = 1 / (loss tokens of all
/// micro-batches)` the step equals one large batch exactly. A NaN or infinite loss or
/// gradient norm returns [`StepError::NonFinite`] before anything is updated.
pub async fn step_accumulated<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &mut ParamStore<B>,
    opt: &mut Optimizer<B>,
    micro: &[Micro<B::Tensor>],
    scale: f32,
    max_grad_norm: f64,
) -> Result<StepStats, StepError> {
    let mut sums: BTreeMap<ParamId, B::Tensor> = BTreeMap::new();
    // Losses are read after the backward passes are recorded: the device runs each forward
    // pass (flushed) while the host records its backward pass, and the step waits once.
    let mut losses = Vec::with_capacity(micro.len());
    let store_ref: &ParamStore<B> = store;
    let pass = |m: &Micro<B::Tensor>| forward_backward(backend, model, store_ref, m, scale);
    // Up to `concurrent_passes` micro-batches at once (see `Backend::run_concurrently`); each
    // group's gradients are added before the next group runs, in the micro-batches' order.
    #[cfg(not(target_arch = "wasm32"))]
    let (at_once, run_group) = (
        backend.concurrent_passes().max(1),
        |group: &[Micro<B::Tensor>]| -> Vec<Result<Pass<B>, BackendError>> {
            match group {
                [one] => vec![pass(one)],
                _ => backend.run_concurrently(group.len(), &|i| pass(&group[i])),
            }
        },
    );
    #[cfg(target_arch = "wasm32")]
    let (at_once, run_group) = (1, |group: &[Micro<B::Tensor>]| {
        group.iter().map(pass).collect::<Vec<_>>()
    });
    for group in micro.chunks(at_once) {
        for p in run_group(group) {
            let (loss, grads) = p?;
            losses.push(loss);
            for (id, g) in grads {
                let Some(g) = g else { continue };
                let g = match sums.remove(&id) {
                    Some(s) => backend.add(&s, &g)?,
                    None => g,
                };
                sums.insert(id, g);
            }
        }
    }
    let grads: Vec<(ParamId, B::Tensor)> = sums.into_iter().collect();
    let refs: Vec<&B::Tensor> = grads.iter().map(|(_, g)| g).collect();
    let sq = ParamStore::<B>::grad_sq_norm(backend, &refs)?;
    let mut loss_value = 0.0f32;
    for l in &losses {
        loss_value += backend.download(l).await?[0];
    }
    let grad_norm = match sq {
        Some(sq) => f64::from(backend.download(&sq).await?[0]).sqrt(),
        None => 0.0,
    };
    if !loss_value.is_finite() || !grad_norm.is_finite() {
        return Err(StepError::NonFinite {
            loss: loss_value,
            grad_norm,
        });
    }
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
