//! Parameter-efficient fine-tuning methods, one file each, behind one registry.
//!
//! Two shapes share one entry point, [`Method::apply`]:
//! - **layer methods** choose trainable parameters or attach modules to named layers
//!   ([`full`], [`bitfit`], [`lora`]);
//! - **input methods** prepend learned embeddings to the input ([`prompt`]).
//!
//! Every method first freezes the whole model; heads are then always trainable.

pub mod bitfit;
pub mod full;
pub mod lora;
pub mod prompt;

use crate::backend::Backend;
use crate::nn::Adapters;
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Problems applying a method to a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeftError {
    #[error("LoRA target modules {patterns:?} match no linear layer; layers look like `{example}`")]
    NoTargets {
        patterns: Vec<String>,
        example: String,
    },
    #[error("{method}: {reason}")]
    Invalid {
        method: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Backend(#[from] crate::BackendError),
}

/// A method and its options (serde: `{"method": "lora", "r": 8, ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    /// Every parameter trains (the baseline).
    Full,
    /// Only biases (and the head) train.
    Bitfit,
    Lora(lora::LoraConfig),
    Prompt(prompt::PromptConfig),
}

/// The registry: every method's name and one-line description, in the order shown to users.
pub const METHODS: &[(&str, &str)] = &[
    ("full", "every weight trains (the baseline)"),
    ("bitfit", "only the bias vectors and the head train"),
    (
        "lora",
        "low-rank updates A, B beside chosen linear layers; the weights stay frozen",
    ),
    (
        "prompt",
        "learned virtual tokens prepended to the input; the model stays frozen",
    ),
];

/// What a model exposes to PEFT methods.
#[derive(Debug)]
pub struct Target<'a, B: Backend> {
    pub backend: &'a B,
    pub store: &'a mut ParamStore<B>,
    pub adapters: &'a mut Adapters,
    /// Names of the model's linear layers (`encoder.layer.0.attention.self.query`).
    pub linear_names: Vec<String>,
    /// Names of the head's parameters (always trainable).
    pub head: Vec<String>,
    pub word_embeddings: ParamId,
    pub rng: &'a mut Rng,
}

/// What applying a method added that the forward pass needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Prompt tuning's `(P, C)` virtual token embeddings.
    pub prompt: Option<ParamId>,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Bitfit => "bitfit",
            Self::Lora(_) => "lora",
            Self::Prompt(_) => "prompt",
        }
    }

    /// Checks the method's options before anything is built: the reason names the option.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Full | Self::Bitfit => Ok(()),
            Self::Lora(cfg) => cfg.validate(),
            Self::Prompt(cfg) => cfg.validate(),
        }
    }

    /// Freezes the model, applies the method, unfreezes the head.
    pub fn apply<B: Backend>(&self, t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
        t.store.freeze_all();
        let applied = match self {
            Self::Full => full::apply(t),
            Self::Bitfit => bitfit::apply(t),
            Self::Lora(cfg) => lora::apply(cfg, t),
            Self::Prompt(cfg) => prompt::apply(cfg, t),
        }?;
        for name in &t.head {
            let id = t.store.id(name).map_err(|e| PeftError::Invalid {
                method: self.name(),
                reason: e.to_string(),
            })?;
            t.store.set_trainable(id, true);
        }
        Ok(applied)
    }
}
