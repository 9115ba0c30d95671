//! A model for one task: encoder + task head + the PEFT method's additions.

use crate::Shape;
use crate::backend::{Backend, BackendError, Result};
use crate::models::EncoderInput;
use crate::models::heads::{Head, Task};
use crate::models::kv_cache::KvCache;
use crate::models::{Encoder, ModelConfig};
use crate::nn::{Adapters, Ctx};
use crate::params::{Bound, ParamId, ParamStore};
use crate::peft::{Method, PeftError, Shapes, Target};
use crate::rng::Rng;
use crate::safetensors_io::{HostTensor, LoadError};
use crate::tape::{Tape, Var};
use std::collections::BTreeMap;

/// Anything that stops a model from being built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Debug, Clone)]
pub struct TaskModel<B: Backend> {
    /// The model's `config.json`, through the architecture seam.
    pub config: ModelConfig,
    pub encoder: Encoder,
    pub head: Head,
    pub adapters: Adapters<B>,
    pub prompt: Option<ParamId>,
    /// The method as applied: its default targets made the model family's
    /// ([`Method::for_model`]); exports describe this one.
    pub method: Method,
}

impl<B: Backend> TaskModel<B> {
    /// Loads `config.json` (text) and the checkpoint's tensors (`model.safetensors` or its
    /// shards, read by [`crate::safetensors_io`]; `dir` names them in errors),
    /// adds the task's head (from the checkpoint or new) and applies `method`. Tensors in the
    /// checkpoint that neither the encoder nor a task head uses are an error.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        backend: &B,
        dir: &str,
        config_json: &str,
        tensors: BTreeMap<String, HostTensor>,
        task: Task,
        method: &Method,
        seed: u64,
        store: &mut ParamStore<B>,
    ) -> std::result::Result<Self, ModelError> {
        let cfg_file = format!("{dir}/config.json");
        let st_file = format!("{dir}/model.safetensors");
        let config = ModelConfig::from_json(&cfg_file, config_json)?;
        config.supports(task).map_err(|reason| LoadError::Config {
            file: cfg_file.clone(),
            reason,
        })?;
        let method = &method.for_model(&config);
        let (encoder, mut rest) = config.load(backend, &st_file, tensors, task, store)?;
        let head = Head::load_or_init(
            backend,
            config.head(task),
            task,
            &st_file,
            &mut rest,
            seed,
            store,
        )?;
        let extra: Vec<String> = rest
            .into_keys()
            .filter(|k| !config.is_other_head(config.store_name(k)))
            .collect();
        if !extra.is_empty() {
            return Err(LoadError::Extra {
                file: st_file,
                names: extra,
            }
            .into());
        }
        let mut adapters = Adapters::default();
        let mut rng = Rng::new(seed ^ 0x5045_4654);
        let applied = method.apply(&mut Target {
            backend,
            store,
            adapters: &mut adapters,
            linear_names: encoder
                .linear_names()
                .into_iter()
                .map(str::to_string)
                .collect(),
            head: head.param_names(),
            word_embeddings: encoder.word_embeddings(),
            rng: &mut rng,
        })?;
        Ok(Self {
            config,
            encoder,
            head,
            adapters,
            prompt: applied.prompt,
            method: method.clone(),
        })
    }

    /// Virtual tokens prepended by prompt tuning (0 without it).
    pub fn prompt_len(&self, backend: &B, store: &ParamStore<B>) -> usize {
        self.prompt
            .map(|p| backend.shape(&store.get(p).value).dims()[0])
            .unwrap_or(0)
    }

    /// Device inputs for `ids (B, T)` and its mask, with the prompt's prefix accounted for in
    /// positions, token types and mask.
    pub fn input(
        &self,
        backend: &B,
        store: &ParamStore<B>,
        ids: &[u32],
        mask: &[f32],
        batch: usize,
        len: usize,
    ) -> Result<EncoderInput<B::Tensor>> {
        let p = self.prompt_len(backend, store);
        let total = p + len;
        let mut full_mask = Vec::with_capacity(batch * total);
        for b in 0..batch {
            full_mask.extend(std::iter::repeat_n(1.0, p));
            full_mask.extend_from_slice(&mask[b * len..(b + 1) * len]);
        }
        let positions = self.encoder.positions(&full_mask, batch, total, p);
        let sh = Shape::new([batch, total]);
        Ok(EncoderInput {
            ids: backend.upload_u32(ids, &Shape::new([batch, len]))?,
            token_types: backend.upload_u32(&vec![0; batch * total], &sh)?,
            positions: backend.upload_u32(&positions, &sh)?,
            mask: backend.upload(&full_mask, &sh)?,
            last_rows: backend
                .upload_u32(&last_rows(&full_mask, batch, total), &Shape::new([batch]))?,
        })
    }

    /// Logits: `(B, K)` for sequence classification, `(B, T, K)` or `(B, T, V)` for token
    /// tasks (prompt positions removed).
    pub fn logits(&self, cx: &mut Ctx<'_, B>, input: &EncoderInput<B::Tensor>) -> Result<Var> {
        let batch = cx.tape.backend().shape(&input.ids).dims()[0];
        let prompt = self.prompt_rows(cx, batch)?;
        // A head that reads the first position only lets the encoder skip work (see
        // `Encoder::encode_first`).
        if self.head.reads_first_only() {
            let h = self.encoder.encode_first(cx, input, prompt)?;
            return self.head.forward(cx, &self.encoder, h, &input.last_rows);
        }
        let p = match prompt {
            Some(v) => cx.tape.shape(v)?.dims()[1],
            None => 0,
        };
        let mut h = self.encoder.encode(cx, input, prompt)?;
        let total = cx.tape.shape(h)?.dims()[1];
        match self.head.task {
            // The last-token classifier indexes the whole length (`last_rows`).
            Task::SequenceClassification { .. } => {}
            // Position `t` predicts token `t + 1`; with a prompt its last position predicts
            // the first token (PEFT's prefix of ignored labels), so the logits start there:
            // see `TaskModel::targets`.
            Task::CausalLm if p > 0 => h = cx.tape.slice_seq(h, p - 1, total - p + 1)?,
            _ if p > 0 => h = cx.tape.slice_seq(h, p, total - p)?,
            _ => {}
        }
        self.head.forward(cx, &self.encoder, h, &input.last_rows)
    }

    /// The prompt's virtual tokens for a batch: `(P, C)` -> `(B, P, C)` by gathering rows
    /// `0..P` for every batch element (the backward scatter-adds over the batch).
    fn prompt_rows(&self, cx: &mut Ctx<'_, B>, batch: usize) -> Result<Option<Var>> {
        let Some(id) = self.prompt else {
            return Ok(None);
        };
        let table = cx.p(id);
        let p = cx.tape.shape(table)?.dims()[0];
        let rows: Vec<u32> = (0..batch).flat_map(|_| 0..p as u32).collect();
        let rows = cx
            .tape
            .backend()
            .upload_u32(&rows, &Shape::new([batch, p]))?;
        Ok(Some(cx.tape.embedding(table, &rows)?))
    }

    /// Causal LM with a KV cache: the logits `(B, 1, V)` after `ids (B, n)`, the tokens that
    /// follow the positions `cache` holds (the prompt's virtual tokens go first, into an empty
    /// cache). The cache takes the new positions' keys and values.
    pub fn decode_logits(
        &self,
        cx: &mut Ctx<'_, B>,
        ids: &B::Tensor,
        cache: &mut KvCache<B::Tensor>,
    ) -> Result<Var> {
        let batch = cx.tape.backend().shape(ids).dims()[0];
        let prompt = if cache.is_empty() {
            self.prompt_rows(cx, batch)?
        } else {
            None
        };
        let h = self.encoder.decode(cx, ids, prompt, cache)?;
        let t = cx.tape.shape(h)?.dims()[1];
        let last = cx.tape.slice_seq(h, t - 1, 1)?;
        let rows = cx.tape.backend().upload_u32(&[0], &Shape::new([1]))?;
        self.head.forward(cx, &self.encoder, last, &rows)
    }

    /// One forward pass without dropout on a fresh tape: the logits and, given `labels` and
    /// the loss scale, the loss. With `grads` the trainable parameters are gradient leaves
    /// (then `tape.backward(loss)` and [`ParamStore::grads`]); otherwise every parameter is
    /// frozen and no backward work is kept (evaluation, prediction).
    pub fn forward(
        &self,
        backend: &B,
        store: &ParamStore<B>,
        input: &EncoderInput<B::Tensor>,
        labels: Option<(&B::Tensor, f32)>,
        grads: bool,
    ) -> Result<Forward<B>> {
        let mut tape = Tape::new(backend.clone());
        let bound = if grads {
            store.bind(&mut tape)
        } else {
            store.bind_frozen(&mut tape)
        };
        let mut cx = Ctx {
            tape: &mut tape,
            bound: &bound,
            adapters: &self.adapters,
            dropout: None,
        };
        let logits = self.logits(&mut cx, input)?;
        let loss = match labels {
            Some((labels, scale)) => Some(self.loss(&mut cx, logits, labels, scale)?),
            None => None,
        };
        Ok(Forward {
            tape,
            bound,
            logits,
            loss,
        })
    }

    /// `scale * sum CE` over every row of `logits` flattened to `(N, K)` against `labels (N,)`
    /// ([`crate::backend::IGNORE_INDEX`] skipped).
    pub fn loss(
        &self,
        cx: &mut Ctx<'_, B>,
        logits: Var,
        labels: &B::Tensor,
        scale: f32,
    ) -> Result<Var> {
        let s = cx.tape.shape(logits)?;
        let k = s.dims().last().copied().unwrap_or(1);
        let flat = cx
            .tape
            .reshape(logits, &Shape::new([s.numel() / k.max(1), k]))?;
        cx.tape.cross_entropy(flat, labels, scale)
    }
}

impl<B: Backend> TaskModel<B> {
    /// The loss's targets for a batch's `labels`, aligned with the logits
    /// [`TaskModel::logits`] returns, and how many count. Unchanged except for causal LM,
    /// whose labels are the tokens themselves (`(B, T)`, ignored on padding): the logit at
    /// token position `t` predicts token `t + 1` (the last predicts nothing); with prompt
    /// tuning the logits start one position earlier, at the last virtual token (`T + 1` of
    /// them), so logit `t` predicts token `t` — the first token is predicted too, as PEFT's
    /// prefix of ignored labels makes transformers' shifted loss do — and the last, at the
    /// last token, nothing. Either way the last logit of a row is the prediction after it.
    pub fn targets(
        &self,
        backend: &B,
        store: &ParamStore<B>,
        labels: &[u32],
        batch: usize,
        len: usize,
    ) -> (Vec<u32>, usize) {
        let ignore = crate::backend::IGNORE_INDEX;
        let mut out = labels.to_vec();
        if self.head.task == Task::CausalLm {
            if self.prompt_len(backend, store) == 0 {
                for row in out.chunks_mut(len.max(1)).take(batch) {
                    row.rotate_left(1);
                    if let Some(last) = row.last_mut() {
                        *last = ignore;
                    }
                }
            } else {
                out = labels
                    .chunks(len.max(1))
                    .take(batch)
                    .flat_map(|row| row.iter().copied().chain([ignore]))
                    .collect();
            }
        }
        let count = out
            .iter()
            .filter(|&&l| l != crate::backend::IGNORE_INDEX)
            .count();
        (out, count)
    }
}

/// Each row's last real position (the first when a row has none) in `(B T)` flattened.
fn last_rows(mask: &[f32], batch: usize, total: usize) -> Vec<u32> {
    (0..batch)
        .map(|b| {
            let row = &mask[b * total..(b + 1) * total];
            let t = row.iter().rposition(|&m| m > 0.0).unwrap_or(0);
            (b * total + t) as u32
        })
        .collect()
}

/// What [`TaskModel::forward`] recorded.
#[allow(missing_debug_implementations)] // the tape holds backend tensors
pub struct Forward<B: Backend> {
    pub tape: Tape<B>,
    pub bound: Bound,
    pub logits: Var,
    /// Present when labels were given.
    pub loss: Option<Var>,
}

impl<B: Backend> Forward<B> {
    /// The loss's variable; an error when the pass had no labels.
    pub fn loss(&self) -> Result<Var> {
        self.loss.ok_or_else(|| BackendError::Shape {
            op: "loss",
            msg: "the forward pass was run without labels".into(),
        })
    }
}

/// `(trainable, total)` parameters of `config` with `task`'s head and `method` applied,
/// computed from shapes alone (no weights loaded) — what [`ParamStore::counts`] reports
/// after [`TaskModel::load`]. The web app shows it live as options change.
pub fn count_params(
    config: &ModelConfig,
    task: Task,
    method: &Method,
) -> std::result::Result<(usize, usize), ModelError> {
    config.supports(task).map_err(|reason| LoadError::Config {
        file: "config.json".into(),
        reason,
    })?;
    let method = &method.for_model(config);
    let (encoder, head) = config.specs(task);
    let numel = |specs: &[(String, crate::Shape)]| specs.iter().map(|(_, s)| s.numel()).sum();
    let (enc_n, head_n): (usize, usize) = (numel(&encoder), numel(&head));
    let count = method.count(&Shapes {
        params: encoder,
        linears: config.linears(task),
        hidden_size: config.dims().hidden_size,
    })?;
    Ok((
        count.unfrozen + count.added + head_n,
        enc_n + head_n + count.added,
    ))
}
