//! The model a run trains, built from the base model's files: loaded with the task's head
//! and the method, or initialised from scratch at the size the config asks for.

use super::files::ModelFiles;
use crate::backend::Backend;
use crate::models::ModelConfig;
use crate::models::heads::Task;
use crate::models::task_model::{ModelError, TaskModel};
use crate::params::ParamStore;
use crate::tokenizer::Tokenizer;
use crate::trainer::{TrainConfig, TrainError};

/// What exports of a from-scratch run name as their base model.
pub const SCRATCH: &str = "scratch";

/// The model a run trains: its `config.json` and parsed form.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub json: String,
    pub config: ModelConfig,
}

/// The model a run trains: the base model's, or, for a from-scratch run, the one its
/// `ScratchConfig` describes with the tokenizer's vocabulary (at least the base model's) and
/// padding id.
pub fn run_config(
    cfg: &TrainConfig,
    base: &ModelFiles,
    base_cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    kind: crate::trainer::TaskKind,
) -> Result<RunConfig, TrainError> {
    match &cfg.from_scratch {
        Some(s) => {
            let json = s.config_json(
                tokenizer.vocab_size().max(base_cfg.dims().vocab_size),
                tokenizer.pad_id(),
                kind,
            );
            let config = ModelConfig::from_json("from_scratch", &json).map_err(ModelError::from)?;
            Ok(RunConfig { json, config })
        }
        None => Ok(RunConfig {
            json: base.config_json.clone(),
            config: base_cfg.clone(),
        }),
    }
}

/// A model as a config describes it, before training.
#[derive(Debug)]
pub struct Built<B: Backend> {
    pub backend: B,
    pub model: TaskModel<B>,
    pub store: ParamStore<B>,
    /// The model's `config.json` (generated for a from-scratch run).
    pub config_json: String,
    /// What exports name as the base model: `cfg.model`, or [`SCRATCH`].
    pub base_model: String,
}

/// Loads the pretrained model of `base` (or initialises the from-scratch one, `run`) with the
/// task's head and the method applied. Only here are the base model's weights read.
pub fn build_model<B: Backend>(
    backend: B,
    cfg: &TrainConfig,
    task: Task,
    base: &ModelFiles,
    run: RunConfig,
) -> Result<Built<B>, TrainError> {
    let config_json = run.json;
    let (tensors, base_model) = match cfg.from_scratch {
        Some(_) => (run.config.random_tensors(cfg.seed), SCRATCH.to_string()),
        None => (
            base.weights.tensors(&base.name).map_err(ModelError::from)?,
            cfg.model.clone(),
        ),
    };
    let mut store = ParamStore::new();
    let model = TaskModel::load(
        &backend,
        &base.name,
        &config_json,
        tensors,
        task,
        &cfg.method,
        cfg.seed,
        &mut store,
    )?;
    Ok(Built {
        backend,
        model,
        store,
        config_json,
        base_model,
    })
}
