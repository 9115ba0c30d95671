//! Task heads on top of an encoder. Heads are always trainable and saved with an adapter.

use crate::Shape;
use crate::backend::{Backend, Result};
use crate::models::bert::{Bert, Flavor};
use crate::nn::{Ctx, Linear};
use crate::params::ParamStore;
use crate::rng::Rng;
use crate::safetensors_io::{HostTensor, LoadError, take_expected};
use crate::tape::Var;
use std::collections::BTreeMap;

/// Sequence classification as transformers does it: BERT pools `[CLS]` through
/// `pooler.dense` and tanh, then `classifier`; RoBERTa takes `<s>` through
/// `classifier.dense` and tanh, then `classifier.out_proj`.
#[derive(Debug, Clone)]
pub enum SequenceClassifier {
    Bert { classifier: Linear },
    Roberta { dense: Linear, out_proj: Linear },
}

impl SequenceClassifier {
    /// Parameter names and shapes of the head for `num_labels` classes.
    pub fn specs(encoder: &Bert, num_labels: usize) -> Vec<(String, Shape)> {
        let c = encoder.config.hidden_size;
        match encoder.flavor {
            Flavor::Bert => vec![
                ("classifier.weight".into(), Shape::new([num_labels, c])),
                ("classifier.bias".into(), Shape::new([num_labels])),
            ],
            Flavor::Roberta => vec![
                ("classifier.dense.weight".into(), Shape::new([c, c])),
                ("classifier.dense.bias".into(), Shape::new([c])),
                (
                    "classifier.out_proj.weight".into(),
                    Shape::new([num_labels, c]),
                ),
                ("classifier.out_proj.bias".into(), Shape::new([num_labels])),
            ],
        }
    }

    /// Builds the head in `store`: from the checkpoint's leftover tensors when they hold it,
    /// else initialised normal(0, 0.02) with zero biases (a new head, as transformers does).
    pub fn load_or_init<B: Backend>(
        backend: &B,
        encoder: &Bert,
        num_labels: usize,
        file: &str,
        leftover: &mut BTreeMap<String, HostTensor>,
        seed: u64,
        store: &mut ParamStore<B>,
    ) -> std::result::Result<Self, LoadError> {
        let specs = Self::specs(encoder, num_labels);
        let cfg_err = |reason: String| LoadError::Config {
            file: file.into(),
            reason,
        };
        let values: Vec<HostTensor> = if leftover.contains_key(&specs[0].0) {
            take_expected(file, leftover, &specs, &[""])?
        } else {
            let mut rng = Rng::new(seed);
            specs
                .iter()
                .map(|(name, shape)| HostTensor {
                    shape: shape.clone(),
                    data: if name.ends_with(".bias") {
                        vec![0.0; shape.numel()]
                    } else {
                        (0..shape.numel()).map(|_| 0.02 * rng.normal()).collect()
                    },
                })
                .collect()
        };
        let mut ids = Vec::new();
        for ((name, _), t) in specs.iter().zip(values) {
            let dev = backend
                .upload(&t.data, &t.shape)
                .map_err(|e| cfg_err(e.to_string()))?;
            ids.push(
                store
                    .insert(name.clone(), dev, true)
                    .map_err(|e| cfg_err(e.to_string()))?,
            );
        }
        let lin = |name: &str, w: usize| Linear {
            name: name.into(),
            weight: ids[w],
            bias: Some(ids[w + 1]),
        };
        Ok(match encoder.flavor {
            Flavor::Bert => Self::Bert {
                classifier: lin("classifier", 0),
            },
            Flavor::Roberta => Self::Roberta {
                dense: lin("classifier.dense", 0),
                out_proj: lin("classifier.out_proj", 2),
            },
        })
    }

    /// Names of the head's parameters (always trainable).
    pub fn param_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |l: &Linear| {
            out.push(format!("{}.weight", l.name));
            out.push(format!("{}.bias", l.name));
        };
        match self {
            Self::Bert { classifier } => push(classifier),
            Self::Roberta { dense, out_proj } => {
                push(dense);
                push(out_proj);
            }
        }
        out
    }

    /// Logits `(B, K)` from the encoder output `h (B, T, C)`.
    pub fn forward<B: Backend>(&self, cx: &mut Ctx<'_, B>, encoder: &Bert, h: Var) -> Result<Var> {
        let s = cx.tape.shape(h)?;
        let (b, c) = (s.dims()[0], s.dims()[2]);
        let first = cx.tape.slice_seq(h, 0, 1)?;
        let first = cx.tape.reshape(first, &Shape::new([b, c]))?;
        match self {
            Self::Bert { classifier } => {
                let pooled = match &encoder.pooler {
                    Some(p) => {
                        let x = p.forward(cx, first)?;
                        cx.tape.tanh(x)?
                    }
                    None => first,
                };
                classifier.forward(cx, pooled)
            }
            Self::Roberta { dense, out_proj } => {
                let x = dense.forward(cx, first)?;
                let x = cx.tape.tanh(x)?;
                out_proj.forward(cx, x)
            }
        }
    }
}
