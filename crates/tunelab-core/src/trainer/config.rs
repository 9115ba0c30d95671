//! `TrainConfig`: everything a run needs, shared by the CLI (TOML/JSON files and flags) and
//! the web app. Field names follow Hugging Face's `TrainingArguments` where one exists.

use crate::data::{Format, ParseOptions};
use crate::optim::Schedule;
use crate::peft::{Method, lora::LoraConfig};
use serde::{Deserialize, Serialize};

/// What the model learns: the head and the metrics follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// One label per text (binary or multi-class): accuracy, macro-F1, confusion matrix.
    Classification,
    /// One tag per word (NER, BIO): entity-level F1 (seqeval), token accuracy.
    TokenClassification,
    /// Masked-language-model (pre)training on plain text: loss and perplexity.
    MaskedLm,
    /// Next-token (causal) language modelling on plain text: loss and perplexity.
    CausalLm,
}

impl TaskKind {
    /// The metrics an evaluation of this task reports (the names `metric_for_best` takes).
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Self::Classification => &["accuracy", "macro_f1", "loss"],
            Self::TokenClassification => &["f1", "precision", "recall", "token_accuracy", "loss"],
            Self::MaskedLm | Self::CausalLm => &["loss", "perplexity"],
        }
    }

    /// The metric that picks the best checkpoint by default, and whether higher is better.
    pub fn default_metric(self) -> (&'static str, bool) {
        match self {
            Self::Classification => ("macro_f1", true),
            Self::TokenClassification => ("f1", true),
            Self::MaskedLm | Self::CausalLm => ("loss", false),
        }
    }
}

/// The task names a user can give: presets name a built-in sample dataset.
pub const TASKS: &[(&str, TaskKind, Option<&str>)] = &[
    ("sentiment", TaskKind::Classification, Some("sentiment")),
    ("topic", TaskKind::Classification, Some("topic")),
    ("spam", TaskKind::Classification, Some("spam")),
    ("ner", TaskKind::TokenClassification, Some("ner")),
    ("mlm", TaskKind::MaskedLm, Some("brown-text")),
    ("clm", TaskKind::CausalLm, Some("brown-text")),
    ("classification", TaskKind::Classification, None),
    ("token-classification", TaskKind::TokenClassification, None),
    ("masked-lm", TaskKind::MaskedLm, None),
    ("causal-lm", TaskKind::CausalLm, None),
];

impl TaskKind {
    /// Whether the task learns from plain text alone (no labels).
    pub fn is_language_modelling(self) -> bool {
        matches!(self, Self::MaskedLm | Self::CausalLm)
    }
}

/// The kind and sample dataset (for presets) of a task name.
pub fn resolve_task(name: &str) -> Result<(TaskKind, Option<&'static str>), String> {
    TASKS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, k, d)| (*k, *d))
        .ok_or_else(|| {
            format!(
                "unknown task `{name}`; expected one of {}",
                TASKS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
            )
        })
}

/// The learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Linear,
    Cosine,
    Constant,
}

/// A small model to pretrain from scratch with the model's tokenizer: a BERT for masked LM,
/// a GPT-2 for causal LM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScratchConfig {
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        Self {
            num_hidden_layers: 2,
            hidden_size: 128,
            num_attention_heads: 2,
            intermediate_size: 512,
            max_position_embeddings: 512,
        }
    }
}

impl ScratchConfig {
    /// A `config.json` for this shape and vocabulary: GPT-2's for causal LM, else BERT's.
    pub fn config_json(&self, vocab_size: usize, pad_token_id: u32, task: TaskKind) -> String {
        if task == TaskKind::CausalLm {
            return serde_json::json!({
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "vocab_size": vocab_size,
                "n_embd": self.hidden_size,
                "n_layer": self.num_hidden_layers,
                "n_head": self.num_attention_heads,
                "n_inner": self.intermediate_size,
                "n_positions": self.max_position_embeddings,
                "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5,
                "resid_pdrop": 0.0,
                "embd_pdrop": 0.0,
                "attn_pdrop": 0.0,
            })
            .to_string();
        }
        serde_json::json!({
            "model_type": "bert",
            "architectures": ["BertForMaskedLM"],
            "vocab_size": vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": 2,
            "layer_norm_eps": 1e-12,
            "hidden_act": "gelu",
            "pad_token_id": pad_token_id,
        })
        .to_string()
    }
}

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A model id from the assets manifest, or a folder with `config.json`,
    /// `model.safetensors` and `tokenizer.json`.
    pub model: String,
    /// Pretrain a small randomly initialised model instead (a BERT for masked LM, a GPT-2
    /// for causal LM; the model's tokenizer is kept).
    pub from_scratch: Option<ScratchConfig>,
    /// A preset (`sentiment`, `topic`, `spam`, `ner`, `mlm`, `clm`) or a task kind
    /// (`classification`, `token-classification`, `masked-lm`, `causal-lm`) with
    /// `train_file`.
    pub task: String,
    pub train_file: Option<String>,
    pub validation_file: Option<String>,
    /// Taken from the file extension when not given.
    pub format: Option<Format>,
    /// Field/column names and bad-row handling.
    pub columns: ParseOptions,
    /// The label set; inferred from the training data when not given.
    pub labels: Option<Vec<String>>,
    /// Truncate inputs to this many tokens (masked LM: block length).
    pub max_len: usize,
    /// The PEFT method and its options.
    pub method: Method,
    pub epochs: u32,
    /// Stop after this many optimiser steps (overrides `epochs`).
    pub max_steps: Option<u64>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate; by default the method's (full 5e-5, BitFit 1e-3, LoRA 5e-4,
    /// prompt 1e-2).
    pub lr: Option<f64>,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    /// Warmup steps (overrides `warmup_ratio`).
    pub warmup_steps: Option<u32>,
    pub schedule: ScheduleKind,
    /// Clip gradients to this global L2 norm (0 disables).
    pub max_grad_norm: f64,
    /// Evaluate every N steps; per epoch when not given.
    pub eval_every: Option<u64>,
    /// Evaluate on at most this many validation examples (spread evenly over the file).
    pub eval_max_examples: Option<usize>,
    /// Metric that chooses the best checkpoint (default: macro_f1, f1 or loss by task).
    pub metric_for_best: Option<String>,
    /// Save a resumable checkpoint every N steps (and at each evaluation).
    pub save_every: Option<u64>,
    /// Masked LM: fraction of tokens chosen for prediction.
    pub mlm_probability: f32,
    pub seed: u64,
    /// Where checkpoints, exports and the metrics log go (default `runs/<task>-<method>`).
    pub output_dir: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: "all-MiniLM-L6-v2".into(),
            from_scratch: None,
            task: "sentiment".into(),
            train_file: None,
            validation_file: None,
            format: None,
            columns: ParseOptions::default(),
            labels: None,
            max_len: 128,
            method: Method::Lora(LoraConfig::default()),
            epochs: 3,
            max_steps: None,
            batch_size: 16,
            grad_accum: 1,
            lr: None,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            warmup_steps: None,
            schedule: ScheduleKind::Linear,
            max_grad_norm: 1.0,
            eval_every: None,
            eval_max_examples: None,
            metric_for_best: None,
            save_every: None,
            mlm_probability: 0.15,
            seed: 42,
            output_dir: None,
        }
    }
}

/// A field that does not make sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl TrainConfig {
    /// Parses a config file's text: TOML, or JSON when `file` ends in `.json`. Unknown
    /// keys are errors, at the top level and inside `[method]`.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let fail = |e: String| ConfigError {
            field: "(file)",
            reason: format!("{file}: {e}"),
        };
        // Parsed twice: typed (whose errors give the line) and as a plain tree of values.
        let (cfg, value): (Self, serde_json::Value) = if file.ends_with(".json") {
            (
                serde_json::from_str(text).map_err(|e| fail(e.to_string()))?,
                serde_json::from_str(text).map_err(|e| fail(e.to_string()))?,
            )
        } else {
            let t: toml::Value = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
            (
                toml::from_str(text).map_err(|e| fail(e.to_string()))?,
                serde_json::to_value(t).map_err(|e| fail(e.to_string()))?,
            )
        };
        // The method's options are an internally tagged enum, where serde cannot refuse
        // unknown keys: every key given must come back when the parsed method is written out.
        if let Some(given) = value.get("method").and_then(|m| m.as_object()) {
            let known = serde_json::to_value(&cfg.method).map_err(|e| fail(e.to_string()))?;
            if let Some(k) = given.keys().find(|k| known.get(k.as_str()).is_none()) {
                let expected: Vec<&str> = known
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return Err(ConfigError {
                    field: "method",
                    reason: format!(
                        "{file}: unknown key `{k}` for method `{}`; expected {}",
                        cfg.method.name(),
                        expected.join(", ")
                    ),
                });
            }
        }
        Ok(cfg)
    }

    /// Checks ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.into(),
            })
        };
        resolve_task(&self.task).map_err(|reason| ConfigError {
            field: "task",
            reason,
        })?;
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1");
        }
        if self.max_len < 4 {
            return bad("max_len", "must be at least 4");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs", "must be at least 1 (or give max_steps)");
        }
        if self.max_steps == Some(0) {
            return bad("max_steps", "must be at least 1");
        }
        if let Some(lr) = self.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return bad("lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", "must be in [0, 1)");
        }
        if !(self.mlm_probability > 0.0 && self.mlm_probability < 1.0) {
            return bad("mlm_probability", "must be in (0, 1)");
        }
        if self.eval_every == Some(0) {
            return bad("eval_every", "must be at least 1");
        }
        if self.save_every == Some(0) {
            return bad("save_every", "must be at least 1");
        }
        if self.eval_max_examples == Some(0) {
            return bad(
                "eval_max_examples",
                "must be at least 1 (leave it out to evaluate on every example)",
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be a number of 0 or more");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(
                "max_grad_norm",
                "must be a number of 0 or more (0 turns clipping off)",
            );
        }
        if let Some(labels) = &self.labels {
            let mut seen = std::collections::BTreeSet::new();
            for l in labels {
                if l.trim().is_empty() {
                    return bad("labels", "a label name is empty");
                }
                if !seen.insert(l.as_str()) {
                    return Err(ConfigError {
                        field: "labels",
                        reason: format!("`{l}` is listed twice; each label must be named once"),
                    });
                }
            }
        }
        if let (Some(m), Ok((kind, _))) = (&self.metric_for_best, resolve_task(&self.task))
            && !kind.metrics().contains(&m.as_str())
        {
            return Err(ConfigError {
                field: "metric_for_best",
                reason: format!(
                    "unknown metric `{m}` for this task; expected one of {}",
                    kind.metrics().join(", ")
                ),
            });
        }
        self.method.validate().map_err(|reason| ConfigError {
            field: "method",
            reason,
        })?;
        if self.from_scratch.is_some()
            && !resolve_task(&self.task).is_ok_and(|t| t.0.is_language_modelling())
        {
            return bad(
                "from_scratch",
                "only language-model pretraining (masked or causal LM) starts from scratch",
            );
        }
        Ok(())
    }

    /// The peak learning rate (the method's default when not given).
    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or_else(|| self.method.default_lr())
    }

    /// The schedule for `total` optimiser steps.
    pub fn schedule(&self, total: u64) -> Schedule {
        let total = total.min(u64::from(u32::MAX)) as u32;
        let warmup = self
            .warmup_steps
            .unwrap_or_else(|| (self.warmup_ratio * f64::from(total)).ceil() as u32);
        match self.schedule {
            ScheduleKind::Linear => Schedule::Linear { warmup, total },
            ScheduleKind::Cosine => Schedule::Cosine { warmup, total },
            ScheduleKind::Constant => Schedule::Constant { warmup },
        }
    }

    /// `runs/<task>-<method>` unless set.
    pub fn output_dir(&self) -> String {
        self.output_dir
            .clone()
            .unwrap_or_else(|| format!("runs/{}-{}", self.task, self.method.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_with_method_options() {
        let c = TrainConfig::parse(
            "run.toml",
            "task = \"ner\"\nbatch_size = 8\n[method]\nmethod = \"lora\"\nr = 4\ntarget_modules = [\"query\"]\n",
        )
        .unwrap();
        assert_eq!(c.task, "ner");
        assert_eq!(c.batch_size, 8);
        match &c.method {
            Method::Lora(l) => {
                assert_eq!(l.r, 4);
                assert_eq!(l.alpha, 16.0);
                assert_eq!(l.target_modules, vec!["query".to_string()]);
            }
            m => panic!("{m:?}"),
        }
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(TrainConfig::parse("run.json", &j).unwrap(), c);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let e = TrainConfig::parse("run.toml", "batch_sise = 8\n").unwrap_err();
        assert!(e.to_string().contains("batch_sise"), "{e}");
        let mut c = TrainConfig {
            batch_size: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "batch_size");
        c.batch_size = 4;
        c.task = "poetry".into();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("unknown task `poetry`"), "{e}");
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../../../docs/train-config.example.toml");
        let c = TrainConfig::parse("train-config.example.toml", text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.grad_accum, 2);
        assert_eq!(c.lr(), 5e-4);
        assert!(matches!(c.method, Method::Lora(ref l) if l.r == 8));
    }

    #[test]
    fn warmup_from_ratio_or_steps() {
        let c = TrainConfig::default();
        assert_eq!(
            c.schedule(100),
            Schedule::Linear {
                warmup: 10,
                total: 100
            }
        );
        let c = TrainConfig {
            warmup_steps: Some(3),
            schedule: ScheduleKind::Cosine,
            ..Default::default()
        };
        assert_eq!(
            c.schedule(100),
            Schedule::Cosine {
                warmup: 3,
                total: 100
            }
        );
    }
}
