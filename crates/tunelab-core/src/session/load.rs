//! A trained model rebuilt from an export (Tunelab's, or a PEFT adapter folder) on its base
//! model: `tunelab eval` / `predict` and the web app's import go through here.

use super::files::ModelFiles;
use super::head_task;
use crate::backend::Backend;
use crate::export::{self, ExportManifest, Imported};
use crate::models::task_model::TaskModel;
use crate::params::ParamStore;
use crate::peft::ExportKind;
use crate::tokenizer::Tokenizer;
use crate::trainer::TrainError;

/// A trained model, ready to evaluate, predict or export again.
#[derive(Debug)]
pub struct Loaded<B: Backend> {
    pub backend: B,
    pub model: TaskModel<B>,
    pub store: ParamStore<B>,
    pub tokenizer: Tokenizer,
    pub manifest: ExportManifest,
}

/// Rebuilds `imported` (read from `file`) on `base`: an adapter or BitFit export is applied
/// to the base model; a full fine-tune's export is itself the model, so `base` must then be
/// the export's own `config.json` and `model.safetensors`. `base.tokenizer_json` is the one
/// the model reads text with (the export's, where it has one).
pub fn load_trained<B: Backend>(
    backend: B,
    imported: &Imported,
    base: &ModelFiles,
    file: &str,
) -> Result<Loaded<B>, TrainError> {
    let m = &imported.manifest;
    let (model, mut store, tokenizer) =
        load_base(&backend, base, head_task(m.task, &m.labels), &m.method)?;
    if m.method.export_kind() != ExportKind::Model {
        export::apply(&backend, &mut store, &imported.tensors, file)?;
    }
    Ok(Loaded {
        backend,
        model,
        store,
        tokenizer,
        manifest: m.clone(),
    })
}

/// A causal LM from a model folder as it is (no training), to generate from: the base model
/// with its language-model head.
pub fn load_causal_lm<B: Backend>(
    backend: B,
    base: &ModelFiles,
) -> Result<(B, TaskModel<B>, ParamStore<B>, Tokenizer), TrainError> {
    let full = crate::peft::Method::Full(crate::peft::full::Full {});
    let (model, store, tokenizer) =
        load_base(&backend, base, crate::models::heads::Task::CausalLm, &full)?;
    Ok((backend, model, store, tokenizer))
}

/// `base` with `task`'s head and `method` applied, and its tokenizer.
fn load_base<B: Backend>(
    backend: &B,
    base: &ModelFiles,
    task: crate::models::heads::Task,
    method: &crate::peft::Method,
) -> Result<(TaskModel<B>, ParamStore<B>, Tokenizer), TrainError> {
    let (_, tokenizer) = base.parts()?;
    let tensors = base
        .weights
        .tensors(&base.name)
        .map_err(crate::models::task_model::ModelError::from)?;
    let mut store = ParamStore::new();
    let model = TaskModel::load(
        backend,
        &base.name,
        &base.config_json,
        tensors,
        task,
        method,
        0,
        &mut store,
    )?;
    Ok((model, store, tokenizer))
}
