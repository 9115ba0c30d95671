//! GPT-2 as the architecture seam sees it: `config.json`'s fields, the family's tensors and
//! heads per task, and its [`Architecture`](crate::models::Architecture) implementation.
//!
//! Checkpoints hold the blocks' projections as `Conv1D` weights, `(in, out)`; the store holds
//! every linear weight `(out, in)` as [`Linear`](crate::nn::Linear) reads it, so they are
//! transposed at load and back at export.

use super::Gpt2;
use crate::Shape;
use crate::backend::{Activation, Backend};
use crate::models::heads::{HeadSpec, HeadStyle, Init, Task};
use crate::models::{Dims, Specs};
use crate::params::ParamStore;
use crate::safetensors_io::{HostTensor, LoadError};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The fields of GPT-2's `config.json` the model uses (transformers' `GPT2Config` names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gpt2Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// The MLP's inner size; `4 n_embd` when absent or null.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// One id or a list.
    #[serde(default, deserialize_with = "crate::models::arch::one_or_many")]
    pub eos_token_id: Vec<u32>,
}

fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f32 {
    1e-5
}
fn yes() -> bool {
    true
}

/// The blocks' linear layers: name in the block, `(out, in)` from `(C, I)`.
fn block_linears(c: usize, i: usize) -> [(&'static str, [usize; 2]); 4] {
    [
        ("attn.c_attn", [3 * c, c]),
        ("attn.c_proj", [c, c]),
        ("mlp.c_fc", [i, c]),
        ("mlp.c_proj", [c, i]),
    ]
}

impl Gpt2Config {
    /// Parses `config.json`; `file` names it in errors.
    pub fn from_json(file: &str, text: &str) -> Result<Self, LoadError> {
        let err = |reason: String| LoadError::Config {
            file: file.into(),
            reason,
        };
        let cfg: Gpt2Config = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        if Activation::from_hf(&cfg.activation_function).is_none() {
            return Err(err(format!(
                "activation_function `{}` is not supported (expected {})",
                cfg.activation_function,
                crate::models::arch::one_of(Activation::HF_NAMES)
            )));
        }
        if cfg.n_head == 0 || !cfg.n_embd.is_multiple_of(cfg.n_head) {
            return Err(err(format!(
                "n_embd {} is not divisible by n_head {}",
                cfg.n_embd, cfg.n_head
            )));
        }
        for (flag, on, want) in [
            ("scale_attn_weights", cfg.scale_attn_weights, true),
            (
                "scale_attn_by_inverse_layer_idx",
                cfg.scale_attn_by_inverse_layer_idx,
                false,
            ),
            (
                "reorder_and_upcast_attn",
                cfg.reorder_and_upcast_attn,
                false,
            ),
        ] {
            if on != want {
                return Err(err(format!(
                    "`{flag}: {on}` is not supported (GPT-2's attention scales by 1/sqrt(head size): `{flag}: {want}`)"
                )));
            }
        }
        Ok(cfg)
    }

    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// The MLP's activation (checked by [`Gpt2Config::from_json`]; GPT-2's own otherwise).
    pub fn activation(&self) -> Activation {
        Activation::from_hf(&self.activation_function).unwrap_or(Activation::GeluTanh)
    }

    /// Every model tensor in store layout (no `transformer.` prefix, linear weights
    /// `(out, in)`).
    pub fn param_specs(&self) -> Specs {
        let (c, i) = (self.n_embd, self.inner());
        let mut out = vec![
            ("wte.weight".to_string(), Shape::new([self.vocab_size, c])),
            ("wpe.weight".to_string(), Shape::new([self.n_positions, c])),
        ];
        for l in 0..self.n_layer {
            let p = format!("h.{l}.");
            out.push((format!("{p}ln_1.weight"), Shape::new([c])));
            out.push((format!("{p}ln_1.bias"), Shape::new([c])));
            for (k, (name, [o, n])) in block_linears(c, i).into_iter().enumerate() {
                if k == 2 {
                    out.push((format!("{p}ln_2.weight"), Shape::new([c])));
                    out.push((format!("{p}ln_2.bias"), Shape::new([c])));
                }
                out.push((format!("{p}{name}.weight"), Shape::new([o, n])));
                out.push((format!("{p}{name}.bias"), Shape::new([o])));
            }
        }
        out.push(("ln_f.weight".into(), Shape::new([c])));
        out.push(("ln_f.bias".into(), Shape::new([c])));
        out
    }

    /// Whether a store tensor is a `Conv1D` weight (held `(in, out)` in checkpoints).
    pub fn is_conv1d(name: &str) -> bool {
        name.starts_with("h.")
            && name.ends_with(".weight")
            && ["attn.c_attn.", "attn.c_proj.", "mlp.c_fc.", "mlp.c_proj."]
                .iter()
                .any(|m| name.contains(m))
    }
}

/// `(r, c)` → `(c, r)`.
pub(crate) fn transpose(t: HostTensor) -> HostTensor {
    let d = t.shape.dims();
    if d.len() != 2 {
        return t;
    }
    let (r, c) = (d[0], d[1]);
    let mut data = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = t.data[i * c + j];
        }
    }
    HostTensor {
        shape: Shape::new([c, r]),
        data,
    }
}

impl crate::models::Architecture for Gpt2Config {
    const MODEL_TYPES: &'static [&'static str] = &["gpt2"];
    const PREFIXES: &'static [&'static str] = &["transformer"];
    type Model = Gpt2;

    fn parse(file: &str, text: &str) -> Result<Self, LoadError> {
        Self::from_json(file, text)
    }

    fn model_type(&self) -> &str {
        &self.model_type
    }

    fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id.clone()
    }

    fn dims(&self) -> Dims {
        Dims {
            vocab_size: self.vocab_size,
            hidden_size: self.n_embd,
            num_hidden_layers: self.n_layer,
            num_attention_heads: self.n_head,
            intermediate_size: self.inner(),
            max_positions: self.n_positions,
        }
    }

    fn specs(&self, task: Task) -> (Specs, Specs) {
        (self.param_specs(), self.head(task).shapes())
    }

    fn linears(&self, _task: Task) -> Specs {
        self.param_specs()
            .into_iter()
            .filter(|(n, _)| Self::is_conv1d(n))
            .filter_map(|(n, s)| n.strip_suffix(".weight").map(|n| (n.to_string(), s)))
            .collect()
    }

    fn class_name(&self, task: Task) -> String {
        match task {
            Task::SequenceClassification { .. } => "GPT2ForSequenceClassification",
            Task::TokenClassification { .. } => "GPT2ForTokenClassification",
            Task::MaskedLm | Task::CausalLm => "GPT2LMHeadModel",
        }
        .into()
    }

    fn random_tensors(&self, seed: u64) -> BTreeMap<String, HostTensor> {
        // transformers' GPT-2 init: normal(0, 0.02), the residual projections (`c_proj`)
        // normal(0, 0.02 / sqrt(2 n_layer)), zero biases, unit layer-norm gains.
        let mut rng = crate::rng::Rng::new(seed);
        let proj_std = 0.02 / (2.0 * self.n_layer.max(1) as f32).sqrt();
        self.param_specs()
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.numel();
                let data: Vec<f32> = if name.contains("ln_") && name.ends_with(".weight") {
                    vec![1.0; n]
                } else if name.ends_with(".bias") {
                    vec![0.0; n]
                } else {
                    let std = if name.ends_with("c_proj.weight") {
                        proj_std
                    } else {
                        0.02
                    };
                    (0..n).map(|_| std * rng.normal()).collect()
                };
                let t = HostTensor { shape, data };
                let t = self.export_tensor(&name, t);
                (name, t)
            })
            .collect()
    }

    fn head(&self, task: Task) -> HeadSpec {
        let c = self.n_embd;
        let (style, tensors) = match task {
            Task::SequenceClassification { num_labels } => (
                HeadStyle::LastTokenClassifier,
                vec![(
                    "score.weight".to_string(),
                    Shape::new([num_labels, c]),
                    Init::Normal,
                )],
            ),
            Task::TokenClassification { num_labels } => (
                HeadStyle::TokenClassifier,
                vec![
                    (
                        "classifier.weight".to_string(),
                        Shape::new([num_labels, c]),
                        Init::Normal,
                    ),
                    (
                        "classifier.bias".to_string(),
                        Shape::new([num_labels]),
                        Init::Zero,
                    ),
                ],
            ),
            // Masked LM is refused by `supports`.
            Task::CausalLm | Task::MaskedLm => (HeadStyle::TiedLm, Vec::new()),
        };
        HeadSpec { style, tensors }
    }

    fn load<B: Backend>(
        &self,
        backend: &B,
        file: &str,
        tensors: BTreeMap<String, HostTensor>,
        _task: Task,
        store: &mut ParamStore<B>,
    ) -> Result<(Gpt2, BTreeMap<String, HostTensor>), LoadError> {
        Gpt2::load(backend, self.clone(), file, tensors, store)
    }

    fn store_name<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix("transformer.").unwrap_or(key)
    }

    fn checkpoint_prefix(&self) -> &str {
        "transformer"
    }

    fn supports(&self, task: Task) -> Result<(), String> {
        match task {
            Task::MaskedLm => Err(
                "`gpt2` is a decoder and has no masked-LM head: train it with `causal-lm`".into(),
            ),
            _ => Ok(()),
        }
    }

    fn is_other_head(&self, name: &str) -> bool {
        // Heads of other tasks (the LM head is tied: its copy is the word embeddings), and
        // the causal-mask buffers older checkpoints saved.
        ["lm_head.", "score.", "classifier."]
            .iter()
            .any(|p| name.starts_with(p))
            || name.ends_with(".attn.bias")
            || name.ends_with(".attn.masked_bias")
    }

    fn export_tensor(&self, name: &str, t: HostTensor) -> HostTensor {
        if Self::is_conv1d(name) {
            transpose(t)
        } else {
            t
        }
    }

    fn fan_in_fan_out(&self) -> bool {
        true
    }

    fn peft_defaults(&self, method: &str) -> Option<(Vec<String>, Vec<String>)> {
        // PEFT's mappings for `gpt2`.
        match method {
            "lora" => Some((vec!["c_attn".into()], Vec::new())),
            "ia3" => Some((
                vec!["c_attn".into(), "mlp.c_proj".into()],
                vec!["mlp.c_proj".into()],
            )),
            _ => None,
        }
    }
}
