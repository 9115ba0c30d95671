//! The architecture seam: what every model family tells the rest of Tunelab, from its
//! `config.json` alone. Code outside `models/` (the preflight, parameter counts, exports,
//! sessions, the CLI and the web app) reads a [`ModelConfig`] and never a family's own
//! config type. A family implements [`Architecture`] in its own file and is registered with
//! one line in `models/mod.rs`.

use crate::Shape;
use crate::models::heads::Task;
use crate::safetensors_io::{HostTensor, LoadError};
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

        impl ModelConfig {
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
        let e = ModelConfig::from_json("m/config.json", &ROBERTA.replace("roberta", "gpt2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("m/config.json"), "{e}");
        assert!(
            e.contains("model_type `gpt2` is not supported (expected `bert` or `roberta`)"),
            "{e}"
        );
        let e = ModelConfig::from_json("c.json", "{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.json") && e.contains("model_type"), "{e}");
        assert_eq!(super::one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
