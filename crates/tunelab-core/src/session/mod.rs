//! Setting a run up, once for every face: from a model's Hugging Face files and the data
//! texts held in memory ([`ModelFiles`], [`DataText`]) to a [`Trainer`] ready to step, and
//! from an export back to a trained model ([`load_trained`]). The web app's worker fills the
//! files from the browser's storage; the CLI reads them from disk.

mod build;
mod files;
mod load;

pub use build::{Built, RunConfig, SCRATCH, build_model, run_config};
pub use files::{DataText, ModelFiles, Weights, WeightsReader, format_of};
pub use load::{Loaded, load_causal_lm, load_trained};

use crate::backend::Backend;
use crate::data::{self, Example, FeatureKind, Features, Labels, Masking};
use crate::models::heads::Task;
use crate::peft::Method;
use crate::preflight::{self, MemoryBudget};
use crate::tokenizer::Tokenizer;
use crate::trainer::{ConfigError, TaskKind, TrainConfig, TrainError, Trainer, resolve_task};

/// Splits off every `k`-th example (k = 1 / `fraction`, rounded) as validation data: spread
/// evenly over the file, deterministic, and the same split the app previews.
pub fn holdout(examples: Vec<Example>, fraction: f64) -> (Vec<Example>, Vec<Example>) {
    if fraction <= 0.0 || examples.len() < 2 {
        return (examples, Vec::new());
    }
    let k = (1.0 / fraction.min(0.5)).round().max(2.0) as usize;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, e) in examples.into_iter().enumerate() {
        if i % k == k - 1 {
            val.push(e);
        } else {
            train.push(e);
        }
    }
    (train, val)
}

pub fn feature_kind(kind: TaskKind) -> FeatureKind {
    match kind {
        TaskKind::Classification => FeatureKind::Sequence,
        TaskKind::TokenClassification => FeatureKind::Token,
        TaskKind::MaskedLm => FeatureKind::MaskedLm,
        TaskKind::CausalLm => FeatureKind::CausalLm,
    }
}

pub fn head_task(kind: TaskKind, labels: &Labels) -> Task {
    match kind {
        TaskKind::Classification => Task::SequenceClassification {
            num_labels: labels.len(),
        },
        TaskKind::TokenClassification => Task::TokenClassification {
            num_labels: labels.len(),
        },
        TaskKind::MaskedLm => Task::MaskedLm,
        TaskKind::CausalLm => Task::CausalLm,
    }
}

/// Masked LM's masking for `tok`; `None` for the other tasks.
pub fn masking(kind: TaskKind, tok: &Tokenizer, p: f32) -> Result<Option<Masking>, TrainError> {
    if kind != TaskKind::MaskedLm {
        return Ok(None);
    }
    let mask_id = tok.mask_id().ok_or_else(|| ConfigError {
        field: "task",
        reason: "masked-LM training needs a tokenizer with a [MASK] or <mask> token".into(),
    })?;
    Ok(Some(Masking {
        probability: p,
        mask_id,
        vocab_size: tok.vocab_size() as u32,
    }))
}

/// What a run is set up from, besides its [`TrainConfig`].
#[derive(Debug, Clone, Copy)]
pub struct RunInputs<'a> {
    pub model: &'a ModelFiles,
    pub train: &'a DataText,
    pub validation: Option<&'a DataText>,
    /// The label order (a dataset card's, or the user's); inferred from the training data
    /// when `None`.
    pub labels: Option<&'a [String]>,
    /// Without validation data, this fraction of the training examples is held out as
    /// validation ([`holdout`]; 0: none).
    pub holdout_fraction: f64,
    /// Prompt tuning's initialisation text: tokenised into the method's `init_token_ids`.
    pub prompt_init_text: Option<&'a str>,
    /// Refuse the job when its memory estimate exceeds this budget.
    pub memory: Option<MemoryBudget>,
}

impl<'a> RunInputs<'a> {
    /// The model and the training data; nothing else.
    pub fn new(model: &'a ModelFiles, train: &'a DataText) -> Self {
        RunInputs {
            model,
            train,
            validation: None,
            labels: None,
            holdout_fraction: 0.0,
            prompt_init_text: None,
            memory: None,
        }
    }
}

/// A run ready to train, with what the faces need next to it.
#[derive(Debug)]
pub struct Session<B: Backend> {
    /// Holds the model, the training features and the config (with the prompt's
    /// initialisation tokens filled in).
    pub trainer: Trainer<B>,
    pub validation: Option<Features>,
    pub tokenizer: Tokenizer,
    /// Bad rows skipped in the training and validation data.
    pub skipped: usize,
    /// What the user should hear about the data (suspicious rows, skipped rows).
    pub warnings: Vec<String>,
    /// The trained model's `config.json` (generated for a from-scratch run).
    pub config_json: String,
    /// What exports name as the base model.
    pub base_model: String,
}

/// A data file's parsed examples, with its skipped rows and warnings added to the session's.
fn read(
    d: &DataText,
    cfg: &TrainConfig,
    skipped: &mut usize,
    warnings: &mut Vec<String>,
) -> Result<Vec<Example>, TrainError> {
    let format = format_of(&d.name, cfg.format)?;
    let parsed = data::parse(&d.name, &d.text, format, &cfg.columns)?;
    warnings.extend(parsed.warnings);
    if let Some(first) = parsed.skipped.first() {
        warnings.push(format!(
            "skipped {} bad row(s) of {}; the first: {first}",
            parsed.skipped.len(),
            d.name
        ));
    }
    *skipped += parsed.skipped.len();
    Ok(parsed.examples)
}

/// Parses, labels and tokenises the data, checks the job against the model's positions and
/// the memory budget, builds the model with the method and constructs the [`Trainer`].
pub fn prepare<B: Backend>(
    backend: B,
    cfg: &TrainConfig,
    inputs: RunInputs<'_>,
) -> Result<Session<B>, TrainError> {
    cfg.validate()?;
    let (kind, _) = resolve_task(&cfg.task).map_err(|reason| ConfigError {
        field: "task",
        reason,
    })?;
    if cfg.from_scratch.is_some() && !matches!(cfg.method, Method::Full(_)) {
        return Err(ConfigError {
            field: "method",
            reason: "a from-scratch run trains every weight: use the full method".into(),
        }
        .into());
    }
    let model = inputs.model;
    let (base_cfg, tokenizer) = model.parts()?;
    let mut cfg = cfg.clone();
    if let (Some(text), Method::Prompt(p)) = (inputs.prompt_init_text, &mut cfg.method) {
        p.init_token_ids = tokenizer.encode_plain(text)?;
        if p.init_token_ids.is_empty() {
            return Err(ConfigError {
                field: "method",
                reason: "the prompt's initialisation text gives no tokens".into(),
            }
            .into());
        }
    }
    let (mut skipped, mut warnings) = (0, Vec::new());
    let parsed = read(inputs.train, &cfg, &mut skipped, &mut warnings)?;
    let (train_rows, held) = match inputs.validation {
        Some(_) => (parsed, Vec::new()),
        None => holdout(parsed, inputs.holdout_fraction),
    };
    let labels = match (inputs.labels, kind) {
        (_, k) if k.is_language_modelling() => Labels::default(),
        (Some(l), _) => Labels::new(l.to_vec()),
        (None, _) => Labels::infer(&train_rows),
    };
    if !kind.is_language_modelling() && labels.len() < 2 {
        return Err(ConfigError {
            field: "labels",
            reason: format!(
                "{}: found {} label(s) {:?}; classification needs at least 2",
                inputs.train.name,
                labels.len(),
                labels.names
            ),
        }
        .into());
    }
    let task = head_task(kind, &labels);
    let run = run_config(&cfg, model, &base_cfg, &tokenizer, kind)?;
    let model_cfg = &run.config;
    if let Some(budget) = inputs.memory {
        let (trainable, total) =
            crate::models::task_model::count_params(model_cfg, task, &cfg.method)?;
        preflight::check_memory(
            model_cfg,
            trainable,
            total,
            cfg.batch_size,
            cfg.max_len,
            budget,
        )?;
    }
    let fk = feature_kind(kind);
    let encode = |rows: &[Example], name: &str| {
        data::encode(&tokenizer, rows, fk, &labels, cfg.max_len, name)
    };
    let features = encode(&train_rows, &inputs.train.name)?;
    let validation = match inputs.validation {
        Some(v) => Some(encode(
            &read(v, &cfg, &mut skipped, &mut warnings)?,
            &v.name,
        )?),
        None if !held.is_empty() => {
            Some(encode(&held, &format!("{} (held out)", inputs.train.name))?)
        }
        None => None,
    };
    let all: Vec<&Features> = std::iter::once(&features)
        .chain(validation.as_ref())
        .collect();
    preflight::check_positions(model_cfg, &cfg.method, &all)?;
    let built = build_model(backend, &cfg, task, model, run)?;
    let masking = masking(kind, &tokenizer, cfg.mlm_probability)?;
    let trainer = Trainer::new(
        built.backend,
        built.model,
        built.store,
        cfg,
        kind,
        labels,
        features,
        tokenizer.pad_id(),
        masking,
    )?;
    Ok(Session {
        trainer,
        validation,
        tokenizer,
        skipped,
        warnings,
        config_json: built.config_json,
        base_model: built.base_model,
    })
}

#[cfg(test)]
mod tests {
    use super::holdout;
    use crate::data::Example;

    #[test]
    fn holdout_takes_every_kth_example() {
        let ex: Vec<Example> = (0..20)
            .map(|i| Example::Text {
                line: i + 1,
                text: format!("t{i}"),
                label: None,
            })
            .collect();
        let (train, val) = holdout(ex.clone(), 0.1);
        assert_eq!((train.len(), val.len()), (18, 2));
        assert_eq!(val[0].line(), 10);
        assert_eq!(val[1].line(), 20);
        let (train, val) = holdout(ex, 0.0);
        assert_eq!((train.len(), val.len()), (20, 0));
    }
}
