//! The architecture seam: what every model family tells the rest of Tunelab, from its
//! `config.json` alone. Code outside `models/` (the preflight, parameter counts, exports,
//! sessions, the CLI and the web app) reads a [`ModelConfig`] and never a family's own
//! config type. A family implements [`Architecture`] in its own file and is registered with
//! one line in `models/mod.rs`.

use crate::Shape;
use crate::backend::{Backend, BackendError, Result as OpResult};
use crate::models::EncoderInput;
use crate::models::heads::{HeadSpec, Task};
use crate::models::kv_cache::KvCache;
use crate::nn::{Ctx, Linear};
use crate::params::{ParamId, ParamStore};
use crate::safetensors_io::{HostTensor, LoadError};
use crate::tape::Var;
use std::collections::BTreeMap;

/// The sizes every architecture has (the preflight's memory estimate, exports, the web app).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// How many input positions the model takes (virtual tokens count too).
    pub max_positions: usize,
}

/// Tensors by store name and shape.
pub type Specs = Vec<(String, Shape)>;

/// A model family, as its `config.json` describes it.
pub trait Architecture: Sized + Clone + PartialEq + std::fmt::Debug {
    /// The `model_type` values of `config.json` this family reads.
    const MODEL_TYPES: &'static [&'static str];
    /// The family's model, its weights in a [`ParamStore`].
    type Model: Encoder;

    /// Parses and checks `config.json`; `file` names it in errors.
    fn parse(file: &str, text: &str) -> Result<Self, LoadError>;
    /// `config.json`'s `model_type` (also the checkpoint's weight prefix, `bert.`).
    fn model_type(&self) -> &str;
    fn dims(&self) -> Dims;
    /// The model's own tensors for `task` (head excluded) and the task head's, under store
    /// names (no checkpoint prefix).
    fn specs(&self, task: Task) -> (Specs, Specs);
    /// The linear layers PEFT methods may target: module name and weight shape `(out, in)`.
    fn linears(&self, task: Task) -> Specs;
    /// transformers' class for a whole model trained for `task` (a full export's
    /// `architectures`).
    fn class_name(&self, task: Task) -> String;
    /// A randomly initialised checkpoint, as transformers initialises the family.
    fn random_tensors(&self, seed: u64) -> BTreeMap<String, HostTensor>;
    /// The task head: its tensors (names, shapes, initialisation) and how it runs.
    fn head(&self, task: Task) -> HeadSpec;
    /// Loads the model's tensors for `task` from a checkpoint's (`file` names it in errors)
    /// into `store`; returns the model and the tensors it did not use (a head's, or extra).
    fn load<B: Backend>(
        &self,
        backend: &B,
        file: &str,
        tensors: BTreeMap<String, HostTensor>,
        task: Task,
        store: &mut ParamStore<B>,
    ) -> Result<(Self::Model, BTreeMap<String, HostTensor>), LoadError>;
    /// A checkpoint tensor's store name (its family prefix, such as `bert.`, removed).
    fn store_name<'a>(&self, key: &'a str) -> &'a str;
    /// Every prefix the family's checkpoints put before the model's own tensors (`bert`,
    /// `roberta`; GPT-2's `transformer`).
    const PREFIXES: &'static [&'static str];
    /// The prefix this model's task checkpoints put before its own tensors (what exports
    /// write).
    fn checkpoint_prefix(&self) -> &str;
    /// Whether the family has a head for `task`; the reason names what it lacks.
    fn supports(&self, task: Task) -> Result<(), String>;
    /// A store tensor as the family's checkpoints hold it (GPT-2 keeps its `Conv1D` weights
    /// `(in, out)`; the store holds every linear weight `(out, in)`).
    fn export_tensor(&self, _name: &str, t: HostTensor) -> HostTensor {
        t
    }
    /// Whether the family's checkpoints hold linear weights `(in, out)` (GPT-2's `Conv1D`):
    /// PEFT's `fan_in_fan_out` for the layer tuners' configs.
    fn fan_in_fan_out(&self) -> bool {
        false
    }
    /// PEFT's default target modules for this family, for the methods that have them
    /// (`lora`: targets; `ia3`: targets and feed-forward modules), as PEFT's per-model
    /// mappings give them; `None` keeps the method's own defaults (BERT's names).
    fn peft_defaults(&self, _method: &str) -> Option<(Vec<String>, Vec<String>)> {
        None
    }
    /// Whether a checkpoint tensor left unused is another task's head (not an error).
    fn is_other_head(&self, name: &str) -> bool;
    /// `config.json`'s `bos_token_id` (what generation starts from when the text is empty).
    fn bos_token_id(&self) -> Option<u32> {
        None
    }
    /// `config.json`'s `eos_token_id` (one or a list): generation stops at any of them.
    fn eos_token_ids(&self) -> Vec<u32> {
        Vec::new()
    }
}

/// What a loaded model does for the task model around it.
pub trait Encoder: Clone + std::fmt::Debug {
    fn word_embeddings(&self) -> ParamId;
    /// The sequence classifier's pooler, where the family has one.
    fn pooler(&self) -> Option<&Linear>;
    /// The linear layers PEFT may target (`encoder.layer.0.attention.self.query`).
    fn linear_names(&self) -> Vec<&str>;
    /// Position ids for a batch `(batch, total)` whose first `virtual_tokens` positions are
    /// a prompt's, from the attention mask.
    fn positions(
        &self,
        mask: &[f32],
        batch: usize,
        total: usize,
        virtual_tokens: usize,
    ) -> Vec<u32>;
    /// Hidden states `(B, T', C)`; `prompt (B, P, C)` goes before the tokens.
    fn encode<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> OpResult<Var>;
    /// What a head that reads the first position needs: the hidden states of at least the
    /// first position (the family may skip work the others need only; by default, all of them).
    fn encode_first<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> OpResult<Var> {
        self.encode(cx, input, prompt)
    }
    /// Hidden states `(B, n, C)` of `ids (B, n)`, the tokens after the `cache.len` positions
    /// whose keys and values `cache` holds; it extends the cache with theirs. `prompt
    /// (B, P, C)` goes first, into an empty cache only. Causal families implement it; an
    /// encoder, whose positions all see each other, cannot generate.
    fn decode<B: Backend>(
        &self,
        _cx: &mut Ctx<'_, B>,
        _ids: &B::Tensor,
        _prompt: Option<Var>,
        _cache: &mut KvCache<B::Tensor>,
    ) -> OpResult<Var> {
        Err(BackendError::Shape {
            op: "decode",
            msg: "this model family does not generate text".into(),
        })
    }
}

/// A `config.json` field that is one token id, a list of them, or null (`eos_token_id`).
pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Ids {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match <Option<Ids> as serde::Deserialize>::deserialize(d)? {
        None => Vec::new(),
        Some(Ids::One(i)) => vec![i],
        Some(Ids::Many(v)) => v,
    })
}

/// "`a`, `b` or `c`".
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// `config.json`'s `model_type`, or an error naming the file.
pub(crate) fn model_type_of(file: &str, text: &str) -> Result<String, LoadError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| LoadError::Config {
        file: file.into(),
        reason: e.to_string(),
    })?;
    match v.get("model_type") {
        Some(serde_json::Value::String(t)) => Ok(t.clone()),
        Some(_) => Err(LoadError::Config {
            file: file.into(),
            reason: "`model_type` must be a string".into(),
        }),
        None => Err(LoadError::Config {
            file: file.into(),
            reason: "missing field `model_type`".into(),
        }),
    }
}

macro_rules! architectures {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        /// A model's `config.json`, read by the family its `model_type` names.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ModelConfig {
            $($variant($ty),)*
        }

        /// A loaded model of any registered family.
        #[derive(Debug, Clone)]
        pub enum Encoder {
            $($variant(<$ty as Architecture>::Model),)*
        }

        impl Encoder {
            pub fn word_embeddings(&self) -> ParamId {
                match self { $(Self::$variant(m) => arch::Encoder::word_embeddings(m),)* }
            }
            pub fn pooler(&self) -> Option<&crate::nn::Linear> {
                match self { $(Self::$variant(m) => arch::Encoder::pooler(m),)* }
            }
            pub fn linear_names(&self) -> Vec<&str> {
                match self { $(Self::$variant(m) => arch::Encoder::linear_names(m),)* }
            }
            pub fn positions(&self, mask: &[f32], batch: usize, total: usize, virtual_tokens: usize) -> Vec<u32> {
                match self { $(Self::$variant(m) => arch::Encoder::positions(m, mask, batch, total, virtual_tokens),)* }
            }
            pub fn encode<B: crate::backend::Backend>(
                &self,
                cx: &mut crate::nn::Ctx<'_, B>,
                input: &EncoderInput<B::Tensor>,
                prompt: Option<crate::tape::Var>,
            ) -> crate::backend::Result<crate::tape::Var> {
                match self { $(Self::$variant(m) => arch::Encoder::encode(m, cx, input, prompt),)* }
            }
            pub fn decode<B: crate::backend::Backend>(
                &self,
                cx: &mut crate::nn::Ctx<'_, B>,
                ids: &B::Tensor,
                prompt: Option<crate::tape::Var>,
                cache: &mut crate::models::kv_cache::KvCache<B::Tensor>,
            ) -> crate::backend::Result<crate::tape::Var> {
                match self { $(Self::$variant(m) => arch::Encoder::decode(m, cx, ids, prompt, cache),)* }
            }
            pub fn encode_first<B: crate::backend::Backend>(
                &self,
                cx: &mut crate::nn::Ctx<'_, B>,
                input: &EncoderInput<B::Tensor>,
                prompt: Option<crate::tape::Var>,
            ) -> crate::backend::Result<crate::tape::Var> {
                match self { $(Self::$variant(m) => arch::Encoder::encode_first(m, cx, input, prompt),)* }
            }
        }

        impl ModelConfig {
            /// The task head (see [`Architecture::head`]).
            pub fn head(&self, task: Task) -> heads::HeadSpec {
                match self { $(Self::$variant(c) => c.head(task),)* }
            }

            /// Loads the model (see [`Architecture::load`]).
            pub fn load<B: crate::backend::Backend>(
                &self,
                backend: &B,
                file: &str,
                tensors: BTreeMap<String, HostTensor>,
                task: Task,
                store: &mut crate::params::ParamStore<B>,
            ) -> Result<(Encoder, BTreeMap<String, HostTensor>), LoadError> {
                match self {
                    $(Self::$variant(c) => {
                        let (m, rest) = c.load(backend, file, tensors, task, store)?;
                        Ok((Encoder::$variant(m), rest))
                    })*
                }
            }

            pub fn store_name<'a>(&self, key: &'a str) -> &'a str {
                match self { $(Self::$variant(c) => c.store_name(key),)* }
            }

            pub fn is_other_head(&self, name: &str) -> bool {
                match self { $(Self::$variant(c) => c.is_other_head(name),)* }
            }

            /// Every checkpoint prefix of every registered family.
            pub fn all_prefixes() -> Vec<&'static str> {
                let mut all = Vec::new();
                $(all.extend_from_slice(<$ty as Architecture>::PREFIXES);)*
                all
            }

            pub fn checkpoint_prefix(&self) -> &str {
                match self { $(Self::$variant(c) => c.checkpoint_prefix(),)* }
            }

            /// Whether the family has a head for `task` (an error naming the model type and
            /// what it lacks).
            pub fn supports(&self, task: Task) -> Result<(), String> {
                match self { $(Self::$variant(c) => c.supports(task),)* }
            }

            pub fn export_tensor(&self, name: &str, t: HostTensor) -> HostTensor {
                match self { $(Self::$variant(c) => c.export_tensor(name, t),)* }
            }

            pub fn fan_in_fan_out(&self) -> bool {
                match self { $(Self::$variant(c) => c.fan_in_fan_out(),)* }
            }

            pub fn peft_defaults(&self, method: &str) -> Option<(Vec<String>, Vec<String>)> {
                match self { $(Self::$variant(c) => c.peft_defaults(method),)* }
            }

            /// Every `model_type` Tunelab reads.
            pub fn model_types() -> Vec<&'static str> {
                let mut all = Vec::new();
                $(all.extend_from_slice(<$ty as Architecture>::MODEL_TYPES);)*
                all
            }

            /// Parses `config.json` with the family its `model_type` names; `file` names it
            /// in errors.
            pub fn from_json(file: &str, text: &str) -> Result<Self, LoadError> {
                let t = model_type_of(file, text)?;
                $(if <$ty as Architecture>::MODEL_TYPES.contains(&t.as_str()) {
                    return <$ty as Architecture>::parse(file, text).map(Self::$variant);
                })*
                Err(LoadError::Config {
                    file: file.into(),
                    reason: format!(
                        "model_type `{t}` is not supported (expected {})",
                        one_of(&Self::model_types())
                    ),
                })
            }

            pub fn model_type(&self) -> &str {
                match self { $(Self::$variant(c) => c.model_type(),)* }
            }

            pub fn dims(&self) -> Dims {
                match self { $(Self::$variant(c) => c.dims(),)* }
            }

            pub fn bos_token_id(&self) -> Option<u32> {
                match self { $(Self::$variant(c) => c.bos_token_id(),)* }
            }

            pub fn eos_token_ids(&self) -> Vec<u32> {
                match self { $(Self::$variant(c) => c.eos_token_ids(),)* }
            }

            /// The model's tensors for `task` and the head's (see [`Architecture::specs`]).
            pub fn specs(&self, task: Task) -> (arch::Specs, arch::Specs) {
                match self { $(Self::$variant(c) => c.specs(task),)* }
            }

            pub fn linears(&self, task: Task) -> arch::Specs {
                match self { $(Self::$variant(c) => c.linears(task),)* }
            }

            pub fn class_name(&self, task: Task) -> String {
                match self { $(Self::$variant(c) => c.class_name(task),)* }
            }

            pub fn random_tensors(&self, seed: u64) -> BTreeMap<String, HostTensor> {
                match self { $(Self::$variant(c) => c.random_tensors(seed),)* }
            }
        }
    };
}
pub(crate) use architectures;

#[cfg(test)]
mod tests {
    use crate::models::ModelConfig;
    use crate::models::heads::Task;

    const ROBERTA: &str = r#"{"model_type":"roberta","vocab_size":50,"hidden_size":8,"num_hidden_layers":1,
        "num_attention_heads":2,"intermediate_size":12,"max_position_embeddings":20,"pad_token_id":1}"#;

    #[test]
    fn model_type_picks_the_family_and_unknown_ones_are_named() {
        let c = ModelConfig::from_json("config.json", ROBERTA).unwrap();
        assert_eq!(c.model_type(), "roberta");
        let d = c.dims();
        // RoBERTa's positions start after the padding id: 20 - (1 + 1).
        assert_eq!((d.hidden_size, d.max_positions), (8, 18));
        assert_eq!(
            c.class_name(Task::SequenceClassification { num_labels: 2 }),
            "RobertaForSequenceClassification"
        );
        // RoBERTa's sequence head has no pooler; its linears are the layer's six.
        assert_eq!(
            c.linears(Task::SequenceClassification { num_labels: 2 })
                .len(),
            6
        );
        let e = ModelConfig::from_json("m/config.json", &ROBERTA.replace("roberta", "t5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("m/config.json"), "{e}");
        assert!(
            e.contains("model_type `t5` is not supported (expected `bert`, `roberta` or `gpt2`)"),
            "{e}"
        );
        let e = ModelConfig::from_json("c.json", "{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.json") && e.contains("model_type"), "{e}");
        assert_eq!(super::one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
