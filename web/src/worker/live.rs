//! A trained or imported model in use: prediction, export and import of adapters.

use crate::{Engine, Payload, post, state, status};
use tunelab_core::backend::Backend;
use tunelab_core::data::Labels;
use tunelab_core::export::{self, ExportInfo};
use tunelab_core::generate::{GenerateConfig, Generation, Generator};
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::params::ParamStore;
use tunelab_core::peft::Method;
use tunelab_core::session::{self, ModelFiles};
use tunelab_core::tokenizer::Tokenizer;
use tunelab_core::trainer::TaskKind;
use tunelab_web::protocol::{Event, ModelSource};
use tunelab_web::zipfile;

use crate::run::*;
use crate::{engine::*, files::*};

/// Runs `f` on the live model (taken out of the slot while it runs).
pub(crate) async fn with_live<F, T>(f: F) -> Result<T, String>
where
    F: AsyncLiveFn<T>,
{
    let live = state()
        .live
        .borrow_mut()
        .take()
        .ok_or("no trained model yet: train (or pause the run) or import an adapter first")?;
    let (live, out) = match live {
        Live::Gpu(slot) => {
            let out = f.call(&slot).await;
            (Live::Gpu(slot), out)
        }
        Live::Cpu(slot) => {
            let out = f.call(&slot).await;
            (Live::Cpu(slot), out)
        }
    };
    *state().live.borrow_mut() = Some(live);
    out
}

/// An async operation generic over the backend.
pub(crate) trait AsyncLiveFn<T> {
    async fn call<B: Backend>(&self, slot: &Slot<B>) -> Result<T, String>;
}

/// The model view of a slot.
pub(crate) struct View<'a, B: Backend> {
    backend: &'a B,
    model: &'a TaskModel<B>,
    store: &'a ParamStore<B>,
    tokenizer: &'a Tokenizer,
    kind: TaskKind,
    labels: &'a Labels,
    max_len: usize,
    method: &'a Method,
    base_model: &'a str,
    base_config_json: &'a str,
}

pub(crate) fn view<B: Backend>(slot: &Slot<B>) -> View<'_, B> {
    match slot {
        Slot::Training(sess, spec, config_json) => {
            let t = &sess.trainer;
            View {
                backend: &t.backend,
                model: &t.model,
                store: &t.store,
                tokenizer: &sess.tokenizer,
                kind: t.kind,
                labels: &t.labels,
                max_len: t.config.max_len,
                method: &t.config.method,
                base_model: spec.model.name(),
                base_config_json: config_json,
            }
        }
        Slot::Imported(m) => View {
            backend: &m.backend,
            model: &m.model,
            store: &m.store,
            tokenizer: &m.tokenizer,
            kind: m.kind,
            labels: &m.labels,
            max_len: m.max_len,
            method: &m.method,
            base_model: &m.base_model,
            base_config_json: &m.base_config_json,
        },
    }
}

pub(crate) struct PredictFn(String);

impl AsyncLiveFn<tunelab_core::predict::Prediction> for PredictFn {
    async fn call<B: Backend>(
        &self,
        slot: &Slot<B>,
    ) -> Result<tunelab_core::predict::Prediction, String> {
        let v = view(slot);
        tunelab_core::predict::predict(
            v.backend,
            v.model,
            v.store,
            v.tokenizer,
            v.kind,
            v.labels,
            v.max_len,
            &self.0,
        )
        .await
        .map_err(s)
    }
}

pub(crate) async fn predict(text: String) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("type some text to try the model on".into());
    }
    let prediction = with_live(PredictFn(text.clone())).await?;
    post(&Event::Prediction { text, prediction }, None);
    Ok(())
}

pub(crate) struct GenerateFn(String, GenerateConfig);

impl AsyncLiveFn<Generation> for GenerateFn {
    async fn call<B: Backend>(&self, slot: &Slot<B>) -> Result<Generation, String> {
        let v = view(slot);
        let ids = v.tokenizer.encode_text(&self.0, usize::MAX).map_err(s)?;
        let mut g =
            Generator::new(v.backend, v.model, v.store, v.tokenizer, ids, &self.1).map_err(s)?;
        while let Some(piece) = g.step().await.map_err(s)? {
            if !piece.is_empty() {
                post(&Event::Generated { piece }, None);
            }
            // Let the page's messages in (a Stop), then heed them.
            sleep(0).await;
            if state().stop_generating.get() {
                g.cancel();
            }
        }
        g.finish().map_err(s)
    }
}

/// Generates from the live model, streaming the text to the page.
pub(crate) async fn generate(prompt: String, config: GenerateConfig) -> Result<(), String> {
    state().stop_generating.set(false);
    let started = js_sys::Date::now();
    let generation = with_live(GenerateFn(prompt, config)).await?;
    let secs = ((js_sys::Date::now() - started) / 1000.0).max(1e-3);
    let tokens_per_s = generation.ids.len() as f64 / secs;
    post(
        &Event::GenerationDone {
            generation,
            tokens_per_s,
        },
        None,
    );
    Ok(())
}

pub(crate) struct ExportFn;

impl AsyncLiveFn<(String, Vec<(String, Vec<u8>)>)> for ExportFn {
    async fn call<B: Backend>(
        &self,
        slot: &Slot<B>,
    ) -> Result<(String, Vec<(String, Vec<u8>)>), String> {
        let v = view(slot);
        let info = ExportInfo {
            task: v.kind,
            labels: v.labels.clone(),
            base_model: v.base_model.to_string(),
            max_len: v.max_len,
            base_config_json: v.base_config_json.to_string(),
        };
        let files = export::export(v.backend, v.model, v.store, &info)
            .await
            .map_err(s)?;
        let task = match v.kind {
            TaskKind::Classification => "classification",
            TaskKind::TokenClassification => "ner",
            TaskKind::MaskedLm => "mlm",
            TaskKind::CausalLm => "clm",
        };
        Ok((
            format!("tunelab-{}-{}-{task}.zip", v.base_model, v.method.name()),
            files,
        ))
    }
}

pub(crate) async fn export_zip() -> Result<(), String> {
    let (file_name, files) = with_live(ExportFn).await?;
    let names = files.iter().map(|(n, _)| n.clone()).collect();
    let zip = zipfile::pack(&files)?;
    post(
        &Event::Exported {
            file_name,
            files: names,
        },
        Some(zip),
    );
    Ok(())
}

pub(crate) async fn import(model: ModelSource, files: Payload) -> Result<(), String> {
    ensure_idle()?;
    let (zip_name, zip) = files
        .into_iter()
        .next()
        .ok_or("choose the exported zip to import")?;
    let files = zipfile::unpack(&zip_name, &zip)?;
    let imported = export::import(&files).map_err(|e| format!("{zip_name}: {e}"))?;
    let m = &imported.manifest;
    if m.method.export_kind() == tunelab_core::peft::ExportKind::Model {
        return Err(format!(
            "{zip_name} is a fully fine-tuned model: add its files as your own model instead"
        ));
    }
    status(format!("Loading {} for the adapter…", model.name()));
    let (base, _) = model_files(&model).await?;
    let (engine, _) = engine(false, false).await;
    let labels = m.labels.clone();
    let kind = m.task;
    let method_name = m.method.name().to_string();
    let live = match engine {
        Engine::Gpu(be) => Live::Gpu(Slot::Imported(Box::new(load_adapter(
            be, &base, &imported, &zip_name,
        )?))),
        Engine::Cpu(be) => Live::Cpu(Slot::Imported(Box::new(load_adapter(
            be, &base, &imported, &zip_name,
        )?))),
    };
    *state().live.borrow_mut() = Some(live);
    post(
        &Event::Imported {
            method: method_name,
            task: kind,
            labels: labels.names,
        },
        None,
    );
    Ok(())
}

pub(crate) fn load_adapter<B: Backend>(
    be: B,
    base: &ModelFiles,
    imported: &export::Imported,
    file: &str,
) -> Result<Model<B>, String> {
    let loaded = session::load_trained(be, imported, base, file).map_err(s)?;
    let m = loaded.manifest;
    Ok(Model {
        backend: loaded.backend,
        model: loaded.model,
        store: loaded.store,
        tokenizer: loaded.tokenizer,
        kind: m.task,
        labels: m.labels,
        max_len: m.max_len,
        method: m.method,
        base_model: m.base_model,
        base_config_json: base.config_json.clone(),
    })
}
