//! Task heads on top of an encoder, built from what the architecture says
//! ([`Architecture::head`](crate::models::Architecture::head): tensor names, shapes,
//! initialisation and a [`HeadStyle`]). Heads are always trainable and saved with an adapter.
//! The BERT family's heads:
//!
//! | task | BERT names | RoBERTa names | output |
//! |---|---|---|---|
//! | sequence classification | `pooler.dense` + tanh, `classifier` | `classifier.dense` + tanh, `classifier.out_proj` | `(B, K)` from the first token |
//! | token classification | `classifier` | `classifier` | `(B, T, K)` |
//! | masked LM | `cls.predictions.transform.{dense,LayerNorm}`, `cls.predictions.bias` | `lm_head.{dense,layer_norm}`, `lm_head.bias` | `(B, T, V)`, decoder tied to the word embeddings |
//!
//! GPT-2's: sequence classification is `score` (no bias) on the last real token, token
//! classification `classifier`, and the causal LM head is the word embeddings (tied, no
//! tensors of its own).

use crate::Shape;
use crate::backend::{Backend, Result};
use crate::models::Encoder;
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
    SequenceClassification {
        num_labels: usize,
    },
    TokenClassification {
        num_labels: usize,
    },
    MaskedLm,
    /// Next-token prediction (a decoder's language-model head).
    CausalLm,
}

/// How a new head's tensor starts (transformers' initialisation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// normal(0, 0.02)
    Normal,
    Zero,
    One,
}

/// How a head runs; its tensors come in the order the style reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadStyle {
    /// The first position through the encoder's pooler (+ tanh) where it has one, then a
    /// classifier (`weight`, `bias`).
    PooledClassifier,
    /// The first position through a dense layer and tanh, then an output projection
    /// (RoBERTa: dense `weight`, `bias`, projection `weight`, `bias`).
    DenseTanhClassifier,
    /// A classifier on every position (`weight`, `bias`).
    TokenClassifier,
    /// Dense + GELU + layer norm, then a decoder tied to the word embeddings plus a bias
    /// (dense `weight`, `bias`, norm `weight`, `bias`, decoder bias).
    MaskedLm { eps: f32 },
    /// The last real position of each row through a classifier without bias (`weight`):
    /// GPT-2's `score`.
    LastTokenClassifier,
    /// Logits from the word embeddings (tied), no tensors of its own.
    TiedLm,
}

/// A task head as an architecture defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadSpec {
    pub style: HeadStyle,
    pub tensors: Vec<(String, Shape, Init)>,
}

impl HeadSpec {
    /// The head's tensors (name, shape).
    pub fn shapes(&self) -> Vec<(String, Shape)> {
        self.tensors
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Pooled {
        classifier: Linear,
    },
    DenseTanh {
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
    LastToken {
        score: Linear,
    },
    TiedLm,
}

/// A task head whose parameters live in a [`ParamStore`].
#[derive(Debug, Clone)]
pub struct Head {
    pub task: Task,
    kind: Kind,
    names: Vec<String>,
}

impl Head {
    /// Builds the head in `store`. Tensors of the checkpoint's leftovers with the head's names
    /// and shapes are loaded; otherwise the head is new, initialised as transformers does
    /// (normal(0, 0.02) weights, zero biases, unit layer-norm gains) — also when the checkpoint
    /// has a head of another size (`ignore_mismatched_sizes`).
    pub fn load_or_init<B: Backend>(
        backend: &B,
        spec: HeadSpec,
        task: Task,
        file: &str,
        leftover: &mut BTreeMap<String, HostTensor>,
        seed: u64,
        store: &mut ParamStore<B>,
    ) -> std::result::Result<Self, LoadError> {
        let specs = spec.tensors;
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
        let need = match spec.style {
            HeadStyle::PooledClassifier | HeadStyle::TokenClassifier => 2,
            HeadStyle::DenseTanhClassifier => 4,
            HeadStyle::MaskedLm { .. } => 5,
            HeadStyle::LastTokenClassifier => 1,
            HeadStyle::TiedLm => 0,
        };
        if ids.len() != need {
            return Err(cfg_err(format!(
                "the {:?} head needs {need} tensors, the architecture gave {}",
                spec.style,
                ids.len()
            )));
        }
        let kind = match spec.style {
            HeadStyle::PooledClassifier => Kind::Pooled { classifier: lin(0) },
            HeadStyle::DenseTanhClassifier => Kind::DenseTanh {
                dense: lin(0),
                out_proj: lin(2),
            },
            HeadStyle::TokenClassifier => Kind::Token { classifier: lin(0) },
            HeadStyle::MaskedLm { eps } => Kind::MaskedLm {
                dense: lin(0),
                ln: LayerNorm {
                    weight: ids[2],
                    bias: ids[3],
                    eps,
                },
                bias: ids[4],
            },
            HeadStyle::LastTokenClassifier => Kind::LastToken {
                score: Linear {
                    name: names[0].trim_end_matches(".weight").to_string(),
                    weight: ids[0],
                    bias: None,
                },
            },
            HeadStyle::TiedLm => Kind::TiedLm,
        };
        Ok(Self { task, kind, names })
    }

    /// Names of the head's parameters (always trainable).
    pub fn param_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Whether the head reads the first position only (so the encoder may skip work for
    /// the others: [`Encoder::encode_first`]).
    pub fn reads_first_only(&self) -> bool {
        matches!(self.kind, Kind::Pooled { .. } | Kind::DenseTanh { .. })
    }

    /// Logits from the encoder output `h (B, T, C)` (prompt positions already removed for
    /// token-level tasks): `(B, K)`, `(B, T, K)` or `(B, T, V)`. `last_rows (B,)` index each
    /// row's last real position in `h` flattened to `(B T, C)`.
    pub fn forward<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        encoder: &Encoder,
        h: Var,
        last_rows: &B::Tensor,
    ) -> Result<Var> {
        let first = |cx: &mut Ctx<'_, B>| -> Result<Var> {
            let s = cx.tape.shape(h)?;
            let x = cx.tape.slice_seq(h, 0, 1)?;
            cx.tape.reshape(x, &Shape::new([s.dims()[0], s.dims()[2]]))
        };
        match &self.kind {
            Kind::Pooled { classifier } => {
                let x = first(cx)?;
                let pooled = match encoder.pooler() {
                    Some(p) => {
                        let y = p.forward(cx, x)?;
                        cx.tape.tanh(y)?
                    }
                    None => x,
                };
                classifier.forward(cx, pooled)
            }
            Kind::DenseTanh { dense, out_proj } => {
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
                let e = cx.p(encoder.word_embeddings());
                let logits = cx.tape.matmul(x, e, false, true)?;
                let b = cx.p(*bias);
                cx.tape.add_bias(logits, b)
            }
            Kind::LastToken { score } => {
                // Row gather through the embedding op: its backward scatters into `h`.
                let s = cx.tape.shape(h)?;
                let (b, t, c) = (s.dims()[0], s.dims()[1], s.dims()[2]);
                let flat = cx.tape.reshape(h, &Shape::new([b * t, c]))?;
                let x = cx.tape.embedding(flat, last_rows)?; // (B, C)
                score.forward(cx, x)
            }
            Kind::TiedLm => {
                let e = cx.p(encoder.word_embeddings());
                cx.tape.matmul(h, e, false, true)
            }
        }
    }
}
