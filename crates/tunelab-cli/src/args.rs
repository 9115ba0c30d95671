//! `tunelab train` flags. Each one overrides the same field of the config file (if any), which
//! overrides the defaults; names follow Hugging Face's `TrainingArguments` (their spellings
//! are accepted as aliases).

use clap::Args;
use std::path::PathBuf;
use tunelab_core::data::Format;
use tunelab_core::peft::Method;
use tunelab_core::trainer::{ScheduleKind, ScratchConfig, TrainConfig};

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// A TOML or JSON file with any `TrainConfig` fields; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The task: a preset with its sample dataset (`sentiment`, `topic`, `spam`, `ner`,
    /// `mlm`, `clm`) or `classification`, `token-classification`, `masked-lm`, `causal-lm` with
    /// --train-file.
    #[arg(long, help_heading = "Model and data")]
    pub task: Option<String>,
    /// The pretrained model: an id from the assets manifest or a folder with config.json,
    /// model.safetensors and tokenizer.json. [default: all-MiniLM-L6-v2]
    #[arg(long, alias = "model-name-or-path", help_heading = "Model and data")]
    pub model: Option<String>,
    /// Masked LM only: pretrain a small randomly initialised BERT (2 layers, hidden 128) with
    /// the model's tokenizer instead of fine-tuning it.
    #[arg(long, help_heading = "Model and data")]
    pub from_scratch: bool,
    /// Training data (JSONL, CSV, CoNLL or plain text).
    #[arg(long, help_heading = "Model and data")]
    pub train_file: Option<String>,
    /// Evaluation data, same format.
    #[arg(long, help_heading = "Model and data")]
    pub validation_file: Option<String>,
    /// The data format, when the extension does not tell.
    #[arg(long, value_parser = parse_format, help_heading = "Model and data")]
    pub format: Option<Format>,
    /// JSONL field / CSV column with the text. [default: text]
    #[arg(long, help_heading = "Model and data")]
    pub text_column: Option<String>,
    /// JSONL field / CSV column with the label. [default: label]
    #[arg(long, help_heading = "Model and data")]
    pub label_column: Option<String>,
    /// The label set in order (comma-separated); inferred from the training data otherwise.
    #[arg(long, value_delimiter = ',', help_heading = "Model and data")]
    pub labels: Option<Vec<String>>,
    /// Skip malformed rows (reported with their line numbers) instead of stopping.
    #[arg(long, help_heading = "Model and data")]
    pub skip_bad_rows: bool,
    /// Truncate inputs to this many tokens; masked LM: the block length. [default: 128]
    #[arg(
        long,
        alias = "max-seq-length",
        help_heading = "Model and data",
        allow_negative_numbers = true
    )]
    pub max_len: Option<usize>,

    #[arg(long, help = crate::method_args::method_help(), help_heading = "Method")]
    pub method: Option<String>,
    #[command(flatten)]
    pub method_opts: crate::method_args::MethodArgs,
    /// Prompt tuning: initialise the virtual tokens from this text's embeddings.
    #[arg(long, help_heading = "Method")]
    pub prompt_init_text: Option<String>,

    /// Total number of training epochs. [default: 3]
    #[arg(
        long,
        alias = "num-train-epochs",
        help_heading = "Training",
        allow_negative_numbers = true
    )]
    pub epochs: Option<u32>,
    /// Stop after this many optimiser steps (overrides --epochs).
    #[arg(long, help_heading = "Training", allow_negative_numbers = true)]
    pub max_steps: Option<u64>,
    /// Examples per micro-batch. [default: 16]
    #[arg(
        long,
        alias = "per-device-train-batch-size",
        help_heading = "Training",
        allow_negative_numbers = true
    )]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step; the loss is normalised by their total token count,
    /// so this equals a batch that many times larger. [default: 1]
    #[arg(
        long,
        alias = "gradient-accumulation-steps",
        help_heading = "Training",
        allow_negative_numbers = true
    )]
    pub grad_accum: Option<usize>,
    #[arg(
        long,
        help = crate::method_args::lr_help(),
        alias = "learning-rate",
        help_heading = "Training",
        allow_negative_numbers = true
    )]
    pub lr: Option<f64>,
    /// Decoupled AdamW weight decay. [default: 0.01]
    #[arg(long, help_heading = "Training", allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// Linear warmup over this fraction of the steps. [default: 0.1]
    #[arg(long, help_heading = "Training", allow_negative_numbers = true)]
    pub warmup_ratio: Option<f64>,
    /// Linear warmup over this many steps (overrides --warmup-ratio).
    #[arg(long, help_heading = "Training", allow_negative_numbers = true)]
    pub warmup_steps: Option<u32>,
    /// The schedule after warmup: linear, cosine or constant. [default: linear]
    #[arg(long, alias = "lr-scheduler-type", value_parser = parse_schedule, help_heading = "Training")]
    pub schedule: Option<ScheduleKind>,
    /// Clip gradients to this global L2 norm (0 disables). [default: 1.0]
    #[arg(long, help_heading = "Training", allow_negative_numbers = true)]
    pub max_grad_norm: Option<f64>,
    /// Masked LM: fraction of tokens to predict. [default: 0.15]
    #[arg(long, help_heading = "Training", allow_negative_numbers = true)]
    pub mlm_probability: Option<f32>,
    /// Seed for initialisation, shuffling and masking. [default: 42]
    #[arg(long, help_heading = "Training", allow_negative_numbers = true)]
    pub seed: Option<u64>,

    /// Evaluate every N steps (default: at the end of each epoch).
    #[arg(
        long,
        alias = "eval-steps",
        help_heading = "Evaluation and saving",
        allow_negative_numbers = true
    )]
    pub eval_every: Option<u64>,
    /// Evaluate on at most this many validation examples.
    #[arg(
        long,
        help_heading = "Evaluation and saving",
        allow_negative_numbers = true
    )]
    pub eval_max_examples: Option<usize>,
    /// The metric that picks the best checkpoint (accuracy, macro_f1, f1, loss, ...).
    #[arg(long, help_heading = "Evaluation and saving")]
    pub metric_for_best: Option<String>,
    /// Also save a resumable checkpoint every N steps (one is saved at every evaluation).
    #[arg(
        long,
        alias = "save-steps",
        help_heading = "Evaluation and saving",
        allow_negative_numbers = true
    )]
    pub save_every: Option<u64>,
    /// Where the metrics log, checkpoint and exports go. [default: runs/<task>-<method>]
    #[arg(long, help_heading = "Evaluation and saving")]
    pub output_dir: Option<String>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    serde_json::from_value(serde_json::Value::String(s.to_lowercase()))
        .map_err(|_| format!("unknown format `{s}`; expected jsonl, csv, conll or text"))
}

fn parse_schedule(s: &str) -> Result<ScheduleKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_lowercase()))
        .map_err(|_| format!("unknown schedule `{s}`; expected linear, cosine or constant"))
}

impl TrainArgs {
    /// The config file (if any) with these flags applied.
    pub fn resolve(&self) -> anyhow::Result<TrainConfig> {
        let mut c = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
                TrainConfig::parse(&p.display().to_string(), &text)?
            }
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($flag:ident => $field:ident),* $(,)?) => {
                $(if let Some(v) = self.$flag.clone() { c.$field = v.into(); })*
            };
        }
        set!(task => task, model => model, max_len => max_len, epochs => epochs,
             batch_size => batch_size, grad_accum => grad_accum, weight_decay => weight_decay,
             warmup_ratio => warmup_ratio, max_grad_norm => max_grad_norm,
             mlm_probability => mlm_probability, seed => seed, schedule => schedule);
        set!(train_file => train_file, validation_file => validation_file, format => format,
             labels => labels, max_steps => max_steps, lr => lr, warmup_steps => warmup_steps,
             eval_every => eval_every, eval_max_examples => eval_max_examples,
             metric_for_best => metric_for_best, save_every => save_every,
             output_dir => output_dir);
        if let Some(v) = &self.text_column {
            c.columns.text_field = v.clone();
        }
        if let Some(v) = &self.label_column {
            c.columns.label_field = v.clone();
        }
        if self.skip_bad_rows {
            c.columns.skip_bad = true;
        }
        if self.from_scratch {
            c.from_scratch.get_or_insert_with(ScratchConfig::default);
        }
        if let Some(m) = &self.method
            && c.method.name() != m
        {
            c.method = Method::named(m).ok_or_else(|| {
                anyhow::anyhow!("unknown method `{m}`; expected one of {}", Method::names())
            })?;
        }
        self.method_opts.apply(&mut c.method)?;
        if self.prompt_init_text.is_some() && c.method.name() != "prompt" {
            anyhow::bail!("--prompt-init-text needs --method prompt");
        }
        c.validate()?;
        Ok(c)
    }
}
