//! Parameter-efficient fine-tuning methods: one file each, every one a [`PeftMethod`], and one
//! registry ([`Method`], made by `registry!` at the bottom of this file).
//!
//! A method owns its options (with their CLI flags, form keys, labels and ranges), checks
//! them, applies itself to a model (choosing trainables, adding parameters, attaching
//! [`LinearHook`](crate::nn::LinearHook)s to named layers), counts what it trains from
//! shapes alone, names its default learning rate and its export format. Everything else —
//! the CLI's flags and help, the web form, `tunelab bench`, exports and imports — reads the
//! registry. Adding a method is its file plus one line in `registry!`.
//!
//! Every method first freezes the whole model; heads are then always trainable.

pub mod bitfit;
pub mod full;
pub mod ia3;
pub mod lora;
mod options;
pub mod prompt;

pub use options::{Opt, OptKind};

use crate::Shape;
use crate::backend::Backend;
use crate::nn::Adapters;
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Problems applying a method to a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeftError {
    #[error(
        "{method} target modules {patterns:?} match no linear layer; layers look like `{example}`"
    )]
    NoTargets {
        method: &'static str,
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

/// What a model exposes to PEFT methods.
#[derive(Debug)]
pub struct Target<'a, B: Backend> {
    pub backend: &'a B,
    pub store: &'a mut ParamStore<B>,
    pub adapters: &'a mut Adapters<B>,
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

/// A model described by shapes alone (no weights), for counting what a method trains.
#[derive(Debug, Clone, PartialEq)]
pub struct Shapes {
    /// The encoder's parameters (head excluded) under their store names.
    pub params: Vec<(String, Shape)>,
    /// The linear layers PEFT can target: module name and weight shape `(out, in)`.
    pub linears: Vec<(String, Shape)>,
    pub hidden_size: usize,
}

/// What a method trains, besides the head: values of the model's own parameters it
/// unfreezes, and values it adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub unfrozen: usize,
    pub added: usize,
}

/// How a method's weights are exported (see [`crate::export`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// A PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) of this
    /// `peft_type`.
    Peft {
        peft_type: &'static str,
        keys: PeftKeys,
    },
    /// The trained tensors under their Hugging Face names, in one safetensors file.
    Tensors { file: &'static str },
    /// The whole model as a transformers folder.
    Model,
}

/// How PEFT names a method's tensors in `adapter_model.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftKeys {
    /// Tuners that change layers (LoRA, IA3): `base_model.model.<bert>.<name>`, the head
    /// `base_model.model.<head>`.
    Tuner,
    /// Prompt learning: `prompt_embeddings`, the head `base_model.<head>`.
    Prompt,
}

/// What an export's `adapter_config.json` may need from the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelDims {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
}

/// One PEFT method: its options are the implementing type's serde fields.
pub trait PeftMethod:
    Sized + Clone + PartialEq + Default + Serialize + serde::de::DeserializeOwned + std::fmt::Debug
{
    /// The registry name (`lora`): config files, `--method`, URLs, run folders.
    const NAME: &'static str;
    /// The name shown to people (`LoRA`).
    const TITLE: &'static str;
    /// One line for `--help` and the CLI's listings.
    const SUMMARY: &'static str;
    /// A plain-language sentence for the web page.
    const HELP: &'static str;
    /// The default peak learning rate.
    const LR: f64;
    /// The options people set (CLI flags, form fields).
    const OPTIONS: &'static [Opt] = &[];
    const EXPORT: ExportKind;

    /// Checks the options before anything is built: the reason names the option.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// Chooses trainables, adds parameters and hooks. The model is frozen before and the
    /// head unfrozen after.
    fn apply<B: Backend>(&self, t: &mut Target<'_, B>) -> Result<Applied, PeftError>;
    /// What [`PeftMethod::apply`] would train on a model of these shapes.
    fn count(&self, m: &Shapes) -> Result<Count, PeftError>;
    /// Virtual tokens the method puts before every input.
    fn virtual_tokens(&self) -> usize {
        0
    }
    /// The method with its main options, for messages.
    fn describe(&self) -> String {
        Self::TITLE.to_string()
    }
    /// The method's own fields of PEFT's `adapter_config.json` (beside `peft_type`,
    /// `task_type`, `base_model_name_or_path`, `modules_to_save`, `inference_mode`).
    fn peft_config(&self, _dims: &ModelDims) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
    /// The method an `adapter_config.json` of its `peft_type` describes; the reason names
    /// the field.
    fn from_peft(_cfg: &serde_json::Value) -> Result<Self, String> {
        Err(format!("{} has no PEFT format", Self::NAME))
    }
}

/// A method's entry in the registry, for listings (CLI help, the web form, benches).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Info {
    pub name: &'static str,
    pub title: &'static str,
    pub summary: &'static str,
    pub help: &'static str,
    pub lr: f64,
    pub options: &'static [Opt],
}

/// PEFT's matching rule for a string `target_modules` entry: a layer matches when its name
/// equals the pattern or ends with `.pattern`.
pub fn matches(name: &str, pattern: &str) -> bool {
    name == pattern || name.ends_with(&format!(".{pattern}"))
}

/// The layers `patterns` pick out of `names`, PEFT's way; an error names the method and an
/// example layer when none matches.
pub fn targets<'a>(
    method: &'static str,
    patterns: &[String],
    names: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<Vec<&'a str>, PeftError> {
    let picked: Vec<&str> = names
        .clone()
        .into_iter()
        .filter(|n| patterns.iter().any(|p| matches(n, p)))
        .collect();
    if picked.is_empty() {
        return Err(PeftError::NoTargets {
            method,
            patterns: patterns.to_vec(),
            example: names.into_iter().next().unwrap_or_default().to_string(),
        });
    }
    Ok(picked)
}

/// The model's linear layers `patterns` pick (PEFT's rule), each with its weight's shape
/// `(out, in)`; an error names the method when none matches.
pub fn target_layers<B: Backend>(
    t: &Target<'_, B>,
    method: &'static str,
    patterns: &[String],
) -> Result<Vec<(String, Shape)>, PeftError> {
    let names = targets(method, patterns, t.linear_names.iter().map(String::as_str))?;
    names
        .into_iter()
        .map(|name| {
            let w = param_id(t, method, &format!("{name}.weight"))?;
            Ok((name.to_string(), t.backend.shape(&t.store.get(w).value)))
        })
        .collect()
}

/// The sum of `per_layer(name, weight shape)` over the layers `patterns` pick out of a
/// model described by shapes (what [`PeftMethod::count`] adds).
pub fn count_layers(
    method: &'static str,
    patterns: &[String],
    m: &Shapes,
    per_layer: impl Fn(&str, &Shape) -> usize,
) -> Result<usize, PeftError> {
    let picked = targets(method, patterns, m.linears.iter().map(|(n, _)| n.as_str()))?;
    Ok(m.linears
        .iter()
        .filter(|(n, _)| picked.contains(&n.as_str()))
        .map(|(n, s)| per_layer(n, s))
        .sum())
}

/// Adds a new trainable parameter for `method`; a clash of names is the method's error.
pub fn add_param<B: Backend>(
    t: &mut Target<'_, B>,
    method: &'static str,
    name: String,
    value: B::Tensor,
) -> Result<ParamId, PeftError> {
    t.store
        .insert(name, value, true)
        .map_err(|e| PeftError::Invalid {
            method,
            reason: e.to_string(),
        })
}

/// The id of a parameter the method needs; a missing one is the method's error.
pub fn param_id<B: Backend>(
    t: &Target<'_, B>,
    method: &'static str,
    name: &str,
) -> Result<ParamId, PeftError> {
    t.store.id(name).map_err(|e| PeftError::Invalid {
        method,
        reason: e.to_string(),
    })
}

/// The fields of a JSON object literal.
pub(crate) fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// A PEFT config's list of module names (`target_modules`): a list, or one name.
pub(crate) fn names(cfg: &serde_json::Value, key: &str) -> Result<Vec<String>, String> {
    match cfg.get(key) {
        Some(serde_json::Value::Array(a)) => Ok(a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()),
        Some(serde_json::Value::String(one)) => Ok(vec![one.clone()]),
        _ => Err(format!("`{key}` must be a list of names")),
    }
}

/// Checked options or the method's error.
fn checked<M: PeftMethod>(m: &M) -> Result<(), PeftError> {
    m.validate().map_err(|reason| PeftError::Invalid {
        method: M::NAME,
        reason,
    })
}

macro_rules! registry {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        /// A method and its options (serde: `{"method": "lora", "r": 8, ...}`).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "method", rename_all = "lowercase")]
        pub enum Method {
            $($variant($ty),)*
        }

        /// Every method, in the order shown to users.
        pub const REGISTRY: &[Info] = &[$(Info {
            name: <$ty>::NAME,
            title: <$ty>::TITLE,
            summary: <$ty>::SUMMARY,
            help: <$ty>::HELP,
            lr: <$ty>::LR,
            options: <$ty>::OPTIONS,
        },)*];

        impl Method {
            /// The method called `name` with its default options.
            pub fn named(name: &str) -> Option<Method> {
                $(if name == <$ty>::NAME {
                    return Some(Method::$variant(<$ty>::default()));
                })*
                None
            }

            /// The method a PEFT `adapter_config.json` of `peft_type` describes.
            pub fn from_peft(peft_type: &str, cfg: &serde_json::Value) -> Option<Result<Method, String>> {
                $(if matches!(<$ty>::EXPORT, ExportKind::Peft { peft_type: t, .. } if t == peft_type) {
                    return Some(<$ty>::from_peft(cfg).map(Method::$variant));
                })*
                None
            }

            pub fn name(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$ty>::NAME,)* }
            }

            /// The default peak learning rate.
            pub fn default_lr(&self) -> f64 {
                match self { $(Self::$variant(_) => <$ty>::LR,)* }
            }

            /// The method's options.
            pub fn options(&self) -> &'static [Opt] {
                match self { $(Self::$variant(_) => <$ty>::OPTIONS,)* }
            }

            /// Checks the method's options before anything is built: the reason names the
            /// option.
            pub fn validate(&self) -> Result<(), String> {
                match self { $(Self::$variant(m) => m.validate(),)* }
            }

            /// Freezes the model, applies the method, unfreezes the head.
            pub fn apply<B: Backend>(&self, t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
                t.store.freeze_all();
                let applied = match self {
                    $(Self::$variant(m) => { checked(m)?; m.apply(t) })*
                }?;
                for name in &t.head {
                    let id = param_id(t, self.name(), name)?;
                    t.store.set_trainable(id, true);
                }
                Ok(applied)
            }

            /// What the method trains on a model of these shapes (head excluded).
            pub fn count(&self, m: &Shapes) -> Result<Count, PeftError> {
                match self { $(Self::$variant(u) => { checked(u)?; u.count(m) })* }
            }

            pub fn virtual_tokens(&self) -> usize {
                match self { $(Self::$variant(m) => m.virtual_tokens(),)* }
            }

            /// The method and its main options, for messages.
            pub fn describe(&self) -> String {
                match self { $(Self::$variant(m) => m.describe(),)* }
            }

            pub fn export_kind(&self) -> ExportKind {
                match self { $(Self::$variant(_) => <$ty>::EXPORT,)* }
            }

            /// The method's own fields of PEFT's `adapter_config.json`.
            pub fn peft_config(&self, dims: &ModelDims) -> serde_json::Map<String, serde_json::Value> {
                match self { $(Self::$variant(m) => m.peft_config(dims),)* }
            }
        }
    };
}

impl Method {
    /// The method with its default target modules replaced by the model family's (PEFT's
    /// per-model mappings: GPT-2's `c_attn` instead of BERT's `query`, `value`); targets the
    /// user chose are kept.
    pub fn for_model(&self, config: &crate::models::ModelConfig) -> Method {
        let mut m = self.clone();
        match &mut m {
            Method::Lora(c) if c.target_modules == lora::LoraConfig::default().target_modules => {
                if let Some((t, _)) = config.peft_defaults(lora::LoraConfig::NAME) {
                    c.target_modules = t;
                }
            }
            Method::Ia3(c) if *c == ia3::Ia3Config::default() => {
                if let Some((t, f)) = config.peft_defaults(ia3::Ia3Config::NAME) {
                    c.target_modules = t;
                    c.feedforward_modules = f;
                }
            }
            _ => {}
        }
        m
    }

    /// Every method's name, for messages (`full, bitfit, lora, ...`).
    pub fn names() -> String {
        REGISTRY
            .iter()
            .map(|i| i.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The option whose CLI flag (`lora-r`) or form key (`r`) is `key`, with the method
    /// that has it.
    pub fn option(key: &str) -> Option<(&'static Info, &'static Opt)> {
        REGISTRY.iter().find_map(|i| {
            i.options
                .iter()
                .find(|o| o.flag == key || o.url == key)
                .map(|o| (i, o))
        })
    }

    /// Sets the option `opt` of this method from text, within the option's range, and
    /// checks the method; the reason names the option and what it expects. Nothing changes
    /// on an error.
    pub fn set(&mut self, opt: &Opt, text: &str) -> Result<(), String> {
        let next = self.with(opt, text, true)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Sets the option `opt` from text of the right kind, leaving range checks to
    /// [`Method::validate`] (a config's fields are checked together later).
    pub fn set_unchecked(&mut self, opt: &Opt, text: &str) -> Result<(), String> {
        *self = self.with(opt, text, false)?;
        Ok(())
    }

    fn with(&self, opt: &Opt, text: &str, bounded: bool) -> Result<Method, String> {
        let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        let value = opt.parse(text, bounded)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert(opt.key.to_string(), value);
        }
        serde_json::from_value(v).map_err(|e| format!("{}: {e}", opt.label))
    }

    /// The option's current value as text (what [`Method::set`] reads back).
    pub fn get(&self, opt: &Opt) -> Option<String> {
        let v = serde_json::to_value(self).ok()?;
        v.get(opt.key).map(|v| opt.format(v))
    }

    /// The same method after a round trip through PEFT's `adapter_config.json`: what a
    /// PEFT export of it says (the model sizes some configs record are not read back).
    pub fn as_peft(&self) -> Option<Method> {
        let ExportKind::Peft { peft_type, .. } = self.export_kind() else {
            return None;
        };
        let cfg = serde_json::Value::Object(self.peft_config(&ModelDims::default()));
        Method::from_peft(peft_type, &cfg)?.ok()
    }
}

registry! {
    Full => full::Full,
    Bitfit => bitfit::Bitfit,
    Lora => lora::LoraConfig,
    Prompt => prompt::PromptConfig,
    Ia3 => ia3::Ia3Config,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_named_once_and_round_trips_through_serde() {
        for info in REGISTRY {
            assert_eq!(REGISTRY.iter().filter(|i| i.name == info.name).count(), 1);
            let m = Method::named(info.name).unwrap();
            assert_eq!(m.name(), info.name);
            let j = serde_json::to_string(&m).unwrap();
            assert!(j.contains(&format!("\"method\":\"{}\"", info.name)), "{j}");
            assert_eq!(serde_json::from_str::<Method>(&j).unwrap(), m);
            assert!(m.validate().is_ok(), "{}'s defaults are valid", info.name);
            assert!(info.lr > 0.0);
        }
        assert!(Method::named("magic").is_none());
    }

    #[test]
    fn options_are_set_from_text_and_read_back() {
        let mut m = Method::named("lora").unwrap();
        let (info, r) = Method::option("lora-r").unwrap();
        assert_eq!(info.name, "lora");
        m.set(r, "4").unwrap();
        assert_eq!(m.get(r).as_deref(), Some("4"));
        let (_, t) = Method::option("lora-targets").unwrap();
        m.set(t, "query, key").unwrap();
        assert_eq!(m.get(t).as_deref(), Some("query,key"));
        let before = m.clone();
        let e = m.set(r, "0").unwrap_err();
        assert!(e.contains("rank"), "{e}");
        assert_eq!(m, before, "a refused value changes nothing");
        assert!(m.set(r, "four").unwrap_err().contains("whole number"));
        // Flags and form keys are unique across methods.
        let mut keys: Vec<&str> = REGISTRY
            .iter()
            .flat_map(|i| i.options.iter().flat_map(|o| [o.flag, o.url]))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "{keys:?}");
    }

    #[test]
    fn peft_methods_read_back_what_they_write() {
        for info in REGISTRY {
            let m = Method::named(info.name).unwrap();
            if let ExportKind::Peft { .. } = m.export_kind() {
                assert_eq!(m.as_peft().as_ref(), Some(&m), "{}", info.name);
            } else {
                assert_eq!(m.as_peft(), None);
            }
        }
    }
}
