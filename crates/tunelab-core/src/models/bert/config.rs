//! BERT and RoBERTa as the architecture seam sees them: `config.json`'s fields, the
//! family's tensors and heads per task, and its [`Architecture`](crate::models::Architecture)
//! implementation.

use super::Bert;
use crate::Shape;
use crate::backend::Backend;
use crate::models::heads::{HeadSpec, HeadStyle, Init, Task};
use crate::params::ParamStore;
use crate::safetensors_io::{HostTensor, LoadError};
use serde::Deserialize;

/// The fields of `config.json` the encoder uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: u32,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f32 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// Which convention of the shared graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Bert,
    Roberta,
}

impl BertConfig {
    /// Parses `config.json`; `file` names it in errors.
    pub fn from_json(file: &str, text: &str) -> std::result::Result<Self, LoadError> {
        let cfg: BertConfig = serde_json::from_str(text).map_err(|e| LoadError::Config {
            file: file.into(),
            reason: e.to_string(),
        })?;
        cfg.flavor().map_err(|reason| LoadError::Config {
            file: file.into(),
            reason,
        })?;
        if cfg.hidden_act != "gelu" {
            return Err(LoadError::Config {
                file: file.into(),
                reason: format!(
                    "hidden_act `{}` is not supported (expected `gelu`)",
                    cfg.hidden_act
                ),
            });
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(LoadError::Config {
                file: file.into(),
                reason: format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            });
        }
        Ok(cfg)
    }

    pub fn flavor(&self) -> std::result::Result<Flavor, String> {
        match self.model_type.as_str() {
            "bert" => Ok(Flavor::Bert),
            "roberta" => Ok(Flavor::Roberta),
            other => Err(format!(
                "model_type `{other}` is not supported (expected `bert` or `roberta`)"
            )),
        }
    }

    /// Every encoder weight with its shape, in Hugging Face names (no `bert.` prefix).
    pub fn param_specs(&self) -> Vec<(String, Shape)> {
        let (c, i) = (self.hidden_size, self.intermediate_size);
        let mut out = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                Shape::new([self.vocab_size, c]),
            ),
            (
                "embeddings.position_embeddings.weight".to_string(),
                Shape::new([self.max_position_embeddings, c]),
            ),
            (
                "embeddings.token_type_embeddings.weight".to_string(),
                Shape::new([self.type_vocab_size, c]),
            ),
            ("embeddings.LayerNorm.weight".to_string(), Shape::new([c])),
            ("embeddings.LayerNorm.bias".to_string(), Shape::new([c])),
        ];
        for l in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            for (name, shape) in [
                ("attention.self.query.weight", vec![c, c]),
                ("attention.self.query.bias", vec![c]),
                ("attention.self.key.weight", vec![c, c]),
                ("attention.self.key.bias", vec![c]),
                ("attention.self.value.weight", vec![c, c]),
                ("attention.self.value.bias", vec![c]),
                ("attention.output.dense.weight", vec![c, c]),
                ("attention.output.dense.bias", vec![c]),
                ("attention.output.LayerNorm.weight", vec![c]),
                ("attention.output.LayerNorm.bias", vec![c]),
                ("intermediate.dense.weight", vec![i, c]),
                ("intermediate.dense.bias", vec![i]),
                ("output.dense.weight", vec![c, i]),
                ("output.dense.bias", vec![c]),
                ("output.LayerNorm.weight", vec![c]),
                ("output.LayerNorm.bias", vec![c]),
            ] {
                out.push((format!("{p}{name}"), Shape::new(shape)));
            }
        }
        out
    }

    /// A randomly initialised checkpoint for pretraining from scratch, as transformers
    /// initialises BERT: normal(0, 0.02) weights, zero biases, unit layer-norm gains.
    pub fn random_tensors(
        &self,
        seed: u64,
    ) -> std::collections::BTreeMap<String, crate::safetensors_io::HostTensor> {
        let mut rng = crate::rng::Rng::new(seed);
        self.param_specs()
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.numel();
                let data: Vec<f32> = if name.ends_with("LayerNorm.weight") {
                    vec![1.0; n]
                } else if name.ends_with(".bias") {
                    vec![0.0; n]
                } else {
                    (0..n).map(|_| 0.02 * rng.normal()).collect()
                };
                (name, crate::safetensors_io::HostTensor { shape, data })
            })
            .collect()
    }

    /// The pooler (`pooler.dense`), present in BERT checkpoints.
    pub fn pooler_specs(&self) -> Vec<(String, Shape)> {
        let c = self.hidden_size;
        vec![
            ("pooler.dense.weight".into(), Shape::new([c, c])),
            ("pooler.dense.bias".into(), Shape::new([c])),
        ]
    }
}

impl crate::models::Architecture for BertConfig {
    const MODEL_TYPES: &'static [&'static str] = &["bert", "roberta"];
    type Model = Bert;

    fn head(&self, task: Task) -> HeadSpec {
        let flavor = self.flavor().unwrap_or(Flavor::Bert);
        let (c, v) = (self.hidden_size, self.vocab_size);
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
        let (style, tensors) = match (task, flavor) {
            (Task::SequenceClassification { num_labels }, Flavor::Bert) => (
                HeadStyle::PooledClassifier,
                lin("classifier", num_labels, c),
            ),
            (Task::TokenClassification { num_labels }, _) => {
                (HeadStyle::TokenClassifier, lin("classifier", num_labels, c))
            }
            (Task::SequenceClassification { num_labels }, Flavor::Roberta) => (
                HeadStyle::DenseTanhClassifier,
                [
                    lin("classifier.dense", c, c),
                    lin("classifier.out_proj", num_labels, c),
                ]
                .concat(),
            ),
            // Refused by `supports`; an empty head keeps this total.
            (Task::CausalLm, _) => (HeadStyle::TiedLm, Vec::new()),
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
                (
                    HeadStyle::MaskedLm {
                        eps: self.layer_norm_eps,
                    },
                    s,
                )
            }
        };
        HeadSpec { style, tensors }
    }

    fn load<B: Backend>(
        &self,
        backend: &B,
        file: &str,
        tensors: std::collections::BTreeMap<String, HostTensor>,
        task: Task,
        store: &mut ParamStore<B>,
    ) -> std::result::Result<(Bert, std::collections::BTreeMap<String, HostTensor>), LoadError>
    {
        let flavor = self.flavor().map_err(|reason| LoadError::Config {
            file: file.into(),
            reason,
        })?;
        Bert::load(
            backend,
            self.clone(),
            file,
            tensors,
            uses_pooler(flavor, task),
            store,
        )
    }

    fn store_name<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix("bert.")
            .or_else(|| key.strip_prefix("roberta."))
            .unwrap_or(key)
    }

    const PREFIXES: &'static [&'static str] = &["bert", "roberta"];

    fn checkpoint_prefix(&self) -> &str {
        &self.model_type
    }

    fn supports(&self, task: Task) -> std::result::Result<(), String> {
        match task {
            Task::CausalLm => Err(format!(
                "`{}` is an encoder and has no causal-LM head: causal LM needs a decoder such as GPT-2 (`gpt2`)",
                self.model_type
            )),
            _ => Ok(()),
        }
    }

    fn is_other_head(&self, name: &str) -> bool {
        ["classifier.", "cls.", "lm_head.", "pooler."]
            .iter()
            .any(|p| name.starts_with(p))
    }

    fn parse(file: &str, text: &str) -> std::result::Result<Self, LoadError> {
        Self::from_json(file, text)
    }

    fn model_type(&self) -> &str {
        &self.model_type
    }

    fn dims(&self) -> crate::models::Dims {
        // RoBERTa's positions start after the padding id.
        let max_positions = match self.flavor() {
            Ok(Flavor::Roberta) => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id as usize + 1),
            _ => self.max_position_embeddings,
        };
        crate::models::Dims {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            max_positions,
        }
    }

    fn specs(&self, task: Task) -> (crate::models::Specs, crate::models::Specs) {
        let flavor = self.flavor().unwrap_or(Flavor::Bert);
        let mut encoder = self.param_specs();
        if uses_pooler(flavor, task) {
            encoder.extend(self.pooler_specs());
        }
        (
            encoder,
            crate::models::Architecture::head(self, task).shapes(),
        )
    }

    fn linears(&self, task: Task) -> crate::models::Specs {
        self.specs(task)
            .0
            .into_iter()
            .filter(|(n, s)| !n.starts_with("embeddings.") && s.rank() == 2)
            .filter_map(|(n, s)| {
                n.strip_suffix(".weight")
                    .map(|n| (n.to_string(), s.clone()))
            })
            .collect()
    }

    fn class_name(&self, task: Task) -> String {
        let family = match self.flavor() {
            Ok(Flavor::Roberta) => "Roberta",
            _ => "Bert",
        };
        let head = match task {
            Task::SequenceClassification { .. } => "ForSequenceClassification",
            Task::TokenClassification { .. } => "ForTokenClassification",
            Task::MaskedLm => "ForMaskedLM",
            Task::CausalLm => "ForCausalLM",
        };
        format!("{family}{head}")
    }

    fn random_tensors(
        &self,
        seed: u64,
    ) -> std::collections::BTreeMap<String, crate::safetensors_io::HostTensor> {
        BertConfig::random_tensors(self, seed)
    }
}

/// Only BERT's sequence classification reads the pooler (transformers builds the other task
/// models, and every RoBERTa one, without it).
pub fn uses_pooler(flavor: Flavor, task: Task) -> bool {
    matches!(task, Task::SequenceClassification { .. }) && flavor == Flavor::Bert
}
