//! Task heads on top of an encoder. Heads are always trainable and saved with an adapter.
//!
//! | task | BERT names | RoBERTa names | output |
//! |---|---|---|---|
//! | sequence classification | `pooler.dense` + tanh, `classifier` | `classifier.dense` + tanh, `classifier.out_proj` | `(B, K)` from the first token |
//! | token classification | `classifier` | `classifier` | `(B, T, K)` |
//! | masked LM | `cls.predictions.transform.{dense,LayerNorm}`, `cls.predictions.bias` | `lm_head.{dense,layer_norm}`, `lm_head.bias` | `(B, T, V)`, decoder tied to the word embeddings |

use crate::Shape;
use crate::backend::{Backend, Result};
use crate::models::bert::{Bert, BertConfig, Flavor};
use crate::nn::{Ctx, LayerNorm, Linear};
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::safetensors_io::{HostTensor, LoadError};
use crate::tape::Var;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the model is trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "kebab-case")]
pub enum Task {
    SequenceClassification { num_labels: usize },
    TokenClassification { num_labels: usize },
    MaskedLm,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    Normal,
    Zero,
    One,
}

#[derive(Debug, Clone)]
enum Kind {
    BertSequence {
        classifier: Linear,
    },
    RobertaSequence {
        dense: Linear,
        out_proj: Linear,
    },
    Token {
        classifier: Linear,
    },
    MaskedLm {
        dense: Linear,
        ln: LayerNorm,
        bias: ParamId,
    },
}

/// A task head whose parameters live in a [`ParamStore`].
#[derive(Debug, Clone)]
pub struct Head {
    pub task: Task,
    kind: Kind,
    names: Vec<String>,
}

fn specs(encoder: &Bert, task: Task) -> Vec<(String, Shape, Init)> {
    specs_for(&encoder.config, encoder.flavor, task)
}

/// The head's tensors (name, shape) for a model config, flavour and task.
pub fn head_shapes(config: &BertConfig, flavor: Flavor, task: Task) -> Vec<(String, Shape)> {
    specs_for(config, flavor, task)
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect()
}

fn specs_for(config: &BertConfig, flavor: Flavor, task: Task) -> Vec<(String, Shape, Init)> {
    let (c, v) = (config.hidden_size, config.vocab_size);
    let lin = |name: &str, out: usize, inp: usize| {
        vec![
            (
                format!("{name}.weight"),
                Shape::new([out, inp]),
                Init::Normal,
            ),
            (format!("{name}.bias"), Shape::new([out]), Init::Zero),
        ]
    };
    match (task, flavor) {
        (Task::SequenceClassification { num_labels }, Flavor::Bert)
        | (Task::TokenClassification { num_labels }, _) => lin("classifier", num_labels, c),
        (Task::SequenceClassification { num_labels }, Flavor::Roberta) => [
            lin("classifier.dense", c, c),
            lin("classifier.out_proj", num_labels, c),
        ]
        .concat(),
        (Task::MaskedLm, flavor) => {
            let (dense, ln, bias) = match flavor {
                Flavor::Bert => (
                    "cls.predictions.transform.dense",
                    "cls.predictions.transform.LayerNorm",
                    "cls.predictions.bias",
                ),
                Flavor::Roberta => ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
            };
            let mut s = lin(dense, c, c);
            s.push((format!("{ln}.weight"), Shape::new([c]), Init::One));
            s.push((format!("{ln}.bias"), Shape::new([c]), Init::Zero));
            s.push((bias.to_string(), Shape::new([v]), Init::Zero));
            s
        }
    }
}

impl Head {
    /// Builds the head in `store`. Tensors of the checkpoint's leftovers with the head's names
    /// and shapes are loaded; otherwise the head is new, initialised as transformers does
    /// (normal(0, 0.02) weights, zero biases, unit layer-norm gains) — also when the checkpoint
    /// has a head of another size (`ignore_mismatched_sizes`).
    pub fn load_or_init<B: Backend>(
        backend: &B,
        encoder: &Bert,
        task: Task,
        file: &str,
        leftover: &mut BTreeMap<String, HostTensor>,
        seed: u64,
        store: &mut ParamStore<B>,
    ) -> std::result::Result<Self, LoadError> {
        let specs = specs(encoder, task);
        let present = specs
            .iter()
            .all(|(n, s, _)| leftover.get(n).is_some_and(|t| &t.shape == s));
        let mut rng = Rng::new(seed);
        let cfg_err = |reason: String| LoadError::Config {
            file: file.into(),
            reason,
        };
        let mut ids = Vec::new();
        for (name, shape, init) in &specs {
            let data = match leftover.remove(name) {
                Some(t) if present => t.data,
                _ => match init {
                    Init::Normal => (0..shape.numel()).map(|_| 0.02 * rng.normal()).collect(),
                    Init::Zero => vec![0.0; shape.numel()],
                    Init::One => vec![1.0; shape.numel()],
                },
            };
            let dev = backend
                .upload(&data, shape)
                .map_err(|e| cfg_err(e.to_string()))?;
            ids.push(
                store
                    .insert(name.clone(), dev, true)
                    .map_err(|e| cfg_err(e.to_string()))?,
            );
        }
        let names: Vec<String> = specs.iter().map(|(n, _, _)| n.clone()).collect();
        let lin = |k: usize| Linear {
            name: names[k].trim_end_matches(".weight").to_string(),
            weight: ids[k],
            bias: Some(ids[k + 1]),
        };
        let kind = match (task, encoder.flavor) {
            (Task::SequenceClassification { .. }, Flavor::Bert) => {
                Kind::BertSequence { classifier: lin(0) }
            }
            (Task::SequenceClassification { .. }, Flavor::Roberta) => Kind::RobertaSequence {
                dense: lin(0),
                out_proj: lin(2),
            },
            (Task::TokenClassification { .. }, _) => Kind::Token { classifier: lin(0) },
            (Task::MaskedLm, _) => Kind::MaskedLm {
                dense: lin(0),
                ln: LayerNorm {
                    weight: ids[2],
                    bias: ids[3],
                    eps: encoder.config.layer_norm_eps,
                },
                bias: ids[4],
            },
        };
        Ok(Self { task, kind, names })
    }

    /// Names of the head's parameters (always trainable).
    pub fn param_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Logits from the encoder output `h (B, T, C)` (prompt positions already removed for
    /// token-level tasks): `(B, K)`, `(B, T, K)` or `(B, T, V)`.
    pub fn forward<B: Backend>(&self, cx: &mut Ctx<'_, B>, encoder: &Bert, h: Var) -> Result<Var> {
        let first = |cx: &mut Ctx<'_, B>| -> Result<Var> {
            let s = cx.tape.shape(h)?;
            let x = cx.tape.slice_seq(h, 0, 1)?;
            cx.tape.reshape(x, &Shape::new([s.dims()[0], s.dims()[2]]))
        };
        match &self.kind {
            Kind::BertSequence { classifier } => {
                let x = first(cx)?;
                let pooled = match &encoder.pooler {
                    Some(p) => {
                        let y = p.forward(cx, x)?;
                        cx.tape.tanh(y)?
                    }
                    None => x,
                };
                classifier.forward(cx, pooled)
            }
            Kind::RobertaSequence { dense, out_proj } => {
                let x = first(cx)?;
                let x = dense.forward(cx, x)?;
                let x = cx.tape.tanh(x)?;
                out_proj.forward(cx, x)
            }
            Kind::Token { classifier } => classifier.forward(cx, h),
            Kind::MaskedLm { dense, ln, bias } => {
                let x = dense.forward(cx, h)?;
                let x = cx.tape.gelu(x)?;
                let x = ln.forward(cx, x)?;
                // The decoder is tied to the word embeddings: logits = x E^T + b.
                let e = cx.p(encoder.word_embeddings);
                let logits = cx.tape.matmul(x, e, false, true)?;
                let b = cx.p(*bias);
                cx.tape.add_bias(logits, b)
            }
        }
    }
}
