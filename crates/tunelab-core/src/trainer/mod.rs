//! The trainer: batches, gradient accumulation, evaluation, best-checkpoint tracking and
//! resumable checkpoints. The CLI and the web app drive the same loop:
//!
//! ```text
//! while !trainer.is_done() {
//!     let report = trainer.train_step().await?;     // one optimiser step
//!     if trainer.should_eval() { trainer.evaluate(..).await? ... }
//!     if trainer.should_save() { store(trainer.checkpoint().await?) }
//! }
//! ```

pub mod checkpoint;
pub mod config;
pub mod step;

pub use config::{ConfigError, ScheduleKind, ScratchConfig, TaskKind, TrainConfig, resolve_task};

use crate::Shape;
use crate::backend::{Backend, BackendError, IGNORE_INDEX};
use crate::data::{DataError, Features, Labels, Masking, MicroBatch, batch_order, build_batch};
use crate::metrics::{Confusion, EntityScores, LossMeter, Prf};
use crate::models::task_model::{ModelError, TaskModel};
use crate::optim::{AdamWConfig, Optimizer};
use crate::params::ParamStore;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use step::{Micro, StepError, step_accumulated};

/// Anything that stops training.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("step {step}: {source}")]
    Step { step: u64, source: StepError },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("checkpoint {file}: {reason}")]
    Checkpoint { file: String, reason: String },
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
}

/// The best evaluation so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub metric: String,
    pub value: f64,
    pub step: u64,
}

/// Where training stands; saved in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: u64,
    /// Current epoch (0-based) and the next micro-batch within it.
    pub epoch: u64,
    pub cursor: usize,
    /// Non-padding tokens trained on so far.
    pub tokens_seen: u64,
    pub best: Option<Best>,
    /// Step of the last evaluation.
    pub last_eval: Option<u64>,
}

/// One optimiser step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: u64,
    /// Fractional epoch reached.
    pub epoch: f64,
    /// Mean loss per loss token over the accumulated micro-batches.
    pub loss: f32,
    pub grad_norm: f64,
    pub lr: f64,
    /// Non-padding tokens in the step.
    pub tokens: u64,
    pub examples: u64,
    /// Whether this step finished an epoch.
    pub epoch_end: bool,
}

/// Evaluation results; metrics by name (`accuracy`, `macro_f1`, `f1`, `precision`, `recall`,
/// `token_accuracy`, `loss`, `perplexity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub task: TaskKind,
    pub examples: usize,
    pub metrics: BTreeMap<String, f64>,
    /// Classification: the confusion matrix (`counts[gold][pred]`) and per-class scores.
    pub confusion: Option<Confusion>,
    pub per_class: BTreeMap<String, Prf>,
    /// Token classification: scores per entity type.
    pub per_entity: BTreeMap<String, Prf>,
}

/// Evaluation's masking seed (fixed, so every evaluation masks the same tokens).
const EVAL_MASK_SEED: u64 = 0x4556_414c;

/// A training run in progress.
#[derive(Debug)]
pub struct Trainer<B: Backend> {
    pub backend: B,
    pub model: TaskModel<B>,
    pub store: ParamStore<B>,
    pub opt: Optimizer<B>,
    pub config: TrainConfig,
    pub kind: TaskKind,
    pub labels: Labels,
    pub state: TrainState,
    train: Features,
    pad_id: u32,
    masking: Option<Masking>,
    rng: Rng,
    order: Vec<usize>,
    total: u64,
}

/// Optimiser steps per epoch: micro-batches of `batch_size`, `grad_accum` per step (the
/// last step of an epoch may have fewer).
fn steps_per_epoch(examples: usize, config: &TrainConfig) -> u64 {
    let micro = examples.div_ceil(config.batch_size) as u64;
    micro.div_ceil(config.grad_accum as u64).max(1)
}

/// The logits' argmax per row of a `(N, K)` buffer.
fn argmax_rows(logits: &[f32], k: usize) -> Vec<usize> {
    logits
        .chunks(k.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0
        })
        .collect()
}

impl<B: Backend> Trainer<B> {
    /// A fresh run. `masking` is required for masked LM.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: B,
        model: TaskModel<B>,
        store: ParamStore<B>,
        config: TrainConfig,
        kind: TaskKind,
        labels: Labels,
        train: Features,
        pad_id: u32,
        masking: Option<Masking>,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if kind == TaskKind::MaskedLm && masking.is_none() {
            return Err(ConfigError {
                field: "task",
                reason: "masked LM needs a tokenizer with a mask token".into(),
            }
            .into());
        }
        let total = config
            .max_steps
            .unwrap_or(steps_per_epoch(train.len(), &config) * u64::from(config.epochs));
        let opt = Optimizer::new(
            AdamWConfig {
                lr: config.lr(),
                weight_decay: config.weight_decay,
                ..Default::default()
            },
            config.schedule(total),
        );
        let order = batch_order(train.len(), config.seed, 0);
        Ok(Self {
            rng: Rng::new(config.seed ^ 0x4d41_534b),
            backend,
            model,
            store,
            opt,
            kind,
            labels,
            state: TrainState::default(),
            train,
            pad_id,
            masking,
            order,
            total,
            config,
        })
    }

    /// Optimiser steps the run will take.
    pub fn total_steps(&self) -> u64 {
        self.total
    }

    /// Optimiser steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        steps_per_epoch(self.train.len(), &self.config)
    }

    pub fn is_done(&self) -> bool {
        self.state.step >= self.total
    }

    /// The training examples (tokenised).
    pub fn train_features(&self) -> &Features {
        &self.train
    }

    fn micro_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.config.batch_size)
    }

    fn uses_dropout(&self) -> bool {
        self.model.adapters.uses_dropout()
    }

    fn upload(&mut self, b: &MicroBatch) -> Result<Micro<B::Tensor>, BackendError> {
        let input =
            self.model
                .input(&self.backend, &self.store, &b.ids, &b.mask, b.batch, b.len)?;
        // One label per row or per logit row (`TaskModel::targets`).
        let (targets, _) =
            self.model
                .targets(&self.backend, &self.store, &b.labels, b.batch, b.len);
        let labels = self
            .backend
            .upload_u32(&targets, &Shape::new([targets.len()]))?;
        // Dropout masks come from the trainer's (checkpointed) random stream, so a resumed run
        // draws the same masks.
        let dropout_seed = self.uses_dropout().then(|| self.rng.next_u64());
        Ok(Micro {
            input,
            labels,
            dropout_seed,
        })
    }

    /// One optimiser step over up to `grad_accum` micro-batches (never crossing an epoch
    /// boundary), the loss normalised by their total number of loss tokens.
    pub async fn train_step(&mut self) -> Result<StepReport, TrainError> {
        let per_epoch = self.micro_per_epoch();
        let bs = self.config.batch_size;
        let mut batches = Vec::new();
        while batches.len() < self.config.grad_accum
            && self.state.cursor + batches.len() < per_epoch
        {
            let i = self.state.cursor + batches.len();
            let rows: Vec<usize> =
                self.order[i * bs..((i + 1) * bs).min(self.order.len())].to_vec();
            let masking = self.masking.map(|m| (m, &mut self.rng));
            batches.push(build_batch(&self.train, &rows, self.pad_id, masking));
        }
        let loss_tokens: usize = batches
            .iter()
            .map(|b| {
                let (_, n) =
                    self.model
                        .targets(&self.backend, &self.store, &b.labels, b.batch, b.len);
                n
            })
            .sum();
        let tokens: u64 = batches
            .iter()
            .map(|b| b.mask.iter().filter(|&&m| m > 0.0).count() as u64)
            .sum();
        let examples: u64 = batches.iter().map(|b| b.batch as u64).sum();
        // Each batch in as many parts as the backend runs passes at once (one per core on
        // the CPU): the gradients add up to the batch's.
        let parts = self.backend.concurrent_passes();
        let micro = batches
            .iter()
            .flat_map(|b| b.split(parts))
            .map(|b| self.upload(&b))
            .collect::<Result<Vec<_>, _>>()?;
        let step = self.state.step + 1;
        let stats = step_accumulated(
            &self.backend,
            &self.model,
            &mut self.store,
            &mut self.opt,
            &micro,
            1.0 / loss_tokens.max(1) as f32,
            self.config.max_grad_norm,
        )
        .await
        .map_err(|source| TrainError::Step { step, source })?;
        self.state.step = step;
        self.state.tokens_seen += tokens;
        self.state.cursor += batches.len();
        let mut epoch_end = false;
        if self.state.cursor >= per_epoch {
            epoch_end = true;
            self.state.epoch += 1;
            self.state.cursor = 0;
            self.order = batch_order(self.train.len(), self.config.seed, self.state.epoch);
        }
        let report = StepReport {
            step,
            epoch: self.state.epoch as f64 + self.state.cursor as f64 / per_epoch.max(1) as f64,
            loss: stats.loss,
            grad_norm: stats.grad_norm,
            lr: stats.lr,
            tokens,
            examples,
            epoch_end,
        };
        // Each step's loss shows whether the update before it broke the weights. Where no
        // next step comes first — the last step, or one followed by a checkpoint or an
        // export — the weights are checked directly, so a diverged model is never saved.
        if self.is_done() || self.should_save(&report) {
            crate::trainer::step::check_weights(&self.backend, &self.store)
                .await
                .map_err(|source| TrainError::Step { step, source })?;
        }
        Ok(report)
    }

    /// Whether to evaluate after the step just reported: every `eval_every` steps, or at
    /// each epoch's end, and always at the end of the run.
    pub fn should_eval(&self, last: &StepReport) -> bool {
        match self.config.eval_every {
            Some(n) => last.step.is_multiple_of(n) || self.is_done(),
            None => last.epoch_end || self.is_done(),
        }
    }

    /// Whether to save a resumable checkpoint after the step just reported.
    pub fn should_save(&self, last: &StepReport) -> bool {
        self.config
            .save_every
            .is_some_and(|n| last.step.is_multiple_of(n))
            || self.should_eval(last)
    }

    /// Evaluates on `features` batch by batch (metrics accumulate; no logits are kept).
    pub async fn evaluate(&self, features: &Features) -> Result<EvalReport, TrainError> {
        evaluate(
            &self.backend,
            &self.model,
            &self.store,
            self.kind,
            &self.labels,
            features,
            EvalOptions {
                batch_size: self.config.batch_size,
                pad_id: self.pad_id,
                masking: self.masking,
                max_examples: self.config.eval_max_examples,
            },
        )
        .await
    }

    /// Records an evaluation; true when it is the best so far by `metric_for_best`.
    pub fn record_eval(&mut self, report: &EvalReport) -> bool {
        self.state.last_eval = Some(self.state.step);
        let (default, _) = self.kind.default_metric();
        let name = self
            .config
            .metric_for_best
            .clone()
            .unwrap_or_else(|| default.to_string());
        // A NaN metric (an empty evaluation, a diverged model) is never the best.
        let Some(&value) = report.metrics.get(&name).filter(|v| !v.is_nan()) else {
            return false;
        };
        let higher = !matches!(name.as_str(), "loss" | "perplexity");
        let better = match &self.state.best {
            None => true,
            Some(b) => {
                if higher {
                    value > b.value
                } else {
                    value < b.value
                }
            }
        };
        if better {
            self.state.best = Some(Best {
                metric: name,
                value,
                step: self.state.step,
            });
        }
        better
    }
}

/// How to batch an evaluation.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    pub batch_size: usize,
    pub pad_id: u32,
    pub masking: Option<Masking>,
    pub max_examples: Option<usize>,
}

/// Streaming evaluation of any model (also used by `tunelab eval` on exported models).
pub async fn evaluate<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    kind: TaskKind,
    labels: &Labels,
    features: &Features,
    opts: EvalOptions,
) -> Result<EvalReport, TrainError> {
    let n = opts
        .max_examples
        .map_or(features.len(), |m| m.min(features.len()));
    let mut rng = Rng::new(EVAL_MASK_SEED);
    let mut loss = LossMeter::default();
    let mut confusion = Confusion::new(labels.names.clone());
    let mut entities = EntityScores::default();
    // A subset is spread evenly over the file (files are often sorted by label).
    let rows: Vec<usize> = (0..n).map(|i| i * features.len() / n.max(1)).collect();
    for chunk in rows.chunks(opts.batch_size.max(1)) {
        let masking = opts.masking.map(|m| (m, &mut rng));
        let b = build_batch(features, chunk, opts.pad_id, masking);
        let input = model.input(backend, store, &b.ids, &b.mask, b.batch, b.len)?;
        let (targets, loss_tokens) = model.targets(backend, store, &b.labels, b.batch, b.len);
        let label_t = backend.upload_u32(&targets, &Shape::new([targets.len()]))?;
        let f = model.forward(backend, store, &input, Some((&label_t, 1.0)), false)?;
        let (tape, logits) = (&f.tape, f.logits);
        let l = backend.download(tape.value(f.loss()?)?).await?[0];
        loss.add(f64::from(l), loss_tokens as u64);
        match kind {
            TaskKind::MaskedLm | TaskKind::CausalLm => {}
            TaskKind::Classification => {
                let k = labels.len();
                let pred = argmax_rows(&backend.download(tape.value(logits)?).await?, k);
                for (g, p) in b.labels.iter().zip(pred) {
                    confusion.add(*g as usize, p);
                }
            }
            TaskKind::TokenClassification => {
                let k = labels.len();
                let pred = argmax_rows(&backend.download(tape.value(logits)?).await?, k);
                for row in 0..b.batch {
                    let (mut gold, mut guess) = (Vec::new(), Vec::new());
                    for t in 0..b.len {
                        let g = b.labels[row * b.len + t];
                        if g != IGNORE_INDEX {
                            gold.push(labels.names[g as usize].as_str());
                            guess.push(labels.names[pred[row * b.len + t]].as_str());
                        }
                    }
                    entities.add(&gold, &guess);
                }
            }
        }
    }
    let mut metrics = BTreeMap::new();
    metrics.insert("loss".to_string(), loss.mean());
    let (mut conf, mut per_class, mut per_entity) = (None, BTreeMap::new(), BTreeMap::new());
    match kind {
        TaskKind::MaskedLm | TaskKind::CausalLm => {
            metrics.insert("perplexity".into(), loss.perplexity());
        }
        TaskKind::Classification => {
            metrics.insert("accuracy".into(), confusion.accuracy());
            metrics.insert("macro_f1".into(), confusion.macro_f1());
            per_class = labels
                .names
                .iter()
                .cloned()
                .zip(confusion.per_class())
                .collect();
            conf = Some(confusion);
        }
        TaskKind::TokenClassification => {
            let o = entities.overall();
            metrics.insert("precision".into(), o.precision);
            metrics.insert("recall".into(), o.recall);
            metrics.insert("f1".into(), o.f1);
            metrics.insert("token_accuracy".into(), entities.token_accuracy());
            per_entity = entities.per_type();
        }
    }
    Ok(EvalReport {
        task: kind,
        examples: n,
        metrics,
        confusion: conf,
        per_class,
        per_entity,
    })
}
