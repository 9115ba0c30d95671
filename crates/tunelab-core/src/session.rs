//! A training run set up from files held in memory: the model's three Hugging Face files and
//! the data texts. The web app's worker builds its runs here (it has no file system); the CLI
//! reads the same files from disk.

use crate::backend::Backend;
use crate::data::{self, Example, FeatureKind, Features, Format, Labels, Masking};
use crate::models::ModelConfig;
use crate::models::heads::Task;
use crate::models::task_model::TaskModel;
use crate::params::ParamStore;
use crate::tokenizer::Tokenizer;
use crate::trainer::{ConfigError, TaskKind, TrainConfig, TrainError, Trainer};

/// A model in the Hugging Face layout, in memory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Names the model in errors and exports (`all-MiniLM-L6-v2`, or the user's folder).
    pub name: String,
    pub config_json: String,
    /// `model.safetensors`.
    pub weights: Vec<u8>,
    pub tokenizer_json: Vec<u8>,
}

impl ModelFiles {
    /// The parsed `config.json` and the tokenizer checked against it.
    pub fn parts(&self) -> Result<(ModelConfig, Tokenizer), TrainError> {
        let config =
            ModelConfig::from_json(&format!("{}/config.json", self.name), &self.config_json)
                .map_err(crate::models::task_model::ModelError::from)?;
        let tok = Tokenizer::from_json(
            &format!("{}/tokenizer.json", self.name),
            &self.tokenizer_json,
            config.dims().vocab_size,
        )?;
        Ok((config, tok))
    }
}

/// One data file's name (for errors and the format) and contents.
#[derive(Debug, Clone, PartialEq)]
pub struct DataText {
    pub name: String,
    pub text: String,
}

/// The format of `file`: given, or from its extension.
pub fn format_of(file: &str, given: Option<Format>) -> Result<Format, TrainError> {
    given.or_else(|| Format::from_path(file)).ok_or_else(|| {
        ConfigError {
            field: "format",
            reason: format!(
                "cannot tell the format of {file} from its name; choose jsonl, csv, conll or text"
            ),
        }
        .into()
    })
}

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

/// A run ready to train, with what the app needs next to it.
#[derive(Debug)]
pub struct Session<B: Backend> {
    pub trainer: Trainer<B>,
    pub validation: Option<Features>,
    pub tokenizer: Tokenizer,
    /// Bad rows skipped in the training and validation data.
    pub skipped: usize,
}

/// Parses, labels, tokenises and builds the model for `cfg`. Without a validation text,
/// `holdout_fraction` of the training examples become the validation set.
#[allow(clippy::too_many_arguments)]
pub fn prepare<B: Backend>(
    backend: B,
    cfg: &TrainConfig,
    kind: TaskKind,
    model: &ModelFiles,
    train: &DataText,
    validation: Option<&DataText>,
    labels: Option<Vec<String>>,
    holdout_fraction: f64,
) -> Result<Session<B>, TrainError> {
    cfg.validate()?;
    let (_, tokenizer) = model.parts()?;
    let read = |d: &DataText| -> Result<data::Parsed, TrainError> {
        let format = format_of(&d.name, cfg.format)?;
        Ok(data::parse(&d.name, &d.text, format, &cfg.columns)?)
    };
    let parsed = read(train)?;
    let mut skipped = parsed.skipped.len();
    let (train_rows, held) = match validation {
        Some(_) => (parsed.examples, Vec::new()),
        None => holdout(parsed.examples, holdout_fraction),
    };
    let labels = match (labels, kind) {
        (_, TaskKind::MaskedLm) => Labels::default(),
        (Some(l), _) => Labels::new(l),
        (None, _) => Labels::infer(&train_rows),
    };
    if kind != TaskKind::MaskedLm && labels.len() < 2 {
        return Err(ConfigError {
            field: "labels",
            reason: format!(
                "{}: found {} label(s) {:?}; classification needs at least 2",
                train.name,
                labels.len(),
                labels.names
            ),
        }
        .into());
    }
    let fk = feature_kind(kind);
    let features = data::encode(
        &tokenizer,
        &train_rows,
        fk,
        &labels,
        cfg.max_len,
        &train.name,
    )?;
    let val_rows = match validation {
        Some(v) => {
            let p = read(v)?;
            skipped += p.skipped.len();
            Some((p.examples, v.name.clone()))
        }
        None => (!held.is_empty()).then(|| (held, format!("{} (held out)", train.name))),
    };
    let validation = val_rows
        .map(|(rows, name)| data::encode(&tokenizer, &rows, fk, &labels, cfg.max_len, &name))
        .transpose()?;
    let model_config =
        ModelConfig::from_json(&format!("{}/config.json", model.name), &model.config_json)
            .map_err(crate::models::task_model::ModelError::from)?;
    let all: Vec<&data::Features> = std::iter::once(&features)
        .chain(validation.as_ref())
        .collect();
    crate::preflight::check_positions(&model_config, &cfg.method, &all)?;
    let (tensors, _) =
        crate::safetensors_io::read(&format!("{}/model.safetensors", model.name), &model.weights)
            .map_err(crate::models::task_model::ModelError::from)?;
    let mut store = ParamStore::new();
    let task_model = TaskModel::load(
        &backend,
        &model.name,
        &model.config_json,
        tensors,
        head_task(kind, &labels),
        &cfg.method,
        cfg.seed,
        &mut store,
    )?;
    let masking = masking(kind, &tokenizer, cfg.mlm_probability)?;
    let trainer = Trainer::new(
        backend,
        task_model,
        store,
        cfg.clone(),
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
